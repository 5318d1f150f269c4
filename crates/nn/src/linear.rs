//! Fully connected layer y = x·Wᵀ + b over a batch, as matrix products.
//! The weight uses PyTorch's (out, in) layout and is immediately followed by the (out) bias
//! in the flat parameter buffer; activations are row-major (N, features).
//! Backward overwrites dW = dYᵀ·x, db = Σ_rows dY and, when asked, dx = dY·W.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

use crate::matmul::mat_mul;
use crate::{check_shape, shape_err, NnError};

/// y (N, out) = x (N, in) · weightᵀ + bias, with weight (out, in) and bias (out).
pub fn linear_forward(
    x: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    bias: ArrayView1<f32>,
    mut y: ArrayViewMut2<f32>,
) -> Result<(), NnError> {
    let (n, inp) = x.dim();
    let out = weight.nrows();
    check_shape("linear weight", weight.shape(), &[out, inp])?;
    check_shape("linear bias", bias.shape(), &[out])?;
    check_shape("linear output", y.shape(), &[n, out])?;
    // Seeding every row with the bias lets the product accumulate onto it (beta = 1).
    for mut row in y.rows_mut() {
        row.assign(&bias);
    }
    mat_mul(1.0, &x, &weight.t(), 1.0, &mut y);
    Ok(())
}

/// Gradients of a linear layer given dL/dy (N, out). OVERWRITES `grad_weight` (out, in),
/// `grad_bias` (out) and, when given, `grad_x` (N, in).
pub fn linear_backward(
    x: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    grad_y: ArrayView2<f32>,
    mut grad_weight: ArrayViewMut2<f32>,
    mut grad_bias: ArrayViewMut1<f32>,
    grad_x: Option<ArrayViewMut2<f32>>,
) -> Result<(), NnError> {
    let (n, inp) = x.dim();
    let out = weight.nrows();
    check_shape("linear weight", weight.shape(), &[out, inp])?;
    check_shape("linear output gradient", grad_y.shape(), &[n, out])?;
    check_shape("linear weight gradient", grad_weight.shape(), &[out, inp])?;
    check_shape("linear bias gradient", grad_bias.shape(), &[out])?;
    mat_mul(1.0, &grad_y.t(), &x, 0.0, &mut grad_weight);
    // Row-by-row accumulation instead of sum_axis, which would allocate.
    grad_bias.fill(0.0);
    for row in grad_y.rows() {
        grad_bias += &row;
    }
    if let Some(mut gx) = grad_x {
        check_shape("linear input gradient", gx.shape(), &[n, inp])?;
        mat_mul(1.0, &grad_y, &weight, 0.0, &mut gx);
    }
    Ok(())
}

/// A fully connected layer of the model: its size and where its parameters live in the
/// flat buffer (weight immediately followed by bias).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Range of the (out, in) weight in the flat buffer.
    pub weight: Range<usize>,
    /// Range of the (out) bias in the flat buffer.
    pub bias: Range<usize>,
}

impl Linear {
    /// A layer whose parameters start at `offset` in the flat buffer.
    pub fn new(in_features: usize, out_features: usize, offset: usize) -> Linear {
        let wlen = in_features * out_features;
        Linear {
            in_features,
            out_features,
            weight: offset..offset + wlen,
            bias: offset + wlen..offset + wlen + out_features,
        }
    }

    /// Inputs per output, the fan-in used for initialisation.
    pub fn fan_in(&self) -> usize {
        self.in_features
    }

    /// One past the last parameter of this layer.
    pub fn end(&self) -> usize {
        self.bias.end
    }

    /// Views of (weight (out, in), bias (out)) inside the flat parameter buffer.
    fn param_views<'a>(
        &self,
        params: &'a [f32],
    ) -> Result<(ArrayView2<'a, f32>, ArrayView1<'a, f32>), NnError> {
        if params.len() < self.end() {
            return Err(shape_err("linear parameters", self.end(), params.len()));
        }
        let w = ArrayView2::from_shape(
            (self.out_features, self.in_features),
            &params[self.weight.clone()],
        )?;
        Ok((w, ArrayView1::from(&params[self.bias.clone()])))
    }

    /// Forward pass over `n` rows of `x` (at least N·in floats), writing N·out floats of `y`.
    pub fn forward(
        &self,
        params: &[f32],
        n: usize,
        x: &[f32],
        y: &mut [f32],
    ) -> Result<(), NnError> {
        let (w, b) = self.param_views(params)?;
        let x = batch_view(x, n, self.in_features, "linear input")?;
        let y = batch_view_mut(y, n, self.out_features, "linear output")?;
        linear_forward(x, w, b, y)
    }

    /// Backward pass over `n` rows: OVERWRITES this layer's ranges of the flat `grads`
    /// buffer, and `grad_x` (N·in floats) with dL/dx when given.
    pub fn backward(
        &self,
        params: &[f32],
        n: usize,
        x: &[f32],
        grad_y: &[f32],
        grads: &mut [f32],
        grad_x: Option<&mut [f32]>,
    ) -> Result<(), NnError> {
        let (w, _) = self.param_views(params)?;
        if grads.len() < self.end() {
            return Err(shape_err("linear gradients", self.end(), grads.len()));
        }
        let x = batch_view(x, n, self.in_features, "linear input")?;
        let gy = batch_view(grad_y, n, self.out_features, "linear output gradient")?;
        let (gw, gb) = grads[self.weight.start..self.bias.end].split_at_mut(self.weight.len());
        let gw = ArrayViewMut2::from_shape((self.out_features, self.in_features), gw)?;
        let gx = match grad_x {
            Some(g) => Some(batch_view_mut(
                g,
                n,
                self.in_features,
                "linear input gradient",
            )?),
            None => None,
        };
        linear_backward(x, w, gy, gw, ArrayViewMut1::from(gb), gx)
    }
}

/// (n, width) view over the first n·width floats of a scratch buffer.
pub(crate) fn batch_view<'a>(
    buf: &'a [f32],
    n: usize,
    width: usize,
    what: &str,
) -> Result<ArrayView2<'a, f32>, NnError> {
    let len = n * width;
    let s = buf
        .get(..len)
        .ok_or_else(|| shape_err(what, len, buf.len()))?;
    Ok(ArrayView2::from_shape((n, width), s)?)
}

/// Mutable counterpart of [`batch_view`].
pub(crate) fn batch_view_mut<'a>(
    buf: &'a mut [f32],
    n: usize,
    width: usize,
    what: &str,
) -> Result<ArrayViewMut2<'a, f32>, NnError> {
    let len = n * width;
    let found = buf.len();
    let s = buf
        .get_mut(..len)
        .ok_or_else(|| shape_err(what, len, found))?;
    Ok(ArrayViewMut2::from_shape((n, width), s)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_grad_close, dot_f64, numeric_grad, random_vec, rng};

    #[test]
    fn forward_matches_naive() {
        let (n, inp, out) = (3, 5, 4);
        let mut r = rng(1);
        let layer = Linear::new(inp, out, 2);
        let params = random_vec(&mut r, layer.end(), -1.0, 1.0);
        let x = random_vec(&mut r, n * inp, -1.0, 1.0);
        let mut y = vec![f32::NAN; n * out];
        layer.forward(&params, n, &x, &mut y).expect("forward");
        for i in 0..n {
            for o in 0..out {
                let mut want = params[layer.bias.start + o] as f64;
                for j in 0..inp {
                    want += params[layer.weight.start + o * inp + j] as f64 * x[i * inp + j] as f64;
                }
                assert!((y[i * out + o] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, inp, out) = (3, 6, 4);
        let mut r = rng(2);
        let layer = Linear::new(inp, out, 1);
        let mut params = random_vec(&mut r, layer.end() + 1, -1.0, 1.0);
        let mut x = random_vec(&mut r, n * inp, -1.0, 1.0);
        let proj = random_vec(&mut r, n * out, -1.0, 1.0);
        let loss = |p: &[f32], x: &[f32]| {
            let mut y = vec![0.0; n * out];
            layer.forward(p, n, x, &mut y).expect("forward");
            dot_f64(&y, &proj)
        };
        let mut grads = vec![9.0; params.len()];
        let mut gx = vec![9.0; x.len()];
        layer
            .backward(&params, n, &x, &proj, &mut grads, Some(&mut gx))
            .expect("backward");
        assert_eq!(
            (grads[0], grads[layer.end()]),
            (9.0, 9.0),
            "outside range untouched"
        );

        let xc = x.clone();
        let num_p = numeric_grad(&mut params, 1e-2, |p| loss(p, &xc));
        let pc = params.clone();
        let num_x = numeric_grad(&mut x, 1e-2, |xv| loss(&pc, xv));
        let r = layer.weight.start..layer.bias.end;
        assert_grad_close("linear params", &grads[r.clone()], &num_p[r], 1e-3, 1e-3);
        assert_grad_close("linear input", &gx, &num_x, 1e-3, 1e-3);
    }

    #[test]
    fn rejects_short_buffers() {
        let layer = Linear::new(4, 3, 0);
        let params = vec![0.0; layer.end()];
        let mut y = vec![0.0; 5];
        assert!(layer.forward(&params, 2, &[0.0; 8], &mut y).is_err());
        assert!(layer.forward(&params[1..], 1, &[0.0; 4], &mut y).is_err());
    }
}
