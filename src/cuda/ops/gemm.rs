//! Launchers of kernels/gemm/: the matmul ops, and [`Gemm`], the one
//! general product that attention's launcher uses too. Every product goes
//! through [`Gemm::launch`], so that is where the choice of kernel by dtype
//! and shape belongs. Today every op is fp32 and takes the SIMT kernel; the
//! bf16 tensor-core kernels are registered here ([`mma_kernel`]) and their
//! tests launch them through the same checked path (`tests/kernels_gemm_bf16.rs`),
//! but `Gemm::launch` picks them only once the ops carry bf16 operands
//! (mixed precision).

use super::KernelOp;
use crate::cuda::launch::{to_i32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::{GemmParams, BIAS_COLS, BIAS_WARPS, GEMM_DENSE, GEMM_THREADS, GEMM_TILE};
use crate::mem::{DType, View};
use crate::ops::matmul::{MatmulBwd, MatmulFwd};
use anyhow::{ensure, Result};

const SIMT: KernelId = kernel_id!(gemm, simt);
const BIAS_GRAD: KernelId = kernel_id!(gemm, bias_grad);

/// The bf16 tensor-core GEMM (kernels/gemm/mma_bf16.cu, `GemmBf16Params`):
/// one kernel per operand layout, then the same four as `_unaligned`
/// fallbacks for operands 16-byte cp.async cannot copy.
static MMA: [KernelId; 8] = [
    kernel_id!(gemm, mma_nn),
    kernel_id!(gemm, mma_nt),
    kernel_id!(gemm, mma_tn),
    kernel_id!(gemm, mma_tt),
    kernel_id!(gemm, mma_nn_unaligned),
    kernel_id!(gemm, mma_nt_unaligned),
    kernel_id!(gemm, mma_tn_unaligned),
    kernel_id!(gemm, mma_tt_unaligned),
];

/// The bf16 GEMM kernel for A stored transposed (`[K, M]`) when `trans_a`,
/// B stored transposed (`[N, K]`) when `trans_b`. `aligned` asks for the
/// cp.async kernel, which needs A and B 16-byte aligned and their leading
/// dimensions and batch strides multiples of 8 elements; the other one
/// takes any operands, more slowly.
pub fn mma_kernel(trans_a: bool, trans_b: bool, aligned: bool) -> &'static KernelId {
    &MMA[4 * usize::from(!aligned) + 2 * usize::from(trans_a) + usize::from(trans_b)]
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
        let tile = GEMM_TILE as usize;
        let grid = [n.div_ceil(tile), m.div_ceil(tile), batches];
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
            a_outer: s[0].0 as u64,
            a_inner: s[0].1 as u64,
            b_outer: s[1].0 as u64,
            b_inner: s[1].1 as u64,
            c_outer: s[2].0 as u64,
            c_inner: s[2].1 as u64,
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
            block: [GEMM_THREADS as u32, 1, 1],
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
    // One warp-wide row of BIAS_COLS columns per warp.
    let threads = (BIAS_COLS * BIAS_WARPS) as u32;
    let dims = LaunchDims::linear(cols.div_ceil(BIAS_COLS as usize) as u32, threads);
    l.launch(&BIAS_GRAD, dout.dtype, dims, args)
}
