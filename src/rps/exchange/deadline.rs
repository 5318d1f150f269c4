//! Deadline detection: the exchange without an oracle.
//!
//! Receivers do not consult the drop model. Each message carries a header (step,
//! direction, block and the mask of packets it really carries); a receiver polls until
//! everything it waits for has arrived or the deadline has passed, and treats the rest as
//! lost. A datagram transport delivers a message as fragments (the header plus some
//! packets each); packets that did not arrive are handled exactly like dropped packets. Messages of a later phase (a faster peer) are stashed for it; messages of an
//! earlier phase, or of this phase after the deadline, are discarded as late — never
//! applied to a later step. Senders never cancel: every send completes inside its
//! phase, and [`Deadline::quiesce`] drains stragglers before collectives and the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::comm::{CommError, Framing, Mailbox, Outgoing, Transport};
use crate::drop::Direction;

use super::{split_blocks, Exchange};
use crate::counters::StepCounters;

/// Header words before the mask and payload: step (2 words), direction, block, mask
/// words, packets sent.
const HEADER: usize = 6;

/// Deadline state kept across steps.
#[derive(Debug)]
pub struct Deadline {
    timeout: Duration,
    /// Messages (or fragments) that arrived before their phase: (sender, phase) →
    /// (body offset, raw data).
    stash: Stash,
    /// Outgoing messages of the current phase, header and payload.
    outbox: Vec<Vec<f32>>,
}

/// A pure server waits at most this many deadlines for the first uplink of a step.
const PATIENCE: u32 = 10;
/// Datagram transports: a message whose datagrams stopped arriving for this fraction of
/// the deadline is settled with what arrived (its sender sends it in one burst, so the
/// rest was lost), rather than waiting for the whole deadline under every loss.
const IDLE_FRACTION: u32 = 10;

type Stash = HashMap<(usize, u64), Vec<(usize, Vec<f32>)>>;

/// Phases in the order every rank runs them: (step, uplink), (step, downlink), ...
fn phase(step: u64, direction: u32) -> u64 {
    2 * step + direction as u64
}

/// Elements of the header of a message of `packets` packets: with the packet mask for
/// transports that carry whole messages; datagram transports send only the packets that
/// are sent, so their header carries just the count.
pub(super) const fn header_elems(packets: usize, datagrams: bool) -> usize {
    if datagrams {
        HEADER
    } else {
        HEADER + packets.div_ceil(32)
    }
}

fn word(x: u32) -> f32 {
    f32::from_bits(x)
}

/// Writes header (with the packet mask) + payload into `out`.
#[cfg(test)]
fn encode(
    step: u64,
    direction: Direction,
    block: usize,
    mask: &[bool],
    payload: &[f32],
    out: &mut Vec<f32>,
) {
    encode_framed(step, direction, block, mask, true, payload, out);
}

/// Writes header + payload into `out`; the packet mask only `with_mask`.
fn encode_framed(
    step: u64,
    direction: Direction,
    block: usize,
    mask: &[bool],
    with_mask: bool,
    payload: &[f32],
    out: &mut Vec<f32>,
) {
    let words = if with_mask {
        mask.len().div_ceil(32)
    } else {
        0
    };
    let sent = mask.iter().filter(|&&m| m).count();
    out.clear();
    out.extend([
        word(step as u32),
        word((step >> 32) as u32),
        word(direction as u32),
        word(block as u32),
        word(words as u32),
        word(sent as u32),
    ]);
    for chunk in mask.chunks(32).take(words) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &m)| acc | (u32::from(m) << i));
        out.push(word(bits));
    }
    out.extend_from_slice(payload);
}

/// A decoded message: header fields, packet mask (may be empty) and payload.
struct Decoded<'a> {
    phase: u64,
    block: usize,
    mask_words: &'a [f32],
    /// Packets the sender sent.
    sent: usize,
    payload: &'a [f32],
}

fn decode(data: &[f32]) -> Option<Decoded<'_>> {
    if data.len() < HEADER {
        return None;
    }
    let w = |i: usize| data[i].to_bits();
    let step = w(0) as u64 | ((w(1) as u64) << 32);
    let direction = w(2);
    let words = w(4) as usize;
    if direction > 1 || data.len() < HEADER + words {
        return None;
    }
    Some(Decoded {
        phase: phase(step, direction),
        block: w(3) as usize,
        mask_words: &data[HEADER..HEADER + words],
        sent: w(5) as usize,
        payload: &data[HEADER + words..],
    })
}

fn unpack_mask(words: &[f32], packets: usize) -> Vec<bool> {
    (0..packets)
        .map(|k| {
            words
                .get(k / 32)
                .is_some_and(|w| w.to_bits() >> (k % 32) & 1 == 1)
        })
        .collect()
}

/// Collects one phase's messages (whole, or fragment by fragment) into their
/// destination buffers. Everything is checked against what this rank awaits: a fragment
/// of an unknown sender or block, with a mask of the wrong size or one that contradicts
/// an earlier fragment, or with an offset or length that does not cover whole packets
/// inside the block, is counted invalid and never written anywhere.
struct PhaseBox<'a> {
    phase: u64,
    packet_elems: usize,
    /// (sender, block) pairs awaited, with the number of packets of that block.
    expect: &'a [(usize, usize, usize)],
    bufs: Vec<&'a mut [f32]>,
    /// The header of each awaited message once any fragment of it has arrived: the raw
    /// packet mask (empty from datagram transports) and the number of packets sent.
    header: Vec<Option<(Vec<u32>, usize)>>,
    /// The sender's packet mask (all true when the header carries none).
    masks: Vec<Vec<bool>>,
    /// Packets received of each awaited message, and how many of them the mask has.
    got: Vec<Vec<bool>>,
    count: Vec<usize>,
    stash: &'a mut Stash,
    late: u64,
    invalid: u64,
    /// When the first valid fragment arrived, and the last of each awaited message.
    first: Option<Instant>,
    last: Vec<Option<Instant>>,
    /// A message whose fragments stopped arriving this long ago is settled with what
    /// arrived (the rest was lost on the way).
    idle: Duration,
    /// Fragments of one message arrive in the order they were sent (datagrams of one
    /// flow: one sender, one socket, one path), so a message whose last packet has
    /// arrived is settled at once: whatever is missing before it was lost.
    ordered: bool,
    /// A pure server's uplink: the deadline runs from the first arrival (this long),
    /// but not past the second instant.
    patience: Option<(Duration, Instant)>,
}

impl<'a> PhaseBox<'a> {
    fn new(
        phase: u64,
        packet_elems: usize,
        expect: &'a [(usize, usize, usize)],
        bufs: Vec<&'a mut [f32]>,
        stash: &'a mut Stash,
    ) -> Self {
        PhaseBox {
            phase,
            packet_elems,
            expect,
            bufs,
            header: vec![None; expect.len()],
            masks: vec![Vec::new(); expect.len()],
            got: expect.iter().map(|e| vec![false; e.2]).collect(),
            count: vec![0; expect.len()],
            stash,
            late: 0,
            invalid: 0,
            first: None,
            last: vec![None; expect.len()],
            idle: Duration::MAX,
            ordered: false,
            patience: None,
        }
    }

    /// Checks and stores one fragment of awaited message `i`; false if invalid.
    fn accept(&mut self, i: usize, m: &Decoded<'_>, offset: usize) -> bool {
        let n = self.expect[i].2;
        let len = self.bufs[i].len();
        let words: Vec<u32> = m.mask_words.iter().map(|w| w.to_bits()).collect();
        match &self.header[i] {
            Some((w, sent)) => {
                if *w != words || *sent != m.sent {
                    return false;
                }
            }
            None => {
                if !(words.is_empty() || words.len() == n.div_ceil(32)) || m.sent > n {
                    return false;
                }
                let mask = if words.is_empty() {
                    vec![true; n]
                } else {
                    unpack_mask(m.mask_words, n)
                };
                if !words.is_empty() && mask.iter().filter(|&&b| b).count() != m.sent {
                    return false;
                }
                self.masks[i] = mask;
                self.header[i] = Some((words, m.sent));
            }
        }
        let pe = self.packet_elems;
        let Some(end) = offset.checked_add(m.payload.len()) else {
            return false;
        };
        if m.payload.is_empty()
            || end > len
            || !offset.is_multiple_of(pe)
            || (end != len && !m.payload.len().is_multiple_of(pe))
        {
            return false;
        }
        let (k0, k1) = (offset / pe, end.div_ceil(pe));
        self.last[i] = Some(Instant::now());
        let got = &mut self.got[i][k0..k1];
        if got.iter().all(|&g| g) {
            return true; // a duplicate: already stored
        }
        if got.iter().any(|&g| g) {
            return false; // overlaps fragments cut differently
        }
        got.fill(true);
        self.first.get_or_insert_with(Instant::now);
        self.count[i] += self.masks[i][k0..k1].iter().filter(|&&b| b).count();
        self.bufs[i][offset..end].copy_from_slice(m.payload);
        true
    }

    /// What arrived in time of each awaited message: the packets both sent and
    /// received, or `None` when not one of them arrived.
    fn arrived(self) -> Vec<Option<Vec<bool>>> {
        self.masks
            .into_iter()
            .zip(self.got)
            .map(|(mask, got)| {
                let both: Vec<bool> = mask.iter().zip(&got).map(|(&m, &g)| m && g).collect();
                both.iter().any(|&b| b).then_some(both)
            })
            .collect()
    }
}

impl Mailbox for PhaseBox<'_> {
    fn deliver(&mut self, from: usize, _tag: i32, data: &[f32], offset: usize, late: bool) {
        let Some(m) = decode(data) else {
            self.invalid += 1;
            return;
        };
        if m.phase > self.phase {
            self.stash
                .entry((from, m.phase))
                .or_default()
                .push((offset, data.to_vec()));
            return;
        }
        if m.phase < self.phase || late {
            self.late += 1;
            return;
        }
        let slot = self
            .expect
            .iter()
            .position(|&(f, b, _)| f == from && b == m.block);
        if !slot.is_some_and(|i| self.accept(i, &m, offset)) {
            self.invalid += 1;
        }
    }

    fn complete(&self) -> bool {
        let mut now = None;
        self.header
            .iter()
            .zip(&self.count)
            .zip(&self.last)
            .zip(&self.got)
            .all(|(((h, &c), last), got)| {
                h.as_ref().is_some_and(|(_, sent)| {
                    // Nothing dropped in software (the last packet was sent) and the last
                    // packet here: in order, the rest is not coming.
                    c >= *sent || (self.ordered && *sent == got.len() && got.last() == Some(&true))
                }) || last
                    .and_then(|t| t.checked_add(self.idle))
                    .is_some_and(|end| *now.get_or_insert_with(Instant::now) >= end)
            })
    }

    fn deadline(&self, given: Instant) -> Instant {
        match self.patience {
            None => given,
            Some((timeout, cap)) => self.first.map_or(cap, |f| (f + timeout).min(cap)),
        }
    }
}

/// Counts everything drained as late.
struct Drain(u64);

impl Mailbox for Drain {
    fn deliver(&mut self, _from: usize, _tag: i32, _data: &[f32], _offset: usize, _late: bool) {
        self.0 += 1;
    }
    fn complete(&self) -> bool {
        false
    }
}

impl Deadline {
    pub fn new(timeout: Duration) -> Self {
        Deadline {
            timeout,
            stash: HashMap::new(),
            outbox: Vec::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Drains stragglers until every rank has reached the same point (collective).
    pub fn quiesce<T: Transport + ?Sized>(&mut self, t: &T) -> u64 {
        let mut drain = Drain(self.stash.values().map(|v| v.len() as u64).sum());
        self.stash.clear();
        t.quiesce(&mut drain);
        drain.0
    }

    /// Runs one phase: posts `sends` (destination, block, mask, payload), waits for the
    /// `expect`ed messages into `bufs` until the deadline. Returns the packet masks of
    /// what arrived in time (`None`: lost). Packets are `packet_elems` long.
    #[allow(clippy::too_many_arguments)]
    fn phase<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        packet_elems: usize,
        patient: bool,
        tag: impl Fn(usize) -> i32,
        step: u64,
        direction: Direction,
        sends: &[(usize, usize, &[bool], &[f32])],
        expect: &[(usize, usize, usize)],
        bufs: Vec<&mut [f32]>,
        counts: &mut StepCounters,
    ) -> Result<Vec<Option<Vec<bool>>>, CommError> {
        self.outbox.resize_with(sends.len(), Vec::new);
        let datagrams = t.datagrams();
        for (out, (_, b, mask, payload)) in self.outbox.iter_mut().zip(sends) {
            encode_framed(step, direction, *b, mask, !datagrams, payload, out);
        }
        let outgoing: Vec<Outgoing> = self
            .outbox
            .iter()
            .zip(sends)
            .map(|(data, (to, b, mask, _))| Outgoing {
                to: *to,
                tag: tag(*b),
                data,
                framing: Some(Framing {
                    prefix: header_elems(mask.len(), datagrams),
                    fragment: packet_elems,
                    send: mask,
                }),
            })
            .collect();
        let now_phase = phase(step, direction as u32);
        let mut mailbox = PhaseBox::new(now_phase, packet_elems, expect, bufs, &mut self.stash);
        let start = Instant::now();
        if datagrams {
            mailbox.idle = (self.timeout / IDLE_FRACTION).max(Duration::from_millis(1));
            mailbox.ordered = true;
        }
        if patient {
            mailbox.patience = Some((self.timeout, start + PATIENCE * self.timeout));
        }
        // Messages that came early, during an earlier phase.
        let early: Vec<(usize, u64)> = mailbox
            .stash
            .keys()
            .filter(|k| k.1 == now_phase)
            .copied()
            .collect();
        for key in early {
            for (offset, data) in mailbox.stash.remove(&key).unwrap_or_default() {
                mailbox.deliver(key.0, 0, &data, offset, false);
            }
        }
        t.exchange_until(&outgoing, start + self.timeout, &mut mailbox)?;
        counts.late += mailbox.late;
        counts.rejected += mailbox.invalid;
        Ok(mailbox.arrived())
    }
}

impl Exchange {
    /// The exchange of one step with deadline detection (see the module docs).
    pub(super) fn step_deadline<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        params: &mut [f32],
        served: Option<usize>,
        counts: &mut StepCounters,
        d: &mut Deadline,
    ) -> Result<(), CommError> {
        let me = t.rank();
        let layout = self.layout.clone();

        // ---- Uplink: post what the model keeps; the server waits for every worker. ----
        let uploads = self.uplink_decisions(step, me, counts);
        let sends: Vec<(usize, usize, &[bool], &[f32])> = uploads
            .iter()
            .map(|(s, b, m)| (*s, *b, m.as_slice(), &params[layout.block(*b)]))
            .collect();
        let mut expect = Vec::new();
        if let Some(b) = served {
            let n = self.packets(layout.block(b).len());
            expect.extend(layout.workers().filter(|&w| w != me).map(|w| (w, b, n)));
        }
        let len = served.map_or(0, |b| layout.block(b).len());
        self.inbox.resize(expect.len() * len, 0.0);
        let bufs: Vec<&mut [f32]> = self
            .inbox
            .chunks_mut(len.max(1))
            .take(expect.len())
            .collect();
        let tag = |b| layout.tag(step, Direction::Up, b);
        let pe = self.packet_elems;
        // A pure server computes nothing before the uplink, so it would start its
        // deadline while the workers are still computing: it counts from the first
        // arrival instead.
        let patient = !layout.is_worker(me);
        let arrived = d.phase(
            t,
            pe,
            patient,
            tag,
            step,
            Direction::Up,
            &sends,
            &expect,
            bufs,
            counts,
        )?;
        drop(sends);
        // Compact the copies that arrived to the front of the inbox, with their masks.
        let mut received = 0;
        self.inbox_masks.clear();
        for (i, m) in arrived.into_iter().enumerate() {
            if let Some(m) = m {
                if i != received {
                    self.inbox
                        .copy_within(i * len..(i + 1) * len, received * len);
                }
                counts.packets_received_up += m.iter().filter(|&&x| x).count() as u64;
                self.inbox_masks.push(m);
                self.up_links.received[expect[i].0] += 1;
                received += 1;
            }
        }
        counts.received_up += received as u64;
        if let Some(b) = served {
            self.average_served(b, params, received, false);
        }

        // ---- Downlink: servers send what they have; workers wait for every server. ----
        let replies = self.downlink_decisions(step, me, served, counts);
        let sends: Vec<(usize, usize, &[bool], &[f32])> = match served {
            Some(b) => replies
                .iter()
                .map(|(w, m)| (*w, b, m.as_slice(), self.average.as_slice()))
                .collect(),
            None => Vec::new(),
        };
        let mut expect = Vec::new();
        if layout.is_worker(me) {
            for (b, &server) in self.owners.iter().enumerate() {
                if server != me {
                    expect.push((server, b, self.packets(layout.block(b).len())));
                }
            }
        }
        let staged_len = if expect.is_empty() { 0 } else { params.len() };
        let mut staging = std::mem::take(&mut self.partial);
        staging.resize(staged_len, 0.0);
        let mut blocks: Vec<Option<&mut [f32]>> = split_blocks(&mut staging, layout.blocks())
            .into_iter()
            .map(Some)
            .collect();
        let bufs: Vec<&mut [f32]> = expect
            .iter()
            .filter_map(|&(_, b, _)| blocks[b].take())
            .collect();
        let tag = |b| layout.tag(step, Direction::Down, b);
        // The same phase as the uplink's, with the downlink's direction and buffers.
        let arrived = d.phase(
            t,
            pe,
            false,
            tag,
            step,
            Direction::Down,
            &sends,
            &expect,
            bufs,
            counts,
        )?;
        drop(sends);
        self.partial = staging;
        for (i, m) in arrived.iter().enumerate() {
            if let Some(m) = m {
                let (server, b, _) = expect[i];
                self.down_links.received[server] += 1;
                counts.received_down += 1;
                counts.packets_received_down += m.iter().filter(|&&x| x).count() as u64;
                self.merge_staged(params, b, m);
            }
        }
        self.finish_served(params, served);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mask: Vec<bool> = (0..40).map(|k| k % 3 == 0).collect();
        let mut out = Vec::new();
        encode(
            (1 << 33) + 5,
            Direction::Down,
            7,
            &mask,
            &[1.5, -2.0],
            &mut out,
        );
        let m = decode(&out).unwrap();
        assert_eq!(m.phase, phase((1 << 33) + 5, 1));
        assert_eq!(m.block, 7);
        assert_eq!(m.payload, &[1.5, -2.0]);
        assert_eq!(unpack_mask(m.mask_words, 40), mask);
        assert!(decode(&out[..3]).is_none());
    }
}

#[cfg(test)]
mod fragment_tests {
    use super::*;

    /// One awaited message from rank 1, block 2: 10 elements in packets of 4 (3
    /// packets), the sender's mask `110`.
    fn message(offset_elems: &[(usize, std::ops::Range<usize>)]) -> (Vec<f32>, u64, Vec<bool>) {
        let expect = [(1usize, 2usize, 3usize)];
        let mut buf = vec![0f32; 10];
        let mut stash = Stash::new();
        let mut pb = PhaseBox::new(phase(4, 0), 4, &expect, vec![&mut buf[..]], &mut stash);
        let body: Vec<f32> = (1..=10).map(|x| x as f32).collect();
        let mask = [true, true, false];
        for (offset, range) in offset_elems {
            let mut out = Vec::new();
            encode(4, Direction::Up, 2, &mask, &body[range.clone()], &mut out);
            pb.deliver(1, 0, &out, *offset, false);
        }
        let invalid = pb.invalid;
        let arrived = pb.arrived();
        drop(stash);
        (buf, invalid, arrived[0].clone().unwrap_or_default())
    }

    #[test]
    fn fragments_land_where_they_belong() {
        let (buf, invalid, arrived) = message(&[(4, 4..8), (0, 0..4)]);
        assert_eq!(invalid, 0);
        assert_eq!(&buf[..8], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(arrived, vec![true, true, false]);
        // The last packet is short; a duplicate is harmless.
        let (buf, invalid, arrived) = message(&[(8, 8..10), (8, 8..10)]);
        assert_eq!((invalid, &buf[8..]), (0, &[9.0f32, 10.0][..]));
        // Sent (arrived) but not in the sender's mask: not used.
        assert_eq!(arrived, Vec::<bool>::new());
    }

    #[test]
    fn bad_fragments_never_touch_the_buffer() {
        for bad in [
            (12, 0..4),             // past the end
            (8, 0..4),              // overruns the block
            (2, 0..4),              // not on a packet boundary
            (0, 0..3),              // a partial packet
            (0, 0..0),              // empty
            (usize::MAX - 1, 0..4), // offset overflow
        ] {
            let (buf, invalid, arrived) = message(std::slice::from_ref(&bad));
            assert_eq!(invalid, 1, "{bad:?}");
            assert!(buf.iter().all(|&x| x == 0.0), "{bad:?}");
            assert!(arrived.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn foreign_block_sender_or_mask_is_invalid() {
        let expect = [(1usize, 2usize, 3usize)];
        let mut buf = [0f32; 10];
        let mut stash = Stash::new();
        let mut pb = PhaseBox::new(phase(4, 0), 4, &expect, vec![&mut buf[..]], &mut stash);
        let mut out = Vec::new();
        encode(4, Direction::Up, 3, &[true; 3], &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 0, false); // block 3 is not awaited
        encode(4, Direction::Up, 2, &[true; 3], &[1.0; 4], &mut out);
        pb.deliver(0, 0, &out, 0, false); // rank 0 is not the sender
        encode(4, Direction::Up, 2, &[true; 40], &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 0, false); // mask of the wrong size
        encode(
            4,
            Direction::Up,
            2,
            &[true, true, true],
            &[1.0; 4],
            &mut out,
        );
        pb.deliver(1, 0, &out, 0, false); // valid
        encode(
            4,
            Direction::Up,
            2,
            &[true, false, true],
            &[2.0; 4],
            &mut out,
        );
        pb.deliver(1, 0, &out, 4, false); // contradicts the first mask
        pb.deliver(1, 0, &out[..2], 0, false); // truncated header
        encode(3, Direction::Up, 2, &[true; 3], &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 4, false); // an earlier step: late
        assert_eq!((pb.invalid, pb.late), (5, 1));
        drop(pb);
        assert_eq!(&buf[..], &[1., 1., 1., 1., 0., 0., 0., 0., 0., 0.]);
    }
}

#[cfg(test)]
mod datagram_tests {
    use super::*;

    /// A datagram transport's header has no mask, only the count of packets sent: the
    /// message is complete once that many distinct packets arrived.
    #[test]
    fn maskless_fragments_complete_by_count() {
        let expect = [(1usize, 0usize, 3usize)];
        let mut buf = vec![0f32; 10];
        let mut stash = Stash::new();
        let mut pb = PhaseBox::new(phase(2, 1), 4, &expect, vec![&mut buf[..]], &mut stash);
        let mask = [true, false, true];
        let mut out = Vec::new();
        encode_framed(2, Direction::Down, 0, &mask, false, &[1.0; 4], &mut out);
        pb.deliver(1, 0, &out, 0, false);
        assert!(!pb.complete());
        pb.deliver(1, 0, &out, 0, false); // duplicate
        assert!(!pb.complete());
        encode_framed(2, Direction::Down, 0, &mask, false, &[3.0; 2], &mut out);
        pb.deliver(1, 0, &out, 8, false);
        assert!(pb.complete());
        // A fragment claiming another count contradicts the header.
        encode_framed(
            2,
            Direction::Down,
            0,
            &[true; 3],
            false,
            &[2.0; 4],
            &mut out,
        );
        pb.deliver(1, 0, &out, 4, false);
        assert_eq!(pb.invalid, 1);
        assert_eq!(pb.arrived(), vec![Some(vec![true, false, true])]);
        assert_eq!(buf, [1., 1., 1., 1., 0., 0., 0., 0., 3., 3.]);
    }

    /// Datagrams of one message arrive in order: once the last packet is in, a message
    /// all of whose packets were sent is settled at once, not after the idle time. One
    /// whose sender dropped packets in software cannot be settled that way (its header
    /// counts what was sent, not which), nor can one whose transport may reorder.
    #[test]
    fn an_ordered_message_settles_when_its_last_packet_arrives() {
        let expect = [(1usize, 0usize, 3usize)];
        let settles = |ordered: bool, mask: &[bool]| {
            let mut buf = [0f32; 10];
            let mut stash = Stash::new();
            let mut pb = PhaseBox::new(phase(2, 1), 4, &expect, vec![&mut buf[..]], &mut stash);
            pb.ordered = ordered;
            let mut out = Vec::new();
            // Packet 0, then packet 2 (the last): packet 1 was lost or never sent.
            encode_framed(2, Direction::Down, 0, mask, false, &[1.0; 4], &mut out);
            pb.deliver(1, 0, &out, 0, false);
            assert!(!pb.complete());
            encode_framed(2, Direction::Down, 0, mask, false, &[3.0; 2], &mut out);
            pb.deliver(1, 0, &out, 8, false);
            pb.complete()
        };
        assert!(settles(true, &[true; 3]));
        assert!(!settles(false, &[true; 3]));
        // Two of three sent and both here: complete by count anyway.
        assert!(settles(false, &[true, false, true]));
    }
}
