//! The model abstraction the driver and the benchmark work with: a network over one flat
//! `f32` buffer that holds every parameter AND any state replicas must agree on (batch-norm
//! running statistics), so RPS exchanges and averages all of it as plain slices. The
//! optimizer updates only the [`Model::trainable`] ranges.

use std::ops::Range;

use ndarray::ArrayView4;

use crate::classifier::Classifier;
use crate::{BatchStats, Cnn, Mlp, NnError, ResNet20};

/// Which network to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// The reference CNN of [`crate::cnn`].
    Cnn,
    /// The CIFAR ResNet-20 of [`crate::resnet`].
    ResNet20,
    /// The one-hidden-layer perceptron of [`crate::mlp`], for the theory experiments.
    Mlp,
}

impl ModelKind {
    /// The name recorded in metrics files and printed by the benchmark.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::ResNet20 => "resnet20",
            ModelKind::Mlp => "mlp",
        }
    }

    /// The name in prose (`CNN`, `ResNet-20`, `MLP`), for messages.
    pub fn title(self) -> &'static str {
        match self {
            ModelKind::Cnn => "CNN",
            ModelKind::ResNet20 => "ResNet-20",
            ModelKind::Mlp => "MLP",
        }
    }

    /// Builds the model for images of `channels`×`height`×`width` and `classes` classes.
    ///
    /// # Errors
    /// [`NnError::Config`] when the geometry does not fit the model.
    pub fn build(
        self,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Box<dyn Model>, NnError> {
        Ok(match self {
            ModelKind::Cnn => {
                Box::new(Classifier::new(Cnn::new(channels, height, width, classes)?))
            }
            ModelKind::ResNet20 => Box::new(Classifier::new(ResNet20::new(
                channels, height, width, classes,
            )?)),
            ModelKind::Mlp => {
                Box::new(Classifier::new(Mlp::new(channels, height, width, classes)?))
            }
        })
    }
}

/// A trainable network over a flat buffer. Implementations own only geometry and scratch;
/// the one in this crate is [`Classifier`], over a [`crate::Network`].
pub trait Model: std::fmt::Debug + Send {
    /// Short name (`cnn`, `resnet20`, `mlp`).
    fn name(&self) -> &'static str;

    /// Length of the flat buffer (parameters and state) and of the gradient buffer.
    fn num_params(&self) -> usize;

    /// (name, range) of every tensor in the buffer, in layout order (PyTorch names).
    fn param_layout(&self) -> Vec<(String, Range<usize>)>;

    /// Ranges the optimizer updates, sorted and disjoint; the rest is state (batch-norm
    /// running statistics) that training mode updates itself.
    fn trainable(&self) -> Vec<Range<usize>> {
        std::iter::once(0..self.num_params()).collect()
    }

    /// A deterministic initial buffer from `seed`.
    fn init_params(&self, seed: u64) -> Vec<f32>;

    /// Forward (training mode) and backward on one batch: OVERWRITES `grads` with the
    /// gradient of the mean loss (zero on state entries) and may update state in `params`.
    ///
    /// # Errors
    /// Wrong buffer lengths or image shape, an empty batch, or a label out of range; then
    /// neither buffer has been touched.
    fn train_batch(
        &mut self,
        params: &mut [f32],
        grads: &mut [f32],
        images: ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<BatchStats, NnError>;

    /// Forward only, eval mode.
    ///
    /// # Errors
    /// As [`Model::train_batch`], except that an empty batch gives zero statistics.
    fn eval_batch(
        &mut self,
        params: &[f32],
        images: ArrayView4<f32>,
        labels: &[usize],
    ) -> Result<BatchStats, NnError>;

    /// Turns per-stage timing of `train_batch` on or off.
    fn set_profiling(&mut self, on: bool);

    /// Seconds per stage since the last call, in execution order.
    fn take_profile(&mut self) -> Vec<(&'static str, f64)>;

    /// FLOPs of one training sample per stage (matrix products only).
    fn stage_flops(&self) -> Vec<(&'static str, f64)>;
}
