//! Roles of ranks and the cut of the model into blocks.
//!
//! Dedicated mode: ranks `0..S` are servers, `S..size` workers, block `b` lives on server
//! `b` every step. Co-located mode: every rank is a worker and the server of one block;
//! the block→server assignment is a fresh permutation each step, drawn from the seed,
//! identical on every rank without communication.

use std::ops::Range;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use thiserror::Error;

use crate::hash::hash_words;

/// How ranks are split into roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The first `servers` ranks are servers, the rest workers (the paper's Figure 1).
    Dedicated { servers: usize },
    /// Every rank is a worker and the server of one block (the paper's theorem).
    Colocated,
}

impl Mode {
    /// The name in metrics files (`dedicated`, `colocated`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dedicated { .. } => "dedicated",
            Mode::Colocated => "colocated",
        }
    }

    /// The first worker rank: the ranks before it only serve (none when co-located).
    pub fn first_worker(self) -> usize {
        match self {
            Mode::Dedicated { servers } => servers,
            Mode::Colocated => 0,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("--servers {servers} leaves no worker in a job of {size} rank(s): run with more ranks (mpirun -n {need}) or fewer servers")]
    NoWorkers {
        servers: usize,
        size: usize,
        need: usize,
    },
    #[error("--servers must be at least 1 (or use --colocated)")]
    NoServers,
    #[error("the model has {params} parameters, fewer than the {blocks} blocks requested")]
    TooManyBlocks { params: usize, blocks: usize },
    #[error("{blocks} blocks exceed the {max} that fit in MPI's guaranteed tag range")]
    TagRange { blocks: usize, max: usize },
}

/// MPI guarantees tags up to 32767; [`Layout::tag`] stays within it.
const TAG_LIMIT: usize = 32_767;

/// Who is what, and where each block of the model lives.
#[derive(Debug, Clone)]
pub struct Layout {
    size: usize,
    mode: Mode,
    blocks: Vec<Range<usize>>,
    seed: u64,
}

impl Layout {
    /// # Errors
    /// If the job has no worker, no server, or more blocks than parameters.
    pub fn new(size: usize, mode: Mode, num_params: usize, seed: u64) -> Result<Self, LayoutError> {
        let num_blocks = match mode {
            Mode::Dedicated { servers: 0 } => return Err(LayoutError::NoServers),
            Mode::Dedicated { servers } if servers >= size => {
                return Err(LayoutError::NoWorkers {
                    servers,
                    size,
                    need: servers + 1,
                })
            }
            Mode::Dedicated { servers } => servers,
            Mode::Colocated => size,
        };
        if num_blocks > num_params {
            return Err(LayoutError::TooManyBlocks {
                params: num_params,
                blocks: num_blocks,
            });
        }
        if 2 * num_blocks > TAG_LIMIT {
            return Err(LayoutError::TagRange {
                blocks: num_blocks,
                max: TAG_LIMIT / 2,
            });
        }
        // Contiguous, near-equal blocks: the first `rem` blocks get one extra element.
        let (base, rem) = (num_params / num_blocks, num_params % num_blocks);
        let mut start = 0;
        let blocks = (0..num_blocks)
            .map(|b| {
                let len = base + usize::from(b < rem);
                let r = start..start + len;
                start += len;
                r
            })
            .collect();
        Ok(Layout {
            size,
            mode,
            blocks,
            seed,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn num_servers(&self) -> usize {
        match self.mode {
            Mode::Dedicated { servers } => servers,
            Mode::Colocated => self.size,
        }
    }

    pub fn num_workers(&self) -> usize {
        self.size - self.first_worker()
    }

    fn first_worker(&self) -> usize {
        self.mode.first_worker()
    }

    /// Worker ranks in increasing order.
    pub fn workers(&self) -> Range<usize> {
        self.first_worker()..self.size
    }

    pub fn is_worker(&self, rank: usize) -> bool {
        rank >= self.first_worker() && rank < self.size
    }

    /// Index of a worker among workers (its data shard), `None` for a pure server.
    pub fn worker_index(&self, rank: usize) -> Option<usize> {
        self.is_worker(rank).then(|| rank - self.first_worker())
    }

    pub fn is_server(&self, rank: usize) -> bool {
        rank < self.num_servers()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn block(&self, b: usize) -> Range<usize> {
        self.blocks[b].clone()
    }

    pub fn blocks(&self) -> &[Range<usize>] {
        &self.blocks
    }

    /// Writes into `owners[b]` the rank serving block `b` at `step`.
    pub fn owners_into(&self, step: u64, owners: &mut Vec<usize>) {
        owners.clear();
        owners.extend(0..self.num_blocks());
        if self.mode == Mode::Colocated {
            let seed = hash_words(&[self.seed, step, 0x5045_524D]); // "PERM"
            owners.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        }
    }

    /// The step-unique tag of a message: distinct per (step, direction, block) within a
    /// window of steps, cycling after it. Every message of a step completes within that
    /// step, so reuse after a full window cannot confuse two messages.
    pub fn tag(&self, step: u64, direction: crate::drop::Direction, block: usize) -> i32 {
        let per_step = 2 * self.num_blocks();
        let window = (TAG_LIMIT / per_step) as u64;
        let slot = (step % window) as usize;
        (slot * per_step + direction as usize * self.num_blocks() + block) as i32
    }
}

/// Cuts `params` into the disjoint mutable slices of the (contiguous, ordered) blocks.
/// An empty `params` (a buffer not needed this step) gives empty slices.
pub fn split_blocks<'a>(
    mut rest: &'a mut [f32],
    blocks: &[std::ops::Range<usize>],
) -> Vec<&'a mut [f32]> {
    blocks
        .iter()
        .map(|r| {
            let n = r.len().min(rest.len());
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            head
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drop::Direction;

    #[test]
    fn blocks_cover_params_contiguously() {
        let l = Layout::new(5, Mode::Dedicated { servers: 3 }, 10, 0).unwrap();
        assert_eq!(l.blocks(), &[0..4, 4..7, 7..10]);
        assert_eq!(l.workers(), 3..5);
        assert_eq!(l.worker_index(4), Some(1));
        assert_eq!(l.worker_index(1), None);
        assert!(l.is_server(2) && !l.is_server(3));
    }

    #[test]
    fn role_errors() {
        assert_eq!(
            Layout::new(2, Mode::Dedicated { servers: 2 }, 10, 0).unwrap_err(),
            LayoutError::NoWorkers {
                servers: 2,
                size: 2,
                need: 3
            }
        );
        assert_eq!(
            Layout::new(2, Mode::Dedicated { servers: 0 }, 10, 0).unwrap_err(),
            LayoutError::NoServers
        );
        assert!(matches!(
            Layout::new(4, Mode::Colocated, 3, 0),
            Err(LayoutError::TooManyBlocks { .. })
        ));
    }

    #[test]
    fn colocated_owners_are_a_seeded_permutation() {
        let l = Layout::new(6, Mode::Colocated, 100, 9).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut changed = false;
        for step in 0..20 {
            l.owners_into(step, &mut a);
            l.clone().owners_into(step, &mut b);
            assert_eq!(a, b);
            let mut sorted = a.clone();
            sorted.sort();
            assert_eq!(sorted, (0..6).collect::<Vec<_>>());
            changed |= a != (0..6).collect::<Vec<_>>();
        }
        assert!(changed, "assignment never changed across 20 steps");
    }

    #[test]
    fn tags_unique_within_window() {
        let l = Layout::new(8, Mode::Colocated, 100, 0).unwrap();
        let mut seen = std::collections::HashSet::new();
        for step in 0..100 {
            for d in [Direction::Up, Direction::Down] {
                for b in 0..8 {
                    let t = l.tag(step, d, b);
                    assert!((0..=TAG_LIMIT as i32).contains(&t));
                    assert!(seen.insert(t), "tag {t} reused at step {step}");
                }
            }
        }
    }
}
