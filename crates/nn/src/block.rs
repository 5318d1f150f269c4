//! The pieces of ResNet-20's basic block: a bias-free 3×3 convolution followed by batch
//! normalization (`ConvBn`), and the block's shortcut, the identity or option A of He et
//! al. (subsample by 2, zero-pad channels). The shortcut has no parameters, and its
//! backward pass is the exact adjoint of its forward pass.

use crate::batchnorm::BatchNorm;
use crate::conv2d::Conv2d;
use crate::network::Mode;
use crate::NnError;

/// A bias-free 3×3 convolution followed by batch normalization.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    pub(crate) conv: Conv2d,
    pub(crate) bn: BatchNorm,
}

impl ConvBn {
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        hw: (usize, usize),
        offset: usize,
    ) -> Result<ConvBn, NnError> {
        let conv = Conv2d::new_strided(cin, cout, 3, 1, stride, hw, offset)?.without_bias();
        let bn = BatchNorm::new(cout, conv.out_h() * conv.out_w(), conv.end());
        Ok(ConvBn { conv, bn })
    }

    pub(crate) fn end(&self) -> usize {
        self.bn.end()
    }

    pub(crate) fn out_size(&self) -> usize {
        self.conv.out_size()
    }

    /// Conv into `z`, then BN into `out` (batch statistics, saved in `saved`, in
    /// [`Mode::Train`], else running ones), ReLU if `relu`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        params: &[f32],
        n: usize,
        input: &[f32],
        col: &mut [f32],
        z: &mut [f32],
        saved: &mut [f32],
        out: &mut [f32],
        relu: bool,
        mode: Mode,
    ) -> Result<(), NnError> {
        self.conv
            .forward(params, n, input, col, &mut [], z, false)?;
        match mode {
            Mode::Train => self.bn.forward_train(params, n, z, out, saved, relu),
            Mode::Eval => self.bn.forward_eval(params, n, z, out, relu),
        }
    }
}

/// out = ReLU(BN(conv2(ReLU(BN(conv1(x))))) + shortcut(x)).
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) c1: ConvBn,
    pub(crate) c2: ConvBn,
    /// Stride 2 with twice the channels: option-A shortcut instead of the identity.
    pub(crate) down: bool,
    /// Indices of this block's two layers in the activations' per-layer lists.
    pub(crate) layer: usize,
}

impl Block {
    /// out += shortcut(input): the identity, or option A (subsample by 2, channels padded
    /// with out/4 zero planes on each side).
    pub(crate) fn shortcut_add(&self, n: usize, input: &[f32], out: &mut [f32]) {
        if self.down {
            self.option_a_pairs(n, |i, o| out[o] += input[i]);
            return;
        }
        let len = n * self.c2.out_size();
        for (o, &x) in out[..len].iter_mut().zip(&input[..len]) {
            *o += x;
        }
    }

    /// The adjoint of [`Block::shortcut_add`]: d_input += shortcutᵀ(d_out).
    pub(crate) fn shortcut_backward(&self, n: usize, d_out: &[f32], d_input: &mut [f32]) {
        if self.down {
            self.option_a_pairs(n, |i, o| d_input[i] += d_out[o]);
            return;
        }
        let len = n * self.c1.conv.in_size();
        for (d, &g) in d_input[..len].iter_mut().zip(&d_out[..len]) {
            *d += g;
        }
    }

    /// Calls `f(input index, output index)` for every pair option A connects, sample by
    /// sample and channel by channel in row-major order: input pixel (2y, 2x) of channel c
    /// feeds output pixel (y, x) of channel c + out/4.
    fn option_a_pairs(&self, n: usize, mut f: impl FnMut(usize, usize)) {
        let (c1, c2) = (&self.c1.conv, &self.c2.conv);
        let (isz, osz) = (c1.in_size(), c2.out_size());
        let (ihw, iw) = (c1.in_h * c1.in_w, c1.in_w);
        let (oh, ow) = (c2.out_h(), c2.out_w());
        let off = self.c2.bn.channels / 4;
        for i in 0..n {
            for c in 0..c1.in_channels {
                let (src, dst) = (i * isz + c * ihw, i * osz + (c + off) * oh * ow);
                for y in 0..oh {
                    for x in 0..ow {
                        f(src + 2 * y * iw + 2 * x, dst + y * ow + x);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{random_vec, rng};

    /// Option A's backward is the exact adjoint of its forward.
    #[test]
    fn option_a_shortcut_is_adjoint() {
        // The first block of ResNet-20's second stage on 8×8 images: 16 → 32 channels.
        let c1 = ConvBn::new(16, 32, 2, (8, 8), 0).expect("conv");
        let c2 = ConvBn::new(32, 32, 1, (4, 4), c1.end()).expect("conv");
        let blk = Block {
            c1,
            c2,
            down: true,
            layer: 0,
        };
        let n = 2;
        let mut r = rng(11);
        let x = random_vec(&mut r, n * blk.c1.conv.in_size(), -1.0, 1.0);
        let g = random_vec(&mut r, n * blk.c2.out_size(), -1.0, 1.0);
        let mut y = vec![0.0; g.len()];
        blk.shortcut_add(n, &x, &mut y);
        let mut dx = vec![0.0; x.len()];
        blk.shortcut_backward(n, &g, &mut dx);
        let lhs: f64 = y.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
        // Input channel 0 lands in output channel out/4 = 8, subsampled.
        assert_eq!(y[8 * 16], x[0]);
        assert_eq!(y[8 * 16 + 1], x[2]);
        assert!(
            y[..8 * 16].iter().all(|&v| v == 0.0),
            "padding channels stay zero"
        );
    }
}
