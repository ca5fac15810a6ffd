//! CPU reference of `ops::embedding`.

use super::{read, read_floats, write, write_floats, CpuOp};
use crate::ops::embedding::{EmbeddingBwd, EmbeddingFwd};
use crate::ops::{check, Contract};
use anyhow::Result;
use rayon::prelude::*;

impl CpuOp for EmbeddingFwd {
    fn run(&self) -> Result<()> {
        let (n, c) = (self.batch * self.seq, self.channels);
        let vocab = self.wte.len / c;
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let tokens = read(self.tokens, n);
            check::token_ids(Self::NAME, tokens, vocab)?;
            let mut out = write_floats(self.out, n * c);
            embedding_fwd(
                &mut out,
                tokens,
                &read_floats(self.wte, vocab * c),
                &read_floats(self.wpe, self.seq * c),
                self.token_type.map(|v| read_floats(v, c)).as_deref(),
                self.seq,
                c,
            );
            out.store();
        }
        Ok(())
    }
}

impl CpuOp for EmbeddingBwd {
    fn run(&self) -> Result<()> {
        let (n, c) = (self.batch * self.seq, self.channels);
        let vocab = self.dwte.len / c;
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let tokens = read(self.tokens, n);
            check::token_ids(Self::NAME, tokens, vocab)?;
            // The gradients are fp32 in every precision.
            embedding_bwd(
                write(self.dwte, vocab * c),
                write(self.dwpe, self.seq * c),
                self.dtoken_type.map(|v| write(v, c)),
                &read_floats(self.dout, n * c),
                tokens,
                self.seq,
                c,
            );
        }
        Ok(())
    }
}

fn embedding_fwd(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    token_type: Option<&[f32]>,
    seq: usize,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(row, (o, &tok))| {
            let e = &wte[tok as usize * c..][..c];
            let p = &wpe[(row % seq) * c..][..c];
            for ((o, e), p) in o.iter_mut().zip(e).zip(p) {
                *o = e + p;
            }
            if let Some(tt) = token_type {
                for (o, t) in o.iter_mut().zip(tt) {
                    *o += t;
                }
            }
        });
}

/// Sequential on purpose: repeated tokens scatter into the same rows, and the
/// op is a few hundred thousand adds.
fn embedding_bwd(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    mut dtoken_type: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    seq: usize,
    c: usize,
) {
    for (row, (d, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        let e = &mut dwte[tok as usize * c..][..c];
        for (e, d) in e.iter_mut().zip(d) {
            *e += d;
        }
        let p = &mut dwpe[(row % seq) * c..][..c];
        for (p, d) in p.iter_mut().zip(d) {
            *p += d;
        }
        if let Some(tt) = dtoken_type.as_deref_mut() {
            for (t, d) in tt.iter_mut().zip(d) {
                *t += d;
            }
        }
    }
}
