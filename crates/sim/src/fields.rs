//! The packet's header fields as the datapath flow key gives them, flattened; the same type
//! records which bits the walk read (the megaflow mask) and which it wrote.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Ethernet types the walk understands.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
}

/// IP protocol numbers.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// ICMPv6 message types the walk reads or generates.
pub mod icmp6 {
    /// Destination unreachable.
    pub const DEST_UNREACH: u16 = 1;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u16 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u16 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u16 = 129;
    /// Neighbour solicitation.
    pub const NS: u16 = 135;
    /// Neighbour advertisement.
    pub const NA: u16 = 136;
}

/// Conntrack state bits, as in the kernel's `OVS_CS_F_*`.
pub use odp::key::ct_state as ct;

/// 802.1Q "tag present" bit of `vlan_tci`, as the datapath reports it.
pub const VLAN_CFI: u16 = 0x1000;

/// Flat header fields of one packet. As a mask, each bit set means "the walk read this bit".
///
/// Which L3/L4 fields are meaningful depends on `eth_type` and `ip_proto`, exactly as in
/// the datapath key: ICMP type and code travel in `tp_src` and `tp_dst`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Fields {
    /// Recirculation id (0 on the first pass).
    pub recirc_id: u32,
    /// The datapath's flow hash (`dp_hash`), set by a `hash()` action of an earlier pass;
    /// 0 when none ran.
    pub dp_hash: u32,
    /// Datapath input port number.
    pub in_port: u32,
    /// Tunnel id of a packet received from the tunnel port (0 if none).
    pub tun_id: u64,
    /// Tunnel outer source (IPv4 underlay).
    pub tun_src: u32,
    /// Tunnel outer destination (IPv4 underlay).
    pub tun_dst: u32,
    /// Conntrack state bits ([`ct`]).
    pub ct_state: u32,
    /// Conntrack zone the state refers to.
    pub ct_zone: u16,
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// 802.1Q TCI with [`VLAN_CFI`] set when a tag is present (0: untagged).
    pub vlan_tci: u16,
    /// Ethernet type (after any VLAN tag).
    pub eth_type: u16,
    /// IPv4 source.
    pub ipv4_src: u32,
    /// IPv4 destination.
    pub ipv4_dst: u32,
    /// IPv6 source.
    pub ipv6_src: u128,
    /// IPv6 destination.
    pub ipv6_dst: u128,
    /// IP protocol / IPv6 next header.
    pub ip_proto: u8,
    /// IP TOS / traffic class.
    pub ip_tos: u8,
    /// IP TTL / hop limit.
    pub ip_ttl: u8,
    /// Fragment type (0 none, 1 first, 2 later), as in the datapath key.
    pub ip_frag: u8,
    /// L4 source port, or ICMP type.
    pub tp_src: u16,
    /// L4 destination port, or ICMP code.
    pub tp_dst: u16,
    /// ARP opcode.
    pub arp_op: u16,
    /// ARP sender protocol address.
    pub arp_sip: u32,
    /// ARP target protocol address.
    pub arp_tip: u32,
    /// ARP sender hardware address.
    pub arp_sha: [u8; 6],
    /// ARP target hardware address.
    pub arp_tha: [u8; 6],
    /// IPv6 neighbour discovery target address (NS and NA with code 0).
    pub nd_target: u128,
    /// ND source link-layer address option (NS).
    pub nd_sll: [u8; 6],
    /// ND target link-layer address option (NA).
    pub nd_tll: [u8; 6],
}

impl Fields {
    /// Every bit set: the mask of an exact-match flow.
    pub const EXACT: Fields = Fields {
        recirc_id: !0,
        dp_hash: !0,
        in_port: !0,
        tun_id: !0,
        tun_src: !0,
        tun_dst: !0,
        ct_state: !0,
        ct_zone: !0,
        eth_src: [0xff; 6],
        eth_dst: [0xff; 6],
        vlan_tci: !0,
        eth_type: !0,
        ipv4_src: !0,
        ipv4_dst: !0,
        ipv6_src: !0,
        ipv6_dst: !0,
        ip_proto: !0,
        ip_tos: !0,
        ip_ttl: !0,
        ip_frag: !0,
        tp_src: !0,
        tp_dst: !0,
        arp_op: !0,
        arp_sip: !0,
        arp_tip: !0,
        arp_sha: [0xff; 6],
        arp_tha: [0xff; 6],
        nd_target: !0,
        nd_sll: [0xff; 6],
        nd_tll: [0xff; 6],
    };

    /// The IPv4 source as an address.
    pub fn ipv4_src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ipv4_src)
    }
    /// The IPv4 destination as an address.
    pub fn ipv4_dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ipv4_dst)
    }
    /// The IPv6 source as an address.
    pub fn ipv6_src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ipv6_src)
    }
    /// The IPv6 destination as an address.
    pub fn ipv6_dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ipv6_dst)
    }

    /// `self & mask`, field by field.
    pub fn masked(&self, m: &Fields) -> Fields {
        fn mac(a: [u8; 6], b: [u8; 6]) -> [u8; 6] {
            let mut o = [0u8; 6];
            for i in 0..6 {
                o[i] = a[i] & b[i];
            }
            o
        }
        Fields {
            recirc_id: self.recirc_id & m.recirc_id,
            dp_hash: self.dp_hash & m.dp_hash,
            in_port: self.in_port & m.in_port,
            tun_id: self.tun_id & m.tun_id,
            tun_src: self.tun_src & m.tun_src,
            tun_dst: self.tun_dst & m.tun_dst,
            ct_state: self.ct_state & m.ct_state,
            ct_zone: self.ct_zone & m.ct_zone,
            eth_src: mac(self.eth_src, m.eth_src),
            eth_dst: mac(self.eth_dst, m.eth_dst),
            vlan_tci: self.vlan_tci & m.vlan_tci,
            eth_type: self.eth_type & m.eth_type,
            ipv4_src: self.ipv4_src & m.ipv4_src,
            ipv4_dst: self.ipv4_dst & m.ipv4_dst,
            ipv6_src: self.ipv6_src & m.ipv6_src,
            ipv6_dst: self.ipv6_dst & m.ipv6_dst,
            ip_proto: self.ip_proto & m.ip_proto,
            ip_tos: self.ip_tos & m.ip_tos,
            ip_ttl: self.ip_ttl & m.ip_ttl,
            ip_frag: self.ip_frag & m.ip_frag,
            tp_src: self.tp_src & m.tp_src,
            tp_dst: self.tp_dst & m.tp_dst,
            arp_op: self.arp_op & m.arp_op,
            arp_sip: self.arp_sip & m.arp_sip,
            arp_tip: self.arp_tip & m.arp_tip,
            arp_sha: mac(self.arp_sha, m.arp_sha),
            arp_tha: mac(self.arp_tha, m.arp_tha),
            nd_target: self.nd_target & m.nd_target,
            nd_sll: mac(self.nd_sll, m.nd_sll),
            nd_tll: mac(self.nd_tll, m.nd_tll),
        }
    }

    /// True for an IPv4 packet (by `eth_type`).
    pub fn is_ipv4(&self) -> bool {
        self.eth_type == ethertype::IPV4
    }

    /// True for an IPv6 packet (by `eth_type`).
    pub fn is_ipv6(&self) -> bool {
        self.eth_type == ethertype::IPV6
    }

    /// True when the datapath key of these fields carries an ND attribute: an ICMPv6
    /// neighbour solicitation or advertisement, not a later fragment. The kernel emits the
    /// attribute (and requires it in a flow's key) by the ICMPv6 type alone; with a code
    /// other than 0 it is all zeros (`parse_icmpv6`, `match_validate`).
    pub fn has_nd(&self) -> bool {
        self.is_ipv6()
            && self.ip_proto == proto::ICMPV6
            && self.ip_frag != 2
            && matches!(self.tp_src, icmp6::NS | icmp6::NA)
    }
}

/// One packet handed to the simulation: its flow key fields and, where the walk needs them
/// to build a reply (ICMP echo payload, TCP RST sequence numbers, ICMP error quotes), its bytes.
#[derive(Debug, Clone, Copy)]
pub struct PacketContext<'a> {
    /// The flow key fields.
    pub fields: Fields,
    /// The whole frame as received (may be empty; replies are then built from the fields alone).
    pub packet: &'a [u8],
    /// Earlier session-affinity choices; without it every client is chosen afresh.
    pub affinity: Option<&'a dyn crate::AffinityMemory>,
}

impl<'a> PacketContext<'a> {
    /// A context with fields only.
    pub fn new(fields: Fields) -> PacketContext<'static> {
        PacketContext {
            fields,
            packet: &[],
            affinity: None,
        }
    }
    /// A context with fields and the frame's bytes.
    pub fn with_packet(fields: Fields, packet: &'a [u8]) -> PacketContext<'a> {
        PacketContext {
            fields,
            packet,
            affinity: None,
        }
    }
    /// The same context, recalling session-affinity choices from `memory`.
    pub fn remembering(self, memory: &'a dyn crate::AffinityMemory) -> PacketContext<'a> {
        PacketContext {
            affinity: Some(memory),
            ..self
        }
    }
}
