//! Linear layers: `inp @ weight^T + bias`, the same with GELU fused, and
//! their backward.
//!
//! In mixed precision the activations, weights (the slots' bf16 compute
//! copies) and biases are bf16, products accumulate in fp32 and outputs are
//! rounded to bf16 once; the weight and bias gradients are fp32 in every
//! precision, so that every layer on a slot adds into the slot's fp32
//! gradient.

use super::check::{self, input, output, F32_BF16};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// `out[rows, out_ch] = inp[rows, in_ch] @ weight[out_ch, in_ch]^T + bias[out_ch]`.
#[derive(Clone, Copy, Debug)]
pub struct MatmulFwd {
    pub out: View,
    pub inp: View,
    pub weight: View,
    pub bias: Option<View>,
    pub rows: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

impl Contract for MatmulFwd {
    const NAME: &'static str = "matmul_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, n * oc),
                input("inp", self.inp, n * ic),
                input("weight", self.weight, oc * ic),
                input("bias", self.bias, oc),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("{}x{}->{}", self.rows, self.in_ch, self.out_ch)
    }
}

/// The MLP's first layer with its activation fused: `pre = inp @ weight^T +
/// bias` (kept for the GELU's backward) and `out = gelu(pre)`, GELU in the
/// tanh form of [`super::activation::GeluFwd`]. On the GPU in bf16 the
/// GEMM's epilogue does both, from the fp32 accumulator: `out` is GELU of
/// the unrounded `pre`, and only then are both rounded.
#[derive(Clone, Copy, Debug)]
pub struct MatmulGeluFwd {
    pub out: View,
    pub pre: View,
    pub inp: View,
    pub weight: View,
    pub bias: Option<View>,
    pub rows: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

impl Contract for MatmulGeluFwd {
    const NAME: &'static str = "matmul_gelu_fwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("out", self.out, n * oc),
                output("pre", self.pre, n * oc),
                input("inp", self.inp, n * ic),
                input("weight", self.weight, oc * ic),
                input("bias", self.bias, oc),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("{}x{}->{}", self.rows, self.in_ch, self.out_ch)
    }
}

/// `dinp += dout @ weight`, `dweight += dout^T @ inp`, `dbias += sum_rows
/// dout`, each only when given. `dweight` and `dbias` are fp32.
#[derive(Clone, Copy, Debug)]
pub struct MatmulBwd {
    pub dinp: Option<View>,
    pub dweight: Option<View>,
    pub dbias: Option<View>,
    pub dout: View,
    pub inp: View,
    pub weight: View,
    pub rows: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

impl Contract for MatmulBwd {
    const NAME: &'static str = "matmul_bwd";
    const FLOATS: &'static [DType] = F32_BF16;
    fn check(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                output("dinp", self.dinp, n * ic),
                output("dweight", self.dweight, oc * ic).of(DType::F32),
                output("dbias", self.dbias, oc).of(DType::F32),
                input("dout", self.dout, n * oc),
                input("inp", self.inp, n * ic),
                input("weight", self.weight, oc * ic),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("{}x{}->{}", self.rows, self.in_ch, self.out_ch)
    }
}
