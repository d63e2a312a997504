//! Table-driven tests of IPv6: neighbour discovery suppression on bridges, routing with
//! hop limit, MAC rewrite, ECMP and ICMPv6, and rules on IPv6 prefixes and ICMPv6 types.

mod common;

use common::{Row, check, ip, run, two_bridges};
use nsdb::{Protocol, Rule, RuleAction};
use sim::fixtures::{TopoBuilder, pkt, rule};
use sim::{DropReason, Fields, Tag, Verdict};

/// `two_bridges` with IPv6 addresses: p1..p4 are fd00:1::11..13 and fd00:2::14; the router
/// ports are fd00:1::1/64 and fd00:2::1/64, with connected routes `r1-b1-net6`, `r1-b2-net6`.
fn dual() -> TopoBuilder {
    two_bridges()
        .addr("p1", "fd00:1::11/128")
        .addr("p2", "fd00:1::12/128")
        .addr("p3", "fd00:1::13/128")
        .addr("p4", "fd00:2::14/128")
        .link6("r1", "b1", "fd00:1::1/64")
        .link6("r1", "b2", "fd00:2::1/64")
}

fn ip6(s: &str) -> u128 {
    u128::from(s.parse::<std::net::Ipv6Addr>().unwrap())
}

/// The ICMPv6 message of an Ethernet+IPv6 frame, after checking the frame's IPv6 header and
/// that the message's checksum verifies.
fn icmp6_of(frame: &[u8]) -> (u128, u128, u8, &[u8]) {
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "IPv6 frame");
    let ip = &frame[14..];
    assert_eq!(ip[0] >> 4, 6, "version 6");
    assert_eq!(ip[6], 58, "next header ICMPv6");
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    assert_eq!(ip.len(), 40 + len, "payload length matches");
    let src = u128::from_be_bytes(ip[8..24].try_into().unwrap());
    let dst = u128::from_be_bytes(ip[24..40].try_into().unwrap());
    let msg = &ip[40..];
    assert_eq!(
        sim::packets::icmp6_checksum(src, dst, msg),
        0,
        "ICMPv6 checksum verifies"
    );
    (src, dst, ip[7], msg)
}

#[test]
fn neighbour_discovery_suppression() {
    let b = dual();
    let t = b.build();
    let (p1, p2) = (b.mac("p1"), b.mac("p2"));
    let ns_p1 = vec![Tag::port("p1"), Tag::device("b1")];
    let with = |extra: Vec<Tag>| {
        let mut v = ns_p1.clone();
        v.extend(extra);
        v
    };
    let rows = vec![
        Row {
            name: "NS for a known port address: answered, not flooded, not installed",
            pkt: pkt::ns(2, p1, "fd00:1::11", "fd00:1::12"),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:ff:00:00:12),eth_type(0x86dd),ipv6(src=fd00:1::11,proto=58,frag=no),icmpv6(type=135,code=0),nd(target=fd00:1::12)",
            tags: with(vec![Tag::ip("b1", ip("fd00:1::12"))]),
            verdict: Verdict::Consumed,
        },
        Row {
            name: "NS for a port on another host: answered here too",
            pkt: pkt::ns(2, p1, "fd00:1::11", "fd00:1::13"),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:ff:00:00:13),eth_type(0x86dd),ipv6(src=fd00:1::11,proto=58,frag=no),icmpv6(type=135,code=0),nd(target=fd00:1::13)",
            tags: with(vec![Tag::ip("b1", ip("fd00:1::13"))]),
            verdict: Verdict::Consumed,
        },
        Row {
            name: "NS for the gateway: answered with the router port's MAC",
            pkt: pkt::ns(2, p1, "fd00:1::11", "fd00:1::1"),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:ff:00:00:01),eth_type(0x86dd),ipv6(src=fd00:1::11,proto=58,frag=no),icmpv6(type=135,code=0),nd(target=fd00:1::1)",
            tags: with(vec![Tag::ip("b1", ip("fd00:1::1"))]),
            verdict: Verdict::Consumed,
        },
        Row {
            name: "NS for an unknown target: flooded locally, source not read",
            pkt: pkt::ns(2, p1, "fd00:1::11", "fd00:1::99"),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:ff:00:00:99),eth_type(0x86dd),ipv6(proto=58,frag=no),icmpv6(type=135,code=0),nd(target=fd00:1::99)",
            tags: with(vec![Tag::ip("b1", ip("fd00:1::99")), Tag::port("p2")]),
            verdict: Verdict::Flood,
        },
        Row {
            name: "duplicate address detection (source ::): flooded, never answered",
            pkt: pkt::ns(2, p1, "::", "fd00:1::12"),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:ff:00:00:12),eth_type(0x86dd),ipv6(src=::,proto=58,frag=no),icmpv6(type=135,code=0),nd(target=fd00:1::12)",
            tags: with(vec![Tag::ip("b1", ip("fd00:1::12")), Tag::port("p2")]),
            verdict: Verdict::Flood,
        },
        Row {
            name: "NS with a code other than 0: not a solicitation, flooded, target not read",
            pkt: Fields {
                tp_dst: 1,
                ..pkt::ns(2, p1, "fd00:1::11", "fd00:1::12")
            },
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:ff:00:00:12),eth_type(0x86dd),ipv6(proto=58,frag=no),icmpv6(type=135,code=1)",
            tags: with(vec![Tag::port("p2")]),
            verdict: Verdict::Flood,
        },
        Row {
            name: "multicast that is not an NS (MLD report): flooded on type alone",
            pkt: pkt::ipv6(
                2,
                p1,
                [0x33, 0x33, 0, 0, 0, 0x16],
                "fd00:1::11",
                "ff02::16",
                58,
                143,
                0,
            ),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=33:33:00:00:00:16),eth_type(0x86dd),ipv6(proto=58,frag=no),icmpv6(type=143)",
            tags: with(vec![Tag::port("p2")]),
            verdict: Verdict::Flood,
        },
        Row {
            name: "unicast NS (reachability probe) to a known MAC: forwarded like any frame",
            pkt: Fields {
                eth_dst: p2,
                ipv6_dst: ip6("fd00:1::12"),
                ..pkt::ns(2, p1, "fd00:1::11", "fd00:1::12")
            },
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:04)",
            tags: with(vec![Tag::mac("b1", p2), Tag::port("p2")]),
            verdict: Verdict::Forward,
        },
    ];
    check(&t, &rows);
}

#[test]
fn nd_attribute_follows_the_icmpv6_type_as_in_the_kernel() {
    // The kernel puts OVS_KEY_ATTR_ND in the key of every NS and NA, whatever the code, and
    // rejects a flow whose key lacks it; the key the agent installs must carry it too.
    let p1 = [2, 0, 0, 0, 0, 3];
    for code in [0u16, 1] {
        let f = Fields {
            tp_dst: code,
            ..pkt::ns(2, p1, "fd00:1::11", "fd00:1::12")
        };
        let k = f.to_key();
        assert!(k.nd.is_some(), "code {code}: ND attribute present");
        assert_eq!(Fields::from_key(&k), f, "code {code}: key round trip");
    }
    let echo = pkt::ping6(2, p1, [2, 0, 0, 0, 0, 8], "fd00:1::11", "fd00:1::1");
    assert!(
        echo.to_key().nd.is_none(),
        "no ND attribute for other types"
    );
}

#[test]
fn neighbour_advertisement_bytes() {
    let b = dual();
    let t = b.build();
    let p1 = b.mac("p1");
    for (target, owner, router) in [("fd00:1::12", "p2", false), ("fd00:1::1", "r1-b1", true)] {
        let s = run(&t, pkt::ns(2, p1, "fd00:1::11", target), &[]);
        assert!(!s.install);
        assert_eq!(s.emit.len(), 1, "one advertisement");
        assert_eq!(s.emit[0].port, 2, "back out of the ingress vport");
        let f = &s.emit[0].packet;
        assert_eq!(&f[0..6], &p1, "to the solicitor");
        assert_eq!(&f[6..12], &b.mac(owner), "from the owner");
        let (src, dst, hlimit, msg) = icmp6_of(f);
        assert_eq!(src, ip6(target), "from the target address");
        assert_eq!(dst, ip6("fd00:1::11"), "to the solicitor's address");
        assert_eq!(hlimit, 255, "ND messages carry hop limit 255");
        assert_eq!(msg.len(), 32);
        assert_eq!((msg[0], msg[1]), (136, 0), "neighbour advertisement");
        let flags = if router { 0xe0 } else { 0x60 };
        assert_eq!(
            msg[4], flags,
            "solicited, override, router only for a router port"
        );
        assert_eq!(&msg[8..24], &ip6(target).to_be_bytes(), "target");
        assert_eq!(&msg[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&msg[26..32], &b.mac(owner));
    }
}

#[test]
fn routing() {
    let b = dual();
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
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
    let mut hl1 = pkt::udp6(2, p1, gw, "fd00:1::11", "fd00:2::14", 1000, 53);
    hl1.ip_ttl = 1;
    let echo = pkt::ping6(2, p1, gw, "fd00:1::11", "fd00:2::1");
    let nud = Fields {
        eth_dst: gw,
        ipv6_dst: ip6("fd00:1::1"),
        ..pkt::ns(2, p1, "fd00:1::11", "fd00:1::1")
    };
    let no_route = pkt::udp6(2, p1, gw, "fd00:1::11", "2001:db8::1", 1000, 53);
    let no_nh = pkt::udp6(2, p1, gw, "fd00:1::11", "fd00:2::99", 1000, 53);
    let rows = vec![
        Row {
            name: "bridge -> router -> bridge: MAC rewrite, hop limit decrement, output; the source is read only to rule out link-local",
            pkt: pkt::udp6(2, p1, gw, "fd00:1::11", "fd00:2::14", 1000, 53),
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv6(hlimit=63)),4",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fc00::/fe00::,dst=fd00:2::14,hlimit=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net6"),
                Tag::ip("b2", ip("fd00:2::14")),
                Tag::port("r1-b2"),
                Tag::port("b2-r1"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("p4")),
                Tag::port("p4"),
            ]),
            verdict: Verdict::Forward,
        },
        Row {
            name: "hop limit 1: ICMPv6 time exceeded, reads only the bits that rule out multicast",
            pkt: hl1,
            bytes: pkt::frame6(&hl1),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fc00::/fe00::,hlimit=1,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::TtlExceeded),
        },
        Row {
            name: "no route: ICMPv6 destination unreachable, one address bit decides",
            pkt: no_route,
            bytes: pkt::frame6(&no_route),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=::/8000::,hlimit=64,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::NoRoute),
        },
        Row {
            name: "next hop with no known MAC: ICMPv6 address unreachable",
            pkt: no_nh,
            bytes: pkt::frame6(&no_nh),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fc00::/fe00::,dst=fd00:2::99,hlimit=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net6"),
                Tag::ip("b2", ip("fd00:2::99")),
            ]),
            verdict: Verdict::Drop(DropReason::NextHopUnknown),
        },
        Row {
            name: "echo request to a router address: answered",
            pkt: echo,
            bytes: pkt::frame6(&echo),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fd00:2::1,proto=58,hlimit=64,frag=no),icmpv6(type=128)",
            tags: with(vec![Tag::ip("r1", ip("fd00:2::1"))]),
            verdict: Verdict::Consumed,
        },
        Row {
            name: "unicast NS to the router's address: answered by the router",
            pkt: nud,
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fd00:1::1,proto=58,hlimit=255,frag=no),icmpv6(type=135,code=0),nd(target=fd00:1::1)",
            tags: with(vec![Tag::ip("r1", ip("fd00:1::1"))]),
            verdict: Verdict::Consumed,
        },
        Row {
            name: "UDP to a router address: dropped",
            pkt: pkt::udp6(2, p1, gw, "fd00:1::11", "fd00:1::1", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fd00:1::1,proto=17,hlimit=64,frag=no)",
            tags: with(vec![Tag::ip("r1", ip("fd00:1::1"))]),
            verdict: Verdict::Drop(DropReason::ToRouter),
        },
        Row {
            name: "link-local destination: never forwarded",
            pkt: pkt::udp6(2, p1, gw, "fd00:1::11", "fe80::5", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fe80::/ffc0::,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::ToRouter),
        },
        Row {
            name: "link-local source: never forwarded; ten source bits decide, and the destination bits that ruled out the router's own /128",
            pkt: pkt::udp6(2, p1, gw, "fe80::11", "fd00:2::14", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fe80::/ffc0::,dst=fd00:2::10/ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0,hlimit=64,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::ToRouter),
        },
        Row {
            name: "multicast destination: never forwarded",
            pkt: pkt::udp6(2, p1, gw, "fd00:1::11", "ff02::1", 1000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=ff00::/ff00::,frag=no)",
            tags: to_router.clone(),
            verdict: Verdict::Drop(DropReason::ToRouter),
        },
    ];
    check(&t, &rows);
}

#[test]
fn generated_icmpv6_replies_are_well_formed() {
    let b = dual();
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));

    let echo = pkt::ping6(2, p1, gw, "fd00:1::11", "fd00:2::1");
    let frame = pkt::frame6(&echo);
    let s = run(&t, echo, &frame);
    assert!(!s.install, "every echo request needs its own reply");
    let r = &s.emit[0].packet;
    assert_eq!((&r[0..6], &r[6..12]), (&p1[..], &gw[..]), "MACs swapped");
    let (src, dst, _, msg) = icmp6_of(r);
    assert_eq!((src, dst), (ip6("fd00:2::1"), ip6("fd00:1::11")));
    assert_eq!((msg[0], msg[1]), (129, 0), "echo reply");
    assert_eq!(
        &msg[4..],
        &frame[14 + 40 + 4..],
        "identifier, sequence and data echoed"
    );

    for (dst_ip, hlimit, want) in [
        ("fd00:2::14", 1, (3, 0)),
        ("2001:db8::1", 64, (1, 0)),
        ("fd00:2::99", 64, (1, 3)),
    ] {
        let mut f = pkt::udp6(2, p1, gw, "fd00:1::11", dst_ip, 1000, 53);
        f.ip_ttl = hlimit;
        let frame = pkt::frame6(&f);
        let s = run(&t, f, &frame);
        assert!(!s.install);
        assert_eq!(s.emit.len(), 1, "{dst_ip}: one error");
        let (src, dst, _, msg) = icmp6_of(&s.emit[0].packet);
        assert_eq!(src, ip6("fd00:1::1"), "from the ingress router port");
        assert_eq!(dst, ip6("fd00:1::11"));
        assert_eq!((msg[0], msg[1]), want, "{dst_ip}");
        assert_eq!(&msg[8..], &frame[14..], "the offending packet is quoted");
    }

    // No error about an ICMPv6 error, nor to an unspecified source.
    let mut err = pkt::ipv6(2, p1, gw, "fd00:1::11", "2001:db8::1", 58, 1, 0);
    err.ip_ttl = 1;
    assert!(run(&t, err, &pkt::frame6(&err)).emit.is_empty());
    let anon = pkt::udp6(2, p1, gw, "::", "2001:db8::1", 1, 2);
    assert!(run(&t, anon, &pkt::frame6(&anon)).emit.is_empty());
}

#[test]
fn ecmp_spreads_ipv6_flows_deterministically() {
    let b = dual()
        .port("p5", "b2", "10.0.2.15")
        .addr("p5", "fd00:2::15/128")
        .route("gw-a", "r1", "::/0", Some("fd00:2::14"), "r1-b2", 1)
        .route("gw-b", "r1", "::/0", Some("fd00:2::15"), "r1-b2", 1);
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let mut seen = std::collections::BTreeMap::new();
    for sport in 1000..1200u16 {
        let f = pkt::tcp6(2, p1, gw, "fd00:1::11", "2001:db8::8", sport, 443);
        let a = run(&t, f, &[]);
        let again = run(&t, f, &[]);
        assert_eq!(a.actions, again.actions, "deterministic");
        let m = a.fields_mask;
        assert_eq!(
            (m.tp_src, m.tp_dst, m.ipv6_src, m.ipv6_dst),
            (!0, !0, !0, !0),
            "5-tuple matched"
        );
        *seen.entry(a.actions_text()).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 2, "both paths used: {seen:?}");
    for n in seen.values() {
        assert!(*n > 60, "roughly even: {seen:?}");
    }
    for k in seen.keys() {
        assert!(k.contains("set(ipv6(hlimit=63))"), "{k}");
    }
}

#[test]
fn rules_on_ipv6_prefixes_and_icmpv6_types() {
    let b = dual()
        .chain(
            "c6",
            RuleAction::Accept,
            vec![
                Rule {
                    protocol: Some(Protocol::Icmpv6),
                    icmp_type: Some(128),
                    src: net("fd00:1::/64"),
                    ..rule("no-ping-from-b1", RuleAction::Drop)
                },
                Rule {
                    protocol: Some(Protocol::Udp),
                    dst: net("fd00:2::14/128"),
                    dst_ports: Some((53, 53)),
                    ..rule("rej-dns", RuleAction::Reject)
                },
            ],
        )
        .port_chains("p4", None, Some("c6"));
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let path = vec![
        Tag::port("p1"),
        Tag::device("b1"),
        Tag::mac("b1", gw),
        Tag::port("b1-r1"),
        Tag::port("r1-b1"),
        Tag::device("r1"),
        Tag::route("r1-b2-net6"),
        Tag::ip("b2", ip("fd00:2::14")),
        Tag::port("r1-b2"),
        Tag::port("b2-r1"),
        Tag::device("b2"),
        Tag::mac("b2", b.mac("p4")),
        Tag::port("p4"),
        Tag::chain("c6"),
    ];
    let ping = pkt::ping6(2, p1, gw, "fd00:1::11", "fd00:2::14");
    let dns = pkt::udp6(2, p1, gw, "fd00:1::11", "fd00:2::14", 1000, 53);
    let rows = vec![
        Row {
            name: "ICMPv6 echo from the /64: dropped by type and prefix",
            pkt: ping,
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fd00:1::/ffff:ffff:ffff:ffff::,dst=fd00:2::14,proto=58,hlimit=64,frag=no),icmpv6(type=128)",
            tags: path.clone(),
            verdict: Verdict::Drop(DropReason::Acl),
        },
        Row {
            name: "UDP to the /128 port 53: rejected with ICMPv6 port unreachable",
            pkt: dns,
            bytes: pkt::frame6(&dns),
            actions: "drop",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fc00::/fe00::,dst=fd00:2::14,proto=17,hlimit=64,frag=no),udp(dst=53)",
            tags: path.clone(),
            verdict: Verdict::Rejected,
        },
        Row {
            name: "other UDP: accepted by the default",
            pkt: pkt::udp6(2, p1, gw, "fd00:1::11", "fd00:2::14", 1000, 80),
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv6(hlimit=63)),4",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fc00::/fe00::,dst=fd00:2::14,proto=17,hlimit=64,frag=no),udp(dst=80)",
            tags: path.clone(),
            verdict: Verdict::Forward,
        },
    ];
    check(&t, &rows);
    let s = run(&t, dns, &pkt::frame6(&dns));
    let (src, dst, _, msg) = icmp6_of(&s.emit[0].packet);
    assert_eq!((src, dst), (ip6("fd00:2::14"), ip6("fd00:1::11")));
    assert_eq!((msg[0], msg[1]), (1, 4), "port unreachable");
}

fn net(s: &str) -> Option<ipnet::IpNet> {
    Some(s.parse().unwrap())
}

#[test]
fn ipv6_vip_translates_with_an_ipv6_ct_nat() {
    // p5 joins b2 as a second member; lb6 has one healthy member of each family and one
    // unhealthy, so only fd00:2::14 can be chosen; lb6-empty has no healthy member.
    let b = dual()
        .port("p5", "b2", "10.0.2.15")
        .addr("p5", "fd00:2::15/128")
        .vip(
            "lb6",
            Some("r1"),
            "fd00:96::10",
            Protocol::Tcp,
            80,
            &[
                ("fd00:2::14", 8080, 1, true),
                ("fd00:2::15", 8080, 1, false),
                ("10.0.2.15", 8080, 1, true),
            ],
            false,
        )
        .vip(
            "lb6-empty",
            Some("r1"),
            "fd00:96::11",
            Protocol::Tcp,
            80,
            &[("fd00:2::14", 8080, 1, false)],
            false,
        );
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let to_vip = pkt::tcp6(2, p1, gw, "fd00:1::11", "fd00:96::10", 40000, 80);
    let tracked = |f: Fields, recirc: u32, st: u32| Fields {
        recirc_id: recirc,
        ct_state: st,
        ..f
    };
    let mut to_member = tracked(to_vip, sim::RECIRC_NAT, 0x20 | 0x01 | 0x80);
    to_member.ipv6_dst = ip6("fd00:2::14");
    to_member.tp_dst = 8080;
    let empty = tracked(
        pkt::tcp6(2, p1, gw, "fd00:1::11", "fd00:96::11", 40000, 80),
        sim::RECIRC_CT,
        0x21,
    );
    let router = vec![
        Tag::port("p1"),
        Tag::device("b1"),
        Tag::mac("b1", gw),
        Tag::port("b1-r1"),
        Tag::port("r1-b1"),
        Tag::device("r1"),
    ];
    let with = |extra: Vec<Tag>| {
        let mut v = router.clone();
        v.extend(extra);
        v
    };
    let rows = vec![
        Row {
            name: "first pass: the IPv6 VIP needs connection state",
            pkt: to_vip,
            bytes: vec![],
            actions: "ct(zone=3,nat),recirc(0x1)",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fd00:96::10,proto=6,frag=no),tcp(dst=80)",
            tags: with(vec![Tag::lb("lb6")]),
            verdict: Verdict::Recirculate,
        },
        // A tracked packet from a pod with an IPv6 address is checked for a hairpin reply
        // (-rpl-dnat: not one).
        Row {
            name: "new connection: DNAT to the healthy IPv6 member",
            pkt: tracked(to_vip, sim::RECIRC_CT, 0x21),
            bytes: vec![],
            actions: "ct(commit,zone=3,nat(dst=[fd00:2::14]:8080)),recirc(0x2)",
            mask: "recirc_id(0x1),in_port(2),ct_state(-rpl-dnat),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fd00::/ffff:fffe::,dst=fd00:96::10,proto=6,frag=no),tcp(dst=80)",
            tags: with(vec![Tag::lb("lb6")]),
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "after NAT: routed to the member and output",
            pkt: to_member,
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv6(hlimit=63)),4",
            mask: "recirc_id(0x2),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(src=fc00::/fe00::,dst=fd00:2::14,hlimit=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net6"),
                Tag::ip("b2", ip("fd00:2::14")),
                Tag::port("r1-b2"),
                Tag::port("b2-r1"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("p4")),
                Tag::port("p4"),
            ]),
            verdict: Verdict::Forward,
        },
        Row {
            name: "no healthy member: rejected",
            pkt: empty,
            bytes: pkt::frame6(&empty),
            actions: "drop",
            mask: "recirc_id(0x1),in_port(2),ct_state(-rpl-dnat),eth(dst=02:00:00:00:00:08),eth_type(0x86dd),ipv6(dst=fd00:96::11,proto=6,frag=no),tcp(dst=80)",
            tags: with(vec![Tag::lb("lb6-empty")]),
            verdict: Verdict::Rejected,
        },
    ];
    check(&t, &rows);
    let s = run(&t, empty, &pkt::frame6(&empty));
    let (_, _, _, msg) = icmp6_of(&s.emit[0].packet);
    assert_eq!((msg[0], msg[1]), (1, 4), "port unreachable");
}
