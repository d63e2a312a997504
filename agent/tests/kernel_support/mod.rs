//! Helpers of the agent's kernel datapath tests: the datapath tests' own helpers (shell
//! commands, network namespaces, running code inside a namespace, removing a datapath; see
//! crates/odp/tests/kernel_support) and the agent's additions. These tests run as root inside
//! the QEMU guest (e2e/kernel-tests.sh); anywhere else they fail with a message saying so.
#![allow(dead_code)]

#[path = "../../../crates/odp/tests/kernel_support/mod.rs"]
mod datapath;

pub use datapath::*;
use odp::dpif::Dpif;

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
                let now = odp::dpif::monotonic_ms().unwrap_or(0);
                match e.to_flow(now) {
                    Ok(f) => e.dump_line(&f, true) + "\n",
                    Err(err) => format!("undecodable flow: {err:#}\n"),
                }
            })
            .collect(),
        Err(e) => format!("flow dump failed: {e}"),
    }
}
