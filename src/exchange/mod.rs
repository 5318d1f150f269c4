//! The Robust Parameter Server algorithm: roles, blocks and the per-step exchange.
//!
//! [`Layout`] says which ranks are workers and servers and how the flat parameter vector
//! is cut into blocks ([`layout`]); [`Exchange`] runs steps 2–5 of RPS for one rank over
//! any [`crate::comm::Transport`], as four phases: uplink, average, downlink, merge
//! ([`Exchange::step`]).
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

use crate::comm::{CommError, Transport};
use crate::counters::StepCounters;
use crate::drop::{trace, Direction, DropModel, MessageId, TraceRecord};

mod average;
mod deadline;
mod decisions;
pub mod layout;
mod pipeline;

pub use deadline::Deadline;
pub use layout::{Layout, LayoutError, Mode};

/// Most chunks per message: every stage is a round trip among the ranks of a step, which
/// costs most where ranks share cores.
pub const MAX_CHUNKS: usize = 8;

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
    /// Elements per chunk of the pipelined exchange (`pipeline.rs`), before the cap;
    /// `usize::MAX` (the default): one chunk, the phases one after the other.
    chunk_elems: usize,
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
            chunk_elems: usize::MAX,
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
        self.deadline = Some(Deadline::new(timeout, self.packet_elems));
        self
    }

    /// Cuts messages into chunks of `elems` elements (at most [`MAX_CHUNKS`]) that
    /// travel pipelined (`--chunk-bytes`; by default a message is one chunk). The result
    /// is the same for every value, but every rank must use the same one (the stages of
    /// a step pair up across ranks).
    ///
    /// Not the default because it is not faster everywhere (docs/results/exchange-cost.md,
    /// 2026-12-07): on one 2-core host, chunks of 1 MiB made a 10^7-byte exchange with one
    /// server and one worker 0.76× of the all-reduce instead of 1.19×, and 64 KiB chunks
    /// made 10^6-byte exchanges up to 1.6× slower; over MPI/TCP between the testbed's
    /// namespaces (3 co-located ranks, the reference CNN, 3 chunks) 1 MiB chunks made
    /// training steps 23–25 % slower; the quickstart's steps did not change.
    pub fn with_chunk_elems(mut self, elems: usize) -> Self {
        self.chunk_elems = elems.max(1);
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

    /// Appends to `out` every drop decision of `step` that dropped something, for all
    /// links (not only this rank's): the content of a drop trace.
    pub fn trace_step(&mut self, step: u64, out: &mut Vec<TraceRecord>) {
        let mut owners = std::mem::take(&mut self.owners);
        self.layout.owners_into(step, &mut owners);
        self.owners = owners;
        let (mut avail, mut mask) = (Vec::new(), Vec::new());
        for (b, &server) in self.owners.iter().enumerate() {
            for w in self.layout.workers().filter(|&w| w != server) {
                let id = MessageId::new(step, Direction::Up, w, server, b);
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
                let id = MessageId::new(step, Direction::Down, server, w, b);
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

    /// Runs the exchange of `step` for rank `t.rank()`: the paper's steps 2–5 as four
    /// phases.
    ///
    /// 1. **uplink**: workers send their blocks; each server collects the copies that
    ///    the drop model lets through;
    /// 2. **average**: each server averages, per packet, the copies that have it (plus
    ///    its own);
    /// 3. **downlink**: servers send the average back; workers receive what survives;
    /// 4. **merge**: workers take what arrived and keep their own values elsewhere.
    ///
    /// With oracle detection the first three run in `pipeline.rs`: one after the other by
    /// default, or pipelined chunk by chunk with [`Exchange::with_chunk_elems`] (the
    /// average of one chunk goes down while the next comes up); with
    /// deadline detection one after the other, each bounded by its deadline
    /// (`deadline.rs`).
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
        self.step_pipelined(t, step, params, served, &mut counts)?;
        Ok(counts)
    }

    /// Phase 4: a worker merges the staged packets of each partly arrived block into
    /// its replica (whole blocks are already there) and counts what arrived.
    fn merge(
        &mut self,
        params: &mut [f32],
        expected: &[(usize, Vec<bool>)],
        counts: &mut StepCounters,
    ) {
        for (b, m) in expected {
            self.down_links.received[self.owners[*b]] += 1;
            counts.packets_received_down += m.iter().filter(|&&x| x).count() as u64;
            if !m.iter().all(|&x| x) {
                self.merge_staged(params, *b, m);
            }
        }
        counts.received_down += expected.len() as u64;
    }
}

#[cfg(test)]
mod tests;
