//! The Helm chart (charts/weft) against the real kube-apiserver of e2e/controlplane.sh: it
//! lints strictly, its rendering is admitted by the server, it installs, upgrades and
//! uninstalls, and every container it runs is given flags its binary accepts.
//!
//!     cargo test -p weft-operator --test helm
//!
//! The flag check runs weft-agent from this build's target directory: `cargo test
//! --workspace` builds it; alone, run `cargo build -p weft-agent` first.
//!
//! The chart's etcd TLS arguments are run for real: `weft-operator` with them (the Secret's
//! files in a directory of the test) writes to and reads from an etcd that serves https with
//! `--client-cert-auth`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nsdb::testing::{Etcd, Pki};
use serde_json::Value;
use support::controlplane::{ControlPlane, repo};
use support::operator::{KINDS, Operator, example_objects, not_ready};

/// Held by the tests that `helm install` or dry-run the chart: two installs at once race to
/// create the CRDs, and an uninstall deletes the default bridge a dry run checks.
static INSTALLS: Mutex<()> = Mutex::new(());

fn chart() -> PathBuf {
    repo().join("charts").join("weft")
}

/// The values every rendering needs: NSDB's endpoints (the chart has no default).
const ENDPOINTS: [&str; 2] = ["--set", "etcd.endpoints={http://etcd.weft-system.svc:2379}"];

/// An etcd outside the chart over TLS, with the client certificate of a Secret.
const TLS: [&str; 4] = [
    "--set",
    "etcd.endpoints={https://etcd-0.example:2379,https://etcd-1.example:2379}",
    "--set",
    "etcd.tls.secretName=etcd-client",
];

/// The chart's own etcd, and a default bridge.
const DEPLOY: [&str; 6] = [
    "--set",
    "etcd.deploy=true",
    "--set",
    "defaultBridge.name=weft-pods",
    "--set",
    "defaultBridge.subnet=10.240.0.0/16",
];

/// Where the chart mounts the etcd TLS Secret (its keys are the file names).
const TLS_DIR: &str = "/etc/weft/etcd-tls";

/// The helm binary e2e/tools.sh built (it never builds here).
fn helm_bin() -> PathBuf {
    let out = Command::new(repo().join("e2e").join("tools.sh"))
        .arg("helm")
        .env("WEFT_TOOLS_NO_BUILD", "1")
        .output()
        .expect("cannot run e2e/tools.sh helm");
    assert!(
        out.status.success(),
        "e2e/tools.sh helm failed (build the tools with `e2e/tools.sh`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("helm="))
        .map(PathBuf::from)
        .expect("e2e/tools.sh printed helm=PATH")
}

fn run(what: &str, cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs helm against `cp` (or no cluster); panics with its output when it fails.
fn helm(cp: Option<&ControlPlane>, args: &[&str]) -> String {
    let mut c = Command::new(helm_bin());
    c.args(args);
    if let Some(cp) = cp {
        c.env("KUBECONFIG", cp.kubeconfig());
    }
    ok(&format!("helm {}", args.join(" ")), run("helm", &mut c))
}

fn render(args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec!["template", "weft", chart.to_str().unwrap()];
    all.extend_from_slice(args);
    helm(None, &all)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("helm template renders valid YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// A fresh namespace for one test.
fn namespace(cp: &ControlPlane, name: &str) -> String {
    cp.kubectl(&["create", "namespace", name]);
    name.to_string()
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&cp.kubectl(&all)).unwrap()
}

fn container_args(pod_spec: &Value, container: &str) -> Vec<String> {
    pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container} in {pod_spec:#}"))["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The objects of a rendering of one kind.
fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one object of a kind and name in a rendering.
fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// Asserts that a pod spec's container gets the chart's three TLS flags and mounts the Secret
/// read-only where they point.
fn assert_tls_wired(pod_spec: &Value, container: &str, secret: &str) {
    let args = container_args(pod_spec, container);
    for flag in [
        format!("--etcd-ca-file={TLS_DIR}/ca.crt"),
        format!("--etcd-cert-file={TLS_DIR}/tls.crt"),
        format!("--etcd-key-file={TLS_DIR}/tls.key"),
    ] {
        assert!(
            args.contains(&flag),
            "{container}: {flag} missing: {args:?}"
        );
    }
    let c = pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"] == TLS_DIR))
        .unwrap_or_else(|| panic!("{container} mounts nothing at {TLS_DIR}: {c:#}"));
    assert_eq!(mount["readOnly"], true, "{container}: {mount:#}");
    let volume = pod_spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{container}: no volume {}", mount["name"]));
    assert_eq!(volume["secret"]["secretName"], secret, "{volume:#}");
    let keys: Vec<&str> = volume["secret"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
}

fn assert_no_tls(pod_spec: &Value, container: &str) {
    let args = container_args(pod_spec, container);
    assert!(
        !args.iter().any(|a| a.starts_with("--etcd-ca-file")
            || a.starts_with("--etcd-cert-file")
            || a.starts_with("--etcd-key-file")),
        "{container}: {args:?}"
    );
    assert!(
        !pod_spec.to_string().contains(TLS_DIR),
        "{container} mounts TLS files without etcd.tls: {pod_spec:#}"
    );
}

#[test]
fn helm_lint_strict_passes() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for values in [&[][..], &ENDPOINTS[..], &TLS[..], &DEPLOY[..]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(values);
        let out = helm(None, &args);
        assert!(out.contains("0 chart(s) failed"), "{values:?}: {out}");
    }
}

#[test]
fn values_outside_the_schema_are_refused() {
    let chart = chart();
    for bad in [
        "agent.tunnel=gre",
        "agent.underlayMtu=100",
        "agent.lbMemberChoice=random",
        "agent.nodeBridge=Not_A_Name",
        "etcd.endpoints={etcd:2379}",
        "operator.nosuchvalue=1",
        "etcd.nosuchvalue=1",
        "etcd.deploy=sometimes",
        "etcd.tls.secretName=Not_A_Name",
        "etcd.tls.caFile=/ca.pem",
        "etcd.image.tag=",
        "etcd.persistence.size=lots",
        "defaultBridge.name=weft-pods",
        "defaultBridge.subnet=10.240.0.0/16",
        "defaultBridge.nosuchvalue=1",
        "clusterDomain=Not_A_Domain",
    ] {
        let out = run(
            "helm template",
            Command::new(helm_bin())
                .args(["template", "weft", chart.to_str().unwrap()])
                .args(ENDPOINTS)
                .args(["--set", bad]),
        );
        assert!(
            !out.status.success(),
            "helm template --set {bad} was accepted; the schema must refuse it"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("schema"), "--set {bad}: {err}");
    }
    // A name with a subnet that is not one, with the name.
    let out = run(
        "helm template",
        Command::new(helm_bin())
            .args(["template", "weft", chart.to_str().unwrap()])
            .args(ENDPOINTS)
            .args(["--set", "defaultBridge.name=weft-pods"])
            .args(["--set", "defaultBridge.subnet=10.240.0/16"]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("schema") && err.contains("/defaultBridge/subnet"),
        "{err}"
    );
    // An IPv6 subnet needs its gateway (the router's IPv6 address), and is not an IPv4 one.
    for v6 in [
        [
            "defaultBridge.subnetV6=fd00:10:96::/64",
            "defaultBridge.gatewayV6=",
        ],
        [
            "defaultBridge.subnetV6=10.1.0.0/16",
            "defaultBridge.gatewayV6=fd00:10:96::1",
        ],
        [
            "defaultBridge.subnetV6=",
            "defaultBridge.gatewayV6=fd00:10:96::1",
        ],
    ] {
        let mut cmd = Command::new(helm_bin());
        cmd.args(["template", "weft", chart.to_str().unwrap()])
            .args(ENDPOINTS)
            .args(DEPLOY);
        for v in v6 {
            cmd.args(["--set", v]);
        }
        let out = run("helm template", &mut cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("schema") && err.contains("/defaultBridge"),
            "{v6:?}: {err}"
        );
    }
}

#[test]
fn etcd_settings_that_cannot_work_are_refused_saying_why() {
    let chart = chart();
    for (values, why) in [
        (&[][..], "etcd.endpoints is empty: name NSDB's etcd"),
        (
            &[
                "--set",
                "etcd.endpoints={http://etcd:2379}",
                "--set",
                "etcd.tls.secretName=etcd-client",
            ][..],
            "etcd.tls.secretName is set but etcd endpoint http://etcd:2379 is not https://",
        ),
        (
            &[
                "--set",
                "etcd.deploy=true",
                "--set",
                "etcd.tls.secretName=etcd-client",
            ][..],
            "etcd.tls.secretName is for an etcd outside the chart",
        ),
    ] {
        let out = run(
            "helm template",
            Command::new(helm_bin())
                .args(["template", "weft", chart.to_str().unwrap()])
                .args(values),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{values:?}: {err}"
        );
    }
}

#[test]
fn rendered_values_wire_tls_the_default_bridge_and_the_etcd_statefulset() {
    // Plain endpoints: no TLS, no etcd of the chart's, no default bridge.
    let docs = documents(&render(&ENDPOINTS));
    let deploy = object(&docs, "Deployment", "weft-operator");
    let ds = object(&docs, "DaemonSet", "weft-agent");
    assert_no_tls(&deploy["spec"]["template"]["spec"], "operator");
    assert_no_tls(&ds["spec"]["template"]["spec"], "agent");
    assert!(of_kind(&docs, "StatefulSet").is_empty());
    assert!(of_kind(&docs, "VirtualBridge").is_empty());
    let agent_args = container_args(&ds["spec"]["template"]["spec"], "agent");
    assert!(
        !agent_args.iter().any(|a| a.starts_with("--default-bridge")),
        "{agent_args:?}"
    );
    assert!(
        !agent_args.iter().any(|a| a.starts_with("--node-bridge")),
        "no node port unless asked: {agent_args:?}"
    );
    let mut with_node = ENDPOINTS.to_vec();
    with_node.extend(["--set", "agent.nodeBridge=weft-join"]);
    let docs = documents(&render(&with_node));
    let ds = object(&docs, "DaemonSet", "weft-agent");
    let agent_args = container_args(&ds["spec"]["template"]["spec"], "agent");
    assert!(
        agent_args.contains(&"--node-bridge=vbr:weft-join".to_string()),
        "{agent_args:?}"
    );

    // TLS from a Secret: both workloads get the flags and the Secret, read-only.
    let docs = documents(&render(&TLS));
    let deploy = object(&docs, "Deployment", "weft-operator");
    let ds = object(&docs, "DaemonSet", "weft-agent");
    assert_tls_wired(
        &deploy["spec"]["template"]["spec"],
        "operator",
        "etcd-client",
    );
    assert_tls_wired(&ds["spec"]["template"]["spec"], "agent", "etcd-client");
    let endpoints = "--etcd-endpoints=https://etcd-0.example:2379,https://etcd-1.example:2379";
    for (spec, c) in [(deploy, "operator"), (ds, "agent")] {
        let args = container_args(&spec["spec"]["template"]["spec"], c);
        assert!(args.contains(&endpoints.to_string()), "{c}: {args:?}");
    }
    // The operator runs as nobody: the files (mode 0440) are its group's.
    assert_eq!(
        deploy["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
        65534
    );
    assert!(of_kind(&docs, "StatefulSet").is_empty());

    // The chart's etcd: 3 members, a headless Service, a quorum-keeping budget, and both
    // binaries pointed at the members; and the default bridge.
    let docs = documents(&render(&DEPLOY));
    let sts = of_kind(&docs, "StatefulSet");
    assert_eq!(sts.len(), 1, "one StatefulSet");
    let sts = sts[0];
    assert_eq!(sts["metadata"]["name"], "weft-etcd");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["serviceName"], "weft-etcd");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(claims[0]["spec"]["resources"]["requests"]["storage"], "2Gi");
    let etcd_args = container_args(&sts["spec"]["template"]["spec"], "etcd");
    let members: Vec<String> = (0..3)
        .map(|i| format!("weft-etcd-{i}.weft-etcd.default.svc.cluster.local"))
        .collect();
    let initial = format!(
        "--initial-cluster={}",
        members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("weft-etcd-{i}=http://{m}:2380"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(etcd_args.contains(&initial), "{etcd_args:?}");
    let svc = object(&docs, "Service", "weft-etcd");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        object(&docs, "PodDisruptionBudget", "weft-etcd")["spec"]["minAvailable"],
        2
    );
    let endpoints = format!(
        "--etcd-endpoints={}",
        members
            .iter()
            .map(|m| format!("http://{m}:2379"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let deploy = object(&docs, "Deployment", "weft-operator");
    let ds = object(&docs, "DaemonSet", "weft-agent");
    for (spec, c) in [(deploy, "operator"), (ds, "agent")] {
        let args = container_args(&spec["spec"]["template"]["spec"], c);
        assert!(args.contains(&endpoints), "{c}: {args:?}");
    }
    let bridge = object(&docs, "VirtualBridge", "weft-pods");
    assert_eq!(bridge["apiVersion"], "weft.dev/v1alpha1");
    assert_eq!(bridge["spec"]["subnet"], "10.240.0.0/16");
    assert_eq!(
        bridge["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let agent_args = container_args(&ds["spec"]["template"]["spec"], "agent");
    assert!(
        agent_args.contains(&"--default-bridge=vbr:weft-pods".to_string()),
        "{agent_args:?}"
    );
    // The cluster router serves the default bridge at its gateway, so that its pods reach
    // Services; the bridge says the same gateway.
    assert_eq!(bridge["spec"]["gateway"], "10.240.0.1");
    let router = object(&docs, "VirtualRouter", "weft-cluster");
    assert_eq!(
        router["spec"]["interfaces"],
        serde_json::json!([{"bridge": "weft-pods", "ip": "10.240.0.1"}])
    );
    assert_eq!(
        router["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let mut values = DEPLOY.to_vec();
    values.extend(["--set", "defaultBridge.gateway=10.240.255.254"]);
    values.extend(["--set", "network.clusterRouter=edge"]);
    let docs = documents(&render(&values));
    assert_eq!(
        object(&docs, "VirtualBridge", "weft-pods")["spec"]["gateway"],
        "10.240.255.254"
    );
    assert_eq!(
        object(&docs, "VirtualRouter", "edge")["spec"]["interfaces"][0]["ip"],
        "10.240.255.254"
    );
    // Dual stack: the bridge's IPv6 subnet and gateway, which is the router's IPv6 address.
    let mut values = DEPLOY.to_vec();
    values.extend(["--set", "defaultBridge.subnetV6=fd00:10:240::/64"]);
    values.extend(["--set", "defaultBridge.gatewayV6=fd00:10:240::1"]);
    let docs = documents(&render(&values));
    let spec = &object(&docs, "VirtualBridge", "weft-pods")["spec"];
    assert_eq!(
        (&spec["subnetV6"], &spec["gatewayV6"]),
        (&"fd00:10:240::/64".into(), &"fd00:10:240::1".into())
    );
    assert_eq!(
        object(&docs, "VirtualRouter", "weft-cluster")["spec"]["interfaces"],
        serde_json::json!([{"bridge": "weft-pods", "ip": "10.240.0.1", "ipV6": "fd00:10:240::1"}])
    );
    let mut values = DEPLOY.to_vec();
    values.extend(["--set", "network.createClusterRouter=false"]);
    assert!(of_kind(&documents(&render(&values)), "VirtualRouter").is_empty());

    // Given endpoints win over the chart's etcd; emptyDir instead of claims.
    let mut values = DEPLOY.to_vec();
    values.extend(ENDPOINTS);
    values.extend(["--set", "etcd.persistence.enabled=false"]);
    let docs = documents(&render(&values));
    let sts = of_kind(&docs, "StatefulSet")[0];
    assert!(sts["spec"]["volumeClaimTemplates"].is_null(), "{sts:#}");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "data" && v["emptyDir"].is_object()),
        "{volumes:?}"
    );
    let deploy = object(&docs, "Deployment", "weft-operator");
    let args = container_args(&deploy["spec"]["template"]["spec"], "operator");
    assert!(
        args.contains(&"--etcd-endpoints=http://etcd.weft-system.svc:2379".to_string()),
        "{args:?}"
    );
}

#[test]
fn rendered_chart_passes_server_side_dry_run() {
    let _one = INSTALLS.lock().unwrap_or_else(|e| e.into_inner());
    let cp = ControlPlane::shared();
    let ns = namespace(&cp, "weft-dry-run");
    // The default bridge is a VirtualBridge: its CRD must exist for the server to check it.
    let crds = chart().join("crds");
    cp.kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    let base = [
        "customresourcedefinition.apiextensions.k8s.io/virtualbridges.weft.dev",
        "deployment.apps/weft-operator",
        "daemonset.apps/weft-agent",
        "poddisruptionbudget.policy/weft-operator",
        "clusterrole.rbac.authorization.k8s.io/weft-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/weft-operator",
        "serviceaccount/weft-operator",
        "serviceaccount/weft-agent",
    ];
    let mut deployed = DEPLOY.to_vec();
    deployed.extend(["--set", "etcd.persistence.enabled=false"]);
    // A dual-stack default bridge: the CRDs take its IPv6 fields and the router's ipV6.
    let mut dual = deployed.clone();
    dual.extend(["--set", "defaultBridge.subnetV6=fd00:10:240::/64"]);
    dual.extend(["--set", "defaultBridge.gatewayV6=fd00:10:240::1"]);
    for (values, extra) in [
        (
            &dual[..],
            &[
                "virtualbridge.weft.dev/weft-pods",
                "virtualrouter.weft.dev/weft-cluster",
            ][..],
        ),
        (&ENDPOINTS[..], &[][..]),
        (&TLS[..], &[][..]),
        (
            &DEPLOY[..],
            &[
                "service/weft-etcd",
                "statefulset.apps/weft-etcd",
                "poddisruptionbudget.policy/weft-etcd",
                "virtualbridge.weft.dev/weft-pods",
                "virtualrouter.weft.dev/weft-cluster",
            ][..],
        ),
        (&deployed[..], &["statefulset.apps/weft-etcd"][..]),
    ] {
        let mut args = vec!["--namespace", &ns, "--include-crds"];
        args.extend_from_slice(values);
        let yaml = render(&args);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &yaml).unwrap();
        let out = cp.kubectl(&[
            "apply",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            file.path().to_str().unwrap(),
        ]);
        for kind in base.iter().chain(extra) {
            // "created", or "configured"/"unchanged" for an object that exists already.
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("{kind} ")) && l.ends_with("(server dry run)")),
                "{values:?}: {kind} missing from the dry run:\n{out}"
            );
        }
    }
}

#[test]
fn helm_install_upgrade_uninstall() {
    let _one = INSTALLS.lock().unwrap_or_else(|e| e.into_inner());
    let cp = ControlPlane::shared();
    let ns = namespace(&cp, "weft-release");
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let release = "weft";

    // First with the chart's own etcd and a default bridge.
    let mut install = vec![
        "install",
        release,
        chart,
        "--namespace",
        &ns,
        "--timeout",
        "60s",
    ];
    install.extend(DEPLOY);
    helm(Some(&cp), &install);
    let deploy = get_json(&cp, &["-n", &ns, "deployment", "weft-operator"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let ds = get_json(&cp, &["-n", &ns, "daemonset", "weft-agent"]);
    let agent_args = container_args(&ds["spec"]["template"]["spec"], "agent");
    assert!(
        agent_args.contains(&"--tunnel=vxlan".to_string()),
        "{agent_args:?}"
    );
    assert!(
        agent_args.contains(&"--lb-member-choice=datapath".to_string()),
        "{agent_args:?}"
    );
    assert!(
        !agent_args
            .iter()
            .any(|a| a.starts_with("--tunnel-udp-port")),
        "{agent_args:?}"
    );
    assert!(
        agent_args.contains(&"--default-bridge=vbr:weft-pods".to_string()),
        "{agent_args:?}"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    get_json(&cp, &["crd", "virtualbridges.weft.dev"]);
    let sts = get_json(&cp, &["-n", &ns, "statefulset", "weft-etcd"]);
    assert_eq!(sts["spec"]["replicas"], 3);
    let svc = get_json(&cp, &["-n", &ns, "service", "weft-etcd"]);
    assert_eq!(svc["spec"]["clusterIP"], "None");
    let member0 = format!("http://weft-etcd-0.weft-etcd.{ns}.svc.cluster.local:2379");
    let op_args = container_args(&deploy["spec"]["template"]["spec"], "operator");
    assert!(
        op_args
            .iter()
            .any(|a| a.starts_with("--etcd-endpoints=") && a.contains(&member0)),
        "{op_args:?}"
    );
    let bridge = get_json(&cp, &["virtualbridge", "weft-pods"]);
    assert_eq!(bridge["spec"]["subnet"], "10.240.0.0/16");
    let router = get_json(&cp, &["virtualrouter", "weft-cluster"]);
    assert_eq!(router["spec"]["interfaces"][0]["bridge"], "weft-pods");

    // Then an etcd outside the chart, over TLS.
    helm(
        Some(&cp),
        &[
            "upgrade",
            release,
            chart,
            "--namespace",
            &ns,
            "--set",
            "agent.tunnel=geneve",
            "--set",
            "agent.tunnelUdpPort=7000",
            "--set",
            "operator.replicas=3",
            "--set",
            "etcd.endpoints={https://10.0.0.1:2379,https://10.0.0.2:2379}",
            "--set",
            "etcd.tls.secretName=etcd-client",
            "--set",
            "defaultBridge.name=weft-pods",
            "--set",
            "defaultBridge.subnet=10.240.0.0/16",
        ],
    );
    let deploy = get_json(&cp, &["-n", &ns, "deployment", "weft-operator"]);
    assert_eq!(
        deploy["spec"]["replicas"], 3,
        "upgrade did not change replicas"
    );
    let op_args = container_args(&deploy["spec"]["template"]["spec"], "operator");
    assert!(
        op_args
            .contains(&"--etcd-endpoints=https://10.0.0.1:2379,https://10.0.0.2:2379".to_string()),
        "{op_args:?}"
    );
    let ds = get_json(&cp, &["-n", &ns, "daemonset", "weft-agent"]);
    let agent_args = container_args(&ds["spec"]["template"]["spec"], "agent");
    assert!(
        agent_args.contains(&"--tunnel=geneve".to_string()),
        "{agent_args:?}"
    );
    assert!(
        agent_args.contains(&"--tunnel-udp-port=7000".to_string()),
        "{agent_args:?}"
    );
    assert_tls_wired(
        &deploy["spec"]["template"]["spec"],
        "operator",
        "etcd-client",
    );
    assert_tls_wired(&ds["spec"]["template"]["spec"], "agent", "etcd-client");
    for what in [
        "statefulset/weft-etcd",
        "service/weft-etcd",
        "pdb/weft-etcd",
    ] {
        let out = cp.kubectl(&["get", "--ignore-not-found", "-n", &ns, what, "-o", "name"]);
        assert!(
            out.trim().is_empty(),
            "{what} survived etcd.deploy=false: {out}"
        );
    }

    helm(
        Some(&cp),
        &["uninstall", release, "--namespace", &ns, "--timeout", "60s"],
    );
    for (scope, what) in [
        (Some(ns.as_str()), "deployment/weft-operator"),
        (Some(ns.as_str()), "daemonset/weft-agent"),
        (Some(ns.as_str()), "poddisruptionbudget/weft-operator"),
        (Some(ns.as_str()), "serviceaccount/weft-operator"),
        (Some(ns.as_str()), "serviceaccount/weft-agent"),
        (None, "clusterrole/weft-operator"),
        (None, "clusterrolebinding/weft-operator"),
    ] {
        let out = cp.kubectl(&[
            "get",
            "--ignore-not-found",
            "-n",
            scope.unwrap_or("default"),
            what,
            "-o",
            "name",
        ]);
        assert!(
            out.trim().is_empty(),
            "{what} survived helm uninstall: {out}"
        );
    }
    // Helm keeps crds/ on uninstall: the objects of users must not vanish with the chart. The
    // default bridge and its router stay too (pods may have addresses on it); they go by hand.
    get_json(&cp, &["crd", "virtualbridges.weft.dev"]);
    get_json(&cp, &["virtualbridge", "weft-pods"]);
    get_json(&cp, &["virtualrouter", "weft-cluster"]);
    cp.kubectl(&["delete", "virtualrouter", "weft-cluster", "--timeout=60s"]);
    cp.kubectl(&["delete", "virtualbridge", "weft-pods", "--timeout=60s"]);
}

/// The binary a container's command names: weft-operator is this package's, weft-agent is
/// the sibling binary in the same target directory.
fn binary(name: &str) -> PathBuf {
    let path = match name {
        "weft-operator" => PathBuf::from(env!("CARGO_BIN_EXE_weft-operator")),
        other => {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().and_then(Path::parent).unwrap();
            dir.join(other)
        }
    };
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p {}` (cargo test --workspace builds it)",
        path.display(),
        if name == "weft-agent" {
            "weft-agent"
        } else {
            name
        }
    );
    path
}

#[test]
fn chart_commands_and_args_are_flags_the_binaries_accept() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut geneve = ENDPOINTS.to_vec();
    geneve.extend([
        "--set",
        "agent.tunnel=geneve",
        "--set",
        "agent.tunnelUdpPort=6090",
    ]);
    let mut tls_and_bridge = TLS.to_vec();
    tls_and_bridge.extend(&DEPLOY[2..]);
    for (values, with_etcd) in [
        (ENDPOINTS.to_vec(), false),
        (geneve, false),
        (tls_and_bridge, false),
        (DEPLOY.to_vec(), true),
    ] {
        let docs = documents(&render(&values));
        let mut checked = Vec::new();
        for doc in &docs {
            let Some(spec) = doc.pointer("/spec/template/spec") else {
                continue;
            };
            let init = spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let main = spec["containers"].as_array().cloned().unwrap_or_default();
            for c in init.iter().chain(main.iter()) {
                let command: Vec<&str> = c["command"]
                    .as_array()
                    .unwrap_or_else(|| panic!("container {} sets no command", c["name"]))
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                if command[0] == "/bin/sh" {
                    // The CNI installer: it copies what the image ships.
                    let script = command.last().unwrap();
                    for shipped in [
                        "/usr/local/bin/weft-cni",
                        "/usr/local/share/weft/10-weft.conflist",
                    ] {
                        assert!(script.contains(shipped), "{script}");
                    }
                    assert!(
                        dockerfile.contains("weft-cni"),
                        "the image ships no weft-cni"
                    );
                    assert!(
                        dockerfile.contains("/usr/local/share/weft/10-weft.conflist"),
                        "the image ships no conflist"
                    );
                    continue;
                }
                if c["name"] == "etcd" {
                    check_etcd_container(c);
                    checked.push("etcd".to_string());
                    continue;
                }
                let name = command[0]
                    .strip_prefix("/usr/local/bin/")
                    .unwrap_or_else(|| {
                        panic!("{} is not in the image's /usr/local/bin", command[0])
                    });
                assert!(
                    dockerfile.contains(name),
                    "the Dockerfile does not ship {name}"
                );
                let args: Vec<&str> = c["args"]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
                    .unwrap_or_default();
                let bin = binary(name);
                let out = run(
                    name,
                    Command::new(&bin)
                        .args(&command[1..])
                        .args(&args)
                        .arg("--help"),
                );
                let help = ok(
                    &format!("{name} {} --help (the chart's args)", args.join(" ")),
                    out,
                );
                // Each environment variable the chart sets is a flag's fallback.
                for env in c["env"].as_array().cloned().unwrap_or_default() {
                    let var = env["name"].as_str().unwrap();
                    assert!(
                        help.contains(&format!("[env: {var}")),
                        "{name} reads no {var}; its --help:\n{help}"
                    );
                }
                checked.push(name.to_string());
            }
        }
        checked.sort();
        let want: &[&str] = if with_etcd {
            &["etcd", "weft-agent", "weft-operator"]
        } else {
            &["weft-agent", "weft-operator"]
        };
        assert_eq!(checked, want, "containers checked with {values:?}");
    }
}

/// etcd 3.6, as e2e/tools.sh built it: the version the chart's etcd image must have.
fn etcd36() -> (PathBuf, String) {
    let out = ok(
        "e2e/tools.sh etcd",
        run(
            "e2e/tools.sh",
            Command::new(repo().join("e2e").join("tools.sh"))
                .arg("etcd")
                .env("WEFT_TOOLS_NO_BUILD", "1"),
        ),
    );
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("etcd="))
        .map(PathBuf::from)
        .expect("e2e/tools.sh printed etcd=PATH");
    let version = ok(
        "etcd --version",
        run("etcd", Command::new(&path).arg("--version")),
    );
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .expect("etcd --version names its version")
        .to_string();
    (path, version)
}

/// The chart's etcd container: its image is the etcd release the tests run, each flag it
/// passes is one etcd 3.6 knows, and each `$(VAR)` in its args is an env var it sets.
fn check_etcd_container(c: &Value) {
    let (bin, version) = etcd36();
    let image = c["image"].as_str().unwrap();
    assert!(
        image.ends_with(&format!(":v{version}")),
        "the chart's etcd image {image} is not the etcd v{version} the tests run"
    );
    assert_eq!(c["command"][0], "/usr/local/bin/etcd");
    let help = ok("etcd --help", run("etcd", Command::new(&bin).arg("--help")));
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for arg in c["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("  {flag} ")) || help.contains(&format!("  {flag}\n")),
            "etcd v{version} has no flag {flag} (the chart passes {arg})"
        );
        let mut rest = arg;
        while let Some(at) = rest.find("$(") {
            let var = &rest[at + 2..rest[at..].find(')').map_or(rest.len(), |e| at + e)];
            assert!(
                env.contains(&var),
                "{arg} names $({var}), which the container does not set"
            );
            rest = &rest[at + 2..];
        }
    }
}

#[test]
fn a_flag_the_binary_lacks_fails_the_help_check() {
    // The check above means something only if a wrong flag fails it.
    let out = run(
        "weft-agent",
        Command::new(binary("weft-agent")).args(["--bridge-subnet=10.0.0.0/8", "--help"]),
    );
    assert!(!out.status.success(), "weft-agent accepted an unknown flag");
    let out = run(
        "weft-agent",
        Command::new(binary("weft-agent")).args(["--tunnel=gre", "--help"]),
    );
    assert!(!out.status.success(), "weft-agent accepted --tunnel=gre");
}

/// How long a weft binary may take to fail against an etcd that refuses its TLS handshake.
const TLS_FAIL_WITHIN: Duration = Duration::from_secs(15);

/// The chart's TLS flags, with the Secret's files where the chart would mount them, against an
/// etcd that serves https with `--client-cert-auth`: `weft-operator translate` writes examples/
/// and `nsdb-dump` reads them back. Without the client certificate it fails within a bound,
/// saying what to give; the env fallbacks and the system's roots (`SSL_CERT_FILE`) work too;
/// weft-agent refuses a certificate without its key before it touches anything.
#[test]
fn chart_tls_args_reach_a_mutual_tls_etcd() {
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    let endpoints = format!("--etcd-endpoints={}", etcd.endpoint());
    // The Secret's keys (as cert-manager names them) in a directory standing for the mount.
    let secret = tempfile::tempdir().unwrap();
    let secret_dir = secret.path().to_str().unwrap();
    for (key, file) in [
        ("ca.crt", "ca.pem"),
        ("tls.crt", "client.pem"),
        ("tls.key", "client.key"),
    ] {
        std::fs::copy(pki.path(file), secret.path().join(key)).unwrap();
    }
    let docs = documents(&render(&TLS));
    let deploy = object(&docs, "Deployment", "weft-operator");
    let tls_args: Vec<String> = container_args(&deploy["spec"]["template"]["spec"], "operator")
        .into_iter()
        .filter(|a| a.starts_with("--etcd-") && !a.starts_with("--etcd-endpoints"))
        .map(|a| a.replace(TLS_DIR, secret_dir))
        .collect();
    assert_eq!(tls_args.len(), 3, "{tls_args:?}");
    let operator = |args: &[&str], tls: &[String], env: &[(&str, &str)]| -> (Output, Duration) {
        let started = Instant::now();
        let mut cmd = Command::new(binary("weft-operator"));
        cmd.args(args)
            .arg(&endpoints)
            .args(tls)
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run("weft-operator", &mut cmd);
        (out, started.elapsed())
    };

    let examples = repo().join("examples");
    let (out, _) = operator(&["translate", examples.to_str().unwrap()], &tls_args, &[]);
    let translated = ok("weft-operator translate over mutual TLS", out);
    assert!(
        translated.contains(" refused") && translated.contains(", 0 refused"),
        "{translated}"
    );
    let (out, _) = operator(&["nsdb-dump"], &tls_args, &[]);
    let dump = ok("weft-operator nsdb-dump over mutual TLS", out);
    assert!(dump.contains("vbr:blue"), "examples/ not in NSDB:\n{dump}");

    // The same files through the environment.
    let (out, _) = operator(
        &["nsdb-dump"],
        &[],
        &[
            ("WEFT_ETCD_CA_FILE", &format!("{secret_dir}/ca.crt")),
            ("WEFT_ETCD_CERT_FILE", &format!("{secret_dir}/tls.crt")),
            ("WEFT_ETCD_KEY_FILE", &format!("{secret_dir}/tls.key")),
        ],
    );
    assert_eq!(ok("nsdb-dump with WEFT_ETCD_*_FILE", out), dump);

    // Without --etcd-ca-file etcd's certificate must chain to a root the system trusts: here
    // the test CA, made the system's by SSL_CERT_FILE.
    let without_ca: Vec<String> = tls_args
        .iter()
        .filter(|a| !a.starts_with("--etcd-ca-file"))
        .cloned()
        .collect();
    let (out, _) = operator(
        &["nsdb-dump"],
        &without_ca,
        &[("SSL_CERT_FILE", &format!("{secret_dir}/ca.crt"))],
    );
    assert_eq!(ok("nsdb-dump with the system's roots", out), dump);

    // Without the client certificate etcd refuses, and the operator says what to give.
    let ca_only: Vec<String> = tls_args
        .iter()
        .filter(|a| a.starts_with("--etcd-ca-file"))
        .cloned()
        .collect();
    let (out, took) = operator(&["nsdb-dump"], &ca_only, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "TLS handshake with etcd at {} failed",
            etcd.endpoint()
        )) && err.contains("give --etcd-cert-file and --etcd-key-file"),
        "{err}"
    );
    assert!(took < TLS_FAIL_WITHIN, "failing took {took:?}");

    // weft-agent checks the files before it takes its lock, NSDB or the datapath.
    let out = run(
        "weft-agent",
        Command::new(binary("weft-agent"))
            .args(["--node-name", "n1", "--underlay-ip", "192.0.2.1"])
            .arg(&endpoints)
            .arg(format!("--etcd-cert-file={secret_dir}/tls.crt")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--etcd-cert-file is given without --etcd-key-file"),
        "{err}"
    );
}

/// How long the operator may take to make every example Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A kubeconfig for `cp`'s API server that authenticates as the chart's operator
/// ServiceAccount, by a token from `kubectl create token`.
fn service_account_kubeconfig(cp: &ControlPlane, ns: &str, sa: &str, path: &Path) {
    let token = cp.kubectl(&["create", "token", sa, "-n", ns, "--duration=1h"]);
    let admin: Value =
        serde_json::from_str(&cp.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]))
            .unwrap();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cp", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": sa, "context": {"cluster": "cp", "user": sa}}],
        "current-context": sa,
    });
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

/// Waits until every example object is Ready for its generation; panics after the bound.
fn wait_examples_ready(cp: &ControlPlane, operator: &mut Operator) {
    let want = example_objects();
    assert!(want > 0, "examples/ defines no objects");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        operator.assert_running();
        let list: Value = serde_json::from_str(&cp.kubectl(&["get", KINDS, "-o", "json"])).unwrap();
        let have = list["items"].as_array().map_or(0, Vec::len);
        let waiting = not_ready(&list);
        if have == want && waiting.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {READY_TIMEOUT:?} with the chart's RBAC, {have} of {want} example objects \
             exist and these are not Ready: {waiting:#?}\nweft-operator's stderr:\n{}",
            operator.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn chart_rbac_is_sufficient_and_each_rule_is_needed() {
    let _one = INSTALLS.lock().unwrap_or_else(|e| e.into_inner());
    let cp = ControlPlane::shared();
    let ns = namespace(&cp, "weft-rbac");
    let chart = chart();
    let mut install = vec![
        "install",
        "rbac",
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
    ];
    install.extend(ENDPOINTS);
    helm(Some(&cp), &install);
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    let sa = "rbac-weft-operator";
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("operator.kubeconfig");
    service_account_kubeconfig(&cp, &ns, sa, &kubeconfig);
    // The token is the ServiceAccount's and nothing more: it may not read Secrets.
    let out = run(
        "kubectl auth can-i",
        Command::new(support_kubectl())
            .args(["auth", "can-i", "list", "secrets", "-n", &ns])
            .env("KUBECONFIG", &kubeconfig),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    let etcd = Etcd::start();
    let examples = repo().join("examples");
    let examples = examples.to_str().unwrap();
    let lease_ns = ["--lease-namespace", ns.as_str(), "--identity", "rbac-test"];

    // With the chart's ClusterRole the operator reconciles every example to Ready, and
    // removes them through its finalizer on delete.
    let mut operator = Operator::start(
        &kubeconfig,
        &etcd.endpoint(),
        &lease_ns,
        &dir.path().join("1.stderr"),
    );
    cp.kubectl(&["apply", "-f", examples]);
    let started = Instant::now();
    wait_examples_ready(&cp, &mut operator);
    let took = started.elapsed();
    cp.kubectl(&["delete", "-f", examples, "--wait", "--timeout=60s"]);
    let stderr = operator.stop();
    assert!(
        !stderr.contains("forbidden"),
        "forbidden with the chart's RBAC:\n{stderr}"
    );

    // Without the rule that lets it patch status, nothing becomes Ready, and it says why.
    let role: Value = get_json(&cp, &["clusterrole", sa]);
    let rules = role["rules"].as_array().unwrap();
    let status_rule = rules
        .iter()
        .position(|r| r["resources"][0] == "virtualbridges/status")
        .expect("the ClusterRole has a rule for the status subresources");
    cp.kubectl(&[
        "patch",
        "clusterrole",
        sa,
        "--type=json",
        "-p",
        &format!(r#"[{{"op":"remove","path":"/rules/{status_rule}"}}]"#),
    ]);
    let mut operator = Operator::start(
        &kubeconfig,
        &etcd.endpoint(),
        &lease_ns,
        &dir.path().join("2.stderr"),
    );
    cp.kubectl(&["apply", "-f", examples]);
    // Three times what the full role needed, within 15 s to 45 s.
    let watch = (took * 3).clamp(Duration::from_secs(15), Duration::from_secs(45));
    let deadline = Instant::now() + watch;
    while Instant::now() < deadline {
        operator.assert_running();
        let list: Value = serde_json::from_str(&cp.kubectl(&["get", KINDS, "-o", "json"])).unwrap();
        let have = list["items"].as_array().map_or(0, Vec::len);
        assert_eq!(have, example_objects(), "examples/ applied");
        let ready = have - not_ready(&list).len();
        assert_eq!(
            ready, 0,
            "objects became Ready without status patch: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let stderr = operator.stop();
    assert!(
        stderr.contains("forbidden"),
        "no forbidden error without the status rule; weft-operator's stderr:\n{stderr}"
    );
}

/// kubectl, as e2e/tools.sh built it.
fn support_kubectl() -> PathBuf {
    let out = ok(
        "e2e/tools.sh kubectl",
        run(
            "e2e/tools.sh",
            Command::new(repo().join("e2e").join("tools.sh"))
                .arg("kubectl")
                .env("WEFT_TOOLS_NO_BUILD", "1"),
        ),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("kubectl="))
        .map(PathBuf::from)
        .expect("e2e/tools.sh printed kubectl=PATH")
}
