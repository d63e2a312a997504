//! Netlink attribute framing: a bounds-checked reader and an appending writer over plain byte
//! buffers (4-byte aligned `struct nlattr` headers), and the kernel constants of every
//! `OVS_*_ATTR_*` space from `include/uapi/linux/openvswitch.h`.

use crate::error::{Error, Result};

/// Netlink attribute header length.
pub const NLA_HDRLEN: usize = 4;
/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// `NLA_TYPE_MASK`: the attribute type without the flag bits.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Rounds up to the netlink alignment (4).
pub const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One attribute seen by [`Attrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// Type as sent, flag bits included.
    pub raw_kind: u16,
    /// Payload without padding.
    pub data: &'a [u8],
}

impl Attr<'_> {
    /// Type without the flag bits.
    pub fn kind(&self) -> u16 {
        self.raw_kind & NLA_TYPE_MASK
    }
}

/// Iterator over a stream of attributes. A malformed header yields one error (naming `space`)
/// and then stops. The last attribute may lack its padding, as the kernel allows.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    space: &'static str,
    failed: bool,
}

/// Reads the attributes of `buf`; `space` names the attribute space for errors
/// (e.g. `OVS_KEY_ATTR`).
pub fn attrs<'a>(buf: &'a [u8], space: &'static str) -> Attrs<'a> {
    Attrs {
        buf,
        space,
        failed: false,
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < NLA_HDRLEN {
            self.failed = true;
            return Some(Err(Error::decode(
                self.space,
                format!("stream: {} trailing bytes", self.buf.len()),
            )));
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let raw_kind = u16::from_ne_bytes([self.buf[2], self.buf[3]]);
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.failed = true;
            return Some(Err(Error::decode(
                self.space,
                format!(
                    "type {} header length {len} with {} bytes left",
                    raw_kind & NLA_TYPE_MASK,
                    self.buf.len()
                ),
            )));
        }
        let data = &self.buf[NLA_HDRLEN..len];
        let next = align(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some(Ok(Attr { raw_kind, data }))
    }
}

/// The attributes of `buf` by type, for types below `N` (the last of a type wins; higher
/// types are skipped). `space` names the attribute space for errors. Nothing is allocated.
pub fn table<'a, const N: usize>(
    buf: &'a [u8],
    space: &'static str,
) -> Result<[Option<&'a [u8]>; N]> {
    let mut t = [None; N];
    for a in attrs(buf, space) {
        let a = a?;
        if let Some(slot) = t.get_mut(usize::from(a.kind())) {
            *slot = Some(a.data);
        }
    }
    Ok(t)
}

/// Appends attributes to a byte buffer. Nested attributes are opened with
/// [`Writer::begin`] and closed with [`Writer::end`], which patches their length.
#[derive(Debug)]
pub struct Writer<'a> {
    /// The buffer written to.
    pub buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer that appends to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Appends one attribute with its padding.
    pub fn put(&mut self, kind: u16, data: &[u8]) -> Result<()> {
        let len = NLA_HDRLEN + data.len();
        let len16 = u16::try_from(len).map_err(|_| Error::Encode {
            attr: "netlink attribute",
            reason: format!("type {kind} payload of {} bytes exceeds 65531", data.len()),
        })?;
        self.pad();
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    /// Appends a nested attribute whose contents are already encoded.
    pub fn nested(&mut self, kind: u16, inner: &[u8]) -> Result<()> {
        self.put(kind | NLA_F_NESTED, inner)
    }

    /// Appends a NUL-terminated string.
    pub fn string(&mut self, kind: u16, s: &str) -> Result<()> {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(kind, &v)
    }

    /// Appends a flag (empty) attribute.
    pub fn flag(&mut self, kind: u16) -> Result<()> {
        self.put(kind, &[])
    }

    /// Appends a native-endian u32.
    pub fn u32(&mut self, kind: u16, v: u32) -> Result<()> {
        self.put(kind, &v.to_ne_bytes())
    }

    /// Appends a native-endian u16.
    pub fn u16(&mut self, kind: u16, v: u16) -> Result<()> {
        self.put(kind, &v.to_ne_bytes())
    }

    /// Appends a big-endian u16.
    pub fn be16(&mut self, kind: u16, v: u16) -> Result<()> {
        self.put(kind, &v.to_be_bytes())
    }

    /// Appends a native-endian u64.
    pub fn u64(&mut self, kind: u16, v: u64) -> Result<()> {
        self.put(kind, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; returns its offset for [`Writer::end`].
    pub fn begin(&mut self, kind: u16) -> usize {
        self.pad();
        let off = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        off
    }

    /// Closes the nested attribute opened at `off`.
    pub fn end(&mut self, off: usize) -> Result<()> {
        let len = self.buf.len() - off;
        let len16 = u16::try_from(len).map_err(|_| Error::Encode {
            attr: "nested netlink attribute",
            reason: format!("{len} bytes exceed 65535"),
        })?;
        self.buf[off..off + 2].copy_from_slice(&len16.to_ne_bytes());
        self.pad();
        Ok(())
    }
}

/// A new buffer that starts with `prefix` (an `ovs_header`, or nothing), followed by the
/// attributes `f` writes.
pub fn build(prefix: &[u8], f: impl FnOnce(&mut Writer<'_>) -> Result<()>) -> Result<Vec<u8>> {
    let mut buf = prefix.to_vec();
    f(&mut Writer::new(&mut buf))?;
    Ok(buf)
}

/// Reads a fixed-size payload, or fails with `invalid NAME length N`.
pub fn fixed<const N: usize>(name: &'static str, data: &[u8]) -> Result<[u8; N]> {
    data.try_into()
        .map_err(|_| Error::bad_len(name, data.len()))
}

/// Native-endian u32 payload.
pub fn get_u32(name: &'static str, data: &[u8]) -> Result<u32> {
    Ok(u32::from_ne_bytes(fixed(name, data)?))
}

/// Native-endian u16 payload.
pub fn get_u16(name: &'static str, data: &[u8]) -> Result<u16> {
    Ok(u16::from_ne_bytes(fixed(name, data)?))
}

/// Big-endian u16 payload.
pub fn get_be16(name: &'static str, data: &[u8]) -> Result<u16> {
    Ok(u16::from_be_bytes(fixed(name, data)?))
}

/// Native-endian u64 payload.
pub fn get_u64(name: &'static str, data: &[u8]) -> Result<u64> {
    Ok(u64::from_ne_bytes(fixed(name, data)?))
}

/// A flag attribute must be empty.
pub fn get_flag(name: &'static str, data: &[u8]) -> Result<bool> {
    if data.is_empty() {
        Ok(true)
    } else {
        Err(Error::bad_len(name, data.len()))
    }
}

/// A NUL-terminated (or unterminated) string payload.
pub fn get_str(name: &'static str, data: &[u8]) -> Result<String> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    std::str::from_utf8(&data[..end])
        .map(str::to_owned)
        .map_err(|_| Error::decode(name, "is not UTF-8"))
}

/// `OVS_KEY_ATTR_*`.
pub mod key {
    #![allow(missing_docs)]
    pub const UNSPEC: u16 = 0;
    pub const ENCAP: u16 = 1;
    pub const PRIORITY: u16 = 2;
    pub const IN_PORT: u16 = 3;
    pub const ETHERNET: u16 = 4;
    pub const VLAN: u16 = 5;
    pub const ETHERTYPE: u16 = 6;
    pub const IPV4: u16 = 7;
    pub const IPV6: u16 = 8;
    pub const TCP: u16 = 9;
    pub const UDP: u16 = 10;
    pub const ICMP: u16 = 11;
    pub const ICMPV6: u16 = 12;
    pub const ARP: u16 = 13;
    pub const ND: u16 = 14;
    pub const SKB_MARK: u16 = 15;
    pub const TUNNEL: u16 = 16;
    pub const SCTP: u16 = 17;
    pub const TCP_FLAGS: u16 = 18;
    pub const DP_HASH: u16 = 19;
    pub const RECIRC_ID: u16 = 20;
    pub const MPLS: u16 = 21;
    pub const CT_STATE: u16 = 22;
    pub const CT_ZONE: u16 = 23;
    pub const CT_MARK: u16 = 24;
    pub const CT_LABELS: u16 = 25;
    pub const CT_ORIG_TUPLE_IPV4: u16 = 26;
    pub const CT_ORIG_TUPLE_IPV6: u16 = 27;
    pub const NSH: u16 = 28;
    pub const PACKET_TYPE: u16 = 29;
    pub const ND_EXTENSIONS: u16 = 30;
    pub const TUNNEL_INFO: u16 = 31;
    pub const IPV6_EXTHDRS: u16 = 32;
}

/// `OVS_TUNNEL_KEY_ATTR_*`.
pub mod tunnel {
    #![allow(missing_docs)]
    pub const ID: u16 = 0;
    pub const IPV4_SRC: u16 = 1;
    pub const IPV4_DST: u16 = 2;
    pub const TOS: u16 = 3;
    pub const TTL: u16 = 4;
    pub const DONT_FRAGMENT: u16 = 5;
    pub const CSUM: u16 = 6;
    pub const OAM: u16 = 7;
    pub const GENEVE_OPTS: u16 = 8;
    pub const TP_SRC: u16 = 9;
    pub const TP_DST: u16 = 10;
    pub const VXLAN_OPTS: u16 = 11;
    pub const IPV6_SRC: u16 = 12;
    pub const IPV6_DST: u16 = 13;
    pub const PAD: u16 = 14;
    pub const ERSPAN_OPTS: u16 = 15;
}

/// `OVS_ACTION_ATTR_*`.
pub mod action {
    #![allow(missing_docs)]
    pub const OUTPUT: u16 = 1;
    pub const USERSPACE: u16 = 2;
    pub const SET: u16 = 3;
    pub const PUSH_VLAN: u16 = 4;
    pub const POP_VLAN: u16 = 5;
    pub const SAMPLE: u16 = 6;
    pub const RECIRC: u16 = 7;
    pub const HASH: u16 = 8;
    pub const PUSH_MPLS: u16 = 9;
    pub const POP_MPLS: u16 = 10;
    pub const SET_MASKED: u16 = 11;
    pub const CT: u16 = 12;
    pub const TRUNC: u16 = 13;
    pub const PUSH_ETH: u16 = 14;
    pub const POP_ETH: u16 = 15;
    pub const CT_CLEAR: u16 = 16;
    pub const PUSH_NSH: u16 = 17;
    pub const POP_NSH: u16 = 18;
    pub const METER: u16 = 19;
    pub const CLONE: u16 = 20;
    pub const CHECK_PKT_LEN: u16 = 21;
    pub const ADD_MPLS: u16 = 22;
    pub const DEC_TTL: u16 = 23;
    pub const DROP: u16 = 24;
}

/// `OVS_USERSPACE_ATTR_*`.
pub mod userspace {
    #![allow(missing_docs)]
    pub const PID: u16 = 1;
    pub const USERDATA: u16 = 2;
    pub const EGRESS_TUN_PORT: u16 = 3;
    pub const ACTIONS: u16 = 4;
}

/// `OVS_SAMPLE_ATTR_*`.
pub mod sample {
    #![allow(missing_docs)]
    pub const PROBABILITY: u16 = 1;
    pub const ACTIONS: u16 = 2;
}

/// `OVS_CHECK_PKT_LEN_ATTR_*`.
pub mod check_pkt_len {
    #![allow(missing_docs)]
    pub const PKT_LEN: u16 = 1;
    pub const ACTIONS_IF_GREATER: u16 = 2;
    pub const ACTIONS_IF_LESS_EQUAL: u16 = 3;
}

/// `OVS_CT_ATTR_*`.
pub mod ct {
    #![allow(missing_docs)]
    pub const COMMIT: u16 = 1;
    pub const ZONE: u16 = 2;
    pub const MARK: u16 = 3;
    pub const LABELS: u16 = 4;
    pub const HELPER: u16 = 5;
    pub const NAT: u16 = 6;
    pub const FORCE_COMMIT: u16 = 7;
    pub const EVENTMASK: u16 = 8;
    pub const TIMEOUT: u16 = 9;
}

/// `OVS_NAT_ATTR_*`.
pub mod nat {
    #![allow(missing_docs)]
    pub const SRC: u16 = 1;
    pub const DST: u16 = 2;
    pub const IP_MIN: u16 = 3;
    pub const IP_MAX: u16 = 4;
    pub const PROTO_MIN: u16 = 5;
    pub const PROTO_MAX: u16 = 6;
    pub const PERSISTENT: u16 = 7;
    pub const PROTO_HASH: u16 = 8;
    pub const PROTO_RANDOM: u16 = 9;
}

/// `OVS_FLOW_ATTR_*`.
pub mod flow {
    #![allow(missing_docs)]
    pub const KEY: u16 = 1;
    pub const ACTIONS: u16 = 2;
    pub const STATS: u16 = 3;
    pub const TCP_FLAGS: u16 = 4;
    pub const USED: u16 = 5;
    pub const CLEAR: u16 = 6;
    pub const MASK: u16 = 7;
    pub const PROBE: u16 = 8;
    pub const UFID: u16 = 9;
    pub const UFID_FLAGS: u16 = 10;
    pub const PAD: u16 = 11;
}

/// `OVS_DP_ATTR_*`.
pub mod dp {
    #![allow(missing_docs)]
    pub const NAME: u16 = 1;
    pub const UPCALL_PID: u16 = 2;
    pub const STATS: u16 = 3;
    pub const MEGAFLOW_STATS: u16 = 4;
    pub const USER_FEATURES: u16 = 5;
    pub const PAD: u16 = 6;
    pub const MASKS_CACHE_SIZE: u16 = 7;
    pub const PER_CPU_PIDS: u16 = 8;
    /// `OVS_DP_F_UNALIGNED`: flow keys may be unaligned.
    pub const F_UNALIGNED: u32 = 1 << 0;
    /// `OVS_DP_F_VPORT_PIDS`: a vport may have several upcall pids.
    pub const F_VPORT_PIDS: u32 = 1 << 1;
    /// `OVS_DP_F_TC_RECIRC_SHARING`.
    pub const F_TC_RECIRC_SHARING: u32 = 1 << 2;
    /// `OVS_DP_F_DISPATCH_UPCALL_PER_CPU`: upcalls go to the pid of the receiving CPU.
    pub const F_DISPATCH_UPCALL_PER_CPU: u32 = 1 << 3;
}

/// `OVS_VPORT_ATTR_*`.
pub mod vport {
    #![allow(missing_docs)]
    pub const PORT_NO: u16 = 1;
    pub const TYPE: u16 = 2;
    pub const NAME: u16 = 3;
    pub const OPTIONS: u16 = 4;
    pub const UPCALL_PID: u16 = 5;
    pub const STATS: u16 = 6;
    pub const PAD: u16 = 7;
    pub const IFINDEX: u16 = 8;
    pub const NETNSID: u16 = 9;
    pub const UPCALL_STATS: u16 = 10;
    /// `OVS_TUNNEL_ATTR_DST_PORT`, inside `OVS_VPORT_ATTR_OPTIONS`.
    pub const TUNNEL_DST_PORT: u16 = 1;
    /// `OVS_TUNNEL_ATTR_EXTENSION`, inside `OVS_VPORT_ATTR_OPTIONS`.
    pub const TUNNEL_EXTENSION: u16 = 2;
    /// `OVS_VPORT_TYPE_NETDEV`.
    pub const TYPE_NETDEV: u32 = 1;
    /// `OVS_VPORT_TYPE_INTERNAL`.
    pub const TYPE_INTERNAL: u32 = 2;
    /// `OVS_VPORT_TYPE_GRE`.
    pub const TYPE_GRE: u32 = 3;
    /// `OVS_VPORT_TYPE_VXLAN`.
    pub const TYPE_VXLAN: u32 = 4;
    /// `OVS_VPORT_TYPE_GENEVE`.
    pub const TYPE_GENEVE: u32 = 5;
}

/// `OVS_PACKET_ATTR_*`.
pub mod packet {
    #![allow(missing_docs)]
    pub const PACKET: u16 = 1;
    pub const KEY: u16 = 2;
    pub const ACTIONS: u16 = 3;
    pub const USERDATA: u16 = 4;
    pub const EGRESS_TUN_KEY: u16 = 5;
    pub const PROBE: u16 = 8;
    pub const MRU: u16 = 9;
    pub const LEN: u16 = 10;
    pub const HASH: u16 = 11;
    pub const UPCALL_PID: u16 = 12;
}
