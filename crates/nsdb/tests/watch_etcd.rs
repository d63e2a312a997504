//! The watch cache against a real etcd: killed and restarted mid-stream, compaction,
//! and exactly-once delivery of changes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nsdb::testing::Etcd;
use nsdb::*;
use tokio::sync::mpsc::UnboundedReceiver;

/// Every change received, counted per (key, op), plus the last update's snapshot.
#[derive(Default)]
struct Seen {
    count: HashMap<(String, ChangeOp), usize>,
    last: Option<Arc<Snapshot>>,
    updates: usize,
}

fn drain(rx: &mut UnboundedReceiver<Arc<Update>>, seen: &mut Seen) {
    while let Ok(u) = rx.try_recv() {
        let mut last_op = HashMap::new();
        for c in &u.changes {
            assert_eq!(c.key, c.kind.key(&c.id));
            last_op.insert(c.key.clone(), c.op);
            *seen.count.entry((c.key.clone(), c.op)).or_default() += 1;
        }
        // The update's snapshot agrees with the last change of each key it announces.
        for (key, op) in last_op {
            match op {
                ChangeOp::Put => assert!(u.snapshot.entry(&key).is_some(), "{key} put"),
                ChangeOp::Delete => assert!(u.snapshot.entry(&key).is_none(), "{key} deleted"),
            }
        }
        if let Some(prev) = &seen.last {
            assert!(
                u.snapshot.revision() >= prev.revision(),
                "revisions never go back"
            );
        }
        seen.last = Some(u.snapshot.clone());
        seen.updates += 1;
    }
}

/// Retries a write until etcd accepts it. A write whose reply was lost may already be
/// applied: creating an existing key (or deleting a deleted one) is then a conflict,
/// which means "done".
async fn create_until_done(db: &Nsdb, p: &Port) {
    loop {
        match db.create(p).await {
            Ok(_) | Err(NsdbError::VersionConflict { .. }) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn delete_until_done(db: &Nsdb, id: &str) {
    loop {
        match db.delete::<Port>(id).await {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn key(id: &str) -> String {
    Kind::Port.key(id)
}

async fn fresh_list(db: &Nsdb) -> Snapshot {
    let (rev, all) = db.list_all().await.unwrap();
    Snapshot::from_records(rev, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_survives_etcd_kill_and_restart_mid_stream() {
    common::init_logs();
    let mut etcd = Etcd::start();
    let db = etcd.client().await;

    // Before the cache starts.
    for i in 0..50 {
        db.put(&common::port(&format!("pre{i:03}"), i))
            .await
            .unwrap();
    }
    let cache = WatchCache::start(etcd.client().await).await;
    let (initial, mut rx) = cache.subscribe();
    assert_eq!(initial.list::<Port>().count(), 50);
    let resumes_before = metrics::watch_resumes_total();

    // A writer that keeps writing (creating w*, deleting every 4th one 3 steps later)
    // while etcd is killed and restarted under it.
    const OPS: usize = 600;
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let db = etcd.client().await;
        let progress = progress.clone();
        tokio::spawn(async move {
            for i in 0..OPS {
                let id = format!("w{i:04}");
                create_until_done(&db, &common::port(&id, i as u32)).await;
                if i % 4 == 3 {
                    delete_until_done(&db, &format!("w{:04}", i - 3)).await;
                }
                progress.store(i + 1, Ordering::SeqCst);
            }
        })
    };

    let mut seen = Seen::default();
    while progress.load(Ordering::SeqCst) < OPS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        drain(&mut rx, &mut seen);
    }
    // etcd dies mid-stream (SIGKILL) and comes back on the same port and data.
    etcd.kill();
    assert!(
        db.put(&common::port("while-down", 1)).await.is_err(),
        "etcd is down"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(&mut rx, &mut seen);
    etcd.restart();
    // Writes right after the restart, and others from a second client.
    for i in 0..20 {
        db.put(&common::port(&format!("after{i:02}"), i))
            .await
            .unwrap();
    }
    writer.await.unwrap();
    for i in 0..50 {
        if i % 2 == 0 {
            db.delete::<Port>(&format!("pre{i:03}")).await.unwrap();
        }
    }
    let last = db.put(&common::port("last", 0)).await.unwrap();

    let snap = tokio::time::timeout(Duration::from_secs(60), cache.wait_for_revision(last))
        .await
        .expect("cache caught up after the restart")
        .unwrap();
    drain(&mut rx, &mut seen);

    // The cache equals a fresh list.
    let fresh = fresh_list(&db).await;
    assert!(snap.same_records(&fresh), "cache differs from a fresh list");
    assert!(seen.last.as_ref().unwrap().same_records(&fresh));
    assert!(
        metrics::watch_resumes_total() > resumes_before,
        "the watch really broke"
    );

    // Exactly one Put per created key and one Delete per deleted key: nothing missed,
    // nothing delivered twice.
    let mut want: HashMap<(String, ChangeOp), usize> = HashMap::new();
    for i in 0..OPS {
        want.insert((key(&format!("w{i:04}")), ChangeOp::Put), 1);
        if i % 4 == 3 {
            want.insert((key(&format!("w{:04}", i - 3)), ChangeOp::Delete), 1);
        }
    }
    for i in 0..20 {
        want.insert((key(&format!("after{i:02}")), ChangeOp::Put), 1);
    }
    for i in (0..50).step_by(2) {
        want.insert((key(&format!("pre{i:03}")), ChangeOp::Delete), 1);
    }
    want.insert((key("last"), ChangeOp::Put), 1);
    assert_eq!(seen.count, want);
    assert!(fresh.get::<Port>("w0000").is_none());
    assert!(fresh.get::<Port>("w0001").is_some());
    assert!(fresh.get::<Port>("while-down").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_recovers_from_compaction_by_relisting_and_diffing() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    for i in 0..30 {
        db.put(&common::port(&format!("p{i:02}"), i)).await.unwrap();
    }
    // A snapshot kept from earlier (as across an agent restart).
    let old = fresh_list(&db).await;

    // Meanwhile: 10 deleted, 10 updated, 10 untouched, 5 new, one deleted and recreated.
    for i in 0..10 {
        db.delete::<Port>(&format!("p{i:02}")).await.unwrap();
    }
    for i in 10..20 {
        let mut p = common::port(&format!("p{i:02}"), i);
        p.admin_up = false;
        db.put(&p).await.unwrap();
    }
    for i in 0..5 {
        db.put(&common::port(&format!("n{i}"), i)).await.unwrap();
    }
    db.delete::<Port>("p25").await.unwrap();
    let rev = db.put(&common::port("p25", 25)).await.unwrap();
    // The history the old snapshot needs is compacted away.
    db.compact(rev).await.unwrap();

    let relists = metrics::watch_relists_total();
    let (cache, mut rx) = WatchCache::start_from(etcd.client().await, keys::ROOT, old.clone());
    let snap = tokio::time::timeout(Duration::from_secs(30), cache.wait_for_revision(rev))
        .await
        .expect("cache re-listed after compaction")
        .unwrap();
    assert!(metrics::watch_relists_total() > relists);
    assert!(snap.same_records(&fresh_list(&db).await));

    let mut seen = Seen::default();
    drain(&mut rx, &mut seen);
    let mut want = HashMap::new();
    for i in 0..10 {
        want.insert((key(&format!("p{i:02}")), ChangeOp::Delete), 1);
    }
    for i in 10..20 {
        want.insert((key(&format!("p{i:02}")), ChangeOp::Put), 1);
    }
    for i in 0..5 {
        want.insert((key(&format!("n{i}")), ChangeOp::Put), 1);
    }
    want.insert((key("p25"), ChangeOp::Put), 1);
    assert_eq!(seen.count, want, "exactly the differences");

    // And it keeps watching afterwards.
    let r = db.put(&common::port("later", 1)).await.unwrap();
    let snap = cache.wait_for_revision(r).await.unwrap();
    assert!(snap.get::<Port>("later").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_arrives_as_one_update() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let cache = WatchCache::start(etcd.client().await).await;
    let (snap0, mut rx) = cache.subscribe();
    assert!(snap0.is_empty());
    let lease = IpLease {
        bridge: "b1".into(),
        ip: "10.0.0.5".parse().unwrap(),
        owner: "p1".into(),
    };
    let binding = PortBinding {
        port: "p1".into(),
        host: "h1".into(),
        vport: "wf1".into(),
    };
    let rev = db
        .txn()
        .create(&common::port("p1", 1))
        .create(&lease)
        .create(&binding)
        .commit()
        .await
        .unwrap();
    let u = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.changes.len(), 3, "{:?}", u.changes);
    assert!(
        u.changes
            .iter()
            .all(|c| c.revision == rev && c.op == ChangeOp::Put)
    );
    assert_eq!(u.snapshot.revision(), rev);
    assert_eq!(u.snapshot.get::<IpLease>("b1/10.0.0.5"), Some(&lease));
    assert_eq!(u.snapshot.get::<PortBinding>("p1"), Some(&binding));
    assert!(!u.resync);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_follows_etcd_replaced_by_an_empty_one() {
    common::init_logs();
    let mut etcd = Etcd::start();
    let db = etcd.client().await;
    for i in 0..40 {
        db.put(&common::port(&format!("old{i:02}"), i))
            .await
            .unwrap();
    }
    let cache = WatchCache::start(etcd.client().await).await;
    let (snap, mut rx) = cache.subscribe();
    assert_eq!(snap.len(), 40);

    // The store comes back empty on the same endpoint: its revisions restart from 1,
    // below the cache's, so resuming the watch would silently wait for revision 41.
    etcd.restart_empty();
    for i in 0..3 {
        db.put(&common::port(&format!("new{i}"), i)).await.unwrap();
    }
    let fresh = fresh_list(&db).await;
    assert_eq!(fresh.len(), 3);
    let mut snaps = cache.snapshots();
    tokio::time::timeout(
        Duration::from_secs(30),
        snaps.wait_for(|s| s.same_records(&fresh)),
    )
    .await
    .expect("cache converged on the new store")
    .unwrap();

    let mut seen = Seen::default();
    drain(&mut rx, &mut seen);
    let mut want = HashMap::new();
    for i in 0..40 {
        want.insert((key(&format!("old{i:02}")), ChangeOp::Delete), 1);
    }
    for i in 0..3 {
        want.insert((key(&format!("new{i}")), ChangeOp::Put), 1);
    }
    assert_eq!(seen.count, want);

    // And it keeps following the new store.
    let r = db.put(&common::port("later", 1)).await.unwrap();
    let snap = tokio::time::timeout(Duration::from_secs(30), cache.wait_for_revision(r))
        .await
        .unwrap()
        .unwrap();
    assert!(snap.get::<Port>("later").is_some());
}
