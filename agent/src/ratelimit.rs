//! Per-port upcall rate limiting with token buckets, so that one noisy pod cannot starve the
//! upcall handlers (MidoNet throttled each datapath port's upcall channel the same way).
//! The buckets are pure: the caller passes a monotonic clock in nanoseconds. [`SharedLimiter`]
//! holds one set of buckets for all of a datapath's handlers.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// One bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens_milli: u64,
    last_ns: u64,
}

/// Buckets per key (a datapath port number).
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate_per_s: u64,
    burst: u64,
    buckets: HashMap<K, TokenBucket>,
    dropped: u64,
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    /// `rate_per_s` upcalls a second per key, with bursts of up to `burst` (both at least 1).
    pub fn new(rate_per_s: u64, burst: u64) -> Self {
        Self {
            rate_per_s: rate_per_s.max(1),
            burst: burst.max(1),
            buckets: HashMap::new(),
            dropped: 0,
        }
    }

    /// Takes one token for `key` at `now_ns`; false means the upcall must be dropped.
    pub fn admit(&mut self, key: K, now_ns: u64) -> bool {
        let full = self.burst * 1000;
        let bucket = self.buckets.entry(key).or_insert(TokenBucket {
            tokens_milli: full,
            last_ns: now_ns,
        });
        let elapsed = now_ns.saturating_sub(bucket.last_ns);
        // tokens in thousandths: rate * elapsed_ns / 1e9 * 1000
        let refill = (u128::from(self.rate_per_s) * u128::from(elapsed) / 1_000_000) as u64;
        if refill > 0 {
            bucket.tokens_milli = bucket.tokens_milli.saturating_add(refill).min(full);
            bucket.last_ns = now_ns;
        }
        if bucket.tokens_milli >= 1000 {
            bucket.tokens_milli -= 1000;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Forgets a key's bucket (its port went away).
    pub fn forget(&mut self, key: K) {
        self.buckets.remove(&key);
    }

    /// Upcalls refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The per-port buckets every upcall handler of a datapath shares: a port gets its rate
/// whichever handler its upcalls reach. With per-CPU dispatch one port's upcalls arrive on
/// every CPU's handler, and a limiter per handler gave a port handlers × the rate.
#[derive(Debug, Clone)]
pub struct SharedLimiter {
    buckets: Arc<Mutex<RateLimiter<u32>>>,
    epoch: Instant,
}

impl SharedLimiter {
    /// `rate_per_s` upcalls a second per datapath port, in bursts of up to `burst`.
    pub fn new(rate_per_s: u64, burst: u64) -> Self {
        Self {
            buckets: Arc::new(Mutex::new(RateLimiter::new(rate_per_s, burst))),
            epoch: Instant::now(),
        }
    }

    /// Takes one token for datapath port `port` at `now`; false means the upcall must be
    /// dropped. A handler that panicked holding the lock left the buckets consistent (every
    /// update is a whole bucket), so a poisoned lock is used as it is.
    pub fn admit(&self, port: u32, now: Instant) -> bool {
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(port, ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_share_one_budget_per_port() {
        let limiter = SharedLimiter::new(100, 10);
        let now = Instant::now();
        let handlers: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || (0..10).filter(|_| l.admit(1, now)).count())
            })
            .collect();
        let admitted: usize = handlers.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(
            admitted, 10,
            "4 handlers together get port 1's burst, not 4 bursts"
        );
        assert!(limiter.admit(2, now), "another port has its own bucket");
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut rl = RateLimiter::new(100, 10);
        let admitted = (0..50).filter(|_| rl.admit(1u32, 0)).count();
        assert_eq!(admitted, 10);
        // one second later, 100 more tokens but the bucket holds only 10
        let admitted = (0..50).filter(|_| rl.admit(1u32, S)).count();
        assert_eq!(admitted, 10);
        // 50 ms later: 5 tokens
        let admitted = (0..50).filter(|_| rl.admit(1u32, S + S / 20)).count();
        assert_eq!(admitted, 5);
        assert_eq!(rl.dropped(), 40 + 40 + 45);
    }

    #[test]
    fn a_noisy_port_does_not_starve_another() {
        let mut rl = RateLimiter::new(10, 5);
        for i in 0..10_000u64 {
            rl.admit(1u32, i * 1000);
        }
        assert!(rl.admit(2u32, 10_000 * 1000));
        assert_eq!((0..10).filter(|_| rl.admit(2u32, 10_000 * 1000)).count(), 4);
    }

    #[test]
    fn slow_trickle_accumulates_fractions() {
        let mut rl = RateLimiter::new(1000, 2);
        assert!(rl.admit(7u8, 0) && rl.admit(7u8, 0) && !rl.admit(7u8, 0));
        // 1000/s means one token per ms; 0.4 ms steps add up
        let mut ok = 0;
        for step in 1..=10u64 {
            if rl.admit(7u8, step * 400_000) {
                ok += 1;
            }
        }
        assert_eq!(ok, 4);
    }
}
