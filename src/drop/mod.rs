//! Drop models: which messages (or packets) of the model exchange the network "loses".
//!
//! A decision is a pure function of the seed and the message's coordinates
//! ([`MessageId`]), computed with a counter-based hash (or read from a recorded trace), so
//! every rank can evaluate any link's decision without communication (oracle detection)
//! and runs are reproducible bit for bit, whatever the order in which ranks ask.

pub mod gilbert;
pub mod links;
pub mod spec;
pub mod trace;

use std::fmt;

pub use gilbert::{GeParams, GilbertElliott};
pub use links::{LinkRates, LinkRatesError, PerLink};
pub use spec::{drop_seed, DropSpec, RunShape};
pub use trace::{Replay, TraceBounds, TraceError, TraceRecord};

use crate::hash::hash_words;

/// Direction of a message in the parameter-server exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Worker → server (a block of the worker's locally updated model).
    Up = 0,
    /// Server → worker (the averaged block).
    Down = 1,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

/// Coordinates of one message: enough to name it uniquely within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub step: u64,
    pub direction: Direction,
    /// Sending rank.
    pub src: usize,
    /// Receiving rank.
    pub dst: usize,
    pub block: usize,
    /// Packet index within the block (0 when whole blocks are the unit of loss).
    pub packet: u32,
}

impl MessageId {
    /// The whole message of `block` from `src` to `dst` at `step` (its packet 0).
    pub fn new(step: u64, direction: Direction, src: usize, dst: usize, block: usize) -> Self {
        MessageId {
            step,
            direction,
            src,
            dst,
            block,
            packet: 0,
        }
    }

    /// Packet `k` of this message.
    pub fn packet(self, k: u32) -> Self {
        MessageId { packet: k, ..self }
    }
}

/// Decides, for every message, whether the network drops it.
///
/// Implementations must be pure: the same `MessageId` always gives the same answer on
/// every rank, since sender and receiver evaluate it independently.
pub trait DropModel: Send + Sync {
    /// `true` if the message is lost.
    fn drops(&self, msg: &MessageId) -> bool;
    /// Short human-readable description, recorded in the metrics file.
    fn describe(&self) -> String;
}

/// The paper's model: every message is lost independently, with probability `up` on
/// worker→server links and `down` on server→worker links.
#[derive(Debug, Clone, Copy)]
pub struct Bernoulli {
    seed: u64,
    up: f64,
    down: f64,
}

impl Bernoulli {
    /// The same probability `p` in both directions.
    ///
    /// # Panics
    /// If `p` is not within [0, 1]; the configuration layer validates user input first.
    pub fn new(seed: u64, p: f64) -> Self {
        Self::with_rates(seed, p, p)
    }

    /// Separate uplink and downlink probabilities.
    ///
    /// # Panics
    /// If a probability is not within [0, 1].
    pub fn with_rates(seed: u64, up: f64, down: f64) -> Self {
        for p in [up, down] {
            assert!(
                (0.0..=1.0).contains(&p),
                "drop probability {p} outside [0, 1]"
            );
        }
        Bernoulli { seed, up, down }
    }
}

impl DropModel for Bernoulli {
    fn drops(&self, msg: &MessageId) -> bool {
        let p = match msg.direction {
            Direction::Up => self.up,
            Direction::Down => self.down,
        };
        bernoulli_draw(self.seed, msg, p)
    }

    fn describe(&self) -> String {
        if self.up == self.down {
            format!("bernoulli(p={})", self.up)
        } else {
            format!("bernoulli(up={}, down={})", self.up, self.down)
        }
    }
}

/// `true` with probability `p`, from the message's counter-based uniform draw. Exact at
/// the ends: p = 0 never drops, p = 1 always does.
pub fn bernoulli_draw(seed: u64, msg: &MessageId, p: f64) -> bool {
    let threshold = (p * (1u64 << 53) as f64).round() as u64;
    uniform53(seed, msg) < threshold
}

/// A uniform draw in [0, 2^53) determined by the seed and the message coordinates.
fn uniform53(seed: u64, msg: &MessageId) -> u64 {
    hash_words(&[
        seed,
        msg.step,
        msg.direction as u64,
        msg.src as u64,
        msg.dst as u64,
        msg.block as u64,
        msg.packet as u64,
    ]) >> 11
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(step: u64, i: usize) -> MessageId {
        MessageId {
            step,
            direction: if i.is_multiple_of(2) {
                Direction::Up
            } else {
                Direction::Down
            },
            src: i % 7,
            dst: (i / 7) % 5,
            block: i % 3,
            packet: 0,
        }
    }

    #[test]
    fn extremes_are_exact() {
        let never = Bernoulli::new(1, 0.0);
        let always = Bernoulli::new(1, 1.0);
        for s in 0..2000 {
            let m = msg(s, s as usize);
            assert!(!never.drops(&m));
            assert!(always.drops(&m));
        }
    }

    #[test]
    fn empirical_rate_matches_p() {
        for &p in &[0.01, 0.1, 0.3, 0.5] {
            let model = Bernoulli::new(42, p);
            let n = 200_000u64;
            let dropped = (0..n).filter(|&s| model.drops(&msg(s, s as usize))).count();
            let rate = dropped as f64 / n as f64;
            // Five standard deviations of a binomial proportion.
            let tol = 5.0 * (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (rate - p).abs() < tol,
                "p={p}: observed {rate}, tolerance {tol}"
            );
        }
    }

    #[test]
    fn pure_function_of_seed_and_coordinates() {
        let a = Bernoulli::new(7, 0.5);
        let b = Bernoulli::new(7, 0.5);
        let c = Bernoulli::new(8, 0.5);
        let decisions = |m: &Bernoulli| (0..512).map(|s| m.drops(&msg(s, 3))).collect::<Vec<_>>();
        assert_eq!(decisions(&a), decisions(&b));
        assert_ne!(decisions(&a), decisions(&c));
    }

    #[test]
    fn directions_have_their_own_rates() {
        let m = Bernoulli::with_rates(5, 0.0, 1.0);
        for s in 0..100 {
            let mut id = msg(s, 0);
            id.direction = Direction::Up;
            assert!(!m.drops(&id));
            id.direction = Direction::Down;
            assert!(m.drops(&id));
        }
    }

    #[test]
    fn coordinates_are_independent() {
        // Decisions for the two directions of the same link must not be correlated.
        let model = Bernoulli::new(3, 0.5);
        let n = 100_000u64;
        let both = (0..n)
            .filter(|&s| {
                let up = MessageId::new(s, Direction::Up, 1, 0, 0);
                let down = MessageId {
                    direction: Direction::Down,
                    src: 0,
                    dst: 1,
                    ..up
                };
                model.drops(&up) && model.drops(&down)
            })
            .count();
        let rate = both as f64 / n as f64;
        assert!(
            (rate - 0.25).abs() < 5.0 * (0.25f64 * 0.75 / n as f64).sqrt(),
            "{rate}"
        );
    }
}
