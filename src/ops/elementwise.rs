//! Elementwise ops over equal-length views: fill, copy, add, accumulate.

use super::check::{self, input, output, F32_ONLY};
use super::Contract;
use crate::mem::View;
use anyhow::Result;

/// `dst[i] = value`.
#[derive(Clone, Copy, Debug)]
pub struct Fill {
    pub dst: View,
    pub value: f32,
}

impl Contract for Fill {
    const NAME: &'static str = "fill";
    fn check(&self) -> Result<()> {
        check::operands(
            Self::NAME,
            F32_ONLY,
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
    fn check(&self) -> Result<()> {
        let n = check::same_len(Self::NAME, &[("dst", self.dst), ("src", self.src)])?;
        check::operands(
            Self::NAME,
            F32_ONLY,
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

/// `out = a + b` (the residual connection). `out` may be exactly `a` or `b`.
#[derive(Clone, Copy, Debug)]
pub struct Add {
    pub out: View,
    pub a: View,
    pub b: View,
}

impl Contract for Add {
    const NAME: &'static str = "add";
    fn check(&self) -> Result<()> {
        let n = check::same_len(
            Self::NAME,
            &[("out", self.out), ("a", self.a), ("b", self.b)],
        )?;
        check::operands(
            Self::NAME,
            F32_ONLY,
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
    fn check(&self) -> Result<()> {
        let n = check::same_len(Self::NAME, &[("dst", self.dst), ("src", self.src)])?;
        check::operands(
            Self::NAME,
            F32_ONLY,
            &[output("dst", self.dst, n), input("src", self.src, n)],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.dst.len)
    }
}
