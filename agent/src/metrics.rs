//! The agent's Prometheus metrics (`weft_agent_*`), shared by the handler threads, the flow
//! manager and the topology watcher, and served on /metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a flow left the datapath.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeleteLabels {
    /// `invalidated`, `expired`, `evicted` or `stale` (found stale on restart).
    pub reason: &'static str,
}

/// What became of an upcall that did not end in a simulation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpcallDropLabels {
    /// `malformed`, `rate_limited` or `not_miss`.
    pub reason: &'static str,
}

/// How a health probe of a load balancer member ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// A kind of topology problem (`sim::SimError::metric_label`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabels {
    /// `duplicate_binding`, `bad_binding`, `chain_missing`, ...
    pub kind: &'static str,
}

/// Every agent metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Upcalls received from the kernel.
    pub upcalls: Counter,
    /// Upcalls dropped before simulation, by reason.
    pub upcalls_dropped: Family<UpcallDropLabels, Counter>,
    /// Simulations run for misses.
    pub simulations: Counter,
    /// Megaflows installed in the kernel.
    pub flows_installed: Counter,
    /// Flows deleted from the kernel, by reason.
    pub flows_deleted: Family<DeleteLabels, Counter>,
    /// Flows the agent tracks now.
    pub flows: Gauge,
    /// Topology updates applied (each one an invalidation pass).
    pub invalidations: Counter,
    /// Updates that no tag covered, so every flow was deleted.
    pub full_flushes: Counter,
    /// Clients whose session-affinity member is remembered, as of the last flow sweep.
    pub affinity_entries: Gauge,
    /// New clients not remembered because the affinity memory was full.
    pub affinity_full: Counter,
    /// Kernel refusals of a flow put or an execute.
    pub datapath_errors: Counter,
    /// Packets from the tunnel whose key names no local port.
    pub tunnel_drops: Counter,
    /// Upcall to execute, per miss.
    pub handler_latency: Histogram,
    /// NSDB write to flows invalidated: the time from the update's arrival to the deletes.
    pub invalidation_latency: Histogram,
    /// Topology compilations that failed (the previous topology stays in use).
    pub topology_errors: Counter,
    /// The topology generation in use.
    pub generation: Gauge,
    /// Problems of the topology in use (records left out of it), by kind.
    pub topology_problems: Family<ProblemLabels, Gauge>,
    /// The NSDB watch cache's health, once it has loaded: `/healthz` fails while the
    /// watch has been failing for longer than [`NSDB_WATCH_FAILING_MAX`].
    pub nsdb_watch: std::sync::OnceLock<nsdb::WatchHealth>,
    /// 1 once the agent runs on its first topology, 0 while it waits at start.
    pub ready: Gauge,
    /// Health probes of local load balancer members, by result.
    pub health_probes: Family<ProbeLabels, Counter>,
    /// Local members whose health verdict is down.
    pub members_down: Gauge,
    /// Local members of load balancers with a health check that this agent cannot probe
    /// (it has no node port, `--node-bridge`): they count as their records say.
    pub members_unprobed: Gauge,
    /// What the agent waits for while it is not ready.
    waiting: Mutex<String>,
}

/// How long the NSDB watch may fail to follow etcd before `/healthz` says so: beyond it
/// the agent's topology and ACLs are stale.
pub const NSDB_WATCH_FAILING_MAX: Duration = Duration::from_secs(30);

/// The `/healthz` answer for a watch that has been failing for `failing_for`.
fn healthz(failing_for: Option<Duration>) -> (axum::http::StatusCode, String) {
    match failing_for {
        Some(d) if d > NSDB_WATCH_FAILING_MAX => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("NSDB watch failing for {}s", d.as_secs()),
        ),
        _ => (axum::http::StatusCode::OK, "ok".to_owned()),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric, and NSDB's own.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            upcalls: Counter::default(),
            upcalls_dropped: Family::default(),
            simulations: Counter::default(),
            flows_installed: Counter::default(),
            flows_deleted: Family::default(),
            flows: Gauge::default(),
            invalidations: Counter::default(),
            full_flushes: Counter::default(),
            affinity_entries: Gauge::default(),
            affinity_full: Counter::default(),
            datapath_errors: Counter::default(),
            tunnel_drops: Counter::default(),
            // 10 µs .. ~5 s.
            handler_latency: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            invalidation_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            topology_errors: Counter::default(),
            generation: Gauge::default(),
            nsdb_watch: std::sync::OnceLock::new(),
            topology_problems: Family::default(),
            ready: Gauge::default(),
            health_probes: Family::default(),
            members_down: Gauge::default(),
            members_unprobed: Gauge::default(),
            waiting: Mutex::new("starting".into()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "weft_agent_upcalls",
            "Upcalls received from the kernel",
            m.upcalls.clone(),
        );
        r.register(
            "weft_agent_upcalls_dropped",
            "Upcalls dropped before simulation, by reason",
            m.upcalls_dropped.clone(),
        );
        r.register(
            "weft_agent_simulations",
            "Simulations run for misses",
            m.simulations.clone(),
        );
        r.register(
            "weft_agent_flows_installed",
            "Megaflows installed in the kernel datapath",
            m.flows_installed.clone(),
        );
        r.register(
            "weft_agent_flows_deleted",
            "Flows deleted from the kernel datapath, by reason",
            m.flows_deleted.clone(),
        );
        r.register(
            "weft_agent_flows",
            "Flows the agent tracks",
            m.flows.clone(),
        );
        r.register(
            "weft_agent_invalidations",
            "Topology updates applied to the installed flows",
            m.invalidations.clone(),
        );
        r.register(
            "weft_agent_full_flushes",
            "Topology updates no tag covered, which deleted every flow",
            m.full_flushes.clone(),
        );
        r.register(
            "weft_agent_affinity_entries",
            "Clients whose session-affinity member is remembered",
            m.affinity_entries.clone(),
        );
        r.register(
            "weft_agent_affinity_full",
            "New clients not remembered because the session-affinity memory was full",
            m.affinity_full.clone(),
        );
        r.register(
            "weft_agent_datapath_errors",
            "Flow puts and executes the kernel refused",
            m.datapath_errors.clone(),
        );
        r.register(
            "weft_agent_tunnel_drops",
            "Tunnel packets whose key names no local port",
            m.tunnel_drops.clone(),
        );
        r.register_with_unit(
            "weft_agent_handler_latency",
            "Upcall handling time, from receipt to execute",
            prometheus_client::registry::Unit::Seconds,
            m.handler_latency.clone(),
        );
        r.register_with_unit(
            "weft_agent_invalidation_latency",
            "Time from an NSDB update's arrival to its flows' deletion",
            prometheus_client::registry::Unit::Seconds,
            m.invalidation_latency.clone(),
        );
        r.register(
            "weft_agent_topology_errors",
            "Topology compilations that failed",
            m.topology_errors.clone(),
        );
        r.register(
            "weft_agent_topology_generation",
            "The topology generation in use",
            m.generation.clone(),
        );
        r.register(
            "weft_agent_topology_problems",
            "Problems of the topology in use (records left out of it), by kind",
            m.topology_problems.clone(),
        );
        r.register(
            "weft_agent_ready",
            "1 once the agent runs on its first topology, 0 while it waits for NSDB at start",
            m.ready.clone(),
        );
        r.register(
            "weft_agent_health_probes",
            "Health probes of local load balancer members, by result",
            m.health_probes.clone(),
        );
        r.register(
            "weft_agent_members_down",
            "Local load balancer members whose health verdict is down",
            m.members_down.clone(),
        );
        r.register(
            "weft_agent_members_unprobed",
            "Local members of health-checked load balancers that cannot be probed without a node port",
            m.members_unprobed.clone(),
        );
        nsdb::register(r);
        Metrics { registry, ..m }
    }

    /// Sets the problem gauges to the problems of the topology now in use.
    pub fn set_problems(&self, problems: &[sim::SimError]) {
        self.topology_problems.clear();
        for p in problems {
            self.topology_problems
                .get_or_create(&ProblemLabels {
                    kind: p.metric_label(),
                })
                .inc();
        }
    }

    /// Marks the agent not ready, waiting for `what` (shown by `/readyz`).
    pub fn set_waiting(&self, what: String) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = what;
        self.ready.set(0);
    }

    /// Marks the agent ready.
    pub fn set_ready(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.ready.set(1);
    }

    /// Ok once the agent is ready; otherwise what it waits for.
    pub fn readiness(&self) -> Result<(), String> {
        if self.ready.get() == 1 {
            Ok(())
        } else {
            Err(self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone())
        }
    }

    /// Counts `n` deleted flows.
    pub fn deleted(&self, reason: &'static str, n: usize) {
        self.flows_deleted
            .get_or_create(&DeleteLabels { reason })
            .inc_by(n as u64);
    }

    /// Counts a dropped upcall.
    pub fn upcall_dropped(&self, reason: &'static str) {
        self.upcalls_dropped
            .get_or_create(&UpcallDropLabels { reason })
            .inc();
    }

    /// Records a handler's time for one miss.
    pub fn observe_handler(&self, d: Duration) {
        self.handler_latency.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The routes of the agent's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
///
/// `/healthz` answers ok while the process serves it. `/readyz` answers 503 with what the
/// agent waits for until it runs on its first topology: a liveness probe must not restart an
/// agent that waits for etcd (a new one would wait the same), a readiness probe may hold pods
/// back from it.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::http::header;
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                },
            ),
        )
        .route(
            "/healthz",
            axum::routing::get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    healthz(m.nsdb_watch.get().and_then(|h| h.failing_for()))
                },
            ),
        )
        .route(
            "/readyz",
            axum::routing::get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    match m.readiness() {
                        Ok(()) => (axum::http::StatusCode::OK, "ok".to_string()),
                        Err(why) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                },
            ),
        )
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_only_past_the_bound() {
        use axum::http::StatusCode;
        assert_eq!(healthz(None).0, StatusCode::OK);
        assert_eq!(healthz(Some(Duration::from_secs(5))).0, StatusCode::OK);
        let (code, body) = healthz(Some(Duration::from_secs(31)));
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "NSDB watch failing for 31s");
    }

    #[test]
    fn every_metric_the_issue_names_is_exported() {
        let m = Metrics::new();
        m.upcalls.inc();
        m.deleted("expired", 2);
        m.upcall_dropped("malformed");
        m.observe_handler(Duration::from_micros(50));
        m.set_problems(&[sim::SimError::DuplicateBinding {
            host: "h1".into(),
            vport: "wf1".into(),
            ports: vec!["p1".into(), "p2".into()],
        }]);
        let text = m.encode();
        for name in [
            "weft_agent_upcalls_total 1",
            "weft_agent_simulations_total",
            "weft_agent_flows_installed_total",
            "weft_agent_flows_deleted_total{reason=\"expired\"} 2",
            "weft_agent_upcalls_dropped_total{reason=\"malformed\"} 1",
            "weft_agent_invalidations_total",
            "weft_agent_tunnel_drops_total",
            "weft_agent_handler_latency_seconds_count 1",
            "weft_nsdb_corrupt_records",
            "weft_agent_topology_problems{kind=\"duplicate_binding\"} 1",
            "weft_agent_ready 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn readiness_says_what_the_agent_waits_for_until_it_is_ready() {
        let m = Metrics::new();
        assert_eq!(m.readiness(), Err("starting".to_string()));
        m.set_waiting("waiting for NSDB: registering the host".into());
        assert_eq!(
            m.readiness(),
            Err("waiting for NSDB: registering the host".to_string())
        );
        m.set_ready();
        assert_eq!(m.readiness(), Ok(()));
        assert!(m.encode().contains("weft_agent_ready 1"));
    }
}
