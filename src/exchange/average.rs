//! The server's average and the worker's merge (phases 2 and 4 of [`Exchange::step`]):
//! per packet, over the copies that have it, in a fixed order, a cache-sized chunk at a
//! time.

use super::Exchange;
use crate::exchange::layout::Mode;

impl Exchange {
    /// Sets `self.available` for block `b`, and the average of the first `received`
    /// copies in the inbox (and this rank's own copy when co-located), packet by packet:
    /// into `self.average`, or with `in_place` (co-located only) over this rank's own
    /// copy in `params`.
    pub(super) fn average_served(
        &mut self,
        b: usize,
        params: &mut [f32],
        received: usize,
        in_place: bool,
    ) {
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

    /// Copies the packets of block `b` marked in `mask` from the staging buffer.
    pub(super) fn merge_staged(&self, params: &mut [f32], b: usize, mask: &[bool]) {
        let range = self.layout.block(b);
        for (k, _) in mask.iter().enumerate().filter(|(_, &x)| x) {
            let pr = self.packet_range(k, range.len());
            let (lo, hi) = (range.start + pr.start, range.start + pr.end);
            params[lo..hi].copy_from_slice(&self.partial[lo..hi]);
        }
    }

    /// A co-located server takes its own average (it never crosses the network).
    pub(super) fn finish_served(&self, params: &mut [f32], served: Option<usize>) {
        if let (Some(b), Mode::Colocated) = (served, self.layout.mode()) {
            params[self.layout.block(b)].copy_from_slice(&self.average);
        }
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
