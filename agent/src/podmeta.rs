//! What NetworkPolicy selectors know a pod's port by, from the Kubernetes API server: the
//! pod's labels, its namespace's labels and its containers' named ports
//! ([`nsdb::pod_port::PodIdentity`]).
//!
//! Two parts use it. A CNI ADD reads the pod and its namespace once ([`pod_identity`]) and
//! writes the identity in the port's one transaction, so that a pod a NetworkPolicy isolates
//! is isolated from its first packet. Then [`run`] keeps the ports of this host in step: it
//! watches the Pods of this node (`spec.nodeName`, as the Cilium and Antrea agents do) and
//! every Namespace, and when a pod's labels or named ports or a namespace's labels change, it
//! writes the new identity on each NSDB port bound to this host that names the pod (its
//! [`LABEL_POD_NAMESPACE`] and [`LABEL_POD_NAME`]), by compare-and-swap, and only where it
//! differs. A port that appears in NSDB is checked too, which covers a change that raced an
//! ADD between its read of the pod and its write of the port.
//!
//! The API server may go away at any time: the watches back off and resume (relisting when
//! they must), NSDB writes that fail are retried with a backoff, and nothing here ends the
//! agent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use nsdb::pod_port::{IdentityUpdate, PodIdentity};
use nsdb::{
    ChangeOp, Kind, LABEL_NAMESPACE_NAME, NamedPort, Nsdb, Port, PortBinding, Protocol, Snapshot,
    Update,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cni::{LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use crate::config::KubeSource;

/// How long a CNI ADD waits for the API server's answers about its pod and namespace
/// (both together). With the NSDB step that follows it (bounded by what is left of
/// [`crate::cni::NSDB_TIMEOUT`]) it stays within the plugin's deadline for the agent.
pub const IDENTITY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one watch request lasts before the watcher starts the next (from where it
/// was, without a relist), and how long the client waits for any byte of an answer. A
/// connection that died without a word (a partitioned API server) is noticed within the
/// second, not after TCP's own timeouts of many minutes.
const WATCH_TIMEOUT_SECS: u32 = 60;
const READ_TIMEOUT: Duration = Duration::from_secs(75);

/// How long one NSDB write of the watcher may take.
const WRITE_TIMEOUT: Duration = crate::cni::NSDB_TIMEOUT;

/// The backoff of failed NSDB writes: the first delay, doubled up to the last.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A client of the Kubernetes API server and where it came from.
#[derive(Clone)]
pub struct Kube {
    client: Client,
    source: String,
}

impl fmt::Debug for Kube {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kube")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Kube {
    /// The client of `source`; `None` without one. Nothing is asked of the API server yet:
    /// an unreachable one fails the calls, not this. A kubeconfig that cannot be read, or an
    /// in-cluster configuration without its ServiceAccount token, is an error: an agent
    /// that was told to read pod labels does not attach pods without them.
    pub async fn connect(source: &KubeSource) -> anyhow::Result<Option<Kube>> {
        let (mut config, name) = match source {
            KubeSource::None => return Ok(None),
            KubeSource::Kubeconfig(path) => {
                let what = || format!("--kubeconfig {}", path.display());
                let kc = Kubeconfig::read_from(path).with_context(what)?;
                let config =
                    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                        .await
                        .with_context(what)?;
                (config, what())
            }
            KubeSource::InCluster => (
                kube::Config::incluster().context(
                    "the in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST is set): \
                     is the ServiceAccount token mounted?",
                )?,
                "in-cluster".to_owned(),
            ),
        };
        config.read_timeout = Some(READ_TIMEOUT);
        let client = Client::try_from(config)
            .with_context(|| format!("making a Kubernetes client from {name}"))?;
        Ok(Some(Kube {
            client,
            source: name,
        }))
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where the client's configuration came from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Why a pod's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodMetaError {
    /// The API server did not answer in time.
    #[error("the Kubernetes API server did not answer within {limit:?} when asked for {what}")]
    Timeout { what: String, limit: Duration },
    /// The API server failed the request, or could not be reached.
    #[error("reading {what} from the Kubernetes API server failed")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The API server has no such object.
    #[error("the Kubernetes API server has no {what}")]
    NotFound { what: String },
}

/// The namespace labels of a pod port of namespace `name`: the namespace's `labels`, with
/// [`LABEL_NAMESPACE_NAME`] set to its name whether or not the API server gave it (it
/// labels every Namespace so, but selectors by namespace must hold regardless).
pub fn namespace_labels(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut l = labels.cloned().unwrap_or_default();
    l.insert(LABEL_NAMESPACE_NAME.to_owned(), name.to_owned());
    l
}

/// The identity of a pod whose namespace is all that is known (no API server): its
/// namespace's name, so that selectors by namespace name hold; no pod labels.
pub fn namespace_only(namespace: &str) -> PodIdentity {
    PodIdentity {
        labels: BTreeMap::new(),
        namespace_labels: namespace_labels(namespace, None),
        named_ports: Vec::new(),
    }
}

/// The named ports of a pod: every named port of its containers, and of its sidecars
/// (init containers with `restartPolicy: Always`, which run as long as the pod does),
/// sorted and each once. Protocols other than TCP, UDP and SCTP, and ports outside
/// 1-65535 (which the API server refuses anyway), are left out.
pub fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut out: Vec<NamedPort> = spec
        .containers
        .iter()
        .chain(sidecars)
        .flat_map(|c: &Container| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.as_deref().filter(|n| !n.is_empty())?;
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => return None,
            };
            let port = u16::try_from(p.container_port).ok().filter(|p| *p != 0)?;
            Some(NamedPort {
                name: name.to_owned(),
                protocol,
                port,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The identity of `pod`, whose namespace has `namespace_labels` (see [`namespace_labels`]).
/// The pod's labels are taken whole; those in Weft's label domain are dropped when they
/// are merged with the port's own ([`nsdb::pod_port::merge_pod_labels`]).
pub fn identity(pod: &Pod, namespace_labels: BTreeMap<String, String>) -> PodIdentity {
    PodIdentity {
        labels: pod.labels().clone(),
        namespace_labels,
        named_ports: named_ports(pod),
    }
}

/// Reads pod `namespace`/`name` and its Namespace from the API server, both at once, and
/// returns the pod's identity; gives up after `limit`.
///
/// A pod or namespace the API server does not have is [`PodMetaError::NotFound`], which a
/// CNI ADD answers like an unreachable API server, "try again later" (11), rather than
/// attaching the pod without labels: kubelet runs ADD only for a pod it got from the API
/// server, so a missing one was deleted meanwhile (kubelet then stops retrying and tears
/// the sandbox down) or is a static pod whose mirror the API server does not have yet
/// (a retry finds it); attaching it unlabelled would let it past the NetworkPolicies that
/// select it.
pub async fn pod_identity(
    client: &Client,
    namespace: &str,
    name: &str,
    limit: Duration,
) -> Result<PodIdentity, PodMetaError> {
    let pod_what = || format!("pod {namespace}/{name}");
    let ns_what = || format!("namespace {namespace}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let both = async {
        let (pod, ns) = futures::join!(pods.get_opt(name), namespaces.get_opt(namespace));
        let pod = pod
            .map_err(|source| PodMetaError::Api {
                what: pod_what(),
                source,
            })?
            .ok_or_else(|| PodMetaError::NotFound { what: pod_what() })?;
        let ns = ns
            .map_err(|source| PodMetaError::Api {
                what: ns_what(),
                source,
            })?
            .ok_or_else(|| PodMetaError::NotFound { what: ns_what() })?;
        Ok(identity(
            &pod,
            namespace_labels(namespace, ns.metadata.labels.as_ref()),
        ))
    };
    match tokio::time::timeout(limit, both).await {
        Ok(r) => r,
        Err(_) => Err(PodMetaError::Timeout {
            what: format!("{} and its {}", pod_what(), ns_what()),
            limit,
        }),
    }
}

/// A pod by namespace and name.
type PodKey = (String, String);

/// What the watcher keeps of a pod: what its port's identity is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodMeta {
    labels: BTreeMap<String, String>,
    named_ports: Vec<NamedPort>,
}

impl PodMeta {
    fn of(pod: &Pod) -> (PodKey, PodMeta) {
        (
            (pod.namespace().unwrap_or_default(), pod.name_any()),
            PodMeta {
                labels: pod.labels().clone(),
                named_ports: named_ports(pod),
            },
        )
    }
}

/// The objects of one watch: the current set, and the one being listed after a
/// (re)start of the watch, which replaces it once complete.
#[derive(Debug)]
struct Mirror<K, V> {
    current: HashMap<K, V>,
    listing: Option<HashMap<K, V>>,
    /// Whether a first list completed.
    listed: bool,
}

impl<K, V> Default for Mirror<K, V> {
    fn default() -> Self {
        Mirror {
            current: HashMap::new(),
            listing: None,
            listed: false,
        }
    }
}

/// The watcher's state: this node's pods, every namespace's labels, the latest NSDB
/// snapshot, and the pods whose ports are to be checked.
struct State {
    host: String,
    nsdb: Nsdb,
    pods: Mirror<PodKey, PodMeta>,
    namespaces: Mirror<String, BTreeMap<String, String>>,
    snapshot: Arc<Snapshot>,
    /// Pods whose ports are checked at the next sync; every local pod port if `all`.
    dirty: HashSet<PodKey>,
    all: bool,
    /// Pods whose ports could not be written, retried at `retry_at`.
    failing: HashSet<PodKey>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The pod a port names, if it is a pod's port bound to `host`.
fn local_pod(snap: &Snapshot, host: &str, port: &Port) -> Option<PodKey> {
    let ns = port.labels.get(LABEL_POD_NAMESPACE)?;
    let name = port.labels.get(LABEL_POD_NAME)?;
    snap.get::<PortBinding>(&port.id)
        .is_some_and(|b| b.host == host)
        .then(|| (ns.clone(), name.clone()))
}

impl State {
    fn pod_event(&mut self, ev: Result<watcher::Event<Pod>, watcher::Error>) {
        let m = &mut self.pods;
        match ev {
            Ok(watcher::Event::Init) => m.listing = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                let (k, v) = PodMeta::of(&pod);
                m.listing.get_or_insert_default().insert(k, v);
            }
            Ok(watcher::Event::InitDone) => {
                m.current = m.listing.take().unwrap_or_default();
                if !m.listed {
                    info!(host = %self.host, pods = m.current.len(), "this node's pods listed");
                }
                m.listed = true;
                // Whatever changed while the watch was down is in the new list.
                self.all = true;
            }
            Ok(watcher::Event::Apply(pod)) => {
                let (k, v) = PodMeta::of(&pod);
                if m.current.get(&k) != Some(&v) {
                    m.current.insert(k.clone(), v);
                    self.dirty.insert(k);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                // Its port goes with the pod's CNI DEL; until then it keeps its identity.
                m.current.remove(&PodMeta::of(&pod).0);
            }
            Err(err) => warn!(
                host = %self.host,
                error = %nsdb::error::chain(&err),
                "watching this node's pods failed; retrying with backoff"
            ),
        }
    }

    fn namespace_event(&mut self, ev: Result<watcher::Event<Namespace>, watcher::Error>) {
        let m = &mut self.namespaces;
        let labels = |ns: &Namespace| namespace_labels(&ns.name_any(), ns.metadata.labels.as_ref());
        match ev {
            Ok(watcher::Event::Init) => m.listing = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(ns)) => {
                m.listing
                    .get_or_insert_default()
                    .insert(ns.name_any(), labels(&ns));
            }
            Ok(watcher::Event::InitDone) => {
                m.current = m.listing.take().unwrap_or_default();
                if !m.listed {
                    info!(namespaces = m.current.len(), "namespaces listed");
                }
                m.listed = true;
                self.all = true;
            }
            Ok(watcher::Event::Apply(ns)) => {
                let name = ns.name_any();
                let l = labels(&ns);
                if m.current.get(&name) != Some(&l) {
                    m.current.insert(name.clone(), l);
                    self.dirty.extend(
                        self.pods
                            .current
                            .keys()
                            .filter(|(n, _)| *n == name)
                            .cloned(),
                    );
                }
            }
            Ok(watcher::Event::Delete(ns)) => {
                m.current.remove(&ns.name_any());
            }
            Err(err) => warn!(
                error = %nsdb::error::chain(&err),
                "watching namespaces failed; retrying with backoff"
            ),
        }
    }

    /// A new NSDB snapshot: pod ports of this host that appeared or changed are checked
    /// (this watcher's own writes come back this way too, and are found in step).
    fn nsdb_update(&mut self, update: &Update) {
        self.snapshot = update.snapshot.clone();
        for c in &update.changes {
            if c.op == ChangeOp::Put
                && matches!(c.kind, Kind::Port | Kind::PortBinding)
                && let Some(port) = self.snapshot.get::<Port>(&c.id)
                && let Some(key) = local_pod(&self.snapshot, &self.host, port)
            {
                self.dirty.insert(key);
            }
        }
    }

    fn ready(&self) -> bool {
        self.pods.listed && self.namespaces.listed
    }

    fn has_work(&self) -> bool {
        self.all || !self.dirty.is_empty()
    }

    fn retry_due(&mut self) {
        self.retry_at = None;
        self.dirty.extend(self.failing.drain());
    }

    /// The identity the ports of pod `key` should have, if the pod is one of this node's.
    fn wanted(&self, key: &PodKey) -> Option<PodIdentity> {
        let meta = self.pods.current.get(key)?;
        let namespace_labels = self
            .namespaces
            .current
            .get(&key.0)
            .cloned()
            .unwrap_or_else(|| namespace_labels(&key.0, None));
        Some(PodIdentity {
            labels: meta.labels.clone(),
            namespace_labels,
            named_ports: meta.named_ports.clone(),
        })
    }

    /// Writes the identity of each pod to check on its ports where it differs. After a
    /// failed write the rest of the round is left for the retry, so that an unreachable
    /// etcd costs one timeout, not one per port.
    async fn sync(&mut self) {
        let snap = self.snapshot.clone();
        let mut ports: HashMap<PodKey, Vec<&Port>> = HashMap::new();
        for p in snap.list::<Port>() {
            if let Some(key) = local_pod(&snap, &self.host, p) {
                ports.entry(key).or_default().push(p);
            }
        }
        let keys: Vec<PodKey> = if std::mem::take(&mut self.all) {
            self.dirty.clear();
            ports.keys().cloned().collect()
        } else {
            self.dirty
                .drain()
                .filter(|k| ports.contains_key(k))
                .collect()
        };
        let mut stalled = false;
        for key in keys {
            // A port whose pod is not (or no longer) one of this node's is left as it is.
            let Some(want) = self.wanted(&key) else {
                continue;
            };
            for port in &ports[&key] {
                if want.applied_to(port) == **port {
                    continue;
                }
                if stalled {
                    self.failing.insert(key.clone());
                    continue;
                }
                let pod = format!("{}/{}", key.0, key.1);
                let r = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    self.nsdb.update_port_identity(&port.id, &want),
                )
                .await;
                match r {
                    Ok(Ok(IdentityUpdate::Updated { .. })) => {
                        info!(port = %port.id, %pod, "pod port's labels, namespace labels and named ports updated");
                    }
                    Ok(Ok(IdentityUpdate::Unchanged | IdentityUpdate::Absent)) => {
                        debug!(port = %port.id, %pod, "pod port in step already");
                    }
                    Ok(Err(err)) => {
                        warn!(port = %port.id, %pod, error = %nsdb::error::chain(&err), "cannot update the pod port's identity; retrying");
                        self.failing.insert(key.clone());
                        stalled = true;
                    }
                    Err(_) => {
                        warn!(port = %port.id, %pod, "NSDB did not answer within {WRITE_TIMEOUT:?} updating the pod port's identity; retrying");
                        self.failing.insert(key.clone());
                        stalled = true;
                    }
                }
            }
        }
        if stalled {
            self.failures = self.failures.saturating_add(1);
            let doublings = self.failures.clamp(1, 16) - 1;
            let delay = RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX);
            self.retry_at = Some(Instant::now() + delay);
        } else if self.failing.is_empty() {
            self.failures = 0;
        }
    }
}

/// Keeps the identity of the pod ports bound to `host` in step with their pods and
/// namespaces, as the module says, until NSDB's `topology` subscription ends (the agent
/// stopping its watch cache). `topology` is a [`nsdb::WatchCache::subscribe`] of a cache
/// that holds the ports and their bindings. Nothing is written before both watches have
/// listed once: a port is never given a partial identity.
pub async fn run(
    client: Client,
    nsdb: Nsdb,
    host: String,
    topology: (Arc<Snapshot>, mpsc::UnboundedReceiver<Arc<Update>>),
) {
    let (snapshot, mut updates) = topology;
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default()
            .fields(&format!("spec.nodeName={host}"))
            .timeout(WATCH_TIMEOUT_SECS),
    )
    .default_backoff();
    let namespaces = watcher(
        Api::<Namespace>::all(client),
        watcher::Config::default().timeout(WATCH_TIMEOUT_SECS),
    )
    .default_backoff();
    let mut pods = std::pin::pin!(pods);
    let mut namespaces = std::pin::pin!(namespaces);
    let mut st = State {
        host,
        nsdb,
        pods: Mirror::default(),
        namespaces: Mirror::default(),
        snapshot,
        dirty: HashSet::new(),
        all: false,
        failing: HashSet::new(),
        failures: 0,
        retry_at: None,
    };
    info!(host = %st.host, "watching this node's pods and the namespaces for pod port identities");
    loop {
        let retry_at = st.retry_at;
        tokio::select! {
            Some(ev) = pods.next() => st.pod_event(ev),
            Some(ev) = namespaces.next() => st.namespace_event(ev),
            u = updates.recv() => match u {
                Some(u) => st.nsdb_update(&u),
                None => {
                    info!("the NSDB cache stopped; pod port identities are no longer kept");
                    return;
                }
            },
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                st.retry_due();
            }
        }
        if st.ready() && st.has_work() {
            st.sync().await;
        }
    }
}
