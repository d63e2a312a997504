//! The NetworkPolicy controller: every `networking.k8s.io/v1` NetworkPolicy becomes the
//! chains [`super::netpol::chains`] translates it into, written to NSDB under the policy's own
//! id prefix, and deleted with it.
//!
//! NetworkPolicies carry no finalizer of Weft's: a deletion arrives as a watch event, and one
//! missed while the operator was away (or not leader) is found when the watch lists again: the
//! chains of every policy that is not listed are deleted then. A write that fails is retried
//! with backoff, the newest version of the policy winning. A policy that cannot be translated
//! keeps the chains it had, and gets a Warning event naming the field.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use nsdb::{AnyRecord, Nsdb};
use tracing::{info, warn};

use super::write::Writer;
use super::{KubeKey, KubeKind};
use crate::controller::backoff_delay;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store;

/// Writes the chains of `np` (a NetworkPolicy that exists). A translation error is returned
/// as it is, with nothing written.
pub async fn apply(w: &Writer, np: &NetworkPolicy) -> Result<store::Applied, Error> {
    let key = KubeKey::of(KubeKind::NetworkPolicy, np)?;
    let chains = super::netpol::chains(np)?;
    let records = chains.into_iter().map(AnyRecord::Chain).collect();
    w.apply(&key, records).await
}

/// What is still to be done for one policy: write this version, or delete.
enum Pending {
    Apply(Arc<NetworkPolicy>),
    Remove,
}

/// A policy whose last write failed: what to do, how often it failed, and when to retry.
struct Retry {
    what: Pending,
    failures: u32,
    at: Instant,
}

/// Runs the controller until the watch stream ends (it does not by itself).
pub async fn run(client: Client, nsdb: Nsdb, metrics: Arc<Metrics>) -> Result<(), Error> {
    let w = Writer::new(&client, nsdb, metrics);
    let api: Api<NetworkPolicy> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Policies whose last write failed.
    let mut pending: BTreeMap<KubeKey, Retry> = BTreeMap::new();
    let mut listing: Option<BTreeSet<KubeKey>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("NetworkPolicy controller starting");
    loop {
        let event = tokio::select! {
            e = events.next() => match e {
                Some(e) => e,
                None => return Ok(()),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<KubeKey> = pending
                    .iter()
                    .filter(|(_, r)| r.at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in due {
                    if let Some(r) = pending.remove(&key) {
                        settle(&w, key, r.what, r.failures, &mut pending).await;
                    }
                }
                continue;
            }
        };
        // A new version (or the deletion) is tried at once, keeping the count of failures.
        let (key, what) = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(BTreeSet::new());
                continue;
            }
            Ok(watcher::Event::InitApply(np)) | Ok(watcher::Event::Apply(np)) => {
                let Some(key) = KubeKey::of(KubeKind::NetworkPolicy, &np).ok() else {
                    continue;
                };
                if let Some(l) = listing.as_mut() {
                    l.insert(key.clone());
                }
                (key, Pending::Apply(Arc::new(np)))
            }
            Ok(watcher::Event::Delete(np)) => {
                let Some(key) = KubeKey::of(KubeKind::NetworkPolicy, &np).ok() else {
                    continue;
                };
                (key, Pending::Remove)
            }
            Ok(watcher::Event::InitDone) => {
                let Some(live) = listing.take() else {
                    continue;
                };
                match super::sweep(&w.nsdb, KubeKind::NetworkPolicy, &live).await {
                    Ok(swept) if !swept.is_empty() => {
                        info!(policies = ?swept, "deleted the chains of NetworkPolicies that are gone")
                    }
                    Ok(_) => {}
                    // The next relist sweeps again.
                    Err(e) => {
                        warn!(error = %nsdb::error::chain(&e), "sweeping the chains of deleted NetworkPolicies")
                    }
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "NetworkPolicy watch");
                continue;
            }
        };
        let failures = pending.remove(&key).map_or(0, |r| r.failures);
        settle(&w, key, what, failures, &mut pending).await;
    }
}

/// Does what is pending for `key`; on failure keeps it pending, to be retried after the
/// controllers' backoff.
async fn settle(
    w: &Writer,
    key: KubeKey,
    what: Pending,
    failures: u32,
    pending: &mut BTreeMap<KubeKey, Retry>,
) {
    let result = match &what {
        Pending::Apply(np) => match apply(w, np).await {
            Ok(_) => Ok(()),
            Err(e @ Error::InvalidSpec { .. }) => {
                w.refused(&key, &np.object_ref(&()), &e).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Pending::Remove => w.remove(&key).await.map(|_| ()),
    };
    if let Err(e) = result {
        let failures = failures.saturating_add(1);
        warn!(policy = %key, failures, error = %nsdb::error::chain(&e), "NetworkPolicy not written; retrying");
        pending.insert(
            key,
            Retry {
                what,
                failures,
                at: Instant::now() + backoff_delay(failures),
            },
        );
    }
}
