//! ResNet-20 for CIFAR (He et al. 2016, §4.2) as a [`Network`]: conv3×3(16)–BN–ReLU,
//! three stages of three basic blocks (`block.rs`; 16, 32, 64 channels, the first
//! block of stages 2 and 3 with stride 2), global average pooling, linear(64 → classes).
//! No convolution has a bias, so the model has the paper's 0.27 M weights; one flat buffer
//! holds them and the batch-norm running statistics, which only training mode updates.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayViewMut1};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::block::{Block, ConvBn};
use crate::linear::Linear;
use crate::network::{Mode, Network, Pass, Spec, StageFlops};
use crate::relu::{relu_backward, relu_forward};
use crate::{shape_err, NnError};

/// Channels of the three stages.
const WIDTHS: [usize; 3] = [16, 32, 64];
/// Basic blocks per stage.
const BLOCKS: usize = 3;
/// Stage names for the profile, forward and backward.
const FWD: [&str; 3] = ["stage1 fwd", "stage2 fwd", "stage3 fwd"];
const BWD: [&str; 3] = ["stage1 bwd", "stage2 bwd", "stage3 bwd"];

/// Activations of a batch ([`Network::Activations`]).
#[derive(Default)]
pub struct Activations {
    col: Vec<f32>,
    /// Per conv-BN layer (stem, then two per block): conv output before BN, BN statistics.
    z: Vec<Vec<f32>>,
    saved: Vec<Vec<f32>>,
    /// Post-ReLU outputs: the stem, then per block the middle activation and the output.
    stem: Vec<f32>,
    mid: Vec<Vec<f32>>,
    out: Vec<Vec<f32>>,
    pooled: Vec<f32>,
    d_pooled: Vec<f32>,
    /// Gradient buffers as large as the largest activation.
    g1: Vec<f32>,
    g2: Vec<f32>,
    g3: Vec<f32>,
    gz: Vec<f32>,
}

/// The CIFAR ResNet-20's geometry; [`crate::Classifier`] makes it a [`crate::Model`].
#[derive(Debug)]
pub struct ResNet20 {
    spec: Spec,
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet20 {
    /// A model for `in_channels`×`height`×`width` images (height and width divisible by 4)
    /// and `num_classes` ≥ 2 classes.
    ///
    /// # Errors
    /// [`NnError::Config`] for geometry the network cannot take.
    pub fn new(
        in_channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<ResNet20, NnError> {
        if in_channels == 0 || num_classes < 2 {
            return Err(NnError::Config(format!(
                "ResNet-20 needs at least 1 channel and 2 classes, got {in_channels} and {num_classes}"
            )));
        }
        if height < 4 || width < 4 || !height.is_multiple_of(4) || !width.is_multiple_of(4) {
            return Err(NnError::Config(format!(
                "image size {height}x{width} must be positive and divisible by 4 (two stride-2 stages)"
            )));
        }
        let stem = ConvBn::new(in_channels, WIDTHS[0], 1, (height, width), 0)?;
        let mut blocks = Vec::new();
        let (mut cin, mut hw, mut at) = (WIDTHS[0], (height, width), stem.end());
        for (s, &cout) in WIDTHS.iter().enumerate() {
            for k in 0..BLOCKS {
                let down = s > 0 && k == 0;
                let c1 = ConvBn::new(cin, cout, if down { 2 } else { 1 }, hw, at)?;
                hw = (c1.conv.out_h(), c1.conv.out_w());
                let c2 = ConvBn::new(cout, cout, 1, hw, c1.end())?;
                at = c2.end();
                let layer = 1 + 2 * blocks.len();
                blocks.push(Block {
                    c1,
                    c2,
                    down,
                    layer,
                });
                cin = cout;
            }
        }
        let fc = Linear::new(WIDTHS[2], num_classes, at);
        Ok(ResNet20 {
            spec: Spec {
                name: "resnet20",
                image: [in_channels, height, width],
                classes: num_classes,
                params: fc.end(),
            },
            stem,
            blocks,
            fc,
        })
    }

    /// Every conv-BN layer in order: the stem, then each block's two (no allocation).
    fn layers(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| [&b.c1, &b.c2]))
    }

    /// [`ResNet20::layers`] with their name prefixes, for the parameter layout.
    fn conv_bns(&self) -> impl Iterator<Item = (String, &ConvBn)> {
        std::iter::once(("".to_string(), &self.stem)).chain(
            self.blocks.iter().enumerate().flat_map(|(i, b)| {
                let p = format!("layer{}.{}.", i / BLOCKS + 1, i % BLOCKS);
                [(p.clone() + "1", &b.c1), (p + "2", &b.c2)]
            }),
        )
    }

    /// Pixels per channel of the last stage, which global average pooling averages.
    fn last_hw(&self) -> usize {
        self.blocks[self.blocks.len() - 1].c2.bn.hw
    }
}

impl Network for ResNet20 {
    type Activations = Activations;

    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn param_layout(&self) -> Vec<(String, Range<usize>)> {
        let mut v = Vec::new();
        for (prefix, l) in self.conv_bns() {
            let (conv, bn) = if prefix.is_empty() {
                ("conv1".to_string(), "bn1".to_string())
            } else {
                let (p, k) = prefix.split_at(prefix.len() - 1);
                (format!("{p}conv{k}"), format!("{p}bn{k}"))
            };
            v.push((format!("{conv}.weight"), l.conv.weight.clone()));
            v.push((format!("{bn}.weight"), l.bn.weight.clone()));
            v.push((format!("{bn}.bias"), l.bn.bias.clone()));
            v.push((format!("{bn}.running_mean"), l.bn.running_mean.clone()));
            v.push((format!("{bn}.running_var"), l.bn.running_var.clone()));
        }
        v.push(("fc.weight".into(), self.fc.weight.clone()));
        v.push(("fc.bias".into(), self.fc.bias.clone()));
        v
    }

    /// Everything but the batch-norm running statistics.
    fn trainable(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for (name, r) in self.param_layout() {
            if name.ends_with("running_mean") || name.ends_with("running_var") {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// Kaiming-normal convolution and linear weights (std √(2/fan_in)), the linear bias
    /// from U(±1/√fan_in) as PyTorch, BN γ = 1, β = 0, running mean 0, variance 1; drawn in
    /// layout order from one `StdRng::seed_from_u64(seed)` stream.
    fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = vec![0.0f32; self.spec.params];
        let mut normal = |r: Range<usize>, fan_in: usize, p: &mut [f32]| {
            let std = (2.0 / fan_in as f32).sqrt();
            for v in &mut p[r] {
                *v = std * standard_normal(&mut rng);
            }
        };
        for l in self.layers() {
            normal(l.conv.weight.clone(), l.conv.fan_in(), &mut p);
            l.bn.init(&mut p);
        }
        normal(self.fc.weight.clone(), self.fc.fan_in(), &mut p);
        let bound = 1.0 / (self.fc.fan_in() as f32).sqrt();
        for v in &mut p[self.fc.bias.clone()] {
            *v = rng.random_range(-bound..bound);
        }
        p
    }

    /// Batch statistics need two values per channel in the last stage (H/4 × W/4 each).
    fn check_train_size(&self, n: usize) -> Result<(), NnError> {
        if n == 0 || n * self.last_hw() < 2 {
            return Err(shape_err(
                "batch size",
                "at least 2 values per BN channel",
                n,
            ));
        }
        Ok(())
    }

    fn grow(&self, s: &mut Activations, n: usize) {
        let layers: Vec<&ConvBn> = self.layers().collect();
        let max_act = layers.iter().map(|l| l.out_size()).max().unwrap_or(0);
        let sized = |per: usize| vec![0.0f32; n * per];
        s.col = vec![0.0; layers.iter().map(|l| l.conv.col_size()).max().unwrap_or(0)];
        s.z = layers.iter().map(|l| sized(l.out_size())).collect();
        s.saved = layers.iter().map(|l| vec![0.0; l.bn.saved_len()]).collect();
        s.stem = sized(self.stem.out_size());
        s.mid = self.blocks.iter().map(|b| sized(b.c1.out_size())).collect();
        s.out = self.blocks.iter().map(|b| sized(b.c2.out_size())).collect();
        s.pooled = sized(WIDTHS[2]);
        s.d_pooled = sized(WIDTHS[2]);
        s.g1 = sized(max_act);
        s.g2 = sized(max_act);
        s.g3 = sized(max_act);
        s.gz = sized(max_act);
    }

    // forward and backward have the trait's signatures, alike in every network and in
    // each other; backward walks forward's stages in reverse.
    fn forward(&self, p: Pass<'_, Activations>, mode: Mode) -> Result<(), NnError> {
        let (params, n, scratch, laps) = (p.params, p.n, p.scratch, p.laps);
        let s = &mut scratch.acts;
        let (z, saved) = (&mut s.z[0], &mut s.saved[0]);
        let stem_out = &mut s.stem;
        self.stem.forward(
            params, n, &scratch.x, &mut s.col, z, saved, stem_out, true, mode,
        )?;
        laps.lap("stem fwd");
        for (b, blk) in self.blocks.iter().enumerate() {
            let (prev, rest) = s.out.split_at_mut(b);
            let input: &[f32] = if b == 0 { &s.stem } else { &prev[b - 1] };
            let out = &mut rest[0];
            let (l1, l2) = (blk.layer, blk.layer + 1);
            let (z, saved) = (&mut s.z[l1], &mut s.saved[l1]);
            blk.c1.forward(
                params,
                n,
                input,
                &mut s.col,
                z,
                saved,
                &mut s.mid[b],
                true,
                mode,
            )?;
            let (z, saved) = (&mut s.z[l2], &mut s.saved[l2]);
            blk.c2
                .forward(params, n, &s.mid[b], &mut s.col, z, saved, out, false, mode)?;
            blk.shortcut_add(n, input, out);
            relu_forward(ArrayViewMut1::from(&mut out[..n * blk.c2.out_size()]));
            if b % BLOCKS == BLOCKS - 1 {
                laps.lap(FWD[b / BLOCKS]);
            }
        }
        let hw = self.last_hw();
        let out = &s.out[self.blocks.len() - 1];
        for (p, plane) in s.pooled[..n * WIDTHS[2]]
            .iter_mut()
            .zip(out.chunks_exact(hw))
        {
            *p = plane.iter().sum::<f32>() / hw as f32;
        }
        self.fc.forward(params, n, &s.pooled, &mut scratch.logits)?;
        laps.lap("pool+fc fwd");
        Ok(())
    }

    fn backward(&self, p: Pass<'_, Activations>, grads: &mut [f32]) -> Result<(), NnError> {
        let (params, n, scratch, laps) = (p.params, p.n, p.scratch, p.laps);
        let s = &mut scratch.acts;
        self.fc.backward(
            params,
            n,
            &s.pooled,
            &scratch.d_logits,
            grads,
            Some(&mut s.d_pooled),
        )?;
        let hw = self.last_hw();
        for (plane, &d) in s.g1.chunks_exact_mut(hw).zip(&s.d_pooled[..n * WIDTHS[2]]) {
            plane.fill(d / hw as f32);
        }
        laps.lap("pool+fc bwd");
        for b in (0..self.blocks.len()).rev() {
            let blk = &self.blocks[b];
            let (l1, l2) = (blk.layer, blk.layer + 1);
            let (osz, msz, isz) = (blk.c2.out_size(), blk.c1.out_size(), blk.c1.conv.in_size());
            // g1 = d(block output); through the final ReLU.
            relu_backward(
                ArrayViewMut1::from(&mut s.g1[..n * osz]),
                ArrayView1::from(&s.out[b][..n * osz]),
            )?;
            let input: &[f32] = if b == 0 { &s.stem } else { &s.out[b - 1] };
            blk.c2
                .bn
                .backward(params, n, &s.z[l2], &s.saved[l2], &s.g1, grads, &mut s.gz)?;
            blk.c2.conv.backward(
                params,
                n,
                &s.mid[b],
                &s.gz,
                &mut s.col,
                grads,
                Some(&mut s.g2),
            )?;
            relu_backward(
                ArrayViewMut1::from(&mut s.g2[..n * msz]),
                ArrayView1::from(&s.mid[b][..n * msz]),
            )?;
            blk.c1
                .bn
                .backward(params, n, &s.z[l1], &s.saved[l1], &s.g2, grads, &mut s.gz)?;
            blk.c1
                .conv
                .backward(params, n, input, &s.gz, &mut s.col, grads, Some(&mut s.g3))?;
            blk.shortcut_backward(n, &s.g1, &mut s.g3);
            // The block input was a ReLU output: mask here so g1 is ready for the next block.
            relu_backward(
                ArrayViewMut1::from(&mut s.g3[..n * isz]),
                ArrayView1::from(&input[..n * isz]),
            )?;
            std::mem::swap(&mut s.g1, &mut s.g3);
            if b % BLOCKS == 0 {
                laps.lap(BWD[b / BLOCKS]);
            }
        }
        self.stem
            .bn
            .backward(params, n, &s.z[0], &s.saved[0], &s.g1, grads, &mut s.gz)?;
        self.stem
            .conv
            .backward(params, n, &scratch.x, &s.gz, &mut s.col, grads, None)?;
        laps.lap("stem bwd");
        Ok(())
    }

    fn update_state(&self, params: &mut [f32], n: usize, acts: &Activations) {
        for (l, saved) in self.layers().zip(&acts.saved) {
            l.bn.update_running(params, n, saved);
        }
    }

    fn stage_flops(&self) -> (StageFlops, StageFlops) {
        let conv = |c: &ConvBn| 2.0 * (c.conv.out_size() * c.conv.fan_in()) as f64;
        let stage = |s: usize| -> f64 {
            self.blocks[s * BLOCKS..(s + 1) * BLOCKS]
                .iter()
                .map(|b| conv(&b.c1) + conv(&b.c2))
                .sum()
        };
        let fc = 2.0 * (self.fc.in_features * self.fc.out_features) as f64;
        let mut forward = vec![("stem fwd", conv(&self.stem))];
        forward.extend((0..3).map(|s| (FWD[s], stage(s))));
        forward.push(("pool+fc fwd", fc));
        let mut backward = vec![("pool+fc bwd", 2.0 * fc)];
        backward.extend((0..3).rev().map(|s| (BWD[s], 2.0 * stage(s))));
        // No input gradient for the stem: only dW.
        backward.push(("stem bwd", conv(&self.stem)));
        (forward, backward)
    }
}

/// One draw from N(0, 1) by the Box–Muller transform, in f64 with libm's log, sqrt and
/// cos: the same bits on every platform (rand_distr's sampler calls the system's libm).
fn standard_normal(rng: &mut impl RngCore) -> f32 {
    // Uniforms in (0, 1] and [0, 1) from 53 random bits each.
    let unit = |x: u64| (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let u1 = 1.0 - unit(rng.next_u64());
    let u2 = unit(rng.next_u64());
    (libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_sampler_has_mean_0_and_variance_1() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000;
        let x: Vec<f64> = (0..n)
            .map(|_| f64::from(standard_normal(&mut rng)))
            .collect();
        let mean = x.iter().sum::<f64>() / n as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let tail = x.iter().filter(|v| v.abs() > 1.96).count() as f64 / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        assert!((tail - 0.05).abs() < 0.003, "{tail}");
    }
    use crate::gradcheck::{quadrant_batch, random_images, rng};
    use crate::optim::Sgd;
    use crate::{Classifier, Model};

    #[test]
    fn cifar_layout_has_the_papers_parameter_count() {
        let m = ResNet20::new(3, 32, 32, 10).expect("model");
        let layout = m.param_layout();
        assert_eq!(layout[0], ("conv1.weight".to_string(), 0..432));
        assert_eq!(layout[1].0, "bn1.weight");
        assert!(layout.iter().any(|(n, _)| n == "layer3.2.bn2.running_var"));
        for pair in layout.windows(2) {
            assert_eq!(pair[0].1.end, pair[1].1.start, "tensors must be contiguous");
        }
        let trainable: usize = m.trainable().iter().map(|r| r.len()).sum();
        // He et al.'s ResNet-20: 0.27 M weights; 2 × 688 BN channels of running statistics.
        assert_eq!(trainable, 269_722);
        assert_eq!(m.spec().params, 269_722 + 2 * 688);
        let state: usize = layout
            .iter()
            .filter(|(n, _)| n.contains("running"))
            .map(|(_, r)| r.len())
            .sum();
        assert_eq!(state + trainable, m.spec().params);
        let p = m.init_params(3);
        assert_eq!(p, m.init_params(3));
        let rv = &layout
            .iter()
            .find(|(n, _)| n == "bn1.running_var")
            .expect("bn1")
            .1;
        assert!(p[rv.clone()].iter().all(|&v| v == 1.0));
        assert!(ResNet20::new(3, 30, 32, 10).is_err());
        assert!(ResNet20::new(3, 32, 32, 1).is_err());
    }

    /// The whole network in training mode (batch statistics, identity and option-A
    /// shortcuts, BN, pooling, loss) against central differences on a tiny input. Single
    /// entries of a 20-layer ReLU/BN network in f32 are too noisy to compare one by one
    /// (kinks and rounding move them by ~1e-2 however eps is chosen), so every tensor is
    /// checked along its own analytic gradient g_T: the numeric directional derivative
    /// (L(p + t·ĝ_T) − L(p − t·ĝ_T)) / 2t must equal |g_T|. A wrong factor, sign or
    /// missing term in any layer's backward pass breaks that equality.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut m = Classifier::new(ResNet20::new(2, 8, 8, 3).expect("model"));
        let params = m.init_params(5);
        let x = random_images(6, 3, 2, 8, 8);
        let labels = [2, 0, 1];
        let mut grads = vec![0.0; m.num_params()];
        let mut after = params.clone();
        m.train_batch(&mut after, &mut grads, x.view(), &labels)
            .expect("train");
        let mut scratch = vec![0.0; m.num_params()];
        let t = 1e-3;
        let mut checked = 0;
        for (name, range) in m.param_layout() {
            if name.contains("running") {
                assert!(
                    grads[range].iter().all(|&g| g == 0.0),
                    "{name} has a gradient"
                );
                continue;
            }
            let norm = grads[range.clone()]
                .iter()
                .map(|&g| (g as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                norm > 1e-2,
                "{name}: gradient norm {norm} too small to check"
            );
            let mut loss = |sign: f64| {
                let mut p = params.clone();
                for (v, &g) in p[range.clone()].iter_mut().zip(&grads[range.clone()]) {
                    *v += (sign * t * g as f64 / norm) as f32;
                }
                let s = m
                    .train_batch(&mut p, &mut scratch, x.view(), &labels)
                    .expect("train");
                s.loss_sum / s.count as f64
            };
            let numeric = (loss(1.0) - loss(-1.0)) / (2.0 * t);
            assert!(
                (numeric / norm - 1.0).abs() < 0.03,
                "{name}: directional derivative {numeric:.5} vs |g| {norm:.5}"
            );
            checked += 1;
        }
        // 19 convolutions, 19 BN layers with two trainable tensors each, fc weight and bias.
        assert_eq!(checked, 19 + 2 * 19 + 2);
        // Training moved the running statistics, after the gradient used batch statistics.
        let rm = m.param_layout()[3].1.clone();
        assert!(after[rm].iter().any(|&v| v != 0.0), "running mean moved");
    }

    /// 8×8 three-channel images whose class is the bright quadrant: a few SGD steps on the
    /// trainable ranges must cut the loss, and eval mode must then agree.
    #[test]
    fn sgd_learns_quadrants() {
        let mut m = Classifier::new(ResNet20::new(3, 8, 8, 4).expect("model"));
        let mut params = m.init_params(1);
        let mut grads = vec![0.0; m.num_params()];
        let mut sgd = Sgd::new(m.num_params(), 0.05, 0.9, 0.0);
        sgd.set_trainable(m.trainable());
        let mut r = rng(12);
        let (tx, ty) = quadrant_batch(&mut r, 64, 3);
        let mut first = None;
        for _ in 0..30 {
            let (x, y) = quadrant_batch(&mut r, 16, 3);
            let s = m
                .train_batch(&mut params, &mut grads, x.view(), &y)
                .expect("train");
            first.get_or_insert(s.loss_sum / 16.0);
            sgd.step(&mut params, &grads);
        }
        let after = m.eval_batch(&params, tx.view(), &ty).expect("eval");
        let (l0, l1) = (first.unwrap_or(f64::NAN), after.loss_sum / 64.0);
        assert!(l1 < 0.5 * l0, "loss went from {l0:.4} to {l1:.4}");
        assert!(after.correct >= 48, "accuracy {}/64", after.correct);
    }
}
