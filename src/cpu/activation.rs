//! CPU reference of `ops::activation`.

use super::math::{simd, tanh};
use super::{read, write, CpuOp, CHUNK};
use crate::ops::activation::{DropoutBwd, DropoutFwd, GeluBwd, GeluFwd};
use anyhow::Result;
use rayon::prelude::*;

impl CpuOp for GeluFwd {
    fn run(&self) -> Result<()> {
        let n = self.out.len;
        // SAFETY (every op of this file): the contract check passed; see `read`.
        gelu_fwd(unsafe { write(self.out, n) }, unsafe { read(self.inp, n) });
        Ok(())
    }
}

impl CpuOp for GeluBwd {
    fn run(&self) -> Result<()> {
        let n = self.dinp.len;
        unsafe { gelu_bwd(write(self.dinp, n), read(self.inp, n), read(self.dout, n)) };
        Ok(())
    }
}

impl CpuOp for DropoutFwd {
    fn run(&self) -> Result<()> {
        let n = self.out.len;
        let (out, inp) = unsafe { (write(self.out, n), read(self.inp, n)) };
        dropout(out, inp, self.p, self.seed, self.offset, false);
        Ok(())
    }
}

impl CpuOp for DropoutBwd {
    fn run(&self) -> Result<()> {
        let n = self.dinp.len;
        let (dinp, dout) = unsafe { (write(self.dinp, n), read(self.dout, n)) };
        dropout(dinp, dout, self.p, self.seed, self.offset, true);
        Ok(())
    }
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;

fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            simd(
                #[inline(always)]
                || {
                    for (o, &x) in o.iter_mut().zip(x) {
                        let th = tanh(GELU_K * (x + GELU_A * x * x * x));
                        *o = 0.5 * x * (1.0 + th);
                    }
                },
            )
        });
}

fn gelu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(di, (x, dy))| {
            simd(
                #[inline(always)]
                || {
                    for ((di, &x), dy) in di.iter_mut().zip(x).zip(dy) {
                        let th = tanh(GELU_K * (x + GELU_A * x * x * x));
                        let du = GELU_K * (1.0 + 3.0 * GELU_A * x * x);
                        *di += dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du);
                    }
                },
            )
        });
}

/// `out[i] (+)= inp[i] * mask(offset + i) / (1 - p)`: the forward overwrites,
/// the backward accumulates. `p == 1` drops everything (no 0 * inf).
fn dropout(out: &mut [f32], inp: &[f32], p: f32, seed: u64, offset: u64, accumulate: bool) {
    let keep_scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(blk, (o, x))| {
            let base = offset + (blk * CHUNK) as u64;
            for (i, (o, x)) in o.iter_mut().zip(x).enumerate() {
                let kept = crate::rng::dropout_keep(seed, base + i as u64, p);
                let y = if kept { x * keep_scale } else { 0.0 };
                if accumulate {
                    *o += y;
                } else {
                    *o = y;
                }
            }
        });
}
