//! Label-skewed shards (`--label-skew ALPHA`): the training set dealt to the workers so
//! that each worker's mix of classes follows its own draw from a symmetric Dirichlet
//! distribution of concentration α, while every shard keeps the same size (so all workers
//! still take the same number of steps per epoch).
//!
//! This is the balanced Dirichlet split of Acar et al. (FedDyn, ICLR 2021): worker w draws
//! class priors π_w ~ Dir(α, …, α); then, one sample at a time and taking the workers in
//! turn, a worker draws a class from π_w restricted to the classes that still have
//! samples, and takes one sample of that class. Small α (0.1) gives each worker one or two
//! dominant classes; large α (100) approaches i.i.d. shards. The deal is a pure function
//! of the labels, the number of workers, α and the seed: every rank computes the same one
//! without communication, on any machine (gamma and normal variates are drawn with `libm`,
//! never the system's maths library, and uniforms from a seeded ChaCha generator).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};

use crate::hash::hash_words;

/// Domain word of the deal's generator ("SKEW").
const DOMAIN: u64 = 0x534B_4557;

/// Uniform in [0, 1) from 53 random bits.
fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// One draw from N(0, 1) (Box–Muller with libm, as the ResNet initialiser).
fn normal(rng: &mut impl RngCore) -> f64 {
    let u1 = 1.0 - unit(rng);
    let u2 = unit(rng);
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
}

/// One draw from Gamma(shape, 1) by Marsaglia and Tsang (2000); a shape below 1 is
/// boosted to shape + 1 and scaled by U^(1/shape).
fn gamma(shape: f64, rng: &mut impl RngCore) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - unit(rng);
        return gamma(shape + 1.0, rng) * libm::pow(u, 1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - unit(rng);
        if libm::log(u) < 0.5 * x * x + d - d * v + d * libm::log(v) {
            return d * v;
        }
    }
}

/// A draw from the symmetric Dirichlet distribution of `k` components and concentration
/// `alpha`. With very small α every gamma draw may underflow to 0; the mass then goes to
/// the largest draw's component (the limit of the distribution), or to a uniform component.
fn dirichlet(k: usize, alpha: f64, rng: &mut impl RngCore) -> Vec<f64> {
    let g: Vec<f64> = (0..k).map(|_| gamma(alpha, rng)).collect();
    let sum: f64 = g.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        return g.iter().map(|x| x / sum).collect();
    }
    let mut p = vec![0.0; k];
    p[(rng.next_u64() % k as u64) as usize] = 1.0;
    p
}

/// The training samples of each of `parts` workers under a label skew of concentration
/// `alpha`: `parts` sorted lists of `labels.len() / parts` sample indices each, disjoint
/// (the remainder, fewer than `parts` samples, is left out, as with contiguous shards).
/// `classes` bounds the labels.
pub fn dirichlet_shards(
    labels: &[usize],
    classes: usize,
    parts: usize,
    alpha: f64,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(hash_words(&[seed, parts as u64, DOMAIN]));
    // Each class's samples, in a seeded random order; taken from the back.
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        pools[l].push(i);
    }
    for pool in &mut pools {
        pool.shuffle(&mut rng);
    }
    let priors: Vec<Vec<f64>> = (0..parts)
        .map(|_| dirichlet(classes, alpha, &mut rng))
        .collect();
    let each = labels.len() / parts;
    let mut shards: Vec<Vec<usize>> = vec![Vec::with_capacity(each); parts];
    for _ in 0..each {
        for (shard, prior) in shards.iter_mut().zip(&priors) {
            let class = draw_class(prior, &pools, &mut rng);
            shard.push(pools[class].pop().expect("a class with samples left"));
        }
    }
    for shard in &mut shards {
        shard.sort_unstable();
    }
    shards
}

/// A class drawn from `prior` restricted to the classes with samples left; when the prior
/// puts no mass on any of them, in proportion to what is left.
fn draw_class(prior: &[f64], pools: &[Vec<usize>], rng: &mut impl RngCore) -> usize {
    let weight = |c: usize| {
        if pools[c].is_empty() {
            0.0
        } else {
            prior[c]
        }
    };
    let total: f64 = (0..prior.len()).map(weight).sum();
    let (weights, total): (Vec<f64>, f64) = if total > 0.0 {
        ((0..prior.len()).map(weight).collect(), total)
    } else {
        let left: Vec<f64> = pools.iter().map(|p| p.len() as f64).collect();
        let sum = left.iter().sum();
        (left, sum)
    };
    let mut u = unit(rng) * total;
    let mut last = 0;
    for (c, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            last = c;
            if u < w {
                return c;
            }
            u -= w;
        }
    }
    // Rounding left u just above the sum: the last class with weight.
    last
}

/// How skewed a deal is: the mean over workers of the share of a worker's samples that
/// belong to its most frequent class (1/classes for perfectly mixed shards, 1 for shards
/// of one class each).
pub fn dominant_share(labels: &[usize], classes: usize, shards: &[Vec<usize>]) -> f64 {
    let shares: Vec<f64> = shards
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut counts = vec![0usize; classes];
            for &i in s {
                counts[labels[i]] += 1;
            }
            *counts.iter().max().unwrap_or(&0) as f64 / s.len() as f64
        })
        .collect();
    shares.iter().sum::<f64>() / shares.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: usize) -> Vec<usize> {
        (0..n).map(|i| (i * 7 + i / 3) % classes).collect()
    }

    #[test]
    fn shards_are_equal_disjoint_and_reproducible() {
        let l = labels(1003, 10);
        let a = dirichlet_shards(&l, 10, 4, 0.5, 3);
        assert_eq!(a, dirichlet_shards(&l, 10, 4, 0.5, 3));
        assert_ne!(a, dirichlet_shards(&l, 10, 4, 0.5, 4));
        assert!(a.iter().all(|s| s.len() == 250));
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1000);
        assert!(a.iter().all(|s| s.windows(2).all(|w| w[0] < w[1])));
    }

    #[test]
    fn alpha_sets_the_skew() {
        let l = labels(20_000, 10);
        let share = |alpha| dominant_share(&l, 10, &dirichlet_shards(&l, 10, 8, alpha, 1));
        let (small, large) = (share(0.1), share(1000.0));
        // α = 0.1: most of a shard is one class; α = 1000: nearly 1/10 each.
        assert!(small > 0.5, "α = 0.1 gave a dominant share of {small}");
        assert!(large < 0.15, "α = 1000 gave a dominant share of {large}");
    }

    #[test]
    fn samplers_have_the_right_moments() {
        let mut rng = StdRng::seed_from_u64(5);
        for shape in [0.1, 0.5, 1.0, 3.0] {
            let n = 100_000;
            let x: Vec<f64> = (0..n).map(|_| gamma(shape, &mut rng)).collect();
            let mean = x.iter().sum::<f64>() / n as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            // Gamma(k, 1): mean k, variance k.
            assert!(
                (mean - shape).abs() < 0.03 * shape.max(0.5),
                "{shape}: {mean}"
            );
            assert!((var - shape).abs() < 0.1 * shape.max(0.5), "{shape}: {var}");
        }
        let p = dirichlet(10, 1e-4, &mut rng);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
