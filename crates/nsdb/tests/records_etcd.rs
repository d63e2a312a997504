//! Every record kind round-trips through a real etcd; versions, CAS and transactions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use nsdb::testing::Etcd;
use nsdb::*;

/// One record of every kind, with the optional parts filled in.
fn one_of_each() -> Vec<AnyRecord> {
    vec![
        Host {
            id: "node-1".into(),
            underlay_ip: "192.168.1.10".parse().unwrap(),
            tunnel: TunnelType::Geneve,
            tunnel_udp_port: 6081,
            mtu: 1500,
        }
        .into_any(),
        common::bridge("b1", "10.0.0.0/24", "10.0.0.1").into_any(),
        Router {
            id: "r1".into(),
            name: "edge".into(),
            tunnel_key: 9,
            inbound_chain: Some("c1".into()),
            outbound_chain: None,
            snat: Some(Snat {
                port: "up".into(),
                addresses: vec!["203.0.113.5".parse().unwrap()],
                port_range: (1024, 65535),
            }),
            dnat: vec![DnatRule {
                external_ip: "203.0.113.6".parse().unwrap(),
                internal_ip: "10.0.0.5".parse().unwrap(),
                protocol: Some(Protocol::Tcp),
                external_port: Some(80),
                internal_port: Some(8080),
            }],
        }
        .into_any(),
        Port {
            kind: PortKind::Interior {
                peer: "b1-r1".into(),
            },
            device: DeviceRef::Router("r1".into()),
            ..common::port("r1-b1", 17)
        }
        .into_any(),
        Route {
            id: "default".into(),
            router: "r1".into(),
            dst: "0.0.0.0/0".parse().unwrap(),
            next_hop: Some("203.0.113.1".parse().unwrap()),
            port: "up".into(),
            weight: 10,
        }
        .into_any(),
        Chain {
            pods: None,
            id: "c1".into(),
            name: "acl".into(),
            rules: vec![Rule {
                dst_port_name: None,
                dst_selector: None,
                src_selector: None,
                id: "r".into(),
                src: Some("10.1.0.0/16".parse().unwrap()),
                dst: None,
                inv_src: true,
                inv_dst: false,
                protocol: Some(Protocol::Udp),
                src_ports: None,
                dst_ports: Some((53, 53)),
                icmp_type: None,
                icmp_code: None,
                ct_state: Some(CtMatch {
                    new: Some(true),
                    established: None,
                    related: Some(false),
                }),
                action: RuleAction::Jump("c2".into()),
            }],
            default_action: RuleAction::Drop,
        }
        .into_any(),
        LoadBalancer {
            health_check: Some(HealthCheck {
                kind: ProbeKind::Tcp,
                path: None,
                interval_s: 5,
                timeout_s: 2,
                rise: 2,
                fall: 3,
            }),
            id: "lb1".into(),
            name: "svc".into(),
            router: Some("r1".into()),
            vips: vec![Vip {
                member_selector: None,
                target_port: None,
                ip: "10.96.0.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 443,
                members: vec![Member {
                    ip: "10.0.0.5".parse().unwrap(),
                    port: 6443,
                    weight: 2,
                    healthy: true,
                }],
                session_affinity: true,
                affinity_timeout_s: Some(600),
            }],
        }
        .into_any(),
        PortBinding {
            port: "p1".into(),
            host: "node-1".into(),
            vport: "wf1a2b3c4d".into(),
        }
        .into_any(),
        IpLease {
            bridge: "b1".into(),
            ip: "fd00:1::7".parse().unwrap(),
            owner: "p1".into(),
        }
        .into_any(),
        TunnelKeyAlloc {
            key: tunnel_key::compose(tunnel_key::TYPE_PORT, 77).unwrap(),
            owner: "p1".into(),
        }
        .into_any(),
        MemberHealth {
            lb: "lb1".into(),
            member: "[fd00::5]:6443".parse().unwrap(),
            healthy: false,
            host: "node-1".into(),
        }
        .into_any(),
    ]
}

async fn round_trip<R: Record>(db: &Nsdb, r: &R) {
    let v = db.put(r).await.unwrap();
    let got = db
        .get::<R>(&r.id())
        .await
        .unwrap()
        .expect("record just written");
    assert_eq!(&got.record, r);
    assert_eq!(got.version, v, "version is the write's revision");
    let listed = db.list::<R>().await.unwrap();
    assert_eq!(listed.records.len(), 1, "{:?}", R::KIND);
    assert_eq!(&listed.records[0].record, r);
    assert!(listed.revision >= v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_kind_round_trips() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let all = one_of_each();
    let kinds: Vec<Kind> = all.iter().map(AnyRecord::kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec(), "one record of every kind");
    for r in &all {
        match r {
            AnyRecord::Host(r) => round_trip(&db, r).await,
            AnyRecord::Bridge(r) => round_trip(&db, r).await,
            AnyRecord::Router(r) => round_trip(&db, r).await,
            AnyRecord::Port(r) => round_trip(&db, r).await,
            AnyRecord::Route(r) => round_trip(&db, r).await,
            AnyRecord::Chain(r) => round_trip(&db, r).await,
            AnyRecord::LoadBalancer(r) => round_trip(&db, r).await,
            AnyRecord::PortBinding(r) => round_trip(&db, r).await,
            AnyRecord::IpLease(r) => round_trip(&db, r).await,
            AnyRecord::TunnelKey(r) => round_trip(&db, r).await,
            AnyRecord::MemberHealth(r) => round_trip(&db, r).await,
        }
    }
    let (_, everything) = db.list_all().await.unwrap();
    let mut got: Vec<AnyRecord> = everything.into_iter().map(|(r, _)| r).collect();
    let mut want = all.clone();
    got.sort_by_key(AnyRecord::key);
    want.sort_by_key(AnyRecord::key);
    assert_eq!(got, want);

    // Keys follow the documented layout.
    let raw = db
        .etcd()
        .get("/weft/v1/leases/b1/fd00:1::7", None)
        .await
        .unwrap();
    assert_eq!(raw.kvs().len(), 1);
    let raw = db
        .etcd()
        .get("/weft/v1/tunnel_keys/00000077", None)
        .await
        .unwrap();
    assert_eq!(raw.kvs().len(), 1);

    assert!(db.delete::<Host>("node-1").await.unwrap());
    assert!(!db.delete::<Host>("node-1").await.unwrap());
    assert!(db.get::<Host>("node-1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_and_transactions() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut p = common::port("p1", 1);

    let v1 = db.create(&p).await.unwrap();
    assert!(matches!(
        db.create(&p).await,
        Err(NsdbError::VersionConflict { .. })
    ));
    p.admin_up = false;
    let v2 = db.put_if_version(&p, v1).await.unwrap();
    assert!(v2 > v1);
    // A writer holding the old version loses.
    p.labels = BTreeMap::new();
    let err = db.put_if_version(&p, v1).await.unwrap_err();
    assert!(
        matches!(&err, NsdbError::VersionConflict { key, expected } if key == "/weft/v1/ports/p1" && *expected == v1),
        "{err}"
    );
    assert!(!db.get::<Port>("p1").await.unwrap().unwrap().record.admin_up);
    assert!(db.delete_if_version::<Port>("p1", v1).await.is_err());

    // A transaction applies all its writes or none.
    let binding = PortBinding {
        port: "p1".into(),
        host: "h1".into(),
        vport: "wf00000001".into(),
    };
    let lease = IpLease {
        bridge: "b1".into(),
        ip: "10.0.0.9".parse().unwrap(),
        owner: "p1".into(),
    };
    let err = db
        .txn()
        .require_version::<Port>("p1", v1)
        .put(&binding)
        .create(&lease)
        .commit()
        .await
        .unwrap_err();
    assert!(matches!(err, NsdbError::TxnConditionFailed { .. }), "{err}");
    assert!(db.get::<PortBinding>("p1").await.unwrap().is_none());
    assert!(db.get::<IpLease>("b1/10.0.0.9").await.unwrap().is_none());

    let rev = db
        .txn()
        .require_version::<Port>("p1", v2)
        .put(&binding)
        .create(&lease)
        .delete::<Host>("nothing")
        .commit()
        .await
        .unwrap();
    let b = db.get::<PortBinding>("p1").await.unwrap().unwrap();
    let l = db.get::<IpLease>("b1/10.0.0.9").await.unwrap().unwrap();
    assert_eq!(
        (b.version, l.version),
        (rev, rev),
        "one revision for the whole txn"
    );

    // The same through kind-erased records and full keys.
    let route = AnyRecord::Route(Route {
        id: "rt".into(),
        router: "r1".into(),
        dst: "10.2.0.0/16".parse().unwrap(),
        next_hop: None,
        port: "p1".into(),
        weight: 1,
    });
    let rv = db
        .txn()
        .put_any_if_version(&route, 0)
        .commit()
        .await
        .unwrap();
    assert_eq!(
        db.get_any(&route.key()).await.unwrap(),
        Some((route.clone(), rv))
    );
    assert!(matches!(
        db.txn().put_any_if_version(&route, 0).commit().await,
        Err(NsdbError::TxnConditionFailed { .. })
    ));
    assert!(
        db.txn()
            .delete_key_if_version(&route.key(), rv - 1)
            .commit()
            .await
            .is_err()
    );
    db.txn()
        .delete_key_if_version(&route.key(), rv)
        .commit()
        .await
        .unwrap();
    assert_eq!(db.get_any(&route.key()).await.unwrap(), None);
    assert!(matches!(
        db.txn().delete_key("/weft/v1/nowhere/x").commit().await,
        Err(NsdbError::InvalidKey { .. })
    ));
    assert!(matches!(
        db.get_any("/etc/passwd").await,
        Err(NsdbError::InvalidKey { .. })
    ));

    // Bad ids are refused before anything is sent.
    let mut bad = common::port("a/b", 2);
    assert!(matches!(
        db.put(&bad).await,
        Err(NsdbError::InvalidKey { .. })
    ));
    bad.id = String::new();
    assert!(db.put(&bad).await.is_err());
    assert!(db.get::<Port>("x/y").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    common::init_logs();
    let err = Nsdb::connect(&["not a url"]).await.unwrap_err();
    assert!(matches!(err, NsdbError::Connect { .. }), "{err}");
    // A stopped etcd: requests fail with an error naming the operation and key.
    let mut etcd = Etcd::start();
    let db = etcd.client().await;
    etcd.kill();
    let err = db.get::<Port>("p1").await.unwrap_err();
    assert!(err.to_string().contains("/weft/v1/ports/p1"), "{err}");
    // And the same client works again once etcd is back.
    etcd.restart();
    db.put(&common::port("p1", 1)).await.unwrap();
    assert!(db.get::<Port>("p1").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_many_records() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut txn = db.txn();
    for i in 0..1234u32 {
        txn = txn.put(&common::port(&format!("p{i:05}"), i));
        if txn.len() == 100 {
            txn.commit().await.unwrap();
            txn = db.txn();
        }
    }
    txn.commit().await.unwrap();
    let listed = db.list::<Port>().await.unwrap();
    assert_eq!(listed.records.len(), 1234);
    let ids: Vec<&str> = listed
        .records
        .iter()
        .map(|v| v.record.id.as_str())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in key order, no duplicates across pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_records_live_while_kept_alive() {
    common::init_logs();
    let mut etcd = Etcd::start();
    let db = etcd.client().await;
    let host = Host {
        id: "node-1".into(),
        underlay_ip: "192.168.1.10".parse().unwrap(),
        tunnel: TunnelType::Vxlan,
        tunnel_udp_port: 4789,
        mtu: 1500,
    };
    let lease = db.grant_lease(2).await.unwrap();
    db.txn()
        .put_with_lease(&host, lease)
        .commit()
        .await
        .unwrap();
    let kept = db.keep_lease_alive(lease, 2);
    // Well past the TTL, across an etcd restart, the registration is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(kept.is_alive());
    assert!(db.get::<Host>("node-1").await.unwrap().is_some());
    // Revoking removes it at once, and the keeper notices.
    db.revoke_lease(lease).await.unwrap();
    assert!(db.get::<Host>("node-1").await.unwrap().is_none());
    let mut waited = 0;
    while kept.is_alive() {
        waited += 1;
        assert!(waited < 300, "keeper never noticed the revoked lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without refreshes, a leased record expires by itself.
    let short = db.grant_lease(1).await.unwrap();
    db.txn()
        .put_with_lease(&host, short)
        .commit()
        .await
        .unwrap();
    let mut waited = 0;
    while db.get::<Host>("node-1").await.unwrap().is_some() {
        waited += 1;
        assert!(waited < 300, "leased record never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_health_is_listed_per_load_balancer_and_expires_with_its_lease() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let verdict = |lb: &str, member: &str| MemberHealth {
        lb: lb.into(),
        member: member.parse().unwrap(),
        healthy: true,
        host: "node-1".into(),
    };
    // "web" is a prefix of "web2": its list must not take the other's verdicts.
    let lease = db.grant_lease(2).await.unwrap();
    for v in [
        verdict("web", "10.0.0.5:80"),
        verdict("web", "[fd00::5]:80"),
        verdict("web2", "10.0.0.6:80"),
    ] {
        db.txn().put_with_lease(&v, lease).commit().await.unwrap();
    }
    let web = db.list_under::<MemberHealth>("web/").await.unwrap();
    let members: Vec<String> = web
        .records
        .iter()
        .map(|v| v.record.member.to_string())
        .collect();
    assert_eq!(members, ["10.0.0.5:80", "[fd00::5]:80"]);
    assert_eq!(db.list::<MemberHealth>().await.unwrap().records.len(), 3);
    // Nobody keeps the lease alive: the verdicts go with it.
    let t0 = std::time::Instant::now();
    while !db.list::<MemberHealth>().await.unwrap().records.is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "the verdicts outlived their lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
