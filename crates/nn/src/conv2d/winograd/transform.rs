//! The matrices of the Winograd (Cook–Toom) algorithms F(m×m, r×r), built once from
//! their interpolation points, and the one kernel every pass applies them with: a
//! "sandwich" L·X·Rᵀ of many small matrices at once, vectorised along the tiles.
//! Invariant: for the trilinear form Σ_ξ (A y)_ξ (G g)_ξ (Bᵀ d)_ξ = Σ_{i,k} y_i g_k d_{i+k},
//! so forward, input gradient and weight gradient are its three partial derivatives.

use std::sync::OnceLock;

use crate::conv_algo::Tile;

impl Tile {
    /// The tile's matrices, computed on first use and shared afterwards.
    pub(crate) fn matrices(self) -> &'static Matrices {
        static CACHE: [OnceLock<Matrices>; 4] = [const { OnceLock::new() }; 4];
        CACHE[self as usize].get_or_init(|| Matrices::cook_toom(self.m(), self.r()))
    }
}

/// The finite interpolation points for α inputs (the last point is ∞). Small integers and
/// their reciprocals keep the matrix entries short in binary, which is what keeps the
/// fp32 error of the transforms low; the order does not matter for exact arithmetic.
fn points(alpha: usize) -> Vec<f64> {
    let all = [0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0];
    all[..alpha - 1].to_vec()
}

/// Row-major transform matrices of one tile. Each is kept with its transpose so every
/// pass is a plain [`sandwich`] L·X·Rᵀ.
#[derive(Debug)]
pub(crate) struct Matrices {
    /// Bᵀ (α×α): input tile → transform domain (forward); B undoes it for the input gradient.
    pub(crate) bt: Vec<f32>,
    pub(crate) b: Vec<f32>,
    /// G (α×r): kernel → transform domain; Gᵀ (r×α) maps a weight gradient back.
    pub(crate) g: Vec<f32>,
    pub(crate) gt: Vec<f32>,
    /// Aᵀ (m×α): transform domain → output tile; A (α×m) takes an output gradient in.
    pub(crate) at: Vec<f32>,
    pub(crate) a: Vec<f32>,
}

impl Matrices {
    /// Toom–Cook for the polynomial product s = g·h (degree α−1) evaluated at the points
    /// and ∞: s = V⁻¹((G g) ⊙ (H h)) with V the Vandermonde matrix. Correlation is its
    /// transpose: y = Hᵀ((G g) ⊙ (V⁻ᵀ d)), so Aᵀ = Hᵀ and Bᵀ = V⁻ᵀ. Each row of Bᵀ is
    /// scaled to max |entry| 1 and G's row by the inverse factor (same product, smaller
    /// intermediate values). Built in f64, rounded once to f32.
    fn cook_toom(m: usize, r: usize) -> Matrices {
        let alpha = m + r - 1;
        let p = points(alpha);
        // Row j of a Vandermonde-like matrix with `cols` columns; the ∞ row picks the
        // leading coefficient.
        let vander = |cols: usize| -> Vec<f64> {
            let mut v = vec![0.0; alpha * cols];
            for j in 0..alpha {
                for k in 0..cols {
                    v[j * cols + k] = match p.get(j) {
                        Some(&x) => x.powi(k as i32),
                        None => f64::from(u8::from(k == cols - 1)),
                    };
                }
            }
            v
        };
        let mut g = vander(r);
        let h = vander(m);
        let inv = invert(&vander(alpha), alpha);
        let mut bt = vec![0.0; alpha * alpha];
        for xi in 0..alpha {
            let row: Vec<f64> = (0..alpha).map(|t| inv[t * alpha + xi]).collect();
            let scale = row.iter().fold(0.0f64, |s, v| s.max(v.abs()));
            for (t, v) in row.iter().enumerate() {
                bt[xi * alpha + t] = v / scale;
            }
            for k in 0..r {
                g[xi * r + k] *= scale;
            }
        }
        let at = transpose(&h, alpha, m);
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        Matrices {
            b: f32s(&transpose(&bt, alpha, alpha)),
            bt: f32s(&bt),
            gt: f32s(&transpose(&g, alpha, r)),
            g: f32s(&g),
            a: f32s(&h),
            at: f32s(&at),
        }
    }
}

/// The transpose of a row-major rows×cols matrix.
fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

/// Gauss–Jordan inverse with partial pivoting of a small non-singular n×n matrix (the
/// points are distinct, so V is invertible).
fn invert(v: &[f64], n: usize) -> Vec<f64> {
    let mut a = v.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|i| f64::from(u8::from(i / n == i % n)))
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs()))
            .unwrap_or(col);
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
            inv.swap(col * n + k, pivot * n + k);
        }
        let d = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= d;
            inv[col * n + k] /= d;
        }
        for row in (0..n).filter(|&row| row != col) {
            let f = a[row * n + col];
            for k in 0..n {
                a[row * n + k] -= f * a[col * n + k];
                inv[row * n + k] -= f * inv[col * n + k];
            }
        }
    }
    inv
}

/// A set of p×q small matrices stored "planar": entry (a, b) of all of them is the
/// contiguous run `data[at + (a·q + b)·stride ..][..nt]`, one value per tile.
pub(crate) struct Planar<S> {
    pub(crate) data: S,
    pub(crate) at: usize,
    pub(crate) stride: usize,
}

impl<S> Planar<S> {
    /// The matrices of `data` whose entry (a, b) starts at `at + (a·q + b)·stride`.
    pub(crate) fn new(data: S, at: usize, stride: usize) -> Self {
        Planar { data, at, stride }
    }
}

/// Tiles one [`sandwich`] step handles: its temporary (at most α²·CHUNK floats) stays in
/// L1 while the whole group's tiles stream through.
pub(crate) const CHUNK: usize = 128;

/// Defines `$name`, which runs `$body` on the widest instruction set it was compiled
/// for: a second copy of it, `$twin`, is compiled for AVX2 and FMA and picked at run time
/// on x86-64 CPUs that have them ([`crate::simd::isa`]). The arguments are written once,
/// here; `$body` is the function that holds the work.
macro_rules! avx2_twin {
    ($(#[$doc:meta])* $vis:vis fn $name:ident / $twin:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if crate::simd::isa() >= crate::simd::Isa::Avx2 {
                // SAFETY: the CPU supports AVX2 and FMA (`isa` never exceeds what it
                // detected).
                unsafe { $twin($($arg),*) };
                return;
            }
            $body($($arg),*);
        }

        #[doc = concat!("`", stringify!($body), "` compiled for AVX2 and FMA.")]
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $twin($($arg: $ty),*) {
            $body($($arg),*);
        }
    };
}

avx2_twin! {
    /// out = L·X·Rᵀ for each of `nt` small matrices X at once: L is p2×p, R is q2×q (both
    /// row-major), X planar p×q, out planar p2×q2. `tmp` holds p2·q·[`CHUNK`] floats. The
    /// inner loops run along the tiles, so they vectorise whatever α is; zero coefficients
    /// are skipped.
    ///
    /// Both compiled versions round the same fused multiply-adds in the same order, so
    /// they give bit-identical results (on a CPU without FMA the portable one is slow, not
    /// different).
    pub(crate) fn sandwich / sandwich_avx2 => sandwich_body(
        l: &[f32], lp: (usize, usize), r: &[f32], rq: (usize, usize),
        nt: usize, x: Planar<&[f32]>, tmp: &mut [f32], out: Planar<&mut [f32]>,
    )
}

/// The body of [`sandwich`], inlined into each compiled version.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sandwich_body(
    l: &[f32],
    (p2, p): (usize, usize),
    r: &[f32],
    (q2, q): (usize, usize),
    nt: usize,
    x: Planar<&[f32]>,
    tmp: &mut [f32],
    out: Planar<&mut [f32]>,
) {
    let (lt, rt) = (Terms::of(l, p2, p), Terms::of(r, q2, q));
    let Planar { data, at, stride } = out;
    for t0 in (0..nt).step_by(CHUNK) {
        let w = CHUNK.min(nt - t0);
        for i in 0..p2 {
            for b in 0..q {
                let dst = &mut tmp[(i * q + b) * w..][..w];
                combine(
                    lt.row(i),
                    x.data,
                    x.at + b * x.stride + t0,
                    q * x.stride,
                    dst,
                );
            }
        }
        for i in 0..p2 {
            for j in 0..q2 {
                let dst = &mut data[at + (i * q2 + j) * stride + t0..][..w];
                combine(rt.row(j), tmp, i * q * w, w, dst);
            }
        }
    }
}

/// The nonzero coefficients of each row of a small matrix (at most 8×8), as
/// (coefficient, column) pairs, so the tile loops never test for zeros.
struct Terms {
    pairs: [[(f32, usize); 8]; 8],
    len: [usize; 8],
}

impl Terms {
    #[inline(always)]
    fn of(m: &[f32], rows: usize, cols: usize) -> Terms {
        let mut t = Terms {
            pairs: [[(0.0, 0); 8]; 8],
            len: [0; 8],
        };
        for i in 0..rows {
            for k in 0..cols {
                let c = m[i * cols + k];
                if c != 0.0 {
                    t.pairs[i][t.len[i]] = (c, k);
                    t.len[i] += 1;
                }
            }
        }
        t
    }

    #[inline(always)]
    fn row(&self, i: usize) -> &[(f32, usize)] {
        &self.pairs[i][..self.len[i]]
    }
}

/// Tiles combined per step of [`combine`]: a few SIMD registers of accumulators.
const LANES: usize = 16;

/// dst = Σ c·src[at + k·step..][..dst.len()] over the (c, k) terms, fused multiply-adds
/// in term order. Blocks of [`LANES`] tiles stay in registers while every term is added,
/// so each destination value is written once.
#[inline(always)]
fn combine(terms: &[(f32, usize)], src: &[f32], at: usize, step: usize, dst: &mut [f32]) {
    let n = dst.len();
    let mut t = 0;
    while t + LANES <= n {
        let mut acc = [0.0f32; LANES];
        for &(c, k) in terms {
            let o = at + k * step + t;
            let s: &[f32; LANES] = src[o..o + LANES].try_into().expect("LANES");
            for (a, &v) in acc.iter_mut().zip(s) {
                *a = c.mul_add(v, *a);
            }
        }
        dst[t..t + LANES].copy_from_slice(&acc);
        t += LANES;
    }
    for (u, d) in dst.iter_mut().enumerate().skip(t) {
        *d = terms
            .iter()
            .fold(0.0, |a, &(c, k)| c.mul_add(src[at + k * step + u], a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D algorithm reproduces a direct correlation exactly enough, for every tile,
    /// and the ∞ point makes the last rows the plain end taps.
    #[test]
    fn one_dimensional_algorithm_is_a_correlation() {
        for tile in Tile::ALL {
            let (m, r, al) = (tile.m(), tile.r(), tile.alpha());
            let mx = tile.matrices();
            let d: Vec<f32> = (0..al).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
            let g: Vec<f32> = (0..r).map(|i| ((i * 3 % 4) as f32 - 1.5) * 0.5).collect();
            let gg: Vec<f32> = (0..al)
                .map(|x| (0..r).map(|k| mx.g[x * r + k] * g[k]).sum())
                .collect();
            let bd: Vec<f32> = (0..al)
                .map(|x| (0..al).map(|t| mx.bt[x * al + t] * d[t]).sum())
                .collect();
            for i in 0..m {
                let got: f32 = (0..al).map(|x| mx.at[i * al + x] * gg[x] * bd[x]).sum();
                let want: f32 = (0..r).map(|k| g[k] * d[i + k]).sum();
                assert!(
                    (got - want).abs() < 1e-5,
                    "{tile:?} output {i}: {got} vs {want}"
                );
            }
            assert_eq!(mx.g[(al - 1) * r..], {
                let mut e = vec![0.0; r];
                e[r - 1] = mx.g[al * r - 1];
                e
            });
        }
    }

    /// The run-time dispatched version (AVX2 + FMA here) and the portable one round the
    /// same operations: bit-identical, so ranks on different x86-64 CPUs agree.
    #[test]
    fn dispatched_and_portable_sandwich_agree_bit_for_bit() {
        use crate::gradcheck::{random_vec, rng};
        let mx = Tile::F4x5.matrices();
        // 300 tiles: two full chunks and a partial one with a scalar remainder.
        let nt = 300;
        let x = random_vec(&mut rng(5), 64 * nt, -1.0, 1.0);
        let mut outs = [vec![0.0; 64 * nt], vec![0.0; 64 * nt]];
        for (k, out) in outs.iter_mut().enumerate() {
            let mut tmp = vec![0.0; 64 * CHUNK];
            let src = Planar::new(&x[..], 0, nt);
            let dst = Planar::new(&mut out[..], 0, nt);
            let (l, r) = (&mx.bt, &mx.bt);
            if k == 0 {
                sandwich(l, (8, 8), r, (8, 8), nt, src, &mut tmp, dst);
            } else {
                sandwich_body(l, (8, 8), r, (8, 8), nt, src, &mut tmp, dst);
            }
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&outs[0]), bits(&outs[1]));
        assert!(outs[0].iter().any(|&v| v != 0.0));
    }

    #[test]
    fn inverse_of_a_small_matrix() {
        let v = [2.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 4.0];
        let inv = invert(&v, 3);
        for i in 0..3 {
            for j in 0..3 {
                let p: f64 = (0..3).map(|k| v[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!((p - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
    }
}
