//! Per-sample convolution kernels: im2col / col2im (with a stride, and each the exact
//! adjoint of the other) and the stride-1 convolution built on them, which is the reference
//! the grouped [`crate::conv2d::Conv2d`] layer is tested against. Weights are (F, C·K·K);
//! cols = im2col(x) is (C·K·K, Ho·Wo) and y = W·cols + b is (F, Ho·Wo), i.e. NCHW.

use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayViewMut1, ArrayViewMut2, ArrayViewMut3};

use crate::matmul::mat_mul;
use crate::{as_slice, as_slice_mut, check_shape, NnError};

/// Output side length of a convolution, or an error if the kernel does not fit.
pub(crate) fn out_len_strided(
    input: usize,
    kernel: usize,
    pad: usize,
    stride: usize,
) -> Result<usize, NnError> {
    if kernel == 0 || stride == 0 || input + 2 * pad < kernel {
        return Err(NnError::Config(format!(
            "kernel {kernel} with stride {stride} does not fit input {input} with padding {pad}"
        )));
    }
    Ok((input + 2 * pad - kernel) / stride + 1)
}

/// Output side length of a stride-1 convolution, or an error if the kernel does not fit.
fn out_len(input: usize, kernel: usize, pad: usize) -> Result<usize, NnError> {
    out_len_strided(input, kernel, pad, 1)
}

/// Output positions `o` in `0..out` whose input index `o·stride + k − pad` lies in
/// `0..input`, as a range (empty when there are none).
fn valid_range(input: usize, out: usize, k: usize, pad: usize, stride: usize) -> (usize, usize) {
    // o·stride + k >= pad  <=>  o >= ceil((pad − k) / stride)
    let lo = pad.saturating_sub(k).div_ceil(stride).min(out);
    // o·stride + k − pad < input  <=>  o < ceil((input + pad − k) / stride)
    let hi = (input + pad)
        .saturating_sub(k)
        .div_ceil(stride)
        .clamp(lo, out);
    (lo, hi)
}

/// Unfolds one image `input` (C, H, W) into `col` (C·K·K, Ho·Wo): row `(c·K + kh)·K + kw`
/// holds, for every output pixel, the input pixel under kernel tap (kh, kw) of channel c
/// (zero where that tap falls into the padding). Stride 1.
pub fn im2col(
    input: ArrayView3<f32>,
    kernel: usize,
    pad: usize,
    col: ArrayViewMut2<f32>,
) -> Result<(), NnError> {
    im2col_strided(input, kernel, pad, 1, col)
}

/// [`im2col`] with a stride. `col` may be a column block of a wider matrix (each of its
/// rows must be contiguous), so several samples can share one matrix product.
pub fn im2col_strided(
    input: ArrayView3<f32>,
    kernel: usize,
    pad: usize,
    stride: usize,
    mut col: ArrayViewMut2<f32>,
) -> Result<(), NnError> {
    let (c, h, w) = input.dim();
    let oh = out_len_strided(h, kernel, pad, stride)?;
    let ow = out_len_strided(w, kernel, pad, stride)?;
    check_shape(
        "im2col columns",
        col.shape(),
        &[c * kernel * kernel, oh * ow],
    )?;
    if col.is_empty() {
        return Ok(());
    }
    let src = as_slice(&input, "im2col input")?;
    for (row_idx, mut row) in col.rows_mut().into_iter().enumerate() {
        let row = row
            .as_slice_mut()
            .ok_or(NnError::Layout("im2col column rows"))?;
        let ci = row_idx / (kernel * kernel);
        let kh = (row_idx / kernel) % kernel;
        let kw = row_idx % kernel;
        let plane = &src[ci * h * w..(ci + 1) * h * w];
        // Output columns whose input column o·stride + kw − pad lies inside the image.
        let (lo, hi) = valid_range(w, ow, kw, pad, stride);
        for (o_h, out_row) in row.chunks_exact_mut(ow).enumerate() {
            let ih = o_h * stride + kh;
            if ih < pad || ih - pad >= h {
                out_row.fill(0.0);
                continue;
            }
            let in_row = &plane[(ih - pad) * w..(ih - pad + 1) * w];
            out_row[..lo].fill(0.0);
            out_row[hi..].fill(0.0);
            // lo·stride + kw >= pad by construction, so this start index cannot underflow.
            let first = lo * stride + kw - pad;
            if stride == 1 {
                out_row[lo..hi].copy_from_slice(&in_row[first..first + (hi - lo)]);
            } else {
                for (d, &s) in out_row[lo..hi]
                    .iter_mut()
                    .zip(in_row[first..].iter().step_by(stride))
                {
                    *d = s;
                }
            }
        }
    }
    Ok(())
}

// col2im and col2im_strided mirror im2col and im2col_strided (signatures, geometry checks,
// the walk over column rows) because each is the other's adjoint: the copy becomes an add.
/// The adjoint of [`im2col`]: overwrites `output` (C, H, W) with the sum, for every pixel,
/// of all column entries that were copied from it. Padding entries are dropped. Stride 1.
pub fn col2im(
    col: ArrayView2<f32>,
    kernel: usize,
    pad: usize,
    output: ArrayViewMut3<f32>,
) -> Result<(), NnError> {
    col2im_strided(col, kernel, pad, 1, output)
}

/// The adjoint of [`im2col_strided`]; `col` may be a column block of a wider matrix.
pub fn col2im_strided(
    col: ArrayView2<f32>,
    kernel: usize,
    pad: usize,
    stride: usize,
    output: ArrayViewMut3<f32>,
) -> Result<(), NnError> {
    let (c, h, w) = output.dim();
    let oh = out_len_strided(h, kernel, pad, stride)?;
    let ow = out_len_strided(w, kernel, pad, stride)?;
    check_shape(
        "col2im columns",
        col.shape(),
        &[c * kernel * kernel, oh * ow],
    )?;
    let dst = as_slice_mut(output, "col2im output")?;
    dst.fill(0.0);
    if col.is_empty() {
        return Ok(());
    }
    for (row_idx, row) in col.rows().into_iter().enumerate() {
        let row = row
            .to_slice()
            .ok_or(NnError::Layout("col2im column rows"))?;
        let ci = row_idx / (kernel * kernel);
        let kh = (row_idx / kernel) % kernel;
        let kw = row_idx % kernel;
        let plane = &mut dst[ci * h * w..(ci + 1) * h * w];
        let (lo, hi) = valid_range(w, ow, kw, pad, stride);
        if lo == hi {
            continue;
        }
        for (o_h, col_row) in row.chunks_exact(ow).enumerate() {
            let ih = o_h * stride + kh;
            if ih < pad || ih - pad >= h {
                continue;
            }
            let first = (ih - pad) * w + lo * stride + kw - pad;
            let in_row = &mut plane[first..=first + (hi - lo - 1) * stride];
            if stride == 1 {
                for (d, &s) in in_row.iter_mut().zip(&col_row[lo..hi]) {
                    *d += s;
                }
            } else {
                for (d, &s) in in_row.iter_mut().step_by(stride).zip(&col_row[lo..hi]) {
                    *d += s;
                }
            }
        }
    }
    Ok(())
}

/// Checks the shapes shared by forward and backward; returns (F, C·K·K, Ho·Wo).
fn check_conv_shapes(
    input: &ArrayView3<f32>,
    weight: &ArrayView2<f32>,
    kernel: usize,
    pad: usize,
    col_shape: &[usize],
    out_shape: &[usize],
) -> Result<(usize, usize, usize), NnError> {
    let (c, h, w) = input.dim();
    let (oh, ow) = (out_len(h, kernel, pad)?, out_len(w, kernel, pad)?);
    let f = weight.nrows();
    let ckk = c * kernel * kernel;
    check_shape("conv2d weight", weight.shape(), &[f, ckk])?;
    check_shape("conv2d columns", col_shape, &[ckk, oh * ow])?;
    check_shape("conv2d output", out_shape, &[f, oh * ow])?;
    Ok((f, ckk, oh * ow))
}

/// Convolves one image `input` (C, H, W) with `weight` (F, C·K·K) and `bias` (F), writing
/// `output` (F, Ho·Wo). `col` (C·K·K, Ho·Wo) is scratch and ends up holding im2col(input).
pub fn conv2d_forward(
    input: ArrayView3<f32>,
    weight: ArrayView2<f32>,
    bias: ArrayView1<f32>,
    kernel: usize,
    pad: usize,
    mut col: ArrayViewMut2<f32>,
    mut output: ArrayViewMut2<f32>,
) -> Result<(), NnError> {
    let (f, _, _) = check_conv_shapes(&input, &weight, kernel, pad, col.shape(), output.shape())?;
    check_shape("conv2d bias", bias.shape(), &[f])?;
    im2col(input, kernel, pad, col.view_mut())?;
    // Seeding the output with the bias and accumulating the product (beta = 1) saves a pass.
    for (mut row, &b) in output.rows_mut().into_iter().zip(bias.iter()) {
        row.fill(b);
    }
    mat_mul(1.0, &weight, &col, 1.0, &mut output);
    Ok(())
}

/// Backward pass for one image. `grad_output` is dL/dy (F, Ho·Wo). ADDS dL/dW to
/// `grad_weight` (F, C·K·K) and dL/db to `grad_bias` (F) so a batch can accumulate, and
/// OVERWRITES `grad_input` (C, H, W) with dL/dx when it is given. `col` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    input: ArrayView3<f32>,
    weight: ArrayView2<f32>,
    grad_output: ArrayView2<f32>,
    kernel: usize,
    pad: usize,
    mut col: ArrayViewMut2<f32>,
    mut grad_weight: ArrayViewMut2<f32>,
    mut grad_bias: ArrayViewMut1<f32>,
    grad_input: Option<ArrayViewMut3<f32>>,
) -> Result<(), NnError> {
    let (f, ckk, _) = check_conv_shapes(
        &input,
        &weight,
        kernel,
        pad,
        col.shape(),
        grad_output.shape(),
    )?;
    check_shape("conv2d weight gradient", grad_weight.shape(), &[f, ckk])?;
    check_shape("conv2d bias gradient", grad_bias.shape(), &[f])?;
    if let Some(gi) = &grad_input {
        check_shape("conv2d input gradient", gi.shape(), input.shape())?;
    }
    im2col(input, kernel, pad, col.view_mut())?;
    mat_mul(1.0, &grad_output, &col.t(), 1.0, &mut grad_weight);
    for (gb, row) in grad_bias.iter_mut().zip(grad_output.rows()) {
        *gb += row.sum();
    }
    if let Some(gi) = grad_input {
        // The columns are no longer needed, so they take dcols = Wᵀ·dY.
        mat_mul(1.0, &weight.t(), &grad_output, 0.0, &mut col);
        col2im(col.view(), kernel, pad, gi)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{
        assert_grad_close, dot_f64, random_image, random_vec, rng, CONV_CASES as CASES,
    };
    use ndarray::{Array2, Array3};

    /// Direct-loop convolution: y[f, oh, ow] = b[f] + Σ w[f, c, kh, kw]·x[c, oh+kh-pad, ow+kw-pad].
    fn naive_conv(
        x: &Array3<f32>,
        w: &[f32],
        b: &[f32],
        f: usize,
        k: usize,
        pad: usize,
    ) -> Vec<f32> {
        let (c, h, wd) = x.dim();
        let (oh, ow) = (h + 2 * pad + 1 - k, wd + 2 * pad + 1 - k);
        let mut y = vec![0f32; f * oh * ow];
        for fi in 0..f {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b[fi] as f64;
                    for ci in 0..c {
                        for kh in 0..k {
                            for kw in 0..k {
                                let (ih, iw) = (i + kh, j + kw);
                                if ih < pad || iw < pad || ih - pad >= h || iw - pad >= wd {
                                    continue;
                                }
                                acc += w[((fi * c + ci) * k + kh) * k + kw] as f64
                                    * x[[ci, ih - pad, iw - pad]] as f64;
                            }
                        }
                    }
                    y[(fi * oh + i) * ow + j] = acc as f32;
                }
            }
        }
        y
    }

    /// Direct-loop im2col from the definition.
    fn naive_im2col(x: &Array3<f32>, k: usize, pad: usize) -> Array2<f32> {
        let (c, h, w) = x.dim();
        let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        Array2::from_shape_fn((c * k * k, oh * ow), |(r, p)| {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let (ih, iw) = (
                (p / ow + kh) as isize - pad as isize,
                (p % ow + kw) as isize - pad as isize,
            );
            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                0.0
            } else {
                x[[ci, ih as usize, iw as usize]]
            }
        })
    }

    /// Direct-loop col2im: scatter-add every column entry back to its source pixel.
    fn naive_col2im(
        col: &Array2<f32>,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        pad: usize,
    ) -> Array3<f32> {
        let ow = w + 2 * pad + 1 - k;
        let mut out = Array3::zeros((c, h, w));
        for ((r, p), &v) in col.indexed_iter() {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let (ih, iw) = (
                (p / ow + kh) as isize - pad as isize,
                (p % ow + kw) as isize - pad as isize,
            );
            if ih >= 0 && iw >= 0 && ih < h as isize && iw < w as isize {
                out[[ci, ih as usize, iw as usize]] += v;
            }
        }
        out
    }

    #[test]
    fn im2col_matches_naive() {
        for (s, &(c, h, w, _, k, pad)) in CASES.iter().enumerate() {
            let x = random_image(s as u64, c, h, w);
            let want = naive_im2col(&x, k, pad);
            let mut got = Array2::from_elem(want.dim(), f32::NAN);
            im2col(x.view(), k, pad, got.view_mut()).expect("im2col");
            assert_eq!(got, want, "case {s}");
        }
    }

    #[test]
    fn col2im_matches_naive() {
        for (s, &(c, h, w, _, k, pad)) in CASES.iter().enumerate() {
            let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
            let mut r = rng(100 + s as u64);
            let col = Array2::from_shape_vec(
                (c * k * k, oh * ow),
                random_vec(&mut r, c * k * k * oh * ow, -1.0, 1.0),
            )
            .expect("shape");
            let want = naive_col2im(&col, c, h, w, k, pad);
            let mut got = Array3::from_elem((c, h, w), f32::NAN);
            col2im(col.view(), k, pad, got.view_mut()).expect("col2im");
            for (a, b) in got.iter().zip(want.iter()) {
                assert!((a - b).abs() <= 1e-5, "case {s}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn forward_matches_naive() {
        for (s, &(c, h, w, f, k, pad)) in CASES.iter().enumerate() {
            let x = random_image(10 + s as u64, c, h, w);
            let mut r = rng(20 + s as u64);
            let wt = random_vec(&mut r, f * c * k * k, -1.0, 1.0);
            let b = random_vec(&mut r, f, -1.0, 1.0);
            let want = naive_conv(&x, &wt, &b, f, k, pad);
            let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
            let mut col = Array2::zeros((c * k * k, oh * ow));
            let mut out = Array2::from_elem((f, oh * ow), f32::NAN);
            let wv = ArrayView2::from_shape((f, c * k * k), &wt).expect("shape");
            conv2d_forward(
                x.view(),
                wv,
                ArrayView1::from(&b),
                k,
                pad,
                col.view_mut(),
                out.view_mut(),
            )
            .expect("forward");
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5, "case {s}: {a} vs {b}");
            }
        }
    }

    /// The per-sample backward kernel against direct loops for dW and dx.
    #[test]
    fn backward_matches_naive() {
        let (c, h, w, f, k, pad) = (2, 6, 5, 3, 3, 1);
        let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        let x = random_image(40, c, h, w);
        let mut r = rng(41);
        let wt = random_vec(&mut r, f * c * k * k, -1.0, 1.0);
        let dy = random_vec(&mut r, f * oh * ow, -1.0, 1.0);
        let mut gw = Array2::zeros((f, c * k * k));
        let mut gb = ndarray::Array1::zeros(f);
        let mut gx = Array3::zeros((c, h, w));
        let mut col = Array2::zeros((c * k * k, oh * ow));
        conv2d_backward(
            x.view(),
            ArrayView2::from_shape((f, c * k * k), &wt).expect("shape"),
            ArrayView2::from_shape((f, oh * ow), &dy).expect("shape"),
            k,
            pad,
            col.view_mut(),
            gw.view_mut(),
            gb.view_mut(),
            Some(gx.view_mut()),
        )
        .expect("backward");
        let mut want_gw = vec![0f64; f * c * k * k];
        let mut want_gx = Array3::<f64>::zeros((c, h, w));
        for fi in 0..f {
            for p in 0..oh * ow {
                let g = dy[fi * oh * ow + p] as f64;
                for ci in 0..c {
                    for kh in 0..k {
                        for kw in 0..k {
                            let (ih, iw) = (p / ow + kh, p % ow + kw);
                            if ih < pad || iw < pad || ih - pad >= h || iw - pad >= w {
                                continue;
                            }
                            let wi = ((fi * c + ci) * k + kh) * k + kw;
                            want_gw[wi] += g * x[[ci, ih - pad, iw - pad]] as f64;
                            want_gx[[ci, ih - pad, iw - pad]] += g * wt[wi] as f64;
                        }
                    }
                }
            }
        }
        assert_grad_close(
            "naive dW",
            gw.as_slice().expect("contiguous"),
            &want_gw,
            1e-5,
            1e-5,
        );
        let want_gx: Vec<f64> = want_gx.iter().copied().collect();
        assert_grad_close(
            "naive dx",
            gx.as_slice().expect("contiguous"),
            &want_gx,
            1e-5,
            1e-5,
        );
    }

    /// Direct-loop strided im2col from the definition.
    fn naive_im2col_strided(x: &Array3<f32>, k: usize, pad: usize, st: usize) -> Array2<f32> {
        let (c, h, w) = x.dim();
        let (oh, ow) = ((h + 2 * pad - k) / st + 1, (w + 2 * pad - k) / st + 1);
        Array2::from_shape_fn((c * k * k, oh * ow), |(r, p)| {
            let (ci, kh, kw) = (r / (k * k), (r / k) % k, r % k);
            let ih = ((p / ow) * st + kh) as isize - pad as isize;
            let iw = ((p % ow) * st + kw) as isize - pad as isize;
            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                0.0
            } else {
                x[[ci, ih as usize, iw as usize]]
            }
        })
    }

    /// Strided im2col against the definition, and col2im as its exact adjoint:
    /// <im2col(x), Y> = <x, col2im(Y)> for random x and Y.
    #[test]
    fn strided_im2col_matches_naive_and_col2im_is_its_adjoint() {
        // (C, H, W, K, pad, stride)
        for (s_, &(c, h, w, k, pad, st)) in [
            (2, 7, 6, 3, 1, 2),
            (1, 8, 8, 1, 0, 2),
            (3, 9, 9, 3, 1, 3),
            (2, 6, 5, 3, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let x = random_image(60 + s_ as u64, c, h, w);
            let want = naive_im2col_strided(&x, k, pad, st);
            let mut got = Array2::from_elem(want.dim(), f32::NAN);
            im2col_strided(x.view(), k, pad, st, got.view_mut()).expect("im2col");
            assert_eq!(got, want, "case {s_}");
            let mut r = rng(70 + s_ as u64);
            let y = Array2::from_shape_vec(want.dim(), random_vec(&mut r, want.len(), -1.0, 1.0))
                .expect("shape");
            let mut back = Array3::from_elem((c, h, w), f32::NAN);
            col2im_strided(y.view(), k, pad, st, back.view_mut()).expect("col2im");
            let lhs = dot_f64(got.as_slice().expect("c"), y.as_slice().expect("c"));
            let rhs = dot_f64(x.as_slice().expect("c"), back.as_slice().expect("c"));
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "case {s_}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = random_image(1, 2, 4, 4);
        let mut col = Array2::zeros((18, 16));
        assert!(
            im2col(x.view(), 3, 0, col.view_mut()).is_err(),
            "wrong column shape"
        );
        assert!(
            im2col(x.view(), 7, 1, col.view_mut()).is_err(),
            "kernel does not fit"
        );
        // Every other column of a wider image: right shape, but not contiguous.
        let wide = random_image(2, 2, 4, 8);
        let strided = wide.slice(ndarray::s![.., .., ..;2]);
        let mut col = Array2::zeros((18, 16));
        assert!(matches!(
            im2col(strided, 3, 1, col.view_mut()),
            Err(NnError::Layout(_))
        ));
    }
}
