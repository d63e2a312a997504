//! The agent's local API protocol: one JSON object per line in each direction over a unix
//! stream socket (mode 0600). A client writes a [`Request`] line and reads one [`Response`]
//! line; a connection may carry any number of such exchanges.

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
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The request was carried out.
    Ok { reply: Reply },
    /// The request was refused or failed; nothing was changed unless `message` says so.
    Error { message: String },
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
    /// The topology generation in use (one per NSDB update applied).
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
}
