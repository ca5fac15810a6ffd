//! Causal multi-head self-attention over a fused `qkv` projection.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// Shape of a causal self-attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
    pub heads: usize,
}

impl AttnShape {
    /// Elements of `qkv[B, T, 3C]`, `out[B, T, C]` and `att[B, heads, T, T]`.
    pub fn lens(&self) -> (usize, usize, usize) {
        let (b, t, c) = (self.batch, self.seq, self.channels);
        (b * t * 3 * c, b * t * c, b * self.heads * t * t)
    }

    /// Checks that the heads divide the channels; returns [`AttnShape::lens`].
    fn checked_lens(&self, op: &str) -> Result<(usize, usize, usize)> {
        check::heads(op, self.channels, self.heads)?;
        Ok(self.lens())
    }

    fn describe(&self) -> String {
        format!(
            "B{} T{} C{} H{}",
            self.batch, self.seq, self.channels, self.heads
        )
    }
}

/// From `qkv[B, T, 3C]` (q, k, v each `C` wide, split into `heads` heads),
/// writes `out[B, T, C]` and saves the softmax probabilities
/// `att[B, heads, T, T]` (zero above the diagonal) for the backward. In bf16
/// every tensor is bf16: the scaled scores `q k^T / sqrt(hs)` are rounded to
/// bf16 in `att`, the softmax reads them and computes in fp32, the
/// probabilities are rounded to bf16 and `out = att v` once more; the
/// backward rounds `d(att) = dout v^T` and `d(scores)` (in `scratch`) and
/// each gradient it accumulates into `dqkv`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionFwd {
    pub out: View,
    pub att: View,
    pub qkv: View,
    pub shape: AttnShape,
}

impl Contract for AttentionFwd {
    const NAME: &'static str = "attention_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (qkv, out, att) = self.shape.checked_lens(Self::NAME)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, out),
                output("att", self.att, att),
                input("qkv", self.qkv, qkv),
            ],
        )
    }
    fn shape(&self) -> String {
        self.shape.describe()
    }
}

/// `dqkv +=` the gradient; `scratch` is `[B, heads, T, T]` of workspace
/// whose contents are undefined before and after.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBwd {
    pub dqkv: View,
    pub scratch: View,
    pub dout: View,
    pub qkv: View,
    pub att: View,
    pub shape: AttnShape,
}

impl Contract for AttentionBwd {
    const NAME: &'static str = "attention_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (qkv, out, att) = self.shape.checked_lens(Self::NAME)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dqkv", self.dqkv, qkv),
                output("scratch", self.scratch, att),
                input("dout", self.dout, out),
                input("qkv", self.qkv, qkv),
                input("att", self.att, att),
            ],
        )
    }
    fn shape(&self) -> String {
        self.shape.describe()
    }
}
