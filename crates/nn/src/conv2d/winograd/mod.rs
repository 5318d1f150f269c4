//! Winograd convolution for stride-1 [`Conv2d`] layers: forward, weight gradient and input
//! gradient in the transform domain. A group of samples' tiles is transformed (Bᵀ d B per
//! channel and tile), α² independent matrix products U_ξ·V_ξ run over the whole group,
//! and the output transform (Aᵀ m A) adds the bias and ReLU. The backward passes are the
//! exact adjoints (in exact arithmetic) of the forward: dW = Gᵀ(Σ Ȳ_ξ·V_ξᵀ)G and
//! dX = B(U_ξᵀ·Ȳ_ξ)Bᵀ scattered onto overlapping tiles, with Ȳ = A dY Aᵀ.

mod transform;

use ndarray::{ArrayView2, ArrayViewMut2};

pub use crate::conv_algo::Tile;
use transform::{sandwich, Matrices, Planar, CHUNK};

use crate::conv2d::Conv2d;
use crate::matmul::mat_mul;
use crate::NnError;

/// Tiles (over samples × tiles per sample) a layer aims for in one set of α² matrix
/// products: like im2col's column groups, wide enough to amortise packing U_ξ, small
/// enough that V and M stay a few MB (CNN conv2: 2 + 4 MB). 256, 512 and 1024 timed
/// within noise of each other on the models' layers; the smallest keeps memory lowest.
const GROUP_TILES: usize = 256;

/// A layer's geometry as the Winograd passes see it.
struct Geo {
    mx: &'static Matrices,
    m: usize,
    r: usize,
    al: usize,
    c: usize,
    f: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    pad: usize,
    /// Tile columns of one output plane, and tiles per plane.
    ntx: usize,
    tp: usize,
    /// Samples per group.
    gmax: usize,
    /// Side lengths of the zero-padded input plane the tiles are cut from.
    ph: usize,
    pw: usize,
}

impl Geo {
    fn new(l: &Conv2d, tile: Tile) -> Geo {
        let (m, r) = (tile.m(), tile.r());
        let (ho, wo) = (l.out_h(), l.out_w());
        let (nty, ntx) = (ho.div_ceil(m), wo.div_ceil(m));
        let tp = nty * ntx;
        Geo {
            mx: tile.matrices(),
            m,
            r,
            al: tile.alpha(),
            c: l.in_channels,
            f: l.out_channels,
            h: l.in_h,
            w: l.in_w,
            ho,
            wo,
            pad: l.pad,
            ntx,
            tp,
            gmax: (GROUP_TILES / tp).max(1),
            ph: nty * m + r - 1,
            pw: ntx * m + r - 1,
        }
    }

    /// Floats of the work area: a padded plane, one channel's (or filter's) tiles of a
    /// group in planar order and the sandwich's temporary; or, once per pass, the kernels
    /// in planar order and theirs.
    fn work_len(&self) -> usize {
        let tmp = self.al * self.al * CHUNK;
        let planes = self.ph * self.pw + self.al * self.al * self.gmax * self.tp;
        let kernels = self.r * self.r * self.f * self.c;
        planes.max(kernels) + tmp
    }

    /// Where the V of the group of samples `first..first + gs` sits in a kept buffer
    /// ([`saved_len`]): groups one after the other, each [ξ][c][t].
    fn kept_group(&self, first: usize, gs: usize) -> std::ops::Range<usize> {
        let per_sample = self.al * self.al * self.c * self.tp;
        first * per_sample..(first + gs) * per_sample
    }

    /// (U, Ū, V, M, work) lengths: U and Ū are α²·F·C, V is α²·C·T, M is α²·F·T.
    fn parts(&self) -> [usize; 5] {
        let (a2, t) = (self.al * self.al, self.gmax * self.tp);
        let fc = a2 * self.f * self.c;
        [fc, fc, a2 * self.c * t, a2 * self.f * t, self.work_len()]
    }
}

/// Floats of scratch a Winograd layer needs (its `col` buffer).
pub(crate) fn scratch_len(l: &Conv2d, tile: Tile) -> usize {
    Geo::new(l, tile).parts().iter().sum()
}

/// Floats a layer can keep between its forward and backward passes over `n` samples: the
/// transformed input tiles V of every group, so the weight gradient need not transform
/// the input again.
pub(crate) fn saved_len(l: &Conv2d, tile: Tile, n: usize) -> usize {
    let g = Geo::new(l, tile);
    g.al * g.al * g.c * n * g.tp
}

/// Splits the scratch into U, Ū, V, M and the work area.
fn split<'s>(g: &Geo, col: &'s mut [f32]) -> [&'s mut [f32]; 5] {
    let [a, b, c, d, _] = g.parts();
    let (u, rest) = col.split_at_mut(a);
    let (ub, rest) = rest.split_at_mut(b);
    let (v, rest) = rest.split_at_mut(c);
    let (mm, work) = rest.split_at_mut(d);
    [u, ub, v, mm, work]
}

/// U = G g Gᵀ for every (filter, channel), written planar [ξ][f][c].
fn transform_weights(g: &Geo, weight: &[f32], u: &mut [f32], work: &mut [f32]) {
    let (fc, rr) = (g.f * g.c, g.r * g.r);
    let (planar, tmp) = work.split_at_mut(rr * fc);
    for (k, kernel) in weight.chunks_exact(rr).enumerate() {
        for (e, &v) in kernel.iter().enumerate() {
            planar[e * fc + k] = v;
        }
    }
    let mx = g.mx;
    let src = Planar::new(&*planar, 0, fc);
    let dst = Planar::new(u, 0, fc);
    sandwich(&mx.g, (g.al, g.r), &mx.g, (g.al, g.r), fc, src, tmp, dst);
}

/// V[ξ][c][t] = (Bᵀ d B)_ξ for every channel and tile of samples `first..first + gs`,
/// one channel of the whole group per transform so the vectors are long.
fn transform_inputs(
    g: &Geo,
    input: &[f32],
    first: usize,
    gs: usize,
    v: &mut [f32],
    work: &mut [f32],
) {
    let (al, tp, m) = (g.al, g.tp, g.m);
    let t_all = gs * tp;
    let (plane, rest) = work.split_at_mut(g.ph * g.pw);
    let (tiles, tmp) = rest.split_at_mut(al * al * g.gmax * tp);
    plane.fill(0.0);
    for ci in 0..g.c {
        for j in 0..gs {
            let at = ((first + j) * g.c + ci) * g.h * g.w;
            let src = &input[at..at + g.h * g.w];
            for (y, row) in src.chunks_exact(g.w).enumerate() {
                let p = (y + g.pad) * g.pw + g.pad;
                plane[p..p + g.w].copy_from_slice(row);
            }
            for a in 0..al {
                for b in 0..al {
                    let dst = &mut tiles[(a * al + b) * t_all + j * tp..][..tp];
                    for (ty, drow) in dst.chunks_exact_mut(g.ntx).enumerate() {
                        let prow = &plane[(ty * m + a) * g.pw + b..];
                        for (tx, d) in drow.iter_mut().enumerate() {
                            *d = prow[tx * m];
                        }
                    }
                }
            }
        }
        let src = Planar::new(&*tiles, 0, t_all);
        let dst = Planar::new(&mut *v, ci * t_all, g.c * t_all);
        sandwich(&g.mx.bt, (al, al), &g.mx.bt, (al, al), t_all, src, tmp, dst);
    }
}

/// Views of the α² matrices of a planar [ξ][rows][cols] buffer, one at a time.
fn mat<'s>(
    buf: &'s [f32],
    xi: usize,
    rows: usize,
    cols: usize,
) -> Result<ArrayView2<'s, f32>, NnError> {
    Ok(ArrayView2::from_shape(
        (rows, cols),
        &buf[xi * rows * cols..][..rows * cols],
    )?)
}

fn mat_mut<'s>(
    buf: &'s mut [f32],
    xi: usize,
    rows: usize,
    cols: usize,
) -> Result<ArrayViewMut2<'s, f32>, NnError> {
    Ok(ArrayViewMut2::from_shape(
        (rows, cols),
        &mut buf[xi * rows * cols..][..rows * cols],
    )?)
}

/// Forward pass of a stride-1 layer (arguments as [`Conv2d::forward`], checked there).
/// With a `keep` of at least [`saved_len`] floats (checked by the caller), every group's
/// V stays there for [`backward`];
/// with an empty one, V lives in the scratch one group at a time.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    l: &Conv2d,
    tile: Tile,
    params: &[f32],
    n: usize,
    input: &[f32],
    col: &mut [f32],
    keep: &mut [f32],
    output: &mut [f32],
    relu: bool,
) -> Result<(), NnError> {
    let g = Geo::new(l, tile);
    let [u, _, v, mm, work] = split(&g, col);
    transform_weights(&g, &params[l.weight.clone()], u, work);
    let bias = &params[l.bias.clone()];
    let (al, tp, m, os) = (g.al, g.tp, g.m, l.out_size());
    for first in (0..n).step_by(g.gmax) {
        let gs = g.gmax.min(n - first);
        let t_all = gs * tp;
        let vg: &mut [f32] = if keep.is_empty() {
            &mut *v
        } else {
            &mut keep[g.kept_group(first, gs)]
        };
        transform_inputs(&g, input, first, gs, vg, work);
        for xi in 0..al * al {
            let (uv, vv) = (mat(u, xi, g.f, g.c)?, mat(vg, xi, g.c, t_all)?);
            mat_mul(1.0, &uv, &vv, 0.0, &mut mat_mut(mm, xi, g.f, t_all)?);
        }
        let (tiles, tmp) = work.split_at_mut(m * m * g.gmax * tp);
        for fi in 0..g.f {
            let src = Planar::new(&*mm, fi * t_all, g.f * t_all);
            let dst = Planar::new(&mut *tiles, 0, t_all);
            sandwich(&g.mx.at, (m, al), &g.mx.at, (m, al), t_all, src, tmp, dst);
            let b = bias.get(fi).copied().unwrap_or(0.0);
            for j in 0..gs {
                let out = &mut output[(first + j) * os + fi * g.ho * g.wo..][..g.ho * g.wo];
                for (y, orow) in out.chunks_exact_mut(g.wo).enumerate() {
                    let (ty, i) = (y / m, y % m);
                    let at = j * tp + ty * g.ntx;
                    for (tx, ochunk) in orow.chunks_mut(m).enumerate() {
                        for (jj, o) in ochunk.iter_mut().enumerate() {
                            let val = tiles[(i * m + jj) * t_all + at + tx] + b;
                            *o = if relu { val.max(0.0) } else { val };
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Backward pass (arguments as [`Conv2d::backward`], checked there; the gradient ranges
/// are zeroed by the caller). A non-empty `kept` is the V its [`forward`] kept.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    l: &Conv2d,
    tile: Tile,
    params: &[f32],
    n: usize,
    input: &[f32],
    grad_output: &[f32],
    kept: &[f32],
    col: &mut [f32],
    gw: &mut [f32],
    gb: &mut [f32],
    mut grad_input: Option<&mut [f32]>,
) -> Result<(), NnError> {
    let g = Geo::new(l, tile);
    let [u, ub, v, mm, work] = split(&g, col);
    if grad_input.is_some() {
        transform_weights(&g, &params[l.weight.clone()], u, work);
    }
    ub.fill(0.0);
    let (al, tp, m, os, is) = (g.al, g.tp, g.m, l.out_size(), l.in_size());
    for first in (0..n).step_by(g.gmax) {
        let gs = g.gmax.min(n - first);
        let t_all = gs * tp;
        if kept.is_empty() {
            transform_inputs(&g, input, first, gs, v, work);
        }
        // Ȳ = A dY Aᵀ per filter and tile, into M's place; the bias gradient on the way.
        let (tiles, tmp) = work.split_at_mut(al * al * g.gmax * tp);
        for fi in 0..g.f {
            let tiles = &mut tiles[..m * m * t_all];
            tiles.fill(0.0);
            for j in 0..gs {
                let dy = &grad_output[(first + j) * os + fi * g.ho * g.wo..][..g.ho * g.wo];
                if let Some(b) = gb.get_mut(fi) {
                    *b += dy.iter().sum::<f32>();
                }
                for (y, row) in dy.chunks_exact(g.wo).enumerate() {
                    let (ty, i) = (y / m, y % m);
                    let at = j * tp + ty * g.ntx;
                    for (tx, chunk) in row.chunks(m).enumerate() {
                        for (jj, &val) in chunk.iter().enumerate() {
                            tiles[(i * m + jj) * t_all + at + tx] = val;
                        }
                    }
                }
            }
            let src = Planar::new(&*tiles, 0, t_all);
            let dst = Planar::new(&mut *mm, fi * t_all, g.f * t_all);
            sandwich(&g.mx.a, (al, m), &g.mx.a, (al, m), t_all, src, tmp, dst);
        }
        let vg: &[f32] = if kept.is_empty() {
            v
        } else {
            &kept[g.kept_group(first, gs)]
        };
        for xi in 0..al * al {
            let (yb, vv) = (mat(mm, xi, g.f, t_all)?, mat(vg, xi, g.c, t_all)?);
            mat_mul(1.0, &yb, &vv.t(), 1.0, &mut mat_mut(ub, xi, g.f, g.c)?);
        }
        let Some(gi) = grad_input.as_deref_mut() else {
            continue;
        };
        // V's scratch is free (spent, or never used): it takes M̄_ξ = U_ξᵀ·Ȳ_ξ, which B·M̄·Bᵀ maps back onto input tiles.
        for xi in 0..al * al {
            let (uv, yb) = (mat(u, xi, g.f, g.c)?, mat(mm, xi, g.f, t_all)?);
            mat_mul(1.0, &uv.t(), &yb, 0.0, &mut mat_mut(v, xi, g.c, t_all)?);
        }
        let (plane, rest) = work.split_at_mut(g.ph * g.pw);
        let (tiles, tmp) = rest.split_at_mut(al * al * g.gmax * tp);
        for ci in 0..g.c {
            let src = Planar::new(&*v, ci * t_all, g.c * t_all);
            let dst = Planar::new(&mut *tiles, 0, t_all);
            sandwich(&g.mx.b, (al, al), &g.mx.b, (al, al), t_all, src, tmp, dst);
            for j in 0..gs {
                plane.fill(0.0);
                for a in 0..al {
                    for b in 0..al {
                        let t = &tiles[(a * al + b) * t_all + j * tp..][..tp];
                        for (ty, trow) in t.chunks_exact(g.ntx).enumerate() {
                            let prow = &mut plane[(ty * m + a) * g.pw + b..];
                            for (tx, &s) in trow.iter().enumerate() {
                                prow[tx * m] += s;
                            }
                        }
                    }
                }
                let dx = &mut gi[(first + j) * is + ci * g.h * g.w..][..g.h * g.w];
                for (y, row) in dx.chunks_exact_mut(g.w).enumerate() {
                    let p = (y + g.pad) * g.pw + g.pad;
                    row.copy_from_slice(&plane[p..p + g.w]);
                }
            }
        }
    }
    // dW = Gᵀ Ū G per (filter, channel), from planar [k][l][f·c] back to (F, C, r, r).
    let (fc, rr) = (g.f * g.c, g.r * g.r);
    let (planar, tmp) = work.split_at_mut(rr * fc);
    let src = Planar::new(&*ub, 0, fc);
    let dst = Planar::new(&mut *planar, 0, fc);
    sandwich(&g.mx.gt, (g.r, al), &g.mx.gt, (g.r, al), fc, src, tmp, dst);
    for (k, kernel) in gw.chunks_exact_mut(rr).enumerate() {
        for (e, d) in kernel.iter_mut().enumerate() {
            *d = planar[e * fc + k];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
