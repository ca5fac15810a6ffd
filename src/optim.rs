//! AdamW over unique slots, gradient clipping, learning-rate schedules.
//!
//! The optimizer steps the global buffer and each *trainable live slot once*, however
//! many layers share it, applying weight decay per tensor as the layouts say
//! (matrices and embeddings decay; biases and LayerNorm weights do not).

use crate::mem::{Buffer, DType, View};
use crate::model::Model;
use crate::ops::elementwise::Fill;
use crate::ops::optimizer::{
    adamw_list, stat, AdamWStep, AdamwMulti, AdamwTensor, FinishStep, SumSquares, SumTarget,
};
use crate::ops::{Backend, BackendExt};
use anyhow::Result;

/// AdamW hyper-parameters, the step counter and the step statistics.
#[derive(Debug)]
pub struct AdamW {
    /// Set from an [`LrSchedule`] before each update.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Updates done so far (the next update is `step + 1`, 1-based). A
    /// skipped update counts too: the bias correction follows the step
    /// count, as the learning-rate schedule does.
    pub step: u32,
    /// The step statistics on the device ([`stat`]): the loss and the
    /// gradient norm of the last step, its clip scale and skip flag, and
    /// the skip counters. Read only by [`AdamW::read_stats`].
    stats: Buffer,
    /// The device list of every tensor the update steps, uploaded again
    /// only when the live slots change.
    list: Option<TensorList>,
}

/// The tensor list of [`AdamwMulti`] on the device, with its host copy.
#[derive(Debug)]
struct TensorList {
    words: Vec<u32>,
    count: usize,
    max_len: usize,
    buffer: Buffer,
}

/// What a checkpoint saves besides the moments (which live in the slots).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWState {
    pub step: u32,
    /// Updates skipped so far (absent from checkpoints written before
    /// updates could be skipped). A checkpoint is never written right
    /// after a skipped update, so none are skipped in a row.
    #[serde(default)]
    pub skipped: u64,
}

/// The step statistics as the host reads them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The last step's mean training loss.
    pub loss: f32,
    /// Its gradient norm before clipping.
    pub norm: f32,
    /// Updates skipped in the run so far.
    pub skipped: u64,
    /// Updates skipped since the last applied one.
    pub skipped_in_a_row: u64,
}

impl AdamW {
    pub fn new(
        backend: &dyn Backend,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    ) -> Result<Self> {
        Ok(AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            stats: backend.alloc(DType::F32, stat::BUFFER_LEN)?,
            list: None,
        })
    }

    /// The state a checkpoint saves, with the skip count of `stats`
    /// ([`AdamW::read_stats`]).
    pub fn state(&self, stats: &StepStats) -> AdamWState {
        AdamWState {
            step: self.step,
            skipped: stats.skipped,
        }
    }

    pub fn load_state(&mut self, be: &dyn Backend, state: &AdamWState) -> Result<()> {
        self.step = state.step;
        let mut s = vec![0f32; stat::LEN];
        s[stat::SKIPPED] = state.skipped as f32;
        be.upload(self.stats.view().slice(0, stat::LEN), &s)
    }

    /// The one float a step's micro-batches add their share of the loss to
    /// (see [`Model::forward_backward_on_device`]).
    pub fn loss_sum(&self) -> SumTarget {
        SumTarget {
            acc: self.stats.view().slice(stat::LOSS, 1),
            scratch: self.sum_scratch(),
        }
    }

    /// The scratch of the step's deterministic sums ([`SumSquares`], and
    /// the loss's [`crate::ops::optimizer::SumScaled`]).
    pub fn sum_scratch(&self) -> View {
        self.stats
            .view()
            .slice(stat::SCRATCH, crate::ops::optimizer::SUM_SCRATCH_LEN)
    }

    /// Starts a step on the device: the loss sum back to 0.
    pub fn begin_step(&self, be: &dyn Backend) -> Result<()> {
        be.run(Fill {
            dst: self.loss_sum().acc,
            value: 0.0,
        })
    }

    /// Reads the step statistics back: one small download, done at log
    /// steps and checkpoints, never inside a step.
    pub fn read_stats(&self, be: &dyn Backend) -> Result<StepStats> {
        let s = be.download::<f32>(self.stats.view().slice(0, stat::LEN))?;
        Ok(StepStats {
            loss: s[stat::LOSS],
            norm: s[stat::NORM],
            skipped: s[stat::SKIPPED] as u64,
            skipped_in_a_row: s[stat::SKIPPED_IN_A_ROW] as u64,
        })
    }

    /// Sums the squared gradients into the statistics, each unique buffer
    /// counted once.
    fn sum_grad_squares(&self, model: &Model) -> Result<()> {
        let be = model.backend().as_ref();
        let acc = self.stats.view().slice(stat::NORM_SQ, 1);
        let scratch = self.sum_scratch();
        be.run(Fill {
            dst: acc,
            value: 0.0,
        })?;
        be.run(SumSquares {
            acc,
            scratch,
            x: model.globals().grads.view(),
        })?;
        for (_, slot) in model.slots().trainable_slots() {
            be.run(SumSquares {
                acc,
                scratch,
                x: slot.grads.view(),
            })?;
        }
        Ok(())
    }

    /// The end of a step, all on the device: the gradient norm, the clip
    /// scale for `max_norm` (when given), the skip flag when the step's
    /// loss or norm is not finite, and the update of every parameter
    /// (nothing changes when skipped). Nothing is read back.
    pub fn clip_and_update_on_device(
        &mut self,
        model: &Model,
        max_norm: Option<f32>,
    ) -> Result<()> {
        let be = model.backend().as_ref();
        self.sum_grad_squares(model)?;
        be.run(FinishStep {
            stats: self.stats.view(),
            max_norm: max_norm.unwrap_or(0.0),
        })?;
        self.step += 1;
        let hp = AdamWStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step: self.step,
        };
        // The learning rate and the step count go to the device as data
        // (queued, no wait), not as launch arguments: a captured step
        // replays with this step's values.
        let schedule = self.stats.view().slice(stat::DECAY, 3);
        be.upload_queued(schedule, &hp.schedule())?;
        let list = self.tensor_list(model)?;
        be.run(AdamwMulti {
            list: list.buffer.view(),
            count: list.count,
            max_len: list.max_len,
            stats: self.stats.view(),
            betas: hp.betas(),
        })
    }

    /// [`AdamW::clip_and_update_on_device`], then reads the norm back;
    /// returns the norm before clipping.
    pub fn clip_and_update(&mut self, model: &Model, max_norm: Option<f32>) -> Result<f32> {
        self.clip_and_update_on_device(model, max_norm)?;
        Ok(self.read_stats(model.backend().as_ref())?.norm)
    }

    /// The list of every tensor of the globals and of each trainable live
    /// slot, each with its own weight decay (and in mixed precision its
    /// compute copy); uploaded when it differs from the last one (at the
    /// first step and after a change of the tie table).
    fn tensor_list(&mut self, model: &Model) -> Result<&TensorList> {
        let mut tensors = Vec::new();
        let slots = std::iter::once((model.global_layout().entries(), model.globals())).chain(
            model
                .slots()
                .trainable_slots()
                .map(|(_, s)| (model.block_layout().entries(), s)),
        );
        for (entries, slot) in slots {
            tensors.extend(entries.iter().map(|e| AdamwTensor {
                params: e.view(slot.params.view()),
                grads: e.view(slot.grads.view()),
                m: e.view(slot.adam_m.view()),
                v: e.view(slot.adam_v.view()),
                copy: slot.compute.as_ref().map(|c| e.view(c.view())),
                decays: e.decays,
            }));
        }
        let (words, max_len) = adamw_list(&tensors)?;
        if self.list.as_ref().is_none_or(|l| l.words != words) {
            let be = model.backend().as_ref();
            let buffer = be.alloc(DType::U32, words.len().max(1))?;
            let view = buffer.view().slice(0, words.len());
            be.upload(view, &words)?;
            self.list = Some(TensorList {
                count: tensors.len(),
                max_len,
                words,
                buffer,
            });
        }
        Ok(self.list.as_ref().expect("built above"))
    }
}

/// The gradient multiplier that clips the global norm to `max_norm`
/// (PyTorch's `clip_grad_norm_`): `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_scale(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The learning rate as a function of the (0-based) step.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LrSchedule {
    Constant {
        lr: f32,
    },
    /// Linear from `max_lr / warmup` to `max_lr` over `warmup` steps, then
    /// cosine down to `min_lr` at `total` steps, and `min_lr` after.
    WarmupCosine {
        max_lr: f32,
        min_lr: f32,
        warmup: u32,
        total: u32,
    },
}

impl LrSchedule {
    pub fn lr(&self, step: u32) -> f32 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine {
                max_lr,
                min_lr,
                warmup,
                total,
            } => {
                if step < warmup {
                    return max_lr * (step + 1) as f32 / warmup as f32;
                }
                if step >= total {
                    return min_lr;
                }
                let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                min_lr + (max_lr - min_lr) * cos as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_scale_only_shrinks() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert!((clip_scale(4.0, 1.0) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn warmup_cosine_rises_then_falls_to_min() {
        let s = LrSchedule::WarmupCosine {
            max_lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-6);
        assert!((s.lr(9) - 1.0).abs() < 1e-6);
        assert!((s.lr(10) - 1.0).abs() < 1e-6);
        assert!((s.lr(60) - 0.55).abs() < 1e-6);
        assert!((s.lr(110) - 0.1).abs() < 1e-6);
        assert_eq!(s.lr(500), 0.1);
        let lrs: Vec<f32> = (10..=110).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(LrSchedule::Constant { lr: 3e-4 }.lr(77), 3e-4);
    }
}
