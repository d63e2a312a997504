//! Probes of the load-balancer, SNAT and agent-restart scenarios, built on the three-host
//! harness: a TCP server whose reply names the backend and the peer it saw, a client that
//! checks the peer address its socket reports and the payload round trip, connections kept
//! running in the background while the topology changes, a paced TCP stream that spans an
//! agent restart, an "external" network namespace behind a router uplink, and the
//! datapath's flows as `ovs-dpctl dump-flows -m` prints them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use weft_agent::api::{Reply, Request};

use crate::hosts_support::{CONNECT_TIMEOUT, Cluster, IO_TIMEOUT, api_call, payload};
use crate::kernel_support::{Netns, in_netns, sh, sh_try};

// ---------------------------------------------------------------------------------------------
// A server that names itself
// ---------------------------------------------------------------------------------------------

/// The first line of every reply of a [`NamedServer`]: `weft-backend <name> <peer>`.
const HEADER: &str = "weft-backend";

/// A TCP server in a pod's (or the external) namespace: each connection sends a payload and
/// closes its write side; the server answers `weft-backend <name> <peer it saw>\n` followed
/// by the payload, then closes. Stops when dropped.
#[derive(Debug)]
pub struct NamedServer {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The name its replies carry.
    pub name: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NamedServer {
    /// Listens on `addr` inside network namespace `ns`.
    pub fn start(ns: &str, name: &str, addr: SocketAddr) -> NamedServer {
        let n = name.to_string();
        let (stop, accepted, thread) = listen(ns, &format!("named server {name}"), addr, {
            move |c, peer| serve_named(c, &n, peer)
        });
        NamedServer {
            stop,
            accepted,
            addr,
            name: name.into(),
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections on `addr` inside namespace `ns` until the returned flag is set, and
/// hands each to `serve` on a thread of its own; panics, naming `what`, when it cannot bind.
fn listen(
    ns: &str,
    what: &str,
    addr: SocketAddr,
    serve: impl Fn(TcpStream, SocketAddr) + Clone + Send + 'static,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
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
            l.set_nonblocking(true).expect("nonblocking listener");
            let _ = tx.send(Ok(()));
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, peer)) => {
                        a2.fetch_add(1, Ordering::Relaxed);
                        let serve = serve.clone();
                        std::thread::spawn(move || serve(c, peer));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what} in {ns}: {e}"),
        Err(e) => panic!("{what} in {ns} did not start: {e}"),
    }
    (stop, accepted, thread)
}

/// A minimal HTTP/1.1 server, as a health check sees one: it answers every request with
/// the status line it is set to (`200 OK`, `503 Service Unavailable`, ...) and an empty
/// body, and keeps each request's first line. Stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `addr` inside network namespace `ns`, answering `status`.
    pub fn start(ns: &str, addr: SocketAddr, status: &str) -> HttpServer {
        let status = Arc::new(Mutex::new(status.to_string()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (st, rq) = (status.clone(), requests.clone());
        let (stop, _, thread) =
            listen(ns, "HTTP server", addr, move |c, _| serve_http(c, &st, &rq));
        HttpServer {
            stop,
            status,
            requests,
            thread: Some(thread),
        }
    }

    /// Answers `status` from now on.
    pub fn set_status(&self, status: &str) {
        *self.status.lock().unwrap() = status.to_string();
    }

    /// The first line of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_http(mut c: TcpStream, status: &Mutex<String>, requests: &Mutex<Vec<String>>) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(IO_TIMEOUT));
    let _ = c.set_write_timeout(Some(IO_TIMEOUT));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req);
    let first = line.lines().next().unwrap_or_default().to_string();
    requests.lock().unwrap().push(first);
    let status = status.lock().unwrap().clone();
    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = c.write_all(answer.as_bytes());
    let _ = c.shutdown(std::net::Shutdown::Both);
}

fn serve_named(mut c: TcpStream, name: &str, peer: SocketAddr) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(IO_TIMEOUT));
    let _ = c.set_write_timeout(Some(IO_TIMEOUT));
    let mut data = Vec::new();
    if c.read_to_end(&mut data).is_err() {
        return;
    }
    let mut out = format!("{HEADER} {name} {peer}\n").into_bytes();
    out.extend_from_slice(&data);
    let _ = c.write_all(&out);
    let _ = c.shutdown(std::net::Shutdown::Both);
}

/// One exchange with a [`NamedServer`], as the client saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The backend that answered.
    pub backend: String,
    /// The client address the server saw.
    pub server_saw: SocketAddr,
    /// The peer address the client's socket reports.
    pub peer: SocketAddr,
    /// The client's own address.
    pub local: SocketAddr,
}

/// Connects to `to` from the current namespace, sends `len` bytes, and checks the reply:
/// the socket's peer must be `to` and the payload must come back unchanged after the
/// server's header line.
pub fn exchange_here(to: SocketAddr, len: usize) -> Result<Exchange, String> {
    exchange_between(to, len, || {})
}

/// [`exchange_here`] with `between` called once the connection is established and the
/// first half of the payload is sent; the second half follows when it returns.
fn exchange_between(
    to: SocketAddr,
    len: usize,
    between: impl FnOnce(),
) -> Result<Exchange, String> {
    let mut c = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => format!("connect {to}: timed out"),
        _ => format!("connect {to}: {e}"),
    })?;
    let peer = c.peer_addr().map_err(|e| format!("peer_addr: {e}"))?;
    let local = c.local_addr().map_err(|e| format!("local_addr: {e}"))?;
    c.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let sent = payload(len);
    let (first, second) = sent.split_at(len / 2);
    c.write_all(first)
        .map_err(|e| format!("write to {to} (local {local}): {e}"))?;
    between();
    c.write_all(second)
        .map_err(|e| format!("write to {to} (local {local}) after the pause: {e}"))?;
    c.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    c.read_to_end(&mut back)
        .map_err(|e| format!("read from {to} (local {local}): {e}"))?;
    let nl = back.iter().position(|&b| b == b'\n').ok_or_else(|| {
        format!(
            "reply from {to} without a header line ({} bytes)",
            back.len()
        )
    })?;
    let head = String::from_utf8_lossy(&back[..nl]).into_owned();
    let mut w = head.split_whitespace();
    let (Some(HEADER), Some(backend), Some(saw), None) = (w.next(), w.next(), w.next(), w.next())
    else {
        return Err(format!("bad header line {head:?} from {to}"));
    };
    let server_saw: SocketAddr = saw
        .parse()
        .map_err(|e| format!("bad peer {saw:?} in {head:?}: {e}"))?;
    let body = &back[nl + 1..];
    if body != sent.as_slice() {
        let at = sent
            .iter()
            .zip(body)
            .position(|(a, b)| a != b)
            .unwrap_or(sent.len().min(body.len()));
        return Err(format!(
            "payload from {backend} via {to} changed: {} bytes sent, {} back, first difference at {at}",
            sent.len(),
            body.len()
        ));
    }
    Ok(Exchange {
        backend: backend.to_string(),
        server_saw,
        peer,
        local,
    })
}

/// `n` exchanges, one after the other, from network namespace `ns`.
pub fn exchanges(ns: &str, to: SocketAddr, n: usize, len: usize) -> Vec<Result<Exchange, String>> {
    in_netns(ns, move || (0..n).map(|_| exchange_here(to, len)).collect())
}

/// One exchange from network namespace `ns`.
pub fn exchange(ns: &str, to: SocketAddr, len: usize) -> Result<Exchange, String> {
    in_netns(ns, move || exchange_here(to, len))
}

/// Polls exchanges from pod `from` until one succeeds (at most `tries`): the first
/// connection after pods attach, while the agents learn the bindings.
pub fn wait_exchange(c: &Cluster, from: &str, to: SocketAddr, tries: u32) -> Exchange {
    let ns = c.pod(from).ns.clone();
    let mut last = String::new();
    for _ in 0..tries {
        match exchange(&ns, to, 100) {
            Ok(x) => return x,
            Err(e) => last = e,
        }
    }
    c.fail(&format!(
        "{from} never completed an exchange with {to}: {last}"
    ))
}

/// An exchange held open: connected and half sent when [`HeldExchange::open`] returns, the
/// rest sent and the reply read by [`HeldExchange::finish`], so that the connection is
/// established across whatever happens in between (within [`IO_TIMEOUT`], the server's).
#[derive(Debug)]
pub struct HeldExchange {
    go: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Result<Exchange, String>>,
}

impl HeldExchange {
    /// Opens a connection from network namespace `ns` to `to` for `len` bytes. Fails the
    /// test if it cannot be established.
    pub fn open(ns: &str, to: SocketAddr, len: usize) -> HeldExchange {
        let (go, wait) = mpsc::channel::<()>();
        let (ready, started) = mpsc::channel::<()>();
        let ns2 = ns.to_string();
        let thread = std::thread::spawn(move || {
            in_netns(&ns2, move || {
                exchange_between(to, len, move || {
                    let _ = ready.send(());
                    // Ends when finished, or when the handle is dropped.
                    let _ = wait.recv();
                })
            })
        });
        if started.recv_timeout(Duration::from_secs(60)).is_err() {
            let why = thread
                .join()
                .unwrap_or_else(|_| Err("the connecting thread panicked".into()));
            panic!("held connection from {ns} to {to} not established: {why:?}");
        }
        HeldExchange { go, thread }
    }

    /// Sends the rest and reads the reply.
    pub fn finish(self) -> Result<Exchange, String> {
        let _ = self.go.send(());
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the held connection's thread panicked".into()))
    }
}

// ---------------------------------------------------------------------------------------------
// Connections in the background
// ---------------------------------------------------------------------------------------------

/// One connection attempt of [`BackgroundExchanges`].
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the connection attempt started.
    pub started: Instant,
    /// What it gave.
    pub result: Result<Exchange, String>,
}

/// New connections opened one after the other, from a pod, until stopped.
#[derive(Debug)]
pub struct BackgroundExchanges {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundExchanges {
    /// Starts connecting from network namespace `ns` to `to`, `len` bytes each.
    pub fn start(ns: &str, to: SocketAddr, len: usize) -> BackgroundExchanges {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s2, l2, ns2) = (stop.clone(), log.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            in_netns(&ns2, move || {
                while !s2.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = exchange_here(to, len);
                    l2.lock()
                        .expect("attempt log")
                        .push(Attempt { started, result });
                }
            })
        });
        BackgroundExchanges {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// The attempts so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.log.lock().expect("attempt log").clone()
    }

    /// How many attempts finished.
    pub fn count(&self) -> usize {
        self.log.lock().expect("attempt log").len()
    }

    /// Stops after the attempt in progress and returns every attempt.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.attempts()
    }
}

impl Drop for BackgroundExchanges {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A paced stream over one connection
// ---------------------------------------------------------------------------------------------

/// One TCP connection to an echo server carrying chunks one after the other (each written,
/// read back and compared) until stopped: an established flow whose every segment must get
/// through. It records when each chunk came back.
#[derive(Debug)]
pub struct Stream {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<Result<u64, String>>>,
}

/// Bytes per chunk of a [`Stream`].
pub const CHUNK: usize = 16 * 1024;

impl Stream {
    /// Connects from network namespace `ns` to the echo server at `to` and starts the
    /// chunks, `pause` apart. Fails the test if the connection cannot be made.
    pub fn start(ns: &str, to: SocketAddr, pause: Duration) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (s2, d2, ns2) = (stop.clone(), done.clone(), ns.to_string());
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            in_netns(&ns2, move || {
                let c = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT);
                let mut c = match c {
                    Ok(c) => c,
                    Err(e) => {
                        let msg = format!("stream connect {to}: {e}");
                        let _ = tx.send(Err(msg.clone()));
                        return Err(msg);
                    }
                };
                let _ = tx.send(Ok(()));
                c.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                c.set_write_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                let mut total: u64 = 0;
                let mut back = vec![0u8; CHUNK];
                while !s2.load(Ordering::Relaxed) {
                    let chunk: Vec<u8> = (0..CHUNK as u64)
                        .map(|i| ((total + i).wrapping_mul(7) % 251) as u8)
                        .collect();
                    c.write_all(&chunk)
                        .map_err(|e| format!("stream write at byte {total}: {e}"))?;
                    c.read_exact(&mut back)
                        .map_err(|e| format!("stream read at byte {total}: {e}"))?;
                    if let Some(at) = chunk.iter().zip(&back).position(|(a, b)| a != b) {
                        return Err(format!(
                            "stream payload changed at byte {}",
                            total + at as u64
                        ));
                    }
                    total += CHUNK as u64;
                    d2.lock().expect("chunk log").push(Instant::now());
                    std::thread::sleep(pause);
                }
                let _ = c.shutdown(std::net::Shutdown::Both);
                Ok(total)
            })
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("the stream to {to} did not start: {e}"),
        }
        Stream {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// When each chunk came back so far.
    pub fn chunks(&self) -> Vec<Instant> {
        self.done.lock().expect("chunk log").clone()
    }

    /// Stops after the chunk in progress; the bytes carried intact, or the first error.
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err("the stream thread panicked".into())),
            None => Err("the stream was already finished".into()),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The outside world behind an uplink
// ---------------------------------------------------------------------------------------------

/// A network namespace standing for the network outside a router's uplink: its `eth0` is
/// one end of a veth whose other end, in the uplink's host, is attached to the uplink port
/// through that host's agent. It holds the next hop the uplink sends to (address and MAC
/// the topology names) and has no route to the pods' networks.
#[derive(Debug)]
pub struct External {
    /// Its namespace name.
    pub ns: String,
    /// The next hop's address on the uplink's network.
    pub ip: Ipv4Addr,
    /// The host-side interface (the uplink's vport).
    pub ifname: String,
    /// The datapath port number the agent gave the uplink.
    pub port_no: u32,
    _ns: Netns,
}

impl External {
    /// Creates namespace `name` with `eth0` = `ip/prefix_len` and MAC `mac` (the uplink's
    /// next-hop MAC), plugs the other end into `host` as `wf-<uplink>`, and attaches it to
    /// NSDB port `uplink` through `host`'s agent.
    pub fn attach(
        c: &Cluster,
        name: &str,
        host: &str,
        uplink: &str,
        ip: Ipv4Addr,
        prefix_len: u8,
        mac: &str,
    ) -> External {
        let ns = Netns::new(name);
        let ifname = format!("wf-{uplink}");
        assert!(ifname.len() <= 15, "interface name {ifname} is too long");
        let h = c.host(host);
        sh(&format!(
            "ip netns exec {name} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && \
             ip -n {host} link add {ifname} type veth peer name eth0 netns {name} && \
             ip netns exec {name} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1 && \
             ip netns exec {host} sysctl -qw net.ipv6.conf.{ifname}.disable_ipv6=1 && \
             ip -n {host} link set {ifname} up && \
             ip -n {name} link set eth0 address {mac} up && \
             ip -n {name} addr add {ip}/{prefix_len} dev eth0"
        ));
        let reply = api_call(
            &h.api,
            &Request::Attach {
                port: uplink.into(),
                ifname: ifname.clone(),
            },
        )
        .unwrap_or_else(|e| c.fail(&format!("attaching uplink {uplink} on {host}: {e}")));
        let port_no = match reply {
            Reply::Attached {
                port: p,
                ifname: i,
                port_no,
            } if p == uplink && i == ifname => port_no,
            other => c.fail(&format!("Attach {uplink} on {host} answered {other:?}")),
        };
        eprintln!(
            "{}: external {name} {ip}/{prefix_len} mac {mac} behind uplink {uplink} on {host} (vport {ifname}={port_no})",
            c.name
        );
        External {
            ns: name.into(),
            ip,
            ifname,
            port_no,
            _ns: ns,
        }
    }

    /// `ip neigh show ADDR` in the external namespace.
    pub fn neigh(&self, addr: Ipv4Addr) -> String {
        let (_, o, e) = sh_try(&format!("ip -n {} neigh show {addr}", self.ns));
        o + &e
    }
}

// ---------------------------------------------------------------------------------------------
// Flows as ovs-dpctl prints them, and as the agent tracks them
// ---------------------------------------------------------------------------------------------

/// One line of `ovs-dpctl dump-flows -m`.
#[derive(Debug, Clone)]
pub struct DpctlFlow {
    /// `ufid:...`.
    pub ufid: String,
    /// The match, as printed.
    pub matched: String,
    /// The actions, as printed.
    pub actions: String,
    /// The whole line.
    pub line: String,
}

/// `ovs-dpctl dump-flows -m DP` run in host namespace `host` (Debian's ovs-dpctl, not
/// Weft's own printer), parsed. Fails the test if ovs-dpctl fails or prints a flow without
/// a UFID.
pub fn dpctl_flows(c: &Cluster, host: &str) -> Vec<DpctlFlow> {
    let dp = c.host(host).datapath_name();
    let (ok, out, err) = sh_try(&format!(
        "ip netns exec {host} ovs-dpctl dump-flows -m {dp}"
    ));
    if !ok {
        c.fail(&format!(
            "ovs-dpctl dump-flows -m {dp} in {host} failed (is Debian's openvswitch-switch installed?):\n{out}{err}"
        ));
    }
    let mut flows = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let Some(rest) = line.strip_prefix("ufid:") else {
            c.fail(&format!(
                "ovs-dpctl printed a flow without a UFID in {host}: {line}\n(all of it:\n{out})"
            ))
        };
        let Some((id, rest)) = rest.split_once(", ") else {
            c.fail(&format!("unexpected ovs-dpctl line in {host}: {line}"))
        };
        let matched = rest.split(", packets:").next().unwrap_or(rest).to_string();
        let actions = rest
            .rsplit_once("actions:")
            .map(|(_, a)| a.to_string())
            .unwrap_or_default();
        flows.push(DpctlFlow {
            ufid: format!("ufid:{id}"),
            matched,
            actions,
            line: line.to_string(),
        });
    }
    flows
}

/// The UFIDs of the flows host `host`'s agent says it installed and tracks, each with its
/// flow text.
pub fn agent_flows(c: &Cluster, host: &str) -> BTreeMap<String, String> {
    match api_call(&c.host(host).api, &Request::Flows) {
        Ok(Reply::Flows { flows }) => flows.into_iter().map(|f| (f.ufid, f.flow)).collect(),
        other => c.fail(&format!("Flows of the agent of {host}: {other:?}")),
    }
}

/// The topology generation host `host`'s agent uses now.
pub fn generation(c: &Cluster, host: &str) -> u64 {
    c.host(host).status().generation
}

/// Polls until host `host`'s agent uses a topology generation newer than `after` (at most
/// `tries` polls 50 ms apart; the bound only ends a hung run). Returns the new generation.
pub fn wait_generation(c: &Cluster, host: &str, after: u64, tries: u32) -> u64 {
    for _ in 0..tries {
        let g = generation(c, host);
        if g > after {
            return g;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.fail(&format!(
        "the agent of {host} never applied an NSDB update after generation {after}"
    ))
}

/// A counter of `/proc/net/snmp` or `/proc/net/netstat` (`Tcp: RetransSegs`,
/// `TcpExt: TCPTimeouts`, ...) in network namespace `ns`, for the record.
pub fn tcp_counter(ns: &str, group: &str, name: &str) -> Option<u64> {
    let (_, text, _) = sh_try(&format!(
        "ip netns exec {ns} cat /proc/net/snmp /proc/net/netstat"
    ));
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (head, vals) = (lines.next()?, lines.next()?);
    let i = head.split_whitespace().position(|h| h == name)?;
    vals.split_whitespace().nth(i)?.parse().ok()
}
