//! Kernel datapath: two "hosts" (network namespaces, each with its own datapath and one
//! flow-based tunnel vport) joined by an underlay veth pass pod-to-pod traffic through
//! `set(tunnel(tun_id=..,dst=..))`, over VXLAN and over Geneve.

mod kernel_support;

use kernel_support::{DpGuard, Netns, install, require_kernel_datapath, sh};
use odp::dpif::{Dpif, VportSpec, VportType};

fn host_flows(local: &str, remote: &str, pod: u32, tun: u32, udp: u16) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for l3 in ["eth_type(0x0806),arp()", "eth_type(0x0800),ipv4()"] {
        v.push((
            format!("in_port({pod}),eth(),{l3}"),
            format!("set(tunnel(tun_id=0x5,dst={remote},ttl=64,tp_dst={udp},flags(df|key))),{tun}"),
        ));
        // A tunnel match needs dst and a TTL attribute, or the kernel refuses it.
        v.push((
            format!("tunnel(tun_id=0x5,src={remote},dst={local},ttl=64/0,flags(+key)),in_port({tun}),eth(),{l3}"),
            format!("{pod}"),
        ));
    }
    v
}

fn pod_to_pod(kind: &str) {
    require_kernel_datapath();
    let udp: u16 = if kind == "vxlan" { 4789 } else { 6081 };
    let p = &kind[..1];
    let ha = Netns::new(&format!("t{p}hA"));
    let hb = Netns::new(&format!("t{p}hB"));
    let pa = Netns::new(&format!("t{p}pA"));
    let pb = Netns::new(&format!("t{p}pB"));
    sh(&format!(
        "ip link add uA netns {ha} type veth peer name uB netns {hb} && \
         ip -n {ha} addr add 192.168.77.1/24 dev uA && ip -n {ha} link set uA up && \
         ip -n {hb} addr add 192.168.77.2/24 dev uB && ip -n {hb} link set uB up && \
         ip link add eth0 netns {pa} address 02:00:00:00:77:01 type veth peer name podA netns {ha} && \
         ip link add eth0 netns {pb} address 02:00:00:00:77:02 type veth peer name podB netns {hb} && \
         ip -n {pa} addr add 10.77.0.1/24 dev eth0 && ip -n {pa} link set eth0 up && ip -n {ha} link set podA up && \
         ip -n {pb} addr add 10.77.0.2/24 dev eth0 && ip -n {pb} link set eth0 up && ip -n {hb} link set podB up",
        ha = ha.0,
        hb = hb.0,
        pa = pa.0,
        pb = pb.0
    ));
    let mut guards = Vec::new();
    for (ns, pod, local, remote) in [
        (&ha, "podA", "192.168.77.1", "192.168.77.2"),
        (&hb, "podB", "192.168.77.2", "192.168.77.1"),
    ] {
        let kind = kind.to_string();
        let (pod, local, remote) = (pod.to_string(), local.to_string(), remote.to_string());
        ns.run(move || {
            let mut d = Dpif::open().unwrap();
            let dp = d.dp_create("weft", 0).unwrap();
            let podp = d
                .vport_add(
                    dp.ifindex,
                    &VportSpec {
                        name: pod,
                        kind: VportType::Netdev,
                        port_no: None,
                        upcall_pids: vec![0],
                    },
                )
                .unwrap();
            let tk = if kind == "vxlan" {
                VportType::Vxlan { dst_port: udp }
            } else {
                VportType::Geneve { dst_port: udp }
            };
            let tun = d
                .vport_add(
                    dp.ifindex,
                    &VportSpec {
                        name: "weft-tun".into(),
                        kind: tk,
                        port_no: None,
                        upcall_pids: vec![0],
                    },
                )
                .unwrap();
            assert_eq!(tun.kind, tk, "the tunnel vport reads back as created");
            install(
                &mut d,
                dp.ifindex,
                &host_flows(&local, &remote, podp.port_no, tun.port_no, udp),
            );
        });
        guards.push(DpGuard {
            name: "weft".into(),
            netns: Some(ns.0.clone()),
        });
    }
    // The tunnel device the kernel made is flow-based ("external").
    let link = ha.sh("ip -d link show weft-tun");
    assert!(link.contains(&format!("{kind} external")), "{link}");
    let out = pa.sh("ping -c 3 -i 0.2 -W 5 10.77.0.2");
    assert!(out.contains("3 received"), "{out}");
    // The traffic really crossed the underlay as encapsulated UDP.
    let counters = hb.run(|| {
        let mut d = Dpif::open().unwrap();
        let dp = d.dp_get("weft").unwrap();
        d.vport_get(dp.ifindex, "weft-tun").unwrap().stats
    });
    assert!(counters.rx_packets >= 3, "{counters:?}");
    drop(guards);
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn pod_to_pod_over_flow_based_vxlan() {
    pod_to_pod("vxlan");
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn pod_to_pod_over_flow_based_geneve() {
    pod_to_pod("geneve");
}
