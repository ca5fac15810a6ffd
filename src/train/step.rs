//! One optimizer step: `grad_accum` micro-batches of forward + backward
//! with their own dropout seeds, then clipping and AdamW over the unique
//! live slots, all queued on the device with nothing read back.
//!
//! The step's loss and gradient norm stay in the optimizer's step
//! statistics on the device; a step whose loss or norm is not finite is
//! skipped there (AdamW changes no weight and no moment) and counted. The
//! host reads the statistics only where it needs them: at log steps and
//! checkpoints ([`Trainer::read_step_stats`]).

use super::setup::DROPOUT_STREAM;
use super::Trainer;
use crate::ops::elementwise::Fill;
use crate::ops::BackendExt;
use crate::optim::StepStats;
use crate::rng::HostRng;
use anyhow::{bail, Result};
use std::ops::Range;

/// A run whose last this many updates were all skipped has diverged: it
/// stops at the next log step rather than train on without learning.
pub const MAX_SKIPPED_IN_A_ROW: u64 = 8;

/// The dropout seed of one micro-batch: a function of the run seed and the
/// position in the run only, so a resumed run draws the same masks.
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    HostRng::derive(seed ^ DROPOUT_STREAM, step << 16 | micro as u64).next_u64()
}

impl Trainer {
    /// One optimizer step, queued on the device. A skipped update still
    /// advances the step, the learning-rate schedule, AdamW's bias
    /// correction and the data, exactly as an applied one does, so a run
    /// with a skipped step stays aligned with one without.
    pub(super) fn train_step(&mut self) -> Result<()> {
        let be = self.model.backend().clone();
        let graph = self.step_graph_applies();
        if graph {
            be.begin_graph_step()?;
        }
        self.queue_step()?;
        if graph {
            be.end_graph_step()?;
        }
        Ok(())
    }

    /// Whether this step runs under the step graph (captured once and
    /// replayed, see `cuda::graph`). Not with `--no-graph`, nor with
    /// dropout: its seeds are launch arguments that change every step, so
    /// every replay would fall back (they would have to move to device
    /// memory first). Nor on a step of the NaN test hook. Nor with
    /// replicas: their all-reduce (host threads, or NCCL calls) is not
    /// among the launches a graph records, so it is not captured yet.
    fn step_graph_applies(&self) -> bool {
        self.use_graph
            && self.cfg.model.dropout == 0.0
            && !self.poisoned_steps.contains(&self.step)
            && self.comm.world_size() == 1
    }

    /// The work of one step, queued on the device.
    fn queue_step(&mut self) -> Result<()> {
        let t = &self.cfg.train;
        let (accum, batch, n_ctx) = (t.grad_accum, t.batch, self.cfg.model.n_ctx);
        let be = self.model.backend().clone();
        self.opt.lr = self.schedule.lr(self.step as u32);
        self.model.zero_grads()?;
        self.opt.begin_step(be.as_ref())?;
        // With replicas, each trains on its rows of the global batch, with
        // dropout masks of its own, and the sums over replicas follow.
        let (rank, replicas) = (self.comm.rank(), self.comm.world_size());
        // The last micro-batch completes the gradients: with replicas, each
        // slot's is summed over them as soon as the backward pass leaves it.
        let overlap = self.overlapped_reduce();
        for micro in 0..accum {
            let b = self.batcher.next_batch();
            let (inputs, targets, rows) = self.my_rows(&b);
            let seed = dropout_seed(t.seed, self.step, micro * replicas + rank);
            if micro + 1 == accum {
                self.model
                    .set_grad_ready(overlap.as_ref().map(|(hook, _)| hook.clone()));
            }
            let pass = self.model.forward_backward_on_device(
                inputs,
                targets,
                rows,
                n_ctx,
                seed,
                1.0 / (accum * replicas) as f32,
                self.opt.loss_sum(),
            );
            // The hook holds the comm: drop it with the step.
            self.model.set_grad_ready(None);
            pass?;
        }
        let summed = overlap.map_or_else(Vec::new, |(_, done)| done.lock().unwrap().clone());
        self.reduce_over_replicas(&summed)?;
        if self.poisoned_steps.contains(&self.step) {
            be.run(Fill {
                dst: self.model.globals().grads.view().slice(0, 1),
                value: f32::NAN,
            })?;
        }
        let clip = (t.grad_clip > 0.0).then_some(t.grad_clip);
        self.opt.clip_and_update_on_device(&self.model, clip)?;
        self.tokens_seen += (accum * batch * n_ctx) as u64;
        Ok(())
    }

    /// Reads the step statistics back (one small download) and stops the
    /// run when its last [`MAX_SKIPPED_IN_A_ROW`] updates were skipped.
    pub(super) fn read_step_stats(&self) -> Result<StepStats> {
        let s = self.opt.read_stats(self.model.backend().as_ref())?;
        if s.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
            bail!(
                "training diverged: the last {} updates up to step {} were skipped (the training \
                 loss {} or the gradient norm {} is not finite); {}",
                s.skipped_in_a_row,
                self.step,
                s.loss,
                s.norm,
                self.how_to_recover()
            );
        }
        Ok(s)
    }

    /// Runs every step one op at a time (`--no-graph`) or, where the backend
    /// can, as a graph captured once and replayed (the default).
    pub fn set_step_graph(&mut self, on: bool) {
        self.use_graph = on;
    }

    /// For tests only: makes one gradient element NaN in each step of
    /// `steps` (0-based, after the backward passes), so that their updates
    /// are skipped.
    #[doc(hidden)]
    pub fn poison_gradients(&mut self, steps: Range<u64>) {
        self.poisoned_steps = steps;
    }
}
