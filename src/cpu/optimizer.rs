//! CPU reference of `ops::optimizer`.

use super::{read, write, CpuOp, CHUNK};
use crate::ops::optimizer::{AdamWStep, Adamw, SumSquares};
use anyhow::Result;
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

impl CpuOp for Adamw {
    fn run(&self) -> Result<()> {
        let n = self.params.len;
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let params = write(self.params, n);
            adamw(
                params,
                read(self.grads, n),
                write(self.m, n),
                write(self.v, n),
                self.hp,
            );
            // The bf16 compute copy: the new weights rounded once.
            if let Some(copy) = self.copy {
                write::<bf16>(copy, n).convert_from_f32_slice(params);
            }
        };
        Ok(())
    }
}

impl CpuOp for SumSquares {
    fn run(&self) -> Result<()> {
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let total = sum_squares(read(self.x, self.x.len));
            let acc = &mut write::<f32>(self.acc, 1)[0];
            *acc = (*acc as f64 + total) as f32;
        }
        Ok(())
    }
}

fn adamw(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], hp: AdamWStep) {
    // Bias corrections in f64, as PyTorch computes them on the host.
    let t = hp.step as i32;
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - hp.lr * hp.weight_decay;
    let (b1, b2) = (hp.beta1, hp.beta2);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * hp.grad_scale;
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + hp.eps);
            }
        });
}

/// `sum(x^2)` in f64, from fixed chunks summed in order.
fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    partials.iter().sum()
}
