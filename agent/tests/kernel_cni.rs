//! Pods attached the way a container runtime attaches them: libcni's `cnitool` runs the
//! `weft-cni` plugin against real agents on three hosts in the kernel guest, with etcd. One
//! cluster carries the whole scenario: ADD on two bridges and two hosts, traffic across the
//! router, CHECK, DEL twice, GC, STATUS with the agent down, the plugin's error codes with
//! nothing left behind, 50 concurrent ADDs on one host and on three, the agent killed in the
//! middle of an ADD, and etcd down.

mod hosts_support;
mod kernel_support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hosts_support::{Cluster, CniHoldings, CniOut};
use sim::Topology;
use sim::fixtures::TopoBuilder;

/// Bound of the scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 1500;

/// The MTU bridge green asks for; blue leaves it to the agent.
const GREEN_MTU: u16 = 1300;

/// How often a pod's ADD or DEL answered "try again later" (11) is retried, as kubelet
/// retries a pod sandbox whose network setup or teardown failed.
const RETRIES: u32 = 5;

/// Bridges blue (10.20.1.0/24, namespace blue, MTU unset) and green (10.20.2.0/24,
/// namespace green, MTU 1300) joined by router r1 (10.20.1.1, 10.20.2.1), no pods: the CNI
/// plugin makes them. The nodes' ports are on bridge join (100.64.0.0/24), joined to r1 at
/// 100.64.0.1. Bridge jumbo (namespace jumbo) asks for an MTU the tunnel cannot carry.
fn topology() -> TopoBuilder {
    let mut b = Topology::test()
        .bridge("blue")
        .bridge("green")
        .bridge("join")
        .bridge("jumbo")
        .router("r1")
        .link("r1", "blue", "10.20.1.1/24")
        .link("r1", "green", "10.20.2.1/24")
        .link("r1", "join", "100.64.0.1/24");
    for (br, subnet, gw, ns, mtu) in [
        ("blue", "10.20.1.0/24", "10.20.1.1", "blue", 0),
        ("green", "10.20.2.0/24", "10.20.2.1", "green", GREEN_MTU),
        ("join", "100.64.0.0/24", "100.64.0.1", "", 0),
        ("jumbo", "10.20.3.0/24", "10.20.3.1", "jumbo", 9000),
    ] {
        b = b.subnet(br, subnet, Some(gw));
        let r = b
            .records
            .bridges
            .iter_mut()
            .find(|x| x.id == br)
            .expect("bridge");
        r.namespaces = if ns.is_empty() {
            vec![]
        } else {
            vec![ns.into()]
        };
        r.mtu = mtu;
    }
    b
}

fn assert_clean(c: &Cluster, host: &str, what: &str) {
    let h = c.cni_holdings(host);
    if h != CniHoldings::default() {
        c.fail(&format!("{what}: {host} still holds {h:?}"));
    }
}

/// The spec's error object, with the code the case expects.
fn assert_code(c: &Cluster, out: &CniOut, code: u64, what: &str) {
    if out.ok || out.code() != Some(code) {
        c.fail(&format!("{what}: expected error code {code}, got {out:?}"));
    }
    let j = out.json();
    for k in ["cniVersion", "code", "msg"] {
        assert!(j.get(k).is_some(), "{what}: the error lacks {k:?}: {j}");
    }
}

/// A bad-input row: what it is, the plugin's environment and stdin, the code it must get.
type BadCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64);

/// Runs `verb` (ADD or DEL) for every `(name, host)` pod at once through cnitool, as
/// runtimes starting or stopping many pods at once would; a call answered 11 (try again
/// later) is retried after a second, up to [`RETRIES`] times, as kubelet retries a sandbox
/// whose network setup or teardown failed. Returns each pod's last output and the number of
/// retries.
fn all_at_once(c: &Cluster, verb: &str, pods: &[(String, String)]) -> (Vec<CniOut>, u32) {
    let retries = std::sync::atomic::AtomicU32::new(0);
    let outs = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|(n, h)| {
                let retries = &retries;
                s.spawn(move || {
                    let mut tries = 0;
                    loop {
                        let args = (verb == "add").then_some(("blue", n.as_str()));
                        let out = c.cnitool(h, verb, &format!("pod-{n}"), args);
                        if out.ok || !out.try_again_later() || tries == RETRIES {
                            return out;
                        }
                        tries += 1;
                        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("CNI thread"))
            .collect()
    });
    (outs, retries.into_inner())
}

/// Fails unless pod `from` gets an answer from every address, pinging them all at once.
fn all_reachable(c: &Cluster, from: &str, to: &BTreeSet<Ipv4Addr>) {
    std::thread::scope(|s| {
        for ip in to {
            s.spawn(move || c.wait_reachable(from, *ip, 30));
        }
    });
}

fn plugin_env<'a>(cmd: &'a str, netns: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=blue;K8S_POD_NAME=bad"),
    ]
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn cnitool_drives_weft_cni_against_three_agents() {
    let mut c = Cluster::start_with(
        "cni",
        3,
        SCENARIO_SECS,
        &["--default-bridge", "blue", "--node-bridge", "join"],
    );
    c.write_topology(&topology().records);

    // 1. ADD: two pods of namespace blue on h1 and h2, one of green on h3.
    let a = c.cni_add("a", "h1", "blue");
    let b = c.cni_add("b", "h2", "blue");
    let g = c.cni_add("g", "h3", "green");
    let blue_net: ipnet::Ipv4Net = "10.20.1.0/24".parse().unwrap();
    let green_net: ipnet::Ipv4Net = "10.20.2.0/24".parse().unwrap();
    assert!(
        blue_net.contains(&a.ip) && blue_net.contains(&b.ip),
        "{a:?} {b:?}"
    );
    assert!(green_net.contains(&g.ip), "{g:?}");
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.prefix_len, 24);
    assert_eq!(a.result["cniVersion"], "1.1.0");
    assert_eq!(a.result["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(a.result["ips"][0]["gateway"], "10.20.1.1");
    let shown = kernel_support::sh(&format!("ip -n {} addr show eth0", a.ns));
    assert!(
        shown.contains(&format!("inet {}/24", a.ip)) && shown.contains(&a.mac),
        "the pod's eth0 is not as the result says: {shown}"
    );
    // The bridge's MTU where it sets one, else what the agent derives from the underlay.
    let mtu_of = |ns: &str| {
        let shown = kernel_support::sh(&format!("ip -n {ns} -o link show eth0"));
        shown
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no MTU in {shown}"))
    };
    assert_eq!(mtu_of(&g.ns), GREEN_MTU, "green's pod has the bridge's MTU");
    let derived = mtu_of(&a.ns);
    assert!(
        derived > GREEN_MTU && derived < 1500,
        "blue's pod has the agent's MTU for the encapsulation, got {derived}"
    );
    // A retried ADD of the same container answers the same attachment, not a second one.
    let before = c.cni_records();
    let again = c.cnitool("h1", "add", &a.ns, Some(("blue", "a")));
    assert!(again.ok, "retried ADD: {again:?}");
    assert_eq!(
        again.json()["ips"],
        a.result["ips"],
        "a retried ADD answered another address"
    );
    assert_eq!(again.json()["interfaces"], a.result["interfaces"]);
    assert_eq!(c.cni_records(), before, "a retried ADD wrote more records");

    // 2. Traffic: same bridge across hosts, and across the router; a TCP payload end to end.
    c.wait_reachable("a", b.ip, 30);
    c.wait_reachable("a", g.ip, 30);
    let _srv = c.echo_server("g", 7000);
    c.tcp_echo_ok("a", SocketAddr::new(IpAddr::V4(g.ip), 7000), 64 * 1024);

    // 2b. The node and its pods: a TCP probe from host h1 to pods on both bridges, local
    //     and remote, through h1's node port; pods connect to their node's own address.
    let node_ip = |host: &str| {
        let shown = kernel_support::sh(&format!("ip -n {host} -4 -o addr show dev weft-node"));
        shown
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ["h1", "h2", "h3"].iter().any(|h| node_ip(h).is_none()) {
        if Instant::now() > deadline {
            c.fail("a node port never got its address on weft-node");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let join_net: ipnet::Ipv4Net = "100.64.0.0/24".parse().unwrap();
    for h in ["h1", "h2", "h3"] {
        let a: ipnet::Ipv4Net = node_ip(h).unwrap().parse().unwrap();
        assert!(join_net.contains(&a.addr()), "{h}'s node address {a}");
    }
    let _srv_a = c.echo_server("a", 7000);
    let _srv_b = c.echo_server("b", 7000);
    for (p, what) in [
        (&a, "local, blue"),
        (&b, "remote, blue"),
        (&g, "remote, green"),
    ] {
        eprintln!("cni: probe from host h1 to {} ({what})", p.ip);
        c.host_tcp_echo_ok("h1", SocketAddr::new(IpAddr::V4(p.ip), 7000), 4096);
    }
    let _h1 = c.host_echo_server("h1", 7100);
    let _h3 = c.host_echo_server("h3", 7100);
    for (pod, host) in [("a", "h1"), ("g", "h3")] {
        let to = SocketAddr::new(IpAddr::V4(c.host(host).underlay_ip), 7100);
        eprintln!("cni: pod {pod} to its node {host} at {to}");
        c.tcp_echo_ok(pod, to, 4096);
    }

    // 3. CHECK passes, then fails once the vport is gone.
    for (p, host) in [(&a, "h1"), (&b, "h2"), (&g, "h3")] {
        let out = c.cnitool(host, "check", &p.ns, Some(("x", "y")));
        assert!(out.ok, "CHECK of {} on {host}: {out:?}", p.ns);
    }
    let dp = c.host("h1").datapath.clone();
    kernel_support::sh(&format!(
        "ip netns exec h1 ovs-dpctl del-if {dp} {}",
        a.vport
    ));
    let out = c.cnitool("h1", "check", &a.ns, None);
    assert!(!out.ok, "CHECK passed without the vport: {out:?}");
    assert!(
        (out.stdout.clone() + &out.stderr).contains(&a.vport),
        "CHECK's failure does not name the vport: {out:?}"
    );

    // 4. DEL twice; nothing of the pod is left on h1 or in NSDB.
    for i in 1..=2 {
        let out = c.cnitool("h1", "del", &a.ns, None);
        assert!(out.ok, "DEL #{i}: {out:?}");
    }
    assert_clean(&c, "h1", "after DEL of a");
    c.forget_pod("a");

    // 5. GC on h2 keeps the listed pod and removes the other one.
    let b2 = c.cni_add("b2", "h2", "blue");
    let mut conf = c.cni_conf("h2");
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": b.container_id, "ifname": "eth0"}]);
    let out = c.cni_plugin(
        "h2",
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/nonexistent")],
        conf.to_string().as_bytes(),
    );
    assert!(out.ok, "GC on h2: {out:?}");
    let h2 = c.cni_holdings("h2");
    assert_eq!(
        (h2.veths, h2.vports, h2.ports, h2.leases),
        (1, 1, 1, 1),
        "GC must remove exactly b2 and keep b: {h2:?}"
    );
    assert!(
        !kernel_support::sh_try(&format!("ip -n h2 link show {}", b2.vport)).0,
        "b2's veth survived GC"
    );
    c.forget_pod("b2");
    c.wait_reachable("b", g.ip, 30);
    // cnitool's GC lists nothing: everything of the network on h3 goes.
    let out = c.cnitool("h3", "gc", &g.ns, None);
    assert!(out.ok, "cnitool gc on h3: {out:?}");
    assert_clean(&c, "h3", "after GC of h3 with an empty list");
    c.forget_pod("g");

    // 6. STATUS: ready, then 50 while the agent is down, then ready again.
    let out = c.cnitool("h3", "status", "none", None);
    assert!(out.ok, "STATUS with the agent up: {out:?}");
    c.kill_agent("h3");
    let out = c.cnitool("h3", "status", "none", None);
    assert!(
        !out.ok,
        "cnitool status passed with the agent down: {out:?}"
    );
    let out = c.cni_plugin(
        "h3",
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/nonexistent")],
        c.cni_conf("h3").to_string().as_bytes(),
    );
    assert_code(&c, &out, 50, "STATUS with the agent down");
    c.start_agent("h3");
    let out = c.cnitool("h3", "status", "none", None);
    assert!(out.ok, "STATUS after the agent's restart: {out:?}");

    // 7. Bad input, one case per error code; after each, h1 holds what it held before.
    let _pod = kernel_support::Netns::new("pod-bad");
    let netns = "/run/netns/pod-bad";
    let base = c.cni_holdings("h1");
    let conf = c.cni_conf("h1");
    let with = |k: &str, v: serde_json::Value| {
        let mut x = conf.clone();
        x[k] = v;
        x.to_string()
    };
    let prev = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": netns}],
        "ips": [{"address": "10.20.1.99/24", "interface": 0}],
    });
    let cases: Vec<BadCase> = vec![
        (
            "cniVersion 9.9.9",
            plugin_env("ADD", netns, "bad-1"),
            with("cniVersion", "9.9.9".into()),
            1,
        ),
        (
            "an ipam section",
            plugin_env("ADD", netns, "bad-2"),
            with("ipam", serde_json::json!({"type": "host-local"})),
            2,
        ),
        (
            "CHECK of an unknown container",
            plugin_env("CHECK", netns, "never-added"),
            with("prevResult", prev.clone()),
            3,
        ),
        (
            "ADD into a netns that does not exist",
            plugin_env("ADD", "/run/netns/no-such-pod", "bad-3"),
            conf.to_string(),
            3,
        ),
        (
            "no CNI_COMMAND",
            plugin_env("ADD", netns, "bad-4")[1..].to_vec(),
            conf.to_string(),
            4,
        ),
        (
            "no CNI_NETNS",
            plugin_env("ADD", netns, "bad-5")
                .into_iter()
                .filter(|(k, _)| *k != "CNI_NETNS")
                .collect(),
            conf.to_string(),
            4,
        ),
        (
            "empty stdin",
            plugin_env("ADD", netns, "bad-6"),
            String::new(),
            6,
        ),
        (
            "garbage stdin",
            plugin_env("ADD", netns, "bad-7"),
            "{\"cniVersion\":\"1.1.0\",\"name\":".into(),
            6,
        ),
        (
            "agentTimeoutMs -1",
            plugin_env("ADD", netns, "bad-8"),
            with("agentTimeoutMs", (-1).into()),
            7,
        ),
        (
            "a bridge whose MTU the tunnel cannot carry",
            plugin_env("ADD", netns, "bad-10")
                .into_iter()
                .map(|(k, v)| match k {
                    "CNI_ARGS" => (k, "K8S_POD_NAMESPACE=jumbo;K8S_POD_NAME=bad"),
                    _ => (k, v),
                })
                .collect(),
            conf.to_string(),
            7,
        ),
        (
            "an agent socket nothing listens on",
            plugin_env("ADD", netns, "bad-9"),
            with("agentSocket", "/run/weft/nobody.sock".into()),
            11,
        ),
    ];
    for (what, env, stdin, code) in &cases {
        let out = c.cni_plugin("h1", env, stdin.as_bytes());
        assert_code(&c, &out, *code, what);
        let now = c.cni_holdings("h1");
        if now != base {
            c.fail(&format!("{what}: left {now:?} (before: {base:?})"));
        }
    }
    eprintln!(
        "cni: {} bad inputs refused with their codes, nothing left behind",
        cases.len()
    );

    // 8. 50 concurrent ADDs on one host, then 50 over three hosts: no address twice, every
    //    pod answers b (on h2), and 50 DELs at once leave nothing.
    for (round, hosts) in [
        ("one host", vec!["h1"]),
        ("three hosts", vec!["h1", "h2", "h3"]),
    ] {
        let pods: Vec<(String, String)> = (0..50)
            .map(|i| (format!("c{i}"), hosts[i % hosts.len()].to_owned()))
            .collect();
        let nss: Vec<kernel_support::Netns> = pods
            .iter()
            .map(|(n, _)| kernel_support::Netns::new(&format!("pod-{n}")))
            .collect();
        let t = Instant::now();
        let (outs, retries) = all_at_once(&c, "add", &pods);
        eprintln!(
            "cni: 50 concurrent ADDs on {round}: {:?}, {retries} retried after 11",
            t.elapsed()
        );
        let mut ips = BTreeSet::new();
        for ((n, h), out) in pods.iter().zip(&outs) {
            if !out.ok {
                c.fail(&format!("concurrent ADD of {n} on {h}: {out:?}"));
            }
            let p = c.cni_pod(n, h, out);
            if !ips.insert(p.ip) {
                c.fail(&format!("{} handed out twice ({round})", p.ip));
            }
        }
        let (ports, bindings, leases, keys) = c.cni_records();
        assert_eq!(
            (ports, bindings, leases, keys),
            (51, 51, 51, 51),
            "NSDB holds one port, binding, lease and key per pod (50 and b) on {round}"
        );
        let t = Instant::now();
        all_reachable(&c, "b", &ips);
        eprintln!("cni: b reached the 50 pods in {:?}", t.elapsed());
        let t = Instant::now();
        let (outs, retries) = all_at_once(&c, "del", &pods);
        for ((n, h), out) in pods.iter().zip(&outs) {
            if !out.ok {
                c.fail(&format!("concurrent DEL of {n} on {h}: {out:?}"));
            }
        }
        eprintln!(
            "cni: 50 concurrent DELs on {round}: {:?}, {retries} retried after 11",
            t.elapsed()
        );
        drop(nss);
        assert_clean(&c, "h1", &format!("after 50 DELs on {round}"));
        assert_clean(&c, "h3", &format!("after 50 DELs on {round}"));
        let h2 = c.cni_holdings("h2");
        assert_eq!(
            (h2.veths, h2.vports, h2.ports, h2.leases, h2.tunnel_keys),
            (1, 1, 1, 1, 1),
            "after 50 DELs on {round}, h2 holds more than b: {h2:?}"
        );
    }

    // 9. The agent is killed (SIGKILL) between an ADD's NSDB write and its veth and vport;
    //    restarted, a DEL removes what the ADD wrote.
    c.kill_agent("h1");
    c.set_agent_env("h1", &[("WEFT_FAILPOINT", "cni-add-after-nsdb")]);
    c.start_agent("h1");
    let crash = kernel_support::Netns::new("pod-crash");
    let out = std::thread::scope(|s| {
        let add = s.spawn(|| c.cnitool("h1", "add", "pod-crash", Some(("blue", "crash"))));
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.cni_holdings("h1").ports == 0 {
            assert!(
                Instant::now() < deadline,
                "the ADD never wrote its port to NSDB"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        kernel_support::sh(&format!(
            "kill -9 {}",
            c.host("h1").agent_pid().expect("h1's agent runs")
        ));
        add.join().expect("ADD thread")
    });
    if out.ok || !out.try_again_later() {
        c.fail(&format!(
            "ADD whose agent was killed: expected 'try again later' (11), got {out:?}"
        ));
    }
    c.kill_agent("h1");
    let held = c.cni_holdings("h1");
    assert_eq!(
        (
            held.ports,
            held.bindings,
            held.leases,
            held.veths,
            held.vports
        ),
        (1, 1, 1, 0, 0),
        "the agent died after the NSDB write, before the veth: {held:?}"
    );
    c.set_agent_env("h1", &[]);
    c.start_agent("h1");
    let out = c.cnitool("h1", "del", "pod-crash", None);
    assert!(out.ok, "DEL after the crash: {out:?}");
    assert_clean(&c, "h1", "after the crash and DEL");
    drop(crash);

    // 10. etcd down: ADD answers 11 within 5 s, the running pods keep forwarding, and ADD
    //     works again once etcd is back.
    let e = c.cni_add("e", "h3", "blue");
    c.wait_reachable("b", e.ip, 30);
    let _srv_e = c.echo_server("e", 7001);
    let _down = kernel_support::Netns::new("pod-down");
    c.stop_etcd();
    let t = Instant::now();
    let out = c.cni_plugin(
        "h1",
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "etcd-down"),
            ("CNI_NETNS", "/run/netns/pod-down"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=blue;K8S_POD_NAME=down"),
        ],
        c.cni_conf("h1").to_string().as_bytes(),
    );
    let took = t.elapsed();
    assert_code(&c, &out, 11, "ADD with etcd down");
    assert!(
        took < Duration::from_secs(5),
        "ADD with etcd down answered after {took:?}"
    );
    // Nothing of it is left on the node; NSDB is counted once etcd is back.
    let links = kernel_support::sh("ip -n h1 -o link show");
    assert!(
        !links.lines().any(|l| l.contains(": wf")),
        "the ADD refused while etcd was down left a veth: {links}"
    );
    c.ping_ok("b", e.ip, 3);
    c.tcp_echo_ok("b", SocketAddr::new(IpAddr::V4(e.ip), 7001), 16 * 1024);
    c.start_etcd();
    // The runtime DELs a failed ADD: that succeeds, and h1 holds nothing.
    let del_env = plugin_env("DEL", "/run/netns/pod-down", "etcd-down");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.cni_plugin("h1", &del_env, c.cni_conf("h1").to_string().as_bytes());
        if out.ok {
            break;
        }
        if Instant::now() > deadline {
            c.fail(&format!(
                "DEL of the ADD refused while etcd was down: {out:?}"
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_clean(&c, "h1", "after the ADD refused while etcd was down");
    let deadline = Instant::now() + Duration::from_secs(120);
    let down = loop {
        let out = c.cnitool("h1", "add", "pod-down", Some(("blue", "down")));
        if out.ok {
            break c.cni_pod("down", "h1", &out);
        }
        assert!(
            Instant::now() < deadline,
            "ADD never worked again after etcd came back: {out:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(blue_net.contains(&down.ip), "{down:?}");
    for (host, ns) in [("h1", "pod-down"), ("h3", "pod-e")] {
        let out = c.cnitool(host, "del", ns, None);
        assert!(out.ok, "DEL of {ns} after etcd came back: {out:?}");
    }
    c.forget_pod("e");
    assert_clean(&c, "h1", "at the end");
    assert_clean(&c, "h3", "at the end");
}
