//! CPU reference of `ops::matmul`, and the strided gemm wrapper that
//! attention's products use too. bf16 operands are widened to f32 and the
//! products computed in f32 by the same code; bf16 outputs are rounded once
//! at the end (`dinp` after its accumulation), fp32 weight and bias
//! gradients are accumulated as they are.

use super::activation::gelu_fwd;
use super::{read_floats, write, write_floats, CpuOp};
use crate::ops::matmul::{MatmulBwd, MatmulFwd, MatmulGeluFwd};
use anyhow::Result;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

impl CpuOp for MatmulFwd {
    fn run(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let mut out = write_floats(self.out, n * oc);
            let bias = self.bias.map(|b| read_floats(b, oc));
            matmul_fwd(
                &mut out,
                &read_floats(self.inp, n * ic),
                &read_floats(self.weight, oc * ic),
                bias.as_deref(),
                n,
                ic,
                oc,
            );
            out.store();
        }
        Ok(())
    }
}

impl CpuOp for MatmulGeluFwd {
    fn run(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        // SAFETY: the contract check passed; see `read`. GELU reads the
        // fp32 product before `pre` is rounded (bf16), as the GEMM's
        // epilogue does.
        unsafe {
            let mut pre = write_floats(self.pre, n * oc);
            let bias = self.bias.map(|b| read_floats(b, oc));
            matmul_fwd(
                &mut pre,
                &read_floats(self.inp, n * ic),
                &read_floats(self.weight, oc * ic),
                bias.as_deref(),
                n,
                ic,
                oc,
            );
            let mut out = write_floats(self.out, n * oc);
            gelu_fwd(&mut out, &pre);
            out.store();
            pre.store();
        }
        Ok(())
    }
}

impl CpuOp for MatmulBwd {
    fn run(&self) -> Result<()> {
        let (n, ic, oc) = (self.rows, self.in_ch, self.out_ch);
        // SAFETY: the contract check passed; see `read`. `dweight` and
        // `dbias` are fp32 in every precision.
        unsafe {
            let mut dinp = self.dinp.map(|v| write_floats(v, n * ic));
            matmul_bwd(
                dinp.as_deref_mut(),
                self.dweight.map(|v| write(v, oc * ic)),
                self.dbias.map(|v| write(v, oc)),
                &read_floats(self.dout, n * oc),
                &read_floats(self.inp, n * ic),
                &read_floats(self.weight, oc * ic),
                n,
                ic,
                oc,
            );
            if let Some(d) = dinp {
                d.store();
            }
        }
        Ok(())
    }
}

/// A row-major matrix operand for [`matmul`]: base pointer and strides in
/// elements (`rs` between rows, `cs` between columns).
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) ptr: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

impl Mat {
    /// `rows x cols` row-major data.
    pub(super) fn rows(data: &[f32], cols: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
    /// The transpose of `rows x cols` row-major data (so `cols x rows`).
    pub(super) fn transposed(data: &[f32], cols: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`, accumulating when `accumulate`.
/// `dst` is row-major `m x n`; the operands were built from slices of at
/// least the sizes their strides reach, none overlapping `dst`.
fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` is an exclusive slice of at least m*n elements; the
    // operands are as this function's contract says.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            n,
            lhs,
            rhs,
            m,
            n,
            k,
            accumulate,
            Parallelism::Rayon(0),
        )
    };
}

/// [`matmul`] over raw memory: `dst` has row stride `dst_rs`.
///
/// # Safety
/// `dst` and the operands must be valid for every element their strides
/// reach for these sizes, and nothing else may access the `dst` elements or
/// write the operands during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    lhs: Mat,
    rhs: Mat,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    // gemm computes dst = alpha * dst + beta * lhs @ rhs, reading dst only
    // when asked to.
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

fn matmul_fwd(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    ic: usize,
    oc: usize,
) {
    if let Some(bias) = bias {
        out.par_chunks_mut(oc).for_each(|o| o.copy_from_slice(bias));
    }
    // out = inp @ weight^T (+ the bias already there)
    matmul(
        out,
        Mat::rows(inp, ic),
        Mat::transposed(weight, ic),
        rows,
        oc,
        ic,
        bias.is_some(),
    );
}

/// Bytes of dweight one task owns in the blocked weight-gradient product.
/// Whole-matrix gemm on the 50257-wide head keeps re-streaming a 51 MB
/// dweight through the caches (~90 GFLOP/s per core on the Xeon this was
/// tuned on, 2 MB L2); 1 MiB blocks that stay in L2 gave ~115 (benches/gemm.rs,
/// `lm_head bwd dweight`). Small enough for 1 MB-L2 cores too.
const DWEIGHT_BLOCK_BYTES: usize = 1 << 20;

#[allow(clippy::too_many_arguments)]
fn matmul_bwd(
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    ic: usize,
    oc: usize,
) {
    if let Some(dinp) = dinp {
        // dinp[rows, ic] += dout[rows, oc] @ weight[oc, ic]
        matmul(
            dinp,
            Mat::rows(dout, oc),
            Mat::rows(weight, ic),
            rows,
            ic,
            oc,
            true,
        );
    }
    if let Some(dweight) = dweight {
        // dweight[oc, ic] += dout^T[oc, rows] @ inp[rows, ic]
        let block_rows = (DWEIGHT_BLOCK_BYTES / (4 * ic)).max(1);
        if oc >= 4 * block_rows {
            // Wide outputs (the vocabulary head): one single-threaded product
            // per block of output rows, so each task's dweight block stays in
            // its core's L2 while all `rows` of the reduction stream past it.
            dweight
                .par_chunks_mut(block_rows * ic)
                .enumerate()
                .for_each(|(blk, dw)| {
                    let j0 = blk * block_rows;
                    // SAFETY: `dw` is this task's own rows j0.. of dweight;
                    // dout's columns j0..j0+n and `inp` are read-only here.
                    unsafe {
                        gemm_raw(
                            dw.as_mut_ptr(),
                            ic,
                            Mat::transposed(&dout[j0..], oc),
                            Mat::rows(inp, ic),
                            dw.len() / ic,
                            ic,
                            rows,
                            true,
                            Parallelism::None,
                        )
                    };
                });
        } else {
            matmul(
                dweight,
                Mat::transposed(dout, oc),
                Mat::rows(inp, ic),
                oc,
                ic,
                rows,
                true,
            );
        }
    }
    if let Some(dbias) = dbias {
        // Column sums; each task owns a block of columns and walks all rows
        // in order, so the sum order never depends on the thread count.
        const COLS: usize = 64;
        dbias
            .par_chunks_mut(COLS)
            .enumerate()
            .for_each(|(blk, db)| {
                let j0 = blk * COLS;
                for row in dout.chunks_exact(oc) {
                    for (d, g) in db.iter_mut().zip(&row[j0..]) {
                        *d += g;
                    }
                }
            });
    }
}
