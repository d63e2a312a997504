//! The identity of pod ports (pod labels, namespace labels, named ports) against a real
//! kube-apiserver and a real etcd: what a CNI ADD reads and writes in the port's transaction,
//! how it fails closed without an answer, and the watcher that keeps the ports of its host in
//! step with label changes of pods and namespaces, leaves other hosts' ports alone, writes
//! only what differs, and carries on across a restart of the API server.
//!
//! Needs the tools e2e/tools.sh builds (it fails, naming the command, when they are missing)
//! and etcd (nsdb::testing):
//!     e2e/tools.sh kube-apiserver kubectl etcd
//!     cargo test -p weft-agent --test pod_labels

#[allow(dead_code)]
#[path = "../../operator/tests/support/controlplane.rs"]
mod controlplane;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use controlplane::ControlPlane;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use nsdb::pod_port::{PodIdentity, merge_pod_labels};
use nsdb::testing::Etcd;
use nsdb::{
    Bridge, LABEL_NAMESPACE_NAME, NamedPort, Nsdb, PodPortRequest, Port, Protocol, WatchCache,
};
use serde_json::json;
use tokio::sync::Mutex;
use weft_agent::cni::{self, Add, LABEL_HOST, LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use weft_agent::config::KubeSource;
use weft_agent::podmeta::{self, IDENTITY_TIMEOUT, Kube, PodMetaError};

/// How long a change may take to reach NSDB through the watcher; after a restart of the API
/// server the watches back off (kube-runtime's default backoff reaches 30 s).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// The tests that use the control plane take turns: one of them restarts the API server.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn init() {
    nsdb::tls::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weft_agent=debug,nsdb=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn named(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.to_owned(),
        protocol,
        port,
    }
}

fn pod_json(ns: &str, name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        {"containerPort": 9000}
                    ]
                },
                {
                    "name": "diameter",
                    "image": "registry.invalid/diameter",
                    "ports": [{"name": "diameter", "containerPort": 3868, "protocol": "SCTP"}]
                }
            ]
        }
    })
}

/// The named ports of [`pod_json`], sorted.
fn pod_json_ports() -> Vec<NamedPort> {
    vec![
        named("diameter", Protocol::Sctp, 3868),
        named("dns", Protocol::Udp, 53),
        named("http", Protocol::Tcp, 8080),
    ]
}

async fn client_of(cp: &ControlPlane) -> Client {
    Kube::connect(&KubeSource::Kubeconfig(cp.kubeconfig().to_owned()))
        .await
        .expect("a client from the control plane's kubeconfig")
        .expect("a kubeconfig gives a client")
        .client()
        .clone()
}

async fn create_namespace(client: &Client, name: &str, l: serde_json::Value) {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": l},
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

async fn create_pod(client: &Client, ns: &str, name: &str, node: &str, l: serde_json::Value) {
    let pod: Pod = serde_json::from_value(pod_json(ns, name, node, l)).unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"));
}

fn bridge() -> Bridge {
    Bridge {
        id: "b1".into(),
        name: "b1".into(),
        tunnel_key: 1,
        subnet_v4: Some("10.8.0.0/24".parse().unwrap()),
        subnet_v6: None,
        gateway_v4: Some("10.8.0.1".parse().unwrap()),
        gateway_v6: None,
        mtu: 0,
        vlan: None,
        excluded_ips: vec![],
        inbound_chain: None,
        outbound_chain: None,
        namespaces: vec![],
    }
}

/// The ADD of container `container` (interface `ifname`) of pod `ns`/`name`.
fn add(container: &str, ifname: &str, ns: &str, name: &str) -> Add {
    Add {
        container_id: container.to_owned(),
        ifname: ifname.to_owned(),
        netns: "/var/run/netns/test".to_owned(),
        network: "weft".to_owned(),
        pod_namespace: Some(ns.to_owned()),
        pod_name: Some(name.to_owned()),
    }
}

/// Writes the port of `a` on `host` as the agent's ADD does: Weft's labels and `identity`
/// in the port's one transaction. Returns the port's id.
async fn allocate(db: &Nsdb, a: &Add, host: &str, identity: &PodIdentity) -> String {
    let port = cni::port_id(&a.container_id, &a.ifname);
    let req = PodPortRequest {
        port: port.clone(),
        bridge: bridge(),
        host: host.to_owned(),
        vport: cni::host_end(&a.container_id, &a.ifname),
        labels: cni::port_labels(a, host),
    };
    let p = db
        .allocate_pod_port_with(&req, identity)
        .await
        .expect("allocate the pod port");
    assert!(p.created);
    port
}

async fn port(db: &Nsdb, id: &str) -> (Port, i64) {
    let v = db
        .get::<Port>(id)
        .await
        .expect("read the port")
        .unwrap_or_else(|| panic!("port {id} is missing"));
    (v.record, v.version)
}

/// kubectl against `cp`, off the runtime's worker (it blocks until kubectl exits).
fn kubectl(cp: &ControlPlane, args: &[&str]) {
    tokio::task::block_in_place(|| cp.kubectl(args));
}

/// Polls NSDB until port `id` satisfies `ok`; fails after [`CONVERGE_TIMEOUT`], showing it.
async fn wait_port(db: &Nsdb, id: &str, what: &str, ok: impl Fn(&Port) -> bool) -> (Port, i64) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let (p, v) = port(db, id).await;
        if ok(&p) {
            return (p, v);
        }
        assert!(
            Instant::now() < deadline,
            "after {CONVERGE_TIMEOUT:?}, port {id} still does not show {what}: {p:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[test]
fn a_pod_maps_to_its_labels_and_named_ports() {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "ns", "name": "p", "labels": {"app": "web", "weft.dev/role": "node"}},
        "spec": {
            "initContainers": [
                {"name": "setup", "ports": [{"name": "setup", "containerPort": 1}]},
                {"name": "proxy", "restartPolicy": "Always",
                 "ports": [{"name": "proxy", "containerPort": 15001}]}
            ],
            "containers": [
                {"name": "a", "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"containerPort": 9000},
                    {"name": "", "containerPort": 9001}
                ]},
                {"name": "b", "ports": [
                    {"name": "sctp", "containerPort": 3868, "protocol": "SCTP"},
                    {"name": "http", "containerPort": 8080}
                ]},
                {"name": "c"}
            ]
        }
    }))
    .unwrap();
    let ns = podmeta::namespace_labels("ns", Some(&labels(&[("team", "red")])));
    assert_eq!(
        ns,
        labels(&[("team", "red"), (LABEL_NAMESPACE_NAME, "ns")]),
        "the namespace's name is a namespace label even when the API server left it out"
    );
    let id = podmeta::identity(&pod, ns.clone());
    assert_eq!(
        id.labels,
        labels(&[("app", "web"), ("weft.dev/role", "node")]),
        "the pod's labels, whole (the merge drops Weft's)"
    );
    assert_eq!(id.namespace_labels, ns);
    assert_eq!(
        id.named_ports,
        vec![
            named("dns", Protocol::Udp, 53),
            named("http", Protocol::Tcp, 8080),
            named("proxy", Protocol::Tcp, 15001),
            named("sctp", Protocol::Sctp, 3868),
        ],
        "named ports of containers and sidecars, TCP by default, sorted, each once; \
         unnamed ports and plain init containers' ports left out"
    );
    assert_eq!(
        podmeta::namespace_only("ns"),
        PodIdentity {
            labels: BTreeMap::new(),
            namespace_labels: labels(&[(LABEL_NAMESPACE_NAME, "ns")]),
            named_ports: vec![],
        },
        "without an API server: the namespace's name, so selectors by namespace name hold"
    );
}

#[test]
fn pod_labels_join_weft_labels_and_never_replace_them() {
    let own = cni::port_labels(&add("c1", "eth0", "ns", "web"), "node-1");
    let pod = labels(&[
        ("app", "web"),
        ("weft.dev/role", "node"),
        ("weft.dev/host", "node-2"),
        ("weft.dev/pod-name", "db"),
        ("x.weft.dev/y", "z"),
    ]);
    let merged = merge_pod_labels(&own, &pod);
    let mut want = own.clone();
    want.insert("app".into(), "web".into());
    assert_eq!(merged, want);
    assert_eq!(merged[LABEL_HOST], "node-1");
    assert_eq!(merged[LABEL_POD_NAME], "web");
    assert_eq!(merged[LABEL_POD_NAMESPACE], "ns");
    assert!(
        !merged.contains_key(nsdb::LABEL_ROLE),
        "a pod cannot pass as a node's port"
    );
    let port = Port {
        id: "p".into(),
        device: nsdb::DeviceRef::Bridge("b1".into()),
        kind: nsdb::PortKind::Exterior,
        mac: nsdb::MacAddr([2, 0, 0, 0, 0, 1]),
        addresses: vec![],
        tunnel_key: 1,
        inbound_chain: None,
        outbound_chain: None,
        admin_up: true,
        labels: merged,
        namespace_labels: BTreeMap::new(),
        named_ports: vec![],
    };
    let again = PodIdentity {
        labels: labels(&[("app", "api")]),
        ..Default::default()
    }
    .applied_to(&port);
    let mut want = own;
    want.insert("app".into(), "api".into());
    assert_eq!(
        again.labels, want,
        "an update replaces the pod's labels only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_add_reads_the_pod_and_its_namespace_and_fails_closed() {
    init();
    let _one = SERIAL.lock().await;
    let cp = tokio::task::block_in_place(ControlPlane::shared);
    let client = client_of(&cp).await;
    create_namespace(&client, "pl-get", json!({"env": "test"})).await;
    create_pod(
        &client,
        "pl-get",
        "web",
        "pl-get-node",
        json!({"app": "web"}),
    )
    .await;

    let id = podmeta::pod_identity(&client, "pl-get", "web", IDENTITY_TIMEOUT)
        .await
        .expect("the pod's identity");
    assert_eq!(id.labels, labels(&[("app", "web")]));
    assert_eq!(
        id.namespace_labels,
        labels(&[("env", "test"), (LABEL_NAMESPACE_NAME, "pl-get")])
    );
    assert_eq!(id.named_ports, pod_json_ports());

    // A pod or namespace the API server does not have: not attached (the ADD answers 11).
    let e = podmeta::pod_identity(&client, "pl-get", "gone", IDENTITY_TIMEOUT)
        .await
        .expect_err("no such pod");
    assert!(
        matches!(&e, PodMetaError::NotFound { what } if what == "pod pl-get/gone"),
        "{e}"
    );
    let e = podmeta::pod_identity(&client, "pl-none", "web", IDENTITY_TIMEOUT)
        .await
        .expect_err("no such namespace");
    assert!(matches!(&e, PodMetaError::NotFound { .. }), "{e}");

    // An API server that refuses connections: an error, at once.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let refused = Client::try_from(kube::Config::new(
        format!("https://{closed}").parse().unwrap(),
    ))
    .unwrap();
    let t = Instant::now();
    let e = podmeta::pod_identity(&refused, "pl-get", "web", IDENTITY_TIMEOUT)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(e, PodMetaError::Api { .. } | PodMetaError::Timeout { .. }),
        "{e}"
    );
    assert!(t.elapsed() < IDENTITY_TIMEOUT + Duration::from_secs(1));

    // One that accepts connections and never answers: the bound, and a reason that says so.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = Client::try_from(kube::Config::new(
        format!("https://{}", hole.local_addr().unwrap())
            .parse()
            .unwrap(),
    ))
    .unwrap();
    let limit = Duration::from_millis(700);
    let t = Instant::now();
    let e = podmeta::pod_identity(&silent, "pl-get", "web", limit)
        .await
        .expect_err("no answer");
    let took = t.elapsed();
    assert!(matches!(e, PodMetaError::Timeout { .. }), "{e}");
    assert!(
        took >= limit && took < limit + Duration::from_secs(1),
        "{took:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("did not answer within") && msg.contains("pod pl-get/web"),
        "{msg}"
    );
    drop(hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_keeps_this_hosts_pod_ports_in_step() {
    init();
    let _one = SERIAL.lock().await;
    let cp = tokio::task::block_in_place(ControlPlane::shared);
    let client = client_of(&cp).await;
    let etcd = Etcd::start();
    let db = etcd.client().await;
    db.put(&bridge()).await.unwrap();
    const NS: &str = "pl-watch";
    const HOST: &str = "pl-node-a";
    const OTHER: &str = "pl-node-b";
    create_namespace(&client, NS, json!({"team": "red"})).await;
    create_pod(
        &client,
        NS,
        "web",
        HOST,
        json!({"app": "web", "tier": "front", "weft.dev/role": "node"}),
    )
    .await;
    create_pod(&client, NS, "late", HOST, json!({"app": "late"})).await;
    create_pod(&client, NS, "away", OTHER, json!({"app": "away"})).await;

    // The ADD of web: its identity in the port's transaction.
    let web_id = podmeta::pod_identity(&client, NS, "web", IDENTITY_TIMEOUT)
        .await
        .unwrap();
    let web_add = add("c-web", "eth0", NS, "web");
    let web = allocate(&db, &web_add, HOST, &web_id).await;
    let (p, web_v0) = port(&db, &web).await;
    let mut want = cni::port_labels(&web_add, HOST);
    want.extend(labels(&[("app", "web"), ("tier", "front")]));
    assert_eq!(
        p.labels, want,
        "pod labels next to Weft's, without weft.dev/role"
    );
    assert_eq!(
        p.namespace_labels,
        labels(&[("team", "red"), (LABEL_NAMESPACE_NAME, NS)])
    );
    assert_eq!(p.named_ports, pod_json_ports());
    // late was attached by an agent without an API server; away is another node's.
    let late = allocate(
        &db,
        &add("c-late", "eth0", NS, "late"),
        HOST,
        &podmeta::namespace_only(NS),
    )
    .await;
    let away = allocate(
        &db,
        &add("c-away", "eth0", NS, "away"),
        OTHER,
        &podmeta::namespace_only(NS),
    )
    .await;
    let (_, away_v0) = port(&db, &away).await;

    let cache = WatchCache::start(db.clone()).await;
    let watcher = tokio::spawn(podmeta::run(
        client.clone(),
        db.clone(),
        HOST.to_owned(),
        cache.subscribe(),
    ));

    // The watcher's first list fills in late's identity.
    wait_port(&db, &late, "late's labels and named ports", |p| {
        p.labels.get("app").map(String::as_str) == Some("late")
            && p.namespace_labels.get("team").map(String::as_str) == Some("red")
            && p.named_ports == pod_json_ports()
    })
    .await;
    assert_eq!(
        port(&db, &web).await.1,
        web_v0,
        "web was in step: not written"
    );

    // A pod's labels change: the new ones replace the old, Weft's stay.
    kubectl(
        &cp,
        &[
            "label",
            "pod",
            "web",
            "-n",
            NS,
            "app=web2",
            "tier-",
            "--overwrite",
        ],
    );
    let (p, _) = wait_port(&db, &web, "app=web2 without tier", |p| {
        p.labels.get("app").map(String::as_str) == Some("web2") && !p.labels.contains_key("tier")
    })
    .await;
    let mut want = cni::port_labels(&web_add, HOST);
    want.insert("app".into(), "web2".into());
    assert_eq!(p.labels, want);

    // The namespace's labels change: every pod port of this host in it follows.
    kubectl(&cp, &["label", "namespace", NS, "team=blue", "--overwrite"]);
    for id in [&web, &late] {
        wait_port(&db, id, "team=blue", |p| {
            p.namespace_labels == labels(&[("team", "blue"), (LABEL_NAMESPACE_NAME, NS)])
        })
        .await;
    }
    // Another node's pod, and another host's port, are not this watcher's.
    kubectl(
        &cp,
        &["label", "pod", "away", "-n", NS, "app=moved", "--overwrite"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p, v) = port(&db, &away).await;
    assert_eq!(v, away_v0, "another host's port was written: {p:#?}");
    assert!(!p.labels.contains_key("app"));

    // In step, nothing is written again: no write storm.
    let before = (port(&db, &web).await.1, port(&db, &late).await.1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (port(&db, &web).await.1, port(&db, &late).await.1),
        before,
        "ports in step were written again"
    );

    // A port written with an identity read before the pod's last change (an ADD racing a
    // label change) is brought up to date when it appears in NSDB.
    let raced = allocate(&db, &add("c-web", "eth1", NS, "web"), HOST, &web_id).await;
    wait_port(&db, &raced, "app=web2 and team=blue", |p| {
        p.labels.get("app").map(String::as_str) == Some("web2")
            && !p.labels.contains_key("tier")
            && p.namespace_labels.get("team").map(String::as_str) == Some("blue")
    })
    .await;

    // The API server goes away and comes back: the watcher carries on.
    tokio::task::block_in_place(|| cp.restart_apiserver());
    assert!(
        !watcher.is_finished(),
        "the watcher ended with the API server"
    );
    kubectl(
        &cp,
        &["label", "pod", "web", "-n", NS, "app=web3", "--overwrite"],
    );
    for id in [&web, &raced] {
        wait_port(&db, id, "app=web3 after the API server's restart", |p| {
            p.labels.get("app").map(String::as_str) == Some("web3")
        })
        .await;
    }
    assert!(!watcher.is_finished());

    drop(cache);
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watcher ends with its NSDB cache")
        .unwrap();
}
