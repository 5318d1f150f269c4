//! The engine's one matrix product, C ← α·A·B + β·C in f32 on the calling thread, with
//! a result fixed by this code rather than by the machine. Every element is
//!
//! ```text
//! t = fma(a[i][k−1], b[k−1][j], … fma(a[i][1], b[1][j], fma(a[i][0], b[0][j], 0)) …)
//! c[i][j] ← α·t + β·c[i][j]      (each product rounded, then the sum; C not read if β = 0)
//! ```
//!
//! one fused multiply-add per term, in ascending k, whatever the shapes, strides, cache
//! sizes or instruction set. The blocking below (k-blocks of `KC`, row blocks of
//! `MC`, column blocks of `NC`) only decides what sits in cache: a k-block's sums
//! are carried into the next exactly, so no constant here changes a bit of the result.
//! Kernels for AVX-512, AVX2 + FMA and portable Rust compute the same chains
//! ([`crate::simd`]), so a product is bit-identical on every CPU, and equal to the
//! scalar reference [`reference()`] (tested).
//!
//! Why not a library: `gemm` (the engine's product until issue 22) sizes its blocks, and
//! so its summation order, from the cache sizes it detects at run time, and
//! `matrixmultiply` picks different kernels on FMA and non-FMA CPUs; both gave
//! different results on different machines of the same class. The speed comparison is
//! in docs/results/gemm.md.

mod kernel;

use std::cell::RefCell;

use ndarray::{ArrayBase, ArrayView2, ArrayViewMut2, Data, DataMut, Ix2};

use crate::simd::{self, Isa};
use kernel::{tile, Lanes, Out, Portable, Strided};

/// Terms of one k-block: a tile's B panel (KC·NR floats) stays in L1 while it is
/// computed. Cache only: the sums carry over exactly between k-blocks.
const KC: usize = 256;
/// Rows of A whose k-block is reused from L2 across a column block (rounded down to a
/// multiple of MR).
const MC: usize = 96;
/// Columns of B packed at once when B is not read in place (a multiple of every NR).
const NC: usize = 1024;

/// C ← α·A·B + β·C for A (m×k), B (k×n), C (m×n) of any strides (transposed views
/// included), as defined at the top of this module. With β = 0, C is not read (it may
/// hold anything, NaN included).
///
/// # Panics
/// When the shapes do not chain: a programming error of the caller, like ndarray's
/// `general_mat_mul`.
pub fn mat_mul<S1, S2, S3>(
    alpha: f32,
    a: &ArrayBase<S1, Ix2>,
    b: &ArrayBase<S2, Ix2>,
    beta: f32,
    c: &mut ArrayBase<S3, Ix2>,
) where
    S1: Data<Elem = f32>,
    S2: Data<Elem = f32>,
    S3: DataMut<Elem = f32>,
{
    mat_mul_on(simd::isa(), alpha, a.view(), b.view(), beta, c.view_mut());
}

/// [`mat_mul`] on the kernels of a given instruction set (capped at what the CPU has).
pub fn mat_mul_on(
    isa: Isa,
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "mat_mul: ({m}×{k})·({k2}×{n}) into {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.mapv_inplace(|v| beta * v);
        }
        return;
    }
    let p = Product {
        m,
        n,
        k,
        alpha,
        beta,
        a: Mat::of(a.as_ptr(), a.strides()),
        b: Mat::of(b.as_ptr(), b.strides()),
        c: Mat::of(c.as_mut_ptr(), c.strides()),
    };
    SCRATCH.with_borrow_mut(|s| {
        // SAFETY: the three matrices are the arrays' own elements with their strides
        // (shapes checked above); C is borrowed mutably, so it overlaps neither A nor B;
        // each driver runs only where its instruction set is supported.
        unsafe { run(isa.min(Isa::detected()), &p, s) }
    });
}

/// The scalar definition of [`mat_mul`], for tests: the same chains of fused
/// multiply-adds, one element at a time. Every kernel must agree with it bit for bit.
pub fn reference(
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    let k = a.ncols();
    for ((i, j), x) in c.indexed_iter_mut() {
        let t = (0..k).fold(0f32, |t, p| a[[i, p]].mul_add(b[[p, j]], t));
        *x = if beta == 0.0 {
            alpha * t
        } else {
            alpha * t + beta * *x
        };
    }
}

/// A matrix as a pointer to element (0, 0) and row and column strides in elements.
#[derive(Clone, Copy)]
struct Mat<P> {
    ptr: P,
    rs: isize,
    cs: isize,
}

impl<P> Mat<P> {
    fn of(ptr: P, strides: &[isize]) -> Self {
        Mat {
            ptr,
            rs: strides[0],
            cs: strides[1],
        }
    }
}

impl Mat<*const f32> {
    /// # Safety
    /// (i, j) lies inside the matrix.
    #[inline(always)]
    unsafe fn at(&self, i: usize, j: usize) -> f32 {
        // SAFETY: as the caller guarantees.
        unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// One call's operands.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    a: Mat<*const f32>,
    b: Mat<*const f32>,
    c: Mat<*mut f32>,
}

/// Packing buffers and the running sums of unfinished k-blocks, kept per thread (one
/// rank is one thread) so a step allocates nothing.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    running: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs the driver compiled for `isa`, on tiles one vector wide when C is that narrow.
///
/// # Safety
/// The CPU supports `isa`; the product's matrices are valid as [`Product`] describes.
unsafe fn run(isa: Isa, p: &Product, s: &mut Scratch) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => drive_avx512(p, s),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => drive_avx2(p, s),
            _ if p.n <= 8 => drive::<Portable, 8, 1>(p, s),
            _ => drive::<Portable, 4, 2>(p, s),
        }
    }
}

/// Defines `$name`: [`drive`] compiled for the features `$features`, on vectors `$v`
/// of `$w` lanes: tiles of `$mr` rows and two vectors, or `$narrow` rows and one vector
/// when C is at most one vector wide.
macro_rules! driver {
    ($(#[$doc:meta])* $name:ident, $features:literal, $v:ident, $w:literal, $mr:literal, $narrow:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(p: &Product, s: &mut Scratch) {
            use std::arch::x86_64::$v;
            // SAFETY: forwarded from the caller.
            unsafe {
                if p.n <= $w {
                    drive::<$v, $narrow, 1>(p, s)
                } else {
                    drive::<$v, $mr, 2>(p, s)
                }
            }
        }
    };
}

driver!(
    /// [`drive`] compiled for AVX-512: 8×32 tiles, or 16×16 for narrow C.
    drive_avx512, "avx512f,avx2,fma", __m512, 16, 8, 16
);
driver!(
    /// [`drive`] compiled for AVX2 and FMA: 6×16 tiles, or 12×8 for narrow C.
    drive_avx2, "avx2,fma", __m256, 8, 6, 12
);

/// The blocked product on MR×(NV·W) tiles. A is read in place through its strides
/// (only a partial last row panel is copied, zero-padded); B is read in place where its
/// rows are contiguous, else packed into NR-column panels (as is a partial last panel);
/// the running sums are carried between k-blocks in `s.running`.
///
/// # Safety
/// As [`run`].
#[inline(always)]
unsafe fn drive<V: Lanes, const MR: usize, const NV: usize>(p: &Product, s: &mut Scratch) {
    let &Product {
        m,
        n,
        k,
        alpha,
        beta,
        a,
        b,
        c,
    } = p;
    let nr = NV * V::W;
    let mc_block = (MC / MR).max(1) * MR;
    let n_pad = n.div_ceil(nr) * nr;
    if k > KC {
        s.running.resize(m.div_ceil(MR) * MR * n_pad, 0.0);
    }
    let in_place = b.cs == 1;
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let (first, last) = (k0 == 0, k0 + kc == k);
        // A partial last row panel, zero-padded to MR rows (MR floats per k).
        let tail_rows = m % MR;
        if tail_rows != 0 {
            s.a.resize(kc * MR, 0.0);
            // SAFETY: rows m - tail_rows..m and columns k0..k0+kc lie inside A.
            unsafe { pack_a(a, m - tail_rows, tail_rows, k0, MR, &mut s.a[..kc * MR]) };
        }
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            let panels = nc.div_ceil(nr);
            // Panels from `packed_from` on are packed: all of them, or a partial last one.
            let packed_from = if in_place { nc / nr } else { 0 };
            s.b.resize((panels - packed_from) * kc * nr, 0.0);
            for q in packed_from..panels {
                let dst = &mut s.b[(q - packed_from) * kc * nr..][..kc * nr];
                // SAFETY: rows k0..k0+kc and the panel's columns lie inside B.
                unsafe { pack_b(b, k0, j0 + q * nr, nr.min(nc - q * nr), nr, dst) };
            }
            for i0 in (0..m).step_by(mc_block) {
                let rows_block = mc_block.min(m - i0);
                for q in 0..panels {
                    let j = j0 + q * nr;
                    let cols = nr.min(n - j);
                    // SAFETY (pointer arithmetic below): elements (k0, j) of B and
                    // (i, k0) of A lie inside them; packed panels and running tiles lie
                    // inside their buffers.
                    let (bp, ldb) = if q < packed_from {
                        let at = k0 as isize * b.rs + j as isize;
                        (unsafe { b.ptr.offset(at) }, b.rs)
                    } else {
                        let at = (q - packed_from) * kc * nr;
                        (unsafe { s.b.as_ptr().add(at) }, nr as isize)
                    };
                    for i in (i0..i0 + rows_block).step_by(MR) {
                        let rows = MR.min(m - i);
                        let ap = if rows == MR {
                            let at = i as isize * a.rs + k0 as isize * a.cs;
                            Strided {
                                ptr: unsafe { a.ptr.offset(at) },
                                rs: a.rs,
                                cs: a.cs,
                            }
                        } else {
                            Strided {
                                ptr: s.a.as_ptr(),
                                rs: 1,
                                cs: MR as isize,
                            }
                        };
                        let running = unsafe { s.running.as_mut_ptr().add(i * n_pad + j) };
                        let from = (!first).then_some((running.cast_const(), n_pad));
                        let out = if last {
                            let at = i as isize * c.rs + j as isize * c.cs;
                            Out::C {
                                ptr: unsafe { c.ptr.offset(at) },
                                rs: c.rs,
                                cs: c.cs,
                                rows,
                                cols,
                                alpha,
                                beta,
                            }
                        } else {
                            Out::Running {
                                ptr: running,
                                ld: n_pad,
                            }
                        };
                        // SAFETY: the CPU supports V (the caller's promise); A's rows and
                        // the B panel hold kc terms; `from` and `out` address full tiles
                        // of the running buffer (m and n padded) or the part inside C.
                        unsafe { tile::<V, MR, NV>(kc, ap, bp, ldb, from, out) };
                    }
                }
            }
        }
    }
}

/// Packs rows `i..i + rows` of A, columns `k0..k0 + dst.len()/mr`, as `mr` floats per
/// column (rows past `rows` zero).
///
/// # Safety
/// Those rows and columns lie inside A.
#[inline(always)]
unsafe fn pack_a(a: Mat<*const f32>, i: usize, rows: usize, k0: usize, mr: usize, dst: &mut [f32]) {
    dst.fill(0.0);
    let kc = dst.len() / mr;
    for r in 0..rows {
        for p in 0..kc {
            // SAFETY: r < rows and p < kc keep the element inside A.
            dst[p * mr + r] = unsafe { a.at(i + r, k0 + p) };
        }
    }
}

/// Packs columns `j..j + cols` of B, rows `k0..k0 + dst.len()/nr`, as `nr` floats per
/// row (columns past `cols` zero).
///
/// # Safety
/// Those rows and columns lie inside B.
#[inline(always)]
unsafe fn pack_b(b: Mat<*const f32>, k0: usize, j: usize, cols: usize, nr: usize, dst: &mut [f32]) {
    let kc = dst.len() / nr;
    if cols < nr {
        dst.fill(0.0);
    }
    let out = dst.as_mut_ptr();
    // SAFETY: c < cols and p < kc keep every read inside B and every write inside dst.
    unsafe {
        if b.rs == 1 {
            // A transposed operand: each column is contiguous; read it straight down.
            for c in 0..cols {
                let src = b.ptr.offset((j + c) as isize * b.cs + k0 as isize);
                for p in 0..kc {
                    *out.add(p * nr + c) = *src.add(p);
                }
            }
        } else {
            for p in 0..kc {
                let src = b.ptr.offset((k0 + p) as isize * b.rs + j as isize * b.cs);
                for c in 0..cols {
                    *out.add(p * nr + c) = *src.offset(c as isize * b.cs);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        Array2::from_shape_fn((m, n), |(i, j)| {
            (0..k)
                .map(|p| a[[i, p]] as f64 * b[[p, j]] as f64)
                .sum::<f64>() as f32
        })
    }

    fn filled(m: usize, n: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((m, n), |(i, j)| {
            (((i * 31 + j * 17 + seed * 7) % 23) as f32 - 11.0) / 8.0
        })
    }

    #[test]
    fn matches_the_naive_product_for_every_layout() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 800, 40)] {
            let (a, b) = (filled(m, k, 1), filled(k, n, 2));
            let want = naive(&a, &b);
            let tol = 1e-5 * k as f32;
            // Plain, transposed operands (stored the other way round), strided C.
            let (at, bt) = (a.t().to_owned(), b.t().to_owned());
            let mut c = Array2::from_elem((m, n), f32::NAN);
            mat_mul(1.0, &a, &b, 0.0, &mut c);
            assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() <= tol));
            let mut c2 = Array2::from_elem((n, m), 0.5f32);
            let mut ct = c2.view_mut().reversed_axes();
            mat_mul(2.0, &at.t(), &bt.t(), 3.0, &mut ct);
            assert!(ct
                .iter()
                .zip(&want)
                .all(|(x, y)| (x - (2.0 * y + 1.5)).abs() <= 2.0 * tol));
            let mut big = Array2::from_elem((2 * m, 2 * n), 1.0f32);
            let mut every_other = big.slice_mut(s![..;2, ..;2]);
            mat_mul(1.0, &a, &b, 1.0, &mut every_other);
            assert!(every_other
                .iter()
                .zip(&want)
                .all(|(x, y)| (x - (y + 1.0)).abs() <= tol));
            assert_eq!(big[[1, 1]], 1.0, "untouched between the strided elements");
        }
    }

    fn bits(c: &Array2<f32>) -> Vec<u32> {
        c.iter().map(|x| x.to_bits()).collect()
    }

    /// Awkward values: magnitudes over many binades, so that a different summation order
    /// or a missed fusion changes low bits.
    fn spread(m: usize, n: usize, seed: u64) -> Array2<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Array2::from_shape_fn((m, n), |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mant = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            mant * 2f32.powi((x % 13) as i32 - 6)
        })
    }

    /// Every instruction set gives exactly the scalar definition's bits, for shapes that
    /// hit every edge (partial tiles, several k-blocks, row and column blocks), every
    /// operand layout and every β.
    #[test]
    fn every_kernel_equals_the_scalar_definition_bit_for_bit() {
        let shapes = [
            (1, 1, 1),
            (7, 9, 5),
            (16, 256, 16),
            (33, 47, 300),
            (100, 70, 600),
            (6, 1030, 20),
            (200, 33, 257),
        ];
        for (m, n, k) in shapes {
            let a = spread(m, k, 1);
            let b = spread(k, n, 2);
            let c0 = spread(m, n, 3);
            let (at, bt) = (a.t().to_owned(), b.t().to_owned());
            for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (-0.75, 0.5)] {
                let mut want = c0.clone();
                reference(alpha, a.view(), b.view(), beta, want.view_mut());
                for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
                    let mut plain = c0.clone();
                    mat_mul_on(isa, alpha, a.view(), b.view(), beta, plain.view_mut());
                    assert_eq!(bits(&plain), bits(&want), "{isa:?} {m}×{n}×{k} β={beta}");
                    // Transposed operands and a transposed C.
                    let mut ct = c0.t().to_owned();
                    let mut ctv = ct.view_mut().reversed_axes();
                    mat_mul_on(isa, alpha, at.t(), bt.t(), beta, ctv.view_mut());
                    assert_eq!(
                        bits(&ctv.to_owned()),
                        bits(&want),
                        "{isa:?} {m}×{n}×{k} transposed"
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_inner_dimension_scales_c() {
        let (a, b) = (Array2::<f32>::zeros((2, 0)), Array2::<f32>::zeros((0, 3)));
        let mut c = Array2::from_elem((2, 3), 2.0f32);
        mat_mul(1.0, &a, &b, 0.5, &mut c);
        assert!(c.iter().all(|&v| v == 1.0));
    }
}
