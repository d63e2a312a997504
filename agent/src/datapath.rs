//! The node's datapath: created, or adopted as it is (flows and vports kept) when it
//! exists; its single flow-based tunnel vport; the upcall pids of the handler sockets; and
//! the netdev vports of attached ports.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use odp::dpif::{DpInfo, Dpif, UpcallMode, VportSpec, VportType};
use odp::sock::SockError;
use tracing::info;

use crate::config::{TunnelKind, tunnel_vport_name};

/// `ENOENT` / `ENODEV`: no such datapath or vport.
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;

/// The datapath as the agent found or made it.
#[derive(Debug, Clone)]
pub struct DatapathState {
    pub info: DpInfo,
    /// Whether it existed before (its flows are then revalidated, not flushed).
    pub adopted: bool,
    pub tunnel_port_no: u32,
    /// Netdev vports by name (the tunnel and the datapath's own internal port excluded).
    pub vports: BTreeMap<String, u32>,
}

fn is_missing(e: &SockError) -> bool {
    matches!(e, SockError::Kernel { errno, .. } if *errno == ENOENT || *errno == ENODEV)
}

/// Creates datapath `name` or adopts the existing one, points its upcalls at `pids`, and
/// makes sure the tunnel vport exists with the configured type and UDP port.
pub fn setup(
    d: &mut Dpif,
    name: &str,
    tunnel: TunnelKind,
    udp_port: u16,
    pids: &[u32],
) -> anyhow::Result<DatapathState> {
    let first = *pids.first().context("no upcall socket")?;
    let (info, adopted) = match d.dp_get(name) {
        Ok(info) => (info, true),
        Err(e) if is_missing(&e) => (
            d.dp_create(name, first)
                .with_context(|| format!("creating datapath {name}"))?,
            false,
        ),
        Err(e) => return Err(e).with_context(|| format!("looking up datapath {name}")),
    };
    let info = match info.upcall_mode() {
        UpcallMode::PerCpu => d
            .dp_set_upcall_pids(name, pids)
            .with_context(|| format!("setting the per-CPU upcall pids of {name}"))?,
        UpcallMode::PerVport => info,
    };
    let want = match tunnel {
        TunnelKind::Vxlan => VportType::Vxlan { dst_port: udp_port },
        TunnelKind::Geneve => VportType::Geneve { dst_port: udp_port },
    };
    let tname = tunnel_vport_name(tunnel);
    let mut vports = BTreeMap::new();
    let mut tunnel_port_no = None;
    for v in d
        .vport_list(info.ifindex)
        .with_context(|| format!("listing the vports of {name}"))?
    {
        match v.kind {
            VportType::Netdev => {
                vports.insert(v.name.clone(), v.port_no);
            }
            // The node's own port (`--node-bridge`); the datapath's local port (0) is not.
            VportType::Internal if v.name == crate::nodeport::NODE_VPORT && v.port_no != 0 => {
                vports.insert(v.name.clone(), v.port_no);
            }
            VportType::Vxlan { .. } | VportType::Geneve { .. } if v.name == tname => {
                if v.kind == want {
                    tunnel_port_no = Some(v.port_no);
                } else {
                    info!(vport = %v.name, "tunnel vport has another type or port; replacing it");
                    d.vport_delete(info.ifindex, &v.name)
                        .with_context(|| format!("deleting tunnel vport {}", v.name))?;
                }
            }
            _ => {}
        }
    }
    let tunnel_port_no = match tunnel_port_no {
        Some(p) => p,
        None => {
            d.vport_add(
                info.ifindex,
                &VportSpec {
                    name: tname.to_string(),
                    kind: want,
                    port_no: None,
                    upcall_pids: pids.to_vec(),
                },
            )
            .with_context(|| format!("creating tunnel vport {tname} (UDP {udp_port})"))?
            .port_no
        }
    };
    if info.upcall_mode() == UpcallMode::PerVport {
        for v in d.vport_list(info.ifindex)? {
            d.vport_set_upcall_pids(info.ifindex, v.port_no, pids)
                .with_context(|| format!("setting the upcall pids of vport {}", v.name))?;
        }
    }
    info!(
        datapath = name,
        ifindex = info.ifindex,
        adopted,
        tunnel = tname,
        tunnel_port_no,
        mode = ?info.upcall_mode(),
        vports = vports.len(),
        "datapath ready"
    );
    Ok(DatapathState {
        info,
        adopted,
        tunnel_port_no,
        vports,
    })
}

/// Adds vport `ifname` of type `kind` (a netdev: an existing interface; internal: the
/// kernel makes the interface) to the datapath, or finds it there already. Returns its port
/// number and whether this call added it.
pub fn attach_vport(
    d: &mut Dpif,
    dp_ifindex: i32,
    ifname: &str,
    kind: VportType,
    pids: &[u32],
) -> anyhow::Result<(u32, bool)> {
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) {
        bail!("interface name {ifname:?} is not a valid Linux interface name");
    }
    match d.vport_get(dp_ifindex, ifname) {
        Ok(v) if v.kind == kind => return Ok((v.port_no, false)),
        Ok(v) => bail!(
            "{ifname} is already a {:?} vport of the datapath, not {kind:?}",
            v.kind
        ),
        Err(e) if is_missing(&e) => {}
        Err(e) => return Err(e).with_context(|| format!("looking up vport {ifname}")),
    }
    let v = d
        .vport_add(
            dp_ifindex,
            &VportSpec {
                name: ifname.to_string(),
                kind,
                port_no: None,
                upcall_pids: pids.to_vec(),
            },
        )
        .map_err(|e| match &e {
            SockError::Kernel { errno, .. } if *errno == ENODEV || *errno == ENOENT => {
                anyhow::anyhow!("no interface {ifname} in the agent's network namespace")
            }
            _ => anyhow::Error::new(e).context(format!("adding vport {ifname}")),
        })?;
    Ok((v.port_no, true))
}

/// The port number of netdev vport `ifname`, if the datapath has one of that name.
pub fn vport_port_no(d: &mut Dpif, dp_ifindex: i32, ifname: &str) -> anyhow::Result<Option<u32>> {
    match d.vport_get(dp_ifindex, ifname) {
        Ok(v) if v.kind == VportType::Netdev => Ok(Some(v.port_no)),
        Ok(_) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up vport {ifname}")),
    }
}

/// Removes netdev vport `ifname`; returns false if it was not there. Any other vport (the
/// tunnel, the datapath's local port) and Weft's own `weft-*` names are refused and stay.
pub fn detach_vport(d: &mut Dpif, dp_ifindex: i32, ifname: &str) -> anyhow::Result<bool> {
    if ifname.starts_with(crate::netdev::RESERVED_PREFIX) {
        bail!("{ifname} is one of Weft's own vports, not a pod's: it stays");
    }
    match d.vport_get(dp_ifindex, ifname) {
        Ok(v) if v.kind != VportType::Netdev || v.port_no == 0 => bail!(
            "{ifname} is a {:?} vport of the datapath (port {}), not a pod's netdev: it stays",
            v.kind,
            v.port_no
        ),
        Ok(_) => {}
        Err(e) if is_missing(&e) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("looking up vport {ifname}")),
    }
    match d.vport_delete(dp_ifindex, ifname) {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting vport {ifname}")),
    }
}
