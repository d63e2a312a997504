//! Upcall reception: a socket whose pid is registered with the datapath (per CPU or per
//! vport) and receives `OVS_PACKET_CMD_MISS` and `OVS_PACKET_CMD_ACTION` messages, each with
//! the flow key the kernel extracted and the whole packet.
//!
//! Upcalls are unicast to the registered pid, so they are read straight off a plain socket;
//! each arrives as its own datagram of up to 64 KiB of packet plus its key.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::families::OvsFamilies;
use crate::sock::{self, GenlSocket, SockError};

/// The result type of this module.
pub type Result<T, E = SockError> = std::result::Result<T, E>;

pub use crate::msg::{Upcall, UpcallKind, parse_upcall, parse_upcall_into};

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
        let mut u = Upcall::default();
        Ok(first_upcall(fam, buf, &mut u)?.then_some(u))
    }

    /// The next upcall if one is already queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Upcall>> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Waits up to `timeout` for the next upcall; `Ok(None)` when none came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Upcall>> {
        let mut u = Upcall::default();
        Ok(self.recv_timeout_into(timeout, &mut u)?.then_some(u))
    }

    /// [`UpcallSocket::recv_timeout`] into `u`, whose buffers are reused: a handler that
    /// receives into the same values allocates nothing per upcall once they have grown.
    /// `Ok(false)` when none came.
    pub fn recv_timeout_into(&mut self, timeout: Duration, u: &mut Upcall) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let fam = self.packet_family;
            let buf = match self.sock.recv_raw_until(deadline) {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(false),
                Err(e) if is_overrun(&e) => {
                    self.overruns += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if first_upcall(fam, buf, u)? {
                return Ok(true);
            }
        }
    }
}

/// Decodes the first message of family `fam` in a datagram into `u`; false when the
/// datagram holds none.
fn first_upcall(fam: u16, buf: &[u8], u: &mut Upcall) -> Result<bool> {
    for m in sock::msgs(buf) {
        let m = m?;
        if m.ty == fam {
            let (cmd, payload) = m.genl()?;
            parse_upcall_into(cmd, payload, u)?;
            return Ok(true);
        }
    }
    Ok(false)
}

impl AsRawFd for UpcallSocket {
    /// For registering with an event loop (the socket stays blocking).
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
