//! What a run records: per-step counters reduced over ranks and appended by rank 0,
//! evaluations of the averaged model (reliable collectives: measurement, not training
//! traffic), the progress line, and the end of the run (per-link totals, results).

use anyhow::Context;
use log::{debug, info};
use ndarray::{Array2, ArrayView4};

use super::outcome::{Failure, Summary};
use super::run::Run;
use super::setup::EVAL_BATCH;
use crate::comm::Transport;
use crate::metrics::attrs::{self, AttrValue};
use crate::metrics::schema::{ACCURACY, LINK_MATRICES, LOSS};
use crate::metrics::{EvalRecord, StepRow};

impl<T: Transport + ?Sized> Run<'_, T> {
    /// Reduces the pending per-step counters over ranks; rank 0 appends the rows (and
    /// the drop trace) to the metrics file. Collective.
    pub(super) fn flush_steps(&mut self, done: u64) -> Result<Vec<StepRow>, Failure> {
        self.net.allreduce_sum_f64(&mut self.pending);
        let rows = StepRow::rows(&self.pending, done, self.net.size());
        self.pending.clear();
        for r in &rows {
            self.totals.add(&r.sum);
        }
        if let Some(w) = &self.writer {
            w.append_steps(&rows)?;
            if let Some(trace) = &mut self.trace {
                w.append_trace(trace)?;
                trace.clear();
            }
        }
        Ok(rows)
    }

    /// Evaluates the average of the worker replicas on the test set, and the consensus
    /// distance. Collective.
    pub(super) fn evaluate(&mut self, done: u64) -> Result<EvalRecord, Failure> {
        self.average_replicas();
        // [consensus sum, test loss sum, correct, count]
        let mut stats = [0f64; 4];
        if let Some(w) = &self.setup.worker {
            let r = &self.replica;
            stats[0] = r
                .params
                .iter()
                .zip(&r.average)
                .map(|(&x, &a)| ((x - a) as f64).powi(2))
                .sum();
            let (test, i) = (&w.test, w.test.info);
            let indices: Vec<usize> = (0..test.len()).collect();
            let batch = &mut self.batch;
            for chunk in indices.chunks(EVAL_BATCH) {
                test.fill_batch(chunk, &mut batch.images, &mut batch.labels);
                let view = ArrayView4::from_shape(
                    (chunk.len(), i.channels, i.height, i.width),
                    &batch.images,
                )
                .context("evaluation batch")?;
                let b = self
                    .setup
                    .model
                    .eval_batch(&r.average, view, &batch.labels)
                    .with_context(|| format!("evaluation after step {done}"))?;
                self.progress.tick();
                stats[1] += b.loss_sum;
                stats[2] += b.correct as f64;
                stats[3] += b.count as f64;
            }
        }
        self.net.allreduce_sum_f64(&mut stats);
        self.progress.tick();
        Ok(EvalRecord {
            step: done,
            consensus_distance: stats[0] / self.setup.layout.num_workers() as f64,
            test_loss: stats[1] / stats[3].max(1.0),
            test_accuracy: stats[2] / stats[3].max(1.0),
            wall_s: self.clock.elapsed().as_secs_f64(),
        })
    }

    /// Rank 0: writes the evaluation, flushes the file, logs a progress line.
    pub(super) fn report(&mut self, rows: &[StepRow], e: &EvalRecord) -> Result<(), Failure> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        w.append_eval(e)?;
        w.flush()?;
        let n = rows.len() as f64;
        let mean = |f: fn(&StepRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
        // No rows: the evaluation a stop skipped, made by the resumed run.
        let train = match rows.is_empty() {
            true => "train loss - acc -".to_string(),
            false => format!(
                "train loss {:.4} acc {:.3}",
                mean(LOSS.value),
                mean(ACCURACY.value)
            ),
        };
        let (s, t) = (&self.setup, &self.totals);
        info!(
            "step {}/{} (epoch {:.2}): {train} | test loss {:.4} acc {:.4} | consensus {:.3e} | dropped {}/{} {} | {:.1} s",
            e.step,
            s.total_steps,
            e.step as f64 / s.steps_per_epoch as f64,
            e.test_loss,
            e.test_accuracy,
            e.consensus_distance,
            t.packets_dropped(),
            t.packets_attempted(),
            self.cfg.drop_unit(),
            e.wall_s
        );
        Ok(())
    }

    /// Every rank's per-link counters, gathered on rank 0 into servers × workers
    /// matrices (row: server index, column: worker index), in the order of
    /// [`LINK_MATRICES`]; `None` on the other ranks. Collective.
    fn link_matrices(&self) -> Option<[Array2<u64>; 6]> {
        let layout = &self.setup.layout;
        let (size, servers, workers) = (layout.size(), layout.num_servers(), layout.workers());
        let (up, down) = self.exchange.link_counts();
        let mine: Vec<u8> = [&up.sent, &up.dropped, &up.received]
            .into_iter()
            .chain([&down.sent, &down.dropped, &down.received])
            .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        let all = self.net.gather_bytes(&mine)?;
        // Rank r's counter k (0..6) for peer p.
        let at = |r: usize, k: usize, p: usize| {
            let i = 8 * ((r * 6 + k) * size + p);
            u64::from_le_bytes(all[i..i + 8].try_into().unwrap_or_default())
        };
        // Uplink: worker w sends to server s, s receives; downlink the other way.
        let matrix = |f: &dyn Fn(usize, usize) -> u64| {
            Array2::from_shape_fn((servers, workers.len()), |(s, w)| f(s, workers.start + w))
        };
        let sent_up = matrix(&|s, w| at(w, 0, s));
        let dropped_up = matrix(&|s, w| at(w, 1, s));
        let missed_up = &sent_up - &matrix(&|s, w| at(s, 2, w));
        let sent_down = matrix(&|s, w| at(s, 3, w));
        let dropped_down = matrix(&|s, w| at(s, 4, w));
        let missed_down = &sent_down - &matrix(&|s, w| at(w, 5, s));
        Some([
            sent_up,
            dropped_up,
            missed_up,
            sent_down,
            dropped_down,
            missed_down,
        ])
    }

    /// The end of a run: per-link totals, peak memory, the saved model and the results
    /// in the metrics file, which is closed. Collective.
    pub(super) fn finish(&mut self, last: EvalRecord) -> Result<Summary, Failure> {
        let wall_s = self.clock.elapsed().as_secs_f64();
        let links = self.link_matrices();
        let peak_rss = max_over_ranks(self.net, crate::bench::peak_rss_bytes().unwrap_or(0));
        if let Some(w) = self.writer.take() {
            w.set_attr(attrs::PEAK_RSS_BYTES_MAX.name, &peak_rss.into())?;
            let workers = self.setup.layout.workers();
            let cols = format!("worker ranks {}..{}", workers.start, workers.end);
            let rows = format!("server ranks 0..{}", self.setup.layout.num_servers());
            for (m, matrix) in LINK_MATRICES.iter().zip(links.iter().flatten()) {
                w.write_matrix(m.name, matrix, &rows, &cols)?;
            }
            if let Some(p) = &self.cfg.save_model {
                super::outputs::save_model(p, &*self.setup.model, &self.replica.average)?;
                w.set_attr(attrs::SAVED_MODEL.name, &p.display().to_string().into())?;
            }
            let results: [(&str, AttrValue); 6] = [
                (attrs::FINAL_TEST_ACCURACY.name, last.test_accuracy.into()),
                (attrs::FINAL_TEST_LOSS.name, last.test_loss.into()),
                (
                    attrs::FINAL_CONSENSUS_DISTANCE.name,
                    last.consensus_distance.into(),
                ),
                (attrs::WALL_TIME_S.name, wall_s.into()),
                (attrs::STEPS_COMPLETED.name, last.step.into()),
                (attrs::STATUS.name, attrs::COMPLETED.into()),
            ];
            for (name, v) in &results {
                w.set_attr(name, v)?;
            }
            w.close()?;
        }
        debug!("rank {} finished", self.net.rank());
        Ok(Summary {
            steps: last.step,
            test_loss: last.test_loss,
            test_accuracy: last.test_accuracy,
            consensus_distance: last.consensus_distance,
            wall_s,
            dropped: self.totals.packets_dropped(),
            attempted: self.totals.packets_attempted(),
        })
    }
}

/// The largest of every rank's `value` (a collective: all ranks call it).
fn max_over_ranks<T: Transport + ?Sized>(t: &T, value: u64) -> u64 {
    t.allgather_bytes(&value.to_le_bytes())
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .max()
        .unwrap_or(0)
}
