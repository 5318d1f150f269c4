//! The loss budget of the lossy class (`--loss-target`): each sender paces each of its
//! links and adapts the rate from its receiver's reports. The rule is defined once, in
//! docs/concepts.md ("The loss budget"); the ns-3 model applies the same rule
//! (netsim/loss_budget.h; tests/netsim.rs holds the two against each other). This file is
//! its arithmetic, pure so that it is unit-tested.

use std::time::{Duration, Instant};

/// Intervals of fewer datagrams than this are not used (their loss is mostly noise).
pub const MIN_INTERVAL: u64 = 16;
/// One update at most doubles the rate. A cut has no such bound: a report cuts the rate
/// to what the link carried, less the budget (an update once halved at most, so a link
/// that started far too fast lost for many steps before it had come down).
pub const MAX_STEP: f64 = 2.0;
/// The probe's exponent grows by one per quiet interval up to this.
pub const MAX_STREAK: u32 = 8;
/// The lowest rate is the highest divided by this.
pub const RANGE: f64 = 1000.0;
/// The default highest rate of a link, in bits per second (a 10 GbE host).
pub const DEFAULT_LINK_RATE: u64 = 10_000_000_000;

/// The user's budget: the loss to aim at and the highest rate of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The target loss, in parts per million (so that options compare exactly).
    pub target_ppm: u32,
    /// The highest rate of one link (`--udp-link-rate`), in bits per second.
    pub link_rate: u64,
}

impl Budget {
    /// The target loss as a fraction.
    pub fn target(&self) -> f64 {
        f64::from(self.target_ppm) / 1e6
    }

    /// The highest rate of a link, in bytes per second.
    pub fn max_rate(&self) -> f64 {
        self.link_rate as f64 / 8.0
    }

    /// The lowest rate of a link, in bytes per second.
    pub fn min_rate(&self) -> f64 {
        self.max_rate() / RANGE
    }

    /// The rate a link starts at in a job of `ranks` ranks: its share of a receiver's port
    /// if every other rank sent to that receiver at once (R_max / (ranks − 1)), within
    /// [R_min, R_max]. Quiet intervals probe up from there; a link that started at R_max
    /// made a parameter server's incast lose half its first steps.
    pub fn start_rate(&self, ranks: usize) -> f64 {
        let share = self.max_rate() / ranks.saturating_sub(1).max(1) as f64;
        share.clamp(self.min_rate(), self.max_rate())
    }

    /// The rule's update of a link's `rate` (bytes per second) after an interval that
    /// lost the fraction `loss` of its datagrams, the `streak`-th quiet one in a row (0
    /// when it was not quiet: `loss` ≥ T/2).
    pub fn update(&self, rate: f64, loss: f64, streak: u32) -> f64 {
        let t = self.target();
        // The rate that would have lost T, had the link carried rate·(1 − loss).
        let mut f = (1.0 - loss) / (1.0 - t);
        if streak > 0 {
            f = f.powi(streak.min(MAX_STREAK) as i32);
        }
        let next = rate * f.min(MAX_STEP);
        next.clamp(self.min_rate(), self.max_rate())
    }
}

/// The quiet intervals in a row (loss below half the target) after one that lost `loss`.
pub fn next_streak(loss: f64, target: f64, streak: u32) -> u32 {
    if loss < target / 2.0 {
        streak + 1
    } else {
        0
    }
}

/// A receiver's report on one link: how many of the sender's datagrams it accepted in
/// all, and the highest sequence number among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub accepted: u64,
    pub highest: u64,
}

impl Report {
    /// Bytes of a report in a datagram's body.
    pub const BYTES: usize = 16;

    pub fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[..8].copy_from_slice(&self.accepted.to_le_bytes());
        b[8..].copy_from_slice(&self.highest.to_le_bytes());
        b
    }

    /// A report from a datagram's body; `None` unless it is exactly [`Self::BYTES`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::BYTES {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Some(Report {
            accepted: u(0),
            highest: u(8),
        })
    }
}

/// Why a report was refused (counted as rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReport {
    /// It names a sequence number this sender never used.
    Unsent,
    /// It says more datagrams arrived than were sent.
    TooMany,
}

/// The sender's side of one link: its rate, when it may send next, and the last report
/// an interval was measured from.
#[derive(Debug, Clone)]
pub struct Link {
    /// Bytes per second.
    pub rate: f64,
    /// When the next datagram is due (pacing).
    pub next: Instant,
    /// The report the current interval starts at.
    from: Report,
    /// The loss of the last interval measured (`None` before the first).
    pub last_loss: Option<f64>,
    /// Intervals measured.
    pub intervals: u64,
    /// Quiet intervals (loss under T/2) in a row.
    streak: u32,
}

impl Link {
    /// A link of a job of `ranks` ranks, at [`Budget::start_rate`].
    pub fn new(budget: &Budget, ranks: usize, now: Instant) -> Self {
        Link {
            rate: budget.start_rate(ranks),
            next: now,
            from: Report::default(),
            last_loss: None,
            intervals: 0,
            streak: 0,
        }
    }

    /// Takes a report of this link, whose sender has used sequence numbers up to `sent`.
    /// When it closes an interval of at least [`MIN_INTERVAL`] datagrams, the rate is
    /// updated and the interval's loss returned. A report older than the interval's start
    /// (reordered) is ignored.
    ///
    /// # Errors
    /// A report no receiver could have made.
    pub fn report(
        &mut self,
        budget: &Budget,
        r: Report,
        sent: u64,
    ) -> Result<Option<f64>, BadReport> {
        if r.highest > sent {
            return Err(BadReport::Unsent);
        }
        if r.accepted > r.highest {
            return Err(BadReport::TooMany);
        }
        if r.highest < self.from.highest || r.accepted < self.from.accepted {
            return Ok(None);
        }
        let span = r.highest - self.from.highest;
        if span < MIN_INTERVAL {
            return Ok(None);
        }
        // Datagrams of the previous interval that arrived late count here: clamp at 0.
        let got = (r.accepted - self.from.accepted).min(span);
        let loss = 1.0 - got as f64 / span as f64;
        self.streak = next_streak(loss, budget.target(), self.streak);
        self.rate = budget.update(self.rate, loss, self.streak);
        self.from = r;
        self.last_loss = Some(loss);
        self.intervals += 1;
        Ok(Some(loss))
    }

    /// Takes the next `bytes` from the pacing: returns when they are due and moves the
    /// link's clock past them. A link idle for a while does not bank the idle time.
    pub fn pace(&mut self, bytes: usize, now: Instant) -> Instant {
        let due = self.next.max(now);
        self.next = due + Duration::from_secs_f64(bytes as f64 / self.rate);
        due
    }
}

/// Parses a rate in bits per second: a number with an optional `k`, `M` or `G` (and an
/// optional `bit/s` or `bps`): `10G`, `2.5Gbps`, `800M`, `1e9`.
///
/// # Errors
/// Not a positive rate.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("bit/s")
        .or_else(|| t.strip_suffix("bps"))
        .unwrap_or(t);
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() && !t.ends_with(['e', 'E']) => {
            (&t[..i], c.to_ascii_lowercase())
        }
        _ => (t, ' '),
    };
    let scale = match unit {
        ' ' => 1.0,
        'k' => 1e3,
        'm' => 1e6,
        'g' => 1e9,
        _ => {
            return Err(format!(
                "{s:?} is not a rate (such as 10G, 800M or 1e9 bit/s)"
            ))
        }
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (such as 10G, 800M or 1e9 bit/s)"))?;
    let bits = v * scale;
    if !(bits.is_finite() && bits >= 1e3) {
        return Err(format!("{s:?} is not a rate of at least 1 kbit/s"));
    }
    Ok(bits.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget {
            target_ppm: 50_000,
            link_rate: 8_000_000_000,
        }
    }

    #[test]
    fn the_rule_aims_at_the_rate_that_loses_the_target() {
        let b = budget();
        let max = b.max_rate();
        assert_eq!(max, 1e9);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b;
        // Lost 24 % at R: the link carried 0.76 R, so 0.76 R / 0.95 = 0.8 R loses 5 %.
        assert!(close(b.update(max, 0.24, 0), 0.8 * max));
        // Cut to what the link carried, less the budget, however much was lost (lost
        // 90 %: 0.1 / 0.95), down to the floor when nothing arrived.
        assert!(close(b.update(max, 0.9, 0), max * 0.1 / 0.95));
        assert_eq!(b.update(max, 1.0, 0), max / RANGE);
        // The start: a share of a receiver's port, within the bounds.
        assert_eq!(b.start_rate(1), max);
        assert_eq!(b.start_rate(2), max);
        assert_eq!(b.start_rate(5), max / 4.0);
        assert_eq!(b.start_rate(100_000), max / RANGE);
        // At the target: hold.
        assert!(close(b.update(0.5 * max, 0.05, 0), 0.5 * max));
        // Quiet intervals probe, faster with each one in a row, never past the top.
        let step = 1.0 / 0.95;
        assert!(close(b.update(0.1 * max, 0.0, 1), 0.1 * max * step));
        assert!(close(b.update(0.1 * max, 0.0, 3), 0.1 * max * step.powi(3)));
        assert!(close(
            b.update(0.1 * max, 0.0, 50),
            0.1 * max * step.powi(8)
        ));
        assert_eq!(b.update(max, 0.0, 1), max);
        // Never under the floor.
        assert_eq!(b.update(max / RANGE, 0.9, 0), max / RANGE);
    }

    /// n links into one bottleneck, each sending in a step only with probability `busy`
    /// (their compute times differ), so that a link alone is never congested: the
    /// average loss still settles at the budget, not above it.
    #[test]
    fn links_that_overlap_by_chance_keep_the_average_loss_at_the_budget() {
        let b = budget();
        let cap = 0.2 * b.max_rate();
        let now = Instant::now();
        let n = 4;
        let mut links = vec![Link::new(&b, n + 1, now); n];
        let mut sent = vec![0u64; n];
        let mut accepted = vec![0u64; n];
        let mut x = 99u64;
        let (mut lost, mut total) = (0.0, 0.0);
        for step in 0..3000 {
            let active: Vec<usize> = (0..n)
                .filter(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (x >> 33) % 10 < 6
                })
                .collect();
            let offered: f64 = active.iter().map(|&i| links[i].rate).sum();
            let pass = (cap / offered).min(1.0);
            for &i in &active {
                let k = 2000u64;
                let got = (pass * k as f64) as u64;
                sent[i] += k;
                accepted[i] += got;
                if step >= 1000 {
                    lost += (k - got) as f64;
                    total += k as f64;
                }
                let r = Report {
                    accepted: accepted[i],
                    highest: sent[i],
                };
                links[i].report(&b, r, sent[i]).unwrap();
            }
        }
        let mean = lost / total;
        assert!((0.025..0.075).contains(&mean), "average loss {mean:.4}");
    }

    /// A link behind a bottleneck that carries `cap` bytes per second: the rule settles
    /// where the loss is within the budget, from above and from below, and follows the
    /// bottleneck when it moves.
    #[test]
    fn a_link_settles_near_the_budget_behind_a_bottleneck() {
        let b = budget();
        let now = Instant::now();
        let mut link = Link::new(&b, 2, now);
        let (mut sent, mut accepted) = (0u64, 0u64);
        let mut run = |link: &mut Link, cap: f64, steps: usize| {
            let mut losses = Vec::new();
            for _ in 0..steps {
                // One step: 10,000 datagrams at the link's rate; the bottleneck passes
                // cap / rate of them.
                let n = 10_000u64;
                let passed = ((cap / link.rate).min(1.0) * n as f64) as u64;
                sent += n;
                accepted += passed;
                let r = Report {
                    accepted,
                    highest: sent,
                };
                losses.push(link.report(&b, r, sent).unwrap().unwrap());
            }
            losses
        };
        let tail = |l: &[f64]| l[l.len() - 5..].to_vec();
        // Competing traffic leaves a tenth of the link.
        let l = run(&mut link, 0.1 * b.max_rate(), 30);
        assert!(
            tail(&l).iter().all(|&x| (0.0..=0.05 + 1e-9).contains(&x)),
            "{l:?}"
        );
        assert!(tail(&l).iter().any(|&x| x > 0.0), "{l:?}");
        // It leaves: the rate probes back up to the top.
        run(&mut link, 2.0 * b.max_rate(), 30);
        assert_eq!(link.rate, b.max_rate());
        // It comes back harder.
        let l = run(&mut link, 0.02 * b.max_rate(), 30);
        assert!(tail(&l).iter().all(|&x| x <= 0.05 + 1e-9), "{l:?}");
    }

    #[test]
    fn reports_are_checked_and_short_intervals_wait() {
        let b = budget();
        let mut link = Link::new(&b, 2, Instant::now());
        let r = |accepted, highest| Report { accepted, highest };
        assert_eq!(link.report(&b, r(5, 20), 10), Err(BadReport::Unsent));
        assert_eq!(link.report(&b, r(21, 20), 30), Err(BadReport::TooMany));
        // Fewer than MIN_INTERVAL datagrams: no measurement yet.
        assert_eq!(link.report(&b, r(10, 10), 30), Ok(None));
        assert_eq!(link.report(&b, r(15, 20), 30), Ok(Some(0.25)));
        // Older than the interval's start: ignored.
        assert_eq!(link.report(&b, r(12, 18), 30), Ok(None));
        assert_eq!(link.intervals, 1);
        // Round trip of the wire form.
        let x = r(123, 456);
        assert_eq!(Report::from_bytes(&x.to_bytes()), Some(x));
        assert_eq!(Report::from_bytes(&[0; 15]), None);
    }

    #[test]
    fn pacing_spaces_datagrams_at_the_rate() {
        let b = Budget {
            target_ppm: 50_000,
            link_rate: 8_000_000, // 1 MB/s
        };
        let t0 = Instant::now();
        let mut link = Link::new(&b, 2, t0);
        assert_eq!(link.pace(1000, t0), t0);
        assert_eq!(link.pace(1000, t0), t0 + Duration::from_millis(1));
        // Idle time is not banked.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(link.pace(1000, later), later);
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10G"), Ok(10_000_000_000));
        assert_eq!(parse_rate("2.5Gbps"), Ok(2_500_000_000));
        assert_eq!(parse_rate("800M"), Ok(800_000_000));
        assert_eq!(parse_rate("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100kbit/s"), Ok(100_000));
        for bad in ["", "fast", "10X", "-1G", "0", "nan"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
