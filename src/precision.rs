//! The numeric precision of a run (`--precision fp32|bf16`).
//!
//! **fp32** is stage 1's numerics: every tensor is f32.
//!
//! **bf16** is mixed precision. What stays fp32, and why:
//! - each live slot's master weights and AdamW moments, and every weight
//!   gradient: an update of `lr * m / sqrt(v)` is often below bf16's 8-bit
//!   resolution of the weight it adds to, and several tied layers add their
//!   gradients into one slot gradient; in bf16 both would lose most of what
//!   they add;
//! - LayerNorm's mean and rstd, the softmax and cross-entropy, the losses,
//!   and every reduction (kernels accumulate in f32): these are sums over
//!   hundreds to tens of thousands of terms.
//!
//! What is bf16: activations and their gradients, and each slot's *compute
//! copy* of its weights, which the matmuls, LayerNorms and embeddings read.
//! The AdamW kernel writes the copy in the same pass as the fp32 update;
//! tied layers point at one slot, so they read one copy. Checkpoints hold the
//! fp32 master weights only, so a run can move between precisions (and
//! between backends) on resume.

use crate::mem::DType;
use clap::ValueEnum;

/// `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// f32 everywhere (stage 1's numerics; the default on the CPU).
    Fp32,
    /// bf16 activations and compute copies of the weights, fp32 master
    /// weights, moments, gradients, statistics and reductions (the default
    /// on a GPU).
    Bf16,
}
crate::choice_text!(Precision, "precision");

impl Precision {
    /// The precision a run gets when none is asked for: bf16 on a GPU, fp32
    /// on the CPU and under the emulator (whose tests compare with the CPU
    /// in fp32 unless they ask for bf16). `backend` is `Backend::name`.
    pub fn default_for(backend: &str) -> Precision {
        match backend {
            "cuda" => Precision::Bf16,
            _ => Precision::Fp32,
        }
    }

    /// The dtype of activations and of the weights the ops read.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Whether weights need a compute copy beside their fp32 master.
    pub fn has_compute_copy(self) -> bool {
        self == Precision::Bf16
    }
}
