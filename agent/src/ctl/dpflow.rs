//! `weftctl dp` flow commands: add-flow, mod-flow, del-flow, del-flows, dump-flows, get-flow,
//! printing flows exactly as `ovs-dpctl dump-flows` does.

use anyhow::{Context, Result, bail};
use odp::Flow;
use odp::dpif::{Dpif, FlowEntry, FlowId, FlowPut, PutMode};

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
            let now = now_ms()?;
            let mut out = String::new();
            for e in &flows {
                let f = decode(e, now)?;
                out.push_str(&e.dump_line(&f, a.more));
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
                .flow_get(dp.ifindex, &FlowId::ufid(u))
                .with_context(|| format!("getting flow {ufid}"))?;
            let f = decode(&e, now_ms()?)?;
            println!("{}", e.dump_line(&f, true));
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
                FlowId::ufid(parse_ufid(m.trim())?)
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
        ufid = Some(parse_ufid(&rest[..end])?);
        m = rest[end..].trim_start_matches([',', ' ']);
    }
    let (key, mask) = odp::parse_match(m).with_context(|| format!("parsing flow {m:?}"))?;
    let actions = odp::parse_actions(actions_text)
        .with_context(|| format!("parsing actions {actions_text:?}"))?;
    let flow = Flow {
        key,
        mask,
        actions,
        ufid,
        ..Flow::default()
    };
    FlowPut::from_flow(&flow).with_context(|| format!("encoding flow {m:?} {actions_text:?}"))
}

/// Decodes a flow the kernel reported, at `now_ms` on the kernel's clock.
fn decode(e: &FlowEntry, now_ms: u64) -> Result<Flow> {
    e.to_flow(now_ms)
        .context("decoding a flow the kernel reported")
}

/// The kernel's clock, in milliseconds.
fn now_ms() -> Result<u64> {
    odp::dpif::monotonic_ms().context("reading the monotonic clock")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufids_parse_from_text() {
        let u = parse_ufid("ufid:12345678-9abc-def0-1122-334455667788").unwrap();
        assert_eq!(u, 0x12345678_9abc_def0_1122_334455667788);
        assert_eq!(
            parse_ufid("12345678-9abc-def0-1122-334455667788").unwrap(),
            u
        );
        assert!(parse_ufid("ufid:1234").is_err());
        assert!(parse_ufid("ufid:zz345678-9abc-def0-1122-334455667788").is_err());
    }
}
