//! Diagnostics of what the exchange does to the replicas (`--diag-every K`): the spread
//! of the worker replicas before it, the error it puts into their average, the consensus
//! distance after it, and the training loss of the average on a fixed subset. Sums are
//! taken in f64 through reliable collectives; nothing here touches the replicas, the
//! random streams or the traffic counters, so a run's trajectory is the same with or
//! without them.

use anyhow::Context;
use ndarray::ArrayView4;

use super::outcome::Failure;
use super::run::Run;
use crate::comm::Transport;
use crate::metrics::schema::DiagRecord;

/// Training samples (over all workers) the average's loss is measured on.
const DIAG_SAMPLES: usize = 1024;

/// What was measured before the exchange of a diagnosed step.
pub(super) struct Before {
    /// v̄, the average of the worker replicas after their local step.
    mean: Vec<f64>,
    spread: f64,
}

impl<T: Transport + ?Sized> Run<'_, T> {
    /// The average of the worker replicas in f64 and this rank's ‖x_i − x̄‖². Collective.
    fn replica_mean(&self) -> (Vec<f64>, f64) {
        let d = self.setup.model.num_params();
        let params = &self.replica.params;
        let mut mean = vec![0f64; d];
        if !params.is_empty() {
            mean.iter_mut()
                .zip(params)
                .for_each(|(m, &x)| *m = f64::from(x));
        }
        self.net.allreduce_sum_f64(&mut mean);
        let workers = self.setup.layout.num_workers() as f64;
        mean.iter_mut().for_each(|m| *m /= workers);
        let own: f64 = params
            .iter()
            .zip(&mean)
            .map(|(&x, &m)| (f64::from(x) - m).powi(2))
            .sum();
        (mean, own)
    }

    /// Before the exchange of a diagnosed step: v̄ and the spread. Collective.
    pub(super) fn diag_before(&self) -> Before {
        let (mean, own) = self.replica_mean();
        let mut spread = [own];
        self.net.allreduce_sum_f64(&mut spread);
        Before {
            mean,
            spread: spread[0] / self.setup.layout.num_workers() as f64,
        }
    }

    /// After the exchange of step `done`: the error of the average, the consensus, the
    /// loss of x̄; rank 0 appends the row. Collective.
    pub(super) fn diag_after(&mut self, done: u64, before: Before) -> Result<(), Failure> {
        let (mean, own) = self.replica_mean();
        let mean_error: f64 = mean
            .iter()
            .zip(&before.mean)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let average: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        // [consensus sum, loss sum, samples]
        let mut sums = [own, 0.0, 0.0];
        if let Some(w) = &self.setup.worker {
            let each = (DIAG_SAMPLES / self.setup.layout.num_workers()).max(1);
            let indices: Vec<usize> = (0..w.train.len().min(each)).collect();
            let (batch, i) = (&mut self.batch, w.train.info);
            for chunk in indices.chunks(super::setup::EVAL_BATCH) {
                w.train
                    .fill_batch(chunk, &mut batch.images, &mut batch.labels);
                let view = ArrayView4::from_shape(
                    (chunk.len(), i.channels, i.height, i.width),
                    &batch.images,
                )
                .context("diagnostic batch")?;
                let b = self
                    .setup
                    .model
                    .eval_batch(&average, view, &batch.labels)
                    .with_context(|| format!("diagnostics of step {done}"))?;
                sums[1] += b.loss_sum;
                sums[2] += b.count as f64;
            }
        }
        self.net.allreduce_sum_f64(&mut sums);
        let record = DiagRecord {
            step: done,
            spread: before.spread,
            mean_error,
            consensus: sums[0] / self.setup.layout.num_workers() as f64,
            avg_train_loss: sums[1] / sums[2].max(1.0),
        };
        if let Some(w) = &self.writer {
            w.append_diag(&record)?;
        }
        Ok(())
    }
}
