//! Load balancing and NAT across three hosts in the kernel guest, as a user of the virtual
//! network sees them: a VIP spreading many connections over backends on other hosts while
//! the client only ever talks to the VIP, a weighted VIP split in the kernel with no upcall
//! per connection, a backend removed under traffic getting no new connection while
//! established connections carry on, a member taken out by its health check when its server
//! stops and back when it returns, an HTTP check telling a server that answers 2xx from one
//! that answers 503 or speaks no HTTP (and a member kept when its host's agent dies), a client kept on its member by `ClientIP` session affinity until it is idle
//! for the timeout (and across an agent restart), a backend reaching its own IPv6 Service
//! (hairpin), and pods reaching an external network through the router's uplink with source
//! NAT.

mod hosts_support;
mod kernel_support;
mod kuryr_support;
mod scen2_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use hosts_support::Cluster;
use nsdb::{LoadBalancer, Protocol};
use scen2_support::{
    BackgroundExchanges, Exchange, External, HeldExchange, HttpServer, NamedServer, dpctl_flows,
    exchange, exchanges, generation, wait_exchange, wait_generation,
};
use sim::Topology;
use sim::fixtures::TopoBuilder;

/// Bound of one scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 480;

const VIP: &str = "10.96.0.10";
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT: &str = "10.0.1.21";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(addr)), port)
}

/// Client c1 on h3 in b1 (10.0.1.0/24); backends be1 on h1 and be2 on h2 in b2
/// (10.0.2.0/24); router r1 joins them and holds load balancer `web`: VIP 10.96.0.10:80
/// over both backends' port 8080, equal weights, no session affinity.
fn lb_topology() -> TopoBuilder {
    weighted_topology(1, 1)
}

/// [`lb_topology`] with weights `w1` for be1 and `w2` for be2.
fn weighted_topology(w1: u32, w2: u32) -> TopoBuilder {
    Topology::test()
        .bridge("b1")
        .bridge("b2")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .link("r1", "b2", "10.0.2.1/24")
        .port_on("c1", "b1", CLIENT, "h3")
        .port_on("be1", "b2", "10.0.2.31", "h1")
        .port_on("be2", "b2", "10.0.2.32", "h2")
        .vip(
            "web",
            Some("r1"),
            VIP,
            Protocol::Tcp,
            VIP_PORT,
            &[
                ("10.0.2.31", BACKEND_PORT, w1, true),
                ("10.0.2.32", BACKEND_PORT, w2, true),
            ],
            false,
        )
}

/// The record of load balancer `web` in `b`, to change and write back.
fn web(b: &TopoBuilder) -> LoadBalancer {
    b.records
        .load_balancers
        .iter()
        .find(|l| l.id == "web")
        .expect("load balancer web")
        .clone()
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

/// The two backends' servers, each naming itself.
fn backends(c: &Cluster) -> (NamedServer, NamedServer) {
    let be1 = NamedServer::start(&c.pod("be1").ns, "be1", sa("10.0.2.31", BACKEND_PORT));
    let be2 = NamedServer::start(&c.pod("be2").ns, "be2", sa("10.0.2.32", BACKEND_PORT));
    (be1, be2)
}

/// What the client must see of every connection to the VIP: the VIP as its peer, and the
/// backend seeing the client's own address and port (destination NAT only).
fn check_vip_exchange(c: &Cluster, x: &Exchange, i: usize) {
    let vip = sa(VIP, VIP_PORT);
    if x.peer != vip {
        c.fail(&format!(
            "connection {i}: the client's socket reports peer {} instead of the VIP {vip}",
            x.peer
        ));
    }
    if x.server_saw != x.local {
        c.fail(&format!(
            "connection {i}: backend {} saw the client as {} but the client is {}",
            x.backend, x.server_saw, x.local
        ));
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn vip_spreads_many_connections_over_backends_on_two_hosts_and_the_client_sees_only_the_vip() {
    let b = lb_topology();
    let c = cluster("lb-spread", &b);
    let (be1, be2) = backends(&c);
    // The backends are reachable directly first (the agents know every binding)...
    c.wait_reachable("c1", ip("10.0.2.31"), 30);
    c.wait_reachable("c1", ip("10.0.2.32"), 30);
    // ...then through the VIP.
    let first = wait_exchange(&c, "c1", sa(VIP, VIP_PORT), 30);
    check_vip_exchange(&c, &first, 0);

    const N: usize = 60;
    let results = exchanges(&c.pod("c1").ns, sa(VIP, VIP_PORT), N, 3000);
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(x) => {
                check_vip_exchange(&c, x, i + 1);
                *per_backend.entry(x.backend.clone()).or_default() += 1;
            }
            Err(e) => c.fail(&format!(
                "connection {} of {N} to the VIP failed: {e}",
                i + 1
            )),
        }
    }
    eprintln!("lb-spread: {N} connections to {VIP}:{VIP_PORT}: {per_backend:?}");
    // Equal weights: each backend gets a fair share. With a uniform choice per connection,
    // fewer than 15 of 60 on one side has a probability of about 3e-5.
    for name in ["be1", "be2"] {
        let n = per_backend.get(name).copied().unwrap_or(0);
        if n < N / 4 {
            c.fail(&format!(
                "backend {name} got {n} of {N} connections, not a fair share: {per_backend:?}"
            ));
        }
    }
    assert_eq!(
        per_backend.values().sum::<usize>(),
        N,
        "only the two backends answer: {per_backend:?}"
    );
    // The servers agree with what the client saw (plus the first exchange).
    assert_eq!(
        be1.accepted() + be2.accepted(),
        N as u64 + 1,
        "the backends accepted a different number of connections than the client made"
    );
}

/// The flows of the VIP's bucket stage on `host` (under the VIP's own recirculation id, one
/// per bucket).
fn bucket_flows(c: &Cluster, host: &str) -> usize {
    let key = sim::Tag::vip_key("web", ip(VIP).into(), 6, VIP_PORT);
    let id = format!("recirc_id({:#x}),", sim::vip_recirc(key));
    dpctl_flows(c, host)
        .iter()
        .filter(|f| f.matched.starts_with(&id))
        .count()
}

/// What every agent has taken from its datapath so far: upcalls it received (its metric)
/// and misses the kernel counted, per host.
fn misses(c: &Cluster) -> BTreeMap<&'static str, (f64, u64)> {
    ["h1", "h2", "h3"]
        .into_iter()
        .map(|h| {
            let host = c.host(h);
            (
                h,
                (
                    host.metric("weft_agent_upcalls_total"),
                    host.datapath_lookups().1,
                ),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_weighted_vip_splits_in_the_kernel_by_weight_and_new_connections_never_upcall() {
    let b = weighted_topology(3, 1);
    let c = cluster("lb-buckets", &b);
    let (be1, be2) = backends(&c);
    c.wait_reachable("c1", ip("10.0.2.31"), 30);
    c.wait_reachable("c1", ip("10.0.2.32"), 30);
    wait_exchange(&c, "c1", sa(VIP, VIP_PORT), 30);
    let ns = c.pod("c1").ns.clone();

    // Warm-up: connections until the client's host holds a flow for each of the VIP's 64
    // buckets (about 300 connections are expected to touch every bucket).
    let mut warm = 0;
    while bucket_flows(&c, "h3") < 64 {
        if warm >= 2000 {
            c.fail(&format!(
                "after {warm} connections h3 holds {} of the 64 bucket flows",
                bucket_flows(&c, "h3")
            ));
        }
        for r in exchanges(&ns, sa(VIP, VIP_PORT), 50, 100) {
            if let Err(e) = r {
                c.fail(&format!("warm-up connection to the VIP failed: {e}"));
            }
        }
        warm += 50;
    }
    let flows = bucket_flows(&c, "h3");
    assert_eq!(flows, 64, "one bucket flow per bucket, not per connection");

    const N: usize = 1000;
    let before = misses(&c);
    let (be1_before, be2_before) = (be1.accepted(), be2.accepted());
    let started = Instant::now();
    let results = exchanges(&ns, sa(VIP, VIP_PORT), N, 100);
    let took = started.elapsed();
    let after = misses(&c);
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(x) => {
                check_vip_exchange(&c, x, i);
                *per_backend.entry(x.backend.clone()).or_default() += 1;
            }
            Err(e) => c.fail(&format!("connection {i} of {N} to the VIP failed: {e}")),
        }
    }
    let moved: BTreeMap<&str, (f64, u64)> = after
        .iter()
        .map(|(h, (u, m))| (*h, (u - before[h].0, m - before[h].1)))
        .collect();
    eprintln!(
        "lb-buckets: {warm} warm-up connections; then {N} in {took:?} ({:.0}/s): {per_backend:?}; \
         upcalls and kernel misses per host during them: {moved:?}",
        N as f64 / took.as_secs_f64()
    );
    for (h, (upcalls, missed)) in &moved {
        if *upcalls != 0.0 || *missed != 0 {
            c.fail(&format!(
                "{N} new connections after warm-up left the kernel on {h}: {upcalls} upcalls, \
                 {missed} misses (all hosts: {moved:?})"
            ));
        }
    }
    // Weights 3:1 are 48 and 16 of 64 buckets; the kernel's hash spreads connections over
    // them. Within five points of 75%: about 3.6 standard deviations of 1,000 draws.
    let heavy = per_backend.get("be1").copied().unwrap_or(0);
    if !(700..=800).contains(&heavy) {
        c.fail(&format!(
            "be1 (weight 3 of 4) got {heavy} of {N} connections, not 75% ± 5: {per_backend:?}"
        ));
    }
    assert_eq!(
        (be1.accepted() - be1_before + be2.accepted() - be2_before) as usize,
        N,
        "the backends accepted a different number of connections than the client made"
    );

    // Weights 3:1 become 1:1: 16 or so buckets move from be1 to be2. Only their flows go;
    // the others stay in the kernel, so new connections upcall only in the moved buckets.
    let before = generation(&c, "h3");
    let mut lb = web(&b);
    for m in &mut lb.vips[0].members {
        m.weight = 1;
    }
    c.put(&lb);
    wait_generation(&c, "h3", before, 1200);
    let mut left = bucket_flows(&c, "h3");
    for _ in 0..100 {
        if left < 64 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = bucket_flows(&c, "h3");
    }
    let moved = 64 - left;
    let upcalls0 = c.host("h3").metric("weft_agent_upcalls_total");
    for r in exchanges(&ns, sa(VIP, VIP_PORT), 300, 100) {
        if let Err(e) = r {
            c.fail(&format!("a connection after the weight change failed: {e}"));
        }
    }
    let upcalls = c.host("h3").metric("weft_agent_upcalls_total") - upcalls0;
    eprintln!(
        "lb-buckets: weights 3:1 -> 1:1: {moved} of 64 bucket flows deleted; 300 connections then made {upcalls} upcalls on h3"
    );
    if !(16..=24).contains(&moved) {
        c.fail(&format!(
            "the weight change deleted {moved} bucket flows, not the 16 or so that moved"
        ));
    }
    // Each moved bucket's first connection, plus the two flows before the bucket stage that
    // carry the load balancer's own tag (its first pass and its hash), and some slack: far
    // fewer than the 64 a flush of every bucket would cost.
    if upcalls > (moved + 4) as f64 {
        c.fail(&format!(
            "{upcalls} upcalls after the weight change, more than the {moved} moved buckets need"
        ));
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn vip_backend_removed_under_traffic_gets_no_new_connection() {
    let b = lb_topology();
    let c = cluster("lb-remove", &b);
    let (_be1, be2) = backends(&c);
    c.wait_reachable("c1", ip("10.0.2.31"), 30);
    c.wait_reachable("c1", ip("10.0.2.32"), 30);
    wait_exchange(&c, "c1", sa(VIP, VIP_PORT), 30);

    // Connections open one after the other for the whole scenario.
    let bg = BackgroundExchanges::start(&c.pod("c1").ns, sa(VIP, VIP_PORT), 2000);
    // Both backends take connections before the change (polls count connections, not time).
    let mut polls = 0;
    loop {
        let seen: Vec<String> = bg
            .attempts()
            .iter()
            .filter_map(|a| a.result.as_ref().ok().map(|x| x.backend.clone()))
            .collect();
        if seen.iter().any(|s| s == "be1") && seen.iter().any(|s| s == "be2") && seen.len() >= 10 {
            break;
        }
        polls += 1;
        if polls > 600 || bg.count() > 80 {
            c.fail(&format!(
                "before the change the VIP did not spread over both backends: {:?}",
                bg.attempts()
                    .iter()
                    .map(|a| a.result.as_ref().map(|x| x.backend.clone()))
                    .collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Connections established before the change, finished after it.
    let held: Vec<HeldExchange> = (0..6)
        .map(|_| HeldExchange::open(&c.pod("c1").ns, sa(VIP, VIP_PORT), 4000))
        .collect();

    // The client's host is the one that picks the backend (the ingress host decides).
    let before = generation(&c, "h3");
    let mut lb = web(&b);
    lb.vips[0]
        .members
        .retain(|m| m.ip != IpAddr::V4(ip("10.0.2.32")));
    let written = Instant::now();
    c.put(&lb);
    let g = wait_generation(&c, "h3", before, 1200);
    let applied = Instant::now();
    let be2_at_apply = be2.accepted();
    eprintln!(
        "lb-remove: be2 removed from {VIP}; h3 generation {before} -> {g} after {:?}",
        applied - written
    );
    // Keep connecting: at least 30 connections opened after the agent applied the change.
    let mut polls = 0;
    while bg
        .attempts()
        .iter()
        .filter(|a| a.started >= applied)
        .count()
        < 30
    {
        polls += 1;
        if polls > 1200 {
            c.fail("the background connections stopped making progress");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let attempts = bg.stop();
    let mut held_on = BTreeMap::<String, usize>::new();
    for (i, h) in held.into_iter().enumerate() {
        match h.finish() {
            Ok(x) => {
                check_vip_exchange(&c, &x, i);
                *held_on.entry(x.backend).or_default() += 1;
            }
            Err(e) => c.fail(&format!(
                "connection {i}, established before the change, broke: {e}"
            )),
        }
    }
    eprintln!(
        "lb-remove: connections established before and finished after the change: {held_on:?}"
    );

    let mut failed = Vec::new();
    let mut to_removed_after = Vec::new();
    let (mut between, mut after) = (BTreeMap::<String, usize>::new(), 0usize);
    for (i, a) in attempts.iter().enumerate() {
        match &a.result {
            Err(e) => failed.push(format!("#{i}: {e}")),
            Ok(x) => {
                check_vip_exchange(&c, x, i);
                if a.started >= applied {
                    after += 1;
                    if x.backend != "be1" {
                        to_removed_after.push(format!("#{i} -> {} ({})", x.backend, x.local));
                    }
                } else if a.started >= written {
                    *between.entry(x.backend.clone()).or_default() += 1;
                }
            }
        }
    }
    eprintln!(
        "lb-remove: {} connections in all; between the write and the agent applying it: {between:?}; \
         after: {after}, be2 accepted {} before and {} after",
        attempts.len(),
        be2_at_apply,
        be2.accepted()
    );
    if !failed.is_empty() {
        c.fail(&format!(
            "connections to the VIP failed while a backend was removed (the remaining one was up): {failed:?}"
        ));
    }
    if !to_removed_after.is_empty() {
        c.fail(&format!(
            "new connections went to the removed backend after the agent applied the change: {to_removed_after:?}"
        ));
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn snat_through_the_router_uplink_shows_the_outside_only_the_snat_address() {
    // Router r1: b1 (10.0.1.0/24: p1 on h1, p2 on h3) and uplink up1 192.0.2.2/24 on h3,
    // whose next hop 192.0.2.1 is the external namespace; default route out of the uplink,
    // SNAT to the uplink's address over ports 20000-30000.
    const EXT_MAC: &str = "02:00:00:00:ee:01";
    let b = Topology::test()
        .bridge("b1")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .port_on("p1", "b1", "10.0.1.11", "h1")
        .port_on("p2", "b1", "10.0.1.12", "h3")
        .uplink("r1", "up1", "192.0.2.2/24", EXT_MAC)
        .route("default", "r1", "0.0.0.0/0", Some("192.0.2.1"), "up1", 1)
        .snat("r1", "up1", &["192.0.2.2"], (20000, 30000));
    let mut c = Cluster::start("snat", 3, SCENARIO_SECS);
    c.write_topology(&b.records);
    // The pods; the uplink is not a pod (the fixture binds it, the external side attaches it).
    for pb in b.records.bindings.clone() {
        if pb.port != "up1" {
            c.add_pod(&pb.port, &pb.host);
        }
    }
    let ext = External::attach(&c, "ext1", "h3", "up1", ip("192.0.2.1"), 24, EXT_MAC);
    let server = NamedServer::start(&ext.ns, "outside", sa("192.0.2.1", 9000));
    c.wait_reachable("p1", ip("10.0.1.12"), 30);

    // From a pod on another host than the uplink (through the tunnel), and from one on the
    // uplink's host.
    for pod in ["p1", "p2"] {
        let ns = c.pod(pod).ns.clone();
        let mut last = String::new();
        let mut got = None;
        for _ in 0..30 {
            match exchange(&ns, sa("192.0.2.1", 9000), 5000) {
                Ok(x) => {
                    got = Some(x);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some(x) = got else {
            c.fail(&format!(
                "{pod} never reached the outside 192.0.2.1:9000 through the uplink: {last}\n\
                 the outside's neighbour entry for the uplink address: {}",
                ext.neigh(ip("192.0.2.2"))
            ))
        };
        check_snat(&c, pod, &x);
        // More connections, each a new SNAT mapping.
        for (i, r) in exchanges(&ns, sa("192.0.2.1", 9000), 10, 5000)
            .into_iter()
            .enumerate()
        {
            match r {
                Ok(x) => check_snat(&c, pod, &x),
                Err(e) => c.fail(&format!("{pod}: connection {i} to the outside failed: {e}")),
            }
        }
        // Ping too: ICMP is translated as well, and the replies come back.
        c.ping_ok(pod, ip("192.0.2.1"), 3);
    }
    assert_eq!(
        server.accepted(),
        2 * 11,
        "the outside accepted every connection"
    );
    // The outside resolved the uplink's address (the SNAT address) to the uplink's MAC.
    let n = ext.neigh(ip("192.0.2.2"));
    let up_mac = nsdb::MacAddr(b.mac("up1")).to_string();
    assert!(
        n.contains(&up_mac),
        "the outside resolves 192.0.2.2 to the uplink's MAC {up_mac}: {n}"
    );
}

/// The outside saw the SNAT address and a port of the SNAT range, never the pod; the pod
/// saw the outside's own address as its peer, payload intact.
fn check_snat(c: &Cluster, pod: &str, x: &Exchange) {
    let snat = IpAddr::V4(ip("192.0.2.2"));
    if x.server_saw.ip() != snat || !(20000..=30000).contains(&x.server_saw.port()) {
        c.fail(&format!(
            "{pod} ({}) reached the outside as {}, not as the SNAT address {snat} with a port in 20000-30000",
            x.local, x.server_saw
        ));
    }
    if x.peer != sa("192.0.2.1", 9000) {
        c.fail(&format!("{pod}'s socket reports peer {}", x.peer));
    }
}

/// The member the simulation gives client c1 at the VIP of `b` when nothing is remembered:
/// the hash pick that a forgotten choice falls back to.
fn fresh_pick(b: &TopoBuilder) -> IpAddr {
    // The guest's hosts register themselves; the fixture names only h1 and h2.
    let b = b.clone().host("h3", "192.168.0.3");
    let h3 = b.datapath_of("h3");
    let f = sim::Fields {
        recirc_id: sim::RECIRC_CT,
        ct_state: 0x21, // +trk+new
        ..sim::fixtures::pkt::tcp(
            h3.vports["wf-c1"],
            b.mac("c1"),
            b.mac("r1-b1"),
            CLIENT,
            VIP,
            40000,
            VIP_PORT,
        )
    };
    let s = sim::simulate(&b.build_for("h3", &h3), &sim::PacketContext::new(f));
    match s.affinity {
        Some(a) => a.member,
        None => panic!(
            "the VIP made no session-affinity choice: {}",
            s.actions_text()
        ),
    }
}

/// Makes member `light` of `b`'s VIP nearly weightless and the other one heavy enough that a
/// choice made afresh for the client lands on the other (the simulation says which weight
/// does); returns the load balancer record to write.
fn weigh_against(b: &mut TopoBuilder, light: IpAddr) -> LoadBalancer {
    let mut lb = b.records.load_balancers[0].clone();
    for heavy in 1000.. {
        for m in &mut lb.vips[0].members {
            m.weight = if m.ip == light { 1 } else { heavy };
        }
        b.records.load_balancers[0] = lb.clone();
        if fresh_pick(b) != light {
            break;
        }
    }
    lb
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn client_ip_affinity_keeps_a_client_on_its_member_until_it_is_idle_for_the_timeout() {
    const TIMEOUT_S: u64 = 4;
    let mut b = lb_topology();
    {
        let v = &mut b.records.load_balancers[0].vips[0];
        v.session_affinity = true;
        v.affinity_timeout_s = Some(TIMEOUT_S as u32);
    }
    let mut c = cluster("lb-affinity", &b);
    let _servers = backends(&c);
    let ns = c.pod("c1").ns.clone();
    let to = sa(VIP, VIP_PORT);
    c.wait_reachable("c1", ip("10.0.2.31"), 30);
    c.wait_reachable("c1", ip("10.0.2.32"), 30);

    // Every connection of the client goes to one member.
    let first = wait_exchange(&c, "c1", to, 30);
    check_vip_exchange(&c, &first, 0);
    let kept = first.backend.clone();
    let kept_ip = if kept == "be1" {
        "10.0.2.31"
    } else {
        "10.0.2.32"
    };
    for (i, r) in exchanges(&ns, to, 8, 100).into_iter().enumerate() {
        match r {
            Ok(x) if x.backend == kept => check_vip_exchange(&c, &x, i + 1),
            other => c.fail(&format!(
                "connection {} went elsewhere than {kept}, the client's member: {other:?}",
                i + 1
            )),
        }
    }

    // The member the client has is made nearly weightless: a choice made afresh now lands
    // on the other one (the simulation says which weight makes it so), but the client's
    // remembered member still serves, so it keeps it.
    let lb = weigh_against(&mut b, IpAddr::V4(ip(kept_ip)));
    let before = generation(&c, "h3");
    c.put(&lb);
    wait_generation(&c, "h3", before, 1200);
    // The client keeps opening connections, for several timeouts in all but never idle for
    // one: each goes to its member, and each keeps the choice alive.
    let busy = Instant::now();
    let mut n = 0;
    while busy.elapsed() < std::time::Duration::from_secs(3 * TIMEOUT_S) {
        n += 1;
        match exchange(&ns, to, 100) {
            Ok(x) if x.backend == kept => check_vip_exchange(&c, &x, n),
            other => c.fail(&format!(
                "{:?} after the weights changed, connection {n} did not go to the client's \
                 remembered member {kept}: {other:?}",
                busy.elapsed()
            )),
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprintln!(
        "lb-affinity: {n} connections over {:?} all went to {kept}, the remembered member",
        busy.elapsed()
    );

    // Idle for longer than the timeout plus one flow sweep (5 s at the default idle timeout
    // of 60 s) and a margin: the choice is forgotten and made afresh, and the new one is
    // kept in turn. (Polling would not do: each connection refreshes the choice.)
    const IDLE_S: u64 = TIMEOUT_S + 5 + 4;
    std::thread::sleep(std::time::Duration::from_secs(IDLE_S));
    let fresh = fresh_pick(&b);
    let fresh_name = if fresh == IpAddr::V4(ip("10.0.2.31")) {
        "be1"
    } else {
        "be2"
    };
    for (i, r) in exchanges(&ns, to, 4, 100).into_iter().enumerate() {
        match r {
            Ok(x) if x.backend == fresh_name => check_vip_exchange(&c, &x, i),
            other => c.fail(&format!(
                "after {IDLE_S}s idle, connection {i} should have been chosen afresh \
                 ({fresh_name}), not kept on {kept}: {other:?}"
            )),
        }
    }
    // A restart keeps the choice. The agent of the client's node is killed; while it is
    // down the weights turn against the client's member and the timeout grows to a minute
    // (so that the restart, slow under emulation, fits in it). The restarted agent reads
    // the client's member back from the flows it adopts, so the client stays on it.
    c.kill_agent("h3");
    let mut lb = weigh_against(&mut b, fresh);
    lb.vips[0].affinity_timeout_s = Some(60);
    b.records.load_balancers[0] = lb.clone();
    c.put(&lb);
    c.start_agent("h3");
    for (i, r) in exchanges(&ns, to, 4, 100).into_iter().enumerate() {
        match r {
            Ok(x) if x.backend == fresh_name => check_vip_exchange(&c, &x, i),
            other => c.fail(&format!(
                "after the agent restarted, connection {i} left the client's member \
                 {fresh_name} for the one a fresh choice now gives: {other:?}"
            )),
        }
    }
}

/// Hairpin over IPv6: the backends also have IPv6 addresses (fd00:2::31 on h1, fd00:2::32 on
/// h2, router r1 at fd00:2::1/64), and `fd00:96::10` port 80 spreads TCP and UDP over both
/// at port 8080. be1, a member, reaches the VIP: every TCP connection is answered and every
/// UDP echo comes back from the VIP, also those be1 answered itself.
#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_backend_reaching_its_own_ipv6_service_is_answered_from_the_vip_over_tcp_and_udp() {
    use kuryr_support::{PodServers, Proto, probe, probe_all};
    use std::net::Ipv6Addr;
    use std::time::Duration;
    const VIP6: &str = "fd00:96::10";
    let (be1, be2): (Ipv6Addr, Ipv6Addr) =
        ("fd00:2::31".parse().unwrap(), "fd00:2::32".parse().unwrap());
    let mut b = lb_topology()
        .addr("be1", "fd00:2::31/128")
        .addr("be2", "fd00:2::32/128")
        .link6("r1", "b2", "fd00:2::1/64");
    for (lb, proto) in [("web6", Protocol::Tcp), ("web6-udp", Protocol::Udp)] {
        let members = [
            ("fd00:2::31", BACKEND_PORT, 1, true),
            ("fd00:2::32", BACKEND_PORT, 1, true),
        ];
        b = b.vip(lb, Some("r1"), VIP6, proto, VIP_PORT, &members, false);
    }
    let c = cluster("lb-hairpin6", &b);
    assert_eq!(c.pod("be1").ip6, Some(be1), "be1 has its IPv6 address");
    let servers = [
        PodServers::start(&c.pod("be1").ns, be1, &[BACKEND_PORT]),
        PodServers::start(&c.pod("be2").ns, be2, &[BACKEND_PORT]),
    ];
    let me = c.pod("be1").ns.clone();
    let vip = SocketAddr::new(VIP6.parse().unwrap(), VIP_PORT);
    // be2 directly first (the agents learn each other's bindings), then the VIP.
    for (to, what) in [
        (SocketAddr::new(be2.into(), BACKEND_PORT), "be2"),
        (vip, "the VIP"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !probe(&me, to, Proto::Tcp) {
            if Instant::now() > deadline {
                c.fail(&format!("be1 does not reach {what} at {to} over IPv6 TCP"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    const N: usize = 20;
    let counts = |f: fn(&PodServers) -> u64| [f(&servers[0]), f(&servers[1])];
    let each = |proto| {
        let (a0, e0) = (counts(PodServers::accepted), counts(PodServers::echoed));
        let to = BTreeMap::from_iter((0..N).map(|i| (i, (me.clone(), vip, proto))));
        let answered = probe_all(&to).values().filter(|v| **v).count();
        // The servers count after they answer; give the last ones a moment.
        std::thread::sleep(Duration::from_millis(500));
        let (a1, e1) = (counts(PodServers::accepted), counts(PodServers::echoed));
        let served = match proto {
            Proto::Udp => [e1[0] - e0[0], e1[1] - e0[1]],
            _ => [a1[0] - a0[0], a1[1] - a0[1]],
        };
        (answered, served)
    };
    for proto in [Proto::Tcp, Proto::Udp] {
        let (answered, [own, other]) = each(proto);
        eprintln!(
            "lb-hairpin6: {N} {} connections from be1 to {vip}: {answered} answered from the VIP ({own} by be1 itself, {other} by be2)",
            proto.as_str()
        );
        if answered != N || own == 0 || other == 0 {
            c.fail(&format!(
                "hairpin over IPv6 {}: {answered} of {N} answered from the VIP, {own} by be1 \
                 itself and {other} by be2; every one must be answered, by both members",
                proto.as_str()
            ));
        }
    }
}

/// Seconds between probes in the health-check scenario, and the thresholds.
const PROBE_INTERVAL_S: u32 = 2;
const RISE: u32 = 2;
const FALL: u32 = 2;

/// The verdict NSDB holds on `member` of load balancer `web`: `None` when there is none.
fn verdict(c: &Cluster, member: SocketAddr) -> Option<(bool, String)> {
    let id = nsdb::keys::member_health_id("web", member);
    c.block_on(c.db().get::<nsdb::MemberHealth>(&id))
        .unwrap_or_else(|e| c.fail(&format!("reading the verdict on {member}: {e}")))
        .map(|v| (v.record.healthy, v.record.host))
}

/// Waits up to `secs` for `member`'s verdict to become `want`; returns how long it took.
fn wait_verdict(
    c: &Cluster,
    member: SocketAddr,
    want: Option<bool>,
    secs: u64,
) -> std::time::Duration {
    let t0 = Instant::now();
    loop {
        let got = verdict(c, member);
        if got.as_ref().map(|(h, _)| *h) == want {
            return t0.elapsed();
        }
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            c.fail(&format!(
                "the verdict on {member} is {got:?} after {secs} s, not {want:?}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The backends that answered `n` connections from c1 to the VIP, counted.
fn spread(c: &Cluster, n: usize) -> BTreeMap<String, usize> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in exchanges(&c.pod("c1").ns, sa(VIP, VIP_PORT), n, 100)
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(x) => {
                check_vip_exchange(c, &x, i);
                *per.entry(x.backend).or_default() += 1;
            }
            Err(e) => c.fail(&format!("connection {i} to the VIP failed: {e}")),
        }
    }
    per
}

/// [`spread`] of `n` connections again until `done` holds of one, for at most 30 s; the last.
fn spread_until(
    c: &Cluster,
    n: usize,
    done: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let t = Instant::now();
    loop {
        let s = spread(c, n);
        if done(&s) || t.elapsed() > std::time::Duration::from_secs(30) {
            return s;
        }
    }
}

/// Fails unless be1's verdict changed (`what`) within `runs` probes plus one interval, the
/// age the last probe before the change can have.
fn within_probes(c: &Cluster, what: &str, took: std::time::Duration, runs: u32) {
    let bound = std::time::Duration::from_secs(u64::from(PROBE_INTERVAL_S * (runs + 1)));
    eprintln!(
        "lb-health: be1 {what} in {:.1} s (interval {PROBE_INTERVAL_S} s x {runs} probes, bound {bound:?})",
        took.as_secs_f64()
    );
    if took > bound {
        c.fail(&format!("be1 {what} in {took:?}, beyond {bound:?}"));
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn a_health_check_takes_a_stopped_member_out_and_back_and_a_dead_agents_verdict_expires() {
    // The members' hosts probe them from their node ports, on bridge `join`.
    let mut b = lb_topology()
        .bridge("join")
        .link("r1", "join", "100.64.0.1/24")
        .subnet("join", "100.64.0.0/24", Some("100.64.0.1"))
        .subnet("b2", "10.0.2.0/24", Some("10.0.2.1"));
    b.records.load_balancers[0].health_check = Some(nsdb::HealthCheck {
        kind: nsdb::ProbeKind::Tcp,
        path: None,
        interval_s: PROBE_INTERVAL_S,
        timeout_s: 1,
        rise: RISE,
        fall: FALL,
    });
    let mut c = Cluster::start_with(
        "lb-health",
        3,
        SCENARIO_SECS,
        &["--node-bridge", "join", "--lease-ttl-secs", "4"],
    );
    c.write_topology(&b.records);
    for pb in b.records.bindings.clone() {
        c.add_pod(&pb.port, &pb.host);
    }
    let (be1, _be2) = backends(&c);
    let m1 = sa("10.0.2.31", BACKEND_PORT);
    let m2 = sa("10.0.2.32", BACKEND_PORT);

    // 1. Each member's own host probes it and finds it up.
    wait_verdict(&c, m1, Some(true), 120);
    wait_verdict(&c, m2, Some(true), 120);
    assert_eq!(
        verdict(&c, m1).unwrap().1,
        "h1",
        "be1 is probed by its host"
    );
    assert_eq!(
        verdict(&c, m2).unwrap().1,
        "h2",
        "be2 is probed by its host"
    );
    let before = spread(&c, 40);
    eprintln!("lb-health: both up: {before:?}");
    if before.len() != 2 {
        c.fail(&format!("both members must serve while up: {before:?}"));
    }

    // 2. be1's server stops: its host marks it down, and no new connection goes to it.
    drop(be1);
    let down = wait_verdict(&c, m1, Some(false), 60);
    within_probes(&c, "marked down after its server stopped", down, FALL);
    // The verdict reaches the client's host through the watch; give it a few seconds.
    let during = spread_until(&c, 10, |s| s.keys().all(|k| k == "be2"));
    let after = spread(&c, 40);
    eprintln!("lb-health: be1 down: {after:?}");
    if after.keys().any(|k| k != "be2") {
        c.fail(&format!(
            "a member marked down still gets new connections: {after:?} (before that {during:?})"
        ));
    }

    // 3. be1's server is back: after `rise` probes it is up, and it serves again.
    let be1 = NamedServer::start(&c.pod("be1").ns, "be1", m1);
    let up = wait_verdict(&c, m1, Some(true), 60);
    within_probes(&c, "marked up after its server came back", up, RISE);
    let back = spread_until(&c, 20, |s| s.contains_key("be1"));
    if !back.contains_key("be1") {
        c.fail(&format!("be1 is up again but gets no connection: {back:?}"));
    }

    // 4. An HTTP check: a GET of /healthz must be answered 2xx or 3xx, through the virtual
    // network from the node port, as the TCP probes were. be1 answers 503, then 200; be2's
    // server accepts the connection but speaks no HTTP.
    let mut lb = b.records.load_balancers[0].clone();
    let tcp_check = lb.health_check.clone();
    lb.health_check = Some(nsdb::HealthCheck {
        kind: nsdb::ProbeKind::Http,
        path: Some("/healthz".into()),
        ..tcp_check.clone().expect("the TCP check")
    });
    c.put(&lb);
    drop(be1);
    let http = HttpServer::start(&c.pod("be1").ns, m1, "503 Service Unavailable");
    wait_verdict(&c, m1, Some(false), 60);
    let no_http = wait_verdict(&c, m2, Some(false), 60);
    eprintln!(
        "lb-health: HTTP check: be1 (503) and be2 (no HTTP) down, be2 {:.1} s after the switch",
        no_http.as_secs_f64()
    );
    let seen = http.requests();
    if seen.is_empty() || seen.iter().any(|r| r != "GET /healthz HTTP/1.1") {
        c.fail(&format!("be1's HTTP server got {seen:?}, not GET /healthz"));
    }
    http.set_status("200 OK");
    let up = wait_verdict(&c, m1, Some(true), 60);
    within_probes(&c, "answering 200 marked up", up, RISE);
    assert_eq!(
        verdict(&c, m2).map(|v| v.0),
        Some(false),
        "be2, which speaks no HTTP, stays down"
    );
    // Back to the TCP check and be1's usual server.
    lb.health_check = tcp_check;
    c.put(&lb);
    drop(http);
    let be1 = NamedServer::start(&c.pod("be1").ns, "be1", m1);
    wait_verdict(&c, m1, Some(true), 60);
    wait_verdict(&c, m2, Some(true), 60);

    // 5. be1's host agent dies: its verdicts expire with its lease, and be1, which its
    // record says is healthy, keeps serving through the datapath the agent left.
    c.kill_agent("h1");
    let gone = wait_verdict(&c, m1, None, 30);
    eprintln!(
        "lb-health: h1's verdict expired {:.1} s after its agent died (lease 4 s)",
        gone.as_secs_f64()
    );
    assert_eq!(
        verdict(&c, m2).map(|v| v.0),
        Some(true),
        "be2's verdict, from a live agent, stays"
    );
    let last = spread_until(&c, 20, |s| s.contains_key("be1") && s.contains_key("be2"));
    eprintln!("lb-health: h1's agent dead: {last:?}");
    if !last.contains_key("be1") {
        c.fail(&format!(
            "be1 stopped serving when its host's agent died: {last:?}"
        ));
    }
    drop(be1);
}
