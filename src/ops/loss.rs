//! The loss head: softmax and cross-entropy over the vocabulary.

use super::check::{self, input, output, F32_ONLY};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// Fused softmax + cross-entropy over `vocab` logits per row.
/// `losses[r] = -log softmax(logits[r])[targets[r]]`, or 0 where
/// `targets[r] == ignore_index`. When `dlogits` is given it receives
/// (overwrites, not accumulates) `(softmax - onehot) * grad_scale`, zero on
/// ignored rows; `dlogits` may be exactly `logits` (in place).
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxXent {
    pub losses: View,
    pub dlogits: Option<View>,
    pub logits: View,
    pub targets: View,
    pub rows: usize,
    pub vocab: usize,
    pub ignore_index: u32,
    pub grad_scale: f32,
}

impl Contract for SoftmaxXent {
    const NAME: &'static str = "softmax_xent";
    fn check(&self) -> Result<()> {
        let (n, v) = (self.rows, self.vocab);
        check::nonzero(Self::NAME, "vocabulary", v)?;
        check::operands(
            Self::NAME,
            F32_ONLY,
            &[
                output("losses", self.losses, n),
                output("dlogits", self.dlogits, n * v).may_alias(&["logits"]),
                input("logits", self.logits, n * v),
                input("targets", self.targets, n).of(DType::U32),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.vocab)
    }
}
