//! Winograd layers against a direct-loop f64 reference (forward, dW, db, dX) for every
//! tile, and a timing of the models' layers both ways (ignored: timing is no test).

use super::*;
use crate::conv_algo::ConvAlgo;
use crate::gradcheck::{random_vec, rng};

/// (y, dW, db, dX) of a batch by direct loops in f64.
fn reference(l: &Conv2d, p: &[f32], n: usize, x: &[f32], dy: &[f32]) -> [Vec<f64>; 4] {
    let (c, f, k, pad) = (l.in_channels, l.out_channels, l.kernel, l.pad);
    let (h, w, ho, wo) = (l.in_h, l.in_w, l.out_h(), l.out_w());
    let wt = &p[l.weight.clone()];
    let mut y = vec![0f64; n * f * ho * wo];
    let mut gw = vec![0f64; wt.len()];
    let mut gb = vec![0f64; f];
    let mut gx = vec![0f64; x.len()];
    for s in 0..n {
        for (fi, gbf) in gb.iter_mut().enumerate() {
            let bias = l.bias.clone().nth(fi).map_or(0.0, |b| p[b] as f64);
            for oy in 0..ho {
                for ox in 0..wo {
                    let o = ((s * f + fi) * ho + oy) * wo + ox;
                    let g = dy[o] as f64;
                    y[o] = bias;
                    *gbf += g;
                    for ci in 0..c {
                        for kh in 0..k {
                            for kw in 0..k {
                                let (iy, ix) = (oy + kh, ox + kw);
                                if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                    continue;
                                }
                                let xi = ((s * c + ci) * h + iy - pad) * w + ix - pad;
                                let wi = ((fi * c + ci) * k + kh) * k + kw;
                                y[o] += wt[wi] as f64 * x[xi] as f64;
                                gw[wi] += g * x[xi] as f64;
                                gx[xi] += g * wt[wi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    [y, gw, gb, gx]
}

/// max |got − want| / max |want|.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    err / scale.max(f64::MIN_POSITIVE)
}

/// Runs forward and backward of `l` and returns the relative errors of (y, dW, db, dX).
fn errors(l: &Conv2d, n: usize, seed: u64) -> [f64; 4] {
    let mut r = rng(seed);
    let bound = 1.0 / (l.fan_in() as f32).sqrt();
    let mut p = random_vec(&mut r, l.end(), -bound, bound);
    p.extend(random_vec(&mut r, 2, -1.0, 1.0));
    let x = random_vec(&mut r, n * l.in_size(), -1.0, 1.0);
    let dy = random_vec(&mut r, n * l.out_size(), -1.0, 1.0);
    let mut col = vec![f32::NAN; l.col_size()];
    let mut y = vec![f32::NAN; n * l.out_size()];
    l.forward(&p, n, &x, &mut col, &mut [], &mut y, false)
        .expect("forward");
    let mut grads = vec![f32::NAN; p.len()];
    let mut gx = vec![f32::NAN; x.len()];
    l.backward(&p, n, &x, &dy, &mut col, &mut grads, Some(&mut gx))
        .expect("backward");
    let [wy, wgw, wgb, wgx] = reference(l, &p, n, &x, &dy);
    [
        rel_err(&y, &wy),
        rel_err(&grads[l.weight.clone()], &wgw),
        rel_err(&grads[l.bias.clone()], &wgb),
        rel_err(&gx, &wgx),
    ]
}

/// Bound on max|err| / max|ref| per tile (measured worst case × ~5, see the report).
fn bound(t: Tile) -> f64 {
    match t.alpha() {
        4 => 3e-6,
        _ => 5e-5,
    }
}

/// Every tile on awkward geometry (no padding, wide padding, sides not a multiple of m,
/// several groups and a partial one) and on the models' own layers.
#[test]
fn every_pass_matches_direct_convolution() {
    let mut failed = Vec::new();
    for tile in Tile::ALL {
        let r = tile.r();
        // (C, F, H, W, pad, batch)
        let mut cases = vec![
            (2, 3, 7, 6, r / 2, 3),
            (1, 2, 5, 9, 0, 2),
            (3, 2, 4, 4, r / 2 + 1, 2),
            (2, 3, 20, 20, r / 2, 5),
        ];
        cases.push(if r == 5 {
            (32, 64, 14, 14, 2, 3)
        } else {
            (16, 16, 32, 32, 1, 2)
        });
        let mut worst = [0f64; 4];
        for (s, &(c, f, h, w, pad, n)) in cases.iter().enumerate() {
            let l = Conv2d::new(c, f, r, pad, (h, w), 1)
                .and_then(|l| l.with_algo(ConvAlgo::Winograd(tile)))
                .expect("layer");
            let e = errors(&l, n, 100 + s as u64);
            for (wv, ev) in worst.iter_mut().zip(e) {
                *wv = wv.max(ev);
            }
        }
        eprintln!(
            "{tile:?}: max|err|/max|ref| y {:.1e} dW {:.1e} db {:.1e} dX {:.1e}",
            worst[0], worst[1], worst[2], worst[3]
        );
        for (what, e) in ["y", "dW", "db", "dX"].iter().zip(worst) {
            if e >= bound(tile) {
                failed.push(format!("{tile:?} {what}: relative error {e:.2e}"));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn kept_tiles_give_the_same_bits_as_transforming_again() {
    // Several groups and a partial one (gmax·tp = 256 tiles; 9 samples of 7×7 tiles).
    for (tile, k, pad) in [(Tile::F4x3, 3, 1), (Tile::F4x5, 5, 2)] {
        let l = Conv2d::new(3, 4, k, pad, (26, 26), 0)
            .and_then(|l| l.with_algo(ConvAlgo::Winograd(tile)))
            .expect("layer");
        let n = 9;
        let mut r = rng(7);
        let p = random_vec(&mut r, l.end(), -0.5, 0.5);
        let x = random_vec(&mut r, n * l.in_size(), -1.0, 1.0);
        let dy = random_vec(&mut r, n * l.out_size(), -1.0, 1.0);
        let mut col = vec![f32::NAN; l.col_size()];
        // A kept buffer longer than needed, as after a larger batch.
        let mut kept = vec![f32::NAN; l.saved_len(n) + 5];
        let run = |kept: Option<&mut [f32]>, col: &mut [f32]| {
            let (mut y, mut g, mut gx) = (
                vec![0f32; n * l.out_size()],
                vec![0f32; p.len()],
                vec![0f32; x.len()],
            );
            match kept {
                Some(kept) => {
                    l.forward(&p, n, &x, col, kept, &mut y, true).unwrap();
                    l.backward_kept(&p, n, &x, &dy, kept, col, &mut g, Some(&mut gx))
                        .unwrap();
                }
                None => {
                    l.forward(&p, n, &x, col, &mut [], &mut y, true).unwrap();
                    l.backward(&p, n, &x, &dy, col, &mut g, Some(&mut gx))
                        .unwrap();
                }
            }
            (y, g, gx)
        };
        let plain = run(None, &mut col);
        let with_kept = run(Some(&mut kept), &mut col);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&plain.0), bits(&with_kept.0), "{tile:?} y");
        assert_eq!(bits(&plain.1), bits(&with_kept.1), "{tile:?} grads");
        assert_eq!(bits(&plain.2), bits(&with_kept.2), "{tile:?} dx");
        assert!(kept[..l.saved_len(n)].iter().all(|v| v.is_finite()));
    }
    // A kept buffer too short for the batch is refused, not read past.
    let l = Conv2d::new(16, 4, 3, 1, (8, 8), 0)
        .and_then(|l| l.with_algo(ConvAlgo::Winograd(Tile::F4x3)))
        .expect("layer");
    let mut col = vec![0f32; l.col_size()];
    let (x, mut y) = (vec![0f32; 2 * l.in_size()], vec![0f32; 2 * l.out_size()]);
    let mut short = vec![0f32; l.saved_len(2) - 1];
    assert!(l
        .forward(
            &vec![0f32; l.end()],
            2,
            &x,
            &mut col,
            &mut short,
            &mut y,
            false
        )
        .is_err());
}

#[test]
fn a_winograd_tile_must_fit_the_layer() {
    let strided = Conv2d::new_strided(2, 2, 3, 1, 2, (8, 8), 0).expect("layer");
    assert!(strided
        .clone()
        .with_algo(ConvAlgo::Winograd(Tile::F2x3))
        .is_err());
    let five = Conv2d::new(2, 2, 5, 2, (8, 8), 0).expect("layer");
    assert!(five
        .clone()
        .with_algo(ConvAlgo::Winograd(Tile::F4x3))
        .is_err());
    // Set behind with_algo's back, the passes refuse it too.
    let mut bad = strided;
    bad.algo = ConvAlgo::Winograd(Tile::F2x3);
    let (x, mut y) = (vec![0.0; bad.in_size()], vec![0.0; bad.out_size()]);
    let mut col = vec![0.0; bad.col_size()];
    let p = vec![0.0; bad.end()];
    assert!(matches!(
        bad.forward(&p, 1, &x, &mut col, &mut [], &mut y, false),
        Err(crate::NnError::Config(_))
    ));
}

/// The im2col path under the same measure, for comparison in the report.
#[test]
fn im2col_errors_for_comparison() {
    for (k, (c, f, h, pad)) in [(5, (32, 64, 14, 2)), (3, (16, 16, 32, 1))] {
        let l = Conv2d::new(c, f, k, pad, (h, h), 0)
            .and_then(|l| l.with_algo(ConvAlgo::Im2col))
            .expect("layer");
        let e = errors(&l, 3, 7);
        eprintln!(
            "im2col {k}x{k}: y {:.1e} dW {:.1e} db {:.1e} dX {:.1e}",
            e[0], e[1], e[2], e[3]
        );
        assert!(e.iter().all(|&v| v < 1e-5), "{e:?}");
    }
}

/// Medians of forward, backward without dX and full backward for each layer geometry
/// of the two models and each algorithm, interleaved. Run with
/// `cargo test -p rps-nn --release time_layers -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a test"]
fn time_layers() {
    // Thread CPU time, not wall time: the machine is shared, and a preempted run would
    // otherwise count other jobs' time.
    let cpu_ms = || -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid, exclusive `ts`.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
    };
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    // (name, C, F, K, H, pad)
    let layers = [
        ("cnn conv1 1-32 5x5 28", 1, 32, 5, 28, 2),
        ("cnn conv2 32-64 5x5 14", 32, 64, 5, 14, 2),
        ("res stem 3-16 3x3 32", 3, 16, 3, 32, 1),
        ("res s1 16-16 3x3 32", 16, 16, 3, 32, 1),
        ("res s2 32-32 3x3 16", 32, 32, 3, 16, 1),
        ("res s3 64-64 3x3 8", 64, 64, 3, 8, 1),
    ];
    let only = std::env::var("LAYER").unwrap_or_default();
    for (name, c, f, k, h, pad) in layers.into_iter().filter(|l| l.0.contains(&only)) {
        let base = Conv2d::new(c, f, k, pad, (h, h), 0).expect("layer");
        let mut algos = vec![ConvAlgo::Im2col];
        algos.extend(
            Tile::ALL
                .into_iter()
                .filter(|t| t.r() == k)
                .map(ConvAlgo::Winograd),
        );
        if let Ok(a) = std::env::var("ALGO") {
            algos.retain(|x| format!("{x:?}").contains(&a));
        }
        let mut r = rng(1);
        let p = random_vec(&mut r, base.end(), -0.1, 0.1);
        let x = random_vec(&mut r, n * base.in_size(), -1.0, 1.0);
        let dy = random_vec(&mut r, n * base.out_size(), -1.0, 1.0);
        let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; algos.len()];
        let mut y = vec![0.0; n * base.out_size()];
        let mut grads = vec![0.0; base.end()];
        let mut gx = vec![0.0; x.len()];
        for _rep in 0..std::env::var("REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7)
        {
            for (ai, &a) in algos.iter().enumerate() {
                let l = base.clone().with_algo(a).expect("algo");
                let mut col = vec![0.0; l.col_size()];
                let t0 = cpu_ms();
                l.forward(&p, n, &x, &mut col, &mut [], &mut y, true)
                    .expect("fwd");
                let t1 = cpu_ms();
                l.backward(&p, n, &x, &dy, &mut col, &mut grads, None)
                    .expect("dw");
                let t2 = cpu_ms();
                l.backward(&p, n, &x, &dy, &mut col, &mut grads, Some(&mut gx))
                    .expect("bwd");
                let t3 = cpu_ms();
                times[ai][0].push(t1 - t0);
                times[ai][1].push(t2 - t1);
                times[ai][2].push(t3 - t2);
            }
        }
        for (a, t) in algos.iter().zip(&mut times) {
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (fw, dw, bw) = (med(&mut t[0]), med(&mut t[1]), med(&mut t[2]));
            eprintln!(
                "{name:26} {a:>18?}: fwd {fw:7.3} ms  dW {dw:7.3} ms  dX {:7.3} ms  step {:7.3} ms",
                bw - dw,
                fw + bw
            );
        }
    }
}
