//! [`Classifier`], the one implementation of [`Model`]: a [`Network`] plus softmax
//! cross-entropy, shared by the CNN, ResNet-20 and the MLP. Every argument is checked
//! before any work, so a failed call leaves both buffers untouched; results never depend on
//! the scratch's history or on the strides of the images.

use std::ops::Range;

use ndarray::{ArrayView4, ArrayViewMut4};

use crate::linear::{batch_view, batch_view_mut};
use crate::loss::{softmax_cross_entropy, BatchStats};
use crate::network::{Mode, Network, Pass, Scratch};
use crate::profile::Laps;
use crate::{shape_err, Model, NnError};

/// A network trained with mean softmax cross-entropy. Holds the network's geometry and
/// the scratch space only; parameters, gradients and optimiser state belong to the caller.
pub struct Classifier<N: Network> {
    net: N,
    scratch: Scratch<N::Activations>,
    /// Per-stage timing for `rps bench`; disabled (and free) otherwise.
    laps: Laps,
}

// By hand: the derive would require `N::Activations: Debug`, and they are not worth
// printing (Scratch's Debug shows only their capacity).
impl<N: Network> std::fmt::Debug for Classifier<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("net", &self.net)
            .field("scratch", &self.scratch)
            .field("laps", &self.laps)
            .finish()
    }
}

impl<N: Network> Classifier<N> {
    /// The network, and a pass of it with `params` over the loaded batch of `n`.
    fn pass<'a>(&'a mut self, params: &'a [f32], n: usize) -> (&'a N, Pass<'a, N::Activations>) {
        let scratch = &mut self.scratch;
        let laps = &mut self.laps;
        (
            &self.net,
            Pass {
                params,
                n,
                scratch,
                laps,
            },
        )
    }

    /// A classifier over `net`, with empty scratch space.
    pub fn new(net: N) -> Classifier<N> {
        Classifier {
            net,
            scratch: Scratch::default(),
            laps: Laps::default(),
        }
    }

    /// The network.
    pub fn net(&self) -> &N {
        &self.net
    }

    /// Checks a batch: the parameter buffer length, images of shape (N, C, H, W) with
    /// N = `labels.len()`, and every label below the number of classes. Returns N.
    fn check_batch(
        &self,
        params: &[f32],
        images: &ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<usize, NnError> {
        let expected_params = self.net.spec().params;
        if params.len() != expected_params {
            return Err(shape_err(
                "parameter buffer length",
                expected_params,
                params.len(),
            ));
        }
        let n = labels.len();
        let [c, h, w] = self.net.spec().image;
        let expected = [n, c, h, w];
        if images.shape() != expected {
            return Err(shape_err(
                "images (N, C, H, W) with N = labels.len()",
                expected,
                images.shape(),
            ));
        }
        let num_classes = self.net.spec().classes;
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
            return Err(NnError::Label {
                index,
                label,
                num_classes,
            });
        }
        Ok(n)
    }

    /// Grows the scratch buffers to hold a batch of `n` and copies the images in, so every
    /// kernel sees contiguous NCHW data whatever the caller's strides.
    fn load(&mut self, n: usize, images: ArrayView4<f32>) -> Result<(), NnError> {
        let [c, h, w] = self.net.spec().image;
        let s = &mut self.scratch;
        if n > s.capacity {
            let k = self.net.spec().classes;
            s.x.resize(n * c * h * w, 0.0);
            s.logits.resize(n * k, 0.0);
            s.d_logits.resize(n * k, 0.0);
            self.net.grow(&mut s.acts, n);
            s.capacity = n;
        }
        ArrayViewMut4::from_shape((n, c, h, w), &mut s.x[..n * c * h * w])?.assign(&images);
        Ok(())
    }
}

// The method signatures repeat the trait's, as every implementation must.
impl<N: Network> Model for Classifier<N> {
    fn name(&self) -> &'static str {
        self.net.spec().name
    }

    fn num_params(&self) -> usize {
        self.net.spec().params
    }

    fn param_layout(&self) -> Vec<(String, Range<usize>)> {
        self.net.param_layout()
    }

    fn trainable(&self) -> Vec<Range<usize>> {
        self.net.trainable()
    }

    fn init_params(&self, seed: u64) -> Vec<f32> {
        self.net.init_params(seed)
    }

    fn train_batch(
        &mut self,
        params: &mut [f32],
        grads: &mut [f32],
        images: ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<BatchStats, NnError> {
        if grads.len() != self.net.spec().params {
            return Err(shape_err(
                "gradient buffer length",
                self.net.spec().params,
                grads.len(),
            ));
        }
        let n = self.check_batch(params, &images, labels)?;
        self.net.check_train_size(n)?;
        self.laps.start();
        self.load(n, images)?;
        self.laps.lap("input copy");
        let (net, pass) = self.pass(params, n);
        net.forward(pass, Mode::Train)?;
        let (k, s) = (self.net.spec().classes, &mut self.scratch);
        let logits = batch_view(&s.logits, n, k, "logits")?;
        let d_logits = batch_view_mut(&mut s.d_logits, n, k, "logit gradient")?;
        let stats = softmax_cross_entropy(logits, labels, Some(d_logits))?;
        self.laps.lap("loss");
        let (net, pass) = self.pass(params, n);
        net.backward(pass, grads)?;
        // State (running statistics) changes only after the gradient used the batch's.
        self.net.update_state(params, n, &self.scratch.acts);
        Ok(stats)
    }

    fn eval_batch(
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
        let (net, pass) = self.pass(params, n);
        net.forward(pass, Mode::Eval)?;
        let (net, s) = (&self.net, &self.scratch);
        let logits = batch_view(&s.logits, n, net.spec().classes, "logits")?;
        softmax_cross_entropy(logits, labels, None)
    }

    fn set_profiling(&mut self, on: bool) {
        self.laps.set_enabled(on);
    }

    fn take_profile(&mut self) -> Vec<(&'static str, f64)> {
        self.laps.take()
    }

    fn stage_flops(&self) -> Vec<(&'static str, f64)> {
        let (forward, backward) = self.net.stage_flops();
        let mut v = vec![("input copy", 0.0)];
        v.extend(forward);
        v.push(("loss", 0.0));
        v.extend(backward);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::random_images;
    use crate::ModelKind;
    use ndarray::Array4;

    /// Every model on 8×8 images with `c` channels and 3 classes.
    fn models(c: usize) -> [Box<dyn Model>; 3] {
        [ModelKind::Cnn, ModelKind::ResNet20, ModelKind::Mlp]
            .map(|k| k.build(c, 8, 8, 3).expect("model"))
    }

    #[test]
    fn rejects_bad_arguments() {
        for mut m in models(1) {
            let mut p = m.init_params(1);
            let mut g = vec![0.0; m.num_params()];
            let x = random_images(1, 2, 1, 8, 8);
            assert!(matches!(
                m.train_batch(&mut p, &mut g, x.view(), &[0, 3]),
                Err(NnError::Label {
                    index: 1,
                    label: 3,
                    num_classes: 3
                })
            ));
            assert!(
                m.train_batch(&mut p, &mut g, x.view(), &[0]).is_err(),
                "label count"
            );
            assert!(
                m.train_batch(&mut p[1..], &mut g, x.view(), &[0, 1])
                    .is_err(),
                "params length"
            );
            assert!(
                m.train_batch(&mut p, &mut g[1..], x.view(), &[0, 1])
                    .is_err(),
                "grads length"
            );
            let wrong = random_images(1, 2, 1, 8, 4);
            assert!(
                m.eval_batch(&p, wrong.view(), &[0, 1]).is_err(),
                "image size"
            );
            let empty = Array4::zeros((0, 1, 8, 8));
            assert!(
                m.train_batch(&mut p, &mut g, empty.view(), &[]).is_err(),
                "empty batch"
            );
            assert!(
                g.iter().all(|&v| v == 0.0),
                "a failed call must leave grads untouched"
            );
            assert_eq!(p, m.init_params(1), "and params too");
            assert_eq!(
                m.eval_batch(&p, empty.view(), &[]).expect("eval"),
                BatchStats::default()
            );
        }
    }

    /// Scratch reuse across batch sizes, garbage in `grads`, and strided inputs must not
    /// change a single bit of the result, in training (gradient and state) or evaluation.
    #[test]
    fn results_do_not_depend_on_history_or_strides() {
        for (mut fresh, mut used) in models(2).into_iter().zip(models(2)) {
            let p0 = fresh.init_params(3);
            let x = random_images(4, 3, 2, 8, 8);
            let labels = [1, 2, 0];
            let (mut p_fresh, mut g_fresh) = (p0.clone(), vec![0.0; p0.len()]);
            let s_fresh = fresh
                .train_batch(&mut p_fresh, &mut g_fresh, x.view(), &labels)
                .expect("train");

            let (mut p, mut g) = (p0.clone(), vec![f32::NAN; p0.len()]);
            let big = random_images(5, 6, 2, 8, 8);
            used.train_batch(&mut p, &mut g, big.view(), &[0, 1, 2, 0, 0, 1])
                .expect("train");
            // Same images, but stored NHWC and viewed as NCHW: non-standard strides.
            let nhwc = x
                .view()
                .permuted_axes([0, 2, 3, 1])
                .as_standard_layout()
                .into_owned();
            let strided = nhwc.view().permuted_axes([0, 3, 1, 2]);
            assert!(strided.as_slice().is_none());
            let mut p = p0.clone();
            let s_used = used
                .train_batch(&mut p, &mut g, strided, &labels)
                .expect("train");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(s_fresh, s_used, "{}", fresh.name());
            assert_eq!(bits(&g), bits(&g_fresh), "{}", fresh.name());
            assert_eq!(bits(&p), bits(&p_fresh), "{}", fresh.name());

            let s_eval = used.eval_batch(&p, x.view(), &labels).expect("eval");
            let big_eval = used.eval_batch(&p, big.view(), &[0; 6]).expect("eval");
            assert_eq!(big_eval.count, 6);
            assert_eq!(
                s_eval,
                fresh.eval_batch(&p, x.view(), &labels).expect("eval")
            );
            assert_eq!(s_eval.count, 3);
            assert!(s_eval.correct <= 3 && s_eval.loss_sum > 0.0);
        }
    }

    #[test]
    fn stage_names_match_the_profile() {
        for mut m in models(1) {
            let mut p = m.init_params(2);
            let mut g = vec![0.0; m.num_params()];
            m.set_profiling(true);
            let x = random_images(2, 4, 1, 8, 8);
            m.train_batch(&mut p, &mut g, x.view(), &[0, 1, 2, 0])
                .expect("train");
            let profiled: Vec<&str> = m.take_profile().iter().map(|(s, _)| *s).collect();
            let declared: Vec<&str> = m.stage_flops().iter().map(|(s, _)| *s).collect();
            assert_eq!(profiled, declared, "{}", m.name());
            assert!(m.take_profile().is_empty());
        }
    }
}
