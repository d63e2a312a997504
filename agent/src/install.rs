//! The rule that turns a miss upcall and its simulation into the flow handed to the kernel:
//! the upcall's full key, the simulation's megaflow mask and actions, and a UFID.
//!
//! Why the full key and not the masked one: the kernel validates a match against the
//! attributes its key carries. A TCP match needs `tcp_flags` in the key and an Ethertype
//! needs the L3 attribute it implies, even where the mask wildcards them; the upcall's key
//! has every attribute the kernel extracted, so it always satisfies those rules, and the
//! kernel applies the mask itself.

use sim::{Fields, Simulation};

/// The flow to install for a miss whose kernel key is `upcall_key` (`fields` once decoded,
/// as the simulation got them) and whose simulation is `sim`: key = `upcall_key` (every
/// attribute), mask = `sim.mask`, actions = `sim.actions` (empty = drop), and a UFID derived
/// from the masked key and the mask, so every packet that the megaflow covers names the same
/// flow.
pub fn megaflow(upcall_key: &odp::FlowKey, fields: &Fields, sim: &Simulation) -> odp::Flow {
    let mut flow = odp::Flow::default();
    megaflow_into(upcall_key, fields, sim, &mut flow);
    flow
}

/// [`megaflow`] into `flow`, reusing its action list: nothing is allocated once it has grown.
pub fn megaflow_into(
    upcall_key: &odp::FlowKey,
    fields: &Fields,
    sim: &Simulation,
    flow: &mut odp::Flow,
) {
    flow.key.clone_from(upcall_key);
    flow.mask.clone_from(&sim.mask);
    flow.actions.clone_from(&sim.actions);
    flow.ufid = Some(ufid(fields, sim));
    flow.stats = odp::FlowStats::default();
}

/// The UFID of the megaflow of packet `fields`: a stable 128-bit hash of the masked key (as
/// the kernel stores it) and of the mask, in their netlink encoding, so it survives an agent
/// restart and two packets of one megaflow agree. The encoding goes to a buffer kept per
/// thread: no heap allocation once the buffer has grown to a key's size.
pub fn ufid(fields: &Fields, sim: &Simulation) -> u128 {
    thread_local! {
        static WIRE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Every field under the mask, eth_type included: the kernel keeps the key masked, so a
    // flow dumped after a restart has only those values, and must get the same UFID.
    let masked = fields.masked(&sim.fields_mask).to_key();
    WIRE.with_borrow_mut(|wire| {
        wire.clear();
        // A key or mask that does not encode cannot be installed either (FlowPut::from_flow
        // encodes the same mask, and a key with the same attributes): whatever was written
        // still hashes the same way every time.
        let _ = odp::encode_key(&masked, wire);
        // Where the key ends, so that no key and mask hash as another pair cut elsewhere.
        let key_len = wire.len() as u32;
        let _ = odp::encode_key(&sim.mask, wire);
        wire.extend_from_slice(&key_len.to_le_bytes());
        sim::hash::wide(wire)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use odp::dpif::FlowPut;
    use sim::Topology;
    use sim::fixtures::TopoBuilder;

    fn topo() -> TopoBuilder {
        Topology::test()
            .bridge("b1")
            .bridge("b2")
            .port("p1", "b1", "10.0.1.11")
            .port("p2", "b1", "10.0.1.12")
            .port("p4", "b2", "10.0.2.14")
            .router("r1")
            .link("r1", "b1", "10.0.1.1/24")
            .link("r1", "b2", "10.0.2.1/24")
    }

    /// The key the kernel reports for a packet: every attribute, as an upcall carries it.
    fn upcall_key(b: &TopoBuilder, from: &str, dst_mac: [u8; 6], l3l4: &str) -> odp::FlowKey {
        let m = |a: [u8; 6]| {
            a.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let text = format!(
            "recirc_id(0),dp_hash(0),skb_priority(0),in_port({}),skb_mark(0),ct_state(0),\
             ct_zone(0),ct_mark(0),ct_label(0),eth(src={},dst={}),{l3l4}",
            b.dp(from),
            m(b.mac(from)),
            m(dst_mac)
        );
        odp::parse_match(&text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .0
    }

    fn simulate(b: &TopoBuilder, key: &odp::FlowKey) -> Simulation {
        let mut s = Simulation::new();
        sim::simulate_into(
            &b.build(),
            &sim::PacketContext::new(Fields::from_key(key)),
            &mut s,
        );
        s
    }

    const TCP: &str = "eth_type(0x0800),ipv4(src=10.0.1.11,dst=10.0.1.12,proto=6,tos=0,ttl=64,\
                       frag=no),tcp(src=40000,dst=80),tcp_flags(syn)";

    #[test]
    fn tcp_key_keeps_tcp_flags_while_the_mask_wildcards_them() {
        let b = topo();
        let key = upcall_key(&b, "p1", b.mac("p2"), TCP);
        let s = simulate(&b, &key);
        let f = megaflow(&key, &Fields::from_key(&key), &s);
        assert_eq!(f.key, key, "the installed key is the upcall's whole key");
        assert!(
            f.key.tcp_flags.is_some(),
            "the kernel rejects a TCP key without tcp_flags"
        );
        assert!(
            f.mask.tcp_flags.unwrap_or(0) == 0,
            "tcp_flags must be wildcarded, or every flag combination misses: {}",
            f.match_text()
        );
        assert_eq!(f.actions_text(), format!("{}", b.dp("p2")));
    }

    /// The kernel stores a flow's key masked, and dumps it so: a restarted agent that reads
    /// the flow back must name it as the agent that installed it did.
    #[test]
    fn a_flow_dumped_with_its_key_masked_keeps_its_ufid() {
        let b = topo();
        let key = upcall_key(&b, "p1", b.mac("p2"), TCP);
        let s = simulate(&b, &key);
        let m = |a: [u8; 6]| {
            let h: Vec<String> = a.iter().map(|x| format!("{x:02x}")).collect();
            h.join(":")
        };
        let dumped = format!(
            "recirc_id(0),dp_hash(0),skb_priority(0),in_port({}),skb_mark(0),ct_state(0),\
             ct_zone(0),ct_mark(0),ct_label(0),eth(src=00:00:00:00:00:00,dst={}),\
             eth_type(0x0000)",
            b.dp("p1"),
            m(b.mac("p2"))
        );
        let dumped = odp::parse_match(&dumped).expect("the dumped key").0;
        let again = simulate(&b, &dumped);
        assert_eq!(
            again.mask,
            s.mask,
            "{}",
            again.match_text(&Fields::from_key(&dumped))
        );
        assert_eq!(
            ufid(&Fields::from_key(&dumped), &again),
            ufid(&Fields::from_key(&key), &s)
        );
    }

    #[test]
    fn packets_of_one_megaflow_share_a_ufid_and_other_flows_do_not() {
        let b = topo();
        let k1 = upcall_key(&b, "p1", b.mac("p2"), TCP);
        let k2 = upcall_key(
            &b,
            "p1",
            b.mac("p2"),
            &TCP.replace("src=40000", "src=40001").replace("syn", "ack"),
        );
        let s1 = simulate(&b, &k1);
        let s2 = simulate(&b, &k2);
        assert_eq!(s1.mask, s2.mask);
        assert_eq!(
            megaflow(&k1, &Fields::from_key(&k1), &s1).ufid,
            megaflow(&k2, &Fields::from_key(&k2), &s2).ufid,
            "an L2 flow does not read the TCP ports, so both packets are one megaflow"
        );
        let k3 = upcall_key(
            &b,
            "p1",
            b.mac("r1-b1"),
            &TCP.replace("dst=10.0.1.12", "dst=10.0.2.14"),
        );
        let s3 = simulate(&b, &k3);
        assert_ne!(
            megaflow(&k1, &Fields::from_key(&k1), &s1).ufid,
            megaflow(&k3, &Fields::from_key(&k3), &s3).ufid
        );
    }

    #[test]
    fn routed_flow_decrements_ttl_and_rewrites_macs_in_its_actions() {
        let b = topo();
        let key = upcall_key(
            &b,
            "p1",
            b.mac("r1-b1"),
            &TCP.replace("dst=10.0.1.12", "dst=10.0.2.14"),
        );
        let s = simulate(&b, &key);
        let f = megaflow(&key, &Fields::from_key(&key), &s);
        let acts = f.actions_text();
        assert!(acts.contains("ttl=63"), "{acts}");
        assert!(acts.ends_with(&format!("{}", b.dp("p4"))), "{acts}");
        let p = FlowPut::from_flow(&f).expect("encodes");
        assert!(p.mask.as_ref().is_some_and(|m| !m.is_empty()));
        assert_eq!(p.ufid, f.ufid.map(odp::msg::ufid_bytes));
        let back = odp::decode_key(&p.key).expect("decodes");
        assert_eq!(back, key);
    }

    #[test]
    fn dropped_packet_installs_an_empty_action_list() {
        let b = topo().down("p2");
        let key = upcall_key(&b, "p1", b.mac("p2"), TCP);
        let s = simulate(&b, &key);
        let f = megaflow(&key, &Fields::from_key(&key), &s);
        assert!(f.actions.is_empty(), "{}", f.actions_text());
        assert!(FlowPut::from_flow(&f).expect("encodes").actions.is_empty());
    }
}
