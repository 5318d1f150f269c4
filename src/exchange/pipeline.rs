//! The oracle exchange, pipelined: every message is cut into the same number of chunks,
//! and the step runs as `chunks + 1` stages. Stage `s` carries chunk `s` of every uplink
//! and chunk `s − 1` of every downlink; between stages a server averages the chunk that
//! has just come up. So the average of chunk `k` travels down while chunk `k + 1`
//! travels up, so that both directions can be busy at once instead of one after the
//! other. By default a message is one chunk (`--chunk-bytes` opts in: it is faster for
//! large blocks within one host and slower over TCP, see `Exchange::with_chunk_elems`).
//!
//! Nothing of the algorithm changes: the drop decisions are taken per message and per
//! packet before the first stage, exactly as for an unpipelined step, and a message that
//! is posted is posted in all its chunks; the average is element-wise, so averaging it a
//! chunk at a time gives the same bits. With one chunk the stages are the two phases of
//! the plain exchange (uplink, average, downlink).
//!
//! A chunk is read by a send in one stage and written by a receive in a later one, and a
//! stage completes all its messages before the next starts, so no buffer is ever written
//! while a send from it is pending (MPI forbids that) — which is why the stages are
//! synchronous rather than one stream of requests. (A raw-MPI probe of one stream, each
//! downlink chunk sent as soon as it was averaged, overlapped no better on Open MPI's
//! shared memory: issue 25's closing note.)

use std::ops::Range;

use super::average::Target;
use super::layout::{split_blocks, Mode};
use super::{Exchange, MAX_CHUNKS};
use crate::comm::reduce::chunk;
use crate::comm::{CommError, Incoming, Outgoing, Transport};
use crate::counters::StepCounters;
use crate::drop::{Direction, MessageId};

/// What one stage of a step moves, besides the replica: the served block's copies and
/// average (server side) and the staging buffer of partly arrived blocks (worker side).
struct Plan<'p> {
    step: u64,
    chunks: usize,
    blocks: &'p [Range<usize>],
    /// (server, block) of every uplink this rank posts.
    uploads: &'p [(usize, usize)],
    /// Senders whose copy of the served block is posted, in inbox order.
    senders: &'p [usize],
    /// Workers the served block's average is posted to.
    replies: &'p [usize],
    /// (block, whole) of every downlink this rank receives; partial blocks are staged.
    expected: &'p [(usize, bool)],
    served: Option<usize>,
    /// Where the served block's average is written (and sent from).
    target: Target,
}

impl Exchange {
    /// Chunks per message: as many as the longest block needs at the size set by
    /// [`Exchange::with_chunk_elems`] (one by default), at most [`MAX_CHUNKS`], at least
    /// one.
    /// Every rank computes the same number from the layout.
    pub fn chunks(&self) -> usize {
        let longest = self.layout.blocks().iter().map(|r| r.len()).max();
        longest
            .unwrap_or(0)
            .div_ceil(self.chunk_elems.max(1))
            .clamp(1, MAX_CHUNKS)
    }

    /// Runs the oracle exchange of `step` (see [`Exchange::step`]) in pipelined stages.
    pub(super) fn step_pipelined<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        params: &mut [f32],
        served: Option<usize>,
        counts: &mut StepCounters,
    ) -> Result<(), CommError> {
        let me = t.rank();
        // A co-located server averages over its own copy, a dedicated one over the first
        // copy it received; each sends the average from there.
        let target = match self.layout.mode() {
            Mode::Colocated => Target::Replica,
            Mode::Dedicated { .. } => Target::Inbox,
        };
        let uploads: Vec<(usize, usize)> = self
            .uplink_decisions(step, me, counts)
            .into_iter()
            .map(|(server, b, _)| (server, b))
            .collect();
        let senders = match served {
            Some(b) => self.posted_copies(step, me, b),
            None => Vec::new(),
        };
        if let Some(b) = served {
            let len = self.layout.block(b).len();
            self.inbox.resize(senders.len() * len, 0.0);
            self.set_available(b, senders.len());
        }
        let replies: Vec<usize> = self
            .downlink_decisions(step, me, served, counts)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        let arriving = self.expected_downlinks(step, me);
        let staged_len = if arriving.iter().any(|(_, m)| m.iter().any(|&x| !x)) {
            params.len()
        } else {
            0
        };
        self.partial.resize(staged_len, 0.0);
        let expected: Vec<(usize, bool)> = arriving
            .iter()
            .map(|(b, m)| (*b, m.iter().all(|&x| x)))
            .collect();
        let blocks = self.layout.blocks().to_vec();
        let chunks = self.chunks();
        let plan = Plan {
            step,
            chunks,
            blocks: &blocks,
            uploads: &uploads,
            senders: &senders,
            replies: &replies,
            expected: &expected,
            served,
            target,
        };
        for s in 0..=chunks {
            self.stage(t, &plan, s, params)?;
            // A dedicated server with no copy has nothing to average (and sends nothing).
            let averages = target == Target::Replica || !senders.is_empty();
            if let (Some(b), true, true) = (served, s < chunks, averages) {
                let part = chunk(blocks[b].len(), chunks, s);
                self.average_part(b, params, senders.len(), target, part);
            }
        }
        for &w in &senders {
            self.up_links.received[w] += 1;
        }
        counts.received_up += senders.len() as u64;
        counts.packets_received_up += self.inbox_masks[..senders.len()]
            .iter()
            .map(|m| m.iter().filter(|&&x| x).count() as u64)
            .sum::<u64>();
        self.merge(params, &arriving, counts);
        Ok(())
    }

    /// The senders whose copy of block `b` (served by `me`) is posted at `step`, with
    /// the packets each carries stored in `inbox_masks`, in the same order.
    fn posted_copies(&mut self, step: u64, me: usize, b: usize) -> Vec<usize> {
        let mut senders = Vec::new();
        let mut masks = std::mem::take(&mut self.inbox_masks);
        let mut mask = std::mem::take(&mut self.mask);
        for w in self.layout.workers().filter(|&w| w != me) {
            self.decide(
                MessageId::new(step, Direction::Up, w, me, b),
                None,
                &mut mask,
            );
            if mask.iter().any(|&m| m) {
                if masks.len() <= senders.len() {
                    masks.push(Vec::new());
                }
                masks[senders.len()].clone_from(&mask);
                senders.push(w);
            }
        }
        self.inbox_masks = masks;
        self.mask = mask;
        senders
    }

    /// Worker side: per block whose average will arrive at `step`, its packet mask.
    fn expected_downlinks(&mut self, step: u64, me: usize) -> Vec<(usize, Vec<bool>)> {
        let mut expected = Vec::new();
        if !self.layout.is_worker(me) {
            return expected;
        }
        let mut avail = Vec::new();
        let mut mask = std::mem::take(&mut self.mask);
        for (b, &server) in self.owners.iter().enumerate() {
            if server == me {
                continue;
            }
            self.availability(step, b, &mut avail);
            self.decide(
                MessageId::new(step, Direction::Down, server, me, b),
                Some(&avail),
                &mut mask,
            );
            if mask.iter().any(|&m| m) {
                expected.push((b, mask.clone()));
            }
        }
        self.mask = mask;
        expected
    }

    /// Stage `s`: chunk `s` of every uplink and chunk `s − 1` of every downlink, all
    /// posted at once and completed before returning. Empty chunks (of blocks shorter
    /// than the chunk count) are not sent; both ends skip the same ones.
    fn stage<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        plan: &Plan<'_>,
        s: usize,
        params: &mut [f32],
    ) -> Result<(), CommError> {
        let chunks = plan.chunks;
        let up_part = |len: usize| (s < chunks).then(|| chunk(len, chunks, s));
        let down_part = |len: usize| s.checked_sub(1).map(|k| chunk(len, chunks, k));
        // Per block: the uplink chunk (read) and the downlink chunk (written, or read
        // for a co-located server's own block). They are disjoint: the downlink chunk
        // lies before the uplink one.
        let mut up: Vec<&[f32]> = Vec::with_capacity(plan.blocks.len());
        let mut down: Vec<&mut [f32]> = Vec::with_capacity(plan.blocks.len());
        for blk in split_blocks(params, plan.blocks) {
            let len = blk.len();
            let cut = up_part(len).map_or(len, |r| r.start);
            let (done, rest) = blk.split_at_mut(cut);
            let rest: &[f32] = rest;
            up.push(up_part(len).map_or(&[][..], |r| &rest[..r.len()]));
            down.push(match down_part(len) {
                Some(r) => &mut done[r],
                None => &mut [],
            });
        }
        let mut staged: Vec<&mut [f32]> = split_blocks(&mut self.partial, plan.blocks)
            .into_iter()
            .zip(plan.blocks)
            .map(|(p, r)| match (down_part(r.len()), p.is_empty()) {
                (Some(part), false) => &mut p[part],
                _ => &mut [],
            })
            .collect();
        let mut sends = Vec::with_capacity(plan.uploads.len() + plan.replies.len());
        for &(server, b) in plan.uploads {
            sends.push(Outgoing {
                to: server,
                tag: self.layout.tag(plan.step, Direction::Up, b),
                data: up[b],
                framing: None,
            });
        }
        let mut recvs = Vec::with_capacity(plan.senders.len() + plan.expected.len());
        if let Some(b) = plan.served {
            let len = plan.blocks[b].len();
            // Per copy: the chunk that comes up now, after the ones averaged already; the
            // first copy's averaged chunk goes down when the average is in the inbox.
            let cut = up_part(len).map_or(len, |r| r.start);
            let up_tag = self.layout.tag(plan.step, Direction::Up, b);
            let mut averaged: &[f32] = &[];
            for (i, (&from, copy)) in plan
                .senders
                .iter()
                .zip(self.inbox.chunks_mut(len.max(1)))
                .enumerate()
            {
                let (done, rest) = copy.split_at_mut(cut);
                if i == 0 {
                    averaged = done;
                }
                if let Some(part) = up_part(len) {
                    recvs.push(Incoming {
                        from,
                        tag: up_tag,
                        buf: &mut rest[..part.len()],
                    });
                }
            }
            // (A server with nothing to send has nothing averaged: no copy arrived.)
            if let (Some(part), false) = (down_part(len), plan.replies.is_empty()) {
                let average: &[f32] = match plan.target {
                    Target::Replica => std::mem::take::<&mut [f32]>(&mut down[b]),
                    Target::Inbox => &averaged[part],
                    Target::Buffer => &self.average[part],
                };
                let tag = self.layout.tag(plan.step, Direction::Down, b);
                for &to in plan.replies {
                    sends.push(Outgoing {
                        to,
                        tag,
                        data: average,
                        framing: None,
                    });
                }
            }
        }
        for &(b, whole) in plan.expected {
            let buf = if whole {
                std::mem::take(&mut down[b])
            } else {
                std::mem::take(&mut staged[b])
            };
            recvs.push(Incoming {
                from: self.owners[b],
                tag: self.layout.tag(plan.step, Direction::Down, b),
                buf,
            });
        }
        sends.retain(|m| !m.data.is_empty());
        recvs.retain(|m| !m.buf.is_empty());
        t.exchange(&sends, &mut recvs)
    }
}
