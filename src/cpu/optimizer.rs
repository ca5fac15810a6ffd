//! CPU reference of `ops::optimizer`.

use super::{read, write, CpuOp, CHUNK};
use crate::mem::{DType, View};
use crate::ops::optimizer::{
    stat, AdamWBetas, Adamw, AdamwMulti, FinishStep, SumScaled, SumSquares, DECAYS_BIT, ENTRY_WORDS,
};
use anyhow::Result;
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

impl CpuOp for Adamw {
    fn run(&self) -> Result<()> {
        let n = self.params.len;
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let stats = read::<f32>(self.stats, stat::LEN);
            if stats[stat::SKIP] != 0.0 {
                return Ok(());
            }
            let params = write(self.params, n);
            adamw(
                params,
                read(self.grads, n),
                write(self.m, n),
                write(self.v, n),
                self.hp.betas(),
                self.hp.schedule(),
                stats[stat::SCALE],
            );
            // The bf16 compute copy: the new weights rounded once.
            if let Some(copy) = self.copy {
                write::<bf16>(copy, n).convert_from_f32_slice(params);
            }
        };
        Ok(())
    }
}

impl CpuOp for AdamwMulti {
    fn run(&self) -> Result<()> {
        // SAFETY: the contract check passed; see `read`. The entries were
        // checked when the list was built (`adamw_list`).
        let (words, stats): (&[u32], &[f32]) = unsafe {
            (
                read(self.list, self.count * ENTRY_WORDS * 2),
                read(self.stats, stat::LEN),
            )
        };
        if stats[stat::SKIP] != 0.0 {
            return Ok(());
        }
        let schedule = [
            stats[stat::DECAY],
            stats[stat::STEP_SIZE],
            stats[stat::BC2_SQRT],
        ];
        for entry in words.chunks_exact(ENTRY_WORDS * 2) {
            let w = |i: usize| entry[2 * i] as u64 | (entry[2 * i + 1] as u64) << 32;
            let n = (w(5) & !DECAYS_BIT) as usize;
            let decay = if w(5) & DECAYS_BIT != 0 {
                schedule[0]
            } else {
                1.0
            };
            let f32_view = |i: usize| View::new(w(i), n, DType::F32);
            // SAFETY: as above; the entry's views are distinct buffers.
            unsafe {
                let params = write(f32_view(0), n);
                adamw(
                    params,
                    read(f32_view(1), n),
                    write(f32_view(2), n),
                    write(f32_view(3), n),
                    self.betas,
                    [decay, schedule[1], schedule[2]],
                    stats[stat::SCALE],
                );
                if w(4) != 0 {
                    write::<bf16>(View::new(w(4), n, DType::BF16), n)
                        .convert_from_f32_slice(params);
                }
            }
        }
        Ok(())
    }
}

impl CpuOp for SumSquares {
    fn run(&self) -> Result<()> {
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let total = chunked_sum(read(self.x, self.x.len), |v| v * v);
            let acc = &mut write::<f32>(self.acc, 1)[0];
            *acc = (*acc as f64 + total) as f32;
        }
        Ok(())
    }
}

impl CpuOp for SumScaled {
    fn run(&self) -> Result<()> {
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let total = chunked_sum(read(self.x, self.x.len), |v| v);
            let acc = &mut write::<f32>(self.acc, 1)[0];
            *acc = (*acc as f64 + total * self.scale as f64) as f32;
        }
        Ok(())
    }
}

impl CpuOp for FinishStep {
    fn run(&self) -> Result<()> {
        // SAFETY: the contract check passed; see `read`.
        let s = unsafe { write::<f32>(self.stats, stat::LEN) };
        finish_step(s, self.max_norm);
        Ok(())
    }
}

/// The arithmetic of [`FinishStep`], in the kernel's f32 operations.
fn finish_step(s: &mut [f32], max_norm: f32) {
    let norm = s[stat::NORM_SQ].sqrt();
    let bad = !(s[stat::LOSS].is_finite() && norm.is_finite());
    s[stat::NORM] = norm;
    s[stat::SCALE] = if bad {
        0.0
    } else if max_norm > 0.0 {
        crate::optim::clip_scale(norm, max_norm)
    } else {
        1.0
    };
    s[stat::SKIP] = bad as u8 as f32;
    s[stat::SKIPPED] += bad as u8 as f32;
    s[stat::SKIPPED_IN_A_ROW] = if bad {
        s[stat::SKIPPED_IN_A_ROW] + 1.0
    } else {
        0.0
    };
}

fn adamw(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    betas: AdamWBetas,
    [decay, step_size, bc2_sqrt]: [f32; 3],
    grad_scale: f32,
) {
    let (b1, b2, eps) = (betas.beta1, betas.beta2, betas.eps);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * grad_scale;
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
            }
        });
}

/// `sum(term(x))` in f64, from fixed chunks summed in order.
fn chunked_sum(x: &[f32], term: impl Fn(f64) -> f64 + Sync) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| term(v as f64)).sum::<f64>())
        .collect();
    partials.iter().sum()
}
