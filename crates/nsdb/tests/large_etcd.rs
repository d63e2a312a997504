//! NSDB content past gRPC's default 4 MiB message size, against a real etcd: a watch
//! cache that resumes over more than 8 MiB of history, and lists of more than 16 MiB
//! with records larger than a list page.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nsdb::testing::Etcd;
use nsdb::*;

/// Writes `ports` in transactions of at most about 1 MB (etcd refuses requests over
/// 1.5 MiB) and [`MAX_TXN_OPS`] operations.
async fn put_all(db: &Nsdb, ports: &[Port]) -> i64 {
    let mut rev = 0;
    let mut txn = db.txn();
    let mut bytes = 0;
    for p in ports {
        let size = p.labels.get("pad").map_or(0, String::len);
        if (bytes + size > 1_000_000 || txn.len() == MAX_TXN_OPS) && !txn.is_empty() {
            rev = txn.commit().await.unwrap();
            txn = db.txn();
            bytes = 0;
        }
        txn = txn.put(p);
        bytes += size;
    }
    if !txn.is_empty() {
        rev = txn.commit().await.unwrap();
    }
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_resumes_over_more_than_8_mib_of_history() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // The cache reaches etcd through a relay that the test cuts; the writer does not.
    let relay = common::Relay::start(&etcd.endpoint()).await;
    let cache = WatchCache::start(Nsdb::connect(&[relay.endpoint()]).await.unwrap()).await;
    let (initial, mut rx) = cache.subscribe();
    assert!(initial.is_empty());
    let first = db.put(&common::port("before", 0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), cache.wait_for_revision(first))
        .await
        .expect("cache sees a write before the cut")
        .unwrap();

    let health = cache.health();
    assert_eq!(health.failing_for(), None, "a following cache is healthy");
    relay.cut();
    // 850 separate puts of about 10 KB: 8.5 MB of history in 850 revisions, which etcd
    // sends to a resuming watch in one response.
    const N: u32 = 850;
    let mut last = 0;
    for i in 0..N {
        last = db
            .put(&common::padded_port(&format!("p{i:04}"), i, 10_000))
            .await
            .unwrap();
    }
    assert!(
        health.failing_for().is_some(),
        "a cache cut off from etcd reports it is failing"
    );
    relay.restore();

    let snap = tokio::time::timeout(Duration::from_secs(60), cache.wait_for_revision(last))
        .await
        .expect("the cache caught up over 8.5 MB of history within 60 s")
        .unwrap();
    assert_eq!(health.failing_for(), None, "healthy again once caught up");
    let (rev, all) = db.list_all().await.unwrap();
    assert!(
        snap.same_records(&Snapshot::from_records(rev, all)),
        "cache differs from a fresh list"
    );
    assert_eq!(snap.list::<Port>().count(), N as usize + 1);

    // Every write arrived as its own change, exactly once, with nothing else.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while let Ok(u) = rx.try_recv() {
        for c in &u.changes {
            assert_eq!(c.op, ChangeOp::Put, "{c:?}");
            *seen.entry(c.id.clone()).or_default() += 1;
        }
    }
    let want: BTreeMap<String, usize> = std::iter::once("before".to_owned())
        .chain((0..N).map(|i| format!("p{i:04}")))
        .map(|id| (id, 1))
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_of_more_than_16_mib_with_records_larger_than_a_page() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // 1,700 ports of about 10 KB, then three of 1.2 MB (more than a list page, less than
    // etcd's 1.5 MiB request limit), then small ones: sizes change along the prefix.
    let mut ports: Vec<Port> = (0..1700)
        .map(|i| common::padded_port(&format!("a{i:04}"), i, 10_000))
        .collect();
    ports.extend((0..3).map(|i| common::padded_port(&format!("b{i}"), i, 1_200_000)));
    ports.extend((0..300).map(|i| common::port(&format!("c{i:03}"), i)));
    let rev = put_all(&db, &ports).await;
    let want: BTreeSet<String> = ports.iter().map(|p| p.id.clone()).collect();
    let total: usize = ports
        .iter()
        .map(|p| serde_json::to_vec(p).unwrap().len())
        .sum();
    assert!(total > 16 << 20, "only {total} bytes written");

    let listed = db.list::<Port>().await.expect("typed list");
    assert_eq!(listed.revision, rev);
    let got: BTreeSet<String> = listed.records.iter().map(|v| v.record.id.clone()).collect();
    assert_eq!(got, want);
    let big = listed.records.iter().find(|v| v.record.id == "b1").unwrap();
    assert_eq!(big.record.labels["pad"].len(), 1_200_000);

    let (rev_all, all) = db.list_all().await.expect("list of everything");
    assert_eq!(rev_all, rev);
    assert_eq!(all.len(), ports.len());

    // A watch cache loads the same by its own list.
    let cache = tokio::time::timeout(Duration::from_secs(60), WatchCache::start(db.clone()))
        .await
        .expect("the watch cache loaded 16 MiB within 60 s");
    let snap = cache.snapshot();
    assert_eq!(snap.revision(), rev);
    assert_eq!(snap.list::<Port>().count(), ports.len());
    assert_eq!(
        snap.get::<Port>("b2").unwrap().labels["pad"].len(),
        1_200_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_relists_when_the_history_exceeds_any_message() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let relay = common::Relay::start(&etcd.endpoint()).await;
    let cache = WatchCache::start(Nsdb::connect(&[relay.endpoint()]).await.unwrap()).await;
    let (_, mut rx) = cache.subscribe();
    let first = db.put(&common::port("before", 0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), cache.wait_for_revision(first))
        .await
        .expect("cache sees a write before the cut")
        .unwrap();

    relay.cut();
    // 900 puts of 80 KB: 72 MB of history, one response to a resuming watch, more than
    // the client decodes in one message. The resume cannot complete: the cache lists.
    const N: u32 = 900;
    let bytes = 80_000;
    assert!(N as usize * bytes > client::MAX_DECODE_BYTES);
    let mut last = 0;
    for i in 0..N {
        last = db
            .put(&common::padded_port(&format!("p{i:04}"), i, bytes))
            .await
            .unwrap();
    }
    relay.restore();

    let snap = tokio::time::timeout(Duration::from_secs(90), cache.wait_for_revision(last))
        .await
        .expect("the cache caught up over 72 MB of history within 90 s")
        .unwrap();
    let (rev, all) = db.list_all().await.unwrap();
    assert!(snap.same_records(&Snapshot::from_records(rev, all)));

    // Every new key exactly once, from the re-list.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut resynced = false;
    while let Ok(u) = rx.try_recv() {
        for c in &u.changes {
            assert_eq!(c.op, ChangeOp::Put, "{c:?}");
            *seen.entry(c.id.clone()).or_default() += 1;
        }
        resynced |= u.resync;
    }
    assert!(resynced, "the changes came from a re-list");
    let want: BTreeMap<String, usize> = std::iter::once("before".to_owned())
        .chain((0..N).map(|i| format!("p{i:04}")))
        .map(|id| (id, 1))
        .collect();
    assert_eq!(seen, want);

    // And it watches again afterwards.
    db.delete::<Port>("p0000").await.unwrap();
    let r = db.put(&common::port("after", 1)).await.unwrap();
    let snap = tokio::time::timeout(Duration::from_secs(30), cache.wait_for_revision(r))
        .await
        .expect("the cache follows writes after the re-list")
        .unwrap();
    assert!(snap.get::<Port>("p0000").is_none());
    assert!(snap.get::<Port>("after").is_some());
}
