//! The watch cache: a consistent, always-available copy of NSDB kept current by an
//! etcd watch, served as immutable snapshots plus a stream of changed keys.
//!
//! The cache lists its prefix, then watches from the list's revision + 1. A lost
//! connection (etcd killed, restarted, network cut) resumes the watch from the last
//! revision applied, so no event is missed, and events at or below that revision are
//! dropped, so none is applied twice. When the history it needs was compacted (or etcd
//! came back with a different history), it lists again, diffs the new list against
//! the cache, and emits exactly the differences as changes. It also lists again when a
//! resume cannot complete: a response too large to decode, or several streams in a row
//! that break before delivering any of the history etcd holds for the cache.

use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse};
use futures::FutureExt;
use futures::StreamExt;
use imbl::OrdMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::{Nsdb, decode_kv, response_too_large};
use crate::error::{NsdbError, Result, chain};
use crate::keys::{self, Kind, ROOT};
use crate::metrics;
use crate::records::{AnyRecord, Record};

/// One record in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The etcd mod_revision of the record.
    pub version: i64,
    pub record: Arc<AnyRecord>,
}

/// An immutable view of every record under the cache's prefix at one revision.
/// Cloning is cheap (structural sharing).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    revision: i64,
    // Arc<str> keys: the map shares structure between snapshots, and copying a node on
    // write clones its keys, which must not allocate.
    records: OrdMap<Arc<str>, Entry>,
}

impl Snapshot {
    /// Builds a snapshot from a list (for example [`Nsdb::list_all`]).
    pub fn from_records(revision: i64, records: Vec<(AnyRecord, i64)>) -> Snapshot {
        let records = records
            .into_iter()
            .map(|(r, version)| {
                (
                    Arc::<str>::from(r.key()),
                    Entry {
                        version,
                        record: Arc::new(r),
                    },
                )
            })
            .collect();
        Snapshot { revision, records }
    }

    /// The revision up to which this snapshot reflects every change under its prefix.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many records the snapshot holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the snapshot holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A record by kind and id.
    pub fn get<R: Record>(&self, id: &str) -> Option<&R> {
        self.records
            .get(R::KIND.key(id).as_str())
            .and_then(|e| R::from_any(&e.record))
    }

    /// A record and its version by full key.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.records.get(key)
    }

    /// Every record of one kind, in key order.
    pub fn list<R: Record>(&self) -> impl Iterator<Item = &R> + '_ {
        self.iter_prefix(R::KIND.prefix())
            .filter_map(|(_, e)| R::from_any(&e.record))
    }

    /// Every (key, entry) whose key starts with `prefix`, in key order.
    pub fn iter_prefix(&self, prefix: String) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.records
            .range::<_, str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .map(|(k, e)| (&**k, e))
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Every (key, entry), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.records.iter().map(|(k, e)| (&**k, e))
    }

    /// Whether both snapshots hold the same records at the same versions, whatever
    /// their revisions.
    pub fn same_records(&self, other: &Snapshot) -> bool {
        self.records == other.records
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    Put,
    Delete,
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub key: String,
    pub kind: Kind,
    pub id: String,
    pub op: ChangeOp,
    /// The revision of the change (for changes found by a re-list: the list's revision).
    pub revision: i64,
}

/// A new snapshot and the keys that changed since the previous one, in the order they
/// changed. One update may hold several changes of one key (a put then a delete); the
/// snapshot reflects all of them, so it agrees with the last change of each key.
#[derive(Debug, Clone)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    pub changes: Vec<Change>,
    /// True when the changes come from a re-list (after compaction or a changed history)
    /// rather than from watch events.
    pub resync: bool,
}

struct Shared {
    snapshot: watch::Sender<Arc<Snapshot>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<Update>>>>,
    health: WatchHealth,
}

/// Whether a watch cache is keeping up with etcd: a cheap, cloneable handle for health
/// endpoints. The cache is failing from the moment its watch breaks (or a re-list
/// fails) until a new watch is current, or has delivered some of the history it missed.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    failing_since: Arc<Mutex<Option<Instant>>>,
}

impl WatchHealth {
    /// How long the cache has been failing to follow etcd; `None` while it follows.
    pub fn failing_for(&self) -> Option<Duration> {
        self.lock().map(|since| since.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.failing_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failing(&self) {
        self.lock().get_or_insert_with(Instant::now);
    }

    fn following(&self) {
        *self.lock() = None;
    }
}

impl Shared {
    fn publish(&self, snapshot: Snapshot, changes: Vec<Change>, resync: bool) {
        let snapshot = Arc::new(snapshot);
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        // Subscribers get the update before the snapshot is visible to readers, so one
        // who sees a snapshot also finds its changes already queued.
        if !changes.is_empty() {
            let update = Arc::new(Update {
                snapshot: snapshot.clone(),
                changes,
                resync,
            });
            subs.retain(|s| s.send(update.clone()).is_ok());
        }
        self.snapshot.send_replace(snapshot);
    }
}

/// A running watch cache. Dropping it stops the watch.
pub struct WatchCache {
    prefix: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache")
            .field("prefix", &self.prefix)
            .field("revision", &self.snapshot().revision())
            .finish_non_exhaustive()
    }
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl WatchCache {
    /// Caches all of NSDB (`/weft/v1/`). Waits until the first list succeeds,
    /// retrying while etcd is unreachable.
    pub async fn start(nsdb: Nsdb) -> WatchCache {
        Self::start_prefix(nsdb, ROOT).await
    }

    /// Caches one prefix under `/weft/v1/` (for example `Kind::Port.prefix()`).
    pub async fn start_prefix(nsdb: Nsdb, prefix: &str) -> WatchCache {
        let mut backoff = BACKOFF_MIN;
        let (first, _) = loop {
            match list(&nsdb, prefix).await {
                Ok(s) => break s,
                Err(err) => {
                    warn!(%prefix, error = %chain(&err), "initial NSDB list failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        info!(%prefix, revision = first.revision, records = first.len(), "NSDB cache loaded");
        Self::start_from(nsdb, prefix, first).0
    }

    /// Starts from a snapshot taken earlier (for example one kept across a restart) and
    /// catches up from its revision: by watch events if etcd still has that history,
    /// otherwise by a re-list whose differences are emitted as changes.
    /// Returns the cache and a subscription whose first update follows `snapshot`.
    pub fn start_from(
        nsdb: Nsdb,
        prefix: &str,
        snapshot: Snapshot,
    ) -> (WatchCache, mpsc::UnboundedReceiver<Arc<Update>>) {
        let (tx, _) = watch::channel(Arc::new(snapshot.clone()));
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            snapshot: tx,
            subscribers: Mutex::new(vec![sub_tx]),
            health: WatchHealth::default(),
        });
        let task = tokio::spawn(run(nsdb, prefix.to_owned(), shared.clone(), snapshot));
        let cache = WatchCache {
            prefix: prefix.to_owned(),
            shared,
            task,
        };
        (cache, sub_rx)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.borrow().clone()
    }

    /// The current snapshot and a channel of every later update, with no gap and no
    /// overlap between the two. The channel is unbounded so the cache never waits for a
    /// slow reader: read it (or drop it) promptly.
    pub fn subscribe(&self) -> (Arc<Snapshot>, mpsc::UnboundedReceiver<Arc<Update>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let snap = self.shared.snapshot.borrow().clone();
        subs.push(tx);
        (snap, rx)
    }

    /// A handle telling whether (and for how long) the cache has been failing to follow etcd.
    pub fn health(&self) -> WatchHealth {
        self.shared.health.clone()
    }

    /// A receiver that always holds the latest snapshot (for `arc-swap`-style readers).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshot.subscribe()
    }

    /// Waits until the cache has applied every change up to `revision` under its prefix.
    /// A revision from a write outside the prefix is reached only by a later write inside it.
    pub async fn wait_for_revision(&self, revision: i64) -> Result<Arc<Snapshot>> {
        let mut rx = self.shared.snapshot.subscribe();
        let snap =
            rx.wait_for(|s| s.revision >= revision)
                .await
                .map_err(|_| NsdbError::CacheStopped {
                    prefix: self.prefix.clone(),
                })?;
        Ok(snap.clone())
    }
}

async fn list(nsdb: &Nsdb, prefix: &str) -> Result<(Snapshot, u64)> {
    let raw = nsdb.list_raw(prefix).await?;
    let records = raw.kvs.iter().filter_map(decode_kv).collect();
    Ok((
        Snapshot::from_records(raw.revision, records),
        raw.cluster_id,
    ))
}

/// The differences from `old` to `new`, as changes at `revision`.
fn diff(old: &Snapshot, new: &Snapshot, revision: i64) -> Vec<Change> {
    let mut out = Vec::new();
    let change = |key: &str, op| {
        let (kind, id) = keys::parse(key).ok()?;
        Some(Change {
            key: key.to_owned(),
            kind,
            id: id.to_owned(),
            op,
            revision,
        })
    };
    for (k, e) in new.records.iter() {
        if old.records.get(k).is_none_or(|o| o.version != e.version) {
            out.extend(change(k, ChangeOp::Put));
        }
    }
    for (k, _) in old.records.iter() {
        if !new.records.contains_key(k) {
            out.extend(change(k, ChangeOp::Delete));
        }
    }
    out
}

/// Why a watch stream ended.
enum Interrupt {
    /// The connection broke: resume from the last applied revision.
    Disconnected,
    /// The needed history is gone (compaction, canceled watch): list again.
    Relist,
}

/// Applies one watch response to `state`, appending the changes. Events at or below
/// `state.revision` were already applied (by a list or before a resume) and are dropped.
/// `cluster` is the etcd cluster id the state came from (0 if not known yet).
fn apply(
    state: &mut Snapshot,
    cluster: &mut u64,
    resp: &WatchResponse,
    changes: &mut Vec<Change>,
) -> Option<Interrupt> {
    if resp.created()
        && let Some(h) = resp.header()
    {
        // A store behind our revision, or another cluster, has a different history
        // (etcd restored from a backup or started empty): our revision means nothing there.
        if h.revision() < state.revision || (*cluster != 0 && h.cluster_id() != *cluster) {
            warn!(
                store_revision = h.revision(),
                cache_revision = state.revision,
                cluster = h.cluster_id(),
                "etcd has a different history than the cache"
            );
            return Some(Interrupt::Relist);
        }
        *cluster = h.cluster_id();
    }
    if resp.compact_revision() > 0 {
        warn!(
            compact_revision = resp.compact_revision(),
            "watch history compacted"
        );
        return Some(Interrupt::Relist);
    }
    if resp.canceled() {
        warn!(reason = resp.cancel_reason(), "watch canceled by etcd");
        return Some(Interrupt::Relist);
    }
    let floor = state.revision;
    let mut top = floor;
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let rev = kv.mod_revision();
        if rev <= floor {
            continue;
        }
        top = top.max(rev);
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Ok((kind, id)) = keys::parse(&key) else {
            debug!(%key, "ignoring watched key outside the NSDB layout");
            continue;
        };
        let change = |op| Change {
            key: key.clone(),
            kind,
            id: id.to_owned(),
            op,
            revision: rev,
        };
        match ev.event_type() {
            EventType::Put => match decode_kv(kv) {
                Some((record, version)) => {
                    changes.push(change(ChangeOp::Put));
                    state.records.insert(
                        Arc::from(key.as_str()),
                        Entry {
                            version,
                            record: Arc::new(record),
                        },
                    );
                }
                // Corrupt (already logged and counted): its old value is no longer
                // what etcd holds, so it leaves the cache like it is absent from a list.
                None => {
                    if state.records.remove(key.as_str()).is_some() {
                        changes.push(change(ChangeOp::Delete));
                    }
                }
            },
            EventType::Delete => {
                if state.records.remove(key.as_str()).is_some() {
                    changes.push(change(ChangeOp::Delete));
                }
            }
        }
    }
    state.revision = top;
    None
}

/// How many watch streams in a row may break without applying anything while etcd has
/// history the cache has not seen, before the resume is given up for a re-list.
const MAX_STALLED_RESUMES: u32 = 3;

/// How long a resumed watch with history to catch up on may stay silent before the
/// cache counts it as following (see [`WatchHealth`]).
const QUIET_RESUME: Duration = Duration::from_secs(5);

async fn run(nsdb: Nsdb, prefix: String, shared: Arc<Shared>, mut state: Snapshot) {
    let mut backoff = BACKOFF_MIN;
    let mut cluster = 0u64;
    let mut relist = false;
    let mut stalled = 0u32;
    loop {
        if relist {
            match list(&nsdb, &prefix).await {
                Ok((fresh, cluster_id)) => {
                    cluster = cluster_id;
                    metrics::inc_relist();
                    let changes = diff(&state, &fresh, fresh.revision);
                    info!(%prefix, revision = fresh.revision, changes = changes.len(), "NSDB cache re-listed");
                    state = fresh;
                    shared.publish(state.clone(), changes, true);
                    shared.health.following();
                    relist = false;
                    stalled = 0;
                }
                Err(err) => {
                    shared.health.failing();
                    warn!(%prefix, error = %chain(&err), "NSDB re-list failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(state.revision + 1);
        let stream = match nsdb.watch_client().watch(prefix.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(err) => {
                shared.health.failing();
                warn!(%prefix, %err, "NSDB watch failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // Keep the request half open: closing it ends the watch on the server.
        let (_requests, mut responses) = stream.split();
        let started_at = state.revision;
        // Whether etcd, when it accepted the watch, had revisions the cache has not seen.
        let mut behind = false;
        let interrupt = loop {
            // A stream that etcd created with history to send, and that stays up without
            // delivering any of it, is following: the missed revisions were all outside
            // the prefix.
            let first = if behind && state.revision == started_at {
                match tokio::time::timeout(QUIET_RESUME, responses.next()).await {
                    Ok(first) => first,
                    Err(_) => {
                        behind = false;
                        shared.health.following();
                        continue;
                    }
                }
            } else {
                responses.next().await
            };
            let mut changes = Vec::new();
            let mut stop = None;
            let mut item = first;
            // Apply every response already received before publishing one snapshot.
            loop {
                match item {
                    Some(Ok(resp)) => {
                        if resp.created() {
                            behind = resp.header().is_some_and(|h| h.revision() > state.revision);
                        }
                        let before = state.revision;
                        if let Some(i) = apply(&mut state, &mut cluster, &resp, &mut changes) {
                            stop = Some(i);
                            break;
                        }
                        if (resp.created() && !behind) || state.revision > before {
                            shared.health.following();
                        }
                        backoff = BACKOFF_MIN;
                    }
                    // The response holds more history than one message may carry (a
                    // resume over many large writes): resuming again would fail the same
                    // way, while a list is paged and always completes.
                    Some(Err(err)) if response_too_large(&err) => {
                        warn!(%prefix, %err, "NSDB watch response too large; re-listing");
                        stop = Some(Interrupt::Relist);
                        break;
                    }
                    Some(Err(err)) => {
                        warn!(%prefix, %err, "NSDB watch stream broke");
                        stop = Some(Interrupt::Disconnected);
                        break;
                    }
                    None => {
                        warn!(%prefix, "NSDB watch stream closed");
                        stop = Some(Interrupt::Disconnected);
                        break;
                    }
                }
                match responses.next().now_or_never() {
                    Some(next) => item = next,
                    None => break,
                }
            }
            if !changes.is_empty() {
                shared.publish(state.clone(), changes, false);
            }
            if let Some(i) = stop {
                break i;
            }
        };
        let interrupt = match interrupt {
            Interrupt::Disconnected if behind && state.revision == started_at => {
                // etcd was reachable and had history for us, but the stream broke before
                // delivering any of it. A few of these in a row mean the resume cannot
                // complete (for example, every attempt dies on the same response).
                stalled += 1;
                if stalled >= MAX_STALLED_RESUMES {
                    warn!(%prefix, attempts = stalled, revision = state.revision, "NSDB watch cannot catch up; re-listing");
                    Interrupt::Relist
                } else {
                    Interrupt::Disconnected
                }
            }
            other => {
                if state.revision > started_at {
                    stalled = 0;
                }
                other
            }
        };
        shared.health.failing();
        if matches!(interrupt, Interrupt::Relist) {
            relist = true;
        } else {
            metrics::inc_resume();
        }
        // Also before a re-list: a watch that etcd keeps canceling must not spin.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::samples;

    #[test]
    fn snapshot_typed_access() {
        let s = Snapshot::from_records(5, samples().into_iter().map(|r| (r, 3)).collect());
        assert_eq!(s.revision(), 5);
        assert_eq!(s.list::<crate::Port>().count(), 3);
        assert_eq!(s.list::<crate::IpLease>().count(), 2);
        assert_eq!(s.get::<crate::Bridge>("b1").unwrap().name, "default");
        assert!(s.get::<crate::Bridge>("r1").is_none());
        assert!(s.get::<crate::Router>("r1").is_some());
        assert_eq!(s.entry("/weft/v1/hosts/node-1").unwrap().version, 3);
    }

    #[test]
    fn diff_reports_puts_and_deletes() {
        let all = samples();
        let old = Snapshot::from_records(5, all.iter().cloned().map(|r| (r, 3)).collect());
        let mut newer: Vec<(AnyRecord, i64)> =
            all.iter().skip(1).cloned().map(|r| (r, 3)).collect();
        newer[0].1 = 9;
        let new = Snapshot::from_records(9, newer);
        let d = diff(&old, &new, 9);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|c| c.op == ChangeOp::Delete && c.key == all[0].key())
        );
        assert!(
            d.iter()
                .any(|c| c.op == ChangeOp::Put && c.key == all[1].key())
        );
        assert!(diff(&old, &old, 5).is_empty());
    }
}
