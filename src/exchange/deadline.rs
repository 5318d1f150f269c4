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

use super::Exchange;
use crate::counters::StepCounters;
use crate::exchange::layout::{split_blocks, Layout};

/// Header words before the mask and payload: step (2 words), direction, block, mask
/// words, packets sent.
const HEADER: usize = 6;

/// Deadline state kept across steps.
#[derive(Debug)]
pub struct Deadline {
    timeout: Duration,
    /// Elements per packet (the exchange's; whole blocks: more than any block).
    packet_elems: usize,
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
    pub fn new(timeout: Duration, packet_elems: usize) -> Self {
        Deadline {
            timeout,
            packet_elems,
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

    /// Runs one phase, `(step, direction, patient)` (a patient receiver counts its
    /// deadline from the first arrival): posts `sends` (destination, block, mask,
    /// payload), waits for the `expect`ed messages into `bufs` until the deadline.
    /// Returns the packet masks of what arrived in time (`None`: lost). Tags come from
    /// `layout`; packets are the exchange's `packet_elems` long.
    #[allow(clippy::too_many_arguments)]
    fn phase<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        layout: &Layout,
        (step, direction, patient): (u64, Direction, bool),
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
                tag: layout.tag(step, direction, *b),
                data,
                framing: Some(Framing {
                    prefix: header_elems(mask.len(), datagrams),
                    fragment: self.packet_elems,
                    send: mask,
                }),
            })
            .collect();
        let now_phase = phase(step, direction as u32);
        let mut mailbox =
            PhaseBox::new(now_phase, self.packet_elems, expect, bufs, &mut self.stash);
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
    /// The exchange of one step with deadline detection (see the module docs): the four
    /// phases of [`Exchange::step`], where every receiver waits until what it expects has
    /// arrived or its deadline has passed.
    pub(super) fn step_deadline<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        params: &mut [f32],
        served: Option<usize>,
        counts: &mut StepCounters,
        d: &mut Deadline,
    ) -> Result<(), CommError> {
        let received = self.uplink_deadline(t, step, params, served, counts, d)?;
        if let Some(b) = served {
            self.average_served(b, params, received);
        }
        let arrived = self.downlink_deadline(t, step, params.len(), served, counts, d)?;
        for (server, b, m) in &arrived {
            self.down_links.received[*server] += 1;
            counts.received_down += 1;
            counts.packets_received_down += m.iter().filter(|&&x| x).count() as u64;
            self.merge_staged(params, *b, m);
        }
        self.finish_served(params, served);
        Ok(())
    }

    /// Uplink: post what the model keeps; the server waits for every worker. The copies
    /// that arrived are compacted to the front of the inbox, with their masks; returns
    /// how many.
    fn uplink_deadline<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        params: &[f32],
        served: Option<usize>,
        counts: &mut StepCounters,
        d: &mut Deadline,
    ) -> Result<usize, CommError> {
        let me = t.rank();
        let layout = self.layout.clone();
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
        // A pure server computes nothing before the uplink, so it would start its
        // deadline while the workers are still computing: it counts from the first
        // arrival instead.
        let patient = !layout.is_worker(me);
        let phase = (step, Direction::Up, patient);
        let arrived = d.phase(t, &layout, phase, &sends, &expect, bufs, counts)?;
        drop(sends);
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
        Ok(received)
    }

    /// Downlink: servers send what they have; workers wait for every server, staging
    /// what arrives (a replica of `replica_len` elements). Returns (server, block, packet mask) of each block that arrived.
    fn downlink_deadline<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        replica_len: usize,
        served: Option<usize>,
        counts: &mut StepCounters,
        d: &mut Deadline,
    ) -> Result<Vec<(usize, usize, Vec<bool>)>, CommError> {
        let me = t.rank();
        let layout = self.layout.clone();
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
        let staged_len = if expect.is_empty() { 0 } else { replica_len };
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
        // The same phase as the uplink's, with the downlink's direction and buffers.
        let phase = (step, Direction::Down, false);
        let arrived = d.phase(t, &layout, phase, &sends, &expect, bufs, counts)?;
        drop(sends);
        self.partial = staging;
        Ok(arrived
            .into_iter()
            .zip(&expect)
            .filter_map(|(m, &(server, b, _))| Some((server, b, m?)))
            .collect())
    }
}

#[cfg(test)]
mod tests;
