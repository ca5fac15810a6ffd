//! CPU reference of `ops::layernorm`.

use super::{read, read_floats, write, write_floats, CpuOp};
use crate::ops::layernorm::{LayernormBwd, LayernormFwd};
use anyhow::Result;
use rayon::prelude::*;

/// Rows per task in row reductions (the weight gradients).
const ROW_CHUNK: usize = 64;

impl CpuOp for LayernormFwd {
    fn run(&self) -> Result<()> {
        let (n, c) = (self.rows, self.channels);
        // SAFETY: the contract check passed; see `read`. Statistics are
        // fp32 in every precision; the rest may be bf16 (widened).
        unsafe {
            let mut out = write_floats(self.out, n * c);
            layernorm_fwd(
                &mut out,
                write(self.mean, n),
                write(self.rstd, n),
                &read_floats(self.inp, n * c),
                &read_floats(self.weight, c),
                &read_floats(self.bias, c),
                c,
                self.eps,
            );
            out.store();
        }
        Ok(())
    }
}

impl CpuOp for LayernormBwd {
    fn run(&self) -> Result<()> {
        let (n, c) = (self.rows, self.channels);
        // SAFETY: the contract check passed; see `read`. The weight and
        // bias gradients, mean and rstd are fp32 in every precision.
        unsafe {
            let mut dinp = write_floats(self.dinp, n * c);
            layernorm_bwd(
                &mut dinp,
                self.dweight.map(|v| write(v, c)),
                self.dbias.map(|v| write(v, c)),
                &read_floats(self.dout, n * c),
                &read_floats(self.inp, n * c),
                &read_floats(self.weight, c),
                read(self.mean, n),
                read(self.rstd, n),
                c,
            );
            dinp.store();
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn layernorm_fwd(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    c: usize,
    eps: f32,
) {
    out.par_chunks_mut(c)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .zip(inp.par_chunks(c))
        .for_each(|((o, (m, r)), x)| {
            let mu = x.iter().sum::<f32>() / c as f32;
            // Two passes: the variance of centred values does not cancel.
            let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + eps).sqrt();
            for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (x - mu) * rs * w + b;
            }
            *m = mu;
            *r = rs;
        });
}

#[allow(clippy::too_many_arguments)]
fn layernorm_bwd(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((di, (dy, x)), (&mu, &rs))| {
            // dnorm = dy * w; dx = rs * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
            let mut sum_dn = 0.0f32;
            let mut sum_dn_n = 0.0f32;
            for ((dy, x), w) in dy.iter().zip(x).zip(weight) {
                let dn = dy * w;
                sum_dn += dn;
                sum_dn_n += dn * (x - mu) * rs;
            }
            let mean_dn = sum_dn / c as f32;
            let mean_dn_n = sum_dn_n / c as f32;
            for (((di, dy), x), w) in di.iter_mut().zip(dy).zip(x).zip(weight) {
                let n = (x - mu) * rs;
                *di += rs * (dy * w - mean_dn - n * mean_dn_n);
            }
        });
    if dweight.is_none() && dbias.is_none() {
        return;
    }
    // Per-chunk partial sums of dy * norm and dy, combined in chunk order.
    let partials: Vec<Vec<f32>> = dout
        .par_chunks(c * ROW_CHUNK)
        .zip(inp.par_chunks(c * ROW_CHUNK))
        .zip(mean.par_chunks(ROW_CHUNK).zip(rstd.par_chunks(ROW_CHUNK)))
        .map(|((dy, x), (mu, rs))| {
            let mut acc = vec![0.0f32; 2 * c];
            let (dw, db) = acc.split_at_mut(c);
            for (((dy, x), mu), rs) in dy.chunks_exact(c).zip(x.chunks_exact(c)).zip(mu).zip(rs) {
                for (((dw, db), dy), x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
                    *dw += dy * (x - mu) * rs;
                    *db += dy;
                }
            }
            acc
        })
        .collect();
    if let Some(dweight) = dweight {
        for p in &partials {
            for (d, p) in dweight.iter_mut().zip(&p[..c]) {
                *d += p;
            }
        }
    }
    if let Some(dbias) = dbias {
        for p in &partials {
            for (d, p) in dbias.iter_mut().zip(&p[c..]) {
                *d += p;
            }
        }
    }
}
