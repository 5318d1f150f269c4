//! [`Transport`] whose lossy exchanges travel as UDP datagrams (`--transport udp`).
//!
//! MPI over TCP retransmits what a real network loses, and a lost segment costs TCP's
//! minimum retransmission timeout (200 ms on Linux) against a round trip of tens of
//! microseconds. This transport sends the RPS exchange as datagrams instead: each
//! carries one packet of a block with the message header, and what does not arrive by
//! the deadline is handled exactly like a dropped packet. Everything else (launch,
//! collectives for evaluation, metrics and error agreement) stays on the inner,
//! reliable transport (MPI).
//!
//! The socket is an attack surface. Every datagram carries a MAC (HMAC-SHA-256-128)
//! under a per-job key that only the inner transport carries, over the receiver's rank,
//! the whole header and the payload, and a per-link sequence number.
//! A datagram is accepted only from a peer's address, with the job's token, a valid MAC
//! and a sequence number not accepted before ([`Window`]); its header is then validated
//! here (layout, length) and again by the receiving mailbox (step, block, offset and
//! length within the block). Anything else is counted as rejected and never written
//! anywhere. No header field is acted on before the MAC checks out.
//!
//! Datagram layout, little-endian: magic `u32` "RPS2", token `u64`, sender rank `u32`,
//! tag `i32`, body offset `u32` (elements), prefix length `u16` (elements), reserved
//! `u16`, sequence number `u64`, MAC (16 bytes), then the prefix and the body fragment as
//! `f32`s.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{agree, CommError, Disagreement, Framing, Incoming, Mailbox, Outgoing, Transport};

/// IPv4 and UDP headers: a datagram of an MTU-sized IP packet carries MTU − 28 bytes,
/// and no datagram is ever fragmented by IP (one lost fragment would lose it all).
pub const IP_UDP_HEADERS: usize = 28;
/// The default MTU (Ethernet); clusters with jumbo frames use 9000.
pub const DEFAULT_MTU: usize = 1500;
/// The largest MTU supported (receive slots are this large).
pub const MAX_MTU: usize = 9216;
/// Datagrams per recvmmsg / sendmmsg call.
const BATCH: usize = 64;
/// Bytes of the datagram header before the prefix (MAC included).
pub const HEADER_BYTES: usize = MAC_AT + MAC_BYTES;
/// Where the MAC starts: it covers everything before and after it.
const MAC_AT: usize = 36;
/// Length of the MAC: HMAC-SHA-256 truncated to its first 128 bits (HMAC-SHA-256-128 of
/// IPsec, RFC 4868), which a forger must guess.
pub const MAC_BYTES: usize = 16;
/// Length of the per-job key (the hash's output length, as RFC 2104 recommends).
const KEY_BYTES: usize = 32;
/// "RPS2": the second layout (with sequence number and MAC).
const MAGIC: u32 = 0x5250_5332;
/// Sequence numbers of one link that may arrive out of order: a datagram this far
/// behind the newest accepted one is refused as a replay.
pub const REPLAY_WINDOW: u64 = 4096;
/// Tag of the start-up greetings; never a tag of the exchange (those are non-negative).
const HELLO_TAG: i32 = i32::MIN;
/// Start-up: greetings are re-sent every round until every rank heard every other.
const HELLO_ROUND: Duration = Duration::from_millis(20);
const HELLO_ROUNDS: usize = 500;
/// Receive buffer asked for: a server may receive every worker's block at once (the
/// kernel counts each datagram at about twice its size).
const RECV_BUFFER: usize = 128 << 20;
/// How often a waiting receiver looks at the clock.
const RECV_POLL: Duration = Duration::from_millis(1);
/// After a quiesce barrier, datagrams still in flight are drained until the socket has
/// been quiet this long.
const LINGER: Duration = Duration::from_millis(3);
/// The longest a drain lasts, however busy the socket.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// An IPv4 network in CIDR notation (`10.99.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (such as 10.99.0.0/24)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|&p| p <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length from 0 to 32"))?;
        Ok(Subnet { addr, prefix })
    }
}

/// Where each rank's socket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    /// Bind to this host's address in this network [default: the first non-loopback
    /// IPv4 address, else 127.0.0.1].
    pub subnet: Option<Subnet>,
    /// Rank r binds port `port_base + r` [default: a free port chosen by the system].
    pub port_base: Option<u16>,
    /// The network's MTU: datagrams are at most MTU − 28 bytes.
    pub mtu: usize,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            subnet: None,
            port_base: None,
            mtu: DEFAULT_MTU,
        }
    }
}

impl UdpOptions {
    /// Largest datagram payload.
    pub fn max_datagram(&self) -> usize {
        self.mtu - IP_UDP_HEADERS
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than a header, or not a whole number of `f32`s after it.
    Malformed,
    /// Not an rps datagram of this layout (magic).
    Magic,
    /// The sender's address is not the address of the rank it claims to be.
    Peer,
    /// From a peer address but another job (token).
    Token,
    /// Not made with this job's key for this receiver, or altered on the way (MAC).
    Mac,
    /// Authentic, but a copy of a datagram already accepted, or too old to tell
    /// ([`Window`]).
    Replay,
}

/// What every rank of a job agreed on at start-up: who may send, the job token, and
/// the key of the MACs (never sent over UDP).
#[derive(Clone)]
pub struct Job {
    /// Every rank's socket address, by rank.
    pub peers: Vec<SocketAddrV4>,
    pub token: u64,
    /// HMAC-SHA-256 with the job key, before any input (cloned for each datagram).
    keyed: Hmac<Sha256>,
}

impl Job {
    /// The job of `peers` (by rank) with `token`, its MACs keyed with `key`.
    pub fn new(peers: Vec<SocketAddrV4>, token: u64, key: &[u8; KEY_BYTES]) -> Self {
        Job {
            peers,
            token,
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(key)
                .expect("HMAC takes keys of any length"),
        }
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs and panic messages.
        f.debug_struct("Job")
            .field("peers", &self.peers)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A datagram that passed the transport's stateless checks (MAC included).
#[derive(Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src: usize,
    pub tag: i32,
    pub offset: usize,
    /// The sender's sequence number on the link to this rank.
    pub seq: u64,
    /// Prefix and body fragment, as little-endian `f32` bytes.
    pub floats: &'a [u8],
}

/// The HMAC of datagram `bytes` (whole, MAC field skipped) for receiver rank `to`, over
/// the receiver's rank, the header before the MAC and everything after it. Binding the
/// receiver means a datagram redirected to another rank is refused.
fn mac(job: &Job, to: usize, bytes: &[u8]) -> Hmac<Sha256> {
    let mut m = job.keyed.clone();
    m.update(&(to as u32).to_le_bytes());
    m.update(&bytes[..MAC_AT]);
    m.update(&bytes[HEADER_BYTES..]);
    m
}

/// Checks a datagram received by rank `me` against the job. Pure, so every refusal is
/// unit-tested. The fields read before the MAC is verified (magic, claimed sender,
/// token) can only lead to a refusal; nothing is taken from the header until it is.
///
/// # Errors
/// The first check that failed.
pub fn parse<'a>(
    bytes: &'a [u8],
    from: SocketAddr,
    job: &Job,
    me: usize,
) -> Result<Datagram<'a>, Reject> {
    if bytes.len() < HEADER_BYTES || (bytes.len() - HEADER_BYTES) % 4 != 0 {
        return Err(Reject::Malformed);
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
    if u32_at(0) != MAGIC {
        return Err(Reject::Magic);
    }
    let src = u32_at(12) as usize;
    if job
        .peers
        .get(src)
        .is_none_or(|p| SocketAddr::V4(*p) != from)
    {
        return Err(Reject::Peer);
    }
    if u64_at(4) != job.token {
        return Err(Reject::Token);
    }
    // The crate's constant-time comparison of the first MAC_BYTES bytes.
    if mac(job, me, bytes)
        .verify_truncated_left(&bytes[MAC_AT..HEADER_BYTES])
        .is_err()
    {
        return Err(Reject::Mac);
    }
    let prefix = usize::from(u16::from_le_bytes([bytes[24], bytes[25]]));
    let floats = &bytes[HEADER_BYTES..];
    if floats.len() < 4 * prefix {
        return Err(Reject::Malformed);
    }
    Ok(Datagram {
        src,
        tag: u32_at(16) as i32,
        offset: u32_at(20) as usize,
        seq: u64_at(28),
        floats,
    })
}

/// The sequence numbers accepted from one sender (anti-replay window of IPsec, RFC 4303
/// §3.4.3): the newest, and which of the [`REPLAY_WINDOW`] before it were seen. Each
/// sequence number is accepted at most once; one older than the window is refused
/// whether or not it was seen (a replay cannot be told from a very late datagram).
#[derive(Debug, Clone)]
pub struct Window {
    /// Newest sequence number accepted (0: none; senders start at 1).
    newest: u64,
    /// Bit `seq % REPLAY_WINDOW` set when `seq` (within the window) was accepted.
    seen: Vec<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            newest: 0,
            seen: vec![0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl Window {
    /// Accepts `seq` once (true), or refuses a copy or a too old one (false). Call only
    /// for authentic datagrams: a forged sequence number would move the window.
    pub fn admit(&mut self, seq: u64) -> bool {
        if seq == 0 || seq.saturating_add(REPLAY_WINDOW) <= self.newest {
            return false;
        }
        let bit = |s: u64| ((s % REPLAY_WINDOW / 64) as usize, 1u64 << (s % 64));
        if seq > self.newest {
            // Forget the sequence numbers that fall out of the window.
            if seq - self.newest >= REPLAY_WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.newest + 1..=seq {
                    let (w, m) = bit(s);
                    self.seen[w] &= !m;
                }
            }
            self.newest = seq;
        }
        let (w, m) = bit(seq);
        if self.seen[w] & m != 0 {
            return false;
        }
        self.seen[w] |= m;
        true
    }
}

/// Checks a datagram received by rank `me` ([`parse`]), then refuses it if its sender's
/// window already accepted its sequence number or has moved past it.
///
/// # Errors
/// The first check that failed.
pub fn admit<'a>(
    bytes: &'a [u8],
    from: SocketAddr,
    job: &Job,
    me: usize,
    windows: &mut [Window],
) -> Result<Datagram<'a>, Reject> {
    let d = parse(bytes, from, job, me)?;
    if windows[d.src].admit(d.seq) {
        Ok(d)
    } else {
        Err(Reject::Replay)
    }
}

/// One datagram's own header fields (the job's are in [`Job`]).
struct Header {
    src: usize,
    tag: i32,
    offset: usize,
    seq: u64,
}

/// Writes one datagram of `job` for rank `to` at the start of `slot` (large enough: the
/// caller checked the size against the MTU), MAC included; returns its length.
fn encode_into(
    slot: &mut [u8],
    job: &Job,
    to: usize,
    h: &Header,
    prefix: &[f32],
    body: &[f32],
) -> usize {
    slot[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    slot[4..12].copy_from_slice(&job.token.to_le_bytes());
    slot[12..16].copy_from_slice(&(h.src as u32).to_le_bytes());
    slot[16..20].copy_from_slice(&h.tag.to_le_bytes());
    slot[20..24].copy_from_slice(&(h.offset as u32).to_le_bytes());
    slot[24..26].copy_from_slice(&(prefix.len() as u16).to_le_bytes());
    slot[26..28].copy_from_slice(&0u16.to_le_bytes());
    slot[28..36].copy_from_slice(&h.seq.to_le_bytes());
    let len = HEADER_BYTES + 4 * (prefix.len() + body.len());
    let floats = &mut slot[HEADER_BYTES..len];
    for (b, x) in floats.chunks_exact_mut(4).zip(prefix.iter().chain(body)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
    let m = mac(job, to, &slot[..len]).finalize().into_bytes();
    slot[MAC_AT..HEADER_BYTES].copy_from_slice(&m[..MAC_BYTES]);
    len
}

/// The UDP exchange of one rank, over an inner transport for everything reliable.
pub struct UdpTransport<'a, T: Transport + ?Sized> {
    inner: &'a T,
    socket: UdpSocket,
    job: Job,
    /// The next sequence number of the link to each rank (from 1).
    next_seq: RefCell<Vec<u64>>,
    /// The sequence numbers accepted from each rank.
    windows: RefCell<Vec<Window>>,
    rejected: Cell<u64>,
    /// Datagrams the local network stack refused to send (counted as lost).
    send_errors: Cell<u64>,
    max_datagram: usize,
    out: RefCell<Batch>,
    inb: RefCell<Batch>,
    floats: RefCell<Vec<f32>>,
}

/// Buffers of one recvmmsg / sendmmsg call: [`BATCH`] slots of [`MAX_MTU`] bytes.
struct Batch {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Slots filled (sending side).
    filled: usize,
}

impl Batch {
    fn new() -> Self {
        // SAFETY (all three): sockaddr_in, iovec and mmsghdr are plain C structs for which
        // all-zero bytes are a valid value (null pointers, zero lengths).
        Batch {
            bufs: vec![0u8; BATCH * MAX_MTU],
            lens: vec![0; BATCH],
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            filled: 0,
        }
    }

    /// Points header i at slot i (its buffer with `len` bytes, its address).
    fn prepare(&mut self, count: usize) {
        for i in 0..count {
            let len = if self.lens[i] > 0 {
                self.lens[i]
            } else {
                MAX_MTU
            };
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * MAX_MTU..].as_mut_ptr().cast(),
                iov_len: len,
            };
            // SAFETY: as in `new`.
            self.hdrs[i] = unsafe { std::mem::zeroed() };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: as in `Batch::new`.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    ))
}

impl<'a, T: Transport + ?Sized> UdpTransport<'a, T> {
    /// Opens this rank's socket and meets every other rank over UDP (collective). Every
    /// rank learns every peer's address, the job token and the job key over `inner` (the
    /// key never travels over UDP), then greetings go back and forth until every rank
    /// has heard from every other one, so a network that cannot carry the job's
    /// datagrams is reported before training starts.
    ///
    /// # Errors
    /// Any rank's failure (no address in the subnet, port in use, no random key, peers
    /// unreachable), agreed on every rank.
    pub fn connect(inner: &'a T, opts: &UdpOptions) -> Result<Self, Disagreement> {
        let (rank, size) = (inner.rank(), inner.size());
        let socket = agree(inner, open_socket(rank, opts))?;
        let me = match socket.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        // Rank 0 draws the job key from the operating system; the others send zeros.
        let mut key = [0u8; KEY_BYTES];
        if rank == 0 {
            use rand::TryRngCore;
            let drawn = rand::rngs::OsRng
                .try_fill_bytes(&mut key)
                .context("cannot draw the UDP job key from the operating system");
            agree(inner, drawn)?;
        } else {
            agree(inner, Ok(()))?;
        }
        let mut mine = [0u8; 6 + 8 + KEY_BYTES];
        mine[..4].copy_from_slice(&me.ip().octets());
        mine[4..6].copy_from_slice(&me.port().to_le_bytes());
        mine[6..14].copy_from_slice(&rand::random::<u64>().to_le_bytes());
        mine[14..].copy_from_slice(&key);
        let all = inner.allgather_bytes(&mine);
        let peers: Vec<SocketAddrV4> = all
            .chunks_exact(mine.len())
            .map(|c| {
                SocketAddrV4::new(
                    Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                    u16::from_le_bytes([c[4], c[5]]),
                )
            })
            .collect();
        // Rank 0's random number is the job token, its key the job key.
        let token = u64::from_le_bytes(all[6..14].try_into().unwrap_or_default());
        key.copy_from_slice(&all[14..mine.len()]);
        let t = UdpTransport {
            inner,
            socket,
            job: Job::new(peers, token, &key),
            next_seq: RefCell::new(vec![1; size]),
            windows: RefCell::new(vec![Window::default(); size]),
            rejected: Cell::new(0),
            send_errors: Cell::new(0),
            max_datagram: opts.max_datagram(),
            out: RefCell::new(Batch::new()),
            inb: RefCell::new(Batch::new()),
            floats: RefCell::new(Vec::new()),
        };
        let heard = t.greet();
        let unheard: Vec<usize> = (0..size).filter(|&r| !heard[r]).collect();
        let outcome = if unheard.is_empty() {
            Ok(())
        } else {
            let list: Vec<String> = unheard
                .iter()
                .map(|&r| format!("rank {r} at {}", t.job.peers[r]))
                .collect();
            Err(anyhow::anyhow!(
                "rank {rank} (UDP {me}) received no datagram from {} within {:.0} s; the hosts must share the network of --udp-subnet and let UDP through",
                list.join(", "),
                (HELLO_ROUND * HELLO_ROUNDS as u32).as_secs_f64()
            ))
        };
        agree(inner, outcome)?;
        log::debug!("rank {rank}: UDP exchange on {me}");
        Ok(t)
    }

    /// Start-up greetings; returns which ranks were heard from. Every rank runs the same
    /// number of rounds (an all-reduce ends each).
    fn greet(&self) -> Vec<bool> {
        let (rank, size) = (self.inner.rank(), self.inner.size());
        let mut heard = vec![false; size];
        heard[rank] = true;
        for _ in 0..HELLO_ROUNDS {
            for r in (0..size).filter(|&r| r != rank) {
                self.send(r, HELLO_TAG, 0, &[], &[]);
            }
            self.flush(&mut self.out.borrow_mut());
            let until = Instant::now() + HELLO_ROUND;
            while Instant::now() < until {
                self.receive(|d| {
                    if d.tag == HELLO_TAG {
                        heard[d.src] = true;
                    }
                });
            }
            let mut done = [f64::from(u8::from(heard.iter().all(|&h| h)))];
            self.inner.allreduce_sum_f64(&mut done);
            if done[0] as usize == size {
                break;
            }
        }
        heard
    }

    /// Queues one datagram to rank `to`; the queue goes out in batches (sendmmsg).
    fn send(&self, to: usize, tag: i32, offset: usize, prefix: &[f32], body: &[f32]) {
        let mut out = self.out.borrow_mut();
        let i = out.filled;
        let slot = &mut out.bufs[i * MAX_MTU..(i + 1) * MAX_MTU];
        let mut next = self.next_seq.borrow_mut();
        let header = Header {
            src: self.inner.rank(),
            tag,
            offset,
            seq: next[to],
        };
        next[to] += 1;
        let len = encode_into(slot, &self.job, to, &header, prefix, body);
        out.lens[i] = len;
        out.addrs[i] = sockaddr(self.job.peers[to]);
        out.filled += 1;
        if out.filled == BATCH {
            self.flush(&mut out);
        }
    }

    /// Sends every queued datagram; a datagram the local stack refuses is counted and
    /// lost.
    fn flush(&self, out: &mut Batch) {
        use std::os::fd::AsRawFd;
        let n = out.filled;
        out.prepare(n);
        let mut done = 0;
        while done < n {
            // SAFETY: headers done..n point into `out`'s buffers, which outlive the call
            // and are not otherwise borrowed during it.
            let rc = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    out.hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
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
            if self.send_errors.get() == 0 {
                log::warn!(
                    "rank {}: sending a datagram to {} failed ({e}); such datagrams count as lost",
                    self.inner.rank(),
                    from_sockaddr(&out.addrs[done])
                );
            }
            self.send_errors.set(self.send_errors.get() + 1);
            done += 1;
        }
        out.filled = 0;
        out.lens[..n].fill(0);
    }

    /// Waits up to [`RECV_POLL`] for datagrams (up to [`BATCH`] in one recvmmsg call),
    /// hands each that passes the checks to `f` and counts the others as rejected.
    /// Returns how many passed.
    fn receive(&self, mut f: impl FnMut(&Datagram<'_>)) -> usize {
        use std::os::fd::AsRawFd;
        let mut inb = self.inb.borrow_mut();
        inb.prepare(BATCH);
        // SAFETY: the BATCH headers point into `inb`'s buffers, which outlive the call;
        // the socket's receive timeout bounds the wait for the first datagram.
        let rc = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                inb.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) {
                // An ICMP error surfacing on the socket: nothing to receive.
                log::debug!("rank {}: UDP receive: {e}", self.inner.rank());
            }
            return 0;
        }
        let mut accepted = 0;
        let mut windows = self.windows.borrow_mut();
        for i in 0..rc as usize {
            let h = &inb.hdrs[i];
            let n = h.msg_len as usize;
            let from = from_sockaddr(&inb.addrs[i]);
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let bytes = &inb.bufs[i * MAX_MTU..i * MAX_MTU + n.min(MAX_MTU)];
            let parsed = if truncated {
                Err(Reject::Malformed)
            } else {
                admit(bytes, from, &self.job, self.inner.rank(), &mut windows)
            };
            match parsed {
                Ok(d) => {
                    accepted += 1;
                    f(&d);
                }
                Err(why) => {
                    log::trace!("rejected a datagram of {n} bytes from {from}: {why:?}");
                    self.rejected.set(self.rejected.get() + 1);
                }
            }
        }
        accepted
    }

    /// Hands one datagram of the exchange to `mailbox` (greetings are ignored).
    fn hand_over(&self, d: &Datagram<'_>, mailbox: &mut dyn Mailbox, late: bool) {
        if d.tag == HELLO_TAG {
            return;
        }
        let mut floats = self.floats.borrow_mut();
        floats.clear();
        floats.extend(
            d.floats
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        mailbox.deliver(d.src, d.tag, &floats, d.offset, late);
    }

    /// Receives until no peer's datagram has come for [`LINGER`] (foreign ones do not
    /// count: a flood must not hold the job here), at most [`DRAIN_LIMIT`], all as late.
    fn drain_quiet(&self, mailbox: &mut dyn Mailbox) {
        let start = Instant::now();
        let mut quiet_since = start;
        while quiet_since.elapsed() < LINGER && start.elapsed() < DRAIN_LIMIT {
            if self.receive(|d| self.hand_over(d, mailbox, true)) > 0 {
                quiet_since = Instant::now();
            }
        }
    }

    /// Datagrams the local stack refused to send.
    pub fn send_errors(&self) -> u64 {
        self.send_errors.get()
    }

    /// This rank's socket address.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.job.peers[self.inner.rank()]
    }

    /// Datagrams the kernel dropped because this socket's receive buffer was full (from
    /// /proc/net/udp; `None` where it cannot be read). Such losses happen on this host,
    /// not on the network.
    pub fn receive_overflows(&self) -> Option<u64> {
        let me = self.local_addr();
        let table = std::fs::read_to_string("/proc/net/udp").ok()?;
        let local = format!("{:08X}:{:04X}", u32::from(*me.ip()).swap_bytes(), me.port());
        table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&local.as_str()))
            .and_then(|f| f.last()?.parse().ok())
    }
}

/// Binds this rank's socket (local, so failures go through [`agree`]).
fn open_socket(rank: usize, opts: &UdpOptions) -> anyhow::Result<UdpSocket> {
    let ip = local_ip(opts.subnet)?;
    let port = match opts.port_base {
        None => 0,
        Some(base) => u16::try_from(usize::from(base) + rank)
            .ok()
            .filter(|_| base > 0)
            .with_context(|| {
                format!("--udp-port {base} + rank {rank} is not a port number (1–65535)")
            })?,
    };
    let socket = UdpSocket::bind(SocketAddrV4::new(ip, port))
        .with_context(|| format!("rank {rank} cannot bind a UDP socket to {ip}:{port}"))?;
    socket.set_read_timeout(Some(RECV_POLL))?;
    grow_receive_buffer(&socket);
    Ok(socket)
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

/// Asks for a large receive buffer: as root past the system limit (SO_RCVBUFFORCE),
/// else up to net.core.rmem_max. Best effort; the size obtained is logged.
fn grow_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let want = RECV_BUFFER as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: fd is an open socket owned by `socket`; the value is a c_int of `len`
        // bytes that outlives the call.
        let rc = unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const want).cast(), len)
        };
        if rc == 0 {
            break;
        }
    }
    let mut got: libc::c_int = 0;
    let mut got_len = len;
    // SAFETY: as above; `got` and `got_len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw mut got).cast(),
            &raw mut got_len,
        )
    };
    if rc == 0 {
        log::debug!("UDP receive buffer: {got} bytes");
    }
}

impl<T: Transport + ?Sized> Transport for UdpTransport<'_, T> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    /// The reliable exchange (oracle detection) is the inner transport's: UDP cannot
    /// know what the network lost, so rps uses it only with deadline detection.
    fn exchange(
        &self,
        sends: &[Outgoing<'_>],
        recvs: &mut [Incoming<'_>],
    ) -> Result<(), CommError> {
        self.inner.exchange(sends, recvs)
    }

    fn exchange_until(
        &self,
        sends: &[Outgoing<'_>],
        deadline: Instant,
        mailbox: &mut dyn Mailbox,
    ) -> Result<(), CommError> {
        let size = self.size();
        for s in sends {
            if s.to >= size {
                return Err(CommError::Rank(s.to, size));
            }
            let f = s.framing.unwrap_or(Framing {
                prefix: 0,
                fragment: usize::MAX,
                send: &[],
            });
            let prefix_len = f.prefix.min(s.data.len());
            let (prefix, body) = s.data.split_at(prefix_len);
            let fragment = f.fragment.min(body.len()).max(1);
            let bytes = HEADER_BYTES + 4 * (prefix.len() + fragment);
            if bytes > self.max_datagram {
                return Err(CommError::Datagram {
                    to: s.to,
                    bytes,
                    limit: self.max_datagram,
                });
            }
            for (k, chunk) in body.chunks(fragment).enumerate() {
                if f.send.get(k).copied().unwrap_or(true) {
                    self.send(s.to, s.tag, k * fragment, prefix, chunk);
                }
            }
        }
        self.flush(&mut self.out.borrow_mut());
        while !mailbox.complete() && Instant::now() < mailbox.deadline(deadline) {
            self.receive(|d| {
                let late = Instant::now() >= mailbox.deadline(deadline);
                self.hand_over(d, mailbox, late);
            });
        }
        Ok(())
    }

    fn quiesce(&self, mailbox: &mut dyn Mailbox) {
        self.drain_quiet(mailbox);
        // After the barrier every rank has sent all it will send; what is still in
        // flight lands within microseconds on a local network.
        self.inner.barrier();
        self.drain_quiet(mailbox);
    }

    fn rejected(&self) -> u64 {
        self.rejected.get()
    }

    fn datagrams(&self) -> bool {
        true
    }

    fn allreduce_sum_f32(&self, buf: &mut [f32]) {
        self.inner.allreduce_sum_f32(buf);
    }

    fn allreduce_sum_f64(&self, buf: &mut [f64]) {
        self.inner.allreduce_sum_f64(buf);
    }

    fn allgather_bytes(&self, send: &[u8]) -> Vec<u8> {
        self.inner.allgather_bytes(send)
    }

    fn barrier(&self) {
        self.inner.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }

    fn processor_name(&self) -> String {
        self.inner.processor_name()
    }

    fn library_version(&self) -> String {
        format!("{} + UDP datagrams", self.inner.library_version())
    }
}

impl<T: Transport + ?Sized> Drop for UdpTransport<'_, T> {
    fn drop(&mut self) {
        let (rank, me) = (self.inner.rank(), self.local_addr());
        match self.receive_overflows() {
            Some(n) if n > 0 => log::warn!(
                "rank {rank}: the receive buffer of UDP socket {me} overflowed, {n} datagram(s) lost on this host (not on the network)"
            ),
            _ => {}
        }
        if self.send_errors() > 0 {
            log::warn!(
                "rank {rank}: {} datagram(s) could not be sent",
                self.send_errors()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::local::LocalTransport;

    fn job() -> Job {
        let peers = vec![
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:5001".parse().unwrap(),
        ];
        Job::new(peers, 42, &[7; KEY_BYTES])
    }

    /// Rank 1's address, as rank 0 sees it.
    fn from() -> SocketAddr {
        "10.0.0.2:5001".parse().unwrap()
    }

    /// A datagram of `job` from rank `src` to rank 0 with sequence number `seq`.
    fn datagram(job: &Job, src: usize, seq: u64, prefix: &[f32], body: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; MAX_MTU];
        let h = Header {
            src,
            tag: 7,
            offset: 64,
            seq,
        };
        let n = encode_into(&mut out, job, 0, &h, prefix, body);
        out.truncate(n);
        out
    }

    #[test]
    fn subnet_parsing_and_membership() {
        let s: Subnet = "10.99.0.0/24".parse().unwrap();
        assert!(s.contains("10.99.0.7".parse().unwrap()));
        assert!(!s.contains("10.98.0.7".parse().unwrap()));
        assert!("0.0.0.0/0"
            .parse::<Subnet>()
            .unwrap()
            .contains(Ipv4Addr::LOCALHOST));
        for bad in ["10.99.0.0", "10.99.0/24", "10.99.0.0/33", "x/8"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_accepts_a_peer_datagram() {
        let bytes = datagram(&job(), 1, 9, &[1.0], &[2.0, 3.0]);
        assert_eq!(bytes.len(), HEADER_BYTES + 12);
        let d = parse(&bytes, from(), &job(), 0).unwrap();
        assert_eq!((d.src, d.tag, d.offset, d.seq), (1, 7, 64, 9));
        assert_eq!(d.floats, &bytes[HEADER_BYTES..]);
    }

    #[test]
    fn parse_refuses_everything_else() {
        let (j, from) = (job(), from());
        let good = datagram(&j, 1, 1, &[1.0], &[2.0, 3.0]);
        // Truncated anywhere: header cut, or a partial float.
        for n in [0, 3, HEADER_BYTES - 1, good.len() - 1] {
            assert_eq!(
                parse(&good[..n], from, &j, 0),
                Err(Reject::Malformed),
                "{n}"
            );
        }
        // Garbage.
        let garbage: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        assert_eq!(parse(&garbage, from, &j, 0), Err(Reject::Magic));
        // Foreign sender, or a peer claiming another rank, or a rank out of range.
        assert_eq!(
            parse(&good, "10.0.0.9:5001".parse().unwrap(), &j, 0),
            Err(Reject::Peer)
        );
        assert_eq!(
            parse(&good, "10.0.0.1:5000".parse().unwrap(), &j, 0),
            Err(Reject::Peer)
        );
        let far = datagram(&j, 9, 1, &[], &[1.0]);
        assert_eq!(parse(&far, from, &j, 0), Err(Reject::Peer));
        // Another job's token from a peer's address.
        let other = Job { token: 43, ..job() };
        assert_eq!(parse(&good, from, &other, 0), Err(Reject::Token));
    }

    /// What the sniffer of issue 13 did: the right token, from the right address (a
    /// spoofed source), but no key. Refused on the MAC.
    #[test]
    fn a_right_token_without_the_key_is_refused() {
        let (j, from) = (job(), from());
        let good = datagram(&j, 1, 1, &[1.0], &[2.0, 3.0]);
        // The MAC missing (zeros), or made with another key.
        let mut zeroed = good.clone();
        zeroed[MAC_AT..HEADER_BYTES].fill(0);
        assert_eq!(parse(&zeroed, from, &j, 0), Err(Reject::Mac));
        let guessed = Job::new(j.peers.clone(), j.token, &[8; KEY_BYTES]);
        let forged = datagram(&guessed, 1, 1, &[1.0], &[f32::NAN, 3.0]);
        assert_eq!(parse(&forged, from, &j, 0), Err(Reject::Mac));
        // A datagram of the old layout (no MAC) with the right token.
        let mut old = good[..MAC_AT].to_vec();
        old[..4].copy_from_slice(&0x5250_5331u32.to_le_bytes());
        old.extend_from_slice(&good[HEADER_BYTES..]);
        assert!(parse(&old, from, &j, 0).is_err());
        // Addressed to rank 1, redirected to rank 0 (the MAC binds the receiver).
        assert_eq!(parse(&good, from, &j, 1), Err(Reject::Mac));
        // One bit of the MAC itself.
        let mut bad_mac = good.clone();
        bad_mac[HEADER_BYTES - 1] ^= 1;
        assert_eq!(parse(&bad_mac, from, &j, 0), Err(Reject::Mac));
    }

    /// One flipped bit anywhere (header or payload) is refused.
    #[test]
    fn every_flipped_bit_is_refused() {
        let (j, from) = (job(), from());
        let good = datagram(&j, 1, 1, &[1.0], &[2.0, 3.0]);
        for byte in (0..good.len()).filter(|b| !(MAC_AT..HEADER_BYTES).contains(b)) {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                let got = parse(&bad, from, &j, 0);
                assert!(got.is_err(), "byte {byte} bit {bit}: {got:?}");
                if byte >= HEADER_BYTES || (16..MAC_AT).contains(&byte) {
                    // Payload, tag, offset, prefix, reserved, sequence: only the MAC
                    // can tell.
                    assert_eq!(got, Err(Reject::Mac), "byte {byte} bit {bit}");
                }
            }
        }
        // A prefix longer than the datagram, with a valid MAC: refused after it.
        let mut long = datagram(&j, 1, 1, &[1.0], &[2.0, 3.0]);
        long[24..26].copy_from_slice(&100u16.to_le_bytes());
        let m = mac(&j, 0, &long).finalize().into_bytes();
        long[MAC_AT..HEADER_BYTES].copy_from_slice(&m[..MAC_BYTES]);
        assert_eq!(parse(&long, from, &j, 0), Err(Reject::Malformed));
    }

    #[test]
    fn a_replayed_datagram_is_refused() {
        let (j, from) = (job(), from());
        let mut windows = vec![Window::default(); 2];
        let first = datagram(&j, 1, 1, &[1.0], &[2.0]);
        assert!(admit(&first, from, &j, 0, &mut windows).is_ok());
        assert_eq!(
            admit(&first, from, &j, 0, &mut windows),
            Err(Reject::Replay)
        );
        // Out of order within the window: each once.
        for seq in [5, 3, 4, 2] {
            let d = datagram(&j, 1, seq, &[1.0], &[2.0]);
            assert!(admit(&d, from, &j, 0, &mut windows).is_ok(), "{seq}");
            assert_eq!(
                admit(&d, from, &j, 0, &mut windows),
                Err(Reject::Replay),
                "{seq}"
            );
        }
        // A sequence number the window has moved past is refused, seen or not.
        let ahead = datagram(&j, 1, 10 + REPLAY_WINDOW, &[1.0], &[2.0]);
        assert!(admit(&ahead, from, &j, 0, &mut windows).is_ok());
        let stale = datagram(&j, 1, 10, &[1.0], &[2.0]);
        assert_eq!(
            admit(&stale, from, &j, 0, &mut windows),
            Err(Reject::Replay)
        );
        let edge = datagram(&j, 1, 11, &[1.0], &[2.0]);
        assert!(admit(&edge, from, &j, 0, &mut windows).is_ok());
        // Sequence number 0 is never sent.
        let zero = datagram(&j, 1, 0, &[1.0], &[2.0]);
        assert_eq!(admit(&zero, from, &j, 0, &mut windows), Err(Reject::Replay));
        // Refusals do not move the window: forged sequence numbers never reach it.
        let mut forged = datagram(&j, 1, u64::MAX, &[1.0], &[2.0]);
        forged[HEADER_BYTES] ^= 1;
        assert_eq!(admit(&forged, from, &j, 0, &mut windows), Err(Reject::Mac));
        let next = datagram(&j, 1, 11 + REPLAY_WINDOW, &[1.0], &[2.0]);
        assert!(admit(&next, from, &j, 0, &mut windows).is_ok());
    }

    #[test]
    fn window_matches_a_set_of_seen_numbers() {
        // Against a naive reference: accepted iff never accepted and within the window
        // of the newest accepted.
        let mut w = Window::default();
        let mut seen = std::collections::HashSet::new();
        let mut newest = 0u64;
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let jump = (x >> 33) % (3 * REPLAY_WINDOW);
            let seq = (newest + REPLAY_WINDOW / 2).saturating_sub(jump).max(1);
            let expect = seq + REPLAY_WINDOW > newest && !seen.contains(&seq);
            assert_eq!(w.admit(seq), expect, "seq {seq}, newest {newest}");
            if expect {
                seen.insert(seq);
                newest = newest.max(seq);
            }
        }
    }

    /// Three ranks on threads: collectives in process, datagrams over 127.0.0.1.
    #[test]
    fn greeting_and_datagrams_on_loopback() {
        let opts = UdpOptions {
            subnet: Some("127.0.0.0/8".parse().unwrap()),
            port_base: None,
            ..Default::default()
        };
        let handles: Vec<_> = LocalTransport::network(3)
            .into_iter()
            .map(|local| {
                std::thread::spawn(move || {
                    let t = UdpTransport::connect(&local, &opts).unwrap();
                    let r = t.rank();
                    let data: Vec<f32> = (0..10).map(|i| (100 * r + i) as f32).collect();
                    let send = [true, false, true, true];
                    let framing = Some(Framing {
                        prefix: 2,
                        fragment: 3,
                        send: &send,
                    });
                    let to = (r + 1) % 3;
                    let outgoing = [Outgoing {
                        to,
                        tag: 5,
                        data: &data,
                        framing,
                    }];
                    let mut got = Collect(Vec::new(), 2);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    t.exchange_until(&outgoing, deadline, &mut got).unwrap();
                    t.quiesce(&mut Collect(Vec::new(), 0));
                    (r, got.0, t.rejected())
                })
            })
            .collect();
        for h in handles {
            let (r, mut got, rejected) = h.join().unwrap();
            let from = (r + 2) % 3;
            let base = (100 * from) as f32;
            got.sort_by_key(|g| g.2);
            // The body (elements 2..) in fragments of 3: the second is not sent.
            let expect = vec![
                (
                    from,
                    5,
                    0,
                    vec![base, base + 1.0, base + 2.0, base + 3.0, base + 4.0],
                ),
                (from, 5, 6, vec![base, base + 1.0, base + 8.0, base + 9.0]),
            ];
            assert_eq!(got, expect, "rank {r}");
            assert_eq!(rejected, 0);
        }
    }

    /// A benchmark, not a test (run it with `--ignored --nocapture` on an idle machine):
    /// the time to authenticate, write and check MTU-sized datagrams, which
    /// docs/results/udp-mac.md reports.
    #[test]
    #[ignore]
    fn mac_throughput() {
        let j = job();
        for mtu in [DEFAULT_MTU, 9000] {
            let len = mtu - IP_UDP_HEADERS;
            let body: Vec<f32> = (0..(len - HEADER_BYTES) / 4 - 6)
                .map(|i| i as f32)
                .collect();
            let prefix = [0.5f32; 6];
            let mut slot = vec![0u8; MAX_MTU];
            let n = 200_000 * 1472 / len;
            let mut sink = 0u8;
            let time = |label: &str, f: &mut dyn FnMut(u64)| {
                let start = Instant::now();
                for k in 0..n as u64 {
                    f(k);
                }
                let s = start.elapsed().as_secs_f64();
                println!(
                    "{len}-byte datagrams, {label}: {:.0} ns each, {:.0} MB/s",
                    s / n as f64 * 1e9,
                    (n * len) as f64 / s / 1e6
                );
            };
            let h = |seq| Header {
                src: 1,
                tag: 7,
                offset: 64,
                seq,
            };
            assert_eq!(encode_into(&mut slot, &j, 0, &h(1), &prefix, &body), len);
            time("MAC only (HMAC-SHA-256)", &mut |_| {
                sink ^= mac(&j, 0, &slot[..len]).finalize().into_bytes()[0];
            });
            time("write with MAC", &mut |k| {
                let l = encode_into(&mut slot, &j, 0, &h(k + 1), &prefix, &body);
                sink ^= slot[l - 1];
            });
            let mut windows = vec![Window::default(); 2];
            let mut datagrams = Vec::new();
            for k in 0..256u64 {
                let l = encode_into(&mut slot, &j, 0, &h(k + 1), &prefix, &body);
                datagrams.push(slot[..l].to_vec());
            }
            let mut accepted = 0u64;
            time("check (MAC, window)", &mut |k| {
                // Sequence numbers 1..=256 once, then replays: the work is the same.
                let d = &datagrams[k as usize % 256];
                accepted += u64::from(admit(d, from(), &j, 0, &mut windows).is_ok());
            });
            assert_eq!(accepted, 256);
            std::hint::black_box(sink);
        }
    }

    /// Records deliveries; complete after `.1` of them.
    struct Collect(Vec<(usize, i32, usize, Vec<f32>)>, usize);

    impl Mailbox for Collect {
        fn deliver(&mut self, from: usize, tag: i32, data: &[f32], offset: usize, _late: bool) {
            self.0.push((from, tag, offset, data.to_vec()));
        }
        fn complete(&self) -> bool {
            self.1 > 0 && self.0.len() >= self.1
        }
    }
}
