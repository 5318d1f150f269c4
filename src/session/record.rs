//! What a session records: the training values and evaluations its front end logs, the
//! attributes it sets, the per-step rows (reduced over ranks every
//! [`super::FLUSH_EVERY`] steps)
//! and the results at the end, in rank 0's metrics file.

use super::{Session, SessionError};
use crate::counters::StepCounters;
use crate::metrics::attrs::{self, AttrValue};
use crate::metrics::{EvalRecord, StepRow};

impl Session<'_> {
    /// Records this rank's training values for the step in progress (the next
    /// [`Session::step`]): the mean loss and the accuracy of `samples` samples. Adds up
    /// when called more than once for a step. Local.
    ///
    /// # Errors
    /// A non-finite loss, an accuracy outside [0, 1], no samples.
    pub fn log_train(
        &mut self,
        loss: f64,
        accuracy: f64,
        samples: u64,
    ) -> Result<(), SessionError> {
        if !loss.is_finite() {
            return Err(SessionError::local(format!(
                "log: loss {loss} is not a finite number"
            )));
        }
        if !(0.0..=1.0).contains(&accuracy) {
            return Err(SessionError::local(format!(
                "log: accuracy {accuracy} is outside [0, 1]"
            )));
        }
        if samples == 0 {
            return Err(SessionError::local("log: samples must be at least 1"));
        }
        self.logged.loss_sum += loss * samples as f64;
        self.logged.correct += (accuracy * samples as f64).round() as u64;
        self.logged.count += samples;
        Ok(())
    }

    /// Records an evaluation after `step` steps (rank 0's values are written; the other
    /// ranks' are ignored, so only rank 0 needs to evaluate). Local.
    ///
    /// # Errors
    /// A step not yet exchanged, non-finite values, an accuracy outside [0, 1]; the
    /// metrics file cannot be written.
    pub fn log_eval(
        &mut self,
        step: u64,
        test_loss: f64,
        test_accuracy: f64,
    ) -> Result<(), SessionError> {
        if step > self.done {
            return Err(SessionError::local(format!(
                "log: step {step} has not been exchanged yet ({} so far)",
                self.done
            )));
        }
        if !test_loss.is_finite() || !(0.0..=1.0).contains(&test_accuracy) {
            return Err(SessionError::local(format!(
                "log: test_loss {test_loss} must be finite and test_accuracy {test_accuracy} in [0, 1]"
            )));
        }
        let e = EvalRecord {
            step,
            test_loss,
            test_accuracy,
            consensus_distance: f64::NAN,
            wall_s: self.clock.elapsed().as_secs_f64(),
        };
        if let Some(w) = &self.writer {
            w.append_eval(&e)
                .and_then(|()| w.flush())
                .map_err(|e| SessionError::local(format!("{e:#}")))?;
        }
        self.last_eval = Some(e);
        Ok(())
    }

    /// Root attributes the front end records (the model it trains, its optimiser...):
    /// only names rps does not write itself. Rank 0 writes them; local.
    ///
    /// # Errors
    /// A name rps writes; before the first step (no file yet); a write failure.
    pub fn set_attr(&mut self, name: &str, value: AttrValue) -> Result<(), SessionError> {
        let taken = attrs::RUN_ATTRS.iter().map(|a| a.name);
        let taken: Vec<&str> = taken
            .chain(attrs::RESULT_ATTRS.iter().map(|a| a.name))
            .collect();
        let training = [
            attrs::MODEL.name,
            attrs::BATCH_SIZE.name,
            attrs::LR.name,
            attrs::MOMENTUM.name,
            attrs::WEIGHT_DECAY.name,
        ];
        if taken.contains(&name) && !training.contains(&name) {
            return Err(SessionError::local(format!(
                "attribute {name:?} is written by rps itself (a front end may set {} or names of its own)",
                training.join(", ")
            )));
        }
        if self.ready.is_none() {
            return Err(SessionError::local(
                "attributes go into the metrics file, which the first step creates: set them after it",
            ));
        }
        if let Some(w) = &self.writer {
            w.set_attr(name, &value)
                .map_err(|e| SessionError::local(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Reduces the pending step counters over the ranks; rank 0 writes the rows.
    /// Collective.
    pub(super) fn flush(&mut self) -> Result<(), SessionError> {
        let t = &*self.net;
        // Every rank flushes after the same steps, so the reduction has one length
        // everywhere.
        t.allreduce_sum_f64(&mut self.pending);
        let rows = StepRow::rows(&self.pending, self.done, t.size());
        self.pending.clear();
        let written = match &self.writer {
            Some(w) => {
                let trace = self.trace.as_mut();
                w.append_steps(&rows)
                    .and_then(|()| match trace {
                        Some(tr) if !tr.is_empty() => {
                            let r = w.append_trace(tr);
                            tr.clear();
                            r
                        }
                        _ => Ok(()),
                    })
                    .and_then(|()| w.flush())
            }
            None => Ok(()),
        };
        written.map_err(|e| SessionError::local(format!("{e:#}")))
    }

    /// Ends the session: writes the last rows and the results (the last logged
    /// evaluation; status `completed`, or left `running` when not `completed`, as for a
    /// job that died) and closes the metrics file. Collective; a second call does nothing.
    ///
    /// # Errors
    /// The metrics file cannot be written.
    pub fn close(&mut self, completed: bool) -> Result<(), SessionError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.quiesce();
        let late = std::mem::take(&mut self.late);
        if late > 0 && self.pending.len() >= StepCounters::LEN {
            // Stragglers drained at the end belong to the last step's row.
            let i = self.pending.len() - StepCounters::LEN + counter_index("late");
            self.pending[i] += late as f64;
        }
        self.flush()?;
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        let wall = self.clock.elapsed().as_secs_f64();
        let mut results: Vec<(&str, AttrValue)> = vec![
            (attrs::STEPS.name, self.done.into()),
            (attrs::STEPS_COMPLETED.name, self.done.into()),
            (attrs::WALL_TIME_S.name, wall.into()),
        ];
        if let Some(e) = &self.last_eval {
            results.push((attrs::FINAL_TEST_ACCURACY.name, e.test_accuracy.into()));
            results.push((attrs::FINAL_TEST_LOSS.name, e.test_loss.into()));
        }
        if completed {
            results.push((attrs::STATUS.name, attrs::COMPLETED.into()));
        }
        let written = results
            .iter()
            .try_for_each(|(name, v)| w.set_attr(name, v))
            .and_then(|()| w.close());
        written.map_err(|e| SessionError::local(format!("{e:#}")))
    }
}

/// Where a counter sits in [`StepCounters::to_flat`].
fn counter_index(name: &str) -> usize {
    StepCounters::NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no step counter {name}"))
}
