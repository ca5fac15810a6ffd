//! Launchers of kernels/attention/: causal attention the unfused way, its
//! six products on [`Gemm`] (one batch entry per (sequence, head), skipping
//! the tiles the causal mask makes zero) and the row-wise softmax between them.

use super::gemm::Gemm;
use super::KernelOp;
use crate::cuda::launch::{to_i32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::{ATTN_SOFTMAX_BLOCK, GEMM_A_LOWER, GEMM_A_UPPER, GEMM_OUT_LOWER};
use crate::mem::View;
use crate::ops::attention::{AttentionBwd, AttentionFwd, AttnShape};
use anyhow::{ensure, Result};

const SOFTMAX_FWD: KernelId = kernel_id!(attention, softmax_fwd);
const SOFTMAX_BWD: KernelId = kernel_id!(attention, softmax_bwd);

/// Attention sizes and the batch layout of its products.
struct AttnGeom {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    hs: usize,
}

impl AttnGeom {
    fn new(s: AttnShape) -> Self {
        AttnGeom {
            b: s.batch,
            t: s.seq,
            c: s.channels,
            nh: s.heads,
            hs: s.channels / s.heads,
        }
    }
    /// Addresses of q, k and v of the first head in `qkv[B, T, 3C]`.
    fn parts(&self, qkv: View) -> [u64; 3] {
        [0, 1, 2].map(|i| qkv.addr + (i * self.c * qkv.dtype.size()) as u64)
    }
    /// Strides of q, k, v (and their gradients) in `qkv[B, T, 3C]`.
    fn qkv_strides(&self) -> (usize, usize) {
        (self.t * 3 * self.c, self.hs)
    }
    /// Strides of `out[B, T, C]` and `dout`.
    fn out_strides(&self) -> (usize, usize) {
        (self.t * self.c, self.hs)
    }
    /// Strides of `att[B, heads, T, T]` and `scratch`.
    fn att_strides(&self) -> (usize, usize) {
        (self.nh * self.t * self.t, self.t * self.t)
    }
    fn batch(&self, strides: [(usize, usize); 3]) -> (usize, usize, [(usize, usize); 3]) {
        (self.b, self.nh, strides)
    }
}

impl KernelOp for AttentionFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let a = AttnGeom::new(self.shape);
        let (t, c, hs, dtype) = (a.t, a.c, a.hs, self.qkv.dtype);
        let [q, k, v] = a.parts(self.qkv);
        let att = self.att.addr;
        // att = q k^T / sqrt(hs), only the tiles that reach the lower triangle.
        let mut g = Gemm::new((att, t), (q, 3 * c, false), (k, 3 * c, true), dtype);
        g.alpha = 1.0 / (hs as f32).sqrt();
        g.causal = GEMM_OUT_LOWER;
        g.batch = a.batch([a.qkv_strides(), a.qkv_strides(), a.att_strides()]);
        g.launch(l, [t, t, hs])?;
        softmax_rows(l, self.att, None, a.b * a.nh * t, t)?;
        // out = att @ v; att is zero above the diagonal.
        let mut g = Gemm::new(
            (self.out.addr, c),
            (att, t, false),
            (v, 3 * c, false),
            dtype,
        );
        g.causal = GEMM_A_LOWER;
        g.batch = a.batch([a.att_strides(), a.qkv_strides(), a.out_strides()]);
        g.launch(l, [t, hs, t])
    }
}

impl KernelOp for AttentionBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let a = AttnGeom::new(self.shape);
        let (t, c, hs, dtype) = (a.t, a.c, a.hs, self.qkv.dtype);
        let [q, k, v] = a.parts(self.qkv);
        let [dq, dk, dv] = a.parts(self.dqkv);
        let (qs, ss, os) = (a.qkv_strides(), a.att_strides(), a.out_strides());
        let (scratch, dout, att) = (self.scratch.addr, self.dout.addr, self.att.addr);

        // scratch = d(att) = dout v^T, needed on and below the diagonal only.
        let mut g = Gemm::new((scratch, t), (dout, c, false), (v, 3 * c, true), dtype);
        g.causal = GEMM_OUT_LOWER;
        g.batch = a.batch([os, qs, ss]);
        g.launch(l, [t, t, hs])?;
        // scratch = d(scores) (times the scale), zero above the diagonal.
        let scale = 1.0 / (hs as f32).sqrt();
        softmax_rows(l, self.scratch, Some((self.att, scale)), a.b * a.nh * t, t)?;
        // dq += ds @ k
        let mut g = Gemm::new((dq, 3 * c), (scratch, t, false), (k, 3 * c, false), dtype);
        (g.accumulate, g.causal) = (true, GEMM_A_LOWER);
        g.batch = a.batch([ss, qs, qs]);
        g.launch(l, [t, hs, t])?;
        // dk += ds^T @ q
        let mut g = Gemm::new((dk, 3 * c), (scratch, t, true), (q, 3 * c, false), dtype);
        (g.accumulate, g.causal) = (true, GEMM_A_UPPER);
        g.batch = a.batch([ss, qs, qs]);
        g.launch(l, [t, hs, t])?;
        // dv += att^T @ dout
        let mut g = Gemm::new((dv, 3 * c), (att, t, true), (dout, c, false), dtype);
        (g.accumulate, g.causal) = (true, GEMM_A_UPPER);
        g.batch = a.batch([ss, os, qs]);
        g.launch(l, [t, hs, t])
    }
}

/// The row-wise softmax over `rows` rows of `seq` at `x`, one warp per row:
/// the forward, or with `bwd = Some((att, scale))` the backward.
fn softmax_rows(
    l: &Launcher,
    x: View,
    bwd: Option<(View, f32)>,
    rows: usize,
    seq: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let blocks = rows.div_ceil(ATTN_SOFTMAX_BLOCK as usize / 32);
    ensure!(
        blocks <= i32::MAX as usize,
        "{rows} attention rows need more blocks than one launch takes"
    );
    let dims = LaunchDims::linear(blocks as u32, ATTN_SOFTMAX_BLOCK);
    let seq = to_i32("seq", seq)?;
    match bwd {
        None => {
            let args = Args::new().ptr(x).u64(rows as u64).i32(seq);
            l.launch(&SOFTMAX_FWD, x.dtype, dims, args)
        }
        Some((att, scale)) => {
            let args = Args::new()
                .ptr(x)
                .ptr(att)
                .u64(rows as u64)
                .i32(seq)
                .f32(scale);
            l.launch(&SOFTMAX_BWD, x.dtype, dims, args)
        }
    }
}
