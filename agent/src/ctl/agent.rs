//! `weftctl status|flows|trace|attach|detach`: the views of a running agent, read from its
//! local API socket, and the text they print.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::api::proto::DEFAULT_SOCKET;
use crate::api::{Client, FlowInfo, Reply, Request, Status, TraceInfo};

/// Where the agent listens.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// The agent's API socket.
    #[arg(long = "socket", value_name = "PATH", env = "WEFT_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// The subcommands that talk to the node's agent.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Show the agent's host, datapath, tunnel, topology generation, flows and ports.
    Status(StatusArgs),
    /// List the flows the agent installed, one per line as `ovs-dpctl dump-flows -m` does.
    Flows(FlowsArgs),
    /// Simulate a packet against the agent's current topology, installing nothing.
    Trace(TraceArgs),
    /// Bind an NSDB port to a host-side interface on this node.
    Attach(AttachArgs),
    /// Remove an NSDB port's binding and vport from this node.
    Detach(DetachArgs),
}

/// `weftctl status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sock: SocketArg,
    /// Print the agent's reply as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `weftctl flows`
#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub sock: SocketArg,
    /// Also print each flow's simulation tags.
    #[arg(long)]
    pub tags: bool,
    /// Also print the simulation trace that produced each flow.
    #[arg(long)]
    pub trace: bool,
    /// Print the agent's reply as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `weftctl trace`
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub sock: SocketArg,
    /// Print the agent's reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// The packet, as `ovs-dpctl` match text, e.g.
    /// 'in_port(3),eth(src=..,dst=..),eth_type(0x0800),ipv4(src=..,dst=..,proto=1,ttl=64)'.
    pub flow: String,
}

/// `weftctl attach`
#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub sock: SocketArg,
    /// The NSDB port id.
    pub port: String,
    /// The host-side interface to add to the datapath for it.
    pub ifname: String,
}

/// `weftctl detach`
#[derive(Debug, Args)]
pub struct DetachArgs {
    #[command(flatten)]
    pub sock: SocketArg,
    /// The NSDB port id.
    pub port: String,
}

impl AgentCmd {
    /// The socket the command talks to.
    pub fn socket(&self) -> &PathBuf {
        match self {
            AgentCmd::Status(a) => &a.sock.socket,
            AgentCmd::Flows(a) => &a.sock.socket,
            AgentCmd::Trace(a) => &a.sock.socket,
            AgentCmd::Attach(a) => &a.sock.socket,
            AgentCmd::Detach(a) => &a.sock.socket,
        }
    }

    /// The request the command sends.
    pub fn request(&self) -> Request {
        match self {
            AgentCmd::Status(_) => Request::Status,
            AgentCmd::Flows(_) => Request::Flows,
            AgentCmd::Trace(a) => Request::Trace {
                flow: a.flow.clone(),
            },
            AgentCmd::Attach(a) => Request::Attach {
                port: a.port.clone(),
                ifname: a.ifname.clone(),
            },
            AgentCmd::Detach(a) => Request::Detach {
                port: a.port.clone(),
            },
        }
    }

    /// The text the command prints for the agent's `reply`.
    pub fn render(&self, reply: &Reply) -> Result<String> {
        let json = match self {
            AgentCmd::Status(a) => a.json,
            AgentCmd::Flows(a) => a.json,
            AgentCmd::Trace(a) => a.json,
            AgentCmd::Attach(_) | AgentCmd::Detach(_) => false,
        };
        if json {
            let mut s = serde_json::to_string_pretty(reply)?;
            s.push('\n');
            return Ok(s);
        }
        Ok(match (self, reply) {
            (AgentCmd::Status(_), Reply::Status(s)) => format_status(s),
            (AgentCmd::Flows(a), Reply::Flows { flows }) => format_flows(flows, a.tags, a.trace),
            (AgentCmd::Trace(_), Reply::Trace(t)) => format_trace(t),
            (
                AgentCmd::Attach(_),
                Reply::Attached {
                    port,
                    ifname,
                    port_no,
                },
            ) => format!("port {port} attached as {ifname} (datapath port {port_no})\n"),
            (AgentCmd::Detach(_), Reply::Detached { port, was_attached }) => {
                if *was_attached {
                    format!("port {port} detached\n")
                } else {
                    format!("port {port} was not attached on this host\n")
                }
            }
            (_, other) => bail!(
                "the agent answered {} with an unexpected reply: {}",
                self.request().op(),
                serde_json::to_string(other)?
            ),
        })
    }
}

/// Runs one agent subcommand: one request, and its reply printed on stdout.
pub fn run(cmd: AgentCmd) -> Result<()> {
    let mut client = Client::connect(cmd.socket())?;
    let reply = client.call(&cmd.request())?;
    let text = cmd.render(&reply)?;
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `weftctl flows | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `weftctl status` text: one `name: value` line per field, then the attached ports.
pub fn format_status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "host:       {}", s.host);
    let _ = writeln!(
        o,
        "ready:      {}",
        if s.ready {
            "yes"
        } else {
            "no (waiting for NSDB)"
        }
    );
    let _ = writeln!(o, "datapath:   {} (ifindex {})", s.datapath, s.dp_ifindex);
    let _ = writeln!(
        o,
        "tunnel:     {} (port {}, udp {})",
        s.tunnel, s.tunnel_port_no, s.tunnel_udp_port
    );
    let _ = writeln!(o, "pod mtu:    {}", s.pod_mtu);
    let _ = writeln!(o, "generation: {}", s.generation);
    let _ = writeln!(o, "flows:      {}", s.flows);
    let _ = writeln!(o, "handlers:   {}", s.handlers);
    let _ = writeln!(o, "ports:      {}", s.ports.len());
    for p in &s.ports {
        let _ = writeln!(o, "  port {}: {} ({})", p.port_no, p.port, p.ifname);
    }
    o
}

/// `weftctl flows` text: `ufid:UFID, FLOW` per flow, as `ovs-dpctl dump-flows -m` prints
/// it; `tags` adds an indented `tags:` line and `trace` the indented simulation trace.
pub fn format_flows(flows: &[FlowInfo], tags: bool, trace: bool) -> String {
    let mut o = String::new();
    for f in flows {
        let ufid = f.ufid.strip_prefix("ufid:").unwrap_or(&f.ufid);
        let _ = writeln!(o, "ufid:{ufid}, {}", f.flow);
        if tags {
            let _ = writeln!(o, "  tags: {}", join_or(&f.tags, "(none)"));
        }
        if trace {
            push_trace(&mut o, &f.trace);
        }
    }
    o
}

/// `weftctl trace` text: the verdict, the megaflow and its actions, the tags, whether the
/// agent would install it, and the step-by-step trace.
pub fn format_trace(t: &TraceInfo) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "verdict: {}", t.verdict);
    let _ = writeln!(o, "match:   {}", t.matched);
    let _ = writeln!(o, "actions: {}", t.actions);
    let _ = writeln!(o, "tags:    {}", join_or(&t.tags, "(none)"));
    let _ = writeln!(o, "install: {}", if t.install { "yes" } else { "no" });
    push_trace(&mut o, &t.trace);
    o
}

fn join_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.join(", ")
    }
}

/// Appends `  trace:` and the trace's lines indented below it.
fn push_trace(o: &mut String, trace: &str) {
    if trace.trim().is_empty() {
        o.push_str("  trace: (not recorded)\n");
        return;
    }
    o.push_str("  trace:\n");
    for line in trace.lines() {
        let _ = writeln!(o, "    {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AttachedPort;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: AgentCmd,
    }

    fn parse(args: &[&str]) -> AgentCmd {
        T::try_parse_from(std::iter::once("weftctl").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    fn flow(ufid: &str, tags: &[&str], trace: &str) -> FlowInfo {
        FlowInfo {
            ufid: ufid.into(),
            flow: "in_port(3),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800), packets:4, bytes:392, used:0.512s, actions:5".into(),
            kind: "normal".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            trace: trace.into(),
            generation: 7,
        }
    }

    #[test]
    fn flows_print_like_dump_flows_m_with_tags_and_traces_below() {
        let flows = [
            flow(
                "ufid:0a0b0c0d-0000-0000-0000-000000000001",
                &["device:b1", "port:p1"],
                "ingress p1\nbridge b1: dst mac 02:00:00:00:00:02 -> p2\n",
            ),
            flow("0a0b0c0d-0000-0000-0000-000000000002", &[], ""),
        ];
        let line1 = "ufid:0a0b0c0d-0000-0000-0000-000000000001, in_port(3),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800), packets:4, bytes:392, used:0.512s, actions:5\n";
        let line2 = "ufid:0a0b0c0d-0000-0000-0000-000000000002, in_port(3),eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),eth_type(0x0800), packets:4, bytes:392, used:0.512s, actions:5\n";
        assert_eq!(
            format_flows(&flows, false, false),
            format!("{line1}{line2}")
        );
        assert_eq!(
            format_flows(&flows, true, false),
            format!("{line1}  tags: device:b1, port:p1\n{line2}  tags: (none)\n")
        );
        assert_eq!(
            format_flows(&flows, true, true),
            format!(
                "{line1}  tags: device:b1, port:p1\n  trace:\n    ingress p1\n    bridge b1: dst mac 02:00:00:00:00:02 -> p2\n{line2}  tags: (none)\n  trace: (not recorded)\n"
            )
        );
        assert_eq!(format_flows(&[], true, true), "");
    }

    #[test]
    fn status_names_every_field_and_lists_ports() {
        let s = Status {
            host: "node-a".into(),
            ready: true,
            datapath: "weft".into(),
            dp_ifindex: 12,
            tunnel: "vxlan".into(),
            tunnel_port_no: 1,
            tunnel_udp_port: 4789,
            pod_mtu: 1450,
            generation: 42,
            flows: 3,
            handlers: 2,
            ports: vec![AttachedPort {
                port: "p1".into(),
                ifname: "wf1a2b3c".into(),
                port_no: 3,
            }],
        };
        assert_eq!(
            format_status(&s),
            "host:       node-a\n\
             ready:      yes\n\
             datapath:   weft (ifindex 12)\n\
             tunnel:     vxlan (port 1, udp 4789)\n\
             pod mtu:    1450\n\
             generation: 42\n\
             flows:      3\n\
             handlers:   2\n\
             ports:      1\n  port 3: p1 (wf1a2b3c)\n"
        );
    }

    #[test]
    fn trace_shows_verdict_megaflow_and_steps() {
        let t = TraceInfo {
            verdict: "drop: acl a1 rule 2".into(),
            matched: "in_port(3),eth_type(0x0800),ipv4(dst=10.0.0.2)".into(),
            actions: "drop".into(),
            tags: vec!["chain:a1".into()],
            install: true,
            trace: "ingress p1\nchain a1: rule 2 drop".into(),
        };
        assert_eq!(
            format_trace(&t),
            "verdict: drop: acl a1 rule 2\n\
             match:   in_port(3),eth_type(0x0800),ipv4(dst=10.0.0.2)\n\
             actions: drop\n\
             tags:    chain:a1\n\
             install: yes\n  trace:\n    ingress p1\n    chain a1: rule 2 drop\n"
        );
    }

    #[test]
    fn commands_send_their_request_and_render_their_reply() {
        let c = parse(&["attach", "p1", "wfabc", "--socket", "/tmp/x.sock"]);
        assert_eq!(c.socket(), &PathBuf::from("/tmp/x.sock"));
        assert_eq!(
            c.request(),
            Request::Attach {
                port: "p1".into(),
                ifname: "wfabc".into()
            }
        );
        let reply = Reply::Attached {
            port: "p1".into(),
            ifname: "wfabc".into(),
            port_no: 4,
        };
        assert_eq!(
            c.render(&reply).unwrap(),
            "port p1 attached as wfabc (datapath port 4)\n"
        );
        let err = c.render(&Reply::Flows { flows: vec![] }).unwrap_err();
        assert!(err.to_string().contains("unexpected reply"), "{err}");

        let c = parse(&["detach", "p9"]);
        assert_eq!(c.request(), Request::Detach { port: "p9".into() });
        let r = Reply::Detached {
            port: "p9".into(),
            was_attached: false,
        };
        assert_eq!(
            c.render(&r).unwrap(),
            "port p9 was not attached on this host\n"
        );

        let c = parse(&["trace", "in_port(1),eth_type(0x0806)"]);
        assert_eq!(
            c.request(),
            Request::Trace {
                flow: "in_port(1),eth_type(0x0806)".into()
            }
        );

        let c = parse(&["flows", "--json"]);
        let reply = Reply::Flows {
            flows: vec![flow("ufid:1", &["port:p1"], "")],
        };
        let json = c.render(&reply).unwrap();
        let back: Reply = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reply);
    }
}
