//! The agent's local API cannot break the node, in the kernel guest with real agents: attach
//! refuses the node's own devices (the underlay NIC, the default-route device, `weft-*`
//! names, anything that is not a veth) and vports or ports that are bound already, a refused
//! binding leaves no vport behind, and detach removes only what the agent's own record says
//! it attached (never the tunnel port a binding names), across an agent restart and twice.

mod hosts_support;
mod kernel_support;

use std::collections::BTreeMap;

use hosts_support::{Cluster, api_call};
use kernel_support::{in_netns, sh};
use nsdb::PortBinding;
use odp::dpif::Dpif;
use sim::Topology;
use sim::fixtures::TopoBuilder;
use weft_agent::api::{Reply, Request};

/// Bound of each scenario, setup included (TCG emulation is slow); only ends a hung run.
const SCENARIO_SECS: u64 = 300;

/// Bridge b1 (10.0.1.0/24) with p1, p2 and p9 on h1 and p3 on h2.
fn topology() -> TopoBuilder {
    let mut b = Topology::test()
        .bridge("b1")
        .port_on("p1", "b1", "10.0.1.11", "h1")
        .port_on("p2", "b1", "10.0.1.12", "h1")
        .port_on("p9", "b1", "10.0.1.19", "h1")
        .port_on("p3", "b1", "10.0.1.13", "h2");
    b.records.bridges[0].subnet_v4 = Some("10.0.1.0/24".parse().unwrap());
    b
}

/// The vports of `host`'s datapath: name -> (kind, port number).
fn vports(c: &Cluster, host: &str) -> BTreeMap<String, String> {
    let dp = c.host(host).datapath.clone();
    let r = in_netns(host, move || -> Result<_, String> {
        let mut d = Dpif::open().map_err(|e| e.to_string())?;
        let info = d.dp_get(&dp).map_err(|e| e.to_string())?;
        let list = d.vport_list(info.ifindex).map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|v| (v.name, format!("{:?} port {}", v.kind, v.port_no)))
            .collect())
    });
    r.unwrap_or_else(|e| c.fail(&format!("listing the vports of {host}: {e}")))
}

fn binding(c: &Cluster, port: &str) -> Option<PortBinding> {
    c.block_on(c.db().get::<PortBinding>(port))
        .unwrap_or_else(|e| c.fail(&format!("reading the binding of {port}: {e}")))
        .map(|v| v.record)
}

fn attach(c: &Cluster, host: &str, port: &str, ifname: &str) -> Result<Reply, String> {
    api_call(
        &c.host(host).api,
        &Request::Attach {
            port: port.into(),
            ifname: ifname.into(),
        },
    )
}

fn detach(c: &Cluster, host: &str, port: &str) -> Reply {
    api_call(&c.host(host).api, &Request::Detach { port: port.into() })
        .unwrap_or_else(|e| c.fail(&format!("detaching {port} on {host}: {e}")))
}

/// An attach that must be refused with a message containing `why`, leaving the datapath
/// and NSDB as they were.
fn refused(c: &Cluster, host: &str, port: &str, ifname: &str, why: &str) {
    let before = vports(c, host);
    let bound = binding(c, port);
    match attach(c, host, port, ifname) {
        Ok(r) => c.fail(&format!(
            "attach of {ifname} as {port} on {host} was accepted ({r:?}); vports now {:?}",
            vports(c, host)
        )),
        Err(e) if e.contains(why) => eprintln!("refused as it should be: {e}"),
        Err(e) => c.fail(&format!(
            "attach of {ifname} as {port} on {host} was refused, but not saying {why:?}: {e}"
        )),
    }
    let after = vports(c, host);
    if after != before {
        c.fail(&format!(
            "a refused attach of {ifname} changed {host}'s datapath: {before:?} -> {after:?}"
        ));
    }
    let now = binding(c, port);
    if now != bound {
        c.fail(&format!(
            "a refused attach of {ifname} changed the binding of {port}: {bound:?} -> {now:?}"
        ));
    }
}

#[test]
#[ignore = "kernel datapath: run by e2e/kernel-tests.sh in the guest"]
fn kernel_attach_refuses_the_nodes_own_devices() {
    let mut c = Cluster::start("attach-devices", 1, SCENARIO_SECS);
    c.write_topology(&topology().records);
    // A Weft name, a dummy, a veth carrying the default route, and the underlay NIC (a veth
    // in this harness, holding the underlay address).
    sh(
        "ip -n h1 link add weft-evil type veth peer name weft-evilp && \
        ip -n h1 link set weft-evil up && \
        ip -n h1 link add dm0 type dummy && ip -n h1 link set dm0 up && \
        ip -n h1 link add gw0 type veth peer name gw0p && \
        ip -n h1 link set gw0 up && ip -n h1 link set gw0p up && \
        ip -n h1 addr add 198.51.100.2/24 dev gw0 && \
        ip -n h1 route add default via 198.51.100.1 dev gw0",
    );
    refused(&c, "h1", "p1", "weft-evil", "one of Weft's own devices");
    refused(&c, "h1", "p1", "dm0", "dm0 is a dummy device");
    refused(&c, "h1", "p1", "gw0", "gw0 carries a default route");
    refused(
        &c,
        "h1",
        "p1",
        "eth0",
        "eth0 holds the underlay address 10.99.0.1",
    );
    refused(&c, "h1", "p1", "nosuch0", "no interface nosuch0");
    // A pod's veth is still accepted.
    c.add_pod("p1", "h1");
    let v = vports(&c, "h1");
    assert!(v.contains_key("wf-p1"), "{v:?}");
    assert_eq!(
        binding(&c, "p1").map(|b| (b.host, b.vport)),
        Some(("h1".into(), "wf-p1".into()))
    );
}

#[test]
#[ignore = "kernel datapath: run by e2e/kernel-tests.sh in the guest"]
fn kernel_attach_refuses_a_vport_or_port_that_is_bound_already() {
    let mut c = Cluster::start("attach-bound", 2, SCENARIO_SECS);
    c.write_topology(&topology().records);
    c.add_pod("p1", "h1");
    let p1 = Some(PortBinding {
        port: "p1".into(),
        host: "h1".into(),
        vport: "wf-p1".into(),
    });
    assert_eq!(binding(&c, "p1"), p1);

    // A second port on p1's vport, on the same host.
    refused(
        &c,
        "h1",
        "p2",
        "wf-p1",
        "wf-p1 is attached here as port p1 already",
    );
    assert_eq!(binding(&c, "p2"), None);

    // p1 again from another host's agent, with a veth of its own: the binding is refused
    // by the transaction, and the vport that agent added for it is removed again.
    sh("ip -n h2 link add wf-x type veth peer name wf-xp && \
        ip -n h2 link set wf-x up && ip -n h2 link set wf-xp up");
    refused(
        &c,
        "h2",
        "p1",
        "wf-x",
        "port p1 is already bound to vport wf-p1 on host h1",
    );
    assert_eq!(binding(&c, "p1"), p1, "p1 stays bound to h1");
    // The same port on another vport of its own host.
    sh("ip -n h1 link add wf-y type veth peer name wf-yp && ip -n h1 link set wf-y up");
    refused(
        &c,
        "h1",
        "p1",
        "wf-y",
        "port p1 is attached here as wf-p1 already",
    );

    // Attaching p1 as it is attached already changes nothing.
    match attach(&c, "h1", "p1", "wf-p1") {
        Ok(Reply::Attached { port_no, .. }) => assert_eq!(
            Some(port_no),
            c.host("h1")
                .status()
                .ports
                .iter()
                .find(|p| p.port == "p1")
                .map(|p| p.port_no)
        ),
        other => c.fail(&format!("repeating p1's attach: {other:?}")),
    }
    // The refused agent can still attach its own port with the same veth.
    match attach(&c, "h2", "p3", "wf-x") {
        Ok(Reply::Attached { .. }) => {}
        other => c.fail(&format!("attaching p3 on h2 after the refusal: {other:?}")),
    }
    assert!(vports(&c, "h2").contains_key("wf-x"));
}

#[test]
#[ignore = "kernel datapath: run by e2e/kernel-tests.sh in the guest"]
fn kernel_detach_removes_only_what_the_agent_attached() {
    let mut c = Cluster::start("detach-record", 1, SCENARIO_SECS);
    c.write_topology(&topology().records);
    c.add_pod("p1", "h1");
    let tunnel = c.host("h1").status().tunnel;
    assert!(
        vports(&c, "h1").contains_key(&tunnel),
        "no tunnel vport {tunnel}"
    );

    // A binding of this host that names the tunnel port, as any NSDB writer could make.
    c.put(&PortBinding {
        port: "p9".into(),
        host: "h1".into(),
        vport: tunnel.clone(),
    });
    match detach(&c, "h1", "p9") {
        Reply::Detached { .. } => {}
        other => c.fail(&format!("Detach p9 answered {other:?}")),
    }
    let v = vports(&c, "h1");
    if !v.contains_key(&tunnel) {
        c.fail(&format!(
            "detaching a port whose binding names {tunnel} removed the tunnel port: {v:?}"
        ));
    }
    assert_eq!(binding(&c, "p9"), None, "the bogus binding is removed");

    // The record outlives the agent: after a restart detach still removes the vport.
    c.restart_agent("h1");
    match detach(&c, "h1", "p1") {
        Reply::Detached { was_attached, .. } => assert!(was_attached),
        other => c.fail(&format!("Detach p1 answered {other:?}")),
    }
    let v = vports(&c, "h1");
    if v.contains_key("wf-p1") {
        c.fail(&format!("wf-p1 is still a vport after its detach: {v:?}"));
    }
    assert!(v.contains_key(&tunnel), "{v:?}");
    assert_eq!(binding(&c, "p1"), None);

    // And a second detach succeeds, with nothing left to do.
    match detach(&c, "h1", "p1") {
        Reply::Detached { was_attached, .. } => assert!(!was_attached),
        other => c.fail(&format!("the second Detach p1 answered {other:?}")),
    }
    assert_eq!(vports(&c, "h1"), v);
}
