//! The datagram layout of the UDP transport, its MAC and its anti-replay window: pure
//! functions, so every refusal is unit-tested.
//!
//! Layout, little-endian: magic `u32` "RPS2", token `u64`, sender rank `u32`, tag `i32`,
//! body offset `u32` (elements), prefix length `u16` (elements), reserved `u16`, sequence
//! number `u64`, MAC (16 bytes), then the prefix and the body fragment as `f32`s.

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the datagram header before the prefix (MAC included).
pub const HEADER_BYTES: usize = MAC_AT + MAC_BYTES;
/// Where the MAC starts: it covers everything before and after it.
pub(super) const MAC_AT: usize = 36;
/// Length of the MAC: HMAC-SHA-256 truncated to its first 128 bits (HMAC-SHA-256-128 of
/// IPsec, RFC 4868), which a forger must guess.
pub const MAC_BYTES: usize = 16;
/// Length of the per-job key (the hash's output length, as RFC 2104 recommends).
pub(super) const KEY_BYTES: usize = 32;
/// "RPS2": the second layout (with sequence number and MAC).
const MAGIC: u32 = 0x5250_5332;
/// Sequence numbers of one link that may arrive out of order: a datagram this far
/// behind the newest accepted one is refused as a replay.
pub const REPLAY_WINDOW: u64 = 4096;

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
    if bytes.len() < HEADER_BYTES || !(bytes.len() - HEADER_BYTES).is_multiple_of(4) {
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
    /// The newest sequence number accepted (0: none).
    pub fn newest(&self) -> u64 {
        self.newest
    }

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
pub(super) struct Header {
    pub(super) src: usize,
    pub(super) tag: i32,
    pub(super) offset: usize,
    pub(super) seq: u64,
}

/// Writes one datagram of `job` for rank `to` at the start of `slot` (large enough: the
/// caller checked the size against the MTU), MAC included; returns its length.
pub(super) fn encode_into(
    slot: &mut [u8],
    job: &Job,
    to: usize,
    h: &Header,
    prefix: &[f32],
    body: &[f32],
) -> usize {
    let len = HEADER_BYTES + 4 * (prefix.len() + body.len());
    let floats = &mut slot[HEADER_BYTES..len];
    for (b, x) in floats.chunks_exact_mut(4).zip(prefix.iter().chain(body)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
    seal(slot, job, to, h, prefix.len(), len)
}

/// [`encode_into`] for a payload of bytes (a whole number of `f32`s' worth) with no
/// prefix: the transport's own messages (reports).
pub(super) fn encode_bytes_into(
    slot: &mut [u8],
    job: &Job,
    to: usize,
    h: &Header,
    payload: &[u8],
) -> usize {
    debug_assert_eq!(payload.len() % 4, 0);
    let len = HEADER_BYTES + payload.len();
    slot[HEADER_BYTES..len].copy_from_slice(payload);
    seal(slot, job, to, h, 0, len)
}

/// Writes the header of a datagram of `len` bytes whose payload is in place, then its
/// MAC; returns `len`.
fn seal(slot: &mut [u8], job: &Job, to: usize, h: &Header, prefix: usize, len: usize) -> usize {
    slot[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    slot[4..12].copy_from_slice(&job.token.to_le_bytes());
    slot[12..16].copy_from_slice(&(h.src as u32).to_le_bytes());
    slot[16..20].copy_from_slice(&h.tag.to_le_bytes());
    slot[20..24].copy_from_slice(&(h.offset as u32).to_le_bytes());
    slot[24..26].copy_from_slice(&(prefix as u16).to_le_bytes());
    slot[26..28].copy_from_slice(&0u16.to_le_bytes());
    slot[28..36].copy_from_slice(&h.seq.to_le_bytes());
    let m = mac(job, to, &slot[..len]).finalize().into_bytes();
    slot[MAC_AT..HEADER_BYTES].copy_from_slice(&m[..MAC_BYTES]);
    len
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_MTU, IP_UDP_HEADERS, MAX_MTU};
    use super::*;
    use std::time::Instant;

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
}
