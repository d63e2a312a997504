//! The result of one simulation and the reusable buffers it is written into.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::fields::Fields;
use crate::tag::Tag;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The datapath input port is not a known local port.
    UnknownInPort,
    /// The recirculation id is not one the simulation issued.
    UnknownRecirc,
    /// A tunnel key that names no local port.
    UnknownTunnelKey,
    /// A port on the path is administratively down.
    PortDown,
    /// The egress port is bound nowhere, or its vport is not in the datapath yet.
    PortUnbound,
    /// A rule or chain default dropped the packet.
    Acl,
    /// A frame tagged with a VLAN the bridge does not carry.
    VlanMismatch,
    /// The destination MAC is the ingress port itself.
    Hairpin,
    /// A router got a frame not addressed to its port MAC.
    NotForRouter,
    /// The packet is neither IPv4 nor IPv6, so it is not routed.
    Unsupported,
    /// No route to the destination (an ICMP net unreachable was generated when possible).
    NoRoute,
    /// The next hop's MAC is unknown (an ICMP host unreachable was generated when possible).
    NextHopUnknown,
    /// TTL ran out (an ICMP time exceeded was generated when possible).
    TtlExceeded,
    /// More devices than [`crate::MAX_DEVICES`] or a rule-evaluation budget exhausted.
    LoopDetected,
    /// A second NAT stage in one walk.
    NatLoop,
    /// Addressed to a router IP but not an echo request.
    ToRouter,
}

/// What happened to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Verdict {
    /// Not simulated yet.
    #[default]
    None,
    /// Sent on to one or more ports (or into the tunnel).
    Forward,
    /// Flooded to the bridge's local ports.
    Flood,
    /// Sent through conntrack and recirculated; the next pass is simulated on its own miss.
    Recirculate,
    /// Answered by the simulation itself (ARP reply, ICMP echo reply); nothing forwarded.
    Consumed,
    /// Rejected by a rule or a VIP without members: a TCP RST or ICMP error was generated.
    Rejected,
    /// Dropped.
    Drop(DropReason),
}

/// A packet the simulation generated (ARP reply, ICMP reply or error, TCP RST), to be sent
/// with `OVS_PACKET_CMD_EXECUTE` and `output(port)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    /// Datapath port to send it out of (the port the triggering packet came in on).
    pub port: u32,
    /// The whole Ethernet frame.
    pub packet: Vec<u8>,
}

/// Where a tunnelled packet goes and what the destination host does with it.
///
/// The destination host builds the actual delivery flow itself: it simulates the packet it
/// receives from the tunnel (`in_port` = its tunnel port, `tun_id` = `tun_id`), which runs
/// only the destination port's stage (its outbound chain and its conntrack zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Tunnel key written into the packet: the destination port's key.
    pub tun_id: u32,
    /// Underlay address of the destination host.
    pub host: IpAddr,
    /// Conntrack zone of the destination port.
    pub zone: u16,
    /// Whether delivery passes the packet through that zone (`ct(zone,nat),recirc`).
    pub conntrack: bool,
}

/// The result of one simulation. Create it once per thread and pass it to
/// [`crate::simulate_into`] again and again: every buffer is cleared and reused, so the
/// common cases do not allocate.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    /// Datapath actions for the ingress host (empty = drop).
    pub actions: Vec<odp::Action>,
    /// The megaflow mask in datapath terms.
    pub mask: odp::FlowKey,
    /// The mask as flat fields: every bit the walk read.
    pub fields_mask: Fields,
    /// Tags of everything the walk touched, sorted and without duplicates.
    pub tags: Vec<Tag>,
    /// Generated packets.
    pub emit: Vec<Emit>,
    /// Set when the packet leaves through the tunnel.
    pub delivery: Option<Delivery>,
    /// What happened.
    pub verdict: Verdict,
    /// False when the flow must not be installed: the result generated packets that every
    /// later packet needs too (ARP and ICMP replies, rejects), so each one must reach userspace.
    pub install: bool,
    /// Human-readable trace, device by device and rule by rule, when `trace_enabled`.
    pub trace: String,
    /// Record the trace (costs allocations; off by default).
    pub trace_enabled: bool,
    /// The member a VIP with session affinity chose (or recalled) for this client, for the
    /// caller to remember ([`crate::affinity`]).
    pub affinity: Option<crate::AffinityChoice>,
}

impl Simulation {
    /// An empty result with tracing off.
    pub fn new() -> Simulation {
        Simulation::default()
    }

    /// An empty result with tracing on.
    pub fn traced() -> Simulation {
        Simulation {
            trace_enabled: true,
            ..Simulation::default()
        }
    }

    pub(crate) fn reset(&mut self) {
        self.actions.clear();
        // `mask` is rewritten whole at the end of every simulation.
        self.fields_mask = Fields::default();
        self.tags.clear();
        self.emit.clear();
        self.delivery = None;
        self.verdict = Verdict::None;
        self.install = true;
        self.trace.clear();
        self.affinity = None;
    }

    pub(crate) fn note(&mut self, args: std::fmt::Arguments<'_>) {
        if self.trace_enabled {
            let _ = self.trace.write_fmt(args);
            self.trace.push('\n');
        }
    }

    /// The datapath flow for the packet with fields `pkt` that produced this result: its key
    /// masked (as the kernel stores it), the mask and the actions.
    pub fn flow(&self, pkt: &Fields) -> odp::Flow {
        let m = &self.fields_mask;
        let mut k = pkt.masked(m);
        // Keep what decides which attributes exist; their values only print where masked.
        k.eth_type = pkt.eth_type;
        k.vlan_tci |= pkt.vlan_tci & crate::fields::VLAN_CFI;
        k.ip_proto = pkt.ip_proto;
        k.ip_frag = pkt.ip_frag;
        k.tun_id = pkt.tun_id & m.tun_id;
        odp::Flow {
            key: k.to_key(),
            mask: self.mask.clone(),
            actions: self.actions.clone(),
            ..odp::Flow::default()
        }
    }

    /// The match of [`Simulation::flow`] in `ovs-dpctl` text.
    pub fn match_text(&self, pkt: &Fields) -> String {
        self.flow(pkt).match_text()
    }

    /// The actions in `ovs-dpctl` text (`drop` when empty).
    pub fn actions_text(&self) -> String {
        odp::ActionsDisplay(&self.actions).to_string()
    }
}
