//! The translation of Weft custom resources into NSDB records: a pure function of one object
//! and the inventory of every object it may refer to.
//!
//! Ids are deterministic (see [`crate::ids`]), so translating the same inventory twice yields
//! the same records. Tunnel keys are not chosen here: records that need one carry `0`, and the
//! reconciler fills them in from NSDB's allocator ([`needs_tunnel_key`], [`set_tunnel_key`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use api::{
    AccessControlList, Direction, SessionAffinity, VirtualBridge, VirtualLoadBalancer,
    VirtualRouter,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use kube::ResourceExt;
use nsdb::{
    AnyRecord, Bridge, Chain, CtMatch, DeviceRef, DnatRule, LoadBalancer, MacAddr, Member,
    PodAttachMode, PodAttachment, PodDirection, Port, PortKind, Protocol, Route, Router, Rule,
    RuleAction, Snat, Vip,
};

use crate::error::Error;
use crate::ids::{self, CrKind, ObjectKey};

/// Source ports SNAT uses when the spec leaves them out.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 65535);

/// Every Weft object the translation may look at, by name. Objects being deleted are left out
/// by whoever builds the inventory, so nothing new refers to them.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub bridges: BTreeMap<String, VirtualBridge>,
    pub routers: BTreeMap<String, VirtualRouter>,
    pub load_balancers: BTreeMap<String, VirtualLoadBalancer>,
    pub acls: BTreeMap<String, AccessControlList>,
    /// The labels of every Kubernetes Namespace, by name: what `spec.namespaces.selector` of
    /// a bridge is matched against. Empty where no namespace is known (the offline path),
    /// so selectors there match none.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Inventory {
    /// Adds a bridge, replacing one of the same name.
    pub fn add_bridge(&mut self, o: VirtualBridge) {
        self.bridges.insert(o.name_any(), o);
    }
    /// Adds a router, replacing one of the same name.
    pub fn add_router(&mut self, o: VirtualRouter) {
        self.routers.insert(o.name_any(), o);
    }
    /// Adds a load balancer, replacing one of the same name.
    pub fn add_load_balancer(&mut self, o: VirtualLoadBalancer) {
        self.load_balancers.insert(o.name_any(), o);
    }
    /// Adds an ACL, replacing one of the same name.
    pub fn add_acl(&mut self, o: AccessControlList) {
        self.acls.insert(o.name_any(), o);
    }
    /// Adds a namespace's labels, replacing those of one of the same name.
    pub fn add_namespace(&mut self, name: impl Into<String>, labels: BTreeMap<String, String>) {
        self.namespaces.insert(name.into(), labels);
    }

    /// Every object, in the order a topology is written.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let acl = self
            .acls
            .keys()
            .map(|n| ObjectKey::new(CrKind::AccessControlList, n));
        let vbr = self
            .bridges
            .keys()
            .map(|n| ObjectKey::new(CrKind::VirtualBridge, n));
        let vrt = self
            .routers
            .keys()
            .map(|n| ObjectKey::new(CrKind::VirtualRouter, n));
        let vlb = self
            .load_balancers
            .keys()
            .map(|n| ObjectKey::new(CrKind::VirtualLoadBalancer, n));
        acl.chain(vbr).chain(vrt).chain(vlb).collect()
    }

    /// Whether the object is present.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        match key.kind {
            CrKind::VirtualBridge => self.bridges.contains_key(&key.name),
            CrKind::VirtualRouter => self.routers.contains_key(&key.name),
            CrKind::VirtualLoadBalancer => self.load_balancers.contains_key(&key.name),
            CrKind::AccessControlList => self.acls.contains_key(&key.name),
        }
    }

    /// Removes the object; returns whether it was present.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        match key.kind {
            CrKind::VirtualBridge => self.bridges.remove(&key.name).is_some(),
            CrKind::VirtualRouter => self.routers.remove(&key.name).is_some(),
            CrKind::VirtualLoadBalancer => self.load_balancers.remove(&key.name).is_some(),
            CrKind::AccessControlList => self.acls.remove(&key.name).is_some(),
        }
    }

    /// The ACLs attached to a bridge (`bridge == true`) or router of this name in one
    /// direction, by name.
    fn attached_acls(&self, bridge: bool, name: &str, direction: Direction) -> Vec<&str> {
        self.acls
            .iter()
            .filter(|(_, acl)| {
                let a = &acl.spec.attach_to;
                let list = if bridge { &a.bridges } else { &a.routers };
                acl.spec.direction == direction && list.iter().any(|n| n == name)
            })
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// The records one object produces, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    pub owner: ObjectKey,
    pub records: Vec<AnyRecord>,
}

impl Translation {
    fn new(owner: ObjectKey, mut records: Vec<AnyRecord>) -> Self {
        records.sort_by_key(AnyRecord::key);
        Translation { owner, records }
    }

    /// The record with this full key.
    pub fn get(&self, key: &str) -> Option<&AnyRecord> {
        self.records.iter().find(|r| r.key() == key)
    }
}

/// Whether a record carries a tunnel key the reconciler allocates.
pub fn needs_tunnel_key(r: &AnyRecord) -> bool {
    matches!(
        r,
        AnyRecord::Bridge(_) | AnyRecord::Router(_) | AnyRecord::Port(_)
    )
}

/// Sets the tunnel key of a record that carries one; other records are left alone.
pub fn set_tunnel_key(r: &mut AnyRecord, key: u32) {
    match r {
        AnyRecord::Bridge(b) => b.tunnel_key = key,
        AnyRecord::Router(x) => x.tunnel_key = key,
        AnyRecord::Port(p) => p.tunnel_key = key,
        _ => {}
    }
}

/// The tunnel key a record carries, if it carries one.
pub fn tunnel_key_of(r: &AnyRecord) -> Option<u32> {
    match r {
        AnyRecord::Bridge(b) => Some(b.tunnel_key),
        AnyRecord::Router(x) => Some(x.tunnel_key),
        AnyRecord::Port(p) => Some(p.tunnel_key),
        _ => None,
    }
}

/// Translates one object of the inventory.
pub fn translate(key: &ObjectKey, inv: &Inventory) -> Result<Translation, Error> {
    let records = match key.kind {
        CrKind::VirtualBridge => {
            let o = inv.bridges.get(&key.name).ok_or_else(|| missing(key))?;
            bridge(&key.name, o, inv)?
        }
        CrKind::VirtualRouter => {
            let o = inv.routers.get(&key.name).ok_or_else(|| missing(key))?;
            router(&key.name, o, inv)?
        }
        CrKind::VirtualLoadBalancer => {
            let o = inv
                .load_balancers
                .get(&key.name)
                .ok_or_else(|| missing(key))?;
            load_balancer(&key.name, o)?
        }
        CrKind::AccessControlList => {
            let o = inv.acls.get(&key.name).ok_or_else(|| missing(key))?;
            vec![AnyRecord::Chain(acl(&key.name, o)?)]
        }
    };
    Ok(Translation::new(key.clone(), records))
}

fn missing(key: &ObjectKey) -> Error {
    Error::InvalidSpec {
        kind: key.kind.as_str(),
        name: key.name.clone(),
        message: "metadata.name: the object is not in the inventory".into(),
    }
}

/// Collects field errors of one object.
struct Fields {
    kind: CrKind,
    name: String,
    errors: Vec<String>,
}

impl Fields {
    fn new(kind: CrKind, name: &str) -> Self {
        Fields {
            kind,
            name: name.to_owned(),
            errors: Vec::new(),
        }
    }

    fn parse<T: FromStr>(
        &mut self,
        field: impl FnOnce() -> String,
        value: &str,
        what: &str,
    ) -> Option<T> {
        match value.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.errors
                    .push(format!("{}: {value:?} is not a valid {what}", field()));
                None
            }
        }
    }

    fn fail(&mut self, field: impl Into<String>, reason: impl AsRef<str>) {
        self.errors
            .push(format!("{}: {}", field.into(), reason.as_ref()));
    }

    fn finish<T>(self, value: T) -> Result<T, Error> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(Error::InvalidSpec {
                kind: self.kind.as_str(),
                name: self.name,
                message: self.errors.join("; "),
            })
        }
    }
}

/// The chain a device applies in one direction: a jump to each attached ACL, by name.
/// The pods an ACL is attached to, or a VIP takes as members: those of the listed namespaces
/// (every namespace when none is listed) whose labels match.
fn pod_selector(f: &mut Fields, field: &str, p: &api::PodSelector) -> Option<nsdb::PortSelector> {
    let pods = match crate::kuryr::label_selector(&p.selector) {
        Ok(s) => s,
        Err(faults) => {
            for (part, reason) in faults {
                f.fail(format!("{field}{part}"), reason);
            }
            return None;
        }
    };
    let namespaces = (!p.namespaces.is_empty()).then(|| nsdb::LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![nsdb::LabelExpr {
            key: nsdb::LABEL_NAMESPACE_NAME.to_owned(),
            op: nsdb::SelectorOp::In,
            values: p.namespaces.clone(),
        }],
    });
    Some(nsdb::PortSelector {
        namespaces,
        pods: Some(pods),
    })
}

fn device_chain(device_id: &str, device_name: &str, inbound: bool, acls: &[&str]) -> Option<Chain> {
    if acls.is_empty() {
        return None;
    }
    let id = ids::device_chain(device_id, inbound);
    let rules = acls
        .iter()
        .enumerate()
        .map(|(i, acl)| Rule {
            id: format!("{id}:{i}"),
            ..Rule::matching_all(String::new(), RuleAction::Jump(ids::acl_chain(acl)))
        })
        .collect();
    Some(Chain {
        pods: None,
        id,
        name: format!(
            "{device_name} {}",
            if inbound { "inbound" } else { "outbound" }
        ),
        rules,
        default_action: RuleAction::Accept,
    })
}

/// Both attachment chains of a device; returns (inbound id, outbound id, chain records).
fn device_chains(
    inv: &Inventory,
    is_bridge: bool,
    name: &str,
    device_id: &str,
) -> (Option<String>, Option<String>, Vec<AnyRecord>) {
    let inbound = device_chain(
        device_id,
        name,
        true,
        &inv.attached_acls(is_bridge, name, Direction::Ingress),
    );
    let outbound = device_chain(
        device_id,
        name,
        false,
        &inv.attached_acls(is_bridge, name, Direction::Egress),
    );
    let ids = (
        inbound.as_ref().map(|c| c.id.clone()),
        outbound.as_ref().map(|c| c.id.clone()),
    );
    let records = inbound
        .into_iter()
        .chain(outbound)
        .map(AnyRecord::Chain)
        .collect();
    (ids.0, ids.1, records)
}

/// The first host address of a subnet, the default gateway.
fn first_host(net: Ipv4Net) -> Option<Ipv4Addr> {
    net.hosts().next()
}

/// The first address of an IPv6 subnet after its network address (the subnet-router
/// anycast address), the default IPv6 gateway.
fn first_host_v6(net: Ipv6Net) -> Option<Ipv6Addr> {
    let next = u128::from(net.network()).checked_add(1)?;
    let a = Ipv6Addr::from(next);
    net.contains(&a).then_some(a)
}

fn bridge(name: &str, o: &VirtualBridge, inv: &Inventory) -> Result<Vec<AnyRecord>, Error> {
    let mut f = Fields::new(CrKind::VirtualBridge, name);
    let s = &o.spec;
    let subnet: Option<Ipv4Net> = f
        .parse(|| "spec.subnet".into(), &s.subnet, "IPv4 prefix")
        .map(|n: Ipv4Net| n.trunc());
    let subnet_v6: Option<Ipv6Net> = s.subnet_v6.as_ref().and_then(|v| {
        f.parse(|| "spec.subnetV6".into(), v, "IPv6 prefix")
            .map(|n: Ipv6Net| n.trunc())
    });
    let gateway: Option<Ipv4Addr> = match &s.gateway {
        Some(g) => f.parse(|| "spec.gateway".into(), g, "IPv4 address"),
        None => subnet.and_then(first_host),
    };
    if let (Some(net), Some(gw)) = (subnet, gateway)
        && !net.contains(&gw)
    {
        f.fail("spec.gateway", format!("{gw} is outside the subnet {net}"));
    }
    let gateway_v6: Option<Ipv6Addr> = match (&s.gateway_v6, subnet_v6) {
        (Some(g), Some(net)) => match f.parse(|| "spec.gatewayV6".into(), g, "IPv6 address") {
            Some(gw) if !net.contains(&gw) => {
                f.fail(
                    "spec.gatewayV6",
                    format!("{gw} is outside the subnet {net}"),
                );
                None
            }
            gw => gw,
        },
        (Some(g), None) => {
            f.fail(
                "spec.gatewayV6",
                format!("{g} is IPv6 but there is no subnetV6"),
            );
            None
        }
        (None, net) => net.and_then(first_host_v6),
    };
    let excluded_ips: Vec<IpAddr> = s
        .excluded_ips
        .iter()
        .enumerate()
        .filter_map(|(i, ip)| f.parse(|| format!("spec.excludedIps[{i}]"), ip, "IP address"))
        .collect();
    let id = ids::bridge(name);
    let (inbound_chain, outbound_chain, mut records) = device_chains(inv, true, name, &id);
    records.push(AnyRecord::Bridge(Bridge {
        id,
        name: name.to_owned(),
        tunnel_key: 0,
        subnet_v4: subnet,
        subnet_v6,
        gateway_v4: gateway,
        gateway_v6,
        // 0: each agent derives it from its underlay and encapsulation.
        mtu: s.mtu.unwrap_or(0),
        vlan: s.vlan,
        excluded_ips,
        inbound_chain,
        outbound_chain,
        namespaces: namespace_names(name, s, inv, &mut f),
    }));
    f.finish(records)
}

/// The namespaces a bridge serves, sorted and without repeats: those it names, and those its
/// selector matches that no other bridge takes ([`crate::kuryr::namespaces::served`]). A
/// selector that is no valid label selector fails the field.
fn namespace_names(
    name: &str,
    s: &api::VirtualBridgeSpec,
    inv: &Inventory,
    f: &mut Fields,
) -> Vec<String> {
    if let Some(sel) = s.namespaces.as_ref().and_then(|n| n.selector.as_ref())
        && let Err(faults) = crate::kuryr::label_selector(sel)
    {
        for (field, reason) in faults {
            f.fail(format!("spec.namespaces.selector{field}"), reason);
        }
    }
    let mut names: Vec<String> = s
        .namespaces
        .iter()
        .flat_map(|n| n.names.iter().cloned())
        .chain(crate::kuryr::namespaces::selected_by(name, inv))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn l4(p: api::L4Protocol) -> Protocol {
    protocol(p.into())
}

fn protocol(p: api::Protocol) -> Protocol {
    match p {
        api::Protocol::Tcp => Protocol::Tcp,
        api::Protocol::Udp => Protocol::Udp,
        api::Protocol::Sctp => Protocol::Sctp,
        api::Protocol::Icmp => Protocol::Icmp,
        api::Protocol::Icmpv6 => Protocol::Icmpv6,
    }
}

/// The route of router `router` to `dst`, the subnet port `port` is on.
fn connected_route(id: String, router: &str, dst: IpNet, port: &str) -> AnyRecord {
    AnyRecord::Route(Route {
        id,
        router: router.to_owned(),
        dst,
        next_hop: None,
        port: port.to_owned(),
        weight: 1,
    })
}

fn router(name: &str, o: &VirtualRouter, inv: &Inventory) -> Result<Vec<AnyRecord>, Error> {
    let mut f = Fields::new(CrKind::VirtualRouter, name);
    let s = &o.spec;
    let router_id = ids::router(name);
    let (inbound_chain, outbound_chain, mut records) = device_chains(inv, false, name, &router_id);
    // Connected networks, for routes whose egress is found from the next hop.
    let mut connected: Vec<(IpNet, String)> = Vec::new();

    for (i, itf) in s.interfaces.iter().enumerate() {
        let field = |leaf: &str| format!("spec.interfaces[{i}].{leaf}");
        let Some(br) = inv.bridges.get(&itf.bridge) else {
            f.fail(
                field("bridge"),
                format!("VirtualBridge {} does not exist", itf.bridge),
            );
            continue;
        };
        let Some(subnet) = br.spec.subnet.parse::<Ipv4Net>().ok().map(|n| n.trunc()) else {
            f.fail(
                field("bridge"),
                format!("VirtualBridge {} has an invalid subnet", itf.bridge),
            );
            continue;
        };
        let Some(ip) = f.parse::<Ipv4Addr>(|| field("ip"), &itf.ip, "IPv4 address") else {
            continue;
        };
        if !subnet.contains(&ip) {
            f.fail(
                field("ip"),
                format!(
                    "{ip} is outside the subnet {subnet} of VirtualBridge {}",
                    itf.bridge
                ),
            );
            continue;
        }
        let port_id = ids::router_port(name, &itf.bridge);
        let peer_id = ids::router_peer_port(name, &itf.bridge);
        let mac = match &itf.mac {
            Some(m) => match f.parse::<MacAddr>(|| field("mac"), m, "MAC address") {
                Some(m) => m,
                None => continue,
            },
            None => MacAddr::local_from_name(&port_id),
        };
        let address = IpNet::V4(
            Ipv4Net::new(ip, subnet.prefix_len()).expect("prefix length of a parsed prefix"),
        );
        connected.push((IpNet::V4(subnet), port_id.clone()));
        // The IPv6 side: the router's address on the bridge's IPv6 subnet.
        let mut addresses = vec![address];
        let mut peer_addresses = vec![IpNet::V4(Ipv4Net::from(ip))];
        let mut subnet_v6 = None;
        if let Some(a) = &itf.ip_v6 {
            let Some(ip6) = f.parse::<Ipv6Addr>(|| field("ipV6"), a, "IPv6 address") else {
                continue;
            };
            let bridge_v6 = br.spec.subnet_v6.as_deref();
            let net = bridge_v6.and_then(|n| n.parse::<Ipv6Net>().ok().map(|n| n.trunc()));
            let Some(net) = net.filter(|n| n.contains(&ip6)) else {
                let reason = match net {
                    Some(net) => format!(
                        "{ip6} is outside the subnet {net} of VirtualBridge {}",
                        itf.bridge
                    ),
                    None => format!(
                        "VirtualBridge {} has no valid subnetV6 for {ip6}",
                        itf.bridge
                    ),
                };
                f.fail(field("ipV6"), reason);
                continue;
            };
            let a = Ipv6Net::new(ip6, net.prefix_len()).expect("prefix length of a parsed prefix");
            addresses.push(IpNet::V6(a));
            peer_addresses.push(IpNet::V6(Ipv6Net::from(ip6)));
            connected.push((IpNet::V6(net), port_id.clone()));
            subnet_v6 = Some(net);
        }
        records.push(AnyRecord::Port(Port {
            named_ports: Vec::new(),
            namespace_labels: Default::default(),
            id: port_id.clone(),
            device: DeviceRef::Router(router_id.clone()),
            kind: PortKind::Interior {
                peer: peer_id.clone(),
            },
            mac,
            addresses,
            tunnel_key: 0,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: BTreeMap::new(),
        }));
        // The bridge side answers ARP for the router's address with the router's MAC.
        records.push(AnyRecord::Port(Port {
            named_ports: Vec::new(),
            namespace_labels: Default::default(),
            id: peer_id,
            device: DeviceRef::Bridge(ids::bridge(&itf.bridge)),
            kind: PortKind::Interior {
                peer: port_id.clone(),
            },
            mac,
            addresses: peer_addresses,
            tunnel_key: 0,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: BTreeMap::new(),
        }));
        if let Some(net) = subnet_v6 {
            let id = ids::connected_route_v6(&port_id);
            records.push(connected_route(id, &router_id, IpNet::V6(net), &port_id));
        }
        let id = ids::connected_route(&port_id);
        records.push(connected_route(id, &router_id, IpNet::V4(subnet), &port_id));
    }

    let mut snat = None;
    if let Some(up) = &s.uplink {
        let port_id = ids::uplink_port(name);
        if let Some(addr) = f.parse::<Ipv4Net>(|| "spec.uplink.ip".into(), &up.ip, "IPv4 prefix") {
            let net = addr.trunc();
            connected.push((IpNet::V4(net), port_id.clone()));
            records.push(AnyRecord::Port(Port {
                named_ports: Vec::new(),
                namespace_labels: Default::default(),
                id: port_id.clone(),
                device: DeviceRef::Router(router_id.clone()),
                kind: PortKind::Uplink,
                mac: MacAddr::local_from_name(&port_id),
                addresses: vec![IpNet::V4(addr)],
                tunnel_key: 0,
                inbound_chain: None,
                outbound_chain: None,
                admin_up: true,
                labels: up
                    .host_interface
                    .iter()
                    .map(|i| ("weft.dev/host-interface".to_owned(), i.clone()))
                    .collect(),
            }));
            let id = ids::connected_route(&port_id);
            records.push(connected_route(id, &router_id, IpNet::V4(net), &port_id));
            // A static default route takes the place of the one towards the gateway.
            let static_default = s.routes.iter().any(|r| {
                r.destination
                    .parse::<IpNet>()
                    .is_ok_and(|d| d.prefix_len() == 0 && d.addr().is_ipv4())
            });
            if let Some(gw) = up.gateway.as_ref().filter(|_| !static_default)
                && let Some(gw) =
                    f.parse::<Ipv4Addr>(|| "spec.uplink.gateway".into(), gw, "IPv4 address")
            {
                if net.contains(&gw) {
                    records.push(AnyRecord::Route(Route {
                        id: ids::default_route(name),
                        router: router_id.clone(),
                        dst: IpNet::V4(Ipv4Net::default()),
                        next_hop: Some(IpAddr::V4(gw)),
                        port: port_id.clone(),
                        weight: 1,
                    }));
                } else {
                    f.fail(
                        "spec.uplink.gateway",
                        format!("{gw} is outside the uplink network {net}"),
                    );
                }
            }
            if up.snat {
                let addresses: Vec<Ipv4Addr> = if up.snat_addresses.is_empty() {
                    vec![addr.addr()]
                } else {
                    up.snat_addresses
                        .iter()
                        .enumerate()
                        .filter_map(|(i, a)| {
                            f.parse(
                                || format!("spec.uplink.snatAddresses[{i}]"),
                                a,
                                "IPv4 address",
                            )
                        })
                        .collect()
                };
                snat = Some(Snat {
                    port: port_id,
                    addresses,
                    port_range: up
                        .snat_port_range
                        .map_or(DEFAULT_SNAT_PORTS, |r| (r.from, r.to)),
                });
            }
        }
    }

    for (i, rt) in s.routes.iter().enumerate() {
        let field = |leaf: &str| format!("spec.routes[{i}].{leaf}");
        let Some(dst) = f.parse::<IpNet>(|| field("destination"), &rt.destination, "prefix") else {
            continue;
        };
        let next_hop: Option<IpAddr> = match &rt.next_hop {
            Some(h) => match f.parse(|| field("nextHop"), h, "IP address") {
                Some(h) => Some(h),
                None => continue,
            },
            None => None,
        };
        let port = match (&rt.interface, next_hop) {
            (Some(itf), _) if itf == api::UPLINK => {
                if s.uplink.is_none() {
                    f.fail(field("interface"), "the router has no uplink");
                    continue;
                }
                ids::uplink_port(name)
            }
            (Some(itf), _) => {
                if !s.interfaces.iter().any(|x| &x.bridge == itf) {
                    f.fail(
                        field("interface"),
                        format!("{itf} is not one of the router's interfaces"),
                    );
                    continue;
                }
                ids::router_port(name, itf)
            }
            (None, Some(hop)) => match connected.iter().find(|(net, _)| net.contains(&hop)) {
                Some((_, port)) => port.clone(),
                None => {
                    f.fail(
                        field("nextHop"),
                        format!("{hop} is not on any connected network of the router"),
                    );
                    continue;
                }
            },
            (None, None) => {
                f.fail(field("nextHop"), "a route needs a nextHop or an interface");
                continue;
            }
        };
        records.push(AnyRecord::Route(Route {
            id: ids::static_route(name, i),
            router: router_id.clone(),
            dst: dst.trunc(),
            next_hop,
            port,
            weight: rt.weight.unwrap_or(1),
        }));
    }

    let dnat = s
        .dnat
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let field = |leaf: &str| format!("spec.dnat[{i}].{leaf}");
            let external_ip = f.parse(|| field("externalIp"), &d.external_ip, "IP address");
            let internal_ip = f.parse(|| field("internalIp"), &d.internal_ip, "IP address");
            Some(DnatRule {
                external_ip: external_ip?,
                internal_ip: internal_ip?,
                protocol: d.protocol.map(l4),
                external_port: d.external_port,
                internal_port: d.internal_port,
            })
        })
        .collect();

    records.push(AnyRecord::Router(Router {
        id: router_id,
        name: name.to_owned(),
        tunnel_key: 0,
        inbound_chain,
        outbound_chain,
        snat,
        dnat,
    }));
    f.finish(records)
}

fn load_balancer(name: &str, o: &VirtualLoadBalancer) -> Result<Vec<AnyRecord>, Error> {
    let mut f = Fields::new(CrKind::VirtualLoadBalancer, name);
    let s = &o.spec;
    let affinity = s.session_affinity == SessionAffinity::ClientIp;
    if !affinity && s.session_affinity_timeout_seconds.is_some() {
        f.fail(
            "spec.sessionAffinityTimeoutSeconds",
            "is only used with sessionAffinity ClientIP",
        );
    }
    let vips = s
        .vips
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let ip = f.parse(|| format!("spec.vips[{i}].ip"), &v.ip, "IP address");
            let members: Vec<Member> = v
                .members
                .iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    Some(Member {
                        ip: f.parse(
                            || format!("spec.vips[{i}].members[{j}].ip"),
                            &m.ip,
                            "IP address",
                        )?,
                        port: m.port,
                        weight: m.weight,
                        // The agents' probes, when the load balancer has a health check,
                        // mark a member down in a verdict of their own; until then every
                        // listed member takes traffic.
                        healthy: true,
                    })
                })
                .collect();
            let member_selector = match &v.pods {
                Some(p) => Some(pod_selector(&mut f, &format!("spec.vips[{i}].pods"), p)?),
                None => None,
            };
            Some(Vip {
                member_selector,
                target_port: v.target_port,
                ip: ip?,
                protocol: l4(v.protocol),
                port: v.port,
                members,
                session_affinity: affinity,
                affinity_timeout_s: s.session_affinity_timeout_seconds.filter(|_| affinity),
            })
        })
        .collect();
    let lb = LoadBalancer {
        id: ids::load_balancer(name),
        name: name.to_owned(),
        router: s.router.as_deref().map(ids::router),
        vips,
        health_check: s.health_check.as_ref().map(health_check),
    };
    f.finish(vec![AnyRecord::LoadBalancer(lb)])
}

/// A VirtualLoadBalancer's `healthCheck` as NSDB carries it (the schema and validation have
/// bounded every number already).
fn health_check(h: &api::HealthCheck) -> nsdb::HealthCheck {
    nsdb::HealthCheck {
        kind: match h.kind {
            api::HealthCheckType::Tcp => nsdb::ProbeKind::Tcp,
            api::HealthCheckType::Http => nsdb::ProbeKind::Http,
        },
        path: match h.kind {
            api::HealthCheckType::Http => Some(h.path.clone().unwrap_or_else(|| "/".into())),
            api::HealthCheckType::Tcp => None,
        },
        interval_s: h.interval_seconds,
        timeout_s: h.timeout_seconds,
        rise: h.healthy_threshold,
        fall: h.unhealthy_threshold,
    }
}

fn acl(name: &str, o: &AccessControlList) -> Result<Chain, Error> {
    let mut f = Fields::new(CrKind::AccessControlList, name);
    let s = &o.spec;
    let rules = s
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let field = |leaf: &str| format!("spec.rules[{i}].{leaf}");
            let src = match &r.source {
                Some(v) => Some(f.parse::<IpNet>(|| field("source"), v, "prefix")?.trunc()),
                None => None,
            };
            let dst = match &r.destination {
                Some(v) => Some(
                    f.parse::<IpNet>(|| field("destination"), v, "prefix")?
                        .trunc(),
                ),
                None => None,
            };
            let action = match r.action {
                api::Action::Accept => RuleAction::Accept,
                api::Action::Drop => RuleAction::Drop,
                api::Action::Reject => RuleAction::Reject,
                api::Action::Return => RuleAction::Return,
                api::Action::Jump => match &r.jump_to {
                    Some(target) => RuleAction::Jump(ids::acl_chain(target)),
                    None => {
                        f.fail(field("jumpTo"), "action Jump needs jumpTo");
                        return None;
                    }
                },
            };
            Some(Rule {
                dst_port_name: None,
                dst_selector: None,
                src_selector: None,
                id: ids::acl_rule(name, i),
                src,
                dst,
                inv_src: r.invert_source,
                inv_dst: r.invert_destination,
                protocol: r.protocol.map(protocol),
                src_ports: r.source_ports.map(|p| (p.from, p.to)),
                dst_ports: r.destination_ports.map(|p| (p.from, p.to)),
                icmp_type: r.icmp_type,
                icmp_code: r.icmp_code,
                ct_state: r.connection_state.map(|c| CtMatch {
                    new: c.new,
                    established: c.established,
                    related: c.related,
                }),
                action,
            })
        })
        .collect();
    let default_action = match s.default_action {
        api::DefaultAction::Accept => RuleAction::Accept,
        api::DefaultAction::Drop => RuleAction::Drop,
        api::DefaultAction::Reject => RuleAction::Reject,
        api::DefaultAction::Return => RuleAction::Return,
    };
    let pods = s.attach_to.pods.as_ref().and_then(|p| {
        Some(PodAttachment {
            direction: match s.direction {
                api::Direction::Ingress => PodDirection::Ingress,
                api::Direction::Egress => PodDirection::Egress,
            },
            selector: pod_selector(&mut f, "spec.attachTo.pods", p)?,
            mode: PodAttachMode::Filter,
        })
    });
    f.finish(Chain {
        pods,
        id: ids::acl_chain(name),
        name: name.to_owned(),
        rules,
        default_action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::topology;

    fn tr(inv: &Inventory, kind: CrKind, name: &str) -> Translation {
        translate(&ObjectKey::new(kind, name), inv).unwrap()
    }

    /// A VIP's `pods` and `targetPort` become its member selector, and an ACL's
    /// `attachTo.pods` a filter attached to the pods it picks, in the ACL's direction; the
    /// namespaces listed become a selector on the namespace's name.
    #[test]
    fn pod_selectors_of_vips_and_acls() {
        let mut inv = topology();
        let pods: api::PodSelector = serde_json::from_value(serde_json::json!({
            "namespaces": ["shop", "cart"],
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["canary"]}],
        }))
        .unwrap();
        let want = nsdb::PortSelector {
            namespaces: Some(nsdb::LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![nsdb::LabelExpr {
                    key: nsdb::LABEL_NAMESPACE_NAME.into(),
                    op: nsdb::SelectorOp::In,
                    values: vec!["shop".into(), "cart".into()],
                }],
            }),
            pods: Some(nsdb::LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![nsdb::LabelExpr {
                    key: "tier".into(),
                    op: nsdb::SelectorOp::NotIn,
                    values: vec!["canary".into()],
                }],
            }),
        };
        let vip = &mut inv.load_balancers.get_mut("web").unwrap().spec.vips[0];
        vip.members.clear();
        vip.pods = Some(pods.clone());
        vip.target_port = Some(8080);
        let t = tr(&inv, CrKind::VirtualLoadBalancer, "web");
        let AnyRecord::LoadBalancer(lb) = &t.records[0] else {
            panic!("{t:?}")
        };
        assert_eq!(lb.vips[0].member_selector.as_ref(), Some(&want));
        assert_eq!(lb.vips[0].target_port, Some(8080));
        assert!(lb.vips[0].members.is_empty());

        let acl = inv.acls.get_mut("web-in").unwrap();
        acl.spec.attach_to.pods = Some(pods);
        let t = tr(&inv, CrKind::AccessControlList, "web-in");
        let AnyRecord::Chain(c) = &t.records[0] else {
            panic!("{t:?}")
        };
        assert_eq!(
            c.pods,
            Some(PodAttachment {
                direction: PodDirection::Ingress,
                selector: want,
                mode: PodAttachMode::Filter,
            })
        );

        // A selector that is no label selector fails the field.
        inv.acls.get_mut("web-in").unwrap().spec.attach_to.pods = Some(
            serde_json::from_value(serde_json::json!({
                "matchExpressions": [{"key": "app", "operator": "Near"}],
            }))
            .unwrap(),
        );
        let err = translate(&ObjectKey::new(CrKind::AccessControlList, "web-in"), &inv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.attachTo.pods.matchExpressions[0].operator"),
            "{err}"
        );
    }

    fn keys(t: &Translation) -> Vec<String> {
        t.records.iter().map(AnyRecord::key).collect()
    }

    #[test]
    fn bridge_rows() {
        let inv = topology();
        // (bridge, expected keys, gateway, mtu, inbound chain)
        type Row<'a> = (&'a str, &'a [&'a str], &'a str, u16, Option<&'a str>);
        let rows: [Row; 2] = [
            (
                "blue",
                &["/weft/v1/bridges/vbr:blue", "/weft/v1/chains/vbr:blue:in"],
                "10.1.0.1",
                0,
                Some("vbr:blue:in"),
            ),
            (
                "red",
                &["/weft/v1/bridges/vbr:red"],
                "10.2.0.254",
                1400,
                None,
            ),
        ];
        for (name, want_keys, gw, mtu, chain) in rows {
            let t = tr(&inv, CrKind::VirtualBridge, name);
            assert_eq!(keys(&t), want_keys, "{name}");
            let Some(AnyRecord::Bridge(b)) = t.get(&format!("/weft/v1/bridges/vbr:{name}")) else {
                panic!("no bridge record for {name}");
            };
            assert_eq!(b.name, name);
            assert_eq!(b.gateway_v4, Some(gw.parse().unwrap()), "{name}");
            assert_eq!(b.mtu, mtu, "{name}");
            assert_eq!(b.inbound_chain.as_deref(), chain, "{name}");
            assert_eq!(b.outbound_chain, None);
            assert_eq!(b.tunnel_key, 0, "keys are allocated at reconcile time");
        }
        let t = tr(&inv, CrKind::VirtualBridge, "red");
        let AnyRecord::Bridge(b) = &t.records[0] else {
            panic!()
        };
        assert_eq!(b.vlan, Some(7));
        assert_eq!(b.subnet_v6, Some("fd00:2::/64".parse().unwrap()));
        // The IPv6 gateway defaults to the subnet's first address.
        assert_eq!(b.gateway_v6, Some("fd00:2::1".parse().unwrap()));
        assert_eq!(b.excluded_ips, vec!["10.2.0.9".parse::<IpAddr>().unwrap()]);
        // The attachment chain jumps to the attached ACL.
        let t = tr(&inv, CrKind::VirtualBridge, "blue");
        let Some(AnyRecord::Chain(c)) = t.get("/weft/v1/chains/vbr:blue:in") else {
            panic!()
        };
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].action, RuleAction::Jump("acl:web-in".into()));
        assert_eq!(c.default_action, RuleAction::Accept);
    }

    #[test]
    fn router_ports_are_peer_linked_with_stable_macs() {
        let inv = topology();
        let t = tr(&inv, CrKind::VirtualRouter, "edge");
        let ports: BTreeMap<String, &Port> = t
            .records
            .iter()
            .filter_map(|r| match r {
                AnyRecord::Port(p) => Some((p.id.clone(), p)),
                _ => None,
            })
            .collect();
        assert_eq!(
            ports.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "vrt:edge:peer:blue",
                "vrt:edge:peer:red",
                "vrt:edge:port:blue",
                "vrt:edge:port:red",
                "vrt:edge:uplink"
            ]
        );
        // (router port, peer, bridge, address on router, address on bridge)
        for (port, peer, bridge, raddr, baddr) in [
            (
                "vrt:edge:port:blue",
                "vrt:edge:peer:blue",
                "vbr:blue",
                "10.1.0.1/24",
                "10.1.0.1/32",
            ),
            (
                "vrt:edge:port:red",
                "vrt:edge:peer:red",
                "vbr:red",
                "10.2.0.254/24",
                "10.2.0.254/32",
            ),
        ] {
            let rp = ports[port];
            let bp = ports[peer];
            assert_eq!(rp.device, DeviceRef::Router("vrt:edge".into()));
            assert_eq!(bp.device, DeviceRef::Bridge(bridge.into()));
            assert_eq!(rp.kind, PortKind::Interior { peer: peer.into() });
            assert_eq!(bp.kind, PortKind::Interior { peer: port.into() });
            assert_eq!(rp.addresses, vec![raddr.parse::<IpNet>().unwrap()]);
            assert_eq!(bp.addresses, vec![baddr.parse::<IpNet>().unwrap()]);
            assert_eq!(
                rp.mac, bp.mac,
                "the bridge side answers ARP with the router's MAC"
            );
            assert_eq!(rp.mac, MacAddr::local_from_name(port));
            assert!(rp.admin_up && bp.admin_up);
        }
        assert_ne!(
            ports["vrt:edge:port:blue"].mac,
            ports["vrt:edge:port:red"].mac
        );
        assert_eq!(ports["vrt:edge:uplink"].kind, PortKind::Uplink);
        // Deterministic: translating again gives identical records.
        assert_eq!(t, tr(&inv, CrKind::VirtualRouter, "edge"));
    }

    /// A router interface with `ipV6` gives the router port the IPv6 address on the bridge's
    /// IPv6 subnet, the bridge side the host address (for neighbour discovery), and the router
    /// a connected IPv6 route; an address the bridge cannot hold fails its field.
    #[test]
    fn a_router_interface_with_an_ipv6_address_routes_the_bridges_ipv6_subnet() {
        let mut inv = topology();
        fn red(inv: &mut Inventory) -> &mut api::RouterInterface {
            let edge = inv.routers.get_mut("edge").unwrap();
            let itf = edge.spec.interfaces.iter_mut().find(|i| i.bridge == "red");
            itf.unwrap()
        }
        red(&mut inv).ip_v6 = Some("fd00:2::fe".into());
        let t = tr(&inv, CrKind::VirtualRouter, "edge");
        let port = |id: &str| match t.get(&format!("/weft/v1/ports/{id}")) {
            Some(AnyRecord::Port(p)) => p.addresses.clone(),
            other => panic!("{id}: {other:?}"),
        };
        let nets = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse::<IpNet>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            port("vrt:edge:port:red"),
            nets(&["10.2.0.254/24", "fd00:2::fe/64"])
        );
        assert_eq!(
            port("vrt:edge:peer:red"),
            nets(&["10.2.0.254/32", "fd00:2::fe/128"])
        );
        let Some(AnyRecord::Route(r)) = t.get("/weft/v1/routes/vrt:edge:port:red:connected6")
        else {
            panic!("no connected IPv6 route: {:?}", keys(&t))
        };
        assert_eq!(r.dst, "fd00:2::/64".parse::<IpNet>().unwrap());
        assert_eq!((r.port.as_str(), r.next_hop), ("vrt:edge:port:red", None));

        for (addr, want) in [
            (
                "fd00:3::1",
                "spec.interfaces[1].ipV6: fd00:3::1 is outside the subnet fd00:2::/64",
            ),
            (
                "10.2.0.1",
                "spec.interfaces[1].ipV6: \"10.2.0.1\" is not a valid IPv6 address",
            ),
        ] {
            red(&mut inv).ip_v6 = Some(addr.into());
            let err = translate(&ObjectKey::new(CrKind::VirtualRouter, "edge"), &inv)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{addr}: {err}");
        }
        // On a bridge with no IPv6 subnet.
        red(&mut inv).ip_v6 = None;
        let edge = inv.routers.get_mut("edge").unwrap();
        let blue = edge
            .spec
            .interfaces
            .iter()
            .position(|i| i.bridge == "blue")
            .unwrap();
        edge.spec.interfaces[blue].ip_v6 = Some("fd00:1::1".into());
        let err = translate(&ObjectKey::new(CrKind::VirtualRouter, "edge"), &inv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "spec.interfaces[{blue}].ipV6: VirtualBridge blue has no valid subnetV6"
            )),
            "{err}"
        );
    }

    #[test]
    fn router_routes_rows() {
        let inv = topology();
        let t = tr(&inv, CrKind::VirtualRouter, "edge");
        let routes: Vec<(String, String, Option<String>, String, u32)> = t
            .records
            .iter()
            .filter_map(|r| match r {
                AnyRecord::Route(r) => Some((
                    r.id.clone(),
                    r.dst.to_string(),
                    r.next_hop.map(|h| h.to_string()),
                    r.port.clone(),
                    r.weight,
                )),
                _ => None,
            })
            .collect();
        let row = |id: &str, dst: &str, hop: Option<&str>, port: &str, w: u32| {
            (
                id.to_owned(),
                dst.to_owned(),
                hop.map(str::to_owned),
                port.to_owned(),
                w,
            )
        };
        assert_eq!(
            routes,
            vec![
                row(
                    "vrt:edge:port:blue:connected",
                    "10.1.0.0/24",
                    None,
                    "vrt:edge:port:blue",
                    1
                ),
                row(
                    "vrt:edge:port:red:connected",
                    "10.2.0.0/24",
                    None,
                    "vrt:edge:port:red",
                    1
                ),
                row(
                    "vrt:edge:route:0",
                    "192.168.0.0/16",
                    Some("10.1.0.10"),
                    "vrt:edge:port:blue",
                    2
                ),
                row(
                    "vrt:edge:route:1",
                    "192.168.0.0/16",
                    Some("10.2.0.10"),
                    "vrt:edge:port:red",
                    1
                ),
                row(
                    "vrt:edge:route:2",
                    "172.16.0.0/12",
                    None,
                    "vrt:edge:port:red",
                    1
                ),
                row(
                    "vrt:edge:route:default",
                    "0.0.0.0/0",
                    Some("203.0.113.1"),
                    "vrt:edge:uplink",
                    1
                ),
                row(
                    "vrt:edge:uplink:connected",
                    "203.0.113.0/24",
                    None,
                    "vrt:edge:uplink",
                    1
                ),
            ]
        );
    }

    #[test]
    fn router_nat_and_chain() {
        let inv = topology();
        let t = tr(&inv, CrKind::VirtualRouter, "edge");
        let Some(AnyRecord::Router(r)) = t.get("/weft/v1/routers/vrt:edge") else {
            panic!()
        };
        assert_eq!(
            r.snat,
            Some(Snat {
                port: "vrt:edge:uplink".into(),
                addresses: vec!["203.0.113.2".parse().unwrap()],
                port_range: DEFAULT_SNAT_PORTS,
            })
        );
        assert_eq!(
            r.dnat,
            vec![DnatRule {
                external_ip: "203.0.113.10".parse().unwrap(),
                internal_ip: "10.1.0.5".parse().unwrap(),
                protocol: Some(Protocol::Tcp),
                external_port: Some(80),
                internal_port: Some(8080),
            }]
        );
        assert_eq!(r.inbound_chain.as_deref(), Some("vrt:edge:in"));
        assert!(t.get("/weft/v1/chains/vrt:edge:in").is_some());
    }

    #[test]
    fn load_balancer_and_acl_rows() {
        let inv = topology();
        let t = tr(&inv, CrKind::VirtualLoadBalancer, "web");
        let AnyRecord::LoadBalancer(lb) = &t.records[0] else {
            panic!()
        };
        assert_eq!(lb.id, "vlb:web");
        assert_eq!(lb.router.as_deref(), Some("vrt:edge"));
        assert_eq!(lb.vips.len(), 1);
        assert!(lb.vips[0].session_affinity);
        assert_eq!(lb.vips[0].affinity_timeout_s, Some(600));
        assert_eq!(lb.vips[0].protocol, Protocol::Tcp);
        assert_eq!(
            lb.vips[0]
                .members
                .iter()
                .map(|m| (m.ip.to_string(), m.port, m.weight, m.healthy))
                .collect::<Vec<_>>(),
            vec![
                ("10.1.0.5".into(), 8080, 1, true),
                ("10.2.0.5".into(), 8080, 3, true)
            ]
        );

        let t = tr(&inv, CrKind::AccessControlList, "web-in");
        assert_eq!(keys(&t), ["/weft/v1/chains/acl:web-in"]);
        let AnyRecord::Chain(c) = &t.records[0] else {
            panic!()
        };
        assert_eq!(c.default_action, RuleAction::Drop);
        assert_eq!(c.rules[0].id, "acl:web-in:0");
        assert_eq!(c.rules[0].action, RuleAction::Jump("acl:common".into()));
        let r = &c.rules[1];
        assert_eq!(r.src, Some("10.0.0.0/8".parse().unwrap()));
        assert!(r.inv_src && !r.inv_dst);
        assert_eq!(r.protocol, Some(Protocol::Tcp));
        assert_eq!(r.dst_ports, Some((80, 443)));
        assert_eq!(r.action, RuleAction::Accept);
        let t = tr(&inv, CrKind::AccessControlList, "common");
        let AnyRecord::Chain(c) = &t.records[0] else {
            panic!()
        };
        assert_eq!(c.default_action, RuleAction::Return);
        assert_eq!(
            c.rules[0].ct_state,
            Some(CtMatch {
                new: None,
                established: Some(true),
                related: None
            })
        );
    }

    #[test]
    fn every_record_is_owned_by_its_object() {
        let inv = topology();
        for key in inv.keys() {
            let t = translate(&key, &inv).unwrap();
            assert!(!t.records.is_empty());
            for r in &t.records {
                assert!(key.owns(&r.id()), "{key} does not own {}", r.id());
                nsdb::keys::validate_id(r.kind(), &r.id()).unwrap();
            }
        }
    }

    #[test]
    fn bad_fields_are_named() {
        // (mutation, expected field in the message)
        type Mutate = fn(&mut Inventory);
        let rows: [(Mutate, CrKind, &str, &str); 6] = [
            (
                |i| i.bridges.get_mut("red").unwrap().spec.gateway = Some("10.9.0.1".into()),
                CrKind::VirtualBridge,
                "red",
                "spec.gateway: 10.9.0.1 is outside the subnet 10.2.0.0/24",
            ),
            (
                |i| i.bridges.get_mut("red").unwrap().spec.subnet = "10.2.0.0/33".into(),
                CrKind::VirtualBridge,
                "red",
                "spec.subnet",
            ),
            (
                |i| i.routers.get_mut("edge").unwrap().spec.interfaces[1].bridge = "nope".into(),
                CrKind::VirtualRouter,
                "edge",
                "spec.interfaces[1].bridge: VirtualBridge nope does not exist",
            ),
            (
                |i| i.routers.get_mut("edge").unwrap().spec.interfaces[0].ip = "10.2.0.1".into(),
                CrKind::VirtualRouter,
                "edge",
                "spec.interfaces[0].ip",
            ),
            (
                |i| {
                    i.routers.get_mut("edge").unwrap().spec.routes[0].next_hop =
                        Some("8.8.8.8".into())
                },
                CrKind::VirtualRouter,
                "edge",
                "spec.routes[0].nextHop: 8.8.8.8 is not on any connected network",
            ),
            (
                |i| {
                    i.load_balancers.get_mut("web").unwrap().spec.vips[0].members[1].ip = "x".into()
                },
                CrKind::VirtualLoadBalancer,
                "web",
                "spec.vips[0].members[1].ip",
            ),
        ];
        for (mutate, kind, name, want) in rows {
            let mut inv = topology();
            mutate(&mut inv);
            let err = translate(&ObjectKey::new(kind, name), &inv).unwrap_err();
            let Error::InvalidSpec { message, .. } = &err else {
                panic!("{err:?}")
            };
            assert!(
                message.contains(want),
                "{message:?} should contain {want:?}"
            );
            assert_eq!(err.metric_label(), "invalid_spec");
        }
    }

    #[test]
    fn detaching_an_acl_removes_the_device_chain() {
        let mut inv = topology();
        inv.acls
            .get_mut("web-in")
            .unwrap()
            .spec
            .attach_to
            .bridges
            .clear();
        let t = tr(&inv, CrKind::VirtualBridge, "blue");
        assert_eq!(keys(&t), ["/weft/v1/bridges/vbr:blue"]);
        let AnyRecord::Bridge(b) = &t.records[0] else {
            panic!()
        };
        assert_eq!(b.inbound_chain, None);
    }

    #[test]
    fn tunnel_keys_are_set_only_where_carried() {
        let inv = topology();
        let mut t = tr(&inv, CrKind::VirtualRouter, "edge");
        for r in &mut t.records {
            set_tunnel_key(r, 42);
            assert_eq!(tunnel_key_of(r).is_some(), needs_tunnel_key(r));
            if needs_tunnel_key(r) {
                assert_eq!(tunnel_key_of(r), Some(42));
            }
        }
    }
}
