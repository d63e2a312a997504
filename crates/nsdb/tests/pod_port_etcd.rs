//! A pod's port written whole (leases, tunnel key, port, binding in one transaction) against
//! a real etcd: retries return the same port, racing agents never share an address or a key,
//! exhaustion writes nothing, and release takes everything back.

mod common;

use std::collections::{BTreeMap, HashSet};

use nsdb::testing::Etcd;
use nsdb::*;

fn req(bridge: &Bridge, port: &str, host: &str) -> PodPortRequest {
    PodPortRequest {
        port: port.into(),
        bridge: bridge.clone(),
        host: host.into(),
        vport: format!("wf{port}"),
        labels: BTreeMap::from([("weft.dev/container-id".into(), port.into())]),
    }
}

/// Every record of the kinds a pod port writes.
async fn counts(db: &Nsdb) -> (usize, usize, usize, usize) {
    (
        db.list::<Port>().await.unwrap().records.len(),
        db.list::<PortBinding>().await.unwrap().records.len(),
        db.list::<IpLease>().await.unwrap().records.len(),
        db.list::<TunnelKeyAlloc>().await.unwrap().records.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_port_is_written_whole_and_a_retry_returns_it() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let b = common::bridge("b1", "10.8.0.0/24", "10.8.0.1");
    db.put(&b).await.unwrap();

    let p = db.allocate_pod_port(&req(&b, "pod-a", "h1")).await.unwrap();
    assert!(p.created);
    assert_eq!(p.binding.host, "h1");
    assert_eq!(p.binding.vport, "wfpod-a");
    assert_eq!(p.port.device, DeviceRef::Bridge("b1".into()));
    assert_eq!(p.port.mac, MacAddr::local_from_name("pod-a"));
    assert_eq!(p.port.labels["weft.dev/container-id"], "pod-a");
    let v4 = p.address(IpFamily::V4).expect("an IPv4 address");
    let v6 = p
        .address(IpFamily::V6)
        .expect("an IPv6 address (b1 has a v6 subnet)");
    assert_eq!(v4.prefix_len(), 24, "the subnet's prefix");
    assert_eq!(v6.prefix_len(), 112);
    assert_ne!(
        v4.addr().to_string(),
        "10.8.0.1",
        "the gateway is never leased"
    );
    assert_eq!(
        tunnel_key::key_type(p.port.tunnel_key),
        tunnel_key::TYPE_PORT
    );
    assert_eq!(counts(&db).await, (1, 1, 2, 1));

    // Same port, same host and vport: the same answer, nothing new written.
    let again = db.allocate_pod_port(&req(&b, "pod-a", "h1")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.port, p.port);
    assert_eq!(counts(&db).await, (1, 1, 2, 1));

    // The same port id from another host is refused, naming the holder.
    let err = db
        .allocate_pod_port(&req(&b, "pod-a", "h2"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NsdbError::PortAlreadyBound { host, .. } if host == "h1"),
        "{err}"
    );

    // A missing bridge is an error that writes nothing.
    let mut r = req(&b, "pod-b", "h1");
    r.bridge.id = "nope".into();
    let err = db.allocate_pod_port(&r).await.unwrap_err();
    assert!(matches!(err, NsdbError::BridgeNotFound { .. }), "{err}");
    assert_eq!(counts(&db).await, (1, 1, 2, 1));

    // Release: everything goes; a second release finds nothing; another host's release of a
    // port bound here is refused.
    let pb = db.allocate_pod_port(&req(&b, "pod-b", "h1")).await.unwrap();
    assert_ne!(pb.address(IpFamily::V4), p.address(IpFamily::V4));
    assert!(matches!(
        db.release_pod_port("pod-b", "h2").await.unwrap(),
        PodPortRelease::NotOurs(_)
    ));
    assert!(matches!(
        db.release_pod_port("pod-b", "h1").await.unwrap(),
        PodPortRelease::Removed(_)
    ));
    assert_eq!(
        db.release_pod_port("pod-b", "h1").await.unwrap(),
        PodPortRelease::Absent
    );
    assert!(matches!(
        db.release_pod_port("pod-a", "h1").await.unwrap(),
        PodPortRelease::Removed(_)
    ));
    assert_eq!(counts(&db).await, (0, 0, 0, 0), "nothing is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_agents_never_share_an_address_or_a_key() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut b = common::bridge("b1", "10.9.0.0/24", "10.9.0.1");
    b.subnet_v6 = None;
    db.put(&b).await.unwrap();

    // Three "agents" with their own connections and caches, 50 pods between them, each
    // allocated twice at once (a runtime retrying while the first ADD runs).
    const PODS: usize = 50;
    let mut tasks = Vec::new();
    for host in ["h1", "h2", "h3"] {
        let db = etcd.client().await;
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut calls = Vec::new();
            for i in (0..PODS).filter(|i| ["h1", "h2", "h3"][i % 3] == host) {
                for _ in 0..2 {
                    let db = db.clone();
                    let r = req(&b, &format!("p{i}"), host);
                    calls.push(tokio::spawn(async move { db.allocate_pod_port(&r).await }));
                }
            }
            for c in calls {
                mine.push(c.await.unwrap().unwrap());
            }
            mine
        }));
    }
    let mut ports = BTreeMap::new();
    for t in tasks {
        for p in t.await.unwrap() {
            if let Some(prev) = ports.insert(p.port.id.clone(), p.port.clone()) {
                assert_eq!(prev, p.port, "a retry answered another port");
            }
        }
    }
    assert_eq!(ports.len(), PODS);
    let ips: HashSet<_> = ports.values().map(|p| p.addresses.clone()).collect();
    let keys: HashSet<_> = ports.values().map(|p| p.tunnel_key).collect();
    assert_eq!(ips.len(), PODS, "no address is held twice");
    assert_eq!(keys.len(), PODS, "no tunnel key is held twice");
    assert_eq!(counts(&db).await, (PODS, PODS, PODS, PODS));

    // Every port released at once by its own host, each release twice (a runtime retrying
    // a DEL): each is removed exactly once and nothing is left.
    let mut calls = Vec::new();
    for id in ports.keys() {
        let host = ["h1", "h2", "h3"][id[1..].parse::<usize>().unwrap() % 3];
        for _ in 0..2 {
            let (db, id) = (db.clone(), id.clone());
            calls.push(tokio::spawn(async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    db.release_pod_port(&id, host),
                )
                .await
            }));
        }
    }
    let mut removed = 0;
    for c in calls {
        match c
            .await
            .unwrap()
            .expect("a release did not finish within 20 s")
            .unwrap()
        {
            PodPortRelease::Removed(_) => removed += 1,
            PodPortRelease::Absent => {}
            PodPortRelease::NotOurs(b) => panic!("released by its own host, found {b:?}"),
        }
    }
    assert_eq!(removed, PODS, "each port is removed exactly once");
    assert_eq!(counts(&db).await, (0, 0, 0, 0), "nothing is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_subnet_writes_nothing() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // A /29: six hosts, one of them the gateway.
    let mut b = common::bridge("b1", "10.7.0.0/29", "10.7.0.1");
    b.subnet_v6 = None;
    db.put(&b).await.unwrap();
    for i in 0..5 {
        db.allocate_pod_port(&req(&b, &format!("p{i}"), "h1"))
            .await
            .unwrap();
    }
    let err = db
        .allocate_pod_port(&req(&b, "p5", "h1"))
        .await
        .unwrap_err();
    assert!(matches!(err, NsdbError::Exhausted { .. }), "{err}");
    assert_eq!(
        counts(&db).await,
        (5, 5, 5, 5),
        "the refused port left nothing"
    );
    assert!(db.get::<Port>("p5").await.unwrap().is_none());

    // Released addresses are handed out again.
    db.release_pod_port("p2", "h1").await.unwrap();
    let p = db.allocate_pod_port(&req(&b, "p5", "h1")).await.unwrap();
    assert_eq!(
        p.address(IpFamily::V4).unwrap().addr().to_string(),
        "10.7.0.4"
    );
}
