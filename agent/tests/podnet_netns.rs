//! A pod's veth made over rtnetlink in real network namespaces (root, no datapath needed):
//! the pod's end appears in its namespace named as asked, with the MAC, addresses (IPv4 and
//! IPv6), MTU and default routes; the agent's threads stay in their own namespace; removal is idempotent.

use std::process::Command;

use weft_agent::podnet::{self, NetnsError, PodInterface};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_root() {
    use std::os::unix::fs::MetadataExt;
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
        "this test makes network namespaces and veths: run it as root"
    );
}

/// A named netns under /var/run/netns, removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&format!("ip netns add {name}"));
        Netns(name.to_owned())
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn own_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .expect("own netns")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_interface_is_made_configured_and_removed() {
    require_root();
    let ns = Netns::new("weft-podnet-t1");
    let host_end = "wfpodnettest1";
    let _ = podnet::unplumb(host_end).await;
    let before = own_netns();
    let pod = PodInterface {
        ifname: "eth0".into(),
        mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        addresses: vec![
            "10.77.0.5/24".parse().unwrap(),
            "fd00:77::5/64".parse().unwrap(),
        ],
        gateway_v4: Some("10.77.0.1".parse().unwrap()),
        gateway_v6: Some("fd00:77::1".parse().unwrap()),
        mtu: 1400,
    };
    let f = podnet::open_netns(&ns.path()).unwrap();
    let (index, _mac) = podnet::plumb(host_end, &f, &ns.path(), &pod).await.unwrap();
    assert!(index > 0);
    assert_eq!(own_netns(), before, "the caller's namespace is unchanged");

    let host = sh(&format!("ip -d link show {host_end}"));
    assert!(host.contains("mtu 1400") && host.contains("veth"), "{host}");
    assert!(host.contains("state UP") || host.contains(",UP"), "{host}");
    let inside = sh(&format!("ip -n {} addr show eth0", ns.0));
    assert!(inside.contains("02:11:22:33:44:55"), "{inside}");
    assert!(inside.contains("inet 10.77.0.5/24"), "{inside}");
    // Usable at once: no duplicate address detection holds it tentative.
    let v6 = inside
        .lines()
        .find(|l| l.contains("inet6 fd00:77::5/64"))
        .unwrap_or_else(|| panic!("no IPv6 address: {inside}"));
    assert!(!v6.contains("tentative"), "{inside}");
    assert!(inside.contains("mtu 1400"), "{inside}");
    let routes = sh(&format!("ip -n {} route show default", ns.0));
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );
    let routes = sh(&format!("ip -n {} -6 route show default", ns.0));
    assert!(
        routes.contains("default via fd00:77::1 dev eth0"),
        "{routes}"
    );

    let seen = podnet::observe(&f, &ns.path(), "eth0")
        .await
        .unwrap()
        .expect("eth0 seen");
    assert_eq!(seen.mac, pod.mac);
    assert_eq!(seen.mtu, 1400);
    assert!(seen.up);
    // The kernel adds an IPv6 link-local address of its own.
    assert!(
        pod.addresses.iter().all(|a| seen.addresses.contains(a)),
        "{:?}",
        seen.addresses
    );
    assert_eq!(
        seen.default_gateways,
        ["10.77.0.1", "fd00:77::1"].map(|a| a.parse::<std::net::IpAddr>().unwrap())
    );
    assert!(
        podnet::observe(&f, &ns.path(), "eth9")
            .await
            .unwrap()
            .is_none()
    );

    // Plumbing again (a retried ADD after a crash) replaces the half-made veth.
    podnet::plumb(host_end, &f, &ns.path(), &pod).await.unwrap();
    assert!(sh(&format!("ip -n {} -o link show", ns.0)).contains("eth0"));

    assert!(
        podnet::unplumb(host_end).await.unwrap(),
        "the veth was there"
    );
    assert!(
        !podnet::unplumb(host_end).await.unwrap(),
        "a second removal finds nothing"
    );
    let left = sh(&format!("ip -n {} -o link show", ns.0));
    assert!(
        !left.contains("eth0"),
        "the pod's end goes with the host end: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pod_interface_leaves_no_veth() {
    require_root();
    let ns = Netns::new("weft-podnet-t2");
    let host_end = "wfpodnettest2";
    let _ = podnet::unplumb(host_end).await;
    let f = podnet::open_netns(&ns.path()).unwrap();
    // A gateway outside the pod's subnet cannot be routed to: the ADD fails after the veth
    // exists, and the veth goes again.
    let pod = PodInterface {
        ifname: "eth0".into(),
        mac: [0x02, 0, 0, 0, 0, 9],
        addresses: vec!["10.78.0.5/24".parse().unwrap()],
        gateway_v4: Some("192.0.2.1".parse().unwrap()),
        gateway_v6: None,
        mtu: 1400,
    };
    let err = podnet::plumb(host_end, &f, &ns.path(), &pod)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("default route via 192.0.2.1"),
        "{err:#}"
    );
    assert!(
        Command::new("ip")
            .args(["link", "show", host_end])
            .output()
            .unwrap()
            .stdout
            .is_empty(),
        "no host end is left"
    );
    drop(f);
    drop(ns);
    match podnet::open_netns("/var/run/netns/weft-podnet-t2") {
        Err(NetnsError::Missing { .. }) => {}
        other => panic!("a removed netns must be Missing, got {other:?}"),
    }
}
