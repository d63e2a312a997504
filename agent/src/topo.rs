//! The topology the handlers simulate against: NSDB snapshots compiled for this host and its
//! datapath ports, published lock-free (`ArcSwap`) with a generation number, and the
//! invalidation each change implies, sent to the flow manager.
//!
//! Two things change the compiled topology: an NSDB update (from the watch cache) and a
//! local vport appearing or going (attach/detach). Both go through [`TopologyWatcher`], one
//! task, so generations are totally ordered and every generation's invalidation is sent
//! after the topology it describes is visible to handlers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use nsdb::{Host, PortBinding, Snapshot, Update};
use sim::{LocalDatapath, RecordSet, Tag, Topology};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::flows::FlowEvent;
use crate::invalidate;
use crate::metrics::Metrics;

/// At most this many queued watch updates are compiled as one topology.
const MAX_BATCH: usize = 256;

/// One compiled topology.
#[derive(Debug)]
pub struct TopoSnap {
    /// Increases by one with every applied change.
    pub generation: u64,
    /// The NSDB snapshot it was compiled from.
    pub records: Arc<Snapshot>,
    /// The compiled topology.
    pub topo: Topology,
}

/// What the handlers read: the current compiled topology.
pub type SharedTopo = Arc<ArcSwap<TopoSnap>>;

/// This host's datapath ports by vport name, shared by the API (attach/detach) and the
/// watcher (compilation).
#[derive(Debug, Default)]
pub struct LocalPorts {
    vports: Mutex<BTreeMap<String, u32>>,
}

impl LocalPorts {
    /// The current vport map.
    pub fn snapshot(&self) -> BTreeMap<String, u32> {
        self.lock().clone()
    }

    /// Records a vport; returns whether it changed anything.
    pub fn insert(&self, name: &str, port_no: u32) -> bool {
        self.lock().insert(name.to_string(), port_no) != Some(port_no)
    }

    /// Forgets a vport; returns its port number if it was known.
    pub fn remove(&self, name: &str) -> Option<u32> {
        self.lock().remove(name)
    }

    /// The port number of a vport.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.lock().get(name).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        self.vports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A local change the watcher must apply.
#[derive(Debug)]
pub enum LocalChange {
    /// A vport was added to or removed from the datapath.
    Vport { name: String },
}

/// Compiles `records` for `host`. Problems are logged; an error keeps the caller's topology.
/// `known_hosts` are hosts seen earlier: one whose record is gone (its agent is down and its
/// lease expired) but that ports are still bound to is compiled from its last known record.
pub fn compile(
    records: &Snapshot,
    host: &str,
    dp: &LocalDatapath,
    known_hosts: &BTreeMap<String, Host>,
) -> Result<Topology, sim::SimError> {
    let mut set = RecordSet::from_records(records.iter().map(|(_, e)| &*e.record));
    let missing: BTreeSet<&str> = set
        .bindings
        .iter()
        .map(|b| b.host.as_str())
        .filter(|h| !set.hosts.iter().any(|x| x.id == *h))
        .collect();
    let kept: Vec<Host> = missing
        .into_iter()
        .filter_map(|h| known_hosts.get(h).cloned())
        .collect();
    set.hosts.extend(kept);
    let topo = Topology::compile(&set, host, dp)?;
    for p in topo.problems() {
        warn!(problem = %p, kind = p.metric_label(), "topology problem (the affected objects drop traffic)");
    }
    Ok(topo)
}

/// Applies NSDB updates and local changes to the shared topology, and tells the flow
/// manager what each one invalidates.
#[derive(Debug)]
pub struct TopologyWatcher {
    pub host: String,
    pub tunnel_port: u32,
    /// Where VIP members are chosen (`--lb-member-choice`).
    pub member_choice: sim::MemberChoice,
    pub shared: SharedTopo,
    pub ports: Arc<LocalPorts>,
    pub flows: std::sync::mpsc::SyncSender<FlowEvent>,
    pub metrics: Arc<Metrics>,
    /// Set when an update could not be compiled: its changes were never invalidated, so the
    /// next topology that compiles deletes every flow.
    pub pending_full_flush: bool,
    /// The last record of every host seen, kept while ports are bound to it: an agent that
    /// is down (its lease expired) leaves a datapath that still forwards, so the other hosts
    /// keep tunnelling to it, as MidoNet's host records outlive their liveness.
    pub known_hosts: BTreeMap<String, Host>,
}

impl TopologyWatcher {
    /// Compiles the first topology (generation 1) from `records`.
    pub fn initial(
        host: &str,
        tunnel_port: u32,
        member_choice: sim::MemberChoice,
        records: Arc<Snapshot>,
        ports: &LocalPorts,
    ) -> anyhow::Result<SharedTopo> {
        let dp = LocalDatapath {
            tunnel_port,
            vports: ports.snapshot(),
            member_choice,
        };
        let topo = compile(&records, host, &dp, &BTreeMap::new())
            .map_err(|e| anyhow::anyhow!("compiling the topology: {e}"))?;
        Ok(Arc::new(ArcSwap::from_pointee(TopoSnap {
            generation: 1,
            records,
            topo,
        })))
    }

    /// Runs until both inputs close.
    pub async fn run(
        mut self,
        mut updates: mpsc::UnboundedReceiver<Arc<Update>>,
        mut local: mpsc::UnboundedReceiver<LocalChange>,
    ) {
        self.metrics
            .set_problems(self.shared.load().topo.problems());
        loop {
            tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => {
                        // Updates that queued up while the last one compiled are applied
                        // together: one compile for the lot, the union of their tags.
                        let mut batch = vec![u];
                        while batch.len() < MAX_BATCH
                            && let Ok(u) = updates.try_recv()
                        {
                            batch.push(u);
                        }
                        self.apply_updates(&batch);
                    }
                    None => break,
                },
                c = local.recv() => match c {
                    Some(LocalChange::Vport { name }) => self.apply_vport(&name),
                    None => break,
                },
            }
        }
        info!("topology watcher stopped");
    }

    /// Applies consecutive watch updates as one topology: each update's invalidation is
    /// computed against the snapshot it follows, and the last snapshot is compiled once.
    fn apply_updates(&mut self, batch: &[Arc<Update>]) {
        let at = Instant::now();
        let mut prev = self.shared.load_full().records.clone();
        let mut tags = BTreeSet::new();
        let mut full_flush = false;
        for u in batch {
            let inv = invalidate::invalidation_of_update(&prev, u);
            tags.extend(inv.tags);
            full_flush |= inv.full_flush;
            prev = u.snapshot.clone();
        }
        self.publish(prev, tags.into_iter().collect(), full_flush, at);
    }

    fn apply_vport(&mut self, name: &str) {
        let at = Instant::now();
        let prev = self.shared.load_full();
        let tags = invalidate::tags_of_vport(&*prev.records, &self.host, name);
        self.publish(prev.records.clone(), tags, false, at);
    }

    fn publish(&mut self, records: Arc<Snapshot>, tags: Vec<Tag>, full_flush: bool, at: Instant) {
        let prev = self.shared.load_full();
        let generation = prev.generation + 1;
        for h in prev.records.list::<Host>().chain(records.list::<Host>()) {
            self.known_hosts.insert(h.id.clone(), h.clone());
        }
        // Forget hosts that are gone and that no port is bound to any more.
        let bound: BTreeSet<&str> = records
            .list::<PortBinding>()
            .map(|b| b.host.as_str())
            .collect();
        self.known_hosts
            .retain(|id, _| bound.contains(id.as_str()) || records.get::<Host>(id).is_some());
        let dp = LocalDatapath {
            tunnel_port: self.tunnel_port,
            vports: self.ports.snapshot(),
            member_choice: self.member_choice,
        };
        let topo = match compile(&records, &self.host, &dp, &self.known_hosts) {
            Ok(t) => t,
            Err(e) => {
                // Keep simulating with the last good topology; flows built from it stay.
                self.metrics.topology_errors.inc();
                self.pending_full_flush = true;
                warn!(error = %e, revision = records.revision(), "topology does not compile; keeping the previous one");
                return;
            }
        };
        let full_flush = full_flush || std::mem::take(&mut self.pending_full_flush);
        // Bucket flows carry their bucket's tag, not the load balancer's: those of the
        // buckets a change moved are found by comparing the compiled tables.
        let lbs: BTreeSet<Tag> = tags
            .iter()
            .copied()
            .filter(|t| t.kind() == Some(sim::TagKind::Lb))
            .collect();
        let mut tags = tags;
        if !lbs.is_empty() {
            topo.changed_buckets(&prev.topo, |t| lbs.contains(&t), &mut tags);
        }
        self.metrics.set_problems(topo.problems());
        // The invalidation is queued before the snapshot is published, so that whoever sees
        // this generation and then asks the flow manager anything ([`crate::service`]'s
        // status) is answered after the flows it made stale are deleted. A handler that
        // still simulates on the previous snapshot meanwhile reports its flow with that
        // generation, and the flow manager deletes it as stale.
        let _ = self.flows.send(FlowEvent::Invalidate {
            generation,
            tags,
            full_flush,
            at,
        });
        self.shared.store(Arc::new(TopoSnap {
            generation,
            records,
            topo,
        }));
        self.metrics.generation.set(generation as i64);
        self.metrics.invalidations.inc();
    }
}
