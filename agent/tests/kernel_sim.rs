//! Kernel datapath: the agent's upcall handler and flow manager, on a real datapath with pods
//! in network namespaces. The flows the simulation produces are accepted by the kernel and
//! forward pods' traffic across a bridge and across a router; later packets stay in the
//! kernel; an invalidation deletes exactly the flows carrying its tag; and a handler's path
//! from a miss to its reported flow allocates nothing once warm, bar the report channel's
//! blocks. The test binary counts heap allocations for that.

mod kernel_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use arc_swap::ArcSwap;
use kernel_support::{DpGuard, Netns, in_netns, require_kernel_datapath, sh, sh_try};
use odp::dpif::{Dpif, VportSpec, VportType};
use odp::upcall::UpcallSocket;
use sim::fixtures::TopoBuilder;
use sim::{LocalDatapath, RecordSet, Tag, Topology};
use weft_agent::api::FlowInfo;
use weft_agent::flows::{FlowEvent, FlowManager};
use weft_agent::flowtable::IdleTimeouts;
use weft_agent::handler::{Handler, HandlerCtx};
use weft_agent::metrics::Metrics;
use weft_agent::topo::{SharedTopo, TopoSnap};

const DP: &str = "wsim";

/// Counts the process's heap allocations, for the handler's allocation test.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The topology as NSDB would hold it.
fn snapshot_of(r: &RecordSet) -> nsdb::Snapshot {
    nsdb::Snapshot::from_records(1, r.to_records().into_iter().map(|x| (x, 1)).collect())
}

/// A running setup: pods, the datapath, the agent's handler and flow manager threads.
struct Rig {
    b: TopoBuilder,
    shared: SharedTopo,
    metrics: Arc<Metrics>,
    flows: SyncSender<FlowEvent>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    ifindex: i32,
    _dp: DpGuard,
    _pods: Vec<Netns>,
}

impl Rig {
    /// A handler of the rig's datapath and topology that the test drives itself: upcalls
    /// from `up`, one at a time, reports to `flows`, counters in `metrics`, no tracing.
    fn handler(
        &self,
        up: UpcallSocket,
        flows: SyncSender<FlowEvent>,
        metrics: &Arc<Metrics>,
    ) -> Handler {
        Handler::new(
            up,
            Dpif::open().expect("handler's socket"),
            HandlerCtx {
                dp_ifindex: self.ifindex,
                topo: self.shared.clone(),
                flows,
                metrics: metrics.clone(),
                stop: Arc::new(AtomicBool::new(false)),
                limiter: weft_agent::ratelimit::SharedLimiter::new(1_000_000, 1_000_000),
                trace: false,
                affinity: Default::default(),
                batch: 1,
            },
        )
    }

    /// Stops the rig's handler and flow manager (and waits for them): a test that handles
    /// upcalls itself has the datapath alone.
    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (tx, _) = weft_agent::flows::channel();
        self.flows = tx;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_threads();
        for v in ["wf-p1", "wf-p2", "wf-p4"] {
            let _ = sh_try(&format!("ip link del {v} 2>/dev/null"));
        }
    }
}

/// Bridges b1 (10.0.1.0/24: p1, p2) and b2 (10.0.2.0/24: p4) joined by router r1. Each pod
/// is a namespace `ks-<port>` whose eth0 has the port's MAC and address; the host end of
/// its veth, `wf-<port>`, is a netdev vport of datapath `wsim`.
fn rig() -> Rig {
    rig_with(10_000, IdleTimeouts::default())
}

/// The rig with a flow cap and idle timeouts of its own (the manager sweeps every 200 ms).
fn rig_with(capacity: usize, timeouts: IdleTimeouts) -> Rig {
    require_kernel_datapath();
    let b = Topology::test()
        .bridge("b1")
        .bridge("b2")
        .port("p1", "b1", "10.0.1.11")
        .port("p2", "b1", "10.0.1.12")
        .port("p4", "b2", "10.0.2.14")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .link("r1", "b2", "10.0.2.1/24");
    let mut d = Dpif::open().expect("datapath socket");
    let _ = d.dp_delete(DP);
    let up = UpcallSocket::open(d.families()).expect("upcall socket");
    let info = d.dp_create(DP, up.pid()).expect("create datapath");
    let guard = DpGuard {
        name: DP.into(),
        netns: None,
    };
    let mut pods = Vec::new();
    let mut vports = BTreeMap::new();
    for (port, addr, gw) in [
        ("p1", "10.0.1.11", "10.0.1.1"),
        ("p2", "10.0.1.12", "10.0.1.1"),
        ("p4", "10.0.2.14", "10.0.2.1"),
    ] {
        let ns = Netns::new(&format!("ks-{port}"));
        let v = format!("wf-{port}");
        let _ = sh_try(&format!("ip link del {v} 2>/dev/null"));
        sh(&format!(
            "ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && \
             ip link add {v} type veth peer name eth0 netns {ns} && \
             ip netns exec {ns} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1 && \
             ip link set {v} up && \
             ip -n {ns} link set eth0 address {mac} up && \
             ip -n {ns} addr add {addr}/24 dev eth0 && \
             ip -n {ns} route add default via {gw}",
            ns = ns.0,
            mac = mac_text(b.mac(port)),
        ));
        let vp = d
            .vport_add(
                info.ifindex,
                &VportSpec {
                    name: v.clone(),
                    kind: VportType::Netdev,
                    port_no: None,
                    upcall_pids: vec![up.pid()],
                },
            )
            .expect("add vport");
        vports.insert(v, vp.port_no);
        pods.push(ns);
    }
    // No tunnel vport: every port of this topology is local.
    let dp = LocalDatapath {
        tunnel_port: 999,
        vports,
        ..Default::default()
    };
    let topo = Topology::compile(&b.records, "h1", &dp).expect("topology compiles");
    assert!(topo.problems().is_empty(), "{:?}", topo.problems());
    let shared: SharedTopo = Arc::new(ArcSwap::from_pointee(TopoSnap {
        generation: 1,
        records: Arc::new(snapshot_of(&b.records)),
        topo,
    }));
    let metrics = Arc::new(Metrics::new());
    let (flows, flows_rx) = weft_agent::flows::channel();
    let affinity = Arc::new(weft_agent::affinity::Affinity::default());
    let manager = FlowManager::new(
        Dpif::open().expect("manager's socket"),
        info.ifindex,
        capacity,
        timeouts,
        Duration::from_millis(200),
        1,
        metrics.clone(),
        affinity.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let handler = Handler::new(
        up,
        Dpif::open().expect("handler's socket"),
        HandlerCtx {
            dp_ifindex: info.ifindex,
            topo: shared.clone(),
            flows: flows.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            limiter: weft_agent::ratelimit::SharedLimiter::new(1000, 1000),
            trace: true,
            affinity,
            batch: weft_agent::handler::MAX_BATCH,
        },
    );
    let threads = vec![
        std::thread::spawn(move || manager.run(flows_rx)),
        std::thread::spawn(move || handler.run()),
    ];
    Rig {
        b,
        shared,
        metrics,
        flows,
        stop,
        threads,
        ifindex: info.ifindex,
        _dp: guard,
        _pods: pods,
    }
}

impl Rig {
    fn ping(&self, from: &str, to: &str, n: u32) -> String {
        let (ok, out, err) = sh_try(&format!(
            "ip netns exec ks-{from} ping -c {n} -i 0.2 -W 5 {to}"
        ));
        assert!(
            ok,
            "ping {from} -> {to} failed:\n{out}{err}\nflows:\n{}\nmetrics:\n{}",
            self.flows_text(),
            self.metrics.encode()
        );
        out
    }

    /// The flows the agent tracks, from its flow manager.
    fn flows(&self) -> Vec<FlowInfo> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flows
            .send(FlowEvent::Query(tx))
            .expect("flow manager running");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("flow manager answers")
    }

    fn flows_text(&self) -> String {
        self.flows()
            .iter()
            .map(|f| format!("{} {}  tags: {}\n", f.ufid, f.flow, f.tags.join(" ")))
            .collect()
    }

    fn kernel_stats(&self) -> (u64, u64) {
        let s = Dpif::open().unwrap().dp_get(DP).unwrap().stats;
        (s.hit, s.missed)
    }

    fn counter(&self, name: &str) -> u64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// The kernel refused nothing, and every flow the agent tracks is in the kernel under
    /// its UFID and vice versa.
    fn assert_agent_and_kernel_agree(&self) {
        assert_eq!(
            self.counter("weft_agent_datapath_errors_total "),
            0,
            "the kernel refused a flow or an execute:\n{}",
            self.metrics.encode()
        );
        let tracked: BTreeSet<String> = self.flows().into_iter().map(|f| f.ufid).collect();
        assert!(!tracked.is_empty(), "no flow was installed");
        let mut d = Dpif::open().unwrap();
        let mut kernel = BTreeSet::new();
        for e in d.flow_dump(self.ifindex).expect("dump") {
            // As ovs-dpctl dump-flows -m (and the agent's API) print it.
            let mut u = String::new();
            odp::text::format_ufid(&mut u, e.ufid().expect("every flow has a UFID"));
            kernel.insert(u);
        }
        assert_eq!(tracked, kernel, "the agent's flows and the kernel's differ");
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn simulated_flows_forward_across_a_bridge_and_a_router_and_tcp_round_trips() {
    let r = rig();
    kernel_support::watchdog(150, "kernel_sim", || {
        let mut out = kernel_support::dump_flows_text(DP);
        for c in [
            "ip netns exec ks-p1 ss -tni",
            "ip netns exec ks-p4 ss -tni",
            "ip -s link show wf-p1",
            "ip -s link show wf-p4",
            "ip -n ks-p1 neigh",
            "ip -n ks-p4 neigh",
        ] {
            let (_, o, e) = sh_try(c);
            out += &format!("$ {c}\n{o}{e}");
        }
        out
    });

    // L2: p1 -> p2 on b1 (ARP answered by the bridge from the known port addresses).
    let out = r.ping("p1", "10.0.1.12", 3);
    assert!(out.contains("ttl=64"), "same bridge keeps the TTL:\n{out}");
    let neigh = sh("ip -n ks-p1 neigh show 10.0.1.12");
    assert!(
        neigh.contains(&mac_text(r.b.mac("p2"))),
        "ARP for p2 answered with p2's MAC: {neigh}"
    );

    // L3: p1 -> p4 through r1: TTL decremented once each way, the gateway's ARP answered
    // with the router port's MAC, MACs rewritten by the flow.
    let out = r.ping("p1", "10.0.2.14", 3);
    assert!(
        out.contains("ttl=63"),
        "one router hop decrements the TTL:\n{out}"
    );
    let neigh = sh("ip -n ks-p1 neigh show 10.0.1.1");
    assert!(
        neigh.contains(&mac_text(r.b.mac("r1-b1"))),
        "gateway ARP answered with the router port's MAC: {neigh}"
    );
    let flows = r.flows();
    let routed = flows
        .iter()
        .find(|f| f.flow.contains("dst=10.0.2.14"))
        .unwrap_or_else(|| panic!("no routed flow towards p4:\n{}", r.flows_text()));
    assert!(
        routed.flow.contains(&mac_text(r.b.mac("r1-b2")))
            && routed.flow.contains(&mac_text(r.b.mac("p4"))),
        "the routed flow rewrites src to r1-b2's MAC and dst to p4's: {}",
        routed.flow
    );
    assert!(
        routed.tags.contains(&Tag::device("r1").to_string()) && routed.trace.contains("router r1"),
        "the routed flow carries the router's tag and its trace: {routed:?}"
    );
    r.assert_agent_and_kernel_agree();

    // Later packets of installed flows stay in the kernel: no new flow, kernel hits.
    let installed = r.counter("weft_agent_flows_installed_total ");
    let (hit0, _) = r.kernel_stats();
    r.ping("p1", "10.0.2.14", 5);
    r.ping("p1", "10.0.1.12", 5);
    let (hit1, _) = r.kernel_stats();
    assert_eq!(
        r.counter("weft_agent_flows_installed_total "),
        installed,
        "pings on installed flows installed new flows:\n{}",
        r.flows_text()
    );
    assert!(
        hit1 - hit0 >= 20,
        "20 ICMP packets, {} kernel hits",
        hit1 - hit0
    );

    // TCP across the router: a payload round-trips unchanged.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let server = std::thread::spawn(|| {
        in_netns("ks-p4", || {
            let l = TcpListener::bind("10.0.2.14:7000").expect("listen");
            let (mut c, _) = l.accept().expect("accept");
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0u8; 200_000];
            c.read_exact(&mut buf).expect("server read");
            c.write_all(&buf).expect("server write");
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let sims_before = r.counter("weft_agent_simulations_total ");
    let (hit_before, _) = r.kernel_stats();
    let sent = payload.clone();
    let echoed = in_netns("ks-p1", move || {
        let mut c =
            TcpStream::connect_timeout(&"10.0.2.14:7000".parse().unwrap(), Duration::from_secs(10))
                .expect("connect across the router");
        // A broken path must fail the test, not block it: bound both directions.
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&sent).expect("client write");
        let mut back = vec![0u8; sent.len()];
        c.read_exact(&mut back).expect("client read");
        back
    });
    server.join().expect("server");
    assert!(echoed == payload, "the TCP payload came back changed");
    let sims = r.counter("weft_agent_simulations_total ") - sims_before;
    let (hit_after, _) = r.kernel_stats();
    let hits = hit_after - hit_before;
    assert!(
        hits > 20 * sims.max(1),
        "a TCP transfer stays in the kernel: {sims} simulations for {hits} kernel hits\n{}",
        r.flows_text()
    );
    r.assert_agent_and_kernel_agree();

    // Invalidating the router's tag deletes exactly the routed flows: the bridge-only
    // flows between p1 and p2 stay in the kernel.
    let before = r.flows();
    let (routed, bridged): (Vec<_>, Vec<_>) = before
        .iter()
        .partition(|f| f.tags.iter().any(|t| t == &Tag::device("r1").to_string()));
    assert!(
        !routed.is_empty() && !bridged.is_empty(),
        "{}",
        r.flows_text()
    );
    r.flows
        .send(FlowEvent::Invalidate {
            generation: 2,
            tags: vec![Tag::device("r1")],
            full_flush: false,
            at: std::time::Instant::now(),
        })
        .unwrap();
    let after: BTreeSet<String> = r.flows().into_iter().map(|f| f.ufid).collect();
    let want: BTreeSet<String> = bridged.iter().map(|f| f.ufid.clone()).collect();
    assert_eq!(
        after, want,
        "invalidation kept exactly the flows without the router's tag"
    );
    r.assert_agent_and_kernel_agree();
    eprintln!(
        "kernel_sim: TCP transfer: {sims} simulations, {hits} kernel hits; flows:\n{}",
        r.flows_text()
    );
}

/// Waits (polling the agent's view) until `done` holds; a generous bound only ends a hung test.
fn eventually(r: &Rig, what: &str, done: impl Fn(&Rig) -> bool) {
    for _ in 0..300 {
        if done(r) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} never happened; flows:\n{}", r.flows_text());
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn idle_flows_expire_by_the_kernels_used_time_and_busy_ones_stay() {
    let r = rig_with(
        10_000,
        IdleTimeouts {
            normal_ms: 3_000,
            tunnel_ms: 3_000,
            error_ms: 3_000,
        },
    );
    r.ping("p1", "10.0.1.12", 1);
    let bridged: BTreeSet<String> = r.flows().into_iter().map(|f| f.ufid).collect();
    assert_eq!(
        bridged.len(),
        2,
        "request and reply flows:\n{}",
        r.flows_text()
    );
    // A ping that keeps going keeps its routed flows; the idle pair between p1 and p2 expires.
    let busy =
        std::thread::spawn(|| sh_try("ip netns exec ks-p1 ping -c 100 -i 0.2 -W 2 10.0.2.14"));
    let routed = |r: &Rig| -> Vec<FlowInfo> {
        r.flows()
            .into_iter()
            .filter(|f| f.tags.contains(&Tag::device("r1").to_string()))
            .collect()
    };
    eventually(
        &r,
        "the idle flows expire while the routed ones stay",
        |r| {
            let now: BTreeSet<String> = r.flows().into_iter().map(|f| f.ufid).collect();
            now.is_disjoint(&bridged) && routed(r).len() == 2
        },
    );
    assert!(
        r.counter("weft_agent_flows_deleted_total{reason=\"expired\"} ") >= 2,
        "{}",
        r.metrics.encode()
    );
    r.assert_agent_and_kernel_agree();
    let (ok, out, err) = busy.join().unwrap();
    assert!(
        ok && out.contains("100 received"),
        "the busy ping lost replies while idle flows expired:\n{out}{err}"
    );
    // Then they expire too.
    eventually(&r, "every flow expires", |r| r.flows().is_empty());
    let d = Dpif::open().unwrap().flow_dump(r.ifindex).unwrap();
    assert!(d.is_empty(), "{} flows left in the kernel", d.len());
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn the_flow_cap_evicts_the_least_recently_used() {
    let r = rig_with(3, IdleTimeouts::default());
    r.ping("p1", "10.0.1.12", 1);
    r.ping("p1", "10.0.2.14", 1);
    // Four flows for a cap of three: the oldest went.
    eventually(&r, "eviction", |r| {
        r.counter("weft_agent_flows_deleted_total{reason=\"evicted\"} ") >= 1
    });
    assert_eq!(r.flows().len(), 3, "{}", r.flows_text());
    r.assert_agent_and_kernel_agree();
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn malformed_upcalls_and_unknown_tunnel_keys_are_counted_and_dropped() {
    let r = rig();
    let mut d = Dpif::open().unwrap();
    let up = UpcallSocket::open(d.families()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (tx, _rx) = weft_agent::flows::channel();
    let mut h = r.handler(up, tx, &metrics);
    let upcall = |key: Vec<u8>, packet: Vec<u8>| odp::upcall::Upcall {
        kind: odp::upcall::UpcallKind::Miss,
        dp_ifindex: r.ifindex,
        key,
        packet,
        userdata: None,
        egress_tun_key: None,
        mru: None,
        orig_len: None,
        hash: None,
    };
    // A key that is not a valid attribute stream, a truncated one, and an empty packet.
    h.handle(&upcall(vec![0xff; 7], vec![0; 60]));
    h.handle(&upcall(vec![8, 0, 3, 0, 1], vec![0; 60]));
    let mut key = Vec::new();
    let k = odp::FlowKey {
        in_port: Some(r.b.dp("p1")),
        ..Default::default()
    };
    odp::encode_key(&k, &mut key).unwrap();
    h.handle(&upcall(key, Vec::new()));
    // A tunnelled packet whose key names no port.
    let k = odp::FlowKey {
        in_port: Some(999),
        tunnel: Some(odp::TunnelKey {
            tun_id: Some(0x0badc0),
            ipv4_src: Some("192.0.2.9".parse().unwrap()),
            ipv4_dst: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        }),
        eth: Some(odp::KeyEthernet {
            src: [2, 0, 0, 0, 0, 0x99],
            dst: r.b.mac("p1"),
        }),
        eth_type: Some(0x0800),
        ..Default::default()
    };
    let mut key = Vec::new();
    odp::encode_key(&k, &mut key).unwrap();
    h.handle(&upcall(key, vec![0u8; 64]));
    let text = metrics.encode();
    let get = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    assert_eq!(
        get("weft_agent_upcalls_dropped_total{reason=\"malformed\"} "),
        3,
        "{text}"
    );
    assert_eq!(get("weft_agent_tunnel_drops_total "), 1, "{text}");
    assert_eq!(get("weft_agent_upcalls_total "), 4, "{text}");
    // The handler still works: the pods' traffic goes on.
    drop(h);
    r.ping("p1", "10.0.1.12", 2);
    let _ = &mut d;
}

/// The rig with its own threads stopped, an upcall socket of the test's own that takes the
/// datapath's upcalls, no flows, and p1's first UDP datagram to p2 received on it as a miss.
fn own_miss() -> (Rig, UpcallSocket, odp::upcall::Upcall) {
    let mut r = rig();
    // No other thread of this process runs while a round is counted.
    r.stop_threads();
    let mut d = Dpif::open().unwrap();
    // This test's own socket takes the datapath's upcalls from the rig's handler.
    let mut up = UpcallSocket::open(d.families()).unwrap();
    let info = d.dp_get(DP).unwrap();
    match info.upcall_mode() {
        odp::dpif::UpcallMode::PerCpu => {
            d.dp_set_upcall_pids(DP, &[up.pid()]).unwrap();
        }
        odp::dpif::UpcallMode::PerVport => {
            d.vport_set_upcall_pids(r.ifindex, r.b.dp("p1"), &[up.pid()])
                .unwrap();
        }
    }
    d.flow_flush(r.ifindex).unwrap();
    // p1 knows p2's MAC: its first packet to p2 is the UDP datagram, not an ARP request.
    sh(&format!(
        "ip -n ks-p1 neigh replace 10.0.1.12 lladdr {} dev eth0 nud permanent",
        mac_text(r.b.mac("p2"))
    ));
    in_netns("ks-p1", || {
        let s = std::net::UdpSocket::bind("0.0.0.0:40000").unwrap();
        s.send_to(b"weft", "10.0.1.12:9").unwrap();
    });
    let mut miss = odp::upcall::Upcall::default();
    let got = up
        .recv_timeout_into(Duration::from_secs(10), &mut miss)
        .unwrap();
    assert!(got, "no upcall for p1's datagram");
    (r, up, miss)
}

/// From a miss to its reported flow, a handler allocates nothing once its buffers are warm:
/// the upcall received into a kept value, its key decoded, the packet simulated, the
/// megaflow built and encoded in place and put with the packet's execute in one exchange,
/// and the flow reported with its tags inline, into the flow manager's bounded queue.
#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_handler_allocates_nothing_per_upcall_once_warm() {
    let (r, up, miss) = own_miss();
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = weft_agent::flows::channel();
    let mut h = r.handler(up, tx, &metrics);
    // Another thread deletes the flow after each round, so that every round puts it and
    // reports it again; the rendezvous channels allocate nothing per message.
    let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<()>(0);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(0);
    let ifindex = r.ifindex;
    let flusher = std::thread::spawn(move || {
        let mut d = Dpif::open().unwrap();
        while flush_rx.recv().is_ok() {
            d.flow_flush(ifindex).unwrap();
            done_tx.send(()).unwrap();
        }
    });
    // Handles the upcall and returns the allocations it made, then has the flow deleted.
    let round = |h: &mut Handler| {
        let counted = stats_alloc::Region::new(GLOBAL);
        h.handle(&miss);
        let c = counted.change();
        flush_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        c.allocations + c.reallocations
    };
    for _ in 0..64 {
        round(&mut h);
    }
    const ROUNDS: usize = 620;
    let n: usize = (0..ROUNDS).map(|_| round(&mut h)).sum();
    let reports = rx.try_iter().count();
    eprintln!("kernel_sim: {n} allocations in {ROUNDS} upcalls, {reports} flows reported");
    let installed = metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix("weft_agent_flows_installed_total ")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .unwrap_or(0);
    assert_eq!(
        installed,
        64 + ROUNDS,
        "every round put its flow:\n{}",
        metrics.encode()
    );
    assert_eq!(reports, 64 + ROUNDS, "every round reported its flow");
    assert_eq!(n, 0, "{n} allocations in {ROUNDS} upcalls");
    drop(flush_tx);
    let _ = flusher.join();
}

/// A flow whose report finds the flow manager's queue full is not left in the kernel, where
/// no invalidation would find it: the handler deletes it and counts it.
#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_flow_the_flow_manager_cannot_take_is_deleted_and_counted() {
    let (r, up, miss) = own_miss();
    let metrics = Arc::new(Metrics::new());
    // A queue with no room and nobody receiving: every report finds it full.
    let (tx, _rx) = std::sync::mpsc::sync_channel(0);
    let mut h = r.handler(up, tx, &metrics);
    h.handle(&miss);
    let text = metrics.encode();
    assert!(
        text.contains("weft_agent_flows_installed_total 1")
            && text.contains("weft_agent_flows_deleted_total{reason=\"unreported\"} 1"),
        "the flow was put and then deleted:\n{text}"
    );
    let mut d = Dpif::open().unwrap();
    let left = d.flow_dump(r.ifindex).unwrap();
    assert!(left.is_empty(), "flows left in the kernel: {left:?}");
}
