//! The agent's local API protocol: one JSON object per line in each direction over a unix
//! stream socket (mode 0600). A client writes a [`Request`] line and reads one [`Response`]
//! line; a connection may carry any number of such exchanges.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The socket path the agent listens on unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// The longest request line the agent reads; a longer one is refused and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What a client asks the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Binds NSDB port `port` to the host-side interface `ifname` on this host: adds the
    /// interface to the datapath as a netdev vport (or adopts it if it is already there)
    /// and writes the port's binding to this host. Repeating it is harmless.
    Attach { port: String, ifname: String },
    /// Removes the port's binding to this host and its vport. Detaching a port that is not
    /// attached succeeds and says so.
    Detach { port: String },
    /// The flows the agent installed, with their tags and the simulation that produced them.
    Flows,
    /// Simulates a packet given as `ovs-dpctl` match text (e.g.
    /// `in_port(3),eth(src=..,dst=..),eth_type(0x0800),ipv4(src=..,dst=..,proto=1,ttl=64)`)
    /// against the current topology, without installing anything.
    Trace { flow: String },
    /// The agent's state.
    Status,
    /// CNI ADD: attach the container's interface `ifname` in `netns` to the virtual network
    /// of its pod's namespace. Retrying the same `container_id` and `ifname` returns the
    /// same attachment, not a second one.
    CniAdd {
        container_id: String,
        ifname: String,
        /// The network namespace path, as `CNI_NETNS` gives it.
        netns: String,
        /// The network configuration's `name`.
        network: String,
        /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`, when the runtime sets them.
        #[serde(default)]
        pod_namespace: Option<String>,
        #[serde(default)]
        pod_name: Option<String>,
    },
    /// CNI DEL: remove the attachment and everything it holds. It succeeds when any part
    /// is already gone, the netns included; repeating it is harmless.
    CniDel {
        container_id: String,
        ifname: String,
        /// `CNI_NETNS`, which DEL may lack (the namespace can be gone already).
        #[serde(default)]
        netns: Option<String>,
        network: String,
    },
    /// CNI CHECK: verify that the attachment is as `prev_result` (what ADD answered, as the
    /// runtime cached it) says; the error names the first fact that differs.
    CniCheck {
        container_id: String,
        ifname: String,
        netns: String,
        network: String,
        prev_result: CniResult,
    },
    /// CNI GC: remove every attachment this host holds on `network` that is not in `valid`,
    /// and nothing else. An empty `valid` removes them all.
    CniGc {
        network: String,
        valid: Vec<CniAttachmentId>,
    },
    /// CNI STATUS: succeeds when the agent can serve an ADD; otherwise an error of class
    /// [`ErrorCode::NotReady`] (or [`ErrorCode::NotReadyLimitedConnectivity`]).
    CniStatus { network: String },
}

impl Request {
    /// The request's operation, as its `op` tag names it on the wire (for spans and logs).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "attach",
            Request::Detach { .. } => "detach",
            Request::Flows => "flows",
            Request::Trace { .. } => "trace",
            Request::Status => "status",
            Request::CniAdd { .. } => "cni_add",
            Request::CniDel { .. } => "cni_del",
            Request::CniCheck { .. } => "cni_check",
            Request::CniGc { .. } => "cni_gc",
            Request::CniStatus { .. } => "cni_status",
        }
    }
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The request was carried out.
    Ok { reply: Reply },
    /// The request was refused or failed; nothing was changed unless `message` says so.
    /// `code` classes the failure for a client that must tell its caller whether to retry
    /// (the CNI plugin turns it into the spec's error code); without one the failure is
    /// not classed.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
    },
}

impl Response {
    /// A failure without a class.
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            code: None,
        }
    }

    /// A failure of class `code`.
    pub fn error_with(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            code: Some(code),
        }
    }
}

/// The class of a failed request, on the wire as the CNI spec's numeric error code
/// (`"code": 11`), so that what the agent says reaches the runtime unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 2: the request asks for something this agent does not support.
    Unsupported,
    /// 3: the container (or its attachment) does not exist; nothing needs cleaning up.
    UnknownContainer,
    /// 5: a local I/O operation failed (netlink, the netns, the datapath).
    Io,
    /// 7: the request is invalid (a field's value, or a prevResult that does not match).
    Invalid,
    /// 11: a transient condition: NSDB unreachable, the subnet exhausted for now, the agent
    /// still starting. The caller should retry later.
    TryAgainLater,
    /// 50: STATUS: the agent cannot serve an ADD now.
    NotReady,
    /// 51: STATUS: the agent cannot serve an ADD, and existing pods may have limited
    /// connectivity.
    NotReadyLimitedConnectivity,
}

impl ErrorCode {
    /// The CNI spec's error code of this class.
    pub fn cni_code(self) -> u32 {
        match self {
            ErrorCode::Unsupported => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::Io => 5,
            ErrorCode::Invalid => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotReady => 50,
            ErrorCode::NotReadyLimitedConnectivity => 51,
        }
    }
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c.cni_code()
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;

    fn try_from(n: u32) -> Result<Self, String> {
        Ok(match n {
            2 => ErrorCode::Unsupported,
            3 => ErrorCode::UnknownContainer,
            5 => ErrorCode::Io,
            7 => ErrorCode::Invalid,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::NotReady,
            51 => ErrorCode::NotReadyLimitedConnectivity,
            n => return Err(format!("unknown error code {n}")),
        })
    }
}

/// The result of a request that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The port is attached as datapath port `port_no` (vport `ifname`).
    Attached {
        port: String,
        ifname: String,
        port_no: u32,
    },
    /// The port is detached; `was_attached` is false if there was nothing to do.
    Detached { port: String, was_attached: bool },
    /// The installed flows.
    Flows { flows: Vec<FlowInfo> },
    /// A simulation's outcome.
    Trace(TraceInfo),
    /// The agent's state.
    Status(Status),
    /// CNI ADD succeeded: the attachment, as the plugin prints it.
    CniAdded(CniResult),
    /// CNI DEL succeeded; `was_attached` is false if there was nothing left to remove.
    CniDeleted { was_attached: bool },
    /// CNI CHECK found the attachment as the prevResult says.
    CniChecked,
    /// CNI GC succeeded; the attachments it removed.
    CniCollected { removed: Vec<CniAttachmentId> },
    /// CNI STATUS: the agent is ready for ADDs.
    CniReady,
}

/// An attachment as the CNI spec names it: container ID and interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttachmentId {
    pub container_id: String,
    pub ifname: String,
}

/// What a CNI ADD made, in the spec's Result terms without its version: the plugin renders
/// it in the layout the network configuration's `cniVersion` asks for. The same type
/// carries a prevResult to CHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniResult {
    /// The host end of the veth (no `sandbox`), then the pod's end (`sandbox` = its netns).
    pub interfaces: Vec<CniInterface>,
    pub ips: Vec<CniIp>,
    #[serde(default)]
    pub routes: Vec<CniRoute>,
    #[serde(default)]
    pub dns: CniDns,
}

/// One interface of a [`CniResult`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniInterface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the pod; `None` on the host.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// One address of a [`CniResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniIp {
    /// Address and prefix length (`10.10.0.11/24`).
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface that holds the address.
    #[serde(default)]
    pub interface: Option<u32>,
}

/// One route of a [`CniResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniRoute {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// The DNS settings of a [`CniResult`]; empty when the agent has none to give.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniDns {
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// One installed flow as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// UFID, as `ovs-dpctl dump-flows -m` prints it (`ufid:xxxxxxxx-...`).
    pub ufid: String,
    /// The flow in `ovs-dpctl dump-flows` syntax, with the kernel's current statistics
    /// when they were read (`match, packets:N, bytes:N, used:Xs, actions:...`).
    pub flow: String,
    /// `normal`, `tunnel` or `error` (the idle timeout class).
    pub kind: String,
    /// The simulation tags the flow carries (`device:bridge-1`, `port:p1`, ...).
    pub tags: Vec<String>,
    /// The simulation trace that produced the flow (empty if tracing was off).
    pub trace: String,
    /// The topology generation the flow was simulated against.
    pub generation: u64,
}

/// The outcome of simulating one packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// The verdict (`forward`, `drop: <reason>`, `consumed`, ...).
    pub verdict: String,
    /// The megaflow match the simulation produced.
    pub matched: String,
    /// Its datapath actions (`drop` if none).
    pub actions: String,
    /// The tags it carries.
    pub tags: Vec<String>,
    /// Whether the agent would install it.
    pub install: bool,
    /// The step-by-step trace.
    pub trace: String,
}

/// The agent's state as `weftctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This host's id in NSDB.
    pub host: String,
    /// False while the agent waits at start for NSDB and its first topology: it then
    /// answers only `Status`, and has not yet touched the datapath.
    pub ready: bool,
    /// The datapath name and its ifindex.
    pub datapath: String,
    pub dp_ifindex: i32,
    /// The tunnel vport: type, datapath port number and UDP port.
    pub tunnel: String,
    pub tunnel_port_no: u32,
    pub tunnel_udp_port: u16,
    /// The MTU pods get.
    pub pod_mtu: u16,
    /// The topology generation in use (one per NSDB update applied). The flows that the
    /// update made stale are gone from the datapath by the time it is reported here.
    pub generation: u64,
    /// Flows the agent installed and tracks.
    pub flows: usize,
    /// Upcall handler threads.
    pub handlers: usize,
    /// Ports attached on this host.
    pub ports: Vec<AttachedPort>,
}

/// A port attached on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedPort {
    pub port: String,
    pub ifname: String,
    pub port_no: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_are_one_json_object_each() {
        let r: Request = serde_json::from_str(r#"{"op":"attach","port":"p1","ifname":"wf-p1"}"#)
            .expect("attach parses");
        assert_eq!(
            r,
            Request::Attach {
                port: "p1".into(),
                ifname: "wf-p1".into()
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"flows"}"#).expect("flows parses");
        assert_eq!(r, Request::Flows);
        let bad = serde_json::from_str::<Request>(r#"{"op":"attach","port":"p1"}"#)
            .expect_err("attach without ifname is refused");
        assert!(bad.to_string().contains("ifname"), "{bad}");
        let bad = serde_json::from_str::<Request>(r#"{"op":"reboot"}"#)
            .expect_err("unknown op is refused");
        assert!(bad.to_string().contains("reboot"), "{bad}");
        let line = serde_json::to_string(&Response::Ok {
            reply: Reply::Detached {
                port: "p1".into(),
                was_attached: false,
            },
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"status":"ok","reply":{"kind":"detached","port":"p1","was_attached":false}}"#
        );
    }

    /// Serializes `v`, checks the line is `json`, and parses it back to `v`.
    fn round_trip<T>(v: &T, json: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let line = serde_json::to_string(v).expect("serializes");
        assert_eq!(line, json);
        let back: T = serde_json::from_str(&line).expect("parses back");
        assert_eq!(&back, v);
    }

    fn result() -> CniResult {
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
            ips: vec![CniIp {
                address: "10.10.0.11/24".parse().unwrap(),
                gateway: Some("10.10.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![CniRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.10.0.1".parse().unwrap()),
                mtu: None,
            }],
            dns: CniDns {
                nameservers: vec!["10.96.0.10".parse().unwrap()],
                domain: None,
                search: vec!["default.svc.cluster.local".into()],
                options: vec![],
            },
        }
    }

    #[test]
    fn cni_requests_round_trip() {
        round_trip(
            &Request::CniAdd {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/pod1".into(),
                network: "weft".into(),
                pod_namespace: Some("blue".into()),
                pod_name: Some("web-0".into()),
            },
            r#"{"op":"cni_add","container_id":"c1","ifname":"eth0","netns":"/run/netns/pod1","network":"weft","pod_namespace":"blue","pod_name":"web-0"}"#,
        );
        round_trip(
            &Request::CniDel {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: None,
                network: "weft".into(),
            },
            r#"{"op":"cni_del","container_id":"c1","ifname":"eth0","netns":null,"network":"weft"}"#,
        );
        round_trip(
            &Request::CniCheck {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/pod1".into(),
                network: "weft".into(),
                prev_result: result(),
            },
            concat!(
                r#"{"op":"cni_check","container_id":"c1","ifname":"eth0","netns":"/run/netns/pod1","network":"weft","prev_result":{"#,
                r#""interfaces":[{"name":"wf1a2b3c4d","mac":"02:00:00:00:00:01","mtu":1450,"sandbox":null},"#,
                r#"{"name":"eth0","mac":"02:00:0a:0a:00:0b","mtu":1450,"sandbox":"/run/netns/pod1"}],"#,
                r#""ips":[{"address":"10.10.0.11/24","gateway":"10.10.0.1","interface":1}],"#,
                r#""routes":[{"dst":"0.0.0.0/0","gw":"10.10.0.1","mtu":null}],"#,
                r#""dns":{"nameservers":["10.96.0.10"],"domain":null,"search":["default.svc.cluster.local"],"options":[]}}}"#
            ),
        );
        round_trip(
            &Request::CniGc {
                network: "weft".into(),
                valid: vec![CniAttachmentId {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                }],
            },
            r#"{"op":"cni_gc","network":"weft","valid":[{"container_id":"c1","ifname":"eth0"}]}"#,
        );
        round_trip(
            &Request::CniStatus {
                network: "weft".into(),
            },
            r#"{"op":"cni_status","network":"weft"}"#,
        );
        // Optional fields may be left out; unknown ones are refused.
        let r: Request = serde_json::from_str(
            r#"{"op":"cni_add","container_id":"c1","ifname":"eth0","netns":"/n","network":"w"}"#,
        )
        .expect("cni_add without pod names parses");
        assert!(matches!(
            r,
            Request::CniAdd {
                pod_namespace: None,
                pod_name: None,
                ..
            }
        ));
        let bad = serde_json::from_str::<Request>(
            r#"{"op":"cni_del","container_id":"c1","ifname":"eth0","network":"w","force":true}"#,
        )
        .expect_err("an unknown field is refused");
        assert!(bad.to_string().contains("force"), "{bad}");
        let bad = serde_json::from_str::<Request>(
            r#"{"op":"cni_gc","network":"w","valid":[{"container_id":"c1"}]}"#,
        )
        .expect_err("an attachment without ifname is refused");
        assert!(bad.to_string().contains("ifname"), "{bad}");
    }

    #[test]
    fn cni_replies_round_trip() {
        let line = serde_json::to_string(&Response::Ok {
            reply: Reply::CniAdded(result()),
        })
        .unwrap();
        assert!(
            line.starts_with(r#"{"status":"ok","reply":{"kind":"cni_added","interfaces":["#),
            "{line}"
        );
        let back: Response = serde_json::from_str(&line).expect("cni_added parses back");
        assert_eq!(
            back,
            Response::Ok {
                reply: Reply::CniAdded(result())
            }
        );
        round_trip(
            &Response::Ok {
                reply: Reply::CniDeleted {
                    was_attached: false,
                },
            },
            r#"{"status":"ok","reply":{"kind":"cni_deleted","was_attached":false}}"#,
        );
        round_trip(
            &Response::Ok {
                reply: Reply::CniChecked,
            },
            r#"{"status":"ok","reply":{"kind":"cni_checked"}}"#,
        );
        round_trip(
            &Response::Ok {
                reply: Reply::CniCollected {
                    removed: vec![CniAttachmentId {
                        container_id: "c9".into(),
                        ifname: "eth0".into(),
                    }],
                },
            },
            r#"{"status":"ok","reply":{"kind":"cni_collected","removed":[{"container_id":"c9","ifname":"eth0"}]}}"#,
        );
        round_trip(
            &Response::Ok {
                reply: Reply::CniReady,
            },
            r#"{"status":"ok","reply":{"kind":"cni_ready"}}"#,
        );
        let bad = serde_json::from_str::<Response>(
            r#"{"status":"ok","reply":{"kind":"cni_added","interfaces":[],"ips":[],"extra":1}}"#,
        )
        .expect_err("an unknown field in a result is refused");
        assert!(bad.to_string().contains("extra"), "{bad}");
        let bad = serde_json::from_str::<Response>(
            r#"{"status":"ok","reply":{"kind":"cni_added","interfaces":[],"ips":[{"address":"10.0.0.300/24"}]}}"#,
        )
        .expect_err("an invalid address is refused");
        assert!(bad.to_string().contains("address"), "{bad}");
    }

    #[test]
    fn errors_carry_the_cni_code_of_their_class() {
        round_trip(
            &Response::error_with(ErrorCode::TryAgainLater, "NSDB is unreachable"),
            r#"{"status":"error","message":"NSDB is unreachable","code":11}"#,
        );
        // Without a class the line is what it always was, and such a line still parses.
        round_trip(
            &Response::error("no port \"p1\""),
            r#"{"status":"error","message":"no port \"p1\""}"#,
        );
        for (code, n) in [
            (ErrorCode::Unsupported, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::Io, 5),
            (ErrorCode::Invalid, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::NotReady, 50),
            (ErrorCode::NotReadyLimitedConnectivity, 51),
        ] {
            assert_eq!(code.cni_code(), n);
            assert_eq!(ErrorCode::try_from(n), Ok(code));
            let line = serde_json::to_string(&Response::error_with(code, "m")).unwrap();
            assert_eq!(
                line,
                format!(r#"{{"status":"error","message":"m","code":{n}}}"#)
            );
        }
        let bad = serde_json::from_str::<Response>(r#"{"status":"error","message":"m","code":4}"#)
            .expect_err("a code that is no class is refused");
        assert!(bad.to_string().contains("unknown error code 4"), "{bad}");
    }

    #[test]
    fn every_request_names_its_wire_op() {
        let reqs = [
            Request::Status,
            Request::CniStatus {
                network: "w".into(),
            },
            Request::CniGc {
                network: "w".into(),
                valid: vec![],
            },
            Request::Detach { port: "p".into() },
        ];
        for r in reqs {
            let v: serde_json::Value = serde_json::to_value(&r).unwrap();
            assert_eq!(v["op"], r.op(), "{v}");
        }
    }
}
