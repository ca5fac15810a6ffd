//! Causal multi-head self-attention over a fused `qkv` projection, with
//! optional dropout on the attention probabilities (as GPT-2 does).
//!
//! Two paths compute the same attention and differ in what they save for
//! the backward:
//! - unfused ([`AttentionFwd`], [`AttentionBwd`]; fp32 or bf16): the softmax
//!   probabilities `att[B, heads, T, T]`, `4 B H T^2` bytes per layer, plus a
//!   workspace of that size;
//! - flash ([`FlashAttentionFwd`], [`FlashAttentionBwd`]; bf16): the
//!   per-row log-sum-exp `lse[B, heads, T]`, `4 B H T` bytes per layer (the
//!   output `out` is kept by the model anyway, as the next matmul's input),
//!   and the backward recomputes the probabilities from it.
//!
//! [`exact`] is the flash ops' meaning in f64, with the magnitudes that bound
//! a bf16 implementation's error.

pub mod exact;

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::{ensure, Result};

/// The largest head size the flash kernels take (they pad head sizes up to
/// 64 or 128 columns inside shared memory).
pub const FLASH_MAX_HEAD: usize = 128;

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

    /// Elements of `lse[B, heads, T]`: one per query row of every head.
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }

    /// The head size, `channels / heads`.
    pub fn head_size(&self) -> usize {
        self.channels / self.heads
    }

    fn describe(&self) -> String {
        format!(
            "B{} T{} C{} H{}",
            self.batch, self.seq, self.channels, self.heads
        )
    }
}

/// Inverted dropout on the attention probabilities: probability `(i, j)` of
/// head `h` in sequence `b` is kept iff
/// [`crate::rng::attention_dropout_keep`]`(seed, offset + b * heads + h, i, j, p)`,
/// and kept ones are scaled by `1 / (1 - p)`. The mask is never stored: the
/// backward draws it again from `(seed, offset)`. Several attention calls of
/// one step (the layers) take offsets `B * heads` apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDropout {
    pub p: f32,
    pub seed: u64,
    pub offset: u64,
}

impl AttnDropout {
    /// `1 / (1 - p)`, what kept probabilities are multiplied by.
    pub fn keep_scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }

    /// `(p, seed, offset)` as the kernels take them; no dropout is `p = 0`.
    pub fn args(dropout: Option<AttnDropout>) -> (f32, u64, u64) {
        dropout.map_or((0.0, 0, 0), |d| (d.p, d.seed, d.offset))
    }

    fn check(dropout: Option<AttnDropout>, op: &str) -> Result<()> {
        if let Some(d) = dropout {
            ensure!(
                (0.0..1.0).contains(&d.p),
                "{op}: attention dropout probability {} is not in [0, 1)",
                d.p
            );
        }
        Ok(())
    }
}

/// From `qkv[B, T, 3C]` (q, k, v each `C` wide, split into `heads` heads),
/// writes `out[B, T, C]` and saves the softmax probabilities
/// `att[B, heads, T, T]` (before dropout; zero above the diagonal) for the
/// backward. With dropout, `dropped` (`[B, heads, T, T]`, contents undefined
/// after) holds the dropped probabilities that multiply `v`. In bf16
/// every tensor is bf16: the scaled scores `q k^T / sqrt(hs)` are rounded to
/// bf16 in `att`, the softmax reads them and computes in fp32, the
/// probabilities are rounded to bf16 and `out = att v` once more; the
/// backward rounds `d(att) = dout v^T` and `d(scores)` (in `scratch`) and
/// each gradient it accumulates into `dqkv`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionFwd {
    pub out: View,
    pub att: View,
    pub dropped: Option<View>,
    pub qkv: View,
    pub shape: AttnShape,
    pub dropout: Option<AttnDropout>,
}

impl Contract for AttentionFwd {
    const NAME: &'static str = "attention_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (qkv, out, att) = self.shape.checked_lens(Self::NAME)?;
        AttnDropout::check(self.dropout, Self::NAME)?;
        ensure!(
            self.dropout.is_none() || self.dropped.is_some(),
            "{}: attention dropout needs the `dropped` workspace of [B, heads, T, T]",
            Self::NAME
        );
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, out),
                output("att", self.att, att),
                output("dropped", self.dropped, att),
                input("qkv", self.qkv, qkv),
            ],
        )
    }
    fn shape(&self) -> String {
        describe(&self.shape, self.dropout)
    }
}

/// `dqkv +=` the gradient; `scratch` is `[B, heads, T, T]` of workspace
/// whose contents are undefined before and after. `dropout` must be the
/// forward's.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBwd {
    pub dqkv: View,
    pub scratch: View,
    pub dout: View,
    pub qkv: View,
    pub att: View,
    pub shape: AttnShape,
    pub dropout: Option<AttnDropout>,
}

impl Contract for AttentionBwd {
    const NAME: &'static str = "attention_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (qkv, out, att) = self.shape.checked_lens(Self::NAME)?;
        AttnDropout::check(self.dropout, Self::NAME)?;
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
        describe(&self.shape, self.dropout)
    }
}

fn describe(shape: &AttnShape, dropout: Option<AttnDropout>) -> String {
    match dropout {
        Some(d) => format!("{} p={}", shape.describe(), d.p),
        None => shape.describe(),
    }
}

/// The flash path's only dtype so far: bf16 activations (tensor cores).
const FLASH_DTYPES: &[DType] = &[DType::BF16];

/// Checks the shape for the flash path: heads divide the channels, the
/// head size is at most [`FLASH_MAX_HEAD`]. Returns the lengths of `qkv`,
/// `out` and `lse`.
fn flash_lens(op: &str, shape: &AttnShape) -> Result<(usize, usize, usize)> {
    let (qkv, out, _) = shape.checked_lens(op)?;
    ensure!(
        shape.head_size() <= FLASH_MAX_HEAD,
        "{op}: head size {} ({} channels / {} heads) is above the {FLASH_MAX_HEAD} \
         the flash kernels take; use more heads or the unfused path",
        shape.head_size(),
        shape.channels,
        shape.heads
    );
    Ok((qkv, out, shape.rows()))
}

/// Flash attention's forward: from `qkv[B, T, 3C]` writes `out[B, T, C]`
/// (as [`AttentionFwd`], dropout included) and saves only
/// `lse[B, heads, T]` (f32): row `i`'s log-sum-exp `ln sum_{j <= i}
/// exp(q_i . k_j / sqrt(hs))` of the scores before dropout, from which the
/// backward recomputes the probabilities. Nothing of size `T x T` exists.
#[derive(Clone, Copy, Debug)]
pub struct FlashAttentionFwd {
    pub out: View,
    pub lse: View,
    pub qkv: View,
    pub shape: AttnShape,
    pub dropout: Option<AttnDropout>,
}

impl Contract for FlashAttentionFwd {
    const NAME: &'static str = "flash_attention_fwd";
    const FLOATS: &'static [DType] = FLASH_DTYPES;
    fn check(&self) -> Result<()> {
        let (qkv, out, rows) = flash_lens(Self::NAME, &self.shape)?;
        AttnDropout::check(self.dropout, Self::NAME)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, out),
                output("lse", self.lse, rows).of(DType::F32),
                input("qkv", self.qkv, qkv),
            ],
        )
    }
    fn shape(&self) -> String {
        describe(&self.shape, self.dropout)
    }
}

/// Flash attention's backward: `dqkv +=` the gradient, from the forward's
/// `out` and `lse` (and its `dropout`). `delta[B, heads, T]` (f32) is
/// workspace, undefined before and after (it holds `rowsum(dout * out)`).
#[derive(Clone, Copy, Debug)]
pub struct FlashAttentionBwd {
    pub dqkv: View,
    pub delta: View,
    pub dout: View,
    pub out: View,
    pub lse: View,
    pub qkv: View,
    pub shape: AttnShape,
    pub dropout: Option<AttnDropout>,
}

impl Contract for FlashAttentionBwd {
    const NAME: &'static str = "flash_attention_bwd";
    const FLOATS: &'static [DType] = FLASH_DTYPES;
    fn check(&self) -> Result<()> {
        let (qkv, out, rows) = flash_lens(Self::NAME, &self.shape)?;
        AttnDropout::check(self.dropout, Self::NAME)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dqkv", self.dqkv, qkv),
                output("delta", self.delta, rows).of(DType::F32),
                input("dout", self.dout, out),
                input("out", self.out, out),
                input("lse", self.lse, rows).of(DType::F32),
                input("qkv", self.qkv, qkv),
            ],
        )
    }
    fn shape(&self) -> String {
        describe(&self.shape, self.dropout)
    }
}
