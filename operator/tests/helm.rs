//! The Helm chart (charts/weft) against the real kube-apiserver of e2e/controlplane.sh: it
//! lints strictly, its rendering is admitted by the server, it installs, upgrades and
//! uninstalls, and every container it runs is given flags its binary accepts.
//!
//!     cargo test -p weft-operator --test helm
//!
//! The flag check runs weft-agent from this build's target directory: `cargo test
//! --workspace` builds it; alone, run `cargo build -p weft-agent` first.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nsdb::testing::Etcd;
use serde_json::Value;
use support::controlplane::{ControlPlane, repo};
use support::operator::{KINDS, Operator, example_objects, not_ready};

/// Held by the tests that `helm install`: two installs at once race to create the CRDs.
static INSTALLS: Mutex<()> = Mutex::new(());

fn chart() -> PathBuf {
    repo().join("charts").join("weft")
}

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

#[test]
fn helm_lint_strict_passes() {
    let chart = chart();
    let out = helm(None, &["lint", "--strict", chart.to_str().unwrap()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn values_outside_the_schema_are_refused() {
    let chart = chart();
    for bad in [
        "agent.tunnel=gre",
        "agent.underlayMtu=100",
        "etcd.endpoints={etcd:2379}",
        "operator.nosuchvalue=1",
    ] {
        let out = run(
            "helm template",
            Command::new(helm_bin()).args([
                "template",
                "weft",
                chart.to_str().unwrap(),
                "--set",
                bad,
            ]),
        );
        assert!(
            !out.status.success(),
            "helm template --set {bad} was accepted; the schema must refuse it"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("schema"), "--set {bad}: {err}");
    }
}

#[test]
fn rendered_chart_passes_server_side_dry_run() {
    let cp = ControlPlane::shared();
    let ns = namespace(&cp, "weft-dry-run");
    let yaml = render(&["--namespace", &ns, "--include-crds"]);
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
    for kind in [
        "customresourcedefinition.apiextensions.k8s.io/virtualbridges.weft.dev",
        "deployment.apps/weft-operator",
        "daemonset.apps/weft-agent",
        "poddisruptionbudget.policy/weft-operator",
        "clusterrole.rbac.authorization.k8s.io/weft-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/weft-operator",
        "serviceaccount/weft-operator",
        "serviceaccount/weft-agent",
    ] {
        // "created", or "configured" for a CRD another test installed meanwhile.
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{kind} ")) && l.ends_with("(server dry run)")),
            "{kind} missing from the dry run:\n{out}"
        );
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

    helm(
        Some(&cp),
        &[
            "install",
            release,
            chart,
            "--namespace",
            &ns,
            "--timeout",
            "60s",
        ],
    );
    let deploy = get_json(&cp, &["-n", &ns, "deployment", "weft-operator"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let ds = get_json(&cp, &["-n", &ns, "daemonset", "weft-agent"]);
    let agent_args = container_args(&ds["spec"]["template"]["spec"], "agent");
    assert!(
        agent_args.contains(&"--tunnel=vxlan".to_string()),
        "{agent_args:?}"
    );
    assert!(
        !agent_args
            .iter()
            .any(|a| a.starts_with("--tunnel-udp-port")),
        "{agent_args:?}"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    get_json(&cp, &["crd", "virtualbridges.weft.dev"]);

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
            "etcd.endpoints={http://10.0.0.1:2379,http://10.0.0.2:2379}",
        ],
    );
    let deploy = get_json(&cp, &["-n", &ns, "deployment", "weft-operator"]);
    assert_eq!(
        deploy["spec"]["replicas"], 3,
        "upgrade did not change replicas"
    );
    let op_args = container_args(&deploy["spec"]["template"]["spec"], "operator");
    assert!(
        op_args.contains(&"--etcd-endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379".to_string()),
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
    // Helm keeps crds/ on uninstall: the objects of users must not vanish with the chart.
    get_json(&cp, &["crd", "virtualbridges.weft.dev"]);
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
    for values in [
        vec![],
        vec![
            "--set",
            "agent.tunnel=geneve",
            "--set",
            "agent.tunnelUdpPort=6090",
        ],
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
        assert_eq!(
            checked,
            ["weft-agent", "weft-operator"],
            "containers checked"
        );
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
    helm(
        Some(&cp),
        &[
            "install",
            "rbac",
            chart.to_str().unwrap(),
            "--namespace",
            &ns,
        ],
    );
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
