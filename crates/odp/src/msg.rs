//! Generic netlink payloads of the `ovs_flow`, `ovs_datapath`, `ovs_vport` and `ovs_packet`
//! families as plain values: one `#[non_exhaustive]` enum per attribute space (unknown
//! attributes kept as `Other`), parsed from and emitted to the bytes that follow the
//! `genlmsghdr` (the `struct ovs_header` and the attributes). Sending is the socket layer's job.

use crate::action::Action;
use crate::codec::{decode_actions, decode_key, encode_actions, encode_key};
use crate::error::{Error, Result};
use crate::flow::{Flow, FlowStats};
use crate::key::FlowKey;
use crate::nla::{self, Writer, attrs, fixed, get_flag, get_str, get_u32, get_u64};

/// `struct ovs_header` length.
pub const OVS_HEADER_LEN: usize = 4;

/// `OVS_FLOW_CMD_*`, `OVS_DP_CMD_*`, `OVS_VPORT_CMD_*` share these numbers.
pub mod cmd {
    #![allow(missing_docs)]
    pub const NEW: u8 = 1;
    pub const DEL: u8 = 2;
    pub const GET: u8 = 3;
    pub const SET: u8 = 4;
    /// `OVS_PACKET_CMD_MISS`.
    pub const PACKET_MISS: u8 = 1;
    /// `OVS_PACKET_CMD_ACTION`.
    pub const PACKET_ACTION: u8 = 2;
    /// `OVS_PACKET_CMD_EXECUTE`.
    pub const PACKET_EXECUTE: u8 = 3;
}

/// `OVS_UFID_F_*` flags of `OVS_FLOW_ATTR_UFID_FLAGS`.
pub mod ufid_flags {
    /// Leave the key out of replies.
    pub const OMIT_KEY: u32 = 1;
    /// Leave the mask out of replies.
    pub const OMIT_MASK: u32 = 2;
    /// Leave the actions out of replies.
    pub const OMIT_ACTIONS: u32 = 4;
}

fn split_header<'a>(space: &'static str, payload: &'a [u8]) -> Result<(i32, &'a [u8])> {
    if payload.len() < OVS_HEADER_LEN {
        return Err(Error::decode(
            space,
            format!("message of {} bytes has no ovs_header", payload.len()),
        ));
    }
    let idx = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    Ok((idx, &payload[OVS_HEADER_LEN..]))
}

/// The UFID as 16 bytes: four native-endian u32 words, most significant word first, which
/// is how OVS stores it and prints it as a UUID.
pub fn ufid_bytes(u: u128) -> [u8; 16] {
    let mut b = [0u8; 16];
    for i in 0..4 {
        let w = (u >> (96 - 32 * i)) as u32;
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    b
}

/// Inverse of [`ufid_bytes`].
pub fn ufid_from_bytes(b: &[u8; 16]) -> u128 {
    let mut u = 0u128;
    for i in 0..4 {
        let w = u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        u |= u128::from(w) << (96 - 32 * i);
    }
    u
}

/// One attribute of an `ovs_flow` message (`OVS_FLOW_ATTR_*`).
// A key is large (its tunnel part holds Geneve options inline); attribute lists are short.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowAttr {
    /// `OVS_FLOW_ATTR_KEY`.
    Key(FlowKey),
    /// `OVS_FLOW_ATTR_ACTIONS`.
    Actions(Vec<Action>),
    /// `OVS_FLOW_ATTR_STATS`: (packets, bytes).
    Stats(u64, u64),
    /// `OVS_FLOW_ATTR_TCP_FLAGS`.
    TcpFlags(u8),
    /// `OVS_FLOW_ATTR_USED`: monotonic ms of the last packet.
    Used(u64),
    /// `OVS_FLOW_ATTR_CLEAR`.
    Clear,
    /// `OVS_FLOW_ATTR_MASK`.
    Mask(FlowKey),
    /// `OVS_FLOW_ATTR_PROBE`.
    Probe,
    /// `OVS_FLOW_ATTR_UFID`.
    Ufid(u128),
    /// `OVS_FLOW_ATTR_UFID_FLAGS`.
    UfidFlags(u32),
    /// Anything else, verbatim.
    Other(u16, Vec<u8>),
}

/// An `ovs_flow` message payload: the datapath ifindex and the attributes in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowMsg {
    /// `ovs_header.dp_ifindex`.
    pub dp_ifindex: i32,
    /// Attributes, in wire order.
    pub attrs: Vec<FlowAttr>,
}

impl FlowMsg {
    /// Parses a payload (after the genlmsghdr).
    pub fn parse(payload: &[u8]) -> Result<Self> {
        use nla::flow as a;
        let (dp_ifindex, rest) = split_header("OVS_FLOW message", payload)?;
        let mut out = Vec::new();
        for at in attrs(rest, "OVS_FLOW_ATTR") {
            let at = at?;
            let d = at.data;
            out.push(match at.kind() {
                a::KEY => FlowAttr::Key(decode_key(d)?),
                a::MASK => FlowAttr::Mask(decode_key(d)?),
                a::ACTIONS => FlowAttr::Actions(decode_actions(d)?),
                a::STATS => {
                    let b: [u8; 16] = fixed("OVS_FLOW_ATTR_STATS", d)?;
                    let (p, by) = b.split_at(8);
                    FlowAttr::Stats(
                        u64::from_ne_bytes(p.try_into().unwrap_or([0; 8])),
                        u64::from_ne_bytes(by.try_into().unwrap_or([0; 8])),
                    )
                }
                a::TCP_FLAGS => FlowAttr::TcpFlags(fixed::<1>("OVS_FLOW_ATTR_TCP_FLAGS", d)?[0]),
                a::USED => FlowAttr::Used(get_u64("OVS_FLOW_ATTR_USED", d)?),
                a::CLEAR => {
                    get_flag("OVS_FLOW_ATTR_CLEAR", d)?;
                    FlowAttr::Clear
                }
                a::PROBE => {
                    get_flag("OVS_FLOW_ATTR_PROBE", d)?;
                    FlowAttr::Probe
                }
                a::UFID => FlowAttr::Ufid(ufid_from_bytes(&fixed("OVS_FLOW_ATTR_UFID", d)?)),
                a::UFID_FLAGS => FlowAttr::UfidFlags(get_u32("OVS_FLOW_ATTR_UFID_FLAGS", d)?),
                _ => FlowAttr::Other(at.raw_kind, d.to_vec()),
            });
        }
        Ok(FlowMsg {
            dp_ifindex,
            attrs: out,
        })
    }

    /// Appends the payload (ovs_header and attributes) to `buf`.
    pub fn emit(&self, buf: &mut Vec<u8>) -> Result<()> {
        use nla::flow as a;
        buf.extend_from_slice(&self.dp_ifindex.to_ne_bytes());
        for at in &self.attrs {
            let mut w = Writer::new(buf);
            match at {
                FlowAttr::Key(k) => {
                    let off = w.begin(a::KEY);
                    encode_key(k, w.buf)?;
                    w.end(off)?;
                }
                FlowAttr::Mask(k) => {
                    let off = w.begin(a::MASK);
                    encode_key(k, w.buf)?;
                    w.end(off)?;
                }
                FlowAttr::Actions(acts) => {
                    let off = w.begin(a::ACTIONS);
                    encode_actions(acts, w.buf)?;
                    w.end(off)?;
                }
                FlowAttr::Stats(p, b) => {
                    let mut x = [0u8; 16];
                    x[..8].copy_from_slice(&p.to_ne_bytes());
                    x[8..].copy_from_slice(&b.to_ne_bytes());
                    w.put(a::STATS, &x)?;
                }
                FlowAttr::TcpFlags(f) => w.put(a::TCP_FLAGS, &[*f])?,
                FlowAttr::Used(u) => w.put(a::USED, &u.to_ne_bytes())?,
                FlowAttr::Clear => w.flag(a::CLEAR)?,
                FlowAttr::Probe => w.flag(a::PROBE)?,
                FlowAttr::Ufid(u) => w.put(a::UFID, &ufid_bytes(*u))?,
                FlowAttr::UfidFlags(f) => w.u32(a::UFID_FLAGS, *f)?,
                FlowAttr::Other(k, d) => w.put(*k, d)?,
            }
        }
        Ok(())
    }

    /// The request that installs `flow` (`OVS_FLOW_CMD_NEW`/`SET` payload): key, mask (left out
    /// when empty: exact match), actions and UFID.
    pub fn put(dp_ifindex: i32, flow: &Flow) -> Self {
        let mut attrs = vec![FlowAttr::Key(flow.key.clone())];
        if !flow.mask.is_empty() {
            attrs.push(FlowAttr::Mask(flow.mask.clone()));
        }
        attrs.push(FlowAttr::Actions(flow.actions.clone()));
        if let Some(u) = flow.ufid {
            attrs.push(FlowAttr::Ufid(u));
        }
        FlowMsg { dp_ifindex, attrs }
    }

    /// The flow this message describes (a dump or get reply). `now_ms` is the caller's
    /// monotonic clock in ms, to turn `OVS_FLOW_ATTR_USED` into an age.
    pub fn to_flow(&self, now_ms: u64) -> Flow {
        let mut f = Flow::default();
        let (mut packets, mut bytes, mut used, mut tcp) = (0, 0, None, 0);
        for a in &self.attrs {
            match a {
                FlowAttr::Key(k) => f.key = k.clone(),
                FlowAttr::Mask(m) => f.mask = m.clone(),
                FlowAttr::Actions(acts) => f.actions = acts.clone(),
                FlowAttr::Ufid(u) => f.ufid = Some(*u),
                FlowAttr::Stats(p, b) => {
                    packets = *p;
                    bytes = *b;
                }
                FlowAttr::Used(u) => used = Some(*u),
                FlowAttr::TcpFlags(t) => tcp = *t,
                _ => {}
            }
        }
        f.stats = FlowStats::from_kernel(packets, bytes, used, now_ms, tcp);
        f
    }
}

/// One attribute of an `ovs_datapath` message (`OVS_DP_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpAttr {
    /// `OVS_DP_ATTR_NAME`.
    Name(String),
    /// `OVS_DP_ATTR_UPCALL_PID`.
    UpcallPid(u32),
    /// `OVS_DP_ATTR_STATS`: hit, missed, lost, flows.
    Stats([u64; 4]),
    /// `OVS_DP_ATTR_MEGAFLOW_STATS`: mask hits, masks, cache hits.
    MegaflowStats {
        /// `n_mask_hit`.
        mask_hit: u64,
        /// `n_masks`.
        masks: u32,
        /// `n_cache_hit`.
        cache_hit: u64,
    },
    /// `OVS_DP_ATTR_USER_FEATURES`.
    UserFeatures(u32),
    /// `OVS_DP_ATTR_MASKS_CACHE_SIZE`.
    MasksCacheSize(u32),
    /// `OVS_DP_ATTR_PER_CPU_PIDS`.
    PerCpuPids(Vec<u32>),
    /// Anything else, verbatim.
    Other(u16, Vec<u8>),
}

/// One attribute of an `ovs_vport` message (`OVS_VPORT_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VportAttr {
    /// `OVS_VPORT_ATTR_PORT_NO`.
    PortNo(u32),
    /// `OVS_VPORT_ATTR_TYPE`.
    Type(u32),
    /// `OVS_VPORT_ATTR_NAME`.
    Name(String),
    /// `OVS_VPORT_ATTR_OPTIONS` (nested `OVS_TUNNEL_ATTR_*`, kept encoded).
    Options(Vec<u8>),
    /// `OVS_VPORT_ATTR_UPCALL_PID`: one or more pids.
    UpcallPids(Vec<u32>),
    /// `OVS_VPORT_ATTR_STATS`: rx/tx packets, bytes, errors, dropped.
    Stats([u64; 8]),
    /// `OVS_VPORT_ATTR_IFINDEX`.
    Ifindex(u32),
    /// `OVS_VPORT_ATTR_NETNSID`.
    NetnsId(i32),
    /// Anything else, verbatim.
    Other(u16, Vec<u8>),
}

/// One attribute of an `ovs_packet` message (`OVS_PACKET_ATTR_*`).
// A key is large (its tunnel part holds Geneve options inline); attribute lists are short.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketAttr {
    /// `OVS_PACKET_ATTR_PACKET`.
    Packet(Vec<u8>),
    /// `OVS_PACKET_ATTR_KEY`.
    Key(FlowKey),
    /// `OVS_PACKET_ATTR_ACTIONS`.
    Actions(Vec<Action>),
    /// `OVS_PACKET_ATTR_USERDATA`.
    Userdata(Vec<u8>),
    /// `OVS_PACKET_ATTR_EGRESS_TUN_KEY` (nested tunnel attributes).
    EgressTunKey(crate::key::TunnelKey),
    /// `OVS_PACKET_ATTR_PROBE`.
    Probe,
    /// `OVS_PACKET_ATTR_MRU`.
    Mru(u16),
    /// `OVS_PACKET_ATTR_LEN`.
    Len(u32),
    /// `OVS_PACKET_ATTR_HASH`.
    Hash(u64),
    /// `OVS_PACKET_ATTR_UPCALL_PID`.
    UpcallPid(u32),
    /// Anything else, verbatim.
    Other(u16, Vec<u8>),
}

fn u32_list(name: &'static str, d: &[u8]) -> Result<Vec<u32>> {
    if !d.len().is_multiple_of(4) {
        return Err(Error::bad_len(name, d.len()));
    }
    Ok(d.chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn u64s<const N: usize>(name: &'static str, d: &[u8]) -> Result<[u64; N]> {
    if d.len() != N * 8 {
        return Err(Error::bad_len(name, d.len()));
    }
    let mut out = [0u64; N];
    for (i, c) in d.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        out[i] = u64::from_ne_bytes(b);
    }
    Ok(out)
}

fn put_str(w: &mut Writer<'_>, kind: u16, s: &str) -> Result<()> {
    let mut b = Vec::with_capacity(s.len() + 1);
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    w.put(kind, &b)
}

/// Parses an `ovs_datapath` payload into (dp_ifindex, attributes).
pub fn parse_dp(payload: &[u8]) -> Result<(i32, Vec<DpAttr>)> {
    use nla::dp as a;
    let (idx, rest) = split_header("OVS_DP message", payload)?;
    let mut out = Vec::new();
    for at in attrs(rest, "OVS_DP_ATTR") {
        let at = at?;
        let d = at.data;
        out.push(match at.kind() {
            a::NAME => DpAttr::Name(get_str("OVS_DP_ATTR_NAME", d)?),
            a::UPCALL_PID => DpAttr::UpcallPid(get_u32("OVS_DP_ATTR_UPCALL_PID", d)?),
            a::STATS => DpAttr::Stats(u64s::<4>("OVS_DP_ATTR_STATS", d)?),
            a::MEGAFLOW_STATS => {
                let b: [u8; 32] = fixed("OVS_DP_ATTR_MEGAFLOW_STATS", d)?;
                let g = |o: usize| {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(&b[o..o + 8]);
                    u64::from_ne_bytes(x)
                };
                DpAttr::MegaflowStats {
                    mask_hit: g(0),
                    masks: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                    cache_hit: g(16),
                }
            }
            a::USER_FEATURES => DpAttr::UserFeatures(get_u32("OVS_DP_ATTR_USER_FEATURES", d)?),
            a::MASKS_CACHE_SIZE => {
                DpAttr::MasksCacheSize(get_u32("OVS_DP_ATTR_MASKS_CACHE_SIZE", d)?)
            }
            a::PER_CPU_PIDS => DpAttr::PerCpuPids(u32_list("OVS_DP_ATTR_PER_CPU_PIDS", d)?),
            _ => DpAttr::Other(at.raw_kind, d.to_vec()),
        });
    }
    Ok((idx, out))
}

/// Appends an `ovs_datapath` payload.
pub fn emit_dp(dp_ifindex: i32, list: &[DpAttr], buf: &mut Vec<u8>) -> Result<()> {
    use nla::dp as a;
    buf.extend_from_slice(&dp_ifindex.to_ne_bytes());
    let mut w = Writer::new(buf);
    for at in list {
        match at {
            DpAttr::Name(n) => put_str(&mut w, a::NAME, n)?,
            DpAttr::UpcallPid(p) => w.u32(a::UPCALL_PID, *p)?,
            DpAttr::Stats(s) => {
                let b: Vec<u8> = s.iter().flat_map(|v| v.to_ne_bytes()).collect();
                w.put(a::STATS, &b)?;
            }
            DpAttr::MegaflowStats {
                mask_hit,
                masks,
                cache_hit,
            } => {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&mask_hit.to_ne_bytes());
                b[8..12].copy_from_slice(&masks.to_ne_bytes());
                b[16..24].copy_from_slice(&cache_hit.to_ne_bytes());
                w.put(a::MEGAFLOW_STATS, &b)?;
            }
            DpAttr::UserFeatures(f) => w.u32(a::USER_FEATURES, *f)?,
            DpAttr::MasksCacheSize(f) => w.u32(a::MASKS_CACHE_SIZE, *f)?,
            DpAttr::PerCpuPids(p) => {
                let b: Vec<u8> = p.iter().flat_map(|v| v.to_ne_bytes()).collect();
                w.put(a::PER_CPU_PIDS, &b)?;
            }
            DpAttr::Other(k, d) => w.put(*k, d)?,
        }
    }
    Ok(())
}

/// Parses an `ovs_vport` payload into (dp_ifindex, attributes).
pub fn parse_vport(payload: &[u8]) -> Result<(i32, Vec<VportAttr>)> {
    use nla::vport as a;
    let (idx, rest) = split_header("OVS_VPORT message", payload)?;
    let mut out = Vec::new();
    for at in attrs(rest, "OVS_VPORT_ATTR") {
        let at = at?;
        let d = at.data;
        out.push(match at.kind() {
            a::PORT_NO => VportAttr::PortNo(get_u32("OVS_VPORT_ATTR_PORT_NO", d)?),
            a::TYPE => VportAttr::Type(get_u32("OVS_VPORT_ATTR_TYPE", d)?),
            a::NAME => VportAttr::Name(get_str("OVS_VPORT_ATTR_NAME", d)?),
            a::OPTIONS => VportAttr::Options(d.to_vec()),
            a::UPCALL_PID => VportAttr::UpcallPids(u32_list("OVS_VPORT_ATTR_UPCALL_PID", d)?),
            a::STATS => VportAttr::Stats(u64s::<8>("OVS_VPORT_ATTR_STATS", d)?),
            a::IFINDEX => VportAttr::Ifindex(get_u32("OVS_VPORT_ATTR_IFINDEX", d)?),
            a::NETNSID => {
                VportAttr::NetnsId(i32::from_ne_bytes(fixed("OVS_VPORT_ATTR_NETNSID", d)?))
            }
            _ => VportAttr::Other(at.raw_kind, d.to_vec()),
        });
    }
    Ok((idx, out))
}

/// Appends an `ovs_vport` payload.
pub fn emit_vport(dp_ifindex: i32, list: &[VportAttr], buf: &mut Vec<u8>) -> Result<()> {
    use nla::vport as a;
    buf.extend_from_slice(&dp_ifindex.to_ne_bytes());
    let mut w = Writer::new(buf);
    for at in list {
        match at {
            VportAttr::PortNo(p) => w.u32(a::PORT_NO, *p)?,
            VportAttr::Type(t) => w.u32(a::TYPE, *t)?,
            VportAttr::Name(n) => put_str(&mut w, a::NAME, n)?,
            VportAttr::Options(o) => w.put(a::OPTIONS, o)?,
            VportAttr::UpcallPids(p) => {
                let b: Vec<u8> = p.iter().flat_map(|v| v.to_ne_bytes()).collect();
                w.put(a::UPCALL_PID, &b)?;
            }
            VportAttr::Stats(s) => {
                let b: Vec<u8> = s.iter().flat_map(|v| v.to_ne_bytes()).collect();
                w.put(a::STATS, &b)?;
            }
            VportAttr::Ifindex(i) => w.u32(a::IFINDEX, *i)?,
            VportAttr::NetnsId(i) => w.put(a::NETNSID, &i.to_ne_bytes())?,
            VportAttr::Other(k, d) => w.put(*k, d)?,
        }
    }
    Ok(())
}

/// Parses an `ovs_packet` payload (an upcall or an execute request).
pub fn parse_packet(payload: &[u8]) -> Result<(i32, Vec<PacketAttr>)> {
    use nla::packet as a;
    let (idx, rest) = split_header("OVS_PACKET message", payload)?;
    let mut out = Vec::new();
    for at in attrs(rest, "OVS_PACKET_ATTR") {
        let at = at?;
        let d = at.data;
        out.push(match at.kind() {
            a::PACKET => PacketAttr::Packet(d.to_vec()),
            a::KEY => PacketAttr::Key(decode_key(d)?),
            a::ACTIONS => PacketAttr::Actions(decode_actions(d)?),
            a::USERDATA => PacketAttr::Userdata(d.to_vec()),
            a::EGRESS_TUN_KEY => PacketAttr::EgressTunKey(crate::codec::decode_tunnel(d)?),
            a::PROBE => {
                get_flag("OVS_PACKET_ATTR_PROBE", d)?;
                PacketAttr::Probe
            }
            a::MRU => PacketAttr::Mru(nla::get_u16("OVS_PACKET_ATTR_MRU", d)?),
            a::LEN => PacketAttr::Len(get_u32("OVS_PACKET_ATTR_LEN", d)?),
            a::HASH => PacketAttr::Hash(get_u64("OVS_PACKET_ATTR_HASH", d)?),
            a::UPCALL_PID => PacketAttr::UpcallPid(get_u32("OVS_PACKET_ATTR_UPCALL_PID", d)?),
            _ => PacketAttr::Other(at.raw_kind, d.to_vec()),
        });
    }
    Ok((idx, out))
}

/// Appends an `ovs_packet` payload.
pub fn emit_packet(dp_ifindex: i32, list: &[PacketAttr], buf: &mut Vec<u8>) -> Result<()> {
    use nla::packet as a;
    buf.extend_from_slice(&dp_ifindex.to_ne_bytes());
    for at in list {
        let mut w = Writer::new(buf);
        match at {
            PacketAttr::Packet(p) => w.put(a::PACKET, p)?,
            PacketAttr::Key(k) => {
                let off = w.begin(a::KEY);
                encode_key(k, w.buf)?;
                w.end(off)?;
            }
            PacketAttr::Actions(acts) => {
                let off = w.begin(a::ACTIONS);
                encode_actions(acts, w.buf)?;
                w.end(off)?;
            }
            PacketAttr::Userdata(d) => w.put(a::USERDATA, d)?,
            PacketAttr::EgressTunKey(t) => {
                let off = w.begin(a::EGRESS_TUN_KEY);
                crate::codec::encode_tunnel(t, &mut w)?;
                w.end(off)?;
            }
            PacketAttr::Probe => w.flag(a::PROBE)?,
            PacketAttr::Mru(m) => w.u16(a::MRU, *m)?,
            PacketAttr::Len(l) => w.u32(a::LEN, *l)?,
            PacketAttr::Hash(h) => w.put(a::HASH, &h.to_ne_bytes())?,
            PacketAttr::UpcallPid(p) => w.u32(a::UPCALL_PID, *p)?,
            PacketAttr::Other(k, d) => w.put(*k, d)?,
        }
    }
    Ok(())
}
