//! Launchers of kernels/gemm/: the matmul ops, and [`Gemm`], the one
//! general product that attention's launcher uses too.

use super::KernelOp;
use crate::cuda::launch::{to_i32, Args, KernelParams, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::mem::{DType, View};
use crate::ops::matmul::{MatmulBwd, MatmulFwd};
use anyhow::{ensure, Result};

const SIMT: KernelId = kernel_id!(gemm, simt);
const BIAS_GRAD: KernelId = kernel_id!(gemm, bias_grad);

/// Threads of `gemm_bias_grad` (32 columns x 16 warps) and columns per block.
const BIAS_THREADS: u32 = 512;
const BIAS_COLS: usize = 32;
/// Output tile of `gemm_simt` (square) and its threads per block.
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;
/// `causal` of `gemm_simt`: which triangle a product may skip (see the kernel).
pub const GEMM_DENSE: i32 = 0;
pub const GEMM_OUT_LOWER: i32 = 1;
pub const GEMM_A_LOWER: i32 = 2;
pub const GEMM_A_UPPER: i32 = 3;

/// The `GemmParams` struct of the kernel, field for field (passed by value
/// as the kernel's one parameter).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    c: u64,
    a: u64,
    b: u64,
    bias: u64,
    strides: [u64; 6],
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    trans_a: i32,
    trans_b: i32,
    accumulate: i32,
    causal: i32,
    batch_inner: i32,
    alpha: f32,
}
// The kernel asserts the same size for its struct.
const _: () = assert!(std::mem::size_of::<GemmParams>() == 128);

impl KernelParams for GemmParams {
    const C_NAME: &'static str = "GemmParams";
}

/// One general product: `C (+)= alpha op(A) op(B) + bias`, each operand
/// given as (address, row stride of the stored matrix, stored transposed),
/// for a batch of products.
pub struct Gemm {
    pub c: (u64, usize),
    pub a: (u64, usize, bool),
    pub b: (u64, usize, bool),
    pub bias: u64,
    pub alpha: f32,
    pub accumulate: bool,
    pub causal: i32,
    /// (outer count, inner count, [a, b, c] (outer, inner) strides in
    /// elements): grid z runs over outer x inner products.
    pub batch: (usize, usize, [(usize, usize); 3]),
    /// The element type of every operand.
    pub dtype: DType,
}

impl Gemm {
    pub fn new(
        c: (u64, usize),
        a: (u64, usize, bool),
        b: (u64, usize, bool),
        dtype: DType,
    ) -> Self {
        Gemm {
            c,
            a,
            b,
            bias: 0,
            alpha: 1.0,
            accumulate: false,
            causal: GEMM_DENSE,
            batch: (1, 1, [(0, 0); 3]),
            dtype,
        }
    }

    /// Launches the product as `[m, n, k]`, once per batch entry.
    pub fn launch(&self, l: &Launcher, [m, n, k]: [usize; 3]) -> Result<()> {
        let (outer, inner, s) = self.batch;
        let batches = outer * inner;
        if m == 0 || n == 0 || batches == 0 {
            return Ok(());
        }
        let grid = [n.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE), batches];
        ensure!(
            grid[1] <= 65535 && grid[2] <= 65535 && grid[0] <= i32::MAX as usize,
            "a {m} x {n} product over {batches} batches needs a grid of {grid:?} blocks, \
             beyond CUDA's limits"
        );
        let p = GemmParams {
            c: self.c.0,
            a: self.a.0,
            b: self.b.0,
            bias: self.bias,
            strides: [s[0].0, s[0].1, s[1].0, s[1].1, s[2].0, s[2].1].map(|x| x as u64),
            m: to_i32("m", m)?,
            n: to_i32("n", n)?,
            k: to_i32("k", k)?,
            lda: to_i32("lda", self.a.1)?,
            ldb: to_i32("ldb", self.b.1)?,
            ldc: to_i32("ldc", self.c.1)?,
            trans_a: self.a.2 as i32,
            trans_b: self.b.2 as i32,
            accumulate: self.accumulate as i32,
            causal: self.causal,
            batch_inner: inner as i32,
            alpha: self.alpha,
        };
        let dims = LaunchDims {
            grid: grid.map(|x| x as u32),
            block: [GEMM_THREADS, 1, 1],
            shared_bytes: 0,
        };
        l.launch(&SIMT, self.dtype, dims, Args::new().params(&p))
    }
}

impl KernelOp for MatmulFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        // out[n, oc] = inp[n, ic] @ weight^T + bias, weight stored [oc, ic].
        let mut g = Gemm::new(
            (self.out.addr, oc),
            (self.inp.addr, ic, false),
            (self.weight.addr, ic, true),
            self.out.dtype,
        );
        g.bias = self.bias.map_or(0, |b| b.addr);
        g.launch(l, [n, oc, ic])
    }
}

impl KernelOp for MatmulBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        let dtype = self.dout.dtype;
        if let Some(dinp) = self.dinp {
            // dinp[n, ic] += dout[n, oc] @ weight[oc, ic]
            let mut g = Gemm::new(
                (dinp.addr, ic),
                (self.dout.addr, oc, false),
                (self.weight.addr, ic, false),
                dtype,
            );
            g.accumulate = true;
            g.launch(l, [n, ic, oc])?;
        }
        if let Some(dweight) = self.dweight {
            // dweight[oc, ic] += dout^T @ inp[n, ic], dout stored [n, oc]. Tied
            // blocks accumulate into one slot's dweight this way.
            let mut g = Gemm::new(
                (dweight.addr, ic),
                (self.dout.addr, oc, true),
                (self.inp.addr, ic, false),
                dtype,
            );
            g.accumulate = true;
            g.launch(l, [oc, ic, n])?;
        }
        if let (Some(dbias), true) = (self.dbias, n > 0 && oc > 0) {
            bias_grad(l, dbias, self.dout, n, oc)?;
        }
        Ok(())
    }
}

/// `dbias += ` the column sums of `dout[rows, cols]`.
fn bias_grad(l: &Launcher, dbias: View, dout: View, rows: usize, cols: usize) -> Result<()> {
    let args = Args::new()
        .ptr(dbias)
        .ptr(dout)
        .i32(to_i32("rows", rows)?)
        .i32(to_i32("out_ch", cols)?);
    let dims = LaunchDims::linear(cols.div_ceil(BIAS_COLS) as u32, BIAS_THREADS);
    l.launch(&BIAS_GRAD, dout.dtype, dims, args)
}
