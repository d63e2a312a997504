//! Flow tags: compact, `Copy` identifiers of the topology objects a simulation touched.
//!
//! A tag is derived from the object's NSDB id (never from an index of one compiled snapshot),
//! so the agent can compute the tags of a changed record on its own and delete exactly the
//! flows that carry them.
//!
//! Which tags a record change invalidates (old and new values alike):
//!
//! | change | tags |
//! |---|---|
//! | bridge or router record | `device(id)` |
//! | port (any field) or its binding | `port(id)`, `device(port's device)`; for a bridge port also `mac(bridge, mac)` and `ip(bridge, a)` of its addresses; for a router port `ip(router, a)` of its addresses and, through its interior peer, `mac`/`ip` of the peer bridge |
//! | route | `route(id)`, `device(router)` |
//! | chain | `chain(id)` |
//! | load balancer | `lb(id)`, and `device(router)` for a router's LB or [`Tag::global_vips`] for one attached to no router when its VIPs' addresses, protocols or ports change (when the first such LB appears, no flow carries that tag yet: flush all flows); then, from the compiled topologies before and after ([`Topology::changed_buckets`]), `lb_bucket(vip, b)` of each bucket whose member changed, or of every bucket of a VIP that went or whose bucket count changed |
//! | host | `host(id)` |
//! | a client's remembered member at a VIP, forgotten | `affinity(key)` |
//! | a local vport added to or removed from the datapath | `port(id)` of the port bound to it, `device(its bridge)` |
//!
//! Lookups that miss are tagged too (an unknown MAC, an IP with no ARP entry, the router's
//! address table), so the flow that flooded or dropped goes away when the entry appears.

use std::fmt;
use std::net::IpAddr;

use crate::hash::{fnv1a, mix64};

/// What kind of object a [`Tag`] names. Stored in the top byte of the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TagKind {
    /// A bridge or a router (any change to the device or its chains, routes and ports list).
    Device = 1,
    /// A port (its binding, addresses, chains, admin state).
    Port = 2,
    /// A route.
    Route = 3,
    /// A MAC address in one bridge (known or looked up and missing).
    Mac = 4,
    /// An IP address in one device (ARP/IP-to-MAC entries, router addresses, next hops).
    Ip = 5,
    /// A rule chain.
    Chain = 6,
    /// A load balancer.
    Lb = 7,
    /// A host (its underlay address or tunnel settings).
    Host = 8,
    /// One client's remembered member at one VIP ([`crate::affinity`]).
    Affinity = 9,
    LbBucket = 10,
}

impl TagKind {
    fn from_u8(v: u8) -> Option<TagKind> {
        Some(match v {
            1 => TagKind::Device,
            2 => TagKind::Port,
            3 => TagKind::Route,
            4 => TagKind::Mac,
            5 => TagKind::Ip,
            6 => TagKind::Chain,
            7 => TagKind::Lb,
            8 => TagKind::Host,
            9 => TagKind::Affinity,
            10 => TagKind::LbBucket,
            _ => return None,
        })
    }
}

/// A flow tag: kind in the top 8 bits, a 56-bit hash of the object's identity below.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u64);

const LOW: u64 = (1 << 56) - 1;

impl Tag {
    fn make(kind: TagKind, h: u64) -> Tag {
        Tag(((kind as u64) << 56) | (h & LOW))
    }
    fn of_id(kind: TagKind, id: &str) -> Tag {
        Tag::make(kind, fnv1a(kind as u64, id.as_bytes()))
    }
    /// The kind of object this tag names, if the tag is well formed.
    pub fn kind(self) -> Option<TagKind> {
        TagKind::from_u8((self.0 >> 56) as u8)
    }
    /// The tag of a bridge or router, by id.
    pub fn device(id: &str) -> Tag {
        Tag::of_id(TagKind::Device, id)
    }
    /// The tag of a port, by id.
    pub fn port(id: &str) -> Tag {
        Tag::of_id(TagKind::Port, id)
    }
    /// The tag of a route, by id.
    pub fn route(id: &str) -> Tag {
        Tag::of_id(TagKind::Route, id)
    }
    /// The tag of a rule chain, by id.
    pub fn chain(id: &str) -> Tag {
        Tag::of_id(TagKind::Chain, id)
    }
    /// The tag of a load balancer, by id.
    pub fn lb(id: &str) -> Tag {
        Tag::of_id(TagKind::Lb, id)
    }
    /// The tag of a host, by id.
    pub fn host(id: &str) -> Tag {
        Tag::of_id(TagKind::Host, id)
    }
    /// The tag carried by every flow that consulted the table of VIPs attached to no router.
    pub fn global_vips() -> Tag {
        Tag::of_id(TagKind::Lb, "/global-vips")
    }
    /// The tag of one bucket of a VIP whose member the datapath chooses
    /// ([`crate::buckets`]); `vip` is the VIP's own hash, [`Tag::vip_key`].
    pub fn lb_bucket(vip: u64, bucket: usize) -> Tag {
        Tag::make(TagKind::LbBucket, mix64(vip ^ mix64(bucket as u64)))
    }
    /// The hash that names a VIP in [`Tag::lb_bucket`]: its load balancer, address, protocol
    /// and port.
    pub fn vip_key(lb: &str, ip: IpAddr, proto: u8, port: u16) -> u64 {
        let ip = crate::hash::ip_bits(ip);
        mix64(
            fnv1a(TagKind::LbBucket as u64, lb.as_bytes())
                ^ mix64(ip as u64 ^ ((ip >> 64) as u64).rotate_left(17))
                ^ (u64::from(proto) << 16 | u64::from(port)),
        )
    }
    /// The tag of one client's remembered member at one VIP ([`crate::affinity`]).
    pub fn affinity(k: &crate::AffinityKey) -> Tag {
        use crate::hash::{five_tuple, ip_bits};
        Tag::make(
            TagKind::Affinity,
            five_tuple(ip_bits(k.client), ip_bits(k.vip), k.proto, 0, k.port),
        )
    }
    /// The tag of a MAC address as seen by one bridge (by the bridge's id).
    pub fn mac(bridge_id: &str, mac: [u8; 6]) -> Tag {
        Tag::mac_in(Tag::device(bridge_id), mac)
    }
    /// The tag of an IP address as seen by one device (bridge IP-to-MAC, router address or next hop).
    pub fn ip(device_id: &str, ip: IpAddr) -> Tag {
        Tag::ip_in(Tag::device(device_id), ip)
    }
    #[inline]
    pub(crate) fn mac_in(device: Tag, mac: [u8; 6]) -> Tag {
        let mut w = [0u8; 8];
        w[..6].copy_from_slice(&mac);
        Tag::make(TagKind::Mac, mix64(device.0 ^ u64::from_le_bytes(w)))
    }
    #[inline]
    pub(crate) fn ip_in(device: Tag, ip: IpAddr) -> Tag {
        let v = crate::hash::ip_bits(ip);
        Tag::make(
            TagKind::Ip,
            mix64(device.0 ^ mix64(v as u64) ^ ((v >> 64) as u64).rotate_left(7)),
        )
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Some(k) => write!(f, "{k:?}:{:014x}", self.0 & LOW),
            None => write!(f, "Tag({:#x})", self.0),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_per_id_and_kind() {
        assert_eq!(Tag::port("p1"), Tag::port("p1"));
        assert_ne!(Tag::port("p1"), Tag::device("p1"));
        assert_eq!(Tag::port("p1").kind(), Some(TagKind::Port));
        assert_eq!(
            Tag::mac("b1", [2, 0, 0, 0, 0, 1]).kind(),
            Some(TagKind::Mac)
        );
        assert_ne!(
            Tag::mac("b1", [2, 0, 0, 0, 0, 1]),
            Tag::mac("b2", [2, 0, 0, 0, 0, 1])
        );
        assert_ne!(
            Tag::ip("r1", "10.0.0.1".parse().unwrap()),
            Tag::ip("r1", "10.0.0.2".parse().unwrap())
        );
    }
}
