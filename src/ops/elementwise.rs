//! Elementwise ops over equal-length views: fill, copy, cast, add, accumulate.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::{ensure, Result};

/// `dst[i] = value`.
#[derive(Clone, Copy, Debug)]
pub struct Fill {
    pub dst: View,
    pub value: f32,
}

impl Contract for Fill {
    const NAME: &'static str = "fill";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[output("dst", self.dst, self.dst.len)],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.dst.len)
    }
}

/// `dst = src`; `dst` may be exactly `src` (then nothing happens).
#[derive(Clone, Copy, Debug)]
pub struct CopyView {
    pub dst: View,
    pub src: View,
}

impl Contract for CopyView {
    const NAME: &'static str = "copy";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let n = check::same_len(Self::NAME, &[("dst", self.dst), ("src", self.src)])?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dst", self.dst, n).may_alias(&["src"]),
                input("src", self.src, n),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.dst.len)
    }
}

/// `dst = src` converted to `dst`'s float type (to bf16: round to nearest
/// even, as the kernels' `from_f32<bf16>` and the `half` crate do; to f32:
/// exact). Refreshes the bf16 compute copies of fp32 master weights.
#[derive(Clone, Copy, Debug)]
pub struct Cast {
    pub dst: View,
    pub src: View,
}

impl Contract for Cast {
    const NAME: &'static str = "cast";
    /// `dst`'s dtype; `src` is the other float type.
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let n = check::same_len(Self::NAME, &[("dst", self.dst), ("src", self.src)])?;
        ensure!(
            self.dst.dtype != self.src.dtype,
            "{}: dst and src are both {}; a cast converts between f32 and bf16 (copy copies)",
            Self::NAME,
            self.dst.dtype
        );
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dst", self.dst, n),
                input("src", self.src, n).one_of(F32_BF16),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("n={} {}->{}", self.dst.len, self.src.dtype, self.dst.dtype)
    }
}

/// `out = a + b` (the residual connection). `out` may be exactly `a` or `b`.
#[derive(Clone, Copy, Debug)]
pub struct Add {
    pub out: View,
    pub a: View,
    pub b: View,
}

impl Contract for Add {
    const NAME: &'static str = "add";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let n = check::same_len(
            Self::NAME,
            &[("out", self.out), ("a", self.a), ("b", self.b)],
        )?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, n).may_alias(&["a", "b"]),
                input("a", self.a, n),
                input("b", self.b, n),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.out.len)
    }
}

/// `dst += src` (the residual's backward, and gradient accumulation).
#[derive(Clone, Copy, Debug)]
pub struct Accumulate {
    pub dst: View,
    pub src: View,
}

impl Contract for Accumulate {
    const NAME: &'static str = "accumulate";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let n = check::same_len(Self::NAME, &[("dst", self.dst), ("src", self.src)])?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[output("dst", self.dst, n), input("src", self.src, n)],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.dst.len)
    }
}
