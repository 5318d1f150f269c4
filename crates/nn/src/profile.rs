//! Optional per-stage wall-clock timing of a model's training step, for `rps bench`.
//! Off by default: a disabled [`Laps`] costs one branch per stage and never allocates, so
//! the training loop pays nothing for it. When on, [`Laps::lap`] charges the time since the
//! previous lap to the named stage; stages keep the order in which they first ran.

use std::time::Instant;

/// Accumulated seconds per named stage of a step.
#[derive(Debug, Default, Clone)]
pub struct Laps {
    on: bool,
    last: Option<Instant>,
    totals: Vec<(&'static str, f64)>,
}

impl Laps {
    /// Turns timing on or off; either way the accumulated totals are cleared.
    pub fn set_enabled(&mut self, on: bool) {
        self.on = on;
        self.last = None;
        self.totals.clear();
    }

    /// Starts the clock for the first stage of a step (no-op when disabled).
    pub fn start(&mut self) {
        if self.on {
            self.last = Some(Instant::now());
        }
    }

    /// Charges the time since the previous lap (or [`Laps::start`]) to `stage`.
    pub fn lap(&mut self, stage: &'static str) {
        let Some(last) = self.last else {
            return;
        };
        let now = Instant::now();
        let dt = (now - last).as_secs_f64();
        match self.totals.iter_mut().find(|(name, _)| *name == stage) {
            Some((_, total)) => *total += dt,
            None => self.totals.push((stage, dt)),
        }
        self.last = Some(now);
    }

    /// The totals since the last call (or since timing was enabled), then clears them.
    pub fn take(&mut self) -> Vec<(&'static str, f64)> {
        self.last = None;
        std::mem::take(&mut self.totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_records_nothing_and_enabled_keeps_stage_order() {
        let mut l = Laps::default();
        l.start();
        l.lap("a");
        assert!(l.take().is_empty());
        l.set_enabled(true);
        l.start();
        l.lap("b");
        l.lap("a");
        l.lap("b");
        let t = l.take();
        let names: Vec<&str> = t.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(t.iter().all(|(_, s)| *s >= 0.0));
        assert!(l.take().is_empty(), "take clears the totals");
    }
}
