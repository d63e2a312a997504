//! Table-driven tests of load balancing and NAT: VIPs translated with
//! `ct(commit,zone,nat(dst=member))` and recirculation, SNAT at the uplink's delivery stage,
//! DNAT (floating IPs) at the uplink's ingress.

mod common;

use common::{Row, check, run, two_bridges};
use nsdb::{DnatRule, Protocol, RuleAction};
use sim::fixtures::{TopoBuilder, pkt};
use sim::{
    DropReason, Fields, MemberChoice, RECIRC_CT, RECIRC_DELIVERY, RECIRC_LB, RECIRC_NAT, Tag,
    Verdict,
};

const TRK: u32 = 0x20;
const NEW: u32 = 0x01;
const EST: u32 = 0x02;

fn ct(f: Fields, recirc: u32, st: u32) -> Fields {
    Fields {
        recirc_id: recirc,
        ct_state: st,
        ..f
    }
}

fn v4(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
}

#[test]
fn vip_translates_to_a_healthy_member() {
    // p5 (key 12, datapath port 5) joins b2 as a second member.
    let b = two_bridges()
        .port("p5", "b2", "10.0.2.15")
        .vip(
            "lb1",
            Some("r1"),
            "10.96.0.10",
            Protocol::Tcp,
            80,
            &[("10.0.2.14", 8080, 1, true), ("10.0.2.15", 8080, 1, false)],
            false,
        )
        .vip(
            "lb-empty",
            Some("r1"),
            "10.96.0.11",
            Protocol::Tcp,
            80,
            &[("10.0.2.14", 8080, 1, false)],
            false,
        );
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let to_vip = pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", 40000, 80);
    let mut to_member = ct(to_vip, RECIRC_NAT, TRK | NEW | 0x80);
    to_member.ipv4_dst = v4("10.0.2.14");
    to_member.tp_dst = 8080;
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
            name: "first pass: the VIP needs connection state",
            pkt: to_vip,
            bytes: vec![],
            actions: "ct(zone=3,nat),recirc(0x1)",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.96.0.10,proto=6,frag=no),tcp(dst=80)",
            tags: with(vec![Tag::lb("lb1")]),
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "new connection: DNAT to the only healthy member, committed in the client's zone",
            pkt: ct(to_vip, RECIRC_CT, TRK | NEW),
            bytes: vec![],
            actions: "ct(commit,zone=3,nat(dst=10.0.2.14:8080)),recirc(0x2)",
            mask: "recirc_id(0x1),in_port(2),ct_state(-rpl-dnat),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(src=10.0.0.0/255.255.254.0,dst=10.96.0.10,proto=6,frag=no),tcp(dst=80)",
            tags: with(vec![Tag::lb("lb1")]),
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "after NAT: routed to the member and output; the member's zone has nothing to undo",
            pkt: to_member,
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv4(ttl=63)),4",
            mask: "recirc_id(0x2),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.2.14,ttl=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net"),
                Tag::ip("b2", "10.0.2.14".parse().unwrap()),
                Tag::port("r1-b2"),
                Tag::port("b2-r1"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("p4")),
                Tag::port("p4"),
            ]),
            verdict: Verdict::Forward,
        },
        Row {
            name: "member's delivery stage, new: committed in its zone and output",
            pkt: ct(to_member, RECIRC_DELIVERY | 6, TRK | NEW),
            bytes: vec![],
            actions: "ct(commit,zone=6),4",
            mask: "recirc_id(0x40000006),ct_state(+new),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("p4")],
            verdict: Verdict::Forward,
        },
        Row {
            name: "member's delivery stage, established: output, under the same mask",
            pkt: ct(to_member, RECIRC_DELIVERY | 6, TRK | EST),
            bytes: vec![],
            actions: "4",
            mask: "recirc_id(0x40000006),ct_state(-new),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("p4")],
            verdict: Verdict::Forward,
        },
        Row {
            name: "an established connection arrives already translated: routed, no commit",
            pkt: ct(to_member, RECIRC_CT, TRK | EST | 0x80),
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv4(ttl=63)),4",
            mask: "recirc_id(0x1),in_port(2),ct_state(-new-rpl+dnat),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.0.2.14,ttl=64,frag=no)",
            tags: with(vec![
                Tag::route("r1-b2-net"),
                Tag::ip("b2", "10.0.2.14".parse().unwrap()),
                Tag::port("r1-b2"),
                Tag::port("b2-r1"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("p4")),
                Tag::port("p4"),
            ]),
            verdict: Verdict::Forward,
        },
        Row {
            name: "the member's reply goes through the client's zone at delivery (reverse DNAT)",
            pkt: pkt::tcp(
                4,
                b.mac("p4"),
                b.mac("r1-b2"),
                "10.0.2.14",
                "10.0.1.11",
                8080,
                40000,
            ),
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:08,dst=02:00:00:00:00:03)),set(ipv4(ttl=63)),ct(zone=3,nat),recirc(0x40000003)",
            mask: "recirc_id(0),in_port(4),eth(dst=02:00:00:00:00:0a),eth_type(0x0800),ipv4(dst=10.0.1.11,ttl=64,frag=no)",
            tags: vec![
                Tag::port("p4"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("r1-b2")),
                Tag::port("b2-r1"),
                Tag::port("r1-b2"),
                Tag::device("r1"),
                Tag::route("r1-b1-net"),
                Tag::ip("b1", "10.0.1.11".parse().unwrap()),
                Tag::port("r1-b1"),
                Tag::port("b1-r1"),
                Tag::device("b1"),
                Tag::mac("b1", p1),
                Tag::port("p1"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "a VIP without healthy members rejects",
            pkt: ct(
                Fields {
                    ipv4_dst: v4("10.96.0.11"),
                    ..to_vip
                },
                RECIRC_CT,
                TRK | NEW,
            ),
            bytes: vec![],
            actions: "drop",
            mask: "recirc_id(0x1),in_port(2),ct_state(-rpl-dnat),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=10.96.0.11,proto=6,frag=no),tcp(dst=80)",
            tags: with(vec![Tag::lb("lb-empty")]),
            verdict: Verdict::Rejected,
        },
    ];
    check(&t, &rows);
}

#[test]
fn a_member_whose_chain_needs_state_gets_translated_traffic_through_its_zone() {
    // The same VIP over p4, once open and once behind an outbound chain that matches on
    // connection state: only the stateful port needs its zone for the forward direction.
    let vip = |b: TopoBuilder| {
        b.vip(
            "lb1",
            Some("r1"),
            "10.96.0.10",
            Protocol::Tcp,
            80,
            &[("10.0.2.14", 8080, 1, true)],
            false,
        )
    };
    let stateful = vip(two_bridges())
        .chain(
            "c-est",
            RuleAction::Accept,
            vec![nsdb::Rule {
                ct_state: Some(nsdb::CtMatch {
                    related: Some(true),
                    ..nsdb::CtMatch::default()
                }),
                ..sim::fixtures::rule("rel", RuleAction::Drop)
            }],
        )
        .port_chains("p4", None, Some("c-est"));
    for (b, through_zone) in [(vip(two_bridges()), false), (stateful, true)] {
        let t = b.build();
        let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
        let mut f = ct(
            pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", 40000, 80),
            RECIRC_NAT,
            TRK | NEW | 0x80,
        );
        f.ipv4_dst = v4("10.0.2.14");
        f.tp_dst = 8080;
        for (what, f) in [
            ("after NAT", f),
            (
                "established",
                Fields {
                    recirc_id: RECIRC_CT,
                    ct_state: TRK | EST | 0x80,
                    ..f
                },
            ),
        ] {
            let text = run(&t, f, &[]).actions_text();
            assert_eq!(
                text.ends_with("ct(zone=6,nat),recirc(0x40000006)"),
                through_zone,
                "{what}, stateful member {through_zone}: {text}"
            );
        }
    }
}

#[test]
fn a_member_change_makes_stale_only_the_buckets_that_move() {
    let pool = |n: u8| {
        let addrs: Vec<String> = (0..n).map(|i| format!("10.0.2.{}", 100 + i)).collect();
        let m: Vec<(&str, u16, u32, bool)> =
            addrs.iter().map(|a| (a.as_str(), 8080, 1, true)).collect();
        let b = two_bridges().vip(
            "lb4",
            Some("r1"),
            "10.96.0.10",
            Protocol::Tcp,
            80,
            &m,
            false,
        );
        let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
        (
            b.build(),
            pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", 40000, 80),
        )
    };
    let key = sim::Tag::vip_key("lb4", "10.96.0.10".parse().unwrap(), 6, 80);
    let (old, f) = pool(4);
    let (new, _) = pool(3);
    // Each bucket's flow names its bucket, not the load balancer.
    let member = |t: &sim::Topology, b: u32| {
        let s = run(
            t,
            Fields {
                recirc_id: RECIRC_LB,
                ct_state: TRK | NEW,
                dp_hash: b,
                ..f
            },
            &[],
        );
        assert!(
            s.tags.contains(&Tag::lb_bucket(key, b as usize)),
            "bucket {b}: {:?}",
            s.tags
        );
        assert!(
            !s.tags.contains(&Tag::lb("lb4")),
            "bucket {b}: {:?}",
            s.tags
        );
        s.actions_text()
    };
    let moved: std::collections::BTreeSet<Tag> = (0..64u32)
        .filter(|&b| member(&old, b) != member(&new, b))
        .map(|b| Tag::lb_bucket(key, b as usize))
        .collect();
    let mut stale = Vec::new();
    new.changed_buckets(&old, |t| t == Tag::lb("lb4"), &mut stale);
    let stale: std::collections::BTreeSet<Tag> = stale.into_iter().collect();
    assert_eq!(stale, moved, "exactly the buckets whose member changed");
    // The removed member had 16 buckets; the survivors keep nearly all of theirs.
    assert!(
        (16..=22).contains(&stale.len()),
        "{} buckets moved",
        stale.len()
    );

    // Another load balancer's change touches none of them.
    let mut none = Vec::new();
    new.changed_buckets(&old, |t| t == Tag::lb("other"), &mut none);
    assert!(none.is_empty(), "{none:?}");
    // A new bucket count (17 members: 128 buckets) makes every old bucket stale.
    let (sixteen, _) = pool(16);
    let (seventeen, _) = pool(17);
    let mut all = Vec::new();
    seventeen.changed_buckets(&sixteen, |t| t == Tag::lb("lb4"), &mut all);
    assert_eq!(all.len(), 64);
}

/// `b` with load balancer `id` on r1: VIP `vip`:80/TCP over eight healthy members,
/// 10.0.2.100-107 at port 8080, the first of weight 4 and the others of weight 1.
fn eight_member_vip(b: TopoBuilder, id: &str, vip: &str, affinity: bool) -> TopoBuilder {
    let members: Vec<String> = (0..8).map(|i| format!("10.0.2.{}", 100 + i)).collect();
    let m: Vec<(&str, u16, u32, bool)> = members
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), 8080, if i == 0 { 4 } else { 1 }, true))
        .collect();
    b.vip(id, Some("r1"), vip, Protocol::Tcp, 80, &m, affinity)
}

#[test]
fn eight_member_pool_chosen_by_the_simulation_spreads_by_weight_and_affinity_sticks() {
    let b = two_bridges().member_choice(MemberChoice::Simulation);
    let b = eight_member_vip(b, "lb8", "10.96.0.10", false);
    let b = eight_member_vip(b, "lb-sticky", "10.96.0.12", true);
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let mut counts = std::collections::BTreeMap::new();
    for sport in 0..2200u16 {
        let f = ct(
            pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", 10000 + sport, 80),
            RECIRC_CT,
            TRK | NEW,
        );
        *counts.entry(run(&t, f, &[]).actions_text()).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), 8, "every member chosen: {counts:?}");
    let heavy = counts
        .iter()
        .find(|(k, _)| k.contains("10.0.2.100:"))
        .map(|(_, v)| *v)
        .unwrap();
    // Weight 4 of 11: about 800 of 2200; the others about 200 each.
    assert!((600..1000).contains(&heavy), "weighted: {counts:?}");
    for (k, v) in &counts {
        if !k.contains("10.0.2.100:") {
            assert!((120..300).contains(v), "even among equals: {counts:?}");
        }
    }
    // Affinity: the same client always gets the same member, whatever its source port.
    let pick = |sport: u16, src: &str| {
        let f = ct(
            pkt::tcp(2, p1, gw, src, "10.96.0.12", sport, 80),
            RECIRC_CT,
            TRK | NEW,
        );
        let s = run(&t, f, &[]);
        assert_eq!(
            s.fields_mask.tp_src, 0,
            "affinity does not read the source port"
        );
        s.actions_text()
    };
    let first = pick(1, "10.0.1.11");
    for sport in 2..200 {
        assert_eq!(pick(sport, "10.0.1.11"), first);
    }
    let others: std::collections::BTreeSet<String> =
        (1..60).map(|i| pick(1, &format!("10.0.1.{i}"))).collect();
    assert!(others.len() > 4, "different clients spread: {others:?}");
}

#[test]
fn eight_member_pool_chosen_in_the_datapath_splits_buckets_by_weight() {
    let b = eight_member_vip(two_bridges(), "lb8", "10.96.0.10", false);
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let new = |sport: u16| {
        ct(
            pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", sport, 80),
            RECIRC_CT,
            TRK | NEW,
        )
    };
    // Every new connection takes the same flow: hash, then the bucket stage.
    let mut tracked = std::collections::BTreeSet::new();
    for sport in [1, 40000, 65535] {
        let s = run(&t, new(sport), &[]);
        assert_eq!(s.verdict, Verdict::Recirculate);
        tracked.insert((s.actions_text(), s.match_text(&new(sport))));
    }
    assert_eq!(
        tracked.len(),
        1,
        "one flow for all connections: {tracked:?}"
    );
    let (actions, mask) = tracked.pop_first().unwrap();
    // The VIP's own bucket stage, so that its flows need not name the VIP again.
    let own = sim::vip_recirc(sim::Tag::vip_key(
        "lb8",
        "10.96.0.10".parse().unwrap(),
        6,
        80,
    ));
    assert_eq!(actions, format!("hash(l4(0)),recirc({own:#x})"));
    assert!(!mask.contains("tcp(src"), "{mask}");
    // Telling the client from every member reads its address only as far as they differ.
    assert!(mask.contains("ipv4(src=10.0.0.0/255.255.254.0,"), "{mask}");

    // The bucket stage: one flow per bucket, matching dp_hash only in its low six bits.
    let mut per_member = std::collections::BTreeMap::new();
    for h in 0..64u32 {
        let f = Fields {
            recirc_id: RECIRC_LB,
            dp_hash: h | 0xabc0_0000,
            ..new(40000 + h as u16)
        };
        let s = run(&t, f, &[]);
        assert_eq!(s.fields_mask.tp_src, 0, "bucket {h}: not per connection");
        assert_eq!(s.fields_mask.dp_hash, 63, "bucket {h}");
        let text = s.actions_text();
        assert!(
            text.starts_with("ct(commit,zone=3,nat(dst=10.0.2.")
                && text.ends_with(":8080)),recirc(0x2)"),
            "bucket {h}: {text}"
        );
        *per_member.entry(text).or_insert(0u32) += 1;
    }
    // Under the VIP's own id, each bucket's flow reads the id, the ingress port, the
    // Ethertype and the bucket, nothing else, and picks the member the full walk picks.
    for h in 0..64u32 {
        let full = Fields {
            recirc_id: RECIRC_LB,
            dp_hash: h,
            ..new(40000)
        };
        let f = Fields {
            recirc_id: own,
            ..full
        };
        let s = run(&t, f, &[]);
        assert_eq!(
            s.actions_text(),
            run(&t, full, &[]).actions_text(),
            "bucket {h}"
        );
        assert_eq!(
            s.fields_mask,
            Fields {
                recirc_id: !0,
                dp_hash: 63,
                in_port: !0,
                eth_type: !0,
                ..Fields::default()
            },
            "bucket {h}: {}",
            s.match_text(&f)
        );
        assert!(s.tags.contains(&Tag::lb_bucket(key_of_lb8(), h as usize)));
    }
    // Weight 4 of 11 of 64 buckets: 23; each of the others 5 or 6.
    assert_eq!(per_member.len(), 8, "{per_member:?}");
    for (k, v) in &per_member {
        let want = if k.contains("10.0.2.100:") {
            23..=23
        } else {
            5..=6
        };
        assert!(want.contains(v), "{per_member:?}");
    }
}

fn key_of_lb8() -> u64 {
    sim::Tag::vip_key("lb8", "10.96.0.10".parse().unwrap(), 6, 80)
}

/// A sender that may be picked itself (a hairpin), and VIPs whose own recirculation ids
/// collide, take the bucket stage that finds the VIP again by the headers; a packet under an
/// id no VIP owns any more is still judged by its headers.
#[test]
fn a_possible_hairpin_and_a_shared_id_take_the_bucket_stage_that_reads_the_headers() {
    // On b2 with the eight-member pool: p9 is one of its members, p8 is not.
    let b = eight_member_vip(two_bridges(), "lb8", "10.96.0.10", false)
        .port("p8", "b2", "10.0.2.99")
        .port("p9", "b2", "10.0.2.103");
    let t = b.build();
    let tracked = |from: &str, src: &str| {
        let f = ct(
            pkt::tcp(
                b.dp(from),
                b.mac(from),
                b.mac("r1-b2"),
                src,
                "10.96.0.10",
                40000,
                80,
            ),
            RECIRC_CT,
            TRK | NEW,
        );
        let s = run(&t, f, &[]);
        (s.actions_text(), s.match_text(&f))
    };
    let own = sim::vip_recirc(key_of_lb8());
    let (actions, mask) = tracked("p9", "10.0.2.103");
    assert_eq!(actions, "hash(l4(0)),recirc(0x3)", "a member may hairpin");
    assert!(mask.contains("ipv4(src=10.0.2.103,"), "{mask}");
    let (actions, mask) = tracked("p8", "10.0.2.99");
    assert_eq!(
        actions,
        format!("hash(l4(0)),recirc({own:#x})"),
        "not a member"
    );
    // 10.0.2.99 is told from every member by its first 30 bits.
    assert!(
        mask.contains("ipv4(src=10.0.2.96/255.255.255.252,"),
        "{mask}"
    );

    // Two VIPs whose own ids collide.
    let (va, vb): (std::net::IpAddr, std::net::IpAddr) =
        ("10.96.0.10".parse().unwrap(), "10.96.0.11".parse().unwrap());
    let id = |lb, ip, port| sim::vip_recirc(sim::Tag::vip_key(lb, ip, 6, port));
    let ids: std::collections::HashMap<u32, u16> =
        (1..=u16::MAX).map(|p| (id("lba", va, p), p)).collect();
    let (pa, pb) = (1..=u16::MAX)
        .find_map(|q| ids.get(&id("lbb", vb, q)).map(|&p| (p, q)))
        .expect("two sets of 65,535 ids in 2^24 share some");
    let members = [("10.0.2.100", 8080, 1, true), ("10.0.2.101", 8080, 1, true)];
    let b = two_bridges()
        .vip(
            "lba",
            Some("r1"),
            "10.96.0.10",
            Protocol::Tcp,
            pa,
            &members,
            false,
        )
        .vip(
            "lbb",
            Some("r1"),
            "10.96.0.11",
            Protocol::Tcp,
            pb,
            &members,
            false,
        );
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    for (vip, port) in [("10.96.0.10", pa), ("10.96.0.11", pb)] {
        let f = ct(
            pkt::tcp(2, p1, gw, "10.0.1.11", vip, 40000, port),
            RECIRC_CT,
            TRK | NEW,
        );
        assert_eq!(
            run(&t, f, &[]).actions_text(),
            "hash(l4(0)),recirc(0x3)",
            "{vip}:{port}"
        );
        // A flow made when the id was one VIP's alone may still send packets under it:
        // they are judged by their headers, as under RECIRC_LB.
        let shared = id("lba", va, pa);
        for h in 0..64u32 {
            let under = |recirc_id| {
                let s = run(
                    &t,
                    Fields {
                        recirc_id,
                        dp_hash: h,
                        ..f
                    },
                    &[],
                );
                assert_ne!(s.fields_mask.ipv4_dst, 0, "{vip}:{port} bucket {h}");
                s.actions_text()
            };
            assert_eq!(under(shared), under(RECIRC_LB), "{vip}:{port} bucket {h}");
        }
    }
}

/// An IPv6 VIP's bucket stage under its own id: the same short flows, with the IPv6
/// Ethertype and an IPv6 destination NAT.
#[test]
fn an_ipv6_vips_own_bucket_stage_translates_to_an_ipv6_member() {
    let b = two_bridges()
        .addr("p1", "fd00:1::11/128")
        .addr("p4", "fd00:2::14/128")
        .port("p5", "b2", "10.0.2.15")
        .addr("p5", "fd00:2::15/128")
        .link6("r1", "b1", "fd00:1::1/64")
        .link6("r1", "b2", "fd00:2::1/64")
        .vip(
            "lb6",
            Some("r1"),
            "fd00:96::10",
            Protocol::Tcp,
            80,
            &[("fd00:2::14", 8080, 1, true), ("fd00:2::15", 8080, 1, true)],
            false,
        );
    let t = b.build();
    let f = ct(
        pkt::tcp6(
            2,
            b.mac("p1"),
            b.mac("r1-b1"),
            "fd00:1::11",
            "fd00:96::10",
            40000,
            80,
        ),
        RECIRC_CT,
        TRK | NEW,
    );
    let own = sim::vip_recirc(sim::Tag::vip_key(
        "lb6",
        "fd00:96::10".parse().unwrap(),
        6,
        80,
    ));
    assert_eq!(
        run(&t, f, &[]).actions_text(),
        format!("hash(l4(0)),recirc({own:#x})")
    );
    let mut members = std::collections::BTreeSet::new();
    for h in 0..64u32 {
        let g = Fields {
            recirc_id: own,
            dp_hash: h,
            ..f
        };
        let s = run(&t, g, &[]);
        assert_eq!(s.fields_mask.eth_type, !0, "bucket {h}");
        assert_eq!(s.fields_mask.ipv6_dst, 0, "bucket {h}");
        let text = s.actions_text();
        assert!(
            text.starts_with("ct(commit,zone=3,nat(dst=[fd00:2::1")
                && text.ends_with("]:8080)),recirc(0x2)"),
            "bucket {h}: {text}"
        );
        members.insert(text);
    }
    assert_eq!(members.len(), 2, "{members:?}");
}

/// A memory of earlier choices that recalls one member for every client, and counts asks.
#[derive(Debug)]
struct Recalls(
    Option<(std::net::IpAddr, u16)>,
    std::sync::atomic::AtomicU32,
);

impl sim::AffinityMemory for Recalls {
    fn recall(&self, _key: &sim::AffinityKey) -> Option<(std::net::IpAddr, u16)> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0
    }
}

#[test]
fn a_remembered_member_is_kept_while_it_serves_and_replaced_once_it_goes() {
    let members = [
        ("10.0.2.100", 8080, 1, true),
        ("10.0.2.101", 8080, 1, true),
        ("10.0.2.102", 8080, 1, false),
    ];
    let b = two_bridges()
        .vip(
            "sticky",
            Some("r1"),
            "10.96.0.12",
            Protocol::Udp,
            53,
            &members,
            true,
        )
        .vip(
            "plain",
            Some("r1"),
            "10.96.0.13",
            Protocol::Udp,
            53,
            &members,
            false,
        );
    let t = b.build();
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let to = |vip: &str| {
        ct(
            pkt::udp(2, p1, gw, "10.0.1.11", vip, 40000, 53),
            RECIRC_CT,
            TRK | NEW,
        )
    };
    let sim_with = |f: Fields, memory: &Recalls| {
        let mut s = sim::Simulation::traced();
        sim::simulate_into(&t, &sim::PacketContext::new(f).remembering(memory), &mut s);
        s
    };
    let ip = |a: &str| a.parse::<std::net::IpAddr>().unwrap();
    let key = sim::AffinityKey {
        vip: ip("10.96.0.12"),
        proto: 17,
        port: 53,
        client: ip("10.0.1.11"),
    };

    // Nothing remembered: the client address's hash picks, and the choice is reported.
    let fresh = sim_with(to("10.96.0.12"), &Recalls(None, Default::default()));
    let chosen = fresh.affinity.expect("a sticky VIP reports its choice");
    assert_eq!(chosen.key, key);
    assert_eq!(chosen.timeout_s, nsdb::DEFAULT_AFFINITY_TIMEOUT_S);
    assert!(
        fresh
            .actions_text()
            .contains(&format!("nat(dst={}:8080)", chosen.member)),
        "{}",
        fresh.actions_text()
    );
    assert!(
        fresh.tags.contains(&Tag::affinity(&key)),
        "{:?}",
        fresh.tags
    );
    assert_eq!(fresh.fields_mask.ipv4_src, !0, "the choice is per client");
    assert_eq!(fresh.fields_mask.tp_src, 0, "not per connection");

    // The other healthy member remembered: it is kept, and reported again.
    let other = if chosen.member == ip("10.0.2.100") {
        "10.0.2.101"
    } else {
        "10.0.2.100"
    };
    let kept = sim_with(
        to("10.96.0.12"),
        &Recalls(Some((ip(other), 8080)), Default::default()),
    );
    assert!(
        kept.actions_text()
            .contains(&format!("nat(dst={other}:8080)")),
        "{}",
        kept.actions_text()
    );
    assert_eq!(kept.affinity.map(|c| c.member), Some(ip(other)));
    assert_eq!(kept.fields_mask.tp_src, 0);

    // A remembered member that no longer serves (unhealthy, or at another port): chosen
    // afresh, and the new choice reported to replace it.
    for gone in [(ip("10.0.2.102"), 8080), (ip(other), 9090)] {
        let s = sim_with(to("10.96.0.12"), &Recalls(Some(gone), Default::default()));
        assert_eq!(
            s.affinity.map(|c| c.member),
            Some(chosen.member),
            "{gone:?}"
        );
    }

    // A VIP without affinity neither asks nor reports.
    let asks = Recalls(Some((ip(other), 8080)), Default::default());
    let plain = sim_with(to("10.96.0.13"), &asks);
    assert_eq!(asks.1.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(plain.affinity.is_none());
    let own = sim::vip_recirc(sim::Tag::vip_key("plain", ip("10.96.0.13"), 17, 53));
    assert_eq!(
        plain.actions_text(),
        format!("hash(l4(0)),recirc({own:#x})"),
        "chosen in the datapath"
    );
    assert_eq!(plain.fields_mask.tp_src, 0, "not per connection");
}

#[test]
fn global_vip_applies_before_the_first_device() {
    let b = two_bridges().vip(
        "svc",
        None,
        "10.96.0.20",
        Protocol::Udp,
        53,
        &[("10.0.2.14", 5353, 1, true)],
        false,
    );
    let t = b.build();
    let f = pkt::udp(
        2,
        b.mac("p1"),
        b.mac("r1-b1"),
        "10.0.1.11",
        "10.96.0.20",
        3333,
        53,
    );
    let rows = vec![
        Row {
            name: "first pass: conntrack before the bridge",
            pkt: f,
            bytes: vec![],
            actions: "ct(zone=3,nat),recirc(0x1)",
            mask: "recirc_id(0),in_port(2),eth(),eth_type(0x0800),ipv4(dst=10.96.0.20,proto=17,frag=no),udp(dst=53)",
            tags: vec![Tag::port("p1"), Tag::global_vips(), Tag::lb("svc")],
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "tracked: DNAT to the member",
            pkt: ct(f, RECIRC_CT, TRK | NEW),
            bytes: vec![],
            actions: "ct(commit,zone=3,nat(dst=10.0.2.14:5353)),recirc(0x2)",
            // A tracked packet from a pod is checked for a hairpin reply (-rpl-dnat: not one).
            // One member: no hash, and the source is read only as far as it takes to tell
            // that the client is not the member (a hairpin).
            mask: "recirc_id(0x1),in_port(2),ct_state(-rpl-dnat),eth(),eth_type(0x0800),ipv4(src=10.0.0.0/255.255.254.0,dst=10.96.0.20,proto=17,frag=no),udp(dst=53)",
            tags: vec![Tag::port("p1"), Tag::global_vips(), Tag::lb("svc")],
            verdict: Verdict::Recirculate,
        },
    ];
    check(&t, &rows);
}

#[test]
fn snat_and_dnat_on_the_uplink() {
    // Uplink r1-up: key 12, datapath port 5, zone 12.
    let b = two_bridges()
        .uplink("r1", "r1-up", "203.0.113.2/24", "02:00:00:00:ee:01")
        .route(
            "default",
            "r1",
            "0.0.0.0/0",
            Some("203.0.113.1"),
            "r1-up",
            1,
        )
        .snat("r1", "r1-up", &["203.0.113.2"], (1024, 65535))
        .dnat(
            "r1",
            DnatRule {
                external_ip: "203.0.113.10".parse().unwrap(),
                internal_ip: "10.0.2.14".parse().unwrap(),
                protocol: None,
                external_port: None,
                internal_port: None,
            },
        );
    let t = b.build();
    let (p1, gw, up) = (b.mac("p1"), b.mac("r1-b1"), b.mac("r1-up"));
    let outside = [2, 0, 0, 0, 0xee, 1];
    let out = pkt::tcp(2, p1, gw, "10.0.1.11", "8.8.8.8", 40000, 443);
    let inbound = pkt::tcp(5, outside, up, "198.51.100.9", "203.0.113.10", 50000, 22);
    let mut to_internal = ct(inbound, RECIRC_NAT, TRK | NEW | 0x80);
    to_internal.ipv4_dst = v4("10.0.2.14");
    // A reply to the SNATed connection, after the uplink zone reversed the translation.
    let mut reply = ct(
        pkt::tcp(5, outside, up, "8.8.8.8", "10.0.1.11", 443, 40000),
        RECIRC_CT,
        TRK | EST | 0x08,
    );
    reply.ip_ttl = 50;
    let rows = vec![
        Row {
            name: "to the outside: routed to the uplink, delivered through its zone",
            pkt: out,
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0c,dst=02:00:00:00:ee:01)),set(ipv4(ttl=63)),ct(zone=12,nat),recirc(0x4000000c)",
            mask: "recirc_id(0),in_port(2),eth(dst=02:00:00:00:00:08),eth_type(0x0800),ipv4(dst=8.0.0.0/254.0.0.0,ttl=64,frag=no)",
            tags: vec![
                Tag::port("p1"),
                Tag::device("b1"),
                Tag::mac("b1", gw),
                Tag::port("b1-r1"),
                Tag::port("r1-b1"),
                Tag::device("r1"),
                Tag::route("default"),
                Tag::port("r1-up"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "uplink delivery stage, new: SNAT over the port range",
            pkt: ct(out, RECIRC_DELIVERY | 12, TRK | NEW),
            bytes: vec![],
            actions: "ct(commit,zone=12,nat(src=203.0.113.2:1024-65535)),5",
            mask: "recirc_id(0x4000000c),ct_state(+new),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("r1-up")],
            verdict: Verdict::Forward,
        },
        Row {
            name: "from the outside: the uplink's zone first (reverses SNAT, applies DNAT)",
            pkt: inbound,
            bytes: vec![],
            actions: "ct(zone=12,nat),recirc(0x1)",
            mask: "recirc_id(0),in_port(5),eth(),eth_type(0x0800)",
            tags: vec![Tag::port("r1-up")],
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "new connection to a floating IP: DNAT committed in the uplink's zone",
            pkt: ct(inbound, RECIRC_CT, TRK | NEW),
            bytes: vec![],
            actions: "ct(commit,zone=12,nat(dst=10.0.2.14)),recirc(0x2)",
            mask: "recirc_id(0x1),in_port(5),eth(dst=02:00:00:00:00:0c),eth_type(0x0800),ipv4(dst=203.0.113.10,proto=6,frag=no),tcp(dst=22)",
            tags: vec![
                Tag::port("r1-up"),
                Tag::device("r1"),
                Tag::ip("r1", "203.0.113.10".parse().unwrap()),
            ],
            verdict: Verdict::Recirculate,
        },
        Row {
            name: "after DNAT: routed to the internal address",
            pkt: to_internal,
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:0a,dst=02:00:00:00:00:06)),set(ipv4(ttl=63)),4",
            mask: "recirc_id(0x2),in_port(5),eth(dst=02:00:00:00:00:0c),eth_type(0x0800),ipv4(dst=10.0.2.14,ttl=64,frag=no)",
            tags: vec![
                Tag::port("r1-up"),
                Tag::device("r1"),
                Tag::route("r1-b2-net"),
                Tag::ip("b2", "10.0.2.14".parse().unwrap()),
                Tag::port("r1-b2"),
                Tag::port("b2-r1"),
                Tag::device("b2"),
                Tag::mac("b2", b.mac("p4")),
                Tag::port("p4"),
            ],
            verdict: Verdict::Forward,
        },
        Row {
            name: "reply to a SNATed connection: routed back to the pod, no new commit",
            pkt: reply,
            bytes: vec![],
            actions: "set(eth(src=02:00:00:00:00:08,dst=02:00:00:00:00:03)),set(ipv4(ttl=49)),ct(zone=3,nat),recirc(0x40000003)",
            mask: "recirc_id(0x1),in_port(5),ct_state(-new-dnat),eth(dst=02:00:00:00:00:0c),eth_type(0x0800),ipv4(dst=10.0.1.11,ttl=50,frag=no)",
            tags: vec![
                Tag::port("r1-up"),
                Tag::device("r1"),
                Tag::route("r1-b1-net"),
                Tag::ip("b1", "10.0.1.11".parse().unwrap()),
                Tag::port("r1-b1"),
                Tag::port("b1-r1"),
                Tag::device("b1"),
                Tag::mac("b1", p1),
                Tag::port("p1"),
            ],
            verdict: Verdict::Forward,
        },
    ];
    check(&t, &rows);
    let _ = DropReason::NatLoop;
}

/// A VIP's members picked by a pod selector: each matching pod port's address at the target
/// port, as pods come and go; a port that no longer matches is no member.
#[test]
fn vip_members_are_the_pods_its_selector_picks() {
    let sel = nsdb::PortSelector::in_namespace("x", nsdb::LabelSelector::label("app", "web"));
    let mut b = two_bridges()
        .port("p5", "b2", "10.0.2.15")
        .pod_labels("p4", "x", &[("app", "web")])
        .pod_labels("p5", "x", &[("app", "db")])
        .vip(
            "lb1",
            Some("r1"),
            "10.96.0.10",
            Protocol::Tcp,
            80,
            &[],
            false,
        );
    b.records.load_balancers[0].vips[0].member_selector = Some(sel);
    b.records.load_balancers[0].vips[0].target_port = Some(8080);
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let tracked = ct(
        pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", 40000, 80),
        RECIRC_CT,
        TRK | NEW,
    );
    let s = run(&b.build(), tracked, &[]);
    assert_eq!(
        s.actions_text(),
        "ct(commit,zone=3,nat(dst=10.0.2.14:8080)),recirc(0x2)",
        "only p4 is app=web"
    );
    // p5 becomes app=web and p4 leaves: the VIP follows the labels.
    for p in b.records.ports.iter_mut() {
        match p.id.as_str() {
            "p4" => p.labels.insert("app".into(), "db".into()),
            "p5" => p.labels.insert("app".into(), "web".into()),
            _ => None,
        };
    }
    let s = run(&b.build(), tracked, &[]);
    assert_eq!(
        s.actions_text(),
        "ct(commit,zone=3,nat(dst=10.0.2.15:8080)),recirc(0x2)"
    );
    // No pod matches: the VIP has no member and refuses the connection.
    for p in b.records.ports.iter_mut() {
        p.labels.remove("app");
    }
    let s = run(&b.build(), tracked, &[]);
    assert_eq!(s.verdict, Verdict::Rejected);
}

/// A pod of a Service reaching the Service and chosen itself (hairpin): over TCP and UDP, to
/// the Service's IPv4 and IPv6 VIPs, every packet of the connection, both ways, is delivered
/// to the pod with the VIP as its peer, through the hosts' conntrack as the kernel keeps it.
/// Also when the pod is isolated by NetworkPolicies in both directions: a pod is not isolated
/// from itself.
#[test]
fn a_member_reaching_its_own_service_is_answered_from_the_vip() {
    use nsdb::{LabelSelector, PodAttachMode, PodDirection, PortSelector, RuleAction};
    use sim::fixtures::{Fate, Network, TopoBuilder};
    use std::net::IpAddr;
    // (protocol, VIP, service port, target port, the pod's own address, the other member's)
    let services = [
        (6, "10.96.0.20", 80, 8080, "10.0.1.11", "10.0.1.12"),
        (17, "10.96.0.21", 53, 5353, "10.0.1.11", "10.0.1.12"),
        (6, "fd00:96::20", 80, 8080, "fd00:1::11", "fd00:1::12"),
        (17, "fd00:96::21", 53, 5353, "fd00:1::11", "fd00:1::12"),
    ];
    let base = || {
        let mut b = two_bridges()
            .addr("p1", "fd00:1::11/128")
            .addr("p2", "fd00:1::12/128")
            .link6("r1", "b1", "fd00:1::1/64")
            .pod_labels("p1", "x", &[("app", "web")])
            .pod_labels("p2", "x", &[("app", "web")]);
        for (i, (proto, vip, port, target, own, other)) in services.into_iter().enumerate() {
            let protocol = if proto == 6 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let members = [(own, target, 1, true), (other, target, 1, true)];
            b = b.vip(
                &format!("svc{i}"),
                None,
                vip,
                protocol,
                port,
                &members,
                false,
            );
        }
        b
    };
    let isolated = |b: TopoBuilder| {
        let web = PortSelector::in_namespace("x", LabelSelector::label("app", "web"));
        b.chain("deny-in", RuleAction::Drop, vec![])
            .attach(
                "deny-in",
                PodDirection::Ingress,
                web.clone(),
                PodAttachMode::Allow,
            )
            .chain("deny-out", RuleAction::Drop, vec![])
            .attach("deny-out", PodDirection::Egress, web, PodAttachMode::Allow)
    };
    let packet = |in_port, mac, gw, src: &str, dst: &str, proto, sp, dp| {
        if src.contains(':') {
            pkt::ipv6(in_port, mac, gw, src, dst, proto, sp, dp)
        } else {
            pkt::ipv4(in_port, mac, gw, src, dst, proto, sp, dp)
        }
    };
    // (source, source port, destination, destination port) as the pod sees them.
    let seen = |f: &Fields| -> (IpAddr, u16, IpAddr, u16) {
        if f.is_ipv6() {
            let (s, d) = (f.ipv6_src_addr().into(), f.ipv6_dst_addr().into());
            (s, f.tp_src, d, f.tp_dst)
        } else {
            let (s, d) = (f.ipv4_src.into(), f.ipv4_dst.into());
            (IpAddr::V4(s), f.tp_src, IpAddr::V4(d), f.tp_dst)
        }
    };
    let addr = |s: &str| s.parse::<IpAddr>().unwrap();
    for (what, b) in [("open", base()), ("isolated", isolated(base()))] {
        let mut net = Network::new(&b);
        let (mac, gw, dp) = (b.mac("p1"), b.mac("r1-b1"), b.dp("p1"));
        let at = |port: &str| Fate::Delivered("h1".into(), b.dp(port));
        for (proto, vip, vport, mport, own, _) in services {
            let (mut hairpins, mut others) = (0, 0);
            for sport in 40000..40016u16 {
                for round in ["first", "later"] {
                    let case = format!("{what} {proto} {vip}:{vport} from {sport} {round}");
                    let req = packet(dp, mac, gw, own, vip, proto, sport, vport);
                    let got = net.send_seen("h1", req);
                    let [(fate, f)] = got.as_slice() else {
                        panic!("{case}: {got:?}");
                    };
                    // The other member: reached when nothing isolates the pods, and dropped
                    // by the policies otherwise (p1 may send nowhere, p2 hear no one).
                    let other = match what {
                        "open" => at("p2"),
                        _ => Fate::Stopped("h1".into(), Verdict::Drop(DropReason::Acl)),
                    };
                    if *fate == other {
                        others += 1;
                        continue;
                    }
                    assert_eq!(*fate, at("p1"), "{case}");
                    hairpins += 1;
                    let (src, _, dst, dport) = seen(f);
                    assert_eq!(
                        (src, dst, dport),
                        (addr(vip), addr(own), mport),
                        "{case}: the pod is reached from the VIP"
                    );
                    let reply = packet(dp, mac, gw, own, vip, proto, mport, f.tp_src);
                    let got = net.send_seen("h1", reply);
                    let [(fate, f)] = got.as_slice() else {
                        panic!("{case} reply: {got:?}");
                    };
                    assert_eq!(*fate, at("p1"), "{case} reply");
                    assert_eq!(
                        seen(f),
                        (addr(vip), vport, addr(own), sport),
                        "{case}: the reply comes from the VIP's port"
                    );
                }
            }
            assert!(
                hairpins > 0 && others > 0,
                "{what} {vip}: both members picked ({hairpins} hairpins, {others} to p2)"
            );
        }
    }
}

#[test]
fn a_down_verdict_takes_a_probed_member_out_and_a_load_balancer_without_a_check_ignores_it() {
    let base = two_bridges().port("p5", "b2", "10.0.2.15").vip(
        "lb1",
        Some("r1"),
        "10.96.0.10",
        Protocol::Tcp,
        80,
        &[("10.0.2.14", 8080, 1, true), ("10.0.2.15", 8080, 1, true)],
        false,
    );
    let (p1, gw) = (base.mac("p1"), base.mac("r1-b1"));
    let new_conn = ct(
        pkt::tcp(2, p1, gw, "10.0.1.11", "10.96.0.10", 40000, 80),
        RECIRC_CT,
        TRK | NEW,
    );
    let check = nsdb::HealthCheck {
        kind: nsdb::ProbeKind::Tcp,
        path: None,
        interval_s: 1,
        timeout_s: 1,
        rise: 1,
        fall: 1,
    };
    let verdict =
        |ip: &str, healthy: bool| sim::fixtures::verdict("lb1", &format!("{ip}:8080"), healthy);
    let with = |check: Option<&nsdb::HealthCheck>, verdicts: &[nsdb::MemberHealth]| {
        let mut b = base.clone();
        b.records.load_balancers[0].health_check = check.cloned();
        b.records.member_health = verdicts.to_vec();
        b.build()
    };
    let both = with(Some(&check), &[verdict("10.0.2.15", true)]);
    let one_down = with(Some(&check), &[verdict("10.0.2.15", false)]);
    let unprobed = with(None, &[verdict("10.0.2.15", false)]);
    let all_down = with(
        Some(&check),
        &[verdict("10.0.2.14", false), verdict("10.0.2.15", false)],
    );
    let actions = |t: &sim::Topology| run(t, new_conn, &[]).actions_text();
    assert!(
        actions(&both).starts_with("hash("),
        "two healthy members: chosen in the datapath: {}",
        actions(&both)
    );
    assert_eq!(
        actions(&one_down),
        "ct(commit,zone=3,nat(dst=10.0.2.14:8080)),recirc(0x2)",
        "the member marked down is left out"
    );
    assert!(
        actions(&unprobed).starts_with("hash("),
        "a verdict on a load balancer without a health check counts for nothing: {}",
        actions(&unprobed)
    );
    let s = run(&all_down, new_conn, &[]);
    assert_eq!(
        s.verdict,
        Verdict::Rejected,
        "no member left: the VIP rejects"
    );
    // The verdict's change makes every bucket of the VIP stale: it stopped using buckets.
    let mut stale = Vec::new();
    one_down.changed_buckets(&both, |t| t == Tag::lb("lb1"), &mut stale);
    assert_eq!(stale.len(), 64, "{stale:?}");
}
