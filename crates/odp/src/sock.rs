//! Generic netlink transport: one `NETLINK_GENERIC` socket (neli's `NlSocket`), message framing,
//! request/ACK and dump exchanges, and batched requests.
//!
//! Messages are framed here as plain bytes (`nlmsghdr` + `genlmsghdr` + payload); the OVS
//! payloads are written and read by [`crate::msg`], whose errors this layer carries as
//! [`SockError::Codec`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

use crate::error::Error;

/// `NLMSG_ERROR`: an error or an ACK.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 4;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ECHO`.
pub const NLM_F_ECHO: u16 = 0x8;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_REPLACE`.
pub const NLM_F_REPLACE: u16 = 0x100;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct genlmsghdr`.
pub const GENL_HDRLEN: usize = 4;

/// Receive buffer of one `recv`: a whole upcall with a 64 KiB packet, its key and its
/// userdata, or one multi-message dump skb, always fits.
pub const RECV_BUF_LEN: usize = 128 * 1024;
/// `SO_RCVBUF` requested for every socket. The kernel caps it at `net.core.rmem_max`
/// (and doubles it); the default of 208 KiB would hold only a few 64 KiB upcalls.
pub const SOCKET_RCVBUF: usize = 4 * 1024 * 1024;
/// Requests per batch before the ACKs are collected: the ACKs of one batch must fit in the
/// socket's receive buffer even when `rmem_max` keeps it at its default.
pub const BATCH_MAX: usize = 128;

/// An error of the netlink transport.
#[derive(Debug, thiserror::Error)]
pub enum SockError {
    /// A socket system call failed.
    #[error("netlink {op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("{what}: kernel returned {errno} ({})", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request, e.g. "OVS_FLOW_CMD_NEW".
        what: String,
        /// The positive errno.
        errno: i32,
    },
    /// The kernel answered a request with nothing.
    #[error("{what}: the kernel sent no reply")]
    NoReply {
        /// The request.
        what: String,
    },
    /// A generic netlink family is not registered (the module is not loaded and could not be).
    #[error("generic netlink family {family} is not available (is openvswitch.ko loaded?)")]
    NoFamily {
        /// The family name.
        family: String,
    },
    /// A multicast group of a family does not exist.
    #[error("generic netlink family {family} has no multicast group {group}")]
    NoGroup {
        /// The family name.
        family: String,
        /// The group name.
        group: String,
    },
    /// A request could not be encoded (an attribute longer than netlink allows), or a
    /// message from the kernel could not be decoded.
    #[error(transparent)]
    Codec(#[from] crate::error::Error),
    /// A received message was larger than the receive buffer.
    #[error("netlink message of {len} bytes truncated to {cap}")]
    Truncated {
        /// Its real length.
        len: usize,
        /// The buffer length.
        cap: usize,
    },
}

impl SockError {
    /// The errno of a kernel error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SockError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The result type of this module.
pub type Result<T, E = SockError> = std::result::Result<T, E>;

/// One received generic netlink message, its headers decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenlMsg {
    /// `nlmsg_type`: the family id.
    pub family: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// `genlmsghdr.cmd`.
    pub cmd: u8,
    /// `genlmsghdr.version`.
    pub version: u8,
    /// Everything after the `genlmsghdr`: for the OVS families a 4-byte `ovs_header`
    /// followed by attributes.
    pub payload: Vec<u8>,
}

/// A raw netlink message: type, flags, seq and the bytes after `nlmsghdr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMsg<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// The message body.
    pub body: &'a [u8],
}

/// Splits a datagram into netlink messages.
pub fn split_msgs(buf: &[u8]) -> Result<Vec<RawMsg<'_>>> {
    msgs(buf).collect()
}

/// The netlink messages of a datagram, in order, without collecting them; a malformed
/// header ends the iteration with an error.
pub fn msgs(mut buf: &[u8]) -> impl Iterator<Item = Result<RawMsg<'_>>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            let err = Error::decode(
                "nlmsghdr",
                format!("nlmsg_len {len} with {} bytes left", buf.len()),
            );
            buf = &[];
            return Some(Err(err.into()));
        }
        let m = RawMsg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            pid: u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]),
            body: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[crate::nla::align(len).min(buf.len())..];
        Some(Ok(m))
    })
}

impl<'a> RawMsg<'a> {
    /// The `genlmsghdr` command and the payload after it, for a message of a generic
    /// netlink family.
    pub fn genl(&self) -> Result<(u8, &'a [u8])> {
        match self.body.split_first_chunk::<GENL_HDRLEN>() {
            Some((h, payload)) => Ok((h[0], payload)),
            None => Err(Error::decode(
                "genlmsghdr",
                format!(
                    "message of family {} has {} bytes",
                    self.ty,
                    self.body.len()
                ),
            )
            .into()),
        }
    }
}

impl GenlMsg {
    /// Decodes a raw message of a generic netlink family.
    pub fn from_raw(m: &RawMsg<'_>) -> Result<Self> {
        let (cmd, payload) = m.genl()?;
        Ok(GenlMsg {
            family: m.ty,
            flags: m.flags,
            seq: m.seq,
            pid: m.pid,
            cmd,
            version: m.body[1],
            payload: payload.to_vec(),
        })
    }
}

/// Appends a whole generic netlink request to `out`.
pub fn put_genl_msg(
    out: &mut Vec<u8>,
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    payload: &[u8],
) {
    let h = ReqHeader {
        family,
        version,
        cmd,
        flags,
    };
    // Copying bytes cannot fail, and the length is checked when the socket sends.
    let _ = put_genl_msg_with(out, h, seq, |b| {
        b.extend_from_slice(payload);
        Ok(())
    });
}

/// Appends a whole generic netlink request to `out` whose payload `payload` writes in place.
/// On an error (the payload's, or a message longer than netlink allows) `out` is left as it
/// was.
pub fn put_genl_msg_with(
    out: &mut Vec<u8>,
    h: ReqHeader,
    seq: u32,
    payload: impl FnOnce(&mut Vec<u8>) -> crate::Result<()>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&h.family.to_ne_bytes());
    out.extend_from_slice(&(h.flags | NLM_F_REQUEST).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[h.cmd, h.version, 0, 0]);
    if let Err(e) = payload(out) {
        out.truncate(start);
        return Err(e.into());
    }
    let Ok(len) = u32::try_from(out.len() - start) else {
        let n = out.len() - start;
        out.truncate(start);
        return Err(Error::Encode {
            attr: "nlmsghdr",
            reason: format!("a message of {n} bytes"),
        }
        .into());
    };
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    out.resize(crate::nla::align(out.len()), 0);
    Ok(())
}

/// What precedes a request's payload: its family, version, command and flags (besides
/// `NLM_F_REQUEST`, and `NLM_F_ACK`, which a batch adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqHeader {
    /// The generic netlink family id.
    pub family: u16,
    /// The family's version.
    pub version: u8,
    /// The command.
    pub cmd: u8,
    /// Netlink flags.
    pub flags: u16,
}

/// Where a request of [`GenlSocket::batch_with`] is written.
#[derive(Debug)]
pub struct ReqOut<'a> {
    out: &'a mut Vec<u8>,
    seq: u32,
}

impl ReqOut<'_> {
    /// Appends the request: `h`, with `NLM_F_ACK`, then the payload `payload` writes.
    pub fn put(
        self,
        h: ReqHeader,
        payload: impl FnOnce(&mut Vec<u8>) -> crate::Result<()>,
    ) -> Result<()> {
        let h = ReqHeader {
            flags: h.flags | NLM_F_ACK,
            ..h
        };
        put_genl_msg_with(self.out, h, self.seq, payload)
    }
}

/// What the kernel answered one request of a batch: `Err(errno)` when it refused it.
pub type Outcome = std::result::Result<(), i32>;

/// A generic netlink socket with its own sequence numbers and receive buffer.
///
/// It is not shared between threads: open one per thread (or per batch of work).
pub struct GenlSocket {
    sock: NlSocket,
    pid: u32,
    seq: u32,
    buf: Vec<u8>,
    /// The requests of a batch being sent, and their outcomes as they come: kept from batch
    /// to batch so that a batch allocates nothing once they have grown.
    out: Vec<u8>,
    got: Vec<Option<Outcome>>,
}

impl std::fmt::Debug for GenlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenlSocket")
            .field("pid", &self.pid)
            .field("seq", &self.seq)
            .finish()
    }
}

impl GenlSocket {
    /// Opens a blocking `NETLINK_GENERIC` socket in the calling thread's network namespace,
    /// with a kernel-assigned port id and a receive buffer raised towards `SOCKET_RCVBUF`.
    pub fn open() -> Result<Self> {
        let io = |op| move |source| SockError::Io { op, source };
        let sock = NlSocket::connect(NlFamily::Generic, None, Groups::empty())
            .map_err(io("socket/bind"))?;
        sock.block().map_err(io("fcntl"))?;
        sock.set_recv_buffer_size(SOCKET_RCVBUF)
            .map_err(io("setsockopt(SO_RCVBUF)"))?;
        // Without strict checking a dump request with attributes is accepted as it always was.
        let pid = sock.pid().map_err(io("getsockname"))?;
        Ok(GenlSocket {
            sock,
            pid,
            seq: 1,
            buf: vec![0; RECV_BUF_LEN],
            out: Vec::new(),
            got: Vec::new(),
        })
    }

    /// The netlink port id the kernel assigned; upcalls are unicast to it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Joins a multicast group by id.
    pub fn join_group(&self, group: u32) -> Result<()> {
        self.sock
            .add_mcast_membership(Groups::new_groups(&[group]))
            .map_err(|source| SockError::Io {
                op: "setsockopt(NETLINK_ADD_MEMBERSHIP)",
                source,
            })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends raw bytes (one or more complete messages).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let n = self
            .sock
            .send(bytes, Msg::empty())
            .map_err(|source| SockError::Io { op: "send", source })?;
        if n != bytes.len() {
            return Err(SockError::Io {
                op: "send",
                source: io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short netlink send: {n} of {} bytes", bytes.len()),
                ),
            });
        }
        Ok(())
    }

    /// Receives one datagram into the socket's buffer and returns it. `EINTR` is retried.
    pub fn recv_raw(&mut self) -> Result<&[u8]> {
        loop {
            match self.sock.recv(&mut self.buf[..], Msg::TRUNC) {
                Ok((n, _)) => {
                    if n > self.buf.len() {
                        return Err(SockError::Truncated {
                            len: n,
                            cap: self.buf.len(),
                        });
                    }
                    return Ok(&self.buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SockError::Io { op: "recv", source }),
            }
        }
    }

    /// Receives one datagram if one arrives before `deadline`. The thread sleeps in the kernel
    /// (`poll(2)`) until the socket is readable or the deadline passes: an idle caller costs no
    /// wakeups, and the socket's blocking mode is never toggled.
    pub fn recv_raw_until(&mut self, deadline: Instant) -> Result<Option<&[u8]>> {
        let len = loop {
            if !self.wait_readable(deadline.saturating_duration_since(Instant::now()))? {
                return Ok(None);
            }
            match self
                .sock
                .recv(&mut self.buf[..], Msg::TRUNC | Msg::DONTWAIT)
            {
                Ok((len, _)) => break len,
                // Readable, then taken or interrupted: wait again for what is left of the time.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(source) => return Err(SockError::Io { op: "recv", source }),
            }
        };
        if len > self.buf.len() {
            return Err(SockError::Truncated {
                len,
                cap: self.buf.len(),
            });
        }
        Ok(Some(&self.buf[..len]))
    }

    /// Whether the socket turns readable within `timeout` (rounded up to a millisecond; zero
    /// only looks). An interrupted wait reports readable, and the caller's non-blocking
    /// receive sorts it out.
    fn wait_readable(&self, timeout: Duration) -> Result<bool> {
        let ms = timeout
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, initialised pollfd that outlives the call, and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(SockError::Io {
                op: "poll",
                source: e,
            });
        }
        Ok(n > 0)
    }

    /// Sends one request and waits for its answer: the reply messages (if the command
    /// produces any) after the kernel's ACK. `what` names the request in errors.
    pub fn request(
        &mut self,
        what: &str,
        family: u16,
        cmd: u8,
        version: u8,
        flags: u16,
        payload: &[u8],
    ) -> Result<Vec<GenlMsg>> {
        let seq = self.next_seq();
        let mut out = Vec::with_capacity(NLMSG_HDRLEN + GENL_HDRLEN + payload.len());
        put_genl_msg(
            &mut out,
            family,
            flags | NLM_F_ACK,
            seq,
            cmd,
            version,
            payload,
        );
        self.send_raw(&out)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let pid = self.pid;
            let buf = self.recv_raw()?;
            let msgs = split_msgs(buf)?;
            let mut done = false;
            for m in &msgs {
                if m.seq != seq || (m.pid != 0 && m.pid != pid) {
                    // A stale answer to an earlier request that timed out on our side,
                    // or a notification: not ours.
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let errno = ack_errno(m)?;
                        if errno != 0 {
                            return Err(SockError::Kernel {
                                what: what.to_string(),
                                errno,
                            });
                        }
                        done = true;
                    }
                    NLMSG_DONE => {
                        // A dump ends with DONE; its payload may carry an error.
                        if m.body.len() >= 4 {
                            let e =
                                i32::from_ne_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                            if e < 0 {
                                return Err(SockError::Kernel {
                                    what: what.to_string(),
                                    errno: -e,
                                });
                            }
                        }
                        done = true;
                    }
                    NLMSG_OVERRUN => {
                        return Err(
                            Error::decode("nlmsghdr", format!("{what}: NLMSG_OVERRUN")).into()
                        );
                    }
                    t if t == family => {
                        replies.push(GenlMsg::from_raw(m)?);
                        if !dump && m.flags & NLM_F_MULTI == 0 {
                            // A plain reply is followed by the ACK we asked for.
                        }
                    }
                    _ => {}
                }
            }
            if done {
                return Ok(replies);
            }
        }
    }

    /// Sends `n` requests, of one family or several, [`BATCH_MAX`] per `send`, each with
    /// `NLM_F_ACK` and written in place by `write(i, ..)`, and appends one outcome per request
    /// to `results`, in order: `Ok(())` or the kernel's error. The kernel handles them in
    /// order. Replies (when a command produces one) are discarded. Nothing is allocated once
    /// the socket's buffers and `results` have grown.
    pub fn batch_with(
        &mut self,
        n: usize,
        mut write: impl FnMut(usize, ReqOut<'_>) -> Result<()>,
        results: &mut Vec<Outcome>,
    ) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        let mut got = std::mem::take(&mut self.got);
        let r = self.batch_chunks(n, &mut write, &mut out, &mut got, results);
        self.out = out;
        self.got = got;
        r
    }

    fn batch_chunks(
        &mut self,
        n: usize,
        write: &mut impl FnMut(usize, ReqOut<'_>) -> Result<()>,
        out: &mut Vec<u8>,
        got: &mut Vec<Option<Outcome>>,
        results: &mut Vec<Outcome>,
    ) -> Result<()> {
        for chunk in (0..n).step_by(BATCH_MAX) {
            let end = (chunk + BATCH_MAX).min(n);
            out.clear();
            let first = self.seq.wrapping_add(1);
            for i in chunk..end {
                let seq = self.next_seq();
                write(
                    i,
                    ReqOut {
                        out: &mut *out,
                        seq,
                    },
                )?;
            }
            self.send_raw(out)?;
            got.clear();
            got.resize(end - chunk, None);
            let mut pending = end - chunk;
            while pending > 0 {
                let buf = self.recv_raw()?;
                for m in msgs(buf) {
                    let m = m?;
                    if m.ty != NLMSG_ERROR {
                        continue;
                    }
                    let idx = m.seq.wrapping_sub(first) as usize;
                    let Some(slot) = got.get_mut(idx) else {
                        continue;
                    };
                    if slot.is_none() {
                        let errno = ack_errno(&m)?;
                        *slot = Some(if errno == 0 { Ok(()) } else { Err(errno) });
                        pending -= 1;
                    }
                }
            }
            results.extend(got.iter().map(|r| r.unwrap_or(Err(libc::EIO))));
        }
        Ok(())
    }
}

impl AsRawFd for GenlSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// The errno (positive, 0 for an ACK) carried by an `NLMSG_ERROR` message.
fn ack_errno(m: &RawMsg<'_>) -> Result<i32> {
    if m.body.len() < 4 {
        return Err(Error::bad_len("NLMSG_ERROR", m.body.len()).into());
    }
    let e = i32::from_ne_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
    Ok(-e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(split_msgs(&[40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn request_framing() {
        let mut out = Vec::new();
        put_genl_msg(&mut out, 0x1a, NLM_F_ACK, 9, 3, 2, &[0, 0, 0, 0, 5]);
        assert_eq!(out.len(), 28);
        let msgs = split_msgs(&out).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, 0x1a);
        assert_eq!(msgs[0].flags, NLM_F_ACK | NLM_F_REQUEST);
        assert_eq!(msgs[0].seq, 9);
        let g = GenlMsg::from_raw(&msgs[0]).unwrap();
        assert_eq!((g.cmd, g.version), (3, 2));
        assert_eq!(g.payload, vec![0, 0, 0, 0, 5]);
    }
}
