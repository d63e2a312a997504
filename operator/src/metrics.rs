//! The operator's Prometheus metrics (`weft_operator_*`) and their text encoding.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The custom resource kind, e.g. `VirtualBridge`.
    pub kind: String,
}

/// Labels of the reconcile-failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The custom resource kind.
    pub kind: String,
    /// [`crate::Error::metric_label`] of the failure.
    pub error: String,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the operator exports, registered under the `weft` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    records_written: Counter,
    records_deleted: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let records_written = Counter::default();
        let records_deleted = Counter::default();
        let leader = Gauge::default();
        registry.register(
            "operator_reconciles",
            "Reconciliations started, by kind",
            reconciles.clone(),
        );
        registry.register(
            "operator_reconcile_errors",
            "Reconciliations that failed, by kind and error",
            failures.clone(),
        );
        registry.register(
            "operator_reconcile_duration_seconds",
            "Time spent in one reconciliation, by kind",
            duration.clone(),
        );
        registry.register(
            "operator_nsdb_records_written",
            "NSDB records created or changed by the operator",
            records_written.clone(),
        );
        registry.register(
            "operator_nsdb_records_deleted",
            "NSDB records deleted by the operator",
            records_deleted.clone(),
        );
        registry.register(
            "operator_leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            records_written,
            records_deleted,
            leader,
        }
    }

    /// Counts the start of a reconciliation and returns a guard that records its latency when
    /// dropped.
    pub fn reconcile_started(self: &Arc<Self>, kind: &str) -> ReconcileTimer {
        let labels = KindLabels {
            kind: kind.to_owned(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: Arc::clone(self),
            labels,
            start: std::time::Instant::now(),
        }
    }

    /// Counts a failed reconciliation.
    pub fn reconcile_failed(&self, kind: &str, error: &crate::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                kind: kind.to_owned(),
                error: error.metric_label().to_owned(),
            })
            .inc();
    }

    /// Counts records written and deleted by one apply.
    pub fn records_changed(&self, written: usize, deleted: usize) {
        self.records_written.inc_by(written as u64);
        self.records_deleted.inc_by(deleted as u64);
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Observes one reconcile latency directly.
    pub fn observe_duration(&self, kind: &str, elapsed: Duration) {
        self.duration
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records a reconcile's latency when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    labels: KindLabels,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_carry_the_weft_prefix() {
        let m = Arc::new(Metrics::new());
        drop(m.reconcile_started("VirtualBridge"));
        m.records_changed(3, 1);
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains("weft_operator_reconciles_total{kind=\"VirtualBridge\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "weft_operator_reconcile_duration_seconds_count{kind=\"VirtualBridge\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("weft_operator_nsdb_records_written_total 3"),
            "{text}"
        );
        assert!(
            text.contains("weft_operator_nsdb_records_deleted_total 1"),
            "{text}"
        );
        assert!(text.contains("weft_operator_leader 1"), "{text}");
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("weft_"), "unprefixed metric line {line}");
        }
    }
}
