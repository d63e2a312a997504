//! Pods attached the way a container runtime attaches them: libcni's `cnitool` runs the
//! `weft-cni` plugin against real agents on three hosts in the kernel guest, with etcd. One
//! cluster carries the whole scenario: ADD on two bridges and two hosts, traffic across the
//! router, CHECK, DEL twice, GC, STATUS with the agent down, and the plugin's error codes
//! with nothing left behind.

mod hosts_support;
mod kernel_support;

use std::net::{IpAddr, SocketAddr};

use hosts_support::{Cluster, CniHoldings, CniOut};
use sim::Topology;
use sim::fixtures::TopoBuilder;

/// Bound of the scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 900;

/// Bridges blue (10.20.1.0/24, namespace blue) and green (10.20.2.0/24, namespace green)
/// joined by router r1 (10.20.1.1, 10.20.2.1), no pods: the CNI plugin makes them.
fn topology() -> TopoBuilder {
    let mut b = Topology::test()
        .bridge("blue")
        .bridge("green")
        .router("r1")
        .link("r1", "blue", "10.20.1.1/24")
        .link("r1", "green", "10.20.2.1/24");
    for (br, subnet, gw, ns) in [
        ("blue", "10.20.1.0/24", "10.20.1.1", "blue"),
        ("green", "10.20.2.0/24", "10.20.2.1", "green"),
    ] {
        let r = b
            .records
            .bridges
            .iter_mut()
            .find(|x| x.id == br)
            .expect("bridge");
        r.subnet_v4 = Some(subnet.parse().unwrap());
        r.gateway_v4 = Some(gw.parse().unwrap());
        r.namespaces = vec![ns.into()];
        r.mtu = 0;
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
    let mut c = Cluster::start_with("cni", 3, SCENARIO_SECS, &["--default-bridge", "blue"]);
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
}
