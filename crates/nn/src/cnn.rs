//! The reference CNN: conv5×5(32, pad 2)–ReLU–maxpool2, conv5×5(64, pad 2)–ReLU–maxpool2,
//! flatten, linear(64·H/4·W/4 → 512)–ReLU, linear(512 → classes), mean softmax cross-entropy.
//! Parameters are one flat buffer in the order conv1.weight, conv1.bias, conv2.weight,
//! conv2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias (PyTorch layouts). The model owns
//! scratch buffers sized for the largest batch seen, so a warm step allocates nothing itself.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView3, ArrayView4, ArrayViewMut1, ArrayViewMut3, ArrayViewMut4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::conv2d::Conv2d;
use crate::linear::{batch_view, batch_view_mut, Linear};
use crate::loss::softmax_cross_entropy;
use crate::pool::{maxpool2_backward, maxpool2_forward};
use crate::profile::Laps;
use crate::relu::{relu_backward, relu_forward};
use crate::{shape_err, NnError};

/// Filters of the first convolution.
const CONV1_FILTERS: usize = 32;
/// Filters of the second convolution.
const CONV2_FILTERS: usize = 64;
/// Kernel side of both convolutions.
const KERNEL: usize = 5;
/// Zero padding of both convolutions ("same" output size for a 5×5 kernel).
const PAD: usize = 2;
/// Width of the hidden fully connected layer.
const HIDDEN: usize = 512;

/// Statistics of one batch; they add up across batches by summing the fields.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum over samples of the cross-entropy; the mean loss is `loss_sum / count`.
    pub loss_sum: f64,
    /// Samples whose argmax prediction equals the label.
    pub correct: usize,
    /// Samples in the batch.
    pub count: usize,
}

/// Activation and gradient buffers, reused across steps and grown only when a larger batch
/// arrives. All image-like buffers are NCHW, which is also the flatten order fc1 expects.
#[derive(Default)]
struct Scratch {
    /// Batch size the buffers are sized for.
    capacity: usize,
    /// Contiguous copy of the input images (N, C, H, W).
    x: Vec<f32>,
    /// Per-sample im2col columns, large enough for either convolution.
    col: Vec<f32>,
    /// conv1 output after ReLU (N, 32, H, W), and its gradient.
    a1: Vec<f32>,
    d_a1: Vec<f32>,
    /// Winning window positions of pool1.
    arg1: Vec<u8>,
    /// pool1 output (N, 32, H/2, W/2), and its gradient.
    p1: Vec<f32>,
    d_p1: Vec<f32>,
    /// conv2 output after ReLU (N, 64, H/2, W/2), and its gradient.
    a2: Vec<f32>,
    d_a2: Vec<f32>,
    /// Winning window positions of pool2.
    arg2: Vec<u8>,
    /// pool2 output (N, 64, H/4, W/4) = flattened fc1 input, and its gradient.
    p2: Vec<f32>,
    d_p2: Vec<f32>,
    /// fc1 output after ReLU (N, 512), and its gradient.
    h1: Vec<f32>,
    d_h1: Vec<f32>,
    /// Logits (N, classes), and the loss gradient with respect to them.
    logits: Vec<f32>,
    d_logits: Vec<f32>,
}

impl std::fmt::Debug for Scratch {
    // The buffers hold megabytes of activations; only their size is worth printing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The reference CNN. Holds geometry and scratch space only; parameters, gradients and
/// optimiser state are flat buffers owned by the caller.
#[derive(Debug)]
pub struct Cnn {
    in_channels: usize,
    height: usize,
    width: usize,
    num_classes: usize,
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    scratch: Scratch,
    /// Per-stage timing for `rps bench`; disabled (and free) otherwise.
    laps: Laps,
}

impl Cnn {
    /// in_channels, height, width of one image; height and width must be divisible by 4;
    /// num_classes >= 2.
    pub fn new(
        in_channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Cnn, NnError> {
        if in_channels == 0 {
            return Err(NnError::Config("in_channels must be at least 1".into()));
        }
        if height == 0 || width == 0 || height % 4 != 0 || width % 4 != 0 {
            return Err(NnError::Config(format!(
                "image size {height}x{width} must be positive and divisible by 4"
            )));
        }
        if num_classes < 2 {
            return Err(NnError::Config(format!(
                "num_classes must be at least 2, got {num_classes}"
            )));
        }
        let conv1 = Conv2d::new(in_channels, CONV1_FILTERS, KERNEL, PAD, (height, width), 0)?;
        let conv2 = Conv2d::new(
            CONV1_FILTERS,
            CONV2_FILTERS,
            KERNEL,
            PAD,
            (height / 2, width / 2),
            conv1.end(),
        )?;
        let flat = CONV2_FILTERS * (height / 4) * (width / 4);
        let fc1 = Linear::new(flat, HIDDEN, conv2.end());
        let fc2 = Linear::new(HIDDEN, num_classes, fc1.end());
        Ok(Cnn {
            in_channels,
            height,
            width,
            num_classes,
            conv1,
            conv2,
            fc1,
            fc2,
            scratch: Scratch::default(),
            laps: Laps::default(),
        })
    }

    /// Length of the flat parameter (and gradient) buffer.
    pub fn num_params(&self) -> usize {
        self.fc2.end()
    }

    /// Turns per-stage timing of [`Cnn::train_batch`] on or off (off by default).
    pub fn set_profiling(&mut self, on: bool) {
        self.laps.set_enabled(on);
    }

    /// Seconds spent in each stage (`conv1 fwd`, `pool1 fwd`, …) since the last call,
    /// in execution order; empty unless profiling is on.
    pub fn take_profile(&mut self) -> Vec<(&'static str, f64)> {
        self.laps.take()
    }

    /// Floating-point operations of one training sample per stage (a multiply-add counts
    /// two), with the stage names of [`Cnn::take_profile`]; stages that do no matrix
    /// product (pooling, ReLU, loss) are listed with their elementwise work ignored (0).
    pub fn stage_flops(&self) -> Vec<(&'static str, f64)> {
        let conv = |c: &Conv2d| 2.0 * (c.out_size() * c.fan_in()) as f64;
        let fc = |l: &Linear| 2.0 * (l.in_features * l.out_features) as f64;
        vec![
            ("input copy", 0.0),
            ("conv1+relu fwd", conv(&self.conv1)),
            ("pool1 fwd", 0.0),
            ("conv2+relu fwd", conv(&self.conv2)),
            ("pool2 fwd", 0.0),
            ("fc1+relu fwd", fc(&self.fc1)),
            ("fc2 fwd", fc(&self.fc2)),
            ("loss", 0.0),
            ("fc2 bwd", 2.0 * fc(&self.fc2)),
            ("fc1+relu bwd", 2.0 * fc(&self.fc1)),
            ("pool2+relu bwd", 0.0),
            ("conv2 bwd", 2.0 * conv(&self.conv2)),
            ("pool1+relu bwd", 0.0),
            // No input gradient for conv1: only dW.
            ("conv1 bwd", conv(&self.conv1)),
        ]
    }

    /// (name, range in the flat buffer) for every parameter tensor, in layout order.
    pub fn param_layout(&self) -> Vec<(&'static str, Range<usize>)> {
        vec![
            ("conv1.weight", self.conv1.weight.clone()),
            ("conv1.bias", self.conv1.bias.clone()),
            ("conv2.weight", self.conv2.weight.clone()),
            ("conv2.bias", self.conv2.bias.clone()),
            ("fc1.weight", self.fc1.weight.clone()),
            ("fc1.bias", self.fc1.bias.clone()),
            ("fc2.weight", self.fc2.weight.clone()),
            ("fc2.bias", self.fc2.bias.clone()),
        ]
    }

    /// Deterministic initialisation from a seed, PyTorch's default: every weight and bias
    /// of a layer is drawn from U(−1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5 gives
    /// that same bound for weights). Tensors are filled in layout order from one
    /// `StdRng::seed_from_u64(seed)` stream, so the same seed gives a bit-identical buffer.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut params = vec![0.0f32; self.num_params()];
        let fan_ins = [
            self.conv1.fan_in(),
            self.conv1.fan_in(),
            self.conv2.fan_in(),
            self.conv2.fan_in(),
            self.fc1.fan_in(),
            self.fc1.fan_in(),
            self.fc2.fan_in(),
            self.fc2.fan_in(),
        ];
        for ((_, range), fan_in) in self.param_layout().into_iter().zip(fan_ins) {
            // fan_in >= 1 for every layer of a model that `new` accepted, so the range is
            // never empty.
            let bound = 1.0 / (fan_in as f32).sqrt();
            for p in &mut params[range] {
                *p = rng.random_range(-bound..bound);
            }
        }
        params
    }

    /// Forward + backward on one batch. `images` is (N, C, H, W), already normalised;
    /// `labels` holds N class indices. Overwrites `grads` with the gradient of the MEAN
    /// loss over the batch and returns the batch's statistics. Errors on an empty batch,
    /// mismatched shapes or buffer lengths, or a label out of range; these are all checked
    /// before any work, so `grads` is untouched when an error is returned.
    pub fn train_batch(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        images: ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<BatchStats, NnError> {
        if grads.len() != self.num_params() {
            return Err(shape_err(
                "gradient buffer length",
                self.num_params(),
                grads.len(),
            ));
        }
        let n = self.check_batch(params, &images, labels)?;
        if n == 0 {
            return Err(shape_err("batch size", "at least 1", 0));
        }
        self.laps.start();
        self.load(n, images)?;
        self.laps.lap("input copy");
        self.forward(params, n)?;
        let s = &mut self.scratch;
        let k = self.num_classes;
        let logits = batch_view(&s.logits, n, k, "logits")?;
        let d_logits = batch_view_mut(&mut s.d_logits, n, k, "logit gradient")?;
        let sums = softmax_cross_entropy(logits, labels, Some(d_logits))?;
        self.laps.lap("loss");
        self.backward(params, grads, n)?;
        Ok(BatchStats {
            loss_sum: sums.loss_sum,
            correct: sums.correct,
            count: n,
        })
    }

    /// Forward only (no gradient), same statistics as [`Cnn::train_batch`]. An empty batch
    /// gives all-zero statistics.
    pub fn eval_batch(
        &mut self,
        params: &[f32],
        images: ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<BatchStats, NnError> {
        let n = self.check_batch(params, &images, labels)?;
        if n == 0 {
            return Ok(BatchStats::default());
        }
        self.load(n, images)?;
        self.forward(params, n)?;
        let logits = batch_view(&self.scratch.logits, n, self.num_classes, "logits")?;
        let sums = softmax_cross_entropy(logits, labels, None)?;
        Ok(BatchStats {
            loss_sum: sums.loss_sum,
            correct: sums.correct,
            count: n,
        })
    }

    /// Validates the arguments shared by training and evaluation; returns the batch size.
    fn check_batch(
        &self,
        params: &[f32],
        images: &ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<usize, NnError> {
        crate::check_batch(
            (self.num_params(), params.len()),
            [self.in_channels, self.height, self.width],
            self.num_classes,
            images,
            labels,
        )
    }

    /// Grows the scratch buffers to hold a batch of `n` and copies the images in, so every
    /// kernel sees contiguous NCHW data whatever the caller's strides.
    fn load(&mut self, n: usize, images: ArrayView4<f32>) -> Result<(), NnError> {
        let s = &mut self.scratch;
        if n > s.capacity {
            let (c1, c2) = (&self.conv1, &self.conv2);
            let resize = |v: &mut Vec<f32>, per_sample: usize| v.resize(n * per_sample, 0.0);
            resize(&mut s.x, c1.in_size());
            s.col.resize(c1.col_size().max(c2.col_size()), 0.0);
            resize(&mut s.a1, c1.out_size());
            resize(&mut s.d_a1, c1.out_size());
            s.arg1.resize(n * c2.in_size(), 0);
            resize(&mut s.p1, c2.in_size());
            resize(&mut s.d_p1, c2.in_size());
            resize(&mut s.a2, c2.out_size());
            resize(&mut s.d_a2, c2.out_size());
            s.arg2.resize(n * self.fc1.in_features, 0);
            resize(&mut s.p2, self.fc1.in_features);
            resize(&mut s.d_p2, self.fc1.in_features);
            resize(&mut s.h1, HIDDEN);
            resize(&mut s.d_h1, HIDDEN);
            resize(&mut s.logits, self.num_classes);
            resize(&mut s.d_logits, self.num_classes);
            s.capacity = n;
        }
        let shape = (n, self.in_channels, self.height, self.width);
        ArrayViewMut4::from_shape(shape, &mut s.x[..n * self.conv1.in_size()])?.assign(&images);
        Ok(())
    }

    /// Runs the network on the `n` images in `scratch.x`, filling every activation buffer
    /// up to the logits.
    fn forward(&mut self, params: &[f32], n: usize) -> Result<(), NnError> {
        let s = &mut self.scratch;
        let (c1, c2) = (&self.conv1, &self.conv2);
        let (h, w) = (self.height, self.width);

        // Bias and ReLU are fused into the pass that lays the product out in NCHW.
        c1.forward_act(params, n, &s.x, &mut s.col, &mut s.a1, true)?;
        self.laps.lap("conv1+relu fwd");
        let a1 = &s.a1[..n * c1.out_size()];
        maxpool2_forward(
            ArrayView3::from_shape((n * CONV1_FILTERS, h, w), a1)?,
            ArrayViewMut3::from_shape(
                (n * CONV1_FILTERS, h / 2, w / 2),
                &mut s.p1[..n * c2.in_size()],
            )?,
            &mut s.arg1,
        )?;
        self.laps.lap("pool1 fwd");

        c2.forward_act(params, n, &s.p1, &mut s.col, &mut s.a2, true)?;
        self.laps.lap("conv2+relu fwd");
        let a2 = &s.a2[..n * c2.out_size()];
        maxpool2_forward(
            ArrayView3::from_shape((n * CONV2_FILTERS, h / 2, w / 2), a2)?,
            ArrayViewMut3::from_shape(
                (n * CONV2_FILTERS, h / 4, w / 4),
                &mut s.p2[..n * self.fc1.in_features],
            )?,
            &mut s.arg2,
        )?;
        self.laps.lap("pool2 fwd");

        self.fc1.forward(params, n, &s.p2, &mut s.h1)?;
        relu_forward(ArrayViewMut1::from(&mut s.h1[..n * HIDDEN]));
        self.laps.lap("fc1+relu fwd");
        self.fc2.forward(params, n, &s.h1, &mut s.logits)?;
        self.laps.lap("fc2 fwd");
        Ok(())
    }

    /// Back-propagates `scratch.d_logits` through the network, overwriting all of `grads`.
    fn backward(&mut self, params: &[f32], grads: &mut [f32], n: usize) -> Result<(), NnError> {
        let s = &mut self.scratch;
        let (c1, c2) = (&self.conv1, &self.conv2);
        let (h, w) = (self.height, self.width);

        self.fc2
            .backward(params, n, &s.h1, &s.d_logits, grads, Some(&mut s.d_h1))?;
        self.laps.lap("fc2 bwd");
        relu_backward(
            ArrayViewMut1::from(&mut s.d_h1[..n * HIDDEN]),
            ArrayView1::from(&s.h1[..n * HIDDEN]),
        )?;
        self.fc1
            .backward(params, n, &s.p2, &s.d_h1, grads, Some(&mut s.d_p2))?;
        self.laps.lap("fc1+relu bwd");

        let flat = self.fc1.in_features;
        maxpool2_backward(
            ArrayView3::from_shape((n * CONV2_FILTERS, h / 4, w / 4), &s.d_p2[..n * flat])?,
            &s.arg2,
            ArrayViewMut3::from_shape(
                (n * CONV2_FILTERS, h / 2, w / 2),
                &mut s.d_a2[..n * c2.out_size()],
            )?,
        )?;
        relu_backward(
            ArrayViewMut1::from(&mut s.d_a2[..n * c2.out_size()]),
            ArrayView1::from(&s.a2[..n * c2.out_size()]),
        )?;
        self.laps.lap("pool2+relu bwd");
        c2.backward(
            params,
            n,
            &s.p1,
            &s.d_a2,
            &mut s.col,
            grads,
            Some(&mut s.d_p1),
        )?;
        self.laps.lap("conv2 bwd");

        maxpool2_backward(
            ArrayView3::from_shape(
                (n * CONV1_FILTERS, h / 2, w / 2),
                &s.d_p1[..n * c2.in_size()],
            )?,
            &s.arg1,
            ArrayViewMut3::from_shape((n * CONV1_FILTERS, h, w), &mut s.d_a1[..n * c1.out_size()])?,
        )?;
        relu_backward(
            ArrayViewMut1::from(&mut s.d_a1[..n * c1.out_size()]),
            ArrayView1::from(&s.a1[..n * c1.out_size()]),
        )?;
        self.laps.lap("pool1+relu bwd");
        // The input needs no gradient, which skips conv1's largest product and its col2im.
        c1.backward(params, n, &s.x, &s.d_a1, &mut s.col, grads, None)?;
        self.laps.lap("conv1 bwd");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{first_mismatch, numeric_grad_at, random_vec, rng};
    use crate::optim::Sgd;
    use ndarray::Array4;
    use rand::Rng;

    fn random_images(seed: u64, n: usize, c: usize, h: usize, w: usize) -> Array4<f32> {
        let mut r = rng(seed);
        Array4::from_shape_vec((n, c, h, w), random_vec(&mut r, n * c * h * w, -2.0, 2.0))
            .expect("shape")
    }

    #[test]
    fn fashion_mnist_layout() {
        let m = Cnn::new(1, 28, 28, 10).expect("model");
        let layout = m.param_layout();
        let lens: Vec<(&str, usize)> = layout.iter().map(|(n, r)| (*n, r.len())).collect();
        assert_eq!(
            lens,
            [
                ("conv1.weight", 800),
                ("conv1.bias", 32),
                ("conv2.weight", 51200),
                ("conv2.bias", 64),
                ("fc1.weight", 512 * 3136),
                ("fc1.bias", 512),
                ("fc2.weight", 5120),
                ("fc2.bias", 10),
            ]
        );
        assert_eq!(layout[0].1, 0..800);
        for pair in layout.windows(2) {
            assert_eq!(pair[0].1.end, pair[1].1.start, "tensors must be contiguous");
        }
        assert_eq!(layout[7].1.end, m.num_params());
        assert_eq!(m.num_params(), 1_663_370);
    }

    #[test]
    fn new_rejects_bad_geometry() {
        assert!(Cnn::new(0, 8, 8, 3).is_err());
        assert!(Cnn::new(1, 10, 8, 3).is_err());
        assert!(Cnn::new(1, 8, 0, 3).is_err());
        assert!(Cnn::new(1, 8, 8, 1).is_err());
        assert!(Cnn::new(3, 4, 12, 2).is_ok());
    }

    #[test]
    fn init_is_deterministic_and_bounded() {
        let m = Cnn::new(1, 8, 8, 3).expect("model");
        let a = m.init_params(42);
        let b = m.init_params(42);
        let c = m.init_params(43);
        assert_eq!(a.len(), m.num_params());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a.iter().zip(&c).filter(|(x, y)| x != y).count() > a.len() / 2);
        let fan_ins = [25, 25, 800, 800, 256, 256, 512, 512];
        for ((name, range), fan_in) in m.param_layout().into_iter().zip(fan_ins) {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let t = &a[range];
            assert!(t.iter().all(|v| v.abs() <= bound), "{name} out of bounds");
            if t.len() < 100 {
                continue;
            }
            // A uniform draw should get near both ends of its interval.
            let max = t.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(max > 0.8 * bound, "{name} does not span its interval");
        }
    }

    /// Whole-model gradient against central differences on a random subset of every tensor.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut m = Cnn::new(1, 8, 8, 3).expect("model");
        let mut params = m.init_params(7);
        let images = random_images(8, 2, 1, 8, 8);
        let labels = [2, 0];
        let mut grads = vec![0.0; m.num_params()];
        m.train_batch(&params, &mut grads, images.view(), &labels)
            .expect("train");

        let mut r = rng(9);
        let mut idx = Vec::new();
        for (_, range) in m.param_layout() {
            for _ in 0..12 {
                idx.push(r.random_range(range.clone()));
            }
        }
        // eps = 3e-4 is small enough that no ReLU or pooling decision flips for this seed
        // (1e-3 already crosses a kink for a conv2 bias), yet large enough that the f32
        // forward pass's rounding stays below ~3e-5 in the quotient.
        let numeric = numeric_grad_at(&mut params, &idx, 3e-4, |p| {
            let s = m.eval_batch(p, images.view(), &labels).expect("eval");
            s.loss_sum / s.count as f64
        });
        let analytic: Vec<f32> = idx.iter().map(|&i| grads[i]).collect();
        if let Some(msg) = first_mismatch(&analytic, &numeric, 1e-4, 2e-2) {
            panic!("model gradient mismatch at {msg} (parameter {:?})", idx);
        }
        // The check has teeth: the gradients probed are not all negligible.
        let big = analytic.iter().filter(|g| g.abs() > 1e-3).count();
        assert!(
            big > idx.len() / 3,
            "only {big} of {} probed gradients are sizeable",
            idx.len()
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut m = Cnn::new(1, 8, 8, 3).expect("model");
        let p = m.init_params(1);
        let mut g = vec![0.0; m.num_params()];
        let x = random_images(1, 2, 1, 8, 8);
        assert!(matches!(
            m.train_batch(&p, &mut g, x.view(), &[0, 3]),
            Err(NnError::Label {
                index: 1,
                label: 3,
                num_classes: 3
            })
        ));
        assert!(
            m.train_batch(&p, &mut g, x.view(), &[0]).is_err(),
            "label count"
        );
        assert!(
            m.train_batch(&p[1..], &mut g, x.view(), &[0, 1]).is_err(),
            "params length"
        );
        assert!(
            m.train_batch(&p, &mut g[1..], x.view(), &[0, 1]).is_err(),
            "grads length"
        );
        let wrong = random_images(1, 2, 1, 8, 4);
        assert!(
            m.eval_batch(&p, wrong.view(), &[0, 1]).is_err(),
            "image size"
        );
        let empty = Array4::zeros((0, 1, 8, 8));
        assert!(
            m.train_batch(&p, &mut g, empty.view(), &[]).is_err(),
            "empty batch"
        );
        assert!(
            g.iter().all(|&v| v == 0.0),
            "a failed call must leave grads untouched"
        );
        assert_eq!(
            m.eval_batch(&p, empty.view(), &[]).expect("eval"),
            BatchStats::default()
        );
    }

    /// Scratch reuse across batch sizes, garbage in `grads`, and strided inputs must not
    /// change a single bit of the result.
    #[test]
    fn results_do_not_depend_on_history_or_strides() {
        let p = Cnn::new(2, 8, 4, 4).expect("model").init_params(3);
        let x = random_images(4, 3, 2, 8, 4);
        let labels = [1, 3, 0];
        let mut fresh = Cnn::new(2, 8, 4, 4).expect("model");
        let mut g_fresh = vec![0.0; p.len()];
        let s_fresh = fresh
            .train_batch(&p, &mut g_fresh, x.view(), &labels)
            .expect("train");

        let mut used = Cnn::new(2, 8, 4, 4).expect("model");
        let mut g = vec![f32::NAN; p.len()];
        let big = random_images(5, 6, 2, 8, 4);
        used.train_batch(&p, &mut g, big.view(), &[0, 1, 2, 3, 0, 1])
            .expect("train");
        // Same images, but stored NHWC and viewed as NCHW: non-standard strides.
        let nhwc = x
            .view()
            .permuted_axes([0, 2, 3, 1])
            .as_standard_layout()
            .into_owned();
        let strided = nhwc.view().permuted_axes([0, 3, 1, 2]);
        assert!(strided.as_slice().is_none());
        let s_used = used
            .train_batch(&p, &mut g, strided, &labels)
            .expect("train");
        assert_eq!(s_fresh, s_used);
        assert!(g
            .iter()
            .zip(&g_fresh)
            .all(|(a, b)| a.to_bits() == b.to_bits()));

        let s_eval = used.eval_batch(&p, x.view(), &labels).expect("eval");
        assert_eq!(s_eval, s_fresh);
        assert_eq!(s_eval.count, 3);
        assert!(s_eval.correct <= 3 && s_eval.loss_sum > 0.0);
    }

    /// 8×8 images whose class is the bright quadrant, plus noise.
    fn quadrant_batch(r: &mut StdRng, n: usize) -> (Array4<f32>, Vec<usize>) {
        let labels: Vec<usize> = (0..n).map(|_| r.random_range(0..4)).collect();
        let mut x = Array4::from_shape_fn((n, 1, 8, 8), |_| r.random_range(-0.3f32..0.3));
        for (i, &q) in labels.iter().enumerate() {
            let (top, left) = ((q / 2) * 4, (q % 2) * 4);
            for y in top..top + 4 {
                for xx in left..left + 4 {
                    x[[i, 0, y, xx]] += 1.0;
                }
            }
        }
        (x, labels)
    }

    #[test]
    fn sgd_training_learns_quadrants() {
        let mut m = Cnn::new(1, 8, 8, 4).expect("model");
        let mut params = m.init_params(11);
        let mut grads = vec![0.0; m.num_params()];
        let mut sgd = Sgd::new(m.num_params(), 0.05, 0.9, 1e-4);
        let mut r = rng(12);
        let (test_x, test_y) = quadrant_batch(&mut r, 64);
        let before = m.eval_batch(&params, test_x.view(), &test_y).expect("eval");
        for _ in 0..40 {
            let (x, y) = quadrant_batch(&mut r, 16);
            m.train_batch(&params, &mut grads, x.view(), &y)
                .expect("train");
            sgd.step(&mut params, &grads);
        }
        let after = m.eval_batch(&params, test_x.view(), &test_y).expect("eval");
        let (l0, l1) = (before.loss_sum / 64.0, after.loss_sum / 64.0);
        eprintln!(
            "quadrant loss {l0:.4} -> {l1:.4}, accuracy {}/64",
            after.correct
        );
        assert!(l1 < 0.25 * l0, "loss went from {l0:.4} to {l1:.4}");
        assert!(after.correct >= 60, "accuracy {}/64", after.correct);
    }
}
