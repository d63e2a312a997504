//! Shared helpers of the table-driven tests: run a row, compare actions and mask as
//! `ovs-dpctl` text, tags as a set, and the verdict.

#![allow(dead_code)]

use sim::fixtures::TopoBuilder;
use sim::{Fields, PacketContext, Simulation, Tag, Topology, Verdict, simulate_into};

/// b1 (p1, p2 local; p3 on h2) and b2 (p4 local), joined by router r1.
/// Keys: b1=1 b2=2 p1=3 p2=4 p3=5 p4=6 r1=7 r1-b1=8 b1-r1=9 r1-b2=10 b2-r1=11.
/// Datapath ports: p1=2 p2=3 p4=4, tunnel=1.
pub fn two_bridges() -> TopoBuilder {
    Topology::test()
        .bridge("b1")
        .bridge("b2")
        .port("p1", "b1", "10.0.1.11")
        .port("p2", "b1", "10.0.1.12")
        .port_on("p3", "b1", "10.0.1.13", "h2")
        .port("p4", "b2", "10.0.2.14")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .link("r1", "b2", "10.0.2.1/24")
}

pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// One row: a packet and what the walk must produce.
#[derive(Debug)]
pub struct Row {
    pub name: &'static str,
    pub pkt: Fields,
    /// Pass the frame's bytes (for replies that echo or quote it).
    pub bytes: Vec<u8>,
    pub actions: &'static str,
    pub mask: &'static str,
    pub tags: Vec<Tag>,
    pub verdict: Verdict,
}

pub fn run(t: &Topology, f: Fields, bytes: &[u8]) -> Simulation {
    let mut s = Simulation::traced();
    simulate_into(t, &PacketContext::with_packet(f, bytes), &mut s);
    s
}

pub fn mask_text(f: &Fields, s: &Simulation) -> String {
    s.match_text(f)
}

/// Runs every row and fails with all mismatches listed.
pub fn check(t: &Topology, rows: &[Row]) {
    let mut failures = Vec::new();
    for r in rows {
        let s = run(t, r.pkt, &r.bytes);
        let actions = s.actions_text();
        let mask = mask_text(&r.pkt, &s);
        let mut want_tags = r.tags.clone();
        want_tags.sort();
        want_tags.dedup();
        let mut errs = Vec::new();
        if actions != r.actions {
            errs.push(format!(
                "  actions: got {actions}\n           want {}",
                r.actions
            ));
        }
        if mask != r.mask {
            errs.push(format!("  mask:    got {mask}\n           want {}", r.mask));
        }
        if s.tags != want_tags {
            errs.push(format!(
                "  tags:    got {:?}\n           want {:?}",
                s.tags, want_tags
            ));
        }
        if s.verdict != r.verdict {
            errs.push(format!(
                "  verdict: got {:?} want {:?}",
                s.verdict, r.verdict
            ));
        }
        // The flow the agent installs survives the netlink codec, and the expected text is
        // dpctl syntax that parses back to the same actions.
        let flow = s.flow(&r.pkt);
        for (what, k) in [("key", &flow.key), ("mask", &flow.mask)] {
            let mut buf = Vec::new();
            match odp::encode_key(k, &mut buf).and_then(|()| odp::decode_key(&buf)) {
                Ok(back) if &back == k => {}
                Ok(back) => errs.push(format!("  {what} codec round trip: {back:?} != {k:?}")),
                Err(e) => errs.push(format!("  {what} does not encode: {e}")),
            }
        }
        let mut buf = Vec::new();
        match odp::encode_actions(&flow.actions, &mut buf).and_then(|()| odp::decode_actions(&buf))
        {
            Ok(back) if back == flow.actions => {}
            Ok(back) => errs.push(format!("  actions codec round trip: {back:?}")),
            Err(e) => errs.push(format!("  actions do not encode: {e}")),
        }
        // Syntax only: the text cannot say that an untagged packet's VLAN was matched.
        if let Err(e) = odp::parse_match(r.mask) {
            errs.push(format!("  expected match does not parse: {e}"));
        }
        match odp::parse_actions(r.actions) {
            Ok(parsed) if parsed == s.actions => {}
            Ok(parsed) => errs.push(format!("  expected text parses to {parsed:?}")),
            Err(e) => errs.push(format!("  expected text does not parse: {e}")),
        }
        if !errs.is_empty() {
            failures.push(format!(
                "row {:?}:\n{}\n  trace:\n{}",
                r.name,
                errs.join("\n"),
                s.trace
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Parses an Ethernet+IPv4 frame's ICMP type and code.
pub fn icmp_type_code(frame: &[u8]) -> (u8, u8) {
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4 frame");
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    assert_eq!(frame[14 + 9], 1, "ICMP");
    (frame[14 + ihl], frame[14 + ihl + 1])
}
