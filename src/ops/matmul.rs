//! Linear layers: `inp @ weight^T + bias` and its backward.

use super::check::{self, input, output, F32_ONLY};
use super::Contract;
use crate::mem::View;
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
    fn check(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        check::operands(
            Self::NAME,
            F32_ONLY,
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

/// `dinp += dout @ weight`, `dweight += dout^T @ inp`, `dbias += sum_rows
/// dout`, each only when given.
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
    fn check(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        check::operands(
            Self::NAME,
            F32_ONLY,
            &[
                output("dinp", self.dinp, n * ic),
                output("dweight", self.dweight, oc * ic),
                output("dbias", self.dbias, oc),
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
