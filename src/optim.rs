//! AdamW over unique slots, gradient clipping, learning-rate schedules.
//!
//! The optimizer steps the global buffer and each *trainable live slot once*, however
//! many layers share it, applying weight decay per tensor as the layouts say
//! (matrices and embeddings decay; biases and LayerNorm weights do not).

use crate::mem::{Buffer, DType, View};
use crate::model::{Model, ParamEntry};
use crate::ops::elementwise::Fill;
use crate::ops::optimizer::{AdamWStep, Adamw, SumSquares};
use crate::ops::{Backend, BackendExt};
use anyhow::Result;

/// AdamW hyper-parameters and the step counter.
#[derive(Debug)]
pub struct AdamW {
    /// Set from an [`LrSchedule`] before each update.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Updates done so far (the next update is `step + 1`, 1-based).
    pub step: u32,
    /// One float for the global gradient norm.
    norm_acc: Buffer,
}

/// What a checkpoint saves besides the moments (which live in the slots).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWState {
    pub step: u32,
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
            norm_acc: backend.alloc(DType::F32, 1)?,
        })
    }

    pub fn state(&self) -> AdamWState {
        AdamWState { step: self.step }
    }

    pub fn load_state(&mut self, state: &AdamWState) {
        self.step = state.step;
    }

    /// The L2 norm of all gradients, each unique buffer counted once.
    pub fn grad_norm(&self, model: &Model) -> Result<f32> {
        let be = model.backend().as_ref();
        let acc = self.norm_acc.view();
        be.run(Fill {
            dst: acc,
            value: 0.0,
        })?;
        be.run(SumSquares {
            acc,
            x: model.globals().grads.view(),
        })?;
        for (_, slot) in model.slots().trainable_slots() {
            be.run(SumSquares {
                acc,
                x: slot.grads.view(),
            })?;
        }
        Ok(be.download::<f32>(acc)?[0].sqrt())
    }

    /// One update of every parameter; gradients are multiplied by
    /// `grad_scale` first (see [`clip_scale`]).
    pub fn update(&mut self, model: &Model, grad_scale: f32) -> Result<()> {
        self.step += 1;
        let be = model.backend().as_ref();
        let g = model.globals();
        self.update_buffer(
            be,
            model.global_layout().entries(),
            [
                g.params.view(),
                g.grads.view(),
                g.adam_m.view(),
                g.adam_v.view(),
            ],
            grad_scale,
        )?;
        for (_, s) in model.slots().trainable_slots() {
            let views = [
                s.params.view(),
                s.grads.view(),
                s.adam_m.view(),
                s.adam_v.view(),
            ];
            self.update_buffer(be, model.block_layout().entries(), views, grad_scale)?;
        }
        Ok(())
    }

    /// Clips to `max_norm` (when given) and updates; returns the norm before
    /// clipping.
    pub fn clip_and_update(&mut self, model: &Model, max_norm: Option<f32>) -> Result<f32> {
        let norm = self.grad_norm(model)?;
        let scale = max_norm.map_or(1.0, |clip| clip_scale(norm, clip));
        self.update(model, scale)?;
        Ok(norm)
    }

    /// Updates the tensors of one buffer, each with its own weight decay.
    fn update_buffer(
        &self,
        be: &dyn Backend,
        entries: &[ParamEntry],
        [p, g, m, v]: [View; 4],
        grad_scale: f32,
    ) -> Result<()> {
        for e in entries {
            let hp = AdamWStep {
                lr: self.lr,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if e.decays { self.weight_decay } else { 0.0 },
                step: self.step,
                grad_scale,
            };
            be.run(Adamw {
                params: e.view(p),
                grads: e.view(g),
                m: e.view(m),
                v: e.view(v),
                copy: None,
                hp,
            })?;
        }
        Ok(())
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
