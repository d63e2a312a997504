//! Conversion between the walk's flat fields and the datapath's types (`odp::FlowKey` as key
//! and as mask, `odp::Action`), kept apart so the walk itself reads like the topology.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use odp::{
    Action, Ct, FlowKey, KeyArp, KeyEthernet, KeyIcmp, KeyIpv4, KeyIpv6, KeyNd, KeyPorts, Nat,
    NatKind, SetKey, TunnelKey,
};

use crate::fields::{Fields, VLAN_CFI, ethertype, proto};

/// The NAT part of a `ct()` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatSpec {
    None,
    /// `nat`: apply the translation of an existing connection only.
    Reverse,
    Src {
        min: Ipv4Addr,
        max: Ipv4Addr,
        ports: (u16, u16),
    },
    Dst {
        ip: IpAddr,
        port: Option<u16>,
    },
    /// `nat(src=ip)`: the source address only; the kernel keeps the source port unless that
    /// would clash with another connection.
    SrcAddr(IpAddr),
}

pub(crate) fn ct(commit: bool, zone: u16, nat: NatSpec) -> Ct {
    let nat = match nat {
        NatSpec::None => None,
        NatSpec::Reverse => Some(Nat::default()),
        NatSpec::Src { min, max, ports } => Some(Nat {
            kind: Some(NatKind::Src),
            ip_min: Some(IpAddr::V4(min)),
            ip_max: (max != min).then_some(IpAddr::V4(max)),
            proto_min: Some(ports.0),
            proto_max: (ports.1 != ports.0).then_some(ports.1),
            ..Nat::default()
        }),
        NatSpec::SrcAddr(ip) => Some(Nat {
            kind: Some(NatKind::Src),
            ip_min: Some(ip),
            ..Nat::default()
        }),
        NatSpec::Dst { ip, port } => Some(Nat {
            kind: Some(NatKind::Dst),
            ip_min: Some(ip),
            proto_min: port,
            ..Nat::default()
        }),
    };
    Ct {
        commit,
        zone: Some(zone),
        nat,
        ..Ct::default()
    }
}

/// `ct(zone=Z,nat)`: a lookup in `zone` that applies an existing connection's translation
/// (the reverse one to its replies) and commits nothing.
pub(crate) fn ct_lookup(zone: u16) -> Action {
    Action::Ct(ct(false, zone, NatSpec::Reverse))
}

pub(crate) fn set_eth(src: [u8; 6], dst: [u8; 6]) -> Action {
    Action::Set(SetKey::Ethernet(KeyEthernet { src, dst }))
}

pub(crate) fn set_ttl(ttl: u8) -> Action {
    Action::SetMasked(
        SetKey::Ipv4(KeyIpv4 {
            ttl,
            ..KeyIpv4::default()
        }),
        SetKey::Ipv4(KeyIpv4 {
            ttl: 0xff,
            ..KeyIpv4::default()
        }),
    )
}

pub(crate) fn set_hlimit(hlimit: u8) -> Action {
    let zero = KeyIpv6 {
        src: Ipv6Addr::UNSPECIFIED,
        dst: Ipv6Addr::UNSPECIFIED,
        label: 0,
        proto: 0,
        tclass: 0,
        hlimit: 0,
        frag: 0,
    };
    Action::SetMasked(
        SetKey::Ipv6(KeyIpv6 { hlimit, ..zero }),
        SetKey::Ipv6(KeyIpv6 {
            hlimit: 0xff,
            ..zero
        }),
    )
}

pub(crate) fn set_tunnel(tun_id: u32, dst: IpAddr, udp_port: u16) -> Action {
    let (ipv4_dst, ipv6_dst) = match dst {
        IpAddr::V4(a) => (Some(a), None),
        IpAddr::V6(a) => (None, Some(a)),
    };
    Action::Set(SetKey::Tunnel(TunnelKey {
        tun_id: Some(u64::from(tun_id)),
        ipv4_dst,
        ipv6_dst,
        ttl: Some(64),
        df: true,
        tp_dst: Some(udp_port),
        ..TunnelKey::default()
    }))
}

fn v4(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn l4_ports(f: &Fields) -> Option<u8> {
    matches!(f.ip_proto, proto::TCP | proto::UDP | proto::SCTP).then_some(f.ip_proto)
}

/// Writes the datapath mask for a packet with fields `pkt` whose walk read `m`.
///
/// Attributes the walk did not read are left out (wildcarded). Prerequisites the kernel
/// insists on are the walk's own reads: it always reads `eth_type` before L3 fields and the
/// protocol before L4 fields. Matching any IPv4 field also matches the fragment type, as OVS
/// does, because later fragments carry no L4 header.
pub(crate) fn mask_into(pkt: &Fields, m: &Fields, out: &mut FlowKey) {
    // Every attribute the walk can read is assigned below, so the key need not be cleared
    // first (clearing the whole ~700-byte key was a third of the time of an L2 simulation).
    // The attributes the walk never reads are never set and stay `None`.
    out.recirc_id = Some(m.recirc_id);
    out.dp_hash = (m.dp_hash != 0).then_some(m.dp_hash);
    out.in_port = (m.in_port != 0).then_some(m.in_port);
    if m.tun_id != 0 || m.tun_dst != 0 || m.tun_src != 0 {
        out.tunnel = Some(TunnelKey {
            tun_id: (m.tun_id != 0).then_some(m.tun_id),
            ipv4_src: (m.tun_src != 0).then_some(v4(m.tun_src)),
            ipv4_dst: (m.tun_dst != 0).then_some(v4(m.tun_dst)),
            ..TunnelKey::default()
        });
    } else if out.tunnel.is_some() {
        out.tunnel = None;
    }
    out.ct_state = (m.ct_state != 0).then_some(m.ct_state);
    out.ct_zone = (m.ct_zone != 0).then_some(m.ct_zone);
    // Always present: an all-zero Ethernet mask says "wildcarded" explicitly.
    out.eth = Some(KeyEthernet {
        src: m.eth_src,
        dst: m.eth_dst,
    });
    // Untagged packets carry no VLAN attribute, and the kernel always matches the TCI
    // exactly (`ovs_nla_get_match`), so the mask names the VLAN only for tagged packets.
    out.vlan = (pkt.vlan_tci & VLAN_CFI != 0 && m.vlan_tci != 0).then_some(m.vlan_tci);
    clear_l3(out);
    let l3 = any_l3(m);
    if pkt.vlan_tci & VLAN_CFI != 0 && (m.vlan_tci != 0 || m.eth_type != 0 || l3) {
        // With a tag the outer ethertype is the TPID and the rest sits in encap().
        out.eth_type = Some(0xffff);
        out.vlan = Some(m.vlan_tci | VLAN_CFI);
        // Never empty: an empty mask would mean "exact" to readers of the mask.
        let mut inner = FlowKey {
            eth_type: Some(m.eth_type),
            ..FlowKey::default()
        };
        if l3 {
            fill_l3(pkt, m, &mut inner);
        }
        out.encap = Some(Box::new(inner));
    } else {
        if out.encap.is_some() {
            out.encap = None;
        }
        out.eth_type = (m.eth_type != 0).then_some(m.eth_type);
        if l3 {
            fill_l3(pkt, m, out);
        }
    }
}

fn clear_l3(k: &mut FlowKey) {
    k.ipv4 = None;
    k.ipv6 = None;
    k.arp = None;
    k.tcp = None;
    k.udp = None;
    k.sctp = None;
    k.icmp = None;
    k.icmpv6 = None;
    k.nd = None;
}

fn any_l3(m: &Fields) -> bool {
    m.ipv4_src != 0
        || m.ipv4_dst != 0
        || m.ipv6_src != 0
        || m.ipv6_dst != 0
        || m.ip_proto != 0
        || m.ip_ttl != 0
        || m.ip_tos != 0
        || m.ip_frag != 0
        || m.tp_src != 0
        || m.tp_dst != 0
        || m.arp_op != 0
        || m.arp_tip != 0
        || m.arp_sip != 0
        || m.arp_sha != [0; 6]
        || m.arp_tha != [0; 6]
        || m.nd_target != 0
        || m.nd_sll != [0; 6]
        || m.nd_tll != [0; 6]
}

/// Fills the L3/L4 attributes of a mask without allocating.
pub(crate) fn fill_l3(pkt: &Fields, m: &Fields, k: &mut FlowKey) {
    match pkt.eth_type {
        ethertype::IPV4 => {
            k.ipv4 = Some(KeyIpv4 {
                src: v4(m.ipv4_src),
                dst: v4(m.ipv4_dst),
                proto: m.ip_proto,
                tos: m.ip_tos,
                ttl: m.ip_ttl,
                frag: 0xff,
            });
        }
        ethertype::IPV6 => {
            k.ipv6 = Some(KeyIpv6 {
                src: Ipv6Addr::from(m.ipv6_src),
                dst: Ipv6Addr::from(m.ipv6_dst),
                label: 0,
                proto: m.ip_proto,
                tclass: m.ip_tos,
                hlimit: m.ip_ttl,
                frag: 0xff,
            });
        }
        ethertype::ARP => {
            k.arp = Some(KeyArp {
                sip: v4(m.arp_sip),
                tip: v4(m.arp_tip),
                op: m.arp_op,
                sha: m.arp_sha,
                tha: m.arp_tha,
            });
            return;
        }
        _ => return,
    }
    if m.tp_src == 0 && m.tp_dst == 0 {
        return;
    }
    let ports = KeyPorts {
        src: m.tp_src,
        dst: m.tp_dst,
    };
    match pkt.ip_proto {
        proto::TCP => k.tcp = Some(ports),
        proto::UDP => k.udp = Some(ports),
        proto::SCTP => k.sctp = Some(ports),
        proto::ICMP if pkt.eth_type == ethertype::IPV4 => {
            k.icmp = Some(KeyIcmp {
                icmp_type: m.tp_src as u8,
                code: m.tp_dst as u8,
            })
        }
        proto::ICMPV6 if pkt.eth_type == ethertype::IPV6 => {
            k.icmpv6 = Some(KeyIcmp {
                icmp_type: m.tp_src as u8,
                code: m.tp_dst as u8,
            });
            // The kernel accepts an ND mask only with the ICMPv6 type matched exactly
            // (`match_validate`), which the walk always reads before the target.
            if pkt.has_nd() && (m.nd_target != 0 || m.nd_sll != [0; 6] || m.nd_tll != [0; 6]) {
                k.nd = Some(KeyNd {
                    target: Ipv6Addr::from(m.nd_target),
                    sll: m.nd_sll,
                    tll: m.nd_tll,
                });
            }
        }
        _ => {}
    }
}

impl Fields {
    /// Reads the fields of a datapath flow key (as an upcall delivers it).
    pub fn from_key(k: &FlowKey) -> Fields {
        let mut f = Fields {
            recirc_id: k.recirc_id.unwrap_or(0),
            dp_hash: k.dp_hash.unwrap_or(0),
            in_port: k.in_port.unwrap_or(0),
            ct_state: k.ct_state.unwrap_or(0),
            ct_zone: k.ct_zone.unwrap_or(0),
            ..Fields::default()
        };
        if let Some(t) = &k.tunnel {
            f.tun_id = t.tun_id.unwrap_or(0);
            f.tun_src = t.ipv4_src.map(u32::from).unwrap_or(0);
            f.tun_dst = t.ipv4_dst.map(u32::from).unwrap_or(0);
        }
        if let Some(e) = k.eth {
            f.eth_src = e.src;
            f.eth_dst = e.dst;
        }
        let inner: &FlowKey = match (&k.encap, k.vlan) {
            (Some(e), Some(tci)) => {
                f.vlan_tci = tci;
                e
            }
            _ => k,
        };
        f.eth_type = inner.eth_type.unwrap_or(0);
        if let Some(ip) = inner.ipv4 {
            f.ipv4_src = u32::from(ip.src);
            f.ipv4_dst = u32::from(ip.dst);
            f.ip_proto = ip.proto;
            f.ip_tos = ip.tos;
            f.ip_ttl = ip.ttl;
            f.ip_frag = ip.frag;
        }
        if let Some(ip) = inner.ipv6 {
            f.ipv6_src = u128::from(ip.src);
            f.ipv6_dst = u128::from(ip.dst);
            f.ip_proto = ip.proto;
            f.ip_tos = ip.tclass;
            f.ip_ttl = ip.hlimit;
            f.ip_frag = ip.frag;
        }
        if let Some(a) = inner.arp {
            f.arp_op = a.op;
            f.arp_sip = u32::from(a.sip);
            f.arp_tip = u32::from(a.tip);
            f.arp_sha = a.sha;
            f.arp_tha = a.tha;
        }
        if let Some(nd) = inner.nd {
            f.nd_target = u128::from(nd.target);
            f.nd_sll = nd.sll;
            f.nd_tll = nd.tll;
        }
        let ports = inner.tcp.or(inner.udp).or(inner.sctp);
        if let Some(p) = ports {
            f.tp_src = p.src;
            f.tp_dst = p.dst;
        }
        if let Some(i) = inner.icmp.or(inner.icmpv6) {
            f.tp_src = u16::from(i.icmp_type);
            f.tp_dst = u16::from(i.code);
        }
        f
    }

    /// The datapath flow key of these fields (what an upcall for such a packet carries).
    pub fn to_key(&self) -> FlowKey {
        let mut k = FlowKey {
            recirc_id: Some(self.recirc_id),
            // The kernel reports and dumps a key's hash only when it is not zero.
            dp_hash: (self.dp_hash != 0).then_some(self.dp_hash),
            in_port: Some(self.in_port),
            ct_state: Some(self.ct_state),
            ct_zone: Some(self.ct_zone),
            eth: Some(KeyEthernet {
                src: self.eth_src,
                dst: self.eth_dst,
            }),
            ..FlowKey::default()
        };
        if self.tun_id != 0 || self.tun_dst != 0 {
            k.tunnel = Some(TunnelKey {
                tun_id: Some(self.tun_id),
                ipv4_src: Some(v4(self.tun_src)),
                ipv4_dst: Some(v4(self.tun_dst)),
                ttl: Some(64),
                ..TunnelKey::default()
            });
        }
        let mut inner = FlowKey {
            eth_type: Some(self.eth_type),
            ..FlowKey::default()
        };
        match self.eth_type {
            ethertype::IPV4 => {
                inner.ipv4 = Some(KeyIpv4 {
                    src: v4(self.ipv4_src),
                    dst: v4(self.ipv4_dst),
                    proto: self.ip_proto,
                    tos: self.ip_tos,
                    ttl: self.ip_ttl,
                    frag: self.ip_frag,
                })
            }
            ethertype::IPV6 => {
                inner.ipv6 = Some(KeyIpv6 {
                    src: Ipv6Addr::from(self.ipv6_src),
                    dst: Ipv6Addr::from(self.ipv6_dst),
                    label: 0,
                    proto: self.ip_proto,
                    tclass: self.ip_tos,
                    hlimit: self.ip_ttl,
                    frag: self.ip_frag,
                })
            }
            ethertype::ARP => {
                inner.arp = Some(KeyArp {
                    sip: v4(self.arp_sip),
                    tip: v4(self.arp_tip),
                    op: self.arp_op,
                    sha: self.arp_sha,
                    tha: self.arp_tha,
                })
            }
            _ => {}
        }
        if matches!(self.eth_type, ethertype::IPV4 | ethertype::IPV6) && self.ip_frag != 2 {
            let ports = KeyPorts {
                src: self.tp_src,
                dst: self.tp_dst,
            };
            let icmp = KeyIcmp {
                icmp_type: self.tp_src as u8,
                code: self.tp_dst as u8,
            };
            match (self.ip_proto, l4_ports(self)) {
                (_, Some(proto::TCP)) => inner.tcp = Some(ports),
                (_, Some(proto::UDP)) => inner.udp = Some(ports),
                (_, Some(_)) => inner.sctp = Some(ports),
                (proto::ICMP, None) if self.eth_type == ethertype::IPV4 => inner.icmp = Some(icmp),
                (proto::ICMPV6, None) if self.eth_type == ethertype::IPV6 => {
                    inner.icmpv6 = Some(icmp);
                    if self.has_nd() {
                        inner.nd = Some(KeyNd {
                            target: Ipv6Addr::from(self.nd_target),
                            sll: self.nd_sll,
                            tll: self.nd_tll,
                        });
                    }
                }
                _ => {}
            }
        }
        if self.vlan_tci & VLAN_CFI != 0 {
            k.eth_type = Some(ethertype::VLAN);
            k.vlan = Some(self.vlan_tci);
            k.encap = Some(Box::new(inner));
        } else {
            k.eth_type = inner.eth_type;
            k.ipv4 = inner.ipv4;
            k.ipv6 = inner.ipv6;
            k.arp = inner.arp;
            k.tcp = inner.tcp;
            k.udp = inner.udp;
            k.sctp = inner.sctp;
            k.icmp = inner.icmp;
            k.icmpv6 = inner.icmpv6;
            k.nd = inner.nd;
        }
        k
    }
}
