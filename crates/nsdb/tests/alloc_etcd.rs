//! IP and tunnel-key allocation by compare-and-swap against a real etcd.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::Ipv4Net;
use nsdb::testing::Etcd;
use nsdb::*;

const TASKS: usize = 8;
const PER_TASK: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_never_collide() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // A /20 holds 4094 hosts; minus the gateway and one excluded address, 4092 are
    // free for 4000 allocations.
    let mut b = common::bridge("b1", "10.8.0.0/20", "10.8.0.1");
    b.excluded_ips = vec!["10.8.0.2".parse().unwrap()];
    db.put(&b).await.unwrap();

    // Each task has its own connection and its own allocation cache, as separate
    // processes would.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let db = etcd.client().await;
        tasks.push(tokio::spawn(async move {
            let mut ips = Vec::new();
            let mut keys = Vec::new();
            for i in 0..PER_TASK {
                let owner = format!("t{t}-p{i}");
                let lease = db.allocate_ip("b1", &owner, IpFamily::V4).await.unwrap();
                assert_eq!(lease.owner, owner);
                ips.push(lease.ip);
                keys.push(
                    db.allocate_tunnel_key(&owner, tunnel_key::TYPE_PORT)
                        .await
                        .unwrap(),
                );
            }
            (ips, keys)
        }));
    }
    let mut ips = HashSet::new();
    let mut tkeys = HashSet::new();
    for t in tasks {
        let (i, k) = t.await.unwrap();
        ips.extend(i);
        tkeys.extend(k);
    }
    assert_eq!(ips.len(), TASKS * PER_TASK, "every IP handed out once");
    assert_eq!(
        tkeys.len(),
        TASKS * PER_TASK,
        "every tunnel key handed out once"
    );

    let net: Ipv4Net = "10.8.0.0/20".parse().unwrap();
    let reserved: [IpAddr; 4] = [
        "10.8.0.0".parse().unwrap(),
        "10.8.15.255".parse().unwrap(),
        "10.8.0.1".parse().unwrap(),
        "10.8.0.2".parse().unwrap(),
    ];
    for ip in &ips {
        let IpAddr::V4(v4) = ip else {
            panic!("{ip} is not IPv4")
        };
        assert!(net.contains(v4), "{ip} outside the subnet");
        assert!(!reserved.contains(ip), "{ip} is reserved");
    }
    for k in &tkeys {
        assert!(tunnel_key::is_valid(*k) && *k != 0);
        assert_eq!(tunnel_key::key_type(*k), tunnel_key::TYPE_PORT);
    }
    // etcd holds exactly one lease and one key record per allocation.
    let leases = db.list::<IpLease>().await.unwrap().records;
    assert_eq!(leases.len(), TASKS * PER_TASK);
    let owners: HashSet<&str> = leases.iter().map(|l| l.record.owner.as_str()).collect();
    assert_eq!(owners.len(), TASKS * PER_TASK);
    assert_eq!(
        db.list::<TunnelKeyAlloc>().await.unwrap().records.len(),
        TASKS * PER_TASK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_release_and_exhaustion() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // 10.9.0.0/29: .0 network, .7 broadcast, .1 gateway, .3 excluded -> .2 .4 .5 .6.
    let mut b = common::bridge("small", "10.9.0.0/29", "10.9.0.1");
    b.excluded_ips = vec!["10.9.0.3".parse().unwrap()];
    db.put(&b).await.unwrap();

    let mut got = Vec::new();
    for i in 0..4 {
        got.push(
            db.allocate_ip("small", &format!("p{i}"), IpFamily::V4)
                .await
                .unwrap()
                .ip,
        );
    }
    got.sort();
    let want: Vec<IpAddr> = ["10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(got, want);
    let err = db
        .allocate_ip("small", "p9", IpFamily::V4)
        .await
        .unwrap_err();
    assert!(matches!(err, NsdbError::Exhausted { .. }), "{err}");

    // Only the owner may release; a released address is handed out again, also to a
    // different process (a fresh client) that read the pool while it was full.
    let other = etcd.client().await;
    assert!(matches!(
        other.allocate_ip("small", "x", IpFamily::V4).await,
        Err(NsdbError::Exhausted { .. })
    ));
    let ip5: IpAddr = "10.9.0.5".parse().unwrap();
    let owner = db
        .get::<IpLease>(&keys::lease_id("small", ip5))
        .await
        .unwrap()
        .unwrap()
        .record
        .owner;
    assert!(matches!(
        db.release_ip("small", ip5, "someone-else").await,
        Err(NsdbError::NotOwner { .. })
    ));
    assert!(db.release_ip("small", ip5, &owner).await.unwrap());
    assert!(!db.release_ip("small", ip5, &owner).await.unwrap());
    let again = other
        .allocate_ip("small", "p-new", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(again.ip, ip5);

    // IPv6 from the bridge's v6 subnet; missing bridge and missing family are errors.
    let v6 = db.allocate_ip("small", "p6", IpFamily::V6).await.unwrap();
    assert_eq!(v6.ip, "fd00:1::1".parse::<IpAddr>().unwrap());
    assert!(matches!(
        db.allocate_ip("nope", "p", IpFamily::V4).await,
        Err(NsdbError::BridgeNotFound { .. })
    ));
    let mut b4 = common::bridge("v4only", "10.10.0.0/24", "10.10.0.1");
    b4.subnet_v6 = None;
    db.put(&b4).await.unwrap();
    assert!(matches!(
        db.allocate_ip("v4only", "p", IpFamily::V6).await,
        Err(NsdbError::NoSubnet { .. })
    ));

    // Tunnel keys: allocate, refuse a foreign release, release, reuse.
    let k = db
        .allocate_tunnel_key("r1", tunnel_key::TYPE_PORT)
        .await
        .unwrap();
    assert_eq!(k, 1, "index 0 is never handed out");
    assert!(matches!(
        db.release_tunnel_key(k, "r2").await,
        Err(NsdbError::NotOwner { .. })
    ));
    assert!(db.release_tunnel_key(k, "r1").await.unwrap());
    // This process moves on to the next key rather than reusing a just-freed one at
    // once; a fresh process starts from the lowest free key and gets it back.
    assert_eq!(
        db.allocate_tunnel_key("r3", tunnel_key::TYPE_PORT)
            .await
            .unwrap(),
        2
    );
    let fresh = etcd.client().await;
    assert_eq!(
        fresh
            .allocate_tunnel_key("r4", tunnel_key::TYPE_PORT)
            .await
            .unwrap(),
        1
    );
    assert!(db.allocate_tunnel_key("r", 8).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_binding_in_one_transaction() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    db.put(&common::bridge("b1", "10.0.0.0/24", "10.0.0.1"))
        .await
        .unwrap();
    let binding = PortBinding {
        port: "p1".into(),
        host: "h1".into(),
        vport: "wf1".into(),
    };
    let lease = db
        .allocate_ip_with("b1", "p1", IpFamily::V4, |ip, txn| {
            let mut p = common::port("p1", 1);
            p.addresses = vec![ipnet::IpNet::from(ip)];
            txn.create(&p).put(&binding)
        })
        .await
        .unwrap();
    assert_eq!(db.leases("b1").await.unwrap(), vec![lease.clone()]);
    let port = db.get::<Port>("p1").await.unwrap().unwrap().record;
    assert_eq!(port.addresses[0].addr(), lease.ip);
    assert!(db.get::<PortBinding>("p1").await.unwrap().is_some());

    // The extra condition fails (port p1 exists): nothing is leased, and the error says so.
    let leases_before = db.list::<IpLease>().await.unwrap().records.len();
    let err = db
        .allocate_ip_with("b1", "p1-dup", IpFamily::V4, |_, txn| {
            txn.create(&common::port("p1", 1))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, NsdbError::TxnConditionFailed { .. }), "{err}");
    assert_eq!(
        db.list::<IpLease>().await.unwrap().records.len(),
        leases_before
    );
}

const CHILD_ENV: &str = "WEFT_NSDB_ALLOC_CHILD_ETCD";
const CHILDREN: usize = 4;
const PER_CHILD: usize = 250;

/// The allocating side of `allocations_from_separate_processes_never_collide`: that test
/// runs this one in child processes, with the etcd endpoint in `WEFT_NSDB_ALLOC_CHILD_ETCD`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by allocations_from_separate_processes_never_collide"]
async fn child_allocator() {
    let endpoint = std::env::var(CHILD_ENV)
        .unwrap_or_else(|_| panic!("{CHILD_ENV} must name the etcd to allocate from"));
    let db = Nsdb::connect(&[endpoint]).await.unwrap();
    let me = std::process::id();
    for i in 0..PER_CHILD {
        let owner = format!("pid{me}-{i}");
        let ip = db.allocate_ip("b1", &owner, IpFamily::V4).await.unwrap().ip;
        let key = db
            .allocate_tunnel_key(&owner, tunnel_key::TYPE_PORT)
            .await
            .unwrap();
        println!("alloc {ip} {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_from_separate_processes_never_collide() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    db.put(&common::bridge("b1", "10.20.0.0/22", "10.20.0.1"))
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for _ in 0..CHILDREN {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["child_allocator", "--exact", "--ignored", "--nocapture"])
                .env(CHILD_ENV, etcd.endpoint())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let mut ips = HashSet::new();
    let mut tkeys = HashSet::new();
    let mut lines = 0;
    for c in children {
        let out = c.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = l.strip_prefix("alloc ") else {
                continue;
            };
            let (ip, key) = rest.split_once(' ').unwrap();
            ips.insert(ip.parse::<IpAddr>().unwrap());
            tkeys.insert(key.parse::<u32>().unwrap());
            lines += 1;
        }
    }
    assert_eq!(
        lines,
        CHILDREN * PER_CHILD,
        "every child reported every allocation"
    );
    assert_eq!(ips.len(), CHILDREN * PER_CHILD, "no IP handed out twice");
    assert_eq!(
        tkeys.len(),
        CHILDREN * PER_CHILD,
        "no tunnel key handed out twice"
    );
    assert_eq!(
        db.list::<IpLease>().await.unwrap().records.len(),
        CHILDREN * PER_CHILD
    );
}
