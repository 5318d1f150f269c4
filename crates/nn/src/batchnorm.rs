//! Batch normalization over NCHW activations, PyTorch semantics (`nn.BatchNorm2d`, eps 1e-5,
//! momentum 0.1). Its four tensors sit contiguously in the flat buffer: weight γ, bias β
//! (trainable), then running mean and variance (state: the optimizer skips them, RPS averages
//! them). Training mode normalises with the batch statistics, which `update_running` then
//! folds into the running ones; eval mode uses the running statistics.

use std::ops::Range;

use crate::{shape_err, NnError};

/// Added to the variance before the square root.
pub const EPS: f32 = 1e-5;
/// Weight of the newest batch in the running statistics.
pub const MOMENTUM: f32 = 0.1;

/// One batch-norm layer: channel count, spatial size, and its ranges in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchNorm {
    /// Channels C.
    pub channels: usize,
    /// Pixels per channel and sample, H·W.
    pub hw: usize,
    /// γ (C), initialised to 1.
    pub weight: Range<usize>,
    /// β (C), initialised to 0.
    pub bias: Range<usize>,
    /// Running mean (C), initialised to 0.
    pub running_mean: Range<usize>,
    /// Running (unbiased) variance (C), initialised to 1.
    pub running_var: Range<usize>,
}

impl BatchNorm {
    /// A layer whose tensors start at `offset`.
    pub fn new(channels: usize, hw: usize, offset: usize) -> BatchNorm {
        let r = |i: usize| offset + i * channels..offset + (i + 1) * channels;
        BatchNorm {
            channels,
            hw,
            weight: r(0),
            bias: r(1),
            running_mean: r(2),
            running_var: r(3),
        }
    }

    /// One past the last entry of this layer.
    pub fn end(&self) -> usize {
        self.running_var.end
    }

    /// Floats of one sample, C·H·W.
    pub fn size(&self) -> usize {
        self.channels * self.hw
    }

    /// Writes γ = 1, β = 0, running mean 0, running variance 1.
    pub fn init(&self, params: &mut [f32]) {
        params[self.weight.clone()].fill(1.0);
        params[self.bias.clone()].fill(0.0);
        params[self.running_mean.clone()].fill(0.0);
        params[self.running_var.clone()].fill(1.0);
    }

    fn check(&self, what: &str, len: usize, n: usize) -> Result<(), NnError> {
        if len < n * self.size() {
            return Err(shape_err(what, n * self.size(), len));
        }
        Ok(())
    }

    /// Floats of the per-batch statistics [`BatchNorm::forward_train`] saves: mean, 1/σ
    /// and biased variance per channel.
    pub fn saved_len(&self) -> usize {
        3 * self.channels
    }

    /// Training mode: normalises `x` (N, C, H·W) with its own per-channel mean and biased
    /// variance, writes γ·x̂ + β (then ReLU if `relu`) to `y`, and stores the batch
    /// statistics in `saved` ([`BatchNorm::saved_len`] floats) for the backward pass and
    /// for [`BatchNorm::update_running`]. `params` is only read.
    ///
    /// # Errors
    /// Buffers too short for `n` samples, or `n·H·W < 2` (no variance to estimate).
    pub fn forward_train(
        &self,
        params: &[f32],
        n: usize,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        relu: bool,
    ) -> Result<(), NnError> {
        self.check("batch-norm input", x.len(), n)?;
        self.check("batch-norm output", y.len(), n)?;
        if params.len() < self.end() || saved.len() < self.saved_len() {
            return Err(shape_err(
                "batch-norm parameters / saved statistics",
                (self.end(), self.saved_len()),
                (params.len(), saved.len()),
            ));
        }
        let m = n * self.hw;
        if m < 2 {
            return Err(NnError::Config(format!(
                "batch normalization needs at least 2 values per channel, got {m}"
            )));
        }
        let (c, hw) = (self.channels, self.hw);
        for ch in 0..c {
            let rows = (0..n).map(|i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
            let sum: f64 = rows.clone().map(|r| r.iter().sum::<f32>() as f64).sum();
            let mean = sum / m as f64;
            let sq: f64 = rows
                .map(|r| {
                    r.iter()
                        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                        .sum::<f64>()
                })
                .sum();
            let var = sq / m as f64;
            let inv = (1.0 / (var + EPS as f64).sqrt()) as f32;
            saved[ch] = mean as f32;
            saved[c + ch] = inv;
            saved[2 * c + ch] = var as f32;
            let g = params[self.weight.start + ch];
            let b = params[self.bias.start + ch];
            self.apply(n, ch, x, y, g * inv, b - g * inv * mean as f32, relu);
        }
        Ok(())
    }

    /// Moves the running statistics in `params` towards the batch statistics `saved` by
    /// [`MOMENTUM`]; the variance enters unbiased (·m/(m−1), m = `n`·H·W), as in PyTorch.
    pub fn update_running(&self, params: &mut [f32], n: usize, saved: &[f32]) {
        let c = self.channels;
        let m = (n * self.hw) as f32;
        let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        for ch in 0..c {
            let rm = &mut params[self.running_mean.start + ch];
            *rm = (1.0 - MOMENTUM) * *rm + MOMENTUM * saved[ch];
            let rv = &mut params[self.running_var.start + ch];
            *rv = (1.0 - MOMENTUM) * *rv + MOMENTUM * saved[2 * c + ch] * unbias;
        }
    }

    /// Eval mode: normalises with the running statistics, then ReLU if `relu`.
    ///
    /// # Errors
    /// Buffers too short for `n` samples.
    pub fn forward_eval(
        &self,
        params: &[f32],
        n: usize,
        x: &[f32],
        y: &mut [f32],
        relu: bool,
    ) -> Result<(), NnError> {
        self.check("batch-norm input", x.len(), n)?;
        self.check("batch-norm output", y.len(), n)?;
        if params.len() < self.end() {
            return Err(shape_err("batch-norm parameters", self.end(), params.len()));
        }
        for ch in 0..self.channels {
            let mean = params[self.running_mean.start + ch];
            let inv = 1.0 / (params[self.running_var.start + ch] + EPS).sqrt();
            let g = params[self.weight.start + ch];
            let b = params[self.bias.start + ch];
            self.apply(n, ch, x, y, g * inv, b - g * inv * mean, relu);
        }
        Ok(())
    }

    /// y = scale·x + shift on channel `ch` of every sample, then ReLU if asked.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        n: usize,
        ch: usize,
        x: &[f32],
        y: &mut [f32],
        scale: f32,
        shift: f32,
        relu: bool,
    ) {
        let (c, hw) = (self.channels, self.hw);
        for i in 0..n {
            let at = (i * c + ch) * hw;
            let (src, dst) = (&x[at..at + hw], &mut y[at..at + hw]);
            if relu {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = (scale * v + shift).max(0.0);
                }
            } else {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = scale * v + shift;
                }
            }
        }
    }

    /// Backward of [`BatchNorm::forward_train`] (without its ReLU: mask `dy` first).
    /// OVERWRITES dγ and dβ in `grads` and `dx` (N, C, H·W); the running statistics get no
    /// gradient (their entries in `grads` are set to 0).
    ///
    /// # Errors
    /// Buffers too short for `n` samples.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &[f32],
        n: usize,
        x: &[f32],
        saved: &[f32],
        dy: &[f32],
        grads: &mut [f32],
        dx: &mut [f32],
    ) -> Result<(), NnError> {
        self.check("batch-norm input", x.len(), n)?;
        self.check("batch-norm output gradient", dy.len(), n)?;
        self.check("batch-norm input gradient", dx.len(), n)?;
        if params.len() < self.end() || grads.len() < self.end() || saved.len() < self.saved_len() {
            return Err(shape_err(
                "batch-norm parameters / gradients / saved statistics",
                (self.end(), self.end(), self.saved_len()),
                (params.len(), grads.len(), saved.len()),
            ));
        }
        let (c, hw) = (self.channels, self.hw);
        let m = (n * hw) as f64;
        for ch in 0..c {
            let (mean, inv) = (saved[ch], saved[c + ch]);
            let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
            for i in 0..n {
                let at = (i * c + ch) * hw;
                for (&g, &v) in dy[at..at + hw].iter().zip(&x[at..at + hw]) {
                    sum_dy += g as f64;
                    sum_dy_xhat += (g * (v - mean) * inv) as f64;
                }
            }
            grads[self.weight.start + ch] = sum_dy_xhat as f32;
            grads[self.bias.start + ch] = sum_dy as f32;
            // dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂))
            let k = params[self.weight.start + ch] * inv;
            let (a, b) = ((sum_dy / m) as f32, (sum_dy_xhat / m) as f32);
            for i in 0..n {
                let at = (i * c + ch) * hw;
                for ((d, &g), &v) in dx[at..at + hw]
                    .iter_mut()
                    .zip(&dy[at..at + hw])
                    .zip(&x[at..at + hw])
                {
                    *d = k * (g - a - (v - mean) * inv * b);
                }
            }
        }
        grads[self.running_mean.clone()].fill(0.0);
        grads[self.running_var.clone()].fill(0.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_grad_close, dot_f64, numeric_grads, random_vec, rng};

    /// Training-mode gradients of L = Σ y·R (with and without the fused ReLU masked by the
    /// caller) against central differences, for γ, β and the input.
    #[test]
    fn backward_matches_finite_differences() {
        let (c, hw, n, off) = (3, 5, 4, 2);
        let bn = BatchNorm::new(c, hw, off);
        let mut r = rng(100);
        let mut params = random_vec(&mut r, bn.end(), 0.5, 1.5);
        params[bn.bias.clone()].copy_from_slice(&random_vec(&mut r, c, -0.5, 0.5));
        let mut x = random_vec(&mut r, n * c * hw, -2.0, 2.0);
        let proj = random_vec(&mut r, n * c * hw, -1.0, 1.0);
        let mut y = vec![0.0; x.len()];
        let mut saved = vec![0.0; bn.saved_len()];
        bn.forward_train(&params, n, &x, &mut y, &mut saved, false)
            .expect("forward");
        let mut grads = vec![7.0; bn.end()];
        let mut dx = vec![0.0; x.len()];
        bn.backward(&params, n, &x, &saved, &proj, &mut grads, &mut dx)
            .expect("backward");
        let loss = |p: &[f32], xv: &[f32]| {
            let (mut y, mut s) = (vec![0.0; xv.len()], vec![0.0; bn.saved_len()]);
            bn.forward_train(p, n, xv, &mut y, &mut s, false)
                .expect("forward");
            dot_f64(&y, &proj)
        };
        let (num_p, num_x) = numeric_grads(&mut params, &mut x, 1e-2, loss);
        assert_grad_close(
            "bn gamma",
            &grads[bn.weight.clone()],
            &num_p[bn.weight.clone()],
            1e-3,
            2e-3,
        );
        assert_grad_close(
            "bn beta",
            &grads[bn.bias.clone()],
            &num_p[bn.bias.clone()],
            1e-3,
            2e-3,
        );
        assert_grad_close("bn input", &dx, &num_x, 1e-3, 2e-3);
        assert_eq!(grads[..off], [7.0; 2], "outside the layer stays untouched");
        assert!(grads[bn.running_mean.start..bn.end()]
            .iter()
            .all(|&g| g == 0.0));
    }

    /// Batch statistics, running-statistics update (unbiased variance, momentum 0.1) and
    /// eval mode, against values computed by hand.
    #[test]
    fn statistics_follow_pytorch() {
        let bn = BatchNorm::new(1, 2, 0);
        let mut p = vec![0.0; bn.end()];
        bn.init(&mut p);
        assert_eq!(p, [1.0, 0.0, 0.0, 1.0]);
        // Channel values 1, 2, 3, 4 over two samples: mean 2.5, biased var 1.25,
        // unbiased var 5/3.
        let x = [1.0, 2.0, 3.0, 4.0];
        let (mut y, mut saved) = ([0.0; 4], [0.0; 3]);
        bn.forward_train(&p, 2, &x, &mut y, &mut saved, false)
            .expect("forward");
        assert_eq!(p, [1.0, 0.0, 0.0, 1.0], "forward leaves the buffer alone");
        bn.update_running(&mut p, 2, &saved);
        let s = (1.25f32 + EPS).sqrt();
        for (got, v) in y.iter().zip(x) {
            assert!((got - (v - 2.5) / s).abs() < 1e-6);
        }
        assert!((p[2] - 0.25).abs() < 1e-6, "running mean {}", p[2]);
        assert!(
            (p[3] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6,
            "running var {}",
            p[3]
        );
        let mut ye = [0.0; 4];
        bn.forward_eval(&p, 2, &x, &mut ye, true).expect("eval");
        let inv = 1.0 / (p[3] + EPS).sqrt();
        for (got, v) in ye.iter().zip(x) {
            assert!((got - ((v - p[2]) * inv).max(0.0)).abs() < 1e-6);
        }
        let single = BatchNorm::new(1, 1, 0);
        let one = single.forward_train(&p, 1, &x[..1], &mut y, &mut saved, false);
        assert!(
            matches!(one, Err(NnError::Config(_))),
            "a single value has no variance"
        );
    }
}
