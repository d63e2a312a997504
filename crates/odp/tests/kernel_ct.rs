//! Kernel datapath conntrack: `ct(commit,zone=Z)` plus `recirc` passes a TCP connection whose
//! replies match `ct_state(+est+trk)` (and the other side cannot open one), and
//! `ct(commit,nat(dst=..))` sends a VIP to a backend with the replies translated back.

mod kernel_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use kernel_support::{DpGuard, Netns, install, require_kernel_datapath, sh};
use odp::dpif::{Dpif, VportSpec, VportType};

struct Setup {
    _ns: (Netns, Netns),
    _dp: DpGuard,
    d: Dpif,
    ifindex: i32,
    a: u32,
    b: u32,
}

/// Datapath `dp` with client namespace `pfx`c (10.8.N.1) and server namespace `pfx`s (10.8.N.2).
fn setup(dp: &str, pfx: &str, net: u8) -> Setup {
    require_kernel_datapath();
    let c = Netns::new(&format!("{pfx}c"));
    let s = Netns::new(&format!("{pfx}s"));
    for (i, ns) in [(1, &c), (2, &s)] {
        let _ = kernel_support::sh_try(&format!("ip link del {pfx}v{i} 2>/dev/null"));
        sh(&format!(
            "ip link add {pfx}v{i} type veth peer name eth0 netns {ns} && ip link set {pfx}v{i} up && \
             ip -n {ns} link set eth0 address 02:00:00:00:{net:02x}:0{i} up && \
             ip -n {ns} addr add 10.8.{net}.{i}/24 dev eth0",
            ns = ns.0
        ));
    }
    let mut d = Dpif::open().unwrap();
    let info = d.dp_create(dp, 0).unwrap();
    let guard = DpGuard {
        name: dp.into(),
        netns: None,
    };
    let mut port = |name: String| {
        d.vport_add(
            info.ifindex,
            &VportSpec {
                name,
                kind: VportType::Netdev,
                port_no: None,
                upcall_pids: vec![0],
            },
        )
        .unwrap()
        .port_no
    };
    let a = port(format!("{pfx}v1"));
    let b = port(format!("{pfx}v2"));
    Setup {
        _ns: (c, s),
        _dp: guard,
        d,
        ifindex: info.ifindex,
        a,
        b,
    }
}

fn arp_flows(a: u32, b: u32) -> Vec<(String, String)> {
    vec![
        (
            format!("recirc_id(0),in_port({a}),eth(),eth_type(0x0806),arp()"),
            format!("{b}"),
        ),
        (
            format!("recirc_id(0),in_port({b}),eth(),eth_type(0x0806),arp()"),
            format!("{a}"),
        ),
    ]
}

/// A one-shot TCP server in `ns` on `bind`; returns the peer and local address it saw.
fn serve_once(ns: &str, bind: &'static str) -> std::thread::JoinHandle<(SocketAddr, SocketAddr)> {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        kernel_support::in_netns(&ns, move || {
            let l = TcpListener::bind(bind).unwrap();
            tx.send(()).unwrap();
            let (mut s, peer) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").unwrap();
            (peer, s.local_addr().unwrap())
        })
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("server did not start");
    h
}

/// Connects from `ns` to `to`, sends "ping", expects "pong".
fn client(ns: &str, to: &'static str) -> std::io::Result<SocketAddr> {
    kernel_support::in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        assert_eq!(&buf, b"pong");
        s.peer_addr()
    })
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn ct_commit_in_a_zone_passes_tcp_and_replies_match_established() {
    let mut s = setup("kct", "kc", 3);
    let (a, b) = (s.a, s.b);
    let mut flows = arp_flows(a, b);
    flows.extend([
        (format!("recirc_id(0),in_port({a}),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(),tcp_flags(0/0)"), "ct(commit,zone=5),recirc(0x1)".to_string()),
        (format!("recirc_id(0x1),in_port({a}),eth(),eth_type(0x0800),ipv4(frag=no)"), format!("{b}")),
        (format!("recirc_id(0),in_port({b}),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(),tcp_flags(0/0)"), "ct(zone=5),recirc(0x2)".to_string()),
        (format!("recirc_id(0x2),in_port({b}),ct_state(+est+trk),eth(),eth_type(0x0800),ipv4(frag=no)"), format!("{a}")),
        // A new connection from the server side is dropped (an empty action list).
        (format!("recirc_id(0x2),in_port({b}),ct_state(+new+trk),eth(),eth_type(0x0800),ipv4(frag=no)"), "drop".to_string()),
    ]);
    install(&mut s.d, s.ifindex, &flows);
    let srv = serve_once("kcs", "10.8.3.2:7000");
    let peer = client("kcc", "10.8.3.2:7000").expect("TCP through ct(commit,zone=5) failed");
    assert_eq!(peer.to_string(), "10.8.3.2:7000");
    let (seen, _) = srv.join().unwrap();
    assert_eq!(seen.ip().to_string(), "10.8.3.1");
    let est = established_packets(&mut s.d, s.ifindex, "+est+trk");
    assert!(
        est >= 2,
        "replies went through the ct_state(+est+trk) flow: {est} packets"
    );
    // The other direction is not allowed to open a connection.
    let _srv2 = std::thread::spawn(|| {
        kernel_support::in_netns("kcc", || {
            let l = TcpListener::bind("10.8.3.1:7001").unwrap();
            l.set_nonblocking(true).unwrap();
            std::thread::sleep(Duration::from_secs(6));
            l.accept().is_ok()
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let back = client("kcs", "10.8.3.1:7001");
    assert!(
        back.is_err(),
        "a connection initiated by the server side must be dropped"
    );
    assert!(established_packets(&mut s.d, s.ifindex, "+new+trk") >= 1);
}

/// Packets counted by the flows whose match prints a ct_state containing `state`.
fn established_packets(d: &mut Dpif, ifindex: i32, state: &str) -> u64 {
    d.flow_dump(ifindex)
        .unwrap()
        .iter()
        .filter(|e| {
            let k = odp::decode_key(&e.key).unwrap();
            let m = e
                .mask
                .as_ref()
                .map(|m| odp::decode_key(m).unwrap())
                .unwrap_or_default();
            odp::MatchDisplay(&k, &m)
                .to_string()
                .contains(&format!("ct_state({state})"))
        })
        .map(|e| e.stats.packets)
        .sum()
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn ct_nat_sends_a_vip_to_a_backend_and_translates_replies() {
    let mut s = setup("knat", "kn", 4);
    let (a, b) = (s.a, s.b);
    // The client reaches the VIP on-link through the backend's MAC, as a router would send it.
    sh("ip -n knc route add 10.96.0.10/32 dev eth0 && \
        ip -n knc neigh replace 10.96.0.10 lladdr 02:00:00:00:04:02 dev eth0 nud permanent");
    let mut flows = arp_flows(a, b);
    flows.extend([
        (
            format!("recirc_id(0),in_port({a}),eth(),eth_type(0x0800),ipv4(dst=10.96.0.10,proto=6,frag=no),tcp(dst=80),tcp_flags(0/0)"),
            // An address in nat(dst=..) needs commit.
            "ct(commit,zone=7,nat(dst=10.8.4.2:8080)),recirc(0x3)".to_string(),
        ),
        (format!("recirc_id(0x3),in_port({a}),eth(),eth_type(0x0800),ipv4(frag=no)"), format!("{b}")),
        (format!("recirc_id(0),in_port({b}),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(),tcp_flags(0/0)"), "ct(zone=7,nat),recirc(0x4)".to_string()),
        (format!("recirc_id(0x4),in_port({b}),ct_state(+est+trk),eth(),eth_type(0x0800),ipv4(frag=no)"), format!("{a}")),
    ]);
    install(&mut s.d, s.ifindex, &flows);
    let srv = serve_once("kns", "10.8.4.2:8080");
    let peer = client("knc", "10.96.0.10:80").expect("TCP to the VIP failed");
    // The client saw the VIP answer: the replies were translated back.
    assert_eq!(peer.to_string(), "10.96.0.10:80");
    let (seen_peer, seen_local) = srv.join().unwrap();
    assert_eq!(seen_peer.ip().to_string(), "10.8.4.1");
    assert_eq!(seen_local.to_string(), "10.8.4.2:8080");
}
