//! A real control plane for tests: etcd and kube-apiserver on loopback, started by
//! `e2e/controlplane.sh up` with the tools `e2e/tools.sh` built and cached. The tests of one test
//! binary share one control plane: the first that asks starts it, and it stops (`down`) when the
//! last holder drops it. Missing tools fail the test, naming the command that builds them; a test
//! never builds them itself (kube-apiserver takes minutes).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};

static SHARED: Mutex<Weak<ControlPlane>> = Mutex::new(Weak::new());

/// A running etcd + kube-apiserver and its admin kubeconfig.
#[derive(Debug)]
pub struct ControlPlane {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(name: &str) -> Command {
    let mut c = Command::new(repo().join("e2e").join(name));
    c.env("WEFT_TOOLS_NO_BUILD", "1");
    c
}

fn check(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

impl ControlPlane {
    /// The control plane of this test binary, started if none is running.
    pub fn shared() -> Arc<ControlPlane> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cp) = shared.upgrade() {
            return cp;
        }
        let cp = Arc::new(ControlPlane::start());
        *shared = Arc::downgrade(&cp);
        cp
    }

    fn start() -> ControlPlane {
        let tools = check(
            "e2e/tools.sh kubectl",
            script("tools.sh").arg("kubectl").output(),
        );
        let kubectl = tools
            .lines()
            .find_map(|l| l.strip_prefix("kubectl="))
            .map(PathBuf::from)
            .expect("e2e/tools.sh printed kubectl=PATH");
        let tmp = tempfile::Builder::new()
            .prefix("weft-cp-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("cp");
        let up = check(
            "e2e/controlplane.sh up",
            script("controlplane.sh").arg("up").arg(&dir).output(),
        );
        let kubeconfig = PathBuf::from(up.trim_end().lines().last().unwrap_or_default());
        assert!(
            kubeconfig.is_file(),
            "e2e/controlplane.sh up printed no kubeconfig path: {up:?}"
        );
        ControlPlane {
            _tmp: tmp,
            dir,
            kubeconfig,
            kubectl,
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl against this control plane; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        check(
            &format!("kubectl {}", args.join(" ")),
            Command::new(&self.kubectl)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .output(),
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        match script("controlplane.sh")
            .arg("down")
            .arg(&self.dir)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "e2e/controlplane.sh down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run e2e/controlplane.sh down: {e}"),
        }
    }
}
