//! Max-pooling with a 2×2 window and stride 2 over planes (P, H, W) → (P, H/2, W/2).
//! A batch in NCHW is pooled as N·C planes. Odd trailing rows/columns are dropped, as in
//! PyTorch. The forward pass records which of the four window entries won (0..4, row-major,
//! first maximum on ties) so the backward pass routes each gradient to exactly one input.

use ndarray::{ArrayView3, ArrayViewMut3};

use crate::{as_slice, as_slice_mut, check_shape, shape_err, NnError};

/// Pools `input` (P, H, W) into `output` (P, H/2, W/2) and writes the winning window
/// position of every output into `argmax` (at least P·(H/2)·(W/2) entries).
pub fn maxpool2_forward(
    input: ArrayView3<f32>,
    output: ArrayViewMut3<f32>,
    argmax: &mut [u8],
) -> Result<(), NnError> {
    let (p, h, w) = input.dim();
    let (oh, ow) = (h / 2, w / 2);
    check_shape("max-pool output", output.shape(), &[p, oh, ow])?;
    let found = argmax.len();
    let argmax = argmax
        .get_mut(..p * oh * ow)
        .ok_or_else(|| shape_err("max-pool argmax", p * oh * ow, found))?;
    if oh == 0 || ow == 0 {
        return Ok(());
    }
    let src = as_slice(&input, "max-pool input")?;
    let dst = as_slice_mut(output, "max-pool output")?;
    let out_rows = dst.chunks_exact_mut(ow).zip(argmax.chunks_exact_mut(ow));
    for (r, (out_row, arg_row)) in out_rows.enumerate() {
        let (plane, orow) = (r / oh, r % oh);
        let top = &src[(plane * h + 2 * orow) * w..][..w];
        let bottom = &src[(plane * h + 2 * orow + 1) * w..][..w];
        for (j, (o, a)) in out_row.iter_mut().zip(arg_row.iter_mut()).enumerate() {
            let cands = [top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]];
            let (mut best, mut arg) = (cands[0], 0u8);
            for (k, &v) in cands.iter().enumerate().skip(1) {
                if v > best {
                    best = v;
                    arg = k as u8;
                }
            }
            *o = best;
            *a = arg;
        }
    }
    Ok(())
}

/// OVERWRITES `grad_input` (P, H, W) with the gradient routed from `grad_output`
/// (P, H/2, W/2) to the window entries recorded in `argmax`; all other entries get zero.
pub fn maxpool2_backward(
    grad_output: ArrayView3<f32>,
    argmax: &[u8],
    grad_input: ArrayViewMut3<f32>,
) -> Result<(), NnError> {
    let (p, h, w) = grad_input.dim();
    let (oh, ow) = (h / 2, w / 2);
    check_shape(
        "max-pool output gradient",
        grad_output.shape(),
        &[p, oh, ow],
    )?;
    let argmax = argmax
        .get(..p * oh * ow)
        .ok_or_else(|| shape_err("max-pool argmax", p * oh * ow, argmax.len()))?;
    let src = as_slice(&grad_output, "max-pool output gradient")?;
    let dst = as_slice_mut(grad_input, "max-pool input gradient")?;
    dst.fill(0.0);
    if oh == 0 || ow == 0 {
        return Ok(());
    }
    for (r, (g_row, arg_row)) in src
        .chunks_exact(ow)
        .zip(argmax.chunks_exact(ow))
        .enumerate()
    {
        let (plane, orow) = (r / oh, r % oh);
        let base = (plane * h + 2 * orow) * w;
        for (j, (&g, &a)) in g_row.iter().zip(arg_row).enumerate() {
            let a = a as usize;
            dst[base + (a / 2) * w + 2 * j + (a % 2)] = g;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_grad_close, dot_f64, numeric_grad, random_vec, rng};
    use ndarray::Array3;

    /// Direct-loop max-pool returning values and the flat input index of each winner.
    fn naive_pool(x: &Array3<f32>) -> (Array3<f32>, Vec<usize>) {
        let (p, h, w) = x.dim();
        let mut out = Array3::zeros((p, h / 2, w / 2));
        let mut idx = Vec::new();
        for c in 0..p {
            for i in 0..h / 2 {
                for j in 0..w / 2 {
                    let mut best = (f32::NEG_INFINITY, 0);
                    for di in 0..2 {
                        for dj in 0..2 {
                            let v = x[[c, 2 * i + di, 2 * j + dj]];
                            if v > best.0 {
                                best = (v, (c * h + 2 * i + di) * w + 2 * j + dj);
                            }
                        }
                    }
                    out[[c, i, j]] = best.0;
                    idx.push(best.1);
                }
            }
        }
        (out, idx)
    }

    fn image(seed: u64, p: usize, h: usize, w: usize) -> Array3<f32> {
        let mut r = rng(seed);
        Array3::from_shape_vec((p, h, w), random_vec(&mut r, p * h * w, -1.0, 1.0)).expect("shape")
    }

    #[test]
    fn forward_and_backward_match_naive() {
        for (s, &(p, h, w)) in [(1, 2, 2), (3, 4, 6), (2, 5, 7), (4, 8, 8)]
            .iter()
            .enumerate()
        {
            let x = image(s as u64, p, h, w);
            let (want, idx) = naive_pool(&x);
            let mut out = Array3::from_elem((p, h / 2, w / 2), f32::NAN);
            let mut arg = vec![9u8; out.len()];
            maxpool2_forward(x.view(), out.view_mut(), &mut arg).expect("forward");
            assert_eq!(out, want, "case {s}");

            let g = image(50 + s as u64, p, h / 2, w / 2);
            let mut gx = Array3::from_elem((p, h, w), f32::NAN);
            maxpool2_backward(g.view(), &arg, gx.view_mut()).expect("backward");
            let mut want_gx = vec![0f32; p * h * w];
            for (&i, &v) in idx.iter().zip(g.iter()) {
                want_gx[i] = v;
            }
            assert_eq!(gx.as_slice().expect("contiguous"), &want_gx[..], "case {s}");
        }
    }

    #[test]
    fn ties_pick_the_first_maximum() {
        let x = Array3::from_shape_vec((1, 2, 2), vec![1.0, 3.0, 3.0, 2.0]).expect("shape");
        let mut out = Array3::zeros((1, 1, 1));
        let mut arg = [0u8];
        maxpool2_forward(x.view(), out.view_mut(), &mut arg).expect("forward");
        assert_eq!((out[[0, 0, 0]], arg[0]), (3.0, 1));
    }

    /// Values are a shuffled grid spaced well beyond eps so no window changes its winner.
    #[test]
    fn backward_matches_finite_differences() {
        let (p, h, w) = (2, 4, 6);
        let mut r = rng(7);
        let mut order: Vec<f32> = (0..p * h * w).map(|i| i as f32 * 0.1).collect();
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut r);
        let proj = random_vec(&mut r, p * (h / 2) * (w / 2), -1.0, 1.0);
        let loss = |x: &[f32]| {
            let xv = ArrayView3::from_shape((p, h, w), x).expect("shape");
            let mut out = Array3::zeros((p, h / 2, w / 2));
            let mut arg = vec![0u8; out.len()];
            maxpool2_forward(xv, out.view_mut(), &mut arg).expect("forward");
            dot_f64(out.as_slice().expect("contiguous"), &proj)
        };
        let xv = ArrayView3::from_shape((p, h, w), &order[..]).expect("shape");
        let mut out = Array3::zeros((p, h / 2, w / 2));
        let mut arg = vec![0u8; out.len()];
        maxpool2_forward(xv, out.view_mut(), &mut arg).expect("forward");
        let mut gx = Array3::zeros((p, h, w));
        let gy = ArrayView3::from_shape((p, h / 2, w / 2), &proj[..]).expect("shape");
        maxpool2_backward(gy, &arg, gx.view_mut()).expect("backward");
        let num = numeric_grad(&mut order, 1e-2, loss);
        assert_grad_close(
            "max-pool",
            gx.as_slice().expect("contiguous"),
            &num,
            1e-3,
            1e-3,
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = image(1, 2, 4, 4);
        let mut out = Array3::zeros((2, 2, 3));
        assert!(maxpool2_forward(x.view(), out.view_mut(), &mut [0u8; 16]).is_err());
        let mut out = Array3::zeros((2, 2, 2));
        assert!(maxpool2_forward(x.view(), out.view_mut(), &mut [0u8; 3]).is_err());
    }
}
