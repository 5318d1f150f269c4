//! Times one f32 matrix product C = A·B on one thread with three libraries, on the shapes
//! the rps models' layers produce at batch 32 (and a 1024³ product for the peak):
//! matrixmultiply (ndarray's `general_mat_mul`, the engine's product until it moved to
//! `gemm`), the `gemm` crate, and
//! OpenBLAS (`cblas_sgemm`, what ndarray's `blas` feature would call). Prints a Markdown
//! table of medians in GFLOP/s and, per library, the time summed over the CNN's and
//! ResNet-20's shapes, then one line per library: `total cnn=… resnet20=… ms`.
//!
//! Run it with bench/gemm.sh (installs libopenblas-dev, pins OpenBLAS to one thread).

use std::hint::black_box;
use std::time::Instant;

use rps_nn::simd::Isa;
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;

/// One product of a layer: C (m×n) = A (m×k) · B (k×n), A stored transposed when `at`,
/// B stored transposed when `bt` (as the engine passes them), and how often a batch-32
/// step runs it.
struct Shape {
    model: &'static str,
    what: &'static str,
    m: usize,
    n: usize,
    k: usize,
    at: bool,
    bt: bool,
    per_step: usize,
}

const fn s(
    model: &'static str,
    what: &'static str,
    (m, n, k): (usize, usize, usize),
    (at, bt): (bool, bool),
    per_step: usize,
) -> Shape {
    Shape {
        model,
        what,
        m,
        n,
        k,
        at,
        bt,
        per_step,
    }
}

const N: (bool, bool) = (false, false);
const AT: (bool, bool) = (true, false);
const BT: (bool, bool) = (false, true);

/// The products of one batch-32 step of today's engine (crates/nn): im2col layers take
/// groups of ~1,536 output columns (conv2d.rs); Winograd layers take, per group of 256
/// tiles, α² products per pass: forward U·V (F×C·C×T), dW Ȳ·Vᵀ, dX Uᵀ·Ȳ
/// (crates/nn/src/conv2d/winograd/mod.rs), with α² = 64 for F(4×4,5×5) and 36 for F(4×4,3×3).
#[rustfmt::skip]
const SHAPES: &[Shape] = &[
    s("peak", "1024³", (1024, 1024, 1024), N, 0),
    // CNN: conv1 im2col (1 sample = 784 columns a product), conv2 F(4,5): 16 tiles a
    // sample, 512 a batch = 2 groups, fc1 3136→512.
    s("cnn", "conv1 forward (im2col)", (32, 784, 25), N, 32),
    s("cnn", "conv1 dW (im2col)", (32, 25, 784), BT, 32),
    s("cnn", "conv2 forward (Winograd)", (64, 256, 32), N, 64 * 2),
    s("cnn", "conv2 dW (Winograd)", (64, 32, 256), BT, 64 * 2),
    s("cnn", "conv2 dX (Winograd)", (32, 256, 64), AT, 64 * 2),
    s("cnn", "fc1 forward", (32, 512, 3136), BT, 1),
    s("cnn", "fc1 dW", (512, 3136, 32), AT, 1),
    s("cnn", "fc1 dx", (32, 3136, 512), N, 1),
    // ResNet-20: the stem and the two stride-2 layers by im2col; F(4,3) elsewhere:
    // stage 1 (6 layers, 64 tiles a sample = 8 groups), stage 2 (5 layers, 16 tiles =
    // 2 groups), stage 3 (5 layers, 4 tiles = one group of 128).
    s("resnet20", "stem forward (im2col)", (16, 1024, 27), N, 32),
    s("resnet20", "stem dW (im2col)", (16, 27, 1024), BT, 32),
    s("resnet20", "stage 1 forward (Winograd)", (16, 256, 16), N, 36 * 8 * 6),
    s("resnet20", "stage 1 dW (Winograd)", (16, 16, 256), BT, 36 * 8 * 6),
    s("resnet20", "stage 1 dX (Winograd)", (16, 256, 16), AT, 36 * 8 * 6),
    s("resnet20", "stage 2 stride 2 forward (im2col)", (32, 1536, 144), N, 6),
    s("resnet20", "stage 2 stride 2 dW (im2col)", (32, 144, 1536), BT, 6),
    s("resnet20", "stage 2 stride 2 dcols (im2col)", (144, 1536, 32), AT, 6),
    s("resnet20", "stage 2 forward (Winograd)", (32, 256, 32), N, 36 * 2 * 5),
    s("resnet20", "stage 2 dW (Winograd)", (32, 32, 256), BT, 36 * 2 * 5),
    s("resnet20", "stage 2 dX (Winograd)", (32, 256, 32), AT, 36 * 2 * 5),
    s("resnet20", "stage 3 stride 2 forward (im2col)", (64, 1536, 288), N, 2),
    s("resnet20", "stage 3 stride 2 dW (im2col)", (64, 288, 1536), BT, 2),
    s("resnet20", "stage 3 stride 2 dcols (im2col)", (288, 1536, 64), AT, 2),
    s("resnet20", "stage 3 forward (Winograd)", (64, 128, 64), N, 36 * 5),
    s("resnet20", "stage 3 dW (Winograd)", (64, 64, 128), BT, 36 * 5),
    s("resnet20", "stage 3 dX (Winograd)", (64, 128, 64), AT, 36 * 5),
];

const LIBS: [&str; 4] = ["matrixmultiply", "gemm", "rps", "rps-avx2"];

fn filled(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32) - 0.5
    })
}

/// C = A·B with library `lib`; `a` is m×k and `b` k×n (transposed views when stored
/// the other way round).
fn product(
    lib: &str,
    a: ndarray::ArrayView2<f32>,
    b: ndarray::ArrayView2<f32>,
    c: &mut Array2<f32>,
) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    match lib {
        "matrixmultiply" => general_mat_mul(1.0, &a, &b, 0.0, c),
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
                a.strides()[1],
                a.strides()[0],
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
        "rps" => rps_nn::matmul::mat_mul(1.0, &a, &b, 0.0, c),
        "rps-avx2" => rps_nn::matmul::mat_mul_on(Isa::Avx2, 1.0, a.view(), b.view(), 0.0, c.view_mut()),
        "rps-portable" => {
            rps_nn::matmul::mat_mul_on(Isa::Portable, 1.0, a.view(), b.view(), 0.0, c.view_mut())
        }
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
    println!(
        "| model | product | m × n × k | per step | {} | results agree |",
        LIBS.map(|l| format!("{l} GFLOP/s")).join(" | ")
    );
    println!("|---|---|---|---|{}---|", "---|".repeat(LIBS.len()));
    let mut totals = [[0.0f64; LIBS.len()]; 2];
    for (i, sh) in SHAPES.iter().enumerate() {
        let a_store = if sh.at {
            filled(sh.k, sh.m, 2 * i as u32 + 1)
        } else {
            filled(sh.m, sh.k, 2 * i as u32 + 1)
        };
        let a = if sh.at { a_store.t() } else { a_store.view() };
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
        let mut gflops = [0.0f64; LIBS.len()];
        let mut medians = [0.0f64; LIBS.len()];
        let mut samples: [Vec<f64>; LIBS.len()] = Default::default();
        let mut cs: Vec<Array2<f32>> = (0..LIBS.len()).map(|_| Array2::zeros((sh.m, sh.n))).collect();
        // Interleaved, so a busy moment hits every library alike.
        for r in 0..repeats + 2 {
            for (l, lib) in LIBS.iter().enumerate() {
                let t = Instant::now();
                for _ in 0..inner {
                    product(lib, a, b, &mut cs[l]);
                    black_box(&cs[l]);
                }
                if r >= 2 {
                    samples[l].push(t.elapsed().as_secs_f64() / inner as f64);
                }
            }
        }
        for l in 0..LIBS.len() {
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
            for l in 0..LIBS.len() {
                totals[mi][l] += medians[l] * sh.per_step as f64 * 1e3;
            }
        }
        println!(
            "| {} | {} | {} × {} × {}{}{} | {} | {} | {} |",
            sh.model,
            sh.what,
            sh.m,
            sh.n,
            sh.k,
            if sh.at { " (Aᵀ)" } else { "" },
            if sh.bt { " (Bᵀ)" } else { "" },
            sh.per_step,
            gflops.map(|g| format!("{g:.1}")).join(" | "),
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
