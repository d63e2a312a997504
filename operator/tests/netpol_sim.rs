//! The NetworkPolicy conformance cases (e2e/netpol/cases.yaml, ported from kubernetes
//! `test/e2e/network/netpol`) through the operator's translation and the real simulation: the
//! nine pods of the model spread over three hosts, every probed pair sent as a new connection
//! through every datapath pass and tunnel (`sim::fixtures::Network`, with a model of
//! conntrack), and the outcome compared with the case's matrix. The same cases run over the
//! kernel datapath in `agent/tests/kernel_kuryr.rs`.

#[path = "../../e2e/netpol/cases.rs"]
mod cases;

use std::collections::BTreeMap;
use std::net::IpAddr;

use cases::Proto;
use nsdb::Protocol;
use sim::fixtures::{Fate, Network, TopoBuilder, pkt};
use sim::{DropReason, Topology, Verdict};
use weft_operator::kuryr::netpol::chains;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
        Proto::Sctp => Protocol::Sctp,
    }
}

fn port_id(pod: &str) -> String {
    pod.replace('/', "-")
}

/// The model's pods on bridge `pods`, x/a at 10.1.0.10 .. z/c at 10.3.0.12 (one /4 holds
/// them all, as the upstream `except` tests assume), pod i on host i mod 3, with the case's
/// labels; and their addresses.
fn model(case: &cases::Case) -> (TopoBuilder, BTreeMap<String, IpAddr>) {
    let mut b = Topology::test().host("h3", "192.168.0.3").bridge("pods");
    let mut ips = BTreeMap::new();
    for (i, pod) in cases::pods().into_iter().enumerate() {
        let (ns, _) = pod.split_once('/').expect("ns/pod");
        let ip = format!("10.{}.0.{}", i / 3 + 1, i % 3 + 10);
        let id = port_id(&pod);
        b = b.port_on(&id, "pods", &ip, HOSTS[i % 3]);
        let labels = case.labels_of_pod(&pod);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        b = b.pod_labels(&id, ns, &labels);
        let ns_labels = case.labels_of_namespace(ns);
        let ns_labels: Vec<(&str, &str)> = ns_labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        b = b.namespace_labels(&id, &ns_labels);
        for (name, p, n) in cases::named_ports() {
            b = b.named_port(&id, &name, protocol(p), n);
        }
        ips.insert(pod, ip.parse().expect("address"));
    }
    (b, ips)
}

fn host_of(pod: &str) -> &'static str {
    let i = cases::pods()
        .iter()
        .position(|p| p == pod)
        .expect("model pod");
    HOSTS[i % 3]
}

#[test]
fn conformance_cases_parse_and_translate() {
    let all = cases::load().unwrap();
    assert!(all.len() >= 25, "{} cases", all.len());
    let pods = cases::pods();
    for case in &all {
        let (_, ips) = model(case);
        for policy in case.policies(&ips).unwrap() {
            let got = chains(&policy).unwrap_or_else(|e| panic!("{}: {e:?}", case.id()));
            assert_eq!(got, chains(&policy).unwrap(), "deterministic");
        }
        for (proto, port) in case.probed() {
            let expected = case.expected(proto, port).unwrap();
            assert_eq!(expected.len(), pods.len() * (pods.len() - 1));
            for (from, to) in expected.keys() {
                assert!(pods.contains(from) && pods.contains(to) && from != to);
            }
        }
    }
}

/// Every case's matrix, probe by probe, through the simulation of every host involved.
#[test]
fn conformance_cases_hold_in_the_simulation() {
    let mut wrong = Vec::new();
    let mut probes = 0;
    for case in cases::load().unwrap() {
        let (mut b, ips) = model(&case);
        for policy in case.policies(&ips).unwrap() {
            b.records.chains.extend(chains(&policy).unwrap());
        }
        let mut net = Network::new(&b);
        let mut sport = 30000u16;
        for (proto, port) in case.probed() {
            let p = match proto {
                Proto::Tcp => sim::fields::proto::TCP,
                Proto::Udp => sim::fields::proto::UDP,
                Proto::Sctp => sim::fields::proto::SCTP,
            };
            for ((from, to), want) in case.expected(proto, port).unwrap() {
                sport += 1;
                probes += 1;
                let (fid, tid) = (port_id(&from), port_id(&to));
                let in_port = b.datapath_of(host_of(&from)).vports[&format!("wf-{fid}")];
                let f = pkt::ipv4(
                    in_port,
                    b.mac(&fid),
                    b.mac(&tid),
                    &ips[&from].to_string(),
                    &ips[&to].to_string(),
                    p,
                    sport,
                    port,
                );
                let deliver = Fate::Delivered(
                    host_of(&to).to_owned(),
                    b.datapath_of(host_of(&to)).vports[&format!("wf-{tid}")],
                );
                let got = match net.send(host_of(&from), f).as_slice() {
                    [d] if *d == deliver => true,
                    [Fate::Stopped(_, Verdict::Drop(DropReason::Acl))] => false,
                    other => panic!("{}: {from} -> {to}: {other:?}", case.id()),
                };
                if got != want {
                    wrong.push(format!(
                        "{}: {proto}/{port} {from} -> {to}: expected {}",
                        case.id(),
                        if want { "allowed" } else { "denied" }
                    ));
                }
            }
        }
        // The records compile without problems on every host.
        for h in HOSTS {
            let t = Topology::compile(&b.records, h, &b.datapath_of(h)).expect("compiles");
            assert!(t.problems().is_empty(), "{}: {:?}", case.id(), t.problems());
        }
    }
    assert!(probes > 1000, "{probes} probes");
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn placeholders_expand_to_addresses_and_prefixes() {
    let ips = BTreeMap::from([
        ("x/a".to_owned(), "10.1.0.10".parse().unwrap()),
        ("y/b".to_owned(), "fd00::1:2".parse().unwrap()),
    ]);
    assert_eq!(cases::expand("{{ip x/a}}", &ips).unwrap(), "10.1.0.10");
    assert_eq!(cases::expand("{{host x/a}}", &ips).unwrap(), "10.1.0.10/32");
    assert_eq!(cases::expand("{{cidr x/a 4}}", &ips).unwrap(), "0.0.0.0/4");
    assert_eq!(
        cases::expand("{{cidr x/a 16}}", &ips).unwrap(),
        "10.1.0.0/16"
    );
    assert_eq!(
        cases::expand("{{host y/b}}", &ips).unwrap(),
        "fd00::1:2/128"
    );
    assert_eq!(
        cases::expand("{{cidr y/b 112}}", &ips).unwrap(),
        "fd00::1:0/112"
    );
    assert_eq!(cases::expand("{{cidr y/b 0}}", &ips).unwrap(), "::/0");
    assert!(cases::expand("{{ip z/c}}", &ips).is_err());
    assert!(cases::expand("{{mask x/a}}", &ips).is_err());
    assert!(cases::expand("{{cidr x/a 33}}", &ips).is_err());
}
