//! Helpers of the agent's kernel datapath tests: shell commands, network namespaces, and
//! running odp calls inside a namespace. These tests run as root inside the QEMU guest
//! (e2e/kernel-tests.sh); anywhere else they fail with a message saying so.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::sync::OnceLock;

use nix::sched::{CloneFlags, setns};
use odp::dpif::Dpif;

/// Fails loudly unless this is root on a kernel with the OVS datapath (every test that
/// calls it fails with the same message).
pub fn require_kernel_datapath() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        if !nix_is_root() {
            return Err("kernel datapath tests need root: run them with e2e/kernel-tests.sh".into());
        }
        let _ = Command::new("modprobe")
            .args(["-a", "openvswitch", "vxlan", "geneve", "veth"])
            .status();
        Dpif::open().map(|_| ()).map_err(|e| {
            format!("the OVS kernel datapath is not available ({e}): run these tests with e2e/kernel-tests.sh")
        })
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a shell command, panics with its output if it fails, returns its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh -c {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "command failed ({}): {cmd}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command and returns (success, stdout, stderr) without judging.
pub fn sh_try(cmd: &str) -> (bool, String, String) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh -c {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// Creates `name` (deleting a leftover one first) with loopback up.
    pub fn new(name: &str) -> Netns {
        let _ = sh_try(&format!("ip netns del {name} 2>/dev/null"));
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Netns(name.to_string())
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.0, f)
    }

    /// `ip netns exec NAME sh -c CMD`, must succeed.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.0,
            cmd.replace('\'', "'\\''")
        ))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh_try(&format!("ip netns del {}", self.0));
    }
}

/// Runs `f` on a new thread that has entered network namespace `name`.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Removes a datapath when dropped (in the namespace it was created in).
#[derive(Debug)]
pub struct DpGuard {
    /// Its name.
    pub name: String,
    /// The namespace, if not the initial one.
    pub netns: Option<String>,
}

impl Drop for DpGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        let del = move || {
            if let Ok(mut d) = Dpif::open() {
                let _ = d.dp_delete(&name);
            }
        };
        match &self.netns {
            Some(ns) if std::path::Path::new(&format!("/run/netns/{ns}")).exists() => {
                in_netns(ns, del)
            }
            Some(_) => {}
            None => del(),
        }
    }
}

/// Fails the whole test binary, after printing `diag()`, if it is still running `secs`
/// seconds from now: a broken data path must fail a test, not hang the guest.
pub fn watchdog(secs: u64, what: &'static str, diag: impl Fn() -> String + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        eprintln!("watchdog: {what} still running after {secs} s\n{}", diag());
        std::process::exit(101);
    });
}

/// Every flow of datapath `dp` with its statistics, in `ovs-dpctl dump-flows` text.
pub fn dump_flows_text(dp: &str) -> String {
    let mut d = match Dpif::open() {
        Ok(d) => d,
        Err(e) => return format!("cannot open the datapath socket: {e}"),
    };
    let ifindex = match d.dp_get(dp) {
        Ok(i) => i.ifindex,
        Err(e) => return format!("no datapath {dp}: {e}"),
    };
    match d.flow_dump(ifindex) {
        Ok(flows) => flows
            .iter()
            .map(|e| {
                let now = weft_agent::ctl::dpflow::monotonic_ms().unwrap_or(0);
                match weft_agent::ctl::dpflow::flow_from_entry(e, now) {
                    Ok(f) => weft_agent::ctl::dpflow::dpctl_line(e, &f, true) + "\n",
                    Err(err) => format!("undecodable flow: {err:#}\n"),
                }
            })
            .collect(),
        Err(e) => format!("flow dump failed: {e}"),
    }
}
