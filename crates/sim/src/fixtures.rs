//! Builders for tests and benchmarks: small topologies (`Topology::test().bridge(..)...`)
//! made of real NSDB records and compiled like any snapshot, and packets to walk through them.
//!
//! Conventions: hosts `h1` (local, 192.168.0.1) and `h2` (192.168.0.2); the tunnel vport is
//! datapath port 1; local vports get datapath ports 2, 3, ... in creation order; every port
//! and device gets the next tunnel key (1, 2, ...), and a port's MAC is `02:00:00:00:<key>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use nsdb::{
    Bridge, Chain, DeviceRef, DnatRule, Host, LABEL_NAMESPACE_NAME, LoadBalancer, MacAddr, Member,
    NamedPort, PodAttachMode, PodAttachment, PodDirection, Port, PortBinding, PortKind,
    PortSelector, Protocol, Route, Router, Rule, RuleAction, Snat, TunnelType, Vip,
};

use crate::fields::{Fields, PacketContext, ct, ethertype, proto};
use crate::result::{Simulation, Verdict};
use crate::topology::{LABEL_NEXT_HOP_MAC, LocalDatapath, RecordSet, Topology};
use crate::walk::simulate_into;

/// The tunnel vport's datapath number in fixtures.
pub const TUNNEL_PORT: u32 = 1;

/// A topology under construction.
#[derive(Debug, Clone)]
pub struct TopoBuilder {
    /// The records built so far.
    pub records: RecordSet,
    dp_ports: BTreeMap<String, u32>,
    next_key: u32,
    next_dp: u32,
    member_choice: crate::MemberChoice,
}

impl Topology {
    /// Starts a test topology with hosts `h1` (local) and `h2`.
    pub fn test() -> TopoBuilder {
        let mut b = TopoBuilder {
            records: RecordSet::default(),
            dp_ports: BTreeMap::new(),
            next_key: 1,
            next_dp: 2,
            member_choice: crate::MemberChoice::default(),
        };
        b = b.host("h1", "192.168.0.1").host("h2", "192.168.0.2");
        b
    }
}

/// A rule with no conditions and `action`; set conditions with struct update syntax.
pub fn rule(id: &str, action: RuleAction) -> Rule {
    Rule::matching_all(id, action)
}

/// The MAC fixtures give the object with tunnel key `key`.
/// A health verdict on `member` (`ip:port`) of load balancer `lb`, from host h1.
pub fn verdict(lb: &str, member: &str, healthy: bool) -> nsdb::MemberHealth {
    nsdb::MemberHealth {
        lb: lb.into(),
        member: member.parse().expect("test member address"),
        healthy,
        host: "h1".into(),
    }
}

pub fn mac_of_key(key: u32) -> [u8; 6] {
    let k = key.to_be_bytes();
    [2, 0, 0, k[1], k[2], k[3]]
}

fn net(s: &str) -> IpNet {
    s.parse().expect("fixture prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture address")
}

impl TopoBuilder {
    fn key(&mut self) -> u32 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    /// Adds a host.
    pub fn host(mut self, id: &str, underlay: &str) -> Self {
        self.records.hosts.push(Host {
            id: id.into(),
            underlay_ip: ip(underlay),
            tunnel: TunnelType::Vxlan,
            tunnel_udp_port: 4789,
            mtu: 1500,
        });
        self
    }

    /// Adds a bridge.
    pub fn bridge(mut self, id: &str) -> Self {
        let tunnel_key = self.key();
        self.records.bridges.push(Bridge {
            id: id.into(),
            name: id.into(),
            tunnel_key,
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
        });
        self
    }

    /// Gives a bridge its IPv4 pool: `subnet`, and `gateway` when it has one.
    pub fn subnet(mut self, bridge: &str, subnet: &str, gateway: Option<&str>) -> Self {
        let b = self.bridge_mut(bridge);
        b.subnet_v4 = Some(subnet.parse().expect("test subnet"));
        b.gateway_v4 = gateway.map(|g| g.parse().expect("test gateway"));
        self
    }

    /// Sets a bridge's VLAN.
    pub fn vlan(mut self, bridge: &str, vlan: u16) -> Self {
        self.bridge_mut(bridge).vlan = Some(vlan);
        self
    }

    fn bridge_mut(&mut self, id: &str) -> &mut Bridge {
        self.records
            .bridges
            .iter_mut()
            .find(|b| b.id == id)
            .expect("fixture bridge")
    }

    fn router_mut(&mut self, id: &str) -> &mut Router {
        self.records
            .routers
            .iter_mut()
            .find(|b| b.id == id)
            .expect("fixture router")
    }

    fn port_mut(&mut self, id: &str) -> &mut Port {
        self.records
            .ports
            .iter_mut()
            .find(|b| b.id == id)
            .expect("fixture port")
    }

    fn add_port(&mut self, id: &str, device: DeviceRef, kind: PortKind, addr: Option<&str>) -> u32 {
        let key = self.key();
        self.records.ports.push(Port {
            named_ports: Vec::new(),
            namespace_labels: Default::default(),
            id: id.into(),
            device,
            kind,
            mac: MacAddr(mac_of_key(key)),
            addresses: addr.map(net).into_iter().collect(),
            tunnel_key: key,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: BTreeMap::new(),
        });
        key
    }

    fn bind(&mut self, port: &str, host: &str) {
        let vport = format!("wf-{port}");
        self.records.bindings.push(PortBinding {
            port: port.into(),
            host: host.into(),
            vport: vport.clone(),
        });
        if host == "h1" {
            self.dp_ports.insert(vport, self.next_dp);
            self.next_dp += 1;
        }
    }

    /// Adds an exterior port with address `addr` (a bare IPv4 address) bound to local host `h1`.
    pub fn port(self, id: &str, bridge: &str, addr: &str) -> Self {
        self.port_on(id, bridge, addr, "h1")
    }

    /// Adds an exterior port bound to `host`.
    pub fn port_on(mut self, id: &str, bridge: &str, addr: &str, host: &str) -> Self {
        let a = format!("{addr}/32");
        self.add_port(
            id,
            DeviceRef::Bridge(bridge.into()),
            PortKind::Exterior,
            Some(&a),
        );
        self.bind(id, host);
        self
    }

    /// Adds another address (`addr/len`, e.g. `fd00:1::11/128`) to a port.
    pub fn addr(mut self, port: &str, cidr: &str) -> Self {
        let n = net(cidr);
        self.port_mut(port).addresses.push(n);
        self
    }

    /// Gives the router port `<router>-<bridge>` of an existing [`TopoBuilder::link`] the IPv6
    /// address `cidr` (e.g. `fd00:1::1/64`) and adds the connected route `<router>-<bridge>-net6`.
    pub fn link6(mut self, router: &str, bridge: &str, cidr: &str) -> Self {
        let rp = format!("{router}-{bridge}");
        let n: IpNet = net(cidr);
        self.port_mut(&rp).addresses.push(n);
        self.records.routes.push(Route {
            id: format!("{rp}-net6"),
            router: router.into(),
            dst: n.trunc(),
            next_hop: None,
            port: rp,
            weight: 1,
        });
        self
    }

    /// Adds a router.
    pub fn router(mut self, id: &str) -> Self {
        let tunnel_key = self.key();
        self.records.routers.push(Router {
            id: id.into(),
            name: id.into(),
            tunnel_key,
            inbound_chain: None,
            outbound_chain: None,
            snat: None,
            dnat: vec![],
        });
        self
    }

    /// Links `router` to `bridge`: router port `<router>-<bridge>` with address `cidr`
    /// (e.g. `10.0.1.1/24`), bridge port `<bridge>-<router>`, and the connected route
    /// `<router>-<bridge>-net`.
    pub fn link(mut self, router: &str, bridge: &str, cidr: &str) -> Self {
        let rp = format!("{router}-{bridge}");
        let bp = format!("{bridge}-{router}");
        self.add_port(
            &rp,
            DeviceRef::Router(router.into()),
            PortKind::Interior { peer: bp.clone() },
            Some(cidr),
        );
        self.add_port(
            &bp,
            DeviceRef::Bridge(bridge.into()),
            PortKind::Interior { peer: rp.clone() },
            None,
        );
        let n: Ipv4Net = cidr.parse().expect("fixture cidr");
        self.records.routes.push(Route {
            id: format!("{rp}-net"),
            router: router.into(),
            dst: IpNet::V4(n.trunc()),
            next_hop: None,
            port: rp,
            weight: 1,
        });
        self
    }

    /// Links two routers with a point-to-point pair of interior ports `<a>-<b>` and `<b>-<a>`.
    pub fn router_link(mut self, a: &str, b: &str, a_cidr: &str, b_cidr: &str) -> Self {
        let ap = format!("{a}-{b}");
        let bp = format!("{b}-{a}");
        self.add_port(
            &ap,
            DeviceRef::Router(a.into()),
            PortKind::Interior { peer: bp.clone() },
            Some(a_cidr),
        );
        self.add_port(
            &bp,
            DeviceRef::Router(b.into()),
            PortKind::Interior { peer: ap.clone() },
            Some(b_cidr),
        );
        self
    }

    /// Adds a route.
    pub fn route(
        mut self,
        id: &str,
        router: &str,
        dst: &str,
        next_hop: Option<&str>,
        port: &str,
        weight: u32,
    ) -> Self {
        self.records.routes.push(Route {
            id: id.into(),
            router: router.into(),
            dst: net(dst),
            next_hop: next_hop.map(ip),
            port: port.into(),
            weight,
        });
        self
    }

    /// Adds an uplink port `id` on `router` with address `cidr`, bound to `h1`, whose external
    /// next hop has MAC `gw_mac`.
    pub fn uplink(mut self, router: &str, id: &str, cidr: &str, gw_mac: &str) -> Self {
        self.add_port(
            id,
            DeviceRef::Router(router.into()),
            PortKind::Uplink,
            Some(cidr),
        );
        self.port_mut(id)
            .labels
            .insert(LABEL_NEXT_HOP_MAC.into(), gw_mac.into());
        self.bind(id, "h1");
        self
    }

    /// Adds a chain.
    pub fn chain(mut self, id: &str, default: RuleAction, rules: Vec<Rule>) -> Self {
        self.records.chains.push(Chain {
            pods: None,
            id: id.into(),
            name: id.into(),
            rules,
            default_action: default,
        });
        self
    }

    /// Makes `port` the port of a pod of namespace `ns` (labelled with the namespace's name,
    /// as the API server labels every namespace) with pod labels `labels`.
    pub fn pod_labels(mut self, port: &str, ns: &str, labels: &[(&str, &str)]) -> Self {
        let p = self.port_mut(port);
        p.namespace_labels
            .insert(LABEL_NAMESPACE_NAME.into(), ns.into());
        p.labels
            .extend(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        self
    }

    /// Adds namespace labels to a pod's port.
    pub fn namespace_labels(mut self, port: &str, labels: &[(&str, &str)]) -> Self {
        self.port_mut(port)
            .namespace_labels
            .extend(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        self
    }

    /// Gives a pod's port a named container port.
    pub fn named_port(mut self, port: &str, name: &str, protocol: Protocol, number: u16) -> Self {
        self.port_mut(port).named_ports.push(NamedPort {
            name: name.into(),
            protocol,
            port: number,
        });
        self
    }

    /// Attaches chain `chain` to the pod ports `selector` picks.
    pub fn attach(
        mut self,
        chain: &str,
        direction: PodDirection,
        selector: PortSelector,
        mode: PodAttachMode,
    ) -> Self {
        self.records
            .chains
            .iter_mut()
            .find(|c| c.id == chain)
            .expect("fixture chain")
            .pods = Some(PodAttachment {
            direction,
            selector,
            mode,
        });
        self
    }

    /// Sets a port's labels (a node's own port carries `weft.dev/role: node`).
    pub fn port_label(mut self, port: &str, key: &str, value: &str) -> Self {
        self.port_mut(port).labels.insert(key.into(), value.into());
        self
    }

    /// Sets a port's inbound and outbound chains.
    pub fn port_chains(
        mut self,
        port: &str,
        inbound: Option<&str>,
        outbound: Option<&str>,
    ) -> Self {
        let p = self.port_mut(port);
        p.inbound_chain = inbound.map(Into::into);
        p.outbound_chain = outbound.map(Into::into);
        self
    }

    /// Sets a bridge's inbound and outbound chains.
    pub fn bridge_chains(
        mut self,
        id: &str,
        inbound: Option<&str>,
        outbound: Option<&str>,
    ) -> Self {
        let b = self.bridge_mut(id);
        b.inbound_chain = inbound.map(Into::into);
        b.outbound_chain = outbound.map(Into::into);
        self
    }

    /// Sets a router's inbound and outbound chains.
    pub fn router_chains(
        mut self,
        id: &str,
        inbound: Option<&str>,
        outbound: Option<&str>,
    ) -> Self {
        let r = self.router_mut(id);
        r.inbound_chain = inbound.map(Into::into);
        r.outbound_chain = outbound.map(Into::into);
        self
    }

    /// Adds a load balancer with one VIP. Members are `(ip, port, weight, healthy)`.
    #[allow(clippy::too_many_arguments)]
    pub fn vip(
        mut self,
        lb: &str,
        router: Option<&str>,
        vip: &str,
        protocol: Protocol,
        port: u16,
        members: &[(&str, u16, u32, bool)],
        session_affinity: bool,
    ) -> Self {
        self.records.load_balancers.push(LoadBalancer {
            health_check: None,
            id: lb.into(),
            name: lb.into(),
            router: router.map(Into::into),
            vips: vec![Vip {
                member_selector: None,
                target_port: None,
                ip: ip(vip),
                protocol,
                port,
                members: members
                    .iter()
                    .map(|(i, p, w, h)| Member {
                        ip: ip(i),
                        port: *p,
                        weight: *w,
                        healthy: *h,
                    })
                    .collect(),
                session_affinity,
                affinity_timeout_s: None,
            }],
        });
        self
    }

    /// Sets a router's SNAT on its uplink.
    pub fn snat(
        mut self,
        router: &str,
        uplink: &str,
        addresses: &[&str],
        ports: (u16, u16),
    ) -> Self {
        self.router_mut(router).snat = Some(Snat {
            port: uplink.into(),
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("fixture"))
                .collect(),
            port_range: ports,
        });
        self
    }

    /// Adds a DNAT rule to a router.
    pub fn dnat(mut self, router: &str, rule: DnatRule) -> Self {
        self.router_mut(router).dnat.push(rule);
        self
    }

    /// Sets a port administratively down.
    pub fn down(mut self, port: &str) -> Self {
        self.port_mut(port).admin_up = false;
        self
    }

    /// Chooses VIP members where `choice` says (in the datapath by default).
    pub fn member_choice(mut self, choice: crate::MemberChoice) -> Self {
        self.member_choice = choice;
        self
    }

    /// The local datapath the fixture describes.
    pub fn datapath(&self) -> LocalDatapath {
        LocalDatapath {
            tunnel_port: TUNNEL_PORT,
            vports: self.dp_ports.clone(),
            member_choice: self.member_choice,
        }
    }

    /// The datapath of `host`: the vports of the ports bound to it, numbered from 2 in
    /// binding order (for `h1`, the numbers [`TopoBuilder::datapath`] gives).
    pub fn datapath_of(&self, host: &str) -> LocalDatapath {
        LocalDatapath {
            tunnel_port: TUNNEL_PORT,
            vports: self
                .records
                .bindings
                .iter()
                .filter(|b| b.host == host)
                .zip(2..)
                .map(|(b, n)| (b.vport.clone(), n))
                .collect(),
            member_choice: self.member_choice,
        }
    }

    /// The datapath port number of a local port.
    pub fn dp(&self, port: &str) -> u32 {
        self.dp_ports[&format!("wf-{port}")]
    }

    /// The MAC of a port.
    pub fn mac(&self, port: &str) -> [u8; 6] {
        self.records
            .ports
            .iter()
            .find(|p| p.id == port)
            .expect("fixture port")
            .mac
            .0
    }

    /// The tunnel key of a port.
    pub fn key_of(&self, port: &str) -> u32 {
        self.records
            .ports
            .iter()
            .find(|p| p.id == port)
            .expect("fixture port")
            .tunnel_key
    }

    /// Compiles the topology as seen from `h1`.
    pub fn build(&self) -> Topology {
        self.build_for("h1", &self.datapath())
    }

    /// Compiles the topology as seen from `host` with datapath `dp`.
    pub fn build_for(&self, host: &str, dp: &LocalDatapath) -> Topology {
        let t = Topology::compile(&self.records, host, dp).expect("fixture compiles");
        assert!(
            t.problems().is_empty(),
            "fixture problems: {:?}",
            t.problems()
        );
        t
    }
}

/// Packet builders. Addresses are text for readability.
pub mod pkt {
    use super::*;

    fn v4(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().expect("fixture address"))
    }

    /// An IPv4 packet with protocol `p` and ports (or ICMP type/code) `sp`, `dp`.
    #[allow(clippy::too_many_arguments)]
    pub fn ipv4(
        in_port: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: &str,
        dst: &str,
        p: u8,
        sp: u16,
        dp: u16,
    ) -> Fields {
        Fields {
            in_port,
            eth_src: src_mac,
            eth_dst: dst_mac,
            eth_type: ethertype::IPV4,
            ipv4_src: v4(src),
            ipv4_dst: v4(dst),
            ip_proto: p,
            ip_ttl: 64,
            tp_src: sp,
            tp_dst: dp,
            ..Fields::default()
        }
    }

    /// A TCP packet.
    pub fn tcp(
        in_port: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: &str,
        dst: &str,
        sp: u16,
        dp: u16,
    ) -> Fields {
        ipv4(in_port, src_mac, dst_mac, src, dst, proto::TCP, sp, dp)
    }

    /// A UDP packet.
    pub fn udp(
        in_port: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: &str,
        dst: &str,
        sp: u16,
        dp: u16,
    ) -> Fields {
        ipv4(in_port, src_mac, dst_mac, src, dst, proto::UDP, sp, dp)
    }

    /// An ICMP echo request.
    pub fn ping(in_port: u32, src_mac: [u8; 6], dst_mac: [u8; 6], src: &str, dst: &str) -> Fields {
        ipv4(in_port, src_mac, dst_mac, src, dst, proto::ICMP, 8, 0)
    }

    /// A broadcast ARP request from `sip` for `tip`.
    pub fn arp_request(in_port: u32, src_mac: [u8; 6], sip: &str, tip: &str) -> Fields {
        Fields {
            in_port,
            eth_src: src_mac,
            eth_dst: [0xff; 6],
            eth_type: ethertype::ARP,
            arp_op: 1,
            arp_sip: v4(sip),
            arp_tip: v4(tip),
            arp_sha: src_mac,
            ..Fields::default()
        }
    }

    fn v6(s: &str) -> u128 {
        u128::from(s.parse::<std::net::Ipv6Addr>().expect("fixture address"))
    }

    /// An IPv6 packet with next header `p` and ports (or ICMPv6 type/code) `sp`, `dp`.
    #[allow(clippy::too_many_arguments)]
    pub fn ipv6(
        in_port: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: &str,
        dst: &str,
        p: u8,
        sp: u16,
        dp: u16,
    ) -> Fields {
        Fields {
            in_port,
            eth_src: src_mac,
            eth_dst: dst_mac,
            eth_type: ethertype::IPV6,
            ipv6_src: v6(src),
            ipv6_dst: v6(dst),
            ip_proto: p,
            ip_ttl: 64,
            tp_src: sp,
            tp_dst: dp,
            ..Fields::default()
        }
    }

    /// A UDP packet over IPv6.
    pub fn udp6(
        in_port: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: &str,
        dst: &str,
        sp: u16,
        dp: u16,
    ) -> Fields {
        ipv6(in_port, src_mac, dst_mac, src, dst, proto::UDP, sp, dp)
    }

    /// A TCP packet over IPv6.
    pub fn tcp6(
        in_port: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: &str,
        dst: &str,
        sp: u16,
        dp: u16,
    ) -> Fields {
        ipv6(in_port, src_mac, dst_mac, src, dst, proto::TCP, sp, dp)
    }

    /// An ICMPv6 echo request.
    pub fn ping6(in_port: u32, src_mac: [u8; 6], dst_mac: [u8; 6], src: &str, dst: &str) -> Fields {
        ipv6(in_port, src_mac, dst_mac, src, dst, proto::ICMPV6, 128, 0)
    }

    /// A neighbour solicitation from `src` for `target`, sent as address resolution does:
    /// to the solicited-node multicast address and its MAC, hop limit 255, with the source
    /// link-layer address option (none when `src` is `::`, as in duplicate address detection).
    pub fn ns(in_port: u32, src_mac: [u8; 6], src: &str, target: &str) -> Fields {
        let t = v6(target);
        let group = v6("ff02::1:ff00:0") | (t & 0x00ff_ffff);
        let g = group.to_be_bytes();
        let mut f = ipv6(
            in_port,
            src_mac,
            [0x33, 0x33, g[12], g[13], g[14], g[15]],
            src,
            "::",
            proto::ICMPV6,
            135,
            0,
        );
        f.ipv6_dst = group;
        f.ip_ttl = 255;
        f.nd_target = t;
        if f.ipv6_src != 0 {
            f.nd_sll = src_mac;
        }
        f
    }

    /// A well-formed frame for IPv6 fields (ICMPv6 echo with an 8-byte payload, UDP with 4
    /// payload bytes, TCP with SYN), so generated replies can quote or echo it.
    pub fn frame6(f: &Fields) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&f.eth_dst);
        out.extend_from_slice(&f.eth_src);
        out.extend_from_slice(&ethertype::IPV6.to_be_bytes());
        let mut l4: Vec<u8> = match f.ip_proto {
            proto::ICMPV6 => {
                let mut v = vec![f.tp_src as u8, f.tp_dst as u8, 0, 0, 0x12, 0x34, 0, 1];
                v.extend_from_slice(b"weftping");
                v
            }
            proto::TCP => {
                let mut v = Vec::new();
                v.extend_from_slice(&f.tp_src.to_be_bytes());
                v.extend_from_slice(&f.tp_dst.to_be_bytes());
                v.extend_from_slice(&1000u32.to_be_bytes());
                v.extend_from_slice(&0u32.to_be_bytes());
                v.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
                v
            }
            _ => {
                let mut v = Vec::new();
                v.extend_from_slice(&f.tp_src.to_be_bytes());
                v.extend_from_slice(&f.tp_dst.to_be_bytes());
                v.extend_from_slice(&12u16.to_be_bytes());
                v.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
                v
            }
        };
        if f.ip_proto == proto::ICMPV6 {
            let c = crate::packets::icmp6_checksum(f.ipv6_src, f.ipv6_dst, &l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        out.extend_from_slice(&[f.ip_proto, f.ip_ttl]);
        out.extend_from_slice(&f.ipv6_src.to_be_bytes());
        out.extend_from_slice(&f.ipv6_dst.to_be_bytes());
        out.extend_from_slice(&l4);
        out
    }

    /// A well-formed frame for IPv4 fields (ICMP echo with an 8-byte payload, TCP with
    /// SYN, UDP with 4 payload bytes), so generated replies can quote or echo it.
    pub fn frame(f: &Fields) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&f.eth_dst);
        out.extend_from_slice(&f.eth_src);
        out.extend_from_slice(&ethertype::IPV4.to_be_bytes());
        let l4: Vec<u8> = match f.ip_proto {
            proto::ICMP => {
                let mut v = vec![f.tp_src as u8, f.tp_dst as u8, 0, 0, 0x12, 0x34, 0, 1];
                v.extend_from_slice(b"weftping");
                let c = crate::packets::checksum(&v);
                v[2..4].copy_from_slice(&c.to_be_bytes());
                v
            }
            proto::TCP => {
                let mut v = Vec::new();
                v.extend_from_slice(&f.tp_src.to_be_bytes());
                v.extend_from_slice(&f.tp_dst.to_be_bytes());
                v.extend_from_slice(&1000u32.to_be_bytes());
                v.extend_from_slice(&0u32.to_be_bytes());
                v.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
                v
            }
            _ => {
                let mut v = Vec::new();
                v.extend_from_slice(&f.tp_src.to_be_bytes());
                v.extend_from_slice(&f.tp_dst.to_be_bytes());
                v.extend_from_slice(&12u16.to_be_bytes());
                v.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
                v
            }
        };
        let total = (20 + l4.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, f.ip_ttl, f.ip_proto, 0, 0]);
        ip.extend_from_slice(&f.ipv4_src.to_be_bytes());
        ip.extend_from_slice(&f.ipv4_dst.to_be_bytes());
        let c = crate::packets::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&l4);
        out
    }
}

/// The benchmark cases of the simulation, shared by `cargo bench -p sim` and the
/// allocation test: each is a compiled topology plus one packet.
pub mod cases {
    use super::*;
    use crate::fields::PacketContext;

    /// A benchmark case.
    #[derive(Debug)]
    pub struct Case {
        /// Short name, `(a)` ... `(e)`.
        pub name: &'static str,
        /// What it measures.
        pub what: &'static str,
        /// The snapshot.
        pub topology: Topology,
        /// The packet.
        pub fields: Fields,
    }

    impl Case {
        /// The packet context of the case.
        pub fn ctx(&self) -> PacketContext<'static> {
            PacketContext::new(self.fields)
        }
    }

    fn base() -> TopoBuilder {
        Topology::test()
            .bridge("b1")
            .bridge("b2")
            .port("p1", "b1", "10.0.1.11")
            .port("p2", "b1", "10.0.1.12")
            .port("p4", "b2", "10.0.2.14")
            .router("r1")
            .link("r1", "b1", "10.0.1.1/24")
            .link("r1", "b2", "10.0.2.1/24")
    }

    /// (a) L2 within one bridge.
    pub fn l2() -> Case {
        let b = base();
        Case {
            name: "(a)",
            what: "L2 within one bridge",
            fields: pkt::udp(
                b.dp("p1"),
                b.mac("p1"),
                b.mac("p2"),
                "10.0.1.11",
                "10.0.1.12",
                40000,
                53,
            ),
            topology: b.build(),
        }
    }

    /// (b) bridge -> router -> bridge.
    pub fn routed() -> Case {
        let b = base();
        Case {
            name: "(b)",
            what: "bridge -> router -> bridge",
            fields: pkt::udp(
                b.dp("p1"),
                b.mac("p1"),
                b.mac("r1-b1"),
                "10.0.1.11",
                "10.0.2.14",
                40000,
                53,
            ),
            topology: b.build(),
        }
    }

    /// (c) case (b) with a 100-rule chain on the egress port; the packet passes all 100
    /// rules and is accepted by the chain's default.
    pub fn routed_acl100() -> Case {
        let rules = (0..100u16)
            .map(|i| nsdb::Rule {
                protocol: Some(if i % 2 == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                }),
                src: Some(
                    format!("10.{}.{}.0/24", 100 + i / 50, i % 250)
                        .parse()
                        .expect("prefix"),
                ),
                dst_ports: Some((1000 + i, 1000 + i)),
                ..rule(&format!("r{i}"), RuleAction::Drop)
            })
            .collect();
        let b = base()
            .chain("acl100", RuleAction::Accept, rules)
            .port_chains("p4", None, Some("acl100"));
        Case {
            name: "(c)",
            what: "(b) with a 100-rule ACL on the egress port",
            fields: pkt::udp(
                b.dp("p1"),
                b.mac("p1"),
                b.mac("r1-b1"),
                "10.0.1.11",
                "10.0.2.14",
                40000,
                53,
            ),
            topology: b.build(),
        }
    }

    /// (d) a VIP with an 8-member pool: the tracked pass that picks the member.
    pub fn vip8() -> Case {
        let members: Vec<(String, u16, u32, bool)> = (0..8)
            .map(|i| (format!("10.0.2.{}", 100 + i), 8080, 1, true))
            .collect();
        let m: Vec<(&str, u16, u32, bool)> = members
            .iter()
            .map(|(a, p, w, h)| (a.as_str(), *p, *w, *h))
            .collect();
        let b = base().vip("lb", Some("r1"), "10.96.0.10", Protocol::Tcp, 80, &m, false);
        let mut f = pkt::tcp(
            b.dp("p1"),
            b.mac("p1"),
            b.mac("r1-b1"),
            "10.0.1.11",
            "10.96.0.10",
            40000,
            80,
        );
        f.recirc_id = crate::walk::RECIRC_CT;
        f.ct_state = crate::fields::ct::TRACKED | crate::fields::ct::NEW;
        Case {
            name: "(d)",
            what: "VIP with an 8-member pool",
            fields: f,
            topology: b.build(),
        }
    }

    /// (e) 10,000 ports on 100 bridges behind one router with 1,000 routes (100 connected,
    /// 900 static), routed from bridge 0 to bridge 57.
    pub fn large() -> Case {
        let b = large_builder();
        let src = "p0-0";
        let fields = pkt::udp(
            b.dp(src),
            b.mac(src),
            b.mac("r1-b0"),
            "10.0.0.10",
            "10.0.57.40",
            40000,
            53,
        );
        Case {
            name: "(e)",
            what: "10,000 ports and 1,000 routes",
            fields,
            topology: b.build(),
        }
    }

    /// The records of case (e).
    pub fn large_builder() -> TopoBuilder {
        let mut b = Topology::test().router("r1");
        for br in 0..100u32 {
            let id = format!("b{br}");
            b = b.bridge(&id);
            b = b.link("r1", &id, &format!("10.{}.{}.1/24", br / 250, br % 250));
            for p in 0..100u32 {
                let host = if p % 10 == 0 { "h1" } else { "h2" };
                b = b.port_on(
                    &format!("p{br}-{p}"),
                    &id,
                    &format!("10.{}.{}.{}", br / 250, br % 250, p + 10),
                    host,
                );
            }
        }
        for i in 0..900u32 {
            b = b.route(
                &format!("s{i}"),
                "r1",
                &format!("172.{}.{}.0/24", 16 + i / 250, i % 250),
                Some(&format!("10.0.{}.{}", i % 100, 10 + (i % 100))),
                &format!("r1-b{}", i % 100),
                1,
            );
        }
        b
    }

    /// All five cases.
    /// (b6) case (b) over IPv6: the same path with neighbour-table next hops and the hop
    /// limit. Not one of the five cases; it follows them in [`all`].
    pub fn routed6() -> Case {
        let b = base()
            .addr("p1", "fd00:1::11/128")
            .addr("p2", "fd00:1::12/128")
            .addr("p4", "fd00:2::14/128")
            .link6("r1", "b1", "fd00:1::1/64")
            .link6("r1", "b2", "fd00:2::1/64");
        Case {
            name: "(b6)",
            what: "bridge -> router -> bridge, IPv6",
            fields: pkt::udp6(
                b.dp("p1"),
                b.mac("p1"),
                b.mac("r1-b1"),
                "fd00:1::11",
                "fd00:2::14",
                40000,
                53,
            ),
            topology: b.build(),
        }
    }

    /// Every case: the five, (a) to (e) in that order, then (b6).
    pub fn all() -> Vec<Case> {
        vec![l2(), routed(), routed_acl100(), vip8(), large(), routed6()]
    }
}

/// Every host's view of one topology and a model of each host's conntrack: follows a packet
/// through all its datapath passes and tunnels, as the hosts' kernels would run the flows
/// the simulation returns. Conntrack is modelled as the kernel's OVS conntrack does it for
/// IPv4: entries per host and zone, each an original 5-tuple and the tuple its replies
/// carry; a packet matching either is established (the second in the reply direction). NAT
/// is set up only when a new connection is committed, and a packet is translated at most
/// once per zone: a `ct()` in the zone of the packet's previous one reuses that lookup, one
/// in another zone looks up afresh.
#[derive(Debug)]
pub struct Network {
    hosts: Vec<(String, IpAddr, Topology)>,
    conntrack: Vec<CtEntry>,
}

/// Where a packet ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Output to this datapath port of this host.
    Delivered(String, u32),
    /// Dropped (or answered) with this verdict on this host.
    Stopped(String, Verdict),
}

/// A 5-tuple as conntrack keys it; IPv4 addresses are held in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tuple {
    v6: bool,
    src: u128,
    dst: u128,
    sport: u16,
    dport: u16,
    proto: u8,
}

impl Tuple {
    fn of(f: &Fields) -> Tuple {
        let v6 = f.is_ipv6();
        let (src, dst) = if v6 {
            (f.ipv6_src, f.ipv6_dst)
        } else {
            (u128::from(f.ipv4_src), u128::from(f.ipv4_dst))
        };
        Tuple {
            v6,
            src,
            dst,
            sport: f.tp_src,
            dport: f.tp_dst,
            proto: f.ip_proto,
        }
    }

    fn reversed(self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..self
        }
    }

    /// Writes the tuple into `f`, returning the NAT flags of what changed.
    fn write(self, f: &mut Fields) -> u32 {
        let old = Tuple::of(f);
        if self.v6 {
            f.ipv6_src = self.src;
            f.ipv6_dst = self.dst;
        } else {
            // An IPv4 tuple's addresses are IPv4 addresses: the casts keep them whole.
            f.ipv4_src = self.src as u32;
            f.ipv4_dst = self.dst as u32;
        }
        f.tp_src = self.sport;
        f.tp_dst = self.dport;
        let mut flags = 0;
        if (old.src, old.sport) != (self.src, self.sport) {
            flags |= ct::SRC_NAT;
        }
        if (old.dst, old.dport) != (self.dst, self.dport) {
            flags |= ct::DST_NAT;
        }
        flags
    }
}

#[derive(Debug, Clone, Copy)]
struct CtEntry {
    host: usize,
    zone: u16,
    /// The first packet's tuple, before NAT.
    orig: Tuple,
    /// What replies carry: the first packet's tuple after NAT, reversed.
    reply: Tuple,
}

/// The translation a committing `ct(nat(...))` sets up for a new connection of `t`.
fn nat_of(c: &odp::Ct, t: Tuple) -> Tuple {
    let Some(nat) = c.nat else { return t };
    let ip = |a: Option<IpAddr>| match a {
        Some(IpAddr::V4(a)) if !t.v6 => Some(u128::from(u32::from(a))),
        Some(IpAddr::V6(a)) if t.v6 => Some(u128::from(a)),
        _ => None,
    };
    let mut out = t;
    match nat.kind {
        Some(odp::NatKind::Dst) => {
            out.dst = ip(nat.ip_min).unwrap_or(t.dst);
            out.dport = nat.proto_min.unwrap_or(t.dport);
        }
        Some(odp::NatKind::Src) => {
            out.src = ip(nat.ip_min).unwrap_or(t.src);
            out.sport = nat.proto_min.unwrap_or(t.sport);
        }
        None => {}
    }
    out
}

impl Network {
    /// Compiles the topology for every host of `b`.
    pub fn new(b: &TopoBuilder) -> Network {
        let hosts = b
            .records
            .hosts
            .iter()
            .map(|h| {
                let t = b.build_for(&h.id, &b.datapath_of(&h.id));
                (h.id.clone(), h.underlay_ip, t)
            })
            .collect();
        Network {
            hosts,
            conntrack: Vec::new(),
        }
    }

    /// Forgets every connection.
    pub fn flush_conntrack(&mut self) {
        self.conntrack.clear();
    }

    /// Runs one `ct()` action of host `host` on `f`, as the kernel does.
    fn ct(&mut self, host: usize, c: &odp::Ct, f: &mut Fields) {
        let zone = c.zone.unwrap_or(0);
        let t = Tuple::of(f);
        let cached = f.ct_state & ct::TRACKED != 0 && f.ct_zone == zone;
        let found = self
            .conntrack
            .iter()
            .position(|e| e.host == host && e.zone == zone && (e.orig == t || e.reply == t));
        if !cached {
            f.ct_state = match found.map(|i| self.conntrack[i].reply == t) {
                None => ct::TRACKED | ct::NEW,
                Some(false) => ct::TRACKED | ct::ESTABLISHED,
                Some(true) => ct::TRACKED | ct::ESTABLISHED | ct::REPLY_DIR,
            };
        }
        f.ct_zone = zone;
        let nat_done = f.ct_state & (ct::SRC_NAT | ct::DST_NAT) != 0;
        match found {
            Some(i) if c.nat.is_some() && !nat_done => {
                let e = self.conntrack[i];
                let to = if e.reply == t {
                    e.orig.reversed()
                } else {
                    e.reply.reversed()
                };
                f.ct_state |= to.write(f);
            }
            Some(_) => {}
            None if c.commit && f.ct_state & ct::NEW != 0 => {
                let to = if nat_done { t } else { nat_of(c, t) };
                f.ct_state |= to.write(f);
                self.conntrack.push(CtEntry {
                    host,
                    zone,
                    orig: t,
                    reply: to.reversed(),
                });
            }
            None => {}
        }
    }

    /// Sends `pkt` (its `in_port` a datapath port of `host`) and returns where it went.
    pub fn send(&mut self, host: &str, pkt: Fields) -> Vec<Fate> {
        self.send_seen(host, pkt)
            .into_iter()
            .map(|(fate, _)| fate)
            .collect()
    }

    /// [`Network::send`], with each copy's IP addresses and ports as conntrack's NAT left them
    /// (the model applies no other `set` action).
    pub fn send_seen(&mut self, host: &str, pkt: Fields) -> Vec<(Fate, Fields)> {
        let mut h = self
            .hosts
            .iter()
            .position(|x| x.0 == host)
            .expect("fixture host");
        let mut out = Vec::new();
        let mut queue = vec![(h, pkt)];
        let mut sim = Simulation::new();
        let mut passes = 0;
        while let Some((host, mut f)) = queue.pop() {
            passes += 1;
            assert!(passes < 32, "a packet took more than 32 datapath passes");
            h = host;
            let t = &self.hosts[h].2;
            simulate_into(t, &PacketContext::new(f), &mut sim);
            if sim.actions.is_empty() {
                out.push((Fate::Stopped(self.hosts[h].0.clone(), sim.verdict), f));
                continue;
            }
            for a in &sim.actions {
                match a {
                    odp::Action::Ct(c) => self.ct(h, c, &mut f),
                    // The kernel's flow hash of the connection, never zero (`execute_hash`).
                    odp::Action::Hash { basis, .. } => {
                        let (src, dst) = if f.is_ipv6() {
                            (f.ipv6_src, f.ipv6_dst)
                        } else {
                            (u128::from(f.ipv4_src), u128::from(f.ipv4_dst))
                        };
                        let h = crate::hash::five_tuple(src, dst, f.ip_proto, f.tp_src, f.tp_dst);
                        f.dp_hash = ((h as u32) ^ basis).max(1);
                    }
                    odp::Action::Recirc(id) => queue.push((
                        h,
                        Fields {
                            recirc_id: *id,
                            ..f
                        },
                    )),
                    odp::Action::Output(p) if *p == self.hosts[h].2.tunnel_port() => {
                        let d = sim.delivery.expect("a tunnel output names its delivery");
                        let to = self
                            .hosts
                            .iter()
                            .position(|x| x.1 == d.host)
                            .expect("the tunnel goes to a known host");
                        queue.push((
                            to,
                            Fields {
                                in_port: self.hosts[to].2.tunnel_port(),
                                tun_id: u64::from(d.tun_id),
                                recirc_id: 0,
                                dp_hash: 0,
                                ct_state: 0,
                                ct_zone: 0,
                                ..f
                            },
                        ));
                    }
                    odp::Action::Output(p) => {
                        out.push((Fate::Delivered(self.hosts[h].0.clone(), *p), f))
                    }
                    _ => {}
                }
            }
        }
        out
    }
}
