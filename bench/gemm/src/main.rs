//! Times one f32 matrix product C = A·B on one thread with three libraries, on the shapes
//! the rps models' layers produce at batch 32 (and a 1024³ product for the peak):
//! matrixmultiply (what ndarray's `general_mat_mul` uses today), the `gemm` crate, and
//! OpenBLAS (`cblas_sgemm`, what ndarray's `blas` feature would call). Prints a Markdown
//! table of medians in GFLOP/s and, per library, the time summed over the CNN's and
//! ResNet-20's shapes, then one line per library: `total cnn=… resnet20=… ms`.
//!
//! Run it with bench/gemm.sh (installs libopenblas-dev, pins OpenBLAS to one thread).

use std::hint::black_box;
use std::time::Instant;

use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;

/// One product of a layer: C (m×n) = A (m×k) · B (k×n), with B stored transposed when
/// `bt` (as the weight gradient's colsᵀ is), and how often a batch-32 step runs it.
struct Shape {
    model: &'static str,
    what: &'static str,
    m: usize,
    n: usize,
    k: usize,
    bt: bool,
    per_step: usize,
}

const fn s(
    model: &'static str,
    what: &'static str,
    (m, n, k): (usize, usize, usize),
    bt: bool,
    per_step: usize,
) -> Shape {
    Shape {
        model,
        what,
        m,
        n,
        k,
        bt,
        per_step,
    }
}

/// The shapes of one batch-32 step. Convolutions are grouped to ~1,536 output columns
/// per product (crates/nn/src/conv2d.rs), so the CNN's conv2 runs 32/7 ≈ 5 products of
/// 7 samples (1,372 columns) per pass; the counts are products per step.
const SHAPES: &[Shape] = &[
    s("peak", "1024³", (1024, 1024, 1024), false, 0),
    s("cnn", "conv1 forward", (32, 784, 25), false, 32),
    s("cnn", "conv1 dW", (32, 25, 784), true, 32),
    s("cnn", "conv2 forward", (64, 1372, 800), false, 5),
    s("cnn", "conv2 dW", (64, 800, 1372), true, 5),
    s("cnn", "conv2 dcols", (800, 1372, 64), false, 5),
    s("cnn", "fc1 forward", (32, 512, 3136), true, 1),
    s("cnn", "fc1 dW", (512, 3136, 32), false, 1),
    s("cnn", "fc1 dx", (32, 3136, 512), false, 1),
    s("cnn", "winograd F(2,5) product", (64, 1568, 32), false, 36),
    s(
        "resnet20",
        "stage 1 forward (16 ch, 32²)",
        (16, 1024, 144),
        false,
        32 * 7,
    ),
    s("resnet20", "stage 1 dW", (16, 144, 1024), true, 32 * 7),
    s("resnet20", "stage 1 dcols", (144, 1024, 16), false, 32 * 7),
    s(
        "resnet20",
        "stage 2 forward (32 ch, 16²)",
        (32, 1536, 288),
        false,
        6 * 6,
    ),
    s("resnet20", "stage 2 dW", (32, 288, 1536), true, 6 * 6),
    s("resnet20", "stage 2 dcols", (288, 1536, 32), false, 6 * 6),
    s(
        "resnet20",
        "stage 3 forward (64 ch, 8²)",
        (64, 1536, 576),
        false,
        6,
    ),
    s("resnet20", "stage 3 dW", (64, 576, 1536), true, 6),
    s("resnet20", "stage 3 dcols", (576, 1536, 64), false, 6),
];

const LIBS: [&str; 3] = ["matrixmultiply", "gemm", "openblas"];

fn filled(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32) - 0.5
    })
}

/// C = A·B with library `lib`; `b` is k×n (a transposed view when stored n×k).
fn product(lib: &str, a: &Array2<f32>, b: ndarray::ArrayView2<f32>, c: &mut Array2<f32>) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    match lib {
        "matrixmultiply" => general_mat_mul(1.0, a, &b, 0.0, c),
        "gemm" => unsafe {
            // gemm's convention: dst := alpha·dst + beta·lhs·rhs; strides in elements.
            let (brs, bcs) = (b.strides()[0], b.strides()[1]);
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                bcs,
                brs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        },
        "openblas" => unsafe {
            let trans = b.strides()[0] == 1;
            let (tb, ldb) = if trans {
                (CBLAS_TRANSPOSE::CblasTrans, k)
            } else {
                (CBLAS_TRANSPOSE::CblasNoTrans, n)
            };
            cblas_sgemm(
                CBLAS_LAYOUT::CblasRowMajor,
                CBLAS_TRANSPOSE::CblasNoTrans,
                tb,
                m as i32,
                n as i32,
                k as i32,
                1.0,
                a.as_ptr(),
                k as i32,
                b.as_ptr(),
                ldb as i32,
                0.0,
                c.as_mut_ptr(),
                n as i32,
            )
        },
        _ => unreachable!(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("first argument: repeats"))
        .unwrap_or(15);
    println!("| model | product | m × n × k | matrixmultiply GFLOP/s | gemm GFLOP/s | OpenBLAS GFLOP/s | results agree |");
    println!("|---|---|---|---|---|---|---|");
    let mut totals = [[0.0f64; 3]; 2];
    for (i, sh) in SHAPES.iter().enumerate() {
        let a = filled(sh.m, sh.k, 2 * i as u32 + 1);
        let b_store = if sh.bt {
            filled(sh.n, sh.k, 2 * i as u32 + 2)
        } else {
            filled(sh.k, sh.n, 2 * i as u32 + 2)
        };
        let b = if sh.bt { b_store.t() } else { b_store.view() };
        let flops = 2.0 * (sh.m * sh.n * sh.k) as f64;
        // Enough products per timing to last ~2 ms, so the clock's resolution is moot.
        let inner = ((2e-3 * 50e9 / flops).ceil() as usize).max(1);
        let mut results = Vec::new();
        let mut gflops = [0.0f64; 3];
        let mut medians = [0.0f64; 3];
        let mut samples: [Vec<f64>; 3] = Default::default();
        let mut cs: Vec<Array2<f32>> = (0..3).map(|_| Array2::zeros((sh.m, sh.n))).collect();
        // Interleaved, so a busy moment hits every library alike.
        for r in 0..repeats + 2 {
            for (l, lib) in LIBS.iter().enumerate() {
                let t = Instant::now();
                for _ in 0..inner {
                    product(lib, &a, b, &mut cs[l]);
                    black_box(&cs[l]);
                }
                if r >= 2 {
                    samples[l].push(t.elapsed().as_secs_f64() / inner as f64);
                }
            }
        }
        for l in 0..3 {
            medians[l] = median(samples[l].clone());
            gflops[l] = flops / medians[l] / 1e9;
            results.push(&cs[l]);
        }
        let scale = results[0]
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(1e-30);
        let agree = results[1..].iter().all(|c| {
            c.iter()
                .zip(results[0].iter())
                .all(|(x, y)| (x - y).abs() <= 1e-4 * scale)
        });
        let model = match sh.model {
            "cnn" => Some(0),
            "resnet20" => Some(1),
            _ => None,
        };
        if let Some(mi) = model {
            for l in 0..3 {
                totals[mi][l] += medians[l] * sh.per_step as f64 * 1e3;
            }
        }
        println!(
            "| {} | {} | {} × {} × {}{} | {:.1} | {:.1} | {:.1} | {} |",
            sh.model,
            sh.what,
            sh.m,
            sh.n,
            sh.k,
            if sh.bt { " (Bᵀ)" } else { "" },
            gflops[0],
            gflops[1],
            gflops[2],
            if agree { "yes" } else { "NO" }
        );
    }
    println!();
    for (l, lib) in LIBS.iter().enumerate() {
        println!(
            "total {lib}: cnn={:.2} resnet20={:.2} ms of matrix products per batch-32 step",
            totals[0][l], totals[1][l]
        );
    }
}
