//! One optimizer step: `grad_accum` micro-batches of forward + backward
//! with their own dropout seeds, then clipping and AdamW over the unique
//! live slots.

use super::setup::DROPOUT_STREAM;
use super::Trainer;
use crate::optim::clip_scale;
use crate::rng::HostRng;
use anyhow::{bail, Result};

/// The dropout seed of one micro-batch: a function of the run seed and the
/// position in the run only, so a resumed run draws the same masks.
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    HostRng::derive(seed ^ DROPOUT_STREAM, step << 16 | micro as u64).next_u64()
}

impl Trainer {
    /// One optimizer step; returns (mean loss, gradient norm).
    pub(super) fn train_step(&mut self) -> Result<(f32, f32)> {
        let t = &self.cfg.train;
        let (accum, batch, n_ctx) = (t.grad_accum, t.batch, self.cfg.model.n_ctx);
        self.opt.lr = self.schedule.lr(self.step as u32);
        self.model.zero_grads()?;
        let mut loss = 0.0f32;
        for micro in 0..accum {
            let b = self.batcher.next_batch();
            let seed = dropout_seed(t.seed, self.step, micro);
            let l = self.model.forward_backward(
                &b.inputs,
                &b.targets,
                batch,
                n_ctx,
                seed,
                1.0 / accum as f32,
            )?;
            loss += l / accum as f32;
        }
        // A non-finite loss or gradient ends the run before the update, so
        // the weights in memory stay those of the last step, and no
        // checkpoint is written from the diverged state.
        if !loss.is_finite() {
            bail!(
                "training diverged: the training loss is {loss} at step {}; {}",
                self.step,
                self.how_to_recover()
            );
        }
        let norm = self.opt.grad_norm(&self.model)?;
        if !norm.is_finite() {
            bail!(
                "training diverged: the gradient norm is {norm} at step {}; {}",
                self.step,
                self.how_to_recover()
            );
        }
        let t = &self.cfg.train;
        let scale = if t.grad_clip > 0.0 {
            clip_scale(norm, t.grad_clip)
        } else {
            1.0
        };
        self.opt.update(&self.model, scale)?;
        self.tokens_seen += (accum * batch * n_ctx) as u64;
        Ok((loss, norm))
    }
}
