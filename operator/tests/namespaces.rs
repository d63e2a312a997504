//! Namespaces as networks: `weft-operator run`, the built binary, against a real
//! kube-apiserver (e2e/controlplane.sh) and a real etcd as NSDB. Namespaces are created,
//! labelled and deleted with kubectl, a pod's port is written into NSDB as the agent's CNI ADD
//! writes it, and NSDB is read back.
//!
//! No kube-controller-manager runs here, so a deleted Namespace stays Terminating: the
//! operator treats it as going (no pod can start in it any more). One namespace is finalized
//! by hand as the namespace controller would, to see the case of one that is gone.
//!
//! Needs the tools e2e/tools.sh builds (it fails, naming the command, when they are missing):
//!     e2e/tools.sh kube-apiserver kubectl etcd
//!     cargo test -p weft-operator --test namespaces

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use nsdb::pod_port::PodPortRequest;
use nsdb::{AnyRecord, Bridge, DeviceRef, Nsdb, PodPortRelease, Port, PortKind, Route};
use support::controlplane::ControlPlane;
use support::operator::{Operator, wait_for};
use support::records::{Db, Snapshot};

/// How long a change may take to reach NSDB once the operator can see it (including the
/// operator's start: the leader Lease, then the initial lists).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);
/// How long a bridge with a pod port on it is watched staying.
const STAYS_FOR: Duration = Duration::from_secs(8);
const POOL: &str = "10.240.0.0/16";

/// The tests share the control plane, whose Namespaces every operator sees: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn apply(cp: &ControlPlane, dir: &Path, name: &str, yaml: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    cp.kubectl(&["apply", "-f", path.to_str().unwrap()]);
}

/// Removes what the namespace controller would before a deleted Namespace goes: its
/// `kubernetes` finalizer (no kube-controller-manager runs here).
fn finalize_namespace(cp: &ControlPlane, dir: &Path, ns: &str) {
    let path = dir.join(format!("finalize-{ns}.json"));
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns},
        "spec": {"finalizers": []},
    });
    std::fs::write(&path, body.to_string()).unwrap();
    cp.kubectl(&[
        "replace",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/finalize"),
        "-f",
        path.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let out = cp
            .kubectl_output(&["get", "namespace", ns, "--ignore-not-found", "-o", "name"])
            .unwrap();
        if out.status.success() && out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "namespace {ns} still there after its finalization"
        );
        std::thread::sleep(POLL);
    }
}

fn stop(op: Operator) -> String {
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
    assert!(
        !stderr.contains("forbidden"),
        "weft-operator was refused something:\n{stderr}"
    );
    stderr
}

fn bridges(s: &Snapshot) -> BTreeMap<String, Bridge> {
    s.records
        .values()
        .filter_map(|(r, _)| match r {
            AnyRecord::Bridge(b) => Some((b.id.clone(), b.clone())),
            _ => None,
        })
        .collect()
}

fn record<'a>(s: &'a Snapshot, key: &str) -> Option<&'a AnyRecord> {
    s.records.get(key).map(|(r, _)| r)
}

/// The ids of every record a per-namespace bridge's namespace owns.
fn namespace_records(s: &Snapshot) -> Vec<String> {
    s.records
        .values()
        .map(|(r, _)| r.id())
        .filter(|id| id.starts_with("kns:"))
        .collect()
}

/// Namespace `ns`'s network as NSDB holds it: bridge, router port, peer and connected route,
/// each checked against the others; returns the subnet. An error says what is missing.
fn namespace_network(s: &Snapshot, ns: &str) -> Result<Ipv4Net, String> {
    let id = format!("kns:{ns}");
    let Some(AnyRecord::Bridge(b)) = record(s, &format!("/weft/v1/bridges/{id}")) else {
        return Err(format!("no bridge {id}; bridges: {:?}", bridges(s).keys()));
    };
    let subnet = b.subnet_v4.ok_or_else(|| format!("{id} has no subnet"))?;
    let pool: Ipv4Net = POOL.parse().unwrap();
    assert!(pool.contains(&subnet), "{subnet} is outside {pool}");
    assert_eq!(subnet.prefix_len(), 24, "{id}");
    let gateway: Ipv4Addr = subnet.hosts().next().unwrap();
    assert_eq!(b.gateway_v4, Some(gateway), "{id}");
    assert_ne!(b.tunnel_key, 0, "{id} has a tunnel key");
    if b.namespaces != [ns] {
        return Err(format!("{id} lists {:?}", b.namespaces));
    }
    let port_key = format!("/weft/v1/ports/{id}:port");
    let Some(AnyRecord::Port(rp)) = record(s, &port_key) else {
        return Err(format!("no router port {port_key}"));
    };
    let Some(AnyRecord::Port(bp)) = record(s, &format!("/weft/v1/ports/{id}:peer")) else {
        return Err(format!("no peer port {id}:peer"));
    };
    let Some(AnyRecord::Route(rt)) = record(s, &format!("/weft/v1/routes/{id}:port:connected"))
    else {
        return Err(format!("no route {id}:port:connected"));
    };
    assert_eq!(rp.device, DeviceRef::Router("vrt:cluster".into()));
    assert_eq!(
        rp.kind,
        PortKind::Interior {
            peer: format!("{id}:peer")
        }
    );
    assert_eq!(
        rp.addresses,
        [IpNet::V4(Ipv4Net::new(gateway, 24).unwrap())],
        "the router port has the gateway address"
    );
    assert_eq!(bp.device, DeviceRef::Bridge(id.clone()));
    assert_eq!(
        bp.kind,
        PortKind::Interior {
            peer: format!("{id}:port")
        }
    );
    assert_eq!(rp.mac, bp.mac);
    assert!(rp.tunnel_key != 0 && bp.tunnel_key != 0);
    assert_eq!(
        rt,
        &Route {
            id: format!("{id}:port:connected"),
            router: "vrt:cluster".into(),
            dst: IpNet::V4(subnet),
            next_hop: None,
            port: format!("{id}:port"),
            weight: 1,
        }
    );
    Ok(subnet)
}

/// Waits until namespace `ns` has no records left.
fn wait_gone(db: &Db, op: &mut Operator, ns: &str) {
    let prefix = format!("kns:{ns}");
    wait_for(
        &format!("the network of namespace {ns} gone"),
        CONVERGE_TIMEOUT,
        op,
        || {
            let left: Vec<String> = namespace_records(&db.try_snapshot()?)
                .into_iter()
                .filter(|id| id == &prefix || id.starts_with(&format!("{prefix}:")))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    );
}

/// The namespaces bridge `id` lists (an error when it is absent).
fn listed(db: &Db, id: &str) -> Result<Vec<String>, String> {
    bridges(&db.try_snapshot()?)
        .remove(id)
        .map(|b| b.namespaces)
        .ok_or_else(|| format!("no bridge {id}"))
}

const TOPOLOGY: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: VirtualBridge
metadata: {name: core}
spec:
  subnet: 10.250.0.0/24
---
apiVersion: weft.dev/v1alpha1
kind: VirtualRouter
metadata: {name: cluster}
spec:
  interfaces:
    - bridge: core
      ip: 10.250.0.1
---
apiVersion: weft.dev/v1alpha1
kind: VirtualBridge
metadata: {name: red}
spec:
  subnet: 10.241.0.0/24
  namespaces:
    selector:
      matchLabels:
        team: red
"#;

const NAVY: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: VirtualBridge
metadata: {name: navy}
spec:
  subnet: 10.243.0.0/24
  namespaces:
    selector:
      matchExpressions:
        - {key: team, operator: In, values: [blue, navy]}
"#;

/// A client of its own for the test's writes to NSDB (what an agent writes).
fn agent(db: &Db) -> (tokio::runtime::Runtime, Nsdb) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(Nsdb::connect(&[db.endpoint()]))
        .expect("connecting to NSDB");
    (rt, client)
}

/// With `--namespace-mode per-namespace`, each namespace no VirtualBridge serves gets a /24 of
/// the pool, attached to the cluster router; a label that a VirtualBridge's selector matches
/// moves the namespace to it and its own bridge goes; a deleted namespace's bridge goes and
/// its subnet is handed out again; a bridge with a pod port on it stays until the port is
/// released; the router's own translation leaves the namespaces' ports alone.
#[test]
fn per_namespace_bridges_follow_the_namespaces() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let cp = ControlPlane::shared();
    cp.prepare_weft();
    let db = Db::start();
    let dir = tempfile::Builder::new()
        .prefix("weft-namespaces-")
        .tempdir()
        .unwrap();
    apply(&cp, dir.path(), "topology", TOPOLOGY);
    let mut op = Operator::start(
        cp.kubeconfig(),
        &db.endpoint(),
        &[
            "--lease-name",
            "weft-namespaces",
            "--namespace-mode",
            "per-namespace",
            "--namespace-pool",
            POOL,
            "--namespace-prefix-len",
            "24",
            "--cluster-router",
            "cluster",
        ],
        &dir.path().join("per-namespace.stderr"),
    );
    // The namespaces that were there first get theirs too.
    wait_for(
        "the network of namespace default",
        CONVERGE_TIMEOUT,
        &mut op,
        || namespace_network(&db.try_snapshot()?, "default"),
    );

    cp.create_namespace("n1");
    cp.create_namespace("n2");
    let (s1, s2) = wait_for(
        "the networks of n1 and n2",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let s = db.try_snapshot()?;
            Ok((namespace_network(&s, "n1")?, namespace_network(&s, "n2")?))
        },
    );
    let subnets: Vec<Ipv4Net> = bridges(&db.snapshot())
        .values()
        .filter(|b| b.id.starts_with("kns:"))
        .filter_map(|b| b.subnet_v4)
        .collect();
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        subnets.len(),
        "one subnet each: {subnets:?}"
    );
    assert_ne!(s1, s2);
    // The selector of red matches no namespace yet.
    assert_eq!(listed(&db, "vbr:red").unwrap(), Vec::<String>::new());

    // The router's own translation runs again (a static route added): the namespaces' ports
    // on it stay as they were.
    let before = db.snapshot();
    apply(
        &cp,
        dir.path(),
        "router-route",
        &TOPOLOGY.replace(
            "      ip: 10.250.0.1\n",
            "      ip: 10.250.0.1\n  routes:\n    - destination: 192.168.0.0/16\n      nextHop: 10.250.0.254\n",
        ),
    );
    wait_for(
        "the router's static route",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let s = db.try_snapshot()?;
            record(&s, "/weft/v1/routes/vrt:cluster:route:0")
                .map(|_| ())
                .ok_or_else(|| "not yet".to_owned())
        },
    );
    let after = db.snapshot();
    for ns in ["n1", "n2"] {
        for key in [
            format!("/weft/v1/ports/kns:{ns}:port"),
            format!("/weft/v1/routes/kns:{ns}:port:connected"),
        ] {
            assert_eq!(
                before.records.get(&key),
                after.records.get(&key),
                "{key} untouched"
            );
        }
    }

    // n2 labelled team=red: red serves it, and n2's own bridge (no port on it) goes.
    cp.kubectl(&["label", "namespace", "n2", "team=red"]);
    wait_for(
        "red serving n2",
        CONVERGE_TIMEOUT,
        &mut op,
        || match listed(&db, "vbr:red")? {
            l if l == ["n2"] => Ok(()),
            l => Err(format!("red lists {l:?}")),
        },
    );
    wait_gone(&db, &mut op, "n2");
    namespace_network(&db.snapshot(), "n1").unwrap();

    // n1 deleted, and gone: its bridge goes, and its subnet is free.
    cp.kubectl(&["delete", "namespace", "n1", "--wait=false"]);
    finalize_namespace(&cp, dir.path(), "n1");
    wait_gone(&db, &mut op, "n1");

    // n3 gets the lowest free block: n1's.
    cp.create_namespace("n3");
    let s3 = wait_for("the network of n3", CONVERGE_TIMEOUT, &mut op, || {
        namespace_network(&db.try_snapshot()?, "n3")
    });
    assert_eq!(s3, s1, "n3 gets n1's subnet back");

    // A pod's port on n3's bridge, as the agent's ADD writes it.
    let (rt, nsdb) = agent(&db);
    let bridge = bridges(&db.snapshot()).remove("kns:n3").unwrap();
    let pod = rt
        .block_on(nsdb.allocate_pod_port(&PodPortRequest {
            port: "p-n3-web".into(),
            bridge,
            host: "node-a".into(),
            vport: "tap-n3-web".into(),
            labels: BTreeMap::new(),
        }))
        .expect("allocating the pod's port");
    assert!(IpNet::V4(s3).contains(&pod.port.addresses[0].addr()));

    // n3 deleted (Terminating: no pod starts in it any more): its bridge no longer lists it,
    // but stays while the port is on it.
    cp.kubectl(&["delete", "namespace", "n3", "--wait=false"]);
    wait_for(
        "n3's bridge listing nothing",
        CONVERGE_TIMEOUT,
        &mut op,
        || match listed(&db, "kns:n3")? {
            l if l.is_empty() => Ok(()),
            l => Err(format!("lists {l:?}")),
        },
    );
    let until = Instant::now() + STAYS_FOR;
    while Instant::now() < until {
        op.assert_running();
        let s = db.snapshot();
        assert!(
            bridges(&s).contains_key("kns:n3"),
            "n3's bridge went with a pod port on it"
        );
        assert!(
            record(&s, "/weft/v1/ports/kns:n3:port").is_some(),
            "n3's router port went with a pod port on the bridge"
        );
        std::thread::sleep(POLL);
    }
    assert!(
        op.stderr().contains("pod port(s) remain"),
        "the operator says why the bridge stays:\n{}",
        op.stderr()
    );
    // The port released: the bridge goes, and with it everything of n3.
    let released = rt
        .block_on(nsdb.release_pod_port("p-n3-web", "node-a"))
        .expect("releasing the pod's port");
    assert!(
        matches!(released, PodPortRelease::Removed(_)),
        "{released:?}"
    );
    wait_gone(&db, &mut op, "n3");
    let s = db.snapshot();
    assert!(
        !s.records.values().any(|(r, _)| matches!(r, AnyRecord::Port(Port { device: DeviceRef::Bridge(b), .. }) if b == "kns:n3")),
        "nothing is left on n3's bridge"
    );
    // No tunnel key stays allocated to a record that is gone (they are released right after
    // the records' deletion).
    wait_for(
        "the tunnel keys of gone records released",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let s = db.try_snapshot()?;
            let ids: Vec<String> = s.records.values().map(|(r, _)| r.id()).collect();
            let left: Vec<String> = s
                .records
                .values()
                .filter_map(|(r, _)| match r {
                    AnyRecord::TunnelKey(t)
                        if t.owner.starts_with("kns:") && !ids.contains(&t.owner) =>
                    {
                        Some(format!("{} of {}", t.key, t.owner))
                    }
                    _ => None,
                })
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    );
    // red keeps n2.
    assert_eq!(listed(&db, "vbr:red").unwrap(), ["n2"]);

    // Removed while the operator runs, so that their finalizers go with them.
    cp.kubectl(&[
        "delete",
        "-f",
        dir.path().join("topology.yaml").to_str().unwrap(),
        "--wait=true",
        "--timeout=60s",
    ]);
    stop(op);
    eprintln!("took {:?}", started.elapsed());
}

/// In the shared mode (the default) no namespace gets a bridge of its own, a VirtualBridge's
/// selector still chooses namespaces by label, and a bridge a per-namespace run left behind
/// is retired.
#[test]
fn the_shared_mode_writes_no_namespace_bridge() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cp = ControlPlane::shared();
    cp.prepare_weft();
    let db = Db::start();
    let dir = tempfile::Builder::new()
        .prefix("weft-namespaces-shared-")
        .tempdir()
        .unwrap();
    // Left by an earlier per-namespace run: a bridge for a namespace that has no pod.
    let (rt, nsdb) = agent(&db);
    let left = Bridge {
        id: "kns:shared-b".into(),
        name: "namespace/shared-b".into(),
        tunnel_key: 0,
        subnet_v4: Some("10.240.9.0/24".parse().unwrap()),
        subnet_v6: None,
        gateway_v4: Some("10.240.9.1".parse().unwrap()),
        gateway_v6: None,
        mtu: 0,
        vlan: None,
        excluded_ips: vec![],
        inbound_chain: None,
        outbound_chain: None,
        namespaces: vec!["shared-b".into()],
    };
    rt.block_on(nsdb.put(&left)).unwrap();

    cp.create_namespace("shared-a");
    cp.create_namespace("shared-b");
    cp.kubectl(&["label", "namespace", "shared-a", "team=blue", "--overwrite"]);
    apply(
        &cp,
        dir.path(),
        "blue",
        r#"
apiVersion: weft.dev/v1alpha1
kind: VirtualBridge
metadata: {name: blue}
spec:
  subnet: 10.242.0.0/24
  namespaces:
    selector:
      matchLabels:
        team: blue
"#,
    );
    let mut op = Operator::start(
        cp.kubeconfig(),
        &db.endpoint(),
        &["--lease-name", "weft-namespaces-shared"],
        &dir.path().join("shared.stderr"),
    );
    wait_for(
        "blue serving shared-a",
        CONVERGE_TIMEOUT,
        &mut op,
        || match listed(&db, "vbr:blue")? {
            l if l == ["shared-a"] => Ok(()),
            l => Err(format!("blue lists {l:?}")),
        },
    );
    wait_gone(&db, &mut op, "shared-b");

    // navy's selector matches shared-a too; blue's name sorts first, so blue keeps it, and
    // navy, programmed all the same, says so.
    apply(&cp, dir.path(), "navy", NAVY);
    let message = wait_for(
        "navy's Ready naming the conflict",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let vbr: serde_json::Value =
                serde_json::from_str(&cp.kubectl(&["get", "virtualbridge", "navy", "-o", "json"]))
                    .map_err(|e| e.to_string())?;
            let ready = vbr["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .cloned()
                .ok_or("no Ready condition")?;
            let message = ready["message"].as_str().unwrap_or_default().to_owned();
            if ready["status"] == "True" && message.contains("spec.namespaces.selector") {
                Ok(message)
            } else {
                Err(format!("Ready: {ready}"))
            }
        },
    );
    assert!(
        message.contains(
            "spec.namespaces.selector: namespace shared-a is served by VirtualBridge blue, whose \
             selector matches it too and whose name sorts first"
        ),
        "{message}"
    );
    assert_eq!(listed(&db, "vbr:navy").unwrap(), Vec::<String>::new());
    wait_for(
        "the NamespaceConflict event on navy",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let events = cp.kubectl(&[
                "get",
                "events.events.k8s.io",
                "-A",
                "--field-selector",
                "regarding.name=navy,reason=NamespaceConflict",
                "-o",
                "name",
            ]);
            if events.trim().is_empty() {
                Err("none yet".to_owned())
            } else {
                Ok(())
            }
        },
    );
    // blue goes: navy takes shared-a over.
    cp.kubectl(&[
        "delete",
        "virtualbridge",
        "blue",
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_for(
        "navy serving shared-a",
        CONVERGE_TIMEOUT,
        &mut op,
        || match listed(&db, "vbr:navy")? {
            l if l == ["shared-a"] => Ok(()),
            l => Err(format!("navy lists {l:?}")),
        },
    );
    // Long enough for the namespace controller to have looked at every namespace.
    std::thread::sleep(Duration::from_secs(3));
    let s = db.snapshot();
    assert_eq!(
        namespace_records(&s),
        Vec::<String>::new(),
        "no namespace has a bridge of its own"
    );
    assert!(op.stderr().contains("shared mode"), "{}", op.stderr());
    cp.kubectl(&[
        "delete",
        "virtualbridge",
        "navy",
        "--wait=true",
        "--timeout=60s",
    ]);
    stop(op);
}

/// A pod's port on a bridge, as the ADD of an agent on `host` writes it for pod `ns/name`.
fn pod_port(
    rt: &tokio::runtime::Runtime,
    nsdb: &Nsdb,
    bridge: &Bridge,
    id: &str,
    host: &str,
    pod: (&str, &str),
) {
    let labels = BTreeMap::from([
        (
            nsdb::pod_port::LABEL_POD_NAMESPACE.to_owned(),
            pod.0.to_owned(),
        ),
        (nsdb::pod_port::LABEL_POD_NAME.to_owned(), pod.1.to_owned()),
    ]);
    rt.block_on(nsdb.allocate_pod_port(&PodPortRequest {
        port: id.into(),
        bridge: bridge.clone(),
        host: host.into(),
        vport: format!("tap-{id}"),
        labels,
    }))
    .expect("allocating a pod's port");
}

/// A Pod deleted while its node was gone gets no CNI DEL: once the node's host record has
/// expired, the operator releases its port with its addresses, tunnel key and binding. The
/// port of a Pod that still exists on that node, and every port of a live node, stay.
#[test]
fn the_ports_of_pods_deleted_while_their_node_was_gone_are_collected() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cp = ControlPlane::shared();
    cp.prepare_weft();
    cp.create_namespace("orphans");
    let db = Db::start();
    let dir = tempfile::Builder::new()
        .prefix("weft-namespaces-orphans-")
        .tempdir()
        .unwrap();
    let (rt, nsdb) = agent(&db);
    let bridge = Bridge {
        id: "vbr:pods".into(),
        name: "pods".into(),
        tunnel_key: 7,
        subnet_v4: Some("10.251.0.0/24".parse().unwrap()),
        subnet_v6: None,
        gateway_v4: Some("10.251.0.1".parse().unwrap()),
        gateway_v6: None,
        mtu: 0,
        vlan: None,
        excluded_ips: vec![],
        inbound_chain: None,
        outbound_chain: None,
        namespaces: vec![],
    };
    rt.block_on(nsdb.put(&bridge)).unwrap();
    // node-live has its host record (its agent's lease); node-gone has none any more.
    rt.block_on(nsdb.put(&nsdb::Host {
        id: "node-live".into(),
        underlay_ip: "192.0.2.1".parse().unwrap(),
        tunnel: nsdb::TunnelType::Vxlan,
        tunnel_udp_port: 4789,
        mtu: 1500,
    }))
    .unwrap();
    // The pods: "kept" still exists on node-gone; "deleted" and "live-deleted" do not.
    apply(
        &cp,
        dir.path(),
        "kept",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: kept, namespace: orphans}\n\
         spec: {nodeName: node-gone, containers: [{name: c, image: pause}]}\n",
    );
    pod_port(
        &rt,
        &nsdb,
        &bridge,
        "p-deleted",
        "node-gone",
        ("orphans", "deleted"),
    );
    pod_port(
        &rt,
        &nsdb,
        &bridge,
        "p-kept",
        "node-gone",
        ("orphans", "kept"),
    );
    pod_port(
        &rt,
        &nsdb,
        &bridge,
        "p-live",
        "node-live",
        ("orphans", "live-deleted"),
    );
    let before = db.snapshot();
    let held = |s: &Snapshot, port: &str| -> Vec<String> {
        s.records
            .iter()
            .filter(|(_, (r, _))| match r {
                AnyRecord::Port(p) => p.id == port,
                AnyRecord::PortBinding(b) => b.port == port,
                AnyRecord::IpLease(l) => l.owner == port,
                AnyRecord::TunnelKey(t) => t.owner == port,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert_eq!(
        held(&before, "p-deleted").len(),
        4,
        "port, binding, lease, key"
    );

    let mut op = Operator::start(
        cp.kubeconfig(),
        &db.endpoint(),
        &["--lease-name", "weft-orphans"],
        &dir.path().join("orphans.stderr"),
    );
    wait_for(
        "the deleted pod's port released",
        CONVERGE_TIMEOUT,
        &mut op,
        || match held(&db.try_snapshot()?, "p-deleted") {
            left if left.is_empty() => Ok(()),
            left => Err(format!("left: {left:?}")),
        },
    );
    // The sweep that released it has looked at the others too.
    let after = db.snapshot();
    assert_eq!(
        held(&after, "p-kept"),
        held(&before, "p-kept"),
        "its pod is there"
    );
    assert_eq!(
        held(&after, "p-live"),
        held(&before, "p-live"),
        "its node is alive"
    );
    let stderr = stop(op);
    assert!(
        stderr.contains("released the port of a pod deleted while its node was gone"),
        "{stderr}"
    );
    cp.kubectl(&["delete", "namespace", "orphans", "--wait=false"]);
}
