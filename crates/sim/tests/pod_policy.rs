//! Chains attached to pods by selector: NetworkPolicy allow-lists (isolation, replies, the
//! pod's own node, selectors over pod and namespace labels, named ports) and filters, followed
//! through every datapath pass and tunnel with a model of conntrack.

use nsdb::{
    LabelSelector, PodAttachMode, PodDirection, PortSelector, Protocol, ROLE_NODE, Rule, RuleAction,
};
use sim::fixtures::{Fate, Network, TopoBuilder, pkt, rule};
use sim::{DropReason, Fields, Topology, Verdict};

/// Bridge b1 with pods a and b of namespace x on h1, pod c of namespace y on h2, and h1's
/// node port.
fn pods() -> TopoBuilder {
    Topology::test()
        .bridge("b1")
        .port("a", "b1", "10.0.1.11")
        .port("b", "b1", "10.0.1.12")
        .port_on("c", "b1", "10.0.1.13", "h2")
        .port("node-h1", "b1", "10.0.1.100")
        .port_label("node-h1", nsdb::LABEL_ROLE, ROLE_NODE)
        .pod_labels("a", "x", &[("pod", "a")])
        .pod_labels("b", "x", &[("pod", "b")])
        .pod_labels("c", "y", &[("pod", "c")])
        .named_port("b", "serve-80-tcp", Protocol::Tcp, 80)
        .named_port("c", "serve-80-tcp", Protocol::Tcp, 80)
}

const ADDR: [(&str, &str, &str); 4] = [
    ("a", "h1", "10.0.1.11"),
    ("b", "h1", "10.0.1.12"),
    ("c", "h2", "10.0.1.13"),
    ("node-h1", "h1", "10.0.1.100"),
];

fn host_of(p: &str) -> &'static str {
    ADDR.iter().find(|x| x.0 == p).expect("pod").1
}

fn addr_of(p: &str) -> &'static str {
    ADDR.iter().find(|x| x.0 == p).expect("pod").2
}

fn packet(b: &TopoBuilder, from: &str, to: &str, proto: u8, sp: u16, dp: u16) -> Fields {
    let in_port = b.datapath_of(host_of(from)).vports[&format!("wf-{from}")];
    pkt::ipv4(
        in_port,
        b.mac(from),
        b.mac(to),
        addr_of(from),
        addr_of(to),
        proto,
        sp,
        dp,
    )
}

/// Whether a packet from `from` to `to` reaches `to`'s datapath port.
fn reaches(net: &mut Network, b: &TopoBuilder, from: &str, to: &str, dp: u16) -> bool {
    reaches_proto(net, b, from, to, sim::fields::proto::TCP, 40000, dp)
}

fn reaches_proto(
    net: &mut Network,
    b: &TopoBuilder,
    from: &str,
    to: &str,
    proto: u8,
    sp: u16,
    dp: u16,
) -> bool {
    let fates = net.send(host_of(from), packet(b, from, to, proto, sp, dp));
    let want = Fate::Delivered(
        host_of(to).to_owned(),
        b.datapath_of(host_of(to)).vports[&format!("wf-{to}")],
    );
    match fates.as_slice() {
        [f] if *f == want => true,
        [Fate::Stopped(_, Verdict::Drop(DropReason::Acl))] => false,
        other => panic!("{from} -> {to}: unexpected fate {other:?}"),
    }
}

fn in_x(pod: &str) -> PortSelector {
    PortSelector::in_namespace("x", LabelSelector::label("pod", pod))
}

fn allow(
    b: TopoBuilder,
    id: &str,
    dir: PodDirection,
    on: PortSelector,
    rules: Vec<Rule>,
) -> TopoBuilder {
    b.chain(id, RuleAction::Drop, rules)
        .attach(id, dir, on, PodAttachMode::Allow)
}

#[test]
fn without_policies_every_pod_reaches_every_other() {
    let b = pods();
    let mut net = Network::new(&b);
    for (from, to) in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")] {
        assert!(reaches(&mut net, &b, from, to, 80), "{from} -> {to}");
    }
}

#[test]
fn default_deny_ingress_isolates_the_selected_pod_but_lets_replies_and_its_node_through() {
    let b = allow(pods(), "deny-b", PodDirection::Ingress, in_x("b"), vec![]);
    let mut net = Network::new(&b);
    assert!(!reaches(&mut net, &b, "a", "b", 80), "a -> b denied");
    assert!(
        !reaches(&mut net, &b, "c", "b", 80),
        "c (other host) -> b denied"
    );
    assert!(reaches(&mut net, &b, "a", "c", 80), "c is not isolated");
    // b opens a connection to a; a's reply is delivered to b.
    assert!(reaches_proto(&mut net, &b, "b", "a", 6, 80, 40000));
    assert!(
        reaches(&mut net, &b, "a", "b", 80),
        "the reply of a connection b opened passes b's isolation"
    );
    // The node's own port reaches its pods (kubelet probes).
    assert!(reaches(&mut net, &b, "node-h1", "b", 80), "own node -> b");
}

#[test]
fn an_allow_list_accepts_by_pod_and_namespace_selectors_and_named_ports() {
    let from_a = Rule {
        src_selector: Some(in_x("a")),
        dst_port_name: Some("serve-80-tcp".into()),
        protocol: Some(Protocol::Tcp),
        ..rule("from-a", RuleAction::Accept)
    };
    let from_y = Rule {
        src_selector: Some(PortSelector {
            namespaces: Some(LabelSelector::label(nsdb::LABEL_NAMESPACE_NAME, "y")),
            pods: None,
        }),
        dst_ports: Some((81, 81)),
        protocol: Some(Protocol::Tcp),
        ..rule("from-y", RuleAction::Accept)
    };
    let b = allow(
        pods(),
        "allow-b",
        PodDirection::Ingress,
        in_x("b"),
        vec![from_a, from_y],
    );
    let mut net = Network::new(&b);
    assert!(reaches(&mut net, &b, "a", "b", 80), "a -> b:serve-80-tcp");
    assert!(
        !reaches(&mut net, &b, "a", "b", 81),
        "a -> b:81 is no named port of b"
    );
    assert!(reaches(&mut net, &b, "c", "b", 81), "namespace y -> b:81");
    assert!(
        !reaches(&mut net, &b, "c", "b", 80),
        "namespace y -> b:80 is not allowed"
    );
    assert!(
        !reaches_proto(&mut net, &b, "a", "b", 17, 40000, 80),
        "UDP to a TCP named port"
    );
}

#[test]
fn policies_are_additive() {
    let only = |id: &str, pod: &str| Rule {
        src_selector: Some(in_x(pod)),
        ..rule(id, RuleAction::Accept)
    };
    let b = allow(pods(), "p1", PodDirection::Ingress, in_x("b"), vec![]);
    let b = allow(
        b,
        "p2",
        PodDirection::Ingress,
        in_x("b"),
        vec![only("from-a", "a")],
    );
    let mut net = Network::new(&b);
    assert!(
        reaches(&mut net, &b, "a", "b", 80),
        "p2 allows a even though p1 allows nothing"
    );
    assert!(!reaches(&mut net, &b, "c", "b", 80));
}

#[test]
fn egress_isolation_is_judged_at_the_sender_and_lets_replies_back() {
    let to_c = Rule {
        dst_selector: Some(PortSelector {
            namespaces: None,
            pods: Some(LabelSelector::label("pod", "c")),
        }),
        ..rule("to-c", RuleAction::Accept)
    };
    let b = allow(pods(), "a-out", PodDirection::Egress, in_x("a"), vec![to_c]);
    let mut net = Network::new(&b);
    assert!(reaches(&mut net, &b, "a", "c", 80), "a -> c allowed");
    assert!(!reaches(&mut net, &b, "a", "b", 80), "a -> b not allowed");
    // b -> a is ingress to a, which is not isolated; a's reply is egress of an allowed
    // connection.
    assert!(reaches_proto(&mut net, &b, "b", "a", 6, 5555, 80));
    assert!(reaches_proto(&mut net, &b, "a", "b", 6, 80, 5555), "reply");
}

#[test]
fn a_filter_attached_by_selector_drops_what_it_drops_and_leaves_the_rest() {
    let drop_81 = Rule {
        protocol: Some(Protocol::Tcp),
        dst_ports: Some((81, 81)),
        ..rule("no-81", RuleAction::Drop)
    };
    let sel = PortSelector {
        namespaces: Some(LabelSelector::label(nsdb::LABEL_NAMESPACE_NAME, "x")),
        pods: None,
    };
    let b = pods().chain("f", RuleAction::Accept, vec![drop_81]).attach(
        "f",
        PodDirection::Ingress,
        sel,
        PodAttachMode::Filter,
    );
    let mut net = Network::new(&b);
    assert!(reaches(&mut net, &b, "c", "b", 80));
    assert!(
        !reaches(&mut net, &b, "c", "b", 81),
        "dropped by the filter"
    );
    assert!(
        reaches(&mut net, &b, "a", "c", 81),
        "c is not in namespace x"
    );
}

#[test]
fn a_node_port_of_another_host_is_not_the_pods_own_node() {
    let b = allow(
        pods(),
        "deny-y",
        PodDirection::Ingress,
        PortSelector::in_namespace("y", LabelSelector::default()),
        vec![],
    );
    let mut net = Network::new(&b);
    assert!(
        !reaches(&mut net, &b, "node-h1", "c", 80),
        "h1's node port -> c on h2"
    );
    assert!(!reaches(&mut net, &b, "a", "c", 80));
    assert!(reaches(&mut net, &b, "a", "b", 80), "b is not isolated");
}

#[test]
fn non_ip_traffic_passes_isolation() {
    let b = allow(pods(), "deny-b", PodDirection::Ingress, in_x("b"), vec![]);
    let t = b.build();
    let arp = pkt::arp_request(b.dp("a"), b.mac("a"), "10.0.1.11", "10.0.1.12");
    let s = sim::simulate(&t, &sim::PacketContext::new(arp));
    assert_ne!(
        s.verdict,
        Verdict::Drop(DropReason::Acl),
        "ARP is not filtered"
    );
}
