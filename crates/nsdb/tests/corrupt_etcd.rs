//! A corrupt value in etcd is skipped by list and watch, logged and counted, and never
//! stops the process. (Its own test binary, so the process-wide counter is exact.)

mod common;

use std::time::Duration;

use nsdb::testing::Etcd;
use nsdb::*;
use prometheus_client::registry::Registry;

fn exposed_count() -> String {
    let mut reg = Registry::default();
    nsdb::register(&mut reg);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    out.lines()
        .find(|l| l.starts_with("weft_nsdb_corrupt_records_total "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_are_skipped_and_counted() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    assert_eq!(metrics::corrupt_records_total(), 0);

    db.put(&common::port("good", 1)).await.unwrap();
    db.put_raw("/weft/v1/ports/garbage", &b"\x00\xffnot json"[..])
        .await
        .unwrap();
    db.put_raw("/weft/v1/ports/future", r#"{"schema":99,"record":{}}"#)
        .await
        .unwrap();

    let listed = db.list::<Port>().await.unwrap();
    assert_eq!(listed.records.len(), 1);
    assert_eq!(listed.records[0].record.id, "good");
    assert_eq!(metrics::corrupt_records_total(), 2);
    // Reading that key directly is an error that names it.
    let err = db.get::<Port>("garbage").await.unwrap_err();
    assert!(err.to_string().contains("/weft/v1/ports/garbage"), "{err}");

    let cache = WatchCache::start(etcd.client().await).await;
    assert_eq!(
        metrics::corrupt_records_total(),
        4,
        "the cache's list skipped both"
    );
    let (snap, mut rx) = cache.subscribe();
    assert_eq!(snap.len(), 1);

    // A valid record overwritten with garbage leaves the cache, like it would a list.
    db.put(&common::port("soon-bad", 2)).await.unwrap();
    db.put_raw("/weft/v1/ports/soon-bad", "{").await.unwrap();
    let rev = db.put(&common::port("after", 3)).await.unwrap();
    let snap = tokio::time::timeout(Duration::from_secs(30), cache.wait_for_revision(rev))
        .await
        .unwrap()
        .unwrap();
    assert!(
        snap.get::<Port>("after").is_some(),
        "the cache kept working"
    );
    assert!(snap.get::<Port>("soon-bad").is_none());
    assert_eq!(metrics::corrupt_records_total(), 5);
    let mut ops = Vec::new();
    while let Ok(u) = rx.try_recv() {
        ops.extend(u.changes.iter().map(|c| (c.id.clone(), c.op)));
    }
    assert_eq!(
        ops,
        vec![
            ("soon-bad".to_owned(), ChangeOp::Put),
            ("soon-bad".to_owned(), ChangeOp::Delete),
            ("after".to_owned(), ChangeOp::Put),
        ]
    );
    assert_eq!(exposed_count(), "weft_nsdb_corrupt_records_total 5");
}
