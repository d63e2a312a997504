//! `weft-operator run` as a child process of a test, and what the tests ask of the objects it
//! reconciles.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::controlplane::repo;

/// The kinds of the weft.dev objects, for `kubectl get`.
pub const KINDS: &str = "virtualbridges,virtualrouters,virtualloadbalancers,accesscontrollists";

/// A child process killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `weft-operator run` and the file its stderr goes to.
pub struct Operator {
    pub proc: Proc,
    stderr: PathBuf,
}

impl Operator {
    /// Starts `weft-operator run` against the API server of `kubeconfig` and NSDB at
    /// `etcd_endpoint`, with `extra` flags; its stderr goes to `stderr`.
    pub fn start(kubeconfig: &Path, etcd_endpoint: &str, extra: &[&str], stderr: &Path) -> Self {
        let proc = Proc(
            Command::new(env!("CARGO_BIN_EXE_weft-operator"))
                .args(["run", "--etcd-endpoints", etcd_endpoint])
                .args(["--metrics-addr", "127.0.0.1:0"])
                .args(extra)
                .env("KUBECONFIG", kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("KUBERNETES_SERVICE_PORT")
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(stderr).unwrap())
                .spawn()
                .expect("cannot start weft-operator"),
        );
        Operator {
            proc,
            stderr: stderr.to_path_buf(),
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills it and returns all it wrote to stderr.
    pub fn stop(self) -> String {
        drop(self.proc);
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics with its stderr when it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.proc.0.try_wait().unwrap() {
            panic!(
                "weft-operator exited ({status}); stderr:\n{}",
                self.stderr()
            );
        }
    }
}

/// The number of objects examples/*.yaml defines (one top-level `kind:` each).
pub fn example_objects() -> usize {
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
pub fn not_ready(list: &serde_json::Value) -> Vec<String> {
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
