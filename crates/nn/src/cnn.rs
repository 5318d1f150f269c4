//! The reference CNN: conv5×5(32, pad 2)–ReLU–maxpool2, conv5×5(64, pad 2)–ReLU–maxpool2,
//! flatten, linear(64·H/4·W/4 → 512)–ReLU, linear(512 → classes), as a [`Network`].
//! Parameters are one flat buffer in the order conv1.weight, conv1.bias, conv2.weight,
//! conv2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias (PyTorch layouts); no state.

use ndarray::{ArrayView1, ArrayView3, ArrayViewMut1, ArrayViewMut3};

use crate::conv2d::Conv2d;
use crate::linear::Linear;
use crate::network::{Mode, Network, Pass, Spec, StageFlops, Tensor};
use crate::pool::{maxpool2_backward, maxpool2_forward};
use crate::relu::{relu_backward, relu_forward};
use crate::NnError;

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

/// Activation and gradient buffers of a batch ([`Network::Activations`]). The flatten
/// order fc1 expects is NCHW, the order of pool2's output.
#[derive(Default)]
pub struct Activations {
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
    /// What conv2's training forward keeps for its backward (its Winograd input tiles),
    /// and the batch it was kept for (`None` after an eval pass, which keeps nothing).
    kept2: Vec<f32>,
    kept2_n: Option<usize>,
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
}

/// The reference CNN's geometry; [`crate::Classifier`] makes it a [`crate::Model`].
#[derive(Debug)]
pub struct Cnn {
    spec: Spec,
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    /// in_channels, height, width of one image; height and width must be divisible by 4;
    /// num_classes >= 2.
    ///
    /// # Errors
    /// [`NnError::Config`] for geometry the network cannot take.
    pub fn new(
        in_channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Cnn, NnError> {
        if in_channels == 0 {
            return Err(NnError::Config("in_channels must be at least 1".into()));
        }
        if height == 0 || width == 0 || !height.is_multiple_of(4) || !width.is_multiple_of(4) {
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
            spec: Spec {
                name: "cnn",
                image: [in_channels, height, width],
                classes: num_classes,
                params: fc2.end(),
            },
            conv1,
            conv2,
            fc1,
            fc2,
        })
    }
}

impl Network for Cnn {
    type Activations = Activations;

    fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Weights and biases of PyTorch's default layers, so the trait's layout and
    /// initialisation are PyTorch's.
    fn tensors(&self) -> Vec<Tensor> {
        let (c1, c2, f1, f2) = (&self.conv1, &self.conv2, &self.fc1, &self.fc2);
        vec![
            ("conv1.weight", c1.weight.clone(), c1.fan_in()),
            ("conv1.bias", c1.bias.clone(), c1.fan_in()),
            ("conv2.weight", c2.weight.clone(), c2.fan_in()),
            ("conv2.bias", c2.bias.clone(), c2.fan_in()),
            ("fc1.weight", f1.weight.clone(), f1.fan_in()),
            ("fc1.bias", f1.bias.clone(), f1.fan_in()),
            ("fc2.weight", f2.weight.clone(), f2.fan_in()),
            ("fc2.bias", f2.bias.clone(), f2.fan_in()),
        ]
    }

    fn grow(&self, s: &mut Activations, n: usize) {
        let (c1, c2) = (&self.conv1, &self.conv2);
        let resize = |v: &mut Vec<f32>, per_sample: usize| v.resize(n * per_sample, 0.0);
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
    }

    /// The same in both modes (the CNN has no batch statistics), but a training pass
    /// keeps conv2's transformed input for the backward pass.
    // forward and backward have the trait's signatures, alike in every network and in
    // each other; backward walks forward's stages in reverse.
    fn forward(&self, p: Pass<'_, Activations>, mode: Mode) -> Result<(), NnError> {
        let (params, n, scratch, laps) = (p.params, p.n, p.scratch, p.laps);
        let s = &mut scratch.acts;
        let (c1, c2) = (&self.conv1, &self.conv2);
        let [_, h, w] = self.spec.image;

        // Bias and ReLU are fused into the pass that lays the product out in NCHW.
        c1.forward(params, n, &scratch.x, &mut s.col, &mut [], &mut s.a1, true)?;
        laps.lap("conv1+relu fwd");
        let a1 = &s.a1[..n * c1.out_size()];
        maxpool2_forward(
            ArrayView3::from_shape((n * CONV1_FILTERS, h, w), a1)?,
            ArrayViewMut3::from_shape(
                (n * CONV1_FILTERS, h / 2, w / 2),
                &mut s.p1[..n * c2.in_size()],
            )?,
            &mut s.arg1,
        )?;
        laps.lap("pool1 fwd");

        if mode == Mode::Train {
            // Grows once to the largest batch; a warm step allocates nothing.
            let len = c2.saved_len(n);
            if s.kept2.len() < len {
                s.kept2.resize(len, 0.0);
            }
            c2.forward(params, n, &s.p1, &mut s.col, &mut s.kept2, &mut s.a2, true)?;
            s.kept2_n = Some(n);
        } else {
            c2.forward(params, n, &s.p1, &mut s.col, &mut [], &mut s.a2, true)?;
            s.kept2_n = None;
        }
        laps.lap("conv2+relu fwd");
        let a2 = &s.a2[..n * c2.out_size()];
        maxpool2_forward(
            ArrayView3::from_shape((n * CONV2_FILTERS, h / 2, w / 2), a2)?,
            ArrayViewMut3::from_shape(
                (n * CONV2_FILTERS, h / 4, w / 4),
                &mut s.p2[..n * self.fc1.in_features],
            )?,
            &mut s.arg2,
        )?;
        laps.lap("pool2 fwd");

        self.fc1.forward(params, n, &s.p2, &mut s.h1)?;
        relu_forward(ArrayViewMut1::from(&mut s.h1[..n * HIDDEN]));
        laps.lap("fc1+relu fwd");
        self.fc2.forward(params, n, &s.h1, &mut scratch.logits)?;
        laps.lap("fc2 fwd");
        Ok(())
    }

    fn backward(&self, p: Pass<'_, Activations>, grads: &mut [f32]) -> Result<(), NnError> {
        let (params, n, scratch, laps) = (p.params, p.n, p.scratch, p.laps);
        let s = &mut scratch.acts;
        let (c1, c2) = (&self.conv1, &self.conv2);
        let [_, h, w] = self.spec.image;

        self.fc2.backward(
            params,
            n,
            &s.h1,
            &scratch.d_logits,
            grads,
            Some(&mut s.d_h1),
        )?;
        laps.lap("fc2 bwd");
        relu_backward(
            ArrayViewMut1::from(&mut s.d_h1[..n * HIDDEN]),
            ArrayView1::from(&s.h1[..n * HIDDEN]),
        )?;
        self.fc1
            .backward(params, n, &s.p2, &s.d_h1, grads, Some(&mut s.d_p2))?;
        laps.lap("fc1+relu bwd");

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
        laps.lap("pool2+relu bwd");
        let kept: &[f32] = if s.kept2_n == Some(n) { &s.kept2 } else { &[] };
        c2.backward_kept(
            params,
            n,
            &s.p1,
            &s.d_a2,
            kept,
            &mut s.col,
            grads,
            Some(&mut s.d_p1),
        )?;
        laps.lap("conv2 bwd");

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
        laps.lap("pool1+relu bwd");
        // The input needs no gradient, which skips conv1's largest product and its col2im.
        c1.backward(params, n, &scratch.x, &s.d_a1, &mut s.col, grads, None)?;
        laps.lap("conv1 bwd");
        Ok(())
    }

    fn stage_flops(&self) -> (StageFlops, StageFlops) {
        let conv = |c: &Conv2d| 2.0 * (c.out_size() * c.fan_in()) as f64;
        let fc = |l: &Linear| 2.0 * (l.in_features * l.out_features) as f64;
        let forward = vec![
            ("conv1+relu fwd", conv(&self.conv1)),
            ("pool1 fwd", 0.0),
            ("conv2+relu fwd", conv(&self.conv2)),
            ("pool2 fwd", 0.0),
            ("fc1+relu fwd", fc(&self.fc1)),
            ("fc2 fwd", fc(&self.fc2)),
        ];
        let backward = vec![
            ("fc2 bwd", 2.0 * fc(&self.fc2)),
            ("fc1+relu bwd", 2.0 * fc(&self.fc1)),
            ("pool2+relu bwd", 0.0),
            ("conv2 bwd", 2.0 * conv(&self.conv2)),
            ("pool1+relu bwd", 0.0),
            // No input gradient for conv1: only dW.
            ("conv1 bwd", conv(&self.conv1)),
        ];
        (forward, backward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{first_mismatch, numeric_grad_at, random_images, rng};
    use crate::{Classifier, Model};
    use rand::Rng;

    #[test]
    fn fashion_mnist_layout() {
        let m = Cnn::new(1, 28, 28, 10).expect("model");
        let layout = m.param_layout();
        let lens: Vec<(&str, usize)> = layout.iter().map(|(n, r)| (n.as_str(), r.len())).collect();
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
        assert_eq!(layout[7].1.end, m.spec().params);
        assert_eq!(m.spec().params, 1_663_370);
        let all = std::iter::once(0..m.spec().params);
        assert!(m.trainable().into_iter().eq(all), "no state");
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
        crate::gradcheck::assert_pytorch_init(&m, &[25, 25, 800, 800, 256, 256, 512, 512]);
    }

    /// Whole-model gradient against central differences on a random subset of every tensor.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut m = Classifier::new(Cnn::new(1, 8, 8, 3).expect("model"));
        let mut params = m.init_params(7);
        let images = random_images(8, 2, 1, 8, 8);
        let labels = [2, 0];
        let mut grads = vec![0.0; m.num_params()];
        let s = m
            .train_batch(&mut params.clone(), &mut grads, images.view(), &labels)
            .expect("train");
        // Without batch statistics, evaluation is the training forward pass.
        let eval = m.eval_batch(&params, images.view(), &labels).expect("eval");
        assert_eq!(eval, s);

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
    fn sgd_training_learns_quadrants() {
        let mut m = Classifier::new(Cnn::new(1, 8, 8, 4).expect("model"));
        let (l0, l1, correct) = crate::gradcheck::train_quadrants(&mut m);
        assert!(l1 < 0.25 * l0, "loss went from {l0:.4} to {l1:.4}");
        assert!(correct >= 60, "accuracy {correct}/64");
    }
}
