//! The bucket table of a VIP whose member the datapath chooses.
//!
//! The VIP's tracked pass sends a new connection through `hash(l4(0))` and a recirculation;
//! the kernel's flow hash of the connection lands in one of [`buckets_for`] buckets
//! (`dp_hash & (n - 1)`), and each bucket names one member. Conntrack then keeps the
//! connection on that member, so the table only decides new connections.
//!
//! The table is a pure function of the members (address, port, weight), not of their order
//! or of an earlier table:
//! - **Weights to within a bucket.** Each member gets a quota of buckets by the largest
//!   remainder of `weight × n / total`, and at least one while there are no more members
//!   than buckets.
//! - **Few moves on a change.** Every (member, bucket) pair has a score, a hash of the
//!   member's address and port with the bucket number. Pairs are taken by score, highest
//!   first; a pair takes its bucket if the bucket is free and the member is under its quota.
//!   A member that goes frees its buckets, and the pairs of the others are met in the same
//!   order as before, so most buckets keep their member (see the tests for the figures).

use std::net::IpAddr;

use crate::hash::{ip_bits, mix64};

/// Buckets of a VIP with up to [`BUCKETS`]` / 4` members.
pub const BUCKETS: usize = 64;
/// The most buckets a VIP gets: a VIP with more members than this gives some of them none.
pub const MAX_BUCKETS: usize = 1024;

/// How many buckets a VIP with `members` members gets: [`BUCKETS`], or a power of two of at
/// least four per member, up to [`MAX_BUCKETS`]. Always a power of two, so that a bucket is
/// `dp_hash & (n - 1)`.
pub fn buckets_for(members: usize) -> usize {
    (members.saturating_mul(4))
        .next_power_of_two()
        .clamp(BUCKETS, MAX_BUCKETS)
}

/// The score of `member` (its key, [`member_key`]) for `bucket`.
fn score(member: u64, bucket: usize) -> u64 {
    mix64(member ^ mix64(bucket as u64 ^ 0x6275_636b_6574_7321))
}

/// A member's hashing key: its address and port.
pub fn member_key(ip: IpAddr, port: u16) -> u64 {
    let b = ip_bits(ip);
    mix64((b >> 64) as u64 ^ mix64(b as u64) ^ (u64::from(port) << 48))
}

/// Each member's number of buckets out of `n`, by weight (largest remainder; ties to the
/// earlier member), each member with a weight at least one while `n` allows.
pub fn quotas(weights: &[u32], n: usize) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let n64 = n as u64;
    let mut q: Vec<usize> = weights
        .iter()
        .map(|&w| (u64::from(w) * n64 / total) as usize)
        .collect();
    // Fewer buckets are left than there are members: one each to the largest remainders.
    let left = n - q.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(u64::from(weights[i]) * n64 % total));
    for &i in order.iter().take(left) {
        q[i] += 1;
    }
    // Every member with a weight serves, as long as there are buckets for all of them.
    for i in 0..q.len() {
        if q[i] == 0 && weights[i] > 0 {
            let (rich, &most) = q
                .iter()
                .enumerate()
                .max_by_key(|(j, v)| (**v, std::cmp::Reverse(*j)))
                .expect("not empty");
            if most > 1 {
                q[rich] -= 1;
                q[i] = 1;
            }
        }
    }
    q
}

/// The bucket table: for each of `n` buckets, the index in `members` of its member.
/// `members` are (key from [`member_key`], weight); an empty table when no member has a
/// weight.
pub fn table(members: &[(u64, u32)], n: usize) -> Vec<u16> {
    let weights: Vec<u32> = members.iter().map(|m| m.1).collect();
    let quota = quotas(&weights, n);
    if quota.iter().all(|&q| q == 0) {
        return Vec::new();
    }
    let mut pairs: Vec<(u64, u16, u16)> = Vec::with_capacity(members.len() * n);
    for (i, m) in members.iter().enumerate() {
        if quota[i] == 0 {
            continue;
        }
        for b in 0..n {
            pairs.push((score(m.0, b), i as u16, b as u16));
        }
    }
    // Highest score first; the member key breaks ties, so the order does not depend on the
    // members' order.
    pairs.sort_unstable_by_key(|&(s, i, b)| (std::cmp::Reverse(s), members[i as usize].0, b));
    let mut owner = vec![u16::MAX; n];
    let mut have = vec![0usize; members.len()];
    let mut free = n;
    for (_, i, b) in pairs {
        if free == 0 {
            break;
        }
        let (i, b) = (i as usize, b as usize);
        if owner[b] == u16::MAX && have[i] < quota[i] {
            owner[b] = i as u16;
            have[i] += 1;
            free -= 1;
        }
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> u64 {
        member_key(IpAddr::from([10, 0, 0, n]), 8080)
    }

    fn count(t: &[u16], i: u16) -> usize {
        t.iter().filter(|&&m| m == i).count()
    }

    #[test]
    fn weights_are_honoured_to_within_a_bucket() {
        let t = table(&[(key(1), 3), (key(2), 1)], 64);
        assert_eq!(t.len(), 64);
        assert_eq!((count(&t, 0), count(&t, 1)), (48, 16));
        let t = table(&[(key(1), 1), (key(2), 1), (key(3), 1)], 64);
        let c: Vec<usize> = (0..3).map(|i| count(&t, i)).collect();
        assert_eq!(c.iter().sum::<usize>(), 64);
        assert!(c.iter().all(|&x| x == 21 || x == 22), "{c:?}");
    }

    #[test]
    fn every_member_with_a_weight_gets_a_bucket_while_there_are_enough() {
        let mut m: Vec<(u64, u32)> = vec![(key(1), 1000)];
        m.extend((2..=16).map(|i| (key(i), 1)));
        let t = table(&m, buckets_for(m.len()));
        for i in 0..m.len() {
            assert!(count(&t, i as u16) >= 1, "member {i} has no bucket");
        }
        assert!(table(&[(key(1), 0), (key(2), 0)], 64).is_empty());
        assert_eq!(count(&table(&[(key(1), 0), (key(2), 5)], 64), 1), 64);
    }

    #[test]
    fn the_table_does_not_depend_on_the_members_order() {
        let a = [(key(1), 2), (key(2), 1), (key(3), 1)];
        let b = [(key(3), 1), (key(1), 2), (key(2), 1)];
        let (ta, tb) = (table(&a, 64), table(&b, 64));
        for bucket in 0..64 {
            assert_eq!(a[ta[bucket] as usize].0, b[tb[bucket] as usize].0);
        }
    }

    #[test]
    fn a_weight_change_moves_little_more_than_the_quotas_differ() {
        // 3:1 to 1:1: the second member's quota grows by 16 buckets.
        for (a, b) in [(1, 2), (31, 32), (7, 200)] {
            let before = table(&[(key(a), 3), (key(b), 1)], 64);
            let after = table(&[(key(a), 1), (key(b), 1)], 64);
            let moved = (0..64).filter(|&i| before[i] != after[i]).count();
            assert!(
                (16..=24).contains(&moved),
                "{a}, {b}: {moved} buckets moved"
            );
        }
    }

    /// Buckets of members that stay, and that changed member, when one member goes.
    fn moved_on_removal(members: usize) -> (usize, usize) {
        let all: Vec<(u64, u32)> = (1..=members as u8).map(|i| (key(i), 1)).collect();
        let n = buckets_for(members);
        let before = table(&all, n);
        let after = table(&all[1..], n);
        let mut kept = 0;
        let mut moved = 0;
        for b in 0..n {
            if before[b] == 0 {
                continue;
            }
            kept += 1;
            // Indices shift by one in `after`.
            if after[b] + 1 != before[b] {
                moved += 1;
            }
        }
        (kept, moved)
    }

    #[test]
    fn a_member_that_goes_moves_few_of_the_others_buckets() {
        for members in [2, 3, 4, 8, 16] {
            let (stayed, moved) = moved_on_removal(members);
            assert!(
                moved * 10 <= stayed,
                "{members} members: {moved} of the {stayed} buckets of members that stay moved"
            );
        }
    }

    #[test]
    fn bucket_counts_are_powers_of_two() {
        assert_eq!(buckets_for(1), 64);
        assert_eq!(buckets_for(16), 64);
        assert_eq!(buckets_for(17), 128);
        assert_eq!(buckets_for(100_000), MAX_BUCKETS);
    }
}
