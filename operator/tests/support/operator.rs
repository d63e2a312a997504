//! `weft-operator run` as a child process of a test, and what the tests ask of the objects it
//! reconciles.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// How long the operator may take to bind its metrics endpoint and log the address.
const METRICS_BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one scrape of /metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `weft-operator run` and the file its stderr goes to.
pub struct Operator {
    pub proc: Proc,
    stderr: PathBuf,
    metrics_addr: Option<SocketAddr>,
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
            metrics_addr: None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
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

    /// The address of its /metrics endpoint, as it logs it (`serving /metrics addr=...`);
    /// waits for the line.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        if let Some(addr) = self.metrics_addr {
            return addr;
        }
        let deadline = Instant::now() + METRICS_BIND_TIMEOUT;
        loop {
            self.assert_running();
            let log = strip_ansi(&self.stderr());
            let addr = log
                .lines()
                .filter(|l| l.contains("serving /metrics"))
                .find_map(|l| {
                    l.split_once("addr=")?
                        .1
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                });
            if let Some(addr) = addr {
                self.metrics_addr = Some(addr);
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "weft-operator logged no `serving /metrics addr=` within \
                 {METRICS_BIND_TIMEOUT:?}; stderr:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its /metrics, scraped now.
    pub fn metrics(&mut self) -> Metrics {
        let addr = self.metrics_addr();
        match scrape(addr) {
            Ok(text) => Metrics(text),
            Err(e) => panic!(
                "GET http://{addr}/metrics: {e}; weft-operator's stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

/// Removes terminal colour escapes (`ESC [ ... m`) from a log.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The body of `GET /metrics` (HTTP/1.0: the answer is not chunked and ends with the
/// connection).
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answered {head:?}")));
    }
    Ok(body.to_owned())
}

/// One scrape of the operator's /metrics (the Prometheus text format).
#[derive(Clone, Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one series, named with its labels as exposed
    /// (`weft_operator_reconciles_total{kind="VirtualBridge"}`).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let value = l.strip_prefix(series)?.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        })
    }

    /// The value of one series, 0 when it is not exposed (a counter never incremented).
    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }
}

/// The number of objects examples/*.yaml defines (one top-level `kind:` each).
pub fn example_objects() -> usize {
    objects_in(&repo().join("examples"))
}

/// The number of objects the `*.yaml` files directly in `dir` define (one top-level `kind:`
/// each).
pub fn objects_in(dir: &Path) -> usize {
    let mut n = 0;
    for entry in fs::read_dir(dir).unwrap() {
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

/// Polls `probe` until it succeeds, for at most `timeout`, while `op` runs; panics with the
/// last reason and the end of the operator's log.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    op: &mut Operator,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        op.assert_running();
        match probe() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                let log = op.stderr();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "{what}: not within {timeout:?}: {why}\nweft-operator (pid {}):\n{}",
                    op.pid(),
                    lines[lines.len().saturating_sub(80)..].join("\n")
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
