//! `Dpif`: a handle on the kernel datapath over generic netlink: datapaths, vports, flows
//! (single and batched) and packet execution. Flow keys, masks and actions travel here as
//! their encoded attribute bytes; the codec modules turn them into typed values and text.

use crate::families::{self, OVS_HEADER_LEN, OvsFamilies, dp, flow, ovs_header, packet, vport};
use crate::nla;
use crate::sock::{
    self, GenlMsg, GenlSocket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, Req, SockError,
};

/// The result type of this module.
pub type Result<T, E = SockError> = std::result::Result<T, E>;

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

/// What to create with [`Dpif::vport_add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VportSpec {
    /// The device name.
    pub name: String,
    /// The kind.
    pub kind: VportType,
    /// A requested port number, or the lowest free one.
    pub port_no: Option<u32>,
    /// Upcall pids (per-vport dispatch); the kernel requires the attribute, `[0]` means none.
    pub upcall_pids: Vec<u32>,
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
    /// keeps it ([`crate::msg::ufid_bytes`]).
    pub fn from_flow(flow: &crate::Flow) -> crate::Result<FlowPut> {
        let mut key = Vec::with_capacity(256);
        crate::encode_key(&flow.key, &mut key)?;
        let mut mask = Vec::with_capacity(256);
        crate::encode_key(&flow.mask, &mut mask)?;
        let mut actions = Vec::with_capacity(64);
        crate::encode_actions(&flow.actions, &mut actions)?;
        Ok(FlowPut {
            key,
            mask: Some(mask),
            actions,
            ufid: flow.ufid.map(crate::msg::ufid_bytes),
            clear: false,
        })
    }
}

/// How [`Dpif::flow_put`] treats an existing flow with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with `EEXIST` if it exists (`OVS_FLOW_CMD_NEW` with `NLM_F_CREATE`).
    Create,
    /// Fail with `ENOENT` unless it exists; replace its actions (`OVS_FLOW_CMD_SET`).
    Modify,
    /// Create it, or replace the actions of the existing one (`OVS_FLOW_CMD_NEW`).
    CreateOrModify,
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
        FlowId::Ufid(crate::msg::ufid_bytes(u))
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
        self.ufid.as_ref().map(crate::msg::ufid_from_bytes)
    }

    /// The flow decoded. `now_ms` is the current time on the kernel's clock
    /// ([`monotonic_ms`]), which turns the kernel's `used` stamp into an age.
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

/// Milliseconds since boot, the clock the kernel stamps `OVS_FLOW_ATTR_USED` with (it uses
/// the monotonic clock, which differs from this one only by time spent suspended).
pub fn monotonic_ms() -> std::io::Result<u64> {
    let s = std::fs::read_to_string("/proc/uptime")?;
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/uptime: {s:?}"),
        )
    };
    let secs = s.split_whitespace().next().ok_or_else(bad)?;
    let (i, f) = secs.split_once('.').unwrap_or((secs, "0"));
    let i: u64 = i.parse().map_err(|_| bad())?;
    let f: u64 = format!("{f:0<3}")
        .get(..3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok(i * 1000 + f)
}

/// A handle on the OVS kernel datapath in the calling thread's network namespace.
#[derive(Debug)]
pub struct Dpif {
    sock: GenlSocket,
    fam: OvsFamilies,
}

impl Dpif {
    /// Opens a netlink socket and resolves the OVS families (loading the module on demand).
    pub fn open() -> Result<Self> {
        let mut sock = GenlSocket::open()?;
        let fam = OvsFamilies::resolve(&mut sock)?;
        Ok(Dpif { sock, fam })
    }

    /// The resolved families.
    pub fn families(&self) -> &OvsFamilies {
        &self.fam
    }

    /// The pid of this handle's socket.
    pub fn pid(&self) -> u32 {
        self.sock.pid()
    }

    fn dp_request(
        &mut self,
        what: &str,
        cmd: u8,
        flags: u16,
        attrs: &[u8],
    ) -> Result<Vec<GenlMsg>> {
        let mut payload = ovs_header(0).to_vec();
        payload.extend_from_slice(attrs);
        let id = self.fam.datapath.id;
        self.sock
            .request(what, id, cmd, dp::VERSION, flags, &payload)
    }

    /// Creates a datapath. It asks for per-CPU upcall dispatch with `upcall_pid` for every
    /// CPU, and falls back to per-vport pids when the kernel refuses that feature.
    pub fn dp_create(&mut self, name: &str, upcall_pid: u32) -> Result<DpInfo> {
        let base = dp::F_UNALIGNED | dp::F_VPORT_PIDS;
        let attrs = nla::build(&[], |w| {
            w.string(dp::ATTR_NAME, name)?;
            w.u32(dp::ATTR_UPCALL_PID, upcall_pid)?;
            w.u32(dp::ATTR_USER_FEATURES, base | dp::F_DISPATCH_UPCALL_PER_CPU)?;
            w.put(dp::ATTR_PER_CPU_PIDS, &per_cpu_pids(&[upcall_pid]))
        })?;
        let what = format!("OVS_DP_CMD_NEW {name}");
        let r = match self.dp_request(&what, dp::CMD_NEW, NLM_F_ECHO | NLM_F_CREATE, &attrs) {
            Err(SockError::Kernel { errno, .. })
                if errno == libc::EOPNOTSUPP || errno == libc::EINVAL =>
            {
                let attrs = nla::build(&[], |w| {
                    w.string(dp::ATTR_NAME, name)?;
                    w.u32(dp::ATTR_UPCALL_PID, upcall_pid)?;
                    w.u32(dp::ATTR_USER_FEATURES, base)
                })?;
                self.dp_request(&what, dp::CMD_NEW, NLM_F_ECHO | NLM_F_CREATE, &attrs)?
            }
            r => r?,
        };
        first(r, &what).and_then(|m| parse_dp(&m.payload))
    }

    /// Creates a datapath that delivers upcalls to per-vport pids even where the kernel has
    /// per-CPU dispatch (the mode kernels before 5.16 always use).
    pub fn dp_create_per_vport(&mut self, name: &str, upcall_pid: u32) -> Result<DpInfo> {
        let attrs = nla::build(&[], |w| {
            w.string(dp::ATTR_NAME, name)?;
            w.u32(dp::ATTR_UPCALL_PID, upcall_pid)?;
            w.u32(dp::ATTR_USER_FEATURES, dp::F_UNALIGNED | dp::F_VPORT_PIDS)
        })?;
        let what = format!("OVS_DP_CMD_NEW {name}");
        let r = self.dp_request(&what, dp::CMD_NEW, NLM_F_ECHO | NLM_F_CREATE, &attrs)?;
        first(r, &what).and_then(|m| parse_dp(&m.payload))
    }

    /// Looks a datapath up by name.
    pub fn dp_get(&mut self, name: &str) -> Result<DpInfo> {
        let attrs = nla::build(&[], |w| w.string(dp::ATTR_NAME, name))?;
        let what = format!("OVS_DP_CMD_GET {name}");
        let r = self.dp_request(&what, dp::CMD_GET, 0, &attrs)?;
        first(r, &what).and_then(|m| parse_dp(&m.payload))
    }

    /// Every datapath of this network namespace.
    pub fn dp_list(&mut self) -> Result<Vec<DpInfo>> {
        let r = self.dp_request("OVS_DP_CMD_GET dump", dp::CMD_GET, NLM_F_DUMP, &[])?;
        r.iter().map(|m| parse_dp(&m.payload)).collect()
    }

    /// Deletes a datapath with its vports and flows.
    pub fn dp_delete(&mut self, name: &str) -> Result<()> {
        let attrs = nla::build(&[], |w| w.string(dp::ATTR_NAME, name))?;
        self.dp_request(&format!("OVS_DP_CMD_DEL {name}"), dp::CMD_DEL, 0, &attrs)?;
        Ok(())
    }

    /// Sets the per-CPU upcall pids of a datapath in per-CPU mode: CPU `i` gets
    /// `pids[i % pids.len()]`, for every possible CPU.
    pub fn dp_set_upcall_pids(&mut self, name: &str, pids: &[u32]) -> Result<DpInfo> {
        let attrs = nla::build(&[], |w| {
            w.string(dp::ATTR_NAME, name)?;
            w.u32(
                dp::ATTR_USER_FEATURES,
                dp::F_UNALIGNED | dp::F_VPORT_PIDS | dp::F_DISPATCH_UPCALL_PER_CPU,
            )?;
            w.put(dp::ATTR_PER_CPU_PIDS, &per_cpu_pids(pids))
        })?;
        let what = format!("OVS_DP_CMD_SET {name} per-cpu pids");
        let r = self.dp_request(&what, dp::CMD_SET, NLM_F_ECHO, &attrs)?;
        first(r, &what).and_then(|m| parse_dp(&m.payload))
    }

    fn vport_request(
        &mut self,
        what: &str,
        dp_ifindex: i32,
        cmd: u8,
        flags: u16,
        attrs: &[u8],
    ) -> Result<Vec<GenlMsg>> {
        let mut payload = ovs_header(dp_ifindex).to_vec();
        payload.extend_from_slice(attrs);
        let id = self.fam.vport.id;
        self.sock
            .request(what, id, cmd, vport::VERSION, flags, &payload)
    }

    /// Adds a vport to a datapath.
    pub fn vport_add(&mut self, dp_ifindex: i32, spec: &VportSpec) -> Result<VportInfo> {
        let pids: Vec<u8> = if spec.upcall_pids.is_empty() {
            0u32.to_ne_bytes().to_vec()
        } else {
            spec.upcall_pids
                .iter()
                .flat_map(|p| p.to_ne_bytes())
                .collect()
        };
        let attrs = nla::build(&[], |w| {
            w.string(vport::ATTR_NAME, &spec.name)?;
            w.u32(vport::ATTR_TYPE, spec.kind.number())?;
            w.put(vport::ATTR_UPCALL_PID, &pids)?;
            if let Some(no) = spec.port_no {
                w.u32(vport::ATTR_PORT_NO, no)?;
            }
            match spec.kind {
                VportType::Vxlan { dst_port } | VportType::Geneve { dst_port } => {
                    let o = nla::build(&[], |o| o.u16(vport::TUNNEL_ATTR_DST_PORT, dst_port))?;
                    w.nested(vport::ATTR_OPTIONS, &o)
                }
                _ => Ok(()),
            }
        })?;
        let what = format!("OVS_VPORT_CMD_NEW {}", spec.name);
        let r = self.vport_request(
            &what,
            dp_ifindex,
            vport::CMD_NEW,
            NLM_F_ECHO | NLM_F_CREATE,
            &attrs,
        )?;
        first(r, &what).and_then(|m| parse_vport(&m.payload))
    }

    /// Looks a vport up by name.
    pub fn vport_get(&mut self, dp_ifindex: i32, name: &str) -> Result<VportInfo> {
        let attrs = nla::build(&[], |w| w.string(vport::ATTR_NAME, name))?;
        let what = format!("OVS_VPORT_CMD_GET {name}");
        let r = self.vport_request(&what, dp_ifindex, vport::CMD_GET, 0, &attrs)?;
        first(r, &what).and_then(|m| parse_vport(&m.payload))
    }

    /// Looks a vport up by port number.
    pub fn vport_get_by_no(&mut self, dp_ifindex: i32, port_no: u32) -> Result<VportInfo> {
        let attrs = nla::build(&[], |w| w.u32(vport::ATTR_PORT_NO, port_no))?;
        let what = format!("OVS_VPORT_CMD_GET port {port_no}");
        let r = self.vport_request(&what, dp_ifindex, vport::CMD_GET, 0, &attrs)?;
        first(r, &what).and_then(|m| parse_vport(&m.payload))
    }

    /// Every vport of a datapath, by port number.
    pub fn vport_list(&mut self, dp_ifindex: i32) -> Result<Vec<VportInfo>> {
        let r = self.vport_request(
            "OVS_VPORT_CMD_GET dump",
            dp_ifindex,
            vport::CMD_GET,
            NLM_F_DUMP,
            &[],
        )?;
        let mut v: Vec<VportInfo> = r
            .iter()
            .map(|m| parse_vport(&m.payload))
            .collect::<Result<_>>()?;
        v.sort_by_key(|p| p.port_no);
        Ok(v)
    }

    /// Deletes a vport by name. Tunnel and internal devices the datapath created go with it.
    pub fn vport_delete(&mut self, dp_ifindex: i32, name: &str) -> Result<()> {
        let attrs = nla::build(&[], |w| w.string(vport::ATTR_NAME, name))?;
        self.vport_request(
            &format!("OVS_VPORT_CMD_DEL {name}"),
            dp_ifindex,
            vport::CMD_DEL,
            0,
            &attrs,
        )?;
        Ok(())
    }

    /// Sets the upcall pids of a vport (per-vport dispatch).
    pub fn vport_set_upcall_pids(
        &mut self,
        dp_ifindex: i32,
        port_no: u32,
        pids: &[u32],
    ) -> Result<VportInfo> {
        let arr: Vec<u8> = pids.iter().flat_map(|p| p.to_ne_bytes()).collect();
        let attrs = nla::build(&[], |w| {
            w.u32(vport::ATTR_PORT_NO, port_no)?;
            w.put(vport::ATTR_UPCALL_PID, &arr)
        })?;
        let what = format!("OVS_VPORT_CMD_SET port {port_no} upcall pids");
        let r = self.vport_request(&what, dp_ifindex, vport::CMD_SET, NLM_F_ECHO, &attrs)?;
        first(r, &what).and_then(|m| parse_vport(&m.payload))
    }

    fn flow_payload(dp_ifindex: i32, f: &FlowPut) -> Result<Vec<u8>> {
        Ok(nla::build(&ovs_header(dp_ifindex), |w| {
            w.nested(flow::ATTR_KEY, &f.key)?;
            if let Some(m) = &f.mask {
                w.nested(flow::ATTR_MASK, m)?;
            }
            w.nested(flow::ATTR_ACTIONS, &f.actions)?;
            if let Some(u) = &f.ufid {
                w.put(flow::ATTR_UFID, u)?;
            }
            if f.clear {
                w.flag(flow::ATTR_CLEAR)?;
            }
            Ok(())
        })?)
    }

    fn put_cmd(mode: PutMode) -> (u8, u16) {
        match mode {
            PutMode::Create => (flow::CMD_NEW, NLM_F_CREATE),
            PutMode::Modify => (flow::CMD_SET, 0),
            PutMode::CreateOrModify => (flow::CMD_NEW, 0),
        }
    }

    /// Installs or modifies one flow.
    pub fn flow_put(&mut self, dp_ifindex: i32, f: &FlowPut, mode: PutMode) -> Result<()> {
        let (cmd, flags) = Self::put_cmd(mode);
        let payload = Self::flow_payload(dp_ifindex, f)?;
        let what = if cmd == flow::CMD_NEW {
            "OVS_FLOW_CMD_NEW"
        } else {
            "OVS_FLOW_CMD_SET"
        };
        let id = self.fam.flow.id;
        self.sock
            .request(what, id, cmd, flow::VERSION, flags, &payload)?;
        Ok(())
    }

    /// Installs many flows on this one socket, many requests per `send`; returns one result
    /// per flow, in order (`Err(errno)` for the ones the kernel refused).
    pub fn flow_put_batch(
        &mut self,
        dp_ifindex: i32,
        flows: &[FlowPut],
        mode: PutMode,
    ) -> Result<Vec<Result<(), i32>>> {
        let reqs: Vec<Req> = flows
            .iter()
            .map(|f| self.put_req(dp_ifindex, f, mode))
            .collect::<Result<_>>()?;
        self.sock.batch(&reqs)
    }

    fn put_req(&self, dp_ifindex: i32, f: &FlowPut, mode: PutMode) -> Result<Req> {
        let (cmd, flags) = Self::put_cmd(mode);
        Ok(Req {
            family: self.fam.flow.id,
            version: flow::VERSION,
            cmd,
            flags,
            payload: Self::flow_payload(dp_ifindex, f)?,
        })
    }

    fn execute_req(&self, dp_ifindex: i32, (pkt, key, actions): Execute<'_>) -> Result<Req> {
        Ok(Req {
            family: self.fam.packet.id,
            version: packet::VERSION,
            cmd: packet::CMD_EXECUTE,
            flags: 0,
            payload: Self::execute_payload(dp_ifindex, pkt, key, actions)?,
        })
    }

    /// Installs `puts`, then executes `executes`, all in one exchange with the kernel (as
    /// ovs-vswitchd's handlers do with a batch of upcalls): the flows are in place before the
    /// packets that missed them go out. One result per flow and one per packet, in order.
    pub fn put_and_execute(
        &mut self,
        dp_ifindex: i32,
        puts: &[FlowPut],
        mode: PutMode,
        executes: &[Execute<'_>],
    ) -> Result<(Vec<Outcome>, Vec<Outcome>)> {
        let mut reqs = Vec::with_capacity(puts.len() + executes.len());
        for f in puts {
            reqs.push(self.put_req(dp_ifindex, f, mode)?);
        }
        for e in executes {
            reqs.push(self.execute_req(dp_ifindex, *e)?);
        }
        let mut results = self.sock.batch(&reqs)?;
        let executed = results.split_off(puts.len());
        Ok((results, executed))
    }

    fn flow_id_payload(dp_ifindex: i32, id: &FlowId) -> Result<Vec<u8>> {
        Ok(nla::build(&ovs_header(dp_ifindex), |w| match id {
            FlowId::Key(k) => w.nested(flow::ATTR_KEY, k),
            FlowId::Ufid(u) => w.put(flow::ATTR_UFID, u),
        })?)
    }

    /// Reads one flow back.
    pub fn flow_get(&mut self, dp_ifindex: i32, id: &FlowId) -> Result<FlowEntry> {
        let payload = Self::flow_id_payload(dp_ifindex, id)?;
        let fid = self.fam.flow.id;
        let r = self.sock.request(
            "OVS_FLOW_CMD_GET",
            fid,
            flow::CMD_GET,
            flow::VERSION,
            0,
            &payload,
        )?;
        first(r, "OVS_FLOW_CMD_GET").and_then(|m| parse_flow(&m.payload))
    }

    /// Deletes one flow and returns its final state.
    pub fn flow_del(&mut self, dp_ifindex: i32, id: &FlowId) -> Result<FlowEntry> {
        let payload = Self::flow_id_payload(dp_ifindex, id)?;
        let fid = self.fam.flow.id;
        let r = self.sock.request(
            "OVS_FLOW_CMD_DEL",
            fid,
            flow::CMD_DEL,
            flow::VERSION,
            NLM_F_ECHO,
            &payload,
        )?;
        first(r, "OVS_FLOW_CMD_DEL").and_then(|m| parse_flow(&m.payload))
    }

    /// Deletes many flows on this socket; one result per flow, in order.
    pub fn flow_del_batch(
        &mut self,
        dp_ifindex: i32,
        ids: &[FlowId],
    ) -> Result<Vec<Result<(), i32>>> {
        let reqs: Vec<Req> = ids
            .iter()
            .map(|id| {
                Ok(Req {
                    family: self.fam.flow.id,
                    version: flow::VERSION,
                    cmd: flow::CMD_DEL,
                    flags: 0,
                    payload: Self::flow_id_payload(dp_ifindex, id)?,
                })
            })
            .collect::<Result<_>>()?;
        self.sock.batch(&reqs)
    }

    /// Every flow of a datapath.
    pub fn flow_dump(&mut self, dp_ifindex: i32) -> Result<Vec<FlowEntry>> {
        let payload = ovs_header(dp_ifindex);
        let fid = self.fam.flow.id;
        let r = self.sock.request(
            "OVS_FLOW_CMD_GET dump",
            fid,
            flow::CMD_GET,
            flow::VERSION,
            NLM_F_DUMP,
            &payload,
        )?;
        r.iter().map(|m| parse_flow(&m.payload)).collect()
    }

    /// Deletes every flow of a datapath.
    pub fn flow_flush(&mut self, dp_ifindex: i32) -> Result<()> {
        let payload = ovs_header(dp_ifindex);
        let fid = self.fam.flow.id;
        self.sock.request(
            "OVS_FLOW_CMD_DEL (flush)",
            fid,
            flow::CMD_DEL,
            flow::VERSION,
            0,
            &payload,
        )?;
        Ok(())
    }

    fn execute_payload(dp_ifindex: i32, pkt: &[u8], key: &[u8], actions: &[u8]) -> Result<Vec<u8>> {
        Ok(nla::build(&ovs_header(dp_ifindex), |w| {
            w.put(packet::ATTR_PACKET, pkt)?;
            w.nested(packet::ATTR_KEY, key)?;
            w.nested(packet::ATTR_ACTIONS, actions)
        })?)
    }

    /// Executes `actions` on a packet. `key` carries its metadata (`in_port`, `skb_mark`,
    /// tunnel, ...); the kernel extracts the rest from the packet itself. The key of an
    /// upcall can be passed back unchanged.
    pub fn execute(
        &mut self,
        dp_ifindex: i32,
        pkt: &[u8],
        key: &[u8],
        actions: &[u8],
    ) -> Result<()> {
        let payload = Self::execute_payload(dp_ifindex, pkt, key, actions)?;
        let pid = self.fam.packet.id;
        self.sock.request(
            "OVS_PACKET_CMD_EXECUTE",
            pid,
            packet::CMD_EXECUTE,
            packet::VERSION,
            0,
            &payload,
        )?;
        Ok(())
    }

    /// Executes many packets on this socket; one result per packet.
    pub fn execute_batch(
        &mut self,
        dp_ifindex: i32,
        ops: &[Execute<'_>],
    ) -> Result<Vec<Result<(), i32>>> {
        let reqs: Vec<Req> = ops
            .iter()
            .map(|e| self.execute_req(dp_ifindex, *e))
            .collect::<Result<_>>()?;
        self.sock.batch(&reqs)
    }
}

/// What the kernel answered one request of a batch: `Err(errno)` when it refused it.
pub type Outcome = std::result::Result<(), i32>;

/// A packet to execute: (packet, key with its metadata, encoded actions), as
/// [`Dpif::execute`] takes them.
pub type Execute<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// `OVS_DP_ATTR_PER_CPU_PIDS`: one pid per possible CPU, cycling through `pids`. The kernel
/// logs "cpu_id mismatch with handler threads" for every upcall from a CPU past the end of
/// the array, so the array covers them all.
fn per_cpu_pids(pids: &[u32]) -> Vec<u8> {
    let n = possible_cpus().max(1);
    (0..n)
        .flat_map(|i| {
            pids.get(i % pids.len().max(1))
                .copied()
                .unwrap_or(0)
                .to_ne_bytes()
        })
        .collect()
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-3`).
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The highest CPU number in a kernel CPU list (`0-3,5`) plus one.
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',') {
        let last = part.rsplit('-').next()?;
        let n: usize = last.trim().parse().ok()?;
        max = Some(max.map_or(n, |m: usize| m.max(n)));
    }
    max.map(|m| m + 1)
}

fn first(mut r: Vec<GenlMsg>, what: &str) -> Result<GenlMsg> {
    if r.is_empty() {
        return Err(SockError::Malformed(format!(
            "{what}: the kernel sent no reply"
        )));
    }
    Ok(r.swap_remove(0))
}

/// Decodes an `ovs_datapath` reply payload (`ovs_header` + attributes).
pub fn parse_dp(payload: &[u8]) -> Result<DpInfo> {
    let (ifindex, a) = families::split_ovs_header(payload)?;
    let t = sock::attr_table(a, dp::ATTR_MAX)?;
    let name = t[usize::from(dp::ATTR_NAME)]
        .map(|d| sock::get_str("OVS_DP_ATTR_NAME", d))
        .transpose()?
        .ok_or_else(|| SockError::Malformed("datapath reply without OVS_DP_ATTR_NAME".into()))?;
    let mut stats = DpStats::default();
    if let Some(d) = t[usize::from(dp::ATTR_STATS)] {
        let v = u64s("OVS_DP_ATTR_STATS", d, 4)?;
        stats = DpStats {
            hit: v[0],
            missed: v[1],
            lost: v[2],
            flows: v[3],
        };
    }
    let mut megaflow = MegaflowStats::default();
    if let Some(d) = t[usize::from(dp::ATTR_MEGAFLOW_STATS)] {
        if d.len() < 24 {
            return Err(SockError::Malformed(format!(
                "invalid OVS_DP_ATTR_MEGAFLOW_STATS length {}",
                d.len()
            )));
        }
        megaflow = MegaflowStats {
            mask_hit: sock::get_u64("n_mask_hit", &d[0..8])?,
            masks: sock::get_u32("n_masks", &d[8..12])?,
            cache_hit: sock::get_u64("n_cache_hit", &d[16..24])?,
        };
    }
    let user_features = match t[usize::from(dp::ATTR_USER_FEATURES)] {
        Some(d) => sock::get_u32("OVS_DP_ATTR_USER_FEATURES", d)?,
        None => 0,
    };
    let masks_cache_size = t[usize::from(dp::ATTR_MASKS_CACHE_SIZE)]
        .map(|d| sock::get_u32("OVS_DP_ATTR_MASKS_CACHE_SIZE", d))
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

fn u64s(what: &str, d: &[u8], n: usize) -> Result<Vec<u64>> {
    if d.len() < 8 * n {
        return Err(SockError::Malformed(format!(
            "invalid {what} length {}",
            d.len()
        )));
    }
    (0..n)
        .map(|i| sock::get_u64(what, &d[8 * i..8 * i + 8]))
        .collect()
}

/// Decodes an `ovs_vport` reply payload.
pub fn parse_vport(payload: &[u8]) -> Result<VportInfo> {
    let (dp_ifindex, a) = families::split_ovs_header(payload)?;
    let t = sock::attr_table(a, vport::ATTR_MAX)?;
    let need = |ty: u16, what: &str| {
        t[usize::from(ty)]
            .ok_or_else(|| SockError::Malformed(format!("vport reply without {what}")))
    };
    let port_no = sock::get_u32(
        "OVS_VPORT_ATTR_PORT_NO",
        need(vport::ATTR_PORT_NO, "OVS_VPORT_ATTR_PORT_NO")?,
    )?;
    let ty = sock::get_u32(
        "OVS_VPORT_ATTR_TYPE",
        need(vport::ATTR_TYPE, "OVS_VPORT_ATTR_TYPE")?,
    )?;
    let name = sock::get_str(
        "OVS_VPORT_ATTR_NAME",
        need(vport::ATTR_NAME, "OVS_VPORT_ATTR_NAME")?,
    )?;
    let mut dst_port = 0;
    if let Some(o) = t[usize::from(vport::ATTR_OPTIONS)] {
        let ot = sock::attr_table(o, vport::TUNNEL_ATTR_EXTENSION)?;
        if let Some(d) = ot[usize::from(vport::TUNNEL_ATTR_DST_PORT)] {
            dst_port = sock::get_u16("OVS_TUNNEL_ATTR_DST_PORT", d)?;
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
    let upcall_pids = match t[usize::from(vport::ATTR_UPCALL_PID)] {
        Some(d) => d
            .chunks_exact(4)
            .map(|c| sock::get_u32("OVS_VPORT_ATTR_UPCALL_PID", c))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let mut stats = VportStats::default();
    if let Some(d) = t[usize::from(vport::ATTR_STATS)] {
        let v = u64s("OVS_VPORT_ATTR_STATS", d, 8)?;
        stats = VportStats {
            rx_packets: v[0],
            tx_packets: v[1],
            rx_bytes: v[2],
            tx_bytes: v[3],
            rx_errors: v[4],
            tx_errors: v[5],
            rx_dropped: v[6],
            tx_dropped: v[7],
        };
    }
    let ifindex = t[usize::from(vport::ATTR_IFINDEX)]
        .map(|d| sock::get_u32("OVS_VPORT_ATTR_IFINDEX", d))
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

/// Decodes an `ovs_flow` reply payload.
pub fn parse_flow(payload: &[u8]) -> Result<FlowEntry> {
    if payload.len() < OVS_HEADER_LEN {
        return Err(SockError::Malformed("flow reply without ovs_header".into()));
    }
    let (_, a) = families::split_ovs_header(payload)?;
    let t = sock::attr_table(a, flow::ATTR_MAX)?;
    let mut e = FlowEntry {
        key: t[usize::from(flow::ATTR_KEY)].unwrap_or_default().to_vec(),
        mask: t[usize::from(flow::ATTR_MASK)].map(<[u8]>::to_vec),
        actions: t[usize::from(flow::ATTR_ACTIONS)]
            .unwrap_or_default()
            .to_vec(),
        ..FlowEntry::default()
    };
    if let Some(d) = t[usize::from(flow::ATTR_UFID)] {
        e.ufid = Some(<[u8; 16]>::try_from(d).map_err(|_| {
            SockError::Malformed(format!("invalid OVS_FLOW_ATTR_UFID length {}", d.len()))
        })?);
    }
    if let Some(d) = t[usize::from(flow::ATTR_STATS)] {
        let v = u64s("OVS_FLOW_ATTR_STATS", d, 2)?;
        e.stats.packets = v[0];
        e.stats.bytes = v[1];
    }
    if let Some(d) = t[usize::from(flow::ATTR_USED)] {
        e.stats.used_ms = Some(sock::get_u64("OVS_FLOW_ATTR_USED", d)?);
    }
    if let Some(d) = t[usize::from(flow::ATTR_TCP_FLAGS)] {
        e.stats.tcp_flags = *d
            .first()
            .ok_or_else(|| SockError::Malformed("empty OVS_FLOW_ATTR_TCP_FLAGS".into()))?;
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1,4-5"), Some(6));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(per_cpu_pids(&[7]).len(), 4 * possible_cpus());
    }

    #[test]
    fn parses_a_vport_reply() {
        let o = nla::build(&[], |o| o.u16(vport::TUNNEL_ATTR_DST_PORT, 4789)).unwrap();
        let b = nla::build(&ovs_header(7), |w| {
            w.u32(vport::ATTR_PORT_NO, 2)?;
            w.u32(vport::ATTR_TYPE, vport::TYPE_VXLAN)?;
            w.string(vport::ATTR_NAME, "weft-tun")?;
            w.nested(vport::ATTR_OPTIONS, &o)?;
            w.put(vport::ATTR_UPCALL_PID, &[1, 0, 0, 0, 2, 0, 0, 0])
        })
        .unwrap();
        let v = parse_vport(&b).unwrap();
        assert_eq!(v.dp_ifindex, 7);
        assert_eq!(v.port_no, 2);
        assert_eq!(v.kind, VportType::Vxlan { dst_port: 4789 });
        assert_eq!(v.name, "weft-tun");
        assert_eq!(v.upcall_pids, vec![1, 2]);
    }

    #[test]
    fn a_request_too_long_for_netlink_is_refused_not_truncated() {
        // An attribute's length is 16 bits: a 70,000-byte packet cannot be encoded.
        let big = vec![0u8; 70_000];
        let e = Dpif::execute_payload(1, &big, &[], &[]).expect_err("refused");
        assert!(matches!(e, SockError::Encode(_)), "{e}");
        assert!(e.to_string().contains("70000 bytes exceeds 65531"), "{e}");
        let fits = Dpif::execute_payload(1, &[0u8; 1500], &[], &[]).unwrap();
        assert_eq!(fits.len() % 4, 0);
    }

    #[test]
    fn truncated_replies_are_errors() {
        assert!(parse_vport(&[1, 2]).is_err());
        let h = ovs_header(7);
        let b = nla::build(&h, |w| w.u32(vport::ATTR_PORT_NO, 2)).unwrap();
        assert!(parse_vport(&b).is_err());
        let b = nla::build(&h, |w| w.put(flow::ATTR_STATS, &[0; 9])).unwrap();
        assert!(parse_flow(&b).is_err());
        let b = nla::build(&h, |w| {
            w.string(dp::ATTR_NAME, "x")?;
            w.put(dp::ATTR_STATS, &[0; 31])
        })
        .unwrap();
        assert!(parse_dp(&b).is_err());
    }

    #[test]
    fn parses_a_flow_reply() {
        let mut stats = Vec::new();
        stats.extend_from_slice(&3u64.to_ne_bytes());
        stats.extend_from_slice(&300u64.to_ne_bytes());
        let b = nla::build(&ovs_header(7), |w| {
            w.nested(flow::ATTR_KEY, &[8, 0, 3, 0, 1, 0, 0, 0])?;
            w.put(flow::ATTR_STATS, &stats)?;
            w.u64(flow::ATTR_USED, 1234)?;
            w.put(flow::ATTR_UFID, &[9; 16])
        })
        .unwrap();
        let f = parse_flow(&b).unwrap();
        assert_eq!(f.key, vec![8, 0, 3, 0, 1, 0, 0, 0]);
        assert_eq!(f.stats.packets, 3);
        assert_eq!(f.stats.bytes, 300);
        assert_eq!(f.stats.used_ms, Some(1234));
        assert_eq!(f.ufid, Some([9; 16]));
        assert!(f.actions.is_empty());
    }
}
