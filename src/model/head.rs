//! The loss head: the decoder `logits = x @ wte^T (+ bias)`, tied to the
//! token embeddings, and the cross-entropy of the logits against the
//! targets. The architecture decides what `x` is (GPT-2: the final
//! LayerNorm's output) and whether the decoder has a bias. The logits are
//! `padded_vocab` wide; the loss counts the first `vocab` of each row and
//! gives the rest a zero gradient.
//!
//! Two ways to run it: all rows at once, recorded on the tape like any op
//! (the loss writes the logits' gradient over the logits); or, with
//! recomputation, by row chunks of `plan.head_rows`, so that the logits of
//! all rows never exist at once. The loss is the last op, so a chunk's
//! gradient is known in the forward pass: per chunk the logits, the per-row
//! losses and, in training, their gradient and its backward through the
//! decoder (`x`'s gradient rows, and `+=` into wte's and the bias's).

use crate::autograd::{self, Param, Tape, Var};
use crate::mem::View;
use crate::ops::elementwise::Fill;
use crate::ops::loss::SoftmaxXent;
use crate::ops::matmul::{MatmulBwd, MatmulFwd};
use crate::ops::{Backend, BackendExt};
use anyhow::Result;

/// Targets equal to this are left out of the loss.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// The decoder and its input.
#[derive(Clone, Copy)]
pub(super) struct Head {
    /// The decoder's input rows and their gradient.
    pub x: Var,
    pub wte: Param,
    pub bias: Option<Param>,
    pub rows: usize,
    pub channels: usize,
    /// The real vocabulary: the classes of the loss.
    pub vocab: usize,
    /// The decoder's width and the logits' row stride (`wte`'s rows with
    /// padding; see `layout::VOCAB_ALIGN`).
    pub padded_vocab: usize,
}

impl Head {
    /// All rows at once: the logits (recorded on the tape) and, given
    /// targets, the per-row `losses`; in training (`grad_scale` given) the
    /// loss writes the logits' gradient, times `grad_scale`, over them.
    pub fn full(
        &self,
        be: &dyn Backend,
        tape: &mut Tape,
        logits: View,
        losses: View,
        targets: Option<View>,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        let logits = Var {
            val: logits,
            grad: logits,
        };
        autograd::linear(
            be,
            tape,
            logits,
            self.x,
            self.wte,
            self.bias,
            self.rows,
            self.channels,
            self.padded_vocab,
        )?;
        if let Some(targets) = targets {
            self.loss(be, logits.val, losses, targets, grad_scale)?;
        }
        Ok(())
    }

    /// By chunks of `chunk_rows` rows through `logits` (room for one
    /// chunk); see the module docs. In training the decoder's backward runs
    /// here, so `x`'s gradient is complete when this returns.
    pub fn chunked(
        &self,
        be: &dyn Backend,
        logits: View,
        chunk_rows: usize,
        losses: View,
        targets: View,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        let (n, c, width) = (self.rows, self.channels, self.padded_vocab);
        if grad_scale.is_some() {
            be.run(Fill {
                dst: self.x.grad,
                value: 0.0,
            })?;
        }
        let mut r0 = 0;
        while r0 < n {
            let rows = chunk_rows.min(n - r0);
            let part = Head {
                x: Var {
                    val: self.x.val.slice(r0 * c, rows * c),
                    grad: self.x.grad.slice(r0 * c, rows * c),
                },
                rows,
                ..*self
            };
            let logits = logits.slice(0, rows * width);
            part.decode(be, logits)?;
            part.loss(
                be,
                logits,
                losses.slice(r0, rows),
                targets.slice(r0, rows),
                grad_scale,
            )?;
            if grad_scale.is_some() {
                be.run(MatmulBwd {
                    dinp: Some(part.x.grad),
                    dweight: self.wte.grad,
                    dbias: self.bias.and_then(|b| b.grad),
                    dout: logits,
                    inp: part.x.val,
                    weight: self.wte.val,
                    rows,
                    in_ch: c,
                    out_ch: width,
                })?;
            }
            r0 += rows;
        }
        Ok(())
    }

    /// The logits of the head's rows into `logits`, with no tape.
    pub fn decode(&self, be: &dyn Backend, logits: View) -> Result<()> {
        be.run(MatmulFwd {
            out: logits,
            inp: self.x.val,
            weight: self.wte.val,
            bias: self.bias.map(|b| b.val),
            rows: self.rows,
            in_ch: self.channels,
            out_ch: self.padded_vocab,
        })
    }

    fn loss(
        &self,
        be: &dyn Backend,
        logits: View,
        losses: View,
        targets: View,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        be.run(SoftmaxXent {
            losses,
            dlogits: grad_scale.map(|_| logits),
            logits,
            targets,
            rows: self.rows,
            vocab: self.vocab,
            padded_vocab: self.padded_vocab,
            ignore_index: IGNORE_INDEX,
            grad_scale: grad_scale.unwrap_or(1.0),
        })
    }
}
