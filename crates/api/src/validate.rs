//! Semantic validation of Weft objects taken together: what the schema alone cannot refuse.
//!
//! [`validate`] looks at every object at once so that references can be resolved: a router's
//! interface names a bridge, an ACL jumps to another ACL, two load balancers may claim the same
//! VIP. It is pure and never panics on any input; every fault is reported as an [`Invalid`]
//! naming the field (`spec.interfaces[1].ip`) so the operator can set `Ready=False`, reason
//! `InvalidSpec`. Value checks that the schema also makes (address syntax, ranges) are repeated
//! here, so an object that reached the operator without schema validation is still refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::acl::{AccessControlList, Action};
use crate::bridge::VirtualBridge;
use crate::common::{PortRange, Protocol};
use crate::loadbalancer::{HealthCheckType, VirtualLoadBalancer};
use crate::router::{UPLINK, VirtualRouter};

/// One refused field of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Invalid {
    /// JSON path of the field, e.g. `spec.interfaces[1].ip`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl Invalid {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The kind of a Weft object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    VirtualBridge,
    VirtualRouter,
    VirtualLoadBalancer,
    AccessControlList,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::VirtualBridge => "VirtualBridge",
            Kind::VirtualRouter => "VirtualRouter",
            Kind::VirtualLoadBalancer => "VirtualLoadBalancer",
            Kind::AccessControlList => "AccessControlList",
        })
    }
}

/// Every object to validate, by name (the objects are cluster-scoped, so the name is the key).
/// The maps are borrowed so a caller's own inventory can be checked without copying it.
#[derive(Clone, Copy, Debug)]
pub struct Objects<'a> {
    pub bridges: &'a BTreeMap<String, VirtualBridge>,
    pub routers: &'a BTreeMap<String, VirtualRouter>,
    pub load_balancers: &'a BTreeMap<String, VirtualLoadBalancer>,
    pub acls: &'a BTreeMap<String, AccessControlList>,
}

/// The faults found, per object. Objects without faults do not appear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub faults: BTreeMap<(Kind, String), Vec<Invalid>>,
}

impl Report {
    /// The faults of one object; empty when it is valid.
    pub fn of(&self, kind: Kind, name: &str) -> &[Invalid] {
        self.faults
            .get(&(kind, name.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether no object has a fault.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    pub(crate) fn push(&mut self, kind: Kind, name: &str, invalid: Vec<Invalid>) {
        if !invalid.is_empty() {
            self.faults
                .entry((kind, name.to_string()))
                .or_default()
                .extend(invalid);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ((kind, name), faults) in &self.faults {
            for fault in faults {
                writeln!(f, "{kind} {name}: {fault}")?;
            }
        }
        Ok(())
    }
}

/// Checks every object against the others.
pub fn validate(objects: Objects<'_>) -> Report {
    let mut report = Report::default();
    let mut served_namespaces: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, bridge) in oldest_first(objects.bridges) {
        let faults = check_bridge(name, bridge, &mut served_namespaces);
        report.push(Kind::VirtualBridge, name, faults);
    }
    let mut router_ips: BTreeMap<(&str, Ipv4Addr), (&str, usize)> = BTreeMap::new();
    for (name, router) in oldest_first(objects.routers) {
        let mut faults = check_router(router, objects);
        faults.extend(claim_router_ips(name, router, &mut router_ips));
        report.push(Kind::VirtualRouter, name, faults);
    }
    let mut vips: BTreeMap<(IpAddr, Protocol, u16), (String, usize)> = BTreeMap::new();
    for (name, lb) in oldest_first(objects.load_balancers) {
        report.push(
            Kind::VirtualLoadBalancer,
            name,
            check_load_balancer(name, lb, objects, &mut vips),
        );
    }
    for (name, acl) in objects.acls {
        report.push(Kind::AccessControlList, name, check_acl(acl, objects));
    }
    for (name, faults) in jump_loops(objects.acls) {
        report.push(Kind::AccessControlList, &name, faults);
    }
    for faults in report.faults.values_mut() {
        faults.sort();
        faults.dedup();
    }
    report
}

/// Objects oldest first (by `creationTimestamp`, then name; objects without a timestamp,
/// such as those read from files, come last). When two objects claim the same thing (a VIP,
/// a namespace) the newer one is refused, so adding an object never breaks one that works.
fn oldest_first<K: kube::Resource>(objects: &BTreeMap<String, K>) -> Vec<(&String, &K)> {
    let mut v: Vec<_> = objects.iter().collect();
    v.sort_by_key(|(name, o)| {
        let created = o.meta().creation_timestamp.as_ref().map(|t| t.0);
        (created.is_none(), created, *name)
    });
    v
}

/// Parses an IPv4 prefix whose host bits are zero.
fn parse_v4_prefix(s: &str, field: &str, out: &mut Vec<Invalid>) -> Option<Ipv4Net> {
    match Ipv4Net::from_str(s) {
        Ok(net) if net.trunc() != net => {
            out.push(Invalid::new(
                field,
                format!("{s} has host bits set; the prefix is {}", net.trunc()),
            ));
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            out.push(Invalid::new(
                field,
                format!("{s:?} is not an IPv4 prefix (a.b.c.d/len)"),
            ));
            None
        }
    }
}

fn parse_v6_prefix(s: &str, field: &str, out: &mut Vec<Invalid>) -> Option<Ipv6Net> {
    match Ipv6Net::from_str(s) {
        Ok(net) if net.trunc() != net => {
            out.push(Invalid::new(
                field,
                format!("{s} has host bits set; the prefix is {}", net.trunc()),
            ));
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            out.push(Invalid::new(field, format!("{s:?} is not an IPv6 prefix")));
            None
        }
    }
}

fn parse_prefix(s: &str, field: &str, out: &mut Vec<Invalid>) -> Option<IpNet> {
    match IpNet::from_str(s) {
        Ok(net) if net.trunc() != net => {
            out.push(Invalid::new(
                field,
                format!("{s} has host bits set; the prefix is {}", net.trunc()),
            ));
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            out.push(Invalid::new(field, format!("{s:?} is not an IP prefix")));
            None
        }
    }
}

fn parse_v4(s: &str, field: &str, out: &mut Vec<Invalid>) -> Option<Ipv4Addr> {
    match Ipv4Addr::from_str(s) {
        Ok(a) => Some(a),
        Err(_) => {
            out.push(Invalid::new(field, format!("{s:?} is not an IPv4 address")));
            None
        }
    }
}

fn parse_ip(s: &str, field: &str, out: &mut Vec<Invalid>) -> Option<IpAddr> {
    match IpAddr::from_str(s) {
        Ok(a) => Some(a),
        Err(_) => {
            out.push(Invalid::new(field, format!("{s:?} is not an IP address")));
            None
        }
    }
}

/// Whether `ip` is a usable host address of IPv6 prefix `net`: inside it, and (for prefixes
/// shorter than /127) not the network address, the subnet-router anycast address. Returns the
/// reason when it is not.
fn host6_in(ip: Ipv6Addr, net: Ipv6Net) -> Result<(), String> {
    if !net.contains(&ip) {
        return Err(format!("{ip} is outside the subnet {net}"));
    }
    if net.prefix_len() < 127 && ip == net.network() {
        return Err(format!("{ip} is the network address of {net}"));
    }
    Ok(())
}

/// `field`'s IPv6 address, checked to be a host address of `subnet_v6` (the bridge's
/// `subnetV6` as written, and as parsed); `what` names whose subnet it is.
fn check_v6_host(
    s: &str,
    field: &str,
    subnet_v6: (Option<&str>, Option<Ipv6Net>),
    what: &str,
    out: &mut Vec<Invalid>,
) {
    let ip = match Ipv6Addr::from_str(s) {
        Ok(a) => a,
        Err(_) => {
            out.push(Invalid::new(field, format!("{s:?} is not an IPv6 address")));
            return;
        }
    };
    match subnet_v6 {
        (None, _) => out.push(Invalid::new(
            field,
            format!("{ip} is IPv6 but {what} has no subnetV6"),
        )),
        (Some(_), Some(net)) => {
            if let Err(reason) = host6_in(ip, net) {
                out.push(Invalid::new(field, format!("{reason} of {what}")));
            }
        }
        // A bad subnetV6 is reported by its bridge.
        (Some(_), None) => {}
    }
}

/// Whether `ip` is a usable host address of `net`: inside it, and (for prefixes shorter than
/// /31) neither the network nor the broadcast address. Returns the reason when it is not.
fn host_in(ip: Ipv4Addr, net: Ipv4Net) -> Result<(), String> {
    if !net.contains(&ip) {
        return Err(format!("{ip} is outside the subnet {net}"));
    }
    if net.prefix_len() < 31 {
        if ip == net.network() {
            return Err(format!("{ip} is the network address of {net}"));
        }
        if ip == net.broadcast() {
            return Err(format!("{ip} is the broadcast address of {net}"));
        }
    }
    Ok(())
}

fn check_range(value: u32, min: u32, max: u32, field: &str, out: &mut Vec<Invalid>) {
    if value < min || value > max {
        out.push(Invalid::new(
            field,
            format!("{value} is out of range {min}-{max}"),
        ));
    }
}

fn check_port_range(r: &PortRange, field: &str, out: &mut Vec<Invalid>) {
    if r.from == 0 {
        out.push(Invalid::new(
            format!("{field}.from"),
            "port 0 is not allowed",
        ));
    }
    if r.from > r.to {
        out.push(Invalid::new(
            field,
            format!("from {} is greater than to {}", r.from, r.to),
        ));
    }
}

fn check_bridge<'a>(
    name: &'a str,
    b: &'a VirtualBridge,
    served: &mut BTreeMap<&'a str, &'a str>,
) -> Vec<Invalid> {
    let mut out = Vec::new();
    let spec = &b.spec;
    let subnet = parse_v4_prefix(&spec.subnet, "spec.subnet", &mut out);
    if let Some(net) = subnet
        && net.prefix_len() > 30
    {
        out.push(Invalid::new(
            "spec.subnet",
            format!("{net} leaves no room for a gateway and pods; use /30 or larger"),
        ));
    }
    let subnet_v6 = spec
        .subnet_v6
        .as_deref()
        .and_then(|s| parse_v6_prefix(s, "spec.subnetV6", &mut out));
    if let (Some(gw), Some(net)) = (
        spec.gateway
            .as_deref()
            .and_then(|s| parse_v4(s, "spec.gateway", &mut out)),
        subnet,
    ) && let Err(reason) = host_in(gw, net)
    {
        out.push(Invalid::new("spec.gateway", reason));
    }
    if let Some(gw) = &spec.gateway_v6 {
        let v6 = (spec.subnet_v6.as_deref(), subnet_v6);
        check_v6_host(gw, "spec.gatewayV6", v6, "the bridge", &mut out);
    }
    if let Some(mtu) = spec.mtu {
        check_range(mtu.into(), 576, 9000, "spec.mtu", &mut out);
    }
    if let Some(vlan) = spec.vlan {
        check_range(vlan.into(), 1, 4094, "spec.vlan", &mut out);
    }
    for (i, s) in spec.excluded_ips.iter().enumerate() {
        let field = format!("spec.excludedIps[{i}]");
        match parse_ip(s, &field, &mut out) {
            Some(IpAddr::V4(a)) => {
                if let Some(net) = subnet
                    && !net.contains(&a)
                {
                    out.push(Invalid::new(
                        field,
                        format!("{a} is outside the subnet {net}"),
                    ));
                }
            }
            Some(IpAddr::V6(a)) => match subnet_v6 {
                Some(net) if !net.contains(&a) => {
                    out.push(Invalid::new(
                        field,
                        format!("{a} is outside the subnet {net}"),
                    ));
                }
                Some(_) => {}
                None if spec.subnet_v6.is_none() => {
                    out.push(Invalid::new(
                        field,
                        format!("{a} is IPv6 but there is no subnetV6"),
                    ));
                }
                None => {}
            },
            None => {}
        }
    }
    if let Some(ns) = &spec.namespaces {
        for (i, n) in ns.names.iter().enumerate() {
            if let Some(other) = served.get(n.as_str()) {
                out.push(Invalid::new(
                    format!("spec.namespaces.names[{i}]"),
                    format!("namespace {n} is already served by VirtualBridge {other}"),
                ));
            } else {
                served.insert(n, name);
            }
        }
    }
    out
}

/// The connected subnets of a router: each interface's bridge subnet, then the uplink's.
fn check_router(r: &VirtualRouter, objects: Objects<'_>) -> Vec<Invalid> {
    let mut out = Vec::new();
    let spec = &r.spec;
    if spec.interfaces.is_empty() {
        out.push(Invalid::new(
            "spec.interfaces",
            "a router needs at least one interface",
        ));
    }
    // (field of the owner, subnet) of every connected network, to find overlaps and next hops.
    let mut connected: Vec<(String, Ipv4Net)> = Vec::new();
    let mut by_bridge: BTreeMap<&str, (usize, Option<Ipv4Net>)> = BTreeMap::new();
    for (i, itf) in spec.interfaces.iter().enumerate() {
        let bridge_field = format!("spec.interfaces[{i}].bridge");
        if let Some((j, _)) = by_bridge.get(itf.bridge.as_str()) {
            out.push(Invalid::new(
                &bridge_field,
                format!(
                    "bridge {} already has an interface (spec.interfaces[{j}])",
                    itf.bridge
                ),
            ));
            continue;
        }
        let ip = parse_v4(&itf.ip, &format!("spec.interfaces[{i}].ip"), &mut out);
        if let Some(mac) = &itf.mac {
            check_mac(mac, &format!("spec.interfaces[{i}].mac"), &mut out);
        }
        let Some(bridge) = objects.bridges.get(&itf.bridge) else {
            out.push(Invalid::new(
                &bridge_field,
                format!("no VirtualBridge named {}", itf.bridge),
            ));
            by_bridge.insert(&itf.bridge, (i, None));
            continue;
        };
        // A bridge with a bad subnet reports that itself; the router only notes it cannot check.
        let subnet = Ipv4Net::from_str(&bridge.spec.subnet)
            .ok()
            .map(|n| n.trunc());
        by_bridge.insert(&itf.bridge, (i, subnet));
        if let Some(ip6) = &itf.ip_v6 {
            let written = bridge.spec.subnet_v6.as_deref();
            let v6 = (
                written,
                written.and_then(|n| Ipv6Net::from_str(n).ok().map(|n| n.trunc())),
            );
            let what = format!("bridge {}", itf.bridge);
            check_v6_host(
                ip6,
                &format!("spec.interfaces[{i}].ipV6"),
                v6,
                &what,
                &mut out,
            );
        }
        let Some(subnet) = subnet else { continue };
        if let Some(ip) = ip
            && let Err(reason) = host_in(ip, subnet)
        {
            out.push(Invalid::new(
                format!("spec.interfaces[{i}].ip"),
                format!("{reason} of bridge {}", itf.bridge),
            ));
        }
        for (other_field, other) in &connected {
            if overlaps(subnet, *other) {
                out.push(Invalid::new(
                    &bridge_field,
                    format!(
                        "subnet {subnet} of bridge {} overlaps {other} ({other_field})",
                        itf.bridge
                    ),
                ));
            }
        }
        connected.push((bridge_field, subnet));
    }

    let mut uplink_net = None;
    if let Some(up) = &spec.uplink {
        match Ipv4Net::from_str(&up.ip) {
            Ok(net) => {
                if let Err(reason) = host_in(net.addr(), net.trunc()) {
                    out.push(Invalid::new("spec.uplink.ip", reason));
                }
                for (other_field, other) in &connected {
                    if overlaps(net.trunc(), *other) {
                        out.push(Invalid::new(
                            "spec.uplink.ip",
                            format!(
                                "uplink subnet {} overlaps {other} ({other_field})",
                                net.trunc()
                            ),
                        ));
                    }
                }
                uplink_net = Some(net);
            }
            Err(_) => out.push(Invalid::new(
                "spec.uplink.ip",
                format!(
                    "{:?} is not an IPv4 address with prefix (a.b.c.d/len)",
                    up.ip
                ),
            )),
        }
        if let Some(gw) = up
            .gateway
            .as_deref()
            .and_then(|s| parse_v4(s, "spec.uplink.gateway", &mut out))
            && let Some(net) = uplink_net
        {
            if gw == net.addr() {
                out.push(Invalid::new(
                    "spec.uplink.gateway",
                    format!("{gw} is the uplink's own address"),
                ));
            } else if let Err(reason) = host_in(gw, net.trunc()) {
                out.push(Invalid::new("spec.uplink.gateway", reason));
            }
        }
        for (i, a) in up.snat_addresses.iter().enumerate() {
            parse_v4(a, &format!("spec.uplink.snatAddresses[{i}]"), &mut out);
        }
        if !up.snat && !up.snat_addresses.is_empty() {
            out.push(Invalid::new(
                "spec.uplink.snatAddresses",
                "snatAddresses are only used with snat: true",
            ));
        }
        if let Some(range) = &up.snat_port_range {
            check_port_range(range, "spec.uplink.snatPortRange", &mut out);
        }
    }

    for (i, route) in spec.routes.iter().enumerate() {
        let base = format!("spec.routes[{i}]");
        let dst = parse_prefix(&route.destination, &format!("{base}.destination"), &mut out);
        let hop = route
            .next_hop
            .as_deref()
            .and_then(|s| parse_ip(s, &format!("{base}.nextHop"), &mut out));
        if route.next_hop.is_none() && route.interface.is_none() {
            out.push(Invalid::new(
                &base,
                "a route needs a nextHop or an interface",
            ));
        }
        if let (Some(dst), Some(hop)) = (dst, hop)
            && dst.addr().is_ipv4() != hop.is_ipv4()
        {
            out.push(Invalid::new(
                format!("{base}.nextHop"),
                format!("{hop} is not of the same IP family as {dst}"),
            ));
        }
        // The subnet(s) the next hop must be on.
        let egress: Option<Vec<Ipv4Net>> = match route.interface.as_deref() {
            Some(UPLINK) => {
                if spec.uplink.is_none() {
                    out.push(Invalid::new(
                        format!("{base}.interface"),
                        "the router has no uplink",
                    ));
                }
                Some(uplink_net.map(|n| n.trunc()).into_iter().collect())
            }
            Some(b) => match by_bridge.get(b) {
                Some((_, subnet)) => Some(subnet.iter().copied().collect()),
                None => {
                    out.push(Invalid::new(
                        format!("{base}.interface"),
                        format!("the router has no interface on bridge {b}"),
                    ));
                    None
                }
            },
            None => Some(
                connected
                    .iter()
                    .map(|(_, n)| *n)
                    .chain(uplink_net.map(|n| n.trunc()))
                    .collect(),
            ),
        };
        if let (Some(IpAddr::V4(hop)), Some(nets)) = (hop, egress)
            && !nets.is_empty()
            && !nets.iter().any(|n| n.contains(&hop))
        {
            out.push(Invalid::new(
                format!("{base}.nextHop"),
                format!("{hop} is not on a subnet connected to the router"),
            ));
        }
        if let Some(w) = route.weight {
            check_range(w, 1, 256, &format!("{base}.weight"), &mut out);
        }
    }

    let mut forwards: BTreeMap<(IpAddr, Option<crate::L4Protocol>, Option<u16>), usize> =
        BTreeMap::new();
    for (i, rule) in spec.dnat.iter().enumerate() {
        let base = format!("spec.dnat[{i}]");
        let ext = parse_ip(&rule.external_ip, &format!("{base}.externalIp"), &mut out);
        let int = parse_ip(&rule.internal_ip, &format!("{base}.internalIp"), &mut out);
        if let (Some(e), Some(n)) = (ext, int)
            && e.is_ipv4() != n.is_ipv4()
        {
            out.push(Invalid::new(
                format!("{base}.internalIp"),
                format!("{n} is not of the same IP family as {e}"),
            ));
        }
        if rule.external_port.is_some() != rule.internal_port.is_some() {
            out.push(Invalid::new(
                &base,
                "externalPort and internalPort go together",
            ));
        }
        if rule.external_port.is_some() && rule.protocol.is_none() {
            out.push(Invalid::new(
                format!("{base}.protocol"),
                "port forwarding needs a protocol",
            ));
        }
        for (p, f) in [
            (rule.external_port, "externalPort"),
            (rule.internal_port, "internalPort"),
        ] {
            if p == Some(0) {
                out.push(Invalid::new(format!("{base}.{f}"), "port 0 is not allowed"));
            }
        }
        if let Some(e) = ext {
            let key = (e, rule.protocol, rule.external_port);
            if let Some(j) = forwards.get(&key) {
                out.push(Invalid::new(
                    format!("{base}.externalIp"),
                    format!("the same external address and port as spec.dnat[{j}]"),
                ));
            } else {
                forwards.insert(key, i);
            }
        }
    }
    out
}

/// Two routers cannot have the same address on one bridge; the newer one is refused.
fn claim_router_ips<'a>(
    name: &'a str,
    r: &'a VirtualRouter,
    claimed: &mut BTreeMap<(&'a str, Ipv4Addr), (&'a str, usize)>,
) -> Vec<Invalid> {
    let mut out = Vec::new();
    for (i, itf) in r.spec.interfaces.iter().enumerate() {
        let Ok(ip) = Ipv4Addr::from_str(&itf.ip) else {
            continue;
        };
        match claimed.get(&(itf.bridge.as_str(), ip)) {
            Some((other, j)) if *other != name => out.push(Invalid::new(
                format!("spec.interfaces[{i}].ip"),
                format!(
                    "{ip} on bridge {} is already used by VirtualRouter {other} (spec.interfaces[{j}])",
                    itf.bridge
                ),
            )),
            Some(_) => {}
            None => {
                claimed.insert((itf.bridge.as_str(), ip), (name, i));
            }
        }
    }
    out
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_mac(s: &str, field: &str, out: &mut Vec<Invalid>) {
    let octets: Vec<Option<u8>> = s
        .split(':')
        .map(|o| {
            if o.len() == 2 {
                u8::from_str_radix(o, 16).ok()
            } else {
                None
            }
        })
        .collect();
    if octets.len() != 6 || octets.iter().any(Option::is_none) {
        out.push(Invalid::new(
            field,
            format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        ));
    } else if octets[0].is_some_and(|o| o & 1 == 1) {
        out.push(Invalid::new(field, format!("{s} is a multicast address")));
    }
}

fn check_load_balancer(
    name: &str,
    lb: &VirtualLoadBalancer,
    objects: Objects<'_>,
    seen: &mut BTreeMap<(IpAddr, Protocol, u16), (String, usize)>,
) -> Vec<Invalid> {
    let mut out = Vec::new();
    let spec = &lb.spec;
    if let Some(router) = &spec.router
        && !objects.routers.contains_key(router)
    {
        out.push(Invalid::new(
            "spec.router",
            format!("no VirtualRouter named {router}"),
        ));
    }
    if spec.vips.is_empty() {
        out.push(Invalid::new(
            "spec.vips",
            "a load balancer needs at least one VIP",
        ));
    }
    for (i, vip) in spec.vips.iter().enumerate() {
        let base = format!("spec.vips[{i}]");
        let ip = parse_ip(&vip.ip, &format!("{base}.ip"), &mut out);
        if vip.port == 0 {
            out.push(Invalid::new(
                format!("{base}.port"),
                "port 0 is not allowed",
            ));
        }
        match (vip.members.is_empty(), vip.pods.is_some()) {
            (true, false) => out.push(Invalid::new(
                format!("{base}.members"),
                "a VIP needs members or a pods selector",
            )),
            (false, true) => out.push(Invalid::new(
                format!("{base}.pods"),
                "give either members or pods, not both",
            )),
            _ => {}
        }
        if vip.target_port.is_some() && vip.pods.is_none() {
            out.push(Invalid::new(
                format!("{base}.targetPort"),
                "targetPort is only used with pods",
            ));
        }
        if vip.target_port == Some(0) {
            out.push(Invalid::new(
                format!("{base}.targetPort"),
                "port 0 is not allowed",
            ));
        }
        for (m, member) in vip.members.iter().enumerate() {
            let mbase = format!("{base}.members[{m}]");
            let mip = parse_ip(&member.ip, &format!("{mbase}.ip"), &mut out);
            if let (Some(v), Some(a)) = (ip, mip)
                && v.is_ipv4() != a.is_ipv4()
            {
                out.push(Invalid::new(
                    format!("{mbase}.ip"),
                    format!("{a} is not of the same IP family as the VIP {v}"),
                ));
            }
            if member.port == 0 {
                out.push(Invalid::new(
                    format!("{mbase}.port"),
                    "port 0 is not allowed",
                ));
            }
            check_range(member.weight, 1, 256, &format!("{mbase}.weight"), &mut out);
        }
        if let Some(ip) = ip {
            let key = (ip, vip.protocol.into(), vip.port);
            match seen.get(&key) {
                Some((other, j)) if other == name => out.push(Invalid::new(
                    &base,
                    format!("duplicate VIP {ip} {}/{}: same as spec.vips[{j}]", vip.protocol, vip.port),
                )),
                Some((other, j)) => out.push(Invalid::new(
                    &base,
                    format!(
                        "duplicate VIP {ip} {}/{}: already served by VirtualLoadBalancer {other} (spec.vips[{j}])",
                        vip.protocol, vip.port
                    ),
                )),
                None => {
                    seen.insert(key, (name.to_string(), i));
                }
            }
        }
    }
    if let Some(hc) = &spec.health_check {
        if hc.path.is_some() && hc.kind != HealthCheckType::Http {
            out.push(Invalid::new(
                "spec.healthCheck.path",
                "path is only used by HTTP checks",
            ));
        }
        if let Some(p) = &hc.path
            && !p.starts_with('/')
        {
            out.push(Invalid::new(
                "spec.healthCheck.path",
                format!("{p:?} does not start with /"),
            ));
        }
        check_range(
            hc.interval_seconds,
            1,
            3600,
            "spec.healthCheck.intervalSeconds",
            &mut out,
        );
        check_range(
            hc.timeout_seconds,
            1,
            3600,
            "spec.healthCheck.timeoutSeconds",
            &mut out,
        );
        if hc.timeout_seconds > hc.interval_seconds {
            out.push(Invalid::new(
                "spec.healthCheck.timeoutSeconds",
                format!(
                    "{} exceeds intervalSeconds {}",
                    hc.timeout_seconds, hc.interval_seconds
                ),
            ));
        }
        check_range(
            hc.healthy_threshold,
            1,
            10,
            "spec.healthCheck.healthyThreshold",
            &mut out,
        );
        check_range(
            hc.unhealthy_threshold,
            1,
            10,
            "spec.healthCheck.unhealthyThreshold",
            &mut out,
        );
    }
    out
}

fn check_acl(acl: &AccessControlList, objects: Objects<'_>) -> Vec<Invalid> {
    let mut out = Vec::new();
    let spec = &acl.spec;
    for (i, b) in spec.attach_to.bridges.iter().enumerate() {
        if !objects.bridges.contains_key(b) {
            out.push(Invalid::new(
                format!("spec.attachTo.bridges[{i}]"),
                format!("no VirtualBridge named {b}"),
            ));
        }
    }
    for (i, r) in spec.attach_to.routers.iter().enumerate() {
        if !objects.routers.contains_key(r) {
            out.push(Invalid::new(
                format!("spec.attachTo.routers[{i}]"),
                format!("no VirtualRouter named {r}"),
            ));
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        let src = rule
            .source
            .as_deref()
            .and_then(|s| parse_prefix(s, &format!("{base}.source"), &mut out));
        let dst = rule
            .destination
            .as_deref()
            .and_then(|s| parse_prefix(s, &format!("{base}.destination"), &mut out));
        if let (Some(s), Some(d)) = (src, dst)
            && s.addr().is_ipv4() != d.addr().is_ipv4()
        {
            out.push(Invalid::new(
                format!("{base}.destination"),
                format!("{d} is not of the same IP family as the source {s}"),
            ));
        }
        if rule.invert_source && rule.source.is_none() {
            out.push(Invalid::new(
                format!("{base}.invertSource"),
                "needs a source",
            ));
        }
        if rule.invert_destination && rule.destination.is_none() {
            out.push(Invalid::new(
                format!("{base}.invertDestination"),
                "needs a destination",
            ));
        }
        for (range, f) in [
            (&rule.source_ports, "sourcePorts"),
            (&rule.destination_ports, "destinationPorts"),
        ] {
            if let Some(range) = range {
                let field = format!("{base}.{f}");
                check_port_range(range, &field, &mut out);
                if !rule.protocol.is_some_and(Protocol::has_ports) {
                    out.push(Invalid::new(
                        field,
                        "port ranges need protocol TCP, UDP or SCTP",
                    ));
                }
            }
        }
        let icmp = matches!(rule.protocol, Some(Protocol::Icmp | Protocol::Icmpv6));
        if rule.icmp_type.is_some() && !icmp {
            out.push(Invalid::new(
                format!("{base}.icmpType"),
                "needs protocol ICMP or ICMPv6",
            ));
        }
        if rule.icmp_code.is_some() && rule.icmp_type.is_none() {
            out.push(Invalid::new(format!("{base}.icmpCode"), "needs icmpType"));
        }
        match (rule.action, &rule.jump_to) {
            (Action::Jump, None) => out.push(Invalid::new(
                format!("{base}.jumpTo"),
                "action Jump needs jumpTo, the ACL to continue in",
            )),
            (Action::Jump, Some(target)) if !objects.acls.contains_key(target) => {
                out.push(Invalid::new(
                    format!("{base}.jumpTo"),
                    format!("no AccessControlList named {target}"),
                ))
            }
            (Action::Jump, Some(_)) => {}
            (_, Some(_)) => out.push(Invalid::new(
                format!("{base}.jumpTo"),
                "jumpTo is only used with action Jump",
            )),
            (_, None) => {}
        }
    }
    out
}

/// Finds every jump that closes a loop: for each ACL on a cycle, each rule that jumps to an ACL
/// from which the jumping ACL can be reached again. The reason spells out one such loop.
fn jump_loops(acls: &BTreeMap<String, AccessControlList>) -> BTreeMap<String, Vec<Invalid>> {
    let edges: BTreeMap<&str, Vec<(usize, &str)>> = acls
        .iter()
        .map(|(name, acl)| {
            let targets = acl
                .spec
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.action == Action::Jump)
                .filter_map(|(i, r)| r.jump_to.as_deref().map(|t| (i, t)))
                .filter(|(_, t)| acls.contains_key(*t))
                .collect();
            (name.as_str(), targets)
        })
        .collect();
    let mut out: BTreeMap<String, Vec<Invalid>> = BTreeMap::new();
    for (&from, targets) in &edges {
        for &(i, to) in targets {
            if let Some(path) = shortest_path(&edges, to, from) {
                let mut cycle = vec![from];
                cycle.extend(path);
                out.entry(from.to_string()).or_default().push(Invalid::new(
                    format!("spec.rules[{i}].jumpTo"),
                    format!("jump loop: {}", cycle.join(" -> ")),
                ));
            }
        }
    }
    out
}

/// Breadth-first search over jumps; the path includes both ends.
fn shortest_path<'a>(
    edges: &BTreeMap<&'a str, Vec<(usize, &'a str)>>,
    start: &'a str,
    goal: &'a str,
) -> Option<Vec<&'a str>> {
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut visited = BTreeSet::from([start]);
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        if node == goal {
            let mut path = vec![node];
            let mut cur = node;
            while let Some(&p) = prev.get(cur) {
                path.push(p);
                cur = p;
            }
            path.reverse();
            return Some(path);
        }
        for &(_, next) in edges.get(node).map(Vec::as_slice).unwrap_or_default() {
            if visited.insert(next) {
                prev.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    /// An owned set of objects, valid as built: the same topology as examples/.
    #[derive(Clone, Default)]
    struct Set {
        bridges: BTreeMap<String, VirtualBridge>,
        routers: BTreeMap<String, VirtualRouter>,
        lbs: BTreeMap<String, VirtualLoadBalancer>,
        acls: BTreeMap<String, AccessControlList>,
    }

    impl Set {
        fn check(&self) -> Report {
            validate(Objects {
                bridges: &self.bridges,
                routers: &self.routers,
                load_balancers: &self.lbs,
                acls: &self.acls,
            })
        }
        fn bridge(&mut self, name: &str) -> &mut VirtualBridgeSpec {
            &mut self.bridges.get_mut(name).unwrap().spec
        }
        fn router(&mut self, name: &str) -> &mut VirtualRouterSpec {
            &mut self.routers.get_mut(name).unwrap().spec
        }
        fn lb(&mut self, name: &str) -> &mut VirtualLoadBalancerSpec {
            &mut self.lbs.get_mut(name).unwrap().spec
        }
        fn acl(&mut self, name: &str) -> &mut AccessControlListSpec {
            &mut self.acls.get_mut(name).unwrap().spec
        }
    }

    fn base() -> Set {
        let mut s = Set::default();
        for (name, subnet, gw) in [
            ("blue", "10.10.0.0/24", "10.10.0.1"),
            ("green", "10.20.0.0/24", "10.20.0.1"),
        ] {
            let spec = VirtualBridgeSpec {
                subnet: subnet.into(),
                gateway: Some(gw.into()),
                namespaces: Some(NamespaceSelection {
                    names: vec![name.into()],
                    selector: None,
                }),
                ..Default::default()
            };
            s.bridges
                .insert(name.into(), VirtualBridge::new(name, spec));
        }
        let router = VirtualRouterSpec {
            interfaces: vec![
                RouterInterface {
                    bridge: "blue".into(),
                    ip: "10.10.0.1".into(),
                    mac: None,
                    ip_v6: None,
                },
                RouterInterface {
                    bridge: "green".into(),
                    ip: "10.20.0.1".into(),
                    mac: Some("02:00:0a:14:00:01".into()),
                    ip_v6: None,
                },
            ],
            routes: vec![StaticRoute {
                destination: "0.0.0.0/0".into(),
                next_hop: Some("192.168.100.1".into()),
                interface: Some(UPLINK.into()),
                weight: None,
            }],
            uplink: Some(Uplink {
                ip: "192.168.100.2/24".into(),
                gateway: Some("192.168.100.1".into()),
                snat: true,
                ..Default::default()
            }),
            dnat: vec![DnatRule {
                external_ip: "192.168.100.10".into(),
                internal_ip: "10.10.0.10".into(),
                ..Default::default()
            }],
        };
        s.routers
            .insert("edge".into(), VirtualRouter::new("edge", router));
        let lb = VirtualLoadBalancerSpec {
            router: Some("edge".into()),
            vips: vec![Vip {
                ip: "10.96.0.10".into(),
                protocol: L4Protocol::Tcp,
                port: 80,
                members: vec![
                    Member {
                        ip: "10.10.0.11".into(),
                        port: 8080,
                        weight: 1,
                    },
                    Member {
                        ip: "10.20.0.11".into(),
                        port: 8080,
                        weight: 2,
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        s.lbs
            .insert("web".into(), VirtualLoadBalancer::new("web", lb));
        let mut web = AclRule::new(Action::Accept);
        web.protocol = Some(Protocol::Tcp);
        web.destination_ports = Some(PortRange { from: 80, to: 80 });
        let mut jump = AclRule::new(Action::Jump);
        jump.jump_to = Some("common".into());
        let acl = AccessControlListSpec {
            direction: Direction::Ingress,
            attach_to: Attachment {
                bridges: vec!["blue".into()],
                ..Default::default()
            },
            rules: vec![jump, web],
            default_action: DefaultAction::Drop,
        };
        s.acls
            .insert("blue-in".into(), AccessControlList::new("blue-in", acl));
        let mut est = AclRule::new(Action::Accept);
        est.connection_state = Some(ConnectionState {
            established: Some(true),
            ..Default::default()
        });
        let common = AccessControlListSpec {
            rules: vec![est],
            default_action: DefaultAction::Return,
            ..Default::default()
        };
        s.acls
            .insert("common".into(), AccessControlList::new("common", common));
        s
    }

    #[test]
    fn the_base_topology_is_valid() {
        let report = base().check();
        assert!(report.is_empty(), "{report}");
    }

    #[test]
    fn a_dual_stack_bridge_and_its_router_interface_are_valid() {
        let mut set = base();
        let b = set.bridge("green");
        b.subnet_v6 = Some("fd00:20::/64".into());
        b.gateway_v6 = Some("fd00:20::1".into());
        set.router("edge").interfaces[1].ip_v6 = Some("fd00:20::1".into());
        let report = set.check();
        assert!(report.is_empty(), "{report}");
    }

    type Edit = fn(&mut Set);

    /// One row: an edit of the base topology and the one fault it must cause.
    struct Case {
        what: &'static str,
        edit: Edit,
        kind: Kind,
        object: &'static str,
        field: &'static str,
        reason: &'static str,
    }

    fn cases() -> Vec<Case> {
        use Kind::*;
        vec![
            Case {
                what: "subnet with host bits",
                edit: |s| s.bridge("blue").subnet = "10.10.0.5/24".into(),
                kind: VirtualBridge,
                object: "blue",
                field: "spec.subnet",
                reason: "host bits set",
            },
            Case {
                what: "subnet not a prefix",
                edit: |s| s.bridge("blue").subnet = "10.10.0.0/33".into(),
                kind: VirtualBridge,
                object: "blue",
                field: "spec.subnet",
                reason: "is not an IPv4 prefix",
            },
            Case {
                what: "subnet too small",
                edit: |s| s.bridge("blue").subnet = "10.10.0.0/31".into(),
                kind: VirtualBridge,
                object: "blue",
                field: "spec.subnet",
                reason: "no room",
            },
            Case {
                what: "IPv6 gateway without an IPv6 subnet",
                edit: |s| s.bridge("green").gateway_v6 = Some("fd00:20::1".into()),
                kind: VirtualBridge,
                object: "green",
                field: "spec.gatewayV6",
                reason: "fd00:20::1 is IPv6 but the bridge has no subnetV6",
            },
            Case {
                what: "IPv6 gateway outside the IPv6 subnet",
                edit: |s| {
                    let b = s.bridge("green");
                    b.subnet_v6 = Some("fd00:20::/64".into());
                    b.gateway_v6 = Some("fd00:30::1".into());
                },
                kind: VirtualBridge,
                object: "green",
                field: "spec.gatewayV6",
                reason: "fd00:30::1 is outside the subnet fd00:20::/64",
            },
            Case {
                what: "router IPv6 address on a bridge without an IPv6 subnet",
                edit: |s| s.router("edge").interfaces[1].ip_v6 = Some("fd00:20::1".into()),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[1].ipV6",
                reason: "fd00:20::1 is IPv6 but bridge green has no subnetV6",
            },
            Case {
                what: "router IPv6 address at the network address",
                edit: |s| {
                    s.bridge("green").subnet_v6 = Some("fd00:20::/64".into());
                    s.router("edge").interfaces[1].ip_v6 = Some("fd00:20::".into());
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[1].ipV6",
                reason: "fd00:20:: is the network address of fd00:20::/64 of bridge green",
            },
            Case {
                what: "gateway outside subnet",
                edit: |s| s.bridge("green").gateway = Some("10.30.0.1".into()),
                kind: VirtualBridge,
                object: "green",
                field: "spec.gateway",
                reason: "outside the subnet 10.20.0.0/24",
            },
            Case {
                what: "gateway is the broadcast address",
                edit: |s| s.bridge("green").gateway = Some("10.20.0.255".into()),
                kind: VirtualBridge,
                object: "green",
                field: "spec.gateway",
                reason: "broadcast",
            },
            Case {
                what: "excluded IP outside subnet",
                edit: |s| {
                    s.bridge("blue").excluded_ips = vec!["10.10.0.9".into(), "10.11.0.9".into()]
                },
                kind: VirtualBridge,
                object: "blue",
                field: "spec.excludedIps[1]",
                reason: "outside the subnet",
            },
            Case {
                what: "IPv6 excluded IP without subnetV6",
                edit: |s| s.bridge("blue").excluded_ips = vec!["fd00::9".into()],
                kind: VirtualBridge,
                object: "blue",
                field: "spec.excludedIps[0]",
                reason: "no subnetV6",
            },
            Case {
                what: "MTU out of range",
                edit: |s| s.bridge("blue").mtu = Some(9001),
                kind: VirtualBridge,
                object: "blue",
                field: "spec.mtu",
                reason: "out of range 576-9000",
            },
            Case {
                what: "VLAN out of range",
                edit: |s| s.bridge("blue").vlan = Some(4095),
                kind: VirtualBridge,
                object: "blue",
                field: "spec.vlan",
                reason: "out of range 1-4094",
            },
            Case {
                what: "namespace served twice",
                edit: |s| {
                    s.bridge("green").namespaces = Some(NamespaceSelection {
                        names: vec!["blue".into()],
                        selector: None,
                    })
                },
                kind: VirtualBridge,
                object: "green",
                field: "spec.namespaces.names[0]",
                reason: "already served by VirtualBridge blue",
            },
            Case {
                what: "router without interfaces",
                edit: |s| s.router("edge").interfaces.clear(),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces",
                reason: "at least one interface",
            },
            Case {
                what: "overlapping subnets on one router",
                edit: |s| {
                    s.bridge("green").subnet = "10.10.0.0/16".into();
                    s.bridge("green").gateway = Some("10.10.128.1".into());
                    s.router("edge").interfaces[1].ip = "10.10.128.1".into();
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[1].bridge",
                reason: "overlaps 10.10.0.0/24",
            },
            Case {
                what: "uplink overlapping an interface subnet",
                edit: |s| {
                    let up = s.router("edge").uplink.as_mut().unwrap();
                    up.ip = "10.20.0.200/16".into();
                    up.gateway = Some("10.20.0.254".into());
                    s.router("edge").routes[0].next_hop = Some("10.20.0.254".into());
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.uplink.ip",
                reason: "overlaps",
            },
            Case {
                what: "interface on a missing bridge",
                edit: |s| s.router("edge").interfaces[1].bridge = "red".into(),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[1].bridge",
                reason: "no VirtualBridge named red",
            },
            Case {
                what: "interface IP outside the bridge subnet",
                edit: |s| s.router("edge").interfaces[1].ip = "10.10.0.254".into(),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[1].ip",
                reason: "outside the subnet 10.20.0.0/24 of bridge green",
            },
            Case {
                what: "two interfaces on one bridge",
                edit: |s| s.router("edge").interfaces[1].bridge = "blue".into(),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[1].bridge",
                reason: "already has an interface (spec.interfaces[0])",
            },
            Case {
                what: "two routers with one address on a bridge",
                edit: |s| {
                    let mut other = s.routers["edge"].clone();
                    other.metadata.name = Some("edge2".into());
                    other.spec.uplink = None;
                    other.spec.routes.clear();
                    other.spec.dnat.clear();
                    other.spec.interfaces[1].ip = "10.20.0.2".into();
                    s.routers.insert("edge2".into(), other);
                },
                kind: VirtualRouter,
                object: "edge2",
                field: "spec.interfaces[0].ip",
                reason: "10.10.0.1 on bridge blue is already used by VirtualRouter edge",
            },
            Case {
                what: "multicast interface MAC",
                edit: |s| s.router("edge").interfaces[0].mac = Some("01:00:5e:00:00:01".into()),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.interfaces[0].mac",
                reason: "multicast",
            },
            Case {
                what: "uplink gateway outside the uplink subnet",
                edit: |s| {
                    s.router("edge").uplink.as_mut().unwrap().gateway = Some("192.168.200.1".into())
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.uplink.gateway",
                reason: "outside the subnet 192.168.100.0/24",
            },
            Case {
                what: "route to a missing interface",
                edit: |s| s.router("edge").routes[0].interface = Some("red".into()),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.routes[0].interface",
                reason: "no interface on bridge red",
            },
            Case {
                what: "route next hop off-link",
                edit: |s| s.router("edge").routes[0].next_hop = Some("172.16.0.1".into()),
                kind: VirtualRouter,
                object: "edge",
                field: "spec.routes[0].nextHop",
                reason: "not on a subnet connected",
            },
            Case {
                what: "route with neither next hop nor interface",
                edit: |s| {
                    let r = &mut s.router("edge").routes[0];
                    r.next_hop = None;
                    r.interface = None;
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.routes[0]",
                reason: "needs a nextHop or an interface",
            },
            Case {
                what: "route via uplink without an uplink",
                edit: |s| {
                    s.router("edge").uplink = None;
                    s.router("edge").routes[0].next_hop = None;
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.routes[0].interface",
                reason: "no uplink",
            },
            Case {
                what: "DNAT port without protocol",
                edit: |s| {
                    let d = &mut s.router("edge").dnat[0];
                    d.external_port = Some(8080);
                    d.internal_port = Some(80);
                },
                kind: VirtualRouter,
                object: "edge",
                field: "spec.dnat[0].protocol",
                reason: "needs a protocol",
            },
            Case {
                what: "load balancer on a missing router",
                edit: |s| s.lb("web").router = Some("core".into()),
                kind: VirtualLoadBalancer,
                object: "web",
                field: "spec.router",
                reason: "no VirtualRouter named core",
            },
            Case {
                what: "duplicate VIP within a load balancer",
                edit: |s| {
                    let v = s.lb("web").vips[0].clone();
                    s.lb("web").vips.push(v);
                },
                kind: VirtualLoadBalancer,
                object: "web",
                field: "spec.vips[1]",
                reason: "duplicate VIP 10.96.0.10 TCP/80: same as spec.vips[0]",
            },
            Case {
                what: "duplicate VIP among load balancers",
                edit: |s| {
                    let mut other = s.lbs["web"].clone();
                    other.metadata.name = Some("www".into());
                    s.lbs.insert("www".into(), other);
                },
                kind: VirtualLoadBalancer,
                object: "www",
                field: "spec.vips[0]",
                reason: "already served by VirtualLoadBalancer web",
            },
            Case {
                what: "VIP without members or pods",
                edit: |s| s.lb("web").vips[0].members.clear(),
                kind: VirtualLoadBalancer,
                object: "web",
                field: "spec.vips[0].members",
                reason: "needs members or a pods selector",
            },
            Case {
                what: "member of the other IP family",
                edit: |s| s.lb("web").vips[0].members[1].ip = "fd00::11".into(),
                kind: VirtualLoadBalancer,
                object: "web",
                field: "spec.vips[0].members[1].ip",
                reason: "same IP family",
            },
            Case {
                what: "member weight zero",
                edit: |s| s.lb("web").vips[0].members[0].weight = 0,
                kind: VirtualLoadBalancer,
                object: "web",
                field: "spec.vips[0].members[0].weight",
                reason: "out of range 1-256",
            },
            Case {
                what: "health check timeout over interval",
                edit: |s| {
                    s.lb("web").health_check = Some(HealthCheck {
                        kind: HealthCheckType::Tcp,
                        path: None,
                        interval_seconds: 2,
                        timeout_seconds: 5,
                        healthy_threshold: 2,
                        unhealthy_threshold: 3,
                    })
                },
                kind: VirtualLoadBalancer,
                object: "web",
                field: "spec.healthCheck.timeoutSeconds",
                reason: "exceeds intervalSeconds",
            },
            Case {
                what: "ACL attached to a missing bridge",
                edit: |s| s.acl("blue-in").attach_to.bridges.push("red".into()),
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.attachTo.bridges[1]",
                reason: "no VirtualBridge named red",
            },
            Case {
                what: "jump to a missing ACL",
                edit: |s| s.acl("blue-in").rules[0].jump_to = Some("nowhere".into()),
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[0].jumpTo",
                reason: "no AccessControlList named nowhere",
            },
            Case {
                what: "jump without a target",
                edit: |s| s.acl("blue-in").rules[0].jump_to = None,
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[0].jumpTo",
                reason: "needs jumpTo",
            },
            Case {
                what: "jump to itself",
                edit: |s| {
                    s.acl("common").rules[0] = {
                        let mut r = AclRule::new(Action::Jump);
                        r.jump_to = Some("common".into());
                        r
                    }
                },
                kind: AccessControlList,
                object: "common",
                field: "spec.rules[0].jumpTo",
                reason: "jump loop: common -> common",
            },
            Case {
                what: "ports without a port protocol",
                edit: |s| s.acl("blue-in").rules[1].protocol = Some(Protocol::Icmp),
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[1].destinationPorts",
                reason: "need protocol TCP, UDP or SCTP",
            },
            Case {
                what: "reversed port range",
                edit: |s| {
                    s.acl("blue-in").rules[1].destination_ports =
                        Some(PortRange { from: 90, to: 80 })
                },
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[1].destinationPorts",
                reason: "from 90 is greater than to 80",
            },
            Case {
                what: "ICMP type without ICMP",
                edit: |s| s.acl("blue-in").rules[1].icmp_type = Some(8),
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[1].icmpType",
                reason: "needs protocol ICMP",
            },
            Case {
                what: "inverted source without a source",
                edit: |s| s.acl("blue-in").rules[1].invert_source = true,
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[1].invertSource",
                reason: "needs a source",
            },
            Case {
                what: "source prefix with host bits",
                edit: |s| s.acl("blue-in").rules[1].source = Some("10.20.0.7/24".into()),
                kind: AccessControlList,
                object: "blue-in",
                field: "spec.rules[1].source",
                reason: "host bits set; the prefix is 10.20.0.0/24",
            },
        ]
    }

    #[test]
    fn each_fault_is_reported_on_its_object_and_field_only() {
        for case in cases() {
            let mut set = base();
            (case.edit)(&mut set);
            let report = set.check();
            let faults = report.of(case.kind, case.object);
            assert!(
                faults
                    .iter()
                    .any(|f| f.field == case.field && f.reason.contains(case.reason)),
                "{}: expected {} {} {}: ...{}..., got:\n{report}",
                case.what,
                case.kind,
                case.object,
                case.field,
                case.reason
            );
            // The rest of the topology is unaffected.
            let others: Vec<_> = report
                .faults
                .keys()
                .filter(|(k, n)| (*k, n.as_str()) != (case.kind, case.object))
                .collect();
            assert!(
                others.is_empty(),
                "{}: other objects refused:\n{report}",
                case.what
            );
        }
    }

    #[test]
    fn the_newer_of_two_claims_on_a_vip_is_refused() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::Timestamp;
        let mut set = base();
        let mut newer = set.lbs["web"].clone();
        newer.metadata.name = Some("a-web".into());
        newer.metadata.creation_timestamp = Some(Time(Timestamp::from_second(200).unwrap()));
        set.lbs.insert("a-web".into(), newer);
        set.lbs.get_mut("web").unwrap().metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(100).unwrap()));
        let report = set.check();
        assert!(
            report.of(Kind::VirtualLoadBalancer, "web").is_empty(),
            "{report}"
        );
        assert_eq!(
            report.of(Kind::VirtualLoadBalancer, "a-web")[0].field,
            "spec.vips[0]"
        );
    }

    #[test]
    fn a_jump_loop_names_the_whole_cycle_on_every_acl_in_it() {
        let mut set = base();
        let mut back = AclRule::new(Action::Jump);
        back.jump_to = Some("blue-in".into());
        set.acl("common").rules.push(back);
        let report = set.check();
        assert_eq!(
            report.of(Kind::AccessControlList, "blue-in"),
            [Invalid::new(
                "spec.rules[0].jumpTo",
                "jump loop: blue-in -> common -> blue-in"
            )]
        );
        assert_eq!(
            report.of(Kind::AccessControlList, "common"),
            [Invalid::new(
                "spec.rules[1].jumpTo",
                "jump loop: common -> blue-in -> common"
            )]
        );
    }

    #[test]
    fn a_jump_into_a_loop_is_not_itself_a_loop() {
        let mut set = base();
        let mut acl = set.acls["common"].clone();
        acl.metadata.name = Some("outer".into());
        acl.spec.rules = vec![{
            let mut r = AclRule::new(Action::Jump);
            r.jump_to = Some("blue-in".into());
            r
        }];
        set.acls.insert("outer".into(), acl);
        let mut back = AclRule::new(Action::Jump);
        back.jump_to = Some("blue-in".into());
        set.acl("common").rules.push(back);
        let report = set.check();
        assert!(
            report.of(Kind::AccessControlList, "outer").is_empty(),
            "{report}"
        );
        assert!(!report.of(Kind::AccessControlList, "common").is_empty());
    }

    #[test]
    fn garbage_in_every_string_field_is_refused_without_panicking() {
        let mut set = base();
        let junk = "not-an-address::/x/".to_string();
        set.bridge("blue").subnet = junk.clone();
        set.bridge("blue").gateway = Some(junk.clone());
        set.bridge("blue").subnet_v6 = Some(junk.clone());
        set.bridge("blue").excluded_ips = vec![junk.clone()];
        {
            let r = set.router("edge");
            r.interfaces[0].ip = junk.clone();
            r.interfaces[0].mac = Some("zz:zz".into());
            r.routes[0].destination = junk.clone();
            r.routes[0].next_hop = Some(junk.clone());
            let up = r.uplink.as_mut().unwrap();
            up.ip = junk.clone();
            up.gateway = Some(junk.clone());
            up.snat_addresses = vec![junk.clone()];
            r.dnat[0].external_ip = junk.clone();
            r.dnat[0].internal_ip = junk.clone();
        }
        set.lb("web").vips[0].ip = junk.clone();
        set.lb("web").vips[0].members[0].ip = junk.clone();
        set.acl("blue-in").rules[1].source = Some(junk.clone());
        set.acl("blue-in").rules[1].destination = Some(junk);
        let report = set.check();
        let count = |k, n| report.of(k, n).len();
        assert_eq!(count(Kind::VirtualBridge, "blue"), 4, "{report}");
        assert_eq!(count(Kind::VirtualRouter, "edge"), 9, "{report}");
        assert_eq!(count(Kind::VirtualLoadBalancer, "web"), 2, "{report}");
        assert_eq!(count(Kind::AccessControlList, "blue-in"), 2, "{report}");
    }

    #[test]
    fn the_invalid_spec_condition_names_every_field() {
        let mut set = base();
        set.bridge("green").gateway = Some("10.30.0.1".into());
        set.bridge("green").vlan = Some(0);
        let report = set.check();
        let cond = invalid_spec_condition(
            report.of(Kind::VirtualBridge, "green"),
            Some(3),
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        );
        assert_eq!(cond.type_, "Ready");
        assert_eq!(cond.status, "False");
        assert_eq!(cond.reason, "InvalidSpec");
        assert_eq!(
            cond.message,
            "spec.gateway: 10.30.0.1 is outside the subnet 10.20.0.0/24; spec.vlan: 0 is out of range 1-4094"
        );
    }
}
