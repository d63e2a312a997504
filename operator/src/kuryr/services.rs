//! The Service controller: every Kubernetes Service with a cluster IP becomes a global NSDB
//! load balancer (no router: the simulation applies global VIPs as soon as a packet enters the
//! virtual network, so every pod on every bridge reaches it), with one VIP per cluster IP and
//! service port and, as members, the ready endpoints of the Service's EndpointSlices. This is
//! kube-proxy's job for pod traffic, done once in NSDB for every agent.
//!
//! What kube-proxy does that this does not:
//! - When no endpoint is ready, kube-proxy falls back to endpoints that are terminating but
//!   still serving; here terminating endpoints are always left out, and the VIP rejects.
//! - `internalTrafficPolicy: Local`, `externalTrafficPolicy`, topology hints, node ports,
//!   external IPs and load balancer ingress addresses are not translated: only cluster IPs, for
//!   traffic from pods.
//!
//! Services carry no finalizer of Weft's, as NetworkPolicies ([`super::policies`]) do not: a
//! deletion arrives as a watch event, and one missed while the operator was away (or not
//! leader) is found when the watches list again, by [`super::sweep`]. A write that fails is
//! retried with backoff, recomputed from the newest Service and slices each time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use nsdb::{AnyRecord, LoadBalancer, Member, Nsdb, Protocol, Vip};
use tracing::{info, warn};

use super::write::Writer;
use super::{KubeKey, KubeKind};
use crate::controller::backoff_delay;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store;

/// The label that ties an EndpointSlice to its Service (in the slice's namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn invalid(svc: &Service, message: String) -> Error {
    Error::InvalidSpec {
        kind: "Service",
        name: format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()),
        message,
    }
}

/// The protocol of a service or slice port; `None` (the API's default) is TCP.
fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A port number of the API (an `i32`) that is one on the wire.
fn port_number(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The Service's cluster IPs: `spec.clusterIPs`, or `spec.clusterIP` when that list is empty.
/// `None` for a headless Service (`None` among them) or one with no address at all.
fn cluster_ips(svc: &Service) -> Result<Option<Vec<IpAddr>>, Error> {
    let spec = svc.spec.as_ref();
    let listed: Vec<(String, &str)> = match spec.and_then(|s| s.cluster_ips.as_deref()) {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .and_then(|s| s.cluster_ip.as_deref())
            .map(|ip| vec![("spec.clusterIP".to_owned(), ip)])
            .unwrap_or_default(),
    };
    let mut ips = Vec::new();
    for (field, ip) in listed {
        match ip {
            "None" => return Ok(None),
            "" => continue,
            ip => {
                ips.push(ip.parse::<IpAddr>().map_err(|e| {
                    invalid(svc, format!("{field}: {ip:?} is not an IP address: {e}"))
                })?)
            }
        }
    }
    Ok((!ips.is_empty()).then_some(ips))
}

/// Whether the slice port serves the service port: the same name (absent and empty are the
/// same: a Service's single port may be unnamed) and the same protocol.
fn same_port(sp: &ServicePort, ep: &EndpointPort, proto: Protocol) -> bool {
    sp.name.as_deref().unwrap_or("") == ep.name.as_deref().unwrap_or("")
        && protocol(ep.protocol.as_deref()) == Some(proto)
}

/// Whether an endpoint takes new connections: `conditions.ready` true, or absent (the API
/// says consumers must read an absent `ready` as ready). Terminating endpoints are never
/// ready; their established connections keep their conntrack entries.
fn ready(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// The members of one VIP (address `vip`, service port `sp` of protocol `proto`): each ready
/// endpoint address of the VIP's family, at the number the slice gives the port (which is
/// how a named `targetPort` is resolved: the EndpointSlice controller writes each pod's own
/// number). An address in two slices is one member; members are sorted.
///
/// Slice data the API server would not accept (an address that is not an IP, a port out of
/// range) is skipped, not refused: one bad hand-written slice does not stop the others.
fn members(
    vip: IpAddr,
    sp: &ServicePort,
    proto: Protocol,
    slices: &[&EndpointSlice],
) -> Vec<Member> {
    let mut found: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    for slice in slices {
        let family_matches = match slice.address_type.as_str() {
            "IPv4" => vip.is_ipv4(),
            "IPv6" => vip.is_ipv6(),
            // FQDN slices are deprecated, and kube-proxy ignores them too.
            _ => false,
        };
        if !family_matches {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        for port in ports
            .iter()
            .filter(|p| same_port(sp, p, proto))
            .filter_map(|p| p.port.and_then(port_number))
        {
            for ep in slice.endpoints.iter().filter(|ep| ready(ep)) {
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse::<IpAddr>()
                        && ip.is_ipv4() == vip.is_ipv4()
                    {
                        found.insert((ip, port));
                    }
                }
            }
        }
    }
    found
        .into_iter()
        .map(|(ip, port)| Member {
            ip,
            port,
            weight: 1,
            healthy: true,
        })
        .collect()
}

/// The load balancer of a Service, given its EndpointSlices (the slices of other Services
/// among them are ignored): id `ksvc:<namespace>:<name>`, name `<namespace>/<name>`, no
/// router, and one VIP per cluster IP and service port, in the order of the spec.
///
/// `None` for a Service that has no virtual IP to balance: headless (`clusterIP: None`),
/// ExternalName, without ports, or not yet given a cluster IP.
///
/// A VIP none of whose endpoints is ready keeps its place with no members: the simulation
/// (`Walk::vip` in `sim::walk`) then rejects each new connection to it, with a TCP RST for
/// IPv4 TCP and an ICMP (ICMPv6 for IPv6) port unreachable otherwise, as kube-proxy's REJECT
/// rule for a Service without endpoints does, instead of letting the packet be routed on.
///
/// Errors name the field: a cluster IP that is not an IP address, a protocol other than TCP,
/// UDP and SCTP, a port out of range, a session affinity other than `None` and `ClientIP`, an
/// affinity timeout outside 1 to 86400 seconds. `sessionAffinity: ClientIP` carries
/// `sessionAffinityConfig.clientIP.timeoutSeconds` (Kubernetes' default of 3 hours when
/// absent): each agent remembers a client's member for that long after the client's last new
/// connection, as kube-proxy's `recent` match does.
pub fn load_balancer(
    svc: &Service,
    slices: &[EndpointSlice],
) -> Result<Option<LoadBalancer>, Error> {
    let key = KubeKey::of(KubeKind::Service, svc)?;
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let Some(ips) = cluster_ips(svc)? else {
        return Ok(None);
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Ok(None);
    }
    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => false,
        Some("ClientIP") => true,
        Some(other) => {
            return Err(invalid(
                svc,
                format!("spec.sessionAffinity: {other:?} is neither None nor ClientIP"),
            ));
        }
    };
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .filter(|_| session_affinity);
    let affinity_timeout_s = match timeout {
        None => None,
        Some(t) => match u32::try_from(t) {
            Ok(t) if (1..=86_400).contains(&t) => Some(t),
            _ => {
                return Err(invalid(
                    svc,
                    format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not within 1 and 86400"
                    ),
                ));
            }
        },
    };
    let mut checked = Vec::with_capacity(ports.len());
    for (i, sp) in ports.iter().enumerate() {
        let proto = protocol(sp.protocol.as_deref()).ok_or_else(|| {
            invalid(
                svc,
                format!(
                    "spec.ports[{i}].protocol: {:?} is not TCP, UDP or SCTP",
                    sp.protocol.as_deref().unwrap_or_default()
                ),
            )
        })?;
        let number = port_number(sp.port).ok_or_else(|| {
            invalid(
                svc,
                format!("spec.ports[{i}].port: {} is not a port number", sp.port),
            )
        })?;
        checked.push((sp, proto, number));
    }
    let own: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(key.namespace.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name)
        })
        .collect();
    let vips = ips
        .iter()
        .flat_map(|&ip| {
            checked
                .iter()
                .map(move |&(sp, proto, port)| (ip, sp, proto, port))
        })
        .map(|(ip, sp, protocol, port)| Vip {
            ip,
            protocol,
            port,
            members: members(ip, sp, protocol, &own),
            session_affinity,
            affinity_timeout_s,
            member_selector: None,
            target_port: None,
        })
        .collect();
    Ok(Some(LoadBalancer {
        health_check: None,
        id: store::Owner::base_id(&key),
        name: format!("{}/{}", key.namespace, key.name),
        router: None,
        vips,
    }))
}

/// The Service an EndpointSlice belongs to, by its label.
fn service_of(slice: &EndpointSlice) -> Option<KubeKey> {
    Some(KubeKey {
        kind: KubeKind::Service,
        namespace: slice.namespace()?,
        name: slice
            .labels()
            .get(SERVICE_NAME_LABEL)
            .filter(|n| !n.is_empty())?
            .clone(),
    })
}

/// A Service whose last write failed: how often, and when to try again.
struct Retry {
    failures: u32,
    at: Instant,
}

/// The controller's state between events.
struct State {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Whether each watch has listed completely at least once: nothing is written before both
    /// have, or a Service listed before its slices would lose its members for a moment.
    services_listed: bool,
    slices_listed: bool,
    /// Services to recompute and write now.
    dirty: BTreeSet<KubeKey>,
    /// Services whose last write failed.
    pending: BTreeMap<KubeKey, Retry>,
    /// When to sweep the records of Services that are gone, and how often that failed.
    sweep_at: Option<Instant>,
    sweep_failures: u32,
}

impl State {
    fn service_event(&mut self, event: Result<watcher::Event<Service>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(svc) | watcher::Event::Delete(svc)) => {
                if let Ok(key) = KubeKey::of(KubeKind::Service, &svc) {
                    self.dirty.insert(key);
                }
            }
            Ok(watcher::Event::InitDone) => {
                self.services_listed = true;
                self.relisted();
            }
            // The reflector has only buffered it; the store changes at InitDone.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => warn!(error = %e, "Service watch"),
        }
    }

    fn slice_event(&mut self, event: Result<watcher::Event<EndpointSlice>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(slice) | watcher::Event::Delete(slice)) => {
                if let Some(key) = service_of(&slice) {
                    self.dirty.insert(key);
                }
            }
            Ok(watcher::Event::InitDone) => {
                self.slices_listed = true;
                self.relisted();
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => warn!(error = %e, "EndpointSlice watch"),
        }
    }

    /// After a (re)list nothing said what changed while the watch was down: every Service is
    /// recomputed, and those that are gone are swept.
    fn relisted(&mut self) {
        for svc in self.services.state() {
            if let Ok(key) = KubeKey::of(KubeKind::Service, svc.as_ref()) {
                self.dirty.insert(key);
            }
        }
        self.sweep_at = Some(Instant::now());
        self.sweep_failures = 0;
    }

    /// Retries whose time has come.
    fn due(&mut self) {
        let now = Instant::now();
        for (key, r) in &self.pending {
            if r.at <= now {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Writes every dirty Service, then sweeps if a sweep is due.
    async fn settle(&mut self, w: &Writer) {
        if !(self.services_listed && self.slices_listed) {
            return;
        }
        for key in std::mem::take(&mut self.dirty) {
            let failures = self.pending.remove(&key).map_or(0, |r| r.failures);
            if let Err(e) = self.write(w, &key).await {
                let failures = failures.saturating_add(1);
                warn!(service = %key, failures, error = %nsdb::error::chain(&e), "Service not written; retrying");
                self.pending.insert(
                    key,
                    Retry {
                        failures,
                        at: Instant::now() + backoff_delay(failures),
                    },
                );
            }
        }
        if self.sweep_at.is_some_and(|at| at <= Instant::now()) {
            let live: BTreeSet<KubeKey> = self
                .services
                .state()
                .iter()
                .filter_map(|s| KubeKey::of(KubeKind::Service, s.as_ref()).ok())
                .collect();
            match super::sweep(&w.nsdb, KubeKind::Service, &live).await {
                Ok(swept) => {
                    if !swept.is_empty() {
                        let services: Vec<String> = swept.iter().map(ToString::to_string).collect();
                        info!(
                            ?services,
                            "deleted the load balancers of Services that are gone"
                        );
                    }
                    self.sweep_at = None;
                    self.sweep_failures = 0;
                }
                Err(e) => {
                    self.sweep_failures = self.sweep_failures.saturating_add(1);
                    warn!(failures = self.sweep_failures, error = %nsdb::error::chain(&e), "sweeping the load balancers of deleted Services; retrying");
                    self.sweep_at = Some(Instant::now() + backoff_delay(self.sweep_failures));
                }
            }
        }
    }

    /// Makes NSDB hold what the stores say of one Service: its load balancer, or nothing.
    /// A Service that cannot be translated keeps what it had, and gets a Warning event.
    async fn write(&self, w: &Writer, key: &KubeKey) -> Result<(), Error> {
        let oref = ObjectRef::<Service>::new(&key.name).within(&key.namespace);
        let Some(svc) = self.services.get(&oref) else {
            let deleted = w.remove(key).await?;
            if deleted > 0 {
                info!(service = %key, "Service deleted; its load balancer removed");
            }
            return Ok(());
        };
        let slices = self.slices.state_filter(|s| {
            s.namespace().as_deref() == Some(key.namespace.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name)
        });
        let slices: Vec<EndpointSlice> = slices.iter().map(|s| s.as_ref().clone()).collect();
        match load_balancer(&svc, &slices) {
            Ok(lb) => {
                let records = lb.into_iter().map(AnyRecord::LoadBalancer).collect();
                w.apply(key, records).await?;
                Ok(())
            }
            Err(e @ Error::InvalidSpec { .. }) => {
                w.refused(key, &svc.object_ref(&()), &e).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Runs the controller until a watch stream ends (they do not by themselves).
pub async fn run(client: Client, nsdb: Nsdb, metrics: Arc<Metrics>) -> Result<(), Error> {
    let w = Writer::new(&client, nsdb, metrics);
    let (services, services_w) = reflector::store();
    let (slices, slices_w) = reflector::store();
    let mut service_events = reflector::reflector(
        services_w,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    // Only slices that name a Service matter.
    let mut slice_events = reflector::reflector(
        slices_w,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        ),
    )
    .default_backoff()
    .boxed();
    let mut state = State {
        services,
        slices,
        services_listed: false,
        slices_listed: false,
        dirty: BTreeSet::new(),
        pending: BTreeMap::new(),
        sweep_at: None,
        sweep_failures: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("Service controller starting");
    loop {
        tokio::select! {
            e = service_events.next() => match e {
                Some(e) => state.service_event(e),
                None => return Ok(()),
            },
            e = slice_events.next() => match e {
                Some(e) => state.slice_event(e),
                None => return Ok(()),
            },
            _ = tick.tick() => state.due(),
        }
        state.settle(&w).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn service(spec: Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, body: Value) -> EndpointSlice {
        let mut v = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {SERVICE_NAME_LABEL: service},
            },
        });
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn member(addr: &str, port: u16) -> Member {
        Member {
            ip: ip(addr),
            port,
            weight: 1,
            healthy: true,
        }
    }

    /// `(ip, protocol, port, members)` of each VIP.
    fn vips(lb: &LoadBalancer) -> Vec<(IpAddr, Protocol, u16, Vec<Member>)> {
        lb.vips
            .iter()
            .map(|v| (v.ip, v.protocol, v.port, v.members.clone()))
            .collect()
    }

    fn lb(svc: &Service, slices: &[EndpointSlice]) -> LoadBalancer {
        load_balancer(svc, slices)
            .unwrap()
            .expect("a load balancer")
    }

    #[test]
    fn a_single_port_balances_over_the_ready_endpoints() {
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "targetPort": 8080}],
            "selector": {"app": "web"},
        }));
        let s = slice(
            "web-abc",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.1.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.1.0.3"]},
                ],
            }),
        );
        let lb = lb(&svc, &[s]);
        assert_eq!(lb.id, "ksvc:shop:web");
        assert_eq!(lb.name, "shop/web");
        assert_eq!(lb.router, None);
        assert_eq!(
            vips(&lb),
            [(
                ip("10.96.0.10"),
                Protocol::Tcp,
                80,
                vec![member("10.1.0.3", 8080), member("10.1.0.5", 8080)]
            )]
        );
        let v = &lb.vips[0];
        assert!(!v.session_affinity);
        assert_eq!(v.member_selector, None);
        assert_eq!(v.target_port, None);
    }

    #[test]
    fn named_ports_take_the_slice_port_of_the_same_name() {
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9090, "targetPort": 9090},
            ],
        }));
        // The EndpointSlice controller resolved the named targetPort "web" to 8080.
        let s = slice(
            "web-abc",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [
                    {"name": "metrics", "port": 9090, "protocol": "TCP"},
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                ],
                "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": true}}],
            }),
        );
        assert_eq!(
            vips(&lb(&svc, &[s])),
            [
                (
                    ip("10.96.0.10"),
                    Protocol::Tcp,
                    80,
                    vec![member("10.1.0.5", 8080)]
                ),
                (
                    ip("10.96.0.10"),
                    Protocol::Tcp,
                    9090,
                    vec![member("10.1.0.5", 9090)]
                ),
            ]
        );
    }

    #[test]
    fn a_named_target_port_may_resolve_to_different_numbers_per_pod() {
        // During a rollout the new pods name a different number: the controller writes them
        // into a slice of their own.
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
        }));
        let old = slice(
            "web-old",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.1.0.5"]}],
            }),
        );
        let new = slice(
            "web-new",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8081}],
                "endpoints": [{"addresses": ["10.1.0.6"]}],
            }),
        );
        assert_eq!(
            lb(&svc, &[new, old]).vips[0].members,
            [member("10.1.0.5", 8080), member("10.1.0.6", 8081)]
        );
    }

    #[test]
    fn not_ready_and_terminating_endpoints_are_left_out() {
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}],
        }));
        let s = slice(
            "web-abc",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"port": 80}],
                "endpoints": [
                    {"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                    {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                    {"addresses": ["10.1.0.3"],
                     "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.1.0.4"], "conditions": {}},
                ],
            }),
        );
        assert_eq!(
            lb(&svc, std::slice::from_ref(&s)).vips[0].members,
            [member("10.1.0.1", 80), member("10.1.0.4", 80)]
        );

        // None ready: the VIP stays, with no members (the simulation rejects).
        let none = slice(
            "web-abc",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"port": 80}],
                "endpoints": [{"addresses": ["10.1.0.2"], "conditions": {"ready": false}}],
            }),
        );
        let lb = lb(&svc, &[none]);
        assert_eq!(vips(&lb), [(ip("10.96.0.10"), Protocol::Tcp, 80, vec![])]);
        let without_slices = load_balancer(&svc, &[]).unwrap().unwrap();
        assert_eq!(without_slices, lb);
    }

    #[test]
    fn slices_are_merged_and_addresses_counted_once() {
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}],
        }));
        let body = |addrs: &[&str]| {
            json!({
                "addressType": "IPv4",
                "ports": [{"port": 80}],
                "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
            })
        };
        let a = slice("web-a", "web", body(&["10.1.0.9", "10.1.0.2"]));
        let b = slice("web-b", "web", body(&["10.1.0.2", "10.1.0.10"]));
        // The slices of another Service, and of the same name in another namespace.
        let other = slice("api-a", "api", body(&["10.1.0.50"]));
        let mut elsewhere = slice("web-c", "web", body(&["10.1.0.60"]));
        elsewhere.metadata.namespace = Some("other".into());
        let want = [
            member("10.1.0.2", 80),
            member("10.1.0.9", 80),
            member("10.1.0.10", 80),
        ];
        assert_eq!(
            lb(
                &svc,
                &[a.clone(), b.clone(), other.clone(), elsewhere.clone()]
            )
            .vips[0]
                .members,
            want
        );
        assert_eq!(lb(&svc, &[elsewhere, b, other, a]).vips[0].members, want);
    }

    #[test]
    fn dual_stack_services_have_a_vip_per_family_with_members_of_that_family() {
        let svc = service(json!({
            "clusterIP": "fd00:10:96::a",
            "clusterIPs": ["fd00:10:96::a", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"],
            "ports": [{"port": 80}],
        }));
        let v4 = slice(
            "web-v4",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.1.0.5"]}],
            }),
        );
        let v6 = slice(
            "web-v6",
            "web",
            json!({
                "addressType": "IPv6",
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["fd00:1::5"]}],
            }),
        );
        assert_eq!(
            vips(&lb(&svc, &[v4.clone(), v6.clone()])),
            [
                (
                    ip("fd00:10:96::a"),
                    Protocol::Tcp,
                    80,
                    vec![member("fd00:1::5", 8080)]
                ),
                (
                    ip("10.96.0.10"),
                    Protocol::Tcp,
                    80,
                    vec![member("10.1.0.5", 8080)]
                ),
            ]
        );

        // Single-stack IPv6, from clusterIP alone.
        let svc = service(json!({
            "clusterIP": "fd00:10:96::a",
            "ports": [{"port": 80}],
        }));
        assert_eq!(
            vips(&lb(&svc, &[v4, v6])),
            [(
                ip("fd00:10:96::a"),
                Protocol::Tcp,
                80,
                vec![member("fd00:1::5", 8080)]
            )]
        );
    }

    #[test]
    fn headless_external_name_and_portless_services_have_no_load_balancer() {
        let s = slice(
            "web-abc",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"port": 80}],
                "endpoints": [{"addresses": ["10.1.0.5"]}],
            }),
        );
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "db.example.com", "ports": [{"port": 80}]}),
            json!({"clusterIP": "10.96.0.10"}),
            json!({"clusterIP": "10.96.0.10", "ports": []}),
            json!({"ports": [{"port": 80}]}),
        ] {
            assert_eq!(
                load_balancer(&service(spec.clone()), std::slice::from_ref(&s)).unwrap(),
                None,
                "{spec}"
            );
        }
    }

    #[test]
    fn a_service_without_selector_uses_the_slices_made_for_it() {
        let svc = service(json!({
            "clusterIP": "10.96.0.20",
            "ports": [{"name": "pg", "port": 5432}],
        }));
        let manual = slice(
            "web-1",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["192.168.50.7"]}],
            }),
        );
        assert_eq!(
            lb(&svc, &[manual]).vips[0].members,
            [member("192.168.50.7", 5432)]
        );
    }

    #[test]
    fn client_ip_affinity_sets_session_affinity_on_every_vip() {
        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        }));
        let lb = lb(&svc, &[]);
        assert_eq!(lb.vips.len(), 2);
        assert!(lb.vips.iter().all(|v| v.session_affinity));
        assert!(
            lb.vips.iter().all(|v| v.affinity_timeout_s == Some(600)),
            "the timeout goes with every VIP: {:?}",
            lb.vips
        );

        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}],
            "sessionAffinity": "ClientIP",
        }));
        assert_eq!(
            load_balancer(&svc, &[]).unwrap().unwrap().vips[0].affinity_timeout_s,
            None,
            "no timeout given: the agents use Kubernetes' default"
        );

        let svc = service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}],
            "sessionAffinity": "None",
        }));
        assert!(!load_balancer(&svc, &[]).unwrap().unwrap().vips[0].session_affinity);
    }

    #[test]
    fn udp_and_sctp_ports_match_slice_ports_of_their_protocol() {
        let svc = service(json!({
            "clusterIP": "10.96.0.53",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "sig", "port": 3868, "protocol": "SCTP"},
            ],
        }));
        let s = slice(
            "web-abc",
            "web",
            json!({
                "addressType": "IPv4",
                "ports": [
                    {"name": "dns", "port": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 2053, "protocol": "TCP"},
                    {"name": "sig", "port": 3868, "protocol": "SCTP"},
                    // Same name, other protocol: not the SCTP port's.
                    {"name": "sig", "port": 9999, "protocol": "UDP"},
                ],
                "endpoints": [{"addresses": ["10.1.0.5"]}],
            }),
        );
        let a = ip("10.96.0.53");
        assert_eq!(
            vips(&lb(&svc, &[s])),
            [
                (a, Protocol::Udp, 53, vec![member("10.1.0.5", 1053)]),
                (a, Protocol::Tcp, 53, vec![member("10.1.0.5", 2053)]),
                (a, Protocol::Sctp, 3868, vec![member("10.1.0.5", 3868)]),
            ]
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (
                json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}),
                "spec.clusterIP: ",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::zz"],
                       "ports": [{"port": 80}]}),
                "spec.clusterIPs[1]: ",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]}),
                "spec.ports[0].protocol: ",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}, {"port": 70000}]}),
                "spec.ports[1].port: ",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}],
                       "sessionAffinity": "Cookie"}),
                "spec.sessionAffinity: ",
            ),
            (
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}],
                       "sessionAffinity": "ClientIP",
                       "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: ",
            ),
        ];
        for (spec, field) in cases {
            let err = load_balancer(&service(spec.clone()), &[]).unwrap_err();
            match &err {
                Error::InvalidSpec {
                    kind: "Service",
                    name,
                    message,
                } => {
                    assert_eq!(name, "shop/web");
                    assert!(message.starts_with(field), "{spec}: {message}");
                }
                other => panic!("{spec}: {other:?}"),
            }
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn a_slice_names_its_service_by_label() {
        let s = slice(
            "web-abc",
            "web",
            json!({"addressType": "IPv4", "endpoints": []}),
        );
        assert_eq!(
            service_of(&s),
            Some(KubeKey {
                kind: KubeKind::Service,
                namespace: "shop".into(),
                name: "web".into(),
            })
        );
        let mut unlabelled = s.clone();
        unlabelled.metadata.labels = None;
        assert_eq!(service_of(&unlabelled), None);
    }
}
