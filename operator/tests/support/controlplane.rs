//! A real control plane for tests: etcd and kube-apiserver on loopback, started by
//! `e2e/controlplane.sh up` with the tools `e2e/tools.sh` built and cached. The tests of one test
//! binary share one control plane: the first that asks starts it, and it lives until the test
//! binary exits, however it exits. A test dropping its handle does not stop it: the control
//! plane sits in a process-wide static, and a watchdog process (a shell holding the read end of
//! a pipe whose write end only this process has) runs `e2e/controlplane.sh down` when the pipe
//! closes, which the kernel does when this process ends, even by a panic that aborts or a
//! SIGKILL. Missing tools fail the test, naming the command that builds them; a test never
//! builds them itself (kube-apiserver takes minutes).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static SHARED: Mutex<Option<Arc<ControlPlane>>> = Mutex::new(None);

/// How long kube-apiserver may take to answer /readyz after a restart (as `up` allows).
pub const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one kubectl command may run (the longest `--timeout` the tests pass is 60 s).
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long kube-apiserver may take to exit after SIGTERM before it gets SIGKILL (as `down`).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running etcd + kube-apiserver and its admin kubeconfig.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// The watchdog, with the write end of its pipe (its stdin): never written, closed only
    /// when this process ends.
    _watchdog: Child,
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

/// Starts the process that takes the control plane in `dir` down, and removes `parent`, once
/// its stdin (a pipe) closes. It ignores the signals a terminal sends to the test's process
/// group (Ctrl-C), so it outlives the test binary it guards.
fn watchdog(dir: &Path, parent: &Path) -> Child {
    let down = repo().join("e2e").join("controlplane.sh");
    Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' INT TERM HUP; cat >/dev/null; "$0" down "$1"; rm -rf "$2""#)
        .arg(down)
        .arg(dir)
        .arg(parent)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the control plane's watchdog (sh): {e}"))
}

impl ControlPlane {
    /// The control plane of this test binary, started if none is running.
    pub fn shared() -> Arc<ControlPlane> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cp) = shared.as_ref() {
            return cp.clone();
        }
        let cp = Arc::new(ControlPlane::start());
        *shared = Some(cp.clone());
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
        // Removed by the watchdog, not by a drop: the static is never dropped.
        let parent = tempfile::Builder::new()
            .prefix("weft-cp-")
            .tempdir()
            .unwrap()
            .keep();
        let dir = parent.join("cp");
        let watchdog = watchdog(&dir, &parent);
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
            dir,
            kubeconfig,
            kubectl,
            _watchdog: watchdog,
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
            self.kubectl_output(args),
        )
    }

    /// Runs kubectl against this control plane and returns what it did, failed or not. A
    /// kubectl still running after [`KUBECTL_TIMEOUT`] is killed and the test fails.
    pub fn kubectl_output(&self, args: &[&str]) -> std::io::Result<Output> {
        output_within(
            &format!("kubectl {}", args.join(" ")),
            Command::new(&self.kubectl)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig),
            KUBECTL_TIMEOUT,
        )
    }

    /// What `weft-operator run` needs of the cluster: the CRDs, Established (its controllers
    /// watch them), and the namespace of its Lease. Idempotent.
    pub fn prepare_weft(&self) {
        self.kubectl(&["apply", "-f", repo().join("crds").to_str().unwrap()]);
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ]);
        self.create_namespace("weft-system");
    }

    /// `kubectl create namespace NS`, which may exist already.
    pub fn create_namespace(&self, ns: &str) {
        let out = self.kubectl_output(&["create", "namespace", ns]).unwrap();
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
            "kubectl create namespace {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after 10 s, as `e2e/controlplane.sh down`
    /// does) and starts it again with the same command line, log and pid file, so that `down`
    /// stops the new one; returns once it answers /readyz. Every client's watch is cut.
    pub fn restart_apiserver(&self) {
        let pid_file = self.dir.join("kube-apiserver.pid");
        let pid = fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .to_owned();
        let proc = PathBuf::from("/proc").join(&pid);
        let mut cmdline = Vec::new();
        fs::File::open(proc.join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut cmdline))
            .unwrap_or_else(|e| panic!("kube-apiserver (pid {pid}) is not running: {e}"));
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            argv.first().is_some_and(|a| a.contains("kube-apiserver")),
            "pid {pid} is not kube-apiserver: {argv:?}"
        );
        check(
            "kill -TERM kube-apiserver",
            Command::new("kill").args(["-TERM", &pid]).output(),
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        while proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if proc.exists() {
            let _ = Command::new("kill").args(["-KILL", &pid]).output();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while proc.exists() {
                assert!(
                    Instant::now() < deadline,
                    "kube-apiserver (pid {pid}) survived SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // As controlplane.sh starts it: in a session of its own (no terminal signals reach it),
        // output appended to its log, not a child of this process.
        let log = self.dir.join("kube-apiserver.log");
        check(
            "starting kube-apiserver again",
            Command::new("sh")
                .arg("-c")
                .arg(r#"log=$1 pidf=$2; shift 2; setsid "$@" >>"$log" 2>&1 </dev/null & echo $! >"$pidf""#)
                .arg("sh")
                .arg(&log)
                .arg(&pid_file)
                .args(&argv)
                .output(),
        );
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            if let Ok(out) = self.kubectl_output(&["get", "--raw", "/readyz"])
                && out.status.success()
                && out.stdout.starts_with(b"ok")
            {
                return;
            }
            let new_pid = fs::read_to_string(&pid_file).unwrap_or_default();
            assert!(
                Path::new("/proc").join(new_pid.trim()).exists(),
                "kube-apiserver exited after its restart; the end of {}:\n{}",
                log.display(),
                tail(&log, 30)
            );
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready {APISERVER_READY_TIMEOUT:?} after its restart; the end \
                 of {}:\n{}",
                log.display(),
                tail(&log, 30)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Runs a command to its end like `Command::output`, but kills it and panics when it runs
/// longer than `timeout`.
fn output_within(what: &str, cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
