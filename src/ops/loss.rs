//! The loss head: softmax and cross-entropy over the vocabulary.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::{ensure, Result};

/// Fused softmax + cross-entropy over the first `vocab` of the
/// `padded_vocab` logits of each row (the model pads its vocabulary to a
/// multiple of 128 for the matmul tiles, as llm.c does; the padding columns
/// take no part in the softmax). `losses[r] = -log softmax(logits[r,
/// ..vocab])[targets[r]]`, or 0 where `targets[r] == ignore_index`. When
/// `dlogits` is given it receives (overwrites, not accumulates)
/// `(softmax - onehot) * grad_scale`, zero on ignored rows and in the padding
/// columns; `dlogits` may be exactly `logits` (in place). The losses are
/// fp32 in every precision; with bf16 logits the softmax is computed in
/// fp32 and the gradient rounded to bf16.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxXent {
    pub losses: View,
    pub dlogits: Option<View>,
    pub logits: View,
    pub targets: View,
    pub rows: usize,
    pub vocab: usize,
    /// The logits' row length, at least `vocab`.
    pub padded_vocab: usize,
    pub ignore_index: u32,
    pub grad_scale: f32,
}

impl Contract for SoftmaxXent {
    const NAME: &'static str = "softmax_xent";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, v) = (self.rows, self.padded_vocab);
        check::nonzero(Self::NAME, "vocabulary", self.vocab)?;
        ensure!(
            self.padded_vocab >= self.vocab,
            "{}: the padded vocabulary {} is smaller than the vocabulary {}",
            Self::NAME,
            self.padded_vocab,
            self.vocab
        );
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("losses", self.losses, n).of(DType::F32),
                output("dlogits", self.dlogits, n * v).may_alias(&["logits"]),
                input("logits", self.logits, n * v),
                input("targets", self.targets, n).of(DType::U32),
            ],
        )
    }
    fn shape(&self) -> String {
        if self.padded_vocab == self.vocab {
            format!("{}x{}", self.rows, self.vocab)
        } else {
            format!(
                "{}x{} (padded {})",
                self.rows, self.vocab, self.padded_vocab
            )
        }
    }
}
