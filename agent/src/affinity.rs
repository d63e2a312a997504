//! The agent's memory of session-affinity choices ([`sim::affinity`]): which member each
//! client of a VIP with `ClientIP` affinity was given, and when the client last opened a
//! connection to it.
//!
//! - Handlers recall from it while simulating and record the choice of every simulation that
//!   made one.
//! - A client's later connections take the megaflow its first one installed, with no upcall;
//!   the flow manager reads those flows' kernel `used` times at each sweep
//!   ([`Affinity::touch`]), so the memory sees every new connection. Established
//!   connections' packets take conntrack's flows, as in kube-proxy, where only a connection's
//!   first packet refreshes the `recent` entry.
//! - At the same sweep, a choice unused for longer than its VIP's timeout is forgotten
//!   ([`Affinity::expire`]) and the flows tagged with it are deleted, so the client's next
//!   connection is chosen afresh. A choice therefore lasts between the timeout and the timeout
//!   plus one sweep interval.
//! - A choice whose member left the VIP is replaced at the client's next connection (the
//!   VIP's change already deleted its flows).
//!
//! The state is bounded: at most [`CAPACITY`] clients, about 100 bytes each. When it is
//! full, new clients are not remembered (`weft_agent_affinity_full_total` counts them) and
//! fall back to the choice the simulation makes without memory, a hash of the client address,
//! which stays the same for as long as the VIP's members do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use sim::{AffinityChoice, AffinityKey, AffinityMemory, Tag, TagKind};

/// The most clients remembered by one agent.
pub const CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: AffinityKey,
    member: (IpAddr, u16),
    timeout_ms: u64,
    /// When the client last opened a connection, on the kernel's `used` clock.
    last_ms: u64,
}

/// Session-affinity choices, shared by the handlers and the flow manager.
#[derive(Debug)]
pub struct Affinity {
    entries: Mutex<HashMap<Tag, Entry>>,
    capacity: usize,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new(CAPACITY)
    }
}

impl Affinity {
    /// An empty memory of at most `capacity` clients.
    pub fn new(capacity: usize) -> Self {
        Affinity {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tag, Entry>> {
        // A handler that panicked while holding the lock left a map that is still whole.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers `c`, made at `now_ms`. False when the memory is full and `c` is new.
    pub fn record(&self, c: &AffinityChoice, now_ms: u64) -> bool {
        let mut m = self.lock();
        let tag = Tag::affinity(&c.key);
        if m.len() >= self.capacity && !m.contains_key(&tag) {
            return false;
        }
        m.insert(
            tag,
            Entry {
                key: c.key,
                member: (c.member, c.member_port),
                timeout_ms: u64::from(c.timeout_s) * 1000,
                last_ms: now_ms,
            },
        );
        true
    }

    /// A flow tagged `tag` was last used at `used_ms`.
    pub fn touch(&self, tag: Tag, used_ms: u64) {
        if tag.kind() != Some(TagKind::Affinity) {
            return;
        }
        if let Some(e) = self.lock().get_mut(&tag) {
            e.last_ms = e.last_ms.max(used_ms);
        }
    }

    /// Forgets the choices unused for longer than their timeout at `now_ms`; returns their
    /// tags, whose flows the caller deletes.
    pub fn expire(&self, now_ms: u64) -> Vec<Tag> {
        let mut gone = Vec::new();
        self.lock().retain(|tag, e| {
            let keep = now_ms.saturating_sub(e.last_ms) <= e.timeout_ms;
            if !keep {
                gone.push(*tag);
            }
            keep
        });
        gone
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AffinityMemory for Affinity {
    fn recall(&self, key: &AffinityKey) -> Option<(IpAddr, u16)> {
        self.lock()
            .get(&Tag::affinity(key))
            .filter(|e| e.key == *key)
            .map(|e| e.member)
    }
}

/// The choice an installed flow made, read back from its actions: the member of its first
/// destination NAT. On restart the adopted flows are checked by simulating them again with
/// this as the memory, so a client keeps the member its flow names while that member serves.
#[derive(Debug)]
pub struct FromActions<'a>(pub &'a [odp::Action]);

impl AffinityMemory for FromActions<'_> {
    fn recall(&self, _key: &AffinityKey) -> Option<(IpAddr, u16)> {
        self.0.iter().find_map(|a| match a {
            odp::Action::Ct(ct) => {
                let nat = ct.nat.as_ref()?;
                (nat.kind == Some(odp::NatKind::Dst)).then_some(())?;
                Some((nat.ip_min?, nat.proto_min?))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(client: &str, member: &str, timeout_s: u32) -> AffinityChoice {
        AffinityChoice {
            key: AffinityKey {
                vip: "10.96.0.10".parse().unwrap(),
                proto: 6,
                port: 80,
                client: client.parse().unwrap(),
            },
            member: member.parse().unwrap(),
            member_port: 8080,
            timeout_s,
        }
    }

    #[test]
    fn a_choice_is_recalled_until_it_is_unused_for_its_timeout() {
        let a = Affinity::default();
        let c = choice("10.0.0.1", "10.1.0.1", 10);
        assert!(a.record(&c, 1_000));
        assert_eq!(a.recall(&c.key), Some((c.member, 8080)));
        assert_eq!(a.recall(&choice("10.0.0.2", "10.1.0.1", 10).key), None);
        assert!(
            a.expire(11_000).is_empty(),
            "10 s unused is within the timeout"
        );
        assert_eq!(a.expire(11_001), vec![Tag::affinity(&c.key)]);
        assert_eq!(a.recall(&c.key), None);
        assert!(a.is_empty());
    }

    #[test]
    fn flow_use_keeps_a_choice_and_never_moves_it_back() {
        let a = Affinity::default();
        let c = choice("10.0.0.1", "10.1.0.1", 10);
        a.record(&c, 1_000);
        a.touch(Tag::affinity(&c.key), 9_000);
        a.touch(Tag::affinity(&c.key), 2_000);
        a.touch(Tag::lb("vlb:x"), 50_000);
        assert!(a.expire(19_000).is_empty());
        assert_eq!(a.expire(19_001).len(), 1);
    }

    #[test]
    fn a_full_memory_refuses_new_clients_and_keeps_refreshing_old_ones() {
        let a = Affinity::new(2);
        assert!(a.record(&choice("10.0.0.1", "10.1.0.1", 10), 0));
        assert!(a.record(&choice("10.0.0.2", "10.1.0.1", 10), 0));
        assert!(!a.record(&choice("10.0.0.3", "10.1.0.1", 10), 0));
        assert!(a.record(&choice("10.0.0.1", "10.1.0.2", 10), 5));
        assert_eq!(a.len(), 2);
        assert_eq!(
            a.recall(&choice("10.0.0.1", "10.9.9.9", 0).key)
                .map(|m| m.0),
            Some("10.1.0.2".parse().unwrap())
        );
    }

    #[test]
    fn an_installed_flow_names_its_member_through_its_destination_nat() {
        let actions = odp::parse_actions(
            "ct(commit,zone=5,nat(dst=10.1.0.7:8080)),ct(commit,zone=6,nat(src=10.96.0.10)),1",
        )
        .unwrap();
        assert_eq!(
            FromActions(&actions).recall(&choice("10.0.0.1", "10.1.0.1", 1).key),
            Some(("10.1.0.7".parse().unwrap(), 8080))
        );
        let plain = odp::parse_actions("ct(zone=5,nat),1").unwrap();
        assert_eq!(
            FromActions(&plain).recall(&choice("10.0.0.1", "10.1.0.1", 1).key),
            None
        );
    }
}
