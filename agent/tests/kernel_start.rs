//! The agent's start in the kernel guest when the node or NSDB is not as it expects: a
//! second agent started next to a running one exits and changes nothing of the first one's
//! datapath, an agent started while etcd is down waits for it and becomes ready without a
//! restart, and an agent restarted while etcd is down leaves the established traffic on the
//! adopted datapath flowing.

mod hosts_support;
mod kernel_support;
mod scen2_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hosts_support::{BackgroundPing, Cluster, api_call, tail};
use kernel_support::in_netns;
use nsdb::Host;
use odp::dpif::Dpif;
use scen2_support::Stream;
use sim::Topology;
use sim::fixtures::TopoBuilder;
use weft_agent::api::Request;

/// Bound of each scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 480;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// Bridge b1 (10.0.1.0/24) with p1 and p3 on h1 and p2 on h2.
fn one_bridge() -> TopoBuilder {
    let mut b = Topology::test()
        .bridge("b1")
        .port_on("p1", "b1", "10.0.1.11", "h1")
        .port_on("p2", "b1", "10.0.1.12", "h2")
        .port_on("p3", "b1", "10.0.1.13", "h1");
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

/// What a second agent could change of a host's datapath: its features (the upcall
/// dispatch mode), each vport with its upcall pids, and the UFIDs of its flows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DpState {
    user_features: u32,
    vports: BTreeMap<String, (u32, Vec<u32>)>,
    ufids: BTreeSet<[u8; 16]>,
}

/// The datapath `weft` of `host` as the kernel reports it, or why it cannot be read.
fn dp_state(host: &str) -> Result<DpState, String> {
    in_netns(host, || {
        let mut d = Dpif::open().map_err(|e| format!("open: {e}"))?;
        let info = d
            .dp_get("weft")
            .map_err(|e| format!("no datapath weft: {e}"))?;
        let vports = d
            .vport_list(info.ifindex)
            .map_err(|e| format!("vport list: {e}"))?
            .into_iter()
            .map(|v| (v.name, (v.port_no, v.upcall_pids)))
            .collect();
        let ufids = d
            .flow_dump(info.ifindex)
            .map_err(|e| format!("flow dump: {e}"))?
            .into_iter()
            .filter_map(|f| f.ufid)
            .collect();
        Ok(DpState {
            user_features: info.user_features,
            vports,
            ufids,
        })
    })
}

/// The sequence numbers in `from..=to` that got no reply.
fn missing(replies: &[u32], from: u32, to: u32) -> Vec<u32> {
    let got: BTreeSet<u32> = replies.iter().copied().collect();
    (from..=to).filter(|s| !got.contains(s)).collect()
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn kernel_start_second_agent_exits_and_leaves_the_first_agents_datapath_alone() {
    let b = one_bridge();
    // A long idle timeout: no flow expires while the datapath is compared.
    let mut c = Cluster::start_with(
        "second-agent",
        2,
        SCENARIO_SECS,
        &["--idle-timeout-secs", "600"],
    );
    c.write_topology(&b.records);
    c.add_pod("p1", "h1");
    c.add_pod("p2", "h2");
    c.wait_reachable("p1", ip("10.0.1.12"), 30);
    c.ping_ok("p1", ip("10.0.1.12"), 3);
    let before = dp_state("h1").unwrap_or_else(|e| c.fail(&e));
    let host_before = c
        .block_on(c.db().get::<Host>("h1"))
        .unwrap_or_else(|e| c.fail(&format!("reading h1's host record: {e}")))
        .unwrap_or_else(|| c.fail("h1 has no host record"));

    let started = Instant::now();
    let (exit, out) = c.host("h1").run_another_agent(Duration::from_secs(120));
    eprintln!(
        "second-agent: the second agent ran {:?}, exit {exit:?}, printed:\n{out}",
        started.elapsed()
    );
    if !c.hosts.get_mut("h1").expect("h1").agent_running() {
        c.fail("the first agent of h1 exited after the second one started");
    }

    // Nothing of the first agent's datapath changed...
    let after = dp_state("h1").unwrap_or_else(|e| c.fail(&e));
    if after != before {
        c.fail(&format!(
            "the second agent changed h1's datapath:\nbefore {before:#?}\nafter {after:#?}"
        ));
    }
    // ...and the first agent still gets the upcalls: established traffic flows, and a new
    // pod's first packets (misses) are simulated and answered.
    c.ping_ok("p1", ip("10.0.1.12"), 3);
    c.add_pod("p3", "h1");
    c.wait_reachable("p3", ip("10.0.1.11"), 30);
    c.wait_reachable("p3", ip("10.0.1.12"), 30);
    c.ping_ok("p2", ip("10.0.1.13"), 3);

    // Nor did it touch the host's registration in NSDB.
    let host_after = c
        .block_on(c.db().get::<Host>("h1"))
        .unwrap_or_else(|e| c.fail(&format!("reading h1's host record: {e}")));
    if host_after.as_ref().map(|h| h.version) != Some(host_before.version) {
        c.fail(&format!(
            "the second agent rewrote h1's host record: before {host_before:?}, after {host_after:?}"
        ));
    }
    // The second agent said why it stopped, and stopped with an error.
    match exit {
        None => c.fail(&format!(
            "the second agent of h1 was still running after 120 s:\n{out}"
        )),
        Some(st) if st.success() => c.fail(&format!(
            "the second agent of h1 exited successfully ({st}):\n{out}"
        )),
        Some(_) => {}
    }
    if !out.contains("another weft-agent") {
        c.fail(&format!(
            "the second agent's message does not say another agent runs:\n{out}"
        ));
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn kernel_start_with_etcd_down_waits_and_becomes_ready_when_etcd_starts() {
    let b = one_bridge();
    let mut c = Cluster::start("etcd-down-start", 2, SCENARIO_SECS);
    c.write_topology(&b.records);
    // A fresh node: h1's agent and its datapath are gone.
    c.kill_agent("h1");
    in_netns("h1", || {
        let mut d = Dpif::open().expect("datapath socket");
        d.dp_delete("weft").expect("deleting h1's datapath");
    });
    c.stop_etcd();
    c.spawn_agent("h1");
    let st = c.wait_answering("h1");
    let pid = c.host("h1").agent_pid();
    if st.ready {
        c.fail(&format!(
            "h1's agent says it is ready while etcd is down: {st:?}"
        ));
    }
    // While it waits: the agent runs, answers, refuses what needs NSDB, says it is not
    // ready, retries, and has not touched the datapath.
    std::thread::sleep(Duration::from_secs(5));
    if !c.hosts.get_mut("h1").expect("h1").agent_running() {
        c.fail("h1's agent exited while etcd was down");
    }
    match api_call(
        &c.host("h1").api,
        &Request::Attach {
            port: "p1".into(),
            ifname: "wf-p1".into(),
        },
    ) {
        Err(e) if e.contains("not ready") => {}
        other => c.fail(&format!("attach while etcd is down answered {other:?}")),
    }
    match c.host("h1").http_get("/readyz") {
        Ok((503, body)) if body.contains("NSDB") => {}
        other => c.fail(&format!("/readyz while etcd is down answered {other:?}")),
    }
    match c.host("h1").http_get("/healthz") {
        Ok((200, _)) => {}
        other => c.fail(&format!("/healthz while etcd is down answered {other:?}")),
    }
    if let Ok(s) = dp_state("h1") {
        c.fail(&format!(
            "h1's agent created its datapath before it knew the topology: {s:?}"
        ));
    }
    let log = tail(&c.host("h1").log, 200);
    let retries: Vec<&str> = log.lines().filter(|l| l.contains("retrying in")).collect();
    if retries.len() < 2 {
        c.fail(&format!(
            "h1's agent did not log its retries while etcd was down:\n{log}"
        ));
    }
    eprintln!(
        "etcd-down-start: while etcd was down: {st:?}\n{}",
        retries.join("\n")
    );

    // etcd comes: the same process becomes ready, and its pods attach and ping.
    let etcd_up = Instant::now();
    c.start_etcd();
    let st = c.wait_agent_ready("h1");
    eprintln!(
        "etcd-down-start: h1's agent ready {:?} after etcd started: {st:?}",
        etcd_up.elapsed()
    );
    if c.host("h1").agent_pid() != pid || !c.hosts.get_mut("h1").expect("h1").agent_running() {
        c.fail("h1's agent was restarted to become ready");
    }
    match c.host("h1").http_get("/readyz") {
        Ok((200, _)) => {}
        other => c.fail(&format!("/readyz once ready answered {other:?}")),
    }
    c.add_pod("p1", "h1");
    c.add_pod("p2", "h2");
    c.wait_reachable("p1", ip("10.0.1.12"), 30);
    c.ping_ok("p1", ip("10.0.1.12"), 3);
    c.ping_ok("p2", ip("10.0.1.11"), 3);
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn kernel_start_restart_with_etcd_down_keeps_established_traffic_flowing() {
    let b = one_bridge();
    let mut c = Cluster::start("etcd-down-restart", 2, SCENARIO_SECS);
    c.write_topology(&b.records);
    c.add_pod("p1", "h1");
    c.add_pod("p2", "h2");
    c.wait_reachable("p1", ip("10.0.1.12"), 30);
    let _server = c.echo_server("p2", 7000);
    let ping = BackgroundPing::start(&c, "p1", ip("10.0.1.12"));
    let stream = Stream::start(
        &c.pod("p1").ns,
        SocketAddr::new(IpAddr::V4(ip("10.0.1.12")), 7000),
        Duration::from_millis(50),
    );
    wait_for(&c, "ping and stream running", 600, || {
        ping.replies().len() >= 5 && stream.chunks().len() >= 5
    });
    let first_seq = *ping.replies().iter().min().expect("ping replies");
    let flows_before = dp_state("h1").unwrap_or_else(|e| c.fail(&e)).ufids;

    // etcd goes, then h1's agent is killed and started again while etcd is still down.
    c.stop_etcd();
    c.kill_agent("h1");
    c.spawn_agent("h1");
    let st = c.wait_answering("h1");
    let pid = c.host("h1").agent_pid();
    if st.ready {
        c.fail(&format!(
            "h1's agent says it is ready while etcd is down: {st:?}"
        ));
    }
    let (seq, chunks) = (ping.last_seq(), stream.chunks().len());
    wait_for(&c, "traffic while h1's agent waits for etcd", 600, || {
        ping.last_seq() >= seq + 15 && stream.chunks().len() >= chunks + 15
    });
    if !c.hosts.get_mut("h1").expect("h1").agent_running() {
        c.fail("h1's agent exited while etcd was down");
    }
    let waiting = dp_state("h1").unwrap_or_else(|e| c.fail(&e)).ufids;
    let gone: Vec<_> = flows_before.difference(&waiting).collect();
    if !gone.is_empty() {
        c.fail(&format!(
            "flows of the established traffic were deleted while the agent waited for etcd: {gone:02x?}"
        ));
    }

    // etcd comes back: the same agent becomes ready, and the traffic goes on.
    c.start_etcd();
    c.wait_agent_ready("h1");
    if c.host("h1").agent_pid() != pid {
        c.fail("h1's agent was restarted to become ready");
    }
    let (seq, chunks) = (ping.last_seq(), stream.chunks().len());
    wait_for(&c, "traffic after h1's agent became ready", 600, || {
        ping.last_seq() >= seq + 10 && stream.chunks().len() >= chunks + 10
    });
    let total = stream
        .finish()
        .unwrap_or_else(|e| c.fail(&format!("the TCP stream across the restart failed: {e}")));
    let last_checked = ping.last_seq().saturating_sub(3);
    wait_for(&c, "the last replies", 100, || {
        ping.last_seq() >= last_checked + 6
    });
    let lost = missing(&ping.replies(), first_seq, last_checked);
    eprintln!("etcd-down-restart: ping seq {first_seq}..={last_checked}, stream {total} bytes");
    if !lost.is_empty() {
        c.fail(&format!(
            "pings on the established flow were lost across the restart with etcd down: {lost:?}\n{}",
            ping.output()
        ));
    }
    c.ping_ok("p2", ip("10.0.1.11"), 3);
}
