//! An upcall handler thread: receives misses on its own netlink socket, simulates each
//! against the current topology (read lock-free), installs the megaflow under its UFID,
//! executes the packet, sends the packets the simulation generated, and reports the flow
//! to the flow manager. Malformed upcalls and upcalls over a port's rate are counted and
//! dropped; nothing here panics on what the kernel sends.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use odp::dpif::{Dpif, FlowPut, PutMode};
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
    /// The flow manager's queue ([`crate::flows::channel`]).
    pub flows: SyncSender<FlowEvent>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    /// The per-port upcall rate limit, shared by all the handlers.
    pub limiter: SharedLimiter,
    /// Keep each flow's simulation trace.
    pub trace: bool,
    /// Session-affinity choices, recalled and recorded here, aged by the flow manager.
    pub affinity: Arc<Affinity>,
    /// The most upcalls handled as one batch (`--upcall-batch`, at most [`MAX_BATCH`]).
    pub batch: usize,
}

/// The most upcalls a handler takes before it talks to the kernel (OVS's `UPCALL_MAX_BATCH`).
pub const MAX_BATCH: usize = 64;

/// One handler: its sockets and the batch being handled.
#[derive(Debug)]
pub struct Handler {
    up: UpcallSocket,
    dp: Dpif,
    ctx: HandlerCtx,
    sim: Simulation,
    /// The batch's flows to put (the first `n_puts`, encoded into values kept from batch to
    /// batch), and what to report of each once it is in.
    puts: Vec<FlowPut>,
    n_puts: usize,
    installs: Vec<Installed>,
    /// The megaflow being put, built in place upcall after upcall.
    megaflow: odp::Flow,
    /// The batch's packets to execute, as ranges of `bytes`.
    execs: Vec<Exec>,
    /// What the kernel answered each put, then each execute, of the batch.
    outcomes: Vec<odp::dpif::Outcome>,
    /// The batch's encoded actions and generated packets, back to back: one buffer reused
    /// from batch to batch, so that queuing a packet allocates nothing once it has grown.
    bytes: Vec<u8>,
}

/// A packet of a batch to execute.
#[derive(Debug)]
struct Exec {
    /// The upcall it comes from, whose key it is executed with.
    upcall: usize,
    /// A packet the simulation generated, in `bytes`; `None` executes the upcall's own.
    packet: Option<Range<usize>>,
    /// Its encoded actions, in `bytes`.
    actions: Range<usize>,
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
            puts: Vec::with_capacity(MAX_BATCH),
            n_puts: 0,
            installs: Vec::with_capacity(MAX_BATCH),
            megaflow: odp::Flow::default(),
            execs: Vec::with_capacity(MAX_BATCH),
            outcomes: Vec::with_capacity(2 * MAX_BATCH),
            bytes: Vec::with_capacity(MAX_BATCH * 256),
        }
    }

    /// Runs until the stop flag is set. Upcalls are handled in batches, as ovs-vswitchd's
    /// handlers do: after the first one arrives, those already queued are taken too (up to
    /// the context's `batch`), and their flows and packets go to the kernel in one exchange.
    pub fn run(mut self) {
        let max = self.ctx.batch.clamp(1, MAX_BATCH);
        // Upcalls are received into the same values every time, reusing their buffers.
        let mut batch: Vec<Upcall> = (0..max).map(|_| Upcall::default()).collect();
        while !self.ctx.stop.load(Ordering::Relaxed) {
            let mut wait = WAKE;
            let mut n = 0;
            while n < max {
                match self.up.recv_timeout_into(wait, &mut batch[n]) {
                    Ok(true) => n += 1,
                    Ok(false) => break,
                    Err(e) => {
                        // A message the codec cannot read: count it and carry on.
                        self.ctx.metrics.upcalls.inc();
                        self.ctx.metrics.upcall_dropped("malformed");
                        debug!(error = %e, "unreadable upcall dropped");
                    }
                }
                // Only the first receive of a batch waits.
                wait = Duration::ZERO;
            }
            if n > 0 {
                self.handle_batch(&batch[..n]);
            }
        }
    }

    /// Handles one upcall.
    pub fn handle(&mut self, u: &Upcall) {
        self.handle_batch(std::slice::from_ref(u));
    }

    /// Handles a batch of upcalls: each is simulated, then every megaflow is installed and
    /// every packet executed in one exchange with the kernel, flows first, and the installed
    /// flows are reported to the flow manager.
    pub fn handle_batch(&mut self, batch: &[Upcall]) {
        let start = Instant::now();
        self.n_puts = 0;
        self.installs.clear();
        self.execs.clear();
        self.bytes.clear();
        for (i, u) in batch.iter().enumerate() {
            self.prepare(i, u, start);
        }
        if self.n_puts == 0 && self.execs.is_empty() {
            return;
        }
        let m = &self.ctx.metrics;
        let (execs, bytes) = (&self.execs, &self.bytes);
        let exec = |i: usize| {
            let e = &execs[i];
            let u = &batch[e.upcall];
            let packet = match &e.packet {
                Some(r) => &bytes[r.clone()],
                None => &u.packet[..],
            };
            (packet, &u.key[..], &bytes[e.actions.clone()])
        };
        self.outcomes.clear();
        match self.dp.put_and_execute_into(
            self.ctx.dp_ifindex,
            &self.puts[..self.n_puts],
            PutMode::Create,
            execs.len(),
            exec,
            &mut self.outcomes,
        ) {
            Ok(()) => {}
            Err(e) => {
                // Nothing of the batch is known to have reached the kernel.
                m.datapath_errors.inc();
                warn!(error = %e, upcalls = batch.len(), "a batch of flows and packets was refused");
                return;
            }
        };
        let (put_results, exec_results) = self.outcomes.split_at(self.n_puts);
        // Flows put whose report found the manager's queue full.
        let mut unreported = Vec::new();
        for (&r, inst) in put_results.iter().zip(self.installs.drain(..)) {
            match r {
                Ok(()) => {
                    m.flows_installed.inc();
                    let ufid = inst.ufid;
                    if let Err(TrySendError::Full(_)) =
                        self.ctx.flows.try_send(FlowEvent::Installed(inst))
                    {
                        unreported.push(odp::dpif::FlowId::ufid(ufid));
                    }
                }
                // Another handler installed the same megaflow first.
                Err(EEXIST) => {}
                Err(errno) => {
                    m.datapath_errors.inc();
                    warn!(errno, ufid = %crate::flows::ufid_text(inst.ufid), "the kernel refused a flow");
                }
            }
        }
        for r in exec_results {
            if let Err(errno) = *r {
                m.datapath_errors.inc();
                debug!(errno, "execute refused");
            }
        }
        if !unreported.is_empty() {
            // The manager is thousands of reports behind. A flow it does not know no
            // invalidation would find, so it does not stay: its next packet upcalls again.
            warn!(
                flows = unreported.len(),
                "the flow manager's queue is full; flows deleted"
            );
            match self.dp.flow_del_batch(self.ctx.dp_ifindex, &unreported) {
                Ok(results) => {
                    m.deleted("unreported", results.iter().filter(|r| r.is_ok()).count());
                }
                Err(e) => warn!(error = %e, "deleting unreported flows failed"),
            }
        }
        // Each upcall of the batch waited for the whole batch.
        let took = start.elapsed();
        for _ in batch {
            m.observe_handler(took);
        }
    }

    /// Simulates upcall `i` of a batch and queues its flow and its packets.
    fn prepare(&mut self, i: usize, u: &Upcall, start: Instant) {
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
            let flow = &mut self.megaflow;
            install::megaflow_into(&key, &fields, s, flow);
            let ufid = flow.ufid.unwrap_or_default();
            // Two upcalls of one batch can be for the same megaflow: it is put once.
            let queued = self
                .installs
                .iter()
                .any(|x| x.ufid == ufid && x.generation == snap.generation);
            if self.n_puts == self.puts.len() {
                self.puts.push(FlowPut::default());
            }
            match self.puts[self.n_puts].encode(flow) {
                Ok(()) if queued => {}
                Ok(()) => {
                    let kind = if in_port == snap.topo.tunnel_port() {
                        FlowKind::Tunnel
                    } else if matches!(s.verdict, Verdict::Drop(_)) {
                        FlowKind::Error
                    } else {
                        FlowKind::Normal
                    };
                    self.n_puts += 1;
                    self.installs.push(Installed {
                        ufid,
                        kind,
                        tags: s.tags.as_slice().into(),
                        generation: snap.generation,
                        trace: s.trace.clone(),
                    });
                }
                Err(e) => {
                    m.datapath_errors.inc();
                    warn!(error = %e, flow = %flow, "a flow cannot be encoded");
                }
            }
        }
        if !s.actions.is_empty() {
            match queue_exec(&mut self.bytes, None, &s.actions) {
                Ok((packet, actions)) => self.execs.push(Exec {
                    upcall: i,
                    packet,
                    actions,
                }),
                Err(e) => {
                    m.datapath_errors.inc();
                    warn!(error = %e, "actions cannot be encoded");
                }
            }
        }
        for em in &s.emit {
            let output = [odp::Action::Output(em.port)];
            if let Ok((packet, actions)) = queue_exec(&mut self.bytes, Some(&em.packet), &output) {
                self.execs.push(Exec {
                    upcall: i,
                    packet,
                    actions,
                });
            }
        }
    }
}

/// Appends `packet` (when given) and then `actions`, encoded, to a batch's `bytes`, and says
/// where each is. The actions start at a multiple of 4 bytes, since the attribute writer pads
/// to the buffer's length: after a 42-byte ARP reply, unaligned actions would begin with the
/// padding. On an error `bytes` is left as it was.
fn queue_exec(
    bytes: &mut Vec<u8>,
    packet: Option<&[u8]>,
    actions: &[odp::Action],
) -> odp::Result<(Option<Range<usize>>, Range<usize>)> {
    let start = bytes.len();
    let packet = packet.map(|p| {
        bytes.extend_from_slice(p);
        start..bytes.len()
    });
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let at = bytes.len();
    match odp::encode_actions(actions, bytes) {
        Ok(()) => Ok((packet, at..bytes.len())),
        Err(e) => {
            bytes.truncate(start);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::queue_exec;
    use odp::Action;

    /// Packets of every length and actions queued back to back in one buffer each come back
    /// as they went in, and reusing the buffer allocates nothing once it has grown.
    #[test]
    fn queued_packets_and_actions_decode_whatever_came_before_them() {
        let actions = [
            Action::Recirc(7),
            Action::Output(3),
            Action::Hash {
                alg: odp::action::HASH_ALG_L4,
                basis: 0,
            },
        ];
        let mut bytes = Vec::with_capacity(4096);
        let cap = bytes.capacity();
        for round in 0..2 {
            bytes.clear();
            let mut queued = Vec::new();
            for len in [42usize, 60, 61, 0, 1, 3, 1500] {
                let packet: Vec<u8> = (0..len).map(|i| i as u8).collect();
                queued.push((
                    len,
                    queue_exec(&mut bytes, Some(&packet), &actions).unwrap(),
                ));
                queued.push((0, queue_exec(&mut bytes, None, &actions[..1]).unwrap()));
            }
            for (len, (packet, at)) in queued {
                if let Some(p) = packet {
                    assert_eq!(p.len(), len);
                    assert!(bytes[p].iter().enumerate().all(|(i, b)| *b == i as u8));
                    assert_eq!(
                        odp::decode_actions(&bytes[at]).unwrap(),
                        actions,
                        "round {round}"
                    );
                } else {
                    assert_eq!(odp::decode_actions(&bytes[at]).unwrap(), actions[..1]);
                }
            }
            assert_eq!(
                bytes.capacity(),
                cap,
                "round {round}: the buffer did not grow"
            );
        }
    }

    /// Actions the kernel would refuse to take leave the buffer as it was.
    #[test]
    fn actions_that_cannot_be_encoded_leave_nothing_behind() {
        let mut bytes = vec![1, 2, 3];
        // A clone() whose nested list overflows the 16-bit attribute length.
        let huge = [
            Action::Output(2),
            Action::Clone(vec![Action::Output(1); 10_000]),
        ];
        assert!(queue_exec(&mut bytes, Some(&[9; 42]), &huge).is_err());
        assert_eq!(bytes, [1, 2, 3]);
    }
}
