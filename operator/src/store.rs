//! Writing translations to NSDB: the records an object owns are found by their ids, new and
//! changed ones are put and stale ones deleted in one transaction, and tunnel keys are
//! allocated for new devices and ports and released with them.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{GetOptions, TxnOp, TxnOpResponse};
use nsdb::{
    AnyRecord, Chain, Kind, LoadBalancer, Nsdb, NsdbError, Record, TunnelKeyAlloc, codec, keys,
    tunnel_key,
};
use tracing::{debug, warn};

use crate::error::Error;
use crate::ids::{CrKind, ObjectKey};
use crate::translate::{self, Translation};

/// etcd refuses transactions with more operations than `--max-txn-ops` (default
/// [`MAX_TXN_OPS`]). Larger writes are split into several transactions, each all-or-nothing.
pub use nsdb::client::MAX_TXN_OPS;

/// The NSDB kinds each custom resource kind writes.
pub fn kinds_written(kind: CrKind) -> &'static [Kind] {
    match kind {
        CrKind::VirtualBridge => &[Kind::Bridge, Kind::Chain],
        CrKind::VirtualRouter => &[Kind::Router, Kind::Port, Kind::Route, Kind::Chain],
        CrKind::VirtualLoadBalancer => &[Kind::LoadBalancer],
        CrKind::AccessControlList => &[Kind::Chain],
    }
}

/// Whoever owns a set of NSDB records: the ids all start with its base id, and exactly the
/// ids it [`Owner::owns`] are its. Custom resources ([`ObjectKey`]) and the Kubernetes objects
/// the Kuryr mapping translates both write through [`apply_records`] and [`cleanup`].
pub trait Owner: std::fmt::Display + Sync {
    /// The prefix of every id it owns.
    fn base_id(&self) -> String;
    /// The NSDB kinds its records may have.
    fn kinds(&self) -> &'static [Kind];
    /// Whether the record with this id is its.
    fn owns(&self, id: &str) -> bool;
}

impl Owner for ObjectKey {
    fn base_id(&self) -> String {
        ObjectKey::base_id(self)
    }
    fn kinds(&self) -> &'static [Kind] {
        kinds_written(self.kind)
    }
    fn owns(&self, id: &str) -> bool {
        ObjectKey::owns(self, id)
    }
}

/// Every NSDB kind the operator writes.
pub const OPERATOR_KINDS: [Kind; 6] = [
    Kind::Bridge,
    Kind::Router,
    Kind::Port,
    Kind::Route,
    Kind::Chain,
    Kind::LoadBalancer,
];

/// A stored record and its version (etcd mod_revision).
pub type Stored = BTreeMap<String, (AnyRecord, i64)>;

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records created or changed.
    pub written: usize,
    /// Stale records deleted.
    pub deleted: usize,
    /// Records left as they were.
    pub unchanged: usize,
    /// The revision of the last transaction, if anything was written.
    pub revision: Option<i64>,
    /// The records as now stored, with their tunnel keys.
    pub records: Vec<AnyRecord>,
    /// For a load balancer with a health check: the verdicts the members' agents wrote,
    /// by member address (read after the write, for the status only).
    pub health: BTreeMap<std::net::SocketAddr, bool>,
}

impl Applied {
    /// The tunnel key of the object's main record (bridge or router), if it has one.
    pub fn tunnel_key(&self, id: &str) -> Option<u32> {
        self.records
            .iter()
            .find(|r| r.id() == id)
            .and_then(translate::tunnel_key_of)
            .filter(|k| *k != 0)
    }
}

fn nsdb_err(owner: &dyn Owner) -> impl Fn(NsdbError) -> Error + '_ {
    move |source| Error::Nsdb {
        object: owner.to_string(),
        source,
    }
}

/// Reads every record `owner` has in NSDB, at one revision, in one round trip.
pub async fn owned(nsdb: &Nsdb, owner: &dyn Owner) -> Result<Stored, Error> {
    let base = owner.base_id();
    let kinds = owner.kinds();
    let ops: Vec<TxnOp> = kinds
        .iter()
        .map(|k| TxnOp::get(k.key(&base), Some(GetOptions::new().with_prefix())))
        .collect();
    let resp = nsdb
        .kv()
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .map_err(|source| Error::Nsdb {
            object: owner.to_string(),
            source: NsdbError::Etcd {
                op: "list owned",
                key: base.clone(),
                source,
            },
        })?;
    let mut out = Stored::new();
    for op in resp.op_responses() {
        let TxnOpResponse::Get(get) = op else {
            continue;
        };
        for kv in get.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Ok((_, id)) = keys::parse(&key) else {
                continue;
            };
            // The prefix scan also finds other objects whose name starts with this one.
            if !owner.owns(id) {
                continue;
            }
            match codec::decode_any(&key, kv.value()) {
                Ok(r) => {
                    out.insert(key, (r, kv.mod_revision()));
                }
                // A corrupt record of this owner is replaced by the next apply, or deleted.
                Err(err) => {
                    warn!(%key, %err, "corrupt NSDB record owned by {owner}");
                    let (kind, id) = keys::parse(&key).map_err(nsdb_err(owner))?;
                    out.insert(key.clone(), (placeholder(kind, id), kv.mod_revision()));
                }
            }
        }
    }
    Ok(out)
}

/// Stands in for a record that does not decode, so it is overwritten or deleted like any
/// other (its content never equals a real translation: the name is empty).
fn placeholder(kind: Kind, id: &str) -> AnyRecord {
    let chain = Chain {
        pods: None,
        id: id.to_owned(),
        name: String::new(),
        rules: Vec::new(),
        default_action: nsdb::RuleAction::Drop,
    };
    match kind {
        Kind::Chain => AnyRecord::Chain(chain),
        _ => AnyRecord::LoadBalancer(LoadBalancer {
            id: id.to_owned(),
            name: String::new(),
            router: None,
            vips: Vec::new(),
            health_check: None,
        }),
    }
}

enum Op<'a> {
    Put(&'a AnyRecord, i64),
    Delete(&'a str, i64),
}

/// Commits puts and deletes, each conditioned on the version read, in as few transactions
/// as etcd allows. Returns the last revision.
async fn commit(nsdb: &Nsdb, owner: &dyn Owner, ops: &[Op<'_>]) -> Result<Option<i64>, Error> {
    let mut revision = None;
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let mut txn = nsdb.txn();
        for op in chunk {
            txn = match op {
                Op::Put(r, v) => txn.put_any_if_version(r, *v),
                Op::Delete(k, v) => txn.delete_key_if_version(k, *v),
            };
        }
        revision = Some(txn.commit().await.map_err(nsdb_err(owner))?);
    }
    Ok(revision)
}

/// Writes a translation: puts new and changed records, deletes the owner's records it no
/// longer produces, keeps tunnel keys of records that exist and allocates them for new ones.
/// Running it twice on the same translation writes nothing the second time.
pub async fn apply(nsdb: &Nsdb, t: Translation) -> Result<Applied, Error> {
    apply_records(nsdb, &t.owner, t.records).await
}

/// [`apply`] for any owner: `records` become exactly what `owner` has in NSDB.
pub async fn apply_records(
    nsdb: &Nsdb,
    owner: &dyn Owner,
    mut records: Vec<AnyRecord>,
) -> Result<Applied, Error> {
    let existing = owned(nsdb, owner).await?;
    // Keep the keys of records that exist; allocate the others all at once (etcd commits
    // concurrent transactions together, so this costs about one round trip, not one each).
    let mut need: Vec<usize> = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        if !translate::needs_tunnel_key(r) {
            continue;
        }
        let kept = existing
            .get(&r.key())
            .and_then(|(old, _)| translate::tunnel_key_of(old))
            .filter(|k| *k != 0);
        match kept {
            Some(k) => translate::set_tunnel_key(r, k),
            None => need.push(i),
        }
    }
    let ids: Vec<String> = need.iter().map(|&i| records[i].id()).collect();
    let results = futures::future::join_all(
        ids.iter()
            .map(|id| nsdb.allocate_tunnel_key(id, tunnel_key::TYPE_PORT)),
    )
    .await;
    let mut allocated: Vec<(u32, String)> = Vec::new();
    let mut failure = None;
    for (&i, (id, res)) in need.iter().zip(ids.iter().zip(results)) {
        match res {
            Ok(k) => {
                translate::set_tunnel_key(&mut records[i], k);
                allocated.push((k, id.clone()));
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        release(nsdb, &allocated).await;
        return Err(nsdb_err(owner)(e));
    }

    let desired: BTreeSet<String> = records.iter().map(AnyRecord::key).collect();
    let mut ops = Vec::new();
    let mut unchanged = 0;
    for r in &records {
        match existing.get(&r.key()) {
            Some((old, _)) if old == r => unchanged += 1,
            Some((_, v)) => ops.push(Op::Put(r, *v)),
            None => ops.push(Op::Put(r, 0)),
        }
    }
    let mut stale_keys = Vec::new();
    for (key, (old, v)) in &existing {
        if !desired.contains(key) {
            ops.push(Op::Delete(key, *v));
            if let Some(k) = translate::tunnel_key_of(old).filter(|k| *k != 0) {
                stale_keys.push((k, old.id()));
            }
        }
    }
    let written = ops.iter().filter(|o| matches!(o, Op::Put(..))).count();
    let deleted = ops.len() - written;
    let revision = match commit(nsdb, owner, &ops).await {
        Ok(r) => r,
        Err(e) => {
            release(nsdb, &allocated).await;
            return Err(e);
        }
    };
    release(nsdb, &stale_keys).await;
    debug!(%owner, written, deleted, unchanged, "applied");
    Ok(Applied {
        written,
        deleted,
        unchanged,
        revision,
        records,
        health: BTreeMap::new(),
    })
}

/// Releases tunnel keys, logging failures: a key left behind is found by
/// [`sweep_orphan_tunnel_keys`].
async fn release(nsdb: &Nsdb, keys: &[(u32, String)]) {
    for (key, owner) in keys {
        if let Err(err) = nsdb.release_tunnel_key(*key, owner).await {
            warn!(key, %owner, error = %nsdb::error::chain(&err), "cannot release tunnel key");
        }
    }
}

/// Deletes exactly the records `owner` has in NSDB and releases their tunnel keys.
/// Returns how many records were deleted; deleting what is already gone succeeds.
pub async fn cleanup(nsdb: &Nsdb, owner: &dyn Owner) -> Result<usize, Error> {
    let existing = owned(nsdb, owner).await?;
    let ops: Vec<Op> = existing
        .iter()
        .map(|(k, (_, v))| Op::Delete(k, *v))
        .collect();
    commit(nsdb, owner, &ops).await?;
    let keys: Vec<(u32, String)> = existing
        .values()
        .filter_map(|(r, _)| {
            translate::tunnel_key_of(r)
                .filter(|k| *k != 0)
                .map(|k| (k, r.id()))
        })
        .collect();
    release(nsdb, &keys).await;
    Ok(existing.len())
}

/// The owners of every operator-written record in NSDB.
pub async fn stored_owners(nsdb: &Nsdb) -> Result<BTreeSet<ObjectKey>, Error> {
    let (_, all) = nsdb.list_all().await.map_err(|source| Error::Nsdb {
        object: "NSDB".into(),
        source,
    })?;
    Ok(all
        .iter()
        .filter(|(r, _)| OPERATOR_KINDS.contains(&r.kind()))
        .filter_map(|(r, _)| ObjectKey::owner_of(&r.id()))
        .collect())
}

/// Releases tunnel keys allocated to an operator-owned record id that no longer exists
/// (left behind when the operator stopped between allocating and writing). Run it only
/// while no apply is in flight. Returns how many keys were released.
pub async fn sweep_orphan_tunnel_keys(nsdb: &Nsdb) -> Result<usize, Error> {
    let err = |source| Error::Nsdb {
        object: "tunnel keys".into(),
        source,
    };
    let (_, all) = nsdb.list_all().await.map_err(err)?;
    let live: BTreeSet<(u32, String)> = all
        .iter()
        .filter_map(|(r, _)| translate::tunnel_key_of(r).map(|k| (k, r.id())))
        .collect();
    let mut released = 0;
    for (r, _) in &all {
        let AnyRecord::TunnelKey(TunnelKeyAlloc { key, owner }) = r else {
            continue;
        };
        if ObjectKey::owner_of(owner).is_some() && !live.contains(&(*key, owner.clone())) {
            nsdb.release_tunnel_key(*key, owner).await.map_err(err)?;
            released += 1;
        }
    }
    Ok(released)
}

/// Keeps only the kinds a [`Record`] type can name, for callers that want typed access.
pub fn records_of<R: Record>(records: &[AnyRecord]) -> Vec<&R> {
    records.iter().filter_map(R::from_any).collect()
}
