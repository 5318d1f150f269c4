//! Stochastic gradient descent with momentum and weight decay over the flat parameter buffer.
//! Semantics follow PyTorch's `torch.optim.SGD` (no dampening, no Nesterov): the velocity
//! starts at zero, so the first step moves by exactly lr·(g + wd·p).

/// SGD with momentum and weight decay, PyTorch semantics: g' = g + wd·p; v = μ·v + g';
/// p -= lr·v (v starts at zero so the first step is v = g').
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ (0 disables it).
    pub momentum: f32,
    /// L2 weight decay coefficient.
    pub weight_decay: f32,
    /// Momentum buffer, one entry per parameter.
    velocity: Vec<f32>,
    /// Ranges [`Sgd::step`] updates (all by default); entries outside them, such as
    /// batch-norm running statistics, are left alone: no step, no momentum, no decay.
    trainable: Vec<std::ops::Range<usize>>,
}

impl Sgd {
    /// An optimiser for `num_params` parameters with a zero velocity.
    pub fn new(num_params: usize, lr: f32, momentum: f32, weight_decay: f32) -> Sgd {
        Sgd {
            lr,
            momentum,
            weight_decay,
            velocity: vec![0.0; num_params],
            trainable: std::iter::once(0..num_params).collect(),
        }
    }

    /// Restricts updates to `ranges` (see [`crate::Model::trainable`]).
    ///
    /// # Panics
    /// If a range reaches past the parameter count: a wiring bug, not a data error.
    pub fn set_trainable(&mut self, ranges: Vec<std::ops::Range<usize>>) {
        assert!(
            ranges.iter().all(|r| r.end <= self.velocity.len()),
            "Sgd::set_trainable: range past the {} parameters",
            self.velocity.len()
        );
        self.trainable = ranges;
    }

    /// One update of `params` from `grads`.
    ///
    /// # Panics
    /// If `params`, `grads` and the velocity do not all have the same length: that is a
    /// wiring bug in the caller, not a data error.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        assert_eq!(
            params.len(),
            grads.len(),
            "Sgd::step: params and grads lengths differ"
        );
        assert_eq!(
            params.len(),
            self.velocity.len(),
            "Sgd::step: params length differs from the optimiser's"
        );
        let (lr, mu, wd) = (self.lr, self.momentum, self.weight_decay);
        for r in &self.trainable {
            let (p, g, v) = (
                &mut params[r.clone()],
                &grads[r.clone()],
                &mut self.velocity[r.clone()],
            );
            for ((p, &g), v) in p.iter_mut().zip(g).zip(v) {
                let g = g + wd * *p;
                *v = mu * *v + g;
                *p -= lr * *v;
            }
        }
    }

    /// The momentum buffer.
    pub fn velocity(&self) -> &[f32] {
        &self.velocity
    }

    /// The momentum buffer, writable (for restoring a checkpoint).
    pub fn velocity_mut(&mut self) -> &mut [f32] {
        &mut self.velocity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps worked by hand with lr 0.1, μ 0.9, wd 0.01.
    #[test]
    fn matches_hand_computed_steps() {
        let mut sgd = Sgd::new(2, 0.1, 0.9, 0.01);
        let mut p = [1.0f32, -2.0];
        // Step 1: g' = [0.5 + 0.01, -1 - 0.02] = [0.51, -1.02]; v = g'; p = [0.949, -1.898].
        sgd.step(&mut p, &[0.5, -1.0]);
        assert!((sgd.velocity()[0] - 0.51).abs() < 1e-6 && (sgd.velocity()[1] + 1.02).abs() < 1e-6);
        assert!((p[0] - 0.949).abs() < 1e-6 && (p[1] + 1.898).abs() < 1e-6);
        // Step 2: g' = [0.2 + 0.00949, 0.3 - 0.01898] = [0.20949, 0.28102];
        // v = 0.9·[0.51, -1.02] + g' = [0.66849, -0.63698]; p = [0.882151, -1.834302].
        sgd.step(&mut p, &[0.2, 0.3]);
        let v = sgd.velocity();
        assert!(
            (v[0] - 0.66849).abs() < 1e-6 && (v[1] + 0.63698).abs() < 1e-6,
            "{v:?}"
        );
        assert!(
            (p[0] - 0.882151).abs() < 1e-6 && (p[1] + 1.834302).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn plain_sgd_and_velocity_restore() {
        let mut sgd = Sgd::new(1, 0.5, 0.0, 0.0);
        let mut p = [1.0f32];
        sgd.step(&mut p, &[2.0]);
        assert_eq!(p, [0.0]);
        sgd.momentum = 0.5;
        sgd.velocity_mut()[0] = 4.0;
        sgd.step(&mut p, &[0.0]);
        // v = 0.5·4 + 0 = 2; p = 0 − 0.5·2.
        assert_eq!((p[0], sgd.velocity()[0]), (-1.0, 2.0));
    }

    #[test]
    fn untrainable_ranges_are_left_alone() {
        let mut sgd = Sgd::new(4, 0.5, 0.9, 0.1);
        sgd.set_trainable(vec![0..1, 3..4]);
        let mut p = [1.0f32, 2.0, 3.0, 4.0];
        sgd.step(&mut p, &[1.0, 1.0, 1.0, 1.0]);
        sgd.step(&mut p, &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(p[1..3], [2.0, 3.0], "state entries keep their values");
        assert_eq!(sgd.velocity()[1..3], [0.0, 0.0], "and get no momentum");
        assert!(p[0] < 1.0 && p[3] < 4.0);
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn step_panics_on_length_mismatch() {
        Sgd::new(2, 0.1, 0.0, 0.0).step(&mut [0.0, 0.0], &[1.0]);
    }
}
