//! Deadline detection: the exchange without an oracle.
//!
//! Receivers do not consult the drop model. Each message carries a header (step,
//! direction, block and the mask of packets it really carries); a receiver polls until
//! everything it waits for has arrived or the deadline has passed, and treats the rest as
//! lost. Messages of a later phase (a faster peer) are stashed for it; messages of an
//! earlier phase, or of this phase after the deadline, are discarded as late — never
//! applied to a later step. Senders never cancel: every send completes inside its
//! phase, and [`Deadline::quiesce`] drains stragglers before collectives and the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::comm::{CommError, Mailbox, Outgoing, Transport};
use crate::drop::Direction;

use super::{split_blocks, Exchange, StepCounts};

/// Header words before the payload: step (2 words), direction, block, mask words.
const HEADER: usize = 5;

/// Deadline state kept across steps.
#[derive(Debug)]
pub struct Deadline {
    timeout: Duration,
    /// Messages that arrived before their phase: (sender, phase) → raw message.
    stash: HashMap<(usize, u64), Vec<f32>>,
    /// Outgoing messages of the current phase, header and payload.
    outbox: Vec<Vec<f32>>,
}

/// Phases in the order every rank runs them: (step, uplink), (step, downlink), ...
fn phase(step: u64, direction: u32) -> u64 {
    2 * step + direction as u64
}

fn word(x: u32) -> f32 {
    f32::from_bits(x)
}

/// Writes header + payload into `out`.
fn encode(
    step: u64,
    direction: Direction,
    block: usize,
    mask: &[bool],
    payload: &[f32],
    out: &mut Vec<f32>,
) {
    let words = mask.len().div_ceil(32);
    out.clear();
    out.extend([
        word(step as u32),
        word((step >> 32) as u32),
        word(direction as u32),
        word(block as u32),
        word(words as u32),
    ]);
    for chunk in mask.chunks(32) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &m)| acc | (u32::from(m) << i));
        out.push(word(bits));
    }
    out.extend_from_slice(payload);
}

/// A decoded message: header fields, packet mask (`packets` entries) and payload.
struct Decoded<'a> {
    phase: u64,
    block: usize,
    mask_words: &'a [f32],
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

/// Collects one phase's messages into their destination buffers.
struct PhaseBox<'a> {
    phase: u64,
    /// (sender, block) pairs awaited, with the number of packets of that block.
    expect: &'a [(usize, usize, usize)],
    bufs: Vec<&'a mut [f32]>,
    masks: Vec<Option<Vec<bool>>>,
    stash: &'a mut HashMap<(usize, u64), Vec<f32>>,
    late: u64,
    invalid: u64,
}

impl Mailbox for PhaseBox<'_> {
    fn deliver(&mut self, from: usize, _tag: i32, data: &[f32], late: bool) {
        let Some(m) = decode(data) else {
            self.invalid += 1;
            return;
        };
        if m.phase > self.phase {
            self.stash.insert((from, m.phase), data.to_vec());
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
        match slot {
            Some(i) if self.masks[i].is_none() && m.payload.len() == self.bufs[i].len() => {
                self.bufs[i].copy_from_slice(m.payload);
                self.masks[i] = Some(unpack_mask(m.mask_words, self.expect[i].2));
            }
            _ => self.invalid += 1,
        }
    }

    fn complete(&self) -> bool {
        self.masks.iter().all(Option::is_some)
    }
}

/// Counts everything drained as late.
struct Drain(u64);

impl Mailbox for Drain {
    fn deliver(&mut self, _from: usize, _tag: i32, _data: &[f32], _late: bool) {
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
        let mut drain = Drain(self.stash.len() as u64);
        self.stash.clear();
        t.quiesce(&mut drain);
        drain.0
    }

    /// Runs one phase: posts `sends` (destination, block, mask, payload), waits for the
    /// `expect`ed messages into `bufs` until the deadline. Returns the packet masks of
    /// what arrived in time (`None`: lost).
    #[allow(clippy::too_many_arguments)]
    fn phase<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        tag: impl Fn(usize) -> i32,
        step: u64,
        direction: Direction,
        sends: &[(usize, usize, &[bool], &[f32])],
        expect: &[(usize, usize, usize)],
        bufs: Vec<&mut [f32]>,
        counts: &mut StepCounts,
    ) -> Result<Vec<Option<Vec<bool>>>, CommError> {
        self.outbox.resize_with(sends.len(), Vec::new);
        for (out, (_, b, mask, payload)) in self.outbox.iter_mut().zip(sends) {
            encode(step, direction, *b, mask, payload, out);
        }
        let outgoing: Vec<Outgoing> = self
            .outbox
            .iter()
            .zip(sends)
            .map(|(data, (to, b, _, _))| Outgoing {
                to: *to,
                tag: tag(*b),
                data,
            })
            .collect();
        let now_phase = phase(step, direction as u32);
        let mut mailbox = PhaseBox {
            phase: now_phase,
            expect,
            masks: vec![None; expect.len()],
            bufs,
            stash: &mut self.stash,
            late: 0,
            invalid: 0,
        };
        // Messages that came early, during an earlier phase.
        let early: Vec<(usize, u64)> = mailbox
            .stash
            .keys()
            .filter(|k| k.1 == now_phase)
            .copied()
            .collect();
        for key in early {
            if let Some(data) = mailbox.stash.remove(&key) {
                mailbox.deliver(key.0, 0, &data, false);
            }
        }
        t.exchange_until(&outgoing, Instant::now() + self.timeout, &mut mailbox)?;
        counts.late += mailbox.late + mailbox.invalid;
        Ok(mailbox.masks)
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
        counts: &mut StepCounts,
        d: &mut Deadline,
    ) -> Result<(), CommError> {
        let me = t.rank();
        let size = self.layout.size();
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
        let arrived = d.phase(t, tag, step, Direction::Up, &sends, &expect, bufs, counts)?;
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
                self.inbox_masks.push(m);
                self.up_links.received[expect[i].0 * size + me] += 1;
                received += 1;
            }
        }
        counts.received_up += received as u64;
        if let Some(b) = served {
            self.average_served(b, params, received);
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
        let arrived = d.phase(t, tag, step, Direction::Down, &sends, &expect, bufs, counts)?;
        drop(sends);
        self.partial = staging;
        for (i, m) in arrived.iter().enumerate() {
            if let Some(m) = m {
                let (server, b, _) = expect[i];
                self.down_links.received[server * size + me] += 1;
                counts.received_down += 1;
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
