//! The CNI verbs of the local API: what `weft-cni` asks for when the container runtime
//! calls it.
//!
//! An ADD reads the pod's identity first (its labels, its namespace's labels and its named
//! ports, from the Kubernetes API server: [`crate::podmeta`]), records the attachment in the
//! state directory, then writes the pod's port to NSDB in one transaction (leases, tunnel
//! key, port with that identity, binding), then makes the veth and the vport. Whatever it
//! stops at (a failure, or the agent killed), the record and the names derived from the
//! container let a DEL or a GC remove all of it. The port id and the host end's name are
//! derived from the container id and interface name, so a retried ADD finds what the first
//! one made, and a DEL needs nothing but the two.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::IpNet;
use nsdb::pod_port::{IdentityUpdate, PodIdentity};
use nsdb::{
    Bridge, IpFamily, MacAddr, NsdbError, PodPortRelease, PodPortRequest, Port, PortBinding,
};
use odp::dpif::Dpif;
use tracing::{info, warn};

use crate::api::proto::{
    CniAttachmentId, CniDns, CniInterface, CniIp, CniResult, CniRoute, ErrorCode, Reply, Response,
};
use crate::attachments::{Attachment, CniAttachment};
use crate::datapath;
use crate::podmeta::{self, IDENTITY_TIMEOUT};
use crate::podnet::{self, PodInterface};
use crate::service::Agent;

/// How long one NSDB step of a CNI call may take before the call answers "try again later":
/// the plugin's own deadline is longer, so the runtime hears the agent's reason.
/// An unreachable etcd fails a call at once; a hung one is waited for this long, which is
/// less than the plugin waits for the agent (10 s by default), so the runtime hears why.
pub const NSDB_TIMEOUT: Duration = Duration::from_millis(8_000);

/// How long undoing a failed ADD waits for NSDB: what it cannot remove in time stays in
/// the record for DEL or GC, and the ADD answers without waiting longer.
pub const UNDO_TIMEOUT: Duration = Duration::from_millis(2_000);

/// The fault-injection variable of the crash tests: set to `cni-add-after-nsdb`, an ADD
/// stops for good right after its NSDB transaction, before the veth and the vport exist, so
/// that a test can `kill -9` the agent at exactly that point.
pub const FAILPOINT_ENV: &str = "WEFT_FAILPOINT";

/// Whether [`FAILPOINT_ENV`] asks for the stop after the NSDB write (read once).
fn failpoint_after_nsdb() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(FAILPOINT_ENV).is_ok_and(|f| f == "cni-add-after-nsdb"))
}

/// Labels on a pod's port: who it belongs to. All are in Weft's label domain
/// ([`nsdb::pod_port::is_weft_label`]), so that the pod's own labels, which the port carries
/// next to them, can never replace them.
pub const LABEL_CONTAINER: &str = "weft.dev/container-id";
pub const LABEL_IFNAME: &str = "weft.dev/ifname";
pub const LABEL_HOST: &str = "weft.dev/host";
pub const LABEL_NETWORK: &str = "weft.dev/network";
pub use nsdb::pod_port::{LABEL_POD_NAME, LABEL_POD_NAMESPACE};

/// A CNI request that failed: the spec's class and the reason.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub error: anyhow::Error,
}

type CniOutcome<T> = Result<T, Refusal>;

trait Classed<T> {
    fn class(self, code: ErrorCode) -> CniOutcome<T>;
}

impl<T, E: Into<anyhow::Error>> Classed<T> for Result<T, E> {
    fn class(self, code: ErrorCode) -> CniOutcome<T> {
        self.map_err(|e| Refusal {
            code,
            error: e.into(),
        })
    }
}

fn refuse<T>(code: ErrorCode, msg: String) -> CniOutcome<T> {
    Err(Refusal {
        code,
        error: anyhow::anyhow!(msg),
    })
}

/// The API response of a CNI verb.
pub fn respond(op: &str, r: CniOutcome<Reply>) -> Response {
    match r {
        Ok(reply) => Response::Ok { reply },
        Err(Refusal { code, error }) => {
            info!(
                op,
                code = code.cni_code(),
                error = format!("{error:#}"),
                "CNI request refused"
            );
            Response::error_with(code, format!("{error:#}"))
        }
    }
}

/// The class of an NSDB failure: what a retry may fix is "try again later".
fn nsdb_class(e: &NsdbError) -> ErrorCode {
    match e {
        NsdbError::Connect { .. }
        | NsdbError::Etcd { .. }
        | NsdbError::Exhausted { .. }
        | NsdbError::Contended { .. }
        | NsdbError::BridgeNotFound { .. }
        | NsdbError::TxnConditionFailed { .. } => ErrorCode::TryAgainLater,
        _ => ErrorCode::Invalid,
    }
}

/// An NSDB call bounded by [`NSDB_TIMEOUT`].
async fn nsdb<T>(what: &str, f: impl Future<Output = nsdb::Result<T>>) -> CniOutcome<T> {
    nsdb_within(NSDB_TIMEOUT, what, f).await
}

/// An NSDB call bounded by `limit`.
async fn nsdb_within<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = nsdb::Result<T>>,
) -> CniOutcome<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Refusal {
            code: nsdb_class(&e),
            error: anyhow::Error::new(e).context(what.to_owned()),
        }),
        Err(_) => refuse(
            ErrorCode::TryAgainLater,
            format!("{what}: NSDB (etcd) did not answer within {limit:?}"),
        ),
    }
}

/// The stable hash of the attachment's identity.
fn identity_hash(container_id: &str, ifname: &str) -> u64 {
    nsdb::stable_hash(format!("{container_id}/{ifname}").as_bytes())
}

/// The NSDB port id of a container's interface: `cni-` and 16 hex digits.
pub fn port_id(container_id: &str, ifname: &str) -> String {
    format!("cni-{:016x}", identity_hash(container_id, ifname))
}

/// The host end of a container interface's veth: `wf` and 12 hex digits (a valid, unique
/// Linux interface name).
pub fn host_end(container_id: &str, ifname: &str) -> String {
    format!(
        "wf{:012x}",
        identity_hash(container_id, ifname) & 0xffff_ffff_ffff
    )
}

/// A CNI ADD's arguments.
#[derive(Debug, Clone)]
pub struct Add {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub network: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

/// Weft's own labels on the port of an ADD on `host`: who it belongs to. The pod's labels
/// join them in the port's transaction ([`nsdb::pod_port::merge_pod_labels`]).
pub fn port_labels(a: &Add, host: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_CONTAINER.to_owned(), a.container_id.clone()),
        (LABEL_IFNAME.to_owned(), a.ifname.clone()),
        (LABEL_HOST.to_owned(), host.to_owned()),
        (LABEL_NETWORK.to_owned(), a.network.clone()),
    ]);
    if let Some(ns) = &a.pod_namespace {
        labels.insert(LABEL_POD_NAMESPACE.to_owned(), ns.clone());
    }
    if let Some(n) = &a.pod_name {
        labels.insert(LABEL_POD_NAME.to_owned(), n.clone());
    }
    labels
}

/// What an ADD decided before its first write: where the port goes and what it carries.
#[derive(Debug, Clone, Copy)]
struct PortPlan<'a> {
    bridge: &'a Bridge,
    mtu: u32,
    port_id: &'a str,
    vport: &'a str,
    identity: &'a PodIdentity,
    /// What is left of [`NSDB_TIMEOUT`] for the NSDB step.
    nsdb_limit: Duration,
}

/// Whether `name` can name an interface inside a pod.
fn check_pod_ifname(name: &str) -> CniOutcome<()> {
    if crate::netdev::valid_name(name) {
        Ok(())
    } else {
        refuse(
            ErrorCode::Invalid,
            format!(
                "CNI_IFNAME {name:?} is not a valid Linux interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        )
    }
}

impl Agent {
    /// The bridge of a pod of `namespace`: the one that lists it, else the default bridge.
    fn bridge_for(&self, namespace: Option<&str>) -> CniOutcome<Bridge> {
        let snap = self.topo.load();
        if let Some(ns) = namespace
            && let Some(b) = snap
                .records
                .list::<Bridge>()
                .find(|b| b.namespaces.iter().any(|n| n == ns))
        {
            return Ok(b.clone());
        }
        let who = namespace.map_or_else(
            || "a pod without K8S_POD_NAMESPACE".to_owned(),
            |ns| format!("namespace {ns:?}"),
        );
        let Some(default) = &self.settings.default_bridge else {
            return refuse(
                ErrorCode::Invalid,
                format!(
                    "no bridge serves {who} and this agent has no --default-bridge: list the \
                     namespace in a VirtualBridge's spec.namespaces.names"
                ),
            );
        };
        match snap
            .records
            .list::<Bridge>()
            .find(|b| &b.id == default || &b.name == default)
        {
            Some(b) => Ok(b.clone()),
            None => refuse(
                ErrorCode::TryAgainLater,
                format!(
                    "no bridge serves {who}, and the default bridge {default:?} is not in NSDB \
                     (yet): try again once it is"
                ),
            ),
        }
    }

    /// The MTU of the pods of `bridge` on this host.
    fn pod_mtu(&self, bridge: &Bridge) -> CniOutcome<u32> {
        let carried = u32::from(self.settings.pod_mtu);
        match u32::from(bridge.mtu) {
            0 => Ok(carried),
            m if m > carried => refuse(
                ErrorCode::Invalid,
                format!(
                    "bridge {} asks for MTU {m}, but this node's underlay carries at most {carried} \
                     inside the {:?} encapsulation",
                    bridge.name, self.settings.tunnel
                ),
            ),
            m => Ok(m),
        }
    }

    /// The identity of the pod of an ADD. With a Kubernetes client and the pod's namespace
    /// and name, it is read from the API server ([`podmeta::pod_identity`]); failing that,
    /// the ADD fails closed, "try again later" (11): a pod attached without its labels
    /// would be let past the NetworkPolicies that isolate it. Without a client (a node
    /// driven by hand, or tests with no API server), the namespace's name is its only
    /// namespace label, so that selectors by namespace name still hold, and it has no pod
    /// labels.
    async fn pod_identity(&self, a: &Add) -> CniOutcome<PodIdentity> {
        let Some(ns) = a.pod_namespace.as_deref() else {
            return Ok(PodIdentity::default());
        };
        let (Some(kube), Some(name)) = (&self.settings.kube, a.pod_name.as_deref()) else {
            return Ok(podmeta::namespace_only(ns));
        };
        podmeta::pod_identity(kube.client(), ns, name, IDENTITY_TIMEOUT)
            .await
            .map_err(|e| Refusal {
                code: ErrorCode::TryAgainLater,
                error: anyhow::Error::new(e).context(format!(
                    "the labels of pod {ns}/{name} are unknown, so NetworkPolicies cannot be \
                     applied to it: it is not attached"
                )),
            })
    }

    pub(crate) async fn cni_add(&self, a: Add) -> CniOutcome<Reply> {
        check_pod_ifname(&a.ifname)?;
        if a.container_id.is_empty() {
            return refuse(ErrorCode::Invalid, "CNI_CONTAINERID is empty".into());
        }
        let netns = match podnet::open_netns(&a.netns) {
            Ok(f) => f,
            Err(e @ podnet::NetnsError::Missing { .. }) => {
                return Err(Refusal {
                    code: ErrorCode::UnknownContainer,
                    error: e.into(),
                });
            }
            Err(e) => return Err(e).class(ErrorCode::Io),
        };
        let bridge = self.bridge_for(a.pod_namespace.as_deref())?;
        let mtu = self.pod_mtu(&bridge)?;
        let port_id = port_id(&a.container_id, &a.ifname);
        let vport = host_end(&a.container_id, &a.ifname);
        // Before anything is written: a refusal here leaves nothing to undo. The NSDB step
        // gets what is left of its own bound, so the whole ADD stays within it.
        let asked = Instant::now();
        let identity = self.pod_identity(&a).await?;
        let nsdb_limit = NSDB_TIMEOUT.saturating_sub(asked.elapsed());

        // 1. The record, before anything exists: whatever happens next, DEL and GC find it.
        {
            let mut rec = self.attachments.lock().await;
            if let Some(other) = rec.record().by_vport(&vport)
                && other.port != port_id
            {
                return refuse(
                    ErrorCode::Invalid,
                    format!("{vport} is attached here as port {} already", other.port),
                );
            }
            let att = Attachment {
                port: port_id.clone(),
                vport: vport.clone(),
                cni: Some(CniAttachment {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                    netns: a.netns.clone(),
                    network: a.network.clone(),
                }),
            };
            if rec.record().get(&port_id) != Some(&att) {
                rec.insert(att).class(ErrorCode::Io)?;
            }
        }
        let plan = PortPlan {
            bridge: &bridge,
            mtu,
            port_id: &port_id,
            vport: &vport,
            identity: &identity,
            nsdb_limit,
        };
        match self.add_steps(&a, &plan, &netns).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // Nothing of a failed ADD stays: the runtime may never call DEL for it.
                if let Err(c) = self.teardown(&port_id, &vport, UNDO_TIMEOUT).await {
                    warn!(port = %port_id, error = format!("{:#}", c.error), "undoing a failed ADD left something behind; DEL or GC will retry");
                    return Err(Refusal {
                        code: e.code,
                        error: e
                            .error
                            .context(format!("and undoing it failed: {:#}", c.error)),
                    });
                }
                Err(e)
            }
        }
    }

    async fn add_steps(
        &self,
        a: &Add,
        plan: &PortPlan<'_>,
        netns: &std::fs::File,
    ) -> CniOutcome<Reply> {
        let PortPlan {
            bridge,
            mtu,
            port_id,
            vport,
            identity,
            nsdb_limit,
        } = *plan;
        // 2. The port, its addresses, tunnel key, identity and binding: one transaction.
        let req = PodPortRequest {
            port: port_id.to_owned(),
            bridge: bridge.clone(),
            host: self.settings.host.clone(),
            vport: vport.to_owned(),
            labels: port_labels(a, &self.settings.host),
        };
        let what = format!("allocating port {port_id} on bridge {}", bridge.name);
        let started = Instant::now();
        let pod = nsdb_within(
            nsdb_limit,
            &what,
            self.nsdb.allocate_pod_port_with(&req, identity),
        )
        .await?;
        // A retried ADD finds the port as the first one wrote it, and brings its identity up
        // to date here rather than leaving it to the pod watcher: the port is right when the
        // ADD answers, also on a node without an API server (and so without a watcher).
        if !pod.created {
            let limit = nsdb_limit.saturating_sub(started.elapsed());
            let what = format!("updating the labels of port {port_id}");
            let r = nsdb_within(
                limit,
                &what,
                self.nsdb.update_port_identity(port_id, identity),
            )
            .await?;
            if let IdentityUpdate::Updated { .. } = r {
                info!(port = %port_id, "a retried ADD brought the port's labels up to date");
            }
        }
        if failpoint_after_nsdb() {
            tracing::error!(port = %port_id, "{FAILPOINT_ENV}=cni-add-after-nsdb: this ADD stops here");
            std::future::pending::<()>().await;
        }
        let iface = PodInterface {
            ifname: a.ifname.clone(),
            mac: pod.port.mac.octets(),
            addresses: [IpFamily::V4, IpFamily::V6]
                .into_iter()
                .filter_map(|f| pod.address(f))
                .collect(),
            gateway_v4: pod.bridge.gateway_v4,
            // An IPv6 default route only for a pod with an IPv6 address.
            gateway_v6: pod.address(IpFamily::V6).and(pod.bridge.gateway_v6),
            mtu,
        };

        // 3. The veth, unless a retried ADD finds it made and attached already.
        let attached = self.ports.get(vport).is_some();
        let host = match podnet::host_link(vport).await.class(ErrorCode::Io)? {
            Some((_, mac)) if attached && !pod.created => mac,
            _ => {
                let (_, mac) = podnet::plumb(vport, netns, &a.netns, &iface)
                    .await
                    .class(ErrorCode::Io)?;
                mac
            }
        };

        // 4. The vport.
        let (port_no, _) = self
            .add_vport(vport, odp::dpif::VportType::Netdev)
            .await
            .with_context(|| format!("adding {vport} to the datapath"))
            .class(ErrorCode::Io)?;
        info!(
            port = %port_id,
            container = %a.container_id,
            ifname = %a.ifname,
            netns = %a.netns,
            bridge = %bridge.name,
            vport,
            port_no,
            addresses = ?iface.addresses,
            "pod attached"
        );
        Ok(Reply::CniAdded(result(&iface, vport, host, &a.netns)))
    }

    /// Removes what an attachment holds, keeping on after a failure: the vport, the veth,
    /// the NSDB port (with its leases, tunnel key and binding), then the record, which goes
    /// only when everything else is gone. Returns whether anything was there.
    async fn teardown(&self, port_id: &str, vport: &str, limit: Duration) -> CniOutcome<bool> {
        let mut errors: Vec<(ErrorCode, String)> = Vec::new();
        let mut found = false;
        match self.remove_vport(vport).await {
            Ok(()) => {}
            Err(e) => errors.push((ErrorCode::Io, format!("removing vport {vport}: {e:#}"))),
        }
        match podnet::unplumb(vport).await {
            Ok(gone) => found |= gone,
            Err(e) => errors.push((ErrorCode::Io, format!("removing veth {vport}: {e:#}"))),
        }
        match nsdb_within(
            limit,
            &format!("releasing port {port_id}"),
            self.nsdb.release_pod_port(port_id, &self.settings.host),
        )
        .await
        {
            Ok(PodPortRelease::Removed(_)) => found = true,
            Ok(PodPortRelease::Absent) => {}
            Ok(PodPortRelease::NotOurs(b)) => warn!(
                port = port_id,
                host = %b.host,
                "the port is bound to another host; its NSDB records stay"
            ),
            Err(r) => errors.push((r.code, format!("{:#}", r.error))),
        }
        if errors.is_empty() {
            let mut rec = self.attachments.lock().await;
            match rec.remove(port_id) {
                Ok(gone) => found |= gone.is_some(),
                Err(e) => errors.push((ErrorCode::Io, format!("{e:#}"))),
            }
        }
        if errors.is_empty() {
            return Ok(found);
        }
        // A transient failure (etcd) says so, so that the runtime retries.
        let code = if errors.iter().any(|(c, _)| *c == ErrorCode::TryAgainLater) {
            ErrorCode::TryAgainLater
        } else {
            errors[0].0
        };
        let msg = errors
            .into_iter()
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
            .join("; ");
        refuse(code, msg)
    }

    pub(crate) async fn cni_del(
        &self,
        container_id: &str,
        ifname: &str,
        network: &str,
    ) -> CniOutcome<Reply> {
        let (port_id, vport) = {
            let rec = self.attachments.lock().await;
            match rec.record().by_container(container_id, ifname) {
                Some(a) => (a.port.clone(), a.vport.clone()),
                None => (
                    port_id(container_id, ifname),
                    host_end(container_id, ifname),
                ),
            }
        };
        let was_attached = self.teardown(&port_id, &vport, NSDB_TIMEOUT).await?;
        info!(port = %port_id, container = container_id, ifname, network, was_attached, "pod detached");
        Ok(Reply::CniDeleted { was_attached })
    }

    pub(crate) async fn cni_check(
        &self,
        container_id: &str,
        ifname: &str,
        netns_path: &str,
        prev: &CniResult,
    ) -> CniOutcome<Reply> {
        let att = {
            let rec = self.attachments.lock().await;
            rec.record().by_container(container_id, ifname).cloned()
        };
        let Some(att) = att else {
            return refuse(
                ErrorCode::UnknownContainer,
                format!(
                    "no attachment of container {container_id} interface {ifname} on this node"
                ),
            );
        };
        let fail = |msg: String| refuse::<Reply>(ErrorCode::Invalid, msg);
        let Some(want) = prev.interfaces.iter().find(|i| i.sandbox.is_some()) else {
            return fail("prevResult names no interface inside the container".into());
        };
        if want.name != ifname {
            return fail(format!(
                "prevResult's container interface is {}, not CNI_IFNAME {ifname}",
                want.name
            ));
        }
        let netns = podnet::open_netns(netns_path).class(ErrorCode::Invalid)?;
        let Some(seen) = podnet::observe(&netns, netns_path, ifname)
            .await
            .class(ErrorCode::Io)?
        else {
            return fail(format!("interface {ifname} is missing from {netns_path}"));
        };
        let mac = MacAddr(seen.mac).to_string();
        if !mac.eq_ignore_ascii_case(&want.mac) {
            return fail(format!(
                "interface {ifname} has MAC {mac}, prevResult says {}",
                want.mac
            ));
        }
        if let Some(m) = want.mtu
            && m != seen.mtu
        {
            return fail(format!(
                "interface {ifname} has MTU {}, prevResult says {m}",
                seen.mtu
            ));
        }
        if !seen.up {
            return fail(format!("interface {ifname} is down"));
        }
        for ip in &prev.ips {
            if !seen.addresses.contains(&ip.address) {
                return fail(format!(
                    "interface {ifname} lacks the address {} (it has {:?})",
                    ip.address, seen.addresses
                ));
            }
        }
        for r in prev.routes.iter().filter(|r| r.dst.prefix_len() == 0) {
            if let Some(gw) = r.gw
                && !seen.default_gateways.contains(&gw)
            {
                return fail(format!(
                    "interface {ifname} has no default route via {gw} (routes via {:?})",
                    seen.default_gateways
                ));
            }
        }
        let ifindex = self.dp_ifindex;
        let v = att.vport.clone();
        let port_no = tokio::task::spawn_blocking(move || {
            let mut d = Dpif::open()?;
            datapath::vport_port_no(&mut d, ifindex, &v)
        })
        .await
        .class(ErrorCode::Io)?
        .class(ErrorCode::Io)?;
        if port_no.is_none() {
            return fail(format!(
                "vport {} (the host end of {ifname}) is not on the datapath",
                att.vport
            ));
        }
        let port = nsdb(
            &format!("reading port {}", att.port),
            self.nsdb.get::<Port>(&att.port),
        )
        .await?;
        let Some(port) = port else {
            return fail(format!("NSDB has no port {}", att.port));
        };
        if port.record.mac.to_string() != mac {
            return fail(format!(
                "NSDB port {} has MAC {}, the interface {mac}",
                att.port, port.record.mac
            ));
        }
        for ip in &prev.ips {
            if !port
                .record
                .addresses
                .iter()
                .any(|a| a.addr() == ip.address.addr())
            {
                return fail(format!(
                    "NSDB port {} does not hold {}",
                    att.port,
                    ip.address.addr()
                ));
            }
        }
        let binding = nsdb(
            &format!("reading the binding of {}", att.port),
            self.nsdb.get::<PortBinding>(&att.port),
        )
        .await?;
        match binding {
            Some(b) if b.record.host == self.settings.host && b.record.vport == att.vport => {}
            Some(b) => {
                return fail(format!(
                    "NSDB binds port {} to {} on {}, not to {} here",
                    att.port, b.record.vport, b.record.host, att.vport
                ));
            }
            None => return fail(format!("NSDB has no binding of port {}", att.port)),
        }
        Ok(Reply::CniChecked)
    }

    pub(crate) async fn cni_gc(
        &self,
        network: &str,
        valid: &[CniAttachmentId],
    ) -> CniOutcome<Reply> {
        let keep = |c: &str, i: &str| valid.iter().any(|v| v.container_id == c && v.ifname == i);
        let mut stale: BTreeMap<String, (String, CniAttachmentId)> = BTreeMap::new();
        {
            let rec = self.attachments.lock().await;
            for a in rec.record().attachments.values() {
                if let Some(c) = &a.cni
                    && c.network == network
                    && !keep(&c.container_id, &c.ifname)
                {
                    stale.insert(
                        a.port.clone(),
                        (
                            a.vport.clone(),
                            CniAttachmentId {
                                container_id: c.container_id.clone(),
                                ifname: c.ifname.clone(),
                            },
                        ),
                    );
                }
            }
        }
        // Ports this host holds in NSDB on the network that no record names (a record lost
        // with its state directory).
        let snap = self.topo.load();
        for p in snap.records.list::<Port>() {
            let l = &p.labels;
            let ours = l.get(LABEL_HOST) == Some(&self.settings.host)
                && l.get(LABEL_NETWORK).map(String::as_str) == Some(network);
            if let (true, Some(c), Some(i)) = (ours, l.get(LABEL_CONTAINER), l.get(LABEL_IFNAME))
                && !keep(c, i)
                && !stale.contains_key(&p.id)
            {
                stale.insert(
                    p.id.clone(),
                    (
                        host_end(c, i),
                        CniAttachmentId {
                            container_id: c.clone(),
                            ifname: i.clone(),
                        },
                    ),
                );
            }
        }
        drop(snap);
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for (port, (vport, id)) in stale {
            match self.teardown(&port, &vport, NSDB_TIMEOUT).await {
                Ok(_) => removed.push(id),
                Err(r) => errors.push((r.code, format!("{port}: {:#}", r.error))),
            }
        }
        info!(
            network,
            removed = removed.len(),
            failed = errors.len(),
            "GC done"
        );
        if let Some((code, _)) = errors.first() {
            let msg = errors
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return refuse(
                *code,
                format!("GC removed {} attachments; {msg}", removed.len()),
            );
        }
        Ok(Reply::CniCollected { removed })
    }
}

/// The spec's Result of an attachment.
fn result(iface: &PodInterface, vport: &str, host_mac: [u8; 6], netns: &str) -> CniResult {
    let ips = iface
        .addresses
        .iter()
        .map(|a| CniIp {
            address: *a,
            gateway: match a {
                IpNet::V4(_) => iface.gateway_v4.map(IpAddr::V4),
                IpNet::V6(_) => iface.gateway_v6.map(IpAddr::V6),
            },
            interface: Some(1),
        })
        .collect();
    let gateways = [
        iface.gateway_v4.map(IpAddr::V4),
        iface.gateway_v6.map(IpAddr::V6),
    ];
    let routes = gateways
        .into_iter()
        .flatten()
        .map(|gw| CniRoute {
            dst: match gw {
                IpAddr::V4(_) => "0.0.0.0/0",
                IpAddr::V6(_) => "::/0",
            }
            .parse()
            .expect("the default route"),
            gw: Some(gw),
            mtu: None,
        })
        .collect();
    CniResult {
        interfaces: vec![
            CniInterface {
                name: vport.to_owned(),
                mac: MacAddr(host_mac).to_string(),
                mtu: Some(iface.mtu),
                sandbox: None,
            },
            CniInterface {
                name: iface.ifname.clone(),
                mac: MacAddr(iface.mac).to_string(),
                mtu: Some(iface.mtu),
                sandbox: Some(netns.to_owned()),
            },
        ],
        ips,
        routes,
        dns: CniDns::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derived_from_the_container_are_stable_valid_and_distinct() {
        let a = port_id("abc123", "eth0");
        assert_eq!(a, port_id("abc123", "eth0"));
        assert!(a.starts_with("cni-") && a.len() == 20, "{a}");
        assert_ne!(a, port_id("abc123", "eth1"));
        assert_ne!(
            a,
            port_id("abc12", "3eth0"),
            "the separator keeps fields apart"
        );
        let h = host_end("abc123", "eth0");
        assert!(h.starts_with("wf") && h.len() == 14, "{h}");
        assert!(crate::netdev::check_name(&h, "weft").is_ok());
        assert_ne!(h, host_end("abc124", "eth0"));
    }

    #[test]
    fn pod_interface_names_are_checked() {
        for ok in ["eth0", "net1", "a"] {
            assert!(check_pod_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "..", "x:y"] {
            let e = check_pod_ifname(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::Invalid, "{bad}");
        }
    }

    #[test]
    fn transient_nsdb_failures_ask_for_a_retry() {
        let e = NsdbError::Exhausted { pool: "p".into() };
        assert_eq!(nsdb_class(&e), ErrorCode::TryAgainLater);
        let e = NsdbError::PortAlreadyBound {
            port: "p".into(),
            host: "h".into(),
            vport: "v".into(),
        };
        assert_eq!(nsdb_class(&e), ErrorCode::Invalid);
    }
}
