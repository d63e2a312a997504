//! The agent's topology watcher against a real etcd: NSDB writes become new topology
//! generations that handlers see without locks, and each comes with the invalidation of
//! exactly what it changed; a local vport appearing is a generation of its own.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nsdb::testing::Etcd;
use nsdb::{Nsdb, PortBinding, Protocol, Route, WatchCache};
use sim::fixtures::{TopoBuilder, pkt};
use sim::{DropReason, MemberChoice, PacketContext, RecordSet, Simulation, Tag, Topology, Verdict};
use tokio::sync::mpsc;
use weft_agent::flows::FlowEvent;
use weft_agent::metrics::Metrics;
use weft_agent::topo::{LocalChange, LocalPorts, SharedTopo, TopologyWatcher};

const TUNNEL_PORT: u32 = 100;

fn topology() -> TopoBuilder {
    Topology::test()
        .bridge("b1")
        .bridge("b2")
        .port("p1", "b1", "10.0.1.11")
        .port("p2", "b1", "10.0.1.12")
        .port("p4", "b2", "10.0.2.14")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .link("r1", "b2", "10.0.2.1/24")
}

async fn write(db: &Nsdb, r: &RecordSet) {
    let mut t = db.txn();
    for rec in r.to_records() {
        t = t.put_any(&rec);
    }
    t.commit().await.expect("write topology");
}

/// The next invalidation the watcher sends, once the snapshot of its generation is
/// published (the watcher queues the invalidation just before it publishes the snapshot),
/// within a generous bound that only ends a hung test.
fn next_invalidation(rx: &Receiver<FlowEvent>, shared: &SharedTopo) -> (u64, Vec<Tag>, bool) {
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(FlowEvent::Invalidate {
                generation,
                tags,
                full_flush,
                ..
            }) => {
                let t0 = std::time::Instant::now();
                while shared.load().generation < generation {
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "generation {generation} was never published"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                return (generation, tags, full_flush);
            }
            Ok(_) => continue,
            Err(e) => panic!("no invalidation arrived: {e}"),
        }
    }
}

fn verdict(shared: &SharedTopo, b: &TopoBuilder, from: &str, to_mac: &str, dst: &str) -> Verdict {
    let snap = shared.load();
    let mut s = Simulation::new();
    let f = pkt::ping(b.dp(from), b.mac(from), b.mac(to_mac), "10.0.1.11", dst);
    sim::simulate_into(&snap.topo, &PacketContext::new(f), &mut s);
    s.verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsdb_writes_become_generations_with_exactly_their_invalidations() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let b = topology();
    write(&db, &b.records).await;

    let ports = Arc::new(LocalPorts::default());
    // p1 and p2 are attached now; p4's vport is not in the datapath yet.
    for (name, no) in b.datapath().vports {
        if name != "wf-p4" {
            ports.insert(&name, no);
        }
    }
    let cache = WatchCache::start(db.clone()).await;
    let (first, updates) = cache.subscribe();
    assert!(
        !first.is_empty(),
        "the watch cache starts with the written topology"
    );
    let shared =
        TopologyWatcher::initial("h1", TUNNEL_PORT, MemberChoice::default(), first, &ports)
            .expect("compiles");
    assert_eq!(shared.load().generation, 1);
    let (flows_tx, flows_rx) = weft_agent::flows::channel();
    let (local_tx, local_rx) = mpsc::unbounded_channel();
    let watcher = TopologyWatcher {
        host: "h1".into(),
        tunnel_port: TUNNEL_PORT,
        member_choice: MemberChoice::default(),
        shared: shared.clone(),
        ports: ports.clone(),
        flows: flows_tx,
        metrics: Arc::new(Metrics::new()),
        pending_full_flush: false,
        known_hosts: Default::default(),
    };
    let task = tokio::spawn(watcher.run(updates, local_rx));

    // p4 is bound here but its vport is missing: routed traffic to it is dropped.
    assert_eq!(
        verdict(&shared, &b, "p1", "r1-b1", "10.0.2.14"),
        Verdict::Drop(DropReason::PortUnbound)
    );
    // Its vport appears: a generation that invalidates p4 and its bridge.
    ports.insert("wf-p4", b.dp("p4"));
    local_tx
        .send(LocalChange::Vport {
            name: "wf-p4".into(),
        })
        .unwrap();
    let rx = flows_rx;
    let (g, tags, full) = tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    assert_eq!(g, 2);
    assert!(!full);
    assert!(
        tags.contains(&Tag::port("p4")) && tags.contains(&Tag::device("b2")),
        "{tags:?}"
    );
    assert_eq!(shared.load().generation, 2);
    assert_eq!(
        verdict(&shared, &b, "p1", "r1-b1", "10.0.2.14"),
        Verdict::Forward
    );

    // The connected route to b2 is removed in NSDB: the next generation drops the traffic
    // and invalidates the route's and the router's flows, not the bridges' own.
    db.delete::<Route>("r1-b2-net").await.unwrap();
    let (g, tags, full) = tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    assert_eq!(g, 3);
    assert!(!full);
    assert!(tags.contains(&Tag::route("r1-b2-net")), "{tags:?}");
    assert!(tags.contains(&Tag::device("r1")), "{tags:?}");
    assert!(!tags.contains(&Tag::device("b1")), "{tags:?}");
    assert_eq!(
        verdict(&shared, &b, "p1", "r1-b1", "10.0.2.14"),
        Verdict::Drop(DropReason::NoRoute)
    );
    // Traffic within b1 is unaffected.
    assert_eq!(
        verdict(&shared, &b, "p1", "p2", "10.0.1.12"),
        Verdict::Forward
    );

    // Written back: forwarding again.
    let route = b
        .records
        .routes
        .iter()
        .find(|r| r.id == "r1-b2-net")
        .unwrap()
        .clone();
    db.put(&route).await.unwrap();
    let (g, tags, _) = tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    assert_eq!(g, 4);
    assert!(tags.contains(&Tag::route("r1-b2-net")), "{tags:?}");
    assert_eq!(
        verdict(&shared, &b, "p1", "r1-b1", "10.0.2.14"),
        Verdict::Forward
    );

    // A VIP over three members appears, then loses one: the second change invalidates the
    // load balancer's own flows and the buckets that moved, not the router's flows.
    let lb = |n: u8| {
        let addrs: Vec<String> = (0..n).map(|i| format!("10.0.2.{}", 100 + i)).collect();
        let m: Vec<(&str, u16, u32, bool)> =
            addrs.iter().map(|a| (a.as_str(), 8080, 1, true)).collect();
        topology()
            .vip(
                "web",
                Some("r1"),
                "10.96.0.10",
                Protocol::Tcp,
                80,
                &m,
                false,
            )
            .records
            .load_balancers[0]
            .clone()
    };
    db.put(&lb(3)).await.unwrap();
    let (g, tags, _) = tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    assert_eq!(g, 5);
    assert!(tags.contains(&Tag::device("r1")), "a new VIP: {tags:?}");
    db.put(&lb(2)).await.unwrap();
    let (g, tags, _) = tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    assert_eq!(g, 6);
    assert!(tags.contains(&Tag::lb("web")), "{tags:?}");
    assert!(!tags.contains(&Tag::device("r1")), "{tags:?}");
    let buckets = tags
        .iter()
        .filter(|t| t.kind() == Some(sim::TagKind::LbBucket))
        .count();
    // The removed member had 21 or 22 of the 64 buckets; the others keep nearly all theirs.
    assert!(
        (21..=40).contains(&buckets),
        "{buckets} buckets invalidated: {tags:?}"
    );
    task.abort();
    drop(cache);
}

/// A host whose agent is down loses its NSDB record when its lease expires, but its
/// datapath still forwards: the other hosts keep tunnelling to the ports bound to it, using
/// its last known record, until no port is bound there any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_record_expired_still_receives_its_ports_traffic() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // Host h2 (underlay 192.168.0.2) comes with the fixture.
    let b = topology().port_on("p3", "b1", "10.0.1.13", "h2");
    write(&db, &b.records).await;
    let ports = Arc::new(LocalPorts::default());
    for (name, no) in b.datapath().vports {
        ports.insert(&name, no);
    }
    let cache = WatchCache::start(db.clone()).await;
    let (first, updates) = cache.subscribe();
    let shared =
        TopologyWatcher::initial("h1", TUNNEL_PORT, MemberChoice::default(), first, &ports)
            .expect("compiles");
    let (flows_tx, rx) = weft_agent::flows::channel();
    let (_local_tx, local_rx) = mpsc::unbounded_channel();
    let watcher = TopologyWatcher {
        host: "h1".into(),
        tunnel_port: TUNNEL_PORT,
        member_choice: MemberChoice::default(),
        shared: shared.clone(),
        ports: ports.clone(),
        flows: flows_tx,
        metrics: Arc::new(Metrics::new()),
        pending_full_flush: false,
        known_hosts: Default::default(),
    };
    let task = tokio::spawn(watcher.run(updates, local_rx));
    let to_p3 = |shared: &SharedTopo| {
        let snap = shared.load();
        let mut s = Simulation::new();
        let f = pkt::ping(
            b.dp("p1"),
            b.mac("p1"),
            b.mac("p3"),
            "10.0.1.11",
            "10.0.1.13",
        );
        sim::simulate_into(&snap.topo, &PacketContext::new(f), &mut s);
        (s.verdict, s.actions_text())
    };
    let (v, a) = to_p3(&shared);
    assert_eq!(v, Verdict::Forward);
    assert!(a.contains("dst=192.168.0.2"), "tunnelled to h2: {a}");

    // h2's record goes (its agent died and the lease expired): still tunnelled to h2.
    db.delete::<nsdb::Host>("h2").await.unwrap();
    let (_, tags, _) = tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    assert!(tags.contains(&Tag::host("h2")), "{tags:?}");
    let (v, a) = to_p3(&shared);
    assert_eq!(v, Verdict::Forward, "{a}");
    assert!(a.contains("dst=192.168.0.2"), "still tunnelled to h2: {a}");

    // Once no port is bound to h2, it is forgotten: a port bound there again is dropped
    // until h2 registers.
    db.delete::<nsdb::PortBinding>("p3").await.unwrap();
    tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    let binding = b
        .records
        .bindings
        .iter()
        .find(|x| x.port == "p3")
        .unwrap()
        .clone();
    db.put(&binding).await.unwrap();
    tokio::task::block_in_place(|| next_invalidation(&rx, &shared));
    let (v, a) = to_p3(&shared);
    assert!(
        matches!(v, Verdict::Drop(_)),
        "h2 is unknown now: {v:?} {a}"
    );
    task.abort();
    drop(cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vport_bound_to_two_ports_is_a_problem_reported_and_counted() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let b = topology();
    write(&db, &b.records).await;
    let ports = Arc::new(LocalPorts::default());
    for (name, no) in b.datapath().vports {
        ports.insert(&name, no);
    }
    let cache = WatchCache::start(db.clone()).await;
    let (first, updates) = cache.subscribe();
    let shared =
        TopologyWatcher::initial("h1", TUNNEL_PORT, MemberChoice::default(), first, &ports)
            .expect("compiles");
    let metrics = Arc::new(Metrics::new());
    let (flows_tx, flows_rx) = weft_agent::flows::channel();
    let (local_tx, local_rx) = mpsc::unbounded_channel();
    let watcher = TopologyWatcher {
        host: "h1".into(),
        tunnel_port: TUNNEL_PORT,
        member_choice: MemberChoice::default(),
        shared: shared.clone(),
        ports: ports.clone(),
        flows: flows_tx,
        metrics: metrics.clone(),
        pending_full_flush: false,
        known_hosts: Default::default(),
    };
    let task = tokio::spawn(watcher.run(updates, local_rx));
    let problem = "weft_agent_topology_problems{kind=\"duplicate_binding\"} 1";
    assert_eq!(
        verdict(&shared, &b, "p1", "p2", "10.0.1.12"),
        Verdict::Forward
    );
    assert!(!metrics.encode().contains(problem));

    // p2 bound to p1's vport as well, as a writer that does not use bind_port could do.
    db.put(&PortBinding {
        port: "p2".into(),
        host: "h1".into(),
        vport: "wf-p1".into(),
    })
    .await
    .unwrap();
    let (g, _, _) = tokio::task::block_in_place(|| next_invalidation(&flows_rx, &shared));
    assert_eq!(g, 2);
    let text = metrics.encode();
    assert!(text.contains(problem), "{problem} missing from:\n{text}");
    assert_eq!(
        verdict(&shared, &b, "p1", "p2", "10.0.1.12"),
        Verdict::Drop(DropReason::UnknownInPort),
        "the vport's traffic is simulated as neither port"
    );

    // Binding p2 to its own vport again clears the problem.
    db.put(&PortBinding {
        port: "p2".into(),
        host: "h1".into(),
        vport: "wf-p2".into(),
    })
    .await
    .unwrap();
    let (g, _, _) = tokio::task::block_in_place(|| next_invalidation(&flows_rx, &shared));
    assert_eq!(g, 3);
    assert!(!metrics.encode().contains("duplicate_binding"));
    assert_eq!(
        verdict(&shared, &b, "p1", "p2", "10.0.1.12"),
        Verdict::Forward
    );
    drop(local_tx);
    task.abort();
}
