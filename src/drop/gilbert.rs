//! Gilbert–Elliott bursty loss: a two-state (good/bad) Markov chain per directed link.
//!
//! Parameterised like Linux netem's `loss gemodel p r 1-h 1-k` (as probabilities, not
//! percent): `p` = P(good→bad), `r` = P(bad→good), `1-h` = loss probability in the bad
//! state, `1-k` = loss probability in the good state. The chain advances once per packet
//! slot: a step has a fixed number of slots per link (the packets of the largest block),
//! so the state at (step, packet) depends only on the seed and the link — a pure function
//! of the coordinates, evaluated by simulating the link's chain forward (cached).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Direction, DropModel, MessageId};
use crate::hash::hash_words;

/// netem-style Gilbert–Elliott parameters, all probabilities in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeParams {
    /// P(good → bad) per slot.
    pub p: f64,
    /// P(bad → good) per slot.
    pub r: f64,
    /// Loss probability in the bad state (netem's 1-h).
    pub bad_loss: f64,
    /// Loss probability in the good state (netem's 1-k).
    pub good_loss: f64,
}

impl GeParams {
    /// Stationary probability of the bad state.
    pub fn bad_fraction(&self) -> f64 {
        if self.p + self.r == 0.0 {
            0.0 // never leaves the initial (good) state
        } else {
            self.p / (self.p + self.r)
        }
    }

    /// Long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        let b = self.bad_fraction();
        b * self.bad_loss + (1.0 - b) * self.good_loss
    }

    /// Mean number of consecutive slots spent in the bad state (1/r); with `bad_loss` 1
    /// and `good_loss` 0 this is the mean length of a burst of losses.
    pub fn mean_burst(&self) -> f64 {
        if self.r == 0.0 {
            f64::INFINITY
        } else {
            1.0 / self.r
        }
    }
}

/// The state of one link's chain: states of the slots from `start` on.
#[derive(Debug, Default)]
struct Chain {
    start: u64,
    states: Vec<bool>,
    /// State of slot `start + states.len() - 1` (false = good before slot 0).
    last_bad: bool,
}

/// Bursty loss, one independent chain per (direction, sender, receiver).
#[derive(Debug)]
pub struct GilbertElliott {
    seed: u64,
    params: GeParams,
    slots_per_step: u64,
    chains: Mutex<HashMap<(Direction, usize, usize), Chain>>,
}

impl GilbertElliott {
    /// `slots_per_step`: packets per message of the largest block (1 for whole blocks).
    pub fn new(seed: u64, params: GeParams, slots_per_step: u64) -> Self {
        GilbertElliott {
            seed,
            params,
            slots_per_step: slots_per_step.max(1),
            chains: Mutex::new(HashMap::new()),
        }
    }

    fn uniform(&self, link: (Direction, usize, usize), slot: u64, salt: u64) -> f64 {
        let h = hash_words(&[
            self.seed,
            link.0 as u64,
            link.1 as u64,
            link.2 as u64,
            slot,
            salt,
        ]);
        (h >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether `link` is in the bad state at `slot`.
    fn bad_at(&self, link: (Direction, usize, usize), slot: u64) -> bool {
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        let chain = chains.entry(link).or_default();
        if slot < chain.start {
            *chain = Chain::default(); // asked about the past: replay from slot 0
        }
        // Keep only the current step's slots: queries never go back further.
        let step_start = slot - slot % self.slots_per_step;
        if step_start > chain.start {
            let drop_n = ((step_start - chain.start) as usize).min(chain.states.len());
            chain.states.drain(..drop_n);
            chain.start += drop_n as u64;
        }
        while chain.start + (chain.states.len() as u64) <= slot {
            let t = chain.start + chain.states.len() as u64;
            let u = self.uniform(link, t, 0x5354_4154); // "STAT"
            let bad = if chain.last_bad {
                u >= self.params.r
            } else {
                u < self.params.p
            };
            chain.states.push(bad);
            chain.last_bad = bad;
        }
        chain.states[(slot - chain.start) as usize]
    }
}

impl DropModel for GilbertElliott {
    fn drops(&self, m: &MessageId) -> bool {
        let link = (m.direction, m.src, m.dst);
        let slot = m.step * self.slots_per_step + m.packet as u64;
        let loss = if self.bad_at(link, slot) {
            self.params.bad_loss
        } else {
            self.params.good_loss
        };
        self.uniform(link, slot, 0x4C4F_5353) < loss // "LOSS"
    }

    fn describe(&self) -> String {
        let g = self.params;
        format!(
            "gilbert-elliott(p={}, r={}, bad_loss={}, good_loss={}; mean loss {:.4}, mean burst {:.2} slots)",
            g.p,
            g.r,
            g.bad_loss,
            g.good_loss,
            g.mean_loss(),
            g.mean_burst()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(model: &GilbertElliott, n: u64) -> Vec<bool> {
        (0..n)
            .map(|s| model.drops(&MessageId::new(s, Direction::Up, 1, 0, 0)))
            .collect()
    }

    fn ge(p: f64, r: f64, bad_loss: f64, good_loss: f64) -> GeParams {
        GeParams {
            p,
            r,
            bad_loss,
            good_loss,
        }
    }

    #[test]
    fn loss_rate_and_burst_length_match_theory() {
        let params = ge(0.02, 0.25, 1.0, 0.0);
        let model = GilbertElliott::new(9, params, 1);
        let n = 400_000;
        let seq = sequence(&model, n);
        let rate = seq.iter().filter(|&&d| d).count() as f64 / n as f64;
        // Expected 0.02 / 0.27 = 0.074; bursts make the variance larger than binomial.
        assert!(
            (rate - params.mean_loss()).abs() < 0.006,
            "loss rate {rate} vs {}",
            params.mean_loss()
        );
        let mut bursts = Vec::new();
        let mut run = 0;
        for &d in &seq {
            if d {
                run += 1;
            } else if run > 0 {
                bursts.push(run);
                run = 0;
            }
        }
        let mean = bursts.iter().sum::<usize>() as f64 / bursts.len() as f64;
        assert!(
            (mean - params.mean_burst()).abs() < 0.15,
            "mean burst {mean} vs {}",
            params.mean_burst()
        );
    }

    #[test]
    fn lossy_good_state_and_partial_bad_state() {
        let params = ge(0.1, 0.1, 0.5, 0.1);
        let model = GilbertElliott::new(2, params, 1);
        let n = 200_000;
        let rate = sequence(&model, n).iter().filter(|&&d| d).count() as f64 / n as f64;
        assert!((rate - 0.3).abs() < 0.01, "{rate}");
    }

    #[test]
    fn decisions_do_not_depend_on_query_order() {
        let params = ge(0.05, 0.3, 1.0, 0.0);
        let a = GilbertElliott::new(4, params, 3);
        let forward: Vec<bool> = (0..60)
            .flat_map(|s| (0..3).map(move |k| (s, k)))
            .map(|(s, k)| a.drops(&MessageId::new(s, Direction::Down, 0, 2, 0).packet(k)))
            .collect();
        // A fresh model asked in another order (packets backwards, a gap, then the past).
        let b = GilbertElliott::new(4, params, 3);
        let mut other = vec![false; 180];
        for s in (0..60).rev().step_by(7).chain(0..60) {
            for k in (0..3).rev() {
                other[(s * 3 + k) as usize] =
                    b.drops(&MessageId::new(s, Direction::Down, 0, 2, 0).packet(k as u32));
            }
        }
        assert_eq!(forward, other);
    }

    #[test]
    fn always_bad_drops_everything() {
        let params = ge(1.0, 0.0, 1.0, 0.0);
        let model = GilbertElliott::new(1, params, 1);
        assert!(sequence(&model, 1000).iter().all(|&d| d));
        assert_eq!(params.mean_loss(), 1.0);
    }
}
