//! The agent's book of the flows it installed: idle expiry judged by the kernel's `used` time,
//! and a cap on the number of flows with least-recently-used eviction. Pure: the caller passes
//! the clock (monotonic milliseconds, the clock the kernel's `used` stat is on).

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Kinds of flow, each with its own idle timeout (MidoNet: normal 1 min, tunnel 5 min, error 5 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKind {
    /// A flow from a simulation of a local port's packet.
    Normal,
    /// A delivery flow for a tunnel key arriving from another host.
    Tunnel,
    /// A flow that drops, installed to keep a bad sender from causing upcalls.
    Error,
}

/// Idle timeouts in milliseconds per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeouts {
    pub normal_ms: u64,
    pub tunnel_ms: u64,
    pub error_ms: u64,
}

impl Default for IdleTimeouts {
    fn default() -> Self {
        Self {
            normal_ms: 60_000,
            tunnel_ms: 300_000,
            error_ms: 5_000,
        }
    }
}

impl IdleTimeouts {
    fn of(&self, kind: FlowKind) -> u64 {
        match kind {
            FlowKind::Normal => self.normal_ms,
            FlowKind::Tunnel => self.tunnel_ms,
            FlowKind::Error => self.error_ms,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: FlowKind,
    last_used_ms: u64,
}

/// Installed flows by id, ordered by last use.
#[derive(Debug)]
pub struct FlowTable<F> {
    entries: HashMap<F, Entry>,
    by_use: BTreeSet<(u64, F)>,
    capacity: usize,
    timeouts: IdleTimeouts,
}

impl<F: Hash + Ord + Copy> FlowTable<F> {
    /// A table holding at most `capacity` flows (at least one).
    pub fn new(capacity: usize, timeouts: IdleTimeouts) -> Self {
        Self {
            entries: HashMap::new(),
            by_use: BTreeSet::new(),
            capacity: capacity.max(1),
            timeouts,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn contains(&self, flow: F) -> bool {
        self.entries.contains_key(&flow)
    }

    /// Records a flow installed at `now_ms`. Returns the flows evicted to stay within capacity,
    /// least recently used first; the caller deletes them from the kernel.
    pub fn insert(&mut self, flow: F, kind: FlowKind, now_ms: u64) -> Vec<F> {
        self.remove(flow);
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let Some(&(used, victim)) = self.by_use.iter().next() else {
                break;
            };
            self.by_use.remove(&(used, victim));
            self.entries.remove(&victim);
            evicted.push(victim);
        }
        self.entries.insert(
            flow,
            Entry {
                kind,
                last_used_ms: now_ms,
            },
        );
        self.by_use.insert((now_ms, flow));
        evicted
    }

    /// Forgets a flow; returns whether it was known.
    pub fn remove(&mut self, flow: F) -> bool {
        match self.entries.remove(&flow) {
            Some(e) => {
                self.by_use.remove(&(e.last_used_ms, flow));
                true
            }
            None => false,
        }
    }

    /// Takes the kernel's `used` time of a flow from a dump. Older times than the one already
    /// known are ignored (a flow installed after its last packet still counts from install).
    pub fn observe_used(&mut self, flow: F, used_ms: u64) {
        if let Some(e) = self.entries.get_mut(&flow)
            && used_ms > e.last_used_ms
        {
            self.by_use.remove(&(e.last_used_ms, flow));
            e.last_used_ms = used_ms;
            self.by_use.insert((used_ms, flow));
        }
    }

    /// Removes and returns the flows idle for longer than their kind allows at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<F> {
        let shortest = self
            .timeouts
            .normal_ms
            .min(self.timeouts.tunnel_ms)
            .min(self.timeouts.error_ms);
        let horizon = now_ms.saturating_sub(shortest);
        let candidates: Vec<(u64, F)> = self
            .by_use
            .iter()
            .take_while(|(used, _)| *used < horizon)
            .copied()
            .collect();
        let mut expired = Vec::new();
        for (used, flow) in candidates {
            let kind = self.entries[&flow].kind;
            if now_ms.saturating_sub(used) > self.timeouts.of(kind) {
                self.by_use.remove(&(used, flow));
                self.entries.remove(&flow);
                expired.push(flow);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cap: usize) -> FlowTable<u32> {
        FlowTable::new(
            cap,
            IdleTimeouts {
                normal_ms: 1_000,
                tunnel_ms: 5_000,
                error_ms: 100,
            },
        )
    }

    #[test]
    fn idle_flows_expire_by_kind() {
        let mut t = table(10);
        t.insert(1, FlowKind::Normal, 0);
        t.insert(2, FlowKind::Tunnel, 0);
        t.insert(3, FlowKind::Error, 0);
        assert_eq!(t.expire(500), vec![3]);
        assert_eq!(t.expire(1_500), vec![1]);
        assert_eq!(t.expire(4_000), Vec::<u32>::new());
        assert_eq!(t.expire(6_000), vec![2]);
        assert!(t.is_empty());
    }

    #[test]
    fn kernel_use_keeps_a_flow_alive() {
        let mut t = table(10);
        t.insert(1, FlowKind::Normal, 0);
        t.observe_used(1, 900);
        assert!(t.expire(1_500).is_empty());
        // an older `used` never moves the clock back
        t.observe_used(1, 10);
        assert_eq!(t.expire(2_000), vec![1]);
    }

    #[test]
    fn over_capacity_evicts_least_recently_used() {
        let mut t = table(3);
        assert!(t.insert(1, FlowKind::Normal, 10).is_empty());
        assert!(t.insert(2, FlowKind::Normal, 20).is_empty());
        assert!(t.insert(3, FlowKind::Normal, 30).is_empty());
        t.observe_used(1, 40);
        assert_eq!(t.insert(4, FlowKind::Normal, 50), vec![2]);
        assert_eq!(t.len(), 3);
        assert!(t.contains(1) && t.contains(3) && t.contains(4));
    }

    #[test]
    fn reinsert_and_remove_are_idempotent() {
        let mut t = table(2);
        t.insert(1, FlowKind::Normal, 0);
        t.insert(1, FlowKind::Normal, 5);
        assert_eq!(t.len(), 1);
        assert!(t.remove(1));
        assert!(!t.remove(1));
        assert!(t.expire(u64::MAX).is_empty());
    }
}
