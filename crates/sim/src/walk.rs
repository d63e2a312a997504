//! The walk: one packet through ports, bridges, routers, load balancers and rule chains,
//! recording every header bit it reads (the megaflow mask) and every object it touches (tags).
//!
//! # Passes and conntrack
//! A packet may cross the datapath several times, separated by `ct(...)` and `recirc(id)`:
//! - `recirc_id == 0`: the first pass. When the walk needs connection state (a rule that
//!   matches on it, a VIP, a DNAT rule, or an ingress port whose chains are stateful or that
//!   is a NAT uplink), it stops and emits `ct(zone=<ingress port zone>,nat),recirc(1)`. The
//!   `nat` flag applies the reverse translation of existing connections before anything else.
//! - [`RECIRC_CT`]: the walk restarts from the ingress port with `ct_state` known. At the end,
//!   a `+new` connection is committed in the ingress zone.
//! - [`RECIRC_NAT`]: after a VIP or DNAT rule chose a destination, the walk emitted
//!   `ct(commit,zone,nat(dst=...)),recirc(2)`; it restarts with the translated header.
//! - [`vip_recirc`] of a VIP whose member the datapath chooses: after the tracked pass's
//!   `hash(l4(0))`, one flow per bucket matches only the id, the ingress port and `dp_hash`,
//!   and emits `ct(commit,zone,nat(dst=member)),recirc(2)`. A sender that may be a member
//!   (a hairpin) and a VIP whose id another shares take [`RECIRC_LB`] instead, where the walk
//!   runs again from the ingress port.
//! - [`RECIRC_DELIVERY`]` | key`: the stage of the destination port with that tunnel key,
//!   after `ct(zone=<its zone>,nat)`. It runs that port's outbound chain, commits new
//!   connections (with source NAT on a SNAT uplink) and outputs. Packets arriving from the
//!   tunnel start this stage; local deliveries end their walk in it.
//!
//! Every port's own host thus passes both directions of the port's traffic through the
//! port's zone: replies at ingress, forward traffic at delivery (DESIGN.md decision 4).
//! One exception saves a `ct` and a recirculation per packet: a port whose own chains,
//! policies and NAT need no connection state gets the forward direction of a connection
//! translated in the zone it came through (a VIP's or a DNAT rule's, `+dnat-rpl`) without
//! its own zone, which holds nothing to undo for it. Its replies take the client's zone at
//! the client's delivery, as before.
//!
//! # Hairpin
//! A pod that reaches a VIP and is picked itself would receive its own packet from its own
//! address, which it drops. Such a connection's destination NAT is committed in the port's
//! [`crate::hairpin_zone`] and a source NAT to the VIP in the port's own zone (the kernel NATs
//! a packet once per zone), and the packet goes straight back out of the port, from the MAC
//! it was sent to. The pod's reply, to the VIP at the connection's port, takes
//! `ct(zone=<port zone>,nat)` at ingress (any packet to a VIP address does), which undoes the
//! source NAT and leaves it addressed to the pod itself (`+rpl+dnat`); the tracked pass sends
//! it through `ct(zone=<hairpin zone>,nat)`, which undoes the destination NAT, and back out
//! from the VIP. What the walk judges before the VIP stands (the port's and devices'
//! chains); nothing after it does: a pod is not isolated from itself. IPv4 and IPv6 alike.
//!
//! # Flooding policy
//! Unknown unicast and broadcast are sent only to the bridge's exterior ports bound to this
//! host (never into the tunnel, never to routers). ARP requests for addresses the bridge
//! knows are answered by the simulation; other ARP requests are flooded locally. Remote
//! endpoints are always known to NSDB, so nothing needs flooding across hosts. Flooded copies
//! pass the bridge's outbound chain and each port's outbound chain; rules that match on
//! connection state do not match flooded copies.
//!
//! # Generated packets
//! ARP replies, ICMP echo replies, ICMP errors (time exceeded, net/host/port unreachable)
//! and TCP resets go out of the datapath port the packet came in on ([`crate::Emit`]). A
//! result that generates packets is never installed as a flow ([`crate::Simulation::install`]
//! is false): every such packet must reach userspace to be answered.
//!
//! # IPv6
//! Neighbour solicitations (multicast, for the solicited-node address) for addresses the
//! bridge knows are answered with a generated advertisement, as ARP requests are; those for
//! unknown targets, and duplicate address detection (unspecified source), follow the flooding
//! policy. Routers route IPv6 with their own LPM table (ECMP by the same 5-tuple hash),
//! decrement the hop limit, rewrite MACs (next-hop MAC from the bridge's known addresses),
//! never forward link-local sources, answer unicast solicitations and echo requests for
//! their port addresses, and send
//! ICMPv6 time exceeded and destination unreachable (no route: code 0, unknown next hop:
//! code 3). A reject answers IPv6 with ICMPv6 port unreachable.
//!
//! Load balancer VIPs may be IPv6 addresses: the same passes, with `ct(nat(dst=<IPv6>))`.
//!
//! # Not modelled
//! IPv6 SNAT and DNAT rules; router advertisements (addresses are assigned by the CNI, not SLAAC);
//! a reject in a destination port's delivery stage drops without a reply.

use nsdb::PodAttachMode;

use crate::acl::{ActC, AddrSet, CtC, NetC, RuleC};
use crate::fields::{Fields, PacketContext, VLAN_CFI, ct, ethertype, icmp6, proto};
use crate::hash::{five_tuple, mix64};
use crate::lpm::AddrBits;
use crate::packets;
use crate::result::{Delivery, DropReason, Emit, Simulation, Verdict};
use crate::tag::Tag;
use crate::topology::{Dev, GLOBAL, GroupC, Idx, Loc, PKind, Target, Topology};

/// At most this many devices (bridges and routers) per walk, as in MidoNet.
pub const MAX_DEVICES: u32 = 12;
/// At most this many nested chain jumps.
pub const MAX_JUMPS: usize = 16;
/// At most this many rule evaluations per walk.
pub const MAX_RULE_STEPS: u32 = 20_000;

/// Recirculation id of the pass after the ingress port's conntrack lookup.
pub const RECIRC_CT: u32 = 1;
/// Recirculation id of the pass after a VIP or DNAT translation.
pub const RECIRC_NAT: u32 = 2;
/// Recirculation id of the pass after a VIP's `hash(l4(0))` when the VIP has no id of its
/// own ([`vip_recirc`]) or the sender may be one of its members: the walk runs again from
/// the ingress port, finds the VIP by the packet's headers, and its flows match the bucket
/// (`dp_hash`) and translate to the bucket's member.
pub const RECIRC_LB: u32 = 3;
/// Flag of a VIP's own bucket-stage recirculation id; the low 24 bits come from the VIP's
/// key ([`vip_recirc`]).
pub const RECIRC_VIP: u32 = 0x2000_0000;
/// Flag of the delivery stage's recirculation id; the low 24 bits are the port's tunnel key.
pub const RECIRC_DELIVERY: u32 = 0x4000_0000;

/// The bucket-stage recirculation id of the VIP whose key ([`Tag::vip_key`]) is `key`. Its
/// flows match only this id, the ingress port and the bucket: the tracked pass that sent
/// the packet there already found the VIP and made sure the sender is none of its members.
/// Stable across restarts and snapshots; an id that two VIPs of one snapshot share is used
/// by neither.
pub fn vip_recirc(key: u64) -> u32 {
    RECIRC_VIP | (key as u32 & 0x00ff_ffff)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    First,
    Tracked,
    /// The tracked pass again, with the connection's hash in `dp_hash`.
    Bucket,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CtMode {
    /// State known (or obtainable by stopping the pass).
    Normal,
    /// Flooded copies: rules on state never match.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    NeedCt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Accept,
    Drop,
    Reject,
}

/// How a chain ended: by a verdict, or by returning from its top (or reaching its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accept,
    Drop,
    Reject,
    Returned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Enter the device of this port through it.
    Ingress(Idx),
    /// Leave a device through this port.
    Egress(Idx),
    Stop,
}

type R<T> = Result<T, Abort>;

/// Simulates one packet into `sim`, reusing its buffers.
pub fn simulate_into(t: &Topology, ctx: &PacketContext<'_>, sim: &mut Simulation) {
    sim.reset();
    let mut w = Walker {
        t,
        pkt: ctx.fields,
        orig: ctx.fields,
        bytes: ctx.packet,
        memory: ctx.affinity,
        read: Fields::default(),
        wrote_eth: false,
        wrote_ttl: false,
        pop_vlan: false,
        sim,
        devices: 0,
        rule_steps: 0,
        in_port: Idx::MAX,
        pass: Pass::First,
        ct_mode: CtMode::Normal,
    };
    w.run();
    let mut mask = w.read;
    let orig = w.orig;
    if sim.actions.iter().any(|a| matches!(a, odp::Action::Ct(_))) {
        // The kernel accepts ct() only on a flow that matches an IP Ethertype, wherever in
        // the walk the conntrack step came from.
        mask.eth_type = !0;
    }
    if orig.is_ipv4() && (mask.ipv4_src | mask.ipv4_dst != 0 || mask.ip_proto | mask.ip_ttl != 0) {
        // As OVS does: an IPv4 match also matches the fragment type.
        mask.ip_frag = !0;
    }
    if orig.is_ipv6() && (mask.ipv6_src | mask.ipv6_dst != 0 || mask.ip_proto | mask.ip_ttl != 0) {
        // Likewise for IPv6: later fragments carry no upper-layer header.
        mask.ip_frag = !0;
    }
    sim.fields_mask = mask;
    crate::odpconv::mask_into(&orig, &mask, &mut sim.mask);
    sim.tags.sort_unstable();
    sim.tags.dedup();
    if !sim.emit.is_empty() {
        sim.install = false;
    }
}

/// Simulates one packet into a fresh result.
pub fn simulate(t: &Topology, ctx: &PacketContext<'_>) -> Simulation {
    let mut s = Simulation::new();
    simulate_into(t, ctx, &mut s);
    s
}

/// Whether `addr` is in `net/len`, and how many leading bits decide it: the prefix for a
/// hit, the bits up to the first that differs for a miss.
fn prefix_test(addr: u128, net: u128, len: u8) -> (bool, u8) {
    let v = addr & u128::prefix_mask(len);
    if v == net {
        (true, len)
    } else {
        (false, v.common_prefix(net).saturating_add(1).min(len))
    }
}

struct Walker<'t, 's> {
    t: &'t Topology,
    pkt: Fields,
    orig: Fields,
    bytes: &'t [u8],
    memory: Option<&'t dyn crate::AffinityMemory>,
    read: Fields,
    wrote_eth: bool,
    wrote_ttl: bool,
    pop_vlan: bool,
    sim: &'s mut Simulation,
    devices: u32,
    rule_steps: u32,
    in_port: Idx,
    pass: Pass,
    ct_mode: CtMode,
}

macro_rules! note {
    ($w:expr, $($arg:tt)*) => {
        if $w.sim.trace_enabled {
            $w.sim.note(format_args!($($arg)*));
        }
    };
}

fn mac_str(m: [u8; 6]) -> nsdb::MacAddr {
    nsdb::MacAddr(m)
}

impl<'t> Walker<'t, '_> {
    // ---- reads: each records the bits it looked at ----
    fn r_eth_dst(&mut self) -> [u8; 6] {
        if !self.wrote_eth {
            self.read.eth_dst = [0xff; 6];
        }
        self.pkt.eth_dst
    }
    fn r_eth_type(&mut self) -> u16 {
        self.read.eth_type = !0;
        self.pkt.eth_type
    }
    /// Whether the packet is IPv4 or IPv6 (reading the Ethertype).
    fn r_is_ip(&mut self) -> bool {
        matches!(self.r_eth_type(), 0x0800 | 0x86dd)
    }
    fn r_vlan(&mut self) -> u16 {
        self.read.vlan_tci = !0;
        self.pkt.vlan_tci
    }
    fn r_proto(&mut self) -> u8 {
        self.read.ip_proto = !0;
        self.pkt.ip_proto
    }
    fn r_ttl(&mut self) -> u8 {
        if !self.wrote_ttl {
            self.read.ip_ttl = !0;
        }
        self.pkt.ip_ttl
    }
    fn r_frag(&mut self) -> u8 {
        self.read.ip_frag = !0;
        self.pkt.ip_frag
    }
    fn r_tp_src(&mut self) -> u16 {
        self.read.tp_src = !0;
        self.pkt.tp_src
    }
    fn r_tp_dst(&mut self) -> u16 {
        self.read.tp_dst = !0;
        self.pkt.tp_dst
    }
    fn r_dst_bits(&mut self, bits: u8) -> u32 {
        self.read.ipv4_dst |= u32::prefix_mask(bits);
        self.pkt.ipv4_dst
    }
    fn r_src_bits(&mut self, bits: u8) -> u32 {
        self.read.ipv4_src |= u32::prefix_mask(bits);
        self.pkt.ipv4_src
    }
    fn r_dst6_bits(&mut self, bits: u8) -> u128 {
        self.read.ipv6_dst |= u128::prefix_mask(bits);
        self.pkt.ipv6_dst
    }
    fn r_src6_bits(&mut self, bits: u8) -> u128 {
        self.read.ipv6_src |= u128::prefix_mask(bits);
        self.pkt.ipv6_src
    }
    /// The target of a neighbour solicitation, if the packet is one the datapath parsed
    /// (ICMPv6 type 135, code 0, not a later fragment). Reads what it decides on.
    fn r_ns_target(&mut self) -> Option<u128> {
        if self.r_proto() != proto::ICMPV6 || self.r_frag() == 2 || self.r_tp_src() != icmp6::NS {
            return None;
        }
        if self.r_tp_dst() != 0 {
            return None;
        }
        self.read.nd_target = !0;
        Some(self.pkt.nd_target)
    }
    /// Whether the destination is in `net/len`, reading only the bits that decide it.
    fn dst6_in(&mut self, net: u128, len: u8) -> bool {
        let (hit, bits) = prefix_test(self.pkt.ipv6_dst, net, len);
        self.r_dst6_bits(bits);
        hit
    }
    /// Whether the source is in `net/len`, reading only the bits that decide it.
    fn src6_in(&mut self, net: u128, len: u8) -> bool {
        let (hit, bits) = prefix_test(self.pkt.ipv6_src, net, len);
        self.r_src6_bits(bits);
        hit
    }
    fn r_ct(&mut self, bits: u32) -> u32 {
        self.read.ct_state |= bits;
        self.pkt.ct_state
    }
    fn tag(&mut self, t: Tag) {
        self.sim.tags.push(t);
    }
    fn stop(&mut self, v: Verdict) -> Next {
        self.sim.verdict = v;
        Next::Stop
    }
    fn drop_(&mut self, why: DropReason) -> Next {
        note!(self, "drop: {why:?}");
        self.sim.actions.clear();
        self.stop(Verdict::Drop(why))
    }
    fn ct_tracked(&self) -> bool {
        self.pass != Pass::First
    }
    fn in_zone(&self) -> u16 {
        self.t.ports[self.in_port as usize].zone
    }
    fn in_dp(&self) -> u32 {
        self.orig.in_port
    }

    fn run(&mut self) {
        self.read.recirc_id = !0;
        let f = self.pkt;
        if f.recirc_id & RECIRC_DELIVERY != 0 {
            self.delivery_pass(f.recirc_id & 0x00ff_ffff);
            return;
        }
        self.read.in_port = !0;
        if f.in_port == self.t.tunnel_port {
            if f.recirc_id != 0 {
                self.drop_(DropReason::UnknownRecirc);
                return;
            }
            self.read.tun_id = !0;
            // The trace bit (bit 23) travels in the key but does not name the port.
            let key = nsdb::tunnel_key::without_trace((f.tun_id & 0x00ff_ffff) as u32);
            self.tunnel_ingress(key, f.tun_id > 0x00ff_ffff);
            return;
        }
        let Some(&p) = self.t.port_by_dp.get(&f.in_port) else {
            note!(
                self,
                "datapath port {} is not a known local port",
                f.in_port
            );
            // Nothing names this port yet, so no tag could ever remove a drop flow: the
            // port's binding may simply not have reached this snapshot. Do not install.
            self.sim.install = false;
            self.drop_(DropReason::UnknownInPort);
            return;
        };
        self.pass = match f.recirc_id {
            0 => Pass::First,
            RECIRC_CT => Pass::Tracked,
            RECIRC_LB => Pass::Bucket,
            RECIRC_NAT => Pass::Nat,
            id if id & RECIRC_VIP != 0 => match self.t.vip_by_recirc.get(&id) {
                Some(&v) => {
                    self.in_port = p;
                    self.bucket_stage(v);
                    return;
                }
                // The id is shared now, or its VIP is gone: find the VIP by the headers.
                None => Pass::Bucket,
            },
            _ => {
                self.drop_(DropReason::UnknownRecirc);
                return;
            }
        };
        self.in_port = p;
        match self.walk(p) {
            Ok(()) => {}
            Err(Abort::NeedCt) => {
                // ct() is valid only on a flow that matches an IP Ethertype.
                self.read.eth_type = !0;
                let zone = self.in_zone();
                note!(self, "conntrack needed: ct(zone={zone},nat), recirculate");
                self.sim.actions.clear();
                self.sim.actions.push(crate::odpconv::ct_lookup(zone));
                self.sim.actions.push(odp::Action::Recirc(RECIRC_CT));
                self.sim.emit.clear();
                self.sim.verdict = Verdict::Recirculate;
            }
        }
    }

    /// The ingress walk from exterior/uplink port `p`.
    fn walk(&mut self, p: Idx) -> R<()> {
        let port = &self.t.ports[p as usize];
        note!(self, "ingress port {} (pass {:?})", port.id, self.pass);
        if port.ct_ingress && !self.ct_tracked() {
            self.tag(port.tag);
            // Conntrack applies to IP only (the kernel refuses ct() on a flow that does not
            // match an IP Ethertype); ARP and the rest take the walk untracked.
            if self.r_is_ip() {
                return Err(Abort::NeedCt);
            }
        }
        let mut next = Next::Ingress(p);
        loop {
            next = match next {
                Next::Stop => return Ok(()),
                Next::Ingress(q) => self.port_ingress(q)?,
                Next::Egress(q) => self.port_egress(q)?,
            };
        }
    }

    /// A packet enters the device of port `p` through `p`.
    fn port_ingress(&mut self, p: Idx) -> R<Next> {
        let t = self.t;
        let port = &t.ports[p as usize];
        self.tag(port.tag);
        if !port.admin_up {
            note!(self, "port {} is down", port.id);
            return Ok(self.drop_(DropReason::PortDown));
        }
        if let Some(c) = port.in_chain {
            match self.chain(c, &port.id)? {
                Decision::Accept => {}
                Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                Decision::Reject => return Ok(self.reject()),
            }
        }
        if p == self.in_port
            && self.devices == 0
            && matches!(self.pass, Pass::Tracked | Pass::Bucket)
            && !self.t.vips.is_empty()
            && let Some(n) = self.hairpin_reply(p)
        {
            return Ok(n);
        }
        // Global VIPs apply as soon as the packet enters the virtual network.
        if p == self.in_port
            && self.devices == 0
            && self.t.has_global_vips
            && let Some(n) = self.try_nat(GLOBAL)?
        {
            return Ok(n);
        }
        self.devices += 1;
        if self.devices > MAX_DEVICES {
            note!(self, "more than {MAX_DEVICES} devices: loop");
            return Ok(self.drop_(DropReason::LoopDetected));
        }
        match port.dev {
            Dev::Bridge(b) => self.bridge(b, p),
            Dev::Router(r) => self.router(r, p),
        }
    }

    /// A packet leaves a device through port `q`.
    fn port_egress(&mut self, q: Idx) -> R<Next> {
        let t = self.t;
        let port = &t.ports[q as usize];
        self.tag(port.tag);
        if !port.admin_up {
            note!(self, "port {} is down", port.id);
            return Ok(self.drop_(DropReason::PortDown));
        }
        match port.kind {
            PKind::Interior(peer) => {
                if let Some(c) = port.out_chain {
                    match self.chain(c, &port.id)? {
                        Decision::Accept => {}
                        Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                        Decision::Reject => return Ok(self.reject()),
                    }
                }
                note!(
                    self,
                    "port {} -> peer {}",
                    port.id,
                    t.ports[peer as usize].id
                );
                Ok(Next::Ingress(peer))
            }
            PKind::Exterior | PKind::Uplink => Ok(self.output_to(q)),
        }
    }

    // ---- chains ----

    /// A chain's decision, where returning from the chain (or its end) accepts.
    fn chain(&mut self, top: Idx, owner: &str) -> R<Decision> {
        Ok(match self.chain_outcome(top, owner)? {
            Outcome::Accept | Outcome::Returned => Decision::Accept,
            Outcome::Drop => Decision::Drop,
            Outcome::Reject => Decision::Reject,
        })
    }

    /// The verdict of the chains attached to pod port `p` by selector, for traffic delivered
    /// to it (`ingress`) or sent by it. Filter chains must all let the packet on; if any
    /// allow-list (NetworkPolicy) chain is attached, the pod is isolated and the packet
    /// passes only as a connection already allowed, as traffic from the pod's own node
    /// (ingress), or when one of those chains accepts it.
    fn pod_verdict(&mut self, p: Idx, ingress: bool) -> R<Decision> {
        let t = self.t;
        let port = &t.ports[p as usize];
        let list = if ingress { &port.pod_in } else { &port.pod_out };
        if list.is_empty() || !self.r_is_ip() {
            return Ok(Decision::Accept);
        }
        let mut isolated = false;
        for &(c, mode) in list {
            match mode {
                PodAttachMode::Filter => match self.chain(c, &port.id)? {
                    Decision::Accept => {}
                    d => return Ok(d),
                },
                PodAttachMode::Allow => isolated = true,
            }
        }
        if !isolated {
            return Ok(Decision::Accept);
        }
        if self.ct_mode == CtMode::Normal && self.ct_tracked() {
            let st = self.r_ct(ct::NEW | ct::ESTABLISHED | ct::RELATED);
            if st & ct::NEW == 0 && st & (ct::ESTABLISHED | ct::RELATED) != 0 {
                note!(self, "  pod {}: a connection already allowed", port.id);
                return Ok(Decision::Accept);
            }
        }
        if ingress && self.sent_by_own_node() {
            note!(self, "  pod {}: from its own node", port.id);
            return Ok(Decision::Accept);
        }
        for &(c, mode) in list {
            if mode == PodAttachMode::Allow && self.chain_outcome(c, &port.id)? == Outcome::Accept {
                return Ok(Decision::Accept);
            }
        }
        note!(
            self,
            "  pod {} is isolated for {} and no policy allows this",
            port.id,
            if ingress { "ingress" } else { "egress" }
        );
        Ok(Decision::Drop)
    }

    /// Whether the source is one of this host's own node ports.
    fn sent_by_own_node(&mut self) -> bool {
        let t = self.t;
        if self.pkt.is_ipv4() {
            !t.node_v4.is_empty() && {
                self.r_src_bits(32);
                t.node_v4.binary_search(&self.pkt.ipv4_src).is_ok()
            }
        } else {
            !t.node_v6.is_empty() && {
                self.read.ipv6_src = !0;
                t.node_v6.binary_search(&self.pkt.ipv6_src).is_ok()
            }
        }
    }

    /// Whether the source (or destination) address is in `set`: the whole address is read.
    fn in_set(&mut self, set: &AddrSet, src: bool) -> bool {
        if self.pkt.is_ipv4() {
            if set.v4.is_empty() {
                return false;
            }
            let v = if src {
                self.r_src_bits(32);
                self.pkt.ipv4_src
            } else {
                self.r_dst_bits(32);
                self.pkt.ipv4_dst
            };
            set.v4.binary_search(&v).is_ok()
        } else {
            if set.v6.is_empty() {
                return false;
            }
            let v = if src {
                self.read.ipv6_src = !0;
                self.pkt.ipv6_src
            } else {
                self.read.ipv6_dst = !0;
                self.pkt.ipv6_dst
            };
            set.v6.binary_search(&v).is_ok()
        }
    }

    /// Whether the destination port is the destination pod's container port `name`.
    fn named_port_matches(&mut self, name: &str) -> bool {
        let t = self.t;
        let p = self.r_proto();
        if !matches!(p, proto::TCP | proto::UDP | proto::SCTP) || self.r_frag() == 2 {
            return false;
        }
        let pod = if self.pkt.is_ipv4() {
            self.r_dst_bits(32);
            t.pod_by_v4.get(&self.pkt.ipv4_dst)
        } else {
            self.read.ipv6_dst = !0;
            t.pod_by_v6.get(&self.pkt.ipv6_dst)
        };
        let Some(&pod) = pod else {
            return false;
        };
        let dport = self.r_tp_dst();
        t.ports[pod as usize]
            .named_ports
            .iter()
            .any(|(n, pr, port)| n == name && *pr == p && *port == dport)
    }

    fn chain_outcome(&mut self, top: Idx, owner: &str) -> R<Outcome> {
        let t = self.t;
        // Rule chains filter IP traffic: ARP and other non-IP frames pass them, as
        // Kubernetes NetworkPolicy and OVN ACLs leave address resolution alone, so a
        // default-drop policy cannot cut its own pods off their neighbours.
        if !self.r_is_ip() {
            note!(
                self,
                "  chain {} (of {owner}): not IP, passes",
                t.chains[top as usize].id
            );
            return Ok(Outcome::Accept);
        }
        let mut stack: [(Idx, u32); MAX_JUMPS] = [(0, 0); MAX_JUMPS];
        let mut sp = 0usize;
        let (mut c, mut i) = (top, 0u32);
        self.tag(t.chains[c as usize].tag);
        note!(self, "  chain {} (of {owner})", t.chains[c as usize].id);
        loop {
            let chain = &t.chains[c as usize];
            let (action, rule_id) = if (i as usize) < chain.rules.len() {
                let rule = &chain.rules[i as usize];
                i += 1;
                self.rule_steps += 1;
                if self.rule_steps > MAX_RULE_STEPS {
                    note!(self, "  rule budget exhausted");
                    return Ok(Outcome::Drop);
                }
                if !self.rule_matches(rule)? {
                    continue;
                }
                (rule.action, rule.id.as_str())
            } else {
                (chain.default, "<default>")
            };
            note!(self, "    rule {rule_id}: {action:?}");
            let at_end = rule_id == "<default>";
            match action {
                ActC::Accept => return Ok(Outcome::Accept),
                ActC::Drop => return Ok(Outcome::Drop),
                ActC::Reject => return Ok(Outcome::Reject),
                ActC::Continue if !at_end => {}
                ActC::Continue | ActC::Return => loop {
                    // Back to the caller; a caller whose default action jumped is at its
                    // end, so keep returning.
                    if sp == 0 {
                        return Ok(Outcome::Returned);
                    }
                    sp -= 1;
                    (c, i) = stack[sp];
                    if i != u32::MAX {
                        break;
                    }
                },
                ActC::Jump(target) => {
                    if sp == MAX_JUMPS {
                        note!(self, "  jump depth exceeded");
                        return Ok(Outcome::Drop);
                    }
                    stack[sp] = (c, if at_end { u32::MAX } else { i });
                    sp += 1;
                    c = target;
                    i = 0;
                    self.tag(t.chains[c as usize].tag);
                    note!(self, "  jump to chain {}", t.chains[c as usize].id);
                }
            }
        }
    }

    /// Whether the source (or destination) address is in `n`. A match needs the prefix's
    /// bits; a mismatch needs only the bits up to the first that differs, so packets far
    /// from the prefix share one megaflow.
    fn net_match(&mut self, n: NetC, src: bool) -> bool {
        match n {
            NetC::V4(net, len) => {
                if !self.pkt.is_ipv4() {
                    return false;
                }
                let v = if src {
                    self.pkt.ipv4_src
                } else {
                    self.pkt.ipv4_dst
                };
                let m = u32::prefix_mask(len);
                let hit = v & m == net;
                let bits = if hit {
                    len
                } else {
                    (v & m).common_prefix(net).saturating_add(1).min(len)
                };
                if src {
                    self.r_src_bits(bits);
                } else {
                    self.r_dst_bits(bits);
                }
                hit
            }
            NetC::V6(net, len) => {
                if self.pkt.eth_type != ethertype::IPV6 {
                    return false;
                }
                let v = if src {
                    self.pkt.ipv6_src
                } else {
                    self.pkt.ipv6_dst
                };
                let m = u128::prefix_mask(len);
                let hit = v & m == net;
                let bits = if hit {
                    len
                } else {
                    (v & m).common_prefix(net).saturating_add(1).min(len)
                };
                let read = u128::prefix_mask(bits);
                if src {
                    self.read.ipv6_src |= read;
                } else {
                    self.read.ipv6_dst |= read;
                }
                hit
            }
        }
    }

    fn rule_matches(&mut self, r: &RuleC) -> R<bool> {
        if r.needs_ip() {
            let et = self.r_eth_type();
            let v4 = et == ethertype::IPV4;
            if !v4 && et != ethertype::IPV6 {
                return Ok(false);
            }
            if let Some(p) = r.proto
                && self.r_proto() != p
            {
                return Ok(false);
            }
            if let Some(n) = r.src
                && self.net_match(n, true) == r.inv_src
            {
                return Ok(false);
            }
            if let Some(n) = r.dst
                && self.net_match(n, false) == r.inv_dst
            {
                return Ok(false);
            }
            if let Some(set) = &r.src_set
                && !self.in_set(set, true)
            {
                return Ok(false);
            }
            if let Some(set) = &r.dst_set
                && !self.in_set(set, false)
            {
                return Ok(false);
            }
            if let Some(name) = &r.dst_port_name
                && !self.named_port_matches(name)
            {
                return Ok(false);
            }
            if r.src_ports.is_some() || r.dst_ports.is_some() {
                let p = self.r_proto();
                if !matches!(p, proto::TCP | proto::UDP | proto::SCTP) || self.r_frag() == 2 {
                    return Ok(false);
                }
                if let Some((lo, hi)) = r.src_ports {
                    let v = self.r_tp_src();
                    if v < lo || v > hi {
                        return Ok(false);
                    }
                }
                if let Some((lo, hi)) = r.dst_ports {
                    let v = self.r_tp_dst();
                    if v < lo || v > hi {
                        return Ok(false);
                    }
                }
            }
            if r.icmp_type.is_some() || r.icmp_code.is_some() {
                let want = if v4 { proto::ICMP } else { proto::ICMPV6 };
                if self.r_proto() != want {
                    return Ok(false);
                }
                if let Some(ty) = r.icmp_type
                    && self.r_tp_src() != u16::from(ty)
                {
                    return Ok(false);
                }
                if let Some(code) = r.icmp_code
                    && self.r_tp_dst() != u16::from(code)
                {
                    return Ok(false);
                }
            }
        }
        if let Some(CtC { mask, value }) = r.ct {
            if self.ct_mode == CtMode::Unavailable {
                return Ok(false);
            }
            // A packet conntrack cannot track (not IP) has no connection state to match.
            if !self.r_is_ip() {
                return Ok(false);
            }
            if !self.ct_tracked() {
                return Err(Abort::NeedCt);
            }
            if self.r_ct(mask) & mask != value {
                return Ok(false);
            }
        }
        Ok(true)
    }

    // ---- bridge ----

    fn bridge(&mut self, b: Idx, from: Idx) -> R<Next> {
        let t = self.t;
        let br = &t.bridges[b as usize];
        self.tag(br.tag);
        note!(self, "bridge {}", br.id);
        if !matches!(t.ports[from as usize].kind, PKind::Interior(_)) {
            // Frames from an exterior port: untagged, or tagged with the bridge's VLAN.
            let tci = self.r_vlan();
            if tci & VLAN_CFI != 0 {
                if br.vlan == Some(tci & 0x0fff) {
                    self.pop_vlan = true;
                } else {
                    note!(self, "  vlan {} is not the bridge's", tci & 0x0fff);
                    return Ok(self.drop_(DropReason::VlanMismatch));
                }
            }
        }
        if let Some(c) = br.in_chain {
            match self.chain(c, &br.id)? {
                Decision::Accept => {}
                Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                Decision::Reject => return Ok(self.reject()),
            }
        }
        let dst = self.r_eth_dst();
        if dst[0] & 1 != 0 {
            if self.r_eth_type() == ethertype::ARP {
                self.read.arp_op = !0;
                if self.pkt.arp_op == 1 {
                    self.read.arp_tip = !0;
                    let tip = self.pkt.arp_tip;
                    self.tag(Tag::ip_in(br.tag, std::net::IpAddr::V4(tip.into())));
                    if let Some(&mac) = t.arp_table.get(&(b, tip)) {
                        note!(
                            self,
                            "  ARP who-has {} answered: {}",
                            std::net::Ipv4Addr::from(tip),
                            mac_str(mac)
                        );
                        let pkt = packets::arp_reply(&self.orig, mac);
                        let port = self.in_dp();
                        self.push_emit(port, pkt);
                        return Ok(self.stop(Verdict::Consumed));
                    }
                }
            } else if self.pkt.is_ipv6()
                && let Some(target) = self.r_ns_target()
            {
                self.tag(Tag::ip_in(br.tag, std::net::IpAddr::V6(target.into())));
                // Duplicate address detection (unspecified source) is never answered: the
                // sender may be the owner itself, checking its own address.
                if let Some(&(mac, router)) = t.nd_table.get(&(b, target))
                    && self.r_src6_bits(128) != 0
                {
                    note!(
                        self,
                        "  NS for {} answered: {}",
                        std::net::Ipv6Addr::from(target),
                        mac_str(mac)
                    );
                    let pkt = packets::neighbour_advert(&self.orig, target, mac, router);
                    let port = self.in_dp();
                    self.push_emit(port, pkt);
                    return Ok(self.stop(Verdict::Consumed));
                }
            }
            return Ok(self.flood(b, from));
        }
        self.tag(Tag::mac_in(br.tag, dst));
        match t.mac_table.get(&(b, dst)) {
            Some(&q) if q == from => {
                note!(self, "  {} is the ingress port", mac_str(dst));
                Ok(self.drop_(DropReason::Hairpin))
            }
            Some(&q) => {
                note!(
                    self,
                    "  {} -> port {}",
                    mac_str(dst),
                    t.ports[q as usize].id
                );
                if let Some(c) = br.out_chain {
                    match self.chain(c, &br.id)? {
                        Decision::Accept => {}
                        Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                        Decision::Reject => return Ok(self.reject()),
                    }
                }
                Ok(Next::Egress(q))
            }
            None => {
                note!(self, "  {} unknown", mac_str(dst));
                Ok(self.flood(b, from))
            }
        }
    }

    fn flood(&mut self, b: Idx, from: Idx) -> Next {
        let t = self.t;
        let br = &t.bridges[b as usize];
        note!(self, "  flood to local ports");
        if let Some(n) = self.pod_egress() {
            return n;
        }
        let saved = self.ct_mode;
        self.ct_mode = CtMode::Unavailable;
        if let Some(c) = br.out_chain {
            match self.chain(c, &br.id) {
                Ok(Decision::Accept) => {}
                _ => {
                    self.ct_mode = saved;
                    return self.drop_(DropReason::Acl);
                }
            }
        }
        self.begin_output();
        let mut any = false;
        for &q in &br.flood {
            if q == from {
                continue;
            }
            let port = &t.ports[q as usize];
            self.tag(port.tag);
            if let Some(c) = port.out_chain
                && !matches!(self.chain(c, &port.id), Ok(Decision::Accept))
            {
                continue;
            }
            // Flooded copies have no connection state, so a pod isolated for ingress
            // gets none of the IP ones.
            if !self.pod_ingress(q) {
                continue;
            }
            if let Loc::Local(dp) = port.loc {
                note!(self, "  flood copy to {}", port.id);
                self.sim.actions.push(odp::Action::Output(dp));
                any = true;
            }
        }
        self.ct_mode = saved;
        if !any {
            self.sim.actions.clear();
        }
        self.stop(Verdict::Flood)
    }

    // ---- router ----

    fn router(&mut self, r: Idx, from: Idx) -> R<Next> {
        let t = self.t;
        let rt = &t.routers[r as usize];
        let fport = &t.ports[from as usize];
        self.tag(rt.tag);
        note!(self, "router {}", rt.id);
        if let Some(c) = rt.in_chain {
            match self.chain(c, &rt.id)? {
                Decision::Accept => {}
                Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                Decision::Reject => return Ok(self.reject()),
            }
        }
        let et = self.r_eth_type();
        if et == ethertype::ARP {
            self.read.arp_op = !0;
            self.read.arp_tip = !0;
            let tip = self.pkt.arp_tip;
            self.tag(Tag::ip_in(rt.tag, std::net::IpAddr::V4(tip.into())));
            if self.pkt.arp_op == 1 && fport.v4.iter().any(|(a, _)| *a == tip) {
                note!(self, "  ARP for router address answered");
                let pkt = packets::arp_reply(&self.orig, fport.mac);
                let port = self.in_dp();
                self.push_emit(port, pkt);
                return Ok(self.stop(Verdict::Consumed));
            }
            return Ok(self.drop_(DropReason::ToRouter));
        }
        if et == ethertype::IPV6 {
            return self.router6(r, from);
        }
        if et != ethertype::IPV4 {
            note!(self, "  ethertype {et:#06x} is not routed");
            return Ok(self.drop_(DropReason::Unsupported));
        }
        let dmac = self.r_eth_dst();
        if dmac != fport.mac {
            note!(
                self,
                "  frame for {} is not for port {}",
                mac_str(dmac),
                fport.id
            );
            return Ok(self.drop_(DropReason::NotForRouter));
        }
        if let Some(n) = self.try_nat(r)? {
            return Ok(n);
        }
        let ttl = self.r_ttl();
        if ttl <= 1 {
            note!(self, "  TTL {ttl} expires");
            self.icmp_error(11, 0, from);
            return Ok(self.stop(Verdict::Drop(DropReason::TtlExceeded)));
        }
        let (hit, bits) = rt.lpm.lookup(self.pkt.ipv4_dst);
        let dst = self.r_dst_bits(bits);
        let group = match hit {
            None => {
                note!(self, "  no route to {}", std::net::Ipv4Addr::from(dst));
                self.icmp_error(3, 0, from);
                return Ok(self.stop(Verdict::Drop(DropReason::NoRoute)));
            }
            Some((Target::Local(_), _)) => {
                self.tag(Tag::ip_in(rt.tag, std::net::IpAddr::V4(dst.into())));
                if self.r_proto() == proto::ICMP && self.r_tp_src() == 8 {
                    note!(self, "  echo request to router address answered");
                    // Every echo request needs its own reply: never install.
                    self.sim.install = false;
                    if let Some(pkt) = packets::icmp_echo_reply(&self.orig, self.bytes) {
                        let port = self.in_dp();
                        self.push_emit(port, pkt);
                        return Ok(self.stop(Verdict::Consumed));
                    }
                }
                return Ok(self.drop_(DropReason::ToRouter));
            }
            Some((Target::Group(g), _)) => &rt.groups[g as usize],
        };
        let route_idx = self.pick_route(group);
        let route = &t.routes[route_idx as usize];
        self.tag(route.tag);
        note!(
            self,
            "  route {} via port {}",
            route.id,
            t.ports[route.port as usize].id
        );
        let q = route.port;
        let qport = &t.ports[q as usize];
        let nh = match route.next_hop {
            Some(a) => a,
            None => self.r_dst_bits(32),
        };
        let nh_mac = match qport.kind {
            PKind::Interior(peer) => {
                let pp = &t.ports[peer as usize];
                match pp.dev {
                    Dev::Router(_) => Some(pp.mac),
                    Dev::Bridge(b2) => {
                        self.tag(Tag::ip_in(
                            t.bridges[b2 as usize].tag,
                            std::net::IpAddr::V4(nh.into()),
                        ));
                        t.arp_table.get(&(b2, nh)).copied()
                    }
                }
            }
            PKind::Exterior | PKind::Uplink => qport.next_hop_mac,
        };
        let Some(nh_mac) = nh_mac else {
            note!(
                self,
                "  next hop {} has no known MAC",
                std::net::Ipv4Addr::from(nh)
            );
            self.icmp_error(3, 1, from);
            return Ok(self.stop(Verdict::Drop(DropReason::NextHopUnknown)));
        };
        self.pkt.eth_src = qport.mac;
        self.pkt.eth_dst = nh_mac;
        self.wrote_eth = true;
        self.pkt.ip_ttl = ttl - 1;
        self.wrote_ttl = true;
        if let Some(c) = rt.out_chain {
            match self.chain(c, &rt.id)? {
                Decision::Accept => {}
                Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                Decision::Reject => return Ok(self.reject()),
            }
        }
        Ok(Next::Egress(q))
    }

    fn icmp6_error(&mut self, ty: u8, code: u8, router_port: Idx) {
        self.sim.actions.clear();
        // As for IPv4: whether a reply is possible depends on fields outside the mask.
        self.sim.install = false;
        let port = &self.t.ports[router_port as usize];
        let Some(&(src, _)) = port.v6.first() else {
            return;
        };
        if let Some(packet) = packets::icmp6_error(&self.orig, self.bytes, ty, code, src) {
            let port = self.in_dp();
            self.push_emit(port, packet);
        }
    }

    /// The IPv6 half of a router: the same steps as IPv4, with neighbour discovery for ARP,
    /// the hop limit for the TTL and ICMPv6 for ICMP. Multicast and link-local destinations
    /// are never forwarded (RFC 4291 2.5.6).
    fn router6(&mut self, r: Idx, from: Idx) -> R<Next> {
        let t = self.t;
        let rt = &t.routers[r as usize];
        let fport = &t.ports[from as usize];
        let dmac = self.r_eth_dst();
        if dmac != fport.mac {
            note!(
                self,
                "  frame for {} is not for port {}",
                mac_str(dmac),
                fport.id
            );
            return Ok(self.drop_(DropReason::NotForRouter));
        }
        if let Some(n) = self.try_nat(r)? {
            return Ok(n);
        }
        if self.dst6_in(0xff << 120, 8) || self.dst6_in(0xfe80 << 112, 10) {
            note!(
                self,
                "  {} is multicast or link-local: not routed",
                self.pkt.ipv6_dst_addr()
            );
            return Ok(self.drop_(DropReason::ToRouter));
        }
        let hlimit = self.r_ttl();
        if hlimit <= 1 {
            note!(self, "  hop limit {hlimit} expires");
            self.icmp6_error(3, 0, from);
            return Ok(self.stop(Verdict::Drop(DropReason::TtlExceeded)));
        }
        let (hit, bits) = rt.lpm6.lookup(self.pkt.ipv6_dst);
        let dst = self.r_dst6_bits(bits);
        let group = match hit {
            None => {
                note!(self, "  no route to {}", std::net::Ipv6Addr::from(dst));
                self.icmp6_error(1, 0, from);
                return Ok(self.stop(Verdict::Drop(DropReason::NoRoute)));
            }
            Some((Target::Local(_), _)) => {
                self.tag(Tag::ip_in(rt.tag, std::net::IpAddr::V6(dst.into())));
                if let Some(target) = self.r_ns_target() {
                    // Unicast solicitations (neighbour unreachability detection) reach the
                    // router; multicast ones are answered by the bridge.
                    if fport.v6.iter().any(|(a, _)| *a == target) {
                        note!(self, "  NS for router address answered");
                        let pkt = packets::neighbour_advert(&self.orig, target, fport.mac, true);
                        let port = self.in_dp();
                        self.push_emit(port, pkt);
                        return Ok(self.stop(Verdict::Consumed));
                    }
                } else if self.pkt.ip_proto == proto::ICMPV6
                    && self.pkt.ip_frag != 2
                    && self.pkt.tp_src == icmp6::ECHO_REQUEST
                {
                    note!(self, "  echo request to router address answered");
                    self.sim.install = false;
                    if let Some(pkt) = packets::icmp6_echo_reply(&self.orig, self.bytes) {
                        let port = self.in_dp();
                        self.push_emit(port, pkt);
                        return Ok(self.stop(Verdict::Consumed));
                    }
                }
                return Ok(self.drop_(DropReason::ToRouter));
            }
            Some((Target::Group(g), _)) => &rt.groups[g as usize],
        };
        if self.src6_in(0xfe80 << 112, 10) {
            note!(
                self,
                "  source {} is link-local: not forwarded",
                self.pkt.ipv6_src_addr()
            );
            return Ok(self.drop_(DropReason::ToRouter));
        }
        let route_idx = self.pick_route(group);
        let route = &t.routes[route_idx as usize];
        self.tag(route.tag);
        note!(
            self,
            "  route {} via port {}",
            route.id,
            t.ports[route.port as usize].id
        );
        let q = route.port;
        let qport = &t.ports[q as usize];
        let nh = match route.next_hop6 {
            Some(a) => a,
            None => self.r_dst6_bits(128),
        };
        let nh_mac = match qport.kind {
            PKind::Interior(peer) => {
                let pp = &t.ports[peer as usize];
                match pp.dev {
                    Dev::Router(_) => Some(pp.mac),
                    Dev::Bridge(b2) => {
                        self.tag(Tag::ip_in(
                            t.bridges[b2 as usize].tag,
                            std::net::IpAddr::V6(nh.into()),
                        ));
                        t.nd_table.get(&(b2, nh)).map(|e| e.0)
                    }
                }
            }
            PKind::Exterior | PKind::Uplink => qport.next_hop_mac,
        };
        let Some(nh_mac) = nh_mac else {
            note!(
                self,
                "  next hop {} has no known MAC",
                std::net::Ipv6Addr::from(nh)
            );
            self.icmp6_error(1, 3, from);
            return Ok(self.stop(Verdict::Drop(DropReason::NextHopUnknown)));
        };
        self.pkt.eth_src = qport.mac;
        self.pkt.eth_dst = nh_mac;
        self.wrote_eth = true;
        self.pkt.ip_ttl = hlimit - 1;
        self.wrote_ttl = true;
        if let Some(c) = rt.out_chain {
            match self.chain(c, &rt.id)? {
                Decision::Accept => {}
                Decision::Drop => return Ok(self.drop_(DropReason::Acl)),
                Decision::Reject => return Ok(self.reject()),
            }
        }
        Ok(Next::Egress(q))
    }

    /// The route of an ECMP group for this packet: a deterministic, weighted hash of the
    /// 5-tuple (read only when the group has more than one route).
    fn pick_route(&mut self, group: &GroupC) -> Idx {
        if group.routes.len() == 1 {
            return group.routes[0].0;
        }
        let h = self.flow_hash(false);
        let pick = (h % u64::from(group.total.max(1))) as u32;
        group
            .routes
            .iter()
            .find(|(_, cum)| pick < *cum)
            .map(|(r, _)| *r)
            .unwrap_or(group.routes[0].0)
    }

    fn flow_hash(&mut self, affinity: bool) -> u64 {
        let (src, dst) = if self.pkt.is_ipv6() {
            let src = self.r_src6_bits(128);
            if affinity {
                return mix64((src >> 64) as u64 ^ mix64(src as u64));
            }
            (src, self.r_dst6_bits(128))
        } else {
            let src = self.r_src_bits(32);
            if affinity {
                return mix64(u64::from(src));
            }
            (u128::from(src), u128::from(self.r_dst_bits(32)))
        };
        let p = self.r_proto();
        let (sp, dp) = if matches!(p, proto::TCP | proto::UDP | proto::SCTP) {
            (self.r_tp_src(), self.r_tp_dst())
        } else {
            (0, 0)
        };
        five_tuple(src, dst, p, sp, dp)
    }

    /// VIPs and DNAT rules of `scope` (a router, or [`GLOBAL`]). Returns `Some(Stop)` when
    /// the packet was translated (or rejected).
    fn try_nat(&mut self, scope: Idx) -> R<Option<Next>> {
        let t = self.t;
        // Reading eth_type here is what makes the decision valid for the megaflow.
        let et = self.r_eth_type();
        if et == ethertype::IPV6 {
            return self.try_nat6(scope);
        }
        if et != ethertype::IPV4 {
            return Ok(None);
        }
        let table = if scope == GLOBAL {
            self.tag(Tag::global_vips());
            &t.global_nat_ips
        } else {
            &t.routers[scope as usize].nat_ips
        };
        if table.is_empty() {
            return Ok(None);
        }
        let (hit, bits) = table.lookup(self.pkt.ipv4_dst);
        let dst = self.r_dst_bits(bits);
        if hit.is_none() {
            return Ok(None);
        }
        let p = self.r_proto();
        let l4 = matches!(p, proto::TCP | proto::UDP | proto::SCTP);
        let dport = if l4 { self.r_tp_dst() } else { 0 };
        if let Some(&v) = t.vip_index.get(&(scope, dst, p, dport)) {
            return self.vip(v).map(Some);
        }
        // A VIP's address at a port it does not serve: the reply of a hairpin connection,
        // whose source NAT the pod's zone reverses first (see `hairpin_reply`).
        let vip_addr = scope == GLOBAL
            || !t.routers[scope as usize]
                .dnat
                .iter()
                .any(|d| d.external == dst);
        if vip_addr {
            if !self.ct_tracked() {
                return Err(Abort::NeedCt);
            }
            return Ok(None);
        }
        for d in &t.routers[scope as usize].dnat {
            if d.external != dst {
                continue;
            }
            if let Some(dp) = d.proto
                && dp != p
            {
                continue;
            }
            if let Some(ep) = d.ext_port
                && (!l4 || ep != dport)
            {
                continue;
            }
            self.tag(Tag::ip_in(
                t.routers[scope as usize].tag,
                std::net::IpAddr::V4(dst.into()),
            ));
            if !self.ct_tracked() {
                return Err(Abort::NeedCt);
            }
            if self.pass == Pass::Nat {
                return Ok(Some(self.drop_(DropReason::NatLoop)));
            }
            note!(
                self,
                "  DNAT {} -> {}",
                std::net::Ipv4Addr::from(dst),
                std::net::Ipv4Addr::from(d.internal)
            );
            self.nat_dst(
                std::net::IpAddr::V4(d.internal.into()),
                if l4 { d.int_port } else { None },
            );
            return Ok(Some(Next::Stop));
        }
        Ok(None)
    }

    /// The IPv6 half of [`Self::try_nat`]: VIPs only (DNAT rules are IPv4).
    fn try_nat6(&mut self, scope: Idx) -> R<Option<Next>> {
        let t = self.t;
        let table = if scope == GLOBAL {
            self.tag(Tag::global_vips());
            &t.global_nat_ips6
        } else {
            &t.routers[scope as usize].nat_ips6
        };
        if table.is_empty() {
            return Ok(None);
        }
        let (hit, bits) = table.lookup(self.pkt.ipv6_dst);
        let dst = self.r_dst6_bits(bits);
        if hit.is_none() {
            return Ok(None);
        }
        let p = self.r_proto();
        let dport = if matches!(p, proto::TCP | proto::UDP | proto::SCTP) {
            self.r_tp_dst()
        } else {
            0
        };
        if let Some(&v) = t.vip6_index.get(&(scope, dst, p, dport)) {
            return self.vip(v).map(Some);
        }
        // A VIP's address at a port it does not serve: a hairpin connection's reply, as in
        // `try_nat`.
        if !self.ct_tracked() {
            return Err(Abort::NeedCt);
        }
        Ok(None)
    }

    /// A packet to VIP `v`: conntrack first, then a member by the flow hash (or the source
    /// alone with affinity), translated by `ct(commit,nat(dst=...))`. A VIP that picks the
    /// sending pod itself hairpins ([`Self::hairpin`]).
    fn vip(&mut self, v: Idx) -> R<Next> {
        let vip = &self.t.vips[v as usize];
        // A bucket's flows name the bucket, not the load balancer, so that a member change
        // deletes only the buckets that move ([`Topology::changed_buckets`]).
        if self.pass != Pass::Bucket || vip.buckets.is_empty() {
            self.tag(vip.lb_tag);
        }
        note!(
            self,
            "  VIP {}:{} ({} healthy members)",
            vip.ip,
            vip.port,
            vip.members.len()
        );
        if !self.ct_tracked() {
            return Err(Abort::NeedCt);
        }
        if self.pass == Pass::Nat {
            return Ok(self.drop_(DropReason::NatLoop));
        }
        if vip.members.is_empty() {
            note!(self, "  no healthy member: reject");
            return Ok(self.reject());
        }
        if !vip.buckets.is_empty() {
            if self.pass == Pass::Tracked {
                // A member that reaches its own VIP may be picked and need a hairpin, which
                // the bucket stage then decides from the source: such a sender takes the
                // walk again (RECIRC_LB).
                let id = vip_recirc(vip.bucket_key);
                let own = self.t.vip_by_recirc.get(&id) == Some(&v)
                    && !vip.members.iter().any(|m| self.is_sender(m.ip));
                let id = if own { id } else { RECIRC_LB };
                note!(
                    self,
                    "  new connection: hash(l4(0)), recirculate to the VIP's {} buckets ({id:#x})",
                    vip.buckets.len()
                );
                self.sim.actions.clear();
                self.sim.actions.push(odp::Action::Hash {
                    alg: odp::action::HASH_ALG_L4,
                    basis: 0,
                });
                self.sim.actions.push(odp::Action::Recirc(id));
                self.sim.verdict = Verdict::Recirculate;
                return Ok(Next::Stop);
            }
            let m = self.bucket_member(vip);
            return Ok(self.translate(m, vip.ip));
        }
        let key = vip.affinity.then(|| self.affinity_key(vip));
        let recalled = key.and_then(|k| self.recall(vip, &k));
        let m = match recalled {
            _ if vip.members.len() == 1 => &vip.members[0],
            Some(m) => {
                note!(
                    self,
                    "  member {}:{} (remembered for this client)",
                    m.ip,
                    m.port
                );
                m
            }
            None => {
                let h = self.flow_hash(vip.affinity);
                let pick = (h % u64::from(vip.total.max(1))) as u32;
                let m = vip
                    .members
                    .iter()
                    .find(|m| pick < m.cum)
                    .unwrap_or(&vip.members[0]);
                note!(self, "  member {}:{}", m.ip, m.port);
                m
            }
        };
        if let Some(key) = key {
            self.sim.affinity = Some(crate::AffinityChoice {
                key,
                member: m.ip,
                member_port: m.port,
                timeout_s: vip.affinity_timeout_s,
            });
        }
        Ok(self.translate(m, vip.ip))
    }

    /// The bucket stage of VIP `v` under its own recirculation id ([`vip_recirc`]): the
    /// bucket's member, by `dp_hash` and the ingress port's zone alone. The tracked pass
    /// judged everything else, so nothing else is read.
    fn bucket_stage(&mut self, v: Idx) {
        let port = &self.t.ports[self.in_port as usize];
        self.tag(port.tag);
        if !port.admin_up {
            self.drop_(DropReason::PortDown);
            return;
        }
        // ct() is valid only on a flow that matches an IP Ethertype.
        self.read.eth_type = !0;
        let vip = &self.t.vips[v as usize];
        note!(self, "VIP {}:{}", vip.ip, vip.port);
        let m = self.bucket_member(vip);
        self.nat_dst(m.ip, Some(m.port));
    }

    /// The member of `vip`'s bucket that the packet's `dp_hash` selects. Reads the bucket
    /// bits of `dp_hash` and tags the flow with the bucket, so that a member change deletes
    /// only the flows of the buckets it moves.
    fn bucket_member(&mut self, vip: &'t crate::topology::VipC) -> &'t crate::topology::MemberC {
        let n = vip.buckets.len() as u32 - 1;
        self.read.dp_hash |= n;
        let b = self.pkt.dp_hash & n;
        self.tag(Tag::lb_bucket(vip.bucket_key, b as usize));
        let m = &vip.members[vip.buckets[b as usize] as usize];
        note!(self, "  bucket {b}: member {}:{}", m.ip, m.port);
        m
    }

    /// The connection to `vip` goes to member `m`: destination NAT, or a hairpin when `m` is
    /// the sender.
    fn translate(&mut self, m: &crate::topology::MemberC, vip: std::net::IpAddr) -> Next {
        if self.is_sender(m.ip) {
            self.hairpin(m.ip, m.port, vip);
        } else {
            self.nat_dst(m.ip, Some(m.port));
        }
        Next::Stop
    }

    /// Whether `ip` is the packet's source, reading the source only up to the first bit
    /// where the two differ, so that one flow serves every client that differs from `ip`
    /// in the same place.
    fn is_sender(&mut self, ip: std::net::IpAddr) -> bool {
        match ip {
            std::net::IpAddr::V4(a) => {
                let a = u32::from(a);
                let bits = (self.pkt.ipv4_src ^ a).leading_zeros().min(31) as u8 + 1;
                (self.r_src_bits(bits) ^ a) & u32::prefix_mask(bits) == 0
            }
            std::net::IpAddr::V6(a) => {
                let a = u128::from(a);
                let bits = (self.pkt.ipv6_src ^ a).leading_zeros().min(127) as u8 + 1;
                (self.r_src6_bits(bits) ^ a) & u128::prefix_mask(bits) == 0
            }
        }
    }

    /// The client of `vip` this packet comes from, for session affinity. Reads the whole
    /// client address, and tags the flow with the client's choice so that forgetting it
    /// deletes the flow.
    fn affinity_key(&mut self, vip: &crate::topology::VipC) -> crate::AffinityKey {
        let client = if self.pkt.is_ipv6() {
            std::net::IpAddr::V6(self.r_src6_bits(128).into())
        } else {
            std::net::IpAddr::V4(self.r_src_bits(32).into())
        };
        let key = crate::AffinityKey {
            vip: vip.ip,
            proto: self.r_proto(),
            port: vip.port,
            client,
        };
        self.tag(Tag::affinity(&key));
        key
    }

    /// The member remembered for `key`'s client, if it is still one of `vip`'s healthy
    /// members.
    fn recall(
        &self,
        vip: &'t crate::topology::VipC,
        key: &crate::AffinityKey,
    ) -> Option<&'t crate::topology::MemberC> {
        let (ip, port) = self.memory?.recall(key)?;
        vip.members.iter().find(|m| m.ip == ip && m.port == port)
    }

    /// A pod's connection to a Service that chose the pod itself. Delivered as it is, the
    /// packet would come back from the pod's own address, which the pod drops, and its reply
    /// would never leave the pod. So the connection's destination NAT is committed in the
    /// port's hairpin zone and a source NAT to the VIP in the port's own zone, and the packet
    /// goes straight back out of the port it came in on, from the MAC it was sent to: the pod
    /// sees the VIP as its peer, and its replies, addressed to the VIP, come back to the
    /// datapath, where `ct(zone,nat)` at ingress undoes the source NAT and
    /// [`Self::hairpin_reply`] the destination NAT. Two zones, because the kernel NATs a
    /// packet once per zone. What the walk judged up to the VIP stands; after it, nothing
    /// does: a pod is not isolated from itself.
    fn hairpin(&mut self, member: std::net::IpAddr, port: u16, vip: std::net::IpAddr) {
        let zone = self.in_zone();
        let hz = crate::topology::hairpin_zone(zone);
        note!(
            self,
            "  hairpin: dnat in zone {hz}, snat to {vip} in zone {zone}, back out"
        );
        self.sim.actions.clear();
        self.sim.actions.push(odp::Action::Ct(crate::odpconv::ct(
            true,
            hz,
            crate::odpconv::NatSpec::Dst {
                ip: member,
                port: Some(port),
            },
        )));
        self.sim.actions.push(odp::Action::Ct(crate::odpconv::ct(
            true,
            zone,
            crate::odpconv::NatSpec::SrcAddr(vip),
        )));
        self.back_out();
    }

    /// The tracked pass of a packet from pod port `p`: a hairpin connection's reply, once
    /// the port's zone undid its source NAT, is addressed to the pod itself. Its destination
    /// NAT is undone in the hairpin zone, and it goes back out of the port, from the VIP.
    fn hairpin_reply(&mut self, p: Idx) -> Option<Next> {
        let port = &self.t.ports[p as usize];
        let v4 = match self.r_eth_type() {
            ethertype::IPV4 if !port.v4.is_empty() => true,
            ethertype::IPV6 if !port.v6.is_empty() => false,
            _ => return None,
        };
        let both = ct::REPLY_DIR | ct::DST_NAT;
        if self.r_ct(both) & both != both {
            return None;
        }
        let own = if v4 {
            let dst = self.r_dst_bits(32);
            port.v4.iter().any(|(a, _)| *a == dst)
        } else {
            let dst = self.r_dst6_bits(128);
            port.v6.iter().any(|(a, _)| *a == dst)
        };
        if !own {
            return None;
        }
        let zone = crate::topology::hairpin_zone(port.zone);
        note!(self, "  hairpin reply: ct(zone={zone},nat), back out");
        self.sim.actions.clear();
        self.sim.actions.push(crate::odpconv::ct_lookup(zone));
        self.back_out();
        Some(Next::Stop)
    }

    /// Ends a hairpin's actions: out of the ingress port, from the MAC the pod sent to.
    fn back_out(&mut self) {
        self.read.eth_src = [0xff; 6];
        self.read.eth_dst = [0xff; 6];
        self.sim.actions.push(crate::odpconv::set_eth(
            self.orig.eth_dst,
            self.orig.eth_src,
        ));
        self.sim.actions.push(odp::Action::Output(self.in_dp()));
        self.sim.verdict = Verdict::Forward;
    }

    fn nat_dst(&mut self, ip: std::net::IpAddr, port: Option<u16>) {
        let zone = self.in_zone();
        self.sim.actions.clear();
        self.sim.actions.push(odp::Action::Ct(crate::odpconv::ct(
            true,
            zone,
            crate::odpconv::NatSpec::Dst { ip, port },
        )));
        self.sim.actions.push(odp::Action::Recirc(RECIRC_NAT));
        self.sim.verdict = Verdict::Recirculate;
    }

    // ---- generated packets ----

    /// Queues a generated frame for the ingress port, tagged like the frame that caused it.
    fn push_emit(&mut self, port: u32, mut packet: Vec<u8>) {
        let tci = self.orig.vlan_tci;
        if tci & VLAN_CFI != 0 && packet.len() >= 12 {
            // On the wire the CFI bit is DEI; the datapath uses it to mean "tag present".
            let wire = tci & !VLAN_CFI;
            let tag = [0x81, 0x00, (wire >> 8) as u8, wire as u8];
            packet.splice(12..12, tag);
        }
        self.sim.emit.push(Emit { port, packet });
    }

    fn reject(&mut self) -> Next {
        self.sim.actions.clear();
        self.sim.install = false;
        let pkt = if self.pkt.is_ipv4() && self.pkt.ip_proto == proto::TCP {
            self.read.ip_proto = !0;
            packets::tcp_rst(&self.orig, self.bytes)
        } else if self.pkt.is_ipv4() {
            self.read.ip_proto = !0;
            packets::icmp_error(&self.orig, self.bytes, 3, 3, self.orig.ipv4_dst)
        } else if self.pkt.is_ipv6() {
            // As ip6tables' REJECT does by default: port unreachable, for TCP too.
            packets::icmp6_error(&self.orig, self.bytes, 1, 4, self.orig.ipv6_dst)
        } else {
            None
        };
        self.read.eth_type = !0;
        note!(self, "reject");
        if let Some(packet) = pkt {
            let port = self.in_dp();
            self.push_emit(port, packet);
        }
        self.stop(Verdict::Rejected)
    }

    fn icmp_error(&mut self, ty: u8, code: u8, router_port: Idx) {
        self.sim.actions.clear();
        // Whether a reply is possible depends on fields the mask does not cover (ICMP type
        // of the offending packet, fragment offset); later packets must come up too.
        self.sim.install = false;
        let port = &self.t.ports[router_port as usize];
        let Some(&(src, _)) = port.v4.first() else {
            return;
        };
        if let Some(packet) = packets::icmp_error(&self.orig, self.bytes, ty, code, src) {
            let port = self.in_dp();
            self.push_emit(port, packet);
        }
    }

    // ---- output ----

    /// Actions common to every output of a forwarded packet: commit of a new connection in
    /// the ingress zone (first tracked pass only) and the header rewrites.
    fn begin_output(&mut self) {
        self.sim.actions.clear();
        if matches!(self.pass, Pass::Tracked | Pass::Bucket) && self.in_port != Idx::MAX {
            let st = self.r_ct(ct::NEW);
            if st & ct::NEW != 0 {
                let zone = self.in_zone();
                self.sim.actions.push(odp::Action::Ct(crate::odpconv::ct(
                    true,
                    zone,
                    crate::odpconv::NatSpec::None,
                )));
            }
        }
        if self.pop_vlan {
            self.sim.actions.push(odp::Action::PopVlan);
        }
        if self.wrote_eth {
            self.sim
                .actions
                .push(crate::odpconv::set_eth(self.pkt.eth_src, self.pkt.eth_dst));
        }
        if self.wrote_ttl {
            let set = if self.pkt.is_ipv6() {
                crate::odpconv::set_hlimit(self.pkt.ip_ttl)
            } else {
                crate::odpconv::set_ttl(self.pkt.ip_ttl)
            };
            self.sim.actions.push(set);
        }
    }

    /// The sending pod's egress verdict, once its destination is known (after load
    /// balancing): `None` lets the packet on.
    fn pod_egress(&mut self) -> Option<Next> {
        if self.in_port == Idx::MAX || self.t.ports[self.in_port as usize].pod_out.is_empty() {
            return None;
        }
        match self.pod_verdict(self.in_port, false) {
            Ok(Decision::Accept) => None,
            Ok(Decision::Reject) => Some(self.reject()),
            _ => Some(self.drop_(DropReason::Acl)),
        }
    }

    /// The receiving pod's ingress verdict at delivery to local port `q`.
    fn pod_ingress(&mut self, q: Idx) -> bool {
        self.t.ports[q as usize].pod_in.is_empty()
            || matches!(self.pod_verdict(q, true), Ok(Decision::Accept))
    }

    fn output_to(&mut self, q: Idx) -> Next {
        let t = self.t;
        let port = &t.ports[q as usize];
        if let Some(n) = self.pod_egress() {
            return n;
        }
        match port.loc {
            Loc::Local(dp) => {
                if self.ct_at_delivery(q) {
                    self.begin_output();
                    note!(
                        self,
                        "deliver to local port {} through zone {}",
                        port.id,
                        port.zone
                    );
                    self.sim.actions.push(crate::odpconv::ct_lookup(port.zone));
                    self.sim
                        .actions
                        .push(odp::Action::Recirc(RECIRC_DELIVERY | port.tunnel_key));
                    return self.stop(Verdict::Forward);
                }
                if let Some(c) = port.out_chain {
                    match self.chain(c, &port.id) {
                        Ok(Decision::Accept) => {}
                        Ok(Decision::Reject) => return self.reject(),
                        _ => return self.drop_(DropReason::Acl),
                    }
                }
                if !self.pod_ingress(q) {
                    return self.drop_(DropReason::Acl);
                }
                self.begin_output();
                note!(
                    self,
                    "output to local port {} (datapath port {dp})",
                    port.id
                );
                self.sim.actions.push(odp::Action::Output(dp));
                self.stop(Verdict::Forward)
            }
            Loc::Remote(h) => {
                let host = &t.hosts[h as usize];
                self.tag(host.tag);
                self.begin_output();
                note!(
                    self,
                    "tunnel to port {} on host {} (key {:#x})",
                    port.id,
                    host.id,
                    port.tunnel_key
                );
                self.sim.actions.push(crate::odpconv::set_tunnel(
                    port.tunnel_key,
                    host.underlay,
                    host.udp_port,
                ));
                self.sim.actions.push(odp::Action::Output(t.tunnel_port));
                self.sim.delivery = Some(Delivery {
                    tun_id: port.tunnel_key,
                    host: host.underlay,
                    zone: port.zone,
                    conntrack: port.ct_delivery,
                });
                self.stop(Verdict::Forward)
            }
            Loc::LocalDetached | Loc::Unbound => {
                note!(
                    self,
                    "port {} has no datapath port here or elsewhere",
                    port.id
                );
                self.drop_(DropReason::PortUnbound)
            }
        }
    }

    /// Whether a packet delivered to local port `q` goes through the port's zone first:
    /// always where the port's own chains, policies or NAT need it; otherwise (the zone
    /// only undoes translations for the port's replies) not for the forward direction of a
    /// connection translated in the zone it came through (`+dnat-rpl`, or the pass right
    /// after the translation), which saves a `ct` and a recirculation per packet.
    fn ct_at_delivery(&mut self, q: Idx) -> bool {
        let port = &self.t.ports[q as usize];
        if !port.ct_delivery || !self.r_is_ip() {
            return false;
        }
        if port.ct_delivery_own {
            return true;
        }
        match self.pass {
            Pass::First => true,
            Pass::Nat => false,
            Pass::Tracked | Pass::Bucket => {
                self.r_ct(ct::DST_NAT) & ct::DST_NAT == 0
                    || self.r_ct(ct::REPLY_DIR) & ct::REPLY_DIR != 0
            }
        }
    }

    /// A packet from the tunnel for the port with `key` (first pass).
    fn tunnel_ingress(&mut self, key: u32, bad: bool) {
        let t = self.t;
        let q = if bad {
            None
        } else {
            t.port_by_key.get(&key).copied()
        };
        let Some(q) = q else {
            note!(self, "tunnel key {key:#x} names no port");
            // As for an unknown input port: no tag names what is missing.
            self.sim.install = false;
            self.drop_(DropReason::UnknownTunnelKey);
            return;
        };
        let port = &t.ports[q as usize];
        self.tag(port.tag);
        let Loc::Local(dp) = port.loc else {
            note!(self, "port {} is not local", port.id);
            self.drop_(DropReason::PortUnbound);
            return;
        };
        if !port.admin_up {
            self.drop_(DropReason::PortDown);
            return;
        }
        if port.ct_delivery && self.r_is_ip() {
            note!(self, "delivery to {} through zone {}", port.id, port.zone);
            self.sim.actions.push(crate::odpconv::ct_lookup(port.zone));
            self.sim
                .actions
                .push(odp::Action::Recirc(RECIRC_DELIVERY | port.tunnel_key));
            self.sim.verdict = Verdict::Forward;
            return;
        }
        self.ct_mode = CtMode::Unavailable;
        if let Some(c) = port.out_chain
            && !matches!(self.chain(c, &port.id), Ok(Decision::Accept))
        {
            self.drop_(DropReason::Acl);
            return;
        }
        if !self.pod_ingress(q) {
            self.drop_(DropReason::Acl);
            return;
        }
        note!(self, "delivery to {} (datapath port {dp})", port.id);
        self.sim.actions.push(odp::Action::Output(dp));
        self.sim.verdict = Verdict::Forward;
    }

    /// The delivery stage after `ct(zone,nat)`: outbound chain, commit, output.
    fn delivery_pass(&mut self, key: u32) {
        let t = self.t;
        let Some(&q) = t.port_by_key.get(&key) else {
            self.sim.install = false;
            self.drop_(DropReason::UnknownTunnelKey);
            return;
        };
        let port = &t.ports[q as usize];
        self.tag(port.tag);
        let Loc::Local(dp) = port.loc else {
            self.drop_(DropReason::PortUnbound);
            return;
        };
        if !port.admin_up {
            self.drop_(DropReason::PortDown);
            return;
        }
        note!(
            self,
            "delivery stage of port {} (zone {})",
            port.id,
            port.zone
        );
        // Every packet here came through ct(), so it is IP: reading the Ethertype splits no
        // flow, and the stage's flows share one mask whether they commit (which needs it) or
        // not.
        self.read.eth_type = !0;
        self.pass = Pass::Tracked;
        if let Some(c) = port.out_chain {
            match self.chain(c, &port.id) {
                Ok(Decision::Accept) => {}
                _ => {
                    self.drop_(DropReason::Acl);
                    return;
                }
            }
        }
        if !self.pod_ingress(q) {
            self.drop_(DropReason::Acl);
            return;
        }
        let st = self.r_ct(ct::NEW);
        if st & ct::NEW != 0 {
            let nat = match &port.snat {
                Some(s) => crate::odpconv::NatSpec::Src {
                    min: s.min,
                    max: s.max,
                    ports: s.ports,
                },
                None => crate::odpconv::NatSpec::None,
            };
            self.sim
                .actions
                .push(odp::Action::Ct(crate::odpconv::ct(true, port.zone, nat)));
        }
        self.sim.actions.push(odp::Action::Output(dp));
        self.sim.verdict = Verdict::Forward;
    }
}
