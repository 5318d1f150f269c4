//! rps-nn, the neural-network engine of rps (no MPI, no HDF5): the reference CNN, the CIFAR
//! ResNet-20 and a small MLP as [`Network`]s behind one [`Model`] implementation,
//! [`Classifier`], their layers and kernels, and SGD ([`optim`]). Every parameter lives in
//! one flat `f32` buffer (every gradient in one of the same layout); layers know only their
//! offsets into it, so a model cuts into contiguous blocks that are plain slices. Kernels
//! are single-threaded, into given buffers.

pub mod batchnorm;
mod block;
pub mod classifier;
pub mod cnn;
pub mod conv2d;
pub mod conv_algo;
pub mod im2col;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod mlp;
pub mod model;
pub mod network;
pub mod optim;
pub mod pool;
pub mod profile;
pub mod relu;
pub mod resnet;
pub mod simd;

#[cfg(test)]
pub(crate) mod gradcheck;

pub use classifier::Classifier;
pub use cnn::Cnn;
pub use loss::BatchStats;
pub use mlp::Mlp;
pub use model::{Model, ModelKind};
pub use network::{Mode, Network, Spec};
pub use resnet::ResNet20;

use ndarray::{ArrayView, ArrayViewMut, Dimension};

/// Errors raised by the network engine.
#[derive(Debug)]
pub enum NnError {
    /// The model cannot be built with the requested geometry.
    Config(String),
    /// An argument does not have the shape or length the model expects.
    Shape {
        /// Which argument was wrong.
        what: String,
        /// What the model expected.
        expected: String,
        /// What was passed.
        found: String,
    },
    /// A label is not a valid class index.
    Label {
        /// Position of the offending sample in the batch.
        index: usize,
        /// The label found there.
        label: usize,
        /// Number of classes of the model.
        num_classes: usize,
    },
    /// A kernel was handed a view that is not contiguous in standard (row-major) order.
    Layout(&'static str),
    /// An ndarray view could not be built over a buffer.
    Array(ndarray::ShapeError),
}

// Written by hand rather than with thiserror to keep this crate's dependencies to ndarray
// and rand; the messages are those the derive produced.
impl std::fmt::Display for NnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NnError::Config(msg) => write!(f, "invalid model configuration: {msg}"),
            NnError::Shape {
                what,
                expected,
                found,
            } => write!(
                f,
                "shape mismatch for {what}: expected {expected}, found {found}"
            ),
            NnError::Label {
                index,
                label,
                num_classes,
            } => write!(
                f,
                "label {label} of sample {index} is out of range for {num_classes} classes"
            ),
            NnError::Layout(what) => write!(f, "{what} must be contiguous in standard layout"),
            // `#[error(transparent)]`: the message and the source are the inner error's.
            NnError::Array(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for NnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NnError::Array(e) => e.source(),
            _ => None,
        }
    }
}

impl From<ndarray::ShapeError> for NnError {
    fn from(e: ndarray::ShapeError) -> NnError {
        NnError::Array(e)
    }
}

/// Builds a [`NnError::Shape`] from anything printable.
pub(crate) fn shape_err(
    what: impl Into<String>,
    expected: impl std::fmt::Debug,
    found: impl std::fmt::Debug,
) -> NnError {
    NnError::Shape {
        what: what.into(),
        expected: format!("{expected:?}"),
        found: format!("{found:?}"),
    }
}

/// Checks that a view has exactly the expected shape.
pub(crate) fn check_shape(what: &str, found: &[usize], expected: &[usize]) -> Result<(), NnError> {
    if found == expected {
        Ok(())
    } else {
        Err(shape_err(what, expected, found))
    }
}

/// The contiguous slice behind a read-only view; kernels work on slices in their inner
/// loops because ndarray indexing there costs several times more.
pub(crate) fn as_slice<'a, D: Dimension>(
    view: &ArrayView<'a, f32, D>,
    what: &'static str,
) -> Result<&'a [f32], NnError> {
    view.to_slice().ok_or(NnError::Layout(what))
}

/// The contiguous slice behind a mutable view (see [`as_slice`]).
pub(crate) fn as_slice_mut<'a, D: Dimension>(
    view: ArrayViewMut<'a, f32, D>,
    what: &'static str,
) -> Result<&'a mut [f32], NnError> {
    view.into_slice().ok_or(NnError::Layout(what))
}
