//! Activations and dropout: elementwise, each with its backward.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// GELU, tanh approximation (GPT-2):
/// `out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[derive(Clone, Copy, Debug)]
pub struct GeluFwd {
    pub out: View,
    pub inp: View,
}

impl Contract for GeluFwd {
    const NAME: &'static str = "gelu_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        unary(Self::NAME, ("out", self.out), ("inp", self.inp))
    }
    fn shape(&self) -> String {
        format!("n={}", self.out.len)
    }
}

/// `dinp += gelu'(inp) * dout`.
#[derive(Clone, Copy, Debug)]
pub struct GeluBwd {
    pub dinp: View,
    pub inp: View,
    pub dout: View,
}

impl Contract for GeluBwd {
    const NAME: &'static str = "gelu_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        unary_bwd(Self::NAME, self.dinp, self.inp, self.dout)
    }
    fn shape(&self) -> String {
        format!("n={}", self.dinp.len)
    }
}

/// The exact GELU of BERT: `out = x Φ(x) = 0.5 x (1 + erf(x / sqrt(2)))`,
/// with the error function rather than GPT-2's tanh approximation.
#[derive(Clone, Copy, Debug)]
pub struct GeluErfFwd {
    pub out: View,
    pub inp: View,
}

impl Contract for GeluErfFwd {
    const NAME: &'static str = "gelu_erf_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        unary(Self::NAME, ("out", self.out), ("inp", self.inp))
    }
    fn shape(&self) -> String {
        format!("n={}", self.out.len)
    }
}

/// `dinp += (Φ(x) + x φ(x)) * dout`, the derivative of [`GeluErfFwd`]
/// (φ the standard normal density).
#[derive(Clone, Copy, Debug)]
pub struct GeluErfBwd {
    pub dinp: View,
    pub inp: View,
    pub dout: View,
}

impl Contract for GeluErfBwd {
    const NAME: &'static str = "gelu_erf_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        unary_bwd(Self::NAME, self.dinp, self.inp, self.dout)
    }
    fn shape(&self) -> String {
        format!("n={}", self.dinp.len)
    }
}

/// Inverted dropout: element `i` is kept iff
/// [`crate::rng::dropout_keep`]`(seed, offset + i, p)`, and kept elements
/// are scaled by `1 / (1 - p)` (`p == 1` drops everything). The mask is never
/// stored: the backward recomputes it from the same `(seed, offset)`.
#[derive(Clone, Copy, Debug)]
pub struct DropoutFwd {
    pub out: View,
    pub inp: View,
    pub p: f32,
    pub seed: u64,
    pub offset: u64,
}

impl Contract for DropoutFwd {
    const NAME: &'static str = "dropout_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        check::probability(Self::NAME, "dropout probability", self.p)?;
        unary(Self::NAME, ("out", self.out), ("inp", self.inp))
    }
    fn shape(&self) -> String {
        format!("n={} p={}", self.out.len, self.p)
    }
}

/// `dinp += mask * dout / (1 - p)`, the mask of [`DropoutFwd`] with the same
/// `(seed, offset)`.
#[derive(Clone, Copy, Debug)]
pub struct DropoutBwd {
    pub dinp: View,
    pub dout: View,
    pub p: f32,
    pub seed: u64,
    pub offset: u64,
}

impl Contract for DropoutBwd {
    const NAME: &'static str = "dropout_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        check::probability(Self::NAME, "dropout probability", self.p)?;
        unary(Self::NAME, ("dinp", self.dinp), ("dout", self.dout))
    }
    fn shape(&self) -> String {
        format!("n={} p={}", self.dinp.len, self.p)
    }
}

/// An elementwise map `out = f(inp)` over views of one length, in fp32 or
/// bf16 (computed in fp32 either way).
fn unary(op: &str, out: (&'static str, View), inp: (&'static str, View)) -> Result<()> {
    let n = check::same_len(op, &[out, inp])?;
    check::operands(
        op,
        F32_BF16,
        &[output(out.0, out.1, n), input(inp.0, inp.1, n)],
    )
}

/// The backward of an elementwise map: `dinp += f'(inp) * dout`.
fn unary_bwd(op: &str, dinp: View, inp: View, dout: View) -> Result<()> {
    let n = check::same_len(op, &[("dinp", dinp), ("inp", inp), ("dout", dout)])?;
    check::operands(
        op,
        F32_BF16,
        &[
            output("dinp", dinp, n),
            input("inp", inp, n),
            input("dout", dout, n),
        ],
    )
}
