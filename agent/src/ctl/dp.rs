//! `weftctl dp`: an `ovs-dpctl`-compatible front end to odp's datapath handle: datapaths,
//! vports and flows, in the same command syntax and with the same output text.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use odp::dpif::{DpInfo, Dpif, VportInfo, VportSpec, VportType};

/// `weftctl dp [OPTIONS] COMMAND [ARG...]`
///
/// Commands, as in `ovs-dpctl`:
///   add-dp DP [IFACE...]            del-dp DP            show [-s] [DP...]
///   add-if DP IFACE[,type=T][,dst_port=N][,port_no=N]...      del-if DP IFACE...
///   dump-flows [DP]                 del-flows [DP]
///   add-flow [DP] FLOW ACTIONS      mod-flow [DP] FLOW ACTIONS      del-flow [DP] FLOW
///   get-flow [DP] ufid:UFID
///
/// Tunnel vports (type=vxlan, type=geneve) are flow-based: the tunnel's key and remote
/// address come from each flow's set(tunnel(...)), so `remote_ip` and `key` may only be
/// `flow` when given.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DpArgs {
    /// Print statistics (show: port counters).
    #[arg(short = 's', long = "statistics")]
    pub statistics: bool,
    /// Print more detail (dump-flows: UFIDs).
    #[arg(short = 'm', long = "more")]
    pub more: bool,
    /// mod-flow: reset the flow's statistics.
    #[arg(long)]
    pub clear: bool,
    /// mod-flow: create the flow when it does not exist.
    #[arg(long = "may-create")]
    pub may_create: bool,
    /// The command (add-dp, del-dp, show, add-if, del-if, dump-flows, add-flow, mod-flow,
    /// del-flow, del-flows, get-flow).
    pub command: String,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs one `weftctl dp` command.
pub fn run(a: DpArgs) -> Result<()> {
    let mut d = Dpif::open().context("cannot open the OVS datapath netlink families")?;
    let args: Vec<&str> = a.args.iter().map(String::as_str).collect();
    match a.command.as_str() {
        "add-dp" => add_dp(&mut d, &args),
        "del-dp" => {
            let [dp] = args[..] else {
                bail!("usage: del-dp DP");
            };
            let name = dp_name(dp);
            d.dp_delete(name)
                .with_context(|| format!("deleting datapath {name}"))
        }
        "show" => show(&mut d, &args, a.statistics),
        "add-if" => add_if(&mut d, &args),
        "del-if" => del_if(&mut d, &args),
        other => super::dpflow::run(&mut d, other, &args, &a),
    }
}

/// `system@dp0` and `dp0` both name datapath `dp0`.
fn dp_name(s: &str) -> &str {
    s.strip_prefix("system@").unwrap_or(s)
}

fn add_dp(d: &mut Dpif, args: &[&str]) -> Result<()> {
    let Some((dp, ifaces)) = args.split_first() else {
        bail!("usage: add-dp DP [IFACE...]");
    };
    let name = dp_name(dp);
    let info = d
        .dp_create(name, 0)
        .with_context(|| format!("creating datapath {name}"))?;
    for i in ifaces {
        add_one_if(d, &info, i)?;
    }
    Ok(())
}

/// Finds a datapath by name, or the only one when `name` is `None`.
pub(crate) fn find_dp(d: &mut Dpif, name: Option<&str>) -> Result<DpInfo> {
    match name {
        Some(n) => {
            let n = dp_name(n);
            d.dp_get(n).with_context(|| format!("datapath {n}"))
        }
        None => {
            let mut all = d.dp_list().context("listing datapaths")?;
            match all.len() {
                1 => Ok(all.remove(0)),
                0 => bail!("no datapaths exist"),
                _ => bail!("multiple datapaths, specify one"),
            }
        }
    }
}

fn show(d: &mut Dpif, args: &[&str], stats: bool) -> Result<()> {
    let dps = if args.is_empty() {
        let mut v = d.dp_list().context("listing datapaths")?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    } else {
        args.iter()
            .map(|n| find_dp(d, Some(n)))
            .collect::<Result<Vec<_>>>()?
    };
    let mut out = String::new();
    for dp in &dps {
        let ports = d
            .vport_list(dp.ifindex)
            .with_context(|| format!("listing the ports of {}", dp.name))?;
        format_show(&mut out, dp, &ports, stats);
    }
    print!("{out}");
    Ok(())
}

/// Formats one datapath the way `ovs-dpctl show` does.
pub fn format_show(out: &mut String, dp: &DpInfo, ports: &[VportInfo], stats: bool) {
    use std::fmt::Write;
    let _ = writeln!(out, "system@{}:", dp.name);
    let s = &dp.stats;
    let _ = writeln!(
        out,
        "  lookups: hit:{} missed:{} lost:{}",
        s.hit, s.missed, s.lost
    );
    let _ = writeln!(out, "  flows: {}", s.flows);
    let m = &dp.megaflow;
    let pkts = s.hit + s.missed;
    let per = if pkts == 0 {
        0.0
    } else {
        m.mask_hit as f64 / pkts as f64
    };
    let _ = writeln!(
        out,
        "  masks: hit:{} total:{} hit/pkt:{:.2}",
        m.mask_hit, m.masks, per
    );
    if let Some(c) = dp.masks_cache_size {
        let _ = writeln!(out, "  caches:");
        let _ = writeln!(out, "    masks-cache: size:{c}");
    }
    for p in ports {
        let _ = write!(out, "  port {}: {}", p.port_no, p.name);
        match p.kind {
            VportType::Netdev => {}
            VportType::Vxlan { .. } | VportType::Geneve { .. } => {
                // As ovs-dpctl prints a tunnel vport the kernel created: it cannot read the
                // UDP port back either (`ip -d link show` does).
                let _ = write!(out, " ({}: packet_type=ptap)", p.kind.name());
            }
            k => {
                let _ = write!(out, " ({})", k.name());
            }
        }
        let _ = writeln!(out);
        if stats {
            let t = &p.stats;
            let _ = writeln!(
                out,
                "    RX packets:{} errors:{} dropped:{} overruns:? frame:?",
                t.rx_packets, t.rx_errors, t.rx_dropped
            );
            let _ = writeln!(
                out,
                "    TX packets:{} errors:{} dropped:{} aborted:? carrier:?",
                t.tx_packets, t.tx_errors, t.tx_dropped
            );
            let _ = writeln!(out, "    collisions:?");
            let _ = writeln!(
                out,
                "    RX bytes:{} ({})  TX bytes:{} ({})",
                t.rx_bytes,
                human(t.rx_bytes),
                t.tx_bytes,
                human(t.tx_bytes)
            );
        }
    }
}

fn human(b: u64) -> String {
    let f = b as f64;
    if f >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", f / (1024.0 * 1024.0 * 1024.0))
    } else if f >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", f / (1024.0 * 1024.0))
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Parses `IFACE[,key=value]...` into a vport to create.
pub fn parse_if_spec(s: &str) -> Result<VportSpec> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or_default().trim();
    if name.is_empty() {
        bail!("missing interface name in {s:?}");
    }
    let mut kind = "netdev".to_string();
    let mut dst_port: Option<u16> = None;
    let mut port_no = None;
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| anyhow!("{s}: option {opt:?} is not key=value"))?;
        match k {
            "type" => kind = v.to_string(),
            "dst_port" => {
                dst_port = Some(
                    v.parse()
                        .with_context(|| format!("{s}: invalid dst_port {v:?}"))?,
                )
            }
            "port_no" => {
                port_no = Some(
                    v.parse()
                        .with_context(|| format!("{s}: invalid port_no {v:?}"))?,
                )
            }
            "remote_ip" | "key" | "local_ip" if v == "flow" => {}
            "remote_ip" | "key" | "local_ip" => bail!(
                "{s}: only flow-based tunnels are supported: {k} must be \"flow\" (it is set per flow with set(tunnel(...)))"
            ),
            _ => bail!(
                "{s}: unknown option {k:?} (known: type, dst_port, port_no, remote_ip=flow, key=flow)"
            ),
        }
    }
    let kind = match kind.as_str() {
        "netdev" | "system" | "" => VportType::Netdev,
        "internal" => VportType::Internal,
        "vxlan" => VportType::Vxlan {
            dst_port: dst_port.unwrap_or(4789),
        },
        "geneve" => VportType::Geneve {
            dst_port: dst_port.unwrap_or(6081),
        },
        "gre" => VportType::Gre,
        t => bail!("{s}: unsupported type {t:?} (known: netdev, internal, vxlan, geneve, gre)"),
    };
    if dst_port.is_some() && !matches!(kind, VportType::Vxlan { .. } | VportType::Geneve { .. }) {
        bail!("{s}: dst_port applies only to vxlan and geneve");
    }
    Ok(VportSpec {
        name: name.to_string(),
        kind,
        port_no,
        upcall_pids: vec![0],
    })
}

fn add_one_if(d: &mut Dpif, dp: &DpInfo, spec: &str) -> Result<VportInfo> {
    let spec = parse_if_spec(spec)?;
    d.vport_add(dp.ifindex, &spec)
        .with_context(|| format!("adding {} to {}", spec.name, dp.name))
}

fn add_if(d: &mut Dpif, args: &[&str]) -> Result<()> {
    let Some((dp, ifaces)) = args.split_first() else {
        bail!("usage: add-if DP IFACE[,option]...");
    };
    if ifaces.is_empty() {
        bail!("usage: add-if DP IFACE[,option]...");
    }
    let info = find_dp(d, Some(dp))?;
    for i in ifaces {
        add_one_if(d, &info, i)?;
    }
    Ok(())
}

fn del_if(d: &mut Dpif, args: &[&str]) -> Result<()> {
    let Some((dp, ifaces)) = args.split_first() else {
        bail!("usage: del-if DP IFACE...");
    };
    let info = find_dp(d, Some(dp))?;
    for i in ifaces {
        let v = d
            .vport_get(info.ifindex, i)
            .with_context(|| format!("no port named {i} in {}", info.name))?;
        d.vport_delete(info.ifindex, &v.name)
            .with_context(|| format!("deleting {i} from {}", info.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_specs() {
        let s = parse_if_spec("tun0,type=vxlan,remote_ip=flow,key=flow").unwrap();
        assert_eq!(s.kind, VportType::Vxlan { dst_port: 4789 });
        let s = parse_if_spec("g,type=geneve,dst_port=7000,port_no=9").unwrap();
        assert_eq!(s.kind, VportType::Geneve { dst_port: 7000 });
        assert_eq!(s.port_no, Some(9));
        assert_eq!(parse_if_spec("v1").unwrap().kind, VportType::Netdev);
        assert!(parse_if_spec("t,type=vxlan,remote_ip=1.2.3.4").is_err());
        assert!(parse_if_spec("t,type=bogus").is_err());
        assert!(parse_if_spec(",type=internal").is_err());
        assert!(parse_if_spec("v,dst_port=1").is_err());
        assert!(parse_if_spec("v,dst_port=x").is_err());
    }
}
