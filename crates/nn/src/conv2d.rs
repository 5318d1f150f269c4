//! 2-D convolution with zero padding and a stride, computed as im2col + matrix product.
//! Weights use PyTorch's (F, C, K, K) layout, read as an (F, C·K·K) matrix; the bias has F entries.
//! Forward: cols = im2col(x) is (C·K·K, Ho·Wo) and y = W·cols + b is (F, Ho·Wo), i.e. NCHW.
//! Backward: dW += dY·colsᵀ, db += Σ dY, dcols = Wᵀ·dY, then col2im scatters dcols onto dx.
//! The layer puts a group of samples' columns side by side, so one product serves the group;
//! the per-sample kernels `conv2d_forward`/`conv2d_backward` are its stride-1 reference.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut1, ArrayViewMut2, ArrayViewMut3};

use crate::{as_slice, as_slice_mut, check_shape, NnError};

/// Output side length of a convolution, or an error if the kernel does not fit.
fn out_len_strided(
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
    general_mat_mul(1.0, &weight, &col, 1.0, &mut output);
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
    general_mat_mul(1.0, &grad_output, &col.t(), 1.0, &mut grad_weight);
    for (gb, row) in grad_bias.iter_mut().zip(grad_output.rows()) {
        *gb += row.sum();
    }
    if let Some(gi) = grad_input {
        // The columns are no longer needed, so they take dcols = Wᵀ·dY.
        general_mat_mul(1.0, &weight.t(), &grad_output, 0.0, &mut col);
        col2im(col.view(), kernel, pad, gi)?;
    }
    Ok(())
}

/// Output columns (samples × Ho·Wo) a layer aims for in one matrix product. Per-sample
/// products of a small layer are too narrow for the product to amortise packing the
/// weight matrix; grouping samples fixes that while the column buffer stays a few MB.
const GROUP_COLUMNS: usize = 1536;

/// A convolution layer of the model: its geometry and where its parameters live in the
/// flat buffer (weight immediately followed by bias). Batches are processed in groups of
/// [`Conv2d::group`] samples whose im2col columns sit side by side in one matrix, so one
/// matrix product serves the whole group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels C.
    pub in_channels: usize,
    /// Output channels (filters) F.
    pub out_channels: usize,
    /// Square kernel side K.
    pub kernel: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Input height H.
    pub in_h: usize,
    /// Input width W.
    pub in_w: usize,
    /// Range of the (F, C, K, K) weight in the flat buffer.
    pub weight: Range<usize>,
    /// Range of the (F) bias in the flat buffer.
    pub bias: Range<usize>,
}

impl Conv2d {
    /// A stride-1 layer whose parameters start at `offset` in the flat buffer.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        pad: usize,
        in_hw: (usize, usize),
        offset: usize,
    ) -> Result<Conv2d, NnError> {
        Conv2d::new_strided(in_channels, out_channels, kernel, pad, 1, in_hw, offset)
    }

    /// A layer with the given stride whose parameters start at `offset`.
    pub fn new_strided(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        pad: usize,
        stride: usize,
        (in_h, in_w): (usize, usize),
        offset: usize,
    ) -> Result<Conv2d, NnError> {
        out_len_strided(in_h, kernel, pad, stride)?;
        out_len_strided(in_w, kernel, pad, stride)?;
        let wlen = out_channels * in_channels * kernel * kernel;
        Ok(Conv2d {
            in_channels,
            out_channels,
            kernel,
            pad,
            stride,
            in_h,
            in_w,
            weight: offset..offset + wlen,
            bias: offset + wlen..offset + wlen + out_channels,
        })
    }

    /// The same layer without a bias (its bias range becomes empty), as convolutions
    /// followed by batch normalization have; every parameter after it moves down by F.
    pub fn without_bias(mut self) -> Conv2d {
        self.bias = self.weight.end..self.weight.end;
        self
    }

    /// Output height Ho.
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// Output width Wo.
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// Inputs per weight row, C·K·K: the fan-in used for initialisation.
    pub fn fan_in(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Floats of one input sample, C·H·W.
    pub fn in_size(&self) -> usize {
        self.in_channels * self.in_h * self.in_w
    }

    /// Floats of one output sample, F·Ho·Wo.
    pub fn out_size(&self) -> usize {
        self.out_channels * self.out_h() * self.out_w()
    }

    /// Samples per matrix product.
    pub fn group(&self) -> usize {
        (GROUP_COLUMNS / (self.out_h() * self.out_w()).max(1)).max(1)
    }

    /// Floats of the column scratch: the im2col columns of one group, (C·K·K, G·Ho·Wo),
    /// followed by one group's output (or output gradient) in (F, G·Ho·Wo) layout.
    pub fn col_size(&self) -> usize {
        self.group() * self.out_h() * self.out_w() * (self.fan_in() + self.out_channels)
    }

    /// One past the last parameter of this layer.
    pub fn end(&self) -> usize {
        self.bias.end
    }

    /// Views of (weight (F, C·K·K), bias (F)) inside the flat parameter buffer.
    fn param_views<'a>(
        &self,
        params: &'a [f32],
    ) -> Result<(ArrayView2<'a, f32>, &'a [f32]), NnError> {
        if params.len() < self.end() {
            return Err(crate::shape_err(
                "conv2d parameters",
                self.end(),
                params.len(),
            ));
        }
        let w = ArrayView2::from_shape(
            (self.out_channels, self.fan_in()),
            &params[self.weight.clone()],
        )?;
        Ok((w, &params[self.bias.clone()]))
    }

    fn input_view<'a>(&self, x: &'a [f32], n: usize) -> Result<ArrayView3<'a, f32>, NnError> {
        let s = self.in_size();
        Ok(ArrayView3::from_shape(
            (self.in_channels, self.in_h, self.in_w),
            &x[n * s..(n + 1) * s],
        )?)
    }

    fn check_batch(
        &self,
        what: &str,
        len: usize,
        per_sample: usize,
        n: usize,
    ) -> Result<(), NnError> {
        if len < n * per_sample {
            return Err(crate::shape_err(what, n * per_sample, len));
        }
        Ok(())
    }

    /// Fills the first `g` column blocks of `cols` with im2col of samples `first..first+g`.
    fn unfold_group(
        &self,
        input: &[f32],
        first: usize,
        g: usize,
        cols: &mut ArrayViewMut2<f32>,
    ) -> Result<(), NnError> {
        let hw = self.out_h() * self.out_w();
        for j in 0..g {
            im2col_strided(
                self.input_view(input, first + j)?,
                self.kernel,
                self.pad,
                self.stride,
                cols.slice_mut(s![.., j * hw..(j + 1) * hw]),
            )?;
        }
        Ok(())
    }

    /// Forward pass over a batch of `n` NCHW samples in `input`, writing (N, F, Ho, Wo) to
    /// `output`. `col` must hold at least [`Conv2d::col_size`] floats.
    pub fn forward(
        &self,
        params: &[f32],
        n: usize,
        input: &[f32],
        col: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), NnError> {
        self.forward_act(params, n, input, col, output, false)
    }

    /// [`Conv2d::forward`] followed by a ReLU when `relu` is set, fused into the pass that
    /// adds the bias and moves the product into NCHW order.
    pub fn forward_act(
        &self,
        params: &[f32],
        n: usize,
        input: &[f32],
        col: &mut [f32],
        output: &mut [f32],
        relu: bool,
    ) -> Result<(), NnError> {
        self.check_batch("conv2d input", input.len(), self.in_size(), n)?;
        self.check_batch("conv2d output", output.len(), self.out_size(), n)?;
        self.check_batch("conv2d columns", col.len(), self.col_size(), 1)?;
        let (weight, bias) = self.param_views(params)?;
        let (hw, os, f, ckk) = (
            self.out_h() * self.out_w(),
            self.out_size(),
            self.out_channels,
            self.fan_in(),
        );
        let gmax = self.group();
        let (cols_buf, out_buf) = col[..self.col_size()].split_at_mut(gmax * hw * ckk);
        for first in (0..n).step_by(gmax) {
            let g = gmax.min(n - first);
            let mut cols = ArrayViewMut2::from_shape((ckk, g * hw), &mut cols_buf[..ckk * g * hw])?;
            self.unfold_group(input, first, g, &mut cols)?;
            let mut prod = ArrayViewMut2::from_shape((f, g * hw), &mut out_buf[..f * g * hw])?;
            general_mat_mul(1.0, &weight, &cols, 0.0, &mut prod);
            let prod = as_slice(&prod.view(), "conv2d product")?;
            for j in 0..g {
                let out = &mut output[(first + j) * os..(first + j + 1) * os];
                for (fi, (dst, src)) in out
                    .chunks_exact_mut(hw)
                    .zip(prod.chunks_exact(g * hw))
                    .enumerate()
                {
                    let b = bias.get(fi).copied().unwrap_or(0.0);
                    let src = &src[j * hw..(j + 1) * hw];
                    if relu {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = (v + b).max(0.0);
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = v + b;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Backward pass over a batch of `n` samples. OVERWRITES this layer's ranges of the flat
    /// `grads` buffer with dL/dW and dL/db, and `grad_input` (N, C, H, W) with dL/dx if given.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        n: usize,
        input: &[f32],
        grad_output: &[f32],
        col: &mut [f32],
        grads: &mut [f32],
        mut grad_input: Option<&mut [f32]>,
    ) -> Result<(), NnError> {
        self.check_batch("conv2d input", input.len(), self.in_size(), n)?;
        self.check_batch(
            "conv2d output gradient",
            grad_output.len(),
            self.out_size(),
            n,
        )?;
        self.check_batch("conv2d columns", col.len(), self.col_size(), 1)?;
        self.check_batch("conv2d gradients", grads.len(), self.end(), 1)?;
        if let Some(gi) = &grad_input {
            self.check_batch("conv2d input gradient", gi.len(), self.in_size(), n)?;
        }
        let (weight, _) = self.param_views(params)?;
        let (gw, gb) = grads[self.weight.start..self.bias.end].split_at_mut(self.weight.len());
        gw.fill(0.0);
        gb.fill(0.0);
        let mut gw = ArrayViewMut2::from_shape((self.out_channels, self.fan_in()), gw)?;
        let (hw, os, is, f, ckk) = (
            self.out_h() * self.out_w(),
            self.out_size(),
            self.in_size(),
            self.out_channels,
            self.fan_in(),
        );
        let shape3 = (self.in_channels, self.in_h, self.in_w);
        let gmax = self.group();
        let (cols_buf, dy_buf) = col[..self.col_size()].split_at_mut(gmax * hw * ckk);
        for first in (0..n).step_by(gmax) {
            let g = gmax.min(n - first);
            // Gather the group's output gradient into (F, G·Ho·Wo) and sum the bias gradient.
            let dy = &mut dy_buf[..f * g * hw];
            for (fi, row) in dy.chunks_exact_mut(g * hw).enumerate() {
                for (j, dst) in row.chunks_exact_mut(hw).enumerate() {
                    let at = (first + j) * os + fi * hw;
                    dst.copy_from_slice(&grad_output[at..at + hw]);
                    if let Some(gbf) = gb.get_mut(fi) {
                        *gbf += dst.iter().sum::<f32>();
                    }
                }
            }
            let dy = ArrayView2::from_shape((f, g * hw), &*dy)?;
            let mut cols = ArrayViewMut2::from_shape((ckk, g * hw), &mut cols_buf[..ckk * g * hw])?;
            self.unfold_group(input, first, g, &mut cols)?;
            general_mat_mul(1.0, &dy, &cols.t(), 1.0, &mut gw);
            if let Some(gi) = grad_input.as_deref_mut() {
                // The columns are no longer needed, so they take dcols = Wᵀ·dY.
                general_mat_mul(1.0, &weight.t(), &dy, 0.0, &mut cols);
                for j in 0..g {
                    let i = first + j;
                    col2im_strided(
                        cols.slice(s![.., j * hw..(j + 1) * hw]),
                        self.kernel,
                        self.pad,
                        self.stride,
                        ArrayViewMut3::from_shape(shape3, &mut gi[i * is..(i + 1) * is])?,
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_grad_close, dot_f64, numeric_grad, random_vec, rng};
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

    fn random_image(seed: u64, c: usize, h: usize, w: usize) -> Array3<f32> {
        let mut r = rng(seed);
        Array3::from_shape_vec((c, h, w), random_vec(&mut r, c * h * w, -1.0, 1.0)).expect("shape")
    }

    /// Shapes covering no padding, "same" padding, padding wider than the kernel reach,
    /// and non-square images.
    const CASES: [(usize, usize, usize, usize, usize, usize); 5] = [
        // (C, H, W, F, K, pad)
        (1, 5, 5, 2, 3, 0),
        (2, 6, 5, 3, 3, 1),
        (3, 7, 6, 4, 5, 2),
        (2, 4, 4, 2, 5, 3),
        (1, 8, 8, 2, 1, 0),
    ];

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

    /// Weight, bias and input gradients of L = Σ y·R against central differences, through
    /// the batched layer so its per-sample accumulation is covered too.
    #[test]
    fn layer_backward_matches_finite_differences() {
        for (s, &(c, h, w, f, k, pad)) in CASES.iter().enumerate() {
            let n = 2;
            let layer = Conv2d::new(c, f, k, pad, (h, w), 3).expect("layer");
            let mut r = rng(30 + s as u64);
            let params = random_vec(&mut r, layer.end() + 2, -1.0, 1.0);
            let mut x = random_vec(&mut r, n * layer.in_size(), -1.0, 1.0);
            let proj = random_vec(&mut r, n * layer.out_size(), -1.0, 1.0);
            let mut col = vec![0.0; layer.col_size()];
            let loss = |p: &[f32], x: &[f32], col: &mut Vec<f32>| {
                let mut y = vec![0.0; n * layer.out_size()];
                layer.forward(p, n, x, col, &mut y).expect("forward");
                dot_f64(&y, &proj)
            };
            // Garbage in the gradient buffers proves the backward pass overwrites them.
            let mut grads = vec![7.0; params.len()];
            let mut gx = vec![7.0; x.len()];
            layer
                .backward(&params, n, &x, &proj, &mut col, &mut grads, Some(&mut gx))
                .expect("backward");
            assert_eq!(
                grads[..3],
                [7.0; 3],
                "outside the layer's range must stay untouched"
            );

            let xs = x.clone();
            let num_p = numeric_grad(
                &mut params[layer.weight.start..layer.bias.end].to_vec(),
                1e-2,
                |sub| {
                    let mut p = vec![0.0; 3];
                    p.extend_from_slice(sub);
                    loss(&p, &xs, &mut col.clone())
                },
            );
            let pc = params.clone();
            let num_x = numeric_grad(&mut x, 1e-2, |xv| loss(&pc, xv, &mut col.clone()));
            assert_grad_close(
                &format!("case {s} weight"),
                &grads[layer.weight.clone()],
                &num_p[..layer.weight.len()],
                1e-3,
                1e-3,
            );
            assert_grad_close(
                &format!("case {s} bias"),
                &grads[layer.bias.clone()],
                &num_p[layer.weight.len()..],
                1e-3,
                1e-3,
            );
            assert_grad_close(&format!("case {s} input"), &gx, &num_x, 1e-3, 1e-3);
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

    /// The grouped layer (several samples per product, a last partial group) against the
    /// per-sample kernels, forward and backward, with the fused ReLU too.
    #[test]
    fn grouped_layer_matches_per_sample_kernels() {
        let (c, h, w, f, k, pad, n) = (2, 20, 20, 3, 3, 1, 5);
        let layer = Conv2d::new(c, f, k, pad, (h, w), 0).expect("layer");
        assert_eq!(
            layer.group(),
            3,
            "the test needs a full and a partial group"
        );
        let mut r = rng(80);
        let params = random_vec(&mut r, layer.end(), -1.0, 1.0);
        let x = random_vec(&mut r, n * layer.in_size(), -1.0, 1.0);
        let dy = random_vec(&mut r, n * layer.out_size(), -1.0, 1.0);
        let mut col = vec![f32::NAN; layer.col_size()];
        let mut y = vec![f32::NAN; n * layer.out_size()];
        layer
            .forward(&params, n, &x, &mut col, &mut y)
            .expect("forward");
        let mut y_relu = vec![f32::NAN; y.len()];
        layer
            .forward_act(&params, n, &x, &mut col, &mut y_relu, true)
            .expect("forward relu");
        let mut grads = vec![f32::NAN; layer.end()];
        let mut gx = vec![f32::NAN; x.len()];
        layer
            .backward(&params, n, &x, &dy, &mut col, &mut grads, Some(&mut gx))
            .expect("backward");

        let wv = ArrayView2::from_shape((f, c * k * k), &params[layer.weight.clone()]).expect("w");
        let bv = ArrayView1::from(&params[layer.bias.clone()]);
        let (hw, os, is) = (h * w, layer.out_size(), layer.in_size());
        let mut one_col = Array2::zeros((c * k * k, hw));
        let mut want_gw = Array2::zeros((f, c * k * k));
        let mut want_gb = ndarray::Array1::zeros(f);
        for i in 0..n {
            let xi = ArrayView3::from_shape((c, h, w), &x[i * is..(i + 1) * is]).expect("x");
            let mut yi = Array2::zeros((f, hw));
            conv2d_forward(xi, wv, bv, k, pad, one_col.view_mut(), yi.view_mut()).expect("ref");
            let got = &y[i * os..(i + 1) * os];
            for (a, b) in got.iter().zip(yi.iter()) {
                assert!((a - b).abs() < 1e-5, "forward sample {i}: {a} vs {b}");
            }
            for (a, b) in y_relu[i * os..(i + 1) * os].iter().zip(yi.iter()) {
                assert!((a - b.max(0.0)).abs() < 1e-5, "relu sample {i}: {a} vs {b}");
            }
            let dyi = ArrayView2::from_shape((f, hw), &dy[i * os..(i + 1) * os]).expect("dy");
            let mut gxi = Array3::zeros((c, h, w));
            conv2d_backward(
                xi,
                wv,
                dyi,
                k,
                pad,
                one_col.view_mut(),
                want_gw.view_mut(),
                want_gb.view_mut(),
                Some(gxi.view_mut()),
            )
            .expect("ref backward");
            for (a, b) in gx[i * is..(i + 1) * is].iter().zip(gxi.iter()) {
                assert!((a - b).abs() < 1e-4, "dx sample {i}: {a} vs {b}");
            }
        }
        for (a, b) in grads[layer.weight.clone()].iter().zip(want_gw.iter()) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "dW {a} vs {b}");
        }
        for (a, b) in grads[layer.bias.clone()].iter().zip(want_gb.iter()) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "db {a} vs {b}");
        }
    }

    /// A stride-2 layer's gradients against central differences.
    #[test]
    fn strided_layer_backward_matches_finite_differences() {
        let (c, h, w, f, k, pad, st, n) = (2, 7, 6, 3, 3, 1, 2, 2);
        let layer = Conv2d::new_strided(c, f, k, pad, st, (h, w), 0).expect("layer");
        assert_eq!((layer.out_h(), layer.out_w()), (4, 3));
        let mut r = rng(90);
        let mut params = random_vec(&mut r, layer.end(), -1.0, 1.0);
        let mut x = random_vec(&mut r, n * layer.in_size(), -1.0, 1.0);
        let proj = random_vec(&mut r, n * layer.out_size(), -1.0, 1.0);
        let mut col = vec![0.0; layer.col_size()];
        let mut grads = vec![0.0; layer.end()];
        let mut gx = vec![0.0; x.len()];
        layer
            .backward(&params, n, &x, &proj, &mut col, &mut grads, Some(&mut gx))
            .expect("backward");
        let mut loss = |p: &[f32], xv: &[f32]| {
            let mut y = vec![0.0; n * layer.out_size()];
            layer.forward(p, n, xv, &mut col, &mut y).expect("forward");
            dot_f64(&y, &proj)
        };
        let xs = x.clone();
        let num_p = numeric_grad(&mut params, 1e-2, |p| loss(p, &xs));
        let pc = params.clone();
        let num_x = numeric_grad(&mut x, 1e-2, |xv| loss(&pc, xv));
        assert_grad_close("strided params", &grads, &num_p, 1e-3, 1e-3);
        assert_grad_close("strided input", &gx, &num_x, 1e-3, 1e-3);
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
        assert!(Conv2d::new(1, 1, 5, 0, (3, 3), 0).is_err());
    }
}
