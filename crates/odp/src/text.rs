//! Printing flows, keys, masks and actions in the exact text form of `ovs-dpctl dump-flows`
//! (the rules of OVS `lib/odp-util.c`: which fields are omitted, how partial masks print).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::action::{Action, Ct, HASH_ALG_L4, HASH_ALG_SYM_L4, Nat, NatKind, SetKey, Userspace};
use crate::flow::{Flow, FlowStats};
use crate::key::{
    CtTupleIpv4, CtTupleIpv6, FlowKey, FlowMask, GeneveOpts, KeyArp, KeyEthernet, KeyIcmp, KeyIpv4,
    KeyIpv6, KeyNd, KeyPorts, Mac, RawAttr, TunnelKey, VLAN_CFI, ct_state,
};

fn chomp(s: &mut String, c: char) {
    if s.ends_with(c) {
        s.pop();
    }
}

/// C's `%#x`: `0` for zero, `0x..` otherwise.
pub(crate) fn hex_alt(s: &mut String, v: u64) {
    if v == 0 {
        s.push('0');
    } else {
        let _ = write!(s, "{v:#x}");
    }
}

pub(crate) fn push_mac(s: &mut String, m: &Mac) {
    let _ = write!(
        s,
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
}

/// IPv6 text as glibc's `inet_ntop` writes it (which OVS uses): like RFC 5952, except that
/// IPv4-compatible and IPv4-mapped addresses end in dotted quad (`::1.2.3.4`).
pub(crate) fn push_ipv6(s: &mut String, a: &Ipv6Addr) {
    let w = a.segments();
    // Longest run of zero words (first one wins a tie), only if at least 2 long.
    let (mut best_base, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if w[i] == 0 {
            let start = i;
            while i < 8 && w[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_base = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best_base = usize::MAX;
    }
    let mut i = 0;
    while i < 8 {
        if i == best_base {
            if i == 0 {
                s.push(':');
            }
            s.push(':');
            i += best_len;
            continue;
        }
        if i == 6 && best_base == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff)) {
            let o = a.octets();
            let _ = write!(s, "{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
            return;
        }
        let _ = write!(s, "{:x}", w[i]);
        if i < 7 {
            s.push(':');
        }
        i += 1;
    }
}

// ---- field helpers (mirroring format_eth / format_ipv4 / format_u8x ...) ----
// `mask == None` means "no mask" (fully masked, printed); verbose prints wildcarded fields.

fn f_eth(s: &mut String, name: &str, key: &Mac, mask: Option<&Mac>, verbose: bool) {
    let empty = mask.is_some_and(|m| *m == [0; 6]);
    if verbose || !empty {
        s.push_str(name);
        s.push('=');
        push_mac(s, key);
        if let Some(m) = mask
            && *m != [0xff; 6]
        {
            s.push('/');
            push_mac(s, m);
        }
        s.push(',');
    }
}

fn f_ipv4(s: &mut String, name: &str, key: Ipv4Addr, mask: Option<Ipv4Addr>, verbose: bool) {
    let empty = mask.is_some_and(|m| m.is_unspecified());
    if verbose || !empty {
        let _ = write!(s, "{name}={key}");
        if let Some(m) = mask
            && m != Ipv4Addr::BROADCAST
        {
            let _ = write!(s, "/{m}");
        }
        s.push(',');
    }
}

fn f_ipv6(s: &mut String, name: &str, key: &Ipv6Addr, mask: Option<&Ipv6Addr>, verbose: bool) {
    let empty = mask.is_some_and(|m| m.is_unspecified());
    if verbose || !empty {
        s.push_str(name);
        s.push('=');
        push_ipv6(s, key);
        if let Some(m) = mask
            && u128::from(*m) != u128::MAX
        {
            s.push('/');
            push_ipv6(s, m);
        }
        s.push(',');
    }
}

fn f_label(s: &mut String, name: &str, key: u32, mask: Option<u32>, verbose: bool) {
    let empty = mask == Some(0);
    if verbose || !empty {
        s.push_str(name);
        s.push('=');
        hex_alt(s, key.into());
        if let Some(m) = mask
            && m & 0xfffff != 0xfffff
        {
            s.push('/');
            hex_alt(s, m.into());
        }
        s.push(',');
    }
}

fn f_u8x(s: &mut String, name: &str, key: u8, mask: Option<u8>, verbose: bool) {
    if verbose || mask != Some(0) {
        s.push_str(name);
        s.push('=');
        hex_alt(s, key.into());
        if let Some(m) = mask
            && m != u8::MAX
        {
            s.push('/');
            hex_alt(s, m.into());
        }
        s.push(',');
    }
}

fn f_u8u(s: &mut String, name: &str, key: u8, mask: Option<u8>, verbose: bool) {
    if verbose || mask != Some(0) {
        let _ = write!(s, "{name}={key}");
        if let Some(m) = mask
            && m != u8::MAX
        {
            s.push('/');
            hex_alt(s, m.into());
        }
        s.push(',');
    }
}

fn f_u16(s: &mut String, name: &str, key: u16, mask: Option<u16>, verbose: bool) {
    if verbose || mask != Some(0) {
        let _ = write!(s, "{name}={key}");
        if let Some(m) = mask
            && m != u16::MAX
        {
            s.push('/');
            hex_alt(s, m.into());
        }
        s.push(',');
    }
}

fn f_u16x(s: &mut String, name: &str, key: u16, mask: Option<u16>, verbose: bool) {
    if verbose || mask != Some(0) {
        s.push_str(name);
        s.push('=');
        hex_alt(s, key.into());
        if let Some(m) = mask
            && m != u16::MAX
        {
            s.push('/');
            hex_alt(s, m.into());
        }
        s.push(',');
    }
}

fn f_u64(s: &mut String, name: &str, key: u64, mask: Option<u64>, verbose: bool) {
    if verbose || mask != Some(0) {
        let _ = write!(s, "{name}={key:#x}");
        if let Some(m) = mask
            && m != u64::MAX
        {
            s.push('/');
            hex_alt(s, m);
        }
        s.push(',');
    }
}

pub(crate) fn frag_name(v: u8) -> &'static str {
    match v {
        0 => "no",
        1 => "first",
        2 => "later",
        _ => "<error>",
    }
}

fn f_frag(s: &mut String, name: &str, key: u8, mask: Option<u8>) {
    let empty = mask == Some(0);
    let full = mask.is_none_or(|m| m == u8::MAX);
    if !empty && !full {
        s.push_str("error: partial mask not supported for frag (");
        hex_alt(s, mask.unwrap_or(0).into());
        s.push_str("),");
    } else if !empty {
        let _ = write!(s, "{name}={},", frag_name(key));
    }
}

/// Name of one bit, or `None` when unknown.
type BitName = fn(u32) -> Option<&'static str>;

pub(crate) fn ct_state_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        ct_state::NEW => "new",
        ct_state::ESTABLISHED => "est",
        ct_state::RELATED => "rel",
        ct_state::REPLY_DIR => "rpl",
        ct_state::INVALID => "inv",
        ct_state::TRACKED => "trk",
        ct_state::SRC_NAT => "snat",
        ct_state::DST_NAT => "dnat",
        _ => return None,
    })
}

pub(crate) fn tcp_flag_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0x001 => "fin",
        0x002 => "syn",
        0x004 => "rst",
        0x008 => "psh",
        0x010 => "ack",
        0x020 => "urg",
        0x040 => "ece",
        0x080 => "cwr",
        0x100 => "ns",
        0x200 => "[200]",
        0x400 => "[400]",
        0x800 => "[800]",
        _ => return None,
    })
}

pub(crate) fn tun_flag_name(bit: u32) -> Option<&'static str> {
    Some(match bit {
        TUN_F_OAM => "oam",
        TUN_F_DF => "df",
        TUN_F_CSUM => "csum",
        TUN_F_KEY => "key",
        _ => return None,
    })
}

pub(crate) const TUN_F_OAM: u32 = 1;
pub(crate) const TUN_F_DF: u32 = 2;
pub(crate) const TUN_F_CSUM: u32 = 4;
pub(crate) const TUN_F_KEY: u32 = 8;

/// OVS `format_flags`: names joined by `del`, lowest bit first; `0` when no bit is set.
fn format_flags(s: &mut String, names: BitName, mut flags: u32, del: char) {
    if flags == 0 {
        s.push('0');
        return;
    }
    let mut bad = 0u32;
    while flags != 0 {
        let bit = flags & flags.wrapping_neg();
        match names(bit) {
            Some(n) => {
                s.push_str(n);
                s.push(del);
            }
            None => bad |= bit,
        }
        flags &= !bit;
    }
    if bad != 0 {
        let _ = write!(s, "{bad:#x}{del}");
    }
    chomp(s, del);
}

/// OVS `format_flags_masked` without a name: `+a-b` for each masked bit.
fn format_flags_masked(s: &mut String, names: BitName, flags: u32, mut mask: u32, max: u32) {
    if mask == max {
        format_flags(s, names, flags, '|');
        return;
    }
    if mask == 0 {
        s.push_str("0/0");
        return;
    }
    while mask != 0 {
        let bit = mask & mask.wrapping_neg();
        s.push(if flags & bit != 0 { '+' } else { '-' });
        s.push_str(names(bit).unwrap_or("[Unknown]"));
        mask &= !bit;
    }
}

fn push_hex_bytes_trimmed(s: &mut String, bytes: &[u8]) {
    // OVS ds_put_hex: leading zero bytes dropped, first byte without padding.
    let mut printed = false;
    for &b in bytes {
        if b != 0 || printed {
            if printed {
                let _ = write!(s, "{b:02x}");
            } else {
                let _ = write!(s, "0x{b:x}");
            }
            printed = true;
        }
    }
    if !printed {
        s.push('0');
    }
}

fn format_u128(s: &mut String, key: u128, mask: Option<u128>, verbose: bool) {
    if verbose || mask.is_some_and(|m| m != 0) {
        push_hex_bytes_trimmed(s, &key.to_be_bytes());
        if let Some(m) = mask
            && m != u128::MAX
        {
            s.push('/');
            push_hex_bytes_trimmed(s, &m.to_be_bytes());
        }
    }
}

fn push_generic(s: &mut String, data: &[u8]) {
    for (i, b) in data.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
}

fn format_vlan_tci(s: &mut String, tci: u16, mask: u16, verbose: bool) {
    let vid = |t: u16| t & 0x0fff;
    let pcp = |t: u16| t >> 13;
    if verbose || vid(tci) != 0 || vid(mask) != 0 {
        let _ = write!(s, "vid={}", vid(tci));
        if vid(mask) != 0x0fff {
            let _ = write!(s, "/0x{:x}", vid(mask));
        }
        s.push(',');
    }
    if verbose || pcp(tci) != 0 || pcp(mask) != 0 {
        let _ = write!(s, "pcp={}", pcp(tci));
        if pcp(mask) != 7 {
            let _ = write!(s, "/0x{:x}", pcp(mask));
        }
        s.push(',');
    }
    if tci & VLAN_CFI == 0 {
        s.push_str("cfi=0,");
    }
    chomp(s, ',');
}

// ---- attribute bodies ----

fn body_eth(s: &mut String, k: &KeyEthernet, m: Option<&KeyEthernet>, v: bool) {
    f_eth(s, "src", &k.src, m.map(|m| &m.src), v);
    f_eth(s, "dst", &k.dst, m.map(|m| &m.dst), v);
    chomp(s, ',');
}

fn body_ipv4(s: &mut String, k: &KeyIpv4, m: Option<&KeyIpv4>, v: bool) {
    f_ipv4(s, "src", k.src, m.map(|m| m.src), v);
    f_ipv4(s, "dst", k.dst, m.map(|m| m.dst), v);
    f_u8u(s, "proto", k.proto, m.map(|m| m.proto), v);
    f_u8x(s, "tos", k.tos, m.map(|m| m.tos), v);
    f_u8u(s, "ttl", k.ttl, m.map(|m| m.ttl), v);
    f_frag(s, "frag", k.frag, m.map(|m| m.frag));
    chomp(s, ',');
}

fn body_ipv6(s: &mut String, k: &KeyIpv6, m: Option<&KeyIpv6>, v: bool) {
    f_ipv6(s, "src", &k.src, m.map(|m| &m.src), v);
    f_ipv6(s, "dst", &k.dst, m.map(|m| &m.dst), v);
    f_label(s, "label", k.label, m.map(|m| m.label), v);
    f_u8u(s, "proto", k.proto, m.map(|m| m.proto), v);
    f_u8x(s, "tclass", k.tclass, m.map(|m| m.tclass), v);
    f_u8u(s, "hlimit", k.hlimit, m.map(|m| m.hlimit), v);
    f_frag(s, "frag", k.frag, m.map(|m| m.frag));
    chomp(s, ',');
}

fn body_ports(s: &mut String, k: &KeyPorts, m: Option<&KeyPorts>, v: bool) {
    f_u16(s, "src", k.src, m.map(|m| m.src), v);
    f_u16(s, "dst", k.dst, m.map(|m| m.dst), v);
    chomp(s, ',');
}

fn body_icmp(s: &mut String, k: &KeyIcmp, m: Option<&KeyIcmp>, v: bool) {
    f_u8u(s, "type", k.icmp_type, m.map(|m| m.icmp_type), v);
    f_u8u(s, "code", k.code, m.map(|m| m.code), v);
    chomp(s, ',');
}

fn body_arp(s: &mut String, k: &KeyArp, m: Option<&KeyArp>, v: bool) {
    f_ipv4(s, "sip", k.sip, m.map(|m| m.sip), v);
    f_ipv4(s, "tip", k.tip, m.map(|m| m.tip), v);
    f_u16(s, "op", k.op, m.map(|m| m.op), v);
    f_eth(s, "sha", &k.sha, m.map(|m| &m.sha), v);
    f_eth(s, "tha", &k.tha, m.map(|m| &m.tha), v);
    chomp(s, ',');
}

fn body_nd(s: &mut String, k: &KeyNd, m: Option<&KeyNd>, v: bool) {
    f_ipv6(s, "target", &k.target, m.map(|m| &m.target), v);
    f_eth(s, "sll", &k.sll, m.map(|m| &m.sll), v);
    f_eth(s, "tll", &k.tll, m.map(|m| &m.tll), v);
    chomp(s, ',');
}

fn body_tuple4(s: &mut String, k: &CtTupleIpv4, m: Option<&CtTupleIpv4>, v: bool) {
    f_ipv4(s, "src", k.src, m.map(|m| m.src), v);
    f_ipv4(s, "dst", k.dst, m.map(|m| m.dst), v);
    f_u8u(s, "proto", k.proto, m.map(|m| m.proto), v);
    f_u16(s, "tp_src", k.src_port, m.map(|m| m.src_port), v);
    f_u16(s, "tp_dst", k.dst_port, m.map(|m| m.dst_port), v);
    chomp(s, ',');
}

fn body_tuple6(s: &mut String, k: &CtTupleIpv6, m: Option<&CtTupleIpv6>, v: bool) {
    f_ipv6(s, "src", &k.src, m.map(|m| &m.src), v);
    f_ipv6(s, "dst", &k.dst, m.map(|m| &m.dst), v);
    f_u8u(s, "proto", k.proto, m.map(|m| m.proto), v);
    f_u16(s, "src_port", k.src_port, m.map(|m| m.src_port), v);
    f_u16(s, "dst_port", k.dst_port, m.map(|m| m.dst_port), v);
    chomp(s, ',');
}

fn body_geneve(s: &mut String, k: &GeneveOpts, m: Option<&GeneveOpts>, v: bool) {
    let kb = k.as_bytes();
    let mb = m.map(|m| m.as_bytes());
    if let Some(mb) = mb
        && mb.len() != kb.len()
    {
        let _ = write!(
            s,
            "value len {} different from mask len {}",
            kb.len(),
            mb.len()
        );
        return;
    }
    let mut off = 0usize;
    while off < kb.len() {
        let rest = kb.len() - off;
        if rest < 4 {
            let _ = write!(s, "opt len {rest} less than minimum 4");
            return;
        }
        let class = u16::from_be_bytes([kb[off], kb[off + 1]]);
        let typ = kb[off + 2];
        let data_len = (kb[off + 3] & 0x1f) as usize * 4;
        let len = 4 + data_len;
        if len > rest {
            let _ = write!(s, "opt len {len} greater than remaining {rest}");
            return;
        }
        let (mclass, mtyp, mlen) = match mb {
            Some(mb) => {
                let ml = mb[off + 3] & 0x1f;
                (
                    Some(u16::from_be_bytes([mb[off], mb[off + 1]])),
                    Some(mb[off + 2]),
                    Some(if ml == 0x1f { u8::MAX } else { ml }),
                )
            }
            None => (None, None, None),
        };
        s.push('{');
        f_u16x(s, "class", class, mclass, v);
        f_u8x(s, "type", typ, mtyp, v);
        f_u8u(s, "len", data_len as u8, mlen, v);
        let kd = &kb[off + 4..off + len];
        let md = mb.map(|mb| &mb[off + 4..off + len]);
        if data_len > 0 && (v || md.is_none_or(|md| md.iter().any(|&b| b != 0))) {
            push_hex_bytes_trimmed(s, kd);
            if let Some(md) = md
                && md.iter().any(|&b| b != 0xff)
            {
                s.push('/');
                push_hex_bytes_trimmed(s, md);
            }
        } else {
            chomp(s, ',');
        }
        s.push('}');
        off += len;
    }
}

/// `tunnel(..)` body. `mask == None`: no mask at all (set action, verbose).
fn body_tunnel(s: &mut String, k: &TunnelKey, m: Option<&TunnelKey>, v: bool) {
    let mut flags = 0u32;
    let mut mflags = 0u32;
    let mm = m;
    if let Some(id) = k.tun_id {
        f_u64(s, "tun_id", id, mm.map(|m| m.tun_id.unwrap_or(0)), v);
        flags |= TUN_F_KEY;
        if m.is_some() {
            mflags |= TUN_F_KEY;
        }
    }
    if let Some(a) = k.ipv4_src {
        f_ipv4(
            s,
            "src",
            a,
            mm.map(|m| m.ipv4_src.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            v,
        );
    }
    if let Some(a) = k.ipv4_dst {
        f_ipv4(
            s,
            "dst",
            a,
            mm.map(|m| m.ipv4_dst.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            v,
        );
    }
    if let Some(a) = k.ipv6_src {
        let mv = mm.map(|m| m.ipv6_src.unwrap_or(Ipv6Addr::UNSPECIFIED));
        f_ipv6(s, "ipv6_src", &a, mv.as_ref(), v);
    }
    if let Some(a) = k.ipv6_dst {
        let mv = mm.map(|m| m.ipv6_dst.unwrap_or(Ipv6Addr::UNSPECIFIED));
        f_ipv6(s, "ipv6_dst", &a, mv.as_ref(), v);
    }
    if let Some(t) = k.tos {
        f_u8x(s, "tos", t, mm.map(|m| m.tos.unwrap_or(0)), v);
    }
    if let Some(t) = k.ttl {
        f_u8u(s, "ttl", t, mm.map(|m| m.ttl.unwrap_or(0)), v);
    }
    if k.df {
        flags |= TUN_F_DF;
    }
    if k.csum {
        flags |= TUN_F_CSUM;
    }
    if let Some(p) = k.tp_src {
        f_u16(s, "tp_src", p, mm.map(|m| m.tp_src.unwrap_or(0)), v);
    }
    if let Some(p) = k.tp_dst {
        f_u16(s, "tp_dst", p, mm.map(|m| m.tp_dst.unwrap_or(0)), v);
    }
    if k.oam {
        flags |= TUN_F_OAM;
    }
    if let Some(g) = &k.geneve {
        s.push_str("geneve(");
        let zg;
        let mg = match mm {
            Some(m) => match m.geneve.as_deref() {
                Some(g) => Some(g),
                None => {
                    zg = GeneveOpts::new(&[0u8; GeneveOpts::MAX][..g.as_bytes().len()])
                        .unwrap_or_default();
                    Some(&zg)
                }
            },
            None => None,
        };
        body_geneve(s, g, mg, v);
        s.push_str("),");
    }
    for a in &k.other {
        let ma = mm.and_then(|m| m.other.iter().find(|x| x.kind == a.kind));
        format_unknown(s, a, ma);
        s.push(',');
    }
    if let Some(m) = m {
        if m.df {
            mflags |= TUN_F_DF;
        }
        if m.csum {
            mflags |= TUN_F_CSUM;
        }
        if m.oam {
            mflags |= TUN_F_OAM;
        }
    }
    if v || m.is_none() || mflags != 0 {
        s.push_str("flags(");
        match m {
            Some(_) => format_flags_masked(s, tun_flag_name, flags, mflags & 0xf, 0xf),
            None => format_flags(s, tun_flag_name, flags, '|'),
        }
        s.push_str("),");
    }
    chomp(s, ',');
}

/// A key attribute OVS has no name for, as `odp_flow_format` prints it: `keyN(aa bb/cc dd)`,
/// the mask always shown (OVS never treats an unknown attribute's mask as exact or
/// wildcarded) unless the flow has no mask at all.
fn format_unknown_key(s: &mut String, kind: u16, data: &[u8], mask: Option<&[u8]>) {
    let _ = write!(s, "key{kind}(");
    push_generic(s, data);
    if let Some(m) = mask {
        s.push('/');
        push_generic(s, m);
    }
    s.push(')');
}

fn format_unknown(s: &mut String, a: &RawAttr, m: Option<&RawAttr>) {
    let _ = write!(s, "key{}(", a.kind);
    push_generic(s, &a.data);
    if let Some(m) = m
        && m.data.iter().any(|&b| b != 0xff)
    {
        s.push('/');
        push_generic(s, &m.data);
    }
    s.push(')');
}

fn sep(s: &mut String, first: &mut bool) {
    if !*first {
        s.push(',');
    }
    *first = false;
}

/// Decide how one attribute prints. Returns `None` to skip it, `Some(mask)` to print it.
fn pick<'a, T: PartialEq + Default>(mask: &'a Option<T>, zero: &'a T) -> (bool, &'a T) {
    match mask {
        Some(m) => (*m == T::default(), m),
        None => (true, zero),
    }
}

macro_rules! simple_attr {
    ($s:ident, $first:ident, $key:ident, $mask:ident, $field:ident, $name:literal, $body:ident) => {
        if let Some(k) = &$key.$field {
            let zero = Default::default();
            let (wild, m) = pick(&$mask.$field, &zero);
            if !wild {
                sep($s, &mut $first);
                $s.push_str(concat!($name, "("));
                $body($s, k, Some(m), false);
                $s.push(')');
            }
        }
    };
}

fn u32_attr(s: &mut String, first: &mut bool, name: &str, k: Option<u32>, m: Option<u32>) {
    if let Some(k) = k {
        let m = m.unwrap_or(0);
        if m != 0 {
            sep(s, first);
            s.push_str(name);
            s.push('(');
            hex_alt(s, k.into());
            if m != u32::MAX {
                s.push('/');
                hex_alt(s, m.into());
            }
            s.push(')');
        }
    }
}

/// Appends `key` under `mask` in `ovs-dpctl dump-flows` syntax. An empty mask means exact.
pub fn format_key(s: &mut String, key: &FlowKey, mask: &FlowMask) {
    if key.is_empty() {
        s.push_str("<empty>");
        return;
    }
    let exact;
    let no_mask = mask.is_empty();
    let mask = if no_mask {
        exact = key.exact_mask();
        &exact
    } else {
        mask
    };
    let mut first = true;
    u32_attr(s, &mut first, "recirc_id", key.recirc_id, mask.recirc_id);
    u32_attr(s, &mut first, "dp_hash", key.dp_hash, mask.dp_hash);
    u32_attr(s, &mut first, "skb_priority", key.priority, mask.priority);
    if let Some(t) = &key.tunnel {
        sep(s, &mut first);
        s.push_str("tunnel(");
        let zero = TunnelKey::default();
        body_tunnel(s, t, Some(mask.tunnel.as_ref().unwrap_or(&zero)), false);
        s.push(')');
    }
    if let Some(p) = key.in_port {
        let m = mask.in_port.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            if m == u32::MAX {
                let _ = write!(s, "in_port({p})");
            } else {
                let _ = write!(s, "in_port({p}/");
                hex_alt(s, m.into());
                s.push(')');
            }
        }
    }
    u32_attr(s, &mut first, "skb_mark", key.skb_mark, mask.skb_mark);
    if let Some(k) = key.ct_state {
        let m = mask.ct_state.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            s.push_str("ct_state(");
            if m == u32::MAX {
                format_flags(s, ct_state_name, k, '|');
            } else {
                format_flags_masked(s, ct_state_name, k, m, u32::MAX);
            }
            s.push(')');
        }
    }
    if let Some(k) = key.ct_zone {
        let m = mask.ct_zone.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            s.push_str("ct_zone(");
            hex_alt(s, k.into());
            if m != u16::MAX {
                s.push('/');
                hex_alt(s, m.into());
            }
            s.push(')');
        }
    }
    u32_attr(s, &mut first, "ct_mark", key.ct_mark, mask.ct_mark);
    if let Some(k) = key.ct_label {
        let m = mask.ct_label.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            s.push_str("ct_label(");
            format_u128(s, k, Some(m), false);
            s.push(')');
        }
    }
    simple_attr!(s, first, key, mask, ct_tuple4, "ct_tuple4", body_tuple4);
    simple_attr!(s, first, key, mask, ct_tuple6, "ct_tuple6", body_tuple6);
    if let Some(k) = &key.eth {
        let zero = KeyEthernet::default();
        let (wild, m) = pick(&mask.eth, &zero);
        sep(s, &mut first);
        if wild {
            s.push_str("eth()");
        } else {
            s.push_str("eth(");
            body_eth(s, k, Some(m), false);
            s.push(')');
        }
    }
    if let Some(k) = key.eth_type {
        let m = mask.eth_type.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            let _ = write!(s, "eth_type(0x{k:04x}");
            if m != u16::MAX {
                let _ = write!(s, "/0x{m:04x}");
            }
            s.push(')');
        }
    }
    if let Some(k) = key.vlan {
        let m = mask.vlan.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            s.push_str("vlan(");
            format_vlan_tci(s, k, m, false);
            s.push(')');
        }
    }
    if let Some(e) = &key.encap {
        sep(s, &mut first);
        s.push_str("encap(");
        if !e.is_empty() {
            let empty = FlowKey::default();
            let me = mask.encap.as_deref().unwrap_or(&empty);
            format_key(s, e, me);
        }
        s.push(')');
    }
    simple_attr!(s, first, key, mask, ipv4, "ipv4", body_ipv4);
    simple_attr!(s, first, key, mask, ipv6, "ipv6", body_ipv6);
    if let (Some(k), Some(m)) = (key.ipv6_exthdrs, mask.ipv6_exthdrs) {
        sep(s, &mut first);
        let mb = m.to_ne_bytes();
        format_unknown_key(
            s,
            crate::nla::key::IPV6_EXTHDRS,
            &k.to_ne_bytes(),
            (!no_mask).then_some(&mb[..]),
        );
    }
    simple_attr!(s, first, key, mask, arp, "arp", body_arp);
    simple_attr!(s, first, key, mask, tcp, "tcp", body_ports);
    if let Some(k) = key.tcp_flags {
        let m = mask.tcp_flags.unwrap_or(0);
        if m != 0 {
            sep(s, &mut first);
            s.push_str("tcp_flags(");
            if m == u16::MAX {
                format_flags(s, tcp_flag_name, k.into(), '|');
            } else {
                format_flags_masked(s, tcp_flag_name, k.into(), u32::from(m & 0x0fff), 0x0fff);
            }
            s.push(')');
        }
    }
    simple_attr!(s, first, key, mask, udp, "udp", body_ports);
    simple_attr!(s, first, key, mask, sctp, "sctp", body_ports);
    simple_attr!(s, first, key, mask, icmp, "icmp", body_icmp);
    simple_attr!(s, first, key, mask, icmpv6, "icmpv6", body_icmp);
    simple_attr!(s, first, key, mask, nd, "nd", body_nd);
    for a in &key.other {
        // Printed whenever the mask has the attribute, whatever its value (OVS's rule).
        if let Some(m) = mask.other.iter().find(|x| x.kind == a.kind) {
            sep(s, &mut first);
            format_unknown_key(s, a.kind, &a.data, (!no_mask).then_some(&m.data[..]));
        }
    }
    if key.eth_type.is_none()
        && let Some(m) = mask.eth_type
    {
        let _ = write!(s, ",eth_type(0/0x{m:04x})");
    }
}

/// The match text, with key attributes the codec does not model printed the way
/// `ovs-dpctl` prints them: `keyN(<bytes>[/<mask>])` at their place in the kernel's
/// attribute order, even when fully wildcarded. Linux 5.18+ adds such an attribute to every
/// IPv6 flow (type 32, `OVS_KEY_ATTR_IPV6_EXTHDRS`) and Debian's ovs-dpctl prints it as
/// `key32(00 00/00 00)` right after `ipv6(..)`.
pub fn match_text_in_wire_order(raw_key: &[u8], f: &Flow) -> String {
    let unknown: Vec<u16> = f
        .key
        .other
        .iter()
        .map(|a| a.kind & crate::nla::NLA_TYPE_MASK)
        .collect();
    if unknown.is_empty() {
        return f.match_text();
    }
    let (mut key, mut mask) = (f.key.clone(), f.mask.clone());
    key.other.clear();
    mask.other.clear();
    let mut known = String::new();
    format_key(&mut known, &key, &mask);
    let mut groups: Vec<(Option<u16>, String)> = split_groups(&known)
        .into_iter()
        .map(|g| (group_kind(&g), g))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for attr in crate::nla::attrs(raw_key, "OVS_KEY_ATTR") {
        let Ok(attr) = attr else { break };
        let kind = attr.kind();
        if unknown.contains(&kind) {
            if let Some(a) = f
                .key
                .other
                .iter()
                .find(|a| a.kind & crate::nla::NLA_TYPE_MASK == kind)
            {
                let m = f
                    .mask
                    .other
                    .iter()
                    .find(|m| m.kind & crate::nla::NLA_TYPE_MASK == kind);
                let mut g = String::new();
                format_unknown(&mut g, a, m);
                out.push(g);
            }
            continue;
        }
        while let Some(i) = groups.iter().position(|(k, _)| *k == Some(kind)) {
            out.push(groups.remove(i).1);
        }
    }
    // Anything the wire walk did not place keeps its relative order at the end.
    out.extend(groups.into_iter().map(|(_, g)| g));
    out.join(",")
}

/// Splits `a(..),b(..),c` at the commas outside parentheses.
fn split_groups(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(s[start..].to_string());
    }
    out
}

/// The `OVS_KEY_ATTR_*` number a printed group comes from.
fn group_kind(g: &str) -> Option<u16> {
    use crate::nla::key as k;
    let name = g.split('(').next().unwrap_or(g);
    Some(match name {
        "encap" => k::ENCAP,
        "skb_priority" => k::PRIORITY,
        "in_port" => k::IN_PORT,
        "eth" => k::ETHERNET,
        "vlan" => k::VLAN,
        "eth_type" => k::ETHERTYPE,
        "ipv4" => k::IPV4,
        "ipv6" => k::IPV6,
        "tcp" => k::TCP,
        "udp" => k::UDP,
        "icmp" => k::ICMP,
        "icmpv6" => k::ICMPV6,
        "arp" => k::ARP,
        "nd" => k::ND,
        "skb_mark" => k::SKB_MARK,
        "tunnel" => k::TUNNEL,
        "sctp" => k::SCTP,
        "tcp_flags" => k::TCP_FLAGS,
        "dp_hash" => k::DP_HASH,
        "recirc_id" => k::RECIRC_ID,
        "ct_state" => k::CT_STATE,
        "ct_zone" => k::CT_ZONE,
        "ct_mark" => k::CT_MARK,
        "ct_label" => k::CT_LABELS,
        "ct_tuple4" => k::CT_ORIG_TUPLE_IPV4,
        "ct_tuple6" => k::CT_ORIG_TUPLE_IPV6,
        _ => return None,
    })
}

/// One line of `ovs-dpctl dump-flows` for flow `f` whose key the kernel encoded as
/// `raw_key`: the UFID first when `with_ufid` (as `-m` prints it), then the match in the
/// kernel's attribute order, the counters and the actions.
pub fn dump_line(raw_key: &[u8], f: &Flow, with_ufid: bool) -> String {
    let mut s = String::with_capacity(256);
    if with_ufid && let Some(u) = f.ufid {
        format_ufid(&mut s, u);
        s.push_str(", ");
    }
    s.push_str(&match_text_in_wire_order(raw_key, f));
    s.push_str(", ");
    format_stats(&mut s, &f.stats);
    s.push_str(", actions:");
    format_actions(&mut s, &f.actions);
    s
}

/// Appends the UFID as OVS prints it: `ufid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_ufid(s: &mut String, u: u128) {
    let h = format!("{u:032x}");
    let _ = write!(
        s,
        "ufid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
}

/// Appends `packets:N, bytes:N, used:<age>|never[, flags:<tcp>]`.
pub fn format_stats(s: &mut String, st: &FlowStats) {
    let _ = write!(s, "packets:{}, bytes:{}, used:", st.packets, st.bytes);
    match st.used {
        Some(d) => {
            let _ = write!(s, "{:.3}s", d.as_secs_f64());
        }
        None => s.push_str("never"),
    }
    if st.tcp_flags != 0 {
        s.push_str(", flags:");
        let f = st.tcp_flags;
        for (bit, c) in [
            (0x002, 'S'),
            (0x001, 'F'),
            (0x008, 'P'),
            (0x004, 'R'),
            (0x020, 'U'),
            (0x010, '.'),
            (0x040, 'E'),
            (0x080, 'C'),
            (0x100, 'N'),
        ] {
            if f & bit != 0 {
                s.push(c);
            }
        }
    }
}

// ---- actions ----

fn format_set_key(s: &mut String, k: &SetKey, m: Option<&SetKey>) {
    // `set` prints verbosely with no mask; `set_masked` prints like a match (non-verbose).
    let v = m.is_none();
    match (k, m) {
        (SetKey::Priority(a), m) => {
            s.push_str("skb_priority(");
            hex_alt(s, (*a).into());
            if let Some(SetKey::Priority(mm)) = m
                && *mm != u32::MAX
            {
                s.push('/');
                hex_alt(s, (*mm).into());
            }
            s.push(')');
        }
        (SetKey::SkbMark(a), m) => {
            s.push_str("skb_mark(");
            hex_alt(s, (*a).into());
            if let Some(SetKey::SkbMark(mm)) = m
                && *mm != u32::MAX
            {
                s.push('/');
                hex_alt(s, (*mm).into());
            }
            s.push(')');
        }
        (SetKey::Ethernet(a), m) => {
            s.push_str("eth(");
            let mm = match m {
                Some(SetKey::Ethernet(x)) => Some(x),
                _ => None,
            };
            body_eth(s, a, mm, v);
            s.push(')');
        }
        (SetKey::Ipv4(a), m) => {
            s.push_str("ipv4(");
            let mm = match m {
                Some(SetKey::Ipv4(x)) => Some(x),
                _ => None,
            };
            body_ipv4(s, a, mm, v);
            s.push(')');
        }
        (SetKey::Ipv6(a), m) => {
            s.push_str("ipv6(");
            let mm = match m {
                Some(SetKey::Ipv6(x)) => Some(x),
                _ => None,
            };
            body_ipv6(s, a, mm, v);
            s.push(')');
        }
        (SetKey::Tcp(a) | SetKey::Udp(a) | SetKey::Sctp(a), m) => {
            s.push_str(match k {
                SetKey::Tcp(_) => "tcp(",
                SetKey::Udp(_) => "udp(",
                _ => "sctp(",
            });
            let mm = match m {
                Some(SetKey::Tcp(x) | SetKey::Udp(x) | SetKey::Sctp(x)) => Some(x),
                _ => None,
            };
            body_ports(s, a, mm, v);
            s.push(')');
        }
        (SetKey::Tunnel(t), _) => {
            s.push_str("tunnel(");
            body_tunnel(s, t, None, true);
            s.push(')');
        }
        (SetKey::Other(a), m) => {
            let mm = match m {
                Some(SetKey::Other(x)) => Some(x),
                _ => None,
            };
            format_unknown(s, a, mm);
        }
    }
}

fn push_nat_ip(s: &mut String, ip: &std::net::IpAddr, bracket: bool) {
    match ip {
        std::net::IpAddr::V4(a) => {
            let _ = write!(s, "{a}");
        }
        std::net::IpAddr::V6(a) => {
            if bracket {
                s.push('[');
            }
            push_ipv6(s, a);
            if bracket {
                s.push(']');
            }
        }
    }
}

fn format_nat(s: &mut String, n: &Nat) {
    s.push_str("nat");
    let Some(kind) = n.kind else {
        return;
    };
    s.push('(');
    s.push_str(match kind {
        NatKind::Src => "src",
        NatKind::Dst => "dst",
    });
    if let Some(min) = &n.ip_min {
        s.push('=');
        let bracket = n.proto_min.is_some_and(|p| p != 0);
        push_nat_ip(s, min, bracket);
        if let Some(max) = &n.ip_max
            && max != min
            && !max.is_unspecified()
        {
            s.push('-');
            push_nat_ip(s, max, bracket);
        }
        if let Some(p) = n.proto_min
            && p != 0
        {
            let _ = write!(s, ":{p}");
            if let Some(q) = n.proto_max
                && q != 0
                && q != p
            {
                let _ = write!(s, "-{q}");
            }
        }
    }
    s.push(',');
    if n.persistent {
        s.push_str("persistent,");
    }
    if n.hash {
        s.push_str("hash,");
    }
    if n.random {
        s.push_str("random,");
    }
    chomp(s, ',');
    s.push(')');
}

fn format_ct(s: &mut String, c: &Ct) {
    s.push_str("ct");
    let zone = c.zone.unwrap_or(0);
    if c.commit
        || c.force_commit
        || zone != 0
        || c.mark.is_some()
        || c.labels.is_some()
        || c.helper.is_some()
        || c.timeout.is_some()
        || c.nat.is_some()
    {
        s.push('(');
        if c.commit {
            s.push_str("commit,");
        }
        if c.force_commit {
            s.push_str("force_commit,");
        }
        if zone != 0 {
            let _ = write!(s, "zone={zone},");
        }
        if let Some((v, m)) = c.mark {
            s.push_str("mark=");
            hex_alt(s, v.into());
            s.push('/');
            hex_alt(s, m.into());
            s.push(',');
        }
        if let Some(&(v, m)) = c.labels.as_deref() {
            s.push_str("label=");
            format_u128(s, v, Some(m), true);
            s.push(',');
        }
        if let Some(h) = &c.helper {
            let _ = write!(s, "helper={h},");
        }
        if let Some(t) = &c.timeout {
            let _ = write!(s, "timeout={t},");
        }
        if let Some(n) = &c.nat {
            format_nat(s, n);
        }
        chomp(s, ',');
        s.push(')');
    }
}

fn format_userspace(s: &mut String, u: &Userspace) {
    let _ = write!(s, "userspace(pid={}", u.pid);
    if let Some(d) = &u.userdata {
        s.push_str(",userdata(");
        for b in d {
            let _ = write!(s, "{b:02x}");
        }
        s.push(')');
    }
    if u.actions {
        s.push_str(",actions");
    }
    if let Some(p) = u.egress_tun_port {
        let _ = write!(s, ",tunnel_out_port={p}");
    }
    s.push(')');
}

fn format_action(s: &mut String, a: &Action) {
    match a {
        Action::Output(p) => {
            let _ = write!(s, "{p}");
        }
        Action::Userspace(u) => format_userspace(s, u),
        Action::Set(k) => {
            s.push_str("set(");
            format_set_key(s, k, None);
            s.push(')');
        }
        Action::SetMasked(k, m) => {
            s.push_str("set(");
            format_set_key(s, k, Some(m));
            s.push(')');
        }
        Action::PushVlan { tpid, tci } => {
            s.push_str("push_vlan(");
            if *tpid != crate::action::ETH_P_8021Q {
                let _ = write!(s, "tpid=0x{tpid:04x},");
            }
            format_vlan_tci(s, *tci, u16::MAX, false);
            s.push(')');
        }
        Action::PopVlan => s.push_str("pop_vlan"),
        Action::Recirc(id) => {
            s.push_str("recirc(");
            hex_alt(s, (*id).into());
            s.push(')');
        }
        Action::Hash { alg, basis } => {
            let _ = match *alg {
                HASH_ALG_L4 => write!(s, "hash(l4({basis}))"),
                HASH_ALG_SYM_L4 => write!(s, "hash(sym_l4({basis}))"),
                other => write!(s, "hash(Unknown hash algorithm({other}))"),
            };
        }
        Action::Ct(c) => format_ct(s, c),
        Action::CtClear => s.push_str("ct_clear"),
        Action::Trunc(n) => {
            let _ = write!(s, "trunc({n})");
        }
        Action::Sample {
            probability,
            actions,
        } => {
            let pct = 100.0 * f64::from(*probability) / f64::from(u32::MAX);
            let _ = write!(s, "sample(sample={pct:.1}%,actions(");
            format_actions(s, actions);
            s.push_str("))");
        }
        Action::Clone(acts) => {
            s.push_str("clone(");
            format_actions(s, acts);
            s.push(')');
        }
        Action::CheckPktLen {
            len,
            greater,
            less_equal,
        } => {
            let _ = write!(s, "check_pkt_len(size={len},gt(");
            format_actions(s, greater);
            s.push_str("),le(");
            format_actions(s, less_equal);
            s.push_str("))");
        }
        Action::Meter(m) => {
            let _ = write!(s, "meter({m})");
        }
        Action::Other(t, data) => {
            let _ = write!(s, "action{t}");
            if !data.is_empty() {
                for (i, b) in data.iter().enumerate() {
                    s.push(if i == 0 { '(' } else { ' ' });
                    let _ = write!(s, "{b:02x}");
                }
                s.push(')');
            }
        }
    }
}

/// Appends actions in `ovs-dpctl` syntax; an empty list is `drop`.
pub fn format_actions(s: &mut String, actions: &[Action]) {
    if actions.is_empty() {
        s.push_str("drop");
        return;
    }
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        format_action(s, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Ct;
    use crate::key::KeyIpv4;

    #[test]
    fn groups_split_at_top_level_commas_only() {
        assert_eq!(
            split_groups("a(1,2),b,c(d(e,f))"),
            vec!["a(1,2)", "b", "c(d(e,f))"]
        );
    }

    #[test]
    fn brief_example_prints_like_dpctl() {
        let key = FlowKey {
            in_port: Some(1),
            eth: Some(KeyEthernet::default()),
            eth_type: Some(0x0800),
            ipv4: Some(KeyIpv4 {
                src: Ipv4Addr::new(10, 0, 0, 0),
                ..KeyIpv4::default()
            }),
            ..FlowKey::default()
        };
        let mask = FlowKey {
            in_port: Some(u32::MAX),
            eth: Some(KeyEthernet::default()),
            eth_type: Some(u16::MAX),
            ipv4: Some(KeyIpv4 {
                src: Ipv4Addr::new(255, 255, 255, 0),
                frag: 0xff,
                ..KeyIpv4::default()
            }),
            ..FlowKey::default()
        };
        let flow = Flow {
            key,
            mask,
            actions: vec![
                Action::Ct(Ct {
                    commit: true,
                    zone: Some(5),
                    ..Ct::default()
                }),
                Action::Recirc(1),
            ],
            ..Flow::default()
        };
        assert_eq!(
            flow.to_string(),
            "in_port(1),eth(),eth_type(0x0800),ipv4(src=10.0.0.0/255.255.255.0,frag=no), \
             packets:0, bytes:0, used:never, actions:ct(commit,zone=5),recirc(0x1)"
        );
    }

    #[test]
    fn ipv6_text_matches_inet_ntop() {
        let cases = [
            ("::", "::"),
            ("::1", "::1"),
            ("::2", "::2"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
            ("fe80::1:0:0:1", "fe80::1:0:0:1"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
        ];
        for (input, want) in cases {
            let mut s = String::new();
            push_ipv6(&mut s, &input.parse().unwrap());
            assert_eq!(s, want, "{input}");
        }
    }
}
