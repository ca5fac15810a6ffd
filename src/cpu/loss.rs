//! CPU reference of `ops::loss`.

use super::math::{exp_from, exp_in_place, exp_sum, max_of, simd};
use super::{read, write, CpuOp};
use crate::ops::loss::SoftmaxXent;
use crate::ops::{check, Contract};
use anyhow::Result;
use rayon::prelude::*;

impl CpuOp for SoftmaxXent {
    fn run(&self) -> Result<()> {
        let (n, v) = (self.rows, self.vocab);
        // SAFETY: the contract check passed; see `read`. When `dlogits` is
        // the logits' own memory (the one alias the contract allows) only
        // the `&mut` slice of it is made.
        unsafe {
            let targets = read(self.targets, n);
            check::targets(Self::NAME, targets, v, self.ignore_index)?;
            let losses = write(self.losses, n);
            match self.dlogits {
                None => softmax_xent(
                    losses,
                    read(self.logits, n * v),
                    targets,
                    v,
                    self.ignore_index,
                ),
                Some(dl) => {
                    let src = (dl.addr != self.logits.addr).then(|| read(self.logits, n * v));
                    softmax_xent_grad(
                        losses,
                        write(dl, n * v),
                        src,
                        targets,
                        v,
                        self.ignore_index,
                        self.grad_scale,
                    )
                }
            }
        }
        Ok(())
    }
}

/// `losses[r] = logsumexp(logits[r]) - logits[r][target]`, or 0 on ignored
/// rows. Subtracting the row maximum keeps exp in range.
fn softmax_xent(
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    vocab: usize,
    ignore_index: u32,
) {
    losses
        .par_iter_mut()
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .for_each(|(loss, (row, &tgt))| {
            if tgt == ignore_index {
                *loss = 0.0;
                return;
            }
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
/// written to `dlogits`. `logits` is `None` when the logits are `dlogits`'
/// own memory (the aliased call): each row is then read and overwritten in
/// place. Either way a row is read once from memory and then stays in cache.
fn softmax_xent_grad(
    losses: &mut [f32],
    dlogits: &mut [f32],
    logits: Option<&[f32]>,
    targets: &[u32],
    vocab: usize,
    ignore_index: u32,
    grad_scale: f32,
) {
    losses
        .par_iter_mut()
        .zip(dlogits.par_chunks_mut(vocab).zip(targets.par_iter()))
        .enumerate()
        .for_each(|(r, (loss, (row, &tgt)))| {
            if tgt == ignore_index {
                *loss = 0.0;
                row.fill(0.0);
                return;
            }
            let tgt = tgt as usize;
            let src = logits.map(|l| &l[r * vocab..][..vocab]);
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
