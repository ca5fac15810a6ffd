//! CPU reference of `ops::activation`.

use super::math::{simd, tanh};
use super::{read_floats, write_floats, CpuOp, CHUNK};
use crate::ops::activation::{DropoutBwd, DropoutFwd, GeluBwd, GeluErfBwd, GeluErfFwd, GeluFwd};
use anyhow::Result;
use rayon::prelude::*;

impl CpuOp for GeluFwd {
    fn run(&self) -> Result<()> {
        let n = self.out.len;
        // SAFETY (every op of this file): the contract check passed; see `read`.
        let (inp, mut out) = unsafe { (read_floats(self.inp, n), write_floats(self.out, n)) };
        gelu_fwd(&mut out, &inp);
        out.store();
        Ok(())
    }
}

impl CpuOp for GeluBwd {
    fn run(&self) -> Result<()> {
        let n = self.dinp.len;
        let (inp, dout) = unsafe { (read_floats(self.inp, n), read_floats(self.dout, n)) };
        let mut dinp = unsafe { write_floats(self.dinp, n) };
        gelu_bwd(&mut dinp, &inp, &dout);
        dinp.store();
        Ok(())
    }
}

impl CpuOp for GeluErfFwd {
    fn run(&self) -> Result<()> {
        let n = self.out.len;
        let (inp, mut out) = unsafe { (read_floats(self.inp, n), write_floats(self.out, n)) };
        out.par_chunks_mut(CHUNK)
            .zip(inp.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = (x as f64 * normal_cdf(x as f64)) as f32;
                }
            });
        out.store();
        Ok(())
    }
}

impl CpuOp for GeluErfBwd {
    fn run(&self) -> Result<()> {
        let n = self.dinp.len;
        let (inp, dout) = unsafe { (read_floats(self.inp, n), read_floats(self.dout, n)) };
        let mut dinp = unsafe { write_floats(self.dinp, n) };
        dinp.par_chunks_mut(CHUNK)
            .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
            .for_each(|(di, (x, dy))| {
                for ((di, &x), &dy) in di.iter_mut().zip(x).zip(dy) {
                    let x = x as f64;
                    let grad = normal_cdf(x) + x * (-0.5 * x * x).exp() * FRAC_1_SQRT_2PI;
                    *di = (*di as f64 + dy as f64 * grad) as f32;
                }
            });
        dinp.store();
        Ok(())
    }
}

impl CpuOp for DropoutFwd {
    fn run(&self) -> Result<()> {
        let n = self.out.len;
        let (inp, mut out) = unsafe { (read_floats(self.inp, n), write_floats(self.out, n)) };
        dropout(&mut out, &inp, self.p, self.seed, self.offset, false);
        out.store();
        Ok(())
    }
}

impl CpuOp for DropoutBwd {
    fn run(&self) -> Result<()> {
        let n = self.dinp.len;
        let dout = unsafe { read_floats(self.dout, n) };
        let mut dinp = unsafe { write_floats(self.dinp, n) };
        dropout(&mut dinp, &dout, self.p, self.seed, self.offset, true);
        dinp.store();
        Ok(())
    }
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;

/// GELU into `out`; also the fused matmul's epilogue (`cpu/matmul.rs`).
pub(super) fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
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

/// `1 / sqrt(2 pi)`, the standard normal density at 0.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The standard normal distribution function `Φ(x) = erfc(-x / sqrt 2) / 2`
/// in f64, to about 1e-13 relative over the whole line (both tails
/// included, where `1 + erf` would cancel). The exact GELU's reference is
/// computed in f64 and rounded once, so the kernel (erfcf in f32) is compared
/// with the exact function. The standard library has no `erf`.
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// The complementary error function. For `0 <= z < 3`, `1 - erf(z)` with
/// erf from its series of positive terms
/// `2/sqrt(pi) e^(-z^2) sum_n 2^n z^(2n+1) / (1 3 5 ... (2n+1))` (no
/// cancellation inside the sum; below 1e-15 relative); from 3 on, Laplace's
/// continued fraction `e^(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))`,
/// 40 levels deep (converged to double precision there); `erfc(-z) = 2 - erfc(z)`.
fn erfc(z: f64) -> f64 {
    if z < 0.0 {
        return 2.0 - erfc(-z);
    }
    let scale = (-z * z).exp() / std::f64::consts::PI.sqrt();
    if z >= 3.0 {
        let mut f = z;
        for k in (1..=40).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        return scale / f;
    }
    let (mut term, mut sum) = (z, z);
    for n in 1..200 {
        term *= 2.0 * z * z / (2 * n + 1) as f64;
        sum += term;
        if term <= 1e-17 * sum {
            break;
        }
    }
    1.0 - 2.0 * scale * sum
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
