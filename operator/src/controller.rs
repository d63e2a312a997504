//! The four controllers (one per kind): finalizer, semantic check, NSDB write, status by
//! server-side apply, error policy with exponential backoff, and metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{
    AccessControlList, RouterPortStatus, VirtualBridge, VirtualLoadBalancer, VirtualRouter, reason,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use nsdb::{AnyRecord, Nsdb, PortKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::error::Error;
use crate::ids::{CrKind, ObjectKey};
use crate::metrics::Metrics;
use crate::program;
use crate::store::{self, Applied};
use crate::translate::Inventory;

/// The finalizer every Weft object carries while it has records in NSDB.
pub const FINALIZER: &str = "weft.dev/nsdb-cleanup";
/// The field manager of every status the operator writes.
pub const FIELD_MANAGER: &str = "weft-operator";
/// How often a programmed object is reconciled again, to repair drift in NSDB.
pub const RESYNC: Duration = Duration::from_secs(300);

/// The bound of reading a load balancer's member health for its status.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The reason of the Warning event of a bridge whose selector matches a namespace that another
/// bridge serves.
pub const NAMESPACE_CONFLICT: &str = "NamespaceConflict";
/// The reason of the Warning event of a load balancer member found down by its health check.
pub const MEMBER_UNHEALTHY: &str = "MemberUnhealthy";
/// The reason of the Normal event of a load balancer member found up again.
pub const MEMBER_HEALTHY: &str = "MemberHealthy";
/// How often an object refused by the semantic check is checked again.
pub const INVALID_RECHECK: Duration = Duration::from_secs(60);
/// First and largest delay of the error backoff.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The reflector stores of all four kinds, and of the Namespaces (whose labels
/// `spec.namespaces.selector` of a bridge matches): the inventory the semantic check sees.
///
/// They are the operator's own (see [`mirror`]), not the controllers': the operator must know
/// when every kind has been listed completely, and a controller's store only tells that
/// through `Store::wait_until_ready`, whose one-shot channel keeps a single waker, that of the
/// controller's own runner, so a second waiter would leave one of them asleep.
#[derive(Clone)]
pub struct Stores {
    pub bridges: Store<VirtualBridge>,
    pub routers: Store<VirtualRouter>,
    pub load_balancers: Store<VirtualLoadBalancer>,
    pub acls: Store<AccessControlList>,
    pub namespaces: Store<Namespace>,
    /// A bit per kind, set once its first complete list is in its store.
    listed: tokio::sync::watch::Receiver<u8>,
}

/// `Stores::listed` once all five kinds are listed.
const ALL_LISTED: u8 = 0b1_1111;

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

fn live<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<K> {
    store
        .state()
        .into_iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .map(|o| (*o).clone())
        .collect()
}

impl Stores {
    /// Waits until each of the five stores holds its kind's first complete list; false when
    /// the watches stopped first. Until then the inventory is partial: a bridge translated
    /// before the ACLs are listed loses its ACL chains, and a router before its bridges are
    /// listed is refused. Found by the control-plane tests: every start (and every leader
    /// takeover) wrote the bridge `blue` without its inbound chain, then again with it once
    /// the ACLs were listed, dropping the policy from NSDB meanwhile.
    pub async fn wait_until_listed(&self) -> bool {
        self.listed
            .clone()
            .wait_for(|m| *m == ALL_LISTED)
            .await
            .is_ok()
    }

    /// Every object not being deleted.
    pub fn inventory(&self) -> Inventory {
        let mut inv = Inventory::default();
        live(&self.bridges)
            .into_iter()
            .for_each(|o| inv.add_bridge(o));
        live(&self.routers)
            .into_iter()
            .for_each(|o| inv.add_router(o));
        live(&self.load_balancers)
            .into_iter()
            .for_each(|o| inv.add_load_balancer(o));
        live(&self.acls).into_iter().for_each(|o| inv.add_acl(o));
        self.add_namespaces(&mut inv);
        inv
    }

    /// The bridges not being deleted and the namespaces' labels: what decides which bridge
    /// serves each namespace ([`crate::kuryr::namespaces::served`]).
    pub fn namespace_inventory(&self) -> Inventory {
        let mut inv = Inventory::default();
        live(&self.bridges)
            .into_iter()
            .for_each(|o| inv.add_bridge(o));
        self.add_namespaces(&mut inv);
        inv
    }

    /// Every namespace's labels, those being deleted too: their pods still run, and no new
    /// one starts there.
    fn add_namespaces(&self, inv: &mut Inventory) {
        for ns in self.namespaces.state() {
            if let Some(name) = &ns.metadata.name {
                inv.add_namespace(name, ns.metadata.labels.clone().unwrap_or_default());
            }
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub nsdb: Nsdb,
    pub stores: Stores,
    failures: Mutex<HashMap<ObjectKey, u32>>,
    /// The notes last published as an event, by object.
    notes: Mutex<HashMap<ObjectKey, Vec<String>>>,
    /// The member verdicts last reported, by object, to raise an event on each change.
    health: Mutex<HashMap<ObjectKey, BTreeMap<std::net::SocketAddr, bool>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("nsdb", &self.nsdb)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context over the given client, NSDB and stores.
    pub fn new(client: Client, nsdb: Nsdb, metrics: Arc<Metrics>, stores: Stores) -> Self {
        Context {
            recorder: recorder(&client),
            client,
            metrics,
            nsdb,
            stores,
            failures: Mutex::new(HashMap::new()),
            notes: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
        }
    }

    /// The verdicts of `now` that differ from those last seen for `key` (which they
    /// replace): each member found down, and each found up after it was down. A member
    /// whose verdict is new and up, or whose verdict expired, is no news.
    fn health_changes(
        &self,
        key: &ObjectKey,
        now: &BTreeMap<std::net::SocketAddr, bool>,
    ) -> Vec<(std::net::SocketAddr, bool)> {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let before = h.insert(key.clone(), now.clone()).unwrap_or_default();
        health_news(&before, now)
    }

    /// Whether `notes` differ from those last seen for `key` (which they replace).
    fn notes_changed(&self, key: &ObjectKey, notes: &[String]) -> bool {
        let mut n = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        let old = if notes.is_empty() {
            n.remove(key)
        } else {
            n.insert(key.clone(), notes.to_vec())
        };
        old.unwrap_or_default() != notes
    }

    fn backoff(&self, key: &ObjectKey) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    fn succeeded(&self, key: &ObjectKey) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The verdicts of `now` worth an event after `before`: each member found down, and each
/// found up after it was down.
fn health_news(
    before: &BTreeMap<std::net::SocketAddr, bool>,
    now: &BTreeMap<std::net::SocketAddr, bool>,
) -> Vec<(std::net::SocketAddr, bool)> {
    now.iter()
        .filter(|&(m, &up)| match before.get(m) {
            Some(&was) => was != up,
            None => !up,
        })
        .map(|(&m, &up)| (m, up))
        .collect()
}

/// The recorder of the operator's events, as [`FIELD_MANAGER`] and this replica (its pod).
pub fn recorder(client: &Client) -> Recorder {
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Recorder::new(client.clone(), reporter)
}

/// The delay before retry number `failures` (1-based): doubling from [`BACKOFF_BASE`] up to
/// [`BACKOFF_MAX`].
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// A Weft kind the controllers handle.
pub trait WeftResource:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The kind.
    const KIND: CrKind;
    /// The object's current conditions.
    fn conditions(&self) -> Vec<Condition>;
    /// Status fields beyond conditions and observedGeneration, from what was applied.
    fn status_facts(&self, applied: &Applied) -> serde_json::Value;
    /// The same object with itself placed into an inventory.
    fn add_to(&self, inv: &mut Inventory);
    /// The NSDB id of the load balancer whose members' health the status reports, for an
    /// object with a health check.
    fn probed_load_balancer(&self) -> Option<String> {
        None
    }
    /// What a programmed object does not do that its spec asks for, each naming the field
    /// and why: reported in its `Ready` message and by a Warning event.
    fn notes(&self, _inv: &Inventory) -> Vec<String> {
        Vec::new()
    }
}

impl WeftResource for VirtualBridge {
    const KIND: CrKind = CrKind::VirtualBridge;
    fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
    fn status_facts(&self, applied: &Applied) -> serde_json::Value {
        json!({ "tunnelKey": applied.tunnel_key(&crate::ids::bridge(&self.name_any())) })
    }
    fn add_to(&self, inv: &mut Inventory) {
        inv.add_bridge(self.clone());
    }
    fn notes(&self, inv: &Inventory) -> Vec<String> {
        crate::kuryr::namespaces::conflicts(&self.name_any(), inv)
    }
}

impl WeftResource for VirtualRouter {
    const KIND: CrKind = CrKind::VirtualRouter;
    fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
    fn status_facts(&self, applied: &Applied) -> serde_json::Value {
        let name = self.name_any();
        let ports: Vec<RouterPortStatus> = applied
            .records
            .iter()
            .filter_map(|r| match r {
                AnyRecord::Port(p) if matches!(p.device, nsdb::DeviceRef::Router(_)) => {
                    let interface = match &p.kind {
                        PortKind::Uplink => api::UPLINK.to_owned(),
                        _ => p.id.rsplit(':').next().unwrap_or_default().to_owned(),
                    };
                    Some(RouterPortStatus {
                        interface,
                        address: p
                            .addresses
                            .first()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        mac: Some(p.mac.to_string()),
                        tunnel_key: Some(p.tunnel_key),
                        port_id: Some(p.id.clone()),
                    })
                }
                _ => None,
            })
            .collect();
        json!({
            "tunnelKey": applied.tunnel_key(&crate::ids::router(&name)),
            "ports": ports,
        })
    }
    fn add_to(&self, inv: &mut Inventory) {
        inv.add_router(self.clone());
    }
}

impl WeftResource for VirtualLoadBalancer {
    const KIND: CrKind = CrKind::VirtualLoadBalancer;
    fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
    fn status_facts(&self, applied: &Applied) -> serde_json::Value {
        let vips: Vec<serde_json::Value> = applied
            .records
            .iter()
            .filter_map(|r| match r {
                AnyRecord::LoadBalancer(lb) => Some(lb),
                _ => None,
            })
            .flat_map(|lb| lb.vips.iter())
            .zip(self.spec.vips.iter())
            .map(|(v, spec)| {
                json!({
                    "ip": v.ip.to_string(),
                    "protocol": spec.protocol,
                    "port": v.port,
                    "members": v.members.iter().map(|m| {
                        let mut s = json!({"ip": m.ip.to_string(), "port": m.port});
                        if let Some(h) = applied.health.get(&std::net::SocketAddr::new(m.ip, m.port)) {
                            s["healthy"] = json!(h);
                        }
                        s
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "vips": vips })
    }
    fn add_to(&self, inv: &mut Inventory) {
        inv.add_load_balancer(self.clone());
    }
    fn probed_load_balancer(&self) -> Option<String> {
        self.spec
            .health_check
            .as_ref()
            .map(|_| crate::ids::load_balancer(&self.name_any()))
    }
}

impl WeftResource for AccessControlList {
    const KIND: CrKind = CrKind::AccessControlList;
    fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
    fn status_facts(&self, applied: &Applied) -> serde_json::Value {
        let rules = applied.records.iter().find_map(|r| match r {
            AnyRecord::Chain(c) => Some(c.rules.len()),
            _ => None,
        });
        json!({ "chain": crate::ids::acl_chain(&self.name_any()), "rules": rules })
    }
    fn add_to(&self, inv: &mut Inventory) {
        inv.add_acl(self.clone());
    }
}

fn object_key<K: WeftResource>(obj: &K) -> ObjectKey {
    ObjectKey::new(K::KIND, obj.name_any())
}

/// Writes `status` by server-side apply under [`FIELD_MANAGER`].
async fn write_status<K: WeftResource>(
    ctx: &Context,
    obj: &K,
    ready: Condition,
    facts: serde_json::Value,
) -> Result<(), Error> {
    let key = object_key(obj);
    let mut conditions = obj.conditions();
    // Keeps lastTransitionTime when the status is unchanged.
    api::set_condition(&mut conditions, ready);
    let mut status = json!({
        "conditions": conditions,
        "observedGeneration": obj.meta().generation,
    });
    if let (Some(s), serde_json::Value::Object(f)) = (status.as_object_mut(), facts) {
        for (k, v) in f {
            if !v.is_null() {
                s.insert(k, v);
            }
        }
    }
    let patch = json!({
        "apiVersion": format!("{}/{}", api::GROUP, api::VERSION),
        "kind": K::KIND.as_str(),
        "status": status,
    });
    let api: Api<K> = Api::all(ctx.client.clone());
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        object: key.to_string(),
        source,
    })?;
    Ok(())
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// How a refusal of the spec is reported: the `Ready` reason (also the Warning event's),
/// the message naming the fields, and when to look again. `None` for failures that are not
/// the spec's fault.
fn refusal(err: &Error) -> Option<(&'static str, &str, Action)> {
    match err {
        Error::Unsupported { message, .. } => {
            // Only the object's own spec decides, so only its change can lift the refusal.
            Some((reason::UNSUPPORTED, message, Action::await_change()))
        }
        Error::InvalidSpec { message, .. } => {
            // The fault may lie in another object (a missing reference, a duplicate VIP),
            // whose change does not always trigger this one: look again now and then.
            Some((
                reason::INVALID_SPEC,
                message,
                Action::requeue(INVALID_RECHECK),
            ))
        }
        _ => None,
    }
}

async fn apply<K: WeftResource>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let key = object_key(obj.as_ref());
    // Translate only against the complete inventory (see [`Stores::wait_until_listed`]).
    if !ctx.stores.wait_until_listed().await {
        // The watches stopped: the controllers are stopping. Nothing is written.
        return Ok(Action::await_change());
    }
    let mut inv = ctx.stores.inventory();
    // The store may lag behind the object this reconcile was handed.
    obj.add_to(&mut inv);
    let generation = obj.meta().generation;
    match program::program(&ctx.nsdb, &key, &inv).await {
        Ok(mut applied) => {
            let probed = obj.probed_load_balancer();
            if let Some(lb) = &probed {
                applied.health = member_health(ctx, lb).await;
            }
            let health_news = match &probed {
                Some(_) => ctx.health_changes(&key, &applied.health),
                None => Vec::new(),
            };
            ctx.metrics
                .records_changed(applied.written, applied.deleted);
            let mut msg = format!(
                "{} NSDB records ({} written, {} deleted)",
                applied.records.len(),
                applied.written,
                applied.deleted
            );
            // Programmed all the same: another object's spec decides, and refusing this one
            // would take what it does serve away.
            let notes = obj.notes(&inv);
            for note in &notes {
                msg.push_str("; ");
                msg.push_str(note);
            }
            let cond = api::ready_condition(true, reason::PROGRAMMED, msg, generation, now());
            write_status(ctx, obj.as_ref(), cond, obj.status_facts(&applied)).await?;
            if ctx.notes_changed(&key, &notes) && !notes.is_empty() {
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: NAMESPACE_CONFLICT.into(),
                    note: Some(notes.join("; ").chars().take(1000).collect()),
                    action: "Translate".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
                    warn!(object = %key, err = %e, "cannot publish event");
                }
            }
            for (member, up) in health_news {
                let (type_, reason, verdict) = if up {
                    (
                        EventType::Normal,
                        MEMBER_HEALTHY,
                        "passes its health check again",
                    )
                } else {
                    (
                        EventType::Warning,
                        MEMBER_UNHEALTHY,
                        "fails its health check",
                    )
                };
                let event = KubeEvent {
                    type_,
                    reason: reason.into(),
                    note: Some(format!("member {member} {verdict}")),
                    action: "HealthCheck".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
                    warn!(object = %key, err = %e, "cannot publish event");
                }
            }
            ctx.succeeded(&key);
            // A change of the members' health triggers the load balancer on its own
            // ([`health_verdicts`]).
            Ok(Action::requeue(RESYNC))
        }
        Err(err) => {
            let refused = refusal(&err).map(|(why, message, next)| (why, message.to_owned(), next));
            if let Some((why, message, next)) = refused {
                // Nothing of the topology is touched: the records of the last spec that was
                // programmed stay, and the object waits for a corrected spec.
                let cond = api::ready_condition(false, why, &message, generation, now());
                write_status(ctx, obj.as_ref(), cond, json!({})).await?;
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: why.into(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
                    warn!(object = %key, err = %e, "cannot publish event");
                }
                ctx.metrics.reconcile_failed(K::KIND.as_str(), &err);
                return Ok(next);
            }
            let cond = api::ready_condition(
                false,
                reason::NSDB_ERROR,
                err.to_string(),
                generation,
                now(),
            );
            if let Err(status_err) = write_status(ctx, obj.as_ref(), cond, json!({})).await {
                warn!(object = %key, err = %status_err, "cannot write status");
            }
            Err(err)
        }
    }
}

/// The verdicts on load balancer `lb`'s members, by member; empty, and logged, when NSDB
/// does not answer in time (the status then shows no health until the next look).
async fn member_health(ctx: &Context, lb: &str) -> BTreeMap<std::net::SocketAddr, bool> {
    let prefix = format!("{lb}/");
    let list = ctx.nsdb.list_under::<nsdb::MemberHealth>(&prefix);
    match tokio::time::timeout(HEALTH_READ_TIMEOUT, list).await {
        Ok(Ok(l)) => l
            .records
            .into_iter()
            .map(|v| (v.record.member, v.record.healthy))
            .collect(),
        Ok(Err(e)) => {
            warn!(lb, err = %e, "cannot read the members' health");
            BTreeMap::new()
        }
        Err(_) => {
            warn!(lb, "reading the members' health timed out");
            BTreeMap::new()
        }
    }
}

async fn cleanup<K: WeftResource>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let key = object_key(obj.as_ref());
    let deleted = store::cleanup(&ctx.nsdb, &key).await?;
    ctx.metrics.records_changed(0, deleted);
    info!(object = %key, deleted, "removed NSDB records");
    Ok(Action::await_change())
}

/// Reconciles one object of kind `K`.
pub async fn reconcile<K: WeftResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = object_key(obj.as_ref());
    let span = info_span!("reconcile", kind = %K::KIND, name = %key.name);
    async move {
        let _timer = ctx.metrics.reconcile_started(K::KIND.as_str());
        let api: Api<K> = Api::all(ctx.client.clone());
        finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                Finalizer::Apply(o) => apply(o, &ctx).await,
                Finalizer::Cleanup(o) => cleanup(o, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer {
            object: key.to_string(),
            source: Box::new(e),
        })
    }
    .instrument(span)
    .await
}

/// Requeues a failed object with exponential backoff, and counts the failure.
pub fn error_policy<K: WeftResource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(obj.as_ref());
    ctx.metrics.reconcile_failed(K::KIND.as_str(), err);
    let delay = ctx.backoff(&key);
    warn!(object = %key, error = %nsdb::error::chain(err), ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Remembers which devices each ACL was attached to, so detaching triggers them too.
type Attachments = Arc<Mutex<HashMap<String, BTreeSet<String>>>>;

fn acl_targets(acl: &AccessControlList, bridges: bool, seen: &Attachments) -> BTreeSet<String> {
    let a = &acl.spec.attach_to;
    let now: BTreeSet<String> = if bridges { &a.bridges } else { &a.routers }
        .iter()
        .cloned()
        .collect();
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let before = seen.insert(acl.name_any(), now.clone()).unwrap_or_default();
    now.union(&before).cloned().collect()
}

/// Keeps `writer`'s store a copy of every object of kind `K`, and sets `bit` in `listed` once
/// the first complete list is in it. `seen` is handed each event once the store holds it.
/// Runs until dropped.
async fn mirror<K>(
    api: Api<K>,
    writer: Writer<K>,
    bit: u8,
    listed: &tokio::sync::watch::Sender<u8>,
    mut seen: impl FnMut(&watcher::Event<K>),
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|event| {
            match event {
                Ok(e) => {
                    // The reflector has applied it: at InitDone the store holds the whole list.
                    if matches!(e, watcher::Event::InitDone) {
                        listed.send_modify(|m| *m |= bit);
                    }
                    seen(&e);
                }
                Err(err) => warn!(kind = %K::kind(&()), %err, "inventory watch"),
            }
            futures::future::ready(())
        })
        .await;
}

/// What of each object of a kind was last seen, to tell the events that change it.
struct Seen<T> {
    now: HashMap<String, T>,
    /// What a (re)list brings, until it is complete.
    listing: Option<HashMap<String, T>>,
    /// Whether a list was complete before: the first one changes nothing that the
    /// controllers' first reconciles do not see.
    listed: bool,
}

impl<T: PartialEq> Seen<T> {
    fn new() -> Self {
        Seen {
            now: HashMap::new(),
            listing: None,
            listed: false,
        }
    }

    /// Takes in one event, with `of` the part that matters of an object; returns whether
    /// that part of any object changed.
    fn changed<K: Resource>(&mut self, e: &watcher::Event<K>, of: impl Fn(&K) -> T) -> bool {
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        match e {
            watcher::Event::Apply(o) => {
                let v = of(o);
                let changed = self.now.get(&name(o)) != Some(&v);
                self.now.insert(name(o), v);
                changed
            }
            watcher::Event::Delete(o) => self.now.remove(&name(o)).is_some(),
            watcher::Event::Init => {
                self.listing = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                if let Some(l) = self.listing.as_mut() {
                    l.insert(name(o), of(o));
                }
                false
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let changed = listed != self.now && self.listed;
                self.now = listed;
                self.listed = true;
                changed
            }
        }
    }
}

/// How long the triggers of a bulk reconcile gather before it starts: the object whose change
/// triggered it is reconciled by its own watch meanwhile, so the two reconciles do not race
/// to add or remove its finalizer.
const BULK_SETTLE: Duration = Duration::from_secs(1);

/// One item per burst of `rx`'s items, [`BULK_SETTLE`] after the burst's first.
fn coalesced(
    rx: futures::channel::mpsc::UnboundedReceiver<()>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.next().await?;
        tokio::time::sleep(BULK_SETTLE).await;
        while rx.try_recv().is_ok() {}
        Some(((), rx))
    })
}

/// The load balancers whose member verdicts change in NSDB, from a watch of the verdicts: one
/// reference per load balancer of each update. Verdicts on the load balancers of Kubernetes
/// Services are not the status of any object.
fn health_verdicts(nsdb: Nsdb) -> impl futures::Stream<Item = ObjectRef<VirtualLoadBalancer>> {
    let prefix = nsdb::Kind::MemberHealth.prefix();
    futures::stream::once(async move {
        let cache = nsdb::watch::WatchCache::start_prefix(nsdb, &prefix).await;
        let (_, updates) = cache.subscribe();
        (cache, updates)
    })
    .flat_map(|state| {
        futures::stream::unfold(state, |(cache, mut updates)| async move {
            let update = updates.recv().await?;
            Some((update, (cache, updates)))
        })
    })
    .flat_map(|update| {
        let names: BTreeSet<&str> = update
            .changes
            .iter()
            .filter_map(|c| crate::ids::load_balancer_name(c.id.split('/').next()?))
            .collect();
        let refs: Vec<_> = names.into_iter().map(ObjectRef::new).collect();
        futures::stream::iter(refs)
    })
}

/// Whether some bridge of the store chooses namespaces by label.
fn any_selector(bridges: &Store<VirtualBridge>) -> bool {
    bridges.state().iter().any(|b| {
        b.spec
            .namespaces
            .as_ref()
            .is_some_and(|n| n.selector.is_some())
    })
}

/// What of a bridge decides which namespaces the others serve.
fn namespace_selection(b: &VirtualBridge) -> (Option<api::NamespaceSelection>, bool) {
    (
        b.spec.namespaces.clone(),
        b.metadata.deletion_timestamp.is_some(),
    )
}

/// Runs the four controllers, the NetworkPolicy and Service controllers
/// ([`crate::kuryr::policies`], [`crate::kuryr::services`]), and the namespace networks'
/// ([`crate::kuryr::namespaces`], in the mode `namespaces` says), until they stop (on
/// SIGTERM/SIGINT).
pub async fn run(
    client: Client,
    nsdb: Nsdb,
    metrics: Arc<Metrics>,
    namespaces: crate::kuryr::namespaces::Config,
) -> Result<(), Error> {
    let cfg = watcher::Config::default;
    let vbr = Controller::new(Api::<VirtualBridge>::all(client.clone()), cfg());
    let vrt = Controller::new(Api::<VirtualRouter>::all(client.clone()), cfg());
    let vlb = Controller::new(Api::<VirtualLoadBalancer>::all(client.clone()), cfg());
    let acl = Controller::new(Api::<AccessControlList>::all(client.clone()), cfg());
    let (bridges, bridges_w) = reflector::store();
    let (routers, routers_w) = reflector::store();
    let (load_balancers, load_balancers_w) = reflector::store();
    let (acls, acls_w) = reflector::store();
    let (namespace_store, namespaces_w) = reflector::store();
    let (listed_tx, listed) = tokio::sync::watch::channel(0u8);
    let stores = Stores {
        bridges,
        routers,
        load_balancers,
        acls,
        namespaces: namespace_store,
        listed,
    };
    // Every bridge is translated again when a namespace's labels change, or the namespaces a
    // bridge chooses: which bridge serves a namespace depends on all of them. The mirrors
    // tell, once their stores hold the change the translation reads.
    let (selection_tx, selection_rx) = futures::channel::mpsc::unbounded::<()>();
    let mut namespaces_seen = Seen::new();
    let mut bridges_seen = Seen::new();
    let on_namespace = {
        let (tx, bridges) = (selection_tx.clone(), stores.bridges.clone());
        move |e: &watcher::Event<Namespace>| {
            let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
            if namespaces_seen.changed(e, labels) && any_selector(&bridges) {
                let _ = tx.unbounded_send(());
            }
        }
    };
    let on_bridge = {
        let (tx, bridges) = (selection_tx, stores.bridges.clone());
        move |e: &watcher::Event<VirtualBridge>| {
            if bridges_seen.changed(e, namespace_selection) && any_selector(&bridges) {
                let _ = tx.unbounded_send(());
            }
        }
    };
    let inventory = async {
        tokio::join!(
            mirror(
                Api::all(client.clone()),
                bridges_w,
                0b0_0001,
                &listed_tx,
                on_bridge
            ),
            mirror(
                Api::all(client.clone()),
                routers_w,
                0b0_0010,
                &listed_tx,
                |_| {}
            ),
            mirror(
                Api::all(client.clone()),
                load_balancers_w,
                0b0_0100,
                &listed_tx,
                |_| {}
            ),
            mirror(
                Api::all(client.clone()),
                acls_w,
                0b0_1000,
                &listed_tx,
                |_| {}
            ),
            mirror(
                Api::all(client.clone()),
                namespaces_w,
                0b1_0000,
                &listed_tx,
                on_namespace
            ),
        )
    };
    let ctx = Arc::new(Context::new(client.clone(), nsdb, metrics, stores.clone()));

    // A bridge's chains follow the ACLs attached to it.
    let seen_b: Attachments = Arc::default();
    let vbr = vbr
        .watches(
            Api::<AccessControlList>::all(client.clone()),
            cfg(),
            move |a| {
                acl_targets(&a, true, &seen_b)
                    .into_iter()
                    .map(|n| ObjectRef::<VirtualBridge>::new(&n))
            },
        )
        .reconcile_all_on(coalesced(selection_rx))
        .shutdown_on_signal();
    // A router follows its bridges' subnets and its attached ACLs.
    let routers = stores.routers.clone();
    let seen_r: Attachments = Arc::default();
    let vrt = vrt
        .watches(Api::<VirtualBridge>::all(client.clone()), cfg(), move |b| {
            let name = b.name_any();
            routers
                .state()
                .iter()
                .filter(|r| r.spec.interfaces.iter().any(|i| i.bridge == name))
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(
            Api::<AccessControlList>::all(client.clone()),
            cfg(),
            move |a| {
                acl_targets(&a, false, &seen_r)
                    .into_iter()
                    .map(|n| ObjectRef::<VirtualRouter>::new(&n))
            },
        )
        .shutdown_on_signal();
    // A load balancer's status follows its members' health as the agents write and expire
    // their verdicts.
    let vlb = vlb
        .reconcile_on(health_verdicts(ctx.nsdb.clone()))
        .shutdown_on_signal();
    let acl = acl.shutdown_on_signal();

    fn log<T: Debug, E: std::error::Error>(
        kind: CrKind,
    ) -> impl Fn(Result<T, E>) -> futures::future::Ready<()> {
        move |r| {
            if let Err(err) = r {
                warn!(%kind, %err, "controller");
            }
            futures::future::ready(())
        }
    }
    info!("controllers starting");
    let controllers = async {
        tokio::join!(
            vbr.run(reconcile, error_policy, ctx.clone())
                .for_each(log(CrKind::VirtualBridge)),
            vrt.run(reconcile, error_policy, ctx.clone())
                .for_each(log(CrKind::VirtualRouter)),
            vlb.run(reconcile, error_policy, ctx.clone())
                .for_each(log(CrKind::VirtualLoadBalancer)),
            acl.run(reconcile, error_policy, ctx.clone())
                .for_each(log(CrKind::AccessControlList)),
        )
    };
    // The inventory's watches run as long as the controllers do (they never end by
    // themselves).
    let policies =
        crate::kuryr::policies::run(client.clone(), ctx.nsdb.clone(), ctx.metrics.clone());
    let services =
        crate::kuryr::services::run(client.clone(), ctx.nsdb.clone(), ctx.metrics.clone());
    let orphans = crate::kuryr::orphans::run(client.clone(), ctx.nsdb.clone());
    let namespace_networks = crate::kuryr::namespaces::run(
        ctx.nsdb.clone(),
        stores.clone(),
        recorder(&client),
        ctx.metrics.clone(),
        namespaces,
    );
    tokio::select! {
        _ = controllers => {}
        _ = inventory => {}
        r = policies => if let Err(err) = r {
            warn!(%err, "NetworkPolicy controller");
        },
        r = services => if let Err(err) = r {
            warn!(%err, "Service controller");
        },
        r = orphans => if let Err(err) = r {
            warn!(%err, "pod ports of gone nodes");
        },
        r = namespace_networks => if let Err(err) = r {
            warn!(%err, "namespace network controller");
        },
    }
    info!("controllers stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_news_when_found_down_and_when_found_up_again() {
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let map = |v: &[(std::net::SocketAddr, bool)]| v.iter().copied().collect();
        // First verdicts: only a member down is news.
        assert_eq!(
            health_news(&map(&[]), &map(&[(a, true), (b, false)])),
            [(b, false)]
        );
        // Nothing changed: no news.
        let both = map(&[(a, true), (b, false)]);
        assert_eq!(health_news(&both, &both), []);
        // b up again, a down.
        assert_eq!(
            health_news(&both, &map(&[(a, false), (b, true)])),
            [(a, false), (b, true)]
        );
        // A verdict that expired is no news.
        assert_eq!(health_news(&both, &map(&[(a, true)])), []);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_delay(1), Duration::from_millis(500));
        assert_eq!(backoff_delay(2), Duration::from_secs(1));
        assert_eq!(backoff_delay(4), Duration::from_secs(4));
        assert_eq!(backoff_delay(30), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn router_status_lists_its_ports_with_keys() {
        let inv = crate::fixtures::topology();
        let key = ObjectKey::new(CrKind::VirtualRouter, "edge");
        let mut t = crate::translate(&key, &inv).unwrap();
        for (i, r) in t.records.iter_mut().enumerate() {
            crate::translate::set_tunnel_key(r, 100 + i as u32);
        }
        let applied = Applied {
            records: t.records,
            ..Applied::default()
        };
        let facts = inv.routers["edge"].status_facts(&applied);
        let ports = facts["ports"].as_array().unwrap();
        let interfaces: Vec<&str> = ports
            .iter()
            .map(|p| p["interface"].as_str().unwrap())
            .collect();
        assert_eq!(interfaces, ["blue", "red", "uplink"]);
        assert_eq!(ports[0]["address"], "10.1.0.1/24");
        assert_eq!(ports[0]["portId"], "vrt:edge:port:blue");
        assert!(ports[0]["tunnelKey"].as_u64().unwrap() >= 100);
        assert!(facts["tunnelKey"].as_u64().unwrap() >= 100);
    }

    #[test]
    fn a_refused_spec_is_reported_with_its_reason_and_field() {
        let mut inv = crate::fixtures::topology();
        let edge = ObjectKey::new(CrKind::VirtualRouter, "edge");
        // As the fixture says it: programmed.
        assert!(program::check(&edge, &inv).is_ok());

        crate::fixtures::uplink_host_interface(&mut inv, "edge", Some("eth1"));
        let err = program::check(&edge, &inv).unwrap_err();
        let (why, message, next) = refusal(&err).expect("a refusal");
        assert_eq!(why, "Unsupported");
        assert!(
            message.starts_with("spec.uplink.hostInterface: "),
            "{message}"
        );
        assert_eq!(next, Action::await_change());
        assert_eq!(err.metric_label(), "unsupported");
        assert!(!err.is_transient());

        let invalid = Error::InvalidSpec {
            kind: "VirtualBridge",
            name: "b".into(),
            message: "spec.gateway: outside".into(),
        };
        let (why, _, next) = refusal(&invalid).expect("a refusal");
        assert_eq!(why, "InvalidSpec");
        assert_eq!(next, Action::requeue(INVALID_RECHECK));
        let nsdb = Error::MissingMetadata {
            kind: "VirtualBridge",
            field: "metadata.name",
        };
        assert!(refusal(&nsdb).is_none());
    }

    #[test]
    fn load_balancer_status_reports_member_health_only_where_a_verdict_exists() {
        let mut inv = crate::fixtures::topology();
        let key = ObjectKey::new(CrKind::VirtualLoadBalancer, "web");
        assert_eq!(inv.load_balancers["web"].probed_load_balancer(), None);
        let t = crate::translate(&key, &inv).unwrap();
        let mut applied = Applied {
            records: t.records,
            ..Applied::default()
        };
        let facts = inv.load_balancers["web"].status_facts(&applied);
        let members = facts["vips"][0]["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0], json!({"ip": "10.1.0.5", "port": 8080}));
        // What is written parses as the status the CRD declares.
        let status: api::VipStatus = serde_json::from_value(facts["vips"][0].clone()).unwrap();
        assert_eq!(status.members.len(), 2);
        assert_eq!(status.members[0].healthy, None);

        // With a health check: the verdicts, by member.
        inv.load_balancers.get_mut("web").unwrap().spec.health_check =
            serde_json::from_value(json!({"type": "TCP"})).unwrap();
        assert_eq!(
            inv.load_balancers["web"].probed_load_balancer().as_deref(),
            Some("vlb:web")
        );
        applied
            .health
            .insert("10.1.0.5:8080".parse().unwrap(), false);
        let facts = inv.load_balancers["web"].status_facts(&applied);
        let status: api::VipStatus = serde_json::from_value(facts["vips"][0].clone()).unwrap();
        let health: Vec<Option<bool>> = status.members.iter().map(|m| m.healthy).collect();
        assert_eq!(health, [Some(false), None]);
    }

    #[tokio::test]
    async fn translation_waits_until_every_kind_is_listed() {
        let (listed_tx, listed) = tokio::sync::watch::channel(0u8);
        let stores = Stores {
            bridges: reflector::store().0,
            routers: reflector::store().0,
            load_balancers: reflector::store().0,
            acls: reflector::store().0,
            namespaces: reflector::store().0,
            listed,
        };
        let listed_now = || async {
            tokio::time::timeout(Duration::from_millis(20), stores.wait_until_listed())
                .await
                .unwrap_or(false)
        };
        // Bridges, routers and load balancers are listed, the ACLs attached to them not yet.
        listed_tx.send_modify(|m| *m |= 0b0_0111);
        assert!(!listed_now().await);
        listed_tx.send_modify(|m| *m |= 0b0_1000);
        // Nor the namespaces whose labels a bridge's selector matches.
        assert!(!listed_now().await);
        listed_tx.send_modify(|m| *m |= 0b1_0000);
        assert!(listed_now().await);
        // Many reconciles wait at once; all are woken.
        let (tx, rx) = tokio::sync::watch::channel(0u8);
        let waiting = Stores {
            listed: rx,
            ..stores.clone()
        };
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let s = waiting.clone();
                tokio::spawn(async move { s.wait_until_listed().await })
            })
            .collect();
        tokio::task::yield_now().await;
        tx.send_replace(ALL_LISTED);
        for w in waiters {
            assert!(
                tokio::time::timeout(Duration::from_secs(5), w)
                    .await
                    .unwrap()
                    .unwrap()
            );
        }
        drop(tx);
        let (tx, rx) = tokio::sync::watch::channel(0u8);
        drop(tx);
        let stopped = Stores {
            listed: rx,
            ..stores.clone()
        };
        assert!(!stopped.wait_until_listed().await, "the watches stopped");
    }

    #[test]
    fn only_changes_of_what_matters_trigger() {
        let ns = |name: &str, team: &str| -> Namespace {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"team": team}, "annotations": {"a": team}}
            }))
            .unwrap()
        };
        let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
        let mut seen = Seen::new();
        let mut changed = |e: watcher::Event<Namespace>| seen.changed(&e, labels);
        // The first list: the controllers' first reconciles see it all.
        assert!(!changed(watcher::Event::Init));
        assert!(!changed(watcher::Event::InitApply(ns("a", "red"))));
        assert!(!changed(watcher::Event::InitDone));
        assert!(!changed(watcher::Event::Apply(ns("a", "red"))), "the same");
        assert!(changed(watcher::Event::Apply(ns("a", "blue"))));
        assert!(changed(watcher::Event::Apply(ns("b", "blue"))), "a new one");
        assert!(changed(watcher::Event::Delete(ns("b", "blue"))));
        // A relist that finds what was there changes nothing; one that does not, does.
        assert!(!changed(watcher::Event::Init));
        assert!(!changed(watcher::Event::InitApply(ns("a", "blue"))));
        assert!(!changed(watcher::Event::InitDone));
        assert!(!changed(watcher::Event::Init));
        assert!(changed(watcher::Event::InitDone), "a is gone");
        assert!(changed(watcher::Event::Apply(ns("a", "blue"))));
        assert!(!changed(watcher::Event::Apply(ns("a", "blue"))));
    }

    #[test]
    fn detaching_an_acl_still_triggers_the_old_device() {
        let seen: Attachments = Arc::default();
        let mut acl = crate::fixtures::topology().acls["web-in"].clone();
        assert_eq!(
            acl_targets(&acl, true, &seen),
            BTreeSet::from(["blue".to_owned()])
        );
        acl.spec.attach_to.bridges = vec!["red".into()];
        assert_eq!(
            acl_targets(&acl, true, &seen),
            BTreeSet::from(["blue".to_owned(), "red".to_owned()])
        );
        assert_eq!(
            acl_targets(&acl, true, &seen),
            BTreeSet::from(["red".to_owned()])
        );
    }
}
