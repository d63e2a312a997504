//! Flow keys and masks of the OVS kernel datapath (`OVS_KEY_ATTR_*`), as plain values.
//!
//! A [`FlowKey`] holds one optional value per key attribute. The same type is the mask
//! ([`FlowMask`]): a mask attribute that is `None` wildcards that attribute entirely, a
//! present one gives the mask bits of each field (all ones = exact, zero = wildcard).
//! Nothing here allocates except `encap` (VLAN) and unknown attributes kept for round trips.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The mask of a flow: the same shape as the key (see the module doc).
pub type FlowMask = FlowKey;

/// `OVS_FRAG_TYPE_*`: whether an IP packet is a fragment.
pub const FRAG_NONE: u8 = 0;
/// First fragment (offset 0).
pub const FRAG_FIRST: u8 = 1;
/// A later fragment (nonzero offset).
pub const FRAG_LATER: u8 = 2;

/// `OVS_CS_F_*` conntrack state bits of `ct_state`.
pub mod ct_state {
    /// Beginning of a new connection.
    pub const NEW: u32 = 0x01;
    /// Part of an existing connection.
    pub const ESTABLISHED: u32 = 0x02;
    /// Related to an established connection.
    pub const RELATED: u32 = 0x04;
    /// Flow is in the reply direction.
    pub const REPLY_DIR: u32 = 0x08;
    /// Could not track the connection.
    pub const INVALID: u32 = 0x10;
    /// Conntrack has occurred.
    pub const TRACKED: u32 = 0x20;
    /// Source address/port was mangled by NAT.
    pub const SRC_NAT: u32 = 0x40;
    /// Destination address/port was mangled by NAT.
    pub const DST_NAT: u32 = 0x80;
}

/// TCP flag bits of `tcp_flags` (host order, low 12 bits of the TCP header word).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u16 = 0x001;
    /// SYN.
    pub const SYN: u16 = 0x002;
    /// RST.
    pub const RST: u16 = 0x004;
    /// PSH.
    pub const PSH: u16 = 0x008;
    /// ACK.
    pub const ACK: u16 = 0x010;
    /// URG.
    pub const URG: u16 = 0x020;
    /// ECE.
    pub const ECE: u16 = 0x040;
    /// CWR.
    pub const CWR: u16 = 0x080;
    /// NS.
    pub const NS: u16 = 0x100;
}

/// VLAN TCI bit that marks a present tag (CFI/DEI as OVS uses it).
pub const VLAN_CFI: u16 = 0x1000;

/// An attribute kept as raw bytes because this crate does not model it; it is emitted again
/// unchanged so unknown attributes survive a decode/encode round trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RawAttr {
    /// Netlink attribute type as it was received (flag bits included).
    pub kind: u16,
    /// Payload, without padding.
    pub data: Vec<u8>,
}

/// `struct ovs_key_ethernet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyEthernet {
    /// Source MAC.
    pub src: Mac,
    /// Destination MAC.
    pub dst: Mac,
}

/// `struct ovs_key_ipv4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyIpv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// TOS byte (DSCP + ECN).
    pub tos: u8,
    /// TTL.
    pub ttl: u8,
    /// One of `FRAG_*` in a key; 0 or 0xff in a mask.
    pub frag: u8,
}

impl Default for KeyIpv4 {
    fn default() -> Self {
        KeyIpv4 {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 0,
            tos: 0,
            ttl: 0,
            frag: 0,
        }
    }
}

/// `struct ovs_key_ipv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyIpv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Flow label (20 bits).
    pub label: u32,
    /// Next header.
    pub proto: u8,
    /// Traffic class.
    pub tclass: u8,
    /// Hop limit.
    pub hlimit: u8,
    /// One of `FRAG_*` in a key; 0 or 0xff in a mask.
    pub frag: u8,
}

impl Default for KeyIpv6 {
    fn default() -> Self {
        KeyIpv6 {
            src: Ipv6Addr::UNSPECIFIED,
            dst: Ipv6Addr::UNSPECIFIED,
            label: 0,
            proto: 0,
            tclass: 0,
            hlimit: 0,
            frag: 0,
        }
    }
}

/// `struct ovs_key_tcp` / `ovs_key_udp` / `ovs_key_sctp`: a pair of transport ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyPorts {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

/// `struct ovs_key_icmp` / `ovs_key_icmpv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyIcmp {
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
}

/// `struct ovs_key_arp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyArp {
    /// Sender IP.
    pub sip: Ipv4Addr,
    /// Target IP.
    pub tip: Ipv4Addr,
    /// Opcode (1 request, 2 reply).
    pub op: u16,
    /// Sender hardware address.
    pub sha: Mac,
    /// Target hardware address.
    pub tha: Mac,
}

impl Default for KeyArp {
    fn default() -> Self {
        KeyArp {
            sip: Ipv4Addr::UNSPECIFIED,
            tip: Ipv4Addr::UNSPECIFIED,
            op: 0,
            sha: [0; 6],
            tha: [0; 6],
        }
    }
}

/// `struct ovs_key_nd`: IPv6 neighbour discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyNd {
    /// Target address.
    pub target: Ipv6Addr,
    /// Source link-layer address option.
    pub sll: Mac,
    /// Target link-layer address option.
    pub tll: Mac,
}

impl Default for KeyNd {
    fn default() -> Self {
        KeyNd {
            target: Ipv6Addr::UNSPECIFIED,
            sll: [0; 6],
            tll: [0; 6],
        }
    }
}

/// `struct ovs_key_ct_tuple_ipv4`: the original direction tuple of a tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtTupleIpv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
}

impl Default for CtTupleIpv4 {
    fn default() -> Self {
        CtTupleIpv4 {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            src_port: 0,
            dst_port: 0,
            proto: 0,
        }
    }
}

/// `struct ovs_key_ct_tuple_ipv6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtTupleIpv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
}

impl Default for CtTupleIpv6 {
    fn default() -> Self {
        CtTupleIpv6 {
            src: Ipv6Addr::UNSPECIFIED,
            dst: Ipv6Addr::UNSPECIFIED,
            src_port: 0,
            dst_port: 0,
            proto: 0,
        }
    }
}

/// Geneve options (`OVS_TUNNEL_KEY_ATTR_GENEVE_OPTS`): the raw TLV bytes, stored inline so a
/// tunnel key never allocates. The kernel accepts at most 252 bytes of options.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveOpts {
    len: u8,
    data: [u8; GeneveOpts::MAX],
}

impl GeneveOpts {
    /// Largest option block the kernel accepts (`IP_TUNNEL_OPTS_MAX` rounded to 4 bytes).
    pub const MAX: usize = 252;

    /// Options from raw TLV bytes; `None` when longer than [`GeneveOpts::MAX`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > Self::MAX {
            return None;
        }
        let mut data = [0u8; Self::MAX];
        data[..bytes.len()].copy_from_slice(bytes);
        Some(GeneveOpts {
            len: bytes.len() as u8,
            data,
        })
    }

    /// The raw TLV bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }
}

impl Default for GeneveOpts {
    fn default() -> Self {
        GeneveOpts {
            len: 0,
            data: [0; Self::MAX],
        }
    }
}

impl std::fmt::Debug for GeneveOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GeneveOpts").field(&self.as_bytes()).finish()
    }
}

/// `OVS_KEY_ATTR_TUNNEL`: nested `OVS_TUNNEL_KEY_ATTR_*`. Used both for matching (key and
/// mask) and in `set(tunnel(..))`. In a mask, a flag (`df`, `csum`, `oam`) that is `true`
/// means the flag is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TunnelKey {
    /// `OVS_TUNNEL_KEY_ATTR_ID` (VNI for VXLAN/Geneve).
    pub tun_id: Option<u64>,
    /// `OVS_TUNNEL_KEY_ATTR_IPV4_SRC`.
    pub ipv4_src: Option<Ipv4Addr>,
    /// `OVS_TUNNEL_KEY_ATTR_IPV4_DST`.
    pub ipv4_dst: Option<Ipv4Addr>,
    /// `OVS_TUNNEL_KEY_ATTR_IPV6_SRC`.
    pub ipv6_src: Option<Ipv6Addr>,
    /// `OVS_TUNNEL_KEY_ATTR_IPV6_DST`.
    pub ipv6_dst: Option<Ipv6Addr>,
    /// `OVS_TUNNEL_KEY_ATTR_TOS`.
    pub tos: Option<u8>,
    /// `OVS_TUNNEL_KEY_ATTR_TTL`.
    pub ttl: Option<u8>,
    /// `OVS_TUNNEL_KEY_ATTR_DONT_FRAGMENT`.
    pub df: bool,
    /// `OVS_TUNNEL_KEY_ATTR_CSUM`.
    pub csum: bool,
    /// `OVS_TUNNEL_KEY_ATTR_OAM`.
    pub oam: bool,
    /// `OVS_TUNNEL_KEY_ATTR_TP_SRC`.
    pub tp_src: Option<u16>,
    /// `OVS_TUNNEL_KEY_ATTR_TP_DST`.
    pub tp_dst: Option<u16>,
    /// `OVS_TUNNEL_KEY_ATTR_GENEVE_OPTS`. Boxed: up to 252 bytes that Weft's VXLAN tunnels
    /// never carry, which would otherwise make every key, mask and `set` action that much
    /// larger.
    pub geneve: Option<Box<GeneveOpts>>,
    /// Tunnel attributes this crate does not model (VXLAN GBP, ERSPAN, ...), kept verbatim.
    pub other: Vec<RawAttr>,
}

impl TunnelKey {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == TunnelKey::default()
    }
}

/// A flow key (or, as [`FlowMask`], a mask): one optional value per `OVS_KEY_ATTR_*`.
///
/// Field order is the order in which the kernel dumps the attributes and in which
/// `ovs-dpctl dump-flows` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// `OVS_KEY_ATTR_RECIRC_ID`.
    pub recirc_id: Option<u32>,
    /// `OVS_KEY_ATTR_DP_HASH`.
    pub dp_hash: Option<u32>,
    /// `OVS_KEY_ATTR_PRIORITY` (`skb_priority`).
    pub priority: Option<u32>,
    /// `OVS_KEY_ATTR_TUNNEL`.
    pub tunnel: Option<TunnelKey>,
    /// `OVS_KEY_ATTR_IN_PORT`.
    pub in_port: Option<u32>,
    /// `OVS_KEY_ATTR_SKB_MARK`.
    pub skb_mark: Option<u32>,
    /// `OVS_KEY_ATTR_CT_STATE` (bits of [`ct_state`]).
    pub ct_state: Option<u32>,
    /// `OVS_KEY_ATTR_CT_ZONE`.
    pub ct_zone: Option<u16>,
    /// `OVS_KEY_ATTR_CT_MARK`.
    pub ct_mark: Option<u32>,
    /// `OVS_KEY_ATTR_CT_LABELS` (128 bits, host order as OVS uses them).
    pub ct_label: Option<u128>,
    /// `OVS_KEY_ATTR_CT_ORIG_TUPLE_IPV4`.
    pub ct_tuple4: Option<CtTupleIpv4>,
    /// `OVS_KEY_ATTR_CT_ORIG_TUPLE_IPV6`.
    pub ct_tuple6: Option<CtTupleIpv6>,
    /// `OVS_KEY_ATTR_ETHERNET`.
    pub eth: Option<KeyEthernet>,
    /// `OVS_KEY_ATTR_ETHERTYPE`. With a VLAN tag this is the outer TPID (0x8100) and the
    /// inner Ethertype is in `encap`.
    pub eth_type: Option<u16>,
    /// `OVS_KEY_ATTR_VLAN`: the TCI, with [`VLAN_CFI`] set when a tag is present.
    pub vlan: Option<u16>,
    /// `OVS_KEY_ATTR_ENCAP`: the key of what follows the VLAN tag.
    pub encap: Option<Box<FlowKey>>,
    /// `OVS_KEY_ATTR_IPV4`.
    pub ipv4: Option<KeyIpv4>,
    /// `OVS_KEY_ATTR_IPV6`.
    pub ipv6: Option<KeyIpv6>,
    /// `OVS_KEY_ATTR_IPV6_EXTHDRS` (32): bits of the IPv6 extension headers seen. Linux 5.18+
    /// dumps it with every IPv6 flow; OVS (3.1) does not know it and prints it as
    /// `key32(..)`, which is what odp prints too.
    pub ipv6_exthdrs: Option<u16>,
    /// `OVS_KEY_ATTR_ARP`.
    pub arp: Option<KeyArp>,
    /// `OVS_KEY_ATTR_TCP`.
    pub tcp: Option<KeyPorts>,
    /// `OVS_KEY_ATTR_TCP_FLAGS` (bits of [`tcp_flags`]).
    pub tcp_flags: Option<u16>,
    /// `OVS_KEY_ATTR_UDP`.
    pub udp: Option<KeyPorts>,
    /// `OVS_KEY_ATTR_SCTP`.
    pub sctp: Option<KeyPorts>,
    /// `OVS_KEY_ATTR_ICMP`.
    pub icmp: Option<KeyIcmp>,
    /// `OVS_KEY_ATTR_ICMPV6`.
    pub icmpv6: Option<KeyIcmp>,
    /// `OVS_KEY_ATTR_ND`.
    pub nd: Option<KeyNd>,
    /// Key attributes this crate does not model, kept verbatim.
    pub other: Vec<RawAttr>,
}

impl FlowKey {
    /// True when no attribute is present. An empty *mask* means an exact match of every key
    /// attribute (the kernel's rule when `OVS_FLOW_ATTR_MASK` is absent).
    pub fn is_empty(&self) -> bool {
        *self == FlowKey::default()
    }

    /// Clears every attribute, keeping the capacity of `other` so a reused key does not
    /// allocate again (only a VLAN `encap` box is freed).
    pub fn clear(&mut self) {
        let mut other = std::mem::take(&mut self.other);
        other.clear();
        *self = FlowKey {
            other,
            ..FlowKey::default()
        };
    }

    /// The mask that matches every attribute present in `self` exactly.
    pub fn exact_mask(&self) -> FlowMask {
        let ones4 = Ipv4Addr::BROADCAST;
        let ones6 = Ipv6Addr::from(u128::MAX);
        FlowKey {
            recirc_id: self.recirc_id.map(|_| u32::MAX),
            dp_hash: self.dp_hash.map(|_| u32::MAX),
            priority: self.priority.map(|_| u32::MAX),
            tunnel: self.tunnel.as_ref().map(|t| TunnelKey {
                tun_id: t.tun_id.map(|_| u64::MAX),
                ipv4_src: t.ipv4_src.map(|_| ones4),
                ipv4_dst: t.ipv4_dst.map(|_| ones4),
                ipv6_src: t.ipv6_src.map(|_| ones6),
                ipv6_dst: t.ipv6_dst.map(|_| ones6),
                tos: t.tos.map(|_| u8::MAX),
                ttl: t.ttl.map(|_| u8::MAX),
                df: t.df,
                csum: t.csum,
                oam: t.oam,
                tp_src: t.tp_src.map(|_| u16::MAX),
                tp_dst: t.tp_dst.map(|_| u16::MAX),
                geneve: t.geneve.as_ref().map(|g| {
                    Box::new(
                        GeneveOpts::new(&[0xff; GeneveOpts::MAX][..g.as_bytes().len()])
                            .unwrap_or_default(),
                    )
                }),
                other: t
                    .other
                    .iter()
                    .map(|a| RawAttr {
                        kind: a.kind,
                        data: vec![0xff; a.data.len()],
                    })
                    .collect(),
            }),
            in_port: self.in_port.map(|_| u32::MAX),
            skb_mark: self.skb_mark.map(|_| u32::MAX),
            ct_state: self.ct_state.map(|_| u32::MAX),
            ct_zone: self.ct_zone.map(|_| u16::MAX),
            ct_mark: self.ct_mark.map(|_| u32::MAX),
            ct_label: self.ct_label.map(|_| u128::MAX),
            ct_tuple4: self.ct_tuple4.map(|_| CtTupleIpv4 {
                src: ones4,
                dst: ones4,
                src_port: u16::MAX,
                dst_port: u16::MAX,
                proto: u8::MAX,
            }),
            ct_tuple6: self.ct_tuple6.map(|_| CtTupleIpv6 {
                src: ones6,
                dst: ones6,
                src_port: u16::MAX,
                dst_port: u16::MAX,
                proto: u8::MAX,
            }),
            eth: self.eth.map(|_| KeyEthernet {
                src: [0xff; 6],
                dst: [0xff; 6],
            }),
            eth_type: self.eth_type.map(|_| u16::MAX),
            vlan: self.vlan.map(|_| u16::MAX),
            encap: self.encap.as_ref().map(|e| Box::new(e.exact_mask())),
            ipv4: self.ipv4.map(|_| KeyIpv4 {
                src: ones4,
                dst: ones4,
                proto: u8::MAX,
                tos: u8::MAX,
                ttl: u8::MAX,
                frag: u8::MAX,
            }),
            ipv6: self.ipv6.map(|_| KeyIpv6 {
                src: ones6,
                dst: ones6,
                label: 0x000f_ffff,
                proto: u8::MAX,
                tclass: u8::MAX,
                hlimit: u8::MAX,
                frag: u8::MAX,
            }),
            ipv6_exthdrs: self.ipv6_exthdrs.map(|_| u16::MAX),
            arp: self.arp.map(|_| KeyArp {
                sip: ones4,
                tip: ones4,
                op: u16::MAX,
                sha: [0xff; 6],
                tha: [0xff; 6],
            }),
            tcp: self.tcp.map(|_| KeyPorts {
                src: u16::MAX,
                dst: u16::MAX,
            }),
            tcp_flags: self.tcp_flags.map(|_| u16::MAX),
            udp: self.udp.map(|_| KeyPorts {
                src: u16::MAX,
                dst: u16::MAX,
            }),
            sctp: self.sctp.map(|_| KeyPorts {
                src: u16::MAX,
                dst: u16::MAX,
            }),
            icmp: self.icmp.map(|_| KeyIcmp {
                icmp_type: u8::MAX,
                code: u8::MAX,
            }),
            icmpv6: self.icmpv6.map(|_| KeyIcmp {
                icmp_type: u8::MAX,
                code: u8::MAX,
            }),
            nd: self.nd.map(|_| KeyNd {
                target: ones6,
                sll: [0xff; 6],
                tll: [0xff; 6],
            }),
            other: self
                .other
                .iter()
                .map(|a| RawAttr {
                    kind: a.kind,
                    data: vec![0xff; a.data.len()],
                })
                .collect(),
        }
    }
}
