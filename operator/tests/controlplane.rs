//! `weft-operator run` against a real kube-apiserver (e2e/controlplane.sh) and a real etcd as
//! NSDB: with the CRDs and examples/ applied by kubectl, every example object reaches
//! `Ready=True` for its current generation.
//!
//! Built only with the `e2e-controlplane` feature, since it needs the tools e2e/tools.sh builds:
//!     e2e/tools.sh kube-apiserver kubectl etcd
//!     cargo test -p weft-operator --features e2e-controlplane --test controlplane

mod support;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nsdb::testing::Etcd;
use support::controlplane::{ControlPlane, repo};

/// How long the operator may take to make every example Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

const KINDS: &str = "virtualbridges,virtualrouters,virtualloadbalancers,accesscontrollists";

/// A child process killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number of objects examples/*.yaml defines (one top-level `kind:` each).
fn example_objects() -> usize {
    let mut n = 0;
    for entry in fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            n += fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("kind: "))
                .count();
        }
    }
    n
}

/// "Kind/name" of each object that is not Ready=True for its current generation, with why.
fn not_ready(list: &serde_json::Value) -> Vec<String> {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|o| {
            let name = format!("{}/{}", o["kind"], o["metadata"]["name"]);
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
            let current = o["status"]["observedGeneration"] == o["metadata"]["generation"];
            match ready {
                Some(c) if c["status"] == "True" && current => None,
                Some(c) => Some(format!(
                    "{name}: Ready={} reason={} message={} observedGeneration={} generation={}",
                    c["status"],
                    c["reason"],
                    c["message"],
                    o["status"]["observedGeneration"],
                    o["metadata"]["generation"]
                )),
                None => Some(format!("{name}: no Ready condition")),
            }
        })
        .collect()
}

#[test]
fn operator_run_makes_every_example_ready() {
    let cp = ControlPlane::shared();
    let root = repo();
    cp.kubectl(&["apply", "-f", root.join("crds").to_str().unwrap()]);
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    cp.kubectl(&["create", "namespace", "weft-system"]);

    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("operator.stderr");
    let mut operator = Proc(
        Command::new(env!("CARGO_BIN_EXE_weft-operator"))
            .args(["run", "--etcd-endpoints", &etcd.endpoint()])
            .args(["--metrics-addr", "127.0.0.1:0", "--identity", "cp-test"])
            .env("KUBECONFIG", cp.kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("cannot start weft-operator"),
    );
    let stderr = || fs::read_to_string(&stderr_path).unwrap_or_default();

    cp.kubectl(&["apply", "-f", root.join("examples").to_str().unwrap()]);
    let want = example_objects();
    assert!(want > 0, "examples/ defines no objects");

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = operator.0.try_wait().unwrap() {
            panic!("weft-operator exited ({status}); stderr:\n{}", stderr());
        }
        let list: serde_json::Value =
            serde_json::from_str(&cp.kubectl(&["get", KINDS, "-o", "json"])).unwrap();
        let have = list["items"].as_array().map_or(0, Vec::len);
        let waiting = not_ready(&list);
        if have == want && waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {READY_TIMEOUT:?}, {have} of {want} example objects exist and these are not \
             Ready: {waiting:#?}\nweft-operator's stderr:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(operator);
    let stderr = stderr();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}
