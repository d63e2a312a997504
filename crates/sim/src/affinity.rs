//! Source-IP session affinity: what the simulation asks of the memory of earlier choices.
//!
//! A VIP with affinity sends every new connection from one client address to the member that
//! client was given last, for as long as the client keeps opening connections within the
//! VIP's timeout (`sessionAffinityConfig.clientIP.timeoutSeconds`). The simulation holds no
//! state: the caller passes an [`AffinityMemory`] in the
//! [`PacketContext`](crate::PacketContext), the walk recalls the client's member from it
//! (when that member is still a healthy member of the VIP) or else picks one by the client
//! address's hash, and reports the choice in [`Simulation::affinity`](crate::Simulation) for
//! the caller to remember. The megaflow masks the client address, never the L4 ports, and
//! carries [`Tag::affinity`](crate::Tag::affinity), so forgetting a choice deletes exactly that client's flows.

use std::fmt;
use std::net::IpAddr;

/// One client of one VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub vip: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    pub port: u16,
    pub client: IpAddr,
}

/// The member a VIP gave a client, and how long it is remembered after the client's last new
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityChoice {
    pub key: AffinityKey,
    pub member: IpAddr,
    pub member_port: u16,
    pub timeout_s: u32,
}

/// Earlier choices, as the caller remembers them.
pub trait AffinityMemory: fmt::Debug + Sync {
    /// The member (address and port) `key`'s client was given, if it is remembered.
    fn recall(&self, key: &AffinityKey) -> Option<(IpAddr, u16)>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::{Tag, TagKind};

    fn key(client: &str) -> AffinityKey {
        AffinityKey {
            vip: "10.96.0.10".parse().unwrap(),
            proto: 6,
            port: 80,
            client: client.parse().unwrap(),
        }
    }

    #[test]
    fn affinity_tags_are_of_their_kind_and_tell_clients_apart() {
        let a = Tag::affinity(&key("10.0.0.1"));
        assert_eq!(a.kind(), Some(TagKind::Affinity));
        assert_eq!(a, Tag::affinity(&key("10.0.0.1")));
        assert_ne!(a, Tag::affinity(&key("10.0.0.2")));
        let mut other_port = key("10.0.0.1");
        other_port.port = 81;
        assert_ne!(a, Tag::affinity(&other_port));
        let mut udp = key("10.0.0.1");
        udp.proto = 17;
        assert_ne!(a, Tag::affinity(&udp));
    }
}
