//! Upcall reception: a socket whose pid is registered with the datapath (per CPU or per
//! vport) and receives `OVS_PACKET_CMD_MISS` and `OVS_PACKET_CMD_ACTION` messages, each with
//! the flow key the kernel extracted and the whole packet.
//!
//! Upcalls are unicast to the registered pid, so they are read straight off a plain socket;
//! each arrives as its own datagram of up to 64 KiB of packet plus its key.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::families::{self, OvsFamilies, packet};
use crate::sock::{self, GenlMsg, GenlSocket, SockError};

/// The result type of this module.
pub type Result<T, E = SockError> = std::result::Result<T, E>;

/// Why a packet came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpcallKind {
    /// `OVS_PACKET_CMD_MISS`: no flow matched.
    Miss,
    /// `OVS_PACKET_CMD_ACTION`: a flow's `userspace` action sent it.
    Action,
}

/// One upcall.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Decodes one `ovs_packet` message.
pub fn parse_upcall(m: &GenlMsg) -> Result<Upcall> {
    let kind = match m.cmd {
        packet::CMD_MISS => UpcallKind::Miss,
        packet::CMD_ACTION => UpcallKind::Action,
        c => {
            return Err(SockError::Malformed(format!(
                "unexpected ovs_packet command {c}"
            )));
        }
    };
    let (dp_ifindex, a) = families::split_ovs_header(&m.payload)?;
    let t = sock::attr_table(a, packet::ATTR_MAX)?;
    let key = t[usize::from(packet::ATTR_KEY)]
        .ok_or_else(|| SockError::Malformed("upcall without OVS_PACKET_ATTR_KEY".into()))?
        .to_vec();
    let pkt = t[usize::from(packet::ATTR_PACKET)]
        .ok_or_else(|| SockError::Malformed("upcall without OVS_PACKET_ATTR_PACKET".into()))?
        .to_vec();
    Ok(Upcall {
        kind,
        dp_ifindex,
        key,
        packet: pkt,
        userdata: t[usize::from(packet::ATTR_USERDATA)].map(<[u8]>::to_vec),
        egress_tun_key: t[usize::from(packet::ATTR_EGRESS_TUN_KEY)].map(<[u8]>::to_vec),
        mru: t[usize::from(packet::ATTR_MRU)]
            .map(|d| sock::get_u16("OVS_PACKET_ATTR_MRU", d))
            .transpose()?,
        orig_len: t[usize::from(packet::ATTR_LEN)]
            .map(|d| sock::get_u32("OVS_PACKET_ATTR_LEN", d))
            .transpose()?,
        hash: t[usize::from(packet::ATTR_HASH)]
            .map(|d| sock::get_u64("OVS_PACKET_ATTR_HASH", d))
            .transpose()?,
    })
}

/// A socket that receives upcalls. Register [`UpcallSocket::pid`] with
/// [`crate::dpif::Dpif::dp_create`], [`crate::dpif::Dpif::dp_set_upcall_pids`] or
/// [`crate::dpif::Dpif::vport_set_upcall_pids`].
#[derive(Debug)]
pub struct UpcallSocket {
    sock: GenlSocket,
    packet_family: u16,
    overruns: u64,
}

/// True for the error `recv` returns after the kernel dropped messages because the socket's
/// receive buffer was full (`ENOBUFS`): upcalls were lost, the socket itself is fine.
fn is_overrun(e: &SockError) -> bool {
    matches!(e, SockError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOBUFS))
}

impl UpcallSocket {
    /// Opens an upcall socket in the calling thread's network namespace.
    pub fn open(fam: &OvsFamilies) -> Result<Self> {
        Ok(UpcallSocket {
            sock: GenlSocket::open()?,
            packet_family: fam.packet.id,
            overruns: 0,
        })
    }

    /// The pid to register with the datapath.
    pub fn pid(&self) -> u32 {
        self.sock.pid()
    }

    /// Blocks until the next upcall. Messages of other families are skipped, and so is a
    /// receive-buffer overrun (see [`UpcallSocket::overruns`]).
    pub fn recv(&mut self) -> Result<Upcall> {
        loop {
            if let Some(u) = self.recv_one()? {
                return Ok(u);
            }
        }
    }

    /// How many times the receive buffer overflowed and upcalls were dropped (the
    /// datapath counts the packets in its `lost` statistic).
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    fn recv_one(&mut self) -> Result<Option<Upcall>> {
        let fam = self.packet_family;
        let buf = match self.sock.recv_raw() {
            Ok(b) => b,
            Err(e) if is_overrun(&e) => {
                self.overruns += 1;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        for m in sock::split_msgs(buf)? {
            if m.ty == fam {
                return parse_upcall(&GenlMsg::from_raw(&m)?).map(Some);
            }
        }
        Ok(None)
    }

    /// The next upcall if one is already queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Upcall>> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Waits up to `timeout` for the next upcall; `Ok(None)` when none came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Upcall>> {
        let deadline = Instant::now() + timeout;
        loop {
            let fam = self.packet_family;
            let buf = match self.sock.recv_raw_until(deadline) {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(None),
                Err(e) if is_overrun(&e) => {
                    self.overruns += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for m in sock::split_msgs(buf)? {
                if m.ty == fam {
                    return parse_upcall(&GenlMsg::from_raw(&m)?).map(Some);
                }
            }
        }
    }
}

impl AsRawFd for UpcallSocket {
    /// For registering with an event loop (the socket stays blocking).
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::ovs_header;
    use crate::nla;

    fn msg(cmd: u8, attrs: &[u8]) -> GenlMsg {
        let mut payload = ovs_header(5).to_vec();
        payload.extend_from_slice(attrs);
        GenlMsg {
            family: 30,
            flags: 0,
            seq: 0,
            pid: 0,
            cmd,
            version: 1,
            payload,
        }
    }

    #[test]
    fn parses_a_miss() {
        let b = nla::build(&[], |w| {
            w.put(packet::ATTR_PACKET, &[0xff; 60])?;
            w.nested(packet::ATTR_KEY, &[8, 0, 3, 0, 2, 0, 0, 0])
        })
        .unwrap();
        let u = parse_upcall(&msg(packet::CMD_MISS, &b)).unwrap();
        assert_eq!(u.kind, UpcallKind::Miss);
        assert_eq!(u.dp_ifindex, 5);
        assert_eq!(u.packet.len(), 60);
        assert_eq!(u.key, vec![8, 0, 3, 0, 2, 0, 0, 0]);
        assert_eq!(u.userdata, None);
    }

    #[test]
    fn rejects_upcalls_without_key_or_packet_and_unknown_commands() {
        let b = nla::build(&[], |w| w.put(packet::ATTR_PACKET, &[0xff; 60])).unwrap();
        assert!(parse_upcall(&msg(packet::CMD_MISS, &b)).is_err());
        assert!(parse_upcall(&msg(9, &[])).is_err());
        assert!(parse_upcall(&msg(packet::CMD_ACTION, &[1])).is_err());
    }
}
