//! Kernel datapath: two network namespaces on one datapath ping each other through flows
//! installed with odp, and a packet without a flow comes up as a MISS upcall with the right
//! key and is delivered by `execute`.

mod kernel_support;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use kernel_support::{DpGuard, Netns, require_kernel_datapath, sh};
use odp::dpif::{Dpif, FlowId, FlowPut, PutMode, UpcallMode, VportSpec, VportType};
use odp::upcall::{UpcallKind, UpcallSocket};
use odp::{Action, FlowKey, KeyArp, KeyEthernet, KeyIpv4};

fn enc_key(k: &FlowKey) -> Vec<u8> {
    let mut b = Vec::new();
    odp::encode_key(k, &mut b).expect("encode key");
    b
}

fn enc_actions(a: &[Action]) -> Vec<u8> {
    let mut b = Vec::new();
    odp::encode_actions(a, &mut b).expect("encode actions");
    b
}

/// `in_port(IN),eth(),eth_type(ET),arp()|ipv4()` -> output(OUT). The kernel insists on the
/// L3 attribute its Ethertype implies ("Missing key"), even when its mask is all zero.
fn l2_flow(in_port: u32, eth_type: u16, out: u32) -> FlowPut {
    let mut key = FlowKey {
        in_port: Some(in_port),
        eth: Some(KeyEthernet::default()),
        eth_type: Some(eth_type),
        ..FlowKey::default()
    };
    let mut mask = FlowKey {
        in_port: Some(u32::MAX),
        eth: Some(KeyEthernet::default()),
        eth_type: Some(0xffff),
        ..FlowKey::default()
    };
    if eth_type == 0x0806 {
        key.arp = Some(KeyArp::default());
        mask.arp = Some(KeyArp::default());
    } else {
        key.ipv4 = Some(KeyIpv4::default());
        mask.ipv4 = Some(KeyIpv4::default());
    }
    FlowPut {
        key: enc_key(&key),
        mask: Some(enc_key(&mask)),
        actions: enc_actions(&[Action::Output(out)]),
        ufid: None,
        clear: false,
    }
}

struct Pair {
    _ns: (Netns, Netns),
    _dp: DpGuard,
    ifindex: i32,
    ports: (u32, u32),
}

/// Datapath `dp` with two veths whose other ends are 10.9.N.1/.2 in namespaces `pfx`1/2.
fn setup(dp: &str, pfx: &str, net: u8, upcall_pid: u32, d: &mut Dpif) -> Pair {
    setup_mode(dp, pfx, net, upcall_pid, d, UpcallMode::PerCpu)
}

fn setup_mode(
    dp: &str,
    pfx: &str,
    net: u8,
    upcall_pid: u32,
    d: &mut Dpif,
    mode: UpcallMode,
) -> Pair {
    let n1 = Netns::new(&format!("{pfx}1"));
    let n2 = Netns::new(&format!("{pfx}2"));
    for (i, ns) in [(1, &n1), (2, &n2)] {
        let _ = kernel_support::sh_try(&format!("ip link del {pfx}v{i} 2>/dev/null"));
        sh(&format!(
            "ip link add {pfx}v{i} type veth peer name eth0 netns {ns} && ip link set {pfx}v{i} up && \
             ip -n {ns} link set eth0 address 02:00:00:00:{net:02x}:0{i} up && \
             ip -n {ns} addr add 10.9.{net}.{i}/24 dev eth0",
            ns = ns.0
        ));
    }
    let info = match mode {
        UpcallMode::PerCpu => d.dp_create(dp, upcall_pid),
        UpcallMode::PerVport => d.dp_create_per_vport(dp, upcall_pid),
    }
    .expect("create datapath");
    let guard = DpGuard {
        name: dp.into(),
        netns: None,
    };
    let mut ports = [0u32; 2];
    for i in 1..=2 {
        let v = d
            .vport_add(
                info.ifindex,
                &VportSpec {
                    name: format!("{pfx}v{i}"),
                    kind: VportType::Netdev,
                    port_no: None,
                    upcall_pids: vec![upcall_pid],
                },
            )
            .expect("add vport");
        ports[i - 1] = v.port_no;
    }
    Pair {
        _ns: (n1, n2),
        _dp: guard,
        ifindex: info.ifindex,
        ports: (ports[0], ports[1]),
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn two_namespaces_ping_through_flows_installed_by_odp() {
    require_kernel_datapath();
    let mut d = Dpif::open().unwrap();
    let p = setup("kfwd", "kf", 1, 0, &mut d);
    let (a, b) = p.ports;
    // The IPv4 flows carry UFIDs, the ARP flows none.
    let with_ufid = |mut f: FlowPut, u: u8| {
        f.ufid = Some([u; 16]);
        f
    };
    let flows = vec![
        l2_flow(a, 0x0806, b),
        l2_flow(b, 0x0806, a),
        with_ufid(l2_flow(a, 0x0800, b), 1),
        with_ufid(l2_flow(b, 0x0800, a), 2),
    ];
    let res = d
        .flow_put_batch(p.ifindex, &flows, PutMode::Create)
        .unwrap();
    assert!(
        res.iter().all(|r| r.is_ok()),
        "kernel refused a flow: {res:?}"
    );
    let out = sh("ip netns exec kf1 ping -c 3 -i 0.2 -W 5 10.9.1.2");
    assert!(out.contains("3 received"), "{out}");
    let dumped = d.flow_dump(p.ifindex).unwrap();
    assert_eq!(dumped.len(), 4);
    let ipv4_pkts: u64 = dumped
        .iter()
        .filter(|f| {
            let k = odp::decode_key(&f.key).unwrap();
            k.eth_type == Some(0x0800)
        })
        .map(|f| f.stats.packets)
        .sum();
    assert!(
        ipv4_pkts >= 6,
        "3 echo requests and 3 replies went through the ipv4 flows, counted {ipv4_pkts}"
    );
    // A stats dump leaves out the key, mask and actions of the flows with a UFID, with the
    // same counters; a flow without one keeps its key, which names it.
    let terse = d.flow_stats_dump(p.ifindex).unwrap();
    assert_eq!(terse.len(), 4);
    for t in &terse {
        match t.ufid {
            Some(u) => {
                assert!(
                    t.key.is_empty() && t.mask.is_none() && t.actions.is_empty(),
                    "a stats dump carried more than the UFID and counters: {t:?}"
                );
                let full = dumped
                    .iter()
                    .find(|f| f.ufid == Some(u))
                    .expect("same UFID");
                assert_eq!(
                    t.stats.packets, full.stats.packets,
                    "{t:?} against {full:?}"
                );
            }
            None => assert!(
                !t.key.is_empty() && t.actions.is_empty(),
                "a flow without a UFID must keep its key only: {t:?}"
            ),
        }
    }
    assert_eq!(terse.iter().filter(|t| t.ufid.is_some()).count(), 2);
    // The flows' `used` stamps are on the clock odp reads: the pings were just now.
    let now = odp::dpif::monotonic_ms().unwrap();
    for f in dumped.iter().filter(|f| f.ufid.is_some()) {
        let used = f
            .stats
            .used_ms
            .expect("a flow that forwarded has been used");
        assert!(
            used <= now && now - used < 10_000,
            "used {used} ms against monotonic_ms {now}"
        );
    }
    // Creating an existing flow fails; create-or-modify replaces it.
    let again = d
        .flow_put(p.ifindex, &flows[0], PutMode::Create)
        .unwrap_err();
    assert_eq!(again.errno(), Some(libc::EEXIST));
    d.flow_put(p.ifindex, &flows[0], PutMode::CreateOrModify)
        .unwrap();
    d.flow_flush(p.ifindex).unwrap();
    assert!(d.flow_dump(p.ifindex).unwrap().is_empty());
    let (ok, _, _) = kernel_support::sh_try("ip netns exec kf1 ping -c 1 -W 1 10.9.1.2");
    assert!(
        !ok,
        "with no flows and nobody handling upcalls the ping must fail"
    );
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_packet_without_a_flow_is_a_miss_upcall_and_execute_delivers_it() {
    require_kernel_datapath();
    let mut d = Dpif::open().unwrap();
    let mut up = UpcallSocket::open(d.families()).unwrap();
    let p = setup("kmiss", "km", 2, up.pid(), &mut d);
    let info = d.dp_get("kmiss").unwrap();
    // Kernel 6.1 has per-CPU dispatch; the datapath must have accepted it.
    assert_eq!(
        info.upcall_mode(),
        UpcallMode::PerCpu,
        "features {:#x}",
        info.user_features
    );
    let (a, b) = p.ports;
    // A static neighbour so the first packet is the UDP datagram itself, not ARP.
    sh("ip -n km1 neigh replace 10.9.2.2 lladdr 02:00:00:00:02:02 dev eth0 nud permanent");
    let rx = std::thread::spawn(|| {
        kernel_support::in_netns("km2", || {
            let s = UdpSocket::bind("10.9.2.2:5000").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = s
                .recv_from(&mut buf)
                .expect("the executed packet never arrived");
            (buf[..n].to_vec(), from)
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    kernel_support::in_netns("km1", || {
        let s = UdpSocket::bind("10.9.2.1:4000").unwrap();
        s.send_to(b"weft-miss", "10.9.2.2:5000").unwrap();
    });
    let u = loop {
        let u = up
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .expect("no upcall arrived");
        let k = odp::decode_key(&u.key).unwrap();
        // IPv6 router solicitations and the like may come up too; wait for ours.
        if k.eth_type == Some(0x0800) {
            break u;
        }
    };
    assert_eq!(u.kind, UpcallKind::Miss);
    assert_eq!(u.dp_ifindex, p.ifindex);
    let k = odp::decode_key(&u.key).unwrap();
    assert_eq!(k.in_port, Some(a));
    let eth = k.eth.unwrap();
    assert_eq!(eth.src, [2, 0, 0, 0, 2, 1]);
    assert_eq!(eth.dst, [2, 0, 0, 0, 2, 2]);
    let ip: KeyIpv4 = k.ipv4.unwrap();
    assert_eq!(ip.src, Ipv4Addr::new(10, 9, 2, 1));
    assert_eq!(ip.dst, Ipv4Addr::new(10, 9, 2, 2));
    assert_eq!(ip.proto, 17);
    let udp = k.udp.unwrap();
    assert_eq!((udp.src, udp.dst), (4000, 5000));
    assert!(u.packet.windows(9).any(|w| w == b"weft-miss"));
    d.execute(
        p.ifindex,
        &u.packet,
        &u.key,
        &enc_actions(&[Action::Output(b)]),
    )
    .unwrap();
    let (payload, from) = rx.join().unwrap();
    assert_eq!(payload, b"weft-miss");
    assert_eq!(from.to_string(), "10.9.2.1:4000");
    let st = d.dp_get("kmiss").unwrap().stats;
    assert!(st.missed >= 1, "{st:?}");
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn flows_by_ufid_get_modify_delete_and_weftctl_agrees() {
    require_kernel_datapath();
    let mut d = Dpif::open().unwrap();
    let _ = d.dp_delete("kufid");
    let dp = d.dp_create("kufid", 0).unwrap();
    let _g = DpGuard {
        name: "kufid".into(),
        netns: None,
    };
    let mut f = l2_flow(1, 0x0800, 2);
    let ufid: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    f.ufid = Some(ufid);
    d.flow_put(dp.ifindex, &f, PutMode::Create).unwrap();
    let got = d.flow_get(dp.ifindex, &FlowId::Ufid(ufid)).unwrap();
    assert_eq!(got.ufid, Some(ufid));
    assert_eq!(
        odp::decode_actions(&got.actions).unwrap(),
        vec![Action::Output(2)]
    );
    // Modify replaces the actions of the existing flow; it does not create one.
    let mut g = f.clone();
    g.actions = enc_actions(&[Action::Output(3)]);
    d.flow_put(dp.ifindex, &g, PutMode::Modify).unwrap();
    let got = d.flow_get(dp.ifindex, &FlowId::Ufid(ufid)).unwrap();
    assert_eq!(
        odp::decode_actions(&got.actions).unwrap(),
        vec![Action::Output(3)]
    );
    // Kernel fact: a flow installed with a UFID is found only by its UFID, not by its key.
    let e = d
        .flow_get(dp.ifindex, &FlowId::Key(f.key.clone()))
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT));
    let other = l2_flow(7, 0x0800, 2);
    let e = d.flow_put(dp.ifindex, &other, PutMode::Modify).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT));
    // weftctl sees the same flow by UFID, modifies it and deletes it.
    let w = kernel_support::weftctl();
    let u = "ufid:78563412-0403-0201-0807-06050c0b0a09";
    let text = sh(&format!("{w} dp get-flow kufid {u}"));
    assert!(
        text.starts_with(&format!(
            "{u}, in_port(1),eth(),eth_type(0x0800), packets:0"
        )),
        "{text}"
    );
    assert!(text.trim_end().ends_with("actions:3"), "{text}");
    sh(&format!(
        "{w} dp mod-flow kufid '{u},in_port(1),eth(),eth_type(0x0800),ipv4()' 4"
    ));
    assert!(sh(&format!("{w} dp dump-flows -m kufid")).contains(&format!("{u}, in_port(1)")));
    assert!(sh(&format!("{w} dp dump-flows kufid")).contains("actions:4"));
    sh(&format!("{w} dp del-flow kufid {u}"));
    assert!(d.flow_dump(dp.ifindex).unwrap().is_empty());
    // Without a UFID, the key finds it.
    d.flow_put(dp.ifindex, &l2_flow(1, 0x0800, 2), PutMode::Create)
        .unwrap();
    sh(&format!(
        "{w} dp del-flow kufid 'in_port(1),eth(),eth_type(0x0800),ipv4()'"
    ));
    assert!(d.flow_dump(dp.ifindex).unwrap().is_empty());
    let e = d.flow_del(dp.ifindex, &FlowId::Ufid(ufid)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT));
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn per_vport_upcall_pids_deliver_misses_to_the_vports_socket() {
    require_kernel_datapath();
    let mut d = Dpif::open().unwrap();
    let mut up = UpcallSocket::open(d.families()).unwrap();
    // A datapath without per-CPU dispatch, as on kernels older than 5.16.
    let p = setup_mode("kvpid", "kp", 5, 0, &mut d, UpcallMode::PerVport);
    let info = d.dp_get("kvpid").unwrap();
    assert_eq!(info.upcall_mode(), UpcallMode::PerVport);
    let (a, _) = p.ports;
    let v = d.vport_set_upcall_pids(p.ifindex, a, &[up.pid()]).unwrap();
    assert_eq!(v.upcall_pids, vec![up.pid()]);
    sh("ip -n kp1 neigh replace 10.9.5.2 lladdr 02:00:00:00:05:02 dev eth0 nud permanent");
    kernel_support::in_netns("kp1", || {
        let s = UdpSocket::bind("10.9.5.1:4000").unwrap();
        s.send_to(b"weft-vport", "10.9.5.2:5000").unwrap();
    });
    let u = loop {
        let u = up
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .expect("no upcall arrived");
        if odp::decode_key(&u.key).unwrap().eth_type == Some(0x0800) {
            break u;
        }
    };
    assert_eq!(odp::decode_key(&u.key).unwrap().in_port, Some(a));
}
