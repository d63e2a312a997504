//! NSDB as the operator's control-plane tests read it: a real etcd, what it holds (record and
//! version by key), the history of writes since a revision, and the comparison with what the
//! offline translation (`weft-operator translate`'s path) makes of the same manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use nsdb::testing::Etcd;
use nsdb::{AnyRecord, Kind, Nsdb};
use weft_operator::offline::Loaded;
use weft_operator::{ObjectKey, program, translate};

/// How long one read of NSDB may take (etcd may be restarting).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix of every NSDB key.
const PREFIX: &str = "/weft/v1/";

/// What NSDB holds at one revision: record and version (mod_revision) by key.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub revision: i64,
    pub records: BTreeMap<String, (AnyRecord, i64)>,
}

impl Snapshot {
    /// The keys of the records `owner` wrote, and of the tunnel keys allocated to them.
    pub fn owned_by(&self, owner: &ObjectKey) -> BTreeSet<String> {
        self.records
            .iter()
            .filter(|(_, (r, _))| match r {
                AnyRecord::TunnelKey(t) => owner.owns(&t.owner),
                r => owner.owns(&r.id()),
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// One write to NSDB seen in etcd's history: the record put, or `None` for a delete.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub revision: i64,
    pub put: Option<AnyRecord>,
}

/// A real etcd as NSDB, with a client of its own on a runtime of its own (the tests are
/// synchronous).
#[derive(Debug)]
pub struct Db {
    etcd: Etcd,
    rt: tokio::runtime::Runtime,
    client: Nsdb,
}

impl Db {
    /// Starts an empty etcd.
    pub fn start() -> Db {
        let etcd = Etcd::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(etcd.client());
        Db { etcd, rt, client }
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// Kills etcd (SIGKILL) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.etcd.restart();
    }

    /// Kills etcd (SIGKILL).
    pub fn kill(&mut self) {
        self.etcd.kill();
    }

    /// What NSDB holds, or why it cannot be read.
    pub fn try_snapshot(&self) -> Result<Snapshot, String> {
        self.rt.block_on(async {
            let (revision, all) = tokio::time::timeout(READ_TIMEOUT, self.client.list_all())
                .await
                .map_err(|_| format!("reading NSDB took over {READ_TIMEOUT:?}"))?
                .map_err(|e| format!("reading NSDB: {}", nsdb::error::chain(&e)))?;
            Ok(Snapshot {
                revision,
                records: all.into_iter().map(|(r, v)| (r.key(), (r, v))).collect(),
            })
        })
    }

    /// Writes `record` as an agent would (without a lease); panics when NSDB does not take it.
    pub fn put<R: nsdb::Record>(&self, record: &R) {
        self.rt.block_on(async {
            tokio::time::timeout(READ_TIMEOUT, self.client.put(record))
                .await
                .expect("NSDB write timed out")
                .unwrap_or_else(|e| panic!("writing {}: {}", record.key(), nsdb::error::chain(&e)));
        });
    }

    /// Deletes record `id` of kind `R`; panics when NSDB does not answer.
    pub fn delete<R: nsdb::Record>(&self, id: &str) {
        self.rt.block_on(async {
            tokio::time::timeout(READ_TIMEOUT, self.client.delete::<R>(id))
                .await
                .expect("NSDB delete timed out")
                .unwrap_or_else(|e| panic!("deleting {id}: {}", nsdb::error::chain(&e)));
        });
    }

    /// What NSDB holds; panics when it cannot be read.
    pub fn snapshot(&self) -> Snapshot {
        self.try_snapshot().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every write to NSDB after revision `from` up to `to`, by key, from etcd's history.
    pub fn writes_between(&self, from: i64, to: i64) -> BTreeMap<String, Vec<Write>> {
        let mut out: BTreeMap<String, Vec<Write>> = BTreeMap::new();
        if to <= from {
            return out;
        }
        self.rt.block_on(async {
            let mut watch = self.client.watch_client();
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from + 1);
            let mut stream = watch
                .watch(PREFIX, Some(opts))
                .await
                .unwrap_or_else(|e| panic!("watching NSDB from revision {}: {e}", from + 1));
            let mut seen = from;
            while seen < to {
                let resp = tokio::time::timeout(READ_TIMEOUT, stream.message())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "NSDB's history from revision {} reached only {seen} of {to} in \
                             {READ_TIMEOUT:?}",
                            from + 1
                        )
                    })
                    .unwrap_or_else(|e| panic!("reading NSDB's history: {e}"))
                    .unwrap_or_else(|| panic!("NSDB's watch ended at revision {seen}"));
                assert!(
                    !resp.canceled(),
                    "NSDB's history from revision {} is gone: {}",
                    from + 1,
                    resp.cancel_reason()
                );
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let revision = kv.mod_revision();
                    seen = seen.max(revision);
                    if revision > to {
                        continue;
                    }
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let put = (ev.event_type() == EventType::Put).then(|| {
                        nsdb::codec::decode_any(&key, kv.value())
                            .unwrap_or_else(|e| panic!("{key} at revision {revision}: {e}"))
                    });
                    out.entry(key).or_default().push(Write { revision, put });
                }
            }
        });
        out
    }
}

/// The records the offline translation makes of the manifests in `paths` (files, or
/// directories of `*.yaml`), with tunnel keys 0. Panics when any object is refused: these are
/// the records of a topology every object of which is valid.
pub fn offline_records(paths: &[PathBuf]) -> Vec<AnyRecord> {
    let loaded = Loaded::from_paths(paths).unwrap_or_else(|e| panic!("loading {paths:?}: {e}"));
    assert!(
        loaded.refused.is_empty(),
        "the CRD schema refuses objects of {paths:?}: {:?}",
        loaded.refused
    );
    let mut records = Vec::new();
    for key in loaded.inventory.keys() {
        let t = program::check(&key, &loaded.inventory)
            .unwrap_or_else(|e| panic!("the offline translation refuses {key}: {e}"));
        records.extend(t.records);
    }
    records
}

/// Whether NSDB holds exactly `expected` (as [`offline_records`] gives them): the same keys,
/// the same records once each carries the tunnel key NSDB allocated it, every tunnel key
/// allocated to exactly the record that carries it and to nothing else. Says how it differs.
/// Whether a Kubernetes object (a Service, a NetworkPolicy, a Namespace), not a custom
/// resource, owns the record with this id.
pub fn kube_owned(id: &str) -> bool {
    ObjectKey::owner_of(id).is_none() && ["knp:", "ksvc:", "kns:"].iter().any(|p| id.starts_with(p))
}

pub fn matches_offline(snapshot: &Snapshot, expected: &[AnyRecord]) -> Result<(), String> {
    let mut problems = Vec::new();
    // The records of Kubernetes objects (the API server's own `kubernetes` Service, for one)
    // are not the custom resources' translation.
    let stored: BTreeMap<&String, &AnyRecord> = snapshot
        .records
        .iter()
        .filter(|(_, (r, _))| r.kind() != Kind::TunnelKey && !kube_owned(&r.id()))
        .map(|(k, (r, _))| (k, r))
        .collect();
    let wanted: BTreeMap<String, &AnyRecord> = expected.iter().map(|r| (r.key(), r)).collect();
    for key in wanted.keys().filter(|k| !stored.contains_key(k)) {
        problems.push(format!("missing {key}"));
    }
    for key in stored.keys().filter(|k| !wanted.contains_key(k.as_str())) {
        problems.push(format!("extra {key}"));
    }
    let mut carried: BTreeMap<u32, String> = BTreeMap::new();
    for (key, want) in &wanted {
        let Some(have) = stored.get(key) else {
            continue;
        };
        let mut want = (*want).clone();
        if translate::needs_tunnel_key(&want) {
            match translate::tunnel_key_of(have) {
                Some(0) | None => problems.push(format!("{key} carries no tunnel key")),
                Some(k) => {
                    translate::set_tunnel_key(&mut want, k);
                    if let Some(other) = carried.insert(k, have.id()) {
                        problems.push(format!("tunnel key {k} carried by {other} and {key}"));
                    }
                }
            }
        }
        if want != **have {
            problems.push(format!(
                "{key} differs:\n  offline: {want:?}\n  NSDB:    {have:?}"
            ));
        }
    }
    let allocated: BTreeMap<u32, String> = snapshot
        .records
        .values()
        .filter_map(|(r, _)| match r {
            AnyRecord::TunnelKey(t) => Some((t.key, t.owner.clone())),
            _ => None,
        })
        .collect();
    if allocated != carried {
        problems.push(format!(
            "tunnel keys allocated {allocated:?} but carried {carried:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
