//! Kernel datapath: the flows the simulation produces, installed the way the agent installs
//! them (the upcall's full key, the simulation's mask and actions, a UFID), are accepted by
//! the kernel and forward pods' traffic across a bridge and across a router; later packets
//! stay in the kernel.

mod kernel_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernel_support::{DpGuard, Netns, in_netns, require_kernel_datapath, sh, sh_try};
use odp::dpif::{Dpif, FlowId, PutMode, VportSpec, VportType};
use odp::upcall::{UpcallKind, UpcallSocket};
use sim::fixtures::TopoBuilder;
use sim::{Fields, LocalDatapath, PacketContext, Simulation, Topology};
use weft_agent::install;

const DP: &str = "wsim";

/// What the upcall handler saw and did.
#[derive(Debug, Default)]
struct Seen {
    /// IPv4 miss upcalls.
    misses_v4: AtomicU64,
    /// Every miss upcall.
    misses: AtomicU64,
    /// Installed flows: UFID and `ovs-dpctl` text.
    installed: Mutex<Vec<(u128, String)>>,
    /// Every refusal by the kernel, with the flow it refused.
    errors: Mutex<Vec<String>>,
    /// Tells the handler to stop.
    stop: AtomicBool,
}

/// The agent's miss path: simulate, install the megaflow with a UFID, execute the packet,
/// and send out the packets the simulation generated.
fn handle(mut up: UpcallSocket, ifindex: i32, topo: Arc<Topology>, seen: Arc<Seen>) {
    let mut d = Dpif::open().expect("handler's datapath socket");
    let mut s = Simulation::new();
    while !seen.stop.load(Ordering::Relaxed) {
        let u = match up.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(u)) => u,
            Ok(None) => continue,
            Err(e) => {
                seen.errors.lock().unwrap().push(format!("recv: {e}"));
                continue;
            }
        };
        if u.kind != UpcallKind::Miss {
            continue;
        }
        seen.misses.fetch_add(1, Ordering::Relaxed);
        let key = match odp::decode_key(&u.key) {
            Ok(k) => k,
            Err(e) => {
                seen.errors.lock().unwrap().push(format!("decode key: {e}"));
                continue;
            }
        };
        if key.ipv4.is_some() {
            seen.misses_v4.fetch_add(1, Ordering::Relaxed);
        }
        let fields = Fields::from_key(&key);
        sim::simulate_into(
            &topo,
            &PacketContext::with_packet(fields, &u.packet),
            &mut s,
        );
        if s.install {
            let f = install::megaflow(&key, &s);
            let text = format!("{f:#}");
            match install::flow_put(&f) {
                Ok(p) => match d.flow_put(ifindex, &p, PutMode::Create) {
                    Ok(()) => seen
                        .installed
                        .lock()
                        .unwrap()
                        .push((f.ufid.expect("megaflow has a UFID"), text)),
                    // Two packets of one megaflow that missed before it was installed.
                    Err(odp::sock::SockError::Kernel { errno, .. }) if errno == EEXIST => {}
                    Err(e) => seen
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("kernel refused {text}: {e}")),
                },
                Err(e) => seen
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("encode {text}: {e}")),
            }
        }
        if !s.actions.is_empty() {
            let mut a = Vec::new();
            odp::encode_actions(&s.actions, &mut a).expect("encode actions");
            if let Err(e) = d.execute(ifindex, &u.packet, &u.key, &a) {
                seen.errors
                    .lock()
                    .unwrap()
                    .push(format!("execute {}: {e}", odp::ActionsDisplay(&s.actions)));
            }
        }
        for em in &s.emit {
            let mut a = Vec::new();
            odp::encode_actions(&[odp::Action::Output(em.port)], &mut a).expect("encode");
            if let Err(e) = d.execute(ifindex, &em.packet, &u.key, &a) {
                seen.errors
                    .lock()
                    .unwrap()
                    .push(format!("emit to {}: {e}", em.port));
            }
        }
    }
}

/// `EEXIST` (Linux): the flow is already installed.
const EEXIST: i32 = 17;

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A running setup: pods, the datapath, the handler thread.
struct Rig {
    b: TopoBuilder,
    seen: Arc<Seen>,
    handler: Option<std::thread::JoinHandle<()>>,
    ifindex: i32,
    _dp: DpGuard,
    _pods: Vec<Netns>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
        for v in ["wf-p1", "wf-p2", "wf-p4"] {
            let _ = sh_try(&format!("ip link del {v} 2>/dev/null"));
        }
    }
}

/// Bridges b1 (10.0.1.0/24: p1, p2) and b2 (10.0.2.0/24: p4) joined by router r1. Each pod
/// is a namespace `ks-<port>` whose eth0 has the port's MAC and address; the host end of
/// its veth, `wf-<port>`, is a netdev vport of datapath `wsim`.
fn rig() -> Rig {
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
    };
    let topo = Arc::new(Topology::compile(&b.records, "h1", &dp).expect("topology compiles"));
    assert!(topo.problems().is_empty(), "{:?}", topo.problems());
    let seen = Arc::new(Seen::default());
    let (s2, ifindex) = (seen.clone(), info.ifindex);
    let handler = std::thread::spawn(move || handle(up, ifindex, topo, s2));
    Rig {
        b,
        seen,
        handler: Some(handler),
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
            "ping {from} -> {to} failed:\n{out}{err}\nflows:\n{}\nerrors:\n{:?}",
            self.flows_text(),
            self.seen.errors.lock().unwrap()
        );
        out
    }

    fn flows_text(&self) -> String {
        self.seen
            .installed
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone() + "\n")
            .collect()
    }

    /// Every flow the handler installed is in the kernel under its UFID, and the kernel
    /// refused nothing.
    fn assert_kernel_accepted_all(&self) {
        let errors = self.seen.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "the kernel refused: {errors:#?}");
        let installed = self.seen.installed.lock().unwrap().clone();
        assert!(!installed.is_empty(), "no flow was installed");
        let mut d = Dpif::open().unwrap();
        for (ufid, text) in &installed {
            d.flow_get(self.ifindex, &FlowId::Ufid(ufid.to_be_bytes()))
                .unwrap_or_else(|e| panic!("flow {text} is not in the kernel: {e}"));
        }
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn simulated_flows_forward_across_a_bridge_and_a_router_and_tcp_round_trips() {
    let r = rig();

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
    let flows = r.flows_text();
    let routed = flows
        .lines()
        .find(|l| l.contains("dst=10.0.2.14") || l.contains(&mac_text(r.b.mac("p4"))))
        .unwrap_or_else(|| panic!("no routed flow towards p4:\n{flows}"));
    assert!(
        routed.contains(&mac_text(r.b.mac("r1-b2"))) && routed.contains(&mac_text(r.b.mac("p4"))),
        "the routed flow rewrites src to r1-b2's MAC and dst to p4's: {routed}"
    );
    r.assert_kernel_accepted_all();

    // Later packets of installed flows stay in the kernel.
    let before = r.seen.misses_v4.load(Ordering::Relaxed);
    r.ping("p1", "10.0.2.14", 5);
    r.ping("p1", "10.0.1.12", 5);
    assert_eq!(
        r.seen.misses_v4.load(Ordering::Relaxed),
        before,
        "pings on installed flows came up as upcalls"
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
    let (v4_before, hit_before) = (
        r.seen.misses_v4.load(Ordering::Relaxed),
        Dpif::open().unwrap().dp_get(DP).unwrap().stats.hit,
    );
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
    let tcp_misses = r.seen.misses_v4.load(Ordering::Relaxed) - v4_before;
    let hits = Dpif::open().unwrap().dp_get(DP).unwrap().stats.hit - hit_before;
    assert!(
        hits > 20 * tcp_misses.max(1),
        "a TCP transfer stays in the kernel: {tcp_misses} IPv4 upcalls for {hits} kernel hits\n{}",
        r.flows_text()
    );
    r.assert_kernel_accepted_all();
    eprintln!(
        "kernel_sim: {} upcalls ({} IPv4), {} flows installed, TCP transfer: {tcp_misses} upcalls, {hits} kernel hits\n{}",
        r.seen.misses.load(Ordering::Relaxed),
        r.seen.misses_v4.load(Ordering::Relaxed),
        r.seen.installed.lock().unwrap().len(),
        r.flows_text()
    );
}
