//! An upcall handler thread: receives misses on its own netlink socket, simulates each
//! against the current topology (read lock-free), installs the megaflow under its UFID,
//! executes the packet, sends the packets the simulation generated, and reports the flow
//! to the flow manager. Malformed upcalls and upcalls over a port's rate are counted and
//! dropped; nothing here panics on what the kernel sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use odp::dpif::{Dpif, FlowPut, PutMode};
use odp::sock::SockError;
use odp::upcall::{Upcall, UpcallKind, UpcallSocket};
use sim::{DropReason, Fields, PacketContext, Simulation, Verdict};
use tracing::{debug, warn};

use crate::affinity::Affinity;
use crate::flows::{FlowEvent, Installed};
use crate::flowtable::FlowKind;
use crate::install;
use crate::metrics::Metrics;
use crate::ratelimit::SharedLimiter;
use crate::topo::SharedTopo;

/// `EEXIST`: another handler installed the same megaflow first.
const EEXIST: i32 = 17;

/// How long a handler sleeps in the kernel for an upcall before it looks at the stop flag: the
/// only wakeups of an idle handler.
const WAKE: Duration = Duration::from_millis(500);

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct HandlerCtx {
    pub dp_ifindex: i32,
    pub topo: SharedTopo,
    pub flows: Sender<FlowEvent>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    /// The per-port upcall rate limit, shared by all the handlers.
    pub limiter: SharedLimiter,
    /// Keep each flow's simulation trace.
    pub trace: bool,
    /// Session-affinity choices, recalled and recorded here, aged by the flow manager.
    pub affinity: Arc<Affinity>,
}

/// One handler: its sockets and reusable buffers.
#[derive(Debug)]
pub struct Handler {
    up: UpcallSocket,
    dp: Dpif,
    ctx: HandlerCtx,
    sim: Simulation,
    actions: Vec<u8>,
}

impl Handler {
    /// A handler reading `up` and writing through `dp`.
    pub fn new(up: UpcallSocket, dp: Dpif, ctx: HandlerCtx) -> Handler {
        Handler {
            sim: if ctx.trace {
                Simulation::traced()
            } else {
                Simulation::new()
            },
            up,
            dp,
            ctx,
            actions: Vec::with_capacity(256),
        }
    }

    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        while !self.ctx.stop.load(Ordering::Relaxed) {
            match self.up.recv_timeout(WAKE) {
                Ok(Some(u)) => self.handle(&u),
                Ok(None) => {}
                Err(e) => {
                    // A message the codec cannot read: count it and carry on.
                    self.ctx.metrics.upcalls.inc();
                    self.ctx.metrics.upcall_dropped("malformed");
                    debug!(error = %e, "unreadable upcall dropped");
                }
            }
        }
    }

    /// Handles one upcall.
    pub fn handle(&mut self, u: &Upcall) {
        let start = Instant::now();
        let m = &self.ctx.metrics;
        m.upcalls.inc();
        if u.kind != UpcallKind::Miss {
            m.upcall_dropped("not_miss");
            return;
        }
        let key = match odp::decode_key(&u.key) {
            Ok(k) if !u.packet.is_empty() => k,
            Ok(_) => {
                m.upcall_dropped("malformed");
                return;
            }
            Err(e) => {
                m.upcall_dropped("malformed");
                debug!(error = %e, "upcall with an undecodable key dropped");
                return;
            }
        };
        let in_port = key.in_port.unwrap_or(u32::MAX);
        if !self.ctx.limiter.admit(in_port, start) {
            m.upcall_dropped("rate_limited");
            return;
        }
        let snap = self.ctx.topo.load();
        let fields = Fields::from_key(&key);
        sim::simulate_into(
            &snap.topo,
            &PacketContext::with_packet(fields, &u.packet).remembering(&*self.ctx.affinity),
            &mut self.sim,
        );
        m.simulations.inc();
        let s = &self.sim;
        if let Some(c) = &s.affinity
            && !self.ctx.affinity.record(c, crate::flows::now_ms())
        {
            m.affinity_full.inc();
        }
        if s.verdict == Verdict::Drop(DropReason::UnknownTunnelKey) {
            m.tunnel_drops.inc();
        }
        if s.install {
            let flow = install::megaflow(&key, &fields, s);
            let ufid = flow.ufid.unwrap_or_default();
            match FlowPut::from_flow(&flow) {
                Ok(put) => match self.dp.flow_put(self.ctx.dp_ifindex, &put, PutMode::Create) {
                    Ok(()) => {
                        m.flows_installed.inc();
                        let kind = if in_port == snap.topo.tunnel_port() {
                            FlowKind::Tunnel
                        } else if matches!(s.verdict, Verdict::Drop(_)) {
                            FlowKind::Error
                        } else {
                            FlowKind::Normal
                        };
                        let _ = self
                            .ctx
                            .flows
                            .send(FlowEvent::Installed(Box::new(Installed {
                                ufid,
                                kind,
                                tags: s.tags.clone(),
                                generation: snap.generation,
                                flow,
                                trace: s.trace.clone(),
                            })));
                    }
                    Err(SockError::Kernel { errno, .. }) if errno == EEXIST => {}
                    Err(e) => {
                        m.datapath_errors.inc();
                        warn!(error = %e, flow = %flow, "the kernel refused a flow");
                    }
                },
                Err(e) => {
                    m.datapath_errors.inc();
                    warn!(error = %e, flow = %flow, "a flow cannot be encoded");
                }
            }
        }
        if !s.actions.is_empty() {
            self.actions.clear();
            match odp::encode_actions(&s.actions, &mut self.actions) {
                Ok(()) => {
                    if let Err(e) =
                        self.dp
                            .execute(self.ctx.dp_ifindex, &u.packet, &u.key, &self.actions)
                    {
                        m.datapath_errors.inc();
                        debug!(error = %e, "execute refused");
                    }
                }
                Err(e) => {
                    m.datapath_errors.inc();
                    warn!(error = %e, "actions cannot be encoded");
                }
            }
        }
        for em in &s.emit {
            self.actions.clear();
            if odp::encode_actions(&[odp::Action::Output(em.port)], &mut self.actions).is_ok()
                && let Err(e) =
                    self.dp
                        .execute(self.ctx.dp_ifindex, &em.packet, &u.key, &self.actions)
            {
                m.datapath_errors.inc();
                debug!(error = %e, port = em.port, "generated packet refused");
            }
        }
        m.observe_handler(start.elapsed());
    }
}
