//! Restart without loss: the flows of an adopted datapath are checked against the current
//! topology, as the kernel reports them, and only the stale ones are deleted. A flow is
//! valid when simulating its match again gives the same megaflow (the same UFID, which
//! names the masked match) with the same actions. A flow's session-affinity choice is read
//! from its own actions ([`FromActions`]) and remembered again, so a client keeps its member
//! across the restart while that member serves.

use odp::dpif::{Dpif, FlowEntry, FlowId};
use sim::{Fields, PacketContext, Simulation};
use tracing::{info, warn};

use crate::affinity::{Affinity, FromActions};
use crate::flows::Installed;
use crate::flowtable::FlowKind;
use crate::install;
use crate::topo::TopoSnap;

/// What revalidation found.
#[derive(Debug, Default)]
pub struct Revalidation {
    /// Flows still valid, to be tracked.
    pub kept: Vec<Installed>,
    /// Flows deleted: stale, undecodable or not installed by an agent.
    pub deleted: usize,
}

/// Whether `e` is still what the topology would install; `Some` with its record if so.
pub fn check(e: &FlowEntry, snap: &TopoSnap, sim: &mut Simulation) -> Option<Installed> {
    let ufid = e.ufid()?;
    let key = odp::decode_key(&e.key).ok()?;
    let actions = odp::decode_actions(&e.actions).ok()?;
    let fields = Fields::from_key(&key);
    sim::simulate_into(
        &snap.topo,
        &PacketContext::new(fields).remembering(&FromActions(&actions)),
        sim,
    );
    if !sim.install || sim.actions != actions {
        return None;
    }
    if install::ufid(&fields, sim) != ufid {
        return None;
    }
    let kind = if key.in_port == Some(snap.topo.tunnel_port()) {
        FlowKind::Tunnel
    } else if actions.is_empty() {
        FlowKind::Error
    } else {
        FlowKind::Normal
    };
    Some(Installed {
        ufid,
        kind,
        tags: sim.tags.as_slice().into(),
        generation: snap.generation,
        trace: sim.trace.clone(),
    })
}

/// Dumps every flow of the datapath, keeps the valid ones and deletes the rest.
pub fn revalidate(
    d: &mut Dpif,
    ifindex: i32,
    snap: &TopoSnap,
    trace: bool,
    affinity: &Affinity,
) -> anyhow::Result<Revalidation> {
    let entries = d.flow_dump(ifindex)?;
    let total = entries.len();
    let mut sim = if trace {
        Simulation::traced()
    } else {
        Simulation::new()
    };
    let mut out = Revalidation::default();
    let mut stale = Vec::new();
    for e in &entries {
        match check(e, snap, &mut sim) {
            Some(f) => {
                if let Some(c) = &sim.affinity {
                    affinity.record(c, e.stats.used_ms.unwrap_or_else(crate::flows::now_ms));
                }
                out.kept.push(f)
            }
            None => stale.push(match e.ufid {
                Some(u) => FlowId::Ufid(u),
                None => FlowId::Key(e.key.clone()),
            }),
        }
    }
    if !stale.is_empty() {
        for r in d.flow_del_batch(ifindex, &stale)? {
            match r {
                Ok(()) => out.deleted += 1,
                Err(errno) => warn!(errno, "deleting a stale flow was refused"),
            }
        }
    }
    info!(
        total,
        kept = out.kept.len(),
        deleted = out.deleted,
        "flows of the adopted datapath revalidated"
    );
    Ok(out)
}
