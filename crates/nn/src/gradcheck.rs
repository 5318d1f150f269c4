//! Test-only helpers: seeded random data, a toy image task, and checks of analytic
//! gradients against central finite differences. Losses are accumulated in f64 so the only
//! f32 error left is the model's own rounding; comparisons use an absolute plus relative
//! tolerance, strict enough that a visibly wrong gradient fails (`rejects_a_wrong_gradient`).

use ndarray::{s, Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded RNG for reproducible tests.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values drawn uniformly from `[lo, hi)`.
pub fn random_vec(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// A batch of `n` random (C, H, W) images with entries in `[-2, 2)`.
pub fn random_images(seed: u64, n: usize, c: usize, h: usize, w: usize) -> Array4<f32> {
    let mut r = rng(seed);
    Array4::from_shape_vec((n, c, h, w), random_vec(&mut r, n * c * h * w, -2.0, 2.0))
        .expect("shape")
}

/// `n` 8×8 images of `c` channels whose class (0..4) is the bright quadrant, plus noise.
pub fn quadrant_batch(r: &mut StdRng, n: usize, c: usize) -> (Array4<f32>, Vec<usize>) {
    let labels: Vec<usize> = (0..n).map(|_| r.random_range(0..4)).collect();
    let mut x = Array4::from_shape_fn((n, c, 8, 8), |_| r.random_range(-0.3f32..0.3));
    for (i, &q) in labels.iter().enumerate() {
        let (top, left) = ((q / 2) * 4, (q % 2) * 4);
        x.slice_mut(s![i, .., top..top + 4, left..left + 4])
            .mapv_inplace(|v| v + 1.0);
    }
    (x, labels)
}

/// One random (C, H, W) image with entries in `[-1, 1)`.
pub fn random_image(seed: u64, c: usize, h: usize, w: usize) -> Array3<f32> {
    let mut r = rng(seed);
    Array3::from_shape_vec((c, h, w), random_vec(&mut r, c * h * w, -1.0, 1.0)).expect("shape")
}

/// Convolution shapes covering no padding, "same" padding, padding wider than the kernel reach,
/// and non-square images.
pub const CONV_CASES: [(usize, usize, usize, usize, usize, usize); 5] = [
    // (C, H, W, F, K, pad)
    (1, 5, 5, 2, 3, 0),
    (2, 6, 5, 3, 3, 1),
    (3, 7, 6, 4, 5, 2),
    (2, 4, 4, 2, 5, 3),
    (1, 8, 8, 2, 1, 0),
];

/// `Σ a_i·b_i` accumulated in f64: the scalar "loss" used to probe linear-ish layers.
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot_f64: length mismatch");
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Central-difference derivative of `f` with respect to `x[i]` for each `i` in `indices`.
/// `x` is restored afterwards. The step actually taken in f32 is used as the divisor,
/// because `x + eps` rounds.
pub fn numeric_grad_at(
    x: &mut [f32],
    indices: &[usize],
    eps: f32,
    mut f: impl FnMut(&[f32]) -> f64,
) -> Vec<f64> {
    indices
        .iter()
        .map(|&i| {
            let orig = x[i];
            let plus = orig + eps;
            let minus = orig - eps;
            x[i] = plus;
            let lp = f(x);
            x[i] = minus;
            let lm = f(x);
            x[i] = orig;
            (lp - lm) / (plus as f64 - minus as f64)
        })
        .collect()
}

/// Central-difference gradient of `f` with respect to every entry of `x`.
pub fn numeric_grad(x: &mut [f32], eps: f32, f: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
    let all: Vec<usize> = (0..x.len()).collect();
    numeric_grad_at(x, &all, eps, f)
}

/// Numeric gradients of `loss(params, x)` with respect to the parameters and to the
/// input, by central differences with step `eps` (each taken with the other held).
pub fn numeric_grads(
    params: &mut [f32],
    x: &mut [f32],
    eps: f32,
    mut loss: impl FnMut(&[f32], &[f32]) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let xs = x.to_vec();
    let num_p = numeric_grad(params, eps, |p| loss(p, &xs));
    let ps = params.to_vec();
    let num_x = numeric_grad(x, eps, |xv| loss(&ps, xv));
    (num_p, num_x)
}

/// The first entry where `analytic` and `numeric` disagree beyond `atol + rtol·max(|a|,|n|)`.
pub fn first_mismatch(analytic: &[f32], numeric: &[f64], atol: f64, rtol: f64) -> Option<String> {
    assert_eq!(analytic.len(), numeric.len(), "gradient length mismatch");
    analytic
        .iter()
        .zip(numeric)
        .enumerate()
        .find_map(|(i, (&a, &n))| {
            let a = a as f64;
            let tol = atol + rtol * a.abs().max(n.abs());
            ((a - n).abs() > tol || !a.is_finite()).then(|| {
                format!("entry {i}: analytic {a:.6e}, numeric {n:.6e}, tolerance {tol:.1e}")
            })
        })
}

/// Panics with a readable message if the gradients disagree (see [`first_mismatch`]).
pub fn assert_grad_close(what: &str, analytic: &[f32], numeric: &[f64], atol: f64, rtol: f64) {
    if let Some(msg) = first_mismatch(analytic, numeric, atol, rtol) {
        panic!("{what}: gradient mismatch at {msg}");
    }
}

/// Trains `m` (initialised from seed 11) for 40 SGD steps of 16 single-channel quadrant
/// images (lr 0.05, momentum 0.9, weight decay 1e-4) and returns the mean loss on 64 test
/// images before and after, and how many of them it then classifies correctly.
pub fn train_quadrants(m: &mut dyn crate::Model) -> (f64, f64, usize) {
    let mut params = m.init_params(11);
    let mut grads = vec![0.0; m.num_params()];
    let mut sgd = crate::optim::Sgd::new(m.num_params(), 0.05, 0.9, 1e-4);
    let mut r = rng(12);
    let (test_x, test_y) = quadrant_batch(&mut r, 64, 1);
    let before = m.eval_batch(&params, test_x.view(), &test_y).expect("eval");
    for _ in 0..40 {
        let (x, y) = quadrant_batch(&mut r, 16, 1);
        m.train_batch(&mut params, &mut grads, x.view(), &y)
            .expect("train");
        sgd.step(&mut params, &grads);
    }
    let after = m.eval_batch(&params, test_x.view(), &test_y).expect("eval");
    let (l0, l1) = (before.loss_sum / 64.0, after.loss_sum / 64.0);
    eprintln!(
        "quadrant loss {l0:.4} -> {l1:.4}, accuracy {}/64",
        after.correct
    );
    (l0, l1, after.correct)
}

/// PyTorch's default initialisation of a network of default layers: deterministic in the
/// seed, different across seeds, and every tensor within U(±1/√fan_in) of its layer
/// (`fan_ins`, in layout order), spanning its interval when it is large enough to tell.
pub fn assert_pytorch_init<N: crate::network::Network>(m: &N, fan_ins: &[usize]) {
    let a = m.init_params(42);
    let b = m.init_params(42);
    let c = m.init_params(43);
    assert_eq!(a.len(), m.spec().params);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(a.iter().zip(&c).filter(|(x, y)| x != y).count() > a.len() / 2);
    let layout = m.param_layout();
    assert_eq!(layout.len(), fan_ins.len());
    for ((name, range), fan_in) in layout.into_iter().zip(fan_ins) {
        let bound = 1.0 / (*fan_in as f32).sqrt();
        let t = &a[range];
        assert!(t.iter().all(|v| v.abs() <= bound), "{name} out of bounds");
        if t.len() < 100 {
            continue;
        }
        // A uniform draw should get near both ends of its interval.
        let max = t.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.8 * bound, "{name} does not span its interval");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker must accept a right gradient and reject a slightly wrong one, otherwise
    /// the layer tests built on it prove nothing.
    #[test]
    fn rejects_a_wrong_gradient() {
        let mut r = rng(1);
        let mut x = random_vec(&mut r, 20, -1.0, 1.0);
        // f(x) = Σ sin(x_i)·x_i, computed in f32 like a layer would, accumulated in f64.
        let f = |x: &[f32]| x.iter().map(|&v| (v.sin() * v) as f64).sum::<f64>();
        let analytic: Vec<f32> = x.iter().map(|&v| v.cos() * v + v.sin()).collect();
        let numeric = numeric_grad(&mut x, 1e-2, f);
        assert_grad_close("sin(x)x", &analytic, &numeric, 1e-3, 1e-2);

        let mut wrong = analytic.clone();
        wrong[7] *= 1.05;
        wrong[7] += 0.01;
        assert!(first_mismatch(&wrong, &numeric, 1e-3, 1e-2).is_some());
    }
}
