//! A small multilayer perceptron for the theory experiments: flatten (C, H, W) in NCHW
//! order, linear(C·H·W → 64)–ReLU, linear(64 → classes), as a [`Network`]. Any image size
//! and any number of classes ≥ 2 fit. Parameters are one flat buffer in the order
//! fc1.weight, fc1.bias, fc2.weight, fc2.bias (PyTorch layouts); no state.

use ndarray::{ArrayView1, ArrayViewMut1};

use crate::linear::Linear;
use crate::network::{Mode, Network, Pass, Spec, StageFlops, Tensor};
use crate::relu::{relu_backward, relu_forward};
use crate::NnError;

/// Width of the hidden layer. Small on purpose: on 28×28 images the model has ~51 k
/// parameters (~0.2 MB) and a training step costs ~0.2 MFLOP per sample, so 64 ranks in
/// one process on 2 cores (`--local-ranks 64`) run thousands of steps in minutes, which
/// the theory experiments need, while the hidden ReLU layer keeps the loss non-convex.
const HIDDEN: usize = 64;

/// Activation and gradient buffers of a batch ([`Network::Activations`]). The flattened
/// input fc1 reads is the scratch's own NCHW copy of the images, so nothing is copied.
#[derive(Default)]
pub struct Activations {
    /// fc1 output after ReLU (N, 64), and its gradient.
    h1: Vec<f32>,
    d_h1: Vec<f32>,
}

/// The MLP's geometry; [`crate::Classifier`] makes it a [`crate::Model`].
#[derive(Debug)]
pub struct Mlp {
    spec: Spec,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// in_channels, height, width of one image, each at least 1; num_classes >= 2.
    ///
    /// # Errors
    /// [`NnError::Config`] for an empty image, fewer than two classes, or a parameter
    /// count that does not fit in `usize`.
    pub fn new(
        in_channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Mlp, NnError> {
        if in_channels == 0 || height == 0 || width == 0 {
            return Err(NnError::Config(format!(
                "image {in_channels}x{height}x{width} must have at least one channel, row and column"
            )));
        }
        if num_classes < 2 {
            return Err(NnError::Config(format!(
                "num_classes must be at least 2, got {num_classes}"
            )));
        }
        // Linear::new multiplies without checking; an absurd image must fail here, not
        // wrap around into a wrong layout.
        let flat_if_it_fits = || {
            let flat = in_channels.checked_mul(height)?.checked_mul(width)?;
            let fc1 = flat.checked_add(1)?.checked_mul(HIDDEN)?;
            fc1.checked_add((HIDDEN + 1).checked_mul(num_classes)?)?;
            Some(flat)
        };
        let flat = flat_if_it_fits().ok_or_else(|| {
            NnError::Config(format!(
                "image {in_channels}x{height}x{width} with {num_classes} classes is too large"
            ))
        })?;
        let fc1 = Linear::new(flat, HIDDEN, 0);
        let fc2 = Linear::new(HIDDEN, num_classes, fc1.end());
        Ok(Mlp {
            spec: Spec {
                name: "mlp",
                image: [in_channels, height, width],
                classes: num_classes,
                params: fc2.end(),
            },
            fc1,
            fc2,
        })
    }
}

impl Network for Mlp {
    type Activations = Activations;

    fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Weights and biases of PyTorch's default layers, so the trait's layout and
    /// initialisation are PyTorch's.
    fn tensors(&self) -> Vec<Tensor> {
        let (f1, f2) = (&self.fc1, &self.fc2);
        vec![
            ("fc1.weight", f1.weight.clone(), f1.fan_in()),
            ("fc1.bias", f1.bias.clone(), f1.fan_in()),
            ("fc2.weight", f2.weight.clone(), f2.fan_in()),
            ("fc2.bias", f2.bias.clone(), f2.fan_in()),
        ]
    }

    fn grow(&self, s: &mut Activations, n: usize) {
        s.h1.resize(n * HIDDEN, 0.0);
        s.d_h1.resize(n * HIDDEN, 0.0);
    }

    /// The same in both modes: the MLP has no batch statistics.
    // forward and backward have the trait's signatures, alike in every network.
    fn forward(&self, p: Pass<'_, Activations>, _mode: Mode) -> Result<(), NnError> {
        let (params, n, scratch, laps) = (p.params, p.n, p.scratch, p.laps);
        let s = &mut scratch.acts;
        // Each NCHW image is already the row PyTorch's flatten would make of it.
        self.fc1.forward(params, n, &scratch.x, &mut s.h1)?;
        relu_forward(ArrayViewMut1::from(&mut s.h1[..n * HIDDEN]));
        laps.lap("fc1+relu fwd");
        self.fc2.forward(params, n, &s.h1, &mut scratch.logits)?;
        laps.lap("fc2 fwd");
        Ok(())
    }

    fn backward(&self, p: Pass<'_, Activations>, grads: &mut [f32]) -> Result<(), NnError> {
        let (params, n, scratch, laps) = (p.params, p.n, p.scratch, p.laps);
        let s = &mut scratch.acts;
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
        // The input needs no gradient, which skips fc1's input-sized product.
        self.fc1
            .backward(params, n, &scratch.x, &s.d_h1, grads, None)?;
        laps.lap("fc1+relu bwd");
        Ok(())
    }

    fn stage_flops(&self) -> (StageFlops, StageFlops) {
        let fc = |l: &Linear| 2.0 * (l.in_features * l.out_features) as f64;
        let forward = vec![("fc1+relu fwd", fc(&self.fc1)), ("fc2 fwd", fc(&self.fc2))];
        let backward = vec![
            ("fc2 bwd", 2.0 * fc(&self.fc2)),
            // No input gradient for fc1: only dW.
            ("fc1+relu bwd", fc(&self.fc1)),
        ];
        (forward, backward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{first_mismatch, numeric_grad, random_images};
    use crate::{Classifier, Model};

    #[test]
    fn fashion_mnist_layout() {
        let m = Mlp::new(1, 28, 28, 10).expect("model");
        let layout = m.param_layout();
        let lens: Vec<(&str, usize)> = layout.iter().map(|(n, r)| (n.as_str(), r.len())).collect();
        assert_eq!(
            lens,
            [
                ("fc1.weight", 64 * 784),
                ("fc1.bias", 64),
                ("fc2.weight", 640),
                ("fc2.bias", 10),
            ]
        );
        assert_eq!(layout[0].1.start, 0);
        for pair in layout.windows(2) {
            assert_eq!(pair[0].1.end, pair[1].1.start, "tensors must be contiguous");
        }
        assert_eq!(layout[3].1.end, m.spec().params);
        assert_eq!(m.spec().params, 50_890);
        let all = std::iter::once(0..m.spec().params);
        assert!(m.trainable().into_iter().eq(all), "no state");
    }

    #[test]
    fn new_rejects_bad_geometry() {
        let config_err = |r: Result<Mlp, NnError>| matches!(r, Err(NnError::Config(_)));
        assert!(config_err(Mlp::new(0, 8, 8, 3)));
        assert!(config_err(Mlp::new(1, 0, 8, 3)));
        assert!(config_err(Mlp::new(1, 8, 0, 3)));
        assert!(config_err(Mlp::new(1, 8, 8, 1)));
        assert!(config_err(Mlp::new(1, 8, 8, 0)));
        assert!(config_err(Mlp::new(usize::MAX / 2, 4, 1, 2)), "overflow");
        assert!(
            config_err(Mlp::new(1, 1, usize::MAX / HIDDEN, 2)),
            "overflow"
        );
        // Unlike the CNN, no size constraint: odd, tiny and non-square images all fit.
        for (c, h, w, k) in [(1, 1, 1, 2), (3, 5, 7, 2), (2, 9, 4, 100)] {
            let m = Mlp::new(c, h, w, k).expect("model");
            assert_eq!(m.spec().params, (c * h * w + 1) * HIDDEN + (HIDDEN + 1) * k);
        }
    }

    #[test]
    fn init_is_deterministic_and_bounded() {
        let m = Mlp::new(2, 5, 7, 3).expect("model");
        crate::gradcheck::assert_pytorch_init(&m, &[70, 70, 64, 64]);
    }

    /// Whole-model gradient against central differences on EVERY parameter (the model is
    /// small enough), for a non-square multi-channel image.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut m = Classifier::new(Mlp::new(2, 3, 5, 4).expect("model"));
        let mut params = m.init_params(7);
        let images = random_images(8, 3, 2, 3, 5);
        let labels = [3, 0, 1];
        let mut grads = vec![f32::NAN; m.num_params()];
        let s = m
            .train_batch(&mut params.clone(), &mut grads, images.view(), &labels)
            .expect("train");
        // Without batch statistics, evaluation is the training forward pass.
        let eval = m.eval_batch(&params, images.view(), &labels).expect("eval");
        assert_eq!(eval, s);

        // eps = 1e-3 flips no ReLU for this seed, and keeps the f32 forward pass's rounding
        // well below the tolerance in the quotient.
        let numeric = numeric_grad(&mut params, 1e-3, |p| {
            let s = m.eval_batch(p, images.view(), &labels).expect("eval");
            s.loss_sum / s.count as f64
        });
        for (name, range) in m.param_layout() {
            let r = range.clone();
            if let Some(msg) = first_mismatch(&grads[r.clone()], &numeric[r], 1e-4, 1e-2) {
                panic!("{name}: gradient mismatch at {msg}");
            }
        }
        // The check has teeth: the gradients are not all negligible.
        let big = grads.iter().filter(|g| g.abs() > 1e-3).count();
        assert!(
            big > grads.len() / 3,
            "only {big} of {} gradients are sizeable",
            grads.len()
        );
    }

    #[test]
    fn sgd_training_learns_quadrants() {
        let mut m = Classifier::new(Mlp::new(1, 8, 8, 4).expect("model"));
        let (l0, l1, correct) = crate::gradcheck::train_quadrants(&mut m);
        assert!(l1 < 0.25 * l0, "loss went from {l0:.4} to {l1:.4}");
        assert!(correct >= 62, "accuracy {correct}/64");
    }
}
