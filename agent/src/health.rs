//! Health checks of load balancer members, as Octavia's and HAProxy's: the agent of the host
//! a member's port is bound to probes that member, from the node's own port into the virtual
//! network (`--node-bridge`, see [`crate::nodeport`]), and writes its verdict to NSDB as a
//! [`MemberHealth`] record under the host's lease.
//!
//! - A member starts with no verdict and counts as its record says. `fall` failed probes in
//!   a row make it down, `rise` successful ones in a row up.
//! - Every agent compiles the verdicts into its topology, so no host chooses a member that
//!   is down; the verdict's change invalidates the load balancer's flows and the buckets
//!   that move (see [`crate::topo`]).
//! - When the agent dies, its lease expires and takes the verdicts with it: the members then
//!   count as their records say (for a Kubernetes Service, the EndpointSlice's readiness).
//! - An agent without a node port cannot reach its members: it writes no verdict and
//!   counts them in `weft_agent_members_unprobed`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use nsdb::{HealthCheck, LoadBalancer, MemberHealth, Nsdb, Port, PortBinding, ProbeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::{Metrics, ProbeLabels};
use crate::topo::SharedTopo;

/// How often the set of members to probe is read again from the topology when nothing is
/// due sooner; the only wakeup of an agent with nothing to probe.
const RESCAN: Duration = Duration::from_secs(1);

/// The bound of one NSDB write or delete of a verdict.
const NSDB_TIMEOUT: Duration = Duration::from_secs(5);

/// The most an HTTP probe reads of the answer: the status line must be in it.
const HTTP_HEAD_MAX: usize = 1024;

/// A member probed by this host: the load balancer and the member's address.
pub type Target = (String, SocketAddr);

/// What the prober needs of the running agent.
#[derive(Debug, Clone)]
pub struct Prober {
    pub host: String,
    pub nsdb: Nsdb,
    pub topo: SharedTopo,
    pub metrics: Arc<Metrics>,
    /// The host registration's current lease, which verdicts are written under.
    pub lease: Arc<AtomicI64>,
    /// Whether the node has its own port into the virtual network to probe from.
    pub node_port: bool,
}

/// The members of health-checked load balancers whose ports are bound to `host`, with each
/// one's check. A member address held by no local port is some other host's to probe.
pub fn local_targets(records: &nsdb::Snapshot, host: &str) -> BTreeMap<Target, HealthCheck> {
    let local: BTreeSet<IpAddr> = records
        .list::<PortBinding>()
        .filter(|b| b.host == host)
        .filter_map(|b| records.get::<Port>(&b.port))
        .flat_map(|p| p.addresses.iter().map(|a| a.addr()))
        .collect();
    let mut out = BTreeMap::new();
    for lb in records.list::<LoadBalancer>() {
        let Some(check) = &lb.health_check else {
            continue;
        };
        for v in &lb.vips {
            for m in v.all_members(records.list::<Port>()) {
                if m.weight > 0 && local.contains(&m.ip) {
                    out.insert(
                        (lb.id.clone(), SocketAddr::new(m.ip, m.port)),
                        check.clone(),
                    );
                }
            }
        }
    }
    out
}

/// One member's probe history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The published verdict; `None` until `rise` or `fall` probes agree.
    pub verdict: Option<bool>,
    ok_run: u32,
    fail_run: u32,
}

impl State {
    /// Counts one probe's result; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool, check: &HealthCheck) -> Option<bool> {
        if ok {
            self.ok_run = self.ok_run.saturating_add(1);
            self.fail_run = 0;
        } else {
            self.fail_run = self.fail_run.saturating_add(1);
            self.ok_run = 0;
        }
        let next = if self.ok_run >= check.rise.max(1) {
            Some(true)
        } else if self.fail_run >= check.fall.max(1) {
            Some(false)
        } else {
            self.verdict
        };
        if next != self.verdict {
            self.verdict = next;
            next
        } else {
            None
        }
    }
}

/// Probes `addr` once: a TCP connect, or an HTTP/1.1 GET of `path` answered 2xx or 3xx,
/// all within the check's timeout.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    let timeout = Duration::from_secs(u64::from(check.timeout_s.max(1)));
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        if check.kind == ProbeKind::Tcp {
            return Some(true);
        }
        let path = check.path.as_deref().unwrap_or("/");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weft-agent\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = Vec::with_capacity(HTTP_HEAD_MAX);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < HTTP_HEAD_MAX {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(http_status_ok(&head))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Whether an HTTP answer's status line says 2xx or 3xx.
pub fn http_status_ok(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let proto_ok = words.next().is_some_and(|p| p.starts_with(b"HTTP/1."));
    let code = words
        .next()
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok());
    proto_ok && matches!(code, Some(200..=399))
}

impl Prober {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        let mut states: BTreeMap<Target, State> = BTreeMap::new();
        let mut due: BTreeMap<Target, Instant> = BTreeMap::new();
        let mut probes: JoinSet<(Target, bool)> = JoinSet::new();
        let mut in_flight: BTreeSet<Target> = BTreeSet::new();
        // Verdicts this host wrote before a restart stand until probes say otherwise.
        let records = self.topo.load().records.clone();
        for h in records
            .list::<MemberHealth>()
            .filter(|h| h.host == self.host)
        {
            states.insert(
                (h.lb.clone(), h.member),
                State {
                    verdict: Some(h.healthy),
                    ..State::default()
                },
            );
        }
        // What this run wrote, under `written_lease`.
        let mut written: BTreeMap<Target, bool> = BTreeMap::new();
        let mut written_lease = 0;
        let mut warned_unprobed = false;
        // The targets, computed again only when the topology changes.
        let mut targets_of: Option<(u64, Arc<BTreeMap<Target, HealthCheck>>)> = None;
        loop {
            let snap = self.topo.load_full();
            let records = snap.records.clone();
            let targets = match &targets_of {
                Some((g, t)) if *g == snap.generation => t.clone(),
                _ => {
                    let t = Arc::new(local_targets(&records, &self.host));
                    targets_of = Some((snap.generation, t.clone()));
                    t
                }
            };
            // Without a node port nothing is probed: no state, so every verdict of this
            // host is deleted below.
            let targets = if self.node_port {
                targets
            } else {
                self.metrics.members_unprobed.set(targets.len() as i64);
                if !targets.is_empty() && !warned_unprobed {
                    warn!(
                        members = targets.len(),
                        "load balancer members on this node have a health check, but without \
                         a node port (--node-bridge) they cannot be probed: they count as \
                         healthy"
                    );
                    warned_unprobed = true;
                }
                Arc::default()
            };
            states.retain(|t, _| targets.contains_key(t));
            due.retain(|t, _| targets.contains_key(t));
            let now = Instant::now();
            for (t, check) in targets.iter() {
                let next = due.entry(t.clone()).or_insert(now);
                if *next <= now && in_flight.insert(t.clone()) {
                    *next = now + Duration::from_secs(u64::from(check.interval_s.max(1)));
                    let (t, check) = (t.clone(), check.clone());
                    probes.spawn(async move {
                        let ok = probe(t.1, &check).await;
                        (t, ok)
                    });
                }
            }
            // NSDB follows the verdicts: each is written when it changes, all of them again
            // under a new lease (the old one took them when it expired), and deleted once
            // the member is no longer this host's to probe.
            let lease = self.lease.load(Ordering::Relaxed);
            if lease != written_lease {
                written.clear();
                written_lease = lease;
            }
            for (t, s) in &states {
                let Some(healthy) = s.verdict else { continue };
                if written.get(t) == Some(&healthy) {
                    continue;
                }
                let rec = MemberHealth {
                    lb: t.0.clone(),
                    member: t.1,
                    healthy,
                    host: self.host.clone(),
                };
                if self.write(&rec, lease).await {
                    written.insert(t.clone(), healthy);
                }
            }
            let mine = |t: &Target| states.get(t).is_some_and(|s| s.verdict.is_some());
            let stale: Vec<Target> = records
                .list::<MemberHealth>()
                .filter(|h| h.host == self.host)
                .map(|h| (h.lb.clone(), h.member))
                .chain(written.keys().cloned())
                .filter(|t| !mine(t))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for t in stale {
                if self.delete(&nsdb::keys::member_health_id(&t.0, t.1)).await {
                    written.remove(&t);
                }
            }
            self.metrics
                .members_down
                .set(states.values().filter(|s| s.verdict == Some(false)).count() as i64);

            let wake = due
                .iter()
                .filter(|(t, _)| !in_flight.contains(*t))
                .map(|(_, at)| *at)
                .min()
                .map_or(now + RESCAN, |at| at.min(now + RESCAN));
            tokio::select! {
                done = probes.join_next(), if !probes.is_empty() => {
                    let Some(Ok((t, ok))) = done else { continue };
                    in_flight.remove(&t);
                    self.metrics
                        .health_probes
                        .get_or_create(&ProbeLabels { result: if ok { "ok" } else { "failed" } })
                        .inc();
                    let Some(check) = targets.get(&t) else { continue };
                    if let Some(v) = states.entry(t.clone()).or_default().observe(ok, check) {
                        info!(lb = %t.0, member = %t.1, healthy = v, "member health changed");
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn write(&self, rec: &MemberHealth, lease: i64) -> bool {
        let put = self.nsdb.txn().put_with_lease(rec, lease).commit();
        match tokio::time::timeout(NSDB_TIMEOUT, put).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                warn!(lb = %rec.lb, member = %rec.member, error = %nsdb::error::chain(&e), "cannot write a member's health");
                false
            }
            Err(_) => {
                warn!(lb = %rec.lb, member = %rec.member, "writing a member's health timed out");
                false
            }
        }
    }

    async fn delete(&self, id: &str) -> bool {
        let del = self.nsdb.delete::<MemberHealth>(id);
        match tokio::time::timeout(NSDB_TIMEOUT, del).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                warn!(verdict = id, error = %nsdb::error::chain(&e), "cannot delete a member's health");
                false
            }
            Err(_) => {
                warn!(verdict = id, "deleting a member's health timed out");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            kind: ProbeKind::Tcp,
            path: None,
            interval_s: 1,
            timeout_s: 1,
            rise,
            fall,
        }
    }

    #[test]
    fn a_verdict_needs_rise_or_fall_probes_in_a_row() {
        let c = check(2, 3);
        let mut s = State::default();
        assert_eq!(s.observe(false, &c), None);
        assert_eq!(s.observe(false, &c), None);
        assert_eq!(
            s.observe(true, &c),
            None,
            "a success breaks the run of failures"
        );
        assert_eq!(s.observe(false, &c), None);
        assert_eq!(s.observe(false, &c), None);
        assert_eq!(s.observe(false, &c), Some(false), "third failure in a row");
        assert_eq!(s.observe(false, &c), None, "already down");
        assert_eq!(s.observe(true, &c), None);
        assert_eq!(s.verdict, Some(false), "one success is not enough to rise");
        assert_eq!(s.observe(true, &c), Some(true));
        assert_eq!(s.observe(true, &c), None);
    }

    #[test]
    fn a_member_never_probed_rises_after_rise_successes() {
        let c = check(1, 1);
        let mut s = State::default();
        assert_eq!(s.observe(true, &c), Some(true));
        assert_eq!(s.observe(false, &c), Some(false));
    }

    #[test]
    fn http_answers_pass_on_2xx_and_3xx_only() {
        assert!(http_status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(http_status_ok(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"));
        assert!(!http_status_ok(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(!http_status_ok(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!http_status_ok(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!http_status_ok(b""));
        assert!(!http_status_ok(b"HTTP/1.1 2000 OK\r\n"));
    }

    /// A real listener on loopback: the probe passes while it answers and fails once it is
    /// gone, for both kinds.
    #[tokio::test]
    async fn probes_pass_against_a_live_server_and_fail_against_a_closed_port() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer: &[u8] = if req.starts_with("GET /healthz ") {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                } else {
                    b"HTTP/1.1 500 Internal Server Error\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            }
        });
        let tcp = check(1, 1);
        let mut http = check(1, 1);
        http.kind = ProbeKind::Http;
        http.path = Some("/healthz".into());
        assert!(probe(addr, &tcp).await);
        assert!(probe(addr, &http).await);
        http.path = Some("/broken".into());
        assert!(!probe(addr, &http).await, "a 500 fails the probe");
        server.abort();
        let _ = server.await;
        assert!(!probe(addr, &tcp).await, "nothing listens any more");
    }
}
