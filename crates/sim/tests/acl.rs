//! Table-driven tests of rule chains: order, jump and return, defaults, reject replies, and
//! conntrack state read from the port's zone across recirculation passes.

mod common;

use common::{Row, check, icmp_type_code, run, two_bridges};
use nsdb::{CtMatch, Protocol, Rule, RuleAction};
use sim::fixtures::{pkt, rule};
use sim::{DropReason, Fields, RECIRC_CT, RECIRC_DELIVERY, Tag, Verdict};

const TRK: u32 = 0x20;
const NEW: u32 = 0x01;
const EST: u32 = 0x02;

fn net(s: &str) -> Option<ipnet::IpNet> {
    Some(s.parse().unwrap())
}

#[test]
fn chains_order_jump_return_default_reject() {
    let b = two_bridges()
        .chain(
            "c-in",
            RuleAction::Drop,
            vec![
                Rule {
                    protocol: Some(Protocol::Tcp),
                    dst_ports: Some((22, 22)),
                    ..rule("no-ssh", RuleAction::Drop)
                },
                Rule {
                    src: net("10.0.1.0/24"),
                    ..rule("to-sub", RuleAction::Jump("c-sub".into()))
                },
                Rule {
                    protocol: Some(Protocol::Tcp),
                    dst_ports: Some((80, 80)),
                    ..rule("web", RuleAction::Accept)
                },
            ],
        )
        .chain(
            "c-sub",
            RuleAction::Drop,
            vec![
                Rule {
                    protocol: Some(Protocol::Udp),
                    dst_ports: Some((53, 53)),
                    ..rule("rej-dns", RuleAction::Reject)
                },
                Rule {
                    protocol: Some(Protocol::Tcp),
                    dst_ports: Some((25, 25)),
                    ..rule("rej-smtp", RuleAction::Reject)
                },
                rule("back", RuleAction::Return),
            ],
        )
        .port_chains("p2", Some("c-in"), None);
    let t = b.build();
    let (p1, p2) = (b.mac("p1"), b.mac("p2"));
    let chain_tags = |sub: bool| {
        let mut v = vec![Tag::port("p2"), Tag::chain("c-in")];
        if sub {
            v.push(Tag::chain("c-sub"));
        }
        v
    };
    let fwd = |mut v: Vec<Tag>| {
        v.extend([Tag::device("b1"), Tag::mac("b1", p1), Tag::port("p1")]);
        v
    };
    let rows = vec![
        Row {
            name: "first matching rule wins (ssh dropped before the jump)",
            pkt: pkt::tcp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 22),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(3),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(dst=22)",
            tags: chain_tags(false),
            verdict: Verdict::Drop(DropReason::Acl),
        },
        Row {
            name: "jump, then the sub-chain rejects UDP with an ICMP port unreachable",
            pkt: pkt::udp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 53),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(3),eth(),eth_type(0x0800),ipv4(src=10.0.1.0/255.255.255.0,proto=17,frag=no),udp(dst=53)",
            tags: chain_tags(true),
            verdict: Verdict::Rejected,
        },
        Row {
            name: "return from the sub-chain, then a later rule of the caller accepts",
            pkt: pkt::tcp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 80),
            bytes: vec![],
            actions: "2",
            mask: "recirc_id(0),in_port(3),eth(dst=02:00:00:00:00:03),eth_type(0x0800),ipv4(src=10.0.1.0/255.255.255.0,proto=6,frag=no),tcp(dst=80)",
            tags: fwd(chain_tags(true)),
            verdict: Verdict::Forward,
        },
        Row {
            name: "return, no later rule matches: the chain default drops",
            pkt: pkt::tcp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 443),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(3),eth(),eth_type(0x0800),ipv4(src=10.0.1.0/255.255.255.0,proto=6,frag=no),tcp(dst=443)",
            tags: chain_tags(true),
            verdict: Verdict::Drop(DropReason::Acl),
        },
        Row {
            name: "source outside the jump's prefix: default drop; only the 13 bits that differ are matched",
            pkt: pkt::tcp(3, p2, p1, "10.9.9.9", "10.0.1.11", 5000, 443),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0),in_port(3),eth(),eth_type(0x0800),ipv4(src=10.8.0.0/255.248.0.0,proto=6,frag=no),tcp(dst=443)",
            tags: chain_tags(false),
            verdict: Verdict::Drop(DropReason::Acl),
        },
    ];
    check(&t, &rows);

    // The generated rejects.
    let f = pkt::udp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 53);
    let s = run(&t, f, &pkt::frame(&f));
    assert!(!s.install, "every rejected packet needs its own reply");
    assert_eq!(s.emit[0].port, 3);
    assert_eq!(
        icmp_type_code(&s.emit[0].packet),
        (3, 3),
        "port unreachable"
    );
    let f = pkt::tcp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 25);
    let s = run(&t, f, &pkt::frame(&f));
    let r = &s.emit[0].packet;
    assert_eq!(r[23], 6, "TCP");
    assert_eq!(&r[26..30], &[10, 0, 1, 11], "from the rejected destination");
    assert_eq!(&r[34..36], &25u16.to_be_bytes());
    assert_eq!(&r[36..38], &5000u16.to_be_bytes());
    assert_eq!(r[47] & 0x04, 0x04, "RST");
    assert_eq!(
        u32::from_be_bytes([r[42], r[43], r[44], r[45]]),
        1001,
        "acks the SYN"
    );
}

#[test]
fn stateful_chain_uses_the_ports_zone_at_ingress_and_delivery() {
    // p1 accepts only established traffic towards it.
    let b = two_bridges()
        .chain(
            "c-est",
            RuleAction::Drop,
            vec![Rule {
                ct_state: Some(CtMatch {
                    established: Some(true),
                    ..CtMatch::default()
                }),
                ..rule("est", RuleAction::Accept)
            }],
        )
        .port_chains("p1", None, Some("c-est"));
    let t = b.build();
    let (p1, p2) = (b.mac("p1"), b.mac("p2"));
    let deliver = RECIRC_DELIVERY | 3;
    let to_p1 = pkt::tcp(3, p2, p1, "10.0.1.12", "10.0.1.11", 5000, 80);
    let from_p1 = pkt::tcp(2, p1, p2, "10.0.1.11", "10.0.1.12", 80, 5000);
    let with_ct = |f: Fields, recirc: u32, st: u32| Fields {
        recirc_id: recirc,
        ct_state: st,
        ..f
    };
    let rows = vec![
        Row {
            name: "towards p1: delivery goes through p1's zone",
            pkt: to_p1,
            bytes: vec![],
            actions: "ct(zone=3,nat),recirc(0x40000003)",
            mask: "recirc_id(0),in_port(3),eth(dst=02:00:00:00:00:03),eth_type(0x0800)",
            tags: vec![
                Tag::port("p2"),
                Tag::device("b1"),
                Tag::mac("b1", p1),
                Tag::port("p1"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "delivery stage, new connection: dropped by p1's chain",
            pkt: with_ct(to_p1, deliver, TRK | NEW),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0x40000003),ct_state(-est),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("p1"), Tag::chain("c-est")],
            verdict: Verdict::Drop(DropReason::Acl),
        },
        Row {
            name: "delivery stage, established: output",
            pkt: with_ct(to_p1, deliver, TRK | EST),
            bytes: vec![],
            actions: "2",
            mask: "recirc_id(0x40000003),ct_state(-new+est),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("p1"), Tag::chain("c-est")],
            verdict: Verdict::Forward,
        },
        Row {
            name: "from p1: its zone first (stateful port)",
            pkt: from_p1,
            bytes: vec![],
            actions: "ct(zone=3,nat),recirc(0x1)",
            mask: "recirc_id(0),in_port(2),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("p1")],
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "from p1, new: committed in p1's zone so replies are established",
            pkt: with_ct(from_p1, RECIRC_CT, TRK | NEW),
            bytes: vec![],
            actions: "ct(commit,zone=3),3",
            mask: "recirc_id(0x1),in_port(2),ct_state(+new),eth(dst=02:00:00:00:00:04),eth_type(0x0800)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", p2),
                Tag::port("p2"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "from p1, established: no commit",
            pkt: with_ct(from_p1, RECIRC_CT, TRK | EST),
            bytes: vec![],
            actions: "3",
            mask: "recirc_id(0x1),in_port(2),ct_state(-new),eth(dst=02:00:00:00:00:04)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", p2),
                Tag::port("p2"),
            ],
            verdict: Verdict::Forward,
        },
    ];
    check(&t, &rows);
}

/// Conntrack applies to IP only: the kernel refuses `ct()` on a flow that does not match an
/// IP Ethertype. ARP from and to a stateful port takes the walk untracked, passes the
/// port's default-drop chain (chains filter IP) and is answered by the bridge; every flow
/// that does go through conntrack matches the Ethertype.
#[test]
fn arp_on_a_stateful_port_is_not_sent_through_conntrack() {
    let b = two_bridges()
        .chain(
            "c-est",
            RuleAction::Drop,
            vec![Rule {
                ct_state: Some(CtMatch {
                    established: Some(true),
                    ..CtMatch::default()
                }),
                ..rule("est", RuleAction::Accept)
            }],
        )
        .port_chains("p1", Some("c-est"), Some("c-est"));
    let t = b.build();
    let arp = pkt::arp_request(b.dp("p1"), b.mac("p1"), "10.0.1.11", "10.0.1.12");
    let s = sim::simulate(&t, &sim::PacketContext::new(arp));
    // The chain's default is Drop, but chains filter IP: the ARP is answered.
    assert_eq!(s.verdict, Verdict::Consumed, "{}", s.trace);
    assert_eq!(s.emit.len(), 1, "one ARP reply");
    assert!(
        !s.actions_text().contains("ct("),
        "ARP went through conntrack: {}",
        s.actions_text()
    );
    assert!(
        s.match_text(&arp).contains("eth_type(0x0806)"),
        "the untracked ARP flow matches its Ethertype: {}",
        s.match_text(&arp)
    );
    let ping = pkt::ping(
        b.dp("p1"),
        b.mac("p1"),
        b.mac("p2"),
        "10.0.1.11",
        "10.0.1.12",
    );
    let s = sim::simulate(&t, &sim::PacketContext::new(ping));
    assert!(s.actions_text().starts_with("ct("), "{}", s.actions_text());
    assert!(
        s.match_text(&ping).contains("eth_type(0x0800)"),
        "a flow with ct() matches the IP Ethertype: {}",
        s.match_text(&ping)
    );
}
