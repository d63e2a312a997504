//! `weft-operator run`, the built binary, against a Kubernetes API endpoint over TLS: its
//! kubeconfig names `https://127.0.0.1:<port>`, where `openssl s_server` serves a certificate
//! signed by the kubeconfig's CA, and NSDB is a real etcd. The operator must complete the
//! handshake and send its first API request, and must not panic on the way: kube's client builds
//! its rustls config from the process-wide crypto provider, and panicked when none was selected.
//!
//! The listener is OpenSSL's, not rustls in this test: a rustls dev-dependency with a provider
//! feature would turn that feature on in the binary under test too (Cargo unifies features across
//! a package's dev-dependencies when it builds its tests), and hide the very defect.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nsdb::testing::Etcd;

/// How long the operator may take from start to its first request over TLS.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `openssl s_server` may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "cannot run openssl: the TLS test needs the openssl command (apt-get install openssl)",
        );
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as ca.pem, server.pem and
/// server.key in `dir`.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=weft-test-ca",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    openssl(dir, &csr);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "1",
            "-copy_extensions",
            "copy",
            "-out",
            "server.pem",
        ],
    );
}

/// What `openssl s_server` printed, line by line, from a reader thread.
struct Listener {
    _proc: Proc,
    // Kept open: s_server stops serving when its stdin reaches end of file.
    _stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Listener {
    /// Starts `openssl s_server` on a free loopback port; returns it and the port.
    fn start(dir: &Path) -> (Listener, u16) {
        let mut child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-cert",
                "server.pem",
                "-key",
                "server.key",
            ])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start openssl s_server");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end().to_string()).is_err() {
                    break;
                }
            }
        });
        let mut l = Listener {
            _proc: Proc(child),
            _stdin: stdin,
            lines,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = l.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "openssl s_server did not listen within {LISTEN_TIMEOUT:?}; it printed {:?}",
                    l.seen
                )
            });
            if let Some(port) = line.strip_prefix("ACCEPT 127.0.0.1:") {
                let port = port.parse().expect("s_server printed a port number");
                return (l, port);
            }
            l.seen.push(line);
        }
    }
}

fn write_kubeconfig(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let ca = dir.join("ca.pem");
    fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: tls-test
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: weft-tls-test-token
contexts:
- name: tls-test
  context:
    cluster: tls-test
    user: admin
current-context: tls-test
",
            ca = ca.display()
        ),
    )
    .unwrap();
    path
}

fn is_request_line(line: &str) -> bool {
    let mut words = line.split(' ');
    matches!(
        (words.next(), words.next(), words.next(), words.next()),
        (Some("GET" | "POST" | "PUT" | "PATCH" | "DELETE"), Some(path), Some("HTTP/1.1"), None)
            if path.starts_with('/')
    )
}

#[test]
fn operator_run_completes_a_tls_handshake_with_the_api_server() {
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("weft-tls-")
        .tempdir()
        .unwrap();
    make_certs(dir.path());
    let (mut listener, port) = Listener::start(dir.path());
    let kubeconfig = write_kubeconfig(dir.path(), port);
    let stderr_path = dir.path().join("operator.stderr");

    let mut operator = Proc(
        Command::new(env!("CARGO_BIN_EXE_weft-operator"))
            .args(["run", "--etcd-endpoints", &etcd.endpoint()])
            .args(["--metrics-addr", "127.0.0.1:0", "--identity", "tls-test"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("cannot start weft-operator"),
    );
    let stderr = || {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    };

    // s_server prints "CIPHER is ..." once the handshake completes, then echoes what it reads.
    let mut handshake = false;
    let mut request = None;
    let mut headers = Vec::new();
    let deadline = Instant::now() + FIRST_REQUEST_TIMEOUT;
    while request.is_none() || !headers.iter().any(|h: &String| h.is_empty()) {
        if let Some(status) = operator.0.try_wait().unwrap() {
            panic!(
                "weft-operator exited ({status}) before it sent a request over TLS \
                 (handshake completed: {handshake}); stderr:\n{}",
                stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "weft-operator sent no request over TLS within {FIRST_REQUEST_TIMEOUT:?} \
             (handshake completed: {handshake}); s_server printed {:?}; stderr:\n{}",
            listener.seen,
            stderr()
        );
        let Ok(line) = listener.lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        listener.seen.push(line.clone());
        if line.starts_with("CIPHER is ") {
            handshake = true;
        } else if handshake && request.is_none() && is_request_line(&line) {
            request = Some(line);
        } else if request.is_some() {
            headers.push(line);
        }
    }
    let request = request.unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("authorization: Bearer weft-tls-test-token")),
        "the request {request:?} over TLS did not carry the kubeconfig's token: {headers:?}"
    );

    drop(operator);
    let stderr = stderr();
    for bad in ["CryptoProvider", "panicked"] {
        assert!(
            !stderr.contains(bad),
            "weft-operator's stderr mentions {bad:?}:\n{stderr}"
        );
    }
}
