//! The agent's answers to the local API: attach and detach ports (the CNI verbs), and the
//! debug views (flows with tags and traces, a trace of any packet, status).

use std::sync::Arc;

use nsdb::{Nsdb, Port, PortBinding};
use odp::dpif::Dpif;
use sim::{PacketContext, Simulation};
use tokio::sync::mpsc;
use tracing::info;

use crate::api::proto::{AttachedPort, Reply, Request, Response, Status, TraceInfo};
use crate::config::{Settings, tunnel_vport_name};
use crate::datapath;
use crate::flows::FlowEvent;
use crate::topo::{LocalChange, LocalPorts, SharedTopo};

/// Everything the API needs of the running agent.
#[derive(Debug)]
pub struct Agent {
    pub settings: Settings,
    pub datapath: String,
    pub dp_ifindex: i32,
    pub tunnel_port_no: u32,
    /// The handler sockets' pids, given to new vports.
    pub pids: Vec<u32>,
    pub nsdb: Nsdb,
    pub topo: SharedTopo,
    pub ports: Arc<LocalPorts>,
    pub local: mpsc::UnboundedSender<LocalChange>,
    pub flows: std::sync::mpsc::Sender<FlowEvent>,
}

impl crate::api::Handler for Agent {
    async fn handle(&self, req: Request) -> Response {
        let op = match &req {
            Request::Attach { .. } => "attach",
            Request::Detach { .. } => "detach",
            Request::Flows => "flows",
            Request::Trace { .. } => "trace",
            Request::Status => "status",
        };
        let r = match req {
            Request::Attach { port, ifname } => self.attach(port, ifname).await,
            Request::Detach { port } => self.detach(port).await,
            Request::Flows => self.flows().await,
            Request::Trace { flow } => self.trace(&flow),
            Request::Status => self.status().await,
        };
        match r {
            Ok(reply) => Response::Ok { reply },
            Err(e) => {
                info!(op, error = format!("{e:#}"), "API request refused");
                Response::Error {
                    message: format!("{e:#}"),
                }
            }
        }
    }
}

impl Agent {
    async fn attach(&self, port: String, ifname: String) -> anyhow::Result<Reply> {
        let Some(p) = self.nsdb.get::<Port>(&port).await? else {
            anyhow::bail!(
                "no port {port:?} in NSDB: create it (or its pod's namespace bridge) first"
            );
        };
        let (ifindex, pids, name) = (self.dp_ifindex, self.pids.clone(), ifname.clone());
        let port_no = tokio::task::spawn_blocking(move || {
            let mut d = Dpif::open()?;
            datapath::attach_vport(&mut d, ifindex, &name, &pids)
        })
        .await??;
        // The vport is known before the binding is written, so the topology compiled from
        // the binding's update already has the port local.
        if self.ports.insert(&ifname, port_no) {
            let _ = self.local.send(LocalChange::Vport {
                name: ifname.clone(),
            });
        }
        let binding = PortBinding {
            port: p.record.id.clone(),
            host: self.settings.host.clone(),
            vport: ifname.clone(),
        };
        self.nsdb.put(&binding).await?;
        info!(port, ifname, port_no, "port attached");
        Ok(Reply::Attached {
            port,
            ifname,
            port_no,
        })
    }

    async fn detach(&self, port: String) -> anyhow::Result<Reply> {
        let binding = self.nsdb.get::<PortBinding>(&port).await?;
        let mut was_attached = false;
        let mut vport = None;
        if let Some(b) = binding
            && b.record.host == self.settings.host
        {
            self.nsdb.delete::<PortBinding>(&port).await?;
            vport = Some(b.record.vport.clone());
            was_attached = true;
        }
        if let Some(name) = vport {
            let ifindex = self.dp_ifindex;
            let n = name.clone();
            let removed = tokio::task::spawn_blocking(move || {
                let mut d = Dpif::open()?;
                datapath::detach_vport(&mut d, ifindex, &n)
            })
            .await??;
            if self.ports.remove(&name).is_some() || removed {
                let _ = self.local.send(LocalChange::Vport { name });
            }
        }
        info!(port, was_attached, "port detached");
        Ok(Reply::Detached { port, was_attached })
    }

    async fn flows(&self) -> anyhow::Result<Reply> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flows
            .send(FlowEvent::Query(tx))
            .map_err(|_| anyhow::anyhow!("the flow manager is not running"))?;
        let flows = tokio::task::spawn_blocking(move || rx.recv()).await??;
        Ok(Reply::Flows { flows })
    }

    fn trace(&self, flow: &str) -> anyhow::Result<Reply> {
        let (key, _mask) = odp::parse_match(flow)
            .map_err(|e| anyhow::anyhow!("cannot read {flow:?} as a datapath match: {e}"))?;
        let snap = self.topo.load();
        let mut s = Simulation::traced();
        let fields = sim::Fields::from_key(&key);
        sim::simulate_into(&snap.topo, &PacketContext::new(fields), &mut s);
        Ok(Reply::Trace(TraceInfo {
            verdict: format!("{:?}", s.verdict),
            matched: s.match_text(&fields),
            actions: s.actions_text(),
            tags: s.tags.iter().map(ToString::to_string).collect(),
            install: s.install,
            trace: s.trace.clone(),
        }))
    }

    async fn status(&self) -> anyhow::Result<Reply> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flows
            .send(FlowEvent::Count(tx))
            .map_err(|_| anyhow::anyhow!("the flow manager is not running"))?;
        let flows = tokio::task::spawn_blocking(move || rx.recv()).await??;
        let snap = self.topo.load();
        let mut ports = Vec::new();
        let vports = self.ports.snapshot();
        for b in snap.records.list::<PortBinding>() {
            if b.host == self.settings.host
                && let Some(no) = vports.get(&b.vport)
            {
                ports.push(AttachedPort {
                    port: b.port.clone(),
                    ifname: b.vport.clone(),
                    port_no: *no,
                });
            }
        }
        Ok(Reply::Status(Status {
            host: self.settings.host.clone(),
            ready: true,
            datapath: self.datapath.clone(),
            dp_ifindex: self.dp_ifindex,
            tunnel: tunnel_vport_name(self.settings.tunnel).to_string(),
            tunnel_port_no: self.tunnel_port_no,
            tunnel_udp_port: self.settings.tunnel_udp_port,
            pod_mtu: self.settings.pod_mtu,
            generation: snap.generation,
            flows,
            handlers: self.settings.handlers,
            ports,
        }))
    }
}
