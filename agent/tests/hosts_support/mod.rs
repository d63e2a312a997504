//! The three-host harness of the agent's kernel scenario tests: etcd in the guest, an underlay
//! bridge joining host network namespaces, one `weft-agent` process per host, pods as network
//! namespaces attached through each agent's local API, topologies written to NSDB, and the
//! probes a user would run (ping, a TCP echo with its payload checked). Every failure prints
//! each agent's log tail and each host's datapath flows.
//!
//! It runs as root inside the QEMU guest (e2e/kernel-tests.sh, which builds the agent and sets
//! `WEFT_AGENT_BIN`); anywhere else it fails saying so.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nsdb::{AnyRecord, DeviceRef, Nsdb, PortKind, Record};
use sim::RecordSet;
use weft_agent::api::client::Client;
use weft_agent::api::{Reply, Request, Status};

use crate::kernel_support::{
    Netns, dump_flows_text, in_netns, ping_once, require_kernel_datapath, sh, sh_try,
};

/// The Linux bridge in the guest's root namespace that is the underlay.
pub const UNDERLAY_BRIDGE: &str = "wfu0";
/// The underlay prefix: host `hN` is `10.99.0.N`, etcd listens on `.254`.
const UNDERLAY_PREFIX: &str = "10.99.0";
/// The underlay address etcd listens on, reachable from every host namespace.
pub const ETCD_ADDR: &str = "10.99.0.254";
/// The underlay MTU.
pub const UNDERLAY_MTU: u16 = 1500;

/// How long an agent may take to answer `Status` after it starts (under TCG emulation a
/// start is slow; this bound only ends a hung start).
const AGENT_READY: Duration = Duration::from_secs(90);
/// How long etcd may take to report healthy.
const ETCD_READY: Duration = Duration::from_secs(60);

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// The agent binary e2e/kernel-tests.sh built; fails loudly without it.
pub fn agent_bin() -> PathBuf {
    let p = std::env::var_os("WEFT_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "WEFT_AGENT_BIN is not set: the three-host tests run the weft-agent binary; \
             run them with e2e/kernel-tests.sh, which builds it"
            )
        });
    assert!(
        p.is_file(),
        "WEFT_AGENT_BIN={} is not a file: build it with cargo build -p weft-agent --bin weft-agent",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------------------------

/// etcd on the underlay address with a private data directory; killed on drop.
#[derive(Debug)]
pub struct EtcdProc {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
}

impl EtcdProc {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn start(dir: &Path) -> EtcdProc {
        let bin = std::env::var_os("WEFT_ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        assert!(
            bin.is_file(),
            "etcd binary {} not found: the three-host tests need a real etcd \
             (apt-get install etcd-server, or set WEFT_ETCD_BIN)",
            bin.display()
        );
        let log = dir.join("etcd.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("etcd log file");
        let err = out.try_clone().expect("etcd log file");
        let client = format!("http://{ETCD_ADDR}:2379");
        let peer = "http://127.0.0.1:2380";
        let child = Command::new(&bin)
            .arg("--name=weft-hosts")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-hosts={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut me = EtcdProc {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + ETCD_READY;
        while !etcd_healthy() {
            if let Some(c) = &mut me.child
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "etcd exited during startup ({st}); its log:\n{}",
                    std::fs::read_to_string(&me.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {ETCD_ADDR}:2379 not healthy after {ETCD_READY:?}; its log:\n{}",
                std::fs::read_to_string(&me.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// The client URL.
    pub fn endpoint() -> String {
        format!("http://{ETCD_ADDR}:2379")
    }
}

fn etcd_healthy() -> bool {
    let Ok(mut s) = TcpStream::connect((ETCD_ADDR, 2379)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The local API
// ---------------------------------------------------------------------------------------------

/// One request to an agent's API socket through the agent's own client: the reply, or the
/// agent's error message or the transport error as text.
pub fn api_call(socket: &Path, req: &Request) -> Result<Reply, String> {
    Client::connect(socket)
        .and_then(|mut c| c.call(req))
        .map_err(|e| format!("{req:?} to {}: {e}", socket.display()))
}

// ---------------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------------

/// One host: a network namespace on the underlay and the agent running in it.
#[derive(Debug)]
pub struct Host {
    /// Its node name and namespace name (`h1`, ...).
    pub name: String,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// The agent's API socket.
    pub api: PathBuf,
    /// The agent's log (stderr and stdout, appended across restarts).
    pub log: PathBuf,
    /// The datapath name the agent reported.
    pub datapath: String,
    /// The pod MTU the agent reported.
    pub pod_mtu: u16,
    /// Further command-line arguments of its agent (e.g. `--tunnel geneve`).
    pub agent_args: Vec<String>,
    /// Further environment of its agent (e.g. a fault-injection point).
    pub agent_env: Vec<(String, String)>,
    child: Option<Child>,
    ns: Netns,
}

impl Host {
    /// The agent's command line in this host's namespace, its output appended to `log`.
    fn agent_command(&self, log: &Path) -> Command {
        let bin = agent_bin();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log file");
        let err = out.try_clone().expect("agent log file");
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(&bin)
            .args(["--node-name", &self.name])
            .args(["--underlay-ip", &self.underlay_ip.to_string()])
            .args(["--underlay-mtu", &UNDERLAY_MTU.to_string()])
            .args(["--etcd-endpoints", &EtcdProc::endpoint()])
            .arg("--api-socket")
            .arg(&self.api)
            .args(&self.agent_args)
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .env("WEFT_STATE_DIR", self.state_dir())
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.api);
        let child = self.agent_command(&self.log).spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} in {}: {e}",
                agent_bin().display(),
                self.name
            )
        });
        self.child = Some(child);
    }

    /// Runs one more agent on this host with the same command line, next to the running
    /// one, until it exits (killed after `within`): its exit status (`None` if it had to be
    /// killed) and everything it printed.
    pub fn run_another_agent(
        &self,
        within: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let log = self.log.with_extension("second.log");
        let _ = std::fs::remove_file(&log);
        let mut child = self
            .agent_command(&log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a second agent in {}: {e}", self.name));
        let deadline = Instant::now() + within;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// The agent's process id (of `ip netns exec`, which execs the agent).
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `GET path` on the agent's metrics endpoint (the default port, on the underlay
    /// address): the status code and the body.
    pub fn http_get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = SocketAddr::new(IpAddr::V4(self.underlay_ip), 9478);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status from {addr}{path}: {out:?}"))?;
        let body = out
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((code, body))
    }

    /// The value of one series (name with its labels, as exposed) of the agent's /metrics;
    /// fails when the agent does not answer or does not expose it.
    pub fn metric(&self, series: &str) -> f64 {
        let (code, body) = self
            .http_get("/metrics")
            .unwrap_or_else(|e| panic!("metrics of the agent of {}: {e}", self.name));
        assert_eq!(code, 200, "metrics of the agent of {}: {body}", self.name);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == series).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("the agent of {} exposes no {series}:\n{body}", self.name))
    }

    /// The name of the agent's datapath (`weft` unless it reported another).
    pub fn datapath_name(&self) -> &str {
        if self.datapath.is_empty() {
            "weft"
        } else {
            &self.datapath
        }
    }

    /// The datapath's lookup counters as `ovs-dpctl show` prints them: (hit, missed).
    pub fn datapath_lookups(&self) -> (u64, u64) {
        let out = sh(&format!(
            "ip netns exec {} ovs-dpctl show {}",
            self.name,
            self.datapath_name()
        ));
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("lookups:"))
            .unwrap_or_else(|| panic!("no lookups line in ovs-dpctl show:\n{out}"));
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in ovs-dpctl's {line:?}"))
        };
        (field("hit:"), field("missed:"))
    }

    /// Polls `Status` until the agent answers and is ready; fails if it exits or is not
    /// ready in time.
    fn wait_ready(&mut self) -> Status {
        self.wait_status(true)
    }

    /// Polls `Status` until the agent answers (and, if `ready`, says it is ready); fails
    /// if it exits or does not in time.
    fn wait_status(&mut self, ready: bool) -> Status {
        let deadline = Instant::now() + AGENT_READY;
        let mut last = String::new();
        loop {
            if let Some(c) = &mut self.child
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "the agent of {} exited during startup ({st}); its log:\n{}",
                    self.name,
                    tail(&self.log, 80)
                );
            }
            if self.api.exists() {
                match api_call(&self.api, &Request::Status) {
                    Ok(Reply::Status(s)) if s.ready || !ready => {
                        self.datapath = s.datapath.clone();
                        self.pod_mtu = s.pod_mtu;
                        return s;
                    }
                    Ok(Reply::Status(s)) => last = format!("not ready: {s:?}"),
                    Ok(other) => {
                        panic!("the agent of {} answered Status with {other:?}", self.name)
                    }
                    Err(e) => last = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent of {} did not answer Status{} within {AGENT_READY:?} (last: {last}); its log:\n{}",
                self.name,
                if ready { " as ready" } else { "" },
                tail(&self.log, 80)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's state directory (its record of attachments), kept across restarts.
    pub fn state_dir(&self) -> PathBuf {
        self.api.with_extension("state")
    }

    /// The agent's status now.
    pub fn status(&self) -> Status {
        match api_call(&self.api, &Request::Status) {
            Ok(Reply::Status(s)) => s,
            other => panic!("Status of the agent of {}: {other:?}", self.name),
        }
    }

    /// Whether the agent process is still running.
    pub fn agent_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The datapath's flows in `ovs-dpctl dump-flows` text, read in this host's namespace.
    pub fn flows(&self) -> String {
        let dp = if self.datapath.is_empty() {
            "weft".to_string()
        } else {
            self.datapath.clone()
        };
        in_netns(&self.name, move || dump_flows_text(&dp))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

/// A pod: a network namespace whose `eth0` is one end of a veth; the other end is the port's
/// vport in its host's namespace.
#[derive(Debug)]
pub struct Pod {
    /// The NSDB port.
    pub port: String,
    /// The host it runs on.
    pub host: String,
    /// Its namespace name.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, if its port has one.
    pub ip6: Option<Ipv6Addr>,
    /// Its MAC, `aa:bb:..`.
    pub mac: String,
    /// The host-side interface (the vport).
    pub ifname: String,
    /// The datapath port number the agent gave it.
    pub port_no: u32,
    _ns: Netns,
}

/// What a pod's interface needs from the topology: its address and prefix length, its
/// gateway (the router port on its bridge, or the bridge's gateway), its MAC and MTU; and
/// the same for IPv6 when its port has an IPv6 address.
#[derive(Debug, Clone)]
pub struct PodAddr {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 address and its prefix length (the bridge's IPv6 subnet, or else the router
    /// port's IPv6 prefix on the bridge).
    pub v6: Option<(Ipv6Addr, u8)>,
    /// The router port's IPv6 address on the bridge.
    pub gateway_v6: Option<Ipv6Addr>,
    pub mac: String,
    pub mtu: u16,
}

/// The first IPv4 prefix of `addrs`.
fn v4_net(addrs: &[IpNet]) -> Option<Ipv4Net> {
    addrs.iter().find_map(|a| match a {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    })
}

/// The first IPv6 prefix of `addrs`.
fn v6_net(addrs: &[IpNet]) -> Option<Ipv6Net> {
    addrs.iter().find_map(|a| match a {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    })
}

/// Reads a pod's addressing from the records: the port's first IPv4 address; the prefix
/// length from the bridge's subnet or else from the router port linked to the bridge; the
/// gateway from the bridge's `gateway_v4` or else that router port's address.
pub fn pod_addr(records: &RecordSet, port: &str) -> PodAddr {
    let p = records
        .ports
        .iter()
        .find(|p| p.id == port)
        .unwrap_or_else(|| panic!("no port {port} in the topology"));
    let DeviceRef::Bridge(bridge) = &p.device else {
        panic!("port {port} is not on a bridge")
    };
    let ip = v4_net(&p.addresses)
        .map(|n| n.addr())
        .unwrap_or_else(|| panic!("port {port} has no IPv4 address"));
    let br = records
        .bridges
        .iter()
        .find(|b| &b.id == bridge)
        .unwrap_or_else(|| panic!("no bridge {bridge} for port {port}"));
    // The router port patched to an interior port of this bridge.
    let router_port = records
        .ports
        .iter()
        .find_map(|bp| match (&bp.device, &bp.kind) {
            (DeviceRef::Bridge(b), PortKind::Interior { peer }) if b == bridge => records
                .ports
                .iter()
                .find(|rp| &rp.id == peer && matches!(rp.device, DeviceRef::Router(_))),
            _ => None,
        });
    let router_addrs = router_port.map_or(&[][..], |rp| rp.addresses.as_slice());
    let (router_v4, router_v6) = (v4_net(router_addrs), v6_net(router_addrs));
    let v6 = v6_net(&p.addresses).map(|n| {
        let a = n.addr();
        let len = br
            .subnet_v6
            .map(|s| s.prefix_len())
            .or(router_v6.map(|n| n.prefix_len()))
            .unwrap_or_else(|| {
                panic!("bridge {bridge} has no subnet_v6 and no IPv6 router port: cannot address {port}")
            });
        (a, len)
    });
    let prefix_len = br
        .subnet_v4
        .map(|s| s.prefix_len())
        .or(router_v4.map(|n| n.prefix_len()))
        .unwrap_or_else(|| {
            panic!("bridge {bridge} has no subnet_v4 and no router port: cannot address {port}")
        });
    let gateway = br.gateway_v4.or(router_v4.map(|n| n.addr()));
    PodAddr {
        ip,
        prefix_len,
        gateway,
        v6,
        gateway_v6: router_v6.map(|n| n.addr()),
        mac: p.mac.to_string(),
        // 0: unset, the agent's pod MTU applies.
        mtu: if br.mtu == 0 { u16::MAX } else { br.mtu },
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// What the diagnostics need, clonable into a watchdog thread.
#[derive(Debug, Clone)]
struct DiagInfo {
    hosts: Vec<(String, PathBuf, String)>,
    pods: Vec<String>,
    /// etcd's log (warnings: slow applies, lost leases), if this run started etcd.
    etcd_log: Option<PathBuf>,
}

impl DiagInfo {
    fn render(&self) -> String {
        let mut out = String::new();
        for (name, log, dp) in &self.hosts {
            out += &format!(
                "===== host {name}: agent log tail ({})\n{}\n",
                log.display(),
                tail(log, 60)
            );
            let dp = if dp.is_empty() {
                "weft".to_string()
            } else {
                dp.clone()
            };
            let ns = name.clone();
            let flows = if Path::new(&format!("/run/netns/{ns}")).exists() {
                in_netns(&ns, move || dump_flows_text(&dp))
            } else {
                "(namespace gone)".into()
            };
            out += &format!("===== host {name}: datapath flows\n{flows}\n");
            let (_, links, e) = sh_try(&format!("ip -n {name} -s -br link"));
            out += &format!("===== host {name}: links\n{links}{e}\n");
        }
        for ns in &self.pods {
            let (_, o, e) = sh_try(&format!(
                "ip -n {ns} -br addr; ip -n {ns} neigh; ip -n {ns} route"
            ));
            out += &format!("===== pod {ns}\n{o}{e}\n");
        }
        if let Some(log) = &self.etcd_log {
            out += &format!(
                "===== etcd log tail ({})\n{}\n",
                log.display(),
                tail(log, 40)
            );
        }
        out
    }
}

/// Ends the whole test binary, after printing diagnostics, if a scenario runs longer than
/// its bound: a broken path fails instead of hanging the guest. Disarmed on drop.
#[derive(Debug)]
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    fn arm(secs: u64, what: String, diag: DiagInfo) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!(
                    "watchdog: {what} still running after {secs} s\n{}",
                    diag.render()
                );
                std::process::exit(101);
            }
        });
        Watchdog { stop: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// etcd, the underlay, the hosts with their agents, the pods, and an NSDB client.
#[derive(Debug)]
pub struct Cluster {
    /// The scenario's name (in messages).
    pub name: String,
    /// Logs and sockets.
    pub dir: PathBuf,
    /// Hosts by name.
    pub hosts: BTreeMap<String, Host>,
    /// Pods by port id.
    pub pods: BTreeMap<String, Pod>,
    /// The records last written with [`Cluster::write_topology`].
    pub records: RecordSet,
    secs: u64,
    /// Set once a failure has printed the diagnostics.
    diag_printed: AtomicBool,
    db: Option<Nsdb>,
    rt: Option<tokio::runtime::Runtime>,
    watchdog: Option<Watchdog>,
    etcd: Option<EtcdProc>,
}

fn cleanup_leftovers(hosts: &[String]) {
    let (_, list, _) = sh_try("ip netns list");
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        if ns.starts_with("pod-") || hosts.iter().any(|h| h == ns) {
            let _ = sh_try(&format!("ip netns del {ns}"));
        }
    }
    let _ = sh_try(&format!("ip link del {UNDERLAY_BRIDGE} 2>/dev/null"));
    for h in hosts {
        let _ = sh_try(&format!("ip link del u-{h} 2>/dev/null"));
    }
}

impl Cluster {
    /// Starts etcd, the underlay, and hosts `h1..=hN` each with its agent, and waits until
    /// every agent answers `Status`. `secs` bounds the whole scenario (watchdog).
    pub fn start(name: &str, n_hosts: usize, secs: u64) -> Cluster {
        Cluster::start_with(name, n_hosts, secs, &[])
    }

    /// [`Cluster::start`] with further arguments for every agent (e.g. `--tunnel geneve`).
    pub fn start_with(name: &str, n_hosts: usize, secs: u64, agent_args: &[&str]) -> Cluster {
        require_kernel_datapath();
        let bin = agent_bin();
        let names: Vec<String> = (1..=n_hosts).map(|i| format!("h{i}")).collect();
        cleanup_leftovers(&names);
        let dir = std::env::temp_dir().join(format!(
            "weft-hosts-{}-{}-{name}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scenario directory");
        eprintln!("{name}: agent {} logs in {}", bin.display(), dir.display());

        let mut c = Cluster {
            name: name.into(),
            dir: dir.clone(),
            hosts: BTreeMap::new(),
            pods: BTreeMap::new(),
            records: RecordSet::default(),
            secs,
            diag_printed: AtomicBool::new(false),
            db: None,
            rt: None,
            watchdog: None,
            etcd: None,
        };
        c.watchdog = Some(Watchdog::arm(
            secs,
            format!("scenario {name}"),
            c.diag_info_for(&names),
        ));

        sh(&format!(
            "ip link add {UNDERLAY_BRIDGE} type bridge && \
             ip link set {UNDERLAY_BRIDGE} mtu {UNDERLAY_MTU} up && \
             ip addr add {ETCD_ADDR}/24 dev {UNDERLAY_BRIDGE}"
        ));
        for (i, h) in names.iter().enumerate() {
            let ns = Netns::new(h);
            let ip: Ipv4Addr = format!("{UNDERLAY_PREFIX}.{}", i + 1).parse().unwrap();
            sh(&format!(
                "ip link add u-{h} mtu {UNDERLAY_MTU} type veth peer name eth0 netns {h} && \
                 ip link set u-{h} master {UNDERLAY_BRIDGE} up && \
                 ip -n {h} link set eth0 mtu {UNDERLAY_MTU} up && \
                 ip -n {h} addr add {ip}/24 dev eth0"
            ));
            c.hosts.insert(
                h.clone(),
                Host {
                    name: h.clone(),
                    underlay_ip: ip,
                    api: dir.join(format!("{h}.sock")),
                    log: dir.join(format!("{h}.log")),
                    datapath: String::new(),
                    pod_mtu: 0,
                    agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
                    agent_env: Vec::new(),
                    child: None,
                    ns,
                },
            );
        }
        c.etcd = Some(EtcdProc::start(&dir));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let db = rt
            .block_on(Nsdb::connect(&[EtcdProc::endpoint()]))
            .unwrap_or_else(|e| panic!("cannot connect to etcd at {}: {e}", EtcdProc::endpoint()));
        c.rt = Some(rt);
        c.db = Some(db);
        for h in c.hosts.values_mut() {
            h.spawn();
        }
        for h in c.hosts.values_mut() {
            let s = h.wait_ready();
            eprintln!(
                "{name}: agent {} ready: datapath {} tunnel {} (port {}), pod MTU {}",
                h.name, s.datapath, s.tunnel, s.tunnel_port_no, s.pod_mtu
            );
        }
        // Re-arm with the datapath names the agents reported.
        c.watchdog = None;
        c.watchdog = Some(Watchdog::arm(
            secs,
            format!("scenario {name}"),
            c.diag_info(),
        ));
        c
    }

    fn diag_info_for(&self, names: &[String]) -> DiagInfo {
        DiagInfo {
            hosts: names
                .iter()
                .map(|h| (h.clone(), self.dir.join(format!("{h}.log")), String::new()))
                .collect(),
            pods: vec![],
            etcd_log: self.etcd.as_ref().map(|e| e.log.clone()),
        }
    }

    fn diag_info(&self) -> DiagInfo {
        DiagInfo {
            hosts: self
                .hosts
                .values()
                .map(|h| (h.name.clone(), h.log.clone(), h.datapath.clone()))
                .collect(),
            pods: self.pods.values().map(|p| p.ns.clone()).collect(),
            etcd_log: self.etcd.as_ref().map(|e| e.log.clone()),
        }
    }

    /// Every agent's log tail, every host's flows and links, every pod's addresses.
    pub fn diag(&self) -> String {
        self.diag_info().render()
    }

    /// Fails the test with `msg` followed by the diagnostics.
    pub fn fail(&self, msg: &str) -> ! {
        self.diag_printed.store(true, Ordering::Relaxed);
        panic!("{}: {msg}\n{}", self.name, self.diag())
    }

    /// The NSDB client.
    pub fn db(&self) -> &Nsdb {
        self.db.as_ref().expect("nsdb client")
    }

    /// Runs an NSDB call to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    /// Writes the records of a topology to NSDB in one transaction, except hosts and port
    /// bindings: the agents write those.
    pub fn write_topology(&mut self, records: &RecordSet) {
        let all: Vec<AnyRecord> = records
            .to_records()
            .into_iter()
            .filter(|r| !matches!(r, AnyRecord::Host(_) | AnyRecord::PortBinding(_)))
            .collect();
        assert!(
            all.len() <= nsdb::MAX_TXN_OPS,
            "topology of {} records does not fit one transaction",
            all.len()
        );
        let mut txn = self.db().txn();
        for r in &all {
            txn = txn.put_any(r);
        }
        let rev = self
            .block_on(txn.commit())
            .unwrap_or_else(|e| self.fail(&format!("writing the topology failed: {e}")));
        eprintln!(
            "{}: wrote {} records at revision {rev}",
            self.name,
            all.len()
        );
        // The fixtures number their tunnel keys themselves: reserve them, so that keys the
        // agents allocate (CNI pods) never collide with them.
        let keys: Vec<(u32, String)> = all
            .iter()
            .filter_map(|r| match r {
                AnyRecord::Bridge(b) => Some((b.tunnel_key, b.id.clone())),
                AnyRecord::Router(x) => Some((x.tunnel_key, x.id.clone())),
                AnyRecord::Port(p) => Some((p.tunnel_key, p.id.clone())),
                _ => None,
            })
            .filter(|(k, _)| *k != 0)
            .collect();
        let held: std::collections::BTreeSet<u32> = self
            .block_on(self.db().list::<nsdb::TunnelKeyAlloc>())
            .unwrap_or_else(|e| self.fail(&format!("listing tunnel keys failed: {e}")))
            .records
            .iter()
            .map(|k| k.record.key)
            .collect();
        let keys: Vec<(u32, String)> = keys
            .into_iter()
            .filter(|(k, _)| !held.contains(k))
            .collect();
        for chunk in keys.chunks(nsdb::MAX_TXN_OPS) {
            let mut txn = self.db().txn();
            for (key, owner) in chunk {
                txn = txn.put(&nsdb::TunnelKeyAlloc {
                    key: *key,
                    owner: owner.clone(),
                });
            }
            self.block_on(txn.commit())
                .unwrap_or_else(|e| self.fail(&format!("reserving tunnel keys failed: {e}")));
        }
        self.records = records.clone();
    }

    /// Puts one record (a change under traffic).
    pub fn put<R: Record>(&self, r: &R) {
        if let Err(e) = self.block_on(self.db().put(r)) {
            self.fail(&format!("put {}: {e}", r.key()));
        }
    }

    /// Deletes one record; fails if it was not there.
    pub fn delete<R: Record>(&self, id: &str) {
        match self.block_on(self.db().delete::<R>(id)) {
            Ok(true) => {}
            Ok(false) => self.fail(&format!("delete {}: no such record", R::KIND.key(id))),
            Err(e) => self.fail(&format!("delete {}: {e}", R::KIND.key(id))),
        }
    }

    /// Creates the pod of NSDB port `port` on `host` and attaches it through that host's
    /// agent: namespace `pod-<port>`, `eth0` with the port's MAC, address, gateway and the
    /// smaller of the bridge's and the agent's pod MTU; host end `wf-<port>`.
    pub fn add_pod(&mut self, port: &str, host: &str) -> &Pod {
        let a = pod_addr(&self.records, port);
        let h = self
            .hosts
            .get(host)
            .unwrap_or_else(|| panic!("no host {host}"));
        let mtu = a.mtu.min(h.pod_mtu);
        let ns_name = format!("pod-{port}");
        let ifname = format!("wf-{port}");
        assert!(ifname.len() <= 15, "interface name {ifname} is too long");
        let ns = Netns::new(&ns_name);
        // IPv6 stays off in a pod without an IPv6 address, so that it sends nothing but what
        // a test makes it send. A pod with one takes no router advertisement, and its address
        // needs no duplicate address detection before it can be used.
        let pod_v6 = if a.v6.is_some() {
            "sysctl -qw net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0"
        } else {
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1"
        };
        let mut cmd = format!(
            "ip netns exec {ns_name} {pod_v6} && \
             ip -n {host} link add {ifname} mtu {mtu} type veth peer name eth0 netns {ns_name} && \
             ip netns exec {host} sysctl -qw net.ipv6.conf.{ifname}.disable_ipv6=1 && \
             ip -n {host} link set {ifname} up && \
             ip -n {ns_name} link set eth0 address {mac} mtu {mtu} up && \
             ip -n {ns_name} addr add {ip}/{len} dev eth0",
            mac = a.mac,
            ip = a.ip,
            len = a.prefix_len,
        );
        if a.v6.is_none() {
            cmd += &format!(
                " && ip netns exec {ns_name} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1"
            );
        }
        if let Some(gw) = a.gateway {
            cmd += &format!(" && ip -n {ns_name} route add default via {gw}");
        }
        if let Some((ip6, len)) = a.v6 {
            cmd += &format!(" && ip -n {ns_name} -6 addr add {ip6}/{len} dev eth0 nodad");
            if let Some(gw) = a.gateway_v6 {
                cmd += &format!(" && ip -n {ns_name} -6 route add default via {gw}");
            }
        }
        sh(&cmd);
        let reply = api_call(
            &h.api,
            &Request::Attach {
                port: port.into(),
                ifname: ifname.clone(),
            },
        )
        .unwrap_or_else(|e| self.fail(&format!("attaching {port} on {host}: {e}")));
        let port_no = match reply {
            Reply::Attached {
                port: p,
                ifname: i,
                port_no,
            } if p == port && i == ifname => port_no,
            other => self.fail(&format!("Attach {port} on {host} answered {other:?}")),
        };
        eprintln!(
            "{}: pod {port} on {host}: {}/{} mac {} mtu {mtu} vport {ifname}={port_no}",
            self.name, a.ip, a.prefix_len, a.mac
        );
        self.pods.insert(
            port.into(),
            Pod {
                port: port.into(),
                host: host.into(),
                ns: ns_name,
                ip: a.ip,
                ip6: a.v6.map(|(ip, _)| ip),
                mac: a.mac,
                ifname,
                port_no,
                _ns: ns,
            },
        );
        // Re-arm the watchdog so its diagnostics include the new pod.
        self.rearm();
        &self.pods[port]
    }

    fn rearm(&mut self) {
        // The remaining time is not tracked: a re-arm during setup restarts the bound, which
        // stays generous, not tight.
        if self.watchdog.is_some() {
            let secs = self.secs;
            self.watchdog = None;
            self.watchdog = Some(Watchdog::arm(
                secs,
                format!("scenario {}", self.name),
                self.diag_info(),
            ));
        }
    }

    /// The pod of `port`.
    pub fn pod(&self, port: &str) -> &Pod {
        self.pods
            .get(port)
            .unwrap_or_else(|| panic!("no pod for port {port}"))
    }

    /// The host named `name`.
    /// The etcd this scenario started, if it did.
    pub fn etcd(&self) -> Option<&EtcdProc> {
        self.etcd.as_ref()
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// `ping -c COUNT` from a pod, with a 2 s wait per reply.
    pub fn ping(&self, from: &str, to: Ipv4Addr, count: u32) -> Ping {
        self.ping_args(from, to, &format!("-c {count} -i 0.2 -W 2"))
    }

    /// `ping ARGS TO` from a pod.
    pub fn ping_args(&self, from: &str, to: Ipv4Addr, args: &str) -> Ping {
        let ns = &self.pod(from).ns;
        let (ok, out, err) = sh_try(&format!("ip netns exec {ns} ping -n {args} {to}"));
        Ping::parse(ok, out + &err)
    }

    /// A ping that must get every reply.
    pub fn ping_ok(&self, from: &str, to: Ipv4Addr, count: u32) -> Ping {
        let p = self.ping(from, to, count);
        if !p.ok || p.received != count {
            self.fail(&format!(
                "ping {from} -> {to}: {} of {count} replies:\n{}",
                p.received, p.out
            ));
        }
        p
    }

    /// Pings once at a time until a reply comes, at most `tries` times: for the first
    /// packets after pods attach, while the other hosts' agents learn the new bindings
    /// from their NSDB watch. Returns the number of tries it took.
    pub fn wait_reachable(&self, from: &str, to: Ipv4Addr, tries: u32) -> u32 {
        let ns = &self.pod(from).ns;
        for i in 1..=tries {
            if ping_once(ns, to, Duration::from_secs(1)) {
                return i;
            }
        }
        self.fail(&format!("{from} never reached {to} in {tries} pings"))
    }

    /// Starts a TCP echo server in pod `port` on `tcp_port`.
    pub fn echo_server(&self, port: &str, tcp_port: u16) -> EchoServer {
        let p = self.pod(port);
        EchoServer::start(&p.ns, SocketAddr::new(IpAddr::V4(p.ip), tcp_port))
    }

    /// Connects from pod `from` to `to`, sends `len` bytes and reads them back; the payload
    /// must come back unchanged. Both ends have timeouts.
    pub fn tcp_echo(&self, from: &str, to: SocketAddr, len: usize) -> Result<(), TcpError> {
        let ns = self.pod(from).ns.clone();
        in_netns(&ns, move || tcp_echo_here(to, len))
    }

    /// Like [`Cluster::tcp_echo`] but fails the test with diagnostics on any error.
    pub fn tcp_echo_ok(&self, from: &str, to: SocketAddr, len: usize) {
        if let Err(e) = self.tcp_echo(from, to, len) {
            self.fail(&format!("TCP echo {from} -> {to} ({len} bytes): {e:?}"));
        }
    }

    /// Starts a TCP echo server in host `host`'s own namespace, on its underlay address.
    pub fn host_echo_server(&self, host: &str, tcp_port: u16) -> EchoServer {
        let h = self.host(host);
        EchoServer::start(
            &h.name,
            SocketAddr::new(IpAddr::V4(h.underlay_ip), tcp_port),
        )
    }

    /// Like [`Cluster::tcp_echo_ok`], from host `host`'s own namespace (as kubelet probes).
    pub fn host_tcp_echo_ok(&self, host: &str, to: SocketAddr, len: usize) {
        let ns = self.host(host).name.clone();
        if let Err(e) = in_netns(&ns, move || tcp_echo_here(to, len)) {
            self.fail(&format!(
                "TCP echo from host {host} -> {to} ({len} bytes): {e:?}"
            ));
        }
    }

    /// Kills host `name`'s agent with SIGKILL (its datapath and flows stay in the kernel).
    pub fn kill_agent(&mut self, name: &str) {
        let h = self
            .hosts
            .get_mut(name)
            .unwrap_or_else(|| panic!("no host {name}"));
        h.kill();
    }

    /// Starts host `name`'s agent again and waits until it answers `Status`.
    pub fn start_agent(&mut self, name: &str) -> Status {
        let h = self
            .hosts
            .get_mut(name)
            .unwrap_or_else(|| panic!("no host {name}"));
        assert!(h.child.is_none(), "the agent of {name} is still running");
        h.spawn();
        h.wait_ready()
    }

    /// Starts host `name`'s agent without waiting for it.
    pub fn spawn_agent(&mut self, name: &str) {
        let h = self
            .hosts
            .get_mut(name)
            .unwrap_or_else(|| panic!("no host {name}"));
        assert!(h.child.is_none(), "the agent of {name} is still running");
        h.spawn();
    }

    /// Waits until host `name`'s agent answers `Status`, ready or not.
    pub fn wait_answering(&mut self, name: &str) -> Status {
        let h = self
            .hosts
            .get_mut(name)
            .unwrap_or_else(|| panic!("no host {name}"));
        h.wait_status(false)
    }

    /// Waits until host `name`'s agent answers `Status` as ready.
    pub fn wait_agent_ready(&mut self, name: &str) -> Status {
        let h = self
            .hosts
            .get_mut(name)
            .unwrap_or_else(|| panic!("no host {name}"));
        h.wait_ready()
    }

    /// Kills etcd (SIGKILL); its data directory stays for [`Cluster::start_etcd`].
    pub fn stop_etcd(&mut self) {
        assert!(self.etcd.is_some(), "etcd is not running");
        self.etcd = None;
        assert!(
            !etcd_healthy(),
            "etcd on {ETCD_ADDR}:2379 still answers after it was killed"
        );
    }

    /// Starts etcd again on its data directory and waits until it is healthy.
    pub fn start_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd is already running");
        self.etcd = Some(EtcdProc::start(&self.dir));
    }

    /// Kills host `name`'s agent with SIGKILL and starts it again.
    pub fn restart_agent(&mut self, name: &str) -> Status {
        self.kill_agent(name);
        self.start_agent(name)
    }

    /// Fails if an agent has exited.
    pub fn assert_agents_running(&mut self) {
        let dead: Vec<String> = self
            .hosts
            .values_mut()
            .filter_map(|h| (!h.agent_running()).then(|| h.name.clone()))
            .collect();
        if !dead.is_empty() {
            self.fail(&format!("agents exited: {dead:?}"));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed && !self.diag_printed.load(Ordering::Relaxed) {
            eprintln!(
                "{}: diagnostics after the failure:\n{}",
                self.name,
                self.diag()
            );
        }
        self.watchdog = None;
        // Pods first (their veths), then agents, then the host namespaces (each takes its
        // datapath and tunnel device with it), then etcd and the underlay.
        self.pods.clear();
        for h in self.hosts.values_mut() {
            h.kill();
        }
        self.hosts.clear();
        self.db = None;
        self.etcd = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = sh_try(&format!("ip link del {UNDERLAY_BRIDGE}"));
        // The guest's root is a small tmpfs and etcd preallocates its WAL: keep only the
        // logs of a failed scenario.
        if failed {
            let _ = std::fs::remove_dir_all(self.dir.join("etcd"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

/// What a ping printed.
#[derive(Debug, Clone)]
pub struct Ping {
    /// ping's exit status was success.
    pub ok: bool,
    /// Replies received.
    pub received: u32,
    /// The TTLs of the replies.
    pub ttls: Vec<u8>,
    /// Everything it printed.
    pub out: String,
}

impl Ping {
    fn parse(ok: bool, out: String) -> Ping {
        let ttls = out
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("ttl="))
                    .and_then(|t| t.parse().ok())
            })
            .collect();
        let received = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| {
                l.split(',')
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0);
        Ping {
            ok,
            received,
            ttls,
            out,
        }
    }
}

/// How a TCP exchange failed.
#[derive(Debug)]
pub enum TcpError {
    /// The connection attempt timed out: nothing answered the SYN.
    ConnectTimeout,
    /// The connection was refused (a RST came back).
    Refused,
    /// Another connect error.
    Connect(std::io::Error),
    /// Writing or reading failed after connecting.
    Io(String),
    /// The payload came back changed.
    Mismatch { at: usize },
}

/// Connect timeout of the probes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read and write timeout of the probes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A payload whose every offset is distinguishable from its neighbours.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(7) % 251) as u8)
        .collect()
}

fn tcp_echo_here(to: SocketAddr, len: usize) -> Result<(), TcpError> {
    let mut c = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => TcpError::ConnectTimeout,
        ErrorKind::ConnectionRefused => TcpError::Refused,
        _ => TcpError::Connect(e),
    })?;
    c.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| TcpError::Io(e.to_string()))?;
    c.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| TcpError::Io(e.to_string()))?;
    let sent = payload(len);
    // Write on another thread so a large payload cannot deadlock against the echo.
    let mut w = c.try_clone().map_err(|e| TcpError::Io(e.to_string()))?;
    let data = sent.clone();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&data);
        let _ = w.shutdown(std::net::Shutdown::Write);
        r
    });
    let mut back = vec![0u8; len];
    let read = c.read_exact(&mut back);
    let wrote = writer.join().expect("writer thread");
    wrote.map_err(|e| TcpError::Io(format!("write: {e}")))?;
    read.map_err(|e| TcpError::Io(format!("read: {e}")))?;
    match sent.iter().zip(&back).position(|(a, b)| a != b) {
        Some(at) => Err(TcpError::Mismatch { at }),
        None => Ok(()),
    }
}

/// A TCP echo server in a pod's namespace: every connection gets back what it sends. It
/// counts connections; it stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    /// The address it listens on.
    pub addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Starts one in network namespace `ns`, listening on `addr`.
    pub fn start(ns: &str, addr: SocketAddr) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let (s2, a2, ns2) = (stop.clone(), accepted.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            in_netns(&ns2, move || {
                let l = match TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("bind {addr}: {e}")));
                        return;
                    }
                };
                // accept(2) honours the receive timeout: a connection is taken as soon as it
                // arrives, and the loop sees `stop` at least this often.
                socket2::SockRef::from(&l)
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("accept timeout");
                let _ = tx.send(Ok(()));
                while !s2.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((c, _)) => {
                            a2.fetch_add(1, Ordering::Relaxed);
                            std::thread::spawn(move || echo_conn(c));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("echo server in {ns}: {e}"),
            Err(e) => panic!("echo server in {ns} did not start: {e}"),
        }
        EchoServer {
            stop,
            accepted,
            addr,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

fn echo_conn(mut c: TcpStream) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(IO_TIMEOUT));
    let _ = c.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = c.shutdown(std::net::Shutdown::Both);
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A ping running in the background (`ping -i 0.2 -W 1`), its output going to a file, so a
/// test can watch replies stop or continue while it changes the topology.
#[derive(Debug)]
pub struct BackgroundPing {
    child: Option<Child>,
    /// Its output file.
    pub out: PathBuf,
}

impl BackgroundPing {
    /// Starts pinging `to` from pod `from`.
    pub fn start(c: &Cluster, from: &str, to: Ipv4Addr) -> BackgroundPing {
        let out = c.dir.join(format!("ping-{from}-{to}.txt"));
        let f = File::create(&out).expect("ping output file");
        let f2 = f.try_clone().expect("ping output file");
        // ping flushes each line as it prints it, so the file follows the replies.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.pod(from).ns,
                "ping",
                "-n",
                "-O",
                "-i",
                "0.2",
                "-W",
                "1",
            ])
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .expect("start ping");
        BackgroundPing {
            child: Some(child),
            out,
        }
    }

    /// The sequence numbers that got a reply so far.
    pub fn replies(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))
                    .and_then(|s| s.parse().ok())
            })
            .collect()
    }

    /// The highest sequence number sent so far (answered or reported unanswered by `-O`).
    pub fn last_seq(&self) -> u32 {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))
                    .and_then(|s| s.parse().ok())
            })
            .max()
            .unwrap_or(0)
    }

    /// Everything it printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CNI: pods attached the way a container runtime attaches them
// ---------------------------------------------------------------------------------------------

/// The network name of the harness's CNI configuration.
pub const CNI_NETWORK: &str = "weft";

/// An environment variable that names an existing file, or a failed test saying what is
/// missing.
fn tool_path(var: &str, what: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: {what} (e2e/kernel-tests.sh sets it)"));
    assert!(p.exists(), "{var}={} does not exist: {what}", p.display());
    p
}

/// libcni's reference client, `cnitool` (`WEFT_CNITOOL`).
pub fn cnitool_bin() -> PathBuf {
    tool_path("WEFT_CNITOOL", "the path of cnitool, built by e2e/tools.sh")
}

/// The `weft-cni` plugin (`WEFT_CNI_BIN`).
pub fn cni_bin() -> PathBuf {
    tool_path("WEFT_CNI_BIN", "the path of the weft-cni plugin")
}

/// What one run of cnitool or of the plugin printed.
#[derive(Debug, Clone)]
pub struct CniOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    /// Runs `cmd` to its end.
    pub fn run(mut cmd: Command) -> CniOut {
        CniOut::of(cmd.output().expect("run a CNI command"))
    }

    fn of(out: std::process::Output) -> CniOut {
        CniOut {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Its stdout as JSON (a result, or the spec's error object).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (stderr {:?})",
                self.stdout, self.stderr
            )
        })
    }

    /// The spec's error code on stdout, if it printed an error object.
    pub fn code(&self) -> Option<u64> {
        serde_json::from_str::<serde_json::Value>(self.stdout.trim())
            .ok()?
            .get("code")?
            .as_u64()
    }

    /// Whether the plugin answered "try again later" (11): its error object when the
    /// plugin ran alone, or, through cnitool, which prints only libcni's message, the
    /// spec's message for that code.
    pub fn try_again_later(&self) -> bool {
        self.code() == Some(11) || self.stderr.contains("): Try again later")
    }
}

/// The attachment a CNI ADD made, as its result says.
#[derive(Debug, Clone)]
pub struct CniPod {
    /// The pod's namespace name (`pod-<name>`).
    pub ns: String,
    pub host: String,
    /// The container id cnitool derives from the netns path.
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Its IPv6 address, on a bridge with an IPv6 subnet.
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    /// The host end of its veth.
    pub vport: String,
    /// The printed result.
    pub result: serde_json::Value,
}

/// What CNI attachments hold on one host and in NSDB: what a leak would leave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniHoldings {
    /// `wf` + 12 hex veths in the host's namespace.
    pub veths: usize,
    /// Such vports on the host's datapath.
    pub vports: usize,
    /// NSDB ports labelled as this host's CNI pods, their bindings, leases and tunnel keys.
    pub ports: usize,
    pub bindings: usize,
    pub leases: usize,
    pub tunnel_keys: usize,
}

fn is_cni_vport(name: &str) -> bool {
    name.len() == 14 && name.starts_with("wf") && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

impl Cluster {
    /// The NETCONFPATH of `host`: one conflist naming the host's agent socket. The plugin
    /// waits 30 s for the agent, as on a slow node: under emulation a first ADD, which reads
    /// the address and key pools, has taken more than the default 10 s.
    pub fn netconf_dir(&self, host: &str) -> PathBuf {
        let dir = self.dir.join(format!("netconf-{host}"));
        if !dir.join("10-weft.conflist").exists() {
            std::fs::create_dir_all(&dir).expect("netconf dir");
            let conf = serde_json::json!({
                "cniVersion": "1.1.0",
                "name": CNI_NETWORK,
                "plugins": [{
                    "type": "weft-cni",
                    "agentSocket": self.host(host).api,
                    "agentTimeoutMs": 30000,
                }],
            });
            std::fs::write(dir.join("10-weft.conflist"), conf.to_string()).expect("conflist");
        }
        dir
    }

    /// The CNI_PATH: a directory holding the plugin.
    fn cni_path(&self) -> PathBuf {
        let dir = self.dir.join("cni-bin");
        if !dir.join("weft-cni").exists() {
            std::fs::create_dir_all(&dir).expect("cni bin dir");
            let _ = std::fs::remove_file(dir.join("weft-cni"));
            std::os::unix::fs::symlink(cni_bin(), dir.join("weft-cni")).expect("plugin link");
        }
        dir
    }

    /// `cnitool VERB weft /run/netns/POD_NS` in `host`'s namespace, as a runtime on that
    /// node would run it, with `CNI_ARGS` for the pod's Kubernetes namespace and name.
    pub fn cnitool(
        &self,
        host: &str,
        verb: &str,
        pod_ns: &str,
        k8s: Option<(&str, &str)>,
    ) -> CniOut {
        CniOut::run(self.cnitool_cmd(host, verb, pod_ns, k8s))
    }

    /// The command [`Cluster::cnitool`] runs, for running many at once.
    pub fn cnitool_cmd(
        &self,
        host: &str,
        verb: &str,
        pod_ns: &str,
        k8s: Option<(&str, &str)>,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", host])
            .arg(cnitool_bin())
            .args([verb, CNI_NETWORK, &format!("/run/netns/{pod_ns}")])
            .env("CNI_PATH", self.cni_path())
            .env("NETCONFPATH", self.netconf_dir(host))
            .env("CNI_IFNAME", "eth0")
            .env_remove("CNI_ARGS")
            .stdin(Stdio::null());
        if let Some((ns, name)) = k8s {
            cmd.env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
            );
        }
        cmd
    }

    /// Runs the plugin itself in `host`'s namespace with exactly `env` and `stdin`.
    pub fn cni_plugin(&self, host: &str, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", host, "env", "-i"]);
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        let mut child = cmd
            .arg(cni_bin())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run weft-cni");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin);
        }
        CniOut::of(child.wait_with_output().expect("weft-cni output"))
    }

    /// The single network configuration (no list) for `host`, as the plugin reads it.
    pub fn cni_conf(&self, host: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": CNI_NETWORK,
            "type": "weft-cni",
            "agentSocket": self.host(host).api,
            "agentTimeoutMs": 30000,
        })
    }

    /// Makes pod namespace `pod-<name>` and ADDs it on `host` through cnitool, as a pod of
    /// Kubernetes namespace `k8s_ns`. Registers it as pod `name` for the ping and TCP helpers.
    pub fn cni_add(&mut self, name: &str, host: &str, k8s_ns: &str) -> CniPod {
        self.cni_add_as(name, host, k8s_ns, name)
    }

    /// [`Cluster::cni_add`] for the Kubernetes pod `k8s_ns/k8s_name`, registered (and its
    /// network namespace named) as `name`: pods of the same name in different Kubernetes
    /// namespaces.
    pub fn cni_add_as(&mut self, name: &str, host: &str, k8s_ns: &str, k8s_name: &str) -> CniPod {
        let ns_name = format!("pod-{name}");
        let ns = Netns::new(&ns_name);
        let out = self.cnitool(host, "add", &ns_name, Some((k8s_ns, k8s_name)));
        if !out.ok {
            self.fail(&format!("cnitool add {name} on {host}: {out:?}"));
        }
        let pod = self.cni_pod(name, host, &out);
        self.pods.insert(
            name.into(),
            Pod {
                port: name.into(),
                host: host.into(),
                ns: ns_name,
                ip: pod.ip,
                ip6: pod.ip6,
                mac: pod.mac.clone(),
                ifname: pod.vport.clone(),
                port_no: 0,
                _ns: ns,
            },
        );
        self.rearm();
        pod
    }

    /// Reads a cnitool ADD result.
    pub fn cni_pod(&self, name: &str, host: &str, out: &CniOut) -> CniPod {
        let r = out.json();
        let ifaces = r["interfaces"].as_array().cloned().unwrap_or_default();
        let vport = ifaces
            .iter()
            .find(|i| i.get("sandbox").is_none())
            .and_then(|i| i["name"].as_str())
            .unwrap_or_else(|| self.fail(&format!("no host interface in {r}")))
            .to_owned();
        let mac = ifaces
            .iter()
            .find(|i| i.get("sandbox").is_some())
            .and_then(|i| i["mac"].as_str())
            .unwrap_or_else(|| self.fail(&format!("no sandbox interface in {r}")))
            .to_owned();
        let addr: IpNet = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| self.fail(&format!("no address in {r}")));
        let IpAddr::V4(ip) = addr.addr() else {
            self.fail(&format!("the first address of {r} is not IPv4"))
        };
        let ip6 = r["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.parse::<IpNet>().ok())
            .find_map(|n| match n.addr() {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            });
        // The container id cnitool made up, from the port the agent labelled with it.
        let db = self.db();
        let bound = self
            .records::<nsdb::PortBinding>()
            .into_iter()
            .find(|b| b.vport == vport)
            .unwrap_or_else(|| self.fail(&format!("no NSDB binding of {vport}")));
        let port = self
            .block_on(db.get::<nsdb::Port>(&bound.port))
            .expect("read port")
            .unwrap_or_else(|| self.fail(&format!("no NSDB port {}", bound.port)));
        let container_id = port
            .record
            .labels
            .get("weft.dev/container-id")
            .cloned()
            .unwrap_or_else(|| {
                self.fail(&format!("port {} has no container label", port.record.id))
            });
        CniPod {
            ns: format!("pod-{name}"),
            host: host.into(),
            container_id,
            ip,
            prefix_len: addr.prefix_len(),
            ip6,
            mac,
            vport,
            result: r,
        }
    }

    /// Forgets pod `name` (after its DEL), removing its namespace.
    pub fn forget_pod(&mut self, name: &str) {
        self.pods.remove(name);
        self.rearm();
    }

    /// What CNI attachments hold on `host` (links, vports) and in NSDB (records labelled
    /// with that host).
    pub fn cni_holdings(&self, host: &str) -> CniHoldings {
        let h = self.host(host);
        let links = sh(&format!("ip -n {host} -o link show type veth"));
        let veths = links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or(""))
            .filter(|n| is_cni_vport(n))
            .count();
        let dp = sh(&format!(
            "ip netns exec {host} ovs-dpctl show {}",
            h.datapath
        ));
        let vports = dp
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .filter(|n| is_cni_vport(n.trim()))
            .count();
        let ports: Vec<nsdb::Port> = self
            .records::<nsdb::Port>()
            .into_iter()
            .filter(|p| p.id.starts_with("cni-"))
            .filter(|p| p.labels.get("weft.dev/host").map(String::as_str) == Some(host))
            .collect();
        let ids: std::collections::BTreeSet<&str> = ports.iter().map(|p| p.id.as_str()).collect();
        let bindings = self
            .records::<nsdb::PortBinding>()
            .iter()
            .filter(|b| b.host == host && is_cni_vport(&b.vport))
            .count();
        let leases = self
            .records::<nsdb::IpLease>()
            .iter()
            .filter(|l| ids.contains(l.owner.as_str()))
            .count();
        let tunnel_keys = self
            .records::<nsdb::TunnelKeyAlloc>()
            .iter()
            .filter(|k| ids.contains(k.owner.as_str()))
            .count();
        CniHoldings {
            veths,
            vports,
            ports: ports.len(),
            bindings,
            leases,
            tunnel_keys,
        }
    }

    /// Every NSDB record any CNI pod holds, on any host: ports, bindings, leases, keys.
    pub fn cni_records(&self) -> (usize, usize, usize, usize) {
        let cni = |id: &str| id.starts_with("cni-");
        (
            self.records::<nsdb::Port>()
                .iter()
                .filter(|p| cni(&p.id))
                .count(),
            self.records::<nsdb::PortBinding>()
                .iter()
                .filter(|b| cni(&b.port))
                .count(),
            self.records::<nsdb::IpLease>()
                .iter()
                .filter(|l| cni(&l.owner))
                .count(),
            self.records::<nsdb::TunnelKeyAlloc>()
                .iter()
                .filter(|k| cni(&k.owner))
                .count(),
        )
    }

    /// Every NSDB record of kind `R`.
    /// A read that fails (etcd busy under a load the test makes) is tried again for up to
    /// 10 s: the harness's view of NSDB is not what the test examines.
    pub fn records<R: Record>(&self) -> Vec<R> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.block_on(self.db().list::<R>()) {
                Ok(l) => return l.records.into_iter().map(|v| v.record).collect(),
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "{}: listing {} failed, trying again: {}",
                        self.name,
                        R::prefix(),
                        nsdb::error::chain(&e)
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => self.fail(&format!(
                    "listing {}: {}",
                    R::prefix(),
                    nsdb::error::chain(&e)
                )),
            }
        }
    }

    /// Sets further environment for `host`'s agent, used from its next start.
    pub fn set_agent_env(&mut self, host: &str, env: &[(&str, &str)]) {
        let h = self
            .hosts
            .get_mut(host)
            .unwrap_or_else(|| panic!("no host {host}"));
        h.agent_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
}
