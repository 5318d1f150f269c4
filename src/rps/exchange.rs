//! One RPS exchange (steps 2–5 of the algorithm) for one rank, over any transport.
//!
//! Invariants: a dropped message is never posted; a receiver posts a receive exactly
//! for the messages that its peer will send (both evaluate the same pure drop model:
//! oracle detection), so nothing ever waits for a message that will not come. A worker
//! whose averaged block was lost keeps its own locally updated block.
//!
//! With packet granularity a block is cut into packets of `packet_elems` elements, each
//! decided on its own. A message is posted unless all its packets are dropped; it still
//! carries the whole block over MPI (this is a simulation), and the receiver uses only
//! the packets that "arrived": a server averages each packet range over the copies that
//! have it, a worker keeps its own values where the averaged packet was lost.

use crate::comm::{CommError, Incoming, Outgoing, Transport};
use crate::counters::StepCounters;
use crate::drop::{trace, Direction, DropModel, MessageId, TraceRecord};

use super::{Layout, Mode};

mod deadline;
pub use deadline::Deadline;

/// Bytes of the message header in every datagram of a datagram transport.
pub const DATAGRAM_HEADER_BYTES: usize = 4 * deadline::header_elems(0, true);

/// This rank's messages on its links in one direction, accumulated over the run,
/// indexed by the peer's rank: `sent[dst]` and `dropped[dst]` as the sender,
/// `received[src]` (in time) as the receiver. O(ranks) per rank, so that a thousand
/// in-process ranks do not hold a billion counters; the driver gathers them into the
/// servers × workers matrices at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCounts {
    pub sent: Vec<u64>,
    pub dropped: Vec<u64>,
    pub received: Vec<u64>,
}

impl LinkCounts {
    fn new(size: usize) -> Self {
        LinkCounts {
            sent: vec![0; size],
            dropped: vec![0; size],
            received: vec![0; size],
        }
    }
}

/// Per-rank state of the exchange: reusable buffers, the drop model, link counters.
pub struct Exchange {
    layout: Layout,
    drop: Box<dyn DropModel>,
    /// Elements per packet (`usize::MAX`: whole blocks are the unit of loss).
    packet_elems: usize,
    /// Owner rank of each block at the current step.
    owners: Vec<usize>,
    /// Server side: the received copies, one block length each, and their packet masks.
    inbox: Vec<f32>,
    inbox_masks: Vec<Vec<bool>>,
    /// Server side: the averaged block and which of its packets have a value.
    average: Vec<f32>,
    available: Vec<bool>,
    /// Worker side: receive buffer for blocks that arrive with packets missing.
    partial: Vec<f32>,
    /// Scratch masks.
    mask: Vec<bool>,
    up_links: LinkCounts,
    down_links: LinkCounts,
    /// Deadline detection state, `None` for oracle detection.
    deadline: Option<deadline::Deadline>,
}

impl Exchange {
    /// `packet_elems`: elements per packet, or `None` to drop whole blocks.
    pub fn new(layout: Layout, drop: Box<dyn DropModel>, packet_elems: Option<usize>) -> Self {
        let size = layout.size();
        Exchange {
            layout,
            drop,
            packet_elems: packet_elems.unwrap_or(usize::MAX).max(1),
            owners: Vec::new(),
            inbox: Vec::new(),
            inbox_masks: Vec::new(),
            average: Vec::new(),
            available: Vec::new(),
            partial: Vec::new(),
            mask: Vec::new(),
            up_links: LinkCounts::new(size),
            down_links: LinkCounts::new(size),
            deadline: None,
        }
    }

    /// Switches to deadline detection: receivers do not consult the drop model, they
    /// wait up to `timeout` per phase and treat what has not arrived as lost.
    pub fn with_deadline(mut self, timeout: std::time::Duration) -> Self {
        self.deadline = Some(Deadline::new(timeout));
        self
    }

    /// Whether receivers detect losses by deadline (else by oracle).
    pub fn uses_deadline(&self) -> bool {
        self.deadline.is_some()
    }

    /// Deadline mode: drains every straggling message while all ranks meet in a
    /// nonblocking barrier; returns how many late messages were discarded. Collective;
    /// call before any other collective and before the end. Oracle mode: nothing to do.
    pub fn quiesce<T: Transport + ?Sized>(&mut self, t: &T) -> u64 {
        match &mut self.deadline {
            Some(d) => d.quiesce(t),
            None => 0,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn drop_model(&self) -> &dyn DropModel {
        self.drop.as_ref()
    }

    /// Per-link message counts of this rank (as sender and receiver), uplink and downlink.
    pub fn link_counts(&self) -> (&LinkCounts, &LinkCounts) {
        (&self.up_links, &self.down_links)
    }

    /// The per-link counters flattened, for checkpoints.
    pub fn link_state(&self) -> Vec<u64> {
        [&self.up_links, &self.down_links]
            .iter()
            .flat_map(|l| l.sent.iter().chain(&l.dropped).chain(&l.received))
            .copied()
            .collect()
    }

    /// Restores counters saved by [`Exchange::link_state`].
    ///
    /// # Errors
    /// A state of another world size (or of a version of rps that kept every link's
    /// counters on every rank).
    pub fn set_link_state(&mut self, state: &[u64]) -> Result<(), CommError> {
        let n = self.layout.size();
        if state.len() != 6 * n {
            return Err(CommError::Length {
                from: 0,
                tag: 0,
                expected: 6 * n,
                found: state.len(),
            });
        }
        let mut chunks = state.chunks_exact(n);
        for l in [&mut self.up_links, &mut self.down_links] {
            for v in [&mut l.sent, &mut l.dropped, &mut l.received] {
                v.copy_from_slice(chunks.next().unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Packets of a block of `len` elements.
    fn packets(&self, len: usize) -> usize {
        len.div_ceil(self.packet_elems).max(1)
    }

    /// Element range of packet `k` in a block of `len` elements.
    fn packet_range(&self, k: usize, len: usize) -> std::ops::Range<usize> {
        let start = k.saturating_mul(self.packet_elems).min(len);
        start..start.saturating_add(self.packet_elems).min(len)
    }

    /// Elements of the header that every message of deadline detection carries (its
    /// largest, with the packet mask of the largest block).
    /// `datagrams`: for a transport that cuts messages into datagrams.
    pub fn header_elems(&self, datagrams: bool) -> usize {
        deadline::header_elems(self.max_packets(), datagrams)
    }

    /// Packets (of the largest block) per message: the drop models' slots per step.
    pub fn max_packets(&self) -> usize {
        self.packets(
            self.layout
                .blocks()
                .iter()
                .map(|r| r.len())
                .max()
                .unwrap_or(1),
        )
    }

    /// Fills `mask` with the delivery decision of every packet of one message;
    /// `attempted[k] == false` marks packets that are not sent at all.
    fn decide(&self, id: MessageId, attempted: Option<&[bool]>, mask: &mut Vec<bool>) {
        let n = self.packets(self.layout.block(id.block).len());
        mask.clear();
        mask.extend((0..n).map(|k| {
            attempted.is_none_or(|a| a[k])
                && !self.drop.drops(&MessageId {
                    packet: k as u32,
                    ..id
                })
        }));
    }

    fn id(step: u64, direction: Direction, src: usize, dst: usize, block: usize) -> MessageId {
        MessageId {
            step,
            direction,
            src,
            dst,
            block,
            packet: 0,
        }
    }

    /// Which packets of `block` the server has a value for at `step` (at least one copy
    /// arrived, or its own when co-located).
    fn availability(&self, step: u64, block: usize, out: &mut Vec<bool>) {
        let server = self.owners[block];
        let n = self.packets(self.layout.block(block).len());
        out.clear();
        out.resize(n, self.layout.mode() == Mode::Colocated);
        if self.layout.mode() == Mode::Colocated {
            return;
        }
        let mut mask = Vec::with_capacity(n);
        for w in self.layout.workers() {
            self.decide(
                Self::id(step, Direction::Up, w, server, block),
                None,
                &mut mask,
            );
            out.iter_mut().zip(&mask).for_each(|(a, &m)| *a |= m);
        }
    }

    /// Appends to `out` every drop decision of `step` that dropped something, for all
    /// links (not only this rank's): the content of a drop trace.
    pub fn trace_step(&mut self, step: u64, out: &mut Vec<TraceRecord>) {
        let mut owners = std::mem::take(&mut self.owners);
        self.layout.owners_into(step, &mut owners);
        self.owners = owners;
        let (mut avail, mut mask) = (Vec::new(), Vec::new());
        for (b, &server) in self.owners.iter().enumerate() {
            for w in self.layout.workers().filter(|&w| w != server) {
                let id = Self::id(step, Direction::Up, w, server, b);
                self.decide(id, None, &mut mask);
                out.extend(mask.iter().enumerate().filter(|(_, &m)| !m).map(|(k, _)| {
                    trace::record(&MessageId {
                        packet: k as u32,
                        ..id
                    })
                }));
            }
            self.availability(step, b, &mut avail);
            for w in self.layout.workers().filter(|&w| w != server) {
                let id = Self::id(step, Direction::Down, server, w, b);
                self.decide(id, Some(&avail), &mut mask);
                out.extend(
                    mask.iter()
                        .zip(&avail)
                        .enumerate()
                        .filter(|(_, (&m, &a))| a && !m)
                        .map(|(k, _)| {
                            trace::record(&MessageId {
                                packet: k as u32,
                                ..id
                            })
                        }),
                );
            }
        }
    }

    /// Runs the exchange of `step` for rank `t.rank()`.
    ///
    /// `params` is this rank's replica: on entry the locally updated v_i, on return x_i
    /// (packets whose average arrived replaced by it). A pure server (dedicated mode)
    /// holds no replica and passes an empty slice.
    ///
    /// # Errors
    /// Only on a transport failure (a message of the wrong length).
    pub fn step<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        params: &mut [f32],
    ) -> Result<StepCounters, CommError> {
        let me = t.rank();
        let mut owners = std::mem::take(&mut self.owners);
        self.layout.owners_into(step, &mut owners);
        self.owners = owners;
        let mut counts = StepCounters::default();
        // The block this rank serves this step, if any.
        let served = self.owners.iter().position(|&s| s == me);
        if let Some(mut d) = self.deadline.take() {
            let result = self.step_deadline(t, step, params, served, &mut counts, &mut d);
            self.deadline = Some(d);
            result?;
            return Ok(counts);
        }
        let mut mask = std::mem::take(&mut self.mask);

        // ---- Phase 1: uplink. Workers send their blocks, servers collect copies. ----
        let uploads = self.uplink_decisions(step, me, &mut counts);
        let sends: Vec<Outgoing> = uploads
            .iter()
            .map(|(server, b, _)| Outgoing {
                to: *server,
                tag: self.layout.tag(step, Direction::Up, *b),
                data: &params[self.layout.block(*b)],
                framing: None,
            })
            .collect();
        let mut received = 0usize;
        if let Some(b) = served {
            let len = self.layout.block(b).len();
            // Senders whose message is posted, with the packets it carries.
            let mut senders = Vec::new();
            let mut masks = std::mem::take(&mut self.inbox_masks);
            for w in self.layout.workers().filter(|&w| w != me) {
                self.decide(Self::id(step, Direction::Up, w, me, b), None, &mut mask);
                if mask.iter().any(|&m| m) {
                    if masks.len() <= senders.len() {
                        masks.push(Vec::new());
                    }
                    masks[senders.len()].clone_from(&mask);
                    senders.push(w);
                }
            }
            self.inbox_masks = masks;
            received = senders.len();
            self.inbox.resize(received * len, 0.0);
            let tag = self.layout.tag(step, Direction::Up, b);
            let mut recvs: Vec<Incoming> = senders
                .iter()
                .zip(self.inbox.chunks_mut(len.max(1)))
                .map(|(&from, buf)| Incoming { from, tag, buf })
                .collect();
            t.exchange(&sends, &mut recvs)?;
            for &w in &senders {
                self.up_links.received[w] += 1;
            }
            counts.received_up += received as u64;
            counts.packets_received_up += self.inbox_masks[..received]
                .iter()
                .map(|m| m.iter().filter(|&&x| x).count() as u64)
                .sum::<u64>();
        } else {
            t.exchange(&sends, &mut [])?;
        }
        drop(sends);

        // ---- Server: average, per packet, the copies that have it (plus its own). ----
        // A co-located server averages straight into its replica's block (what
        // `finish_served` would copy there at the end) and sends it from there.
        let in_place = self.layout.mode() == Mode::Colocated;
        if let Some(b) = served {
            self.average_served(b, params, received, in_place);
        }

        // ---- Phase 2: downlink. Servers send averages, workers merge what arrives. ----
        let replies = self.downlink_decisions(step, me, served, &mut counts);
        // Worker side: for each block, the packets that will arrive.
        let mut expected: Vec<(usize, Vec<bool>)> = Vec::new();
        if self.layout.is_worker(me) {
            let mut avail = Vec::new();
            for (b, &server) in self.owners.iter().enumerate() {
                if server == me {
                    continue;
                }
                self.availability(step, b, &mut avail);
                self.decide(
                    Self::id(step, Direction::Down, server, me, b),
                    Some(&avail),
                    &mut mask,
                );
                if mask.iter().any(|&m| m) {
                    expected.push((b, mask.clone()));
                }
            }
        }
        let partial_len = if expected.iter().any(|(_, m)| m.iter().any(|&x| !x)) {
            params.len()
        } else {
            0
        };
        self.partial.resize(partial_len, 0.0);
        {
            let mut direct = split_blocks(params, self.layout.blocks());
            let average: &[f32] = match served {
                Some(b) if in_place => &*std::mem::take::<&mut [f32]>(&mut direct[b]),
                _ => &self.average,
            };
            let sends: Vec<Outgoing> = replies
                .iter()
                .filter_map(|(w, _)| {
                    let b = served?;
                    Some(Outgoing {
                        to: *w,
                        tag: self.layout.tag(step, Direction::Down, b),
                        data: average,
                        framing: None,
                    })
                })
                .collect();
            let mut recvs = Vec::with_capacity(expected.len());
            let mut staged = split_blocks(&mut self.partial, self.layout.blocks());
            for (b, m) in &expected {
                let server = self.owners[*b];
                let tag = self.layout.tag(step, Direction::Down, *b);
                // Whole block arrived: receive straight into the replica; else stage it.
                let buf = if m.iter().all(|&x| x) {
                    std::mem::take(&mut direct[*b])
                } else {
                    std::mem::take(&mut staged[*b])
                };
                recvs.push(Incoming {
                    from: server,
                    tag,
                    buf,
                });
            }
            t.exchange(&sends, &mut recvs)?;
        }
        for (b, m) in &expected {
            self.down_links.received[self.owners[*b]] += 1;
            counts.packets_received_down += m.iter().filter(|&&x| x).count() as u64;
            if !m.iter().all(|&x| x) {
                self.merge_staged(params, *b, m);
            }
        }
        counts.received_down += expected.len() as u64;
        if !in_place {
            self.finish_served(params, served);
        }
        self.mask = mask;
        Ok(counts)
    }

    /// Uplink decisions of worker `me`: counts every message and returns the ones to
    /// post as (server, block, packet mask).
    fn uplink_decisions(
        &mut self,
        step: u64,
        me: usize,
        counts: &mut StepCounters,
    ) -> Vec<(usize, usize, Vec<bool>)> {
        let mut out = Vec::new();
        if !self.layout.is_worker(me) {
            return out;
        }
        let mut mask = Vec::new();
        for (b, &server) in self.owners.iter().enumerate() {
            if server == me {
                continue; // a co-located server's own block never crosses the network
            }
            self.decide(
                Self::id(step, Direction::Up, me, server, b),
                None,
                &mut mask,
            );
            let delivered = mask.iter().filter(|&&m| m).count();
            counts.packets_up += mask.len() as u64;
            counts.packets_dropped_up += (mask.len() - delivered) as u64;
            if delivered == 0 {
                counts.dropped_up += 1;
                self.up_links.dropped[server] += 1;
            } else {
                counts.sent_up += 1;
                self.up_links.sent[server] += 1;
                counts.bytes_sent +=
                    4 * self.delivered_elems(&mask, self.layout.block(b).len()) as u64;
                out.push((server, b, mask.clone()));
            }
        }
        out
    }

    /// Sets `self.available` for block `b`, and the average of the first `received`
    /// copies in the inbox (and this rank's own copy when co-located), packet by packet:
    /// into `self.average`, or with `in_place` (co-located only) over this rank's own
    /// copy in `params`.
    fn average_served(&mut self, b: usize, params: &mut [f32], received: usize, in_place: bool) {
        let colocated = self.layout.mode() == Mode::Colocated;
        debug_assert!(
            colocated || !in_place,
            "only a co-located server has a replica"
        );
        let range = self.layout.block(b);
        let len = range.len();
        let n = self.packets(len);
        if !in_place {
            // Every element is written below, so the old contents need no clearing.
            self.average.resize(len, 0.0);
        }
        self.available.clear();
        self.available.resize(n, false);
        let mut copies: Vec<&[f32]> = Vec::with_capacity(received);
        for k in 0..n {
            let pr = self.packet_range(k, len);
            copies.clear();
            for (i, copy) in self.inbox.chunks(len.max(1)).take(received).enumerate() {
                if self.inbox_masks[i][k] {
                    copies.push(&copy[pr.clone()]);
                }
            }
            let count = copies.len() + usize::from(colocated);
            let scale = (count > 0).then(|| 1.0 / count as f32);
            let own = range.start + pr.start..range.start + pr.end;
            match (in_place, colocated) {
                (true, _) => average_into(&mut params[own], Start::Kept, &copies, scale),
                (false, true) => {
                    let first = Start::Copy(&params[own]);
                    average_into(&mut self.average[pr], first, &copies, scale);
                }
                (false, false) => {
                    average_into(&mut self.average[pr], Start::Zero, &copies, scale);
                }
            }
            self.available[k] = count > 0;
        }
    }

    /// Downlink decisions of the server of `served`: counts every reply and returns the
    /// ones to post as (worker, packet mask). A server with nothing sends nothing.
    fn downlink_decisions(
        &mut self,
        step: u64,
        me: usize,
        served: Option<usize>,
        counts: &mut StepCounters,
    ) -> Vec<(usize, Vec<bool>)> {
        let mut out = Vec::new();
        let Some(b) = served else {
            return out;
        };
        let attempted = self.available.iter().filter(|&&a| a).count();
        if attempted == 0 {
            return out;
        }
        let mut mask = Vec::new();
        for w in self.layout.workers().filter(|&w| w != me) {
            self.decide(
                Self::id(step, Direction::Down, me, w, b),
                Some(&self.available),
                &mut mask,
            );
            let delivered = mask.iter().filter(|&&m| m).count();
            counts.packets_down += attempted as u64;
            counts.packets_dropped_down += (attempted - delivered) as u64;
            if delivered == 0 {
                counts.dropped_down += 1;
                self.down_links.dropped[w] += 1;
            } else {
                counts.sent_down += 1;
                self.down_links.sent[w] += 1;
                counts.bytes_sent +=
                    4 * self.delivered_elems(&mask, self.layout.block(b).len()) as u64;
                out.push((w, mask.clone()));
            }
        }
        out
    }

    /// Copies the packets of block `b` marked in `mask` from the staging buffer.
    fn merge_staged(&self, params: &mut [f32], b: usize, mask: &[bool]) {
        let range = self.layout.block(b);
        for (k, _) in mask.iter().enumerate().filter(|(_, &x)| x) {
            let pr = self.packet_range(k, range.len());
            let (lo, hi) = (range.start + pr.start, range.start + pr.end);
            params[lo..hi].copy_from_slice(&self.partial[lo..hi]);
        }
    }

    /// A co-located server takes its own average (it never crosses the network).
    fn finish_served(&self, params: &mut [f32], served: Option<usize>) {
        if let (Some(b), Mode::Colocated) = (served, self.layout.mode()) {
            params[self.layout.block(b)].copy_from_slice(&self.average);
        }
    }

    /// Elements carried by the delivered packets of a block of `len` elements.
    fn delivered_elems(&self, mask: &[bool], len: usize) -> usize {
        mask.iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(k, _)| self.packet_range(k, len).len())
            .sum()
    }
}

/// What a sum of copies starts from.
enum Start<'a> {
    Zero,
    /// This slice (the server's own copy).
    Copy(&'a [f32]),
    /// What the output already holds (the server's own copy, in place).
    Kept,
}

/// Sets `out` to `start` + `copies[0]` + `copies[1]` + …, times `scale`: element by
/// element in exactly that order, so the result is the same bit for bit as one pass
/// over the block per term, but a cache-sized chunk at a time, so that each element of
/// the block crosses the memory bus once rather than once per pass.
fn average_into(out: &mut [f32], start: Start<'_>, copies: &[&[f32]], scale: Option<f32>) {
    /// Elements per chunk: 16 KB, which stays in L1 across the passes.
    const CHUNK: usize = 4096;
    for lo in (0..out.len()).step_by(CHUNK) {
        let hi = (lo + CHUNK).min(out.len());
        let chunk = &mut out[lo..hi];
        match start {
            Start::Zero => chunk.fill(0.0),
            Start::Copy(first) => chunk.copy_from_slice(&first[lo..hi]),
            Start::Kept => {}
        }
        for copy in copies {
            chunk
                .iter_mut()
                .zip(&copy[lo..hi])
                .for_each(|(a, &x)| *a += x);
        }
        if let Some(s) = scale {
            chunk.iter_mut().for_each(|a| *a *= s);
        }
    }
}

/// Cuts `params` into the disjoint mutable slices of the (contiguous, ordered) blocks.
/// An empty `params` (a buffer not needed this step) gives empty slices.
fn split_blocks<'a>(
    mut rest: &'a mut [f32],
    blocks: &[std::ops::Range<usize>],
) -> Vec<&'a mut [f32]> {
    blocks
        .iter()
        .map(|r| {
            let n = r.len().min(rest.len());
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            head
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::local::LocalTransport;
    use crate::drop::Bernoulli;
    use std::sync::Arc;

    const D: usize = 23;

    /// Runs `steps` exchanges on a local network; rank r starts with params r·(1..D).
    /// Returns each rank's final params and summed counts.
    fn run(
        size: usize,
        mode: Mode,
        drop: Arc<dyn DropModel>,
        steps: u64,
    ) -> Vec<(Vec<f32>, StepCounters)> {
        run_packets(size, mode, drop, steps, None)
    }

    fn run_packets(
        size: usize,
        mode: Mode,
        drop: Arc<dyn DropModel>,
        steps: u64,
        packet: Option<usize>,
    ) -> Vec<(Vec<f32>, StepCounters)> {
        let handles: Vec<_> = LocalTransport::network(size)
            .into_iter()
            .map(|t| {
                let drop = Arc::clone(&drop);
                std::thread::spawn(move || {
                    let layout = Layout::new(size, mode, D, 5).unwrap();
                    let mut ex = Exchange::new(layout, Box::new(Shared(drop)), packet);
                    let r = t.rank();
                    let mut params: Vec<f32> = (0..D).map(|i| (r * 100 + i) as f32).collect();
                    let mut total = StepCounters::default();
                    for s in 0..steps {
                        total.add(&ex.step(&t, s, &mut params).unwrap());
                    }
                    (params, total)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    struct Shared(Arc<dyn DropModel>);
    impl DropModel for Shared {
        fn drops(&self, m: &MessageId) -> bool {
            self.0.drops(m)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    fn initial(r: usize) -> Vec<f32> {
        (0..D).map(|i| (r * 100 + i) as f32).collect()
    }

    fn mean_of(ranks: std::ops::Range<usize>) -> Vec<f32> {
        let n = ranks.len() as f32;
        (0..D)
            .map(|i| ranks.clone().map(|r| initial(r)[i]).sum::<f32>() / n)
            .collect()
    }

    /// A rank keeps counters for its own links only: O(ranks), not O(ranks²) (a
    /// thousand in-process ranks held 48 MB of counters each).
    #[test]
    fn link_counters_grow_with_the_ranks_not_their_square() {
        let n = 1000;
        let layout = Layout::new(n, Mode::Colocated, 4 * n, 5).unwrap();
        let ex = Exchange::new(layout, Box::new(Bernoulli::new(1, 0.1)), None);
        assert_eq!(ex.link_state().len(), 6 * n);
    }

    #[test]
    fn dedicated_without_drops_is_exact_averaging() {
        let out = run(
            5,
            Mode::Dedicated { servers: 2 },
            Arc::new(Bernoulli::new(1, 0.0)),
            1,
        );
        let mean = mean_of(2..5);
        for (params, c) in &out[2..] {
            assert_eq!(params, &mean);
            assert_eq!((c.sent_up, c.dropped_up), (2, 0));
        }
        // Each server sends its block to all three workers.
        assert_eq!(out[0].1.sent_down + out[1].1.sent_down, 6);
    }

    #[test]
    fn colocated_without_drops_is_exact_averaging() {
        let out = run(4, Mode::Colocated, Arc::new(Bernoulli::new(1, 0.0)), 1);
        let mean = mean_of(0..4);
        for (params, c) in &out {
            for (a, b) in params.iter().zip(&mean) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            // Three of four blocks leave each rank; its own never crosses the network.
            assert_eq!(c.sent_up, 3);
            assert_eq!(c.sent_down, 3);
        }
        // Every block goes up from three ranks and comes back down to three.
        let bytes: u64 = out.iter().map(|(_, c)| c.bytes_sent).sum();
        assert_eq!(bytes, 2 * 3 * 4 * D as u64);
    }

    #[test]
    fn everything_dropped_keeps_every_replica() {
        for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
            let out = run(5, mode, Arc::new(Bernoulli::new(1, 1.0)), 3);
            for (r, (params, c)) in out.iter().enumerate() {
                assert_eq!(params, &initial(r), "{mode:?} rank {r}");
                assert_eq!(c.sent_up + c.sent_down + c.bytes_sent, 0);
            }
            let dropped_up: u64 = out.iter().map(|(_, c)| c.dropped_up).sum();
            let expected = match mode {
                Mode::Dedicated { .. } => 3 * 2 * 3, // workers × blocks × steps
                Mode::Colocated => 5 * 4 * 3,        // ranks × foreign blocks × steps
            };
            assert_eq!(dropped_up, expected, "{mode:?}");
        }
    }

    /// Drops exactly the downlink of block 0 to rank 3.
    struct DropOneReply;
    impl DropModel for DropOneReply {
        fn drops(&self, m: &MessageId) -> bool {
            m.direction == Direction::Down && m.dst == 3 && m.block == 0
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn lost_reply_keeps_own_block_and_lost_upload_is_left_out() {
        let out = run(5, Mode::Dedicated { servers: 2 }, Arc::new(DropOneReply), 1);
        let mean = mean_of(2..5);
        let block0 = 0..12; // 23 params over two blocks: 12 + 11
        assert_eq!(&out[3].0[block0.clone()], &initial(3)[block0.clone()]);
        assert_eq!(&out[3].0[12..], &mean[12..]);
        assert_eq!(out[2].0, mean);
        assert_eq!(out[0].1.dropped_down, 1);

        struct DropOneUpload;
        impl DropModel for DropOneUpload {
            fn drops(&self, m: &MessageId) -> bool {
                m.direction == Direction::Up && m.src == 4 && m.block == 1
            }
            fn describe(&self) -> String {
                "test".into()
            }
        }
        let out = run(
            5,
            Mode::Dedicated { servers: 2 },
            Arc::new(DropOneUpload),
            1,
        );
        let mean23 = mean_of(2..4);
        for (params, _) in &out[2..] {
            assert_eq!(&params[..12], &mean[..12]);
            assert_eq!(&params[12..], &mean23[12..]);
        }
    }

    #[test]
    fn random_drops_never_hang_and_counts_add_up() {
        for mode in [Mode::Dedicated { servers: 3 }, Mode::Colocated] {
            let steps = 40;
            let out = run(6, mode, Arc::new(Bernoulli::new(11, 0.3)), steps);
            let up: u64 = out.iter().map(|(_, c)| c.sent_up + c.dropped_up).sum();
            let expected = match mode {
                Mode::Dedicated { servers } => (6 - servers as u64) * servers as u64 * steps,
                Mode::Colocated => 6 * 5 * steps,
            };
            assert_eq!(up, expected, "{mode:?}");
            let dropped: u64 = out.iter().map(|(_, c)| c.dropped_up).sum();
            let rate = dropped as f64 / up as f64;
            assert!(
                (0.2..0.4).contains(&rate),
                "{mode:?}: uplink drop rate {rate}"
            );
        }
    }

    /// Drops packet 1 (elements 4..8 of block 0) of worker 4's upload, and packet 2 of
    /// the reply to worker 3.
    struct DropPackets;
    impl DropModel for DropPackets {
        fn drops(&self, m: &MessageId) -> bool {
            m.block == 0
                && ((m.direction == Direction::Up && m.src == 4 && m.packet == 1)
                    || (m.direction == Direction::Down && m.dst == 3 && m.packet == 2))
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn packets_are_merged_element_wise() {
        let out = run_packets(
            5,
            Mode::Dedicated { servers: 2 },
            Arc::new(DropPackets),
            1,
            Some(4),
        );
        let mean = mean_of(2..5);
        let mean23 = mean_of(2..4);
        // Worker 2 got every packet: block 0 averaged over all three copies, except
        // elements 4..8, averaged over the two copies that carried them.
        let w2 = &out[2].0;
        assert_eq!(&w2[..4], &mean[..4]);
        assert_eq!(&w2[4..8], &mean23[4..8]);
        assert_eq!(&w2[8..], &mean[8..]);
        // Worker 3 lost packet 2 (elements 8..12) of the reply: keeps its own values there.
        let w3 = &out[3].0;
        assert_eq!(&w3[..8], &w2[..8]);
        assert_eq!(&w3[8..12], &initial(3)[8..12]);
        assert_eq!(&w3[12..], &w2[12..]);
        // Block 0 has 12 elements = 3 packets; block 1 has 11 = 3 packets.
        assert_eq!(out[4].1.packets_up, 6);
        assert_eq!(out[4].1.packets_dropped_up, 1);
        assert_eq!(out[4].1.sent_up, 2);
        assert_eq!(out[4].1.bytes_sent, 4 * (23 - 4));
        assert_eq!(out[0].1.packets_dropped_down, 1);
        assert_eq!(out[0].1.dropped_down, 0);
    }

    #[test]
    fn packets_without_drops_equal_whole_blocks() {
        for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
            let whole = run(5, mode, Arc::new(Bernoulli::new(1, 0.0)), 2);
            let packets = run_packets(5, mode, Arc::new(Bernoulli::new(1, 0.0)), 2, Some(3));
            for (a, b) in whole.iter().zip(&packets) {
                assert_eq!(a.0, b.0, "{mode:?}");
            }
        }
    }

    #[test]
    fn recorded_trace_replays_exactly() {
        for (mode, packet) in [
            (Mode::Dedicated { servers: 2 }, Some(5)),
            (Mode::Colocated, None),
        ] {
            let model: Arc<dyn DropModel> = Arc::new(Bernoulli::new(21, 0.3));
            let original = run_packets(5, mode, Arc::clone(&model), 8, packet);
            let layout = Layout::new(5, mode, D, 5).unwrap();
            let mut recorder = Exchange::new(layout, Box::new(Shared(model)), packet);
            let mut rows = Vec::new();
            for s in 0..8 {
                recorder.trace_step(s, &mut rows);
            }
            assert!(!rows.is_empty());
            let replay: Arc<dyn DropModel> =
                Arc::new(crate::drop::Replay::from_records("t".into(), rows));
            let replayed = run_packets(5, mode, replay, 8, packet);
            for (a, b) in original.iter().zip(&replayed) {
                assert_eq!(a, b, "{mode:?}");
            }
        }
    }

    /// Deadline detection over `transport` ("local" or "udp" on loopback): with a
    /// generous deadline it must reproduce the oracle exchange exactly.
    fn run_deadline(
        size: usize,
        mode: Mode,
        drop: Arc<dyn DropModel>,
        steps: u64,
        packet: Option<usize>,
        udp: bool,
    ) -> Vec<(Vec<f32>, StepCounters)> {
        let handles: Vec<_> = LocalTransport::network(size)
            .into_iter()
            .map(|local| {
                let drop = Arc::clone(&drop);
                std::thread::spawn(move || {
                    let layout = Layout::new(size, mode, D, 5).unwrap();
                    let mut ex = Exchange::new(layout, Box::new(Shared(drop)), packet)
                        .with_deadline(std::time::Duration::from_secs(2));
                    let opts = crate::comm::udp::UdpOptions {
                        subnet: Some("127.0.0.0/8".parse().unwrap()),
                        port_base: None,
                        ..Default::default()
                    };
                    let udp = udp
                        .then(|| crate::comm::udp::UdpTransport::connect(&local, &opts).unwrap());
                    let t: &dyn Transport = match &udp {
                        Some(u) => u,
                        None => &local,
                    };
                    let r = t.rank();
                    let mut params: Vec<f32> = (0..D).map(|i| (r * 100 + i) as f32).collect();
                    let mut total = StepCounters::default();
                    for s in 0..steps {
                        total.add(&ex.step(t, s, &mut params).unwrap());
                    }
                    total.late += ex.quiesce(t);
                    (params, total)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Drops packets at random but never the first of a message, so no message is lost
    /// whole and no deadline ever passes.
    struct KeepFirst(Bernoulli);
    impl DropModel for KeepFirst {
        fn drops(&self, m: &MessageId) -> bool {
            m.packet > 0 && self.0.drops(m)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    #[test]
    fn deadline_detection_reproduces_the_oracle_locally_and_over_udp() {
        for mode in [Mode::Dedicated { servers: 2 }, Mode::Colocated] {
            let drop: Arc<dyn DropModel> = Arc::new(KeepFirst(Bernoulli::new(9, 0.3)));
            let oracle = run_packets(4, mode, Arc::clone(&drop), 4, Some(2));
            for udp in [false, true] {
                let out = run_deadline(4, mode, Arc::clone(&drop), 4, Some(2), udp);
                for (r, ((p, c), (q, d))) in out.iter().zip(&oracle).enumerate() {
                    assert_eq!(p, q, "{mode:?} udp={udp} rank {r}");
                    assert_eq!(
                        c.packets_received_up, d.packets_received_up,
                        "{mode:?} udp={udp} rank {r}: {c:?} vs {d:?}"
                    );
                    assert_eq!(c.packets_received_down, d.packets_received_down);
                    assert_eq!((c.late, c.rejected), (0, 0), "{mode:?} udp={udp}");
                }
                let sent: u64 = out
                    .iter()
                    .map(|(_, c)| c.packets_up - c.packets_dropped_up)
                    .sum();
                let received: u64 = out.iter().map(|(_, c)| c.packets_received_up).sum();
                assert_eq!(sent, received, "{mode:?} udp={udp}");
            }
        }
    }

    #[test]
    fn random_packet_drops_never_hang() {
        for mode in [Mode::Dedicated { servers: 3 }, Mode::Colocated] {
            let out = run_packets(6, mode, Arc::new(Bernoulli::new(5, 0.5)), 30, Some(2));
            let packets: u64 = out.iter().map(|(_, c)| c.packets_up).sum();
            let dropped: u64 = out.iter().map(|(_, c)| c.packets_dropped_up).sum();
            let rate = dropped as f64 / packets as f64;
            assert!((0.4..0.6).contains(&rate), "{mode:?}: {rate}");
        }
    }
}
