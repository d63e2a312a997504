//! The host registration against a real etcd: visible while the agent lives, gone after the
//! lease's TTL once the agent stops refreshing it, and registrable again after etcd restarts.

use std::time::Duration;

use nsdb::testing::Etcd;
use nsdb::{Host, Nsdb, TunnelType};
use weft_agent::host::register_host;

const TTL: i64 = 2;

fn host(id: &str) -> Host {
    Host {
        id: id.to_owned(),
        underlay_ip: "192.168.10.1".parse().unwrap(),
        tunnel: TunnelType::Vxlan,
        tunnel_udp_port: 4789,
        mtu: 1500,
    }
}

/// Polls until the host record is present (`want`) or absent; fails after `limit` polls
/// of 100 ms, a generous bound that only ends a hung test.
async fn wait_for(db: &Nsdb, id: &str, want: bool, limit: u32) {
    for _ in 0..limit {
        match db.get::<Host>(id).await {
            Ok(r) if r.is_some() == want => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!(
        "host {id} never became {}",
        if want { "present" } else { "absent" }
    );
}

#[tokio::test]
async fn registered_host_is_visible_and_kept_past_its_ttl() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let reg = register_host(&db, host("n1"), TTL).await.unwrap();
    let got = db
        .get::<Host>("n1")
        .await
        .unwrap()
        .expect("host registered");
    assert_eq!(got.record, host("n1"));
    // Kept alive: still there after three TTLs.
    tokio::time::sleep(Duration::from_secs(3 * TTL as u64)).await;
    assert!(db.get::<Host>("n1").await.unwrap().is_some());
    assert!(reg.is_alive());
    reg.deregister().await.unwrap();
    assert!(db.get::<Host>("n1").await.unwrap().is_none());
}

#[tokio::test]
async fn host_expires_when_the_agent_stops_refreshing() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let reg = register_host(&db, host("n2"), TTL).await.unwrap();
    assert!(db.get::<Host>("n2").await.unwrap().is_some());
    let cache = nsdb::WatchCache::start(db.clone()).await;
    let (first, mut updates) = cache.subscribe();
    assert!(first.get::<Host>("n2").is_some());
    drop(reg); // as if the agent died: no more refreshes, no revoke
    // Wait for the watch to report the deletion; the timeout only ends a hung test.
    loop {
        let u = tokio::time::timeout(Duration::from_secs(30), updates.recv())
            .await
            .expect("the host record expired")
            .expect("watch open");
        if u.snapshot.get::<Host>("n2").is_none() {
            break;
        }
    }
    assert!(db.get::<Host>("n2").await.unwrap().is_none());
}

#[tokio::test]
async fn registration_survives_and_repeats_across_etcd_restarts() {
    let mut etcd = Etcd::start();
    let db = etcd.client().await;
    let mut reg = register_host(&db, host("n3"), TTL).await.unwrap();
    // etcd restarts with its data: the lease survives and the refreshes resume.
    etcd.restart();
    wait_for(&db, "n3", true, 300).await;
    tokio::time::sleep(Duration::from_secs(2 * TTL as u64)).await;
    wait_for(&db, "n3", true, 1).await;
    // A fresh registration (an agent restart) replaces the record under a new lease.
    let reg2 = register_host(&db, host("n3"), TTL).await.unwrap();
    assert_ne!(reg2.lease_id(), reg.lease_id());
    wait_for(&db, "n3", true, 300).await;
    drop(reg2);
    // etcd loses its data: the lease is gone, and `ensure` registers again.
    etcd.restart_empty();
    wait_for(&db, "n3", false, 300).await;
    let mut again = false;
    for _ in 0..300 {
        if reg.ensure().await.unwrap_or(false) {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again, "the missing host record was written again");
    wait_for(&db, "n3", true, 300).await;
    assert!(reg.is_alive());
}
