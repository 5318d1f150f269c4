//! Learning-rate schedules: the rate of every step is a pure function of the step, so
//! every worker applies the same one and a resumed run continues it exactly.

use std::fmt;

/// How the learning rate changes over a run (after an optional linear warm-up).
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// `--lr` throughout.
    Constant,
    /// `--lr`, multiplied by `gamma` at each milestone (steps, resolved from fractions).
    Step { milestones: Vec<u64>, gamma: f32 },
    /// Cosine decay from `--lr` to 0 over the steps after the warm-up.
    Cosine,
}

/// A schedule with its base rate, warm-up and length: everything [`Lr::at`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Lr {
    pub base: f32,
    pub schedule: LrSchedule,
    /// Steps of linear warm-up from base/warmup to base.
    pub warmup: u64,
    pub total: u64,
}

impl Lr {
    /// The learning rate of (0-based) `step`.
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.base * (step + 1) as f32 / self.warmup as f32;
        }
        match &self.schedule {
            LrSchedule::Constant => self.base,
            LrSchedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| step >= m).count();
                self.base * gamma.powi(passed as i32)
            }
            LrSchedule::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let t = (step - self.warmup) as f64 / span;
                (f64::from(self.base) * 0.5 * (1.0 + libm::cos(std::f64::consts::PI * t))) as f32
            }
        }
    }
}

impl fmt::Display for Lr {
    /// `constant`, `step(milestones=[..], gamma=..)` or `cosine`, and the warm-up: what
    /// the metrics file records and the checkpoint fingerprint compares.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schedule {
            LrSchedule::Constant => write!(f, "constant")?,
            LrSchedule::Step { milestones, gamma } => {
                write!(f, "step(milestones={milestones:?}, gamma={gamma})")?
            }
            LrSchedule::Cosine => write!(f, "cosine(to 0 at step {})", self.total)?,
        }
        if self.warmup > 0 {
            write!(f, ", warmup {} steps", self.warmup)?;
        }
        Ok(())
    }
}

/// Milestones given as fractions of the run (below 1) or step numbers (1 and above),
/// resolved to steps of a run of `total` steps, sorted.
pub fn resolve_milestones(given: &[f64], total: u64) -> Vec<u64> {
    let mut steps: Vec<u64> = given
        .iter()
        .map(|&m| {
            if m < 1.0 {
                (m * total as f64).round() as u64
            } else {
                m as u64
            }
        })
        .collect();
    steps.sort_unstable();
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let lr = |schedule, warmup| Lr {
            base: 0.1,
            schedule,
            warmup,
            total: 100,
        };
        let c = lr(LrSchedule::Constant, 0);
        assert_eq!((c.at(0), c.at(99)), (0.1, 0.1));
        let milestones = resolve_milestones(&[0.75, 0.5], 100);
        assert_eq!(milestones, vec![50, 75]);
        let s = lr(
            LrSchedule::Step {
                milestones,
                gamma: 0.1,
            },
            0,
        );
        assert_eq!(s.at(49), 0.1);
        assert!((s.at(50) - 0.01).abs() < 1e-9 && (s.at(75) - 0.001).abs() < 1e-9);
        let w = lr(LrSchedule::Cosine, 10);
        assert!((w.at(0) - 0.01).abs() < 1e-9 && (w.at(9) - 0.1).abs() < 1e-9);
        assert!((w.at(10) - 0.1).abs() < 1e-9);
        assert!((w.at(55) - 0.05).abs() < 1e-6, "{}", w.at(55));
        assert!(w.at(99) < 0.001);
        assert_eq!(format!("{s}"), "step(milestones=[50, 75], gamma=0.1)");
    }
}
