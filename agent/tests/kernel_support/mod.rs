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

/// One ICMP echo from network namespace `ns` to `to`: whether its reply came within
/// `timeout`. A raw socket in-process, where `ping` would start two processes: fifty of those
/// at once take seconds under the guest's emulation.
pub fn ping_once(ns: &str, to: std::net::Ipv4Addr, timeout: std::time::Duration) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    use std::sync::atomic::{AtomicU16, Ordering};
    // Every echo of this process its own identifier: raw sockets see every reply.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let name = ns.to_owned();
    in_netns(ns, move || {
        // Without a raw socket (not root) nothing is reachable: say so, not "unreachable".
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .unwrap_or_else(|e| panic!("a raw ICMP socket in netns {name}: {e}"));
        let mut req = *b"\x08\0\0\0\0\0\0\x01weft-ping";
        req[4..6].copy_from_slice(&id.to_be_bytes());
        let sum = sim::packets::checksum(&req);
        req[2..4].copy_from_slice(&sum.to_be_bytes());
        let dst = std::net::SocketAddrV4::new(to, 0);
        if s.send_to(&req, &dst.into()).is_err() {
            return false;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            let Ok(n) = (&s).read(&mut buf) else {
                return false;
            };
            // The IPv4 header, then an echo reply (type 0) with our identifier, from `to`.
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n >= ihl + 8
                && buf[12..16] == to.octets()
                && buf[ihl] == 0
                && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
            {
                return true;
            }
        }
    })
}
