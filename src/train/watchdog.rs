//! The stall watchdog: a thread per rank that notices when the rank has made no
//! progress (no step, evaluation or checkpoint finished) for a while, says which peer it
//! is waiting for (a frozen or lost rank stalls every other one), and optionally ends
//! the job so that it does not hold its allocation until the time limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::comm::watch;

/// Ticks of progress, shared with the watchdog thread.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress(Arc<AtomicU64>);

impl Progress {
    /// Something finished: a step, an evaluation, a checkpoint.
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The watchdog of one rank; stops its thread when dropped.
pub(super) struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches `progress` of `rank`: warns after `warn` without a tick (then again at
    /// every multiple), and after `abort` prints an error and exits the process with
    /// status 1, which makes the launcher end the job. `None` turns either off.
    pub fn start(
        rank: usize,
        progress: &Progress,
        warn: Option<Duration>,
        abort: Option<Duration>,
    ) -> Option<Watchdog> {
        let first = warn.into_iter().chain(abort).min()?;
        let done = Arc::new(AtomicBool::new(false));
        let (flag, ticks) = (Arc::clone(&done), Arc::clone(&progress.0));
        let poll = (first / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name(format!("rank {rank} watchdog"))
            .spawn(move || {
                let (mut seen, mut since, mut warned) = (ticks.load(Ordering::Relaxed), Instant::now(), 0);
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(poll);
                    let now = ticks.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, since, warned) = (now, Instant::now(), 0);
                        continue;
                    }
                    let idle = since.elapsed();
                    let what = watch::describe(rank).unwrap_or_else(|| "computing".into());
                    if abort.is_some_and(|a| idle >= a) {
                        eprintln!(
                            "error [rank {rank}]: no progress for {:.0} s ({what}); ending the job (--stall-abort)",
                            idle.as_secs_f64()
                        );
                        std::process::exit(1);
                    }
                    if let Some(w) = warn {
                        let due = (idle.as_secs_f64() / w.as_secs_f64()) as u32;
                        if due > warned {
                            warned = due;
                            log::warn!(
                                "rank {rank}: no progress for {:.0} s ({what}); a rank may be stopped, lost or overloaded",
                                idle.as_secs_f64()
                            );
                        }
                    }
                }
            })
            .ok()?;
        Some(Watchdog {
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
