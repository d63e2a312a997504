//! Writing the records of Kubernetes objects: through the same store as the custom resources'
//! ([`crate::store::apply_records`]), counted and timed in the operator's metrics under the
//! object's kind, and with a translation that refuses an object reported on it as an event.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder};
use nsdb::{AnyRecord, Nsdb};
use tracing::{debug, warn};

use super::KubeKey;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{self, Applied};

/// What the Kuryr controllers write with.
#[derive(Clone)]
pub struct Writer {
    pub nsdb: Nsdb,
    metrics: Arc<Metrics>,
    recorder: Recorder,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("nsdb", &self.nsdb)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer to `nsdb`, counting in `metrics`, with events through `client`.
    pub fn new(client: &Client, nsdb: Nsdb, metrics: Arc<Metrics>) -> Writer {
        Writer {
            nsdb,
            metrics,
            recorder: crate::controller::recorder(client),
        }
    }

    /// Makes `records` exactly what `key` has in NSDB.
    pub async fn apply(&self, key: &KubeKey, records: Vec<AnyRecord>) -> Result<Applied, Error> {
        let _timer = self.metrics.reconcile_started(key.kind.as_str());
        match store::apply_records(&self.nsdb, key, records).await {
            Ok(a) => {
                self.metrics.records_changed(a.written, a.deleted);
                debug!(object = %key, written = a.written, deleted = a.deleted, "applied");
                Ok(a)
            }
            Err(e) => {
                self.metrics.reconcile_failed(key.kind.as_str(), &e);
                Err(e)
            }
        }
    }

    /// Deletes what `key` has in NSDB; deleting what is gone succeeds. Returns how many
    /// records went.
    pub async fn remove(&self, key: &KubeKey) -> Result<usize, Error> {
        let _timer = self.metrics.reconcile_started(key.kind.as_str());
        match store::cleanup(&self.nsdb, key).await {
            Ok(n) => {
                self.metrics.records_changed(0, n);
                Ok(n)
            }
            Err(e) => {
                self.metrics.reconcile_failed(key.kind.as_str(), &e);
                Err(e)
            }
        }
    }

    /// An object its translation refuses: logged and counted, with a Warning event on the
    /// object naming the field; what NSDB holds for it stays as it was.
    pub async fn refused(&self, key: &KubeKey, object: &ObjectReference, err: &Error) {
        warn!(object = %key, error = %err, "not translated; its records stay as they were");
        self.metrics.reconcile_failed(key.kind.as_str(), err);
        let event = Event {
            type_: EventType::Warning,
            reason: "Invalid".into(),
            note: Some(err.to_string()),
            action: "Translate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
            debug!(object = %key, %e, "cannot publish the event");
        }
    }
}
