//! The built `weft-cni` run as a container runtime runs it: a process with `CNI_*`
//! environment variables and the network configuration on stdin. Its agent is a small
//! unix-socket server in the test that speaks the local API protocol, so what is tested is
//! the plugin's handling of its input, of the protocol and of real socket conditions (no
//! socket, nobody accepting, nobody answering).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent_api::proto::{
    CniAttachmentId, CniDns, CniInterface, CniIp, CniResult, CniRoute, ErrorCode, Reply, Request,
    Response,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");

/// What the test agent does with a request.
enum Answer {
    Line(Response),
    /// Keep the connection open and never answer.
    Never,
}

/// A unix-socket server speaking the agent's protocol: it records each request and answers
/// what `answer` says.
struct TestAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl TestAgent {
    fn start(answer: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> TestAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind the test agent");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (reqs, answer) = (Arc::clone(&requests), Arc::new(answer));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (reqs, answer) = (Arc::clone(&reqs), Arc::clone(&answer));
                thread::spawn(move || serve(conn, &reqs, &*answer));
            }
        });
        TestAgent {
            _dir: dir,
            socket,
            requests,
        }
    }

    /// An agent that answers every request with `resp`.
    fn answering(resp: Response) -> TestAgent {
        TestAgent::start(move |_| Answer::Line(resp.clone()))
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn path(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

fn serve(conn: UnixStream, reqs: &Mutex<Vec<Request>>, answer: &dyn Fn(&Request) -> Answer) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
        let req: Request = serde_json::from_str(&line).expect("the plugin sends a valid request");
        line.clear();
        let a = answer(&req);
        reqs.lock().unwrap().push(req);
        match a {
            Answer::Line(resp) => {
                let mut out = serde_json::to_vec(&resp).unwrap();
                out.push(b'\n');
                if w.write_all(&out).is_err() {
                    return;
                }
            }
            Answer::Never => thread::sleep(Duration::from_secs(60)),
        }
    }
}

/// One run of the plugin.
#[derive(Debug)]
struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts a failure with the spec's error JSON of `code`, and returns its details.
    fn error(&self, code: u32) -> String {
        assert_ne!(self.status, Some(0), "expected a failure: {self:?}");
        assert!(self.status.is_some(), "killed by a signal: {self:?}");
        let v = self.json();
        assert_eq!(v["code"], code, "{self:?}");
        assert!(v["cniVersion"].is_string(), "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(!self.stderr.contains("panicked"), "{self:?}");
        v["details"].as_str().expect("details").to_string()
    }

    /// Asserts success with nothing on stdout (DEL, CHECK, GC, STATUS).
    fn silent_success(&self) {
        assert_eq!(self.status, Some(0), "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
    }
}

/// How long any run of the plugin may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs the plugin with `env` and `stdin`; with `close_stdin` false, stdin stays open
/// after `stdin` is written.
fn run_with(env: &[(&str, &str)], stdin: &[u8], close_stdin: bool) -> Run {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft-cni");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        // The plugin may exit before reading everything (it refuses an oversized stdin).
        let _ = input.write_all(&data);
        if close_stdin {
            drop(input);
            None
        } else {
            Some(input)
        }
    });
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for weft-cni") {
            break s;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft-cni still runs after {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let _open_stdin = writer.join().expect("stdin writer");
    Run {
        status: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed,
    }
}

fn run(env: &[(&str, &str)], stdin: &[u8]) -> Run {
    run_with(env, stdin, true)
}

fn env_of(cmd: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "c0ffee01"),
        ("CNI_NETNS", "/run/netns/pod1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=blue;K8S_POD_NAME=web-0;K8S_POD_UID=1234",
        ),
    ]
}

fn conf(version: &str, socket: &str) -> Vec<u8> {
    json!({"cniVersion": version, "name": "weft", "type": "weft-cni", "agentSocket": socket})
        .to_string()
        .into_bytes()
}

fn agent_result() -> CniResult {
    CniResult {
        interfaces: vec![
            CniInterface {
                name: "wf1a2b3c4d".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1450),
                sandbox: None,
            },
            CniInterface {
                name: "eth0".into(),
                mac: "02:00:0a:0a:00:0b".into(),
                mtu: Some(1450),
                sandbox: Some("/run/netns/pod1".into()),
            },
        ],
        ips: vec![
            CniIp {
                address: "10.10.0.11/24".parse().unwrap(),
                gateway: Some("10.10.0.1".parse().unwrap()),
                interface: Some(1),
            },
            CniIp {
                address: "fd00:10::b/64".parse().unwrap(),
                gateway: Some("fd00:10::1".parse().unwrap()),
                interface: Some(1),
            },
        ],
        routes: vec![CniRoute {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("10.10.0.1".parse().unwrap()),
            mtu: None,
        }],
        dns: CniDns {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
            domain: None,
            search: vec!["blue.svc.cluster.local".into()],
            options: vec![],
        },
    }
}

fn added() -> Response {
    Response::Ok {
        reply: Reply::CniAdded(agent_result()),
    }
}

#[test]
fn add_sends_one_request_and_prints_the_result_in_the_configured_version() {
    let agent = TestAgent::answering(added());
    let r = run(&env_of("ADD"), &conf("1.1.0", agent.path()));
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(
        r.json(),
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "wf1a2b3c4d", "mac": "02:00:00:00:00:01", "mtu": 1450},
                {"name": "eth0", "mac": "02:00:0a:0a:00:0b", "mtu": 1450, "sandbox": "/run/netns/pod1"}
            ],
            "ips": [
                {"interface": 1, "address": "10.10.0.11/24", "gateway": "10.10.0.1"},
                {"interface": 1, "address": "fd00:10::b/64", "gateway": "fd00:10::1"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["blue.svc.cluster.local"]}
        })
    );
    assert_eq!(
        agent.requests(),
        [Request::CniAdd {
            container_id: "c0ffee01".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/pod1".into(),
            network: "weft".into(),
            pod_namespace: Some("blue".into()),
            pod_name: Some("web-0".into()),
        }]
    );

    let r = run(&env_of("ADD"), &conf("1.0.0", agent.path()));
    assert_eq!(r.status, Some(0), "{r:?}");
    let v = r.json();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["ips"][0].get("version"), None, "{v}");

    let r = run(&env_of("ADD"), &conf("0.4.0", agent.path()));
    assert_eq!(r.status, Some(0), "{r:?}");
    let v = r.json();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["ips"][0]["version"], "4", "{v}");
    assert_eq!(v["ips"][1]["version"], "6", "{v}");
    assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/pod1");
    assert_eq!(agent.requests().len(), 3);
}

#[test]
fn the_configuration_of_a_conflist_plugin_carries_prev_result_to_check_and_del() {
    let agent = TestAgent::start(|req| {
        Answer::Line(Response::Ok {
            reply: match req {
                Request::CniCheck { .. } => Reply::CniChecked,
                _ => Reply::CniDeleted { was_attached: true },
            },
        })
    });
    // What libcni passes for the weft plugin of a conflist: the list's name and
    // cniVersion injected, and the cached result of the chain as prevResult.
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "wf1a2b3c4d", "mac": "02:00:00:00:00:01", "mtu": 1450},
            {"name": "eth0", "mac": "02:00:0a:0a:00:0b", "mtu": 1450, "sandbox": "/run/netns/pod1"}
        ],
        "ips": [{"interface": 1, "address": "10.10.0.11/24", "gateway": "10.10.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let stdin = json!({
        "cniVersion": "1.1.0", "name": "weft-pods", "type": "weft-cni",
        "agentSocket": agent.path(), "prevResult": prev
    })
    .to_string();
    run(&env_of("CHECK"), stdin.as_bytes()).silent_success();
    let mut del_env = env_of("DEL");
    del_env.retain(|(k, _)| *k != "CNI_NETNS");
    run(&del_env, stdin.as_bytes()).silent_success();
    let reqs = agent.requests();
    let Request::CniCheck {
        container_id,
        network,
        prev_result,
        ..
    } = &reqs[0]
    else {
        panic!("expected cni_check first: {reqs:?}");
    };
    assert_eq!(
        (container_id.as_str(), network.as_str()),
        ("c0ffee01", "weft-pods")
    );
    assert_eq!(
        prev_result.interfaces[1].sandbox.as_deref(),
        Some("/run/netns/pod1")
    );
    assert_eq!(prev_result.ips[0].address.to_string(), "10.10.0.11/24");
    assert_eq!(prev_result.ips[0].interface, Some(1));
    assert_eq!(prev_result.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(prev_result.dns.nameservers[0].to_string(), "10.96.0.10");
    assert_eq!(
        reqs[1],
        Request::CniDel {
            container_id: "c0ffee01".into(),
            ifname: "eth0".into(),
            netns: None,
            network: "weft-pods".into(),
        }
    );

    // A 0.4.0 prevResult has `version` on each IP.
    let stdin = json!({
        "cniVersion": "0.4.0", "name": "weft-pods", "type": "weft-cni", "agentSocket": agent.path(),
        "prevResult": {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod1"}],
                       "ips": [{"version": "4", "interface": 0, "address": "10.10.0.11/24"}]}
    })
    .to_string();
    run(&env_of("CHECK"), stdin.as_bytes()).silent_success();
}

/// The shipped conflist, turned into the plugin's configuration the way libcni does it:
/// the plugin's object with the list's `name` and `cniVersion` injected.
#[test]
fn the_shipped_conflist_configures_the_plugin() {
    let agent = TestAgent::answering(added());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("10-weft.conflist");
    let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let plugins = list["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1, "{list}");
    let mut c = plugins[0].clone();
    assert_eq!(c["type"], "weft-cni");
    assert_eq!(c["agentSocket"], agent_api::proto::DEFAULT_SOCKET);
    c["name"] = list["name"].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["agentSocket"] = json!(agent.path());
    let r = run(&env_of("ADD"), c.to_string().as_bytes());
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(r.json()["cniVersion"], "1.1.0");
}

#[test]
fn gc_sends_the_valid_attachments_from_either_spec_key() {
    let agent = TestAgent::answering(Response::Ok {
        reply: Reply::CniCollected { removed: vec![] },
    });
    let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
    let a = |id: &str| CniAttachmentId {
        container_id: id.into(),
        ifname: "eth0".into(),
    };
    for (key, ids) in [
        ("cni.dev/valid-attachments", vec!["c1", "c2"]),
        ("cni.dev/attachments", vec!["c3"]),
    ] {
        let list: Vec<Value> = ids
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        let stdin = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
                           "agentSocket": agent.path(), key: list})
        .to_string();
        run(&env, stdin.as_bytes()).silent_success();
    }
    // cnitool's GC after DELing every cached attachment: no key, so nothing is valid.
    run(&env, &conf("1.1.0", agent.path())).silent_success();
    assert_eq!(
        agent.requests(),
        [
            Request::CniGc {
                network: "weft".into(),
                valid: vec![a("c1"), a("c2")]
            },
            Request::CniGc {
                network: "weft".into(),
                valid: vec![a("c3")]
            },
            Request::CniGc {
                network: "weft".into(),
                valid: vec![]
            },
        ]
    );
    // A list that does not parse is refused, never read as empty.
    let stdin = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
                       "agentSocket": agent.path(), "cni.dev/valid-attachments": "c1,c2"})
    .to_string();
    let d = run(&env, stdin.as_bytes()).error(7);
    assert!(d.contains("cni.dev/valid-attachments"), "{d}");
    assert_eq!(
        agent.requests().len(),
        3,
        "nothing was sent for the bad list"
    );
}

#[test]
fn status_is_50_when_the_agent_is_not_ready_or_not_there() {
    let env = [("CNI_COMMAND", "STATUS")];
    let ready = TestAgent::answering(Response::Ok {
        reply: Reply::CniReady,
    });
    run(&env, &conf("1.1.0", ready.path())).silent_success();
    assert_eq!(
        ready.requests(),
        [Request::CniStatus {
            network: "weft".into()
        }]
    );
    let starting = TestAgent::answering(Response::error_with(
        ErrorCode::NotReady,
        "no topology snapshot yet",
    ));
    let d = run(&env, &conf("1.1.0", starting.path())).error(50);
    assert!(d.contains("no topology snapshot yet"), "{d}");
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("agent.sock");
    let d = run(&env, &conf("1.1.0", gone.to_str().unwrap())).error(50);
    assert!(d.contains("not running"), "{d}");
}

#[test]
fn version_echoes_the_input_version_and_lists_the_supported_ones() {
    for v in ["1.1.0", "1.0.0", "0.4.0", "0.3.1"] {
        let r = run(
            &[("CNI_COMMAND", "VERSION")],
            json!({ "cniVersion": v }).to_string().as_bytes(),
        );
        assert_eq!(r.status, Some(0), "{r:?}");
        assert_eq!(
            r.json(),
            json!({"cniVersion": v, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

/// A bad input: what it is, its environment, its stdin, and what the error details say.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);

/// The error JSON and exit of each bad input, and that nothing reached the agent.
fn refused(agent: &TestAgent, cases: &[Case<'_>], code: u32) {
    for (what, env, stdin, says) in cases {
        let r = run(env, stdin);
        let d = r.error(code);
        assert!(d.contains(says), "{what}: {d:?} lacks {says:?}");
    }
    assert_eq!(agent.requests(), [], "an invalid input reached the agent");
}

#[test]
fn incompatible_versions_are_code_1() {
    let agent = TestAgent::answering(added());
    let p = agent.path();
    let stdin = |v: Value| {
        json!({"cniVersion": v, "name": "weft", "type": "weft-cni", "agentSocket": p})
            .to_string()
            .into_bytes()
    };
    let no_version = json!({"name": "weft", "type": "weft-cni", "agentSocket": p})
        .to_string()
        .into_bytes();
    refused(
        &agent,
        &[
            ("0.3.1", env_of("ADD"), stdin(json!("0.3.1")), "0.3.1"),
            ("2.0.0", env_of("ADD"), stdin(json!("2.0.0")), "2.0.0"),
            (
                "no cniVersion means 0.1.0",
                env_of("ADD"),
                no_version,
                "0.1.0",
            ),
            (
                "GC needs 1.1.0",
                vec![("CNI_COMMAND", "GC")],
                stdin(json!("1.0.0")),
                "GC",
            ),
            (
                "STATUS needs 1.1.0",
                vec![("CNI_COMMAND", "STATUS")],
                stdin(json!("1.0.0")),
                "STATUS",
            ),
        ],
        1,
    );
    // The error is reported under the configuration's version.
    let r = run(&env_of("ADD"), &stdin(json!("2.0.0")));
    assert_eq!(r.json()["cniVersion"], "2.0.0");
}

#[test]
fn unsupported_fields_are_code_2_and_named_with_their_value() {
    let agent = TestAgent::answering(added());
    let with = |k: &str, v: Value| {
        let mut c: Value = serde_json::from_slice(&conf("1.1.0", agent.path())).unwrap();
        c[k] = v;
        c.to_string().into_bytes()
    };
    refused(
        &agent,
        &[
            (
                "ipam",
                env_of("ADD"),
                with("ipam", json!({"type": "host-local"})),
                r#""ipam": {"type":"host-local"}"#,
            ),
            (
                "ipMasq",
                env_of("ADD"),
                with("ipMasq", json!(true)),
                r#""ipMasq": true"#,
            ),
            (
                "capabilities",
                env_of("ADD"),
                with("capabilities", json!({"portMappings": true})),
                "portMappings",
            ),
            (
                "unknown key",
                env_of("ADD"),
                with("bridge", json!("br0")),
                r#""bridge": "br0""#,
            ),
        ],
        2,
    );
    // The value is shown, but not all of a long one.
    let long = "x".repeat(100_000);
    let d = run(&env_of("ADD"), &with("bridge", json!(long))).error(2);
    assert!(
        d.contains("\"bridge\": \"xxx") && d.len() < 500,
        "{} bytes",
        d.len()
    );
    let d = run(&env_of("ADD"), &with("dns", json!(long))).error(7);
    assert!(d.len() < 500, "{} bytes", d.len());

    // ipMasq false and a capability switched off are no requests for anything.
    let mut c: Value = serde_json::from_slice(&conf("1.1.0", agent.path())).unwrap();
    c["ipMasq"] = json!(false);
    c["capabilities"] = json!({"portMappings": false});
    let r = run(&env_of("ADD"), c.to_string().as_bytes());
    assert_eq!(r.status, Some(0), "{r:?}");
}

#[test]
fn an_unknown_container_is_code_3_as_the_agent_says() {
    let agent = TestAgent::answering(Response::error_with(
        ErrorCode::UnknownContainer,
        "no attachment of container c0ffee01 on eth0",
    ));
    let stdin = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
        "agentSocket": agent.path(),
        "prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod1"}],
                       "ips": [{"interface": 0, "address": "10.10.0.11/24"}]}})
    .to_string();
    let d = run(&env_of("CHECK"), stdin.as_bytes()).error(3);
    assert!(d.contains("no attachment of container c0ffee01"), "{d}");
}

#[test]
fn invalid_or_missing_environment_is_code_4_naming_the_variable() {
    let agent = TestAgent::answering(added());
    let stdin = conf("1.1.0", agent.path());
    let without = |var: &str| {
        let mut e = env_of("ADD");
        e.retain(|(k, _)| *k != var);
        e
    };
    let with = |var: &'static str, value: &'static str| {
        let mut e = without(var);
        e.push((var, value));
        e
    };
    refused(
        &agent,
        &[
            (
                "no CNI_COMMAND",
                without("CNI_COMMAND"),
                stdin.clone(),
                "CNI_COMMAND",
            ),
            (
                "unknown CNI_COMMAND",
                with("CNI_COMMAND", "ATTACH"),
                stdin.clone(),
                "ATTACH",
            ),
            (
                "no CNI_CONTAINERID",
                without("CNI_CONTAINERID"),
                stdin.clone(),
                "CNI_CONTAINERID",
            ),
            (
                "no CNI_NETNS",
                without("CNI_NETNS"),
                stdin.clone(),
                "CNI_NETNS",
            ),
            (
                "no CNI_IFNAME",
                without("CNI_IFNAME"),
                stdin.clone(),
                "CNI_IFNAME",
            ),
            (
                "bad CNI_CONTAINERID",
                with("CNI_CONTAINERID", "c1/../x"),
                stdin.clone(),
                "CNI_CONTAINERID",
            ),
            (
                "relative CNI_NETNS",
                with("CNI_NETNS", "netns/pod1"),
                stdin.clone(),
                "CNI_NETNS",
            ),
            (
                "long CNI_IFNAME",
                with("CNI_IFNAME", "eth0123456789abc"),
                stdin.clone(),
                "CNI_IFNAME",
            ),
            (
                "malformed CNI_ARGS",
                with("CNI_ARGS", "K8S_POD_NAME"),
                stdin.clone(),
                "CNI_ARGS",
            ),
            (
                "unknown CNI_ARGS key",
                with("CNI_ARGS", "COLOR=blue"),
                stdin.clone(),
                "COLOR",
            ),
        ],
        4,
    );
    let mut e = without("CNI_CONTAINERID");
    e.retain(|(k, _)| *k != "CNI_IFNAME");
    let d = run(&e, &stdin).error(4);
    assert!(
        d.contains("CNI_CONTAINERID,CNI_IFNAME"),
        "every missing one is named: {d}"
    );
}

#[test]
fn stdin_left_open_is_an_io_failure_within_the_deadline() {
    let r = run_with(&env_of("ADD"), br#"{"cniVersion":"1.1.0","#, false);
    let d = r.error(5);
    assert!(d.contains("stdin was not closed"), "{d}");
    assert!(
        r.elapsed >= Duration::from_secs(4) && r.elapsed < Duration::from_secs(9),
        "{:?}",
        r.elapsed
    );
}

#[test]
fn a_bare_invocation_answers_at_once() {
    let r = run_with(&[], b"", false);
    let d = r.error(4);
    assert!(d.contains("CNI_COMMAND"), "{d}");
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
}

#[test]
fn stdin_that_does_not_decode_is_code_6() {
    let agent = TestAgent::answering(added());
    let good = String::from_utf8(conf("1.1.0", agent.path())).unwrap();
    let truncated = good.as_bytes()[..good.len() / 2].to_vec();
    let mut oversized =
        br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","pad":""#.to_vec();
    oversized.resize(2 << 20, b'x');
    oversized.extend_from_slice(br#""}"#);
    refused(
        &agent,
        &[
            ("empty", env_of("ADD"), Vec::new(), "empty"),
            ("blank", env_of("ADD"), b" \n".to_vec(), "empty"),
            ("truncated", env_of("ADD"), truncated, "EOF while parsing"),
            (
                "garbage",
                env_of("ADD"),
                b"\x89PNG\r\n\x1a\n".to_vec(),
                "not valid JSON",
            ),
            (
                "an array",
                env_of("ADD"),
                b"[1, 2]".to_vec(),
                "got an array",
            ),
            (
                "oversized",
                env_of("ADD"),
                oversized,
                "more than 1048576 bytes",
            ),
        ],
        6,
    );
}

#[test]
fn invalid_network_configurations_are_code_7() {
    let agent = TestAgent::answering(added());
    let p = agent.path();
    let c = |v: Value| v.to_string().into_bytes();
    refused(
        &agent,
        &[
            (
                "no name",
                env_of("ADD"),
                c(json!({"cniVersion": "1.1.0", "type": "weft-cni", "agentSocket": p})),
                "missing network name",
            ),
            (
                "bad name",
                env_of("ADD"),
                c(
                    json!({"cniVersion": "1.1.0", "name": "-weft", "type": "weft-cni", "agentSocket": p}),
                ),
                "invalid characters found in network name",
            ),
            (
                "no type",
                env_of("ADD"),
                c(json!({"cniVersion": "1.1.0", "name": "weft", "agentSocket": p})),
                "type",
            ),
            (
                "relative agentSocket",
                env_of("ADD"),
                c(
                    json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "agentSocket": "agent.sock"}),
                ),
                "agentSocket must be an absolute path",
            ),
            (
                "zero agentTimeoutMs",
                env_of("ADD"),
                c(
                    json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "agentSocket": p, "agentTimeoutMs": 0}),
                ),
                "agentTimeoutMs",
            ),
            (
                "a whole conflist",
                env_of("ADD"),
                c(
                    json!({"cniVersion": "1.1.0", "name": "weft", "plugins": [{"type": "weft-cni"}]}),
                ),
                "configuration list",
            ),
            (
                "dns of the wrong type",
                env_of("ADD"),
                c(
                    json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "agentSocket": p, "dns": "10.96.0.10"}),
                ),
                "invalid network configuration",
            ),
            (
                "CHECK without prevResult",
                env_of("CHECK"),
                c(
                    json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "agentSocket": p}),
                ),
                "CHECK needs prevResult",
            ),
        ],
        7,
    );
}

/// Each way the agent can be unreachable answers 11, within the configured timeout and
/// a second of grace.
#[test]
fn an_unreachable_agent_is_code_11_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let timeout_ms = 1500;
    let stdin = |socket: &Path| {
        json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni",
               "agentSocket": socket, "agentTimeoutMs": timeout_ms})
        .to_string()
        .into_bytes()
    };
    let bound = Duration::from_millis(timeout_ms) + Duration::from_secs(2);

    // No socket file.
    let r = run(&env_of("ADD"), &stdin(&dir.path().join("none.sock")));
    assert!(r.error(11).contains("not running"), "{r:?}");

    // A socket file nobody listens on any more (an agent that died).
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let r = run(&env_of("ADD"), &stdin(&stale));
    assert!(r.error(11).contains("not running"), "{r:?}");

    // A listener that never accepts: connect succeeds into the backlog, no answer comes.
    let deaf = dir.path().join("deaf.sock");
    let _deaf = UnixListener::bind(&deaf).unwrap();
    let r = run(&env_of("ADD"), &stdin(&deaf));
    let d = r.error(11);
    assert!(d.contains("did not answer"), "{d}");
    assert!(r.elapsed < bound, "{:?}", r.elapsed);

    // A listener whose backlog is full: connect(2) itself blocks, which no socket timeout
    // bounds; the plugin's deadline does.
    let full = dir.path().join("full.sock");
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&socket2::SockAddr::unix(&full).unwrap())
        .unwrap();
    listener.listen(0).unwrap();
    let _queued = UnixStream::connect(&full).expect("the one queued connection");
    let r = run(&env_of("ADD"), &stdin(&full));
    let d = r.error(11);
    assert!(d.contains("did not answer"), "{d}");
    assert!(r.elapsed < bound, "{:?}", r.elapsed);

    // An agent that reads the request and never answers.
    let mute = TestAgent::start(|_| Answer::Never);
    for cmd in ["ADD", "DEL", "CHECK"] {
        let mut s: Value = serde_json::from_slice(&stdin(&mute.socket)).unwrap();
        s["prevResult"] = json!({"interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod1"}],
                                 "ips": [{"interface": 0, "address": "10.10.0.11/24"}]});
        let r = run(&env_of(cmd), s.to_string().as_bytes());
        let d = r.error(11);
        assert!(d.contains("did not answer"), "{cmd}: {d}");
        assert!(r.elapsed < bound, "{cmd}: {:?}", r.elapsed);
    }
    assert_eq!(mute.requests().len(), 3, "one request per invocation");

    // The agent's own "try again later" (NSDB unreachable) passes through.
    let busy = TestAgent::answering(Response::error_with(
        ErrorCode::TryAgainLater,
        "NSDB is unreachable",
    ));
    let d = run(&env_of("ADD"), &stdin(&busy.socket)).error(11);
    assert!(d.contains("NSDB is unreachable"), "{d}");
}

#[test]
fn without_an_agent_timeout_an_add_is_still_bounded() {
    let mute = TestAgent::start(|_| Answer::Never);
    let r = run(&env_of("ADD"), &conf("1.1.0", mute.path()));
    r.error(11);
    assert!(
        r.elapsed >= Duration::from_secs(9) && r.elapsed < Duration::from_secs(13),
        "the default timeout is 10 s: {:?}",
        r.elapsed
    );
}

#[test]
fn agent_failures_without_a_class_and_wrong_answers_get_plugin_codes() {
    let plain = TestAgent::answering(Response::error("namespace blue has no bridge"));
    let d = run(&env_of("ADD"), &conf("1.1.0", plain.path())).error(100);
    assert!(d.contains("namespace blue has no bridge"), "{d}");

    let confused = TestAgent::answering(Response::Ok {
        reply: Reply::CniReady,
    });
    let d = run(&env_of("ADD"), &conf("1.1.0", confused.path())).error(101);
    assert!(d.contains("\"cni_ready\" to cni_add"), "{d}");

    let mut bad = agent_result();
    bad.ips[0].interface = Some(5);
    let dangling = TestAgent::answering(Response::Ok {
        reply: Reply::CniAdded(bad),
    });
    let d = run(&env_of("ADD"), &conf("1.1.0", dangling.path())).error(101);
    assert!(d.contains("interface 5"), "{d}");
}
