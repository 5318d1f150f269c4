//! The UDP transport's socket: datagrams go out and come in by the batch (`sendmmsg`,
//! `recvmmsg`), with Linux's segmentation and receive offloads where the kernel has them.
//!
//! - **Segmentation offload (UDP GSO, `UDP_SEGMENT`).** Consecutive datagrams to one
//!   peer, all of one size but the last, go to the kernel as one message of up to
//!   [`GSO_SEGMENTS`] datagrams (at most [`GSO_BYTES`]), which it cuts into separate
//!   datagrams as late as it can (in the device, or just before it). Each segment is a
//!   whole datagram of the transport with its own header and MAC, so what the wire and
//!   the receiver see is exactly what plain sends produce. A kernel or route that refuses
//!   it (`EIO`: no checksum offload on the route's device; `EINVAL`, `ENOPROTOOPT`: an old
//!   kernel) turns it off for the rest of the run, and the refused datagrams are sent
//!   again one by one.
//! - **Receive offload (UDP GRO, `UDP_GRO`).** Where the receiving interface coalesces
//!   (GRO on a NIC or a veth), datagrams of one flow arrive as one buffer of up to 64 KiB
//!   with their size in a control message, and are cut apart here. Without it each
//!   datagram arrives on its own, as before.
//!
//! `RPS_UDP_OFFLOAD=off` turns both off (to measure what they bring).

use std::cell::Cell;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};

use super::{Subnet, MAX_MTU, RECV_POLL};

/// `UDP_SEGMENT` and `UDP_GRO` of `<linux/udp.h>` (the libc crate has them only for some
/// C libraries).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Datagrams queued before they are sent (one `sendmmsg` call).
pub(super) const SEND_SLOTS: usize = 256;
/// Buffers of one `recvmmsg` call.
const RECV_SLOTS: usize = 64;
/// A receive buffer holds a whole coalesced (GRO) buffer: an IP packet's payload at most.
const RECV_SLOT_BYTES: usize = 1 << 16;
/// Datagrams in one segmentation-offload message (the kernel's limit is 64 or more).
pub const GSO_SEGMENTS: usize = 64;
/// Bytes in one segmentation-offload message: the payload of a 64 KiB IP packet.
pub const GSO_BYTES: usize = 65_535 - super::IP_UDP_HEADERS;
/// Receive buffer asked for: a server may receive every worker's block at once (the
/// kernel counts each datagram at about twice its size).
const RECV_BUFFER: usize = 128 << 20;
/// Send buffer asked for: several segmentation-offload messages in flight.
const SEND_BUFFER: usize = 8 << 20;
/// Room for one control message with an `int` (8-byte aligned).
const CMSG_WORDS: usize = 4;

/// Whether the offloads are wanted (`RPS_UDP_OFFLOAD=off` says no).
fn offload_wanted() -> bool {
    !matches!(
        std::env::var("RPS_UDP_OFFLOAD").as_deref(),
        Ok("off" | "0" | "no")
    )
}

/// One rank's socket and what the kernel agreed to do for it.
pub(super) struct Socket {
    pub(super) udp: UdpSocket,
    /// Sends use segmentation offload (off for good after the kernel refused it).
    gso: Cell<bool>,
    /// The kernel hands over coalesced buffers.
    gro: bool,
}

/// Datagrams queued to be sent: [`SEND_SLOTS`] slots of [`MAX_MTU`] bytes, and the
/// scratch space of the `sendmmsg` call that sends them.
pub(super) struct SendQueue {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_WORDS]>,
    /// First slot and slot count of each message of the call being made.
    spans: Vec<(usize, usize)>,
    filled: usize,
}

/// The buffers of one `recvmmsg` call and what it returned.
pub(super) struct RecvBufs {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; 8]>,
    count: usize,
}

/// What sending a queue did: datagrams the local stack refused (counted as lost), and the
/// first refusal's error and destination.
#[derive(Default)]
pub(super) struct Sent {
    pub(super) refused: u64,
    pub(super) first_error: Option<(std::io::Error, SocketAddr)>,
}

// SAFETY (every `zeroed` below): sockaddr_in, iovec, msghdr and mmsghdr are plain C
// structs for which all-zero bytes are a valid value (null pointers, zero lengths).
fn zeroed<T>() -> T {
    unsafe { std::mem::zeroed() }
}

impl SendQueue {
    pub(super) fn new() -> Self {
        SendQueue {
            bufs: vec![0u8; SEND_SLOTS * MAX_MTU],
            lens: vec![0; SEND_SLOTS],
            addrs: (0..SEND_SLOTS).map(|_| zeroed()).collect(),
            iovs: (0..SEND_SLOTS).map(|_| zeroed()).collect(),
            hdrs: (0..SEND_SLOTS).map(|_| zeroed()).collect(),
            cmsgs: vec![[0; CMSG_WORDS]; SEND_SLOTS],
            spans: Vec::with_capacity(SEND_SLOTS),
            filled: 0,
        }
    }

    /// The next free slot, to write a datagram into; [`Self::commit`] queues it.
    pub(super) fn slot(&mut self) -> &mut [u8] {
        let i = self.filled;
        &mut self.bufs[i * MAX_MTU..(i + 1) * MAX_MTU]
    }

    /// Queues the datagram just written into [`Self::slot`]: `len` bytes to `to`.
    pub(super) fn commit(&mut self, len: usize, to: SocketAddrV4) {
        let i = self.filled;
        self.lens[i] = len;
        self.addrs[i] = sockaddr(to);
        self.filled += 1;
    }

    pub(super) fn is_full(&self) -> bool {
        self.filled == SEND_SLOTS
    }

    pub(super) fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Groups slots `from..filled` into messages: with `gso`, runs of datagrams to one
    /// address, all of one length but the last (shorter or equal); else one each.
    fn plan(&mut self, from: usize, gso: bool) {
        self.spans.clear();
        let (n, mut i) = (self.filled, from);
        while i < n {
            let seg = self.lens[i];
            let (mut j, mut bytes) = (i + 1, seg);
            if gso {
                while j < n
                    && j - i < GSO_SEGMENTS
                    && self.lens[j - 1] == seg
                    && self.lens[j] <= seg
                    && bytes + self.lens[j] <= GSO_BYTES
                    && same_addr(&self.addrs[j], &self.addrs[i])
                {
                    bytes += self.lens[j];
                    j += 1;
                }
            }
            self.spans.push((i, j - i));
            i = j;
        }
        for (m, &(first, count)) in self.spans.iter().enumerate() {
            for k in first..first + count {
                self.iovs[k] = libc::iovec {
                    iov_base: self.bufs[k * MAX_MTU..].as_mut_ptr().cast(),
                    iov_len: self.lens[k],
                };
            }
            self.hdrs[m] = zeroed();
            let h = &mut self.hdrs[m].msg_hdr;
            h.msg_name = (&raw mut self.addrs[first]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &raw mut self.iovs[first];
            h.msg_iovlen = count;
            if count > 1 {
                let seg = self.lens[first] as u16;
                // SAFETY: the control buffer is CMSG_WORDS u64s (32 bytes, 8-aligned),
                // more than CMSG_SPACE(2) = 24; the header and data written lie in it.
                unsafe {
                    h.msg_control = self.cmsgs[m].as_mut_ptr().cast();
                    h.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
                }
            }
        }
    }
}

fn same_addr(a: &libc::sockaddr_in, b: &libc::sockaddr_in) -> bool {
    a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port == b.sin_port
}

impl RecvBufs {
    pub(super) fn new() -> Self {
        RecvBufs {
            bufs: vec![0u8; RECV_SLOTS * RECV_SLOT_BYTES],
            addrs: (0..RECV_SLOTS).map(|_| zeroed()).collect(),
            iovs: (0..RECV_SLOTS).map(|_| zeroed()).collect(),
            hdrs: (0..RECV_SLOTS).map(|_| zeroed()).collect(),
            cmsgs: vec![[0; 8]; RECV_SLOTS],
            count: 0,
        }
    }

    /// Calls `f` with every datagram the last [`Socket::receive`] got: its bytes, its
    /// sender, and whether it was cut short (then its bytes are not all of it). A
    /// coalesced buffer is cut at the size its control message gives.
    pub(super) fn for_each(&self, mut f: impl FnMut(&[u8], SocketAddr, bool)) {
        for i in 0..self.count {
            let h = &self.hdrs[i];
            let n = (h.msg_len as usize).min(RECV_SLOT_BYTES);
            let from = from_sockaddr(&self.addrs[i]);
            let bytes = &self.bufs[i * RECV_SLOT_BYTES..i * RECV_SLOT_BYTES + n];
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                f(bytes, from, true);
                continue;
            }
            match gro_size(&h.msg_hdr) {
                Some(seg) if seg > 0 && seg < n => {
                    for d in bytes.chunks(seg) {
                        f(d, from, false);
                    }
                }
                _ => f(bytes, from, false),
            }
        }
    }
}

/// The segment size of a coalesced buffer (the `UDP_GRO` control message), if any.
fn gro_size(h: &libc::msghdr) -> Option<usize> {
    if h.msg_control.is_null() || h.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into the
    // buffer `msg_control` points at (RecvBufs::cmsgs, which outlives `h`); the
    // CMSG_* walk stays within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

impl Socket {
    /// Binds rank `rank`'s socket (local, so failures go through `agree`), raises its
    /// buffers and asks for receive offload.
    pub(super) fn open(
        rank: usize,
        subnet: Option<Subnet>,
        port_base: Option<u16>,
    ) -> anyhow::Result<Self> {
        let ip = local_ip(subnet)?;
        let port = match port_base {
            None => 0,
            Some(base) => u16::try_from(usize::from(base) + rank)
                .ok()
                .filter(|_| base > 0)
                .with_context(|| {
                    format!("--udp-port {base} + rank {rank} is not a port number (1–65535)")
                })?,
        };
        let udp = UdpSocket::bind(SocketAddrV4::new(ip, port))
            .with_context(|| format!("rank {rank} cannot bind a UDP socket to {ip}:{port}"))?;
        udp.set_read_timeout(Some(RECV_POLL))?;
        grow_buffer(&udp, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECV_BUFFER);
        grow_buffer(&udp, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER);
        let wanted = offload_wanted();
        let gro = wanted && set_int(&udp, libc::SOL_UDP, UDP_GRO, 1);
        log::debug!(
            "rank {rank}: UDP offloads: segmentation {}, receive {}",
            if wanted { "on (until refused)" } else { "off" },
            if gro { "on" } else { "off" }
        );
        Ok(Socket {
            udp,
            gso: Cell::new(wanted),
            gro,
        })
    }

    /// Whether sends still use segmentation offload, and whether receives may be
    /// coalesced.
    pub(super) fn offloads(&self) -> (bool, bool) {
        (self.gso.get(), self.gro)
    }

    /// Sends every queued datagram and empties the queue.
    pub(super) fn send(&self, q: &mut SendQueue) -> Sent {
        let mut sent = Sent::default();
        let mut from = 0;
        'plan: while from < q.filled {
            q.plan(from, self.gso.get());
            let messages = q.spans.len();
            let mut done = 0;
            while done < messages {
                // SAFETY: headers done..messages point into `q`'s buffers (addresses,
                // iovecs, control messages, slots), which outlive the call and are not
                // otherwise borrowed during it.
                let rc = unsafe {
                    libc::sendmmsg(
                        self.udp.as_raw_fd(),
                        q.hdrs[done..].as_mut_ptr(),
                        (messages - done) as libc::c_uint,
                        0,
                    )
                };
                if rc > 0 {
                    done += rc as usize;
                    continue;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                let (first, count) = q.spans[done];
                let refused_offload = matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                );
                if count > 1 && refused_offload {
                    log::info!(
                        "UDP segmentation offload refused by the kernel ({e}); sending datagrams one by one"
                    );
                    self.gso.set(false);
                    from = first;
                    continue 'plan;
                }
                if sent.first_error.is_none() {
                    sent.first_error = Some((e, from_sockaddr(&q.addrs[first])));
                }
                sent.refused += count as u64;
                done += 1;
            }
            break;
        }
        q.filled = 0;
        sent
    }

    /// Whether a datagram is waiting, after waiting up to `timeout` for one.
    pub(super) fn readable(&self, timeout: std::time::Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.udp.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: one valid pollfd and a timespec, both outliving the call.
        unsafe { libc::ppoll(&raw mut fd, 1, &raw const ts, std::ptr::null()) > 0 }
    }

    /// Takes up to [`RECV_SLOTS`] buffers in one call, after waiting up to the socket's
    /// timeout for the first (`wait`) or not at all; returns how many (0 on a timeout or
    /// an error, which is logged at debug level: an ICMP error surfacing on the socket).
    pub(super) fn receive(&self, r: &mut RecvBufs, rank: usize, wait: bool) -> usize {
        for i in 0..RECV_SLOTS {
            r.iovs[i] = libc::iovec {
                iov_base: r.bufs[i * RECV_SLOT_BYTES..].as_mut_ptr().cast(),
                iov_len: RECV_SLOT_BYTES,
            };
            r.hdrs[i] = zeroed();
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut r.addrs[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &raw mut r.iovs[i];
            h.msg_iovlen = 1;
            if self.gro {
                h.msg_control = r.cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = std::mem::size_of::<[u64; 8]>();
            }
        }
        // SAFETY: the RECV_SLOTS headers point into `r`'s buffers, which outlive the
        // call; the socket's receive timeout bounds the wait for the first datagram.
        let rc = unsafe {
            libc::recvmmsg(
                self.udp.as_raw_fd(),
                r.hdrs.as_mut_ptr(),
                RECV_SLOTS as libc::c_uint,
                if wait {
                    libc::MSG_WAITFORONE
                } else {
                    libc::MSG_DONTWAIT
                },
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) {
                log::debug!("rank {rank}: UDP receive: {e}");
            }
            r.count = 0;
            return 0;
        }
        r.count = rc as usize;
        r.count
    }
}

pub(super) fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    let mut s: libc::sockaddr_in = zeroed();
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

pub(super) fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    ))
}

/// This host's address to bind: in `subnet`, or the first non-loopback IPv4 address.
fn local_ip(subnet: Option<Subnet>) -> anyhow::Result<Ipv4Addr> {
    let v4: Vec<(String, Ipv4Addr)> = if_addrs::get_if_addrs()
        .context("cannot list this host's network interfaces")?
        .into_iter()
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(ip) => Some((i.name, ip)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    match subnet {
        Some(s) => match v4.iter().find(|(_, ip)| s.contains(*ip)) {
            Some((_, ip)) => Ok(*ip),
            None => {
                let have: Vec<String> = v4.iter().map(|(n, ip)| format!("{n} {ip}")).collect();
                bail!(
                    "no interface of this host has an IPv4 address in --udp-subnet {s} (it has: {})",
                    have.join(", ")
                )
            }
        },
        None => Ok(v4
            .iter()
            .find(|(_, ip)| !ip.is_loopback())
            .map_or(Ipv4Addr::LOCALHOST, |(_, ip)| *ip)),
    }
}

/// Sets an `int` socket option; whether the kernel took it.
fn set_int(
    socket: &UdpSocket,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> bool {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is an open socket owned by `socket`; the value is a c_int of `len`
    // bytes that outlives the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            len,
        ) == 0
    }
}

/// Asks for a large socket buffer: as root past the system limit (`force`), else up to
/// the system limit (`plain`). Best effort; the size obtained is logged.
fn grow_buffer(socket: &UdpSocket, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    let want = bytes as libc::c_int;
    let _ = set_int(socket, libc::SOL_SOCKET, force, want)
        || set_int(socket, libc::SOL_SOCKET, plain, want);
    let mut got: libc::c_int = 0;
    let mut got_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as in `set_int`; `got` and `got_len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            plain,
            (&raw mut got).cast(),
            &raw mut got_len,
        )
    };
    if rc == 0 {
        log::debug!("UDP socket buffer (option {plain}): {got} bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue of `lens` datagrams, all to `addr(k)` for the k of each.
    fn queue(items: &[(usize, u16)]) -> SendQueue {
        let mut q = SendQueue::new();
        for &(len, port) in items {
            q.slot()[..len].fill(1);
            q.commit(len, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        }
        q
    }

    #[test]
    fn segmentation_groups_runs_of_one_size_to_one_peer() {
        let mut q = queue(&[
            (100, 1),
            (100, 1),
            (60, 1), // a shorter last segment ends a run
            (100, 1),
            (100, 2), // another peer
            (100, 2),
            (120, 2), // longer than the run's size: a new message
        ]);
        q.plan(0, true);
        assert_eq!(q.spans, vec![(0, 3), (3, 1), (4, 2), (6, 1)]);
        q.plan(0, false);
        assert_eq!(q.spans.len(), 7);
        // Runs stop at the segment and byte limits.
        let mut big = queue(&vec![(1472, 1); 100]);
        big.plan(0, true);
        let per = GSO_BYTES / 1472;
        assert_eq!(big.spans[0], (0, per.min(GSO_SEGMENTS)));
        assert_eq!(big.spans.iter().map(|s| s.1).sum::<usize>(), 100);
    }

    /// Datagrams of three sizes and two queues through a real socket pair on loopback,
    /// with the offloads on: the receiver gets every datagram, whole and in order.
    #[test]
    fn offloaded_datagrams_arrive_whole_on_loopback() {
        let lo = Some("127.0.0.0/8".parse().unwrap());
        let a = Socket::open(0, lo, None).unwrap();
        let b = Socket::open(0, lo, None).unwrap();
        let to = match b.udp.local_addr().unwrap() {
            SocketAddr::V4(v) => v,
            _ => unreachable!(),
        };
        let mut q = SendQueue::new();
        let mut expect = Vec::new();
        for k in 0..150u32 {
            let len = if k % 50 == 49 { 77 } else { 1400 };
            let slot = q.slot();
            slot[..4].copy_from_slice(&k.to_le_bytes());
            slot[4..len].fill(k as u8);
            q.commit(len, to);
            expect.push((k, len));
        }
        let sent = a.send(&mut q);
        assert_eq!(sent.refused, 0, "{:?}", sent.first_error);
        assert!(q.is_empty());
        let mut r = RecvBufs::new();
        let mut got = Vec::new();
        let mut buffers = 0;
        let start = std::time::Instant::now();
        while got.len() < expect.len() && start.elapsed().as_secs() < 5 {
            buffers += b.receive(&mut r, 0, true);
            r.for_each(|d, _, truncated| {
                assert!(!truncated);
                let k = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                assert!(d[4..].iter().all(|&x| x == k as u8));
                got.push((k, d.len()));
            });
        }
        assert_eq!(got, expect);
        // Where the kernel has both offloads, loopback hands the segmentation messages
        // over whole: fewer buffers than datagrams, cut apart here.
        if a.offloads().0 && b.offloads().1 {
            assert!(buffers < expect.len(), "{buffers} buffers");
        }
        eprintln!("{} datagrams in {buffers} buffers", expect.len());
    }
}
