//! The typed etcd client: get, list, put, delete, compare-and-swap and transactions
//! over [`Record`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, TxnOp,
    TxnOpResponse, WatchClient,
};
use tracing::{debug, error, warn};

use crate::alloc::PoolState;
use crate::codec;
use crate::error::{NsdbError, Result};
use crate::keys::{self, Kind, ROOT};
use crate::metrics;
use crate::records::{AnyRecord, Record};
use crate::tls::TlsFiles;

/// The most operations etcd accepts in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// The largest gRPC message this client decodes (tonic's default is 4 MiB).
///
/// A watch that resumes over history gets up to 1,000 revisions in one response, and a
/// list page holds whole records, so 4 MiB was passed by ordinary NSDB content (800 puts
/// of 10 KB; five chains of the largest ACL). Lists are paged by bytes (see
/// [`PAGE_BYTES`]) and a watch response that still does not fit makes the watch cache
/// re-list, so this bound only caps the memory one message may take, well above what
/// etcd sends for one record (`--max-request-bytes`, 1.5 MiB by default).
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// The size a list page aims at. etcd limits a range by record count, not bytes, so the
/// count of each page is adapted to the record sizes seen in the previous one.
pub const PAGE_BYTES: usize = 1 << 20;

/// The record count of a list's first page, and the most in any page.
const PAGE_FIRST: i64 = 128;
const PAGE_MAX: i64 = 1000;

/// A record with its version (the etcd `mod_revision` of its key).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<R> {
    pub record: R,
    /// The etcd mod_revision: pass it to `put_if_version` to update only this version.
    pub version: i64,
}

/// Records of one kind, all read at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<R> {
    pub records: Vec<Versioned<R>>,
    /// The store revision the list was read at.
    pub revision: i64,
}

/// A raw list of a prefix at one revision (values undecoded).
#[derive(Debug, Clone)]
pub(crate) struct RawList {
    pub revision: i64,
    /// The etcd cluster that served the list.
    pub cluster_id: u64,
    pub kvs: Vec<KeyValue>,
}

/// A handle to NSDB. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Nsdb {
    client: Client,
    /// The KV and watch clients of `client` with the decode limit raised to
    /// [`MAX_DECODE_BYTES`]: every read and write of this crate goes through them.
    kv: KvClient,
    watch: WatchClient,
    endpoints: Arc<Vec<String>>,
    pub(crate) pools: Arc<Mutex<HashMap<String, PoolState>>>,
}

impl std::fmt::Debug for Nsdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nsdb")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// One TLS handshake with each member at once; an error when none accepts and one refuses.
async fn refused_by_every_member(endpoints: &[String], tls: &crate::tls::Loaded) -> Result<()> {
    use crate::tls::{Probe, probe};
    let probes = futures::future::join_all(endpoints.iter().map(|e| probe(e, tls))).await;
    if probes.iter().any(|p| matches!(p, Probe::Accepted)) {
        return Ok(());
    }
    match endpoints.iter().zip(probes).find_map(|(e, p)| match p {
        Probe::Refused(reason) => Some((e, reason)),
        _ => None,
    }) {
        Some((endpoint, reason)) => Err(NsdbError::TlsHandshake {
            endpoint: endpoint.clone(),
            reason,
        }),
        // No member answers: the lazy connection keeps trying.
        None => Ok(()),
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Nsdb {
    /// Connects to etcd. The connection is lazy and reconnects by itself: requests made
    /// while etcd is away fail with [`NsdbError::Etcd`] and succeed again once it is back.
    ///
    /// `https://` endpoints are verified against the system's trusted roots, without a
    /// client certificate; [`Nsdb::connect_with_tls`] takes a CA bundle and a client
    /// certificate.
    pub async fn connect<E: AsRef<str>>(endpoints: &[E]) -> Result<Self> {
        Self::connect_with_tls(endpoints, &TlsFiles::default()).await
    }

    /// Connects to etcd with TLS files (see [`crate::tls`] for the rules): they are read and
    /// checked here, so a missing file or a certificate without its key fails now, naming its
    /// flag. Then one handshake per member shows whether TLS works: when every member that
    /// answers refuses it (no client certificate, one of another CA, a certificate of etcd's
    /// that the CA does not vouch for), this fails with [`NsdbError::TlsHandshake`] and the
    /// reason, within [`crate::tls::HANDSHAKE_TIMEOUT`] twice. Members that do not answer at
    /// all are left to the lazy connection, as with [`Nsdb::connect`].
    pub async fn connect_with_tls<E: AsRef<str>>(endpoints: &[E], tls: &TlsFiles) -> Result<Self> {
        let eps: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls.load(&eps)? {
            crate::tls::install_crypto_provider();
            refused_by_every_member(&eps, &tls).await?;
            opts = opts.with_tls(tls.options);
        }
        let client =
            Client::connect(&eps, Some(opts))
                .await
                .map_err(|source| NsdbError::Connect {
                    endpoints: eps.join(","),
                    source,
                })?;
        // etcd-client 0.21's ConnectOptions has no message size setting, and its `Client`
        // builds each service client with tonic's defaults (also from a raw channel). The
        // limit lives in the per-service tonic clients, which `KvClient` and `WatchClient`
        // expose through `max_decoding_message_size`; they share the client's channel and
        // auth token. The encode limit is already unbounded (tonic's default `usize::MAX`):
        // what bounds a request is etcd's `--max-request-bytes`.
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE_BYTES);
        let watch = client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE_BYTES);
        Ok(Nsdb {
            client,
            kv,
            watch,
            endpoints: Arc::new(eps),
            pools: Arc::default(),
        })
    }

    /// The endpoints this client was connected to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The underlying etcd client, for operations this crate does not wrap (leases).
    /// Its own KV and watch calls keep tonic's 4 MiB decode limit: read through
    /// [`Nsdb::kv`] and [`Nsdb::watch_client`] instead.
    pub fn etcd(&self) -> Client {
        self.client.clone()
    }

    /// The etcd KV client, decoding responses up to [`MAX_DECODE_BYTES`].
    pub fn kv(&self) -> KvClient {
        self.kv.clone()
    }

    /// The etcd watch client, decoding responses up to [`MAX_DECODE_BYTES`].
    pub fn watch_client(&self) -> WatchClient {
        self.watch.clone()
    }

    /// Reads one record. A value that does not decode is an error here (unlike `list`).
    pub async fn get<R: Record>(&self, id: &str) -> Result<Option<Versioned<R>>> {
        keys::validate_id(R::KIND, id)?;
        let key = R::KIND.key(id);
        let resp = self
            .kv()
            .get(key.as_str(), None)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "get",
                key: key.clone(),
                source,
            })?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                record: codec::decode(&key, kv.value())?,
                version: kv.mod_revision(),
            })),
        }
    }

    /// Lists every record of one kind at one revision. Corrupt values are skipped,
    /// logged and counted in `weft_nsdb_corrupt_records_total`.
    pub async fn list<R: Record>(&self) -> Result<Listed<R>> {
        self.list_under("").await
    }

    /// [`Nsdb::list`] of the records whose id starts with `id_prefix` (all member health
    /// verdicts of one load balancer: `"<lb>/"`).
    pub async fn list_under<R: Record>(&self, id_prefix: &str) -> Result<Listed<R>> {
        let raw = self
            .list_raw(&format!("{}{id_prefix}", R::prefix()))
            .await?;
        let mut records = Vec::with_capacity(raw.kvs.len());
        for kv in &raw.kvs {
            let key = String::from_utf8_lossy(kv.key());
            match codec::decode::<R>(&key, kv.value()) {
                Ok(record) => records.push(Versioned {
                    record,
                    version: kv.mod_revision(),
                }),
                Err(err) => skip_corrupt(&key, &err),
            }
        }
        Ok(Listed {
            records,
            revision: raw.revision,
        })
    }

    /// Reads the record at a full NSDB key, whatever its kind.
    pub async fn get_any(&self, key: &str) -> Result<Option<(AnyRecord, i64)>> {
        let (kind, id) = keys::parse(key)?;
        keys::validate_id(kind, id)?;
        let resp = self
            .kv()
            .get(key, None)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "get",
                key: key.to_owned(),
                source,
            })?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((
                codec::decode_any(key, kv.value())?,
                kv.mod_revision(),
            ))),
        }
    }

    /// Lists every record of every kind at one revision, with their versions.
    /// Corrupt values are skipped, logged and counted.
    pub async fn list_all(&self) -> Result<(i64, Vec<(AnyRecord, i64)>)> {
        let raw = self.list_raw(ROOT).await?;
        let mut out = Vec::with_capacity(raw.kvs.len());
        for kv in &raw.kvs {
            if let Some(r) = decode_kv(kv) {
                out.push(r);
            }
        }
        Ok((raw.revision, out))
    }

    /// Lists a prefix page by page, all pages at the revision of the first one.
    ///
    /// Pages are sized by bytes: each page's record count comes from the sizes seen so
    /// far ([`next_page_count`]), and a page that still exceeds [`MAX_DECODE_BYTES`] is
    /// fetched again with half the count, down to one record, so any record etcd
    /// accepted can be listed.
    pub(crate) async fn list_raw(&self, prefix: &str) -> Result<RawList> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut cluster_id = 0;
        let mut kvs = Vec::new();
        let mut count = PAGE_FIRST;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(count);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = match self.kv().get(from.clone(), Some(opts)).await {
                Ok(resp) => resp,
                Err(source) if count > 1 && response_too_large(&source) => {
                    debug!(%prefix, count, %source, "list page too large; halving it");
                    count /= 2;
                    continue;
                }
                Err(source) => {
                    return Err(NsdbError::Etcd {
                        op: "list",
                        key: prefix.to_owned(),
                        source,
                    });
                }
            };
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
                cluster_id = resp.header().map_or(0, |h| h.cluster_id());
            }
            let more = resp.more();
            let page = resp.take_kvs();
            if let Some(last) = page.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            let bytes: usize = page
                .iter()
                .map(|kv| kv.key().len() + kv.value().len())
                .sum();
            count = next_page_count(count, page.len(), bytes);
            let empty = page.is_empty();
            kvs.extend(page);
            if !more || empty {
                return Ok(RawList {
                    revision,
                    cluster_id,
                    kvs,
                });
            }
        }
    }

    /// Writes a record unconditionally. Returns its new version.
    pub async fn put<R: Record>(&self, record: &R) -> Result<i64> {
        self.txn().put(record).commit().await
    }

    /// Writes a record only if its current version is `expected` (0: only if it does
    /// not exist). Returns the new version, or [`NsdbError::VersionConflict`].
    pub async fn put_if_version<R: Record>(&self, record: &R, expected: i64) -> Result<i64> {
        let key = record.key();
        match self.txn().put_if_version(record, expected).commit().await {
            Err(NsdbError::TxnConditionFailed { .. }) => {
                Err(NsdbError::VersionConflict { key, expected })
            }
            other => other,
        }
    }

    /// Creates a record only if its key is free. Returns its version.
    pub async fn create<R: Record>(&self, record: &R) -> Result<i64> {
        self.put_if_version(record, 0).await
    }

    /// Deletes a record. Returns whether it existed.
    pub async fn delete<R: Record>(&self, id: &str) -> Result<bool> {
        keys::validate_id(R::KIND, id)?;
        let key = R::KIND.key(id);
        let resp = self
            .kv()
            .delete(key.as_str(), None)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "delete",
                key,
                source,
            })?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes a record only if its current version is `expected`.
    pub async fn delete_if_version<R: Record>(&self, id: &str, expected: i64) -> Result<()> {
        let key = R::KIND.key(id);
        match self
            .txn()
            .delete_if_version::<R>(id, expected)
            .commit()
            .await
        {
            Err(NsdbError::TxnConditionFailed { .. }) => {
                Err(NsdbError::VersionConflict { key, expected })
            }
            other => other.map(|_| ()),
        }
    }

    /// Starts a multi-op transaction.
    pub fn txn(&self) -> Txn {
        Txn {
            client: self.kv(),
            compares: Vec::new(),
            ops: Vec::new(),
            compared: Vec::new(),
            error: None,
        }
    }

    /// Writes a raw value at a key, bypassing encoding. For tools and tests that
    /// need to store something that is not a valid record.
    pub async fn put_raw(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<i64> {
        let resp = self
            .kv()
            .put(key, value, None)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "put",
                key: key.to_owned(),
                source,
            })?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Deletes every key under `/weft/v1/`. Returns how many were deleted.
    pub async fn delete_everything(&self) -> Result<i64> {
        let resp = self
            .kv()
            .delete(ROOT, Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "delete",
                key: ROOT.to_owned(),
                source,
            })?;
        Ok(resp.deleted())
    }

    /// Compacts the etcd history up to `revision`.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.kv()
            .compact(revision, None)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "compact",
                key: revision.to_string(),
                source,
            })?;
        Ok(())
    }
}

/// The record count of the next list page, from the last page's `count` limit and the
/// `records` and `bytes` it returned: as many records of the average size seen as fit
/// in [`PAGE_BYTES`], growing at most twofold per page (sizes can change along the
/// prefix), between 1 and [`PAGE_MAX`].
fn next_page_count(count: i64, records: usize, bytes: usize) -> i64 {
    if records == 0 {
        return count;
    }
    let average = (bytes / records).max(1);
    let fit = i64::try_from(PAGE_BYTES / average).unwrap_or(PAGE_MAX);
    fit.min(count.saturating_mul(2)).clamp(1, PAGE_MAX)
}

/// Whether a request failed because its response exceeded the client's decode limit.
/// tonic reports that as `OutOfRange` with "decoded message length too large"; etcd's
/// own `OutOfRange` (a compacted revision) says "required revision has been compacted".
pub(crate) fn response_too_large(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large"))
}

/// Decodes a listed or watched key-value; logs and counts corrupt values.
pub(crate) fn decode_kv(kv: &KeyValue) -> Option<(AnyRecord, i64)> {
    let key = String::from_utf8_lossy(kv.key());
    match keys::parse(&key) {
        Err(_) => {
            warn!(%key, "ignoring key outside the NSDB layout");
            None
        }
        Ok(_) => match codec::decode_any(&key, kv.value()) {
            Ok(r) => Some((r, kv.mod_revision())),
            Err(err) => {
                skip_corrupt(&key, &err);
                None
            }
        },
    }
}

fn skip_corrupt(key: &str, err: &NsdbError) {
    metrics::inc_corrupt();
    error!(%key, error = %crate::error::chain(err), "skipping corrupt NSDB record");
}

/// A multi-op transaction: conditions on record versions, then puts and deletes that
/// are applied all together or not at all.
#[must_use = "a transaction does nothing until committed"]
pub struct Txn {
    client: KvClient,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    compared: Vec<String>,
    error: Option<NsdbError>,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("compared", &self.compared)
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl Txn {
    pub(crate) fn fail(mut self, err: NsdbError) -> Self {
        self.error.get_or_insert(err);
        self
    }

    pub(crate) fn push_put(
        mut self,
        key: String,
        value: Vec<u8>,
        opts: Option<etcd_client::PutOptions>,
    ) -> Self {
        self.ops.push(TxnOp::put(key, value, opts));
        self
    }

    /// Puts a record.
    pub fn put<R: Record>(mut self, record: &R) -> Self {
        if let Err(e) = keys::validate_id(R::KIND, &record.id()) {
            return self.fail(e);
        }
        match codec::encode(record) {
            Ok(v) => {
                self.ops.push(TxnOp::put(record.key(), v, None));
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Puts a record if its version is `expected` (0: if it does not exist).
    pub fn put_if_version<R: Record>(self, record: &R, expected: i64) -> Self {
        self.require_version::<R>(&record.id(), expected)
            .put(record)
    }

    /// Creates a record if its key is free.
    pub fn create<R: Record>(self, record: &R) -> Self {
        self.put_if_version(record, 0)
    }

    /// Puts a record of any kind.
    pub fn put_any(mut self, record: &AnyRecord) -> Self {
        if let Err(e) = keys::validate_id(record.kind(), &record.id()) {
            return self.fail(e);
        }
        match codec::encode_any(record) {
            Ok(v) => {
                self.ops.push(TxnOp::put(record.key(), v, None));
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Puts a record of any kind if its version is `expected` (0: if it does not exist).
    pub fn put_any_if_version(self, record: &AnyRecord, expected: i64) -> Self {
        self.require_key_version(record.kind(), &record.id(), expected)
            .put_any(record)
    }

    /// Deletes the record at a full NSDB key (no error if absent).
    pub fn delete_key(mut self, key: &str) -> Self {
        match keys::parse(key).and_then(|(kind, id)| keys::validate_id(kind, id)) {
            Ok(()) => {
                self.ops.push(TxnOp::delete(key, None));
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Deletes the record at a full NSDB key if its version is `expected`.
    pub fn delete_key_if_version(self, key: &str, expected: i64) -> Self {
        match keys::parse(key) {
            Ok((kind, id)) => self.require_key_version(kind, id, expected),
            Err(e) => self.fail(e),
        }
        .delete_key(key)
    }

    /// Deletes a record (no error if absent).
    pub fn delete<R: Record>(mut self, id: &str) -> Self {
        if let Err(e) = keys::validate_id(R::KIND, id) {
            return self.fail(e);
        }
        self.ops.push(TxnOp::delete(R::KIND.key(id), None));
        self
    }

    /// Deletes a record if its version is `expected`.
    pub fn delete_if_version<R: Record>(self, id: &str, expected: i64) -> Self {
        self.require_version::<R>(id, expected).delete::<R>(id)
    }

    /// Requires a record to be at `expected` version (0: absent) without writing it.
    pub fn require_version<R: Record>(self, id: &str, expected: i64) -> Self {
        self.require_key_version(R::KIND, id, expected)
    }

    /// Requires a record to be absent.
    pub fn require_absent<R: Record>(self, id: &str) -> Self {
        self.require_version::<R>(id, 0)
    }

    /// Requires a record to exist, at any version, without reading or writing it.
    pub fn require_present<R: Record>(mut self, id: &str) -> Self {
        if let Err(e) = keys::validate_id(R::KIND, id) {
            return self.fail(e);
        }
        let key = R::KIND.key(id);
        self.compares
            .push(Compare::version(key.as_str(), CompareOp::Greater, 0));
        self.compared.push(key);
        self
    }

    fn require_key_version(mut self, kind: Kind, id: &str, expected: i64) -> Self {
        if let Err(e) = keys::validate_id(kind, id) {
            return self.fail(e);
        }
        let key = kind.key(id);
        self.compares.push(Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            expected,
        ));
        self.compared.push(key);
        self
    }

    /// The number of conditions queued.
    pub fn condition_count(&self) -> usize {
        self.compares.len()
    }

    /// The number of operations queued.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Commits. Returns the revision of the transaction, or
    /// [`NsdbError::TxnConditionFailed`] naming the compared keys.
    pub async fn commit(mut self) -> Result<i64> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let key = self
            .compared
            .first()
            .cloned()
            .or_else(|| self.ops.first().map(|_| "txn".to_owned()))
            .unwrap_or_default();
        let txn = etcd_client::Txn::new()
            .when(std::mem::take(&mut self.compares))
            .and_then(std::mem::take(&mut self.ops));
        let resp = self
            .client
            .txn(txn)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "txn",
                key,
                source,
            })?;
        if !resp.succeeded() {
            return Err(NsdbError::TxnConditionFailed {
                keys: self.compared,
            });
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        debug_assert!(
            resp.op_responses()
                .iter()
                .all(|r| matches!(r, TxnOpResponse::Put(_) | TxnOpResponse::Delete(_)))
        );
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_count_follows_record_sizes() {
        // Small records: grows twofold per page up to the cap.
        assert_eq!(next_page_count(128, 128, 128 * 200), 256);
        assert_eq!(next_page_count(1000, 1000, 1000 * 200), PAGE_MAX);
        // 10 KB records: about 100 per MiB.
        assert_eq!(next_page_count(1000, 1000, 1000 * 10_000), 104);
        // Records larger than a page: one at a time, and never zero.
        assert_eq!(next_page_count(104, 3, 3 * 3_000_000), 1);
        assert_eq!(next_page_count(1, 1, 5_000_000), 1);
        // An empty page keeps the count.
        assert_eq!(next_page_count(64, 0, 0), 64);
    }

    #[test]
    fn too_large_is_told_from_compaction() {
        let big = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 8201850 bytes, the limit is: 4194304 bytes",
        ));
        let compacted = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(response_too_large(&big));
        assert!(!response_too_large(&compacted));
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/weft/v1/"), b"/weft/v10".to_vec());
        assert_eq!(prefix_end("/weft/v1/ports/"), b"/weft/v1/ports0".to_vec());
    }
}
