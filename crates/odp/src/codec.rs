//! Wire codec of flow keys, masks and actions: [`FlowKey`] <-> `OVS_KEY_ATTR_*` streams and
//! [`Action`] lists <-> `OVS_ACTION_ATTR_*` streams, with the kernel's layouts and lengths.
//!
//! Encoding appends to a caller's `Vec<u8>` (reuse it to avoid allocating). Decoding checks
//! every length, keeps unknown attributes, and returns an error naming the attribute for any
//! malformed input; it never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::action::{Action, Ct, Nat, NatKind, SetKey, Userspace};
use crate::error::{Error, Result};
use crate::key::{
    CtTupleIpv4, CtTupleIpv6, FlowKey, GeneveOpts, KeyArp, KeyEthernet, KeyIcmp, KeyIpv4, KeyIpv6,
    KeyNd, KeyPorts, RawAttr, TunnelKey,
};
use crate::nla::{self, Attr, Writer, attrs, fixed, get_be16, get_flag, get_str, get_u16, get_u32};

/// Deepest nesting accepted when decoding (encap in encap, actions in sample/clone/...).
/// The kernel itself accepts less; the bound keeps hostile input from exhausting the stack.
pub const MAX_DEPTH: usize = 16;

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn ip6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

fn mac(b: &[u8]) -> [u8; 6] {
    let mut a = [0u8; 6];
    a.copy_from_slice(&b[..6]);
    a
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

// ---- fixed structures ----

fn eth_bytes(e: &KeyEthernet) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..6].copy_from_slice(&e.src);
    b[6..].copy_from_slice(&e.dst);
    b
}

fn eth_from(d: &[u8]) -> Result<KeyEthernet> {
    let b: [u8; 12] = fixed("OVS_KEY_ATTR_ETHERNET", d)?;
    Ok(KeyEthernet {
        src: mac(&b[..6]),
        dst: mac(&b[6..]),
    })
}

fn ipv4_bytes(k: &KeyIpv4) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&k.src.octets());
    b[4..8].copy_from_slice(&k.dst.octets());
    b[8] = k.proto;
    b[9] = k.tos;
    b[10] = k.ttl;
    b[11] = k.frag;
    b
}

fn ipv4_from(d: &[u8]) -> Result<KeyIpv4> {
    let b: [u8; 12] = fixed("OVS_KEY_ATTR_IPV4", d)?;
    Ok(KeyIpv4 {
        src: ip4(&b[..4]),
        dst: ip4(&b[4..8]),
        proto: b[8],
        tos: b[9],
        ttl: b[10],
        frag: b[11],
    })
}

fn ipv6_bytes(k: &KeyIpv6) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[..16].copy_from_slice(&k.src.octets());
    b[16..32].copy_from_slice(&k.dst.octets());
    b[32..36].copy_from_slice(&k.label.to_be_bytes());
    b[36] = k.proto;
    b[37] = k.tclass;
    b[38] = k.hlimit;
    b[39] = k.frag;
    b
}

fn ipv6_from(d: &[u8]) -> Result<KeyIpv6> {
    let b: [u8; 40] = fixed("OVS_KEY_ATTR_IPV6", d)?;
    Ok(KeyIpv6 {
        src: ip6(&b[..16]),
        dst: ip6(&b[16..32]),
        label: u32::from_be_bytes([b[32], b[33], b[34], b[35]]),
        proto: b[36],
        tclass: b[37],
        hlimit: b[38],
        frag: b[39],
    })
}

fn ports_bytes(p: &KeyPorts) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&p.src.to_be_bytes());
    b[2..].copy_from_slice(&p.dst.to_be_bytes());
    b
}

fn ports_from(name: &'static str, d: &[u8]) -> Result<KeyPorts> {
    let b: [u8; 4] = fixed(name, d)?;
    Ok(KeyPorts {
        src: be16(&b[..2]),
        dst: be16(&b[2..]),
    })
}

fn icmp_from(name: &'static str, d: &[u8]) -> Result<KeyIcmp> {
    let b: [u8; 2] = fixed(name, d)?;
    Ok(KeyIcmp {
        icmp_type: b[0],
        code: b[1],
    })
}

fn arp_bytes(k: &KeyArp) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&k.sip.octets());
    b[4..8].copy_from_slice(&k.tip.octets());
    b[8..10].copy_from_slice(&k.op.to_be_bytes());
    b[10..16].copy_from_slice(&k.sha);
    b[16..22].copy_from_slice(&k.tha);
    b
}

fn arp_from(d: &[u8]) -> Result<KeyArp> {
    let b: [u8; 24] = fixed("OVS_KEY_ATTR_ARP", d)?;
    Ok(KeyArp {
        sip: ip4(&b[..4]),
        tip: ip4(&b[4..8]),
        op: be16(&b[8..10]),
        sha: mac(&b[10..16]),
        tha: mac(&b[16..22]),
    })
}

fn nd_bytes(k: &KeyNd) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..16].copy_from_slice(&k.target.octets());
    b[16..22].copy_from_slice(&k.sll);
    b[22..28].copy_from_slice(&k.tll);
    b
}

fn nd_from(d: &[u8]) -> Result<KeyNd> {
    let b: [u8; 28] = fixed("OVS_KEY_ATTR_ND", d)?;
    Ok(KeyNd {
        target: ip6(&b[..16]),
        sll: mac(&b[16..22]),
        tll: mac(&b[22..28]),
    })
}

// `struct ovs_key_ct_tuple_ipv4` is 13 bytes of fields padded to 16 (4-byte alignment).
fn tuple4_bytes(k: &CtTupleIpv4) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&k.src.octets());
    b[4..8].copy_from_slice(&k.dst.octets());
    b[8..10].copy_from_slice(&k.src_port.to_be_bytes());
    b[10..12].copy_from_slice(&k.dst_port.to_be_bytes());
    b[12] = k.proto;
    b
}

fn tuple4_from(d: &[u8]) -> Result<CtTupleIpv4> {
    let b: [u8; 16] = fixed("OVS_KEY_ATTR_CT_ORIG_TUPLE_IPV4", d)?;
    Ok(CtTupleIpv4 {
        src: ip4(&b[..4]),
        dst: ip4(&b[4..8]),
        src_port: be16(&b[8..10]),
        dst_port: be16(&b[10..12]),
        proto: b[12],
    })
}

// `struct ovs_key_ct_tuple_ipv6`: 37 bytes of fields padded to 40.
fn tuple6_bytes(k: &CtTupleIpv6) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[..16].copy_from_slice(&k.src.octets());
    b[16..32].copy_from_slice(&k.dst.octets());
    b[32..34].copy_from_slice(&k.src_port.to_be_bytes());
    b[34..36].copy_from_slice(&k.dst_port.to_be_bytes());
    b[36] = k.proto;
    b
}

fn tuple6_from(d: &[u8]) -> Result<CtTupleIpv6> {
    let b: [u8; 40] = fixed("OVS_KEY_ATTR_CT_ORIG_TUPLE_IPV6", d)?;
    Ok(CtTupleIpv6 {
        src: ip6(&b[..16]),
        dst: ip6(&b[16..32]),
        src_port: be16(&b[32..34]),
        dst_port: be16(&b[34..36]),
        proto: b[36],
    })
}

// ---- tunnel ----

/// Appends the `OVS_TUNNEL_KEY_ATTR_*` attributes of `t` (the contents of
/// `OVS_KEY_ATTR_TUNNEL`), in the order the kernel dumps them.
pub fn encode_tunnel(t: &TunnelKey, w: &mut Writer<'_>) -> Result<()> {
    use nla::tunnel as a;
    if let Some(id) = t.tun_id {
        w.put(a::ID, &id.to_be_bytes())?;
    }
    if let Some(x) = t.ipv4_src {
        w.put(a::IPV4_SRC, &x.octets())?;
    }
    if let Some(x) = t.ipv4_dst {
        w.put(a::IPV4_DST, &x.octets())?;
    }
    if let Some(x) = t.ipv6_src {
        w.put(a::IPV6_SRC, &x.octets())?;
    }
    if let Some(x) = t.ipv6_dst {
        w.put(a::IPV6_DST, &x.octets())?;
    }
    if let Some(x) = t.tos {
        w.put(a::TOS, &[x])?;
    }
    if let Some(x) = t.ttl {
        w.put(a::TTL, &[x])?;
    }
    if t.df {
        w.flag(a::DONT_FRAGMENT)?;
    }
    if t.csum {
        w.flag(a::CSUM)?;
    }
    if let Some(x) = t.tp_src {
        w.be16(a::TP_SRC, x)?;
    }
    if let Some(x) = t.tp_dst {
        w.be16(a::TP_DST, x)?;
    }
    if t.oam {
        w.flag(a::OAM)?;
    }
    if let Some(g) = &t.geneve {
        w.put(a::GENEVE_OPTS, g.as_bytes())?;
    }
    for o in &t.other {
        w.put(o.kind, &o.data)?;
    }
    Ok(())
}

/// Decodes the contents of `OVS_KEY_ATTR_TUNNEL`.
pub fn decode_tunnel(buf: &[u8]) -> Result<TunnelKey> {
    use nla::tunnel as a;
    let mut t = TunnelKey::default();
    for at in attrs(buf, "OVS_TUNNEL_KEY_ATTR") {
        let at = at?;
        let d = at.data;
        match at.kind() {
            a::ID => {
                t.tun_id = Some(u64::from_be_bytes(fixed("OVS_TUNNEL_KEY_ATTR_ID", d)?));
            }
            a::IPV4_SRC => {
                t.ipv4_src = Some(Ipv4Addr::from(fixed::<4>(
                    "OVS_TUNNEL_KEY_ATTR_IPV4_SRC",
                    d,
                )?));
            }
            a::IPV4_DST => {
                t.ipv4_dst = Some(Ipv4Addr::from(fixed::<4>(
                    "OVS_TUNNEL_KEY_ATTR_IPV4_DST",
                    d,
                )?));
            }
            a::IPV6_SRC => {
                t.ipv6_src = Some(Ipv6Addr::from(fixed::<16>(
                    "OVS_TUNNEL_KEY_ATTR_IPV6_SRC",
                    d,
                )?));
            }
            a::IPV6_DST => {
                t.ipv6_dst = Some(Ipv6Addr::from(fixed::<16>(
                    "OVS_TUNNEL_KEY_ATTR_IPV6_DST",
                    d,
                )?));
            }
            a::TOS => t.tos = Some(fixed::<1>("OVS_TUNNEL_KEY_ATTR_TOS", d)?[0]),
            a::TTL => t.ttl = Some(fixed::<1>("OVS_TUNNEL_KEY_ATTR_TTL", d)?[0]),
            a::DONT_FRAGMENT => t.df = get_flag("OVS_TUNNEL_KEY_ATTR_DONT_FRAGMENT", d)?,
            a::CSUM => t.csum = get_flag("OVS_TUNNEL_KEY_ATTR_CSUM", d)?,
            a::OAM => t.oam = get_flag("OVS_TUNNEL_KEY_ATTR_OAM", d)?,
            a::TP_SRC => t.tp_src = Some(get_be16("OVS_TUNNEL_KEY_ATTR_TP_SRC", d)?),
            a::TP_DST => t.tp_dst = Some(get_be16("OVS_TUNNEL_KEY_ATTR_TP_DST", d)?),
            a::GENEVE_OPTS => {
                if !d.len().is_multiple_of(4) {
                    return Err(Error::bad_len("OVS_TUNNEL_KEY_ATTR_GENEVE_OPTS", d.len()));
                }
                t.geneve = Some(Box::new(GeneveOpts::new(d).ok_or_else(|| {
                    Error::bad_len("OVS_TUNNEL_KEY_ATTR_GENEVE_OPTS", d.len())
                })?));
            }
            _ => t.other.push(RawAttr {
                kind: at.raw_kind,
                data: d.to_vec(),
            }),
        }
    }
    Ok(t)
}

// ---- key ----

/// Appends the `OVS_KEY_ATTR_*` attributes of `k` (a key or a mask) to `buf`, in the order
/// the kernel dumps them.
pub fn encode_key(k: &FlowKey, buf: &mut Vec<u8>) -> Result<()> {
    let mut w = Writer::new(buf);
    encode_key_into(k, &mut w)
}

fn encode_key_into(k: &FlowKey, w: &mut Writer<'_>) -> Result<()> {
    use nla::key as a;
    if let Some(v) = k.recirc_id {
        w.u32(a::RECIRC_ID, v)?;
    }
    if let Some(v) = k.dp_hash {
        w.u32(a::DP_HASH, v)?;
    }
    if let Some(v) = k.priority {
        w.u32(a::PRIORITY, v)?;
    }
    if let Some(t) = &k.tunnel {
        let off = w.begin(a::TUNNEL);
        encode_tunnel(t, w)?;
        w.end(off)?;
    }
    if let Some(v) = k.in_port {
        w.u32(a::IN_PORT, v)?;
    }
    if let Some(v) = k.skb_mark {
        w.u32(a::SKB_MARK, v)?;
    }
    if let Some(v) = k.ct_state {
        w.u32(a::CT_STATE, v)?;
    }
    if let Some(v) = k.ct_zone {
        w.u16(a::CT_ZONE, v)?;
    }
    if let Some(v) = k.ct_mark {
        w.u32(a::CT_MARK, v)?;
    }
    if let Some(v) = k.ct_label {
        w.put(a::CT_LABELS, &v.to_ne_bytes())?;
    }
    if let Some(v) = &k.ct_tuple4 {
        w.put(a::CT_ORIG_TUPLE_IPV4, &tuple4_bytes(v))?;
    }
    if let Some(v) = &k.ct_tuple6 {
        w.put(a::CT_ORIG_TUPLE_IPV6, &tuple6_bytes(v))?;
    }
    if let Some(v) = &k.eth {
        w.put(a::ETHERNET, &eth_bytes(v))?;
    }
    if let Some(v) = k.eth_type {
        w.be16(a::ETHERTYPE, v)?;
    }
    if let Some(v) = k.vlan {
        w.be16(a::VLAN, v)?;
    }
    if let Some(e) = &k.encap {
        let off = w.begin(a::ENCAP);
        encode_key_into(e, w)?;
        w.end(off)?;
    }
    if let Some(v) = &k.ipv4 {
        w.put(a::IPV4, &ipv4_bytes(v))?;
    }
    if let Some(v) = &k.ipv6 {
        w.put(a::IPV6, &ipv6_bytes(v))?;
    }
    if let Some(v) = k.ipv6_exthdrs {
        w.u16(a::IPV6_EXTHDRS, v)?;
    }
    if let Some(v) = &k.arp {
        w.put(a::ARP, &arp_bytes(v))?;
    }
    if let Some(v) = &k.tcp {
        w.put(a::TCP, &ports_bytes(v))?;
    }
    if let Some(v) = k.tcp_flags {
        w.be16(a::TCP_FLAGS, v)?;
    }
    if let Some(v) = &k.udp {
        w.put(a::UDP, &ports_bytes(v))?;
    }
    if let Some(v) = &k.sctp {
        w.put(a::SCTP, &ports_bytes(v))?;
    }
    if let Some(v) = &k.icmp {
        w.put(a::ICMP, &[v.icmp_type, v.code])?;
    }
    if let Some(v) = &k.icmpv6 {
        w.put(a::ICMPV6, &[v.icmp_type, v.code])?;
    }
    if let Some(v) = &k.nd {
        w.put(a::ND, &nd_bytes(v))?;
    }
    for o in &k.other {
        w.put(o.kind, &o.data)?;
    }
    Ok(())
}

/// Decodes an `OVS_KEY_ATTR_*` stream (the contents of `OVS_FLOW_ATTR_KEY`,
/// `OVS_FLOW_ATTR_MASK` or `OVS_PACKET_ATTR_KEY`).
pub fn decode_key(buf: &[u8]) -> Result<FlowKey> {
    decode_key_depth(buf, 0)
}

fn dup(name: &'static str) -> Error {
    Error::decode(name, "appears twice")
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<()> {
    if slot.is_some() {
        return Err(dup(name));
    }
    *slot = Some(v);
    Ok(())
}

fn decode_key_depth(buf: &[u8], depth: usize) -> Result<FlowKey> {
    use nla::key as a;
    if depth > MAX_DEPTH {
        return Err(Error::decode("OVS_KEY_ATTR_ENCAP", "nested too deep"));
    }
    let mut k = FlowKey::default();
    for at in attrs(buf, "OVS_KEY_ATTR") {
        let at = at?;
        let d = at.data;
        match at.kind() {
            a::RECIRC_ID => set_once(
                &mut k.recirc_id,
                "OVS_KEY_ATTR_RECIRC_ID",
                get_u32("OVS_KEY_ATTR_RECIRC_ID", d)?,
            )?,
            a::DP_HASH => set_once(
                &mut k.dp_hash,
                "OVS_KEY_ATTR_DP_HASH",
                get_u32("OVS_KEY_ATTR_DP_HASH", d)?,
            )?,
            a::PRIORITY => set_once(
                &mut k.priority,
                "OVS_KEY_ATTR_PRIORITY",
                get_u32("OVS_KEY_ATTR_PRIORITY", d)?,
            )?,
            a::TUNNEL => set_once(&mut k.tunnel, "OVS_KEY_ATTR_TUNNEL", decode_tunnel(d)?)?,
            a::IN_PORT => set_once(
                &mut k.in_port,
                "OVS_KEY_ATTR_IN_PORT",
                get_u32("OVS_KEY_ATTR_IN_PORT", d)?,
            )?,
            a::SKB_MARK => set_once(
                &mut k.skb_mark,
                "OVS_KEY_ATTR_SKB_MARK",
                get_u32("OVS_KEY_ATTR_SKB_MARK", d)?,
            )?,
            a::CT_STATE => set_once(
                &mut k.ct_state,
                "OVS_KEY_ATTR_CT_STATE",
                get_u32("OVS_KEY_ATTR_CT_STATE", d)?,
            )?,
            a::CT_ZONE => set_once(
                &mut k.ct_zone,
                "OVS_KEY_ATTR_CT_ZONE",
                get_u16("OVS_KEY_ATTR_CT_ZONE", d)?,
            )?,
            a::CT_MARK => set_once(
                &mut k.ct_mark,
                "OVS_KEY_ATTR_CT_MARK",
                get_u32("OVS_KEY_ATTR_CT_MARK", d)?,
            )?,
            a::CT_LABELS => set_once(
                &mut k.ct_label,
                "OVS_KEY_ATTR_CT_LABELS",
                u128::from_ne_bytes(fixed("OVS_KEY_ATTR_CT_LABELS", d)?),
            )?,
            a::CT_ORIG_TUPLE_IPV4 => set_once(
                &mut k.ct_tuple4,
                "OVS_KEY_ATTR_CT_ORIG_TUPLE_IPV4",
                tuple4_from(d)?,
            )?,
            a::CT_ORIG_TUPLE_IPV6 => set_once(
                &mut k.ct_tuple6,
                "OVS_KEY_ATTR_CT_ORIG_TUPLE_IPV6",
                tuple6_from(d)?,
            )?,
            a::ETHERNET => set_once(&mut k.eth, "OVS_KEY_ATTR_ETHERNET", eth_from(d)?)?,
            a::ETHERTYPE => set_once(
                &mut k.eth_type,
                "OVS_KEY_ATTR_ETHERTYPE",
                get_be16("OVS_KEY_ATTR_ETHERTYPE", d)?,
            )?,
            a::VLAN => set_once(
                &mut k.vlan,
                "OVS_KEY_ATTR_VLAN",
                get_be16("OVS_KEY_ATTR_VLAN", d)?,
            )?,
            a::ENCAP => set_once(
                &mut k.encap,
                "OVS_KEY_ATTR_ENCAP",
                Box::new(decode_key_depth(d, depth + 1)?),
            )?,
            a::IPV4 => set_once(&mut k.ipv4, "OVS_KEY_ATTR_IPV4", ipv4_from(d)?)?,
            a::IPV6 => set_once(&mut k.ipv6, "OVS_KEY_ATTR_IPV6", ipv6_from(d)?)?,
            a::IPV6_EXTHDRS => set_once(
                &mut k.ipv6_exthdrs,
                "OVS_KEY_ATTR_IPV6_EXTHDRS",
                get_u16("OVS_KEY_ATTR_IPV6_EXTHDRS", d)?,
            )?,
            a::ARP => set_once(&mut k.arp, "OVS_KEY_ATTR_ARP", arp_from(d)?)?,
            a::TCP => set_once(
                &mut k.tcp,
                "OVS_KEY_ATTR_TCP",
                ports_from("OVS_KEY_ATTR_TCP", d)?,
            )?,
            a::TCP_FLAGS => set_once(
                &mut k.tcp_flags,
                "OVS_KEY_ATTR_TCP_FLAGS",
                get_be16("OVS_KEY_ATTR_TCP_FLAGS", d)?,
            )?,
            a::UDP => set_once(
                &mut k.udp,
                "OVS_KEY_ATTR_UDP",
                ports_from("OVS_KEY_ATTR_UDP", d)?,
            )?,
            a::SCTP => set_once(
                &mut k.sctp,
                "OVS_KEY_ATTR_SCTP",
                ports_from("OVS_KEY_ATTR_SCTP", d)?,
            )?,
            a::ICMP => set_once(
                &mut k.icmp,
                "OVS_KEY_ATTR_ICMP",
                icmp_from("OVS_KEY_ATTR_ICMP", d)?,
            )?,
            a::ICMPV6 => set_once(
                &mut k.icmpv6,
                "OVS_KEY_ATTR_ICMPV6",
                icmp_from("OVS_KEY_ATTR_ICMPV6", d)?,
            )?,
            a::ND => set_once(&mut k.nd, "OVS_KEY_ATTR_ND", nd_from(d)?)?,
            _ => k.other.push(RawAttr {
                kind: at.raw_kind,
                data: d.to_vec(),
            }),
        }
    }
    Ok(k)
}

// ---- set / set_masked ----

fn set_key_parts(k: &SetKey) -> (u16, SetBytes<'_>) {
    use nla::key as a;
    match k {
        SetKey::Priority(v) => (a::PRIORITY, SetBytes::B4(v.to_ne_bytes())),
        SetKey::SkbMark(v) => (a::SKB_MARK, SetBytes::B4(v.to_ne_bytes())),
        SetKey::Ethernet(v) => (a::ETHERNET, SetBytes::B12(eth_bytes(v))),
        SetKey::Ipv4(v) => (a::IPV4, SetBytes::B12(ipv4_bytes(v))),
        SetKey::Ipv6(v) => (a::IPV6, SetBytes::B40(ipv6_bytes(v))),
        SetKey::Tcp(v) => (a::TCP, SetBytes::B4(ports_bytes(v))),
        SetKey::Udp(v) => (a::UDP, SetBytes::B4(ports_bytes(v))),
        SetKey::Sctp(v) => (a::SCTP, SetBytes::B4(ports_bytes(v))),
        SetKey::Tunnel(_) => (a::TUNNEL, SetBytes::Tunnel),
        SetKey::Other(r) => (r.kind, SetBytes::Slice(&r.data)),
    }
}

enum SetBytes<'a> {
    B4([u8; 4]),
    B12([u8; 12]),
    B40([u8; 40]),
    Slice(&'a [u8]),
    Tunnel,
}

impl SetBytes<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            SetBytes::B4(b) => b,
            SetBytes::B12(b) => b,
            SetBytes::B40(b) => b,
            SetBytes::Slice(b) => b,
            SetBytes::Tunnel => &[],
        }
    }
}

fn decode_set_key(kind_raw: u16, d: &[u8]) -> Result<SetKey> {
    use nla::key as a;
    Ok(match kind_raw & nla::NLA_TYPE_MASK {
        a::PRIORITY => SetKey::Priority(get_u32("OVS_KEY_ATTR_PRIORITY", d)?),
        a::SKB_MARK => SetKey::SkbMark(get_u32("OVS_KEY_ATTR_SKB_MARK", d)?),
        a::ETHERNET => SetKey::Ethernet(eth_from(d)?),
        a::IPV4 => SetKey::Ipv4(ipv4_from(d)?),
        a::IPV6 => SetKey::Ipv6(ipv6_from(d)?),
        a::TCP => SetKey::Tcp(ports_from("OVS_KEY_ATTR_TCP", d)?),
        a::UDP => SetKey::Udp(ports_from("OVS_KEY_ATTR_UDP", d)?),
        a::SCTP => SetKey::Sctp(ports_from("OVS_KEY_ATTR_SCTP", d)?),
        a::TUNNEL => SetKey::Tunnel(decode_tunnel(d)?),
        _ => SetKey::Other(RawAttr {
            kind: kind_raw,
            data: d.to_vec(),
        }),
    })
}

fn one_attr<'a>(buf: &'a [u8], space: &'static str) -> Result<Attr<'a>> {
    let mut it = attrs(buf, space);
    let first = it
        .next()
        .ok_or_else(|| Error::decode(space, "is empty"))??;
    if it.next().is_some() {
        return Err(Error::decode(space, "holds more than one key attribute"));
    }
    Ok(first)
}

// ---- actions ----

/// Appends the `OVS_ACTION_ATTR_*` attributes of `actions` to `buf`. An empty list encodes
/// as nothing (drop).
pub fn encode_actions(actions: &[Action], buf: &mut Vec<u8>) -> Result<()> {
    let mut w = Writer::new(buf);
    encode_actions_into(actions, &mut w)
}

fn encode_actions_into(actions: &[Action], w: &mut Writer<'_>) -> Result<()> {
    for a in actions {
        encode_action(a, w)?;
    }
    Ok(())
}

fn encode_ip(w: &mut Writer<'_>, kind: u16, ip: &IpAddr) -> Result<()> {
    match ip {
        IpAddr::V4(a) => w.put(kind, &a.octets()),
        IpAddr::V6(a) => w.put(kind, &a.octets()),
    }
}

fn encode_ct(c: &Ct, w: &mut Writer<'_>) -> Result<()> {
    use nla::ct as a;
    if c.commit {
        w.flag(a::COMMIT)?;
    }
    if c.force_commit {
        w.flag(a::FORCE_COMMIT)?;
    }
    if let Some(z) = c.zone {
        w.u16(a::ZONE, z)?;
    }
    if let Some((v, m)) = c.mark {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.to_ne_bytes());
        b[4..].copy_from_slice(&m.to_ne_bytes());
        w.put(a::MARK, &b)?;
    }
    if let Some(&(v, m)) = c.labels.as_deref() {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&v.to_ne_bytes());
        b[16..].copy_from_slice(&m.to_ne_bytes());
        w.put(a::LABELS, &b)?;
    }
    if let Some(h) = &c.helper {
        if h.is_empty() || h.len() > 15 || h.contains('\0') {
            return Err(Error::Encode {
                attr: "OVS_CT_ATTR_HELPER",
                reason: format!("helper name {h:?} must be 1 to 15 bytes"),
            });
        }
        let mut b = Vec::with_capacity(h.len() + 1);
        b.extend_from_slice(h.as_bytes());
        b.push(0);
        w.put(a::HELPER, &b)?;
    }
    if let Some(n) = &c.nat {
        let off = w.begin(a::NAT);
        encode_nat(n, w)?;
        w.end(off)?;
    }
    if let Some(e) = c.eventmask {
        w.u32(a::EVENTMASK, e)?;
    }
    if let Some(t) = &c.timeout {
        if t.is_empty() || t.len() > 31 || t.contains('\0') {
            return Err(Error::Encode {
                attr: "OVS_CT_ATTR_TIMEOUT",
                reason: format!("timeout policy name {t:?} must be 1 to 31 bytes"),
            });
        }
        let mut b = Vec::with_capacity(t.len() + 1);
        b.extend_from_slice(t.as_bytes());
        b.push(0);
        w.put(a::TIMEOUT, &b)?;
    }
    for o in &c.other {
        w.put(o.kind, &o.data)?;
    }
    Ok(())
}

fn encode_nat(n: &Nat, w: &mut Writer<'_>) -> Result<()> {
    use nla::nat as a;
    match n.kind {
        Some(NatKind::Src) => w.flag(a::SRC)?,
        Some(NatKind::Dst) => w.flag(a::DST)?,
        None => {}
    }
    if let (Some(min), Some(max)) = (&n.ip_min, &n.ip_max)
        && min.is_ipv4() != max.is_ipv4()
    {
        return Err(Error::Encode {
            attr: "OVS_NAT_ATTR_IP_MAX",
            reason: format!("{max} is not of the family of {min}"),
        });
    }
    if let Some(ip) = &n.ip_min {
        encode_ip(w, a::IP_MIN, ip)?;
    }
    if let Some(ip) = &n.ip_max {
        encode_ip(w, a::IP_MAX, ip)?;
    }
    if let Some(p) = n.proto_min {
        w.u16(a::PROTO_MIN, p)?;
    }
    if let Some(p) = n.proto_max {
        w.u16(a::PROTO_MAX, p)?;
    }
    if n.persistent {
        w.flag(a::PERSISTENT)?;
    }
    if n.hash {
        w.flag(a::PROTO_HASH)?;
    }
    if n.random {
        w.flag(a::PROTO_RANDOM)?;
    }
    Ok(())
}

fn encode_userspace(u: &Userspace, w: &mut Writer<'_>) -> Result<()> {
    use nla::userspace as a;
    w.u32(a::PID, u.pid)?;
    if let Some(d) = &u.userdata {
        w.put(a::USERDATA, d)?;
    }
    if let Some(p) = u.egress_tun_port {
        w.u32(a::EGRESS_TUN_PORT, p)?;
    }
    if u.actions {
        w.flag(a::ACTIONS)?;
    }
    Ok(())
}

fn encode_action(act: &Action, w: &mut Writer<'_>) -> Result<()> {
    use nla::action as a;
    match act {
        Action::Output(p) => w.u32(a::OUTPUT, *p),
        Action::Userspace(u) => {
            let off = w.begin(a::USERSPACE);
            encode_userspace(u, w)?;
            w.end(off)
        }
        Action::Set(k) => {
            let off = w.begin(a::SET);
            match k {
                SetKey::Tunnel(t) => {
                    let t_off = w.begin(nla::key::TUNNEL);
                    encode_tunnel(t, w)?;
                    w.end(t_off)?;
                }
                _ => {
                    let (kind, b) = set_key_parts(k);
                    w.put(kind, b.bytes())?;
                }
            }
            w.end(off)
        }
        Action::SetMasked(k, m) => {
            let (kind, kb) = set_key_parts(k);
            let (mkind, mb) = set_key_parts(m);
            if matches!(k, SetKey::Tunnel(_)) || matches!(m, SetKey::Tunnel(_)) {
                return Err(Error::Encode {
                    attr: "OVS_ACTION_ATTR_SET_MASKED",
                    reason: "the kernel has no masked set of the tunnel key; use set".into(),
                });
            }
            if kind != mkind || kb.bytes().len() != mb.bytes().len() {
                return Err(Error::Encode {
                    attr: "OVS_ACTION_ATTR_SET_MASKED",
                    reason: format!("value (type {kind}) and mask (type {mkind}) differ"),
                });
            }
            let off = w.begin(a::SET_MASKED);
            let mut both = [0u8; 80];
            let n = kb.bytes().len();
            if n * 2 <= both.len() {
                both[..n].copy_from_slice(kb.bytes());
                both[n..2 * n].copy_from_slice(mb.bytes());
                w.put(kind, &both[..2 * n])?;
            } else {
                let mut v = kb.bytes().to_vec();
                v.extend_from_slice(mb.bytes());
                w.put(kind, &v)?;
            }
            w.end(off)
        }
        Action::PushVlan { tpid, tci } => {
            let mut b = [0u8; 4];
            b[..2].copy_from_slice(&tpid.to_be_bytes());
            b[2..].copy_from_slice(&tci.to_be_bytes());
            w.put(a::PUSH_VLAN, &b)
        }
        Action::PopVlan => w.flag(a::POP_VLAN),
        Action::Recirc(id) => w.u32(a::RECIRC, *id),
        Action::Hash { alg, basis } => {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&alg.to_ne_bytes());
            b[4..].copy_from_slice(&basis.to_ne_bytes());
            w.put(a::HASH, &b)
        }
        Action::Ct(c) => {
            let off = w.begin(a::CT);
            encode_ct(c, w)?;
            w.end(off)
        }
        Action::CtClear => w.flag(a::CT_CLEAR),
        Action::Trunc(n) => w.u32(a::TRUNC, *n),
        Action::Sample {
            probability,
            actions,
        } => {
            let off = w.begin(a::SAMPLE);
            w.u32(nla::sample::PROBABILITY, *probability)?;
            let in_off = w.begin(nla::sample::ACTIONS);
            encode_actions_into(actions, w)?;
            w.end(in_off)?;
            w.end(off)
        }
        Action::Clone(actions) => {
            let off = w.begin(a::CLONE);
            encode_actions_into(actions, w)?;
            w.end(off)
        }
        Action::CheckPktLen {
            len,
            greater,
            less_equal,
        } => {
            use nla::check_pkt_len as c;
            let off = w.begin(a::CHECK_PKT_LEN);
            w.u16(c::PKT_LEN, *len)?;
            let g = w.begin(c::ACTIONS_IF_GREATER);
            encode_actions_into(greater, w)?;
            w.end(g)?;
            let l = w.begin(c::ACTIONS_IF_LESS_EQUAL);
            encode_actions_into(less_equal, w)?;
            w.end(l)?;
            w.end(off)
        }
        Action::Meter(m) => w.u32(a::METER, *m),
        Action::Other(kind, data) => w.put(*kind, data),
    }
}

/// Decodes an `OVS_ACTION_ATTR_*` stream (the contents of `OVS_FLOW_ATTR_ACTIONS` or
/// `OVS_PACKET_ATTR_ACTIONS`). An empty stream is an empty list (drop).
pub fn decode_actions(buf: &[u8]) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    decode_actions_into(buf, 0, &mut out)?;
    Ok(out)
}

fn decode_actions_into(buf: &[u8], depth: usize, out: &mut Vec<Action>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::decode("OVS_ACTION_ATTR", "actions nested too deep"));
    }
    for at in attrs(buf, "OVS_ACTION_ATTR") {
        out.push(decode_action(at?, depth)?);
    }
    Ok(())
}

fn decode_action(at: Attr<'_>, depth: usize) -> Result<Action> {
    use nla::action as a;
    let d = at.data;
    Ok(match at.kind() {
        a::OUTPUT => Action::Output(get_u32("OVS_ACTION_ATTR_OUTPUT", d)?),
        a::USERSPACE => Action::Userspace(decode_userspace(d)?),
        a::SET => {
            let k = one_attr(d, "OVS_ACTION_ATTR_SET")?;
            Action::Set(decode_set_key(k.raw_kind, k.data)?)
        }
        a::SET_MASKED => {
            let k = one_attr(d, "OVS_ACTION_ATTR_SET_MASKED")?;
            if k.data.len() % 2 != 0 {
                return Err(Error::decode(
                    "OVS_ACTION_ATTR_SET_MASKED",
                    format!("key length {} is not value + mask", k.data.len()),
                ));
            }
            if k.kind() == nla::key::TUNNEL {
                return Err(Error::decode(
                    "OVS_ACTION_ATTR_SET_MASKED",
                    "of OVS_KEY_ATTR_TUNNEL",
                ));
            }
            let (v, m) = k.data.split_at(k.data.len() / 2);
            Action::SetMasked(
                decode_set_key(k.raw_kind, v)?,
                decode_set_key(k.raw_kind, m)?,
            )
        }
        a::PUSH_VLAN => {
            let b: [u8; 4] = fixed("OVS_ACTION_ATTR_PUSH_VLAN", d)?;
            Action::PushVlan {
                tpid: be16(&b[..2]),
                tci: be16(&b[2..]),
            }
        }
        a::POP_VLAN => {
            get_flag("OVS_ACTION_ATTR_POP_VLAN", d)?;
            Action::PopVlan
        }
        a::RECIRC => Action::Recirc(get_u32("OVS_ACTION_ATTR_RECIRC", d)?),
        a::HASH => {
            let b: [u8; 8] = fixed("OVS_ACTION_ATTR_HASH", d)?;
            Action::Hash {
                alg: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                basis: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            }
        }
        a::CT => Action::Ct(decode_ct(d)?),
        a::CT_CLEAR => {
            get_flag("OVS_ACTION_ATTR_CT_CLEAR", d)?;
            Action::CtClear
        }
        a::TRUNC => Action::Trunc(get_u32("OVS_ACTION_ATTR_TRUNC", d)?),
        a::SAMPLE => {
            let mut probability = None;
            let mut actions = None;
            for s in attrs(d, "OVS_SAMPLE_ATTR") {
                let s = s?;
                match s.kind() {
                    nla::sample::PROBABILITY => set_once(
                        &mut probability,
                        "OVS_SAMPLE_ATTR_PROBABILITY",
                        get_u32("OVS_SAMPLE_ATTR_PROBABILITY", s.data)?,
                    )?,
                    nla::sample::ACTIONS => {
                        let mut v = Vec::new();
                        decode_actions_into(s.data, depth + 1, &mut v)?;
                        set_once(&mut actions, "OVS_SAMPLE_ATTR_ACTIONS", v)?;
                    }
                    k => {
                        return Err(Error::decode(
                            "OVS_SAMPLE_ATTR",
                            format!("unknown type {k}"),
                        ));
                    }
                }
            }
            Action::Sample {
                probability: probability.ok_or_else(|| {
                    Error::decode(
                        "OVS_ACTION_ATTR_SAMPLE",
                        "without OVS_SAMPLE_ATTR_PROBABILITY",
                    )
                })?,
                actions: actions.unwrap_or_default(),
            }
        }
        a::CLONE => {
            let mut v = Vec::new();
            decode_actions_into(d, depth + 1, &mut v)?;
            Action::Clone(v)
        }
        a::CHECK_PKT_LEN => {
            use nla::check_pkt_len as c;
            let (mut len, mut gt, mut le) = (None, None, None);
            for s in attrs(d, "OVS_CHECK_PKT_LEN_ATTR") {
                let s = s?;
                match s.kind() {
                    c::PKT_LEN => set_once(
                        &mut len,
                        "OVS_CHECK_PKT_LEN_ATTR_PKT_LEN",
                        get_u16("OVS_CHECK_PKT_LEN_ATTR_PKT_LEN", s.data)?,
                    )?,
                    c::ACTIONS_IF_GREATER => {
                        let mut v = Vec::new();
                        decode_actions_into(s.data, depth + 1, &mut v)?;
                        set_once(&mut gt, "OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_GREATER", v)?;
                    }
                    c::ACTIONS_IF_LESS_EQUAL => {
                        let mut v = Vec::new();
                        decode_actions_into(s.data, depth + 1, &mut v)?;
                        set_once(&mut le, "OVS_CHECK_PKT_LEN_ATTR_ACTIONS_IF_LESS_EQUAL", v)?;
                    }
                    k => {
                        return Err(Error::decode(
                            "OVS_CHECK_PKT_LEN_ATTR",
                            format!("unknown type {k}"),
                        ));
                    }
                }
            }
            Action::CheckPktLen {
                len: len.ok_or_else(|| {
                    Error::decode(
                        "OVS_ACTION_ATTR_CHECK_PKT_LEN",
                        "without OVS_CHECK_PKT_LEN_ATTR_PKT_LEN",
                    )
                })?,
                greater: gt.unwrap_or_default(),
                less_equal: le.unwrap_or_default(),
            }
        }
        a::METER => Action::Meter(get_u32("OVS_ACTION_ATTR_METER", d)?),
        _ => Action::Other(at.raw_kind, d.to_vec()),
    })
}

fn decode_userspace(d: &[u8]) -> Result<Userspace> {
    use nla::userspace as a;
    let mut u = Userspace::default();
    let mut pid = None;
    for s in attrs(d, "OVS_USERSPACE_ATTR") {
        let s = s?;
        match s.kind() {
            a::PID => set_once(
                &mut pid,
                "OVS_USERSPACE_ATTR_PID",
                get_u32("OVS_USERSPACE_ATTR_PID", s.data)?,
            )?,
            a::USERDATA => u.userdata = Some(s.data.to_vec()),
            a::EGRESS_TUN_PORT => {
                u.egress_tun_port = Some(get_u32("OVS_USERSPACE_ATTR_EGRESS_TUN_PORT", s.data)?)
            }
            a::ACTIONS => u.actions = true,
            k => {
                return Err(Error::decode(
                    "OVS_USERSPACE_ATTR",
                    format!("unknown type {k}"),
                ));
            }
        }
    }
    u.pid = pid.ok_or_else(|| {
        Error::decode(
            "OVS_ACTION_ATTR_USERSPACE",
            "without OVS_USERSPACE_ATTR_PID",
        )
    })?;
    Ok(u)
}

fn decode_ip(name: &'static str, d: &[u8]) -> Result<IpAddr> {
    match d.len() {
        4 => Ok(IpAddr::V4(ip4(d))),
        16 => Ok(IpAddr::V6(ip6(d))),
        n => Err(Error::bad_len(name, n)),
    }
}

fn decode_ct(d: &[u8]) -> Result<Ct> {
    use nla::ct as a;
    let mut c = Ct::default();
    for s in attrs(d, "OVS_CT_ATTR") {
        let s = s?;
        let x = s.data;
        match s.kind() {
            a::COMMIT => c.commit = get_flag("OVS_CT_ATTR_COMMIT", x)?,
            a::FORCE_COMMIT => c.force_commit = get_flag("OVS_CT_ATTR_FORCE_COMMIT", x)?,
            a::ZONE => c.zone = Some(get_u16("OVS_CT_ATTR_ZONE", x)?),
            a::MARK => {
                let b: [u8; 8] = fixed("OVS_CT_ATTR_MARK", x)?;
                c.mark = Some((
                    u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                ));
            }
            a::LABELS => {
                let b: [u8; 32] = fixed("OVS_CT_ATTR_LABELS", x)?;
                let mut v = [0u8; 16];
                let mut m = [0u8; 16];
                v.copy_from_slice(&b[..16]);
                m.copy_from_slice(&b[16..]);
                c.labels = Some(Box::new((u128::from_ne_bytes(v), u128::from_ne_bytes(m))));
            }
            a::HELPER => c.helper = Some(get_str("OVS_CT_ATTR_HELPER", x)?),
            a::TIMEOUT => c.timeout = Some(get_str("OVS_CT_ATTR_TIMEOUT", x)?),
            a::EVENTMASK => c.eventmask = Some(get_u32("OVS_CT_ATTR_EVENTMASK", x)?),
            a::NAT => c.nat = Some(decode_nat(x)?),
            _ => c.other.push(RawAttr {
                kind: s.raw_kind,
                data: x.to_vec(),
            }),
        }
    }
    Ok(c)
}

fn decode_nat(d: &[u8]) -> Result<Nat> {
    use nla::nat as a;
    let mut n = Nat::default();
    for s in attrs(d, "OVS_NAT_ATTR") {
        let s = s?;
        let x = s.data;
        match s.kind() {
            a::SRC | a::DST => {
                get_flag("OVS_NAT_ATTR_SRC/DST", x)?;
                if n.kind.is_some() {
                    return Err(Error::decode("OVS_CT_ATTR_NAT", "has both src and dst"));
                }
                n.kind = Some(if s.kind() == a::SRC {
                    NatKind::Src
                } else {
                    NatKind::Dst
                });
            }
            a::IP_MIN => n.ip_min = Some(decode_ip("OVS_NAT_ATTR_IP_MIN", x)?),
            a::IP_MAX => n.ip_max = Some(decode_ip("OVS_NAT_ATTR_IP_MAX", x)?),
            a::PROTO_MIN => n.proto_min = Some(get_u16("OVS_NAT_ATTR_PROTO_MIN", x)?),
            a::PROTO_MAX => n.proto_max = Some(get_u16("OVS_NAT_ATTR_PROTO_MAX", x)?),
            a::PERSISTENT => n.persistent = get_flag("OVS_NAT_ATTR_PERSISTENT", x)?,
            a::PROTO_HASH => n.hash = get_flag("OVS_NAT_ATTR_PROTO_HASH", x)?,
            a::PROTO_RANDOM => n.random = get_flag("OVS_NAT_ATTR_PROTO_RANDOM", x)?,
            k => return Err(Error::decode("OVS_NAT_ATTR", format!("unknown type {k}"))),
        }
    }
    Ok(n)
}
