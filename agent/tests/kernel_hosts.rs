//! Three hosts in the kernel guest, each a network namespace with its own OVS datapath and
//! `weft-agent`, joined by an underlay bridge, with etcd as NSDB and pods as namespaces
//! attached through the agents' API: what a user of the virtual network sees across hosts
//! (reachability, TCP payloads, routing, ACLs, and changes made under traffic).

mod hosts_support;
mod kernel_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hosts_support::{BackgroundPing, Cluster, TcpError};
use nsdb::{Chain, CtMatch, Protocol, Route, RuleAction};
use sim::Topology;
use sim::fixtures::{TopoBuilder, rule};

/// Bound of one scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 420;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(addr)), port)
}

/// Bridge b1 (10.0.1.0/24) with p1 on h1, p2 on h2, p3 on h3.
fn one_bridge() -> TopoBuilder {
    let mut b = Topology::test()
        .bridge("b1")
        .port_on("p1", "b1", "10.0.1.11", "h1")
        .port_on("p2", "b1", "10.0.1.12", "h2")
        .port_on("p3", "b1", "10.0.1.13", "h3");
    b.records.bridges[0].subnet_v4 = Some("10.0.1.0/24".parse().unwrap());
    b
}

/// Bridges b1 (10.0.1.0/24: p1 on h1, p2 on h2) and b2 (10.0.2.0/24: p4 on h3) joined by
/// router r1 (10.0.1.1, 10.0.2.1).
fn routed() -> TopoBuilder {
    Topology::test()
        .bridge("b1")
        .bridge("b2")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .link("r1", "b2", "10.0.2.1/24")
        .port_on("p1", "b1", "10.0.1.11", "h1")
        .port_on("p2", "b1", "10.0.1.12", "h2")
        .port_on("p4", "b2", "10.0.2.14", "h3")
}

/// Starts three hosts, writes `b`'s records and attaches the pods where `b` binds them.
fn cluster(name: &str, b: &TopoBuilder) -> Cluster {
    let mut c = Cluster::start(name, 3, SCENARIO_SECS);
    c.write_topology(&b.records);
    for pb in b.records.bindings.clone() {
        c.add_pod(&pb.port, &pb.host);
    }
    c
}

fn mac_text(m: [u8; 6]) -> String {
    nsdb::MacAddr(m).to_string()
}

/// The MAC pod `from` resolved for `addr`, as `ip neigh` shows it.
fn neigh(c: &Cluster, from: &str, addr: &str) -> String {
    kernel_support::sh(&format!("ip -n {} neigh show {addr}", c.pod(from).ns))
}

/// Polls TCP echoes from `from` to `to` until one succeeds (at most `tries`); for the first
/// connection after pods attach, while the other agents learn the new bindings.
fn wait_tcp(c: &Cluster, from: &str, to: SocketAddr, tries: u32) {
    let mut last = None;
    for _ in 0..tries {
        match c.tcp_echo(from, to, 1000) {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
    }
    c.fail(&format!(
        "{from} never completed a TCP echo with {to}: {last:?}"
    ))
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn one_bridge_across_three_hosts_pings_and_carries_tcp_payloads() {
    let b = one_bridge();
    let c = cluster("one-bridge", &b);
    let (p1, p2, p3) = (ip("10.0.1.11"), ip("10.0.1.12"), ip("10.0.1.13"));
    for (from, to) in [("p1", p2), ("p1", p3), ("p2", p3)] {
        let n = c.wait_reachable(from, to, 30);
        eprintln!("one-bridge: {from} reached {to} after {n} pings");
    }
    for (from, to) in [("p1", p2), ("p2", p3), ("p3", p1), ("p2", p1)] {
        let p = c.ping_ok(from, to, 5);
        assert!(
            p.ttls.iter().all(|&t| t == 64),
            "a bridge does not touch the TTL: {from} -> {to}\n{}",
            p.out
        );
    }
    // The bridge answered ARP from the ports it knows: each pod resolved the others to the
    // MACs NSDB gives their ports.
    for (from, to, port) in [("p1", "10.0.1.12", "p2"), ("p1", "10.0.1.13", "p3")] {
        let n = neigh(&c, from, to);
        assert!(
            n.contains(&mac_text(b.mac(port))),
            "{from} resolved {to} to {port}'s MAC {}: {n}",
            mac_text(b.mac(port))
        );
    }
    // A TCP payload much larger than the MTU crosses hosts unchanged, both ways round.
    let _s3 = c.echo_server("p3", 7000);
    let _s1 = c.echo_server("p1", 7001);
    c.tcp_echo_ok("p1", sa("10.0.1.13", 7000), 1_000_000);
    c.tcp_echo_ok("p2", sa("10.0.1.13", 7000), 300_000);
    c.tcp_echo_ok("p3", sa("10.0.1.11", 7001), 300_000);
    // Each host sends to the others through its one tunnel port, addressed per flow to the
    // destination host's underlay address.
    let h1 = c.host("h1").flows();
    for dst in ["10.99.0.2", "10.99.0.3"] {
        assert!(
            h1.contains(&format!("dst={dst}")),
            "h1 tunnels to {dst} by a flow's tunnel destination:\n{h1}"
        );
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn two_bridges_joined_by_a_router_answer_gateway_arp_and_decrement_ttl() {
    let b = routed();
    let c = cluster("router", &b);
    let n = c.wait_reachable("p1", ip("10.0.2.14"), 30);
    eprintln!("router: p1 reached p4 after {n} pings");
    c.wait_reachable("p2", ip("10.0.2.14"), 30);
    c.wait_reachable("p1", ip("10.0.1.12"), 30);

    // Across the router: one hop, so the reply's TTL is 64 - 1.
    for (from, to) in [
        ("p1", "10.0.2.14"),
        ("p2", "10.0.2.14"),
        ("p4", "10.0.1.11"),
    ] {
        let p = c.ping_ok(from, ip(to), 5);
        assert!(
            p.ttls.len() == 5 && p.ttls.iter().all(|&t| t == 63),
            "one router hop decrements the TTL by one: {from} -> {to}\n{}",
            p.out
        );
    }
    // On the same bridge, across hosts: no router, TTL untouched.
    let p = c.ping_ok("p1", ip("10.0.1.12"), 3);
    assert!(p.ttls.iter().all(|&t| t == 64), "{}", p.out);
    // The router answers pings to its own addresses.
    c.ping_ok("p1", ip("10.0.1.1"), 3);
    c.ping_ok("p4", ip("10.0.2.1"), 3);

    // Each pod's gateway resolved to the MAC of the router port on its bridge.
    for (pod, gw, rport) in [
        ("p1", "10.0.1.1", "r1-b1"),
        ("p2", "10.0.1.1", "r1-b1"),
        ("p4", "10.0.2.1", "r1-b2"),
    ] {
        let n = neigh(&c, pod, gw);
        assert!(
            n.contains(&mac_text(b.mac(rport))),
            "{pod}'s gateway {gw} resolves to {rport}'s MAC {}: {n}",
            mac_text(b.mac(rport))
        );
    }

    // A packet whose TTL runs out at the router gets ICMP time exceeded from the gateway.
    let p = c.ping_args("p1", ip("10.0.2.14"), "-c 1 -t 1 -W 2");
    assert!(
        !p.ok && p.out.contains("From 10.0.1.1") && p.out.contains("Time to live exceeded"),
        "TTL 1 across the router: time exceeded from 10.0.1.1 expected:\n{}",
        p.out
    );

    // TCP across the router and across hosts, payload checked.
    let _s = c.echo_server("p1", 7000);
    c.tcp_echo_ok("p4", sa("10.0.1.11", 7000), 500_000);
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn an_acl_that_drops_icmp_stops_pings_but_not_tcp() {
    let mut b = one_bridge().chain(
        "no-icmp",
        RuleAction::Accept,
        vec![nsdb::Rule {
            protocol: Some(Protocol::Icmp),
            ..rule("drop-icmp", RuleAction::Drop)
        }],
    );
    b = b.port_chains("p2", None, Some("no-icmp"));
    let c = cluster("acl-drop", &b);
    let _s2 = c.echo_server("p2", 7000);
    // TCP to p2 passes its ACL (and proves the path to p2 works).
    wait_tcp(&c, "p1", sa("10.0.1.12", 7000), 30);
    c.tcp_echo_ok("p1", sa("10.0.1.12", 7000), 200_000);
    c.tcp_echo_ok("p3", sa("10.0.1.12", 7000), 200_000);
    // Pings to p2 are dropped; pings between the other pods are not.
    for from in ["p1", "p3"] {
        let p = c.ping(from, ip("10.0.1.12"), 5);
        if p.received != 0 {
            c.fail(&format!(
                "the ACL on p2 drops ICMP, but {from} got replies:\n{}",
                p.out
            ));
        }
    }
    c.wait_reachable("p1", ip("10.0.1.13"), 30);
    c.ping_ok("p1", ip("10.0.1.13"), 5);
    c.ping_ok("p3", ip("10.0.1.11"), 5);
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_stateful_acl_lets_only_replies_back() {
    // p1 (on h1) accepts only traffic of connections it opened: established and related
    // packets pass its outbound chain, new ones are dropped.
    let b = one_bridge()
        .chain(
            "replies-only",
            RuleAction::Drop,
            vec![
                nsdb::Rule {
                    ct_state: Some(CtMatch {
                        established: Some(true),
                        ..CtMatch::default()
                    }),
                    ..rule("established", RuleAction::Accept)
                },
                nsdb::Rule {
                    ct_state: Some(CtMatch {
                        related: Some(true),
                        ..CtMatch::default()
                    }),
                    ..rule("related", RuleAction::Accept)
                },
            ],
        )
        .port_chains("p1", None, Some("replies-only"));
    let c = cluster("acl-stateful", &b);
    let _s3 = c.echo_server("p3", 7000);
    let s1 = c.echo_server("p1", 7000);
    // p1 connects out: its replies come back.
    wait_tcp(&c, "p1", sa("10.0.1.13", 7000), 30);
    c.tcp_echo_ok("p1", sa("10.0.1.13", 7000), 300_000);
    c.ping_ok("p1", ip("10.0.1.13"), 5);
    c.ping_ok("p1", ip("10.0.1.12"), 3);
    // Nobody connects in to p1, although it listens: the SYN is dropped (no RST either).
    for from in ["p3", "p2"] {
        match c.tcp_echo(from, sa("10.0.1.11", 7000), 1000) {
            Err(TcpError::ConnectTimeout) => {}
            other => c.fail(&format!(
                "{from} -> p1 must time out on p1's stateful ACL, got {other:?}"
            )),
        }
        let p = c.ping(from, ip("10.0.1.11"), 3);
        if p.received != 0 {
            c.fail(&format!(
                "{from} pinged p1 through its stateful ACL:\n{}",
                p.out
            ));
        }
    }
    assert_eq!(
        s1.accepted(),
        0,
        "p1's server accepted a connection through its ACL"
    );
    // And p1's own connections still work afterwards.
    c.tcp_echo_ok("p1", sa("10.0.1.13", 7000), 100_000);
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn removing_a_route_under_traffic_stops_it_and_restoring_it_resumes_it() {
    let b = routed();
    let c = cluster("route-removed", &b);
    c.wait_reachable("p1", ip("10.0.2.14"), 30);
    let bg = BackgroundPing::start(&c, "p1", ip("10.0.2.14"));
    // Polls below count ping's own packets, not time: 50 tries of a 1 s ping only end a
    // hung run.
    let mut tries = 0;
    while bg.replies().len() < 5 {
        tries += 1;
        if tries > 50 {
            c.fail(&format!(
                "the background ping got no replies:\n{}",
                bg.output()
            ));
        }
        c.ping_args("p2", ip("10.0.1.11"), "-c 1 -W 1");
    }
    let route = b
        .records
        .routes
        .iter()
        .find(|r| r.id == "r1-b2-net")
        .expect("connected route of b2")
        .clone();
    c.delete::<Route>(&route.id);
    // A new ping stops getting through once the agents apply the change...
    let mut stopped = false;
    for _ in 0..30 {
        if c.ping_args("p1", ip("10.0.2.14"), "-c 1 -W 1").received == 0 {
            stopped = true;
            break;
        }
    }
    if !stopped {
        c.fail("p1 still reaches p4 after the route to b2 was removed");
    }
    let p = c.ping("p1", ip("10.0.2.14"), 5);
    if p.received != 0 {
        c.fail(&format!("traffic resumed without the route:\n{}", p.out));
    }
    // ...and so does the ping that was running on installed flows: after the next ten
    // packets it sends, none of them is answered.
    let mark = bg.last_seq();
    let mut tries = 0;
    while bg.last_seq() < mark + 10 {
        tries += 1;
        if tries > 50 {
            c.fail(&format!(
                "the background ping stopped sending:\n{}",
                bg.output()
            ));
        }
        c.ping_args("p2", ip("10.0.1.11"), "-c 1 -W 1");
    }
    let late: Vec<u32> = bg.replies().into_iter().filter(|&s| s > mark).collect();
    if !late.is_empty() {
        c.fail(&format!(
            "the running ping kept getting replies {late:?} after the route was removed:\n{}",
            bg.output()
        ));
    }
    // Putting the route back brings the traffic back.
    c.put(&route);
    c.wait_reachable("p1", ip("10.0.2.14"), 30);
    c.ping_ok("p1", ip("10.0.2.14"), 3);
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn adding_an_acl_rule_under_traffic_blocks_new_connections() {
    // p3's outbound chain starts empty (accept all).
    let b = one_bridge()
        .chain("guard", RuleAction::Accept, vec![])
        .port_chains("p3", None, Some("guard"));
    let c = cluster("acl-added", &b);
    let server = c.echo_server("p3", 7000);
    wait_tcp(&c, "p1", sa("10.0.1.13", 7000), 30);
    c.tcp_echo_ok("p2", sa("10.0.1.13", 7000), 100_000);
    let bg = BackgroundPing::start(&c, "p1", ip("10.0.1.13"));

    let mut guard: Chain = b
        .records
        .chains
        .iter()
        .find(|ch| ch.id == "guard")
        .expect("guard chain")
        .clone();
    guard.rules.push(nsdb::Rule {
        protocol: Some(Protocol::Tcp),
        dst_ports: Some((7000, 7000)),
        ..rule("block-7000", RuleAction::Drop)
    });
    c.put(&guard);
    // New connections stop once the agents apply the rule...
    let mut blocked = false;
    for _ in 0..30 {
        if c.tcp_echo("p1", sa("10.0.1.13", 7000), 1000).is_err() {
            blocked = true;
            break;
        }
    }
    if !blocked {
        c.fail("p1 still connects to p3:7000 after the rule was added");
    }
    // ...from every pod, by dropping the SYN, and the server sees none of them.
    let accepted = server.accepted();
    for from in ["p1", "p2"] {
        match c.tcp_echo(from, sa("10.0.1.13", 7000), 1000) {
            Err(TcpError::ConnectTimeout) => {}
            other => c.fail(&format!("{from} -> p3:7000 must be dropped, got {other:?}")),
        }
    }
    assert_eq!(
        server.accepted(),
        accepted,
        "p3 accepted a connection the rule blocks"
    );
    // Traffic the rule does not match keeps flowing: the running ping still gets answers.
    let mark = bg.last_seq();
    let mut tries = 0;
    while !bg.replies().iter().any(|&s| s > mark) {
        tries += 1;
        if tries > 50 {
            c.fail(&format!(
                "the ping to p3 stopped when a TCP rule was added:\n{}",
                bg.output()
            ));
        }
        c.ping_args("p2", ip("10.0.1.11"), "-c 1 -W 1");
    }
    c.ping_ok("p2", ip("10.0.1.13"), 3);
    // Removing the rule lets connections in again.
    guard.rules.clear();
    c.put(&guard);
    wait_tcp(&c, "p1", sa("10.0.1.13", 7000), 30);
}

/// The same bridge over Geneve (`--tunnel geneve`): every agent creates its tunnel vport
/// as Geneve on UDP 6081, registers that in NSDB, and pods on different hosts reach each
/// other with TCP payloads intact.
#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn one_bridge_across_hosts_over_geneve() {
    let b = one_bridge();
    let mut c = Cluster::start_with("geneve", 3, SCENARIO_SECS, &["--tunnel", "geneve"]);
    c.write_topology(&b.records);
    for pb in b.records.bindings.clone() {
        c.add_pod(&pb.port, &pb.host);
    }
    for h in ["h1", "h2", "h3"] {
        let s = c.host(h).status();
        assert_eq!(s.tunnel, "weft-geneve", "{h}: {s:?}");
        assert_eq!(s.tunnel_udp_port, 6081, "{h}: {s:?}");
    }
    let (p2, p3) = (ip("10.0.1.12"), ip("10.0.1.13"));
    c.wait_reachable("p1", p2, 30);
    c.wait_reachable("p1", p3, 30);
    c.ping_ok("p2", p3, 3);
    let _s3 = c.echo_server("p3", 7000);
    c.tcp_echo_ok("p1", sa("10.0.1.13", 7000), 300_000);
    let h1 = c.host("h1").flows();
    assert!(
        h1.contains("tp_dst=6081") && h1.contains("dst=10.99.0.3"),
        "h1 tunnels to h3 over Geneve's port:\n{h1}"
    );
}
