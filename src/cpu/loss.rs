//! CPU reference of `ops::loss`.

use super::math::{exp_from, exp_in_place, exp_sum, max_of, simd};
use super::{read, read_floats, write, write_floats, CpuOp};
use crate::mem::DType;
use crate::ops::loss::SoftmaxXent;
use crate::ops::{check, Contract};
use anyhow::Result;
use rayon::prelude::*;

impl CpuOp for SoftmaxXent {
    fn run(&self) -> Result<()> {
        let (n, v, vp) = (self.rows, self.vocab, self.padded_vocab);
        let rows = Rows {
            vocab: v,
            stride: vp,
            ignore_index: self.ignore_index,
        };
        // SAFETY: the contract check passed; see `read`. When `dlogits` is
        // the logits' own f32 memory (the one alias the contract allows)
        // only the `&mut` slice of it is made; bf16 logits and gradients are
        // separate widened copies either way.
        unsafe {
            let targets = read(self.targets, n);
            check::targets(Self::NAME, targets, v, self.ignore_index)?;
            let losses = write(self.losses, n);
            match self.dlogits {
                None => softmax_xent(losses, &read_floats(self.logits, n * vp), targets, rows),
                Some(dl) if dl.dtype == DType::BF16 => {
                    let logits = read_floats(self.logits, n * vp);
                    let mut dlogits = write_floats(dl, n * vp);
                    let grad = (&mut dlogits[..], self.grad_scale);
                    softmax_xent_grad(losses, grad, Some(&logits), targets, rows);
                    dlogits.store();
                }
                Some(dl) => {
                    let src = (dl.addr != self.logits.addr).then(|| read(self.logits, n * vp));
                    let grad = (write(dl, n * vp), self.grad_scale);
                    softmax_xent_grad(losses, grad, src, targets, rows);
                }
            }
        }
        Ok(())
    }
}

/// How the rows of logits are laid out: `stride` values per row, of which
/// the first `vocab` are classes (the rest padding).
#[derive(Clone, Copy)]
struct Rows {
    vocab: usize,
    stride: usize,
    ignore_index: u32,
}

/// `losses[r] = logsumexp(logits[r]) - logits[r][target]`, or 0 on ignored
/// rows. Subtracting the row maximum keeps exp in range.
fn softmax_xent(losses: &mut [f32], logits: &[f32], targets: &[u32], rows: Rows) {
    losses
        .par_iter_mut()
        .zip(logits.par_chunks(rows.stride).zip(targets.par_iter()))
        .for_each(|(loss, (row, &tgt))| {
            if tgt == rows.ignore_index {
                *loss = 0.0;
                return;
            }
            let row = &row[..rows.vocab];
            *loss = simd(
                #[inline(always)]
                || {
                    let max = max_of(row);
                    exp_sum(row, max).ln() - (row[tgt as usize] - max)
                },
            );
        });
}

/// [`softmax_xent`] with its gradient `(softmax - onehot) * grad_scale`
/// written to `dlogits` (`grad`: the gradient and the scale), zero in the
/// padding columns. `logits` is `None` when the logits are `dlogits`' own
/// memory (the aliased call): each row is then read and overwritten in
/// place. Either way a row is read once from memory and then stays in cache.
fn softmax_xent_grad(
    losses: &mut [f32],
    (dlogits, grad_scale): (&mut [f32], f32),
    logits: Option<&[f32]>,
    targets: &[u32],
    rows: Rows,
) {
    let (vocab, stride) = (rows.vocab, rows.stride);
    losses
        .par_iter_mut()
        .zip(dlogits.par_chunks_mut(stride).zip(targets.par_iter()))
        .enumerate()
        .for_each(|(r, (loss, (row, &tgt)))| {
            let (row, padding) = row.split_at_mut(vocab);
            padding.fill(0.0);
            if tgt == rows.ignore_index {
                *loss = 0.0;
                row.fill(0.0);
                return;
            }
            let tgt = tgt as usize;
            let src = logits.map(|l| &l[r * stride..][..vocab]);
            *loss = simd(
                #[inline(always)]
                || {
                    let (max, target_logit, sum) = match src {
                        Some(src) => {
                            let max = max_of(src);
                            (max, src[tgt], exp_from(row, src, max))
                        }
                        None => {
                            let max = max_of(row);
                            (max, row[tgt], exp_in_place(row, max, 1.0))
                        }
                    };
                    let k = grad_scale / sum;
                    for x in row.iter_mut() {
                        *x *= k;
                    }
                    row[tgt] -= grad_scale;
                    sum.ln() - (target_logit - max)
                },
            );
        });
}
