//! LayerNorm over rows of `channels`.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// GPT-2's LayerNorm epsilon (BERT's is 1e-12; the model passes its own).
pub const LAYERNORM_EPS: f32 = 1e-5;

/// Normalizes each of `rows` rows of width `channels` (two passes: mean,
/// then the mean of squared deviations; `rstd = 1 / sqrt(var + eps)`) and
/// applies `weight` and `bias`; saves `mean` and `rstd` (one per row) for
/// the backward, which needs no epsilon of its own. In bf16 the rows,
/// weights and output are bf16; the statistics are fp32 and everything is
/// computed in fp32.
#[derive(Clone, Copy, Debug)]
pub struct LayernormFwd {
    pub out: View,
    pub mean: View,
    pub rstd: View,
    pub inp: View,
    pub weight: View,
    pub bias: View,
    pub rows: usize,
    pub channels: usize,
    pub eps: f32,
}

impl Contract for LayernormFwd {
    const NAME: &'static str = "layernorm_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, c) = rows_of(Self::NAME, self.rows, self.channels)?;
        check::nonnegative(Self::NAME, "epsilon", self.eps)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, n * c),
                output("mean", self.mean, n).of(DType::F32),
                output("rstd", self.rstd, n).of(DType::F32),
                input("inp", self.inp, n * c),
                input("weight", self.weight, c),
                input("bias", self.bias, c),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.channels)
    }
}

/// `dinp += ...`, and `dweight`/`dbias +=` their column sums when given
/// (`None` for a frozen block). `dweight` and `dbias` are fp32 in every
/// precision (a slot's gradient).
#[derive(Clone, Copy, Debug)]
pub struct LayernormBwd {
    pub dinp: View,
    pub dweight: Option<View>,
    pub dbias: Option<View>,
    pub dout: View,
    pub inp: View,
    pub weight: View,
    pub mean: View,
    pub rstd: View,
    pub rows: usize,
    pub channels: usize,
}

impl Contract for LayernormBwd {
    const NAME: &'static str = "layernorm_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, c) = rows_of(Self::NAME, self.rows, self.channels)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dinp", self.dinp, n * c),
                output("dweight", self.dweight, c).of(DType::F32),
                output("dbias", self.dbias, c).of(DType::F32),
                input("dout", self.dout, n * c),
                input("inp", self.inp, n * c),
                input("weight", self.weight, c),
                input("mean", self.mean, n).of(DType::F32),
                input("rstd", self.rstd, n).of(DType::F32),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.channels)
    }
}

/// `(rows, channels)` of a LayerNorm call, which needs at least one channel.
fn rows_of(op: &str, rows: usize, channels: usize) -> Result<(usize, usize)> {
    check::nonzero(op, "channels", channels)?;
    Ok((rows, channels))
}
