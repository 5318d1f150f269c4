//! The product's inner kernel: one MR×NR tile of C from a packed panel of A and a panel
//! of B, written once for any vector type ([`Lanes`]) and compiled per instruction set.
//!
//! Invariant: every element of the tile is accumulated by its own chain of fused
//! multiply-adds in ascending k, starting from 0 (or from the running sum of an earlier
//! k-block), and finished as `α·t + β·c` with each product rounded. The vector width, MR
//! and NR only choose which elements are computed side by side, so every instruction set
//! gives the same bits.

/// A vector of `W` f32 lanes and the five operations the kernel needs. Every method is
/// lane-wise and rounds exactly as the scalar operation would (`fma` is fused).
pub(super) trait Lanes: Copy {
    const W: usize;
    /// # Safety
    /// The CPU supports the instruction set of the implementation (all methods).
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// # Safety
    /// `p` is valid for reading `W` floats (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` is valid for writing `W` floats (no alignment needed).
    unsafe fn store(self, p: *mut f32);
    /// a·b + c with one rounding.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
}

/// Eight lanes in plain Rust: `f32::mul_add` is a fused multiply-add on every platform
/// (a correctly rounded library call where the CPU has no FMA).
#[derive(Clone, Copy)]
pub(super) struct Portable([f32; 8]);

impl Lanes for Portable {
    const W: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable([x; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats.
        Portable(unsafe { std::ptr::read_unaligned(p.cast::<[f32; 8]>()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable floats.
        unsafe { std::ptr::write_unaligned(p.cast::<[f32; 8]>(), self.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|l| a.0[l].mul_add(b.0[l], c.0[l])))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| a.0[l] * b.0[l]))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|l| a.0[l] + b.0[l]))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// `Lanes` for one x86 vector type from its intrinsics: the AVX2 and AVX-512 versions
    /// differ only in their names and width.
    macro_rules! lanes {
        ($t:ty, $w:expr, $zero:ident, $splat:ident, $load:ident, $store:ident,
         $fma:ident, $mul:ident, $add:ident) => {
            // SAFETY (every method): the caller runs on a CPU with the instruction set
            // (the driver is compiled with `target_feature` and dispatched on detection)
            // and passes pointers valid for W floats, as `Lanes` requires.
            impl Lanes for $t {
                const W: usize = $w;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn splat(x: f32) -> Self {
                    unsafe { $splat(x) }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { $store(p, self) }
                }
                #[inline(always)]
                unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                    unsafe { $fma(a, b, c) }
                }
                #[inline(always)]
                unsafe fn mul(a: Self, b: Self) -> Self {
                    unsafe { $mul(a, b) }
                }
                #[inline(always)]
                unsafe fn add(a: Self, b: Self) -> Self {
                    unsafe { $add(a, b) }
                }
            }
        };
    }

    lanes!(
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_mul_ps,
        _mm256_add_ps
    );
    lanes!(
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_mul_ps,
        _mm512_add_ps
    );
}

/// The largest tile any kernel uses (MR·NR floats), for the edge buffer.
pub(super) const MAX_TILE: usize = 16 * 32;

/// Rows of A as a kernel reads them: element (i, p) at `ptr + i·rs + p·cs`.
#[derive(Clone, Copy)]
pub(super) struct Strided {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// Where a tile's sums go.
#[derive(Clone, Copy)]
pub(super) enum Out {
    /// Unfinished (more k-blocks follow): the raw sums into a full MR×NR tile of the
    /// running buffer, row stride `ld`.
    Running { ptr: *mut f32, ld: usize },
    /// Finished: c ← α·t + β·c for the `rows`×`cols` part of the tile that lies inside C
    /// (C not read when β = 0).
    C {
        ptr: *mut f32,
        rs: isize,
        cs: isize,
        rows: usize,
        cols: usize,
        alpha: f32,
        beta: f32,
    },
}

/// One tile: `kc` terms from the MR rows of `a` (element (i, p) at `i·rs + p·cs`) and
/// the `kc` rows of NR floats of `b` (`ldb` apart), added to zero or to the running sums
/// at `from` (row stride given), then written to `out`.
///
/// # Safety
/// The CPU supports `V`'s instruction set; `a` addresses MR×kc floats with its strides,
/// `b` kc rows of NR floats; `from` and `out` address valid tiles as [`Out`] describes.
#[inline(always)]
pub(super) unsafe fn tile<V: Lanes, const MR: usize, const NV: usize>(
    kc: usize,
    a: Strided,
    b: *const f32,
    ldb: isize,
    from: Option<(*const f32, usize)>,
    out: Out,
) {
    // SAFETY: pointers and lengths as the caller guarantees; the loops stay inside the
    // MR×(NV·W) tile and the kc rows.
    unsafe {
        let w = V::W;
        let mut acc = [[V::zero(); NV]; MR];
        if let Some((run, ld)) = from {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = V::load(run.add(i * ld + v * w));
                }
            }
        }
        let (mut ap, mut bp) = (a.ptr, b);
        for _ in 0..kc {
            let mut bv = [V::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = V::load(bp.add(v * w));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = V::splat(*ap.offset(i as isize * a.rs));
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = V::fma(ai, bx, *x);
                }
            }
            ap = ap.offset(a.cs);
            bp = bp.offset(ldb);
        }
        match out {
            Out::Running { ptr, ld } => {
                for (i, row) in acc.iter().enumerate() {
                    for (v, x) in row.iter().enumerate() {
                        x.store(ptr.add(i * ld + v * w));
                    }
                }
            }
            Out::C {
                ptr,
                rs,
                cs,
                rows,
                cols,
                alpha,
                beta,
            } => {
                if rows == MR && cols == NV * w && cs == 1 {
                    // A whole tile of row-major C: straight from the registers.
                    let va = V::splat(alpha);
                    let vb = V::splat(beta);
                    for (i, row) in acc.iter().enumerate() {
                        for (v, &x) in row.iter().enumerate() {
                            let p = ptr.offset(i as isize * rs + (v * w) as isize);
                            let t = V::mul(x, va);
                            if beta == 0.0 {
                                t.store(p);
                            } else {
                                V::add(t, V::mul(V::load(p), vb)).store(p);
                            }
                        }
                    }
                } else {
                    // An edge tile or a strided C: through a buffer, one element at a time.
                    let nr = NV * w;
                    let mut buf = [0f32; MAX_TILE];
                    for (i, row) in acc.iter().enumerate() {
                        for (v, x) in row.iter().enumerate() {
                            x.store(buf.as_mut_ptr().add(i * nr + v * w));
                        }
                    }
                    for i in 0..rows {
                        for j in 0..cols {
                            let p = ptr.offset(i as isize * rs + j as isize * cs);
                            let t = alpha * buf[i * nr + j];
                            *p = if beta == 0.0 { t } else { t + beta * *p };
                        }
                    }
                }
            }
        }
    }
}
