//! The agent's answers to the local API: attach and detach ports (the CNI verbs), and the
//! debug views (flows with tags and traces, a trace of any packet, status).

use std::sync::Arc;

use anyhow::{Context, bail};
use nsdb::{Nsdb, Port, PortBinding, Unbind};
use odp::dpif::{Dpif, VportType};
use sim::{PacketContext, Simulation};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::proto::{AttachedPort, Reply, Request, Response, Status, TraceInfo};
use crate::attachments::{Attachment, Attachments, Locked};
use crate::config::{Settings, tunnel_vport_name};
use crate::flows::FlowEvent;
use crate::topo::{LocalChange, LocalPorts, SharedTopo};
use crate::{datapath, netdev};

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
    pub flows: std::sync::mpsc::SyncSender<FlowEvent>,
    /// Session-affinity choices, so that a trace shows the member a client really gets.
    pub affinity: Arc<crate::affinity::Affinity>,
    /// What this agent attached (the state directory's record).
    pub attachments: Attachments,
}

impl crate::api::Handler for Agent {
    async fn handle(&self, req: Request) -> Response {
        let op = req.op();
        let r = match req {
            Request::Attach { port, ifname } => self.attach(port, ifname).await,
            Request::Detach { port } => self.detach(port).await,
            Request::Flows => self.flows().await,
            Request::Trace { flow } => self.trace(&flow),
            Request::Status => self.status().await,
            Request::CniAdd {
                container_id,
                ifname,
                netns,
                network,
                pod_namespace,
                pod_name,
            } => {
                let add = crate::cni::Add {
                    container_id,
                    ifname,
                    netns,
                    network,
                    pod_namespace,
                    pod_name,
                };
                return crate::cni::respond(op, self.cni_add(add).await);
            }
            Request::CniDel {
                container_id,
                ifname,
                network,
                ..
            } => {
                return crate::cni::respond(
                    op,
                    self.cni_del(&container_id, &ifname, &network).await,
                );
            }
            Request::CniCheck {
                container_id,
                ifname,
                netns,
                prev_result,
                ..
            } => {
                return crate::cni::respond(
                    op,
                    self.cni_check(&container_id, &ifname, &netns, &prev_result)
                        .await,
                );
            }
            Request::CniGc { network, valid } => {
                return crate::cni::respond(op, self.cni_gc(&network, &valid).await);
            }
            Request::CniStatus { .. } => Ok(Reply::CniReady),
        };
        match r {
            Ok(reply) => Response::Ok { reply },
            Err(e) => {
                info!(op, error = format!("{e:#}"), "API request refused");
                Response::error(format!("{e:#}"))
            }
        }
    }
}

impl Agent {
    /// Attaches `ifname` as `port`: refuses what is not a pod's veth and a vport or port
    /// that is attached already, records the attachment, adds the vport, and binds the port
    /// to it by transaction. A refused binding removes the vport again.
    async fn attach(&self, port: String, ifname: String) -> anyhow::Result<Reply> {
        netdev::check_name(&ifname, &self.datapath)?;
        let mut rec = self.attachments.lock().await;
        if let Some(a) = rec.record().get(&port)
            && a.vport != ifname
        {
            bail!(
                "port {port} is attached here as {} already: detach it first",
                a.vport
            );
        }
        if let Some(a) = rec.record().by_vport(&ifname)
            && a.port != port
        {
            bail!(
                "{ifname} is attached here as port {} already: detach it first",
                a.port
            );
        }
        // A binding of this vport to another port that no record of this agent holds.
        let snap = self.topo.load();
        if let Some(b) = snap
            .records
            .list::<PortBinding>()
            .find(|b| b.host == self.settings.host && b.vport == ifname && b.port != port)
        {
            bail!(
                "{ifname} is bound to port {} on this host in NSDB: detach that port first",
                b.port
            );
        }
        drop(snap);
        let Some(p) = self.nsdb.get::<Port>(&port).await? else {
            bail!("no port {port:?} in NSDB: create it (or its pod's namespace bridge) first");
        };
        netdev::check_attachable(&ifname, &self.datapath, self.settings.underlay_ip).await?;

        // Recorded before the vport exists, so whatever happens next a detach finds it.
        let recorded = rec.record().get(&port).is_none();
        if recorded {
            rec.insert(Attachment {
                cni: None,
                port: port.clone(),
                vport: ifname.clone(),
            })?;
        }
        let (port_no, created) = match self.add_vport(&ifname, VportType::Netdev).await {
            Ok(a) => a,
            Err(e) => {
                if recorded && let Err(re) = rec.remove(&port) {
                    warn!(
                        port,
                        error = format!("{re:#}"),
                        "cannot forget the failed attachment"
                    );
                }
                return Err(e);
            }
        };
        let binding = PortBinding {
            port: p.record.id.clone(),
            host: self.settings.host.clone(),
            vport: ifname.clone(),
        };
        if let Err(e) = self.nsdb.bind_port(&binding).await {
            let e = anyhow::Error::new(e).context(format!("binding port {port} to {ifname}"));
            return Err(
                match self
                    .roll_back(&mut rec, &port, &ifname, created, recorded)
                    .await
                {
                    Ok(()) => e,
                    Err(re) => e.context(format!("and undoing the attach failed: {re:#}")),
                },
            );
        }
        info!(port, ifname, port_no, "port attached");
        Ok(Reply::Attached {
            port,
            ifname,
            port_no,
        })
    }

    /// Undoes an attach whose binding failed: the vport if this attach added it, and the
    /// record if this attach made it. The record stays while the vport does.
    async fn roll_back(
        &self,
        rec: &mut Locked<'_>,
        port: &str,
        ifname: &str,
        created: bool,
        recorded: bool,
    ) -> anyhow::Result<()> {
        if created {
            self.remove_vport(ifname).await?;
        }
        if recorded {
            rec.remove(port)?;
        }
        info!(port, ifname, created, "attach undone");
        Ok(())
    }

    /// Adds vport `ifname` of type `kind` to the datapath (or finds it there) and tells the
    /// topology. Returns its port number and whether this call added it. The vport is known
    /// before any binding of it is written, so the topology compiled from the binding's
    /// update already has the port local.
    pub(crate) async fn add_vport(
        &self,
        ifname: &str,
        kind: VportType,
    ) -> anyhow::Result<(u32, bool)> {
        let (ifindex, pids, name) = (self.dp_ifindex, self.pids.clone(), ifname.to_owned());
        let (port_no, created) = tokio::task::spawn_blocking(move || {
            let mut d = Dpif::open()?;
            datapath::attach_vport(&mut d, ifindex, &name, kind, &pids)
        })
        .await??;
        if self.ports.insert(ifname, port_no) {
            let _ = self.local.send(LocalChange::Vport {
                name: ifname.to_owned(),
            });
        }
        Ok((port_no, created))
    }

    /// Deletes a pod's netdev vport (never the tunnel or the datapath's local port) and
    /// tells the topology.
    pub(crate) async fn remove_vport(&self, name: &str) -> anyhow::Result<()> {
        let ifindex = self.dp_ifindex;
        let n = name.to_owned();
        let removed = tokio::task::spawn_blocking(move || {
            let mut d = Dpif::open()?;
            datapath::detach_vport(&mut d, ifindex, &n)
        })
        .await??;
        if self.ports.remove(name).is_some() || removed {
            let _ = self.local.send(LocalChange::Vport {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Detaches `port`: removes this host's binding of it, and the vport this agent's
    /// record holds for it. The datapath is touched only through the record, so a binding
    /// naming any other device (the tunnel port, say) removes nothing but the binding.
    /// Detaching what is not attached succeeds.
    async fn detach(&self, port: String) -> anyhow::Result<Reply> {
        let mut rec = self.attachments.lock().await;
        let attached = rec.record().get(&port).cloned();
        let unbound = self
            .nsdb
            .unbind_port(&port, &self.settings.host, None)
            .await
            .with_context(|| format!("unbinding port {port}"))?;
        match &unbound {
            Unbind::Removed(b) if attached.is_none() => warn!(
                port,
                vport = %b.vport,
                "binding removed; no attachment of this agent holds its vport, so the datapath is left as it is"
            ),
            Unbind::NotOurs(b) => {
                info!(port, host = %b.host, vport = %b.vport, "the port is bound elsewhere; its binding stays")
            }
            _ => {}
        }
        if let Some(a) = &attached {
            self.remove_vport(&a.vport).await?;
            rec.remove(&port)?;
        }
        let was_attached = attached.is_some() || matches!(unbound, Unbind::Removed(_));
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
        sim::simulate_into(
            &snap.topo,
            &PacketContext::new(fields).remembering(&*self.affinity),
            &mut s,
        );
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
        // The snapshot first: the flow manager answers the count after the invalidation of
        // this generation (queued before the snapshot was published), so the generation
        // reported is one whose stale flows are already gone from the datapath.
        let snap = self.topo.load();
        let (tx, rx) = std::sync::mpsc::channel();
        self.flows
            .send(FlowEvent::Count(tx))
            .map_err(|_| anyhow::anyhow!("the flow manager is not running"))?;
        let flows = tokio::task::spawn_blocking(move || rx.recv()).await??;
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
