//! Launchers of kernels/attention/: causal attention the unfused way, its
//! six products on [`Gemm`] (one batch entry per (sequence, head), skipping
//! the tiles the causal mask makes zero) and the row-wise softmax and
//! dropout between them; and flash attention (attention/flash_fwd.cu,
//! flash_bwd.cu), fused kernels on tensor cores for bf16.

use super::gemm::Gemm;
use super::KernelOp;
use crate::cuda::launch::{to_i32, to_u32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::{
    ATTN_SOFTMAX_BLOCK, FLASH_BLOCK_M, FLASH_BLOCK_N, FLASH_DKDV_SMEM_128, FLASH_DKDV_SMEM_64,
    FLASH_DQ_SMEM_128, FLASH_DQ_SMEM_64, FLASH_FWD_SMEM_128, FLASH_FWD_SMEM_64, FLASH_THREADS,
    GEMM_A_LOWER, GEMM_A_UPPER, GEMM_OUT_LOWER,
};
use crate::mem::View;
use crate::ops::attention::{
    AttentionBwd, AttentionFwd, AttnDropout, AttnShape, FlashAttentionBwd, FlashAttentionFwd,
};
use anyhow::{ensure, Result};

const SOFTMAX_FWD: KernelId = kernel_id!(attention, softmax_fwd);
const SOFTMAX_BWD: KernelId = kernel_id!(attention, softmax_bwd);
const DROPOUT_PROBS: KernelId = kernel_id!(attention, dropout_probs);
const FLASH_FWD: [KernelId; 2] = [
    kernel_id!(attention, flash_fwd_d64),
    kernel_id!(attention, flash_fwd_d128),
];
const FLASH_BWD_DQ: [KernelId; 2] = [
    kernel_id!(attention, flash_bwd_dq_d64),
    kernel_id!(attention, flash_bwd_dq_d128),
];
const FLASH_BWD_DKDV: [KernelId; 2] = [
    kernel_id!(attention, flash_bwd_dkdv_d64),
    kernel_id!(attention, flash_bwd_dkdv_d128),
];

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
        let rows = a.b * a.nh * t;
        softmax_rows(l, Softmax::Fwd, self.att, rows, t)?;
        // out = att @ v (with dropout: dropped @ v); zero above the diagonal.
        let probs = match (self.dropout, self.dropped) {
            (Some(d), Some(dropped)) => {
                softmax_rows(l, Softmax::Dropout(self.att, d), dropped, rows, t)?;
                dropped.addr
            }
            _ => att,
        };
        let mut g = Gemm::new(
            (self.out.addr, c),
            (probs, t, false),
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
        let rows = a.b * a.nh * t;

        // dv += probs^T @ dout, where probs multiplied v in the forward: att,
        // or with dropout drop(att), drawn again into scratch.
        let probs = match self.dropout {
            Some(d) => {
                softmax_rows(l, Softmax::Dropout(self.att, d), self.scratch, rows, t)?;
                scratch
            }
            None => att,
        };
        let mut g = Gemm::new((dv, 3 * c), (probs, t, true), (dout, c, false), dtype);
        (g.accumulate, g.causal) = (true, GEMM_A_UPPER);
        g.batch = a.batch([ss, os, qs]);
        g.launch(l, [t, hs, t])?;
        // scratch = d(probs) = dout v^T, needed on and below the diagonal only.
        let mut g = Gemm::new((scratch, t), (dout, c, false), (v, 3 * c, true), dtype);
        g.causal = GEMM_OUT_LOWER;
        g.batch = a.batch([os, qs, ss]);
        g.launch(l, [t, t, hs])?;
        // scratch = d(scores) (times the scale), zero above the diagonal.
        let scale = 1.0 / (hs as f32).sqrt();
        let bwd = Softmax::Bwd(self.att, scale, self.dropout);
        softmax_rows(l, bwd, self.scratch, rows, t)?;
        // dq += ds @ k
        let mut g = Gemm::new((dq, 3 * c), (scratch, t, false), (k, 3 * c, false), dtype);
        (g.accumulate, g.causal) = (true, GEMM_A_LOWER);
        g.batch = a.batch([ss, qs, qs]);
        g.launch(l, [t, hs, t])?;
        // dk += ds^T @ q
        let mut g = Gemm::new((dk, 3 * c), (scratch, t, true), (q, 3 * c, false), dtype);
        (g.accumulate, g.causal) = (true, GEMM_A_UPPER);
        g.batch = a.batch([ss, qs, qs]);
        g.launch(l, [t, hs, t])
    }
}

/// Which row-wise kernel [`softmax_rows`] runs.
enum Softmax {
    /// In place: scaled scores become probabilities.
    Fwd,
    /// Into `x`: these probabilities after dropout.
    Dropout(View, AttnDropout),
    /// In place: d(probabilities after dropout) becomes d(scores); the
    /// probabilities, the scores' scale and the forward's dropout.
    Bwd(View, f32, Option<AttnDropout>),
}

/// A row-wise kernel over `rows` rows of `seq` at `x`, one warp per row.
fn softmax_rows(l: &Launcher, which: Softmax, x: View, rows: usize, seq: usize) -> Result<()> {
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
    let args = Args::new().ptr(x);
    match which {
        Softmax::Fwd => {
            let args = args.u64(rows as u64).i32(seq);
            l.launch(&SOFTMAX_FWD, x.dtype, dims, args)
        }
        Softmax::Dropout(att, d) => {
            let args = args.ptr(att).u64(rows as u64).i32(seq);
            let args = args.f32(d.p).u64(d.seed).u64(d.offset);
            l.launch(&DROPOUT_PROBS, x.dtype, dims, args)
        }
        Softmax::Bwd(att, scale, dropout) => {
            let (p, seed, offset) = AttnDropout::args(dropout);
            let args = args.ptr(att).u64(rows as u64).i32(seq).f32(scale);
            let args = args.f32(p).u64(seed).u64(offset);
            l.launch(&SOFTMAX_BWD, x.dtype, dims, args)
        }
    }
}

/// The geometry every flash kernel shares: which tile width (0: 64 columns,
/// 1: 128), the grid (one block per 64 query or key rows of each (sequence,
/// head)), and whether 16-byte copies are allowed.
struct FlashGeom {
    width: usize,
    grid: [u32; 3],
    aligned: i32,
    seq: i32,
    channels: i32,
    heads: i32,
    dropout: (f32, u64, u64),
}

impl FlashGeom {
    /// `None` for an empty call. `views` are the bf16 tensors the kernels
    /// copy rows of with cp.async.
    fn new(s: AttnShape, dropout: Option<AttnDropout>, views: &[View]) -> Result<Option<Self>> {
        if s.rows() == 0 {
            return Ok(None);
        }
        debug_assert_eq!(FLASH_BLOCK_M, FLASH_BLOCK_N);
        let heads = s.batch * s.heads;
        ensure!(
            heads <= u16::MAX as usize,
            "flash attention: {} sequences x {} heads is above the 65535 (sequence, head) \
             pairs one launch takes; use smaller batches",
            s.batch,
            s.heads
        );
        // cp.async copies 16 bytes from 16-byte aligned addresses: every row
        // and head must start on one (8 bf16 values).
        let aligned = s.head_size().is_multiple_of(8)
            && s.channels.is_multiple_of(8)
            && views.iter().all(|v| v.addr.is_multiple_of(16));
        Ok(Some(FlashGeom {
            width: usize::from(s.head_size() > 64),
            grid: [
                to_u32("tiles", s.seq.div_ceil(FLASH_BLOCK_M as usize))?,
                heads as u32,
                1,
            ],
            aligned: aligned as i32,
            seq: to_i32("seq", s.seq)?,
            channels: to_i32("channels", s.channels)?,
            heads: to_i32("heads", s.heads)?,
            dropout: AttnDropout::args(dropout),
        }))
    }

    fn dims(&self, smem: [i32; 2]) -> LaunchDims {
        LaunchDims {
            grid: self.grid,
            block: [FLASH_THREADS as u32, 1, 1],
            shared_bytes: smem[self.width] as u32,
        }
    }

    /// The arguments after the tensors.
    fn tail(&self, args: Args) -> Args {
        let (p, seed, offset) = self.dropout;
        args.i32(self.seq)
            .i32(self.channels)
            .i32(self.heads)
            .f32(p)
            .u64(seed)
            .u64(offset)
            .i32(self.aligned)
    }
}

impl KernelOp for FlashAttentionFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let Some(f) = FlashGeom::new(self.shape, self.dropout, &[self.qkv, self.out])? else {
            return Ok(());
        };
        let args = f.tail(Args::new().ptr(self.qkv).ptr(self.out).ptr(self.lse));
        let dims = f.dims([FLASH_FWD_SMEM_64, FLASH_FWD_SMEM_128]);
        l.launch(&FLASH_FWD[f.width], self.qkv.dtype, dims, args)
    }
}

impl KernelOp for FlashAttentionBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let views = [self.qkv, self.dqkv, self.dout];
        let Some(f) = FlashGeom::new(self.shape, self.dropout, &views)? else {
            return Ok(());
        };
        let dtype = self.qkv.dtype;
        // dq first: it writes delta, which the dk/dv kernel reads.
        let args = Args::new().ptr(self.dqkv).ptr(self.delta).ptr(self.dout);
        let args = f.tail(args.ptr(self.out).ptr(self.lse).ptr(self.qkv));
        let dims = f.dims([FLASH_DQ_SMEM_64, FLASH_DQ_SMEM_128]);
        l.launch(&FLASH_BWD_DQ[f.width], dtype, dims, args)?;
        let args = Args::new().ptr(self.dqkv).ptr(self.delta).ptr(self.dout);
        let args = f.tail(args.ptr(self.lse).ptr(self.qkv));
        let dims = f.dims([FLASH_DKDV_SMEM_64, FLASH_DKDV_SMEM_128]);
        l.launch(&FLASH_BWD_DKDV[f.width], dtype, dims, args)
    }
}
