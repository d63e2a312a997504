//! `Dpif`: a handle on the kernel datapath over generic netlink: datapaths, vports, flows
//! (single and batched) and packet execution. Flow keys, masks and actions travel here as
//! their encoded attribute bytes; the codec modules turn them into typed values and text.
//! Requests are written and replies read by [`crate::msg`]; this module only talks to the
//! kernel.

use crate::families::{self, OvsFamilies};
use crate::msg::{self, cmd, ovs_header, parse_dp, parse_flow, parse_vport};
use crate::nla::{self, dp, vport};
pub use crate::sock::Outcome;
use crate::sock::{
    GenlMsg, GenlSocket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, ReqHeader, ReqOut, SockError,
};

/// The result type of this module.
pub type Result<T, E = SockError> = std::result::Result<T, E>;

pub use crate::msg::{
    DpInfo, DpStats, FlowEntry, FlowId, FlowPut, KernelFlowStats, MegaflowStats, UpcallMode,
    VportInfo, VportStats, VportType,
};

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

/// Milliseconds on the monotonic clock, as the kernel stamps `OVS_FLOW_ATTR_USED`
/// (`ovs_flow_used_time`: `ktime_get_ts64`, with the seconds taken as 32 bits). One
/// `clock_gettime`, which the vDSO usually answers without entering the kernel: the flow
/// manager reads it for every flow it tracks.
pub fn monotonic_ms() -> std::io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, which is
    // all clock_gettime(2) writes to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let secs = u64::from(ts.tv_sec as u32);
    let ms = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000;
    Ok(secs * 1000 + ms)
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
            .request(what, id, cmd, families::dp::VERSION, flags, &payload)
    }

    /// Creates a datapath. It asks for per-CPU upcall dispatch with `upcall_pid` for every
    /// CPU, and falls back to per-vport pids when the kernel refuses that feature.
    pub fn dp_create(&mut self, name: &str, upcall_pid: u32) -> Result<DpInfo> {
        let base = dp::F_UNALIGNED | dp::F_VPORT_PIDS;
        let attrs = nla::build(&[], |w| {
            w.string(dp::NAME, name)?;
            w.u32(dp::UPCALL_PID, upcall_pid)?;
            w.u32(dp::USER_FEATURES, base | dp::F_DISPATCH_UPCALL_PER_CPU)?;
            w.put(dp::PER_CPU_PIDS, &per_cpu_pids(&[upcall_pid]))
        })?;
        let what = format!("OVS_DP_CMD_NEW {name}");
        let r = match self.dp_request(&what, cmd::NEW, NLM_F_ECHO | NLM_F_CREATE, &attrs) {
            Err(SockError::Kernel { errno, .. })
                if errno == libc::EOPNOTSUPP || errno == libc::EINVAL =>
            {
                let attrs = nla::build(&[], |w| {
                    w.string(dp::NAME, name)?;
                    w.u32(dp::UPCALL_PID, upcall_pid)?;
                    w.u32(dp::USER_FEATURES, base)
                })?;
                self.dp_request(&what, cmd::NEW, NLM_F_ECHO | NLM_F_CREATE, &attrs)?
            }
            r => r?,
        };
        first(r, &what, parse_dp)
    }

    /// Creates a datapath that delivers upcalls to per-vport pids even where the kernel has
    /// per-CPU dispatch (the mode kernels before 5.16 always use).
    pub fn dp_create_per_vport(&mut self, name: &str, upcall_pid: u32) -> Result<DpInfo> {
        let attrs = nla::build(&[], |w| {
            w.string(dp::NAME, name)?;
            w.u32(dp::UPCALL_PID, upcall_pid)?;
            w.u32(dp::USER_FEATURES, dp::F_UNALIGNED | dp::F_VPORT_PIDS)
        })?;
        let what = format!("OVS_DP_CMD_NEW {name}");
        let r = self.dp_request(&what, cmd::NEW, NLM_F_ECHO | NLM_F_CREATE, &attrs)?;
        first(r, &what, parse_dp)
    }

    /// Looks a datapath up by name.
    pub fn dp_get(&mut self, name: &str) -> Result<DpInfo> {
        let attrs = nla::build(&[], |w| w.string(dp::NAME, name))?;
        let what = format!("OVS_DP_CMD_GET {name}");
        let r = self.dp_request(&what, cmd::GET, 0, &attrs)?;
        first(r, &what, parse_dp)
    }

    /// Every datapath of this network namespace.
    pub fn dp_list(&mut self) -> Result<Vec<DpInfo>> {
        let r = self.dp_request("OVS_DP_CMD_GET dump", cmd::GET, NLM_F_DUMP, &[])?;
        Ok(r.iter()
            .map(|m| parse_dp(&m.payload))
            .collect::<crate::Result<_>>()?)
    }

    /// Deletes a datapath with its vports and flows.
    pub fn dp_delete(&mut self, name: &str) -> Result<()> {
        let attrs = nla::build(&[], |w| w.string(dp::NAME, name))?;
        self.dp_request(&format!("OVS_DP_CMD_DEL {name}"), cmd::DEL, 0, &attrs)?;
        Ok(())
    }

    /// Sets the per-CPU upcall pids of a datapath in per-CPU mode: CPU `i` gets
    /// `pids[i % pids.len()]`, for every possible CPU.
    pub fn dp_set_upcall_pids(&mut self, name: &str, pids: &[u32]) -> Result<DpInfo> {
        let attrs = nla::build(&[], |w| {
            w.string(dp::NAME, name)?;
            w.u32(
                dp::USER_FEATURES,
                dp::F_UNALIGNED | dp::F_VPORT_PIDS | dp::F_DISPATCH_UPCALL_PER_CPU,
            )?;
            w.put(dp::PER_CPU_PIDS, &per_cpu_pids(pids))
        })?;
        let what = format!("OVS_DP_CMD_SET {name} per-cpu pids");
        let r = self.dp_request(&what, cmd::SET, NLM_F_ECHO, &attrs)?;
        first(r, &what, parse_dp)
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
            .request(what, id, cmd, families::vport::VERSION, flags, &payload)
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
            w.string(vport::NAME, &spec.name)?;
            w.u32(vport::TYPE, spec.kind.number())?;
            w.put(vport::UPCALL_PID, &pids)?;
            if let Some(no) = spec.port_no {
                w.u32(vport::PORT_NO, no)?;
            }
            match spec.kind {
                VportType::Vxlan { dst_port } | VportType::Geneve { dst_port } => {
                    let o = nla::build(&[], |o| o.u16(vport::TUNNEL_DST_PORT, dst_port))?;
                    w.nested(vport::OPTIONS, &o)
                }
                _ => Ok(()),
            }
        })?;
        let what = format!("OVS_VPORT_CMD_NEW {}", spec.name);
        let r = self.vport_request(
            &what,
            dp_ifindex,
            cmd::NEW,
            NLM_F_ECHO | NLM_F_CREATE,
            &attrs,
        )?;
        first(r, &what, parse_vport)
    }

    /// Looks a vport up by name.
    pub fn vport_get(&mut self, dp_ifindex: i32, name: &str) -> Result<VportInfo> {
        let attrs = nla::build(&[], |w| w.string(vport::NAME, name))?;
        let what = format!("OVS_VPORT_CMD_GET {name}");
        let r = self.vport_request(&what, dp_ifindex, cmd::GET, 0, &attrs)?;
        first(r, &what, parse_vport)
    }

    /// Looks a vport up by port number.
    pub fn vport_get_by_no(&mut self, dp_ifindex: i32, port_no: u32) -> Result<VportInfo> {
        let attrs = nla::build(&[], |w| w.u32(vport::PORT_NO, port_no))?;
        let what = format!("OVS_VPORT_CMD_GET port {port_no}");
        let r = self.vport_request(&what, dp_ifindex, cmd::GET, 0, &attrs)?;
        first(r, &what, parse_vport)
    }

    /// Every vport of a datapath, by port number.
    pub fn vport_list(&mut self, dp_ifindex: i32) -> Result<Vec<VportInfo>> {
        let r = self.vport_request(
            "OVS_VPORT_CMD_GET dump",
            dp_ifindex,
            cmd::GET,
            NLM_F_DUMP,
            &[],
        )?;
        let mut v: Vec<VportInfo> = r
            .iter()
            .map(|m| parse_vport(&m.payload))
            .collect::<crate::Result<_>>()?;
        v.sort_by_key(|p| p.port_no);
        Ok(v)
    }

    /// Deletes a vport by name. Tunnel and internal devices the datapath created go with it.
    pub fn vport_delete(&mut self, dp_ifindex: i32, name: &str) -> Result<()> {
        let attrs = nla::build(&[], |w| w.string(vport::NAME, name))?;
        self.vport_request(
            &format!("OVS_VPORT_CMD_DEL {name}"),
            dp_ifindex,
            cmd::DEL,
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
            w.u32(vport::PORT_NO, port_no)?;
            w.put(vport::UPCALL_PID, &arr)
        })?;
        let what = format!("OVS_VPORT_CMD_SET port {port_no} upcall pids");
        let r = self.vport_request(&what, dp_ifindex, cmd::SET, NLM_F_ECHO, &attrs)?;
        first(r, &what, parse_vport)
    }

    fn flow_payload(dp_ifindex: i32, f: &FlowPut) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        msg::flow_put_payload(dp_ifindex, f, &mut b)?;
        Ok(b)
    }

    fn put_cmd(mode: PutMode) -> (u8, u16) {
        match mode {
            PutMode::Create => (cmd::NEW, NLM_F_CREATE),
            PutMode::Modify => (cmd::SET, 0),
            PutMode::CreateOrModify => (cmd::NEW, 0),
        }
    }

    /// Installs or modifies one flow.
    pub fn flow_put(&mut self, dp_ifindex: i32, f: &FlowPut, mode: PutMode) -> Result<()> {
        let (cmd, flags) = Self::put_cmd(mode);
        let payload = Self::flow_payload(dp_ifindex, f)?;
        let what = if cmd == cmd::NEW {
            "OVS_FLOW_CMD_NEW"
        } else {
            "OVS_FLOW_CMD_SET"
        };
        let id = self.fam.flow.id;
        self.sock
            .request(what, id, cmd, families::flow::VERSION, flags, &payload)?;
        Ok(())
    }

    /// Installs many flows on this one socket, many requests per `send`; returns one result
    /// per flow, in order (`Err(errno)` for the ones the kernel refused).
    pub fn flow_put_batch(
        &mut self,
        dp_ifindex: i32,
        flows: &[FlowPut],
        mode: PutMode,
    ) -> Result<Vec<Outcome>> {
        let mut results = Vec::with_capacity(flows.len());
        let none: Execute<'_> = (&[], &[], &[]);
        self.put_and_execute_into(dp_ifindex, flows, mode, 0, |_| none, &mut results)?;
        Ok(results)
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
        let mut results = Vec::with_capacity(puts.len() + executes.len());
        self.put_and_execute_into(
            dp_ifindex,
            puts,
            mode,
            executes.len(),
            |i| executes[i],
            &mut results,
        )?;
        let executed = results.split_off(puts.len());
        Ok((results, executed))
    }

    /// [`Dpif::put_and_execute`] of `n_exec` packets, packet `i` being `exec(i)`, the
    /// outcomes appended to `results` (the puts', then the packets'). Each request is written
    /// straight into the socket's buffer: nothing is allocated once the buffers and `results`
    /// have grown.
    pub fn put_and_execute_into<'a>(
        &mut self,
        dp_ifindex: i32,
        puts: &[FlowPut],
        mode: PutMode,
        n_exec: usize,
        exec: impl Fn(usize) -> Execute<'a>,
        results: &mut Vec<Outcome>,
    ) -> Result<()> {
        let put = self.put_header(mode);
        let execute = self.execute_header();
        self.sock.batch_with(
            puts.len() + n_exec,
            |i, o: ReqOut<'_>| match puts.get(i) {
                Some(f) => o.put(put, |b| msg::flow_put_payload(dp_ifindex, f, b)),
                None => {
                    let (pkt, key, actions) = exec(i - puts.len());
                    o.put(execute, |b| {
                        msg::execute_payload(dp_ifindex, pkt, key, actions, b)
                    })
                }
            },
            results,
        )
    }

    fn put_header(&self, mode: PutMode) -> ReqHeader {
        let (cmd, flags) = Self::put_cmd(mode);
        ReqHeader {
            family: self.fam.flow.id,
            version: families::flow::VERSION,
            cmd,
            flags,
        }
    }

    fn execute_header(&self) -> ReqHeader {
        ReqHeader {
            family: self.fam.packet.id,
            version: families::packet::VERSION,
            cmd: cmd::PACKET_EXECUTE,
            flags: 0,
        }
    }

    fn flow_id_payload(dp_ifindex: i32, id: &FlowId) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        msg::flow_id_payload(dp_ifindex, id, &mut b)?;
        Ok(b)
    }

    /// Reads one flow back.
    pub fn flow_get(&mut self, dp_ifindex: i32, id: &FlowId) -> Result<FlowEntry> {
        let payload = Self::flow_id_payload(dp_ifindex, id)?;
        let fid = self.fam.flow.id;
        let r = self.sock.request(
            "OVS_FLOW_CMD_GET",
            fid,
            cmd::GET,
            families::flow::VERSION,
            0,
            &payload,
        )?;
        first(r, "OVS_FLOW_CMD_GET", parse_flow)
    }

    /// Deletes one flow and returns its final state.
    pub fn flow_del(&mut self, dp_ifindex: i32, id: &FlowId) -> Result<FlowEntry> {
        let payload = Self::flow_id_payload(dp_ifindex, id)?;
        let fid = self.fam.flow.id;
        let r = self.sock.request(
            "OVS_FLOW_CMD_DEL",
            fid,
            cmd::DEL,
            families::flow::VERSION,
            NLM_F_ECHO,
            &payload,
        )?;
        first(r, "OVS_FLOW_CMD_DEL", parse_flow)
    }

    /// Deletes many flows on this socket; one result per flow, in order.
    pub fn flow_del_batch(&mut self, dp_ifindex: i32, ids: &[FlowId]) -> Result<Vec<Outcome>> {
        let del = ReqHeader {
            family: self.fam.flow.id,
            version: families::flow::VERSION,
            cmd: cmd::DEL,
            flags: 0,
        };
        let mut results = Vec::with_capacity(ids.len());
        self.sock.batch_with(
            ids.len(),
            |i, o| o.put(del, |b| msg::flow_id_payload(dp_ifindex, &ids[i], b)),
            &mut results,
        )?;
        Ok(results)
    }

    /// Every flow of a datapath.
    pub fn flow_dump(&mut self, dp_ifindex: i32) -> Result<Vec<FlowEntry>> {
        self.flow_dump_omitting(dp_ifindex, 0)
    }

    /// Every flow of a datapath with its UFID and statistics only: the kernel leaves the key,
    /// mask and actions out of each flow installed with a UFID, which spares it serializing
    /// them and the caller parsing them. A flow without a UFID keeps its key, which names it.
    pub fn flow_stats_dump(&mut self, dp_ifindex: i32) -> Result<Vec<FlowEntry>> {
        use msg::ufid_flags::{OMIT_ACTIONS, OMIT_KEY, OMIT_MASK};
        self.flow_dump_omitting(dp_ifindex, OMIT_KEY | OMIT_MASK | OMIT_ACTIONS)
    }

    fn flow_dump_omitting(&mut self, dp_ifindex: i32, omit: u32) -> Result<Vec<FlowEntry>> {
        let mut payload = Vec::new();
        msg::flow_dump_payload(dp_ifindex, omit, &mut payload)?;
        let fid = self.fam.flow.id;
        let r = self.sock.request(
            "OVS_FLOW_CMD_GET dump",
            fid,
            cmd::GET,
            families::flow::VERSION,
            NLM_F_DUMP,
            &payload,
        )?;
        Ok(r.iter()
            .map(|m| parse_flow(&m.payload))
            .collect::<crate::Result<_>>()?)
    }

    /// Deletes every flow of a datapath.
    pub fn flow_flush(&mut self, dp_ifindex: i32) -> Result<()> {
        let payload = ovs_header(dp_ifindex);
        let fid = self.fam.flow.id;
        self.sock.request(
            "OVS_FLOW_CMD_DEL (flush)",
            fid,
            cmd::DEL,
            families::flow::VERSION,
            0,
            &payload,
        )?;
        Ok(())
    }

    fn execute_payload(dp_ifindex: i32, pkt: &[u8], key: &[u8], actions: &[u8]) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        msg::execute_payload(dp_ifindex, pkt, key, actions, &mut b)?;
        Ok(b)
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
            cmd::PACKET_EXECUTE,
            families::packet::VERSION,
            0,
            &payload,
        )?;
        Ok(())
    }

    /// Executes many packets on this socket; one result per packet.
    pub fn execute_batch(&mut self, dp_ifindex: i32, ops: &[Execute<'_>]) -> Result<Vec<Outcome>> {
        let mut results = Vec::with_capacity(ops.len());
        self.put_and_execute_into(
            dp_ifindex,
            &[],
            PutMode::Create,
            ops.len(),
            |i| ops[i],
            &mut results,
        )?;
        Ok(results)
    }
}

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

/// The first reply of a request that must have one, decoded by `parse`.
fn first<T>(r: Vec<GenlMsg>, what: &str, parse: fn(&[u8]) -> crate::Result<T>) -> Result<T> {
    let m = r.first().ok_or_else(|| SockError::NoReply {
        what: what.to_string(),
    })?;
    Ok(parse(&m.payload)?)
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
}
