//! Longest-prefix-match tables that also report how many leading address bits decided the
//! answer, so the megaflow mask covers only those bits.

/// An address word: `u32` for IPv4, `u128` for IPv6.
pub trait AddrBits: Copy + Ord + Eq + std::fmt::Debug {
    /// Width in bits.
    const WIDTH: u8;
    /// The mask of the leading `len` bits.
    fn prefix_mask(len: u8) -> Self;
    /// Bitwise and.
    fn and(self, o: Self) -> Self;
    /// Number of equal leading bits.
    fn common_prefix(self, o: Self) -> u8;
}

impl AddrBits for u32 {
    const WIDTH: u8 = 32;
    #[inline]
    fn prefix_mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            !0u32 << (32 - u32::from(len.min(32)))
        }
    }
    #[inline]
    fn and(self, o: u32) -> u32 {
        self & o
    }
    #[inline]
    fn common_prefix(self, o: u32) -> u8 {
        (self ^ o).leading_zeros() as u8
    }
}

impl AddrBits for u128 {
    const WIDTH: u8 = 128;
    #[inline]
    fn prefix_mask(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            !0u128 << (128 - u32::from(len.min(128)))
        }
    }
    #[inline]
    fn and(self, o: u128) -> u128 {
        self & o
    }
    #[inline]
    fn common_prefix(self, o: u128) -> u8 {
        (self ^ o).leading_zeros() as u8
    }
}

#[derive(Debug, Clone)]
struct Level<T, V> {
    len: u8,
    mask: T,
    entries: Vec<(T, V)>,
}

/// A prefix table: one sorted level per distinct prefix length, longest first.
///
/// `lookup` costs O(L log n) for L distinct lengths. When a level does not hold the address,
/// its sorted neighbours tell how many leading bits were needed to prove the miss, so a miss
/// at a long level does not force an exact match on the whole address.
#[derive(Debug, Clone)]
pub struct PrefixTable<T, V> {
    levels: Vec<Level<T, V>>,
}

impl<T, V> Default for PrefixTable<T, V> {
    fn default() -> Self {
        PrefixTable { levels: Vec::new() }
    }
}

impl<T: AddrBits, V: Copy> PrefixTable<T, V> {
    /// Builds a table. A later duplicate of the same prefix replaces an earlier one.
    pub fn build(items: impl IntoIterator<Item = (T, u8, V)>) -> Self {
        let mut levels: Vec<Level<T, V>> = Vec::new();
        for (addr, len, v) in items {
            let len = len.min(T::WIDTH);
            let mask = T::prefix_mask(len);
            let key = addr.and(mask);
            match levels.iter_mut().find(|l| l.len == len) {
                Some(l) => l.entries.push((key, v)),
                None => levels.push(Level {
                    len,
                    mask,
                    entries: vec![(key, v)],
                }),
            }
        }
        for l in &mut levels {
            // Stable sort then keep the last of equal keys.
            l.entries.sort_by_key(|e| e.0);
            let mut out: Vec<(T, V)> = Vec::with_capacity(l.entries.len());
            for e in l.entries.drain(..) {
                match out.last_mut() {
                    Some(last) if last.0 == e.0 => *last = e,
                    _ => out.push(e),
                }
            }
            l.entries = out;
        }
        levels.sort_by_key(|l| std::cmp::Reverse(l.len));
        PrefixTable { levels }
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|l| l.entries.len()).sum()
    }

    /// True if the table has no prefix.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Longest-prefix match. Returns the value and its prefix length, and the number of leading
    /// bits of `addr` that decided the answer (to be added to the megaflow mask).
    #[inline]
    pub fn lookup(&self, addr: T) -> (Option<(V, u8)>, u8) {
        let mut needed = 0u8;
        for l in &self.levels {
            let key = addr.and(l.mask);
            match l.entries.binary_search_by(|e| e.0.cmp(&key)) {
                Ok(i) => return (Some((l.entries[i].1, l.len)), needed.max(l.len)),
                Err(i) => {
                    let mut best = 0u8;
                    if i > 0 {
                        best = best.max(key.common_prefix(l.entries[i - 1].0));
                    }
                    if i < l.entries.len() {
                        best = best.max(key.common_prefix(l.entries[i].0));
                    }
                    needed = needed.max((best + 1).min(l.len));
                }
            }
        }
        (None, needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    #[test]
    fn longest_prefix_wins_and_reports_needed_bits() {
        let t = PrefixTable::build([
            (v4("0.0.0.0"), 0, 'd'),
            (v4("10.0.0.0"), 8, 'a'),
            (v4("10.1.0.0"), 16, 'b'),
            (v4("10.1.2.3"), 32, 'h'),
        ]);
        assert_eq!(t.lookup(v4("10.1.2.3")), (Some(('h', 32)), 32));
        let (r, bits) = t.lookup(v4("10.1.9.9"));
        assert_eq!(r, Some(('b', 16)));
        // 10.1.9.9 vs 10.1.2.3 share 20 leading bits: 21 bits prove the /32 miss.
        assert_eq!(bits, 21);
        let (r, bits) = t.lookup(v4("192.168.0.1"));
        assert_eq!(r, Some(('d', 0)));
        // 192 vs 10 differ in the first bit.
        assert_eq!(bits, 1);
        let empty: PrefixTable<u32, u8> = PrefixTable::build([]);
        assert_eq!(empty.lookup(1), (None, 0));
    }

    #[test]
    fn miss_without_default_route() {
        let t = PrefixTable::build([(v4("10.0.0.0"), 8, 1u8)]);
        let (r, bits) = t.lookup(v4("11.0.0.0"));
        assert_eq!(r, None);
        assert_eq!(bits, 8);
    }
}
