//! Launchers of kernels/gemm/: the matmul ops, and [`Gemm`], the one
//! general product that attention's launcher uses too. Every product goes
//! through [`Gemm::launch`], which picks the kernel by dtype and shape:
//! fp32 operands take the SIMT kernel (`gemm_simt_f32`); bf16 operands the
//! tensor-core kernel (`gemm_mma_<ab>_bf16`, [`mma_kernel`]), in its
//! cp.async form when the operands' addresses, leading dimensions and batch
//! strides allow 16-byte copies and in its `_unaligned` form otherwise. The
//! bf16 kernel's epilogues are used where they apply: bias, GELU keeping
//! the pre-activation (the MLP's first matmul) and accumulation into an
//! fp32 C (weight gradients, so that every layer on a slot adds into the
//! slot's fp32 gradient).

use super::KernelOp;
use crate::cuda::launch::{to_i32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::{
    GemmBf16Params, GemmParams, BIAS_COLS, BIAS_WARPS, GEMM_DENSE, GEMM_THREADS, GEMM_TILE, MMA_BM,
    MMA_BN, MMA_SMEM_BYTES, MMA_THREADS,
};
use crate::mem::{DType, View};
use crate::ops::activation::GeluFwd;
use crate::ops::matmul::{MatmulBwd, MatmulFwd, MatmulGeluFwd};
use anyhow::{bail, ensure, Result};

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
    /// `[N]` in the operands' dtype, or 0 for none.
    pub bias: u64,
    /// bf16 only: `C = gelu(v)` and the pre-activation `v` stored here
    /// (same layout and type as C), or 0 for no GELU.
    pub gelu_pre: u64,
    pub alpha: f32,
    pub accumulate: bool,
    pub causal: i32,
    /// (outer count, inner count, [a, b, c] (outer, inner) strides in
    /// elements): grid z runs over outer x inner products.
    pub batch: (usize, usize, [(usize, usize); 3]),
    /// The element type of A, B and the bias: picks the kernel.
    pub dtype: DType,
    /// The element type of C: `dtype`, or f32 for bf16 operands whose
    /// product accumulates into an fp32 gradient.
    pub c_dtype: DType,
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
            gelu_pre: 0,
            alpha: 1.0,
            accumulate: false,
            causal: GEMM_DENSE,
            batch: (1, 1, [(0, 0); 3]),
            dtype,
            c_dtype: dtype,
        }
    }

    /// Launches the product as `[m, n, k]`, once per batch entry.
    pub fn launch(&self, l: &Launcher, [m, n, k]: [usize; 3]) -> Result<()> {
        let (outer, inner, _) = self.batch;
        let batches = outer * inner;
        if m == 0 || n == 0 || batches == 0 {
            return Ok(());
        }
        match self.dtype {
            DType::F32 => self.launch_simt(l, [m, n, k]),
            DType::BF16 => self.launch_mma(l, [m, n, k]),
            DType::U32 => bail!("no GEMM multiplies u32 operands"),
        }
    }

    /// The grid: N tiles, M tiles, batches; within CUDA's limits.
    fn grid(&self, [m, n]: [usize; 2], [tile_m, tile_n]: [usize; 2]) -> Result<[u32; 3]> {
        let batches = self.batch.0 * self.batch.1;
        let grid = [n.div_ceil(tile_n), m.div_ceil(tile_m), batches];
        ensure!(
            grid[1] <= 65535 && grid[2] <= 65535 && grid[0] <= i32::MAX as usize,
            "a {m} x {n} product over {batches} batches needs a grid of {grid:?} blocks, \
             beyond CUDA's limits"
        );
        Ok(grid.map(|x| x as u32))
    }

    fn launch_simt(&self, l: &Launcher, [m, n, k]: [usize; 3]) -> Result<()> {
        ensure!(
            self.c_dtype == DType::F32 && self.gelu_pre == 0,
            "the fp32 GEMM writes an f32 C and has no GELU epilogue"
        );
        let s = self.batch.2;
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
            batch_inner: self.batch.1 as i32,
            alpha: self.alpha,
        };
        let tile = GEMM_TILE as usize;
        let dims = LaunchDims {
            grid: self.grid([m, n], [tile, tile])?,
            block: [GEMM_THREADS as u32, 1, 1],
            shared_bytes: 0,
        };
        l.launch(&SIMT, DType::F32, dims, Args::new().params(&p))
    }

    /// Whether the cp.async kernel can take A and B: 16-byte aligned base
    /// addresses, and leading dimensions and batch strides that keep every
    /// row 16-byte aligned (multiples of 8 bf16).
    fn aligned(&self) -> bool {
        let s = self.batch.2;
        let rows16 = |x: usize| x.is_multiple_of(8);
        self.a.0.is_multiple_of(16)
            && self.b.0.is_multiple_of(16)
            && rows16(self.a.1)
            && rows16(self.b.1)
            && [s[0].0, s[0].1, s[1].0, s[1].1].into_iter().all(rows16)
    }

    fn launch_mma(&self, l: &Launcher, [m, n, k]: [usize; 3]) -> Result<()> {
        ensure!(
            matches!(self.c_dtype, DType::BF16 | DType::F32),
            "the bf16 GEMM writes a bf16 or f32 C"
        );
        ensure!(
            self.gelu_pre == 0 || !self.accumulate,
            "the bf16 GEMM's GELU epilogue does not accumulate"
        );
        let s = self.batch.2;
        let p = GemmBf16Params {
            c: self.c.0,
            a: self.a.0,
            b: self.b.0,
            bias: self.bias,
            pre: self.gelu_pre,
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
            accumulate: self.accumulate as i32,
            gelu: (self.gelu_pre != 0) as i32,
            c_f32: (self.c_dtype == DType::F32) as i32,
            causal: self.causal,
            batch_inner: self.batch.1 as i32,
            alpha: self.alpha,
        };
        let dims = LaunchDims {
            grid: self.grid([m, n], [MMA_BM as usize, MMA_BN as usize])?,
            block: [MMA_THREADS as u32, 1, 1],
            shared_bytes: MMA_SMEM_BYTES as u32,
        };
        let kernel = mma_kernel(self.a.2, self.b.2, self.aligned());
        l.launch(kernel, DType::BF16, dims, Args::new().params(&p))
    }
}

/// `out[n, oc] = inp[n, ic] @ weight^T + bias` as a [`Gemm`] (weight stored
/// `[oc, ic]`: nt), in the dtype of `out`.
fn linear(out: View, inp: View, weight: View, bias: Option<View>, ic: usize, oc: usize) -> Gemm {
    let mut g = Gemm::new(
        (out.addr, oc),
        (inp.addr, ic, false),
        (weight.addr, ic, true),
        out.dtype,
    );
    g.bias = bias.map_or(0, |b| b.addr);
    g
}

impl KernelOp for MatmulFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        linear(self.out, self.inp, self.weight, self.bias, ic, oc).launch(l, [n, oc, ic])
    }
}

impl KernelOp for MatmulGeluFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        if self.out.dtype == DType::BF16 {
            // One launch: the epilogue stores both from the fp32 accumulator.
            let mut g = linear(self.out, self.inp, self.weight, self.bias, ic, oc);
            g.gelu_pre = self.pre.addr;
            return g.launch(l, [n, oc, ic]);
        }
        // fp32: the SIMT product into `pre`, then the GELU kernel.
        linear(self.pre, self.inp, self.weight, self.bias, ic, oc).launch(l, [n, oc, ic])?;
        GeluFwd {
            out: self.out.slice(0, n * oc),
            inp: self.pre.slice(0, n * oc),
        }
        .launch(l)
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
            // blocks accumulate into one slot's dweight this way; it is fp32
            // in every precision (the bf16 GEMM's fp32-C epilogue).
            let mut g = Gemm::new(
                (dweight.addr, ic),
                (self.dout.addr, oc, true),
                (self.inp.addr, ic, false),
                dtype,
            );
            g.c_dtype = dweight.dtype;
            g.accumulate = true;
            g.launch(l, [oc, ic, n])?;
        }
        if let (Some(dbias), true) = (self.dbias, n > 0 && oc > 0) {
            bias_grad(l, dbias, self.dout, n, oc)?;
        }
        Ok(())
    }
}

/// `dbias += ` the column sums of `dout[rows, cols]` (fp32 `dbias`, `dout`
/// f32 or bf16).
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
