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
//! The datagram layout and its checks are in [`wire`]; the socket, with its batched
//! calls and offloads, in `socket`; the loss budget (`--loss-target`) in [`rate`].
//!
//! Why this file is long (about 750 lines, the longest of rps): it is one state machine
//! over one struct, [`UdpTransport`] — greeting, pacing, sending, receiving until a
//! deadline, reports, quiescing — whose invariants (every sequence number and link rate
//! is touched only here, and a datagram is never acted on before its MAC checks out) are
//! easiest to hold when they are read in one place. What stands apart from that state is
//! already in its own file (`wire`, `socket`, `rate`, the tests).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;

pub mod rate;
mod socket;
pub mod wire;

use rate::{Budget, Link, Report};
use socket::{RecvBufs, SendQueue, Socket};
pub use socket::{GSO_BYTES, GSO_SEGMENTS};
pub use wire::{
    admit, parse, Datagram, Job, Reject, Window, HEADER_BYTES, MAC_BYTES, REPLAY_WINDOW,
};
use wire::{encode_bytes_into, encode_into, Header, KEY_BYTES};

use super::{agree, CommError, Disagreement, Framing, Incoming, Mailbox, Outgoing, Transport};

/// IPv4 and UDP headers: a datagram of an MTU-sized IP packet carries MTU − 28 bytes,
/// and no datagram is ever fragmented by IP (one lost fragment would lose it all).
pub const IP_UDP_HEADERS: usize = 28;
/// The default MTU (Ethernet); clusters with jumbo frames use 9000.
pub const DEFAULT_MTU: usize = 1500;
/// The largest MTU supported (receive slots are this large).
pub const MAX_MTU: usize = 9216;
/// Tag of the start-up greetings; never a tag of the exchange (those are non-negative).
const HELLO_TAG: i32 = i32::MIN;
/// Tag of a receiver's report on a link ([`rate::Report`]), with `--loss-target`.
const REPORT_TAG: i32 = i32::MIN + 1;
/// Pacing: a datagram due this soon is sent now rather than waited for.
const PACE_SLACK: Duration = Duration::from_micros(50);
/// Pacing: a link sends at most this much of its rate at once (and at most one
/// segmentation message), so that its gaps stay short next to a receiver's patience
/// and its bursts small next to a switch port's queue.
const PACE_BURST: Duration = Duration::from_millis(1);
/// Start-up: greetings are re-sent every round until every rank heard every other.
const HELLO_ROUND: Duration = Duration::from_millis(20);
const HELLO_ROUNDS: usize = 500;
/// How often a waiting receiver looks at the clock.
pub(crate) const RECV_POLL: Duration = Duration::from_millis(1);
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
    /// The loss budget (`--loss-target`): pace each link and adapt its rate from the
    /// receivers' reports [default: none, no pacing, no reports].
    pub budget: Option<Budget>,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            subnet: None,
            port_base: None,
            mtu: DEFAULT_MTU,
            budget: None,
        }
    }
}

impl UdpOptions {
    /// Largest datagram payload.
    pub fn max_datagram(&self) -> usize {
        self.mtu - IP_UDP_HEADERS
    }
}

/// One message of an exchange, cut for the wire: to `to`, the `prefix` in every datagram,
/// the `body` in fragments of `fragment` elements, fragment k sent unless `mask[k]` is
/// false.
#[derive(Clone, Copy)]
struct Planned<'d> {
    to: usize,
    tag: i32,
    prefix: &'d [f32],
    body: &'d [f32],
    fragment: usize,
    mask: &'d [bool],
}

impl Planned<'_> {
    /// Fragments of the body.
    fn fragments(&self) -> usize {
        self.body.len().div_ceil(self.fragment)
    }

    /// Whether fragment `k` is sent (the drop model may have dropped it).
    fn sends(&self, k: usize) -> bool {
        self.mask.get(k).copied().unwrap_or(true)
    }

    /// Queues fragment `k` on `t`; returns the datagram's length.
    fn send<T: Transport + ?Sized>(&self, t: &UdpTransport<'_, T>, k: usize) -> usize {
        let at = k * self.fragment;
        let chunk = &self.body[at..(at + self.fragment).min(self.body.len())];
        t.queue(self.to, self.tag, at, |slot, h| {
            encode_into(slot, &t.job, self.to, h, self.prefix, chunk)
        })
    }
}

/// The UDP exchange of one rank, over an inner transport for everything reliable.
pub struct UdpTransport<'a, T: Transport + ?Sized> {
    inner: &'a T,
    socket: Socket,
    job: Job,
    /// The next sequence number of the link to each rank (from 1).
    next_seq: RefCell<Vec<u64>>,
    /// The sequence numbers accepted from each rank.
    windows: RefCell<Vec<Window>>,
    /// Datagrams accepted from each rank, in all, and at the last report sent to it.
    accepted: RefCell<Vec<u64>>,
    reported: RefCell<Vec<u64>>,
    /// With a loss budget: the sending side of the link to each rank.
    budget: Option<Budget>,
    links: RefCell<Vec<Link>>,
    rejected: Cell<u64>,
    /// Datagrams the local network stack refused to send (counted as lost).
    send_errors: Cell<u64>,
    /// With a budget: datagrams not sent because their link's pace would have sent them
    /// after the deadline.
    unsent: Cell<u64>,
    max_datagram: usize,
    out: RefCell<SendQueue>,
    inb: RefCell<RecvBufs>,
    floats: RefCell<Vec<f32>>,
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
        let socket = agree(inner, Socket::open(rank, opts.subnet, opts.port_base))?;
        let me = match socket.udp.local_addr() {
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
            accepted: RefCell::new(vec![0; size]),
            reported: RefCell::new(vec![0; size]),
            budget: opts.budget,
            links: RefCell::new(
                opts.budget
                    .map(|b| vec![Link::new(&b, size, Instant::now()); size])
                    .unwrap_or_default(),
            ),
            rejected: Cell::new(0),
            send_errors: Cell::new(0),
            unsent: Cell::new(0),
            max_datagram: opts.max_datagram(),
            out: RefCell::new(SendQueue::new()),
            inb: RefCell::new(RecvBufs::new()),
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
        let (gso, gro) = t.socket.offloads();
        log::debug!(
            "rank {rank}: UDP exchange on {me} (segmentation offload {gso}, receive offload {gro})"
        );
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
                self.queue(r, HELLO_TAG, 0, |slot, h| {
                    encode_into(slot, &self.job, r, h, &[], &[])
                });
            }
            self.flush();
            let until = Instant::now() + HELLO_ROUND;
            while Instant::now() < until {
                self.receive(true, |d| {
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

    /// Queues one datagram to rank `to`, written into its slot by `write` under the
    /// next header of that link; the queue goes out in batches. Returns its length in
    /// bytes.
    fn queue(
        &self,
        to: usize,
        tag: i32,
        offset: usize,
        write: impl FnOnce(&mut [u8], &Header) -> usize,
    ) -> usize {
        let mut out = self.out.borrow_mut();
        let header = self.header(to, tag, offset);
        let len = write(out.slot(), &header);
        out.commit(len, self.job.peers[to]);
        if out.is_full() {
            drop(out);
            self.flush();
        }
        len
    }

    /// The header of the next datagram to `to` (takes its sequence number).
    fn header(&self, to: usize, tag: i32, offset: usize) -> Header {
        let mut next = self.next_seq.borrow_mut();
        next[to] += 1;
        Header {
            src: self.inner.rank(),
            tag,
            offset,
            seq: next[to] - 1,
        }
    }

    /// Sends every queued datagram; a datagram the local stack refuses is counted and
    /// lost.
    fn flush(&self) {
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            return;
        }
        let sent = self.socket.send(&mut out);
        if let Some((e, to)) = sent.first_error {
            if self.send_errors.get() == 0 {
                log::warn!(
                    "rank {}: sending a datagram to {to} failed ({e}); such datagrams count as lost",
                    self.inner.rank(),
                );
            }
        }
        self.send_errors.set(self.send_errors.get() + sent.refused);
    }

    /// Waits up to [`RECV_POLL`] for datagrams (`wait`; else takes only what is there),
    /// hands each that passes the checks to `f` and counts the others as rejected.
    /// Reports are taken here, not handed on. Returns how many passed.
    fn receive(&self, wait: bool, mut f: impl FnMut(&Datagram<'_>)) -> usize {
        let me = self.inner.rank();
        let mut inb = self.inb.borrow_mut();
        if self.socket.receive(&mut inb, me, wait) == 0 {
            return 0;
        }
        let mut passed = 0;
        let mut windows = self.windows.borrow_mut();
        let mut accepted = self.accepted.borrow_mut();
        inb.for_each(|bytes, from, truncated| {
            let parsed = if truncated {
                Err(Reject::Malformed)
            } else {
                admit(bytes, from, &self.job, me, &mut windows)
            };
            match parsed {
                Ok(d) => {
                    accepted[d.src] += 1;
                    if d.tag == REPORT_TAG {
                        self.take_report(&d);
                    } else {
                        passed += 1;
                        f(&d);
                    }
                }
                Err(why) => {
                    log::trace!(
                        "rejected a datagram of {} bytes from {from}: {why:?}",
                        bytes.len()
                    );
                    self.rejected.set(self.rejected.get() + 1);
                }
            }
        });
        passed
    }

    /// A receiver's report on the link to it: updates the link's rate, or counts the
    /// report as rejected if it is not one (no budget, wrong size, impossible numbers).
    fn take_report(&self, d: &Datagram<'_>) {
        let (Some(budget), Some(report)) = (self.budget, Report::from_bytes(d.floats)) else {
            self.rejected.set(self.rejected.get() + 1);
            return;
        };
        let sent = self.next_seq.borrow()[d.src] - 1;
        let mut links = self.links.borrow_mut();
        let link = &mut links[d.src];
        match link.report(&budget, report, sent) {
            Ok(Some(loss)) => log::trace!(
                "rank {}: link to rank {} lost {:.2} %, now {:.1} Mbit/s",
                self.inner.rank(),
                d.src,
                100.0 * loss,
                link.rate * 8e-6
            ),
            Ok(None) => {}
            Err(why) => {
                log::trace!("rejected a report from rank {}: {why:?}", d.src);
                self.rejected.set(self.rejected.get() + 1);
            }
        }
    }

    /// With a budget: sends each peer whose datagrams arrived since the last report a
    /// report on its link to this rank.
    fn send_reports(&self) {
        let me = self.inner.rank();
        for peer in (0..self.size()).filter(|&p| p != me) {
            let accepted = self.accepted.borrow()[peer];
            if accepted == self.reported.borrow()[peer] {
                continue;
            }
            self.reported.borrow_mut()[peer] = accepted;
            let report = Report {
                accepted,
                highest: self.windows.borrow()[peer].newest(),
            };
            self.queue(peer, REPORT_TAG, 0, |slot, h| {
                encode_bytes_into(slot, &self.job, peer, h, &report.to_bytes())
            });
        }
        self.flush();
    }

    /// Sends `sends` paced by their links' rates: the link due first sends next, a burst
    /// of at most one segmentation message at a time, and while no link is due the
    /// socket is read (into `mailbox`). A datagram not due before `deadline` is not sent
    /// (its receiver would take it as late).
    fn send_paced(&self, sends: &[Planned<'_>], deadline: Instant, mailbox: &mut dyn Mailbox) {
        // The next fragment of each send.
        let mut next = vec![0usize; sends.len()];
        loop {
            let now = Instant::now();
            let pick = {
                let links = self.links.borrow();
                (0..sends.len())
                    .filter(|&i| next[i] < sends[i].fragments())
                    .min_by_key(|&i| links[sends[i].to].next.max(now))
            };
            let Some(i) = pick else { break };
            let s = &sends[i];
            let due = self.links.borrow()[s.to].next;
            if due >= deadline {
                // Nothing more is due in time on this link.
                let left = (next[i]..s.fragments()).filter(|&k| s.sends(k)).count();
                self.unsent.set(self.unsent.get() + left as u64);
                next[i] = s.fragments();
                continue;
            }
            if due > now + PACE_SLACK {
                self.flush();
                self.receive_until(due, deadline, mailbox);
                continue;
            }
            let bytes = HEADER_BYTES + 4 * (s.prefix.len() + s.fragment);
            let per_burst = self.links.borrow()[s.to].rate * PACE_BURST.as_secs_f64();
            let burst = GSO_SEGMENTS
                .min(GSO_BYTES / bytes)
                .min(per_burst as usize / bytes)
                .max(1);
            let mut queued = 0;
            while queued < burst && next[i] < s.fragments() {
                let k = next[i];
                next[i] += 1;
                if s.sends(k) {
                    let len = s.send(self, k);
                    self.links.borrow_mut()[s.to].pace(len, now);
                    queued += 1;
                }
            }
        }
    }

    /// Reads the socket into `mailbox` until `until` (pacing's wait).
    fn receive_until(&self, until: Instant, deadline: Instant, mailbox: &mut dyn Mailbox) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            if self.socket.readable(until - now) {
                self.receive(false, |d| {
                    let late = Instant::now() >= mailbox.deadline(deadline);
                    self.hand_over(d, mailbox, late);
                });
            }
        }
    }

    /// Hands one datagram of the exchange to `mailbox` (greetings are ignored).
    fn hand_over(&self, d: &Datagram<'_>, mailbox: &mut dyn Mailbox, late: bool) {
        if d.tag < 0 {
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
            if self.receive(true, |d| self.hand_over(d, mailbox, true)) > 0 {
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
        let mut plan = Vec::with_capacity(sends.len());
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
            plan.push(Planned {
                to: s.to,
                tag: s.tag,
                prefix,
                body,
                fragment,
                mask: f.send,
            });
        }
        if self.budget.is_some() {
            self.send_paced(&plan, deadline, mailbox);
        } else {
            for p in &plan {
                for k in (0..p.fragments()).filter(|&k| p.sends(k)) {
                    p.send(self, k);
                }
            }
        }
        self.flush();
        while !mailbox.complete() && Instant::now() < mailbox.deadline(deadline) {
            self.receive(true, |d| {
                let late = Instant::now() >= mailbox.deadline(deadline);
                self.hand_over(d, mailbox, late);
            });
        }
        if self.budget.is_some() {
            self.send_reports();
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

    fn host_losses(&self) -> u64 {
        self.receive_overflows().unwrap_or(0) + self.send_errors()
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

    fn gather_bytes(&self, send: &[u8]) -> Option<Vec<u8>> {
        self.inner.gather_bytes(send)
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
        if self.unsent.get() > 0 {
            log::warn!(
                "rank {rank}: {} datagram(s) not sent: at their link's rate they would have left after the deadline (a budget too tight for --recv-timeout-ms, or --udp-link-rate too low)",
                self.unsent.get()
            );
        }
        if let Some(b) = self.budget {
            for (peer, l) in self.links.borrow().iter().enumerate() {
                if peer != rank && l.intervals > 0 {
                    log::info!(
                        "rank {rank}: link to rank {peer}: {:.1} Mbit/s at the end ({:.0} % of --udp-link-rate), last interval lost {:.2} % (target {:.2} %), {} intervals",
                        l.rate * 8e-6,
                        100.0 * l.rate / b.max_rate(),
                        100.0 * l.last_loss.unwrap_or(0.0),
                        100.0 * b.target(),
                        l.intervals
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
