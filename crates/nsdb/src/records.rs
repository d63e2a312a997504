//! The NSDB record model: the typed JSON documents that describe the virtual topology.
//!
//! Every record is stored at `/weft/v1/<kind>/<id>` (see [`crate::keys`]); the etcd
//! `mod_revision` of its key is the record's version.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{self, Kind};
use crate::selector::PortSelector;

/// A typed NSDB record: its kind fixes the key prefix, its id the rest of the key.
pub trait Record:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The kind, which fixes the key prefix.
    const KIND: Kind;

    /// The id: the part of the key after the kind prefix.
    fn id(&self) -> String;

    /// The full etcd key of this record.
    fn key(&self) -> String {
        Self::KIND.key(&self.id())
    }

    /// The prefix under which all records of this kind live.
    fn prefix() -> String {
        Self::KIND.prefix()
    }

    /// Wraps the record into [`AnyRecord`].
    fn into_any(self) -> AnyRecord;

    /// Borrows the record out of [`AnyRecord`] when it is of this kind.
    fn from_any(any: &AnyRecord) -> Option<&Self>;
}

/// Encapsulation used on the underlay by a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelType {
    Vxlan,
    Geneve,
}

/// A node that runs the agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub underlay_ip: IpAddr,
    pub tunnel: TunnelType,
    pub tunnel_udp_port: u16,
    pub mtu: u16,
}

/// A virtual L2 segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bridge {
    pub id: String,
    pub name: String,
    pub tunnel_key: u32,
    #[serde(default)]
    pub subnet_v4: Option<Ipv4Net>,
    #[serde(default)]
    pub subnet_v6: Option<Ipv6Net>,
    #[serde(default)]
    pub gateway_v4: Option<Ipv4Addr>,
    /// The IPv6 default route's next hop for the bridge's pods: a router's IPv6 address on
    /// the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<Ipv6Addr>,
    /// The MTU of the segment's pods; 0 leaves it to each agent, which derives it from its
    /// underlay and encapsulation.
    pub mtu: u16,
    #[serde(default)]
    pub vlan: Option<u16>,
    #[serde(default)]
    pub excluded_ips: Vec<IpAddr>,
    #[serde(default)]
    pub inbound_chain: Option<String>,
    #[serde(default)]
    pub outbound_chain: Option<String>,
    /// The Kubernetes namespaces whose pods attach to this bridge (the Kuryr network of a
    /// namespace). A namespace is served by at most one bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// An L4 protocol a rule, VIP or NAT rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
            Protocol::Sctp => 132,
        }
    }
}

/// Source NAT on a router's uplink.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snat {
    /// The uplink port id.
    pub port: String,
    pub addresses: Vec<Ipv4Addr>,
    /// Inclusive range of source ports to translate to.
    pub port_range: (u16, u16),
}

/// A destination NAT (floating IP or port forward) rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DnatRule {
    pub external_ip: IpAddr,
    pub internal_ip: IpAddr,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub external_port: Option<u16>,
    #[serde(default)]
    pub internal_port: Option<u16>,
}

/// A virtual L3 router.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Router {
    pub id: String,
    pub name: String,
    pub tunnel_key: u32,
    #[serde(default)]
    pub inbound_chain: Option<String>,
    #[serde(default)]
    pub outbound_chain: Option<String>,
    #[serde(default)]
    pub snat: Option<Snat>,
    #[serde(default)]
    pub dnat: Vec<DnatRule>,
}

/// The device a port belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRef {
    Bridge(String),
    Router(String),
}

impl DeviceRef {
    /// The id of the device, whatever its kind.
    pub fn id(&self) -> &str {
        match self {
            DeviceRef::Bridge(id) | DeviceRef::Router(id) => id,
        }
    }
}

/// How a port connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// Bound to a local interface on some host (a pod, the node).
    Exterior,
    /// Patched to another virtual port (router <-> bridge).
    Interior { peer: String },
    /// A router's external interface.
    Uplink,
}

/// A 48-bit Ethernet address. Serialized as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the group bit is set (multicast or broadcast).
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether this is ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// A stable, locally administered unicast address derived from a name (for
    /// example a port id), so the same port gets the same MAC on every rebuild.
    pub fn local_from_name(name: &str) -> MacAddr {
        let b = stable_hash(name.as_bytes()).to_be_bytes();
        // 0x02: locally administered, unicast.
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

/// 64-bit FNV-1a of `bytes`: tiny, and stable across builds and platforms, for names and
/// addresses derived from ids.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Error parsing a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':'")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(o: [u8; 6]) -> Self {
        MacAddr(o)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A port of a bridge or a router.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub device: DeviceRef,
    pub kind: PortKind,
    pub mac: MacAddr,
    /// Router ports: ip/prefix of the interface. Bridge ports: ip/32 (or /128) of the endpoint.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    pub tunnel_key: u32,
    #[serde(default)]
    pub inbound_chain: Option<String>,
    #[serde(default)]
    pub outbound_chain: Option<String>,
    pub admin_up: bool,
    /// A pod port's pod labels (and Weft's own `weft.dev/...` bookkeeping labels).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A pod port's namespace labels, always with `kubernetes.io/metadata.name`; empty on
    /// every other port. [`crate::PortSelector`]s pick pod ports by these and [`Port::labels`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_labels: BTreeMap<String, String>,
    /// A pod port's named container ports, which rules match by name
    /// ([`Rule::dst_port_name`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A route in a router's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    pub id: String,
    pub router: String,
    pub dst: IpNet,
    #[serde(default)]
    pub next_hop: Option<IpAddr>,
    /// The egress router port id.
    pub port: String,
    pub weight: u32,
}

/// What a rule (or a chain's default) does with a packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Accept,
    Drop,
    Reject,
    /// Continue in another chain (by id), then come back.
    Jump(String),
    Return,
    Continue,
}

/// A match on connection-tracking state; `None` means "don't care".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CtMatch {
    #[serde(default)]
    pub new: Option<bool>,
    #[serde(default)]
    pub established: Option<bool>,
    #[serde(default)]
    pub related: Option<bool>,
}

/// One rule of a chain. Absent conditions match anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub src: Option<IpNet>,
    #[serde(default)]
    pub dst: Option<IpNet>,
    #[serde(default)]
    pub inv_src: bool,
    #[serde(default)]
    pub inv_dst: bool,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Inclusive source port range.
    #[serde(default)]
    pub src_ports: Option<(u16, u16)>,
    /// Inclusive destination port range.
    #[serde(default)]
    pub dst_ports: Option<(u16, u16)>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub icmp_code: Option<u8>,
    #[serde(default)]
    pub ct_state: Option<CtMatch>,
    /// The source address must be an address of a port this selector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_selector: Option<PortSelector>,
    /// The destination address must be an address of a port this selector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_selector: Option<PortSelector>,
    /// The destination port must be the port the destination pod names so, for the rule's
    /// protocol (or any protocol without one). A destination that is no pod port, or names
    /// no such port, does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port_name: Option<String>,
    pub action: RuleAction,
}

impl Rule {
    /// A rule with no condition: it matches every packet and takes `action`.
    pub fn matching_all(id: impl Into<String>, action: RuleAction) -> Rule {
        Rule {
            id: id.into(),
            src: None,
            dst: None,
            inv_src: false,
            inv_dst: false,
            protocol: None,
            src_ports: None,
            dst_ports: None,
            icmp_type: None,
            icmp_code: None,
            ct_state: None,
            src_selector: None,
            dst_selector: None,
            dst_port_name: None,
            action,
        }
    }
}

/// An ordered list of rules with a default action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chain {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    pub default_action: RuleAction,
    /// The pod ports the chain applies to, besides the devices and ports that name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodAttachment>,
}

/// Traffic direction from a pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodDirection {
    /// Traffic delivered to the pod.
    Ingress,
    /// Traffic the pod sends, judged after load balancing chose its destination.
    Egress,
}

/// How a chain attached to pod ports takes part in their verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodAttachMode {
    /// A filter every packet must pass: its `Drop` or `Reject` decides; `Accept`, `Return`
    /// and the end go on to the next attached chain.
    Filter,
    /// An allow-list, as a Kubernetes NetworkPolicy: a pod that any `Allow` chain picks is
    /// isolated in that direction, and a packet passes only when one of them accepts it, it
    /// belongs to a connection already allowed (replies), or it comes to the pod from its own
    /// node. `Drop`, `Reject`, `Return` and the end all mean "not allowed by this one".
    Allow,
}

/// The pod ports a chain applies to, in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodAttachment {
    pub direction: PodDirection,
    pub selector: PortSelector,
    pub mode: PodAttachMode,
}

/// A backend of a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub healthy: bool,
}

/// How long a client's member is remembered when a VIP says nothing: three hours, as
/// Kubernetes' `sessionAffinityConfig.clientIP.timeoutSeconds` defaults.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// A virtual IP and port served by a pool of members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vip {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default)]
    pub members: Vec<Member>,
    #[serde(default)]
    pub session_affinity: bool,
    /// With `session_affinity`, how long a client's member is remembered after its last new
    /// connection; [`DEFAULT_AFFINITY_TIMEOUT_S`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_s: Option<u32>,
    /// Pod ports taken as members besides `members`: each address of each port this picks
    /// (of the VIP's family), at `target_port` (or `port`), weight 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_selector: Option<PortSelector>,
    /// The members' port for [`Vip::member_selector`]; `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

impl Vip {
    /// Every member: those listed, then each address of each of `ports` that the selector
    /// picks, at `target_port` (or `port`), weight 1. Members of the other address family
    /// are included; they cannot take the VIP's traffic, and users of the list skip them.
    pub fn all_members<'a>(
        &'a self,
        ports: impl IntoIterator<Item = &'a Port> + 'a,
    ) -> impl Iterator<Item = Member> + 'a {
        let port = self.target_port.unwrap_or(self.port);
        let selected = self.member_selector.as_ref().map(move |sel| {
            ports
                .into_iter()
                .filter(move |p| sel.matches_port(p))
                .flat_map(|p| p.addresses.iter())
                .map(move |a| Member {
                    ip: a.addr(),
                    port,
                    weight: 1,
                    healthy: true,
                })
        });
        self.members
            .iter()
            .cloned()
            .chain(selected.into_iter().flatten())
    }
}

/// An L4 load balancer, optionally attached to a router.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub router: Option<String>,
    #[serde(default)]
    pub vips: Vec<Vip>,
    /// How the agent of each member's host probes that member; absent means members are
    /// not probed and count as their `healthy` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// How a member is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connect that completes.
    Tcp,
    /// An HTTP/1.1 GET answered with a 2xx or 3xx status.
    Http,
}

/// A load balancer's health check: each member is probed every `interval_s` seconds, a probe
/// fails when it takes longer than `timeout_s`, `fall` consecutive failures make the member
/// unhealthy and `rise` consecutive successes healthy again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: ProbeKind,
    /// The request path of HTTP probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub interval_s: u32,
    pub timeout_s: u32,
    pub rise: u32,
    pub fall: u32,
}

/// A health verdict on one member of a load balancer, written by the agent of the host the
/// member's port is bound to, under that host's lease: when the agent dies, the verdict
/// expires with it and the member counts as its `healthy` says again. Keyed
/// `<load balancer>/<ip:port>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberHealth {
    pub lb: String,
    pub member: std::net::SocketAddr,
    pub healthy: bool,
    /// The host whose agent probes the member.
    pub host: String,
}

/// An exterior port bound to a local interface on a host. Keyed by port id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    pub port: String,
    pub host: String,
    /// The datapath vport name on that host, e.g. `wf1a2b3c4d`.
    pub vport: String,
}

/// An IP address leased on a bridge. Keyed `<bridge>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpLease {
    pub bridge: String,
    pub ip: IpAddr,
    /// The port id that holds the address.
    pub owner: String,
}

/// An allocated tunnel key. Keyed by the key, zero-padded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TunnelKeyAlloc {
    pub key: u32,
    pub owner: String,
}

/// Any record, tagged with its kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyRecord {
    Host(Host),
    Bridge(Bridge),
    Router(Router),
    Port(Port),
    Route(Route),
    Chain(Chain),
    LoadBalancer(LoadBalancer),
    PortBinding(PortBinding),
    IpLease(IpLease),
    TunnelKey(TunnelKeyAlloc),
    MemberHealth(MemberHealth),
}

macro_rules! record {
    ($ty:ident, $variant:ident, $kind:expr, |$s:ident| $id:expr) => {
        impl Record for $ty {
            const KIND: Kind = $kind;
            fn id(&self) -> String {
                let $s = self;
                $id
            }
            fn into_any(self) -> AnyRecord {
                AnyRecord::$variant(self)
            }
            fn from_any(any: &AnyRecord) -> Option<&Self> {
                match any {
                    AnyRecord::$variant(r) => Some(r),
                    _ => None,
                }
            }
        }
    };
}

record!(Host, Host, Kind::Host, |s| s.id.clone());
record!(Bridge, Bridge, Kind::Bridge, |s| s.id.clone());
record!(Router, Router, Kind::Router, |s| s.id.clone());
record!(Port, Port, Kind::Port, |s| s.id.clone());
record!(Route, Route, Kind::Route, |s| s.id.clone());
record!(Chain, Chain, Kind::Chain, |s| s.id.clone());
record!(LoadBalancer, LoadBalancer, Kind::LoadBalancer, |s| s
    .id
    .clone());
record!(PortBinding, PortBinding, Kind::PortBinding, |s| s
    .port
    .clone());
record!(IpLease, IpLease, Kind::IpLease, |s| keys::lease_id(
    &s.bridge, s.ip
));
record!(TunnelKeyAlloc, TunnelKey, Kind::TunnelKey, |s| {
    keys::tunnel_key_id(s.key)
});
record!(MemberHealth, MemberHealth, Kind::MemberHealth, |s| {
    keys::member_health_id(&s.lb, s.member)
});

impl AnyRecord {
    /// The kind of the wrapped record.
    pub fn kind(&self) -> Kind {
        match self {
            AnyRecord::Host(_) => Kind::Host,
            AnyRecord::Bridge(_) => Kind::Bridge,
            AnyRecord::Router(_) => Kind::Router,
            AnyRecord::Port(_) => Kind::Port,
            AnyRecord::Route(_) => Kind::Route,
            AnyRecord::Chain(_) => Kind::Chain,
            AnyRecord::LoadBalancer(_) => Kind::LoadBalancer,
            AnyRecord::PortBinding(_) => Kind::PortBinding,
            AnyRecord::IpLease(_) => Kind::IpLease,
            AnyRecord::TunnelKey(_) => Kind::TunnelKey,
            AnyRecord::MemberHealth(_) => Kind::MemberHealth,
        }
    }

    /// The id of the wrapped record.
    pub fn id(&self) -> String {
        match self {
            AnyRecord::Host(r) => r.id(),
            AnyRecord::Bridge(r) => r.id(),
            AnyRecord::Router(r) => r.id(),
            AnyRecord::Port(r) => r.id(),
            AnyRecord::Route(r) => r.id(),
            AnyRecord::Chain(r) => r.id(),
            AnyRecord::LoadBalancer(r) => r.id(),
            AnyRecord::PortBinding(r) => r.id(),
            AnyRecord::IpLease(r) => r.id(),
            AnyRecord::TunnelKey(r) => r.id(),
            AnyRecord::MemberHealth(r) => r.id(),
        }
    }

    /// The full etcd key of the wrapped record.
    pub fn key(&self) -> String {
        self.kind().key(&self.id())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<AnyRecord> {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_owned(), "web".to_owned());
        vec![
            Host {
                id: "node-1".into(),
                underlay_ip: "192.168.1.10".parse().unwrap(),
                tunnel: TunnelType::Vxlan,
                tunnel_udp_port: 4789,
                mtu: 1500,
            }
            .into_any(),
            Host {
                id: "node-2".into(),
                underlay_ip: "fd00::2".parse().unwrap(),
                tunnel: TunnelType::Geneve,
                tunnel_udp_port: 6081,
                mtu: 9000,
            }
            .into_any(),
            Bridge {
                id: "b1".into(),
                name: "default".into(),
                tunnel_key: 7,
                subnet_v4: Some("10.0.0.0/24".parse().unwrap()),
                subnet_v6: Some("fd00:10::/64".parse().unwrap()),
                gateway_v4: Some("10.0.0.1".parse().unwrap()),
                gateway_v6: None,
                mtu: 1450,
                vlan: Some(100),
                excluded_ips: vec!["10.0.0.2".parse().unwrap(), "fd00:10::9".parse().unwrap()],
                inbound_chain: Some("c-in".into()),
                outbound_chain: None,
                namespaces: vec!["team-a".into()],
            }
            .into_any(),
            Bridge {
                id: "b-empty".into(),
                name: "bare".into(),
                tunnel_key: 8,
                subnet_v4: None,
                subnet_v6: None,
                gateway_v4: None,
                gateway_v6: None,
                mtu: 1500,
                vlan: None,
                excluded_ips: vec![],
                inbound_chain: None,
                outbound_chain: None,
                namespaces: vec![],
            }
            .into_any(),
            Router {
                id: "r1".into(),
                name: "edge".into(),
                tunnel_key: 9,
                inbound_chain: None,
                outbound_chain: Some("c-out".into()),
                snat: Some(Snat {
                    port: "r1-uplink".into(),
                    addresses: vec!["203.0.113.5".parse().unwrap()],
                    port_range: (1024, 65535),
                }),
                dnat: vec![
                    DnatRule {
                        external_ip: "203.0.113.6".parse().unwrap(),
                        internal_ip: "10.0.0.5".parse().unwrap(),
                        protocol: Some(Protocol::Tcp),
                        external_port: Some(80),
                        internal_port: Some(8080),
                    },
                    DnatRule {
                        external_ip: "203.0.113.7".parse().unwrap(),
                        internal_ip: "10.0.0.6".parse().unwrap(),
                        protocol: None,
                        external_port: None,
                        internal_port: None,
                    },
                ],
            }
            .into_any(),
            Port {
                id: "p1".into(),
                device: DeviceRef::Bridge("b1".into()),
                kind: PortKind::Exterior,
                mac: "02:00:0a:00:00:05".parse().unwrap(),
                addresses: vec!["10.0.0.5/32".parse().unwrap()],
                tunnel_key: 0x10,
                inbound_chain: None,
                outbound_chain: None,
                admin_up: true,
                labels,
                named_ports: vec![NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                }],
                namespace_labels: BTreeMap::from([(
                    crate::LABEL_NAMESPACE_NAME.to_owned(),
                    "x".to_owned(),
                )]),
            }
            .into_any(),
            Port {
                named_ports: Vec::new(),
                namespace_labels: Default::default(),
                id: "r1-b1".into(),
                device: DeviceRef::Router("r1".into()),
                kind: PortKind::Interior {
                    peer: "b1-r1".into(),
                },
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                addresses: vec![
                    "10.0.0.1/24".parse().unwrap(),
                    "fd00:10::1/64".parse().unwrap(),
                ],
                tunnel_key: 0x11,
                inbound_chain: Some("c-in".into()),
                outbound_chain: Some("c-out".into()),
                admin_up: false,
                labels: BTreeMap::new(),
            }
            .into_any(),
            Port {
                named_ports: Vec::new(),
                namespace_labels: Default::default(),
                id: "r1-uplink".into(),
                device: DeviceRef::Router("r1".into()),
                kind: PortKind::Uplink,
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
                addresses: vec!["203.0.113.5/24".parse().unwrap()],
                tunnel_key: 0x12,
                inbound_chain: None,
                outbound_chain: None,
                admin_up: true,
                labels: BTreeMap::new(),
            }
            .into_any(),
            Route {
                id: "rt1".into(),
                router: "r1".into(),
                dst: "0.0.0.0/0".parse().unwrap(),
                next_hop: Some("203.0.113.1".parse().unwrap()),
                port: "r1-uplink".into(),
                weight: 100,
            }
            .into_any(),
            Route {
                id: "rt2".into(),
                router: "r1".into(),
                dst: "fd00:10::/64".parse().unwrap(),
                next_hop: None,
                port: "r1-b1".into(),
                weight: 1,
            }
            .into_any(),
            Chain {
                pods: Some(PodAttachment {
                    direction: PodDirection::Ingress,
                    selector: crate::PortSelector::in_namespace(
                        "x",
                        crate::LabelSelector::label("app", "web"),
                    ),
                    mode: PodAttachMode::Allow,
                }),
                id: "c-in".into(),
                name: "allow-web".into(),
                rules: vec![
                    Rule {
                        ct_state: Some(CtMatch {
                            new: None,
                            established: Some(true),
                            related: Some(true),
                        }),
                        ..Rule::matching_all("r-est", RuleAction::Accept)
                    },
                    Rule {
                        dst_port_name: Some("http".into()),
                        dst_selector: None,
                        src_selector: Some(crate::PortSelector::default()),
                        id: "r-web".into(),
                        src: Some("10.1.0.0/16".parse().unwrap()),
                        dst: Some("10.0.0.0/24".parse().unwrap()),
                        inv_src: true,
                        inv_dst: false,
                        protocol: Some(Protocol::Tcp),
                        src_ports: Some((1024, 65535)),
                        dst_ports: Some((80, 80)),
                        icmp_type: None,
                        icmp_code: None,
                        ct_state: None,
                        action: RuleAction::Jump("c-out".into()),
                    },
                    Rule {
                        dst_port_name: None,
                        dst_selector: None,
                        src_selector: None,
                        id: "r-icmp".into(),
                        src: None,
                        dst: None,
                        inv_src: false,
                        inv_dst: true,
                        protocol: Some(Protocol::Icmp),
                        src_ports: None,
                        dst_ports: None,
                        icmp_type: Some(8),
                        icmp_code: Some(0),
                        ct_state: None,
                        action: RuleAction::Reject,
                    },
                ],
                default_action: RuleAction::Drop,
            }
            .into_any(),
            Chain {
                pods: None,
                id: "c-out".into(),
                name: "out".into(),
                rules: vec![],
                default_action: RuleAction::Return,
            }
            .into_any(),
            LoadBalancer {
                id: "lb1".into(),
                name: "svc-web".into(),
                router: Some("r1".into()),
                vips: vec![Vip {
                    member_selector: None,
                    target_port: None,
                    ip: "10.96.0.10".parse().unwrap(),
                    protocol: Protocol::Udp,
                    port: 53,
                    members: vec![
                        Member {
                            ip: "10.0.0.5".parse().unwrap(),
                            port: 5353,
                            weight: 1,
                            healthy: true,
                        },
                        Member {
                            ip: "10.0.0.6".parse().unwrap(),
                            port: 5353,
                            weight: 3,
                            healthy: false,
                        },
                    ],
                    session_affinity: true,
                    affinity_timeout_s: None,
                }],
                health_check: Some(HealthCheck {
                    kind: ProbeKind::Http,
                    path: Some("/healthz".into()),
                    interval_s: 5,
                    timeout_s: 2,
                    rise: 2,
                    fall: 3,
                }),
            }
            .into_any(),
            PortBinding {
                port: "p1".into(),
                host: "node-1".into(),
                vport: "wf1a2b3c4d".into(),
            }
            .into_any(),
            IpLease {
                bridge: "b1".into(),
                ip: "10.0.0.5".parse().unwrap(),
                owner: "p1".into(),
            }
            .into_any(),
            IpLease {
                bridge: "b1".into(),
                ip: "fd00:10::5".parse().unwrap(),
                owner: "p1".into(),
            }
            .into_any(),
            TunnelKeyAlloc {
                key: 0x10,
                owner: "p1".into(),
            }
            .into_any(),
            MemberHealth {
                lb: "lb1".into(),
                member: "[fd00::6]:8080".parse().unwrap(),
                healthy: false,
                host: "node-1".into(),
            }
            .into_any(),
        ]
    }

    fn roundtrip<R: Record>(r: &R) {
        let json = serde_json::to_string(r).unwrap();
        let back: R = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, r, "round trip of {json}");
    }

    #[test]
    fn every_record_round_trips() {
        let samples = samples();
        let mut kinds: Vec<Kind> = samples.iter().map(AnyRecord::kind).collect();
        kinds.dedup();
        assert_eq!(
            kinds,
            Kind::ALL.to_vec(),
            "samples cover every kind in order"
        );
        for s in &samples {
            match s {
                AnyRecord::Host(r) => roundtrip(r),
                AnyRecord::Bridge(r) => roundtrip(r),
                AnyRecord::Router(r) => roundtrip(r),
                AnyRecord::Port(r) => roundtrip(r),
                AnyRecord::Route(r) => roundtrip(r),
                AnyRecord::Chain(r) => roundtrip(r),
                AnyRecord::LoadBalancer(r) => roundtrip(r),
                AnyRecord::PortBinding(r) => roundtrip(r),
                AnyRecord::IpLease(r) => roundtrip(r),
                AnyRecord::TunnelKey(r) => roundtrip(r),
                AnyRecord::MemberHealth(r) => roundtrip(r),
            }
        }
    }

    #[test]
    fn json_shape_is_readable() {
        let p = Port {
            named_ports: Vec::new(),
            namespace_labels: Default::default(),
            id: "p1".into(),
            device: DeviceRef::Bridge("b1".into()),
            kind: PortKind::Interior { peer: "x".into() },
            mac: MacAddr([0xaa, 0xbb, 0xcc, 0, 1, 0xff]),
            addresses: vec!["10.0.0.5/32".parse().unwrap()],
            tunnel_key: 3,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: BTreeMap::new(),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["mac"], "aa:bb:cc:00:01:ff");
        assert_eq!(v["device"]["bridge"], "b1");
        assert_eq!(v["kind"]["interior"]["peer"], "x");
        assert_eq!(v["addresses"][0], "10.0.0.5/32");
        let a = serde_json::to_value(RuleAction::Jump("c2".into())).unwrap();
        assert_eq!(a["jump"], "c2");
        assert_eq!(serde_json::to_value(RuleAction::Drop).unwrap(), "drop");
        assert_eq!(serde_json::to_value(PortKind::Uplink).unwrap(), "uplink");
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let b: Bridge =
            serde_json::from_str(r#"{"id":"b","name":"n","tunnel_key":1,"mtu":1500}"#).unwrap();
        assert_eq!(b.subnet_v4, None);
        assert!(b.excluded_ips.is_empty());
    }

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "02:AB:cd:00:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:00:01");
        for bad in [
            "",
            "02:ab:cd:00:00",
            "02:ab:cd:00:00:01:02",
            "0g:00:00:00:00:00",
            "2:ab:cd:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<MacAddr>("\"zz\"").is_err());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        let l = MacAddr::local_from_name("port-1");
        assert_eq!(l, MacAddr::local_from_name("port-1"));
        assert_ne!(l, MacAddr::local_from_name("port-2"));
        assert_eq!(l.0[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn keys_of_records() {
        let s = samples();
        let keys: Vec<String> = s.iter().map(AnyRecord::key).collect();
        assert!(keys.contains(&"/weft/v1/leases/b1/10.0.0.5".to_owned()));
        assert!(keys.contains(&"/weft/v1/port_bindings/p1".to_owned()));
        assert!(keys.contains(&"/weft/v1/tunnel_keys/00000016".to_owned()));
        for r in &s {
            let key = r.key();
            let (kind, id) = keys::parse(&key).unwrap();
            assert_eq!(kind, r.kind());
            assert_eq!(id, r.id());
            keys::validate_id(kind, id).unwrap();
        }
    }
}
