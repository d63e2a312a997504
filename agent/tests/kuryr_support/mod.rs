//! The Kubernetes side of the kernel guest's Kuryr tests: the real control plane that
//! e2e/kernel-tests.sh starts on the host (etcd + kube-apiserver, reached from the guest at
//! 10.0.2.2), kubectl against it, the operator as a process in the guest, and the probes of a
//! reachability matrix between pods (TCP connects and UDP echoes, all at once, in-process).
//!
//! Agents run in host namespaces on the underlay, which does not reach 10.0.2.2: a forwarder
//! in the guest's root namespace listens on the underlay address and relays to the API
//! server, as a node reaches the API server through its own network.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kernel_support::in_netns;

pub mod model;

/// Where the guest reaches the host's loopback (QEMU's user network).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// Where agents reach the API server: the forwarder on the underlay's etcd address.
pub const API_ON_UNDERLAY: &str = "10.99.0.254:6443";

fn env_path(var: &str, what: &str) -> PathBuf {
    let v = std::env::var_os(var).unwrap_or_else(|| {
        panic!(
            "{var} is not set: this test needs {what}; run it through e2e/kernel-tests.sh, \
             which starts a control plane on the host and passes it in"
        )
    });
    let p = PathBuf::from(v);
    assert!(p.exists(), "{var}={} does not exist", p.display());
    p
}

/// The host's control plane as seen from the guest.
pub struct Kube {
    kubectl: PathBuf,
    /// For the guest's root namespace (the test, kubectl, the operator).
    pub kubeconfig: PathBuf,
    /// For the agents in host namespaces (through the forwarder).
    pub agent_kubeconfig: PathBuf,
    /// The API server's port on the host's loopback.
    api_port: u16,
    forwarder: Option<Forwarder>,
}

impl Kube {
    /// Reads `WEFT_KUBECONFIG` and `WEFT_KUBECTL` (failing loudly without them) and writes the
    /// guest's kubeconfigs into `dir`. The forwarder starts with [`Kube::forward_to_underlay`],
    /// once the underlay exists.
    pub fn from_env(dir: &Path) -> Kube {
        assert_eq!(
            std::env::var("WEFT_GUEST_HOSTNET").as_deref(),
            Ok("1"),
            "the guest has no NIC to the host (WEFT_GUEST_HOSTNET): e2e/kernel-tests.sh boots \
             it with one (vm.sh WEFT_VM_HOSTNET=1)"
        );
        let host_conf = env_path("WEFT_KUBECONFIG", "a kube-apiserver");
        let kubectl = env_path("WEFT_KUBECTL", "kubectl");
        let text = std::fs::read_to_string(&host_conf).expect("read the host kubeconfig");
        let prefix = "server: https://127.0.0.1:";
        let at = text
            .find(prefix)
            .unwrap_or_else(|| panic!("{}: no {prefix:?} line", host_conf.display()));
        let port: u16 = text[at + prefix.len()..]
            .lines()
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("the API server's port");
        let write = |name: &str, server: &str| {
            let p = dir.join(name);
            let t = text.replace(
                &format!("{prefix}{port}"),
                &format!("server: https://{server}"),
            );
            std::fs::write(&p, t).expect("write a kubeconfig");
            p
        };
        let kubeconfig = write("kubeconfig", &format!("{HOST_FROM_GUEST}:{port}"));
        let agent_kubeconfig = write("kubeconfig-agents", API_ON_UNDERLAY);
        Kube {
            kubectl,
            kubeconfig,
            agent_kubeconfig,
            api_port: port,
            forwarder: None,
        }
    }

    /// Starts relaying [`API_ON_UNDERLAY`] to the API server.
    pub fn forward_to_underlay(&mut self) {
        let to: SocketAddr = format!("{HOST_FROM_GUEST}:{}", self.api_port)
            .parse()
            .expect("address");
        self.forwarder = Some(Forwarder::start(
            API_ON_UNDERLAY.parse().expect("address"),
            to,
        ));
    }

    /// `kubectl ARGS` with `stdin`, returning its output whatever its status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .args(["--request-timeout", "30s"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let (Some(s), Some(mut i)) = (stdin, child.stdin.take()) {
            i.write_all(s.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl ARGS`; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`; panics with its stderr when it fails.
    /// Server-side, and without kubectl's own validation, which downloads the API's
    /// OpenAPI document on every call (seconds under emulation): the API server validates.
    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_output(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--validate=false",
                "-f",
                "-",
            ],
            Some(yaml),
        );
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client of the API server with the guest's kubeconfig, for changes made many times
    /// over: each is a request or two on one connection, where a kubectl under the guest's
    /// emulation spends seconds starting and discovering the API.
    pub fn client(&self) -> KubeClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the kube client");
        // The agent's own client: its kubeconfig reading and its bounded reads.
        let source = weft_agent::config::KubeSource::Kubeconfig(self.kubeconfig.clone());
        let client = match rt.block_on(weft_agent::podmeta::Kube::connect(&source)) {
            Ok(Some(k)) => k.client().clone(),
            Ok(None) => unreachable!("a kubeconfig is a source"),
            Err(e) => panic!("a kube client: {e:#}"),
        };
        KubeClient { rt, client }
    }

    /// `kubectl delete -f -` of `yaml`, waiting for the objects to be gone.
    pub fn delete(&self, yaml: &str) {
        let out = self.kubectl_output(
            &["delete", "--ignore-not-found", "--wait=true", "-f", "-"],
            Some(yaml),
        );
        assert!(
            out.status.success(),
            "kubectl delete: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The API server through one kube client ([`Kube::client`]); every call is bounded by the
/// agent's read timeout and panics with the API server's answer when it fails.
pub struct KubeClient {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

/// The field manager of what [`KubeClient::apply_labelled`] applies.
const FIELD_MANAGER: &str = "weft-e2e";

impl KubeClient {
    /// Sets (`Some`) or removes (`None`) label `key` of a Pod (`namespace` given) or of a
    /// Namespace (`None`) named `name`.
    pub fn label(&self, namespace: Option<&str>, name: &str, key: &str, value: Option<&str>) {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        use kube::api::{Api, Patch, PatchParams};
        let patch = Patch::Merge(serde_json::json!({"metadata": {"labels": {key: value}}}));
        let pp = PatchParams::default();
        let r = self.rt.block_on(async {
            match namespace {
                Some(ns) => Api::<Pod>::namespaced(self.client.clone(), ns)
                    .patch(name, &pp, &patch)
                    .await
                    .map(drop),
                None => Api::<Namespace>::all(self.client.clone())
                    .patch(name, &pp, &patch)
                    .await
                    .map(drop),
            }
        });
        r.unwrap_or_else(|e| panic!("label {key}={value:?} of {namespace:?}/{name}: {e}"));
    }

    /// Server-side applies each of `objects`, labelled `label=1`, then deletes the objects
    /// of their kind in `namespaces` that carry that label and are not among them: what
    /// `kubectl apply --prune -l label=1` does.
    pub fn apply_labelled<K>(&self, objects: Vec<K>, label: &str, namespaces: &[&str])
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let mut keep = std::collections::BTreeSet::new();
        self.rt.block_on(async {
            for mut o in objects {
                o.meta_mut()
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(label.into(), "1".into());
                let ns = o
                    .meta()
                    .namespace
                    .clone()
                    .expect("a namespaced object's namespace");
                let name = o.meta().name.clone().expect("an object's name");
                Api::<K>::namespaced(self.client.clone(), &ns)
                    .patch(&name, &pp, &Patch::Apply(&o))
                    .await
                    .unwrap_or_else(|e| panic!("apply {ns}/{name}: {e}"));
                keep.insert((ns, name));
            }
            let lp = ListParams::default().labels(&format!("{label}=1"));
            for ns in namespaces {
                let api = Api::<K>::namespaced(self.client.clone(), ns);
                let listed = api
                    .list(&lp)
                    .await
                    .unwrap_or_else(|e| panic!("list {label}=1 in {ns}: {e}"));
                for o in listed {
                    let name = o.meta().name.clone().unwrap_or_default();
                    if keep.contains(&(ns.to_string(), name.clone())) {
                        continue;
                    }
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => panic!("delete {ns}/{name}: {e}"),
                    }
                }
            }
        });
    }
}

/// A TCP relay: every connection to `listen` is joined to a new connection to `to`.
struct Forwarder {
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(listen: SocketAddr, to: SocketAddr) -> Forwarder {
        let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("forwarder on {listen}: {e}"));
        l.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        std::thread::spawn(move || relay(c, to));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Forwarder { stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(a: TcpStream, to: SocketAddr) {
    let _ = a.set_nonblocking(false);
    let Ok(b) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
        return;
    };
    let pipe = |mut from: TcpStream, mut into: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut into);
            let _ = into.shutdown(std::net::Shutdown::Write);
        })
    };
    let (a2, b2) = (a.try_clone(), b.try_clone());
    if let (Ok(a2), Ok(b2)) = (a2, b2) {
        pipe(a, b2);
        pipe(b, a2);
    }
}

/// A child process killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weft-operator run` in the guest's root namespace (`WEFT_OPERATOR_BIN`), against the
/// control plane and NSDB at `etcd`, with `extra` flags; its log goes to `log`.
pub fn start_operator(kube: &Kube, etcd: &str, extra: &[&str], log: &Path) -> Proc {
    let bin = env_path("WEFT_OPERATOR_BIN", "the weft-operator binary");
    Proc(
        Command::new(bin)
            .args(["run", "--etcd-endpoints", etcd])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .env("KUBECONFIG", &kube.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("operator log"))
            .spawn()
            .expect("start weft-operator"),
    )
}

/// The transport of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// As a NetworkPolicy names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

/// IPPROTO_SCTP.
const IPPROTO_SCTP: i32 = 132;

/// A one-to-one style SCTP socket, which connects, listens and accepts as TCP does (the
/// guest's kernel loads its sctp module first).
fn sctp_socket(family: &SocketAddr) -> std::io::Result<socket2::Socket> {
    socket2::Socket::new(
        socket2::Domain::for_address(*family),
        socket2::Type::STREAM,
        Some(socket2::Protocol::from(IPPROTO_SCTP)),
    )
}

/// An SCTP listener on `addr`, accepting through std's TcpListener (the calls are the same).
fn sctp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = sctp_socket(&addr)?;
    s.bind(&addr.into())?;
    s.listen(64)?;
    Ok(TcpListener::from(s))
}

/// How long a probe waits for its connection or its echo.
/// A probe that times out is retried by the next round of a matrix that does not match yet,
/// so this only bounds how long a blocked pair holds a round up.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// How often an idle pod server looks at its stop flag. Dozens of them run in the guest at
/// once, under emulation, next to the agents they test.
const IDLE: Duration = Duration::from_millis(100);

/// Servers in one pod's network namespace: a TCP and an SCTP listener (each accepts, then
/// closes) and a UDP echo on each of `ports`. They stop when dropped.
pub struct PodServers {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    echoed: Arc<AtomicU64>,
}

impl PodServers {
    /// Starts them in network namespace `ns` on `ip`.
    pub fn start(ns: &str, ip: impl Into<IpAddr>, ports: &[u16]) -> PodServers {
        let ip = ip.into();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let echoed = Arc::new(AtomicU64::new(0));
        for &port in ports {
            let addr = SocketAddr::from((ip, port));
            let (tcp, sctp, udp) = in_netns(ns, move || {
                (
                    TcpListener::bind(addr).map_err(|e| e.to_string()),
                    sctp_listener(addr).map_err(|e| e.to_string()),
                    UdpSocket::bind(addr).map_err(|e| e.to_string()),
                )
            });
            let tcp = tcp.unwrap_or_else(|e| panic!("TCP server {addr} in {ns}: {e}"));
            let sctp = sctp.unwrap_or_else(|e| panic!("SCTP server {addr} in {ns}: {e}"));
            let udp = udp.unwrap_or_else(|e| panic!("UDP server {addr} in {ns}: {e}"));
            udp.set_read_timeout(Some(IDLE)).expect("timeout");
            for listener in [tcp, sctp] {
                listener.set_nonblocking(true).expect("nonblocking");
                let (s, n) = (stop.clone(), accepted.clone());
                std::thread::spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((c, _)) => {
                                n.fetch_add(1, Ordering::Relaxed);
                                drop(c)
                            }
                            // The kernel completes the handshake: a probe's connect does not
                            // wait for this accept, so the loop can sleep without slowing it.
                            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(IDLE),
                            Err(_) => std::thread::sleep(IDLE),
                        }
                    }
                });
            }
            let (s, n) = (stop.clone(), echoed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = udp.recv_from(&mut buf)
                        && udp.send_to(&buf[..len], from).is_ok()
                    {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        PodServers {
            stop,
            accepted,
            echoed,
        }
    }

    /// TCP and SCTP connections accepted so far, on any port.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// UDP datagrams echoed so far, on any port.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One probe: from network namespace `ns`, connect (TCP, SCTP) or get an echo back (UDP) from
/// `to` within [`PROBE_TIMEOUT`]. A refused connection counts as not reached.
pub fn probe(ns: &str, to: SocketAddr, proto: Proto) -> bool {
    probe_with(ns, to, proto, PROBE_TIMEOUT)
}

/// [`probe`] with its own timeout.
pub fn probe_with(ns: &str, to: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    in_netns(ns, move || match proto {
        Proto::Tcp => TcpStream::connect_timeout(&to, timeout).is_ok(),
        Proto::Sctp => sctp_socket(&to)
            .and_then(|s| s.connect_timeout(&to.into(), timeout))
            .is_ok(),
        Proto::Udp => {
            let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let Ok(s) = UdpSocket::bind(any) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(250).min(timeout)));
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 64];
            // Datagrams may be lost while a flow is set up: ask a few times.
            while Instant::now() < deadline {
                if s.send_to(b"weft-probe", to).is_err() {
                    return false;
                }
                if let Ok((n, from)) = s.recv_from(&mut buf)
                    && from == to
                    && &buf[..n] == b"weft-probe"
                {
                    return true;
                }
            }
            false
        }
    })
}

/// Every probe of `pairs` (key -> (from netns, to address, transport)) at once; whether each
/// reached.
pub fn probe_all<K: Ord + Clone + Send + Sync>(
    pairs: &BTreeMap<K, (String, SocketAddr, Proto)>,
) -> BTreeMap<K, bool> {
    probe_all_within(pairs, PROBE_TIMEOUT)
        .into_iter()
        .map(|(k, took)| (k, took.is_some()))
        .collect()
}

/// How long a probe that must be answered (a connection to a Service) waits: past TCP's
/// first retransmission (1 s), so that a first packet held up while the emulated guest sets
/// up a burst of new flows costs a retransmission, as it would cost a user, and not the
/// connection.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// The probes of `pairs` at once, each under [`ANSWER_TIMEOUT`]: how many were answered, and
/// how many of those only after [`PROBE_TIMEOUT`].
pub fn answered<K: Ord + Clone + Send + Sync>(
    pairs: &BTreeMap<K, (String, SocketAddr, Proto)>,
) -> (usize, usize) {
    let took = probe_all_within(pairs, ANSWER_TIMEOUT);
    let answered = took.values().flatten().count();
    let slow = took
        .values()
        .flatten()
        .filter(|t| **t > PROBE_TIMEOUT)
        .count();
    (answered, slow)
}

/// Every probe of `pairs` at once, each within `timeout`: how long each took to be answered,
/// `None` for those that were not.
fn probe_all_within<K: Ord + Clone + Send + Sync>(
    pairs: &BTreeMap<K, (String, SocketAddr, Proto)>,
    timeout: Duration,
) -> BTreeMap<K, Option<Duration>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = pairs
            .iter()
            .map(|(k, (ns, to, proto))| {
                let (ns, to, proto) = (ns.clone(), *to, *proto);
                let probe = move || {
                    let t = Instant::now();
                    probe_with(&ns, to, proto, timeout).then(|| t.elapsed())
                };
                (k.clone(), s.spawn(probe))
            })
            .collect();
        hs.into_iter()
            .map(|(k, h)| (k, h.join().expect("probe thread")))
            .collect()
    })
}

/// Reads a whole stream (for logs in failure messages).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}
