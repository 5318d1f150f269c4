//! Rectified linear unit, applied in place after the conv and hidden linear layers.
//! The backward pass needs only the layer's output: relu(x) > 0 exactly where x > 0, so
//! the pre-activation never has to be kept. The derivative at 0 is taken as 0 (PyTorch's).

use ndarray::{ArrayView, ArrayViewMut, Dimension, Zip};

use crate::{check_shape, NnError};

/// x ← max(x, 0), in place.
pub fn relu_forward<D: Dimension>(mut x: ArrayViewMut<f32, D>) {
    x.mapv_inplace(|v| if v > 0.0 { v } else { 0.0 });
}

/// grad ← grad · 𝟙(output > 0), in place, where `output` is what [`relu_forward`] produced.
pub fn relu_backward<D: Dimension>(
    grad: ArrayViewMut<f32, D>,
    output: ArrayView<f32, D>,
) -> Result<(), NnError> {
    check_shape("relu output", output.shape(), grad.shape())?;
    // A select rather than a conditional store, so the loop vectorises.
    Zip::from(grad)
        .and(&output)
        .for_each(|g, &y| *g = if y > 0.0 { *g } else { 0.0 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_grad_close, dot_f64, numeric_grad, random_vec, rng};
    use ndarray::{Array1, ArrayView1, ArrayViewMut1};

    #[test]
    fn forward_clamps_negatives() {
        let mut x = Array1::from(vec![-2.0, -0.0, 0.0, 0.5, 3.0]);
        relu_forward(x.view_mut());
        assert_eq!(x.to_vec(), vec![0.0, 0.0, 0.0, 0.5, 3.0]);
    }

    /// Inputs are kept at least 0.1 away from the kink so central differences are exact.
    #[test]
    fn backward_matches_finite_differences() {
        let mut r = rng(3);
        let mut x: Vec<f32> = random_vec(&mut r, 40, -1.0, 1.0)
            .into_iter()
            .map(|v| {
                if v.abs() < 0.1 {
                    v + 0.2f32.copysign(v)
                } else {
                    v
                }
            })
            .collect();
        let proj = random_vec(&mut r, x.len(), -1.0, 1.0);
        let loss = |x: &[f32]| {
            let mut y = x.to_vec();
            relu_forward(ArrayViewMut1::from(&mut y[..]));
            dot_f64(&y, &proj)
        };
        let mut y = x.clone();
        relu_forward(ArrayViewMut1::from(&mut y[..]));
        let mut g = proj.clone();
        relu_backward(ArrayViewMut1::from(&mut g[..]), ArrayView1::from(&y[..])).expect("backward");
        let num = numeric_grad(&mut x, 1e-2, loss);
        assert_grad_close("relu", &g, &num, 1e-3, 1e-3);
    }

    #[test]
    fn backward_rejects_shape_mismatch() {
        let mut g = [1.0f32; 3];
        let y = [1.0f32; 4];
        assert!(relu_backward(ArrayViewMut1::from(&mut g[..]), ArrayView1::from(&y[..])).is_err());
    }
}
