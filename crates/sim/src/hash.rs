//! Deterministic hashing: the index hasher for the topology's maps and the flow hash used by ECMP and load balancing.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A small multiplicative hasher (the "Fx" scheme). The topology's maps are keyed by integers
/// and MAC addresses, never by attacker-chosen strings, and the result must not depend on a
/// random seed: the same snapshot must behave the same on every host.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with the deterministic hasher.
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A 64-bit finalizer (splitmix64) so that nearby inputs spread over the whole range.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An address as 128 bits for hashing; IPv6 sets the top bit so that no IPv4 address hashes
/// like an IPv6 one.
#[inline]
pub fn ip_bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a) ^ (1u128 << 127),
    }
}

/// The flow hash of a 5-tuple. It is symmetric in neither direction on purpose: ECMP and
/// load-balancer choices are made once per direction, at the ingress host.
#[inline]
pub fn five_tuple(src: u128, dst: u128, proto: u8, sport: u16, dport: u16) -> u64 {
    let mut h = mix64(src as u64 ^ ((src >> 64) as u64).rotate_left(17));
    h = mix64(h ^ dst as u64 ^ ((dst >> 64) as u64).rotate_left(29));
    mix64(h ^ (u64::from(proto) << 32) ^ (u64::from(sport) << 16) ^ u64::from(dport))
}

/// A 128-bit hash of bytes, eight at a time in two independent lanes, each finished by
/// [`mix64`]: stable across runs, platforms and versions, for names that must survive a
/// restart (a megaflow's UFID, from its encoded key and mask). Not for attacker-chosen
/// input: the bytes are the datapath's own encoding of what the simulation decided.
pub fn wide(bytes: &[u8]) -> u128 {
    let len = bytes.len() as u64;
    let (mut a, mut b) = (0x5746_4654_7566_6964 ^ len, 0x6d65_6761_666c_6f77 ^ len);
    let mut words = bytes.chunks_exact(8);
    let mut step = |w: u64| {
        a = (a.rotate_left(5) ^ w).wrapping_mul(SEED);
        b = (b ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    };
    for c in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        step(u64::from_le_bytes(w));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        step(u64::from_le_bytes(w));
    }
    (u128::from(mix64(a)) << 64) | u128::from(mix64(b ^ a.rotate_left(32)))
}

/// FNV-1a over bytes: stable across runs, platforms and versions, used for tags derived from ids.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_is_stable_and_tells_one_bit_and_the_length_apart() {
        // The value is part of the agent's contract with flows it installed before a restart.
        assert_eq!(wide(b"weft"), wide(b"weft"));
        assert_eq!(
            format!("{:032x}", wide(b"recirc_id(0),in_port(2)")),
            "5d5ed3dacf6066557f4f75e8955346af"
        );
        let base = [0x5au8; 61];
        let h = wide(&base);
        let mut seen = std::collections::BTreeSet::from([h]);
        for i in 0..base.len() * 8 {
            let mut b = base;
            b[i / 8] ^= 1 << (i % 8);
            assert!(seen.insert(wide(&b)), "bit {i} collides");
        }
        // A trailing zero byte is not the same input.
        assert_ne!(wide(&base[..60]), wide(&[&base[..60], &[0][..]].concat()));
    }

    #[test]
    fn five_tuple_is_stable_and_spreads() {
        // The value is part of the contract: every host must pick the same ECMP path and member.
        let a = five_tuple(0x0a00_0001, 0x0a00_0002, 6, 1000, 80);
        assert_eq!(a, five_tuple(0x0a00_0001, 0x0a00_0002, 6, 1000, 80));
        assert_ne!(a, five_tuple(0x0a00_0001, 0x0a00_0002, 6, 1001, 80));
        let mut buckets = [0u32; 4];
        for sport in 0..4000u16 {
            buckets[(five_tuple(1, 2, 6, sport, 80) % 4) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "uneven spread {buckets:?}");
        }
    }
}
