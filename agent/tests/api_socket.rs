//! The agent's local API transport over a real unix socket: binding rules, the JSON-line
//! exchange through `Client` and raw streams, limits, concurrency, and `weftctl`'s views of
//! it. The handler is a test double that records requests and answers canned replies.

use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use weft_agent::api::proto::MAX_REQUEST_BYTES;
use weft_agent::api::{
    ApiError, AttachedPort, Client, FlowInfo, Handler, Reply, Request, Response, ServeOptions,
    Status, TraceInfo, bind, serve_with,
};

/// Records every request and answers with `answer`.
struct Recorder {
    seen: Mutex<Vec<Request>>,
    answer: fn(&Request) -> Response,
}

impl Handler for Recorder {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        self.seen.lock().unwrap().push(req.clone());
        let resp = (self.answer)(&req);
        async move { resp }
    }
}

fn status() -> Status {
    Status {
        host: "node-a".into(),
        ready: true,
        datapath: "weft".into(),
        dp_ifindex: 12,
        tunnel: "vxlan".into(),
        tunnel_port_no: 1,
        tunnel_udp_port: 4789,
        pod_mtu: 1450,
        generation: 42,
        flows: 2,
        handlers: 2,
        ports: vec![AttachedPort {
            port: "p1".into(),
            ifname: "wf1a2b3c".into(),
            port_no: 3,
        }],
    }
}

const FLOW1: &str = "in_port(3),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800),ipv4(dst=10.0.0.2), packets:4, bytes:392, used:0.512s, actions:5";
const FLOW2: &str = "tunnel(tun_id=0x11,src=192.168.1.2,dst=192.168.1.1,ttl=64/0),in_port(1), packets:1, bytes:98, used:never, actions:3";

fn flows() -> Vec<FlowInfo> {
    vec![
        FlowInfo {
            ufid: "ufid:6f1c2a3b-0000-4000-8000-000000000001".into(),
            flow: FLOW1.into(),
            kind: "normal".into(),
            tags: vec!["device:b1".into(), "port:p1".into(), "port:p2".into()],
            trace: "ingress p1\nbridge b1: 02:00:00:00:00:02 -> p2".into(),
            generation: 42,
        },
        FlowInfo {
            ufid: "ufid:6f1c2a3b-0000-4000-8000-000000000002".into(),
            flow: FLOW2.into(),
            kind: "tunnel".into(),
            tags: vec!["tunnel-key:17".into()],
            trace: String::new(),
            generation: 42,
        },
    ]
}

/// The reply each request gets from a healthy agent; it echoes what identifies the request.
fn canned(req: &Request) -> Response {
    let reply = match req {
        Request::Attach { port, ifname } => Reply::Attached {
            port: port.clone(),
            ifname: ifname.clone(),
            port_no: 7,
        },
        Request::Detach { port } => Reply::Detached {
            port: port.clone(),
            was_attached: true,
        },
        Request::Flows => Reply::Flows { flows: flows() },
        Request::Trace { flow } => Reply::Trace(TraceInfo {
            verdict: "forward".into(),
            matched: flow.clone(),
            actions: "5".into(),
            tags: vec!["device:b1".into()],
            install: true,
            trace: "ingress p1".into(),
        }),
        Request::Status => Reply::Status(status()),
        other => return Response::error(format!("{} is not canned", other.op())),
    };
    Response::Ok { reply }
}

const FLOWS_REFUSAL: &str = "datapath weft is gone; no flows to show";

/// An agent that refuses `flows` and panics on `trace`.
fn troubled(req: &Request) -> Response {
    match req {
        Request::Flows => Response::error(FLOWS_REFUSAL),
        Request::Trace { .. } => panic!("the handler fails on trace"),
        other => canned(other),
    }
}

/// A served socket in its own runtime on its own thread.
struct Agent {
    handler: Arc<Recorder>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Agent {
    fn start(path: &Path, answer: fn(&Request) -> Response) -> Agent {
        Agent::try_start(path, answer, ServeOptions::default()).expect("the agent binds")
    }

    fn try_start(
        path: &Path,
        answer: fn(&Request) -> Response,
        opts: ServeOptions,
    ) -> Result<Agent, ApiError> {
        let handler = Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            answer,
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let h = Arc::clone(&handler);
        let p = path.to_path_buf();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = match bind(&p) {
                    Ok(l) => l,
                    Err(e) => {
                        ready_tx.send(Err(e)).unwrap();
                        return;
                    }
                };
                ready_tx.send(Ok(())).unwrap();
                serve_with(
                    listener,
                    h,
                    async {
                        let _ = stop_rx.await;
                    },
                    opts,
                )
                .await;
            });
        });
        match ready_rx.recv().expect("the agent thread reports its bind") {
            Ok(()) => Ok(Agent {
                handler,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Err(e) => {
                thread.join().unwrap();
                Err(e)
            }
        }
    }

    fn seen(&self) -> Vec<Request> {
        self.handler.seen.lock().unwrap().clone()
    }

    /// Shuts the server down and waits until every connection is closed.
    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("the server thread does not panic");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `bind` outside the served thread, in a runtime of its own.
fn bind_once(path: &Path) -> Result<(), ApiError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { bind(path).map(drop) })
}

fn sock_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run/weft/agent.sock")
}

/// Writes `bytes` on a raw connection and reads one response line.
fn raw_exchange(r: &mut BufReader<UnixStream>, bytes: &[u8]) -> Response {
    r.get_mut().write_all(bytes).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.ends_with('\n'), "a whole response line: {line:?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is a response: {e}"))
}

fn raw(path: &Path) -> BufReader<UnixStream> {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn error_message(r: Response) -> String {
    match r {
        Response::Error { message, .. } => message,
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[test]
fn socket_is_root_only_in_a_created_directory_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let mut agent = Agent::start(&path, canned);
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let parent = fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o7777, 0o755);
    agent.stop();
    assert!(!path.exists(), "the socket file is removed on shutdown");
}

#[test]
fn a_second_agent_on_a_live_socket_is_refused_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let agent = Agent::start(&path, canned);
    let err = bind_once(&path).expect_err("a second bind is refused");
    assert!(matches!(err, ApiError::AlreadyRunning { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("already listening") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
    let mut c = Client::connect(&path).unwrap();
    assert_eq!(c.call(&Request::Status).unwrap(), Reply::Status(status()));
    assert_eq!(agent.seen(), vec![Request::Status]);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    // A socket whose listener is gone, as a killed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let err = Client::connect(&path).expect_err("nobody listens on a stale socket");
    assert!(matches!(err, ApiError::NotRunning { .. }), "{err:?}");

    let _agent = Agent::start(&path, canned);
    let mut c = Client::connect(&path).unwrap();
    assert_eq!(
        c.call(&Request::Detach { port: "p1".into() }).unwrap(),
        Reply::Detached {
            port: "p1".into(),
            was_attached: true
        }
    );
}

#[test]
fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    fs::write(&path, "not a socket").unwrap();
    let err = Agent::try_start(&path, canned, ServeOptions::default())
        .err()
        .expect("a regular file is refused");
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err:?}");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
}

#[test]
fn every_request_round_trips_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let agent = Agent::start(&path, canned);
    let requests = vec![
        Request::Attach {
            port: "p1".into(),
            ifname: "wf1a2b3c".into(),
        },
        Request::Detach { port: "p2".into() },
        Request::Flows,
        Request::Trace {
            flow: "in_port(3),eth_type(0x0806)".into(),
        },
        Request::Status,
    ];
    let mut c = Client::connect(&path).unwrap();
    for req in &requests {
        let reply = c.call(req).unwrap();
        let Response::Ok { reply: want } = canned(req) else {
            unreachable!()
        };
        assert_eq!(reply, want, "reply to {req:?}");
    }
    assert_eq!(
        agent.seen(),
        requests,
        "the handler got each request as sent"
    );
}

#[test]
fn agent_errors_and_handler_failures_reach_the_client_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let _agent = Agent::start(&path, troubled);
    let mut c = Client::connect(&path).unwrap();
    match c.call(&Request::Flows) {
        Err(ApiError::Agent(m)) => assert_eq!(m, FLOWS_REFUSAL),
        other => panic!("expected the agent's refusal, got {other:?}"),
    }
    match c.call(&Request::Trace { flow: "x".into() }) {
        Err(ApiError::Agent(m)) => assert!(m.contains("internal error"), "{m}"),
        other => panic!("expected an internal error, got {other:?}"),
    }
    assert_eq!(c.call(&Request::Status).unwrap(), Reply::Status(status()));
}

#[test]
fn malformed_lines_get_an_error_naming_the_fault_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let agent = Agent::start(&path, canned);
    let mut r = raw(&path);
    let m = error_message(raw_exchange(&mut r, b"not json\n"));
    assert!(
        m.contains("invalid request") && m.contains("expected"),
        "{m}"
    );
    let m = error_message(raw_exchange(&mut r, b"{\"op\":\"reboot\"}\n"));
    assert!(m.contains("reboot"), "{m}");
    let m = error_message(raw_exchange(
        &mut r,
        b"{\"op\":\"attach\",\"port\":\"p1\"}\n",
    ));
    assert!(m.contains("ifname"), "{m}");
    let m = error_message(raw_exchange(&mut r, b"\xff\xfe\x00{\n"));
    assert!(m.contains("invalid request"), "{m}");
    // Blank lines are skipped; the next request is answered.
    let resp = raw_exchange(&mut r, b"\n  \n{\"op\":\"status\"}\r\n");
    assert_eq!(
        resp,
        Response::Ok {
            reply: Reply::Status(status())
        }
    );
    assert_eq!(agent.seen(), vec![Request::Status]);
}

#[test]
fn an_oversize_line_gets_an_error_naming_the_limit_and_the_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let agent = Agent::start(&path, canned);

    // A request of exactly the limit is served.
    let head = br#"{"op":"trace","flow":""#;
    let tail = br#""}"#;
    let mut line = head.to_vec();
    line.resize(MAX_REQUEST_BYTES - tail.len(), b'a');
    line.extend_from_slice(tail);
    assert_eq!(line.len(), MAX_REQUEST_BYTES);
    line.push(b'\n');
    let mut r = raw(&path);
    assert!(matches!(
        raw_exchange(&mut r, &line),
        Response::Ok {
            reply: Reply::Trace(_)
        }
    ));

    // One byte more is refused, and the connection ends.
    let mut long = line.clone();
    long.insert(head.len(), b'a');
    let m = error_message(raw_exchange(&mut r, &long));
    assert!(m.contains(&MAX_REQUEST_BYTES.to_string()), "{m}");
    let mut rest = Vec::new();
    // The end may come as a reset: the agent closed with the rest of the line unread.
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing follows the error: {rest:?}");
    assert_eq!(
        agent.seen().len(),
        1,
        "the oversize request never reached the handler"
    );
}

#[test]
fn many_concurrent_clients_each_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let agent = Agent::start(&path, canned);
    const CLIENTS: usize = 32;
    const CALLS: usize = 25;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let path = path.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&path).unwrap();
                for i in 0..CALLS {
                    let port = format!("p{t}-{i}");
                    let reply = c.call(&Request::Detach { port: port.clone() }).unwrap();
                    assert_eq!(
                        reply,
                        Reply::Detached {
                            port,
                            was_attached: true
                        }
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("every client gets its own answers");
    }
    assert_eq!(agent.seen().len(), CLIENTS * CALLS);
}

#[test]
fn an_idle_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let opts = ServeOptions {
        idle_timeout: Duration::from_millis(50),
        ..ServeOptions::default()
    };
    let _agent = Agent::try_start(&path, canned, opts).unwrap();
    let mut r = raw(&path);
    let mut rest = Vec::new();
    let n = r
        .read_to_end(&mut rest)
        .expect("the agent closes the idle connection before the client's read timeout");
    assert_eq!(n, 0);
}

#[test]
fn a_client_reconnects_when_the_agent_restarted_between_calls() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let mut first = Agent::start(&path, canned);
    let mut c = Client::connect(&path).unwrap();
    c.call(&Request::Status).unwrap();
    first.stop();
    let err = c
        .call(&Request::Status)
        .expect_err("no agent between the two");
    assert!(matches!(err, ApiError::NotRunning { .. }), "{err:?}");
    let mut second = Agent::start(&path, canned);
    assert_eq!(c.call(&Request::Status).unwrap(), Reply::Status(status()));
    assert_eq!(second.seen(), vec![Request::Status]);

    // The agent restarting between two calls on a live connection costs the caller nothing:
    // the request goes again on a new connection.
    second.stop();
    let third = Agent::start(&path, canned);
    let reply = c.call(&Request::Detach { port: "p1".into() }).unwrap();
    assert_eq!(
        reply,
        Reply::Detached {
            port: "p1".into(),
            was_attached: true
        }
    );
    assert_eq!(third.seen(), vec![Request::Detach { port: "p1".into() }]);
}

fn weftctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .env_remove("WEFT_AGENT_SOCKET")
        .output()
        .expect("weftctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn weftctl_status_and_flows_print_what_the_agent_returned() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let sock = path.to_str().unwrap();
    let agent = Agent::start(&path, canned);

    let out = weftctl(&["status", "--socket", sock]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "host:       node-a",
        "datapath:   weft (ifindex 12)",
        "tunnel:     vxlan (port 1, udp 4789)",
        "pod mtu:    1450",
        "generation: 42",
        "flows:      2",
        "  port 3: p1 (wf1a2b3c)",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }

    let out = weftctl(&["flows", "--tags", "--socket", sock]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "ufid:6f1c2a3b-0000-4000-8000-000000000001, {FLOW1}\n  tags: device:b1, port:p1, port:p2\n\
             ufid:6f1c2a3b-0000-4000-8000-000000000002, {FLOW2}\n  tags: tunnel-key:17\n"
        )
    );

    // The socket also comes from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["attach", "p5", "wf55"])
        .env("WEFT_AGENT_SOCKET", sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "port p5 attached as wf55 (datapath port 7)\n"
    );
    assert_eq!(
        agent.seen(),
        vec![
            Request::Status,
            Request::Flows,
            Request::Attach {
                port: "p5".into(),
                ifname: "wf55".into()
            }
        ]
    );
}

#[test]
fn weftctl_fails_with_the_agents_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let _agent = Agent::start(&path, troubled);
    let out = weftctl(&["flows", "--socket", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(FLOWS_REFUSAL), "{stderr}");
}

#[test]
fn weftctl_says_the_agent_is_not_running_and_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_in(&dir);
    let sock = path.to_str().unwrap();
    let out = weftctl(&["status", "--socket", sock]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not running") && stderr.contains(sock),
        "{stderr}"
    );
}
