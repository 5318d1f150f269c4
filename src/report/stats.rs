//! The statistics of the reports, written once: mean ± standard deviation or standard
//! error over seeds, and the weighted fit of an effect against 1/x. A leaf: the outcome
//! table (`diag`) and the claim analysis (`claim`) both take them from here.

/// Mean and sample standard deviation (n − 1; `None` for fewer than two values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

/// Mean and sample standard deviation of `values`, `None` when empty.
pub fn mean_std(values: &[f64]) -> Option<MeanStd> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = (n > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
    Some(MeanStd { mean, std, n })
}

/// Mean and standard error of the mean (sample sd / √n) of `values`, in the shape of
/// [`MeanStd`] (`std` holds the standard error), `None` when empty.
pub fn standard_error(values: &[f64]) -> Option<MeanStd> {
    mean_std(values).map(|m| MeanStd {
        std: m.std.map(|s| s / (m.n as f64).sqrt()),
        ..m
    })
}

/// Mean and standard error (sample sd / √n; `None` for fewer than two values).
pub fn mean_se(values: &[f64]) -> Option<(f64, Option<f64>)> {
    standard_error(values).map(|m| (m.mean, m.std))
}

/// The weighted least-squares fit of y = a + b/x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub a: f64,
    pub b: f64,
    pub se_a: f64,
    pub se_b: f64,
    /// Σ w·r² / (points − 2).
    pub reduced_chi2: f64,
    pub points: usize,
}

/// Fits y = a + b/x to `points` (x, y, weight): `None` with fewer than 3 points or fewer
/// than 2 distinct x. The standard errors are those of the weighted fit scaled by the
/// reduced χ² (so they stay honest when the weights are only estimates).
pub fn fit_inverse(points: &[(f64, f64, f64)]) -> Option<Fit> {
    let xs: Vec<f64> = points.iter().map(|p| 1.0 / p.0).collect();
    let distinct = xs.iter().any(|&u| (u - xs[0]).abs() > 0.0);
    if points.len() < 3 || !distinct {
        return None;
    }
    let (mut sw, mut su, mut sy, mut suu, mut suy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (&u, p) in xs.iter().zip(points) {
        let (y, w) = (p.1, p.2);
        sw += w;
        su += w * u;
        sy += w * y;
        suu += w * u * u;
        suy += w * u * y;
    }
    let det = sw * suu - su * su;
    if det <= 0.0 {
        return None;
    }
    let b = (sw * suy - su * sy) / det;
    let a = (sy - b * su) / sw;
    let chi2: f64 = xs
        .iter()
        .zip(points)
        .map(|(&u, p)| p.2 * (p.1 - a - b * u).powi(2))
        .sum();
    let reduced_chi2 = chi2 / (points.len() - 2) as f64;
    Some(Fit {
        a,
        b,
        se_a: (reduced_chi2 * suu / det).sqrt(),
        se_b: (reduced_chi2 * sw / det).sqrt(),
        reduced_chi2,
        points: points.len(),
    })
}
