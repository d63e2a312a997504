//! Two ports bound to one vport of a host: the compile reports the clash as a problem and
//! takes neither as bound, instead of silently keeping the binding it read last.

mod common;

use common::{run, two_bridges};
use sim::fixtures::pkt;
use std::collections::BTreeMap;

use sim::{DropReason, LocalDatapath, SimError, Topology, Verdict};

#[test]
fn two_ports_bound_to_one_vport_are_a_problem_and_neither_gets_its_traffic() {
    let mut b = two_bridges();
    // p2 is bound to p1's vport as well.
    for x in b.records.bindings.iter_mut().filter(|x| x.port == "p2") {
        x.vport = "wf-p1".into();
    }
    let t = Topology::compile(&b.records, "h1", &b.datapath()).expect("compiles");
    let clash = SimError::DuplicateBinding {
        host: "h1".into(),
        vport: "wf-p1".into(),
        ports: vec!["p1".into(), "p2".into()],
    };
    assert!(
        t.problems().contains(&clash),
        "problems: {:?}",
        t.problems()
    );
    assert_eq!(clash.metric_label(), "duplicate_binding");
    assert_eq!(
        clash.to_string(),
        "vport wf-p1 of host h1 is bound to several ports: [\"p1\", \"p2\"]"
    );
    assert_eq!(t.port_by_vport("h1", "wf-p1"), None);

    // Traffic from the vport is not simulated as either port.
    let (p1, p2, p4) = (b.mac("p1"), b.mac("p2"), b.mac("p4"));
    let s = run(
        &t,
        pkt::udp(b.dp("p1"), p1, p4, "10.0.1.11", "10.0.2.14", 1000, 53),
        &[],
    );
    assert_eq!(s.verdict, Verdict::Drop(DropReason::UnknownInPort), "{s:?}");
    // Another host tunnels to neither of them.
    let h2 = Topology::compile(
        &b.records,
        "h2",
        &LocalDatapath {
            tunnel_port: 1,
            vports: BTreeMap::from([("wf-p3".to_string(), 2)]),
            ..Default::default()
        },
    )
    .expect("compiles for h2");
    let p3 = b.mac("p3");
    for dst in [p1, p2] {
        let s = run(
            &h2,
            pkt::udp(2, p3, dst, "10.0.1.13", "10.0.1.11", 1000, 53),
            &[],
        );
        assert_eq!(
            s.verdict,
            Verdict::Drop(DropReason::PortUnbound),
            "{}",
            s.actions_text()
        );
    }

    // A single binding per vport compiles without the problem.
    let t = two_bridges().build();
    assert!(
        !t.problems()
            .iter()
            .any(|p| matches!(p, SimError::DuplicateBinding { .. })),
        "{:?}",
        t.problems()
    );
    assert_eq!(t.port_by_vport("h1", "wf-p1"), Some("p1"));
}
