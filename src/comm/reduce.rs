//! The one summation order of every reliable reduction, on every transport.
//!
//! Element `i` of a sum over ranks is `(((v₀ᵢ + v₁ᵢ) + v₂ᵢ) + …) + vₙ₋₁ᵢ`: rank order,
//! left to right, whatever the transport, the MPI library, the number of ranks or the
//! buffer's size. MPI's own `MPI_Allreduce` adds in an order of the library's choosing
//! (by algorithm, message size and n), which made mpirun and in-process runs differ in
//! the last bit; so no transport calls it for training. The MPI transport moves data
//! with point-to-point messages (a reduce-scatter, then an all-gather of the reduced
//! chunks) and adds with [`sum_in_rank_order`]; the in-process one adds the same way.

use std::ops::{Add, Range};

/// A number a reduction adds: f32 (models) or f64 (statistics, counters).
pub trait Summand: Copy + Default + Add<Output = Self> + Send + Sync + 'static {}
impl Summand for f32 {}
impl Summand for f64 {}

/// Contributions at most this many bytes are gathered whole by every rank and added
/// there (one round of messages); larger ones are reduce-scattered (two rounds, each
/// rank sending and receiving about the buffer once). Speed only: both add in rank order.
pub const GATHER_WHOLE_BYTES: usize = 16 * 1024;

/// `out[i] = ((parts[0][i] + parts[1][i]) + …)`, in the order `parts` yields them (rank
/// order). Every part has `out.len()` elements; with no parts, `out` is left alone.
pub fn sum_in_rank_order<'a, T: Summand>(mut parts: impl Iterator<Item = &'a [T]>, out: &mut [T]) {
    let Some(first) = parts.next() else {
        return;
    };
    out.copy_from_slice(first);
    for p in parts {
        debug_assert_eq!(p.len(), out.len());
        out.iter_mut().zip(p).for_each(|(o, &x)| *o = *o + x);
    }
}

/// The elements of a `len`-element buffer that rank `r` of `n` reduces in a
/// reduce-scatter: contiguous, in rank order, sizes differing by at most one.
pub fn chunk(len: usize, n: usize, r: usize) -> Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = r * base + r.min(extra);
    start..start + base + usize::from(r < extra)
}

/// Cuts `buf` into the `n` chunks of [`chunk`], in rank order.
pub fn chunks_mut<T>(mut buf: &mut [T], n: usize) -> Vec<&mut [T]> {
    let len = buf.len();
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let (head, tail) = buf.split_at_mut(chunk(len, n, r).len());
        out.push(head);
        buf = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_tile_the_buffer_in_rank_order() {
        for (len, n) in [(0, 3), (2, 5), (10, 3), (1_000_003, 7)] {
            let mut next = 0;
            for r in 0..n {
                let c = chunk(len, n, r);
                assert_eq!(c.start, next);
                assert!(c.len() == len / n || c.len() == len / n + 1);
                next = c.end;
            }
            assert_eq!(next, len);
            let mut buf = vec![0u8; len];
            let cut = chunks_mut(&mut buf, n);
            assert_eq!(cut.len(), n);
            assert_eq!(cut.iter().map(|c| c.len()).sum::<usize>(), len);
        }
    }

    /// The order is left to right: (1e8 + 1) − 1e8 is 0 in f32, and 1 in any other order
    /// that adds the two big values first.
    #[test]
    fn adds_left_to_right() {
        let parts: [&[f32]; 3] = [&[1e8], &[1.0], &[-1e8]];
        let mut out = [0f32];
        sum_in_rank_order(parts.into_iter(), &mut out);
        assert_eq!(out[0], 0.0);
        let reordered: [&[f32]; 3] = [&[1e8], &[-1e8], &[1.0]];
        sum_in_rank_order(reordered.into_iter(), &mut out);
        assert_eq!(out[0], 1.0);
    }
}
