//! Per-link drop rates from a small text file: one slow rack, one cut-off server.
//!
//! Format, one rule per line (`#` starts a comment):
//!
//! ```text
//! default 0.01      # every link not named below (else --drop-up / --drop-down)
//! rank 3 0.3        # every message to or from rank 3
//! rank 4-7 0.2      # a range of ranks, e.g. one rack
//! link 2 0 1.0      # messages from rank 2 to rank 0 (directed)
//! ```
//!
//! A link's rate is its `link` rule if any (the last one wins), else the highest `rank`
//! rule of its two ends, else `default`, else the base rate of its direction. Each
//! message is then dropped i.i.d. with that rate.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

use super::{bernoulli_draw, Direction, DropModel, MessageId};

#[derive(Debug, Error, PartialEq)]
pub enum LinkRatesError {
    #[error("--link-rates {path}: cannot read: {why}")]
    Read { path: String, why: String },
    #[error("--link-rates {path}: {why}")]
    Empty { path: String, why: String },
    #[error("--link-rates {path}, line {line}: {why}")]
    Syntax {
        path: String,
        line: usize,
        why: String,
    },
}

/// Parsed rules of a per-link rates file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkRates {
    pub default: Option<f64>,
    /// (first rank, last rank, rate)
    pub ranks: Vec<(usize, usize, f64)>,
    pub links: HashMap<(usize, usize), f64>,
}

impl LinkRates {
    /// Reads and parses a rates file, checking every rank against `world_size`.
    ///
    /// # Errors
    /// Unreadable file, or a line that is not a valid rule (with its line number).
    pub fn load(path: &Path, world_size: usize) -> Result<Self, LinkRatesError> {
        let text = std::fs::read_to_string(path).map_err(|e| LinkRatesError::Read {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        let path = path.display().to_string();
        Self::parse(&text, world_size).map_err(|(line, why)| match line {
            0 => LinkRatesError::Empty { path, why },
            _ => LinkRatesError::Syntax { path, line, why },
        })
    }

    /// Parses rules; errors carry the 1-based line number (0: the file as a whole).
    pub fn parse(text: &str, world_size: usize) -> Result<Self, (usize, String)> {
        let mut rules = LinkRates::default();
        let (mut default_line, mut count) = (0, 0);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |why: String| (i + 1, why);
            count += 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            let rate = |w: &str| -> Result<f64, (usize, String)> {
                match w.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(err(format!("rate {w:?} is not a probability in [0, 1]"))),
                }
            };
            let rank = |w: &str| -> Result<usize, (usize, String)> {
                match w.parse::<usize>() {
                    Ok(r) if r < world_size => Ok(r),
                    Ok(r) => Err(err(format!(
                        "rank {r} does not exist in a job of {world_size} rank(s)"
                    ))),
                    Err(_) if w.starts_with('-') || w.is_empty() => Err(err(format!(
                        "rank {w:?} is not a rank number (ranks are numbered from 0, ranges are written R-R2)"
                    ))),
                    Err(_) => Err(err(format!("{w:?} is not a rank number"))),
                }
            };
            match words.as_slice() {
                ["default", p] => {
                    if default_line > 0 {
                        return Err(err(format!(
                            "a second `default` rule (the first is on line {default_line})"
                        )));
                    }
                    default_line = i + 1;
                    rules.default = Some(rate(p)?);
                }
                ["rank", spec, _] if spec.starts_with('-') => {
                    return Err(err(format!(
                        "rank {spec} is negative: ranks are numbered from 0"
                    )))
                }
                ["rank", spec, p] => {
                    let (lo, hi) = match spec.split_once('-') {
                        Some((a, b)) => (rank(a)?, rank(b)?),
                        None => (rank(spec)?, rank(spec)?),
                    };
                    if lo > hi {
                        return Err(err(format!("empty rank range {spec}")));
                    }
                    rules.ranks.push((lo, hi, rate(p)?));
                }
                ["link", src, dst, p] => {
                    let (s, d) = (rank(src)?, rank(dst)?);
                    rules.links.insert((s, d), rate(p)?);
                }
                _ => {
                    return Err(err(format!(
                        "expected `default P`, `rank R[-R2] P` or `link SRC DST P`, found {line:?}"
                    )))
                }
            }
        }
        if count == 0 {
            return Err((0, "the file holds no rule (expected `default P`, `rank R[-R2] P` or `link SRC DST P` lines)".into()));
        }
        Ok(rules)
    }

    /// The rate of the directed link `src → dst`, given the base rate of its direction.
    pub fn rate(&self, src: usize, dst: usize, base: f64) -> f64 {
        if let Some(&p) = self.links.get(&(src, dst)) {
            return p;
        }
        let by_rank = self
            .ranks
            .iter()
            .filter(|(lo, hi, _)| (*lo..=*hi).contains(&src) || (*lo..=*hi).contains(&dst))
            .map(|r| r.2)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
        by_rank.or(self.default).unwrap_or(base)
    }
}

/// i.i.d. loss with a rate per directed link.
#[derive(Debug, Clone)]
pub struct PerLink {
    seed: u64,
    up: f64,
    down: f64,
    rules: LinkRates,
}

impl PerLink {
    pub fn new(seed: u64, up: f64, down: f64, rules: LinkRates) -> Self {
        PerLink {
            seed,
            up,
            down,
            rules,
        }
    }
}

impl DropModel for PerLink {
    fn drops(&self, m: &MessageId) -> bool {
        let base = match m.direction {
            Direction::Up => self.up,
            Direction::Down => self.down,
        };
        bernoulli_draw(self.seed, m, self.rules.rate(m.src, m.dst, base))
    }

    fn describe(&self) -> String {
        format!(
            "per-link(base up={}, down={}; default {:?}, {} rank rule(s), {} link rule(s))",
            self.up,
            self.down,
            self.rules.default,
            self.rules.ranks.len(),
            self.rules.links.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_resolve_in_order() {
        let r = LinkRates::parse(
            "default 0.01\nrank 3 0.3 # slow\nrank 4-5 0.2\nlink 2 0 1.0\n\n",
            6,
        )
        .unwrap();
        assert_eq!(r.rate(2, 0, 0.5), 1.0);
        assert_eq!(r.rate(0, 2, 0.5), 0.01);
        assert_eq!(r.rate(3, 4, 0.5), 0.3);
        assert_eq!(r.rate(5, 0, 0.5), 0.2);
        assert_eq!(LinkRates::default().rate(1, 0, 0.07), 0.07);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(LinkRates::parse("rank 9 0.1", 4).unwrap_err().0, 1);
        let (line, why) = LinkRates::parse("default 0.1\nlink 0 1 2.0", 4).unwrap_err();
        assert_eq!(line, 2);
        assert!(why.contains("not a probability"), "{why}");
        assert!(LinkRates::parse("links 0 1 0.5", 4)
            .unwrap_err()
            .1
            .contains("expected"));
        assert!(LinkRates::parse("rank 3-1 0.5", 4)
            .unwrap_err()
            .1
            .contains("empty"));
        let (line, why) = LinkRates::parse("# nothing\n\n", 4).unwrap_err();
        assert_eq!(line, 0);
        assert!(why.contains("holds no rule"), "{why}");
        let (line, why) = LinkRates::parse("default 0.1\nrank 1 0.2\ndefault 0.3", 4).unwrap_err();
        assert_eq!(line, 3);
        assert!(
            why.contains("second `default` rule (the first is on line 1)"),
            "{why}"
        );
        let (_, why) = LinkRates::parse("rank -1 0.2", 4).unwrap_err();
        assert!(why.contains("rank -1 is negative"), "{why}");
    }

    #[test]
    fn empirical_rates_per_link() {
        let rules = LinkRates::parse("rank 2 0.4\nlink 0 1 1.0", 3).unwrap();
        let m = PerLink::new(3, 0.05, 0.05, rules);
        let rate = |src, dst, direction| {
            let n = 50_000u64;
            (0..n)
                .filter(|&s| {
                    m.drops(&MessageId {
                        step: s,
                        direction,
                        src,
                        dst,
                        block: 0,
                        packet: 0,
                    })
                })
                .count() as f64
                / n as f64
        };
        assert!((rate(1, 0, Direction::Up) - 0.05).abs() < 0.006);
        assert!((rate(2, 0, Direction::Up) - 0.4).abs() < 0.012);
        assert_eq!(rate(0, 1, Direction::Down), 1.0);
    }
}
