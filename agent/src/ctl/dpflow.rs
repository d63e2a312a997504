//! `weftctl dp` flow commands: add-flow, mod-flow, del-flow, del-flows, dump-flows, get-flow,
//! printing flows exactly as `ovs-dpctl dump-flows` does.

use anyhow::{Context, Result, bail};
use odp::dpif::{Dpif, FlowEntry, FlowId, FlowPut, PutMode};
use odp::{Flow, FlowKey, FlowStats};

use super::dp::{DpArgs, find_dp};

/// Runs one flow command.
pub fn run(d: &mut Dpif, cmd: &str, args: &[&str], a: &DpArgs) -> Result<()> {
    match cmd {
        "dump-flows" => {
            let dp = match args {
                [] => find_dp(d, None)?,
                [dp] => find_dp(d, Some(dp))?,
                _ => bail!("usage: dump-flows [DP]"),
            };
            let flows = d
                .flow_dump(dp.ifindex)
                .with_context(|| format!("dumping the flows of {}", dp.name))?;
            let now = monotonic_ms()?;
            let mut out = String::new();
            for e in &flows {
                let f = flow_from_entry(e, now)?;
                out.push_str(&dpctl_line(e, &f, a.more));
                out.push('\n');
            }
            print!("{out}");
            Ok(())
        }
        "del-flows" => {
            let dp = match args {
                [] => find_dp(d, None)?,
                [dp] => find_dp(d, Some(dp))?,
                _ => bail!("usage: del-flows [DP]"),
            };
            d.flow_flush(dp.ifindex)
                .with_context(|| format!("deleting the flows of {}", dp.name))
        }
        "get-flow" => {
            let (dp, ufid) = match args {
                [u] => (find_dp(d, None)?, *u),
                [dp, u] => (find_dp(d, Some(dp))?, *u),
                _ => bail!("usage: get-flow [DP] ufid:UFID"),
            };
            let u = parse_ufid(ufid)?;
            let e = d
                .flow_get(dp.ifindex, &FlowId::Ufid(ufid_to_wire(u)))
                .with_context(|| format!("getting flow {ufid}"))?;
            let f = flow_from_entry(&e, monotonic_ms()?)?;
            println!("{}", dpctl_line(&e, &f, true));
            Ok(())
        }
        "add-flow" | "mod-flow" => {
            let (dp, m, acts) = match args {
                [m, acts] => (find_dp(d, None)?, *m, *acts),
                [dp, m, acts] => (find_dp(d, Some(dp))?, *m, *acts),
                _ => bail!("usage: {cmd} [DP] FLOW ACTIONS"),
            };
            let mut put = flow_put_from_text(m, acts)?;
            // As ovs-dpctl: add-flow creates only; mod-flow modifies only, or creates too
            // with --may-create; --clear resets the statistics.
            let mode = match (cmd, a.may_create) {
                ("add-flow", _) => PutMode::Create,
                (_, true) => PutMode::CreateOrModify,
                _ => PutMode::Modify,
            };
            put.clear = cmd == "mod-flow" && a.clear;
            d.flow_put(dp.ifindex, &put, mode)
                .with_context(|| format!("{cmd} {m} {acts}"))
        }
        "del-flow" => {
            let (dp, m) = match args {
                [m] => (find_dp(d, None)?, *m),
                [dp, m] => (find_dp(d, Some(dp))?, *m),
                _ => bail!("usage: del-flow [DP] FLOW"),
            };
            let id = if m.trim_start().starts_with("ufid:") {
                FlowId::Ufid(ufid_to_wire(parse_ufid(m.trim())?))
            } else {
                let (key, _) =
                    odp::parse_match(m).with_context(|| format!("parsing flow {m:?}"))?;
                let mut k = Vec::new();
                odp::encode_key(&key, &mut k).with_context(|| format!("encoding flow {m:?}"))?;
                FlowId::Key(k)
            };
            d.flow_del(dp.ifindex, &id)
                .with_context(|| format!("deleting flow {m}"))?;
            Ok(())
        }
        _ => bail!(
            "unknown command {cmd:?} (known: add-dp, del-dp, show, add-if, del-if, add-flow, mod-flow, del-flow, del-flows, dump-flows, get-flow)"
        ),
    }
}

/// Builds a flow to install from `ovs-dpctl` text: the match (optionally starting with
/// `ufid:UUID,`) and the actions.
pub fn flow_put_from_text(match_text: &str, actions_text: &str) -> Result<FlowPut> {
    let mut m = match_text.trim();
    let mut ufid = None;
    if let Some(rest) = m.strip_prefix("ufid:") {
        let end = rest.find([',', ' ']).unwrap_or(rest.len());
        ufid = Some(ufid_to_wire(parse_ufid(&rest[..end])?));
        m = rest[end..].trim_start_matches([',', ' ']);
    }
    let (key, mask) = odp::parse_match(m).with_context(|| format!("parsing flow {m:?}"))?;
    let actions = odp::parse_actions(actions_text)
        .with_context(|| format!("parsing actions {actions_text:?}"))?;
    let mut k = Vec::new();
    odp::encode_key(&key, &mut k).with_context(|| format!("encoding flow {m:?}"))?;
    let mut mk = Vec::new();
    odp::encode_key(&mask, &mut mk).with_context(|| format!("encoding the mask of {m:?}"))?;
    let mut a = Vec::new();
    odp::encode_actions(&actions, &mut a)
        .with_context(|| format!("encoding actions {actions_text:?}"))?;
    Ok(FlowPut {
        key: k,
        mask: Some(mk),
        actions: a,
        ufid,
        clear: false,
    })
}

/// Decodes a flow the kernel reported. `now_ms` is the current monotonic time in ms, to
/// turn the kernel's `used` timestamp into an age.
pub fn flow_from_entry(e: &FlowEntry, now_ms: u64) -> Result<Flow> {
    let key = odp::decode_key(&e.key).context("decoding a flow key from the kernel")?;
    let mask = match &e.mask {
        Some(m) => odp::decode_key(m).context("decoding a flow mask from the kernel")?,
        None => FlowKey::default(),
    };
    let actions =
        odp::decode_actions(&e.actions).context("decoding flow actions from the kernel")?;
    Ok(Flow {
        key,
        mask,
        actions,
        ufid: e.ufid.map(ufid_from_wire),
        stats: FlowStats::from_kernel(
            e.stats.packets,
            e.stats.bytes,
            e.stats.used_ms,
            now_ms,
            e.stats.tcp_flags,
        ),
    })
}

/// One line of `ovs-dpctl dump-flows` output (`-m` adds the UFID).
pub fn dpctl_line(e: &FlowEntry, f: &Flow, more: bool) -> String {
    let mut s = String::with_capacity(256);
    if more && let Some(u) = f.ufid {
        odp::text::format_ufid(&mut s, u);
        s.push_str(", ");
    }
    s.push_str(&match_text_in_wire_order(&e.key, f));
    s.push_str(", ");
    odp::text::format_stats(&mut s, &f.stats);
    s.push_str(", actions:");
    odp::text::format_actions(&mut s, &f.actions);
    s
}

/// The match text, with key attributes the codec does not model printed the way
/// `ovs-dpctl` prints them: `keyN(<bytes>[/<mask>])` at their place in the kernel's
/// attribute order, even when fully wildcarded. Linux 5.18+ adds such an attribute to every
/// IPv6 flow (type 32, `OVS_KEY_ATTR_IPV6_EXTHDRS`) and Debian's ovs-dpctl prints it as
/// `key32(00 00/00 00)` right after `ipv6(..)`.
pub fn match_text_in_wire_order(raw_key: &[u8], f: &Flow) -> String {
    let unknown: Vec<u16> = f.key.other.iter().map(|a| a.kind & 0x3fff).collect();
    if unknown.is_empty() {
        return f.match_text();
    }
    let (mut key, mut mask) = (f.key.clone(), f.mask.clone());
    key.other.clear();
    mask.other.clear();
    let mut known = String::new();
    odp::text::format_key(&mut known, &key, &mask);
    let mut groups: Vec<(Option<u16>, String)> = split_groups(&known)
        .into_iter()
        .map(|g| (group_kind(&g), g))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for attr in odp::sock::attrs(raw_key) {
        let Ok((kind, _)) = attr else { break };
        if unknown.contains(&kind) {
            if let Some(a) = f.key.other.iter().find(|a| a.kind & 0x3fff == kind) {
                let m = f.mask.other.iter().find(|m| m.kind & 0x3fff == kind);
                out.push(format_unknown_key(
                    kind,
                    &a.data,
                    m.map(|m| m.data.as_slice()),
                ));
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

fn format_unknown_key(kind: u16, data: &[u8], mask: Option<&[u8]>) -> String {
    let hex = |d: &[u8]| {
        d.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!("key{kind}({}", hex(data));
    if let Some(m) = mask
        && m.iter().any(|&b| b != 0xff)
    {
        s.push('/');
        s.push_str(&hex(m));
    }
    s.push(')');
    s
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
    let name = g.split('(').next().unwrap_or(g);
    Some(match name {
        "encap" => 1,
        "skb_priority" => 2,
        "in_port" => 3,
        "eth" => 4,
        "vlan" => 5,
        "eth_type" => 6,
        "ipv4" => 7,
        "ipv6" => 8,
        "tcp" => 9,
        "udp" => 10,
        "icmp" => 11,
        "icmpv6" => 12,
        "arp" => 13,
        "nd" => 14,
        "skb_mark" => 15,
        "tunnel" => 16,
        "sctp" => 17,
        "tcp_flags" => 18,
        "dp_hash" => 19,
        "recirc_id" => 20,
        "ct_state" => 22,
        "ct_zone" => 23,
        "ct_mark" => 24,
        "ct_label" => 25,
        "ct_tuple4" => 26,
        "ct_tuple6" => 27,
        _ => return None,
    })
}

/// The kernel's UFID bytes (OVS `ovs_u128`: four host-order `u32`s, most significant first
/// as printed) to the `u128` the text form uses.
pub fn ufid_from_wire(b: [u8; 16]) -> u128 {
    let w = |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    (u128::from(w(0)) << 96)
        | (u128::from(w(1)) << 64)
        | (u128::from(w(2)) << 32)
        | u128::from(w(3))
}

/// The inverse of [`ufid_from_wire`].
pub fn ufid_to_wire(u: u128) -> [u8; 16] {
    let mut b = [0u8; 16];
    for i in 0..4 {
        let w = (u >> (96 - 32 * i)) as u32;
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// Parses `ufid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (the `ufid:` prefix is optional).
pub fn parse_ufid(s: &str) -> Result<u128> {
    let h = s.strip_prefix("ufid:").unwrap_or(s);
    let hex: String = h.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("invalid UFID {s:?} (expected ufid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    }
    u128::from_str_radix(&hex, 16).with_context(|| format!("invalid UFID {s:?}"))
}

/// Milliseconds since boot, the clock the kernel stamps `OVS_FLOW_ATTR_USED` with (it uses
/// the monotonic clock, which differs from this one only by time spent suspended).
pub fn monotonic_ms() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/uptime").context("reading /proc/uptime")?;
    let secs = s.split_whitespace().next().unwrap_or_default();
    let (i, f) = secs.split_once('.').unwrap_or((secs, "0"));
    let i: u64 = i.parse().context("parsing /proc/uptime")?;
    let f: u64 = format!("{f:0<3}")[..3]
        .parse()
        .context("parsing /proc/uptime")?;
    Ok(i * 1000 + f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_attributes_print_in_wire_order_like_ovs_dpctl() {
        // in_port(1),eth(),eth_type(0x86dd),ipv6(frag=no),key32(00 00/00 00) as the kernel
        // dumps an IPv6 flow (attribute 32 between ipv6 and the end).
        let f = odp::parse_flow("in_port(1),eth(),eth_type(0x86dd),ipv6(frag=no) 2").unwrap();
        let mut key = f.key.clone();
        key.other.push(odp::RawAttr {
            kind: 32,
            data: vec![0, 0],
        });
        let mut mask = f.mask.clone();
        mask.other.push(odp::RawAttr {
            kind: 32,
            data: vec![0, 0],
        });
        let mut raw = Vec::new();
        odp::encode_key(&key, &mut raw).unwrap();
        let flow = Flow { key, mask, ..f };
        assert_eq!(
            match_text_in_wire_order(&raw, &flow),
            "in_port(1),eth(),eth_type(0x86dd),ipv6(frag=no),key32(00 00/00 00)"
        );
        assert_eq!(
            split_groups("a(1,2),b,c(d(e,f))"),
            vec!["a(1,2)", "b", "c(d(e,f))"]
        );
    }

    #[test]
    fn ufid_text_and_wire_round_trip() {
        let u = parse_ufid("ufid:12345678-9abc-def0-1122-334455667788").unwrap();
        assert_eq!(u, 0x12345678_9abc_def0_1122_334455667788);
        assert_eq!(ufid_from_wire(ufid_to_wire(u)), u);
        assert_eq!(&ufid_to_wire(u)[0..4], &0x12345678u32.to_ne_bytes());
        assert!(parse_ufid("ufid:1234").is_err());
        assert!(parse_ufid("ufid:zz345678-9abc-def0-1122-334455667788").is_err());
    }
}
