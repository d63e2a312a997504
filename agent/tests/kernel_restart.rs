//! `kill -9` of a host's agent in the kernel guest while pods talk across hosts: traffic on
//! established flows goes on while the agent is dead (past the expiry of its host lease)
//! and while it restarts, and the restarted agent adopts the datapath's flows, tracks every
//! one that is left, and has deleted the ones a topology change made while it was dead
//! invalidated.

mod hosts_support;
mod kernel_support;
mod scen2_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hosts_support::{BackgroundPing, Cluster, tail};
use nsdb::{Host, Port};
use scen2_support::{DpctlFlow, Stream, agent_flows, dpctl_flows, tcp_counter};
use sim::Topology;
use sim::fixtures::TopoBuilder;

/// Bound of the scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 480;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
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

/// Polls (100 ms apart, at most `tries` times: the bound only ends a hung run) until
/// `done` holds.
fn wait_for(c: &Cluster, what: &str, tries: u32, mut done: impl FnMut() -> bool) {
    for _ in 0..tries {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    c.fail(&format!("gave up waiting: {what}"))
}

/// The flows of `host` that tunnel to the port with tunnel key `key`.
fn tunnelling_to(flows: &[DpctlFlow], key: u32) -> Vec<DpctlFlow> {
    let needle = format!("tun_id={key:#x}");
    flows
        .iter()
        .filter(|f| f.actions.contains(&needle))
        .cloned()
        .collect()
}

/// Every flow in the datapath of `host` is one its agent tracks, no UFID or match appears
/// twice, and the agent tracks no flow the datapath does not have. Flows can be installed
/// between the two reads, so a disagreement is read again a few times before it fails.
fn check_flows_agree(c: &Cluster, host: &str) -> Vec<DpctlFlow> {
    let mut last = String::new();
    for _ in 0..5 {
        let before = dpctl_flows(c, host);
        let tracked = agent_flows(c, host);
        let after = dpctl_flows(c, host);
        let mut problems = Vec::new();
        let mut ufids = BTreeSet::new();
        let mut matches = BTreeSet::new();
        for f in &before {
            if !ufids.insert(f.ufid.clone()) {
                problems.push(format!("UFID twice in the datapath: {}", f.line));
            }
            if !matches.insert(f.matched.clone()) {
                problems.push(format!("match twice in the datapath: {}", f.line));
            }
        }
        let after_ids: BTreeSet<&str> = after.iter().map(|f| f.ufid.as_str()).collect();
        for f in &before {
            if after_ids.contains(f.ufid.as_str()) && !tracked.contains_key(&f.ufid) {
                problems.push(format!(
                    "in the datapath, not tracked by the agent: {}",
                    f.line
                ));
            }
        }
        for (u, text) in &tracked {
            if !ufids.contains(u) && !after_ids.contains(u.as_str()) {
                problems.push(format!(
                    "tracked by the agent, not in the datapath: {u}, {text}"
                ));
            }
        }
        if problems.is_empty() {
            return after;
        }
        last = problems.join("\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    c.fail(&format!(
        "the datapath of {host} and its restarted agent disagree:\n{last}"
    ))
}

/// The packet count `ovs-dpctl` printed for a flow.
fn packets(f: &DpctlFlow) -> u64 {
    f.line
        .split(", ")
        .find_map(|p| p.strip_prefix("packets:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {}", f.line))
}

/// p1's TCP counters that tell retransmissions apart, for the record: (RetransSegs,
/// TCPLossProbes, TCPFastRetrans, TCPTimeouts).
fn tcp_counters(c: &Cluster) -> [Option<u64>; 4] {
    let ns = &c.pod("p1").ns;
    [
        tcp_counter(ns, "Tcp", "RetransSegs"),
        tcp_counter(ns, "TcpExt", "TCPLossProbes"),
        tcp_counter(ns, "TcpExt", "TCPFastRetrans"),
        tcp_counter(ns, "TcpExt", "TCPTimeouts"),
    ]
}

/// The sequence numbers in `from..=to` that got no reply.
fn missing(replies: &[u32], from: u32, to: u32) -> Vec<u32> {
    let got: BTreeSet<u32> = replies.iter().copied().collect();
    (from..=to).filter(|s| !got.contains(s)).collect()
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn agent_kill_9_and_restart_loses_no_packet_and_leaves_no_stale_flow() {
    let b = one_bridge();
    let mut c = Cluster::start("restart", 3, SCENARIO_SECS);
    c.write_topology(&b.records);
    for pb in b.records.bindings.clone() {
        c.add_pod(&pb.port, &pb.host);
    }
    c.wait_reachable("p1", ip("10.0.1.12"), 30);
    c.wait_reachable("p1", ip("10.0.1.13"), 30);
    let _server = c.echo_server("p2", 7000);

    // h1 holds flows to p3 (on h3); a change made while h1's agent is dead invalidates them.
    c.ping_ok("p1", ip("10.0.1.13"), 3);
    let p3_key = b.key_of("p3");
    let to_p3 = tunnelling_to(&dpctl_flows(&c, "h1"), p3_key);
    if to_p3.is_empty() {
        c.fail(&format!(
            "h1 has no flow tunnelling to p3 (key {p3_key:#x}) after pinging it"
        ));
    }

    // Established traffic from p1 (h1) to p2 (h2): a ping every 0.2 s and a TCP stream.
    let ping = BackgroundPing::start(&c, "p1", ip("10.0.1.12"));
    let stream = Stream::start(
        &c.pod("p1").ns,
        SocketAddr::new(IpAddr::V4(ip("10.0.1.12")), 7000),
        Duration::from_millis(50),
    );
    wait_for(&c, "ping and stream running before the kill", 600, || {
        ping.replies().len() >= 5 && stream.chunks().len() >= 5
    });
    let counters_before = tcp_counters(&c);
    let first_seq = *ping.replies().iter().min().expect("ping replies");

    // The established flows from p1 to p2, with their packet counts.
    let p2_key = b.key_of("p2");
    let to_p2_before = tunnelling_to(&dpctl_flows(&c, "h1"), p2_key);
    if to_p2_before.is_empty() {
        c.fail(&format!(
            "h1 has no flow tunnelling to p2 (key {p2_key:#x}) while p1 pings it"
        ));
    }

    // kill -9.
    let seq_at_kill = ping.last_seq();
    let chunks_at_kill = stream.chunks().len();
    let killed = Instant::now();
    c.kill_agent("h1");
    if c.hosts.get_mut("h1").expect("h1").agent_running() {
        c.fail("the agent of h1 still runs after SIGKILL");
    }
    eprintln!("restart: h1's agent killed at ping seq {seq_at_kill}, {chunks_at_kill} chunks");

    // While it is dead: port p3 goes down in NSDB (h1's flows to p3 are now stale), and
    // the established traffic keeps flowing on the kernel's flows alone.
    let mut p3: Port = b
        .records
        .ports
        .iter()
        .find(|p| p.id == "p3")
        .expect("port p3")
        .clone();
    p3.admin_up = false;
    c.put(&p3);
    wait_for(&c, "traffic while h1's agent is dead", 600, || {
        ping.last_seq() >= seq_at_kill + 10 && stream.chunks().len() >= chunks_at_kill + 10
    });
    let chunks_while_dead = stream.chunks().iter().filter(|t| **t > killed).count();
    // An agent may stay down longer than its host registration's lease (a slow start, an
    // upgrade): stay down until the lease has expired and NSDB dropped the host record,
    // so the restart below always covers that case too.
    wait_for(
        &c,
        "h1's host record to expire with its lease",
        1200,
        || matches!(c.block_on(c.db().get::<Host>("h1")), Ok(None)),
    );
    eprintln!(
        "restart: h1's host record expired with its lease {:?} after the kill",
        killed.elapsed()
    );
    let seq_at_restart = ping.last_seq();

    // Restart, and let the traffic run on through the restart and after it.
    let restarted = Instant::now();
    let st = c.start_agent("h1");
    let ready = Instant::now();
    eprintln!(
        "restart: h1's agent was dead {:?}, answered Status {:?} after its start, tracks {} flows",
        restarted - killed,
        ready - restarted,
        st.flows
    );
    let seq_at_ready = ping.last_seq();
    let chunks_at_ready = stream.chunks().len();
    wait_for(&c, "traffic after the restart", 600, || {
        ping.last_seq() >= seq_at_ready + 10 && stream.chunks().len() >= chunks_at_ready + 10
    });
    let total = stream
        .finish()
        .unwrap_or_else(|e| c.fail(&format!("the TCP stream across the restart failed: {e}")));
    let last_checked = ping.last_seq().saturating_sub(3);
    // Late replies still arrive while ping runs: stop it only after them.
    wait_for(&c, "the last replies", 100, || {
        ping.last_seq() >= last_checked + 6
    });
    let replies = ping.replies();
    let out = ping.output();
    drop(ping);
    let lost = missing(&replies, first_seq, last_checked);
    eprintln!(
        "restart: ping seq {first_seq}..={last_checked} (kill at {seq_at_kill}, restart at \
         {seq_at_restart}, ready at {seq_at_ready}); stream {total} bytes, {chunks_while_dead} \
         chunks while the agent was dead; p1's TCP counters {counters_before:?} -> {:?}",
        tcp_counters(&c),
    );
    if chunks_while_dead == 0 {
        c.fail("the TCP stream made no progress while the agent was dead");
    }

    // The datapath holds no duplicate and no flow the restarted agent does not track...
    let flows = check_flows_agree(&c, "h1");
    // ...and the flows to p3 that went stale while it was dead are gone.
    let stale_ids: BTreeSet<&str> = to_p3.iter().map(|f| f.ufid.as_str()).collect();
    let left: Vec<&DpctlFlow> = flows
        .iter()
        .filter(|f| stale_ids.contains(f.ufid.as_str()))
        .collect();
    let still_to_p3 = tunnelling_to(&flows, p3_key);
    if !left.is_empty() || !still_to_p3.is_empty() {
        c.fail(&format!(
            "flows invalidated while the agent was dead survived its restart:\n{left:#?}\n{still_to_p3:#?}"
        ));
    }
    // The established flows were adopted, not flushed and installed again: the same UFIDs
    // are there and their packet counts kept growing from where they were.
    for f in &to_p2_before {
        let Some(now) = flows.iter().find(|g| g.ufid == f.ufid) else {
            c.fail(&format!(
                "the established flow {} is gone after the restart:\n{flows:#?}",
                f.line
            ))
        };
        if packets(now) < packets(f) {
            c.fail(&format!(
                "the established flow was installed again after the restart (its packet count \
                 went back): before {}\nafter {}",
                f.line, now.line
            ));
        }
    }
    let log = tail(&c.host("h1").log, 400);
    let revalidated: Vec<&str> = log.lines().filter(|l| l.contains("revalidated")).collect();
    eprintln!("restart: {revalidated:?}");

    // What a user sees: p3 is down, p1 no longer reaches it; p2 still does.
    let p = c.ping("p1", ip("10.0.1.13"), 3);
    if p.received != 0 {
        c.fail(&format!("p1 reaches p3 although p3 is down:\n{}", p.out));
    }
    c.ping_ok("p1", ip("10.0.1.12"), 3);
    c.ping_ok("p2", ip("10.0.1.11"), 3);
    let per_host: BTreeMap<&str, usize> = [("h1", flows.len())].into_iter().collect();
    eprintln!("restart: flows after the restart: {per_host:?}");

    // Checked last, so the flow checks above report too: not one ping was lost.
    if !lost.is_empty() {
        let withdrawn: Vec<String> = ["h2", "h3"]
            .iter()
            .flat_map(|h| {
                tail(&c.host(h).log, 400)
                    .lines()
                    .filter(|l| l.contains("no such host"))
                    .map(|l| format!("{h}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        c.fail(&format!(
            "pings on the established flow were lost across the kill and restart: {lost:?}\n\
             other agents on h1's host record going while its agent was dead:\n{}\n{out}",
            withdrawn.join("\n")
        ));
    }
}
