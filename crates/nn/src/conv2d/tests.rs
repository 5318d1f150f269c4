//! The convolution layer against the reference convolution, forward and backward, on
//! both algorithms.

use super::*;
use crate::conv_algo::Tile;
use crate::gradcheck::{
    assert_grad_close, dot_f64, numeric_grad, numeric_grads, random_vec, rng, CONV_CASES as CASES,
};
use crate::im2col::{conv2d_backward, conv2d_forward};
use ndarray::{Array2, Array3, ArrayView1};

/// Weight, bias and input gradients of L = Σ y·R against central differences, through
/// the batched layer so its per-sample accumulation is covered too, for im2col and
/// every Winograd tile that fits the kernel.
#[test]
fn layer_backward_matches_finite_differences() {
    let algos = |k: usize| {
        let tiles = Tile::ALL.into_iter().filter(move |t| t.r() == k);
        std::iter::once(ConvAlgo::Im2col).chain(tiles.map(ConvAlgo::Winograd))
    };
    let cases = CASES
        .iter()
        .flat_map(|&case| algos(case.4).map(move |a| (case, a)));
    for (s, ((c, h, w, f, k, pad), algo)) in cases.enumerate() {
        let n = 2;
        let layer = Conv2d::new(c, f, k, pad, (h, w), 3)
            .and_then(|l| l.with_algo(algo))
            .expect("layer");
        let mut r = rng(30 + s as u64);
        let params = random_vec(&mut r, layer.end() + 2, -1.0, 1.0);
        let mut x = random_vec(&mut r, n * layer.in_size(), -1.0, 1.0);
        let proj = random_vec(&mut r, n * layer.out_size(), -1.0, 1.0);
        let mut col = vec![0.0; layer.col_size()];
        let loss = |p: &[f32], x: &[f32], col: &mut Vec<f32>| {
            let mut y = vec![0.0; n * layer.out_size()];
            layer
                .forward(p, n, x, col, &mut [], &mut y, false)
                .expect("forward");
            dot_f64(&y, &proj)
        };
        // Garbage in the gradient buffers proves the backward pass overwrites them.
        let mut grads = vec![7.0; params.len()];
        let mut gx = vec![7.0; x.len()];
        layer
            .backward(&params, n, &x, &proj, &mut col, &mut grads, Some(&mut gx))
            .expect("backward");
        assert_eq!(
            grads[..3],
            [7.0; 3],
            "outside the layer's range must stay untouched"
        );

        // L is linear in the weights and in x, so central differences are exact for any
        // step: a large one keeps the forward pass's f32 rounding (larger for Winograd
        // than for im2col) small in the quotient.
        let eps = 0.25;
        let xs = x.clone();
        let num_p = numeric_grad(
            &mut params[layer.weight.start..layer.bias.end].to_vec(),
            eps,
            |sub| {
                let mut p = vec![0.0; 3];
                p.extend_from_slice(sub);
                loss(&p, &xs, &mut col.clone())
            },
        );
        let pc = params.clone();
        let num_x = numeric_grad(&mut x, eps, |xv| loss(&pc, xv, &mut col.clone()));
        assert_grad_close(
            &format!("case {s} weight"),
            &grads[layer.weight.clone()],
            &num_p[..layer.weight.len()],
            1e-3,
            1e-3,
        );
        assert_grad_close(
            &format!("case {s} bias"),
            &grads[layer.bias.clone()],
            &num_p[layer.weight.len()..],
            1e-3,
            1e-3,
        );
        assert_grad_close(&format!("case {s} input"), &gx, &num_x, 1e-3, 1e-3);
    }
}

/// The grouped layer (several samples per product, a last partial group) against the
/// per-sample kernels, forward and backward, with the fused ReLU too.
#[test]
fn grouped_layer_matches_per_sample_kernels() {
    let (c, h, w, f, k, pad, n) = (2, 20, 20, 3, 3, 1, 5);
    // The im2col path whatever RPS_CONV says: the grouping is what is under test.
    let layer = Conv2d::new(c, f, k, pad, (h, w), 0)
        .and_then(|l| l.with_algo(ConvAlgo::Im2col))
        .expect("layer");
    assert_eq!(
        layer.group(),
        3,
        "the test needs a full and a partial group"
    );
    let mut r = rng(80);
    let params = random_vec(&mut r, layer.end(), -1.0, 1.0);
    let x = random_vec(&mut r, n * layer.in_size(), -1.0, 1.0);
    let dy = random_vec(&mut r, n * layer.out_size(), -1.0, 1.0);
    let mut col = vec![f32::NAN; layer.col_size()];
    let mut y = vec![f32::NAN; n * layer.out_size()];
    layer
        .forward(&params, n, &x, &mut col, &mut [], &mut y, false)
        .expect("forward");
    let mut y_relu = vec![f32::NAN; y.len()];
    layer
        .forward(&params, n, &x, &mut col, &mut [], &mut y_relu, true)
        .expect("forward relu");
    let mut grads = vec![f32::NAN; layer.end()];
    let mut gx = vec![f32::NAN; x.len()];
    layer
        .backward(&params, n, &x, &dy, &mut col, &mut grads, Some(&mut gx))
        .expect("backward");

    let wv = ArrayView2::from_shape((f, c * k * k), &params[layer.weight.clone()]).expect("w");
    let bv = ArrayView1::from(&params[layer.bias.clone()]);
    let (hw, os, is) = (h * w, layer.out_size(), layer.in_size());
    let mut one_col = Array2::zeros((c * k * k, hw));
    let mut want_gw = Array2::zeros((f, c * k * k));
    let mut want_gb = ndarray::Array1::zeros(f);
    for i in 0..n {
        let xi = ArrayView3::from_shape((c, h, w), &x[i * is..(i + 1) * is]).expect("x");
        let mut yi = Array2::zeros((f, hw));
        conv2d_forward(xi, wv, bv, k, pad, one_col.view_mut(), yi.view_mut()).expect("ref");
        let got = &y[i * os..(i + 1) * os];
        for (a, b) in got.iter().zip(yi.iter()) {
            assert!((a - b).abs() < 1e-5, "forward sample {i}: {a} vs {b}");
        }
        for (a, b) in y_relu[i * os..(i + 1) * os].iter().zip(yi.iter()) {
            assert!((a - b.max(0.0)).abs() < 1e-5, "relu sample {i}: {a} vs {b}");
        }
        let dyi = ArrayView2::from_shape((f, hw), &dy[i * os..(i + 1) * os]).expect("dy");
        let mut gxi = Array3::zeros((c, h, w));
        conv2d_backward(
            xi,
            wv,
            dyi,
            k,
            pad,
            one_col.view_mut(),
            want_gw.view_mut(),
            want_gb.view_mut(),
            Some(gxi.view_mut()),
        )
        .expect("ref backward");
        for (a, b) in gx[i * is..(i + 1) * is].iter().zip(gxi.iter()) {
            assert!((a - b).abs() < 1e-4, "dx sample {i}: {a} vs {b}");
        }
    }
    for (a, b) in grads[layer.weight.clone()].iter().zip(want_gw.iter()) {
        assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "dW {a} vs {b}");
    }
    for (a, b) in grads[layer.bias.clone()].iter().zip(want_gb.iter()) {
        assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "db {a} vs {b}");
    }
}

/// A stride-2 layer's gradients against central differences.
#[test]
fn strided_layer_backward_matches_finite_differences() {
    let (c, h, w, f, k, pad, st, n) = (2, 7, 6, 3, 3, 1, 2, 2);
    let layer = Conv2d::new_strided(c, f, k, pad, st, (h, w), 0).expect("layer");
    assert_eq!((layer.out_h(), layer.out_w()), (4, 3));
    let mut r = rng(90);
    let mut params = random_vec(&mut r, layer.end(), -1.0, 1.0);
    let mut x = random_vec(&mut r, n * layer.in_size(), -1.0, 1.0);
    let proj = random_vec(&mut r, n * layer.out_size(), -1.0, 1.0);
    let mut col = vec![0.0; layer.col_size()];
    let mut grads = vec![0.0; layer.end()];
    let mut gx = vec![0.0; x.len()];
    layer
        .backward(&params, n, &x, &proj, &mut col, &mut grads, Some(&mut gx))
        .expect("backward");
    let loss = |p: &[f32], xv: &[f32]| {
        let mut y = vec![0.0; n * layer.out_size()];
        layer
            .forward(p, n, xv, &mut col, &mut [], &mut y, false)
            .expect("forward");
        dot_f64(&y, &proj)
    };
    let (num_p, num_x) = numeric_grads(&mut params, &mut x, 1e-2, loss);
    assert_grad_close("strided params", &grads, &num_p, 1e-3, 1e-3);
    assert_grad_close("strided input", &gx, &num_x, 1e-3, 1e-3);
}

#[test]
fn new_rejects_a_kernel_that_does_not_fit() {
    assert!(Conv2d::new(1, 1, 5, 0, (3, 3), 0).is_err());
}
