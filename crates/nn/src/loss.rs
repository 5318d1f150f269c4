//! Softmax cross-entropy over a batch of logits (N, K), reduced as the MEAN over the batch.
//! The loss is computed from a max-shifted log-sum-exp in f64, so it is finite for any
//! finite logits; its gradient is (softmax − one_hot(label)) / N. Accuracy uses the first
//! maximal logit as the prediction.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::{check_shape, NnError};

/// Statistics of one batch; they add up across batches by summing the fields.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum over samples of the cross-entropy −log softmax(logits)\[label\]; the mean loss
    /// is `loss_sum / count`.
    pub loss_sum: f64,
    /// Samples whose argmax prediction (the first maximal logit) equals the label.
    pub correct: usize,
    /// Samples in the batch.
    pub count: usize,
}

/// Evaluates softmax cross-entropy of `logits` (N, K) against `labels` (N entries < K),
/// as the statistics of a batch of N. When `grad` (N, K) is given it is OVERWRITTEN with the gradient of the MEAN loss.
pub fn softmax_cross_entropy(
    logits: ArrayView2<f32>,
    labels: &[usize],
    grad: Option<ArrayViewMut2<f32>>,
) -> Result<BatchStats, NnError> {
    let (n, k) = logits.dim();
    check_shape("labels", &[labels.len()], &[n])?;
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= k) {
        return Err(NnError::Label {
            index,
            label,
            num_classes: k,
        });
    }
    if let Some(g) = &grad {
        check_shape("loss gradient", g.shape(), &[n, k])?;
    }
    let mut sums = BatchStats {
        count: n,
        ..BatchStats::default()
    };
    if k == 0 {
        return Ok(sums);
    }
    let mut grad = grad;
    let inv_n = 1.0 / n as f64;
    for (i, (row, &label)) in logits.rows().into_iter().zip(labels).enumerate() {
        let (mut arg, mut max) = (0, row[0]);
        for (j, &v) in row.iter().enumerate() {
            if v > max {
                max = v;
                arg = j;
            }
        }
        sums.correct += usize::from(arg == label);
        let max = max as f64;
        // libm rather than std: the system's exp and log differ between C libraries and
        // architectures in the last bit, and so would every loss and gradient.
        let denom: f64 = row.iter().map(|&v| libm::exp(v as f64 - max)).sum();
        let log_denom = libm::log(denom);
        sums.loss_sum += log_denom - (row[label] as f64 - max);
        if let Some(g) = grad.as_mut() {
            for (j, (gj, &v)) in g.row_mut(i).iter_mut().zip(row.iter()).enumerate() {
                let p = libm::exp(v as f64 - max - log_denom);
                let target = if j == label { 1.0 } else { 0.0 };
                *gj = ((p - target) * inv_n) as f32;
            }
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_grad_close, numeric_grad, random_vec, rng};
    use ndarray::Array2;

    #[test]
    fn known_values() {
        // Uniform logits: loss ln K per sample; argmax ties resolve to class 0.
        let logits = Array2::<f32>::zeros((2, 4));
        let s = softmax_cross_entropy(logits.view(), &[0, 3], None).expect("loss");
        assert!((s.loss_sum - 2.0 * 4f64.ln()).abs() < 1e-9);
        assert_eq!(s.correct, 1);
        // Huge logits stay finite thanks to the max shift.
        let logits = Array2::from_shape_vec((1, 2), vec![1000.0, -1000.0]).expect("shape");
        let s = softmax_cross_entropy(logits.view(), &[1], None).expect("loss");
        assert!((s.loss_sum - 2000.0).abs() < 1e-6);
        assert_eq!(s.correct, 0);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, k) = (4, 5);
        let mut r = rng(4);
        let mut z = random_vec(&mut r, n * k, -3.0, 3.0);
        let labels = [0, 4, 2, 2];
        let mut g = Array2::from_elem((n, k), f32::NAN);
        let zv = ArrayView2::from_shape((n, k), &z[..]).expect("shape");
        softmax_cross_entropy(zv, &labels, Some(g.view_mut())).expect("loss");
        let num = numeric_grad(&mut z, 1e-3, |z| {
            let zv = ArrayView2::from_shape((n, k), z).expect("shape");
            softmax_cross_entropy(zv, &labels, None)
                .expect("loss")
                .loss_sum
                / n as f64
        });
        assert_grad_close(
            "softmax xent",
            g.as_slice().expect("contiguous"),
            &num,
            1e-4,
            1e-3,
        );
    }

    #[test]
    fn rejects_bad_labels() {
        let z = Array2::<f32>::zeros((2, 3));
        assert!(matches!(
            softmax_cross_entropy(z.view(), &[0, 3], None),
            Err(NnError::Label {
                index: 1,
                label: 3,
                num_classes: 3
            })
        ));
        assert!(softmax_cross_entropy(z.view(), &[0], None).is_err());
    }
}
