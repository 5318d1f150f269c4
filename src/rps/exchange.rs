//! One RPS exchange (steps 2–5 of the algorithm) for one rank, over any transport.
//!
//! Invariants: a dropped message is never posted; a receiver posts a receive exactly
//! for the messages that its peer will send (both evaluate the same pure drop model:
//! oracle detection), so nothing ever waits for a message that will not come. A worker
//! whose averaged block was lost keeps its own locally updated block.

use crate::comm::{CommError, Incoming, Outgoing, Transport};
use crate::drop::{Direction, DropModel, MessageId};

use super::{Layout, Mode};

/// Message counts of one rank for one step (this rank as sender).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Uplink messages posted.
    pub sent_up: u64,
    /// Uplink messages the drop model discarded (never posted).
    pub dropped_up: u64,
    pub sent_down: u64,
    pub dropped_down: u64,
    /// Payload bytes of all posted messages.
    pub bytes_sent: u64,
}

/// Per-rank state of the exchange: reusable buffers and the drop model.
pub struct Exchange {
    layout: Layout,
    drop: Box<dyn DropModel>,
    /// Owner rank of each block at the current step.
    owners: Vec<usize>,
    /// Server side: one slot of the largest block per possible sender.
    inbox: Vec<f32>,
    /// Server side: the averaged block.
    average: Vec<f32>,
}

impl Exchange {
    pub fn new(layout: Layout, drop: Box<dyn DropModel>) -> Self {
        Exchange {
            layout,
            drop,
            owners: Vec::new(),
            inbox: Vec::new(),
            average: Vec::new(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn drop_model(&self) -> &dyn DropModel {
        self.drop.as_ref()
    }

    fn dropped(
        &self,
        step: u64,
        direction: Direction,
        src: usize,
        dst: usize,
        block: usize,
    ) -> bool {
        self.drop.drops(&MessageId {
            step,
            direction,
            src,
            dst,
            block,
        })
    }

    /// Whether the server of `block` receives at least one copy at `step` (so it sends a
    /// reply). In co-located mode the server always has its own copy.
    fn server_has_copy(&self, step: u64, block: usize) -> bool {
        let server = self.owners[block];
        self.layout.mode() == Mode::Colocated
            || self
                .layout
                .workers()
                .any(|w| !self.dropped(step, Direction::Up, w, server, block))
    }

    /// Runs the exchange of `step` for rank `t.rank()`.
    ///
    /// `params` is this rank's replica: on entry the locally updated v_i, on return x_i
    /// (blocks whose average arrived replaced by it). A pure server (dedicated mode)
    /// holds no replica and passes an empty slice.
    ///
    /// # Errors
    /// Only on a transport failure (a message of the wrong length).
    pub fn step<T: Transport + ?Sized>(
        &mut self,
        t: &T,
        step: u64,
        params: &mut [f32],
    ) -> Result<StepCounts, CommError> {
        let me = t.rank();
        let mut owners = std::mem::take(&mut self.owners);
        self.layout.owners_into(step, &mut owners);
        self.owners = owners;
        let mut counts = StepCounts::default();
        let colocated = self.layout.mode() == Mode::Colocated;
        // The block this rank serves this step, if any.
        let served = self.owners.iter().position(|&s| s == me);

        // ---- Phase 1: uplink. Workers send their blocks, servers collect copies. ----
        let mut sends = Vec::new();
        if self.layout.is_worker(me) {
            for (b, &server) in self.owners.iter().enumerate() {
                if server == me {
                    continue; // a co-located server's own block never crosses the network
                }
                if self.dropped(step, Direction::Up, me, server, b) {
                    counts.dropped_up += 1;
                } else {
                    let data = &params[self.layout.block(b)];
                    counts.sent_up += 1;
                    counts.bytes_sent += (data.len() * 4) as u64;
                    sends.push(Outgoing {
                        to: server,
                        tag: self.layout.tag(step, Direction::Up, b),
                        data,
                    });
                }
            }
        }
        let mut received = 0usize;
        if let Some(b) = served {
            let len = self.layout.block(b).len();
            let senders: Vec<usize> = self
                .layout
                .workers()
                .filter(|&w| w != me && !self.dropped(step, Direction::Up, w, me, b))
                .collect();
            received = senders.len();
            self.inbox.resize(received * len, 0.0);
            let tag = self.layout.tag(step, Direction::Up, b);
            let mut recvs: Vec<Incoming> = senders
                .iter()
                .zip(self.inbox.chunks_mut(len.max(1)))
                .map(|(&from, buf)| Incoming { from, tag, buf })
                .collect();
            t.exchange(&sends, &mut recvs)?;
        } else {
            t.exchange(&sends, &mut [])?;
        }
        drop(sends);

        // ---- Server: average what arrived (plus its own copy when co-located). ----
        let mut has_average = false;
        if let Some(b) = served {
            let range = self.layout.block(b);
            let len = range.len();
            let own = colocated.then(|| &params[range.clone()]);
            let copies = received + usize::from(own.is_some());
            if copies > 0 {
                self.average.clear();
                match own {
                    Some(own) => self.average.extend_from_slice(own),
                    None => self.average.resize(len, 0.0),
                }
                for copy in self.inbox.chunks(len.max(1)).take(received) {
                    for (a, &x) in self.average.iter_mut().zip(copy) {
                        *a += x;
                    }
                }
                let scale = 1.0 / copies as f32;
                self.average.iter_mut().for_each(|a| *a *= scale);
                has_average = true;
            }
        }

        // ---- Phase 2: downlink. Servers send averages, workers receive into params. ----
        let mut sends = Vec::new();
        if let (Some(b), true) = (served, has_average) {
            let tag = self.layout.tag(step, Direction::Down, b);
            for w in self.layout.workers().filter(|&w| w != me) {
                if self.dropped(step, Direction::Down, me, w, b) {
                    counts.dropped_down += 1;
                } else {
                    counts.sent_down += 1;
                    counts.bytes_sent += (self.average.len() * 4) as u64;
                    sends.push(Outgoing {
                        to: w,
                        tag,
                        data: &self.average,
                    });
                }
            }
        }
        let mut recvs = Vec::new();
        if self.layout.is_worker(me) {
            for (b, buf) in split_blocks(params, self.layout.blocks())
                .into_iter()
                .enumerate()
            {
                let server = self.owners[b];
                if server == me
                    || !self.server_has_copy(step, b)
                    || self.dropped(step, Direction::Down, server, me, b)
                {
                    continue; // keep this rank's own block
                }
                let tag = self.layout.tag(step, Direction::Down, b);
                recvs.push(Incoming {
                    from: server,
                    tag,
                    buf,
                });
            }
        }
        t.exchange(&sends, &mut recvs)?;
        drop(recvs);
        drop(sends);

        if let (Some(b), true, true) = (served, has_average, colocated) {
            params[self.layout.block(b)].copy_from_slice(&self.average);
        }
        Ok(counts)
    }
}

/// Cuts `params` into the disjoint mutable slices of the (contiguous, ordered) blocks.
fn split_blocks<'a>(
    mut rest: &'a mut [f32],
    blocks: &[std::ops::Range<usize>],
) -> Vec<&'a mut [f32]> {
    blocks
        .iter()
        .map(|r| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len());
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
    ) -> Vec<(Vec<f32>, StepCounts)> {
        let handles: Vec<_> = LocalTransport::network(size)
            .into_iter()
            .map(|t| {
                let drop = Arc::clone(&drop);
                std::thread::spawn(move || {
                    let layout = Layout::new(size, mode, D, 5).unwrap();
                    let mut ex = Exchange::new(layout, Box::new(Shared(drop)));
                    let r = t.rank();
                    let mut params: Vec<f32> = (0..D).map(|i| (r * 100 + i) as f32).collect();
                    let mut total = StepCounts::default();
                    for s in 0..steps {
                        let c = ex.step(&t, s, &mut params).unwrap();
                        total.sent_up += c.sent_up;
                        total.dropped_up += c.dropped_up;
                        total.sent_down += c.sent_down;
                        total.dropped_down += c.dropped_down;
                        total.bytes_sent += c.bytes_sent;
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
}
