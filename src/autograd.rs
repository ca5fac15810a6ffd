//! The tape: ops record what their backward needs; `backward` runs it in reverse.
//!
//! Each op function below runs its forward on the backend at once and, when
//! the tape records, pushes a closure that runs its backward. Closures capture
//! only [`View`]s (plain addresses), so they own nothing and cost nothing to
//! keep. Gradients follow the backend's convention: every backward
//! accumulates (`+=`) into the gradients it writes, so whoever plans the
//! gradient buffers zeroes them before they are first written (the model
//! records those fills on the tape too).

use crate::mem::View;
use crate::ops::activation::{DropoutBwd, DropoutFwd, GeluBwd, GeluErfBwd, GeluErfFwd, GeluFwd};
use crate::ops::attention::{
    AttentionBwd, AttentionFwd, AttnDropout, AttnShape, FlashAttentionBwd, FlashAttentionFwd,
};
use crate::ops::elementwise::Fill;
use crate::ops::embedding::{EmbeddingBwd, EmbeddingFwd};
use crate::ops::layernorm::{LayernormBwd, LayernormFwd};
use crate::ops::matmul::{MatmulBwd, MatmulFwd, MatmulGeluFwd};
use crate::ops::{Backend, BackendExt};
use anyhow::Result;

type BackwardOp = Box<dyn FnOnce(&dyn Backend) -> Result<()> + Send>;

/// A list of backward closures, run last-recorded first.
pub struct Tape {
    ops: Vec<BackwardOp>,
    recording: bool,
}

impl Tape {
    /// A tape that records (training).
    pub fn new() -> Self {
        Tape {
            ops: Vec::new(),
            recording: true,
        }
    }

    /// A tape that drops everything (evaluation: no gradients).
    pub fn no_grad() -> Self {
        Tape {
            ops: Vec::new(),
            recording: false,
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    pub fn record(&mut self, op: impl FnOnce(&dyn Backend) -> Result<()> + Send + 'static) {
        if self.recording {
            self.ops.push(Box::new(op));
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Runs every recorded backward in reverse order and empties the tape.
    pub fn backward(&mut self, backend: &dyn Backend) -> Result<()> {
        while let Some(op) = self.ops.pop() {
            op(backend)?;
        }
        Ok(())
    }
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

/// An activation and the buffer its gradient accumulates into.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    pub val: View,
    pub grad: View,
}

/// A parameter; `grad` is `None` when its gradient is not wanted (frozen).
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub val: View,
    pub grad: Option<View>,
}

/// Records `dst = 0` (runs in backward before whatever comes earlier in forward).
pub fn zero_grad(tape: &mut Tape, dst: View) {
    tape.record(move |be| be.run(Fill { dst, value: 0.0 }));
}

/// `out = wte[tokens] + wpe[positions] (+ token_type)`; see [`EmbeddingFwd`].
#[allow(clippy::too_many_arguments)]
pub fn embedding(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    tokens: View,
    wte: Param,
    wpe: Param,
    token_type: Option<Param>,
    batch: usize,
    seq: usize,
    channels: usize,
) -> Result<()> {
    be.run(EmbeddingFwd {
        out: out.val,
        tokens,
        wte: wte.val,
        wpe: wpe.val,
        token_type: token_type.map(|p| p.val),
        batch,
        seq,
        channels,
    })?;
    if let (Some(dwte), Some(dwpe)) = (wte.grad, wpe.grad) {
        tape.record(move |be| {
            be.run(EmbeddingBwd {
                dwte,
                dwpe,
                dtoken_type: token_type.and_then(|p| p.grad),
                dout: out.grad,
                tokens,
                batch,
                seq,
                channels,
            })
        });
    }
    Ok(())
}

/// LayerNorm with epsilon `eps`. The backend always wants a bias, so a
/// bias-free model passes a zero buffer with `grad: None`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    mean: View,
    rstd: View,
    inp: Var,
    weight: Param,
    bias: Param,
    rows: usize,
    channels: usize,
    eps: f32,
) -> Result<()> {
    be.run(LayernormFwd {
        out: out.val,
        mean,
        rstd,
        inp: inp.val,
        weight: weight.val,
        bias: bias.val,
        rows,
        channels,
        eps,
    })?;
    tape.record(move |be| {
        be.run(LayernormBwd {
            dinp: inp.grad,
            dweight: weight.grad,
            dbias: bias.grad,
            dout: out.grad,
            inp: inp.val,
            weight: weight.val,
            mean,
            rstd,
            rows,
            channels,
        })
    });
    Ok(())
}

/// `out = inp @ weight^T + bias`, weight `[out_ch, in_ch]`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    inp: Var,
    weight: Param,
    bias: Option<Param>,
    rows: usize,
    in_ch: usize,
    out_ch: usize,
) -> Result<()> {
    be.run(MatmulFwd {
        out: out.val,
        inp: inp.val,
        weight: weight.val,
        bias: bias.map(|b| b.val),
        rows,
        in_ch,
        out_ch,
    })?;
    tape.record(move |be| {
        be.run(linear_bwd(
            out.grad,
            inp,
            weight,
            bias,
            [rows, in_ch, out_ch],
        ))
    });
    Ok(())
}

/// The backward of `out = inp @ weight^T + bias` from `dout`, the gradient
/// of `out`: into the input's gradient and (accumulating) the parameters'.
fn linear_bwd(
    dout: View,
    inp: Var,
    weight: Param,
    bias: Option<Param>,
    [rows, in_ch, out_ch]: [usize; 3],
) -> MatmulBwd {
    MatmulBwd {
        dinp: Some(inp.grad),
        dweight: weight.grad,
        dbias: bias.and_then(|b| b.grad),
        dout,
        inp: inp.val,
        weight: weight.val,
        rows,
        in_ch,
        out_ch,
    }
}

/// `pre = inp @ weight^T + bias`, `out = gelu(pre)` in one op (the MLP's
/// first layer: in bf16 one GEMM whose epilogue applies the GELU to the
/// fp32 accumulator); the backward is GELU's, then the linear layer's.
#[allow(clippy::too_many_arguments)]
pub fn linear_gelu(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    pre: Var,
    inp: Var,
    weight: Param,
    bias: Option<Param>,
    rows: usize,
    in_ch: usize,
    out_ch: usize,
) -> Result<()> {
    be.run(MatmulGeluFwd {
        out: out.val,
        pre: pre.val,
        inp: inp.val,
        weight: weight.val,
        bias: bias.map(|b| b.val),
        rows,
        in_ch,
        out_ch,
    })?;
    tape.record(move |be| {
        be.run(GeluBwd {
            dinp: pre.grad,
            inp: pre.val,
            dout: out.grad,
        })?;
        be.run(linear_bwd(
            pre.grad,
            inp,
            weight,
            bias,
            [rows, in_ch, out_ch],
        ))
    });
    Ok(())
}

/// Causal self-attention over the fused `qkv`; `att` saves the
/// probabilities, `scratch` is workspace of the same size (the forward's
/// dropped probabilities with dropout, the backward's gradients).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    att: View,
    scratch: View,
    qkv: Var,
    shape: AttnShape,
    dropout: Option<AttnDropout>,
) -> Result<()> {
    be.run(AttentionFwd {
        out: out.val,
        att,
        dropped: dropout.map(|_| scratch),
        qkv: qkv.val,
        shape,
        dropout,
    })?;
    tape.record(move |be| {
        be.run(AttentionBwd {
            dqkv: qkv.grad,
            scratch,
            dout: out.grad,
            qkv: qkv.val,
            att,
            shape,
            dropout,
        })
    });
    Ok(())
}

/// Flash attention: the same function as [`attention`], saving only the
/// per-row log-sum-exp `lse[B, heads, T]` (fp32); the backward recomputes
/// the probabilities from it and `out`, with `delta[B, heads, T]` (fp32) as
/// its workspace. bf16 only.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    lse: View,
    delta: View,
    qkv: Var,
    shape: AttnShape,
    dropout: Option<AttnDropout>,
) -> Result<()> {
    be.run(FlashAttentionFwd {
        out: out.val,
        lse,
        qkv: qkv.val,
        shape,
        dropout,
    })?;
    tape.record(move |be| {
        be.run(FlashAttentionBwd {
            dqkv: qkv.grad,
            delta,
            dout: out.grad,
            out: out.val,
            lse,
            qkv: qkv.val,
            shape,
            dropout,
        })
    });
    Ok(())
}

/// Which GELU: GPT-2's tanh approximation or BERT's exact erf form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    Tanh,
    Erf,
}

pub fn gelu(be: &dyn Backend, tape: &mut Tape, kind: Gelu, out: Var, inp: Var) -> Result<()> {
    let (dinp, val, dout) = (inp.grad, inp.val, out.grad);
    match kind {
        Gelu::Tanh => {
            be.run(GeluFwd {
                out: out.val,
                inp: val,
            })?;
            tape.record(move |be| {
                be.run(GeluBwd {
                    dinp,
                    inp: val,
                    dout,
                })
            });
        }
        Gelu::Erf => {
            be.run(GeluErfFwd {
                out: out.val,
                inp: val,
            })?;
            tape.record(move |be| {
                be.run(GeluErfBwd {
                    dinp,
                    inp: val,
                    dout,
                })
            });
        }
    }
    Ok(())
}

/// Inverted dropout; the backward recomputes the mask from `(seed, offset)`.
pub fn dropout(
    be: &dyn Backend,
    tape: &mut Tape,
    out: Var,
    inp: Var,
    p: f32,
    seed: u64,
    offset: u64,
) -> Result<()> {
    be.run(DropoutFwd {
        out: out.val,
        inp: inp.val,
        p,
        seed,
        offset,
    })?;
    tape.record(move |be| {
        be.run(DropoutBwd {
            dinp: inp.grad,
            dout: out.grad,
            p,
            seed,
            offset,
        })
    });
    Ok(())
}
