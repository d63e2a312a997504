//! Deterministic NSDB ids of the records each custom resource produces, and the reverse map
//! from an id to the object that owns it.
//!
//! Every id the operator writes is `<short kind>:<object name>[:<part>]`. Kubernetes object
//! names never contain `:` (nor `/`, which NSDB ids may not hold), so the owner of any record is
//! read back from its id alone: re-running a translation yields the same ids, and deleting an
//! object finds exactly its records by a prefix scan.

use std::fmt;

/// The four Weft kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrKind {
    VirtualBridge,
    VirtualRouter,
    VirtualLoadBalancer,
    AccessControlList,
}

impl CrKind {
    /// Every kind, in the order a topology is written (referenced objects first).
    pub const ALL: [CrKind; 4] = [
        CrKind::AccessControlList,
        CrKind::VirtualBridge,
        CrKind::VirtualRouter,
        CrKind::VirtualLoadBalancer,
    ];

    /// The Kubernetes kind name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CrKind::VirtualBridge => "VirtualBridge",
            CrKind::VirtualRouter => "VirtualRouter",
            CrKind::VirtualLoadBalancer => "VirtualLoadBalancer",
            CrKind::AccessControlList => "AccessControlList",
        }
    }

    /// The short name, also the first segment of every id this kind owns.
    pub const fn short(self) -> &'static str {
        match self {
            CrKind::VirtualBridge => "vbr",
            CrKind::VirtualRouter => "vrt",
            CrKind::VirtualLoadBalancer => "vlb",
            CrKind::AccessControlList => "acl",
        }
    }

    /// The kind named by a Kubernetes kind name.
    pub fn from_kind_name(kind: &str) -> Option<CrKind> {
        CrKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    fn from_short(short: &str) -> Option<CrKind> {
        CrKind::ALL.into_iter().find(|k| k.short() == short)
    }
}

impl fmt::Display for CrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One custom resource: its kind and (cluster-scoped) name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: CrKind,
    pub name: String,
}

impl ObjectKey {
    /// The key of a named object of `kind`.
    pub fn new(kind: CrKind, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            name: name.into(),
        }
    }

    /// `<short>:<name>`: the id of the object's main record and the prefix of all others.
    pub fn base_id(&self) -> String {
        format!("{}:{}", self.kind.short(), self.name)
    }

    /// The owner of an NSDB id the operator wrote, if it is one.
    pub fn owner_of(id: &str) -> Option<ObjectKey> {
        let mut parts = id.splitn(3, ':');
        let kind = CrKind::from_short(parts.next()?)?;
        let name = parts.next().filter(|n| !n.is_empty())?;
        Some(ObjectKey::new(kind, name))
    }

    /// Whether this object owns the NSDB record with this id.
    pub fn owns(&self, id: &str) -> bool {
        ObjectKey::owner_of(id).is_some_and(|o| &o == self)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The NSDB bridge id of a `VirtualBridge`.
pub fn bridge(name: &str) -> String {
    format!("vbr:{name}")
}

/// The NSDB router id of a `VirtualRouter`.
pub fn router(name: &str) -> String {
    format!("vrt:{name}")
}

/// The NSDB load balancer id of a `VirtualLoadBalancer`.
pub fn load_balancer(name: &str) -> String {
    format!("vlb:{name}")
}

/// The `VirtualLoadBalancer` whose NSDB id is `id` ([`load_balancer`]), if it is one.
pub fn load_balancer_name(id: &str) -> Option<&str> {
    id.strip_prefix("vlb:").filter(|n| !n.is_empty())
}

/// The NSDB chain id of an `AccessControlList`.
pub fn acl_chain(name: &str) -> String {
    format!("acl:{name}")
}

/// The id of rule `index` of an ACL's chain.
pub fn acl_rule(name: &str, index: usize) -> String {
    format!("acl:{name}:{index}")
}

/// The chain a device applies to traffic entering it (`in`) or leaving it (`out`).
pub fn device_chain(device_id: &str, inbound: bool) -> String {
    format!("{device_id}:{}", if inbound { "in" } else { "out" })
}

/// The router-side port of a router's interface on `bridge`.
pub fn router_port(router: &str, bridge: &str) -> String {
    format!("vrt:{router}:port:{bridge}")
}

/// The bridge-side peer of a router's interface on `bridge`.
pub fn router_peer_port(router: &str, bridge: &str) -> String {
    format!("vrt:{router}:peer:{bridge}")
}

/// The uplink port of a router.
pub fn uplink_port(router: &str) -> String {
    format!("vrt:{router}:uplink")
}

/// The connected route of a router port.
pub fn connected_route(port_id: &str) -> String {
    format!("{port_id}:connected")
}

/// The connected route of a router port's IPv6 subnet.
pub fn connected_route_v6(port_id: &str) -> String {
    format!("{port_id}:connected6")
}

/// The default route towards the uplink gateway.
pub fn default_route(router: &str) -> String {
    format!("vrt:{router}:route:default")
}

/// Static route `index` of a router.
pub fn static_route(router: &str, index: usize) -> String {
    format!("vrt:{router}:route:{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_back_from_ids() {
        let r = ObjectKey::new(CrKind::VirtualRouter, "edge.r1");
        for id in [
            router("edge.r1"),
            router_port("edge.r1", "b1"),
            router_peer_port("edge.r1", "b1"),
            connected_route(&router_port("edge.r1", "b1")),
            static_route("edge.r1", 3),
            device_chain(&router("edge.r1"), true),
        ] {
            assert_eq!(ObjectKey::owner_of(&id), Some(r.clone()), "{id}");
            assert!(r.owns(&id));
        }
        // A name that is a prefix of another is not confused with it.
        assert!(!ObjectKey::new(CrKind::VirtualRouter, "edge").owns(&router("edge.r1")));
        assert!(!r.owns(&bridge("edge.r1")));
        assert_eq!(ObjectKey::owner_of("p-1234"), None);
        assert_eq!(ObjectKey::owner_of("vbr:"), None);
        assert_eq!(
            ObjectKey::owner_of(&acl_rule("deny", 2)),
            Some(ObjectKey::new(CrKind::AccessControlList, "deny"))
        );
    }
}
