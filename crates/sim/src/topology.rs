//! The compiled topology snapshot: NSDB records turned into indexed, integer-keyed tables so
//! that every lookup of the walk is O(1) or O(log n) and allocates nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use nsdb::{
    AnyRecord, Bridge, Chain, DeviceRef, Host, LABEL_NAMESPACE_NAME, LoadBalancer, MemberHealth,
    PodAttachMode, PodDirection, Port, PortBinding, PortKind, Route, Router,
};

use crate::acl::{self, ChainC};
use crate::error::SimError;
use crate::hash::FxMap;
use crate::lpm::PrefixTable;
use crate::tag::Tag;

/// Index into one of the topology's tables.
pub(crate) type Idx = u32;

/// Port label holding the MAC of the external next hop behind an uplink port
/// (the simulation is pure and cannot ARP for it).
pub const LABEL_NEXT_HOP_MAC: &str = "weft.dev/next-hop-mac";

/// The NSDB records a snapshot is compiled from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordSet {
    /// Hosts.
    pub hosts: Vec<Host>,
    /// Bridges.
    pub bridges: Vec<Bridge>,
    /// Routers.
    pub routers: Vec<Router>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Rule chains.
    pub chains: Vec<Chain>,
    /// Load balancers.
    pub load_balancers: Vec<LoadBalancer>,
    /// Port bindings.
    pub bindings: Vec<PortBinding>,
    /// Health verdicts on load balancer members, from the agents that probe them.
    pub member_health: Vec<MemberHealth>,
}

impl RecordSet {
    /// Every record of the set, as NSDB stores them (the inverse of [`RecordSet::from_records`]).
    pub fn to_records(&self) -> Vec<AnyRecord> {
        let mut v = Vec::new();
        v.extend(self.hosts.iter().cloned().map(AnyRecord::Host));
        v.extend(self.bridges.iter().cloned().map(AnyRecord::Bridge));
        v.extend(self.routers.iter().cloned().map(AnyRecord::Router));
        v.extend(self.ports.iter().cloned().map(AnyRecord::Port));
        v.extend(self.routes.iter().cloned().map(AnyRecord::Route));
        v.extend(self.chains.iter().cloned().map(AnyRecord::Chain));
        v.extend(
            self.load_balancers
                .iter()
                .cloned()
                .map(AnyRecord::LoadBalancer),
        );
        v.extend(self.bindings.iter().cloned().map(AnyRecord::PortBinding));
        v.extend(
            self.member_health
                .iter()
                .cloned()
                .map(AnyRecord::MemberHealth),
        );
        v
    }

    /// Sorts records of any kind into a set; leases and tunnel-key allocations are not needed.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a AnyRecord>) -> RecordSet {
        let mut s = RecordSet::default();
        for r in records {
            match r {
                AnyRecord::Host(x) => s.hosts.push(x.clone()),
                AnyRecord::Bridge(x) => s.bridges.push(x.clone()),
                AnyRecord::Router(x) => s.routers.push(x.clone()),
                AnyRecord::Port(x) => s.ports.push(x.clone()),
                AnyRecord::Route(x) => s.routes.push(x.clone()),
                AnyRecord::Chain(x) => s.chains.push(x.clone()),
                AnyRecord::LoadBalancer(x) => s.load_balancers.push(x.clone()),
                AnyRecord::PortBinding(x) => s.bindings.push(x.clone()),
                AnyRecord::MemberHealth(x) => s.member_health.push(x.clone()),
                AnyRecord::IpLease(_) | AnyRecord::TunnelKey(_) => {}
            }
        }
        s
    }
}

/// What the local datapath looks like: the agent owns it and passes it in, so the snapshot
/// can name datapath port numbers in `output()` actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalDatapath {
    /// Datapath port number of the flow-based tunnel vport (`weft-tun`).
    pub tunnel_port: u32,
    /// Datapath port number of each local vport, by vport name (`wf...`).
    pub vports: BTreeMap<String, u32>,
    /// Where a VIP's member is chosen for a new connection.
    pub member_choice: MemberChoice,
}

/// Where the member of a VIP without session affinity is chosen for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemberChoice {
    /// In the kernel: the tracked pass hashes the connection (`hash(l4(0))`) and
    /// recirculates, and one flow per bucket of the VIP's table ([`crate::buckets`]) picks
    /// the member. No flow reads the client's port, so once a bucket's flow is installed, new
    /// connections that land in it never leave the kernel.
    #[default]
    Datapath,
    /// In the simulation, by a hash of the 5-tuple: one upcall and one megaflow per
    /// connection.
    Simulation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dev {
    Bridge(Idx),
    Router(Idx),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PKind {
    Exterior,
    Interior(Idx),
    Uplink,
}

/// Where an exterior or uplink port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loc {
    /// Bound to this host and present in the datapath with this port number.
    Local(u32),
    /// Bound to this host but its vport is not in the datapath (yet).
    LocalDetached,
    /// Bound to another host.
    Remote(Idx),
    /// Not bound, or interior.
    Unbound,
}

#[derive(Debug, Clone)]
pub(crate) struct SnatC {
    pub min: Ipv4Addr,
    pub max: Ipv4Addr,
    pub ports: (u16, u16),
}

#[derive(Debug, Clone)]
pub(crate) struct PortC {
    pub id: String,
    pub tag: Tag,
    pub dev: Dev,
    pub kind: PKind,
    pub mac: [u8; 6],
    pub v4: Vec<(u32, u8)>,
    pub v6: Vec<(u128, u8)>,
    pub tunnel_key: u32,
    pub zone: u16,
    pub in_chain: Option<Idx>,
    pub out_chain: Option<Idx>,
    pub admin_up: bool,
    pub loc: Loc,
    /// Eagerly send the packet through this port's zone at ingress.
    pub ct_ingress: bool,
    /// Send delivered packets through this port's zone before output.
    pub ct_delivery: bool,
    /// The port's own chains, policies or NAT need its zone for every packet delivered to
    /// it. Without them, [`Self::ct_delivery`] only serves replies of connections translated
    /// in the port's zone, which the forward direction of a translated connection is not.
    pub ct_delivery_own: bool,
    pub snat: Option<SnatC>,
    pub next_hop_mac: Option<[u8; 6]>,
    /// Chains attached to this pod port by selector, for traffic delivered to it, in chain
    /// id order.
    pub pod_in: Vec<(Idx, PodAttachMode)>,
    /// Chains attached to this pod port by selector, for traffic it sends.
    pub pod_out: Vec<(Idx, PodAttachMode)>,
    /// The pod's named container ports: (name, IP protocol, port).
    pub named_ports: Vec<(String, u8, u16)>,
}

#[derive(Debug, Clone)]
pub(crate) struct BridgeC {
    pub id: String,
    pub tag: Tag,
    pub vlan: Option<u16>,
    pub in_chain: Option<Idx>,
    pub out_chain: Option<Idx>,
    /// Local exterior ports that receive unknown unicast and broadcast.
    pub flood: Vec<Idx>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The address is one of this router's port addresses.
    Local(Idx),
    /// A set of equal-prefix routes (ECMP).
    Group(Idx),
}

#[derive(Debug, Clone)]
pub(crate) struct GroupC {
    /// (route, cumulative weight).
    pub routes: Vec<(Idx, u32)>,
    pub total: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct RouteC {
    pub id: String,
    pub tag: Tag,
    pub port: Idx,
    pub next_hop: Option<u32>,
    pub next_hop6: Option<u128>,
}

#[derive(Debug, Clone)]
pub(crate) struct DnatC {
    pub external: u32,
    pub internal: u32,
    pub proto: Option<u8>,
    pub ext_port: Option<u16>,
    pub int_port: Option<u16>,
}

#[derive(Debug, Clone)]
pub(crate) struct RouterC {
    pub id: String,
    pub tag: Tag,
    pub in_chain: Option<Idx>,
    pub out_chain: Option<Idx>,
    pub lpm: PrefixTable<u32, Target>,
    /// IPv6 routes and own addresses (as /128), sharing `groups` with the IPv4 table.
    pub lpm6: PrefixTable<u128, Target>,
    pub groups: Vec<GroupC>,
    pub dnat: Vec<DnatC>,
    /// VIP and DNAT external addresses of this router, as /32 prefixes.
    pub nat_ips: PrefixTable<u32, ()>,
    /// IPv6 VIP addresses of this router, as /128 prefixes.
    pub nat_ips6: PrefixTable<u128, ()>,
}

#[derive(Debug, Clone)]
pub(crate) struct HostC {
    pub id: String,
    pub tag: Tag,
    pub underlay: IpAddr,
    pub udp_port: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberC {
    /// Of the VIP's address family.
    pub ip: IpAddr,
    pub port: u16,
    /// Cumulative weight.
    pub cum: u32,
}

/// Per bucket of a VIP chosen in the datapath, the index of its member in
/// [`VipC::members`]; `dp_hash & (len - 1)` is the bucket.
pub(crate) type BucketTable = Vec<u16>;

#[derive(Debug, Clone)]
pub(crate) struct VipC {
    pub lb_tag: Tag,
    pub ip: IpAddr,
    pub port: u16,
    pub members: Vec<MemberC>,
    pub total: u32,
    /// Empty when the simulation chooses the member (one member, session affinity, or
    /// [`MemberChoice::Simulation`]).
    pub buckets: BucketTable,
    /// Names the VIP in its buckets' tags ([`Tag::lb_bucket`]).
    pub bucket_key: u64,
    pub affinity: bool,
    /// How long a client's member is remembered, in seconds.
    pub affinity_timeout_s: u32,
}

/// The scope of a VIP attached to no router in the VIP index: it applies at ingress.
pub(crate) const GLOBAL: Idx = Idx::MAX;

/// A compiled, immutable topology snapshot. Build one per NSDB change with
/// [`Topology::compile`] and share it (for example through `arc-swap`) with the threads that
/// simulate.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) local_host: Idx,
    pub(crate) tunnel_port: u32,
    pub(crate) hosts: Vec<HostC>,
    pub(crate) ports: Vec<PortC>,
    pub(crate) bridges: Vec<BridgeC>,
    pub(crate) routers: Vec<RouterC>,
    pub(crate) routes: Vec<RouteC>,
    pub(crate) chains: Vec<ChainC>,
    pub(crate) vips: Vec<VipC>,
    pub(crate) port_by_id: HashMap<String, Idx>,
    pub(crate) port_by_vport: HashMap<(String, String), Idx>,
    pub(crate) port_by_dp: FxMap<u32, Idx>,
    pub(crate) port_by_key: FxMap<u32, Idx>,
    pub(crate) mac_table: FxMap<(Idx, [u8; 6]), Idx>,
    pub(crate) arp_table: FxMap<(Idx, u32), [u8; 6]>,
    /// Per bridge, IPv6 address -> (MAC, the owner is a router port).
    pub(crate) nd_table: FxMap<(Idx, u128), ([u8; 6], bool)>,
    pub(crate) vip_index: FxMap<(Idx, u32, u8, u16), Idx>,
    pub(crate) vip6_index: FxMap<(Idx, u128, u8, u16), Idx>,
    /// VIPs with buckets by their own bucket-stage recirculation id ([`crate::vip_recirc`]),
    /// for the ids no other such VIP shares.
    pub(crate) vip_by_recirc: FxMap<u32, Idx>,
    pub(crate) has_global_vips: bool,
    pub(crate) global_nat_ips: PrefixTable<u32, ()>,
    pub(crate) global_nat_ips6: PrefixTable<u128, ()>,
    /// Pod ports by address, to resolve a destination's named ports.
    pub(crate) pod_by_v4: FxMap<u32, Idx>,
    pub(crate) pod_by_v6: FxMap<u128, Idx>,
    /// The addresses of this host's own node ports (sorted): their traffic to a pod of this
    /// host passes the pod's ingress isolation.
    pub(crate) node_v4: Vec<u32>,
    pub(crate) node_v6: Vec<u128>,
    pub(crate) problems: Vec<SimError>,
}

/// The conntrack zone of a port: the low 16 bits of its tunnel key (0 is the kernel's
/// default zone and is avoided). Zones only need to be distinct among the ports of one host;
/// two ports whose key indexes differ by a multiple of 65536 share a zone.
pub fn zone_of_key(tunnel_key: u32) -> u16 {
    match (tunnel_key & 0xffff) as u16 {
        0 => 0xffff,
        z => z,
    }
}

/// The conntrack zone in which a pod whose port has `zone` keeps the destination NAT of its
/// connections to a Service that chose the pod itself (hairpin): never the port's own zone,
/// which keeps the source NAT of the same connections, and never 0. Sharing it with another
/// port's zone is harmless: every entry in it has the pod's own address on both sides.
pub fn hairpin_zone(zone: u16) -> u16 {
    match zone ^ 0x8000 {
        0 => 1,
        z => z,
    }
}

#[derive(Debug, Clone, Copy)]
enum NextHop {
    Direct,
    V4(u32),
    V6(u128),
}

/// Groups one router's routes of one family by prefix (ECMP groups, weights cumulated in
/// route-id order so the choice does not depend on record order) and returns the LPM entries.
fn group_routes<T: Copy + Ord>(
    mut list: Vec<(T, u8, Idx, u32)>,
    routes: &[RouteC],
    groups: &mut Vec<GroupC>,
) -> Vec<(T, u8, Target)> {
    list.sort_by(|a, b| {
        (a.0, a.1, &routes[a.2 as usize].id).cmp(&(b.0, b.1, &routes[b.2 as usize].id))
    });
    let mut entries = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let (net, len) = (list[i].0, list[i].1);
        let mut g = GroupC {
            routes: Vec::new(),
            total: 0,
        };
        while i < list.len() && list[i].0 == net && list[i].1 == len {
            g.total = g.total.saturating_add(list[i].3);
            g.routes.push((list[i].2, g.total));
            i += 1;
        }
        entries.push((net, len, Target::Group(groups.len() as Idx)));
        groups.push(g);
    }
    entries
}

fn ipv4_of(ip: IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(a) => Some(u32::from(a)),
        IpAddr::V6(_) => None,
    }
}

impl Topology {
    /// Compiles records into a snapshot for `local_host`, whose datapath is `dp`.
    ///
    /// Records that refer to missing objects are left out and reported in
    /// [`Topology::problems`]; only a missing local host record is an error.
    pub fn compile(
        records: &RecordSet,
        local_host: &str,
        dp: &LocalDatapath,
    ) -> Result<Topology, SimError> {
        let mut problems = Vec::new();

        // Hosts.
        let hosts: Vec<HostC> = records
            .hosts
            .iter()
            .map(|h| HostC {
                id: h.id.clone(),
                tag: Tag::host(&h.id),
                underlay: h.underlay_ip,
                udp_port: h.tunnel_udp_port,
            })
            .collect();
        let host_idx: HashMap<&str, Idx> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.id.as_str(), i as Idx))
            .collect();
        let local = *host_idx
            .get(local_host)
            .ok_or_else(|| SimError::UnknownLocalHost {
                host: local_host.to_owned(),
            })?;

        // Chains.
        let chains = acl::compile_chains(&records.chains, &records.ports, &mut problems);
        let chain_idx: HashMap<&str, Idx> = chains
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i as Idx))
            .collect();
        let chain_ref = |owner: &str, c: &Option<String>, problems: &mut Vec<SimError>| {
            c.as_ref().and_then(|id| match chain_idx.get(id.as_str()) {
                Some(i) => Some(*i),
                None => {
                    problems.push(SimError::ChainMissing {
                        owner: owner.to_owned(),
                        chain: id.clone(),
                    });
                    None
                }
            })
        };

        // Devices.
        let mut bridges: Vec<BridgeC> = Vec::new();
        let mut bridge_idx: HashMap<&str, Idx> = HashMap::new();
        for b in &records.bridges {
            bridge_idx.insert(&b.id, bridges.len() as Idx);
            bridges.push(BridgeC {
                id: b.id.clone(),
                tag: Tag::device(&b.id),
                vlan: b.vlan,
                in_chain: chain_ref(&b.id, &b.inbound_chain, &mut problems),
                out_chain: chain_ref(&b.id, &b.outbound_chain, &mut problems),
                flood: Vec::new(),
            });
        }
        let mut router_idx: HashMap<&str, Idx> = HashMap::new();
        for (i, r) in records.routers.iter().enumerate() {
            router_idx.insert(&r.id, i as Idx);
        }

        // Bindings. A vport of a host is one interface: two ports bound to it would both
        // claim its traffic, so neither is taken as bound and the clash is a problem.
        let mut by_vport: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for b in &records.bindings {
            by_vport
                .entry((b.host.as_str(), b.vport.as_str()))
                .or_default()
                .push(b.port.as_str());
        }
        let mut clashing: HashSet<&str> = HashSet::new();
        for ((host, vport), bound) in &by_vport {
            if bound.len() > 1 {
                let mut ports: Vec<String> = bound.iter().map(|p| p.to_string()).collect();
                ports.sort();
                clashing.extend(bound.iter().copied());
                problems.push(SimError::DuplicateBinding {
                    host: host.to_string(),
                    vport: vport.to_string(),
                    ports,
                });
            }
        }
        let mut binding: HashMap<&str, &PortBinding> = HashMap::new();
        for b in &records.bindings {
            if !clashing.contains(b.port.as_str()) {
                binding.insert(&b.port, b);
            }
        }

        // Ports, first pass: everything but interior peers.
        let mut ports: Vec<PortC> = Vec::new();
        let mut port_by_id: HashMap<String, Idx> = HashMap::new();
        let mut port_by_key: FxMap<u32, Idx> = FxMap::default();
        for p in &records.ports {
            let dev = match &p.device {
                DeviceRef::Bridge(id) => bridge_idx.get(id.as_str()).map(|i| Dev::Bridge(*i)),
                DeviceRef::Router(id) => router_idx.get(id.as_str()).map(|i| Dev::Router(*i)),
            };
            let Some(dev) = dev else {
                problems.push(SimError::PortDeviceMissing {
                    port: p.id.clone(),
                    device: p.device.id().to_owned(),
                });
                continue;
            };
            let key = p.tunnel_key & 0x00ff_ffff;
            if let Some(other) = port_by_key.get(&key) {
                problems.push(SimError::DuplicateTunnelKey {
                    key,
                    first: ports[*other as usize].id.clone(),
                    second: p.id.clone(),
                });
                continue;
            }
            let loc = match (&p.kind, binding.get(p.id.as_str())) {
                (PortKind::Interior { .. }, _) | (_, None) => Loc::Unbound,
                (_, Some(b)) => match host_idx.get(b.host.as_str()) {
                    None => {
                        problems.push(SimError::BadBinding {
                            port: p.id.clone(),
                            host: b.host.clone(),
                            reason: "no such host",
                        });
                        Loc::Unbound
                    }
                    Some(&h) if h == local => match dp.vports.get(&b.vport) {
                        Some(&n) => Loc::Local(n),
                        None => Loc::LocalDetached,
                    },
                    Some(&h) => Loc::Remote(h),
                },
            };
            let v4 = p
                .addresses
                .iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some((u32::from(n.addr()), n.prefix_len())),
                    IpNet::V6(_) => None,
                })
                .collect();
            let v6 = p
                .addresses
                .iter()
                .filter_map(|n| match n {
                    IpNet::V6(n) => Some((u128::from(n.addr()), n.prefix_len())),
                    IpNet::V4(_) => None,
                })
                .collect();
            let next_hop_mac = p
                .labels
                .get(LABEL_NEXT_HOP_MAC)
                .and_then(|s| s.parse::<nsdb::MacAddr>().ok())
                .map(|m| m.0);
            let idx = ports.len() as Idx;
            port_by_id.insert(p.id.clone(), idx);
            port_by_key.insert(key, idx);
            ports.push(PortC {
                id: p.id.clone(),
                tag: Tag::port(&p.id),
                dev,
                kind: match p.kind {
                    PortKind::Exterior => PKind::Exterior,
                    PortKind::Uplink => PKind::Uplink,
                    // Resolved below.
                    PortKind::Interior { .. } => PKind::Interior(Idx::MAX),
                },
                mac: p.mac.0,
                v4,
                v6,
                tunnel_key: key,
                zone: zone_of_key(key),
                in_chain: chain_ref(&p.id, &p.inbound_chain, &mut problems),
                out_chain: chain_ref(&p.id, &p.outbound_chain, &mut problems),
                admin_up: p.admin_up,
                loc,
                ct_ingress: false,
                ct_delivery: false,
                ct_delivery_own: false,
                snat: None,
                next_hop_mac,
                pod_in: Vec::new(),
                pod_out: Vec::new(),
                named_ports: p
                    .named_ports
                    .iter()
                    .map(|n| (n.name.clone(), n.protocol.number(), n.port))
                    .collect(),
            });
        }

        // Pod ports: chains attached by selector, and the addresses that name them.
        let mut pod_by_v4: FxMap<u32, Idx> = FxMap::default();
        let mut pod_by_v6: FxMap<u128, Idx> = FxMap::default();
        let mut attached: Vec<(&str, Idx, &nsdb::PodAttachment)> = records
            .chains
            .iter()
            .filter_map(|c| {
                Some((
                    c.id.as_str(),
                    *chain_idx.get(c.id.as_str())?,
                    c.pods.as_ref()?,
                ))
            })
            .collect();
        attached.sort_by(|a, b| a.0.cmp(b.0));
        let (mut node_v4, mut node_v6) = (Vec::new(), Vec::new());
        for p in &records.ports {
            let Some(&i) = port_by_id.get(&p.id) else {
                continue;
            };
            if nsdb::is_node_port(p)
                && matches!(ports[i as usize].loc, Loc::Local(_) | Loc::LocalDetached)
            {
                node_v4.extend(ports[i as usize].v4.iter().map(|a| a.0));
                node_v6.extend(ports[i as usize].v6.iter().map(|a| a.0));
            }
            if !p.namespace_labels.contains_key(LABEL_NAMESPACE_NAME) {
                continue;
            }
            let pc = &mut ports[i as usize];
            for &(_, c, a) in &attached {
                if a.selector.matches_port(p) {
                    match a.direction {
                        PodDirection::Ingress => pc.pod_in.push((c, a.mode)),
                        PodDirection::Egress => pc.pod_out.push((c, a.mode)),
                    }
                }
            }
            for &(a, _) in &pc.v4 {
                pod_by_v4.insert(a, i);
            }
            for &(a, _) in &pc.v6 {
                pod_by_v6.insert(a, i);
            }
        }
        node_v4.sort_unstable();
        node_v6.sort_unstable();

        // Interior peers must exist and point back.
        let record_of: HashMap<&str, &Port> =
            records.ports.iter().map(|p| (p.id.as_str(), p)).collect();
        for p in &records.ports {
            let PortKind::Interior { peer } = &p.kind else {
                continue;
            };
            let Some(&me) = port_by_id.get(&p.id) else {
                continue;
            };
            let reason = match port_by_id.get(peer) {
                None => Some("peer does not exist"),
                Some(&q) => {
                    let back = record_of
                        .get(peer.as_str())
                        .map(|x| matches!(&x.kind, PortKind::Interior { peer } if peer == &p.id));
                    if back == Some(true) {
                        ports[me as usize].kind = PKind::Interior(q);
                        None
                    } else {
                        Some("peer does not point back")
                    }
                }
            };
            if let Some(reason) = reason {
                problems.push(SimError::BadPeer {
                    port: p.id.clone(),
                    peer: peer.clone(),
                    reason,
                });
                // An interior port without a peer goes nowhere; mark it down.
                ports[me as usize].admin_up = false;
            }
        }

        // Bridge tables: MAC -> port, IPv4 -> MAC, flood lists.
        let mut mac_table: FxMap<(Idx, [u8; 6]), Idx> = FxMap::default();
        let mut arp_table: FxMap<(Idx, u32), [u8; 6]> = FxMap::default();
        let mut nd_table: FxMap<(Idx, u128), ([u8; 6], bool)> = FxMap::default();
        for (i, p) in ports.iter().enumerate() {
            let Dev::Bridge(b) = p.dev else { continue };
            match p.kind {
                PKind::Interior(q) if q != Idx::MAX => {
                    // The device behind the interior port answers for its own MAC and IPs.
                    let peer = &ports[q as usize];
                    mac_table.insert((b, peer.mac), i as Idx);
                    for (a, _) in &peer.v4 {
                        arp_table.insert((b, *a), peer.mac);
                    }
                    let router = matches!(peer.dev, Dev::Router(_));
                    for (a, _) in &peer.v6 {
                        nd_table.insert((b, *a), (peer.mac, router));
                    }
                }
                PKind::Interior(_) => {}
                PKind::Exterior | PKind::Uplink => {
                    mac_table.insert((b, p.mac), i as Idx);
                    for (a, _) in &p.v4 {
                        arp_table.insert((b, *a), p.mac);
                    }
                    for (a, _) in &p.v6 {
                        nd_table.insert((b, *a), (p.mac, false));
                    }
                    if let Loc::Local(_) = p.loc
                        && p.admin_up
                    {
                        bridges[b as usize].flood.push(i as Idx);
                    }
                }
            }
        }

        // Routes.
        let mut routes: Vec<RouteC> = Vec::new();
        let mut per_router: Vec<Vec<(u32, u8, Idx, u32)>> = vec![Vec::new(); records.routers.len()];
        let mut per_router6: Vec<Vec<(u128, u8, Idx, u32)>> =
            vec![Vec::new(); records.routers.len()];
        for r in &records.routes {
            let Some(&ri) = router_idx.get(r.router.as_str()) else {
                problems.push(SimError::BadRoute {
                    route: r.id.clone(),
                    reason: "router does not exist",
                });
                continue;
            };
            let Some(&pi) = port_by_id.get(&r.port) else {
                problems.push(SimError::BadRoute {
                    route: r.id.clone(),
                    reason: "egress port does not exist",
                });
                continue;
            };
            if ports[pi as usize].dev != Dev::Router(ri) {
                problems.push(SimError::BadRoute {
                    route: r.id.clone(),
                    reason: "egress port is not on the route's router",
                });
                continue;
            }
            let next_hop = match (r.dst, r.next_hop) {
                (_, None) => NextHop::Direct,
                (IpNet::V4(_), Some(IpAddr::V4(a))) => NextHop::V4(u32::from(a)),
                (IpNet::V6(_), Some(IpAddr::V6(a))) => NextHop::V6(u128::from(a)),
                _ => {
                    problems.push(SimError::BadRoute {
                        route: r.id.clone(),
                        reason: "next hop is not of the destination's address family",
                    });
                    continue;
                }
            };
            if r.weight == 0 {
                continue;
            }
            let idx = routes.len() as Idx;
            routes.push(RouteC {
                id: r.id.clone(),
                tag: Tag::route(&r.id),
                port: pi,
                next_hop: match next_hop {
                    NextHop::V4(a) => Some(a),
                    _ => None,
                },
                next_hop6: match next_hop {
                    NextHop::V6(a) => Some(a),
                    _ => None,
                },
            });
            match r.dst {
                IpNet::V4(dst) => per_router[ri as usize].push((
                    u32::from(dst.network()),
                    dst.prefix_len(),
                    idx,
                    r.weight,
                )),
                IpNet::V6(dst) => per_router6[ri as usize].push((
                    u128::from(dst.network()),
                    dst.prefix_len(),
                    idx,
                    r.weight,
                )),
            }
        }

        // Routers: LPM over routes (grouped by prefix for ECMP) and own addresses as /32.
        let mut routers: Vec<RouterC> = Vec::new();
        for (ri, r) in records.routers.iter().enumerate() {
            let mut groups: Vec<GroupC> = Vec::new();
            let mut entries =
                group_routes(std::mem::take(&mut per_router[ri]), &routes, &mut groups);
            let mut entries6 =
                group_routes(std::mem::take(&mut per_router6[ri]), &routes, &mut groups);
            for (pi, p) in ports.iter().enumerate() {
                if p.dev == Dev::Router(ri as Idx) {
                    for (a, _) in &p.v4 {
                        entries.push((*a, 32, Target::Local(pi as Idx)));
                    }
                    for (a, _) in &p.v6 {
                        entries6.push((*a, 128, Target::Local(pi as Idx)));
                    }
                }
            }
            let mut dnat = Vec::new();
            for d in &r.dnat {
                match (ipv4_of(d.external_ip), ipv4_of(d.internal_ip)) {
                    (Some(external), Some(internal)) => dnat.push(DnatC {
                        external,
                        internal,
                        proto: d.protocol.map(|p| p.number()),
                        ext_port: d.external_port,
                        int_port: d.internal_port,
                    }),
                    _ => problems.push(SimError::Unsupported {
                        object: r.id.clone(),
                        what: "IPv6 DNAT",
                    }),
                }
            }
            routers.push(RouterC {
                id: r.id.clone(),
                tag: Tag::device(&r.id),
                in_chain: chain_ref(&r.id, &r.inbound_chain, &mut problems),
                out_chain: chain_ref(&r.id, &r.outbound_chain, &mut problems),
                lpm: PrefixTable::build(entries),
                lpm6: PrefixTable::build(entries6),
                groups,
                nat_ips: PrefixTable::build(dnat.iter().map(|d| (d.external, 32, ()))),
                nat_ips6: PrefixTable::default(),
                dnat,
            });
            if let Some(s) = &r.snat {
                match port_by_id.get(&s.port) {
                    Some(&pi)
                        if ports[pi as usize].dev == Dev::Router(ri as Idx)
                            && !s.addresses.is_empty() =>
                    {
                        let min = *s.addresses.iter().min().unwrap_or(&Ipv4Addr::UNSPECIFIED);
                        let max = *s.addresses.iter().max().unwrap_or(&Ipv4Addr::UNSPECIFIED);
                        ports[pi as usize].snat = Some(SnatC {
                            min,
                            max,
                            ports: s.port_range,
                        });
                    }
                    _ => problems.push(SimError::Unsupported {
                        object: r.id.clone(),
                        what: "SNAT without an uplink port of this router or without addresses",
                    }),
                }
            }
        }

        // Load balancers.
        let mut vips: Vec<VipC> = Vec::new();
        let mut vip_index: FxMap<(Idx, u32, u8, u16), Idx> = FxMap::default();
        let mut vip6_index: FxMap<(Idx, u128, u8, u16), Idx> = FxMap::default();
        let mut has_global_vips = false;
        // A probed member is down when its verdict says so; without a verdict (never
        // probed yet, or its prober's lease expired) it counts as its record says.
        let down: HashSet<(&str, IpAddr, u16)> = records
            .member_health
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| (h.lb.as_str(), h.member.ip(), h.member.port()))
            .collect();
        for lb in &records.load_balancers {
            let probed = lb.health_check.is_some();
            let scope = match &lb.router {
                None => GLOBAL,
                Some(r) => match router_idx.get(r.as_str()) {
                    Some(&i) => i,
                    None => {
                        problems.push(SimError::PortDeviceMissing {
                            port: lb.id.clone(),
                            device: r.clone(),
                        });
                        continue;
                    }
                },
            };
            for v in &lb.vips {
                let mut members = Vec::new();
                let mut keyed: Vec<(u64, u32)> = Vec::new();
                let mut total = 0u32;
                for m in v.all_members(&records.ports) {
                    // A member of the other address family cannot take the VIP's traffic.
                    if !m.healthy || m.weight == 0 || m.ip.is_ipv4() != v.ip.is_ipv4() {
                        continue;
                    }
                    if probed && down.contains(&(lb.id.as_str(), m.ip, m.port)) {
                        continue;
                    }
                    total = total.saturating_add(m.weight);
                    keyed.push((crate::buckets::member_key(m.ip, m.port), m.weight));
                    members.push(MemberC {
                        ip: m.ip,
                        port: m.port,
                        cum: total,
                    });
                }
                has_global_vips |= scope == GLOBAL;
                let idx = vips.len() as Idx;
                match v.ip {
                    IpAddr::V4(a) => {
                        vip_index.insert((scope, u32::from(a), v.protocol.number(), v.port), idx)
                    }
                    IpAddr::V6(a) => {
                        vip6_index.insert((scope, u128::from(a), v.protocol.number(), v.port), idx)
                    }
                };
                let in_datapath = dp.member_choice == MemberChoice::Datapath
                    && !v.session_affinity
                    && (2..=crate::buckets::MAX_BUCKETS).contains(&members.len());
                let buckets = if in_datapath {
                    crate::buckets::table(&keyed, crate::buckets::buckets_for(keyed.len()))
                } else {
                    Vec::new()
                };
                vips.push(VipC {
                    lb_tag: Tag::lb(&lb.id),
                    ip: v.ip,
                    port: v.port,
                    members,
                    total,
                    buckets,
                    bucket_key: Tag::vip_key(&lb.id, v.ip, v.protocol.number(), v.port),
                    affinity: v.session_affinity,
                    affinity_timeout_s: v
                        .affinity_timeout_s
                        .unwrap_or(nsdb::DEFAULT_AFFINITY_TIMEOUT_S),
                });
            }
        }
        // Each VIP with buckets recirculates to its own id, so that its bucket flows need not
        // name it again; ids that two VIPs share are not used (they take RECIRC_LB).
        let mut vip_by_recirc: FxMap<u32, Idx> = FxMap::default();
        let mut shared_ids = std::collections::HashSet::new();
        for (i, v) in vips.iter().enumerate() {
            if v.buckets.is_empty() {
                continue;
            }
            let id = crate::walk::vip_recirc(v.bucket_key);
            if vip_by_recirc.insert(id, i as Idx).is_some() {
                shared_ids.insert(id);
            }
        }
        vip_by_recirc.retain(|id, _| !shared_ids.contains(id));
        let mut global_ips = Vec::new();
        let mut router_ips: Vec<Vec<(u32, u8, ())>> = routers
            .iter()
            .map(|r| r.dnat.iter().map(|d| (d.external, 32, ())).collect())
            .collect();
        for &(scope, ip, _, _) in vip_index.keys() {
            if scope == GLOBAL {
                global_ips.push((ip, 32u8, ()));
            } else {
                router_ips[scope as usize].push((ip, 32, ()));
            }
        }
        for (r, ips) in routers.iter_mut().zip(router_ips) {
            r.nat_ips = PrefixTable::build(ips);
        }
        let global_nat_ips = PrefixTable::build(global_ips);
        let mut global_ips6 = Vec::new();
        let mut router_ips6: Vec<Vec<(u128, u8, ())>> = vec![Vec::new(); routers.len()];
        for &(scope, ip, _, _) in vip6_index.keys() {
            if scope == GLOBAL {
                global_ips6.push((ip, 128u8, ()));
            } else {
                router_ips6[scope as usize].push((ip, 128, ()));
            }
        }
        for (r, ips) in routers.iter_mut().zip(router_ips6) {
            r.nat_ips6 = PrefixTable::build(ips);
        }
        let global_nat_ips6 = PrefixTable::build(global_ips6);
        let stateful_topology = !vips.is_empty() || routers.iter().any(|r| !r.dnat.is_empty());

        // Conntrack needs of each port.
        for p in ports.iter_mut() {
            let chains_ct = p.in_chain.is_some_and(|c| chains[c as usize].uses_ct)
                || p.out_chain.is_some_and(|c| chains[c as usize].uses_ct);
            let nat_uplink = p.kind == PKind::Uplink
                && (p.snat.is_some()
                    || matches!(p.dev, Dev::Router(r) if !routers[r as usize].dnat.is_empty()));
            // A NetworkPolicy's allow-list lets replies and established connections pass:
            // an isolated pod's connections, both ways, are tracked in its zone.
            let attached_ct = p
                .pod_in
                .iter()
                .chain(&p.pod_out)
                .any(|&(c, m)| m == PodAttachMode::Allow || chains[c as usize].uses_ct);
            p.ct_ingress = chains_ct || nat_uplink || attached_ct;
            p.ct_delivery_own = chains_ct || nat_uplink || attached_ct;
            p.ct_delivery = p.ct_delivery_own || stateful_topology;
        }

        let mut port_by_vport = HashMap::new();
        let mut port_by_dp = FxMap::default();
        for b in records
            .bindings
            .iter()
            .filter(|b| !clashing.contains(b.port.as_str()))
        {
            if let Some(&pi) = port_by_id.get(&b.port) {
                port_by_vport.insert((b.host.clone(), b.vport.clone()), pi);
                if let Loc::Local(n) = ports[pi as usize].loc {
                    port_by_dp.insert(n, pi);
                }
            } else {
                problems.push(SimError::BadBinding {
                    port: b.port.clone(),
                    host: b.host.clone(),
                    reason: "no such port",
                });
            }
        }

        Ok(Topology {
            local_host: local,
            tunnel_port: dp.tunnel_port,
            hosts,
            ports,
            bridges,
            routers,
            routes,
            chains,
            vips,
            port_by_id,
            port_by_vport,
            port_by_dp,
            port_by_key,
            mac_table,
            arp_table,
            nd_table,
            vip_index,
            vip6_index,
            vip_by_recirc,
            has_global_vips,
            global_nat_ips,
            global_nat_ips6,
            pod_by_v4,
            pod_by_v6,
            node_v4,
            node_v6,
            problems,
        })
    }

    /// The id of the host this snapshot was compiled for.
    pub fn local_host(&self) -> &str {
        &self.hosts[self.local_host as usize].id
    }

    /// The bucket tags ([`Tag::lb_bucket`]) whose flows are stale in `self` after a change
    /// from `old` to the load balancers whose tags `changed` holds: every bucket of a VIP
    /// that went away, stopped using buckets or changed its bucket count, and each bucket
    /// whose member (address and port) changed. A bucket's flows carry its tag instead of the
    /// load balancer's, so a member change deletes only the flows of the buckets that move.
    pub fn changed_buckets(
        &self,
        old: &Topology,
        changed: impl Fn(Tag) -> bool,
        out: &mut Vec<Tag>,
    ) {
        let now: std::collections::HashMap<u64, &VipC> = self
            .vips
            .iter()
            .filter(|v| !v.buckets.is_empty())
            .map(|v| (v.bucket_key, v))
            .collect();
        for was in old
            .vips
            .iter()
            .filter(|v| !v.buckets.is_empty() && changed(v.lb_tag))
        {
            let member = |v: &VipC, b: usize| {
                let m = &v.members[usize::from(v.buckets[b])];
                (m.ip, m.port)
            };
            match now.get(&was.bucket_key) {
                Some(is) if is.buckets.len() == was.buckets.len() => out.extend(
                    (0..was.buckets.len())
                        .filter(|&b| member(was, b) != member(is, b))
                        .map(|b| Tag::lb_bucket(was.bucket_key, b)),
                ),
                _ => out.extend((0..was.buckets.len()).map(|b| Tag::lb_bucket(was.bucket_key, b))),
            }
        }
    }

    /// Records that were left out of this snapshot, and why.
    pub fn problems(&self) -> &[SimError] {
        &self.problems
    }

    /// The id of the port bound to `vport` on `host`.
    pub fn port_by_vport(&self, host: &str, vport: &str) -> Option<&str> {
        self.port_by_vport
            .get(&(host.to_owned(), vport.to_owned()))
            .map(|i| self.ports[*i as usize].id.as_str())
    }

    /// The tunnel key of a port, by id.
    pub fn tunnel_key(&self, port: &str) -> Option<u32> {
        self.port_by_id
            .get(port)
            .map(|i| self.ports[*i as usize].tunnel_key)
    }

    /// The conntrack zone of a port, by id.
    pub fn zone(&self, port: &str) -> Option<u16> {
        self.port_by_id
            .get(port)
            .map(|i| self.ports[*i as usize].zone)
    }

    /// The local port that receives packets arriving from the tunnel with `tun_id`.
    pub fn port_by_tunnel_key(&self, tun_id: u32) -> Option<&str> {
        self.port_by_key
            .get(&tun_id)
            .map(|i| self.ports[*i as usize].id.as_str())
    }

    /// The datapath port number of the tunnel vport.
    pub fn tunnel_port(&self) -> u32 {
        self.tunnel_port
    }

    /// Number of ports in the snapshot.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Number of routes in the snapshot.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }
}
