//! Generic netlink payloads of the `ovs_datapath`, `ovs_vport`, `ovs_flow` and `ovs_packet`
//! families: the kernel's replies and upcalls as plain values, read from the bytes that
//! follow the `genlmsghdr` (the `struct ovs_header` and the attributes), and the flow and
//! packet requests written into such bytes.
//!
//! This is the one reader and writer of those messages: the socket layer sends what is
//! built here and decodes every reply and upcall with it, so the fuzz targets and property
//! tests exercise exactly what the agent runs. Every failure is an [`enum@Error`].

use crate::error::{Error, Result};
use crate::nla::{self, Writer, dp, flow, packet, vport};

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

/// The `ovs_header` that starts every OVS request.
pub fn ovs_header(dp_ifindex: i32) -> [u8; OVS_HEADER_LEN] {
    dp_ifindex.to_ne_bytes()
}

/// Splits an OVS payload into its `dp_ifindex` and its attributes.
pub fn split_ovs_header(payload: &[u8]) -> Result<(i32, &[u8])> {
    let Some((h, rest)) = payload.split_first_chunk::<OVS_HEADER_LEN>() else {
        return Err(Error::decode(
            "ovs_header",
            format!("message of {} bytes has none", payload.len()),
        ));
    };
    Ok((i32::from_ne_bytes(*h), rest))
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

/// `N` native-endian u64s from the front of a counters attribute.
fn u64s<const N: usize>(name: &'static str, d: &[u8]) -> Result<[u64; N]> {
    if d.len() < 8 * N {
        return Err(Error::bad_len(name, d.len()));
    }
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(d.chunks_exact(8)) {
        *o = u64::from_ne_bytes(c.try_into().unwrap_or_default());
    }
    Ok(out)
}

fn u32_list(name: &'static str, d: &[u8]) -> Result<Vec<u32>> {
    if !d.len().is_multiple_of(4) {
        return Err(Error::bad_len(name, d.len()));
    }
    Ok(d.chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
/// How the kernel delivers upcalls of a datapath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpcallMode {
    /// `OVS_DP_F_DISPATCH_UPCALL_PER_CPU`: to the pid registered for the CPU that received
    /// the packet (`OVS_DP_ATTR_PER_CPU_PIDS`).
    PerCpu,
    /// To the pid(s) registered on the packet's input vport (`OVS_VPORT_ATTR_UPCALL_PID`).
    PerVport,
}

/// `struct ovs_dp_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DpStats {
    /// Packets that matched a flow.
    pub hit: u64,
    /// Packets that missed and were sent up.
    pub missed: u64,
    /// Packets that missed and could not be sent up.
    pub lost: u64,
    /// Flows in the table.
    pub flows: u64,
}

/// `struct ovs_dp_megaflow_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MegaflowStats {
    /// Mask lookups that hit.
    pub mask_hit: u64,
    /// Masks in use.
    pub masks: u32,
    /// Mask cache hits.
    pub cache_hit: u64,
}

/// A datapath as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpInfo {
    /// Its name (also the name of its local internal port).
    pub name: String,
    /// Its `dp_ifindex`, used in every request about it.
    pub ifindex: i32,
    /// Lookup statistics.
    pub stats: DpStats,
    /// Megaflow statistics.
    pub megaflow: MegaflowStats,
    /// `OVS_DP_ATTR_USER_FEATURES` as the kernel kept them.
    pub user_features: u32,
    /// `OVS_DP_ATTR_MASKS_CACHE_SIZE`, when reported.
    pub masks_cache_size: Option<u32>,
}

impl DpInfo {
    /// How this datapath delivers upcalls.
    pub fn upcall_mode(&self) -> UpcallMode {
        if self.user_features & dp::F_DISPATCH_UPCALL_PER_CPU != 0 {
            UpcallMode::PerCpu
        } else {
            UpcallMode::PerVport
        }
    }
}

/// The kind of a vport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VportType {
    /// An existing network device.
    Netdev,
    /// An internal port (a new network device owned by the datapath).
    Internal,
    /// A flow-based ("external") VXLAN tunnel the kernel creates, on this UDP port.
    Vxlan {
        /// UDP destination port (4789 by default).
        dst_port: u16,
    },
    /// A flow-based Geneve tunnel the kernel creates, on this UDP port.
    Geneve {
        /// UDP destination port (6081 by default).
        dst_port: u16,
    },
    /// A flow-based GRE tunnel.
    Gre,
    /// A type this crate does not know.
    Other(u32),
}

impl VportType {
    /// The `OVS_VPORT_TYPE_*` number.
    pub fn number(&self) -> u32 {
        match self {
            VportType::Netdev => vport::TYPE_NETDEV,
            VportType::Internal => vport::TYPE_INTERNAL,
            VportType::Vxlan { .. } => vport::TYPE_VXLAN,
            VportType::Geneve { .. } => vport::TYPE_GENEVE,
            VportType::Gre => vport::TYPE_GRE,
            VportType::Other(n) => *n,
        }
    }

    /// The name `ovs-dpctl show` prints for it.
    pub fn name(&self) -> String {
        match self {
            VportType::Netdev => "netdev".into(),
            VportType::Internal => "internal".into(),
            VportType::Vxlan { .. } => "vxlan".into(),
            VportType::Geneve { .. } => "geneve".into(),
            VportType::Gre => "gre".into(),
            VportType::Other(n) => format!("type{n}"),
        }
    }
}

/// `struct ovs_vport_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VportStats {
    /// Received packets.
    pub rx_packets: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Receive drops.
    pub rx_dropped: u64,
    /// Transmit drops.
    pub tx_dropped: u64,
}

/// A vport as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VportInfo {
    /// The datapath it belongs to.
    pub dp_ifindex: i32,
    /// Its port number (the `in_port` of flows).
    pub port_no: u32,
    /// Its kind.
    pub kind: VportType,
    /// Its name.
    pub name: String,
    /// Its upcall pids (per-vport dispatch).
    pub upcall_pids: Vec<u32>,
    /// Its counters.
    pub stats: VportStats,
    /// The ifindex of its network device, when reported.
    pub ifindex: Option<u32>,
}

/// A flow to install, its key, mask and actions already encoded as attribute streams
/// (the contents of `OVS_FLOW_ATTR_KEY`, `_MASK` and `_ACTIONS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowPut {
    /// Encoded `OVS_KEY_ATTR_*` attributes.
    pub key: Vec<u8>,
    /// Encoded mask attributes; `None` installs an exact-match flow.
    pub mask: Option<Vec<u8>>,
    /// Encoded `OVS_ACTION_ATTR_*` attributes; empty drops.
    pub actions: Vec<u8>,
    /// A unique flow id, if the caller manages them.
    pub ufid: Option<[u8; 16]>,
    /// Reset the statistics of an existing flow (`OVS_FLOW_ATTR_CLEAR`).
    pub clear: bool,
}

impl FlowPut {
    /// The put of `flow`: its key, mask and actions encoded, and its UFID as the kernel
    /// keeps it ([`ufid_bytes`]).
    pub fn from_flow(flow: &crate::Flow) -> crate::Result<FlowPut> {
        let mut put = FlowPut::default();
        put.encode(flow)?;
        Ok(put)
    }

    /// Makes this the put of `flow` ([`FlowPut::from_flow`]), reusing its buffers: once they
    /// have grown, nothing is allocated. After an error it holds no flow worth putting.
    pub fn encode(&mut self, flow: &crate::Flow) -> crate::Result<()> {
        self.key.clear();
        crate::encode_key(&flow.key, &mut self.key)?;
        let mask = self.mask.get_or_insert_with(Vec::new);
        mask.clear();
        crate::encode_key(&flow.mask, mask)?;
        self.actions.clear();
        crate::encode_actions(&flow.actions, &mut self.actions)?;
        self.ufid = flow.ufid.map(ufid_bytes);
        self.clear = false;
        Ok(())
    }
}

/// Which flow a get or delete is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowId {
    /// By its exact (masked) key, encoded.
    Key(Vec<u8>),
    /// By its UFID.
    Ufid([u8; 16]),
}

impl FlowId {
    /// The flow named by UFID `u` (the `u128` the text form prints).
    pub fn ufid(u: u128) -> FlowId {
        FlowId::Ufid(ufid_bytes(u))
    }
}

/// `struct ovs_flow_stats` plus the kernel's other counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFlowStats {
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
    /// Last use in milliseconds of the kernel's monotonic clock (`jiffies`), if ever used.
    pub used_ms: Option<u64>,
    /// TCP flags seen (`OVS_FLOW_ATTR_TCP_FLAGS`).
    pub tcp_flags: u8,
}

/// A flow as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowEntry {
    /// Encoded key attributes.
    pub key: Vec<u8>,
    /// Encoded mask attributes.
    pub mask: Option<Vec<u8>>,
    /// Encoded actions.
    pub actions: Vec<u8>,
    /// Its UFID if it was installed with one.
    pub ufid: Option<[u8; 16]>,
    /// Counters.
    pub stats: KernelFlowStats,
}

impl FlowEntry {
    /// Its UFID as the text form prints it.
    pub fn ufid(&self) -> Option<u128> {
        self.ufid.as_ref().map(ufid_from_bytes)
    }

    /// The flow decoded. `now_ms` is the current time on the kernel's clock
    /// (`odp::dpif::monotonic_ms`), which turns the kernel's `used` stamp into an age.
    pub fn to_flow(&self, now_ms: u64) -> crate::Result<crate::Flow> {
        let mask = match &self.mask {
            Some(m) => crate::decode_key(m)?,
            None => crate::FlowKey::default(),
        };
        Ok(crate::Flow {
            key: crate::decode_key(&self.key)?,
            mask,
            actions: crate::decode_actions(&self.actions)?,
            ufid: self.ufid(),
            stats: crate::FlowStats::from_kernel(
                self.stats.packets,
                self.stats.bytes,
                self.stats.used_ms,
                now_ms,
                self.stats.tcp_flags,
            ),
        })
    }

    /// Its line of `ovs-dpctl dump-flows` (`with_ufid`: of `dump-flows -m`), for `flow`,
    /// its decoding.
    pub fn dump_line(&self, flow: &crate::Flow, with_ufid: bool) -> String {
        crate::text::dump_line(&self.key, flow, with_ufid)
    }
}

/// Why a packet came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpcallKind {
    /// `OVS_PACKET_CMD_MISS`: no flow matched.
    #[default]
    Miss,
    /// `OVS_PACKET_CMD_ACTION`: a flow's `userspace` action sent it.
    Action,
}

/// One upcall. A receiver that decodes each upcall into the same value
/// ([`parse_upcall_into`]) reuses its buffers and allocates nothing once they are grown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upcall {
    /// Miss or action.
    pub kind: UpcallKind,
    /// The datapath it came from.
    pub dp_ifindex: i32,
    /// The encoded key attributes the kernel extracted (`OVS_PACKET_ATTR_KEY`).
    pub key: Vec<u8>,
    /// The packet (`OVS_PACKET_ATTR_PACKET`).
    pub packet: Vec<u8>,
    /// `OVS_PACKET_ATTR_USERDATA` of a `userspace` action.
    pub userdata: Option<Vec<u8>>,
    /// `OVS_PACKET_ATTR_EGRESS_TUN_KEY`, encoded.
    pub egress_tun_key: Option<Vec<u8>>,
    /// `OVS_PACKET_ATTR_MRU`: the size of the largest fragment of a reassembled packet.
    pub mru: Option<u16>,
    /// `OVS_PACKET_ATTR_LEN`: the original length of a truncated packet.
    pub orig_len: Option<u32>,
    /// `OVS_PACKET_ATTR_HASH`: the skb hash.
    pub hash: Option<u64>,
}

/// Decodes an `ovs_datapath` reply payload.
pub fn parse_dp(payload: &[u8]) -> Result<DpInfo> {
    let (ifindex, a) = split_ovs_header(payload)?;
    let t = nla::table::<{ dp::PER_CPU_PIDS as usize + 1 }>(a, "OVS_DP_ATTR")?;
    let name = t[usize::from(dp::NAME)]
        .map(|d| nla::get_str("OVS_DP_ATTR_NAME", d))
        .transpose()?
        .ok_or_else(|| Error::missing("OVS_DP_ATTR_NAME", "datapath reply"))?;
    let stats = match t[usize::from(dp::STATS)] {
        Some(d) => {
            let [hit, missed, lost, flows] = u64s("OVS_DP_ATTR_STATS", d)?;
            DpStats {
                hit,
                missed,
                lost,
                flows,
            }
        }
        None => DpStats::default(),
    };
    // struct ovs_dp_megaflow_stats: n_mask_hit, n_masks and a pad, n_cache_hit, pads.
    let megaflow = match t[usize::from(dp::MEGAFLOW_STATS)] {
        Some(d) if d.len() >= 24 => MegaflowStats {
            mask_hit: nla::get_u64("n_mask_hit", &d[0..8])?,
            masks: nla::get_u32("n_masks", &d[8..12])?,
            cache_hit: nla::get_u64("n_cache_hit", &d[16..24])?,
        },
        Some(d) => return Err(Error::bad_len("OVS_DP_ATTR_MEGAFLOW_STATS", d.len())),
        None => MegaflowStats::default(),
    };
    let user_features = match t[usize::from(dp::USER_FEATURES)] {
        Some(d) => nla::get_u32("OVS_DP_ATTR_USER_FEATURES", d)?,
        None => 0,
    };
    let masks_cache_size = t[usize::from(dp::MASKS_CACHE_SIZE)]
        .map(|d| nla::get_u32("OVS_DP_ATTR_MASKS_CACHE_SIZE", d))
        .transpose()?;
    Ok(DpInfo {
        name,
        ifindex,
        stats,
        megaflow,
        user_features,
        masks_cache_size,
    })
}

/// Decodes an `ovs_vport` reply payload.
pub fn parse_vport(payload: &[u8]) -> Result<VportInfo> {
    let (dp_ifindex, a) = split_ovs_header(payload)?;
    let t = nla::table::<{ vport::NETNSID as usize + 1 }>(a, "OVS_VPORT_ATTR")?;
    let need = |ty: u16, name: &'static str| {
        t[usize::from(ty)].ok_or_else(|| Error::missing(name, "vport reply"))
    };
    let port_no = nla::get_u32(
        "OVS_VPORT_ATTR_PORT_NO",
        need(vport::PORT_NO, "OVS_VPORT_ATTR_PORT_NO")?,
    )?;
    let ty = nla::get_u32(
        "OVS_VPORT_ATTR_TYPE",
        need(vport::TYPE, "OVS_VPORT_ATTR_TYPE")?,
    )?;
    let name = nla::get_str(
        "OVS_VPORT_ATTR_NAME",
        need(vport::NAME, "OVS_VPORT_ATTR_NAME")?,
    )?;
    let mut dst_port = 0;
    if let Some(o) = t[usize::from(vport::OPTIONS)] {
        let ot = nla::table::<{ vport::TUNNEL_DST_PORT as usize + 1 }>(o, "OVS_TUNNEL_ATTR")?;
        if let Some(d) = ot[usize::from(vport::TUNNEL_DST_PORT)] {
            dst_port = nla::get_u16("OVS_TUNNEL_ATTR_DST_PORT", d)?;
        }
    }
    let kind = match ty {
        vport::TYPE_NETDEV => VportType::Netdev,
        vport::TYPE_INTERNAL => VportType::Internal,
        vport::TYPE_VXLAN => VportType::Vxlan { dst_port },
        vport::TYPE_GENEVE => VportType::Geneve { dst_port },
        vport::TYPE_GRE => VportType::Gre,
        n => VportType::Other(n),
    };
    let upcall_pids = match t[usize::from(vport::UPCALL_PID)] {
        Some(d) => u32_list("OVS_VPORT_ATTR_UPCALL_PID", d)?,
        None => Vec::new(),
    };
    let stats = match t[usize::from(vport::STATS)] {
        Some(d) => {
            let [
                rx_packets,
                tx_packets,
                rx_bytes,
                tx_bytes,
                rx_errors,
                tx_errors,
                rx_dropped,
                tx_dropped,
            ] = u64s("OVS_VPORT_ATTR_STATS", d)?;
            VportStats {
                rx_packets,
                tx_packets,
                rx_bytes,
                tx_bytes,
                rx_errors,
                tx_errors,
                rx_dropped,
                tx_dropped,
            }
        }
        None => VportStats::default(),
    };
    let ifindex = t[usize::from(vport::IFINDEX)]
        .map(|d| nla::get_u32("OVS_VPORT_ATTR_IFINDEX", d))
        .transpose()?;
    Ok(VportInfo {
        dp_ifindex,
        port_no,
        kind,
        name,
        upcall_pids,
        stats,
        ifindex,
    })
}

/// Decodes an `ovs_flow` payload: a dump or get reply, or a flow request.
pub fn parse_flow(payload: &[u8]) -> Result<FlowEntry> {
    let (_, a) = split_ovs_header(payload)?;
    let t = nla::table::<{ flow::UFID as usize + 1 }>(a, "OVS_FLOW_ATTR")?;
    let mut e = FlowEntry {
        key: t[usize::from(flow::KEY)].unwrap_or_default().to_vec(),
        mask: t[usize::from(flow::MASK)].map(<[u8]>::to_vec),
        actions: t[usize::from(flow::ACTIONS)].unwrap_or_default().to_vec(),
        ..FlowEntry::default()
    };
    if let Some(d) = t[usize::from(flow::UFID)] {
        e.ufid = Some(nla::fixed("OVS_FLOW_ATTR_UFID", d)?);
    }
    if let Some(d) = t[usize::from(flow::STATS)] {
        [e.stats.packets, e.stats.bytes] = u64s("OVS_FLOW_ATTR_STATS", d)?;
    }
    if let Some(d) = t[usize::from(flow::USED)] {
        e.stats.used_ms = Some(nla::get_u64("OVS_FLOW_ATTR_USED", d)?);
    }
    if let Some(d) = t[usize::from(flow::TCP_FLAGS)] {
        e.stats.tcp_flags = nla::fixed::<1>("OVS_FLOW_ATTR_TCP_FLAGS", d)?[0];
    }
    Ok(e)
}

/// Decodes an upcall: an `ovs_packet` message of command `cmd` (miss or action).
pub fn parse_upcall(cmd: u8, payload: &[u8]) -> Result<Upcall> {
    let mut u = Upcall::default();
    parse_upcall_into(cmd, payload, &mut u)?;
    Ok(u)
}

/// [`parse_upcall`] into `u`, whose buffers are cleared and reused. After an error `u` holds
/// no upcall worth reading.
pub fn parse_upcall_into(cmd: u8, payload: &[u8], u: &mut Upcall) -> Result<()> {
    u.kind = match cmd {
        cmd::PACKET_MISS => UpcallKind::Miss,
        cmd::PACKET_ACTION => UpcallKind::Action,
        c => {
            return Err(Error::decode(
                "ovs_packet command",
                format!("{c}: neither a miss nor an action"),
            ));
        }
    };
    let (dp_ifindex, a) = split_ovs_header(payload)?;
    let t = nla::table::<{ packet::HASH as usize + 1 }>(a, "OVS_PACKET_ATTR")?;
    let key = t[usize::from(packet::KEY)]
        .ok_or_else(|| Error::missing("OVS_PACKET_ATTR_KEY", "upcall"))?;
    let pkt = t[usize::from(packet::PACKET)]
        .ok_or_else(|| Error::missing("OVS_PACKET_ATTR_PACKET", "upcall"))?;
    u.dp_ifindex = dp_ifindex;
    refill(&mut u.key, key);
    refill(&mut u.packet, pkt);
    refill_opt(&mut u.userdata, t[usize::from(packet::USERDATA)]);
    refill_opt(
        &mut u.egress_tun_key,
        t[usize::from(packet::EGRESS_TUN_KEY)],
    );
    u.mru = t[usize::from(packet::MRU)]
        .map(|d| nla::get_u16("OVS_PACKET_ATTR_MRU", d))
        .transpose()?;
    u.orig_len = t[usize::from(packet::LEN)]
        .map(|d| nla::get_u32("OVS_PACKET_ATTR_LEN", d))
        .transpose()?;
    u.hash = t[usize::from(packet::HASH)]
        .map(|d| nla::get_u64("OVS_PACKET_ATTR_HASH", d))
        .transpose()?;
    Ok(())
}

fn refill(v: &mut Vec<u8>, d: &[u8]) {
    v.clear();
    v.extend_from_slice(d);
}

fn refill_opt(v: &mut Option<Vec<u8>>, d: Option<&[u8]>) {
    match d {
        Some(d) => refill(v.get_or_insert_with(Vec::new), d),
        None => *v = None,
    }
}

/// Appends the `OVS_FLOW_CMD_NEW`/`SET` payload of `f` to `buf` as ovs-vswitchd writes it:
/// UFID, key, mask, actions, clear, in that order, and the nested attribute streams without
/// the `NLA_F_NESTED` flag, so that the same flow makes the same bytes.
pub fn flow_put_payload(dp_ifindex: i32, f: &FlowPut, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(&ovs_header(dp_ifindex));
    let mut w = Writer::new(buf);
    if let Some(u) = &f.ufid {
        w.put(flow::UFID, u)?;
    }
    w.put(flow::KEY, &f.key)?;
    if let Some(m) = &f.mask {
        w.put(flow::MASK, m)?;
    }
    w.put(flow::ACTIONS, &f.actions)?;
    if f.clear {
        w.flag(flow::CLEAR)?;
    }
    Ok(())
}

/// Appends the payload of a flow get or delete of `id` to `buf`.
pub fn flow_id_payload(dp_ifindex: i32, id: &FlowId, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(&ovs_header(dp_ifindex));
    let mut w = Writer::new(buf);
    match id {
        FlowId::Key(k) => w.put(flow::KEY, k),
        FlowId::Ufid(u) => w.put(flow::UFID, u),
    }
}

/// Appends an `OVS_FLOW_CMD_GET` dump request's payload to `buf`: the header and, unless
/// `omit` is 0, the [`ufid_flags`] that leave those parts out of every reply of a flow that
/// has a UFID (a terse dump, as ovs-vswitchd's revalidators ask for).
pub fn flow_dump_payload(dp_ifindex: i32, omit: u32, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(&ovs_header(dp_ifindex));
    if omit != 0 {
        Writer::new(buf).u32(flow::UFID_FLAGS, omit)?;
    }
    Ok(())
}

/// Appends the `OVS_PACKET_CMD_EXECUTE` payload to `buf`: the packet, the key with its
/// metadata and the encoded actions (without `NLA_F_NESTED`, as ovs-vswitchd writes them).
pub fn execute_payload(
    dp_ifindex: i32,
    pkt: &[u8],
    key: &[u8],
    actions: &[u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.extend_from_slice(&ovs_header(dp_ifindex));
    let mut w = Writer::new(buf);
    w.put(packet::PACKET, pkt)?;
    w.put(packet::KEY, key)?;
    w.put(packet::ACTIONS, actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(dp_ifindex: i32, f: impl FnOnce(&mut Writer<'_>) -> Result<()>) -> Vec<u8> {
        nla::build(&ovs_header(dp_ifindex), f).unwrap()
    }

    #[test]
    fn parses_a_vport_reply() {
        let o = nla::build(&[], |o| o.u16(vport::TUNNEL_DST_PORT, 4789)).unwrap();
        let b = with_header(7, |w| {
            w.u32(vport::PORT_NO, 2)?;
            w.u32(vport::TYPE, vport::TYPE_VXLAN)?;
            w.string(vport::NAME, "weft-tun")?;
            w.nested(vport::OPTIONS, &o)?;
            w.put(vport::UPCALL_PID, &[1, 0, 0, 0, 2, 0, 0, 0])
        });
        let v = parse_vport(&b).unwrap();
        assert_eq!(v.dp_ifindex, 7);
        assert_eq!(v.port_no, 2);
        assert_eq!(v.kind, VportType::Vxlan { dst_port: 4789 });
        assert_eq!(v.name, "weft-tun");
        assert_eq!(v.upcall_pids, vec![1, 2]);
    }

    #[test]
    fn parses_a_datapath_reply() {
        let mut mf = [0u8; 32];
        mf[..8].copy_from_slice(&9u64.to_ne_bytes());
        mf[8..12].copy_from_slice(&3u32.to_ne_bytes());
        mf[16..24].copy_from_slice(&5u64.to_ne_bytes());
        let stats: Vec<u8> = [1u64, 2, 0, 4]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let b = with_header(11, |w| {
            w.string(dp::NAME, "weft")?;
            w.put(dp::STATS, &stats)?;
            w.put(dp::MEGAFLOW_STATS, &mf)?;
            w.u32(dp::USER_FEATURES, dp::F_DISPATCH_UPCALL_PER_CPU)
        });
        let d = parse_dp(&b).unwrap();
        assert_eq!((d.name.as_str(), d.ifindex), ("weft", 11));
        assert_eq!((d.stats.hit, d.stats.missed, d.stats.flows), (1, 2, 4));
        assert_eq!((d.megaflow.mask_hit, d.megaflow.masks), (9, 3));
        assert_eq!(d.megaflow.cache_hit, 5);
        assert_eq!(d.upcall_mode(), UpcallMode::PerCpu);
    }

    #[test]
    fn truncated_or_incomplete_replies_are_errors_naming_the_attribute() {
        assert!(parse_vport(&[1, 2]).is_err());
        let b = with_header(7, |w| w.u32(vport::PORT_NO, 2));
        let e = parse_vport(&b).unwrap_err();
        assert_eq!(e.to_string(), "vport reply without OVS_VPORT_ATTR_TYPE");
        let b = with_header(7, |w| w.put(flow::STATS, &[0; 9]));
        let e = parse_flow(&b).unwrap_err();
        assert_eq!(e.to_string(), "invalid OVS_FLOW_ATTR_STATS length 9");
        let b = with_header(7, |w| {
            w.string(dp::NAME, "x")?;
            w.put(dp::STATS, &[0; 31])
        });
        assert!(parse_dp(&b).is_err());
        let b = with_header(7, |w| w.put(flow::UFID, &[0; 15]));
        assert!(parse_flow(&b).is_err());
    }

    #[test]
    fn parses_a_flow_reply() {
        let mut stats = Vec::new();
        stats.extend_from_slice(&3u64.to_ne_bytes());
        stats.extend_from_slice(&300u64.to_ne_bytes());
        let b = with_header(7, |w| {
            w.nested(flow::KEY, &[8, 0, 3, 0, 1, 0, 0, 0])?;
            w.put(flow::STATS, &stats)?;
            w.u64(flow::USED, 1234)?;
            w.put(flow::UFID, &[9; 16])
        });
        let f = parse_flow(&b).unwrap();
        assert_eq!(f.key, vec![8, 0, 3, 0, 1, 0, 0, 0]);
        assert_eq!(f.stats.packets, 3);
        assert_eq!(f.stats.bytes, 300);
        assert_eq!(f.stats.used_ms, Some(1234));
        assert_eq!(f.ufid, Some([9; 16]));
        assert!(f.actions.is_empty());
    }

    #[test]
    fn a_flow_put_reads_back_as_the_same_flow() {
        let put = FlowPut {
            key: vec![8, 0, 3, 0, 1, 0, 0, 0],
            mask: Some(vec![8, 0, 3, 0, 0xff, 0xff, 0xff, 0xff]),
            actions: vec![8, 0, 1, 0, 2, 0, 0, 0],
            ufid: Some(ufid_bytes(0x0123_4567_89ab_cdef_0011_2233_4455_6677)),
            clear: true,
        };
        let mut b = Vec::new();
        flow_put_payload(4, &put, &mut b).unwrap();
        assert_eq!(b.len() % 4, 0);
        let e = parse_flow(&b).unwrap();
        assert_eq!(e.ufid(), Some(0x0123_4567_89ab_cdef_0011_2233_4455_6677));
        assert_eq!((e.key, e.mask, e.actions), (put.key, put.mask, put.actions));
    }

    #[test]
    fn a_request_too_long_for_netlink_is_refused_not_truncated() {
        // An attribute's length is 16 bits: a 70,000-byte packet cannot be encoded.
        let big = vec![0u8; 70_000];
        let e = execute_payload(1, &big, &[], &[], &mut Vec::new()).expect_err("refused");
        assert!(e.to_string().contains("70000 bytes exceeds 65531"), "{e}");
        let mut fits = Vec::new();
        execute_payload(1, &[0u8; 1500], &[], &[], &mut fits).unwrap();
        assert_eq!(fits.len() % 4, 0);
    }

    fn upcall(cmd: u8, f: impl FnOnce(&mut Writer<'_>) -> Result<()>) -> Result<Upcall> {
        parse_upcall(cmd, &with_header(5, f))
    }

    #[test]
    fn parses_a_miss() {
        let u = upcall(cmd::PACKET_MISS, |w| {
            w.put(packet::PACKET, &[0xff; 60])?;
            w.nested(packet::KEY, &[8, 0, 3, 0, 2, 0, 0, 0])
        })
        .unwrap();
        assert_eq!(u.kind, UpcallKind::Miss);
        assert_eq!(u.dp_ifindex, 5);
        assert_eq!(u.packet.len(), 60);
        assert_eq!(u.key, vec![8, 0, 3, 0, 2, 0, 0, 0]);
        assert_eq!(u.userdata, None);
    }

    #[test]
    fn rejects_upcalls_without_key_or_packet_and_unknown_commands() {
        let e = upcall(cmd::PACKET_MISS, |w| w.put(packet::PACKET, &[0xff; 60])).unwrap_err();
        assert_eq!(e.to_string(), "upcall without OVS_PACKET_ATTR_KEY");
        assert!(upcall(9, |_| Ok(())).is_err());
        assert!(parse_upcall(cmd::PACKET_ACTION, &[1]).is_err());
    }

    #[test]
    fn ufid_bytes_round_trip() {
        let u = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(ufid_from_bytes(&ufid_bytes(u)), u);
    }
}
