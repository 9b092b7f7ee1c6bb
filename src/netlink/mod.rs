//! Netlink plumbing shared by rtnetlink (`link`) and nf_tables (`nft`): a socket whose
//! every receive is bounded, message framing, attribute walking and errno extraction.
//!
//! ```text
//! struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }   16 bytes, host order
//! struct nlattr   { u16 len; u16 type; }  payload padded to 4 bytes
//! NLMSG_ERROR payload: i32 -errno (0 = ACK), then the offending header
//! ```

pub mod link;
pub mod nft;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::io::Errno;

pub use crate::error::Fault;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, sockopt};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;

/// The kernel's limit on one receive is 32 KiB per skb for dumps; 64 KiB holds any reply.
const RECV_BUF: usize = 64 * 1024;

/// A bound netlink socket. Receives wait at most `timeout` each and never past `deadline`.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    deadline: Instant,
    /// The receive buffer, allocated once per socket: a dump of thousands of rules is
    /// many receives, and a fresh 64 KiB buffer each time is an mmap, a zeroing and an
    /// munmap.
    buf: Vec<u8>,
}

/// One message from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl Msg<'_> {
    /// For NLMSG_ERROR: the errno (0 for an ACK), positive.
    pub fn error_code(&self) -> Option<i32> {
        if self.ty != NLMSG_ERROR {
            return None;
        }
        let raw = self.payload.get(..4)?;
        Some(-i32::from_ne_bytes(raw.try_into().ok()?))
    }
}

impl Socket {
    /// `protocol` None is NETLINK_ROUTE (protocol number 0).
    pub fn open(protocol: Option<rustix::net::Protocol>, deadline: Instant) -> Result<Socket, Errno> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            protocol,
        )?;
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 0))?;
        let s = Socket {
            fd,
            seq: 1,
            deadline,
            buf: Vec::new(),
        };
        s.set_recv_timeout()?;
        Ok(s)
    }

    pub fn route(deadline: Instant) -> Result<Socket, Errno> {
        Socket::open(None, deadline)
    }

    pub fn netfilter(deadline: Instant) -> Result<Socket, Errno> {
        Socket::open(Some(netlink::NETFILTER), deadline)
    }

    fn set_recv_timeout(&self) -> Result<(), Errno> {
        // A netlink reply normally takes microseconds; 5 s only guards against a wedge.
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        sockopt::set_socket_timeout(&self.fd, sockopt::Timeout::Recv, Some(left))
    }

    /// Asks for big buffers so a batch's ACKs cannot overflow the receive queue (ENOBUFS);
    /// the FORCE variants need CAP_NET_ADMIN, the plain ones are capped by rmem_max.
    pub fn grow_buffers(&self, bytes: usize) {
        if sockopt::set_socket_recv_buffer_size_force(&self.fd, bytes).is_err() {
            let _ = sockopt::set_socket_recv_buffer_size(&self.fd, bytes);
        }
        if sockopt::set_socket_send_buffer_size_force(&self.fd, bytes).is_err() {
            let _ = sockopt::set_socket_send_buffer_size(&self.fd, bytes);
        }
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Hands out `n` consecutive sequence numbers, returning the first.
    pub fn reserve_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq.wrapping_add(1).max(1);
        self.seq = first.wrapping_add(n);
        first
    }

    pub fn send(&self, buf: &[u8]) -> Result<(), Errno> {
        let n = rustix::net::send(&self.fd, buf, SendFlags::empty())?;
        if n != buf.len() {
            return Err(Errno::MSGSIZE);
        }
        Ok(())
    }

    /// One blocking receive, bounded by the socket timeout and the run's deadline.
    /// Returns the bytes read, or AGAIN when nothing came in time.
    pub fn recv<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<&'b [u8], Errno> {
        if Instant::now() >= self.deadline {
            return Err(Errno::TIMEDOUT);
        }
        self.set_recv_timeout()?;
        buf.resize(RECV_BUF, 0);
        loop {
            match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _)) => return Ok(&buf[..n]),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Err(Errno::TIMEDOUT),
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives whatever is already queued without waiting; None once the queue is empty.
    pub fn recv_queued<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<&'b [u8]>, Errno> {
        buf.resize(RECV_BUF, 0);
        loop {
            match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) => return Ok(Some(&buf[..n])),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` with the socket's receive buffer, allocated once per socket, and keeps
    /// it for the next run of receives whatever `f` returns.
    pub fn with_buf<T>(&mut self, f: impl FnOnce(&mut Socket, &mut Vec<u8>) -> T) -> T {
        let mut buf = std::mem::take(&mut self.buf);
        let out = f(self, &mut buf);
        self.buf = buf;
        out
    }

    /// Sends a dump request and feeds every reply of that sequence to `each` until
    /// NLMSG_DONE. An NLMSG_ERROR for the request ends the dump with its errno.
    pub fn dump(&mut self, request: &[u8], seq: u32, mut each: impl FnMut(&Msg<'_>)) -> Result<(), Errno> {
        self.send(request)?;
        self.with_buf(|s, buf| s.dump_replies(buf, seq, &mut each))
    }

    fn dump_replies(
        &mut self,
        buf: &mut Vec<u8>,
        seq: u32,
        each: &mut impl FnMut(&Msg<'_>),
    ) -> Result<(), Errno> {
        loop {
            let data = self.recv(buf)?;
            for msg in messages(data) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => match msg.error_code() {
                        Some(0) => {}
                        Some(e) => return Err(Errno::from_raw_os_error(e)),
                        None => return Err(Errno::PROTO),
                    },
                    NLMSG_NOOP => {}
                    _ => each(&msg),
                }
            }
        }
    }

    /// Sends one request with NLM_F_ACK and waits for its ACK or error.
    pub fn request_ack(&mut self, request: &[u8], seq: u32) -> Result<(), Errno> {
        self.send(request)?;
        self.with_buf(|s, buf| s.ack_of(buf, seq))
    }

    fn ack_of(&mut self, buf: &mut Vec<u8>, seq: u32) -> Result<(), Errno> {
        loop {
            let data = self.recv(buf)?;
            for msg in messages(data) {
                let msg = msg?;
                if msg.seq == seq
                    && let Some(code) = msg.error_code()
                {
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(Errno::from_raw_os_error(code))
                    };
                }
            }
        }
    }
}

/// Walks the messages in one receive buffer; a truncated or bad length ends the walk
/// with EPROTO instead of reading out of bounds.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Errno>> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + NLMSG_HDRLEN > buf.len() {
            return None;
        }
        let h = &buf[off..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            off = buf.len();
            return Some(Err(Errno::PROTO));
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            payload: &h[NLMSG_HDRLEN..len],
        };
        off += align4(len);
        Some(Ok(msg))
    })
}

/// Walks `struct nlattr` entries; yields (type without NESTED/BYTEORDER bits, payload).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let payload = &buf[off + 4..off + len];
        off += align4(len);
        Some((ty, payload))
    })
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A NUL-terminated (or not) netlink string attribute.
pub fn attr_str(payload: &[u8]) -> String {
    let end = payload.iter().position(|&b| b == 0).unwrap_or(payload.len());
    match std::str::from_utf8(&payload[..end]) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(&payload[..end]).into_owned(),
    }
}

/// Builds netlink messages into one buffer (a batch is several messages in one send).
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    start: usize,
    /// An attribute or message outgrew its length field: nothing of it may be sent.
    oversized: bool,
}

impl Writer {
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// The encoded messages, or `Fault::Encode` when one of them outgrew its length field
    /// (ours, before the kernel saw anything).
    pub fn buf(&self) -> Result<&[u8], Fault> {
        if self.oversized {
            Err(Fault::Encode)
        } else {
            Ok(&self.buf)
        }
    }

    pub fn attr(&mut self, ty: u16, payload: &[u8]) {
        let Ok(len) = u16::try_from(4 + payload.len()) else {
            self.oversized = true;
            return;
        };
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// One attribute as bytes, to nest inside another (empty when it outgrows its length
    /// field, which the outer `attr` then reports).
    pub fn nested(ty: u16, payload: &[u8]) -> Vec<u8> {
        let Ok(len) = u16::try_from(4 + payload.len()) else {
            return vec![0; usize::from(u16::MAX) + 1];
        };
        let mut v = Vec::with_capacity(align4(payload.len() + 4));
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    pub fn end(&mut self) {
        let Ok(len) = u32::try_from(self.buf.len() - self.start) else {
            self.oversized = true;
            return;
        };
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// A count or index of messages within one send (at most a few thousand) as an offset
/// from its first sequence number.
pub fn seq_offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// For kernel tests: moves this test's thread into a new network namespace. Without root
/// the test fails, unless `SMOLVM_CLEANUP_ALLOW_SKIP=1` lets it skip, which it then says
/// past libtest's output capture (a skipped test must never read as a passed one).
#[cfg(test)]
pub fn test_netns() -> bool {
    use std::io::Write;
    if !rustix::process::geteuid().is_root() {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        assert!(
            std::env::var("SMOLVM_CLEANUP_ALLOW_SKIP").is_ok_and(|v| v == "1"),
            "{name} needs root for a private network namespace (or SMOLVM_CLEANUP_ALLOW_SKIP=1)"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED (needs root): {name}");
        return false;
    }
    // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network namespace, which
    // nothing else in the test process relies on; libtest gives each test its own thread.
    #[allow(unsafe_code)]
    let r = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) };
    r.expect("unshare(CLONE_NEWNET)");
    true
}

/// For kernel tests: the socket, or a failure. Where the kernel (or qemu-user's netlink
/// emulation, which has no NETLINK_NETFILTER) lacks the protocol and
/// `SMOLVM_CLEANUP_NO_NETFILTER=1` says that is known, the test is skipped, visibly.
#[cfg(test)]
pub fn test_socket(opened: Result<Socket, Errno>) -> Option<Socket> {
    use std::io::Write;
    match opened {
        Ok(s) => Some(s),
        Err(Errno::PROTONOSUPPORT)
            if std::env::var("SMOLVM_CLEANUP_NO_NETFILTER").is_ok_and(|v| v == "1") =>
        {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            let _ = writeln!(std::io::stderr(), "SKIPPED (no netfilter netlink here): {name}");
            None
        }
        Err(e) => panic!("cannot open a netlink socket: {e}"),
    }
}

#[cfg(test)]
pub fn test_sh(cmd: &str) {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output();
    assert!(out.as_ref().is_ok_and(|o| o.status.success()), "{cmd}: {out:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_outgrows_its_length_field_is_never_sent() {
        let mut w = Writer::default();
        w.begin(1, NLM_F_REQUEST, 7);
        w.attr(1, &vec![0u8; 70_000]);
        w.end();
        assert_eq!(w.buf(), Err(Fault::Encode));
        let e = crate::error::Error::sys("delete TAP device tap3", Fault::Encode);
        assert_eq!(
            e.to_string(),
            "cannot delete TAP device tap3: smolvm-cleanup could not encode the request (nothing was sent)"
        );
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let mut w = Writer::default();
        w.begin(0x0a08, NLM_F_REQUEST | NLM_F_ACK, 7);
        w.bytes(&[2, 0, 0, 0]);
        w.attr_str(1, "smolvm_nat");
        w.attr(3, &42u64.to_be_bytes());
        w.end();
        w.begin(NLMSG_DONE, 0, 8);
        w.end();
        let msgs: Vec<Msg<'_>> = messages(w.buf().unwrap()).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq), (0x0a08, 7));
        assert_eq!(
            u16::from_ne_bytes([w.buf().unwrap()[6], w.buf().unwrap()[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        let a: Vec<(u16, &[u8])> = attrs(&msgs[0].payload[4..]).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(attr_str(a[0].1), "smolvm_nat");
        assert_eq!(a[1].1, &42u64.to_be_bytes());
        assert_eq!(msgs[1].ty, NLMSG_DONE);
    }

    #[test]
    fn error_message_and_truncation() {
        let mut w = Writer::default();
        w.begin(NLMSG_ERROR, 0, 3);
        w.bytes(&(-libc::EPERM).to_ne_bytes());
        w.end();
        let m = messages(w.buf().unwrap()).next().unwrap().unwrap();
        assert_eq!(m.error_code(), Some(libc::EPERM));
        // A length that runs past the buffer is a protocol error, not a panic.
        let mut bad = w.buf.clone();
        bad[0] = 200;
        assert!(matches!(messages(&bad).next(), Some(Err(Errno::PROTO))));
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
    }
}
