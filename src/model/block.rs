//! One transformer block's forward as plain views: its parameters (read
//! from whichever slot the tie table gives its layer), where each activation
//! and its gradient live, and its dropout sites. Everything is `Copy`, so a
//! backward closure can keep a block and run it again (recomputation).
//!
//! Both sublayers are the same pieces in every architecture: attention
//! (`qkv`, causal attention, output projection) and the MLP (`fc`, GELU,
//! output projection), each ending in a residual branch with its dropout
//! site. What the architecture chooses is where the LayerNorms sit (see
//! [`BlockRun::run`]) and which GELU the MLP uses.
//!
//! Gradients of the residual stream: a residual add `out = x + branch` needs
//! no backward of its own when `out`, `x` and `branch` share one gradient
//! buffer, and the ops that read `x` accumulate into it after the branch has
//! consumed it (see `lm.rs`).

use super::ModelConfig;
use crate::autograd::{self, Gelu, Param, Tape, Var};
use crate::mem::View;
use crate::ops::attention::{AttnDropout, AttnShape, FLASH_MAX_HEAD};
use crate::ops::elementwise::Add;
use crate::ops::{Backend, BackendExt};
use crate::precision::Precision;
use anyhow::Result;
use std::fmt;

/// Which attention the blocks run, and so what each layer saves for the
/// backward. Chosen in one place, [`AttentionPath::choose`], from the
/// precision; the activation plan sizes its regions by it and a run prints
/// it beside the precision.
///
/// Both paths drop the same probabilities for the same seed: their dropout
/// ([`AttnDropout`]) is one Philox stream, keyed by (layer offset, sequence,
/// head, query, key) and never by how the kernels are tiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// Scores, softmax and `att v` as separate ops; saves the probabilities
    /// `[B, heads, T, T]` and needs a workspace of that size (the forward's
    /// dropped probabilities, the backward's gradients). fp32's path: the
    /// reference and the CPU default.
    Unfused,
    /// One fused kernel each way (bf16 only); saves the per-row log-sum-exp
    /// `[B, heads, T]` (fp32) beside the output the next matmul keeps
    /// anyway, and the backward recomputes the probabilities; its workspace
    /// is `D = rowsum(dout * out)`, `[B, heads, T]` (fp32).
    Flash,
}

impl AttentionPath {
    /// Flash in bf16 whenever its kernels take the head size (at most
    /// [`FLASH_MAX_HEAD`]: every preset), else unfused.
    pub fn choose(precision: Precision, cfg: &ModelConfig) -> AttentionPath {
        let head = cfg.n_embd / cfg.n_head.max(1);
        match precision {
            Precision::Bf16 if head <= FLASH_MAX_HEAD => AttentionPath::Flash,
            _ => AttentionPath::Unfused,
        }
    }

    /// Elements (4 bytes each in the plan) one layer saves for the backward
    /// besides the output: the probabilities or the log-sum-exp.
    pub fn saved_len(self, shape: AttnShape) -> usize {
        match self {
            AttentionPath::Unfused => shape.lens().2,
            AttentionPath::Flash => shape.rows(),
        }
    }

    /// Elements of the workspace a layer's attention needs (shared by all
    /// layers, in the gradient arena).
    pub fn scratch_len(self, shape: AttnShape) -> usize {
        self.saved_len(shape)
    }
}

impl fmt::Display for AttentionPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            AttentionPath::Unfused => "unfused",
            AttentionPath::Flash => "flash",
        })
    }
}

/// Dropout probability, seed and Philox counter offset of one site.
#[derive(Clone, Copy)]
pub(super) struct DropoutSite {
    pub p: f32,
    pub seed: u64,
    pub offset: u64,
}

/// A LayerNorm's parameters and epsilon. The backend's LayerNorm always
/// adds a bias, so a model without biases passes a zero buffer with no
/// gradient.
#[derive(Clone, Copy)]
pub(super) struct Norm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f32,
}

impl Norm {
    /// `out = LN(inp)`, saving the row statistics `(mean, rstd)`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        be: &dyn Backend,
        tape: &mut Tape,
        out: Var,
        stats: (View, View),
        inp: Var,
        rows: usize,
        channels: usize,
    ) -> Result<()> {
        let (mean, rstd) = stats;
        autograd::layernorm(
            be,
            tape,
            out,
            mean,
            rstd,
            inp,
            self.weight,
            self.bias,
            rows,
            channels,
            self.eps,
        )
    }
}

/// A linear layer `out = inp @ weight^T + bias`, weight `[out, in]`.
#[derive(Clone, Copy)]
pub(super) struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        be: &dyn Backend,
        tape: &mut Tape,
        out: Var,
        inp: Var,
        rows: usize,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<()> {
        autograd::linear(
            be,
            tape,
            out,
            inp,
            self.weight,
            self.bias,
            rows,
            in_ch,
            out_ch,
        )
    }
}

/// The parameters of one block, in the slot layout's terms.
#[derive(Clone, Copy)]
pub(super) struct BlockParams {
    pub ln1: Norm,
    pub qkv: Linear,
    pub attn_proj: Linear,
    pub ln2: Norm,
    pub fc: Linear,
    pub mlp_proj: Linear,
}

/// One block's forward: parameters, activations (`Var`s carry where their
/// gradients go), the LayerNorm statistics, and scratch.
#[derive(Clone, Copy)]
pub(super) struct BlockRun {
    pub params: BlockParams,
    /// The block's input (the residual stream).
    pub x: Var,
    pub ln1: Var,
    /// LayerNorm mean and rstd, saved for its backward.
    pub ln1_stats: (View, View),
    pub qkv: Var,
    /// Which attention runs; `att` and `att_scratch` are its saved state
    /// and workspace as [`AttentionPath`] describes (the probabilities and a
    /// `T x T` workspace in the compute dtype, or the fp32 log-sum-exp and
    /// `D`).
    pub attention: AttentionPath,
    pub att: View,
    pub att_scratch: View,
    pub atty: Var,
    /// The attention branch before dropout (only with dropout).
    pub attn_pre: Option<Var>,
    pub x_mid: Var,
    pub ln2: Var,
    pub ln2_stats: (View, View),
    pub fc: Var,
    pub gelu: Var,
    pub mlp_pre: Option<Var>,
    pub x_out: Var,
    /// The per-block gradient workspace, zeroed before the block's backward.
    pub workspace: View,
    /// The attention and MLP branches' dropout sites.
    pub dropout: Option<(DropoutSite, DropoutSite)>,
    /// Dropout on the attention probabilities.
    pub attn_dropout: Option<AttnDropout>,
    pub shape: AttnShape,
    /// LayerNorms after the residual adds (BERT) instead of before the
    /// sublayers (GPT-2).
    pub post_norm: bool,
    /// The MLP's GELU.
    pub activation: Gelu,
}

impl BlockRun {
    fn rows(&self) -> usize {
        self.shape.batch * self.shape.seq
    }

    /// The block's forward, recording its backward on `tape`.
    pub fn run(&self, be: &dyn Backend, tape: &mut Tape) -> Result<()> {
        if self.post_norm {
            self.run_post_norm(be, tape)
        } else {
            self.run_pre_norm(be, tape)
        }
    }

    /// Pre-LayerNorm (GPT-2):
    /// `x_mid = x + drop(proj(attn(ln1(x))))`,
    /// `x_out = x_mid + drop(mlp.proj(gelu(mlp.fc(ln2(x_mid)))))`.
    fn run_pre_norm(&self, be: &dyn Backend, tape: &mut Tape) -> Result<()> {
        let (n, c) = (self.rows(), self.shape.channels);
        let p = &self.params;
        p.ln1
            .apply(be, tape, self.ln1, self.ln1_stats, self.x, n, c)?;
        self.attention_branch(be, tape, self.ln1, self.x_mid)?;
        residual(be, self.x_mid, self.x)?;
        p.ln2
            .apply(be, tape, self.ln2, self.ln2_stats, self.x_mid, n, c)?;
        self.mlp_branch(be, tape, self.ln2, self.x_out)?;
        residual(be, self.x_out, self.x_mid)?;
        // Runs in backward before this block's ops: the workspace still
        // holds the block above's gradients.
        autograd::zero_grad(tape, self.workspace);
        Ok(())
    }

    /// Post-LayerNorm (BERT), with the residual sums kept in the `ln1` and
    /// `ln2` activations: `s1 = x + drop(proj(attn(x)))`, `x_mid = LN1(s1)`,
    /// `s2 = x_mid + drop(mlp.proj(gelu(mlp.fc(x_mid))))`, `x_out = LN2(s2)`.
    ///
    /// The stream's gradient lives in two buffers, `x.grad` (shared by `x`,
    /// `ln1` and `x_out`) and `x_mid.grad` (shared by `x_mid` and `ln2`, in
    /// the workspace). In backward: LN2 reads `x_out`'s gradient and adds
    /// into the zeroed workspace; the MLP adds into `x_mid`'s; `x.grad` is
    /// zeroed, and LN1 adds `ln1`'s gradient into it, which the attention
    /// branch reads and then completes with its input's.
    fn run_post_norm(&self, be: &dyn Backend, tape: &mut Tape) -> Result<()> {
        let (n, c) = (self.rows(), self.shape.channels);
        let p = &self.params;
        self.attention_branch(be, tape, self.x, self.ln1)?;
        residual(be, self.ln1, self.x)?;
        p.ln1
            .apply(be, tape, self.x_mid, self.ln1_stats, self.ln1, n, c)?;
        // Runs in backward after LN2 has read x_out's gradient from this
        // buffer, before LN1 adds into it.
        autograd::zero_grad(tape, self.x.grad);
        self.mlp_branch(be, tape, self.x_mid, self.ln2)?;
        residual(be, self.ln2, self.x_mid)?;
        p.ln2
            .apply(be, tape, self.x_out, self.ln2_stats, self.ln2, n, c)?;
        // Runs first in backward: zeroes x_mid's gradient among the rest.
        autograd::zero_grad(tape, self.workspace);
        Ok(())
    }

    /// `out = drop(proj(attn(qkv(inp))))`.
    fn attention_branch(
        &self,
        be: &dyn Backend,
        tape: &mut Tape,
        inp: Var,
        out: Var,
    ) -> Result<()> {
        let (n, c) = (self.rows(), self.shape.channels);
        let p = &self.params;
        p.qkv.apply(be, tape, self.qkv, inp, n, c, 3 * c)?;
        let attention = match self.attention {
            AttentionPath::Unfused => autograd::attention,
            AttentionPath::Flash => autograd::flash_attention,
        };
        attention(
            be,
            tape,
            self.atty,
            self.att,
            self.att_scratch,
            self.qkv,
            self.shape,
            self.attn_dropout,
        )?;
        let site = self.dropout.map(|d| d.0);
        branch(be, tape, out, self.attn_pre, site, |tape, out| {
            p.attn_proj.apply(be, tape, out, self.atty, n, c, c)
        })
    }

    /// `out = drop(mlp.proj(gelu(mlp.fc(inp))))`.
    fn mlp_branch(&self, be: &dyn Backend, tape: &mut Tape, inp: Var, out: Var) -> Result<()> {
        let (n, c) = (self.rows(), self.shape.channels);
        let p = &self.params;
        match self.activation {
            // GPT-2's tanh GELU is fused into the matmul's epilogue (in bf16
            // one GEMM writes both the pre-activation and the GELU).
            Gelu::Tanh => autograd::linear_gelu(
                be,
                tape,
                self.gelu,
                self.fc,
                inp,
                p.fc.weight,
                p.fc.bias,
                n,
                c,
                4 * c,
            )?,
            // The GEMM has no erf epilogue: BERT's exact GELU is its own op.
            Gelu::Erf => {
                p.fc.apply(be, tape, self.fc, inp, n, c, 4 * c)?;
                autograd::gelu(be, tape, self.activation, self.gelu, self.fc)?;
            }
        }
        let site = self.dropout.map(|d| d.1);
        branch(be, tape, out, self.mlp_pre, site, |tape, out| {
            p.mlp_proj.apply(be, tape, out, self.gelu, n, 4 * c, c)
        })
    }
}

/// `sum = x + sum`, where `sum` holds a residual branch's output: both
/// share one gradient buffer, so the add records nothing.
fn residual(be: &dyn Backend, sum: Var, x: Var) -> Result<()> {
    be.run(Add {
        out: sum.val,
        a: x.val,
        b: sum.val,
    })
}

/// A residual branch's last op (`op` writes into the `Var` it is given),
/// then its dropout site, leaving the result in `out`.
pub(super) fn branch(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    pre: Option<Var>,
    site: Option<DropoutSite>,
    op: impl FnOnce(&mut Tape, Var) -> Result<()>,
) -> Result<()> {
    match (pre, site) {
        (Some(pre), Some(d)) => {
            op(tape, pre)?;
            autograd::dropout(be, tape, out, pre, d.p, d.seed, d.offset)
        }
        _ => op(tape, out),
    }
}
