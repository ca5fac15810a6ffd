//! The optimizer's passes over parameters: AdamW and the squared norm.

use super::check::{self, input, output, F32_ONLY};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// Hyper-parameters of one AdamW update (decoupled weight decay, bias
/// correction). `step` is 1-based. Gradients are multiplied by `grad_scale`
/// first (global-norm clipping).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
    pub grad_scale: f32,
}

/// One AdamW update of `params` from `grads`, moments `m` and `v`, all fp32
/// in every precision (master weights). In mixed precision `copy` receives
/// the updated weights rounded to bf16: the compute copy the matmuls read,
/// written in the same pass.
#[derive(Clone, Copy, Debug)]
pub struct Adamw {
    pub params: View,
    pub grads: View,
    pub m: View,
    pub v: View,
    pub copy: Option<View>,
    pub hp: AdamWStep,
}

impl Contract for Adamw {
    const NAME: &'static str = "adamw";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check::one_based(Self::NAME, "step", self.hp.step)?;
        let n = check::same_len(
            Self::NAME,
            &[
                ("params", self.params),
                ("grads", self.grads),
                ("m", self.m),
                ("v", self.v),
            ],
        )?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("params", self.params, n),
                output("m", self.m, n),
                output("v", self.v, n),
                output("copy", self.copy, n).of(DType::BF16),
                input("grads", self.grads, n),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.params.len)
    }
}

/// `acc[0] += sum(x^2)` (the global gradient norm, one buffer at a time).
#[derive(Clone, Copy, Debug)]
pub struct SumSquares {
    pub acc: View,
    pub x: View,
}

impl Contract for SumSquares {
    const NAME: &'static str = "sum_squares";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[output("acc", self.acc, 1), input("x", self.x, self.x.len)],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.x.len)
    }
}
