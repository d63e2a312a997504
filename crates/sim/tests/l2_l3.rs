//! Table-driven tests of bridging and routing: packet -> actions (ovs-dpctl text), mask, tags.

mod common;

use common::{Row, check, icmp_type_code, ip, run, two_bridges};
use sim::fixtures::pkt;
use sim::{DropReason, Fields, Tag, Verdict};

#[test]
fn bridging() {
    let b = two_bridges();
    let t = b.build();
    let (p1, p2, p3) = (b.mac("p1"), b.mac("p2"), b.mac("p3"));
    let unknown = [2, 0, 0, 0, 0x99, 0x99];
    let mut bcast_udp = pkt::udp(2, p1, [0xff; 6], "0.0.0.0", "255.255.255.255", 68, 67);
    bcast_udp.ip_ttl = 1;
    let rows = vec![
        Row {
            name: "known local MAC: output to its vport",
            pkt: pkt::udp(2, p1, p2, "10.0.1.11", "10.0.1.12", 1000, 53),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:04)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", p2),
                Tag::port("p2"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "known remote MAC: tunnel with the port's key to its host",
            pkt: pkt::tcp(2, p1, p3, "10.0.1.11", "10.0.1.13", 40000, 80),
            bytes: vec![],
            actions: "set(tunnel(tun_id=0x5,dst=192.168.0.2,ttl=64,tp_dst=4789,flags(df|key))),1",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:05)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", p3),
                Tag::port("p3"),
                Tag::host("h2"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "unknown unicast: flooded to local ports only",
            pkt: pkt::udp(2, p1, unknown, "10.0.1.11", "10.0.1.99", 1000, 53),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:99:99)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", unknown),
                Tag::port("p2"),
            ],
            verdict: Verdict::Flood,
        },
        Row {
            name: "broadcast IPv4 (DHCP discover): flooded to local ports",
            pkt: bcast_udp,
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=ff:ff:ff:ff:ff:ff),eth_type(0x0800)",
            tags: vec![Tag::port("p1"), Tag::device("b1"), Tag::port("p2")],
            verdict: Verdict::Flood,
        },
        Row {
            name: "ARP request for a known port IP: answered, not flooded, not installed",
            pkt: pkt::arp_request(2, p1, "10.0.1.11", "10.0.1.12"),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(tip=10.0.1.12,op=1)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::ip("b1", ip("10.0.1.12")),
            ],
            verdict: Verdict::Consumed,
        },
        Row {
            name: "ARP request for the gateway: answered with the router port MAC",
            pkt: pkt::arp_request(2, p1, "10.0.1.11", "10.0.1.1"),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(tip=10.0.1.1,op=1)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::ip("b1", ip("10.0.1.1")),
            ],
            verdict: Verdict::Consumed,
        },
        Row {
            name: "ARP request for an unknown IP: flooded locally",
            pkt: pkt::arp_request(2, p1, "10.0.1.11", "10.0.1.99"),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=ff:ff:ff:ff:ff:ff),eth_type(0x0806),arp(tip=10.0.1.99,op=1)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::ip("b1", ip("10.0.1.99")),
                Tag::port("p2"),
            ],
            verdict: Verdict::Flood,
        },
        Row {
            name: "frame to the ingress port's own MAC: dropped",
            pkt: pkt::udp(2, p2, p1, "10.0.1.12", "10.0.1.11", 1, 2),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:03)",
            tags: vec![Tag::port("p1"), Tag::device("b1"), Tag::mac("b1", p1)],
            verdict: Verdict::Drop(DropReason::Hairpin),
        },
        Row {
            name: "unknown datapath port: dropped on in_port alone",
            pkt: pkt::udp(99, p1, p2, "10.0.1.11", "10.0.1.12", 1, 2),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(99),eth()",
            tags: vec![],
            verdict: Verdict::Drop(DropReason::UnknownInPort),
        },
    ];
    check(&t, &rows);
}

#[test]
fn arp_reply_bytes() {
    let b = two_bridges();
    let t = b.build();
    let s = run(
        &t,
        pkt::arp_request(2, b.mac("p1"), "10.0.1.11", "10.0.1.12"),
        &[],
    );
    assert!(!s.install);
    assert_eq!(s.emit.len(), 1);
    assert_eq!(s.emit[0].port, 2, "reply goes back out the ingress vport");
    let r = &s.emit[0].packet;
    assert_eq!(&r[0..6], &b.mac("p1"), "to the requester");
    assert_eq!(&r[6..12], &b.mac("p2"), "from the owner of the address");
    assert_eq!(&r[12..14], &[0x08, 0x06]);
    assert_eq!(&r[20..22], &[0, 2], "opcode reply");
    assert_eq!(&r[22..28], &b.mac("p2"), "sender hardware address");
    assert_eq!(&r[28..32], &[10, 0, 1, 12], "sender protocol address");
    assert_eq!(&r[38..42], &[10, 0, 1, 11], "target protocol address");
}

#[test]
fn routing() {
    let b = two_bridges();
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let mut ttl1 = pkt::udp(2, p1, gw, "10.0.1.11", "10.0.2.14", 1000, 53);
    ttl1.ip_ttl = 1;
    let to_router = vec![
        Tag::port("p1"),
        Tag::device("b1"),
        Tag::mac("b1", gw),
        Tag::port("b1-r1"),
        Tag::port("r1-b1"),
        Tag::device("r1"),
    ];
    let with = |extra: Vec<Tag>| {
        let mut v = to_router.clone();
        v.extend(extra);
        v
    };
    let rows = vec![
        Row {
            name: "bridge -> router -> bridge: MAC rewrite, TTL decrement, output",
            pkt: pkt::udp(2, p1, gw, "10.0.1.11", "10.0.2.14", 1000, 53),
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv4(ttl=63)),4",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.2.14,ttl=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net"),
                Tag::ip("b2", ip("10.0.2.14")),
                Tag::port("r1-b2"),
                Tag::port("b2-r1"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("p4")),
                Tag::port("p4"),
            ]),
            verdict: Verdict::Forward,
        },
        Row {
            name: "TTL 1: ICMP time exceeded generated, packet dropped",
            pkt: ttl1,
            bytes: pkt::frame(&ttl1),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(ttl=1,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::TtlExceeded),
        },
        Row {
            name: "no route: ICMP net unreachable; only the bits that decided are matched",
            pkt: pkt::udp(2, p1, gw, "10.0.1.11", "172.16.5.5", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=128.0.0.0/128.0.0.0,ttl=64,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::NoRoute),
        },
        Row {
            name: "connected subnet but no such host: ICMP host unreachable",
            pkt: pkt::udp(2, p1, gw, "10.0.1.11", "10.0.2.99", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.2.99,ttl=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net"),
                Tag::ip("b2", ip("10.0.2.99")),
            ]),
            verdict: Verdict::Drop(DropReason::NextHopUnknown),
        },
        Row {
            name: "echo request to a router address: answered",
            pkt: pkt::ping(2, p1, gw, "10.0.1.11", "10.0.2.1"),
            bytes: pkt::frame(&pkt::ping(2, p1, gw, "10.0.1.11", "10.0.2.1")),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.2.1,proto=1,ttl=64,frag=no),icmp(type=8)",
            tags: with(vec![Tag::ip("r1", ip("10.0.2.1"))]),
            verdict: Verdict::Consumed,
        },
        Row {
            name: "UDP to a router address: dropped",
            pkt: pkt::udp(2, p1, gw, "10.0.1.11", "10.0.1.1", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.1.1,proto=17,ttl=64,frag=no)",
            tags: with(vec![Tag::ip("r1", ip("10.0.1.1"))]),
            verdict: Verdict::Drop(DropReason::ToRouter),
        },
        Row {
            name: "a non-IP ethertype reaching a router: not routed",
            pkt: Fields {
                eth_type: 0x88b5,
                ..pkt::udp(2, p1, gw, "10.0.1.11", "10.0.2.14", 1, 2)
            },
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x88b5)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::Unsupported),
        },
    ];
    check(&t, &rows);
}

#[test]
fn generated_icmp_replies_are_well_formed() {
    let b = two_bridges();
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let echo = pkt::ping(2, p1, gw, "10.0.1.11", "10.0.2.1");
    let s = run(&t, echo, &pkt::frame(&echo));
    let r = &s.emit[0].packet;
    assert_eq!(icmp_type_code(r), (0, 0), "echo reply");
    assert_eq!(&r[0..6], &p1);
    assert_eq!(&r[6..12], &gw);
    assert_eq!(&r[26..30], &[10, 0, 2, 1], "from the pinged address");
    assert_eq!(&r[30..34], &[10, 0, 1, 11]);
    assert!(r.ends_with(b"weftping"), "payload echoed");
    assert_eq!(sim::packets::checksum(&r[14..34]), 0, "IP checksum");
    assert_eq!(sim::packets::checksum(&r[34..]), 0, "ICMP checksum");

    let mut ttl1 = pkt::udp(2, p1, gw, "10.0.1.11", "10.0.2.14", 1000, 53);
    ttl1.ip_ttl = 1;
    let frame = pkt::frame(&ttl1);
    let s = run(&t, ttl1, &frame);
    let r = &s.emit[0].packet;
    assert_eq!(icmp_type_code(r), (11, 0), "time exceeded");
    assert_eq!(&r[26..30], &[10, 0, 1, 1], "from the ingress router port");
    assert_eq!(
        &r[42..42 + 28],
        &frame[14..14 + 28],
        "quotes header + 8 bytes"
    );
    assert_eq!(sim::packets::checksum(&r[34..]), 0);

    let nr = pkt::udp(2, p1, gw, "10.0.1.11", "172.16.5.5", 1000, 53);
    let s = run(&t, nr, &[]);
    assert_eq!(
        icmp_type_code(&s.emit[0].packet),
        (3, 0),
        "net unreachable without bytes"
    );
    let hu = pkt::udp(2, p1, gw, "10.0.1.11", "10.0.2.99", 1000, 53);
    let s = run(&t, hu, &pkt::frame(&hu));
    assert_eq!(
        icmp_type_code(&s.emit[0].packet),
        (3, 1),
        "host unreachable"
    );
    assert!(!s.install);
}

#[test]
fn admin_down_and_vlan() {
    let b = two_bridges().down("p2").vlan("b1", 100);
    let t = b.build();
    let (p1, p2) = (b.mac("p1"), b.mac("p2"));
    let mut tagged = pkt::udp(2, p1, b.mac("p3"), "10.0.1.11", "10.0.1.13", 1, 2);
    tagged.vlan_tci = 0x1000 | 100;
    let mut wrong = tagged;
    wrong.vlan_tci = 0x1000 | 200;
    let rows = vec![
        Row {
            name: "port down: dropped at egress",
            pkt: pkt::udp(2, p1, p2, "10.0.1.11", "10.0.1.12", 1, 2),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:04)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", p2),
                Tag::port("p2"),
            ],
            verdict: Verdict::Drop(DropReason::PortDown),
        },
        Row {
            name: "tagged with the bridge's VLAN: tag removed",
            pkt: tagged,
            bytes: vec![],
            actions: "pop_vlan,set(tunnel(tun_id=0x5,dst=192.168.0.2,ttl=64,tp_dst=4789,flags(df|key))),1",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:05),eth_type(0x8100),vlan(vid=100,pcp=0),encap()",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", b.mac("p3")),
                Tag::port("p3"),
                Tag::host("h2"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "tagged with another VLAN: dropped",
            pkt: wrong,
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(),eth_type(0x8100),vlan(vid=200,pcp=0),encap()",
            tags: vec![Tag::port("p1"), Tag::device("b1")],
            verdict: Verdict::Drop(DropReason::VlanMismatch),
        },
    ];
    check(&t, &rows);
}

#[test]
fn ecmp_spreads_flows_deterministically() {
    // r1 reaches 0.0.0.0/0 through two next hops on b2 (p4 and p5), weights 1:1.
    let b = two_bridges()
        .port("p5", "b2", "10.0.2.15")
        .route("gw-a", "r1", "0.0.0.0/0", Some("10.0.2.14"), "r1-b2", 1)
        .route("gw-b", "r1", "0.0.0.0/0", Some("10.0.2.15"), "r1-b2", 1);
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let mut seen = std::collections::BTreeMap::new();
    for sport in 1000..1200u16 {
        let f = pkt::tcp(2, p1, gw, "10.0.1.11", "8.8.8.8", sport, 443);
        let a = run(&t, f, &[]);
        let again = run(&t, f, &[]);
        assert_eq!(a.actions, again.actions, "deterministic");
        let m = a.fields_mask;
        assert_eq!(
            (m.tp_src, m.tp_dst, m.ipv4_src, m.ipv4_dst),
            (!0, !0, !0, !0),
            "5-tuple matched"
        );
        *seen.entry(a.actions_text()).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 2, "both paths used: {seen:?}");
    for n in seen.values() {
        assert!(*n > 60, "roughly even: {seen:?}");
    }
}

#[test]
fn routing_loop_between_routers_is_bounded() {
    // r1 and r2 send 0.0.0.0/0 to each other.
    let b = two_bridges()
        .router("r2")
        .router_link("r1", "r2", "192.0.2.1/30", "192.0.2.2/30")
        .route("r1-def", "r1", "0.0.0.0/0", Some("192.0.2.2"), "r1-r2", 1)
        .route("r2-def", "r2", "0.0.0.0/0", Some("192.0.2.1"), "r2-r1", 1);
    let t = b.build();
    let f = pkt::udp(
        2,
        b.mac("p1"),
        b.mac("r1-b1"),
        "10.0.1.11",
        "198.51.100.7",
        1,
        2,
    );
    let s = run(&t, f, &[]);
    assert_eq!(
        s.verdict,
        Verdict::Drop(DropReason::LoopDetected),
        "{}",
        s.trace
    );
    assert_eq!(s.actions_text(), "drop");
    assert!(s.tags.contains(&Tag::route("r1-def")) && s.tags.contains(&Tag::route("r2-def")));
}

#[test]
fn delivery_on_the_destination_host() {
    let b = two_bridges();
    // As seen from h2, where p3 is datapath port 7.
    let mut dp = sim::LocalDatapath {
        tunnel_port: 1,
        ..Default::default()
    };
    dp.vports.insert("wf-p3".into(), 7);
    let t2 = b.build_for("h2", &dp);
    let t1 = b.build();
    let f = pkt::tcp(
        2,
        b.mac("p1"),
        b.mac("p3"),
        "10.0.1.11",
        "10.0.1.13",
        40000,
        80,
    );
    let ingress = run(&t1, f, &[]);
    let d = ingress.delivery.expect("tunnelled");
    assert_eq!(
        (d.tun_id, d.host, d.conntrack),
        (5, ip("192.168.0.2"), false)
    );
    // The destination host's own flow for the tunnel key: output to the vport.
    let arrived = Fields {
        in_port: 1,
        tun_id: u64::from(d.tun_id),
        tun_dst: u32::from_be_bytes([192, 168, 0, 2]),
        ..f
    };
    let s = run(&t2, arrived, &[]);
    assert_eq!(s.actions_text(), "7");
    assert_eq!(s.verdict, Verdict::Forward);
    assert_eq!(s.tags, vec![Tag::port("p3")]);
    let m = s.fields_mask;
    assert_eq!(
        (m.in_port, m.tun_id, m.eth_dst),
        (!0, !0, [0; 6]),
        "matches in_port and key only"
    );
    // A key of no local port is dropped.
    let s = run(
        &t2,
        Fields {
            tun_id: 4,
            ..arrived
        },
        &[],
    );
    assert_eq!(s.verdict, Verdict::Drop(DropReason::PortUnbound));
    let s = run(
        &t2,
        Fields {
            tun_id: 0x77,
            ..arrived
        },
        &[],
    );
    assert_eq!(s.verdict, Verdict::Drop(DropReason::UnknownTunnelKey));
    assert!(!s.install, "no tag could remove it once the port appears");
    let s = run(&t2, Fields { in_port: 42, ..f }, &[]);
    assert_eq!(s.verdict, Verdict::Drop(DropReason::UnknownInPort));
    assert!(!s.install, "the port's binding may not have arrived yet");
}

#[test]
fn traced_tunnel_key_reaches_the_same_port() {
    let b = two_bridges();
    let mut dp = sim::LocalDatapath {
        tunnel_port: 1,
        ..Default::default()
    };
    dp.vports.insert("wf-p3".into(), 7);
    let t2 = b.build_for("h2", &dp);
    let f = Fields {
        in_port: 1,
        tun_id: u64::from(nsdb::tunnel_key::with_trace(5)),
        ..pkt::tcp(1, b.mac("p1"), b.mac("p3"), "10.0.1.11", "10.0.1.13", 1, 2)
    };
    assert_eq!(run(&t2, f, &[]).actions_text(), "7");
    let bad = Fields {
        tun_id: 1 << 30,
        ..f
    };
    assert_eq!(
        run(&t2, bad, &[]).verdict,
        Verdict::Drop(DropReason::UnknownTunnelKey)
    );
}

#[test]
fn trace_names_devices_and_rules_in_order() {
    let b = two_bridges()
        .chain(
            "c",
            nsdb::RuleAction::Accept,
            vec![nsdb::Rule {
                protocol: Some(nsdb::Protocol::Tcp),
                ..sim::fixtures::rule("only-tcp", nsdb::RuleAction::Drop)
            }],
        )
        .port_chains("p4", None, Some("c"));
    let t = b.build();
    let s = run(
        &t,
        pkt::udp(
            2,
            b.mac("p1"),
            b.mac("r1-b1"),
            "10.0.1.11",
            "10.0.2.14",
            1,
            2,
        ),
        &[],
    );
    let lines: Vec<&str> = s.trace.lines().map(str::trim).collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in trace:\n{}", s.trace))
    };
    let order = [
        pos("ingress port p1"),
        pos("bridge b1"),
        pos("router r1"),
        pos("route r1-b2-net via port r1-b2"),
        pos("bridge b2"),
        pos("chain c (of p4)"),
        pos("rule <default>: Accept"),
        pos("output to local port p4"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?}\n{}",
        s.trace
    );
    // Without the flag nothing is recorded.
    let mut quiet = sim::Simulation::new();
    sim::simulate_into(&t, &sim::PacketContext::new(s.fields_mask), &mut quiet);
    assert!(quiet.trace.is_empty());
}

#[test]
fn fields_round_trip_through_the_datapath_key() {
    let b = two_bridges();
    let mut tagged = pkt::tcp(2, b.mac("p1"), b.mac("p2"), "10.0.1.11", "10.0.1.12", 1, 2);
    tagged.vlan_tci = 0x1000 | 5;
    for f in [
        pkt::tcp(2, b.mac("p1"), b.mac("p2"), "10.0.1.11", "10.0.1.12", 1, 2),
        pkt::udp(2, b.mac("p1"), b.mac("p2"), "10.0.1.11", "10.0.1.12", 3, 4),
        pkt::ping(2, b.mac("p1"), b.mac("p2"), "10.0.1.11", "10.0.1.12"),
        pkt::arp_request(2, b.mac("p1"), "10.0.1.11", "10.0.1.12"),
        tagged,
        Fields {
            in_port: 1,
            tun_id: 5,
            tun_src: 1,
            tun_dst: 2,
            recirc_id: 1,
            ct_state: 0x21,
            ct_zone: 3,
            ..pkt::udp(1, b.mac("p1"), b.mac("p2"), "10.0.1.11", "10.0.1.12", 3, 4)
        },
    ] {
        assert_eq!(Fields::from_key(&f.to_key()), f);
    }
}

#[test]
fn snapshots_and_results_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<sim::Topology>();
    send_sync::<sim::Simulation>();
}

#[test]
fn two_routers_in_a_row() {
    // r1 -> r2 over a point-to-point link, r2 -> b3. Keys: b3=12 p6=13 r2=14 r1-r2=15
    // r2-r1=16 r2-b3=17 b3-r2=18; p6 is datapath port 5.
    let b = two_bridges()
        .bridge("b3")
        .port("p6", "b3", "10.0.3.16")
        .router("r2")
        .router_link("r1", "r2", "192.0.2.1/30", "192.0.2.2/30")
        .link("r2", "b3", "10.0.3.1/24")
        .route("to-b3", "r1", "10.0.3.0/24", Some("192.0.2.2"), "r1-r2", 1);
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let rows = vec![Row {
        name: "two hops: TTL decremented twice, MACs of the last hop",
        pkt: pkt::udp(2, p1, gw, "10.0.1.11", "10.0.3.16", 1000, 53),
        bytes: vec![],
        actions: "set(eth(src=02:00:00:00:00:11,dst=02:00:00:00:00:0d)),set(ipv4(ttl=62)),5",
        mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.3.16,ttl=64,frag=no)",
        tags: vec![
            Tag::port("p1"),
            Tag::device("b1"),
            Tag::mac("b1", gw),
            Tag::port("b1-r1"),
            Tag::port("r1-b1"),
            Tag::device("r1"),
            Tag::route("to-b3"),
            Tag::port("r1-r2"),
            Tag::port("r2-r1"),
            Tag::device("r2"),
            Tag::route("r2-b3-net"),
            Tag::ip("b3", ip("10.0.3.16")),
            Tag::port("r2-b3"),
            Tag::port("b3-r2"),
            Tag::device("b3"),
            Tag::mac("b3", b.mac("p6")),
            Tag::port("p6"),
        ],
        verdict: Verdict::Forward,
    }];
    check(&t, &rows);
}

#[test]
fn ecmp_row() {
    let b = two_bridges()
        .port("p5", "b2", "10.0.2.15")
        .route("gw-a", "r1", "0.0.0.0/0", Some("10.0.2.14"), "r1-b2", 1)
        .route("gw-b", "r1", "0.0.0.0/0", Some("10.0.2.15"), "r1-b2", 1);
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let f = pkt::tcp(2, p1, gw, "10.0.1.11", "8.8.8.8", 1000, 443);
    let s = run(&t, f, &[]);
    // The flow hash is part of the contract (every host must agree): this flow takes gw-b.
    let via_a = s.tags.contains(&Tag::route("gw-a"));
    assert!(!via_a, "the 5-tuple hash changed");
    let (route, mac, port) = if via_a {
        ("gw-a", b.mac("p4"), "p4")
    } else {
        ("gw-b", b.mac("p5"), "p5")
    };
    let actions: &'static str = if via_a {
        "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv4(ttl=63)),4"
    } else {
        "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:0c)),set(ipv4(ttl=63)),5"
    };
    let rows = vec![Row {
        name: "ECMP: the 5-tuple is matched exactly, one path is taken",
        pkt: f,
        bytes: vec![],
        actions,
        mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(src=10.0.1.11,dst=8.8.8.8,proto=6,ttl=64,frag=no),tcp(src=1000,dst=443)",
        tags: vec![
            Tag::port("p1"),
            Tag::device("b1"),
            Tag::mac("b1", gw),
            Tag::port("b1-r1"),
            Tag::port("r1-b1"),
            Tag::device("r1"),
            Tag::route(route),
            Tag::ip("b2", ip(if via_a { "10.0.2.14" } else { "10.0.2.15" })),
            Tag::port("r1-b2"),
            Tag::port("b2-r1"),
            Tag::device("b2"),
            Tag::mac("b2", mac),
            Tag::port(port),
        ],
        verdict: Verdict::Forward,
    }];
    check(&t, &rows);
}

#[test]
fn replies_to_tagged_frames_are_tagged() {
    let b = two_bridges().vlan("b1", 100);
    let t = b.build();
    let mut req = pkt::arp_request(2, b.mac("p1"), "10.0.1.11", "10.0.1.12");
    req.vlan_tci = 0x1000 | 100;
    let s = run(&t, req, &[]);
    assert_eq!(s.verdict, Verdict::Consumed);
    let r = &s.emit[0].packet;
    assert_eq!(
        &r[12..16],
        &[0x81, 0x00, 0x00, 100],
        "802.1Q tag with VID 100"
    );
    assert_eq!(&r[16..18], &[0x08, 0x06], "then the ARP reply");
    assert_eq!(r.len(), 46);
}
