//! The network-specific half of a model: a [`Network`] is geometry only (layers and their
//! offsets into the flat buffer) and runs one batch forward to logits and back from their
//! gradient, in a [`Scratch`] it is lent. Everything else a model does (argument checks,
//! input copy, loss, statistics, profiling of those stages) is written once in
//! [`crate::classifier::Classifier`], the one implementation of [`crate::Model`].

use std::ops::Range;

use crate::profile::Laps;
use crate::{shape_err, NnError};

/// Whether a forward pass trains (batch statistics) or evaluates (running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch normalization uses, and saves, the statistics of the batch.
    Train,
    /// Evaluation: batch normalization uses the running statistics in the buffer.
    Eval,
}

/// The buffers of one batch, grown to the largest batch seen and reused, so that a warm
/// step allocates nothing. All image-like buffers are NCHW.
#[derive(Default)]
pub struct Scratch<A> {
    /// Batch size the buffers are sized for.
    pub(crate) capacity: usize,
    /// Contiguous copy of the input images (N, C, H, W).
    pub x: Vec<f32>,
    /// Logits (N, classes), written by [`Network::forward`].
    pub logits: Vec<f32>,
    /// Gradient of the mean loss with respect to the logits, read by [`Network::backward`].
    pub d_logits: Vec<f32>,
    /// The network's own activations and their gradients.
    pub acts: A,
}

impl<A> std::fmt::Debug for Scratch<A> {
    // The buffers hold megabytes of activations; only their size is worth printing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What a network is, fixed when it is built: the images it takes, the classes it tells
/// apart, and the length of its flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Short name (`cnn`, `resnet20`, `mlp`).
    pub name: &'static str,
    /// Shape (C, H, W) of one input image.
    pub image: [usize; 3],
    /// Number of classes, the width of the logits.
    pub classes: usize,
    /// Length of the flat buffer (parameters and state) and of the gradient buffer.
    pub params: usize,
}

/// One pass of a network over a batch: the flat buffer, the batch size, the scratch
/// (input, activations, logits and their gradients) and the timer its stages go to.
pub struct Pass<'a, A> {
    pub params: &'a [f32],
    pub n: usize,
    pub scratch: &'a mut Scratch<A>,
    pub laps: &'a mut Laps,
}

/// Forward and backward stages of a network with the FLOPs of one training sample each
/// (a multiply-add counts two; elementwise work is ignored), in execution order.
pub type StageFlops = Vec<(&'static str, f64)>;

/// A classification network over one flat `f32` buffer (parameters and state), without
/// its loss: [`crate::classifier::Classifier`] adds that and implements [`crate::Model`].
pub trait Network: std::fmt::Debug + Send {
    /// The network's activation and gradient buffers for a batch.
    type Activations: Default + Send;

    /// What the network maps, fixed when it was built.
    fn spec(&self) -> &Spec;

    /// (name, range, fan-in of its layer) of every parameter tensor, in layout order, for
    /// a network of PyTorch's default layers; [`Network::param_layout`] and
    /// [`Network::init_params`] follow from it. A network with state (batch norm)
    /// overrides both and leaves this empty.
    fn tensors(&self) -> Vec<Tensor> {
        Vec::new()
    }

    /// (name, range) of every tensor in the buffer, in layout order (PyTorch names).
    fn param_layout(&self) -> Vec<(String, Range<usize>)> {
        layout_of(&self.tensors())
    }

    /// Ranges the optimizer updates (see [`crate::Model::trainable`]); all by default.
    fn trainable(&self) -> Vec<Range<usize>> {
        std::iter::once(0..self.spec().params).collect()
    }

    /// A deterministic initial buffer from `seed`: by default PyTorch's, every weight and
    /// bias from U(−1/√fan_in, 1/√fan_in), in layout order from one seeded stream
    /// (`uniform_init`).
    fn init_params(&self, seed: u64) -> Vec<f32> {
        uniform_init(self.spec().params, &self.tensors(), seed)
    }

    /// Rejects a training batch of `n` samples the network cannot learn from.
    ///
    /// # Errors
    /// [`NnError::Shape`] for an empty batch (networks with batch statistics ask more).
    fn check_train_size(&self, n: usize) -> Result<(), NnError> {
        if n == 0 {
            return Err(shape_err("batch size", "at least 1", 0));
        }
        Ok(())
    }

    /// Grows `acts` to hold a batch of `n` (the scratch's own buffers are grown for it).
    fn grow(&self, acts: &mut Self::Activations, n: usize);

    /// Runs the `n` images of the scratch's `x` through the network, filling the
    /// activations up to its `logits`, and charges each stage to the pass's laps.
    ///
    /// # Errors
    /// Only on a buffer that does not fit its view: a bug, as the batch was checked.
    fn forward(&self, p: Pass<'_, Self::Activations>, mode: Mode) -> Result<(), NnError>;

    /// Back-propagates the scratch's `d_logits` after a [`Mode::Train`] forward pass,
    /// OVERWRITING all of `grads` (zero on state entries), and charges each stage to the
    /// pass's laps.
    ///
    /// # Errors
    /// As [`Network::forward`].
    fn backward(&self, p: Pass<'_, Self::Activations>, grads: &mut [f32]) -> Result<(), NnError>;

    /// Updates the state entries of `params` (batch-norm running statistics) once the
    /// gradient of a training batch is done; nothing by default.
    fn update_state(&self, _params: &mut [f32], _n: usize, _acts: &Self::Activations) {}

    /// The (forward, backward) stages that [`Network::forward`] and [`Network::backward`]
    /// charge to the laps.
    fn stage_flops(&self) -> (StageFlops, StageFlops);
}

/// A parameter tensor of a network built from PyTorch's default layers: its name, its
/// range in the flat buffer and the fan-in of its layer.
pub type Tensor = (&'static str, Range<usize>, usize);

/// The (name, range) layout of `tensors`, in their order.
fn layout_of(tensors: &[Tensor]) -> Vec<(String, Range<usize>)> {
    tensors
        .iter()
        .map(|(name, range, _)| (name.to_string(), range.clone()))
        .collect()
}

/// PyTorch's default initialisation of convolutions and linear layers: every weight and
/// bias of a layer is drawn from U(−1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5
/// gives that same bound for weights). Tensors are filled in the order given from one
/// `StdRng::seed_from_u64(seed)` stream, so the same seed gives a bit-identical buffer.
pub(crate) fn uniform_init(len: usize, tensors: &[Tensor], seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut params = vec![0.0f32; len];
    for (_, range, fan_in) in tensors {
        // fan_in >= 1 for every layer of a model that `new` accepted, so the range is
        // never empty.
        let bound = 1.0 / (*fan_in as f32).sqrt();
        for p in &mut params[range.clone()] {
            *p = rng.random_range(-bound..bound);
        }
    }
    params
}
