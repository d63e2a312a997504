//! Parsing the `ovs-dpctl` flow syntax (what `ovs-dpctl add-flow` accepts and
//! `dump-flows` prints) into [`FlowKey`]/[`FlowMask`], [`Action`] lists and whole [`Flow`]s.
//!
//! A field written without `/mask` is matched exactly, a field left out of an attribute's
//! parentheses is wildcarded, and an attribute left out is absent from key and mask alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::action::{
    Action, Ct, ETH_P_8021Q, HASH_ALG_L4, HASH_ALG_SYM_L4, Nat, NatKind, SetKey, Userspace,
};
use crate::error::{Error, Result};
use crate::flow::{Flow, FlowStats};
use crate::key::{
    CtTupleIpv4, CtTupleIpv6, FlowKey, FlowMask, GeneveOpts, KeyArp, KeyEthernet, KeyIcmp, KeyIpv4,
    KeyIpv6, KeyNd, KeyPorts, Mac, RawAttr, TunnelKey, VLAN_CFI,
};
use crate::text::{
    TUN_F_CSUM, TUN_F_DF, TUN_F_KEY, TUN_F_OAM, ct_state_name, tcp_flag_name, tun_flag_name,
};

/// Deepest nesting of actions or encap accepted by the parser.
const MAX_DEPTH: usize = 16;

struct Cur<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Cur { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        let near: String = self.rest().chars().take(40).collect();
        Error::Parse {
            pos: self.pos,
            near,
            reason: reason.into(),
        }
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        let t = r.trim_start();
        self.pos += r.len() - t.len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.rest().starts_with(p) {
            self.pos += p.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.err(format!("expected {p:?}")))
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// An identifier: `[A-Za-z0-9_]+`.
    fn ident(&mut self) -> &'a str {
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        self.pos += n;
        &r[..n]
    }

    /// A value token: up to `,`, `)`, `/` or the end.
    fn token(&mut self) -> &'a str {
        let r = self.rest();
        let n = r.find([',', ')', '/', '(']).unwrap_or(r.len());
        self.pos += n;
        r[..n].trim()
    }

    fn token_mask(&mut self) -> (&'a str, Option<&'a str>) {
        let v = self.token();
        if self.eat("/") {
            let m = self.token();
            (v, Some(m))
        } else {
            (v, None)
        }
    }
}

fn num_u64(c: &Cur<'_>, t: &str) -> Result<u64> {
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        t.parse::<u64>()
    };
    r.map_err(|_| c.err(format!("{t:?} is not a number")))
}

fn num<T: TryFrom<u64>>(c: &Cur<'_>, t: &str) -> Result<T> {
    let v = num_u64(c, t)?;
    T::try_from(v).map_err(|_| c.err(format!("{t} is out of range")))
}

fn u128_hex(c: &Cur<'_>, t: &str) -> Result<u128> {
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u128::from_str_radix(h, 16)
    } else {
        t.parse::<u128>()
    };
    r.map_err(|_| c.err(format!("{t:?} is not a 128-bit number")))
}

fn ip4(c: &Cur<'_>, t: &str) -> Result<Ipv4Addr> {
    t.parse()
        .map_err(|_| c.err(format!("{t:?} is not an IPv4 address")))
}

fn ip6(c: &Cur<'_>, t: &str) -> Result<Ipv6Addr> {
    t.parse()
        .map_err(|_| c.err(format!("{t:?} is not an IPv6 address")))
}

fn mac(c: &Cur<'_>, t: &str) -> Result<Mac> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in t.split(':') {
        if n == 6 || part.is_empty() || part.len() > 2 {
            return Err(c.err(format!("{t:?} is not a MAC address")));
        }
        out[n] = u8::from_str_radix(part, 16)
            .map_err(|_| c.err(format!("{t:?} is not a MAC address")))?;
        n += 1;
    }
    if n != 6 {
        return Err(c.err(format!("{t:?} is not a MAC address")));
    }
    Ok(out)
}

fn frag(c: &Cur<'_>, t: &str) -> Result<u8> {
    match t {
        "no" => Ok(0),
        "first" => Ok(1),
        "later" => Ok(2),
        _ => Err(c.err(format!("frag {t:?} is not no, first or later"))),
    }
}

/// Reads `value[/mask]` with `f`, returning (value, mask) where no mask = all ones.
fn vm<T>(c: &mut Cur<'_>, ones: T, f: impl Fn(&Cur<'_>, &str) -> Result<T>) -> Result<(T, T)> {
    let (v, m) = c.token_mask();
    let v = f(c, v)?;
    let m = match m {
        Some(m) => f(c, m)?,
        None => ones,
    };
    Ok((v, m))
}

/// Iterates `name=...` fields up to the closing `)`, calling `field` for each name.
fn fields(c: &mut Cur<'_>, mut field: impl FnMut(&mut Cur<'_>, &str) -> Result<()>) -> Result<()> {
    loop {
        c.skip_ws();
        if c.eat(")") {
            return Ok(());
        }
        let start = c.pos;
        let name = c.ident();
        if name.is_empty() {
            return Err(c.err("expected a field name or ')'"));
        }
        if c.peek() == Some('=') {
            c.pos += 1;
        } else if c.peek() != Some('(') {
            // Bare word (e.g. `commit`, `actions`): leave it to the callback with the name.
        }
        field(c, name).map_err(|e| match e {
            Error::Parse { .. } => e,
            other => Error::Parse {
                pos: start,
                near: String::new(),
                reason: other.to_string(),
            },
        })?;
        c.skip_ws();
        if c.eat(",") {
            continue;
        }
        if c.eat(")") {
            return Ok(());
        }
        return Err(c.err("expected ',' or ')'"));
    }
}

fn unknown_field(c: &Cur<'_>, attr: &str, name: &str) -> Error {
    c.err(format!("unknown field {name:?} in {attr}()"))
}

/// Flags in `+a-b` (masked) or `a|b` (exact) form, or as numbers `0x22/0x22`.
fn flags(
    c: &mut Cur<'_>,
    names: fn(u32) -> Option<&'static str>,
    all: u32,
    max_bits: u32,
) -> Result<(u32, u32)> {
    let r = c.rest();
    let end = r.find(')').unwrap_or(r.len());
    let body = r[..end].trim();
    let lookup = |n: &str| -> Option<u32> {
        (0..max_bits)
            .map(|b| 1u32 << b)
            .find(|&bit| names(bit) == Some(n))
    };
    let out = if body.starts_with('+') || body.starts_with('-') {
        let (mut v, mut m) = (0u32, 0u32);
        let mut rest = body;
        while !rest.is_empty() {
            let plus = rest.starts_with('+');
            if !plus && !rest.starts_with('-') {
                return Err(c.err(format!("flag list {body:?}: expected '+' or '-'")));
            }
            rest = &rest[1..];
            let n = rest.find(['+', '-']).unwrap_or(rest.len());
            let name = &rest[..n];
            let bit = lookup(name).ok_or_else(|| c.err(format!("unknown flag {name:?}")))?;
            m |= bit;
            if plus {
                v |= bit;
            }
            rest = &rest[n..];
        }
        (v, m)
    } else if body.starts_with(|ch: char| ch.is_ascii_digit()) {
        let (v, m) = match body.split_once('/') {
            Some((v, m)) => (num::<u32>(c, v.trim())?, num::<u32>(c, m.trim())?),
            None => (num::<u32>(c, body)?, all),
        };
        (v, m)
    } else {
        let mut v = 0u32;
        for name in body.split('|') {
            // Bits without a name print as a hex number among the names.
            v |= match lookup(name) {
                Some(bit) => bit,
                None if name.starts_with("0x") => num::<u32>(c, name)?,
                None => return Err(c.err(format!("unknown flag {name:?}"))),
            };
        }
        (v, all)
    };
    // Bits without a name would print as `[Unknown]` in a masked list, which cannot be read
    // back; the kernel refuses them anyway.
    let known = if max_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << max_bits) - 1
    };
    if out.0 & !known != 0 || (out.1 != all && out.1 & !known != 0) {
        return Err(c.err(format!(
            "flags {body:?} set bits beyond the {max_bits} defined ones"
        )));
    }
    c.pos += end;
    c.expect(")")?;
    Ok(out)
}

// ---- key attributes ----

fn parse_eth(c: &mut Cur<'_>) -> Result<(KeyEthernet, KeyEthernet)> {
    let (mut k, mut m) = (KeyEthernet::default(), KeyEthernet::default());
    fields(c, |c, n| {
        let (v, mm) = vm(c, [0xff; 6], mac)?;
        match n {
            "src" => (k.src, m.src) = (v, mm),
            "dst" => (k.dst, m.dst) = (v, mm),
            _ => return Err(unknown_field(c, "eth", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_ipv4(c: &mut Cur<'_>) -> Result<(KeyIpv4, KeyIpv4)> {
    let (mut k, mut m) = (KeyIpv4::default(), KeyIpv4::default());
    fields(c, |c, n| {
        match n {
            "src" => (k.src, m.src) = vm(c, Ipv4Addr::BROADCAST, ip4)?,
            "dst" => (k.dst, m.dst) = vm(c, Ipv4Addr::BROADCAST, ip4)?,
            "proto" => (k.proto, m.proto) = vm(c, u8::MAX, num)?,
            "tos" => (k.tos, m.tos) = vm(c, u8::MAX, num)?,
            "ttl" => (k.ttl, m.ttl) = vm(c, u8::MAX, num)?,
            "frag" => (k.frag, m.frag) = vm(c, u8::MAX, frag_or_num)?,
            _ => return Err(unknown_field(c, "ipv4", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn frag_or_num(c: &Cur<'_>, t: &str) -> Result<u8> {
    if t.starts_with(|ch: char| ch.is_ascii_digit()) {
        num(c, t)
    } else {
        frag(c, t)
    }
}

fn parse_ipv6(c: &mut Cur<'_>) -> Result<(KeyIpv6, KeyIpv6)> {
    let (mut k, mut m) = (KeyIpv6::default(), KeyIpv6::default());
    let ones = Ipv6Addr::from(u128::MAX);
    fields(c, |c, n| {
        match n {
            "src" => (k.src, m.src) = vm(c, ones, ip6)?,
            "dst" => (k.dst, m.dst) = vm(c, ones, ip6)?,
            "label" => (k.label, m.label) = vm(c, 0x000f_ffff, num)?,
            "proto" => (k.proto, m.proto) = vm(c, u8::MAX, num)?,
            "tclass" => (k.tclass, m.tclass) = vm(c, u8::MAX, num)?,
            "hlimit" => (k.hlimit, m.hlimit) = vm(c, u8::MAX, num)?,
            "frag" => (k.frag, m.frag) = vm(c, u8::MAX, frag_or_num)?,
            _ => return Err(unknown_field(c, "ipv6", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_ports(c: &mut Cur<'_>, attr: &str) -> Result<(KeyPorts, KeyPorts)> {
    let (mut k, mut m) = (KeyPorts::default(), KeyPorts::default());
    fields(c, |c, n| {
        match n {
            "src" => (k.src, m.src) = vm(c, u16::MAX, num)?,
            "dst" => (k.dst, m.dst) = vm(c, u16::MAX, num)?,
            _ => return Err(unknown_field(c, attr, n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_icmp(c: &mut Cur<'_>, attr: &str) -> Result<(KeyIcmp, KeyIcmp)> {
    let (mut k, mut m) = (KeyIcmp::default(), KeyIcmp::default());
    fields(c, |c, n| {
        match n {
            "type" => (k.icmp_type, m.icmp_type) = vm(c, u8::MAX, num)?,
            "code" => (k.code, m.code) = vm(c, u8::MAX, num)?,
            _ => return Err(unknown_field(c, attr, n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_arp(c: &mut Cur<'_>) -> Result<(KeyArp, KeyArp)> {
    let (mut k, mut m) = (KeyArp::default(), KeyArp::default());
    fields(c, |c, n| {
        match n {
            "sip" => (k.sip, m.sip) = vm(c, Ipv4Addr::BROADCAST, ip4)?,
            "tip" => (k.tip, m.tip) = vm(c, Ipv4Addr::BROADCAST, ip4)?,
            "op" => (k.op, m.op) = vm(c, u16::MAX, num)?,
            "sha" => (k.sha, m.sha) = vm(c, [0xff; 6], mac)?,
            "tha" => (k.tha, m.tha) = vm(c, [0xff; 6], mac)?,
            _ => return Err(unknown_field(c, "arp", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_nd(c: &mut Cur<'_>) -> Result<(KeyNd, KeyNd)> {
    let (mut k, mut m) = (KeyNd::default(), KeyNd::default());
    fields(c, |c, n| {
        match n {
            "target" => (k.target, m.target) = vm(c, Ipv6Addr::from(u128::MAX), ip6)?,
            "sll" => (k.sll, m.sll) = vm(c, [0xff; 6], mac)?,
            "tll" => (k.tll, m.tll) = vm(c, [0xff; 6], mac)?,
            _ => return Err(unknown_field(c, "nd", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_tuple4(c: &mut Cur<'_>) -> Result<(CtTupleIpv4, CtTupleIpv4)> {
    let (mut k, mut m) = (CtTupleIpv4::default(), CtTupleIpv4::default());
    fields(c, |c, n| {
        match n {
            "src" => (k.src, m.src) = vm(c, Ipv4Addr::BROADCAST, ip4)?,
            "dst" => (k.dst, m.dst) = vm(c, Ipv4Addr::BROADCAST, ip4)?,
            "proto" => (k.proto, m.proto) = vm(c, u8::MAX, num)?,
            "tp_src" => (k.src_port, m.src_port) = vm(c, u16::MAX, num)?,
            "tp_dst" => (k.dst_port, m.dst_port) = vm(c, u16::MAX, num)?,
            _ => return Err(unknown_field(c, "ct_tuple4", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_tuple6(c: &mut Cur<'_>) -> Result<(CtTupleIpv6, CtTupleIpv6)> {
    let (mut k, mut m) = (CtTupleIpv6::default(), CtTupleIpv6::default());
    let ones = Ipv6Addr::from(u128::MAX);
    fields(c, |c, n| {
        match n {
            "src" => (k.src, m.src) = vm(c, ones, ip6)?,
            "dst" => (k.dst, m.dst) = vm(c, ones, ip6)?,
            "proto" => (k.proto, m.proto) = vm(c, u8::MAX, num)?,
            "src_port" => (k.src_port, m.src_port) = vm(c, u16::MAX, num)?,
            "dst_port" => (k.dst_port, m.dst_port) = vm(c, u16::MAX, num)?,
            _ => return Err(unknown_field(c, "ct_tuple6", n)),
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn hex_bytes(c: &Cur<'_>, t: &str, len: usize) -> Result<Vec<u8>> {
    // `0x` followed by hex digits; leading zero bytes may be omitted (OVS ds_put_hex).
    let h = t
        .strip_prefix("0x")
        .ok_or_else(|| c.err(format!("{t:?} is not 0x-prefixed hex")))?;
    if h.len() > len * 2 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(c.err(format!("{t:?} is not {len} bytes of hex")));
    }
    let padded = format!("{h:0>width$}", width = len * 2);
    (0..len)
        .map(|i| {
            u8::from_str_radix(&padded[2 * i..2 * i + 2], 16)
                .map_err(|_| c.err(format!("{t:?} is not hex")))
        })
        .collect()
}

/// `geneve({class=0x..,type=0x..,len=N,0x<data>[/0x<mask>]}...)`.
fn parse_geneve(c: &mut Cur<'_>) -> Result<(GeneveOpts, GeneveOpts)> {
    let (mut kb, mut mb) = (Vec::new(), Vec::new());
    loop {
        c.skip_ws();
        if c.eat(")") {
            break;
        }
        c.expect("{")?;
        let (mut class, mut mclass) = (0u16, 0u16);
        let (mut typ, mut mtyp) = (0u8, 0u8);
        let (mut len, mut mlen) = (0u8, 0u8);
        let mut data: Option<(Vec<u8>, Vec<u8>)> = None;
        loop {
            c.skip_ws();
            if c.eat("}") {
                break;
            }
            if c.rest().starts_with("0x") {
                let r = c.rest();
                let n = r.find([',', '}', '/']).unwrap_or(r.len());
                let v = &r[..n];
                c.pos += n;
                let dl = usize::from(len);
                let vb = hex_bytes(c, v, dl)?;
                let mbytes = if c.eat("/") {
                    let r = c.rest();
                    let n = r.find([',', '}']).unwrap_or(r.len());
                    let m = &r[..n];
                    c.pos += n;
                    hex_bytes(c, m, dl)?
                } else {
                    vec![0xff; dl]
                };
                data = Some((vb, mbytes));
            } else {
                let name = c.ident();
                c.expect("=")?;
                let r = c.rest();
                let n = r.find([',', '}']).unwrap_or(r.len());
                let tok = &r[..n];
                c.pos += n;
                let (v, m) = match tok.split_once('/') {
                    Some((v, m)) => (num_u64(c, v)?, Some(num_u64(c, m)?)),
                    None => (num_u64(c, tok)?, None),
                };
                match name {
                    "class" => {
                        class = v as u16;
                        mclass = m.map_or(u16::MAX, |m| m as u16);
                    }
                    "type" => {
                        typ = v as u8;
                        mtyp = m.map_or(u8::MAX, |m| m as u8);
                    }
                    "len" => {
                        if !v.is_multiple_of(4) || v > 124 {
                            return Err(c.err(format!(
                                "geneve option len {v} is not a multiple of 4 up to 124"
                            )));
                        }
                        len = v as u8;
                        mlen = m.map_or(u8::MAX, |m| m as u8);
                    }
                    _ => return Err(c.err(format!("unknown geneve option field {name:?}"))),
                }
            }
            c.skip_ws();
            c.eat(",");
        }
        kb.extend_from_slice(&class.to_be_bytes());
        kb.push(typ);
        kb.push(len / 4);
        mb.extend_from_slice(&mclass.to_be_bytes());
        mb.push(mtyp);
        mb.push(if mlen == u8::MAX { 0x1f } else { mlen });
        let (d, md) =
            data.unwrap_or_else(|| (vec![0; usize::from(len)], vec![0; usize::from(len)]));
        kb.extend_from_slice(&d);
        mb.extend_from_slice(&md);
    }
    let k = GeneveOpts::new(&kb).ok_or_else(|| c.err("geneve options longer than 252 bytes"))?;
    let m = GeneveOpts::new(&mb).ok_or_else(|| c.err("geneve options longer than 252 bytes"))?;
    Ok((k, m))
}

fn parse_tunnel(c: &mut Cur<'_>) -> Result<(TunnelKey, TunnelKey)> {
    let (mut k, mut m) = (TunnelKey::default(), TunnelKey::default());
    fields(c, |c, n| {
        match n {
            "tun_id" => {
                let (v, mm) = vm(c, u64::MAX, num)?;
                (k.tun_id, m.tun_id) = (Some(v), Some(mm));
            }
            "src" => {
                let (v, mm) = vm(c, Ipv4Addr::BROADCAST, ip4)?;
                (k.ipv4_src, m.ipv4_src) = (Some(v), Some(mm));
            }
            "dst" => {
                let (v, mm) = vm(c, Ipv4Addr::BROADCAST, ip4)?;
                (k.ipv4_dst, m.ipv4_dst) = (Some(v), Some(mm));
            }
            "ipv6_src" => {
                let (v, mm) = vm(c, Ipv6Addr::from(u128::MAX), ip6)?;
                (k.ipv6_src, m.ipv6_src) = (Some(v), Some(mm));
            }
            "ipv6_dst" => {
                let (v, mm) = vm(c, Ipv6Addr::from(u128::MAX), ip6)?;
                (k.ipv6_dst, m.ipv6_dst) = (Some(v), Some(mm));
            }
            "tos" => {
                let (v, mm) = vm(c, u8::MAX, num)?;
                (k.tos, m.tos) = (Some(v), Some(mm));
            }
            "ttl" => {
                let (v, mm) = vm(c, u8::MAX, num)?;
                (k.ttl, m.ttl) = (Some(v), Some(mm));
            }
            "tp_src" => {
                let (v, mm) = vm(c, u16::MAX, num)?;
                (k.tp_src, m.tp_src) = (Some(v), Some(mm));
            }
            "tp_dst" => {
                let (v, mm) = vm(c, u16::MAX, num)?;
                (k.tp_dst, m.tp_dst) = (Some(v), Some(mm));
            }
            "geneve" => {
                c.expect("(")?;
                let (g, gm) = parse_geneve(c)?;
                (k.geneve, m.geneve) = (Some(Box::new(g)), Some(Box::new(gm)));
            }
            "flags" => {
                c.expect("(")?;
                let (v, mm) = flags(c, tun_flag_name, 0xf, 4)?;
                k.df = v & TUN_F_DF != 0;
                k.csum = v & TUN_F_CSUM != 0;
                k.oam = v & TUN_F_OAM != 0;
                m.df = mm & TUN_F_DF != 0;
                m.csum = mm & TUN_F_CSUM != 0;
                m.oam = mm & TUN_F_OAM != 0;
                let _ = TUN_F_KEY; // "key" follows from tun_id being present.
            }
            _ => {
                // A tunnel attribute odp does not model prints as `keyN(hex bytes)`.
                let Some(kind) = n.strip_prefix("key").and_then(|x| x.parse::<u16>().ok()) else {
                    return Err(unknown_field(c, "tunnel", n));
                };
                c.expect("(")?;
                let (v, mm) = generic_hex(c)?;
                c.expect(")")?;
                m.other.push(RawAttr {
                    kind,
                    data: mm.unwrap_or_else(|| vec![0xff; v.len()]),
                });
                k.other.push(RawAttr { kind, data: v });
            }
        }
        Ok(())
    })?;
    Ok((k, m))
}

fn parse_vlan_tci(c: &mut Cur<'_>) -> Result<(u16, u16)> {
    let (mut tci, mut mask) = (0u16, 0u16);
    let mut cfi_given = false;
    fields(c, |c, n| {
        match n {
            "vid" => {
                let (v, m): (u16, u16) = vm(c, 0x0fff, num)?;
                if v > 0x0fff {
                    return Err(c.err(format!("vid {v} is over 4095")));
                }
                tci |= v;
                mask |= m & 0x0fff;
            }
            "pcp" => {
                let (v, m): (u16, u16) = vm(c, 7, num)?;
                if v > 7 {
                    return Err(c.err(format!("pcp {v} is over 7")));
                }
                tci |= v << 13;
                mask |= (m & 7) << 13;
            }
            "cfi" => {
                let (v, m): (u16, u16) = vm(c, 1, num)?;
                cfi_given = true;
                if v != 0 {
                    tci |= VLAN_CFI;
                }
                if m != 0 {
                    mask |= VLAN_CFI;
                }
            }
            "tpid" => return Err(c.err("tpid is only valid in push_vlan()")),
            _ => return Err(unknown_field(c, "vlan", n)),
        }
        Ok(())
    })?;
    if !cfi_given {
        tci |= VLAN_CFI;
        mask |= VLAN_CFI;
    }
    Ok((tci, mask))
}

fn scalar<T: TryFrom<u64> + Copy>(c: &mut Cur<'_>, ones: T) -> Result<(T, T)> {
    let r = vm(c, ones, num)?;
    c.expect(")")?;
    Ok(r)
}

fn set_twice(c: &Cur<'_>, name: &str) -> Error {
    c.err(format!("{name}() appears twice"))
}

/// Parses one `name(...)` key attribute into key and mask. `c` is just past the `(`.
fn parse_key_attr(
    c: &mut Cur<'_>,
    name: &str,
    k: &mut FlowKey,
    m: &mut FlowMask,
    depth: usize,
) -> Result<()> {
    macro_rules! put {
        ($field:ident, $pair:expr) => {{
            if k.$field.is_some() {
                return Err(set_twice(c, name));
            }
            let (kv, mv) = $pair;
            k.$field = Some(kv);
            m.$field = Some(mv);
        }};
    }
    match name {
        "recirc_id" => put!(recirc_id, scalar(c, u32::MAX)?),
        "dp_hash" => put!(dp_hash, scalar(c, u32::MAX)?),
        "skb_priority" => put!(priority, scalar(c, u32::MAX)?),
        "in_port" => put!(in_port, scalar(c, u32::MAX)?),
        "skb_mark" => put!(skb_mark, scalar(c, u32::MAX)?),
        "ct_zone" => put!(ct_zone, scalar(c, u16::MAX)?),
        "ct_mark" => put!(ct_mark, scalar(c, u32::MAX)?),
        "ct_label" => {
            let (v, mm) = c.token_mask();
            let v = u128_hex(c, v)?;
            let mm = match mm {
                Some(x) => u128_hex(c, x)?,
                None => u128::MAX,
            };
            c.expect(")")?;
            put!(ct_label, (v, mm));
        }
        "ct_state" => put!(ct_state, flags(c, ct_state_name, u32::MAX, 8)?),
        "tcp_flags" => {
            let (v, mm) = flags(c, tcp_flag_name, u32::from(u16::MAX), 12)?;
            put!(tcp_flags, (v as u16, mm as u16));
        }
        "eth_type" => {
            let (v, mm) = c.token_mask();
            let v: u16 = num(c, v)?;
            let mm: u16 = match mm {
                Some(x) => num(c, x)?,
                None => u16::MAX,
            };
            c.expect(")")?;
            put!(eth_type, (v, mm));
        }
        "eth" => put!(eth, parse_eth(c)?),
        "vlan" => put!(vlan, parse_vlan_tci(c)?),
        "encap" => {
            if depth >= MAX_DEPTH {
                return Err(c.err("encap() nested too deep"));
            }
            let (ek, em) = parse_key_list(c, depth + 1, true)?;
            c.expect(")")?;
            if k.encap.is_some() {
                return Err(set_twice(c, name));
            }
            k.encap = Some(Box::new(ek));
            m.encap = Some(Box::new(em));
        }
        "ipv4" => put!(ipv4, parse_ipv4(c)?),
        "ipv6" => put!(ipv6, parse_ipv6(c)?),
        "arp" => put!(arp, parse_arp(c)?),
        "tcp" => put!(tcp, parse_ports(c, "tcp")?),
        "udp" => put!(udp, parse_ports(c, "udp")?),
        "sctp" => put!(sctp, parse_ports(c, "sctp")?),
        "icmp" => put!(icmp, parse_icmp(c, "icmp")?),
        "icmpv6" => put!(icmpv6, parse_icmp(c, "icmpv6")?),
        "nd" => put!(nd, parse_nd(c)?),
        "ct_tuple4" => put!(ct_tuple4, parse_tuple4(c)?),
        "ct_tuple6" => put!(ct_tuple6, parse_tuple6(c)?),
        "tunnel" => put!(tunnel, parse_tunnel(c)?),
        _ => {
            let Some(n) = name.strip_prefix("key").and_then(|x| x.parse::<u16>().ok()) else {
                return Err(c.err(format!("unknown key attribute {name:?}")));
            };
            let (v, mm) = generic_hex(c)?;
            c.expect(")")?;
            if n == crate::nla::key::IPV6_EXTHDRS {
                let two = |b: &[u8]| -> Result<u16> {
                    <[u8; 2]>::try_from(b)
                        .map(u16::from_ne_bytes)
                        .map_err(|_| c.err("key32() (IPv6 extension headers) takes 2 bytes"))
                };
                let kv = two(&v)?;
                let mv = match &mm {
                    Some(m) => two(m)?,
                    None => u16::MAX,
                };
                put!(ipv6_exthdrs, (kv, mv));
                return Ok(());
            }
            k.other.push(RawAttr {
                kind: n,
                data: v.clone(),
            });
            m.other.push(RawAttr {
                kind: n,
                data: mm.unwrap_or_else(|| vec![0xff; v.len()]),
            });
        }
    }
    Ok(())
}

/// `aa bb cc[/dd ee ff]`: the generic hex form of an unknown attribute.
fn generic_hex(c: &mut Cur<'_>) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let r = c.rest();
    let n = r.find(')').unwrap_or(r.len());
    let body = &r[..n];
    c.pos += n;
    let bytes = |s: &str| -> Result<Vec<u8>> {
        s.split_whitespace()
            .map(|b| {
                u8::from_str_radix(b, 16).map_err(|_| c.err(format!("{b:?} is not a hex byte")))
            })
            .collect()
    };
    match body.split_once('/') {
        Some((v, m)) => Ok((bytes(v)?, Some(bytes(m)?))),
        None => Ok((bytes(body)?, None)),
    }
}

/// Parses `attr(...),attr(...)...` until the end, a `)` (when `nested`) or a `, ` that starts
/// the stats/actions part.
fn parse_key_list(c: &mut Cur<'_>, depth: usize, nested: bool) -> Result<(FlowKey, FlowMask)> {
    let (mut k, mut m) = (FlowKey::default(), FlowKey::default());
    c.skip_ws();
    // `<empty>` is how an empty key prints; a key whose attributes are all wildcarded prints
    // as nothing at all before `, packets:`.
    if c.eat("<empty>") || (!nested && c.peek() == Some(',')) {
        return Ok((k, m));
    }
    loop {
        c.skip_ws();
        if c.at_end() || (nested && c.peek() == Some(')')) {
            break;
        }
        let name = c.ident();
        if name.is_empty() {
            return Err(c.err("expected a key attribute name"));
        }
        c.expect("(")?;
        parse_key_attr(c, name, &mut k, &mut m, depth)?;
        // A comma followed by whitespace ends the match part (", packets:" / ", actions:").
        if c.rest().starts_with(", ") || c.rest().starts_with(",\t") {
            break;
        }
        if !c.eat(",") {
            break;
        }
    }
    Ok((k, m))
}

/// Parses a match in `ovs-dpctl` syntax (`in_port(1),eth(),eth_type(0x0800),...`) into a
/// key and its mask.
pub fn parse_match(s: &str) -> Result<(FlowKey, FlowMask)> {
    let mut c = Cur::new(s);
    let r = parse_key_list(&mut c, 0, false)?;
    c.skip_ws();
    if !c.at_end() {
        return Err(c.err("unexpected text after the match"));
    }
    Ok(r)
}

// ---- actions ----

fn parse_set(c: &mut Cur<'_>) -> Result<Action> {
    let name = c.ident();
    c.expect("(")?;
    // A set whose every field is given without a mask is a plain `set`; otherwise it is
    // `set_masked` with the given fields' masks (the rule OVS's parser follows, except that
    // a tunnel is always a plain set since the kernel has no masked tunnel set).
    let (k, m, full): (SetKey, SetKey, bool) = match name {
        "eth" => {
            let (k, m) = parse_eth(c)?;
            let full = m
                == KeyEthernet {
                    src: [0xff; 6],
                    dst: [0xff; 6],
                };
            (SetKey::Ethernet(k), SetKey::Ethernet(m), full)
        }
        "ipv4" => {
            let (k, m) = parse_ipv4(c)?;
            let full = m
                == KeyIpv4 {
                    src: Ipv4Addr::BROADCAST,
                    dst: Ipv4Addr::BROADCAST,
                    proto: 0xff,
                    tos: 0xff,
                    ttl: 0xff,
                    frag: 0xff,
                };
            (SetKey::Ipv4(k), SetKey::Ipv4(m), full)
        }
        "ipv6" => {
            let (k, m) = parse_ipv6(c)?;
            let ones = Ipv6Addr::from(u128::MAX);
            let full = m
                == KeyIpv6 {
                    src: ones,
                    dst: ones,
                    label: 0xfffff,
                    proto: 0xff,
                    tclass: 0xff,
                    hlimit: 0xff,
                    frag: 0xff,
                };
            (SetKey::Ipv6(k), SetKey::Ipv6(m), full)
        }
        "tcp" | "udp" | "sctp" => {
            let (k, m) = parse_ports(c, name)?;
            let full = m
                == KeyPorts {
                    src: 0xffff,
                    dst: 0xffff,
                };
            let wrap = match name {
                "tcp" => SetKey::Tcp,
                "udp" => SetKey::Udp,
                _ => SetKey::Sctp,
            };
            (wrap(k), wrap(m), full)
        }
        "skb_priority" => {
            let (v, mm) = scalar(c, u32::MAX)?;
            (SetKey::Priority(v), SetKey::Priority(mm), mm == u32::MAX)
        }
        "skb_mark" => {
            let (v, mm) = scalar(c, u32::MAX)?;
            (SetKey::SkbMark(v), SetKey::SkbMark(mm), mm == u32::MAX)
        }
        "tunnel" => {
            let (k, _) = parse_tunnel(c)?;
            (
                SetKey::Tunnel(k),
                SetKey::Tunnel(TunnelKey::default()),
                true,
            )
        }
        _ => {
            let Some(n) = name.strip_prefix("key").and_then(|x| x.parse::<u16>().ok()) else {
                return Err(c.err(format!("cannot set {name:?}")));
            };
            let (v, mm) = generic_hex(c)?;
            c.expect(")")?;
            let full = mm.is_none();
            let mm = mm.unwrap_or_else(|| vec![0xff; v.len()]);
            (
                SetKey::Other(RawAttr { kind: n, data: v }),
                SetKey::Other(RawAttr { kind: n, data: mm }),
                full,
            )
        }
    };
    c.expect(")")?;
    Ok(if full {
        Action::Set(k)
    } else {
        Action::SetMasked(k, m)
    })
}

/// The shortest userdata `ovs-dpctl` sends; shorter text is padded with zeros.
const USERDATA_MIN: usize = 8;

fn parse_userspace(c: &mut Cur<'_>) -> Result<Action> {
    let mut u = Userspace::default();
    let mut pid = None;
    fields(c, |c, n| {
        match n {
            "pid" => pid = Some(tok_num::<u32>(c)?),
            "userdata" => {
                c.expect("(")?;
                let r = c.rest();
                let end = r
                    .find(')')
                    .ok_or_else(|| c.err("userdata( is not closed"))?;
                let h = &r[..end];
                if !h.len().is_multiple_of(2) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(c.err("userdata() needs an even number of hex digits"));
                }
                let mut v = Vec::with_capacity(h.len() / 2);
                for i in (0..h.len()).step_by(2) {
                    v.push(
                        u8::from_str_radix(&h[i..i + 2], 16)
                            .map_err(|_| c.err(format!("{h:?} is not hex")))?,
                    );
                }
                c.pos += end + 1;
                // As ovs-dpctl sends it: OVS pads userdata with zeros to at least 8 bytes
                // (kernels before 3.10 wanted exactly 8), and the kernel dumps what it got.
                if v.len() < USERDATA_MIN {
                    v.resize(USERDATA_MIN, 0);
                }
                u.userdata = Some(v);
            }
            "actions" => u.actions = true,
            "tunnel_out_port" => u.egress_tun_port = Some(tok_num::<u32>(c)?),
            _ => return Err(unknown_field(c, "userspace", n)),
        }
        Ok(())
    })?;
    u.pid = pid.ok_or_else(|| c.err("userspace() needs pid="))?;
    Ok(Action::Userspace(u))
}

impl<'a> Cur<'a> {
    /// Reads a token (helper for closures that hold `&mut Cur`).
    fn clone_token(&mut self) -> &'a str {
        self.token()
    }
}

fn tok_num<T: TryFrom<u64>>(c: &mut Cur<'_>) -> Result<T> {
    let t = c.token();
    num(c, t)
}

fn nat_ip(c: &Cur<'_>, t: &str) -> Result<IpAddr> {
    let t = t.trim_start_matches('[').trim_end_matches(']');
    t.parse()
        .map_err(|_| c.err(format!("{t:?} is not an IP address")))
}

fn parse_nat(c: &mut Cur<'_>) -> Result<Nat> {
    let mut n = Nat::default();
    if !c.eat("(") {
        return Ok(n);
    }
    loop {
        c.skip_ws();
        if c.eat(")") {
            break;
        }
        let word = c.ident();
        match word {
            "src" | "dst" => {
                if n.kind.is_some() {
                    return Err(c.err("nat() takes one of src and dst"));
                }
                n.kind = Some(if word == "src" {
                    NatKind::Src
                } else {
                    NatKind::Dst
                });
                if c.eat("=") {
                    let r = c.rest();
                    let end = r.find([',', ')']).unwrap_or(r.len());
                    let spec = &r[..end];
                    parse_nat_range(c, spec, &mut n)?;
                    c.pos += end;
                }
            }
            "persistent" => n.persistent = true,
            "hash" => n.hash = true,
            "random" => n.random = true,
            _ => return Err(c.err(format!("unknown nat() option {word:?}"))),
        }
        c.skip_ws();
        if !c.eat(",") {
            c.expect(")")?;
            break;
        }
    }
    Ok(n)
}

/// `ip[-ip][:port[-port]]`, IPv6 addresses in brackets when a port follows.
fn parse_nat_range(c: &Cur<'_>, spec: &str, n: &mut Nat) -> Result<()> {
    let (addrs, ports) = if let Some(rest) = spec.strip_prefix('[') {
        // [a]-[b]:p-q or [a]:p
        let close = rest
            .rfind(']')
            .ok_or_else(|| c.err("unclosed '[' in nat()"))?;
        let a = &spec[..close + 2];
        let after = &spec[close + 2..];
        (a, after.strip_prefix(':'))
    } else if spec.matches(':').count() >= 2 {
        (spec, None) // bare IPv6, no port
    } else {
        match spec.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (spec, None),
        }
    };
    let (min, max) = match addrs.split_once("]-[") {
        Some((a, b)) => (a, Some(b)),
        None if !addrs.starts_with('[') && !addrs.contains(':') => match addrs.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (addrs, None),
        },
        None if !addrs.starts_with('[') => match addrs.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (addrs, None),
        },
        None => (addrs, None),
    };
    let ip_min = nat_ip(c, min)?;
    n.ip_min = Some(ip_min);
    if let Some(max) = max {
        let ip_max = nat_ip(c, max)?;
        if ip_min.is_ipv4() != ip_max.is_ipv4() {
            return Err(c.err("nat() address range mixes IPv4 and IPv6"));
        }
        n.ip_max = Some(ip_max);
    }
    if let Some(p) = ports {
        let (a, b) = match p.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (p, None),
        };
        n.proto_min = Some(num(c, a)?);
        if let Some(b) = b {
            n.proto_max = Some(num(c, b)?);
        }
    }
    Ok(())
}

fn parse_ct(c: &mut Cur<'_>) -> Result<Action> {
    let mut ct = Ct::default();
    if !c.eat("(") {
        return Ok(Action::Ct(ct));
    }
    fields(c, |c, n| {
        match n {
            "commit" => ct.commit = true,
            "force_commit" => ct.force_commit = true,
            "zone" => ct.zone = Some(tok_num(c)?),
            "mark" => ct.mark = Some(vm(c, u32::MAX, num)?),
            "label" => {
                let (v, m) = c.token_mask();
                let v = u128_hex(c, v)?;
                let m = match m {
                    Some(m) => u128_hex(c, m)?,
                    None => u128::MAX,
                };
                ct.labels = Some(Box::new((v, m)));
            }
            "helper" => ct.helper = Some(c.clone_token().to_owned()),
            "timeout" => ct.timeout = Some(c.clone_token().to_owned()),
            "nat" => ct.nat = Some(parse_nat(c)?),
            _ => return Err(unknown_field(c, "ct", n)),
        }
        Ok(())
    })?;
    Ok(Action::Ct(ct))
}

fn parse_action(c: &mut Cur<'_>, depth: usize) -> Result<Action> {
    if depth > MAX_DEPTH {
        return Err(c.err("actions nested too deep"));
    }
    c.skip_ws();
    if c.peek().is_some_and(|ch| ch.is_ascii_digit()) {
        let t = c.token();
        return Ok(Action::Output(num(c, t)?));
    }
    let name = c.ident();
    Ok(match name {
        "userspace" => {
            c.expect("(")?;
            parse_userspace(c)?
        }
        "set" => {
            c.expect("(")?;
            parse_set(c)?
        }
        "push_vlan" => {
            c.expect("(")?;
            let mut tpid = ETH_P_8021Q;
            let mut rest_start = c.pos;
            if c.eat("tpid=") {
                let t = c.token();
                tpid = num(c, t)?;
                c.expect(",")?;
                rest_start = c.pos;
            }
            c.pos = rest_start;
            let (tci, _) = parse_vlan_tci(c)?;
            Action::PushVlan { tpid, tci }
        }
        "pop_vlan" => Action::PopVlan,
        "recirc" => {
            c.expect("(")?;
            let t = c.token();
            let v = num(c, t)?;
            c.expect(")")?;
            Action::Recirc(v)
        }
        "hash" => {
            c.expect("(")?;
            let alg = match c.ident() {
                "l4" => HASH_ALG_L4,
                "sym_l4" => HASH_ALG_SYM_L4,
                other => return Err(c.err(format!("unknown hash algorithm {other:?}"))),
            };
            c.expect("(")?;
            let t = c.token();
            let basis = num(c, t)?;
            c.expect(")")?;
            c.expect(")")?;
            Action::Hash { alg, basis }
        }
        "ct" => parse_ct(c)?,
        "ct_clear" => Action::CtClear,
        "trunc" => {
            c.expect("(")?;
            let t = c.token();
            let v = num(c, t)?;
            c.expect(")")?;
            Action::Trunc(v)
        }
        "meter" => {
            c.expect("(")?;
            let t = c.token();
            let v = num(c, t)?;
            c.expect(")")?;
            Action::Meter(v)
        }
        "sample" => {
            c.expect("(sample=")?;
            let r = c.rest();
            let end = r
                .find('%')
                .ok_or_else(|| c.err("sample= needs a percentage"))?;
            let pct: f64 = r[..end]
                .trim()
                .parse()
                .map_err(|_| c.err("sample= is not a number"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(c.err("sample= is not between 0 and 100"));
            }
            c.pos += end + 1;
            c.expect(",actions(")?;
            let actions = parse_action_list(c, depth + 1)?;
            c.expect(")")?;
            c.expect(")")?;
            let p = (f64::from(u32::MAX) * (pct / 100.0) + 0.5).floor();
            let probability = if p <= 0.0 {
                0
            } else if p >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                p as u32
            };
            Action::Sample {
                probability,
                actions,
            }
        }
        "clone" => {
            c.expect("(")?;
            let acts = parse_action_list(c, depth + 1)?;
            c.expect(")")?;
            Action::Clone(acts)
        }
        "check_pkt_len" => {
            c.expect("(size=")?;
            let t = c.token();
            let len = num(c, t)?;
            c.expect(",gt(")?;
            let greater = parse_action_list(c, depth + 1)?;
            c.expect("),le(")?;
            let less_equal = parse_action_list(c, depth + 1)?;
            c.expect("))")?;
            Action::CheckPktLen {
                len,
                greater,
                less_equal,
            }
        }
        _ => {
            let Some(n) = name
                .strip_prefix("action")
                .and_then(|x| x.parse::<u16>().ok())
            else {
                return Err(c.err(format!("unknown action {name:?}")));
            };
            let data = if c.eat("(") {
                let (v, _) = generic_hex(c)?;
                c.expect(")")?;
                v
            } else {
                Vec::new()
            };
            Action::Other(n, data)
        }
    })
}

/// A comma-separated action list up to `)` or the end; `drop` alone is the empty list.
fn parse_action_list(c: &mut Cur<'_>, depth: usize) -> Result<Vec<Action>> {
    c.skip_ws();
    if c.rest().starts_with("drop") {
        let after = &c.rest()[4..];
        if after.is_empty() || after.starts_with(')') || after.trim().is_empty() {
            c.pos += 4;
            return Ok(Vec::new());
        }
    }
    let mut out = Vec::new();
    loop {
        c.skip_ws();
        if c.at_end() || c.peek() == Some(')') {
            break;
        }
        out.push(parse_action(c, depth)?);
        c.skip_ws();
        if !c.eat(",") {
            break;
        }
    }
    Ok(out)
}

/// Parses actions in `ovs-dpctl` syntax (`1,ct(commit,zone=5),recirc(0x1)`, or `drop`).
pub fn parse_actions(s: &str) -> Result<Vec<Action>> {
    let mut c = Cur::new(s);
    let acts = parse_action_list(&mut c, 0)?;
    c.skip_ws();
    if !c.at_end() {
        return Err(c.err("unexpected text after the actions"));
    }
    Ok(acts)
}

fn parse_ufid(c: &Cur<'_>, t: &str) -> Result<u128> {
    let h: String = t.chars().filter(|&ch| ch != '-').collect();
    if h.len() != 32 {
        return Err(c.err(format!("{t:?} is not a UUID")));
    }
    u128::from_str_radix(&h, 16).map_err(|_| c.err(format!("{t:?} is not a UUID")))
}

/// Parses a whole flow as `ovs-dpctl dump-flows` prints it:
/// `[ufid:<uuid>, ]<match>[, packets:N, bytes:N, used:<t>[, flags:<f>]], actions:<actions>`.
/// Also accepts `<match> <actions>` as given to `ovs-dpctl add-flow`.
pub fn parse_flow(s: &str) -> Result<Flow> {
    let mut c = Cur::new(s.trim());
    let mut flow = Flow::default();
    c.skip_ws();
    if c.eat("ufid:") {
        let r = c.rest();
        let end = r.find([',', ' ']).unwrap_or(r.len());
        flow.ufid = Some(parse_ufid(&c, &r[..end])?);
        c.pos += end;
        c.eat(",");
        c.skip_ws();
    }
    let (k, m) = parse_key_list(&mut c, 0, false)?;
    flow.key = k;
    flow.mask = m;
    let mut stats = FlowStats::default();
    loop {
        c.skip_ws();
        c.eat(",");
        c.skip_ws();
        if c.at_end() {
            return Err(c.err("expected \"actions:\""));
        }
        if c.eat("actions:") {
            let acts = parse_action_list(&mut c, 0)?;
            c.skip_ws();
            if !c.at_end() {
                return Err(c.err("unexpected text after the actions"));
            }
            flow.actions = acts;
            break;
        }
        let label = c.ident();
        if !c.eat(":") {
            // `ovs-dpctl add-flow` form: the actions follow the match after a space.
            if label.is_empty() || c.peek() == Some('(') || c.peek() == Some(',') || c.at_end() {
                c.pos -= label.len();
                let acts = parse_action_list(&mut c, 0)?;
                c.skip_ws();
                if !c.at_end() {
                    return Err(c.err("unexpected text after the actions"));
                }
                flow.actions = acts;
                break;
            }
            return Err(c.err(format!("expected ':' after {label:?}")));
        }
        let r = c.rest();
        let end = r.find(',').unwrap_or(r.len());
        let v = r[..end].trim();
        match label {
            "packets" => stats.packets = num(&c, v)?,
            "bytes" => stats.bytes = num(&c, v)?,
            "used" => {
                stats.used = if v == "never" {
                    None
                } else {
                    let secs: f64 = v
                        .trim_end_matches('s')
                        .parse()
                        .map_err(|_| c.err(format!("used:{v} is not a time")))?;
                    if !(0.0..1e12).contains(&secs) {
                        return Err(c.err(format!("used:{v} is out of range")));
                    }
                    Some(Duration::from_millis((secs * 1000.0).round() as u64))
                }
            }
            "flags" => {
                let mut f = 0u16;
                if v != "none" {
                    for ch in v.chars() {
                        f |= match ch {
                            'S' => 0x002,
                            'F' => 0x001,
                            'P' => 0x008,
                            'R' => 0x004,
                            'U' => 0x020,
                            '.' => 0x010,
                            'E' => 0x040,
                            'C' => 0x080,
                            'N' => 0x100,
                            _ => return Err(c.err(format!("unknown TCP flag {ch:?}"))),
                        };
                    }
                }
                stats.tcp_flags = f;
            }
            "dp" | "offloaded" | "dp-extra-info" => {}
            _ => return Err(c.err(format!("unknown flow field {label:?}"))),
        }
        c.pos += end;
    }
    flow.stats = stats;
    Ok(flow)
}
