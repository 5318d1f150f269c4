//! The 2-D convolution layer of the models, with zero padding and a stride, computed as
//! im2col + matrix product ([`crate::im2col`]) over groups of samples whose columns sit side
//! by side, so one product serves the group, or by [`winograd`] where the layer's
//! [`ConvAlgo`] says so. Weights use PyTorch's (F, C, K, K) layout and sit in the flat
//! buffer right before the F-entry bias. Backward: dW = dY·colsᵀ, db = Σ dY,
//! dcols = Wᵀ·dY, then col2im scatters dcols onto dx.

use std::ops::Range;

use ndarray::{s, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3};

use crate::conv_algo::ConvAlgo;
use crate::im2col::{col2im_strided, im2col_strided, out_len_strided};
use crate::matmul::mat_mul;
use crate::{as_slice, NnError};

pub mod winograd;

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
    /// The algorithm, fixed by the geometry ([`ConvAlgo::select`]).
    pub algo: ConvAlgo,
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
        let oh = out_len_strided(in_h, kernel, pad, stride)?;
        let ow = out_len_strided(in_w, kernel, pad, stride)?;
        let algo = ConvAlgo::select(kernel, stride, (in_channels, out_channels), (oh, ow))?;
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
            algo,
        })
    }

    /// The same layer with another algorithm (tests and measurements).
    ///
    /// # Errors
    /// [`NnError::Config`] for a Winograd tile on a strided layer or another kernel size.
    pub fn with_algo(mut self, algo: ConvAlgo) -> Result<Conv2d, NnError> {
        self.check_tile(algo)?;
        self.algo = algo;
        Ok(self)
    }

    /// Rejects a Winograd tile that does not fit this layer (`algo` is a public field, so
    /// the passes check it again rather than compute a wrong convolution).
    fn check_tile(&self, algo: ConvAlgo) -> Result<(), NnError> {
        match algo {
            ConvAlgo::Winograd(t) if self.stride != 1 || t.r() != self.kernel => {
                Err(NnError::Config(format!(
                    "{t:?} needs stride 1 and a {}x{} kernel, the layer has stride {} and {}x{}",
                    t.r(),
                    t.r(),
                    self.stride,
                    self.kernel,
                    self.kernel
                )))
            }
            _ => Ok(()),
        }
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

    /// Floats of the column scratch. im2col: the columns of one group, (C·K·K, G·Ho·Wo),
    /// followed by one group's output (or output gradient) in (F, G·Ho·Wo) layout.
    /// Winograd: the transformed weights, their gradient, and one group's tiles.
    pub fn col_size(&self) -> usize {
        match self.algo {
            ConvAlgo::Im2col => {
                self.group() * self.out_h() * self.out_w() * (self.fan_in() + self.out_channels)
            }
            ConvAlgo::Winograd(t) => winograd::scratch_len(self, t),
        }
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

    /// Floats [`Conv2d::forward`] keeps for [`Conv2d::backward_kept`] over `n`
    /// samples: a Winograd layer's transformed input tiles; 0 for im2col.
    pub fn saved_len(&self, n: usize) -> usize {
        match self.algo {
            ConvAlgo::Im2col => 0,
            ConvAlgo::Winograd(t) => winograd::saved_len(self, t, n),
        }
    }

    /// Forward pass over a batch of `n` NCHW samples in `input`, writing (N, F, Ho, Wo) to
    /// `output`, followed by a ReLU when `relu` is set (fused into the pass that adds the
    /// bias and moves the product into NCHW order). `col` must hold at least
    /// [`Conv2d::col_size`] floats. `keep` (at least [`Conv2d::saved_len`] floats; empty
    /// to keep nothing) receives what [`Conv2d::backward_kept`] can reuse: the weight
    /// gradient then skips transforming the input again. It costs memory in proportion to
    /// the batch; eval passes don't need it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        params: &[f32],
        n: usize,
        input: &[f32],
        col: &mut [f32],
        keep: &mut [f32],
        output: &mut [f32],
        relu: bool,
    ) -> Result<(), NnError> {
        self.check_batch("conv2d input", input.len(), self.in_size(), n)?;
        self.check_batch("conv2d output", output.len(), self.out_size(), n)?;
        self.check_batch("conv2d columns", col.len(), self.col_size(), 1)?;
        if !keep.is_empty() {
            self.check_batch("conv2d kept tiles", keep.len(), self.saved_len(n), 1)?;
        }
        let (weight, bias) = self.param_views(params)?;
        if let ConvAlgo::Winograd(t) = self.algo {
            self.check_tile(self.algo)?;
            return winograd::forward(self, t, params, n, input, col, keep, output, relu);
        }
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
            mat_mul(1.0, &weight, &cols, 0.0, &mut prod);
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
        grad_input: Option<&mut [f32]>,
    ) -> Result<(), NnError> {
        self.backward_kept(params, n, input, grad_output, &[], col, grads, grad_input)
    }

    /// [`Conv2d::backward`] reusing what [`Conv2d::forward`] kept of the same batch
    /// (`kept`, or empty for nothing): the caller guarantees it comes from the forward
    /// pass of this `input` and these `params`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_kept(
        &self,
        params: &[f32],
        n: usize,
        input: &[f32],
        grad_output: &[f32],
        kept: &[f32],
        col: &mut [f32],
        grads: &mut [f32],
        mut grad_input: Option<&mut [f32]>,
    ) -> Result<(), NnError> {
        if !kept.is_empty() {
            self.check_batch("conv2d kept tiles", kept.len(), self.saved_len(n), 1)?;
        }
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
        if let ConvAlgo::Winograd(t) = self.algo {
            self.check_tile(self.algo)?;
            return winograd::backward(
                self,
                t,
                params,
                n,
                input,
                grad_output,
                kept,
                col,
                gw,
                gb,
                grad_input,
            );
        }
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
            mat_mul(1.0, &dy, &cols.t(), 1.0, &mut gw);
            if let Some(gi) = grad_input.as_deref_mut() {
                // The columns are no longer needed, so they take dcols = Wᵀ·dY.
                mat_mul(1.0, &weight.t(), &dy, 0.0, &mut cols);
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
mod tests;
