//! The flow manager: one thread that owns the agent's book of installed flows (tags, idle
//! expiry, the cap) and deletes kernel flows — on invalidation, on expiry judged by the
//! kernel's `used` statistic, on eviction, and found stale.
//!
//! Handlers install flows themselves and then report them here ([`FlowEvent::Installed`]),
//! so a flow can be reported after an invalidation that concerns it: each report carries the
//! topology generation it was simulated against, and the manager keeps a log of recent
//! invalidations to delete such a flow at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use odp::dpif::{Dpif, FlowId};
use sim::Tag;
use tracing::{debug, warn};

use crate::affinity::Affinity;
use crate::api::FlowInfo;
use crate::flowtable::{FlowKind, FlowTable, IdleTimeouts};
use crate::metrics::Metrics;
use crate::tags::TagIndex;

/// How many recent invalidations the manager remembers for late install reports.
const INVALIDATION_LOG: usize = 4096;

/// How long the manager lets events gather after it handled some. Handlers report flows that
/// are already in the kernel, so a report can wait; taking them in bulk spares the manager a
/// wakeup per handler batch (at most 1/GATHER wakeups a second under load, none when idle).
/// An invalidation or a query that arrives meanwhile waits at most this long.
const GATHER: Duration = Duration::from_millis(5);

/// How many events wait for the flow manager at most. Its queue is bounded so that sending a
/// report allocates nothing (an unbounded channel allocates a block per 31 messages); 4,096
/// reports are what handlers install in far more than [`GATHER`] at any rate they reach.
pub const QUEUE: usize = 4096;

/// The flow manager's queue: handlers report with `try_send` and never wait on it; the
/// topology watcher and the API wait for room.
pub fn channel() -> (SyncSender<FlowEvent>, Receiver<FlowEvent>) {
    std::sync::mpsc::sync_channel(QUEUE)
}

/// A flow a handler installed (or the agent adopted on restart): what the manager needs to
/// invalidate, expire and show it. The flow itself is read back from the kernel when it is
/// shown.
#[derive(Debug, Clone)]
pub struct Installed {
    pub ufid: u128,
    pub kind: FlowKind,
    pub tags: FlowTags,
    /// The topology generation it was simulated against.
    pub generation: u64,
    /// The simulation trace, if kept.
    pub trace: String,
}

/// How many tags a report carries without allocating: more than a flow through a router, its
/// ACL chains and a load balancer collects.
pub const INLINE_TAGS: usize = 24;

/// The tags of a reported flow: inline up to [`INLINE_TAGS`], so that reporting a flow
/// allocates nothing, and on the heap beyond.
#[derive(Debug, Clone)]
pub enum FlowTags {
    /// The first `.0` of the array.
    Inline(usize, [Tag; INLINE_TAGS]),
    /// More than fit inline.
    Heap(Vec<Tag>),
}

impl From<&[Tag]> for FlowTags {
    fn from(tags: &[Tag]) -> Self {
        if tags.len() <= INLINE_TAGS {
            let mut a = [Tag(0); INLINE_TAGS];
            a[..tags.len()].copy_from_slice(tags);
            FlowTags::Inline(tags.len(), a)
        } else {
            FlowTags::Heap(tags.to_vec())
        }
    }
}

impl std::ops::Deref for FlowTags {
    type Target = [Tag];
    fn deref(&self) -> &[Tag] {
        match self {
            FlowTags::Inline(n, a) => &a[..*n],
            FlowTags::Heap(v) => v,
        }
    }
}

/// What the manager is told.
// `Installed` is the event of every new flow, and the large one: it is not boxed, so that
// reporting a flow allocates nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum FlowEvent {
    /// A flow is in the kernel.
    Installed(Installed),
    /// Topology generation `generation` is in use; delete the flows it invalidates.
    Invalidate {
        generation: u64,
        tags: Vec<Tag>,
        full_flush: bool,
        /// When the change arrived, for the latency histogram.
        at: Instant,
    },
    /// Reply with every tracked flow and its kernel statistics.
    Query(Sender<Vec<FlowInfo>>),
    /// Reply with the number of tracked flows.
    Count(Sender<usize>),
}

/// What the manager keeps per flow.
#[derive(Debug)]
struct Record {
    kind: FlowKind,
    generation: u64,
    trace: String,
}

/// The manager's state; [`FlowManager::run`] is its thread.
#[derive(Debug)]
pub struct FlowManager {
    dp: Dpif,
    ifindex: i32,
    table: FlowTable<u128>,
    index: TagIndex<Tag, u128>,
    records: HashMap<u128, Record>,
    /// `(generation, tags)`; `None` tags: every flow.
    log: VecDeque<(u64, Option<Vec<Tag>>)>,
    generation: u64,
    /// Kernel flows seen in the last sweep that nobody reported: deleted if seen again.
    unknown: HashSet<u128>,
    metrics: Arc<Metrics>,
    interval: Duration,
    /// Session-affinity choices: refreshed from their flows' use, forgotten here.
    affinity: Arc<Affinity>,
}

impl FlowManager {
    /// A manager of datapath `ifindex`'s flows.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dp: Dpif,
        ifindex: i32,
        capacity: usize,
        timeouts: IdleTimeouts,
        interval: Duration,
        generation: u64,
        metrics: Arc<Metrics>,
        affinity: Arc<Affinity>,
    ) -> Self {
        FlowManager {
            dp,
            ifindex,
            table: FlowTable::new(capacity, timeouts),
            index: TagIndex::new(),
            records: HashMap::new(),
            log: VecDeque::new(),
            generation,
            unknown: HashSet::new(),
            metrics,
            interval,
            affinity,
        }
    }

    /// Tracks a flow found valid on restart (no kernel call).
    pub fn adopt(&mut self, flow: Installed) {
        self.track(flow);
    }

    /// Processes events until every sender is gone, sweeping for idle flows every interval.
    pub fn run(mut self, rx: Receiver<FlowEvent>) {
        let mut next_sweep = Instant::now() + self.interval;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    self.handle(ev);
                    // Drain what is queued before looking at the clock again.
                    while let Ok(ev) = rx.try_recv() {
                        self.handle(ev);
                    }
                    std::thread::sleep(GATHER);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + self.interval;
            }
        }
        debug!("flow manager stopped");
    }

    fn handle(&mut self, ev: FlowEvent) {
        match ev {
            FlowEvent::Installed(f) => self.installed(f),
            FlowEvent::Invalidate {
                generation,
                tags,
                full_flush,
                at,
            } => {
                self.invalidate(generation, tags, full_flush);
                self.metrics
                    .invalidation_latency
                    .observe(at.elapsed().as_secs_f64());
            }
            FlowEvent::Query(reply) => {
                let _ = reply.send(self.infos());
            }
            FlowEvent::Count(reply) => {
                let _ = reply.send(self.table.len());
            }
        }
    }

    fn installed(&mut self, f: Installed) {
        if simulated_on_stale_topology(&self.log, self.generation, f.generation, &f.tags) {
            self.delete(&[f.ufid], "invalidated");
            return;
        }
        self.track(f);
    }

    fn track(&mut self, f: Installed) {
        let now = now_ms();
        self.unknown.remove(&f.ufid);
        let evicted = self.table.insert(f.ufid, f.kind, now);
        self.index.insert(f.ufid, &f.tags);
        self.records.insert(
            f.ufid,
            Record {
                kind: f.kind,
                generation: f.generation,
                trace: f.trace,
            },
        );
        if !evicted.is_empty() {
            self.forget(&evicted);
            self.delete(&evicted, "evicted");
        }
        self.metrics.flows.set(self.table.len() as i64);
    }

    fn invalidate(&mut self, generation: u64, tags: Vec<Tag>, full_flush: bool) {
        self.generation = self.generation.max(generation);
        let victims: Vec<u128> = if full_flush {
            self.metrics.full_flushes.inc();
            self.records.keys().copied().collect()
        } else {
            self.index.invalidate_all(tags.iter().copied())
        };
        self.log
            .push_back((generation, if full_flush { None } else { Some(tags) }));
        while self.log.len() > INVALIDATION_LOG {
            self.log.pop_front();
        }
        if !victims.is_empty() {
            self.forget(&victims);
            self.delete(&victims, "invalidated");
        }
    }

    fn forget(&mut self, ufids: &[u128]) {
        for u in ufids {
            self.table.remove(*u);
            self.index.remove(*u);
            self.records.remove(u);
        }
        self.metrics.flows.set(self.table.len() as i64);
    }

    /// Deletes flows from the kernel; one already gone is not an error.
    fn delete(&mut self, ufids: &[u128], reason: &'static str) {
        let ids: Vec<FlowId> = ufids.iter().map(|u| FlowId::ufid(*u)).collect();
        match self.dp.flow_del_batch(self.ifindex, &ids) {
            Ok(results) => {
                let gone = results.iter().filter(|r| r.is_ok()).count();
                self.metrics.deleted(reason, gone);
                for (u, r) in ufids.iter().zip(&results) {
                    if let Err(errno) = r
                        && *errno != ENOENT
                    {
                        warn!(
                            ufid = format_args!("{u:032x}"),
                            errno, reason, "flow delete refused"
                        );
                    }
                }
            }
            Err(e) => warn!(error = %e, count = ufids.len(), reason, "flow delete failed"),
        }
    }

    /// Reads the kernel's `used` times, then deletes flows idle too long and flows nobody
    /// reported for two sweeps.
    fn sweep(&mut self) {
        let entries = match self.dp.flow_stats_dump(self.ifindex) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "flow dump failed; expiry skipped this round");
                return;
            }
        };
        let mut unknown = HashSet::new();
        let mut orphans = Vec::new();
        for e in &entries {
            let Some(u) = e.ufid() else {
                continue;
            };
            if self.table.contains(u) {
                if let Some(used) = e.stats.used_ms {
                    self.table.observe_used(u, used);
                    for t in self.index.tags_of(u).unwrap_or_default() {
                        self.affinity.touch(*t, used);
                    }
                }
            } else if self.unknown.contains(&u) {
                orphans.push(u);
            } else {
                unknown.insert(u);
            }
        }
        self.unknown = unknown;
        if !orphans.is_empty() {
            self.delete(&orphans, "stale");
        }
        let now = now_ms();
        let expired = self.table.expire(now);
        if !expired.is_empty() {
            self.forget(&expired);
            self.delete(&expired, "expired");
        }
        let forgotten = self.affinity.expire(now);
        self.metrics
            .affinity_entries
            .set(self.affinity.len() as i64);
        if !forgotten.is_empty() {
            let victims = self.index.invalidate_all(forgotten);
            if !victims.is_empty() {
                self.forget(&victims);
                self.delete(&victims, "affinity_expired");
            }
        }
    }

    fn infos(&mut self) -> Vec<FlowInfo> {
        let stats: HashMap<u128, odp::dpif::FlowEntry> = match self.dp.flow_dump(self.ifindex) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|e| e.ufid().map(|u| (u, e)))
                .collect(),
            Err(e) => {
                warn!(error = %e, "flow dump failed; flows shown without statistics");
                HashMap::new()
            }
        };
        let now = now_ms();
        let mut out: Vec<FlowInfo> = self
            .records
            .iter()
            .map(|(u, r)| {
                let flow = match stats.get(u).map(|e| (e, e.to_flow(now))) {
                    Some((e, Ok(f))) => e.dump_line(&f, false),
                    Some((_, Err(e))) => format!("(undecodable: {e})"),
                    None => "(not in the datapath)".into(),
                };
                FlowInfo {
                    ufid: ufid_text(*u),
                    flow,
                    kind: match r.kind {
                        FlowKind::Normal => "normal",
                        FlowKind::Tunnel => "tunnel",
                        FlowKind::Error => "error",
                    }
                    .into(),
                    tags: self
                        .index
                        .tags_of(*u)
                        .unwrap_or_default()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    trace: r.trace.clone(),
                    generation: r.generation,
                }
            })
            .collect();
        out.sort_by(|a, b| a.ufid.cmp(&b.ufid));
        out
    }
}

/// Whether a flow simulated against generation `flow_gen` with `tags` was already
/// invalidated: some logged invalidation newer than `flow_gen` covers one of its tags (or
/// every flow), or the log no longer reaches back to `flow_gen`, so nobody can tell.
pub fn simulated_on_stale_topology(
    log: &VecDeque<(u64, Option<Vec<Tag>>)>,
    current: u64,
    flow_gen: u64,
    tags: &[Tag],
) -> bool {
    if flow_gen >= current {
        return false;
    }
    let oldest = log.front().map_or(current, |(g, _)| *g);
    if flow_gen + 1 < oldest {
        return true;
    }
    log.iter().any(|(g, inv)| {
        *g > flow_gen
            && match inv {
                None => true,
                Some(t) => t.iter().any(|x| tags.contains(x)),
            }
    })
}

/// `ENOENT`: the flow was already gone.
const ENOENT: i32 = 2;

/// Milliseconds on the clock the kernel stamps `used` with.
pub fn now_ms() -> u64 {
    odp::dpif::monotonic_ms().unwrap_or(0)
}

/// A tracked UFID as `ovs-dpctl dump-flows -m` prints it: the table's number is the one
/// the kernel's bytes stand for ([`odp::msg::ufid_bytes`]).
pub(crate) fn ufid_text(u: u128) -> String {
    let mut s = String::new();
    odp::text::format_ufid(&mut s, u);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flows_tags_are_inline_up_to_the_bound_and_on_the_heap_beyond() {
        let tags: Vec<Tag> = (0..30).map(|i| Tag::port(&format!("p{i}"))).collect();
        let few = FlowTags::from(&tags[..3]);
        assert!(matches!(few, FlowTags::Inline(3, _)));
        assert_eq!(&*few, &tags[..3]);
        let full = FlowTags::from(&tags[..INLINE_TAGS]);
        assert!(matches!(full, FlowTags::Inline(INLINE_TAGS, _)));
        assert_eq!(&*full, &tags[..INLINE_TAGS]);
        let many = FlowTags::from(&tags[..]);
        assert!(matches!(many, FlowTags::Heap(_)));
        assert_eq!(&*many, &tags[..]);
        assert!(FlowTags::from(&[][..]).is_empty());
    }
    use crate::ctl::dpflow;

    #[test]
    fn a_flow_s_ufid_is_printed_as_ovs_dpctl_prints_its_wire_bytes() {
        let u: u128 = 0x3aad_a212_2e68_97a7_5e14_d207_7db8_2a37;
        let text = ufid_text(u);
        assert_eq!(text, "ufid:3aada212-2e68-97a7-5e14-d2077db82a37");
        // Parsing the text the way `weftctl dp get-flow` does names the same kernel flow.
        let parsed = dpflow::parse_ufid(&text).expect("printed UFID parses");
        assert_eq!(FlowId::ufid(parsed), FlowId::ufid(u));
        // The kernel's bytes are four host-order words, most significant first, which is
        // how ovs-dpctl reads them.
        let FlowId::Ufid(wire) = FlowId::ufid(u) else {
            unreachable!()
        };
        assert_eq!(&wire[..4], &0x3aad_a212u32.to_ne_bytes());
    }

    fn log(entries: &[(u64, Option<&[&str]>)]) -> VecDeque<(u64, Option<Vec<Tag>>)> {
        entries
            .iter()
            .map(|(g, t)| (*g, t.map(|t| t.iter().map(|d| Tag::device(d)).collect())))
            .collect()
    }

    #[test]
    fn a_flow_reported_after_an_invalidation_of_its_tags_is_stale() {
        let l = log(&[(2, Some(&["r1"])), (3, Some(&["b9"]))]);
        let r1 = [Tag::device("r1"), Tag::port("p1")];
        let b1 = [Tag::device("b1")];
        // Simulated on generation 1; generation 2 invalidated r1.
        assert!(simulated_on_stale_topology(&l, 3, 1, &r1));
        // The same flow simulated on generation 2 already saw the change.
        assert!(!simulated_on_stale_topology(&l, 3, 2, &r1));
        // Nothing newer than generation 1 concerns b1.
        assert!(!simulated_on_stale_topology(&l, 3, 1, &b1));
        // Current generation: nothing can be newer.
        assert!(!simulated_on_stale_topology(&l, 3, 3, &r1));
    }

    #[test]
    fn a_full_flush_or_a_log_that_no_longer_reaches_back_makes_every_older_flow_stale() {
        let l = log(&[(5, None)]);
        assert!(simulated_on_stale_topology(&l, 5, 4, &[Tag::device("b1")]));
        let l = log(&[(10, Some(&["x"])), (11, Some(&["y"]))]);
        // Generations 3..9 were dropped from the log: unknown, so stale.
        assert!(simulated_on_stale_topology(&l, 11, 3, &[Tag::device("b1")]));
        // Generation 9's successor (10) is the oldest logged: still decidable.
        assert!(!simulated_on_stale_topology(
            &l,
            11,
            9,
            &[Tag::device("b1")]
        ));
    }
}
