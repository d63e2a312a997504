//! Namespaces as networks, after Kuryr's namespace-subnet driver: which bridge serves each
//! Kubernetes Namespace, and, in the per-namespace mode, the bridge of its own that every
//! Namespace no VirtualBridge serves gets, with its subnet and its attachment to the cluster
//! router.
//!
//! ## Which bridge serves a namespace
//!
//! A VirtualBridge serves the namespaces its `spec.namespaces.names` lists and those whose
//! labels its `spec.namespaces.selector` matches ([`served`]). A namespace named by a bridge
//! is that bridge's (the semantic check refuses the newer of two bridges naming one
//! namespace); a namespace that only selectors match goes to the matching bridge whose name
//! sorts first. The other matching bridges stay programmed, and their `Ready` message and a
//! Warning event name `spec.namespaces.selector` and the bridge that serves the namespace
//! ([`conflicts`]): one bridge's labels must not make another stop working.
//!
//! The CNI ADD reads the answer from NSDB (`Bridge.namespaces`) when the pod starts, so a
//! pod stays on the bridge it started on when its namespace's labels later move the
//! namespace elsewhere; only new pods go to the new bridge.
//!
//! ## Per-namespace bridges
//!
//! With `--namespace-mode per-namespace`, a Namespace no VirtualBridge serves gets a bridge of
//! its own ([`records`]), owned by the Namespace (ids `kns:<namespace>[:...]`, see
//! [`KubeKey`]): a subnet carved from `--namespace-pool` ([`allocate`]: the lowest block of
//! `--namespace-prefix-len` that no bridge in NSDB uses; the bridges themselves are the
//! allocation table, so a namespace keeps its subnet as long as its bridge exists), the
//! gateway at the subnet's first host address, `Bridge.namespaces` listing the namespace, and
//! an interior port pair with the connected route on the VirtualRouter `--cluster-router`.
//! The router's own records are those whose ids start with `vrt:<router>`, so its translation
//! never sees these.
//!
//! A namespace's bridge is retired ([`Plan::Retire`]) when the namespace is deleted (or
//! being deleted: no new pod can start in it), when a VirtualBridge serves it, or in the
//! shared mode: it stops listing the namespace at once, so the next pod goes elsewhere, and
//! it is deleted, with its router ports, its route and so its subnet, once no pod port is left
//! on it; until then it is looked at again with a bounded backoff. When a VirtualBridge takes
//! a namespace over, the namespace's bridge keeps listing it until the VirtualBridge's bridge
//! lists it in NSDB, so pods never fall to the default bridge in between.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use nsdb::{AnyRecord, Bridge, DeviceRef, MacAddr, Nsdb, Port, PortKind, Route};
use tracing::{debug, info, warn};

use super::{KubeKey, KubeKind};
use crate::controller::{BACKOFF_MAX, RESYNC, Stores, backoff_delay};
use crate::error::Error;
use crate::ids;
use crate::metrics::Metrics;
use crate::store;
use crate::translate::Inventory;

/// `--namespace-mode`: what pods of a namespace no VirtualBridge serves attach to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The agents' `--default-bridge`, one network for all of them.
    #[default]
    Shared,
    /// A bridge of the namespace's own, with a subnet from `--namespace-pool`.
    PerNamespace,
}

/// The largest `--namespace-prefix-len`: a subnet needs its gateway and at least one pod.
pub const MAX_PREFIX_LEN: u8 = 30;

/// How the operator maps namespaces to networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Config {
    /// No per-namespace bridges (those left from a per-namespace run are retired).
    #[default]
    Shared,
    /// Every namespace no VirtualBridge serves gets a bridge of its own.
    PerNamespace(PerNamespace),
}

/// The settings of the per-namespace mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerNamespace {
    /// The subnets are carved from it.
    pub pool: Ipv4Net,
    /// Their prefix length.
    pub prefix_len: u8,
    /// The VirtualRouter the bridges are attached to.
    pub router: String,
}

/// Per-namespace settings that cannot work, and a pool with no block left.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("--namespace-pool {pool} has host bits set; the prefix is {}", pool.trunc())]
    HostBits { pool: Ipv4Net },
    #[error(
        "--namespace-prefix-len {prefix_len} does not fit --namespace-pool {pool}: it must be \
         between {} and {MAX_PREFIX_LEN}",
        pool.prefix_len()
    )]
    PrefixLen { pool: Ipv4Net, prefix_len: u8 },
    #[error("--cluster-router {0:?} is not a Kubernetes object name")]
    Router(String),
    #[error(
        "the namespace pool {pool} is exhausted: none of its {blocks} /{prefix_len} blocks is \
         free of the subnets of the bridges in NSDB"
    )]
    Exhausted {
        pool: Ipv4Net,
        prefix_len: u8,
        blocks: u64,
    },
}

impl PerNamespace {
    /// Checked settings: the pool without host bits, the prefix length within it and at most
    /// [`MAX_PREFIX_LEN`], the router a name.
    pub fn new(pool: Ipv4Net, prefix_len: u8, router: String) -> Result<Self, PoolError> {
        if pool.trunc() != pool {
            return Err(PoolError::HostBits { pool });
        }
        if prefix_len < pool.prefix_len() || prefix_len > MAX_PREFIX_LEN {
            return Err(PoolError::PrefixLen { pool, prefix_len });
        }
        let name_ok = !router.is_empty()
            && router.len() <= 253
            && router
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && router.starts_with(|c: char| c.is_ascii_alphanumeric())
            && router.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            return Err(PoolError::Router(router));
        }
        Ok(PerNamespace {
            pool,
            prefix_len,
            router,
        })
    }
}

// ---- Which bridge serves a namespace ----

/// How a VirtualBridge serves a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// `spec.namespaces.names` lists it.
    Name,
    /// `spec.namespaces.selector` matches its labels.
    Selector,
}

/// The VirtualBridge that serves a namespace, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub bridge: String,
    pub by: By,
}

/// The bridges of the inventory that select namespaces by label, with their selectors (those
/// that are no valid selector select none), by name.
fn selectors(inv: &Inventory) -> Vec<(&str, nsdb::LabelSelector)> {
    inv.bridges
        .iter()
        .filter_map(|(name, b)| {
            let sel = b.spec.namespaces.as_ref()?.selector.as_ref()?;
            Some((name.as_str(), super::label_selector(sel).ok()?))
        })
        .collect()
}

/// The VirtualBridge that serves each namespace: the namespaces a bridge names (those named
/// twice go to the oldest bridge, as the semantic check has it), then each namespace of
/// [`Inventory::namespaces`] that no bridge names, to the bridge whose name sorts first among
/// those whose selector matches its labels.
pub fn served(inv: &Inventory) -> BTreeMap<String, Server> {
    let mut out = BTreeMap::new();
    let mut by_age: Vec<(&String, &api::VirtualBridge)> = inv.bridges.iter().collect();
    by_age.sort_by_key(|(name, b)| {
        let created = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (created.is_none(), created, *name)
    });
    for (name, b) in by_age {
        for ns in b.spec.namespaces.iter().flat_map(|n| &n.names) {
            out.entry(ns.clone()).or_insert_with(|| Server {
                bridge: name.clone(),
                by: By::Name,
            });
        }
    }
    let selectors = selectors(inv);
    for (ns, labels) in &inv.namespaces {
        if out.contains_key(ns) {
            continue;
        }
        if let Some((bridge, _)) = selectors.iter().find(|(_, s)| s.matches(labels)) {
            out.insert(
                ns.clone(),
                Server {
                    bridge: (*bridge).to_owned(),
                    by: By::Selector,
                },
            );
        }
    }
    out
}

/// The namespaces `bridge` serves by its selector, sorted.
pub fn selected_by(bridge: &str, inv: &Inventory) -> Vec<String> {
    if !selectors(inv).iter().any(|(b, _)| *b == bridge) {
        return Vec::new();
    }
    served(inv)
        .into_iter()
        .filter(|(_, s)| s.bridge == bridge && s.by == By::Selector)
        .map(|(ns, _)| ns)
        .collect()
}

/// The namespaces `bridge`'s selector matches that another bridge serves, each as a message
/// naming the field and that bridge.
pub fn conflicts(bridge: &str, inv: &Inventory) -> Vec<String> {
    let Some((_, sel)) = selectors(inv).into_iter().find(|(b, _)| *b == bridge) else {
        return Vec::new();
    };
    let served = served(inv);
    inv.namespaces
        .iter()
        .filter(|(_, labels)| sel.matches(labels))
        .filter_map(|(ns, _)| {
            let s = served.get(ns)?;
            (s.bridge != bridge).then(|| {
                let how = match s.by {
                    By::Name => "which names it in spec.namespaces.names",
                    By::Selector => "whose selector matches it too and whose name sorts first",
                };
                format!(
                    "spec.namespaces.selector: namespace {ns} is served by VirtualBridge {}, {how}",
                    s.bridge
                )
            })
        })
        .collect()
}

// ---- Per-namespace bridges ----

/// The key that owns the records of namespace `ns`'s bridge.
pub fn key(ns: &str) -> KubeKey {
    KubeKey::cluster(KubeKind::Namespace, ns)
}

/// The id of namespace `ns`'s bridge: `kns:<ns>`.
pub fn bridge_id(ns: &str) -> String {
    store::Owner::base_id(&key(ns))
}

/// The router-side port of namespace `ns`'s bridge on the cluster router: `kns:<ns>:port`.
pub fn router_port_id(ns: &str) -> String {
    format!("{}:port", bridge_id(ns))
}

/// The bridge-side peer of [`router_port_id`]: `kns:<ns>:peer`.
pub fn peer_port_id(ns: &str) -> String {
    format!("{}:peer", bridge_id(ns))
}

/// The bridge's name: not a Kubernetes object name (it holds a `/`), so that the agents'
/// `--default-bridge`, which may name a VirtualBridge, never names it.
pub fn bridge_name(ns: &str) -> String {
    format!("namespace/{ns}")
}

/// The lowest block of `prefix_len` in `pool` that overlaps none of `used`.
pub fn allocate(
    pool: Ipv4Net,
    prefix_len: u8,
    used: impl IntoIterator<Item = Ipv4Net>,
) -> Result<Ipv4Net, PoolError> {
    let pool = pool.trunc();
    if prefix_len < pool.prefix_len() || prefix_len > 32 {
        return Err(PoolError::PrefixLen { pool, prefix_len });
    }
    let span = |n: Ipv4Net| {
        let n = n.trunc();
        (
            u64::from(u32::from(n.network())),
            u64::from(u32::from(n.broadcast())) + 1,
        )
    };
    let size = 1u64 << (32 - prefix_len);
    let (first, end) = span(pool);
    let mut used: Vec<(u64, u64)> = used
        .into_iter()
        .map(span)
        .filter(|(a, b)| *a < end && first < *b)
        .collect();
    used.sort_unstable();
    let mut start = first;
    while start + size <= end {
        match used.iter().find(|(a, b)| *a < start + size && start < *b) {
            // The pool is aligned to `size`, so rounding up lands on a block of it.
            Some((_, b)) => start = b.div_ceil(size) * size,
            None => {
                let addr = Ipv4Addr::from(u32::try_from(start).expect("inside the pool"));
                return Ok(Ipv4Net::new(addr, prefix_len).expect("a valid prefix length"));
            }
        }
    }
    Err(PoolError::Exhausted {
        pool,
        prefix_len,
        blocks: (end - first) / size,
    })
}

/// The records of namespace `ns`'s network on `subnet`: its bridge (listing `ns` when
/// `listed`), and, on `router` (a VirtualRouter's name), the interior port with the gateway
/// address, its peer on the bridge, and the connected route, as a VirtualRouter's interface
/// is translated. The gateway is the subnet's first host address. Tunnel keys are 0 here.
pub fn records(ns: &str, subnet: Ipv4Net, listed: bool, router: Option<&str>) -> Vec<AnyRecord> {
    let subnet = subnet.trunc();
    let gateway = subnet.hosts().next().unwrap_or(subnet.network());
    let id = bridge_id(ns);
    let mut out = vec![AnyRecord::Bridge(Bridge {
        id: id.clone(),
        name: bridge_name(ns),
        tunnel_key: 0,
        subnet_v4: Some(subnet),
        subnet_v6: None,
        gateway_v4: Some(gateway),
        gateway_v6: None,
        // 0: each agent derives it from its underlay and encapsulation.
        mtu: 0,
        vlan: None,
        excluded_ips: Vec::new(),
        inbound_chain: None,
        outbound_chain: None,
        namespaces: if listed {
            vec![ns.to_owned()]
        } else {
            Vec::new()
        },
    })];
    if let Some(router) = router {
        let port_id = router_port_id(ns);
        let peer_id = peer_port_id(ns);
        let mac = MacAddr::local_from_name(&port_id);
        let port = |id: &str, device: DeviceRef, peer: &str, address: IpNet| Port {
            id: id.to_owned(),
            device,
            kind: PortKind::Interior {
                peer: peer.to_owned(),
            },
            mac,
            addresses: vec![address],
            tunnel_key: 0,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            named_ports: Vec::new(),
        };
        let address = Ipv4Net::new(gateway, subnet.prefix_len()).expect("the subnet's length");
        out.push(AnyRecord::Port(port(
            &port_id,
            DeviceRef::Router(ids::router(router)),
            &peer_id,
            IpNet::V4(address),
        )));
        // The bridge side answers ARP for the gateway with the router's MAC.
        out.push(AnyRecord::Port(port(
            &peer_id,
            DeviceRef::Bridge(id),
            &port_id,
            IpNet::V4(Ipv4Net::from(gateway)),
        )));
        out.push(AnyRecord::Route(Route {
            id: ids::connected_route(&port_id),
            router: ids::router(router),
            dst: IpNet::V4(subnet),
            next_hop: None,
            port: port_id,
            weight: 1,
        }));
    }
    out
}

/// What a namespace's network needs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Its bridge serves it: write the bridge, allocating its subnet if it has none.
    Serve,
    /// A VirtualBridge serves it now but does not list it in NSDB yet: its own bridge keeps
    /// serving it meanwhile.
    Handover,
    /// Its bridge serves it no more: unlist it, delete it once no pod port is left on it.
    Retire,
    /// It has no bridge and needs none.
    Nothing,
}

/// What is known of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The per-namespace mode is on.
    pub per_namespace: bool,
    /// The Namespace exists and is not being deleted.
    pub live: bool,
    /// A VirtualBridge serves it ([`served`]).
    pub served: bool,
    /// A bridge in NSDB other than its own lists it.
    pub listed_elsewhere: bool,
    /// Its own bridge is in NSDB.
    pub has_bridge: bool,
}

/// The decision for one namespace.
pub fn plan(f: Facts) -> Plan {
    match f {
        Facts {
            per_namespace: true,
            live: true,
            served: false,
            ..
        } => Plan::Serve,
        Facts {
            has_bridge: false, ..
        } => Plan::Nothing,
        Facts {
            per_namespace: true,
            live: true,
            served: true,
            listed_elsewhere: false,
            ..
        } => Plan::Handover,
        _ => Plan::Retire,
    }
}

// ---- The controller ----

/// How often the stores are compared with what was last seen.
const TICK: Duration = Duration::from_secs(1);
/// How long a retired bridge stays after it stopped listing its namespace before its ports
/// are counted: an agent's watch may not have the change yet, and an ADD it serves meanwhile
/// still picks the bridge.
pub const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// The largest delay between two looks at a namespace that waits (for its pods' ports to go,
/// for a VirtualBridge to take it over, for a free subnet).
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// What a namespace looked like when last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    live: bool,
    server: Option<String>,
}

/// What one look at a namespace ended with.
#[derive(Debug)]
enum Step {
    Done,
    /// Look again after this long.
    Again(Duration),
    /// Waiting for something else to happen; look again with a bounded backoff.
    Wait(String),
    /// The namespace cannot get a network; warn, and look again with a bounded backoff.
    Stuck(String),
}

/// A namespace to look at again: how often in a row, and when.
struct Retry {
    times: u32,
    at: Instant,
    /// Why it waits, as last logged: the same reason again is logged at debug level only.
    said: Option<String>,
}

/// NSDB's bridges and pod ports, read once per round of looks.
struct Snapshot {
    bridges: BTreeMap<String, Bridge>,
    /// The Exterior ports of each bridge, read at the first need.
    ports: Option<BTreeMap<String, Vec<String>>>,
}

struct Controller {
    nsdb: Nsdb,
    stores: Stores,
    config: Config,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    seen: BTreeMap<String, View>,
    router_seen: Option<bool>,
    dirty: BTreeSet<String>,
    pending: BTreeMap<String, Retry>,
    resync_at: Instant,
    /// NSDB could not be read: how often in a row, and when to try again.
    unread: Option<Retry>,
}

fn nsdb_err(object: &str) -> impl Fn(nsdb::NsdbError) -> Error + '_ {
    move |source| Error::Nsdb {
        object: object.to_owned(),
        source,
    }
}

impl Controller {
    fn router(&self) -> Option<&str> {
        match &self.config {
            Config::PerNamespace(p) => Some(p.router.as_str()),
            Config::Shared => None,
        }
    }

    /// Marks what changed in the stores since the last look.
    fn observe(&mut self) {
        let inv = self.stores.namespace_inventory();
        let served = served(&inv);
        let now: BTreeMap<String, View> = self
            .stores
            .namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                let server = served.get(&name).map(|s| s.bridge.clone());
                let live = ns.metadata.deletion_timestamp.is_none();
                Some((name, View { live, server }))
            })
            .collect();
        for (name, v) in &now {
            if self.seen.get(name) != Some(v) {
                self.dirty.insert(name.clone());
            }
        }
        for name in self.seen.keys() {
            if !now.contains_key(name) {
                self.dirty.insert(name.clone());
            }
        }
        self.seen = now;
        let router = self
            .router()
            .is_some_and(|r| inv_has_router(&self.stores, r));
        if self.router_seen.is_some_and(|was| was != router) {
            // Every bridge is attached or detached: look at all of them.
            self.resync_at = Instant::now();
        }
        self.router_seen = Some(router);
        let now = Instant::now();
        for (ns, r) in &self.pending {
            if r.at <= now {
                self.dirty.insert(ns.clone());
            }
        }
    }

    /// Reads NSDB's bridges.
    async fn snapshot(&self) -> Result<Snapshot, Error> {
        let listed = self
            .nsdb
            .list::<Bridge>()
            .await
            .map_err(nsdb_err("the bridges"))?;
        Ok(Snapshot {
            bridges: listed
                .records
                .into_iter()
                .map(|v| (v.record.id.clone(), v.record))
                .collect(),
            ports: None,
        })
    }

    /// Looks at every dirty namespace, and at all of them when a resync is due.
    async fn settle(&mut self) {
        let resync = self.resync_at <= Instant::now();
        if self.dirty.is_empty() && !resync
            || self.unread.as_ref().is_some_and(|r| r.at > Instant::now())
        {
            return;
        }
        let mut snap = match self.snapshot().await {
            Ok(s) => {
                self.unread = None;
                s
            }
            Err(e) => {
                let times = self
                    .unread
                    .as_ref()
                    .map_or(0, |r| r.times)
                    .saturating_add(1);
                let after = backoff_delay(times).min(WAIT_MAX);
                warn!(times, ?after, error = %nsdb::error::chain(&e), "reading NSDB's bridges; retrying");
                self.unread = Some(Retry {
                    times,
                    at: Instant::now() + after,
                    said: None,
                });
                return;
            }
        };
        if resync {
            self.dirty.extend(self.seen.keys().cloned());
            self.dirty.extend(
                snap.bridges
                    .keys()
                    .filter_map(|id| KubeKey::owner_of(KubeKind::Namespace, id))
                    .map(|k| k.name),
            );
            self.resync_at = Instant::now() + RESYNC;
        }
        for ns in std::mem::take(&mut self.dirty) {
            let (times, said) = self
                .pending
                .remove(&ns)
                .map_or((0, None), |r| (r.times, r.said));
            let step = match self.look(&ns, &mut snap).await {
                Ok(step) => step,
                Err(e) => {
                    let times = times.saturating_add(1);
                    self.metrics.reconcile_failed("Namespace", &e);
                    warn!(namespace = %ns, times, error = %nsdb::error::chain(&e), "namespace network not written; retrying");
                    self.retry(ns, times, backoff_delay(times), None);
                    continue;
                }
            };
            match step {
                Step::Done => {}
                Step::Again(after) => self.retry(ns, times, after, said),
                Step::Wait(why) => {
                    let times = times.saturating_add(1);
                    let after = backoff_delay(times).min(WAIT_MAX);
                    if said.as_ref() == Some(&why) {
                        debug!(namespace = %ns, ?after, "{why}");
                    } else {
                        info!(namespace = %ns, ?after, "{why}");
                    }
                    self.retry(ns, times, after, Some(why));
                }
                Step::Stuck(why) => {
                    let times = times.saturating_add(1);
                    let after = backoff_delay(times).min(WAIT_MAX);
                    if said.as_ref() == Some(&why) {
                        debug!(namespace = %ns, ?after, "{why}");
                    } else {
                        warn!(namespace = %ns, ?after, "{why}");
                        self.warn_event(&ns, &why).await;
                    }
                    self.retry(ns, times, after, Some(why));
                }
            }
        }
    }

    fn retry(&mut self, ns: String, times: u32, after: Duration, said: Option<String>) {
        self.pending.insert(
            ns,
            Retry {
                times,
                at: Instant::now() + after.min(BACKOFF_MAX),
                said,
            },
        );
    }

    async fn warn_event(&self, ns: &str, note: &str) {
        let Some(obj) = self.stores.namespaces.get(&ObjectRef::new(ns)) else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "NoNetwork".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            debug!(namespace = %ns, %err, "cannot publish the event");
        }
    }

    /// The pod ports on bridge `id`, from the snapshot (read at the first need).
    async fn ports_on(&self, snap: &mut Snapshot, id: &str) -> Result<Vec<String>, Error> {
        if snap.ports.is_none() {
            let listed = self
                .nsdb
                .list::<Port>()
                .await
                .map_err(nsdb_err("the ports"))?;
            let mut by_bridge: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for p in listed.records {
                if let (DeviceRef::Bridge(b), PortKind::Exterior) =
                    (&p.record.device, &p.record.kind)
                {
                    by_bridge.entry(b.clone()).or_default().push(p.record.id);
                }
            }
            snap.ports = Some(by_bridge);
        }
        Ok(snap
            .ports
            .as_ref()
            .and_then(|p| p.get(id))
            .cloned()
            .unwrap_or_default())
    }

    /// Brings namespace `ns`'s network where it should be.
    async fn look(&self, ns: &str, snap: &mut Snapshot) -> Result<Step, Error> {
        let key = key(ns);
        let id = bridge_id(ns);
        let view = self.seen.get(ns);
        let own = snap.bridges.get(&id).cloned();
        let facts = Facts {
            per_namespace: matches!(self.config, Config::PerNamespace(_)),
            live: view.is_some_and(|v| v.live),
            served: view.is_some_and(|v| v.server.is_some()),
            listed_elsewhere: snap
                .bridges
                .values()
                .any(|b| b.id != id && b.namespaces.iter().any(|n| n == ns)),
            has_bridge: own.is_some(),
        };
        let router = self.router().filter(|r| inv_has_router(&self.stores, r));
        match plan(facts) {
            Plan::Nothing => Ok(Step::Done),
            Plan::Serve => {
                let Config::PerNamespace(cfg) = &self.config else {
                    return Ok(Step::Done);
                };
                let subnet = match own.as_ref().and_then(|b| b.subnet_v4) {
                    Some(s) => s,
                    None => {
                        let used = snap
                            .bridges
                            .values()
                            .filter(|b| b.id != id)
                            .filter_map(|b| b.subnet_v4);
                        match allocate(cfg.pool, cfg.prefix_len, used) {
                            Ok(s) => s,
                            Err(e) => {
                                return Ok(Step::Stuck(format!(
                                    "namespace {ns} gets no bridge of its own: {e}"
                                )));
                            }
                        }
                    }
                };
                let a = store::apply_records(&self.nsdb, &key, records(ns, subnet, true, router))
                    .await?;
                self.metrics.records_changed(a.written, a.deleted);
                remember(snap, &a.records);
                if own.is_none() {
                    info!(namespace = %ns, %subnet, bridge = %id, router = ?router, "namespace network created");
                } else if a.written + a.deleted > 0 {
                    info!(namespace = %ns, %subnet, bridge = %id, written = a.written, deleted = a.deleted, "namespace network updated");
                }
                if router.is_none() && facts.per_namespace {
                    let name = self.router().unwrap_or_default();
                    return Ok(Step::Wait(format!(
                        "the bridge of namespace {ns} is not attached to a router: the \
                         VirtualRouter {name} (--cluster-router) does not exist"
                    )));
                }
                Ok(Step::Done)
            }
            Plan::Handover => {
                let bridge = view.and_then(|v| v.server.clone()).unwrap_or_default();
                Ok(Step::Wait(format!(
                    "VirtualBridge {bridge} serves namespace {ns} now, but its bridge does not \
                     list it in NSDB yet: the namespace's own bridge {id} keeps serving it \
                     meanwhile"
                )))
            }
            Plan::Retire => {
                let own = own.expect("Retire is planned for a bridge that exists");
                if !own.namespaces.is_empty()
                    && let Some(subnet) = own.subnet_v4
                {
                    let a =
                        store::apply_records(&self.nsdb, &key, records(ns, subnet, false, router))
                            .await?;
                    self.metrics.records_changed(a.written, a.deleted);
                    remember(snap, &a.records);
                    info!(namespace = %ns, bridge = %id, "namespace bridge no longer serves the namespace; it goes once no pod port is left on it");
                    return Ok(Step::Again(RETIRE_GRACE));
                }
                let ports = self.ports_on(snap, &id).await?;
                if !ports.is_empty() {
                    let shown: Vec<&str> = ports.iter().take(3).map(String::as_str).collect();
                    return Ok(Step::Wait(format!(
                        "the bridge {id} of namespace {ns} stays while {} pod port(s) remain on it \
                         ({}{})",
                        ports.len(),
                        shown.join(", "),
                        if ports.len() > shown.len() {
                            ", ..."
                        } else {
                            ""
                        }
                    )));
                }
                let deleted = store::cleanup(&self.nsdb, &key).await?;
                self.metrics.records_changed(0, deleted);
                snap.bridges.remove(&id);
                info!(namespace = %ns, bridge = %id, subnet = ?own.subnet_v4, deleted, "namespace network removed; its subnet is free");
                Ok(Step::Done)
            }
        }
    }
}

/// Keeps the snapshot's bridges as just written.
fn remember(snap: &mut Snapshot, written: &[AnyRecord]) {
    for r in written {
        if let AnyRecord::Bridge(b) = r {
            snap.bridges.insert(b.id.clone(), b.clone());
        }
    }
}

fn inv_has_router(stores: &Stores, name: &str) -> bool {
    stores
        .routers
        .get(&ObjectRef::new(name))
        .is_some_and(|r| r.metadata.deletion_timestamp.is_none())
}

/// Releases the tunnel keys allocated to a per-namespace record id that no longer exists
/// (left behind when the operator stopped between allocating and writing). Runs before the
/// controller writes anything. Returns how many were released.
async fn sweep_orphan_tunnel_keys(nsdb: &Nsdb) -> Result<usize, Error> {
    let (_, all) = nsdb.list_all().await.map_err(nsdb_err("tunnel keys"))?;
    let live: BTreeSet<(u32, String)> = all
        .iter()
        .filter_map(|(r, _)| crate::translate::tunnel_key_of(r).map(|k| (k, r.id())))
        .collect();
    let mut released = 0;
    for (r, _) in &all {
        let AnyRecord::TunnelKey(t) = r else {
            continue;
        };
        if KubeKey::owner_of(KubeKind::Namespace, &t.owner).is_some()
            && !live.contains(&(t.key, t.owner.clone()))
        {
            nsdb.release_tunnel_key(t.key, &t.owner)
                .await
                .map_err(nsdb_err("tunnel keys"))?;
            released += 1;
        }
    }
    Ok(released)
}

/// Runs the per-namespace bridges' controller over the operator's stores until they stop. In
/// the shared mode it only retires the bridges a per-namespace run left.
pub async fn run(
    nsdb: Nsdb,
    stores: Stores,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    config: Config,
) -> Result<(), Error> {
    if !stores.wait_until_listed().await {
        return Ok(());
    }
    match sweep_orphan_tunnel_keys(&nsdb).await {
        Ok(0) => {}
        Ok(released) => info!(
            released,
            "released orphan tunnel keys of namespace networks"
        ),
        Err(e) => {
            warn!(error = %nsdb::error::chain(&e), "sweeping orphan tunnel keys of namespace networks")
        }
    }
    let mut c = Controller {
        nsdb,
        stores,
        config,
        recorder,
        metrics,
        seen: BTreeMap::new(),
        router_seen: None,
        dirty: BTreeSet::new(),
        pending: BTreeMap::new(),
        resync_at: Instant::now(),
        unread: None,
    };
    match &c.config {
        Config::Shared => info!("namespace controller starting (shared mode)"),
        Config::PerNamespace(p) => {
            info!(pool = %p.pool, prefix_len = p.prefix_len, router = %p.router, "namespace controller starting (per-namespace mode)")
        }
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        c.observe();
        c.settle().await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::*;
    use crate::fixtures::vbr;
    use crate::ids::{CrKind, ObjectKey};
    use crate::store::Owner;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn subnets_are_the_lowest_free_blocks() {
        let pool = net("10.240.0.0/16");
        // (used, expected)
        let rows: [(&[&str], &str); 6] = [
            (&[], "10.240.0.0/24"),
            (&["10.240.0.0/24"], "10.240.1.0/24"),
            (&["10.240.0.0/24", "10.240.2.0/24"], "10.240.1.0/24"),
            // A larger subnet overlapping several blocks, and one outside the pool.
            (&["10.240.0.0/23", "10.1.0.0/24"], "10.240.2.0/24"),
            // A smaller one inside a block takes the whole block.
            (&["10.240.0.128/25"], "10.240.1.0/24"),
            // Unsorted.
            (
                &["10.240.1.0/24", "10.240.0.0/24", "10.240.3.0/24"],
                "10.240.2.0/24",
            ),
        ];
        for (used, want) in rows {
            let got = allocate(pool, 24, used.iter().map(|u| net(u))).unwrap();
            assert_eq!(got, net(want), "{used:?}");
        }
        assert_eq!(
            allocate(net("10.0.0.0/8"), 30, [net("10.0.0.0/9")]).unwrap(),
            net("10.128.0.0/30")
        );
    }

    #[test]
    fn an_exhausted_pool_says_so() {
        let pool = net("10.240.0.0/23");
        let err = allocate(pool, 24, [net("10.240.0.0/24"), net("10.240.1.0/24")]).unwrap_err();
        assert_eq!(
            err,
            PoolError::Exhausted {
                pool,
                prefix_len: 24,
                blocks: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "the namespace pool 10.240.0.0/23 is exhausted: none of its 2 /24 blocks is free of \
             the subnets of the bridges in NSDB"
        );
        assert!(allocate(pool, 24, [net("10.0.0.0/8")]).is_err());
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let ok = PerNamespace::new(net("10.240.0.0/12"), 24, "cluster".into()).unwrap();
        assert_eq!(ok.prefix_len, 24);
        assert_eq!(
            PerNamespace::new(net("10.240.0.0/12"), 8, "cluster".into())
                .unwrap_err()
                .to_string(),
            "--namespace-prefix-len 8 does not fit --namespace-pool 10.240.0.0/12: it must be \
             between 12 and 30"
        );
        assert!(PerNamespace::new(net("10.240.0.0/12"), 31, "cluster".into()).is_err());
        assert_eq!(
            PerNamespace::new(net("10.240.0.1/12"), 24, "cluster".into()).unwrap_err(),
            PoolError::HostBits {
                pool: net("10.240.0.1/12")
            }
        );
        assert!(PerNamespace::new(net("10.240.0.0/12"), 24, "Cluster".into()).is_err());
        assert!(PerNamespace::new(net("10.240.0.0/12"), 24, String::new()).is_err());
    }

    #[test]
    fn one_namespace_gets_a_bridge_two_ports_and_a_route() {
        let records = records("team-a", net("10.240.3.0/24"), true, Some("cluster"));
        let keys: Vec<String> = records.iter().map(AnyRecord::key).collect();
        assert_eq!(
            keys,
            [
                "/weft/v1/bridges/kns:team-a",
                "/weft/v1/ports/kns:team-a:port",
                "/weft/v1/ports/kns:team-a:peer",
                "/weft/v1/routes/kns:team-a:port:connected",
            ]
        );
        let [
            AnyRecord::Bridge(b),
            AnyRecord::Port(rp),
            AnyRecord::Port(bp),
            AnyRecord::Route(rt),
        ] = records.as_slice()
        else {
            panic!("{records:?}")
        };
        assert_eq!(b.name, "namespace/team-a");
        assert_eq!(b.subnet_v4, Some(net("10.240.3.0/24")));
        assert_eq!(b.gateway_v4, Some("10.240.3.1".parse().unwrap()));
        assert_eq!(b.namespaces, ["team-a"]);
        assert_eq!((b.mtu, b.tunnel_key), (0, 0));
        assert_eq!(rp.device, DeviceRef::Router("vrt:cluster".into()));
        assert_eq!(
            rp.kind,
            PortKind::Interior {
                peer: "kns:team-a:peer".into()
            }
        );
        assert_eq!(rp.addresses, ["10.240.3.1/24".parse::<IpNet>().unwrap()]);
        assert_eq!(bp.device, DeviceRef::Bridge("kns:team-a".into()));
        assert_eq!(
            bp.kind,
            PortKind::Interior {
                peer: "kns:team-a:port".into()
            }
        );
        assert_eq!(bp.addresses, ["10.240.3.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(rp.mac, bp.mac, "the bridge side answers ARP as the router");
        assert_eq!(rp.mac, MacAddr::local_from_name("kns:team-a:port"));
        assert!(rp.admin_up && bp.admin_up);
        assert_eq!(rt.router, "vrt:cluster");
        assert_eq!(rt.dst, "10.240.3.0/24".parse::<IpNet>().unwrap());
        assert_eq!((rt.next_hop, rt.port.as_str()), (None, "kns:team-a:port"));
        assert_eq!(rt.weight, 1);

        // Every record is the namespace's, none the router's, and every id is valid.
        let ns = key("team-a");
        let router = ObjectKey::new(CrKind::VirtualRouter, "cluster");
        for r in &records {
            assert!(ns.owns(&r.id()), "{}", r.id());
            assert!(!r.id().starts_with(&router.base_id()), "{}", r.id());
            assert_eq!(ObjectKey::owner_of(&r.id()), None, "{}", r.id());
            assert!(ns.kinds().contains(&r.kind()));
            nsdb::keys::validate_id(r.kind(), &r.id()).unwrap();
        }
        // Unlisted, and without a router: the bridge alone, listing nothing.
        let alone = records_unrouted("team-a");
        assert_eq!(alone.len(), 1);
        let AnyRecord::Bridge(b) = &alone[0] else {
            panic!()
        };
        assert!(b.namespaces.is_empty());
    }

    fn records_unrouted(ns: &str) -> Vec<AnyRecord> {
        records(ns, net("10.240.3.0/24"), false, None)
    }

    #[test]
    fn selectors_resolve_against_namespace_labels() {
        let mut inv = Inventory::default();
        let mut red = vbr("red", "10.1.0.0/24");
        red.spec.namespaces = Some(api::NamespaceSelection {
            names: vec!["named".into()],
            selector: Some(sel(serde_json::json!({"matchLabels": {"team": "red"}}))),
        });
        inv.add_bridge(red);
        let mut all_teams = vbr("all-teams", "10.2.0.0/24");
        all_teams.spec.namespaces = Some(api::NamespaceSelection {
            names: vec![],
            selector: Some(sel(serde_json::json!({
                "matchExpressions": [{"key": "team", "operator": "Exists"}]
            }))),
        });
        inv.add_bridge(all_teams);
        let mut plain = vbr("plain", "10.3.0.0/24");
        plain.spec.namespaces = Some(api::NamespaceSelection {
            names: vec!["n3".into()],
            selector: None,
        });
        inv.add_bridge(plain);
        inv.add_namespace("n1", labels(&[("team", "red")]));
        inv.add_namespace("n2", labels(&[("team", "blue")]));
        inv.add_namespace("n3", labels(&[("team", "red")]));
        inv.add_namespace("n4", labels(&[("other", "x")]));

        let served = served(&inv);
        let row = |ns: &str| served.get(ns).map(|s| (s.bridge.as_str(), s.by));
        // n1: both selectors match; all-teams sorts before red.
        assert_eq!(row("n1"), Some(("all-teams", By::Selector)));
        assert_eq!(row("n2"), Some(("all-teams", By::Selector)));
        // n3: named by plain, which wins over both selectors.
        assert_eq!(row("n3"), Some(("plain", By::Name)));
        assert_eq!(row("n4"), None);
        // A name need not exist as a namespace.
        assert_eq!(row("named"), Some(("red", By::Name)));

        assert_eq!(selected_by("all-teams", &inv), ["n1", "n2"]);
        assert!(selected_by("red", &inv).is_empty());
        assert!(selected_by("plain", &inv).is_empty());
        assert_eq!(
            conflicts("red", &inv),
            [
                "spec.namespaces.selector: namespace n1 is served by VirtualBridge all-teams, \
                 whose selector matches it too and whose name sorts first",
                "spec.namespaces.selector: namespace n3 is served by VirtualBridge plain, which \
                 names it in spec.namespaces.names",
            ]
        );
        assert_eq!(conflicts("all-teams", &inv).len(), 1, "n3");
        assert!(conflicts("plain", &inv).is_empty());

        // The translation lists names and selected namespaces together.
        let t =
            crate::translate(&ObjectKey::new(CrKind::VirtualBridge, "all-teams"), &inv).unwrap();
        let Some(AnyRecord::Bridge(b)) = t.get("/weft/v1/bridges/vbr:all-teams") else {
            panic!()
        };
        assert_eq!(b.namespaces, ["n1", "n2"]);
        let t = crate::translate(&ObjectKey::new(CrKind::VirtualBridge, "red"), &inv).unwrap();
        let Some(AnyRecord::Bridge(b)) = t.get("/weft/v1/bridges/vbr:red") else {
            panic!()
        };
        assert_eq!(b.namespaces, ["named"]);

        // all-teams goes: red takes n1 (n3 stays plain's).
        inv.bridges.remove("all-teams");
        assert_eq!(selected_by("red", &inv), ["n1"]);
        // An empty selector matches every namespace.
        inv.bridges.get_mut("red").unwrap().spec.namespaces = Some(api::NamespaceSelection {
            names: vec![],
            selector: Some(LabelSelector::default()),
        });
        assert_eq!(selected_by("red", &inv), ["n1", "n2", "n4"]);
    }

    #[test]
    fn a_bad_selector_selects_none_and_is_refused_naming_the_field() {
        let mut inv = Inventory::default();
        let mut b = vbr("b", "10.1.0.0/24");
        b.spec.namespaces = Some(api::NamespaceSelection {
            names: vec![],
            selector: Some(sel(serde_json::json!({"matchExpressions": [
                {"key": "team", "operator": "Near", "values": ["x"]},
                {"key": "team", "operator": "In"},
            ]}))),
        });
        inv.add_bridge(b);
        inv.add_namespace("n1", labels(&[("team", "x")]));
        assert!(served(&inv).is_empty());
        let err = crate::translate(&ObjectKey::new(CrKind::VirtualBridge, "b"), &inv).unwrap_err();
        let Error::InvalidSpec { message, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(
            message,
            "spec.namespaces.selector.matchExpressions[0].operator: \"Near\" is not one of \"In\", \
             \"NotIn\", \"Exists\", \"DoesNotExist\"; spec.namespaces.selector.matchExpressions[1]\
             .values: must be non-empty with operator In"
        );
    }

    #[test]
    fn plans_for_each_case() {
        let f = |per_namespace, live, served, listed_elsewhere, has_bridge| Facts {
            per_namespace,
            live,
            served,
            listed_elsewhere,
            has_bridge,
        };
        // (facts, plan)
        let rows = [
            (f(true, true, false, false, false), Plan::Serve),
            (f(true, true, false, false, true), Plan::Serve),
            // A VirtualBridge dropped it but still lists it: the own bridge sorts first, so
            // serving it at once leaves no gap.
            (f(true, true, false, true, false), Plan::Serve),
            (f(true, true, true, false, false), Plan::Nothing),
            (f(true, true, true, false, true), Plan::Handover),
            (f(true, true, true, true, true), Plan::Retire),
            (f(true, false, false, false, true), Plan::Retire),
            (f(true, false, false, false, false), Plan::Nothing),
            (f(false, true, false, false, false), Plan::Nothing),
            (f(false, true, false, false, true), Plan::Retire),
            (f(false, true, true, false, true), Plan::Retire),
        ];
        for (facts, want) in rows {
            assert_eq!(plan(facts), want, "{facts:?}");
        }
    }
}
