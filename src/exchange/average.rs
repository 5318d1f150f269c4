//! The server's average and the worker's merge (phases 2 and 4 of [`Exchange::step`]):
//! per packet, over the copies that have it, in a fixed order, a cache-sized chunk at a
//! time.

use std::ops::Range;

use super::Exchange;
use crate::exchange::layout::Mode;

/// Where a server writes its average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// `Exchange::average`, sized by the caller; the server's own copy (co-located) is
    /// read from `params`.
    Buffer,
    /// Over the co-located server's own copy in `params`.
    Replica,
    /// Over the first copy in the inbox (dedicated server; at least one copy).
    Inbox,
}

impl Exchange {
    /// Sets `self.available` for block `b`, and the average of the first `received`
    /// copies in the inbox (and this rank's own copy when co-located), packet by packet,
    /// into `self.average`.
    pub(super) fn average_served(&mut self, b: usize, params: &mut [f32], received: usize) {
        let len = self.layout.block(b).len();
        // Every element is written below, so the old contents need no clearing.
        self.average.resize(len, 0.0);
        self.set_available(b, received);
        self.average_part(b, params, received, Target::Buffer, 0..len);
    }

    /// Sets `self.available` for block `b`: which of its packets the first `received`
    /// copies in the inbox (or this rank's own copy, when co-located) give a value.
    pub(super) fn set_available(&mut self, b: usize, received: usize) {
        let n = self.packets(self.layout.block(b).len());
        let colocated = self.layout.mode() == Mode::Colocated;
        self.available.clear();
        self.available
            .extend((0..n).map(|k| colocated || self.inbox_masks[..received].iter().any(|m| m[k])));
    }

    /// The average of elements `part` of block `b` over the first `received` copies in
    /// the inbox that have each packet (and this rank's own copy, when co-located),
    /// written to `target`. Element-wise, and every target sums the same terms in the
    /// same order, so averaging a block in parts, or in place, gives the same bits as
    /// into a buffer at once.
    pub(super) fn average_part(
        &mut self,
        b: usize,
        params: &mut [f32],
        received: usize,
        target: Target,
        part: Range<usize>,
    ) {
        let colocated = self.layout.mode() == Mode::Colocated;
        debug_assert!(
            colocated == (target == Target::Replica) || target == Target::Buffer,
            "only a co-located server has a replica; only a dedicated one averages in its inbox"
        );
        let range = self.layout.block(b);
        let len = range.len();
        let packets = self.packets(len);
        let first = part.start / self.packet_elems.max(1);
        let ranges: Vec<Range<usize>> = (first..packets)
            .map(|k| self.packet_range(k, len))
            .collect();
        // With `Target::Inbox` the first copy is the output, the others are read.
        let skip = usize::from(target == Target::Inbox);
        let split = (skip * len).min(self.inbox.len());
        let (head, others) = self.inbox.split_at_mut(split);
        let mut copies: Vec<&[f32]> = Vec::with_capacity(received);
        for (k, whole) in (first..packets).zip(ranges) {
            let pr = whole.start.max(part.start)..whole.end.min(part.end);
            if pr.start >= pr.end {
                break;
            }
            copies.clear();
            for (i, copy) in others.chunks(len.max(1)).take(received - skip).enumerate() {
                if self.inbox_masks[i + skip][k] {
                    copies.push(&copy[pr.clone()]);
                }
            }
            let own = range.start + pr.start..range.start + pr.end;
            let (out, start, count) = match target {
                Target::Replica => (&mut params[own], Start::Kept, copies.len() + 1),
                Target::Buffer if colocated => {
                    let start = Start::Copy(&params[own]);
                    (&mut self.average[pr], start, copies.len() + 1)
                }
                Target::Buffer => (&mut self.average[pr], Start::Zero, copies.len()),
                Target::Inbox if self.inbox_masks[0][k] => {
                    (&mut head[pr], Start::ZeroKept, copies.len() + 1)
                }
                Target::Inbox => (&mut head[pr], Start::Zero, copies.len()),
            };
            let scale = (count > 0).then(|| 1.0 / count as f32);
            average_into(out, start, &copies, scale);
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
    /// 0, plus what the output already holds (the first copy, averaged in place).
    ZeroKept,
}

/// Sets `out` to `start` + `copies[0]` + `copies[1]` + …, times `scale`: element by
/// element in exactly that order, so the result is the same bit for bit as one pass
/// over the block per term, but a cache-sized chunk at a time, so that each element of
/// the block crosses the memory bus once rather than once per pass; and the start is
/// fused into the first addition and the scale into the last, so that a server with
/// one copy to average makes one pass (the floating-point operations per element are
/// the same: `0 + x` is not `x` for x = −0).
fn average_into(out: &mut [f32], start: Start<'_>, copies: &[&[f32]], scale: Option<f32>) {
    /// Elements per chunk: 16 KB, which stays in L1 across the passes.
    const CHUNK: usize = 4096;
    for lo in (0..out.len()).step_by(CHUNK) {
        let hi = (lo + CHUNK).min(out.len());
        let chunk = &mut out[lo..hi];
        let Some((last, rest)) = copies.split_last() else {
            match start {
                Start::Zero => chunk.fill(0.0),
                Start::Copy(first) => chunk.copy_from_slice(&first[lo..hi]),
                Start::Kept => {}
                Start::ZeroKept => {
                    // A dedicated server with one copy: one pass (the copy counts, so
                    // there is a scale; × 1 would be exact anyway).
                    zero_scale_pass(chunk, scale.unwrap_or(1.0));
                    continue;
                }
            }
            if let Some(s) = scale {
                chunk.iter_mut().for_each(|a| *a *= s);
            }
            continue;
        };
        let mut acc = match start {
            Start::Zero => Acc::Zero,
            Start::Copy(first) => Acc::From(&first[lo..hi]),
            Start::Kept => Acc::Out,
            Start::ZeroKept => Acc::ZeroOut,
        };
        for copy in rest {
            add_pass(chunk, acc, &copy[lo..hi], None);
            acc = Acc::Out;
        }
        add_pass(chunk, acc, &last[lo..hi], scale);
    }
}

/// The running sum an addition pass starts from, per element.
#[derive(Clone, Copy)]
enum Acc<'a> {
    /// 0 (the start of a dedicated server's sum).
    Zero,
    /// This slice.
    From(&'a [f32]),
    /// What `out` holds.
    Out,
    /// 0 plus what `out` holds.
    ZeroOut,
}

/// `out[i] = (acc[i] + x[i])`, times `scale` if given: one pass, one loop per case so
/// that each vectorises; with AVX2 where the CPU has it (the same additions and
/// multiplications, each exactly rounded, so the same bits at any vector width).
fn add_pass(out: &mut [f32], acc: Acc<'_>, x: &[f32], scale: Option<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, just checked.
        unsafe { add_pass_avx2(out, acc, x, scale) };
        return;
    }
    add_pass_any(out, acc, x, scale);
}

/// [`add_pass_any`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_pass_avx2(out: &mut [f32], acc: Acc<'_>, x: &[f32], scale: Option<f32>) {
    add_pass_any(out, acc, x, scale);
}

/// `out[i] = (0 + out[i]) · scale` (see [`add_pass`]).
fn zero_scale_pass(out: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, just checked.
        unsafe { zero_scale_pass_avx2(out, scale) };
        return;
    }
    zero_scale_pass_any(out, scale);
}

/// [`zero_scale_pass_any`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn zero_scale_pass_avx2(out: &mut [f32], scale: f32) {
    zero_scale_pass_any(out, scale);
}

/// The body of [`zero_scale_pass`].
#[inline(always)]
fn zero_scale_pass_any(out: &mut [f32], scale: f32) {
    out.iter_mut().for_each(|a| *a = (0.0 + *a) * scale);
}

/// The body of [`add_pass`], inlined into each instruction-set version.
#[inline(always)]
fn add_pass_any(out: &mut [f32], acc: Acc<'_>, x: &[f32], scale: Option<f32>) {
    match (acc, scale) {
        (Acc::Zero, None) => out.iter_mut().zip(x).for_each(|(o, &b)| *o = 0.0 + b),
        (Acc::Zero, Some(s)) => out.iter_mut().zip(x).for_each(|(o, &b)| *o = (0.0 + b) * s),
        (Acc::From(a), None) => out
            .iter_mut()
            .zip(a.iter().zip(x))
            .for_each(|(o, (&a, &b))| *o = a + b),
        (Acc::From(a), Some(s)) => out
            .iter_mut()
            .zip(a.iter().zip(x))
            .for_each(|(o, (&a, &b))| *o = (a + b) * s),
        (Acc::Out, None) => out.iter_mut().zip(x).for_each(|(o, &b)| *o += b),
        (Acc::Out, Some(s)) => out.iter_mut().zip(x).for_each(|(o, &b)| *o = (*o + b) * s),
        (Acc::ZeroOut, None) => out
            .iter_mut()
            .zip(x)
            .for_each(|(o, &b)| *o = (0.0 + *o) + b),
        (Acc::ZeroOut, Some(s)) => out
            .iter_mut()
            .zip(x)
            .for_each(|(o, &b)| *o = ((0.0 + *o) + b) * s),
    }
}
