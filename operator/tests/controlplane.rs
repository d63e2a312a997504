//! `weft-operator run` against a real kube-apiserver (e2e/controlplane.sh) and a real etcd as
//! NSDB: with the CRDs and examples/ applied by kubectl, every example object reaches
//! `Ready=True` for its current generation.
//!
//! Built only with the `e2e-controlplane` feature, since it needs the tools e2e/tools.sh builds:
//!     e2e/tools.sh kube-apiserver kubectl etcd
//!     cargo test -p weft-operator --features e2e-controlplane --test controlplane

mod support;

use std::time::{Duration, Instant};

use nsdb::testing::Etcd;
use support::controlplane::{ControlPlane, repo};
use support::operator::{KINDS, Operator, example_objects, not_ready};

/// How long the operator may take to make every example Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

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
    let mut operator = Operator::start(
        cp.kubeconfig(),
        &etcd.endpoint(),
        &["--identity", "cp-test"],
        &dir.path().join("operator.stderr"),
    );

    cp.kubectl(&["apply", "-f", root.join("examples").to_str().unwrap()]);
    let want = example_objects();
    assert!(want > 0, "examples/ defines no objects");

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        operator.assert_running();
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
            operator.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let stderr = operator.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}
