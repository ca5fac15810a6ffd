//! What the flash attention ops compute, in f64, together with the
//! magnitudes that bound the error of a bf16 implementation. The CPU
//! backend's flash ops are these functions rounded once; conformance cases
//! and the kernel tests take their tolerances from [`Bounds`].
//!
//! Per head, with scores `S = q k^T / sqrt(hs)` (causal), probabilities
//! `P = exp(S - lse)` (`lse` the row's log-sum-exp), dropout factors `F`
//! (0 or `1 / (1 - p)`), `A = P * F`:
//! forward `out = A v`; backward, from the given `out` and `lse`:
//! `D = rowsum(dout * out)`, `dP = F * (dout v^T)`, `dS = P * (dP - D)`,
//! `dq = dS k / sqrt(hs)`, `dk = dS^T q / sqrt(hs)`, `dv = A^T dout`.
//!
//! Error of a bf16 kernel against these values (u_b = 2^-8 and u_f = 2^-24,
//! the unit roundoffs of bf16 and fp32), per element:
//! - The kernel rounds `A` (for `out` and `dv`) and `dS` (for `dq`, `dk`)
//!   to bf16 before its tensor-core products: at most `u_b` relative per
//!   term, so `u_b * mag` with `mag` the sum of the magnitudes of those
//!   terms (`sum_j A_ij |v_jc|`, `sum_j |dS_ij| |k_jc| / sqrt(hs)`, ...).
//! - Everything else is fp32 arithmetic on bf16 inputs (products exact):
//!   fewer than `2 (hs + T) + 64` roundings of at most `u_f` each, relative
//!   to quantities bounded by `(1 + score_mag)` times `fine_mag`
//!   (`score_mag` = max of `sum_c |q_ic k_jc| / sqrt(hs)`, which bounds how
//!   far a score's rounding moves `exp`; `fine_mag` additionally counts
//!   `dS`'s inputs, `P (F |dout| |v| + |dout| |out|)`): that is `gamma`.
//! - The output is rounded to bf16 by the kernel and by the CPU: two more
//!   roundings of `u_b` relative to the value.
//!
//! `lse` is fp32 throughout: `gamma + 3 u_f |lse|`.

use super::{AttnDropout, AttnShape};
use crate::rng::{attention_dropout_word, attention_dropout_words, keeps};
use rayon::prelude::*;

/// Unit roundoff of bf16 (8 significant bits).
pub const U_B: f64 = 1.0 / 256.0;
/// Unit roundoff of fp32.
pub const U_F: f64 = 1.0 / 16_777_216.0;

/// The exact forward.
pub struct Forward {
    /// `out[B, T, C]`.
    pub out: Vec<f64>,
    /// `lse[B, heads, T]`.
    pub lse: Vec<f64>,
    /// Per element of `out`: `sum_j A_ij |v_jc|`.
    pub out_mag: Vec<f64>,
    /// The largest `sum_c |q_ic k_jc| / sqrt(hs)` of the call.
    pub score_mag: f64,
}

/// The exact backward: the gradient alone (not added to anything).
pub struct Backward {
    /// `dqkv[B, T, 3C]`.
    pub dqkv: Vec<f64>,
    /// Per element: the magnitude that bf16 rounding of `dS` or `A` scales.
    pub mag: Vec<f64>,
    /// Per element: the magnitude that fp32 rounding scales.
    pub fine_mag: Vec<f64>,
    pub score_mag: f64,
}

/// One head's view of `qkv[B, T, 3C]` (and of `[B, T, C]` tensors).
#[derive(Clone, Copy)]
struct Head {
    b: usize,
    h: usize,
    s: AttnShape,
}

impl Head {
    /// Index of element `c` of part `part` (0 q, 1 k, 2 v) at position `t`.
    fn qkv(&self, t: usize, part: usize, c: usize) -> usize {
        let (seq, ch) = (self.s.seq, self.s.channels);
        (self.b * seq + t) * 3 * ch + part * ch + self.h * self.s.head_size() + c
    }
    /// Index of element `c` at position `t` of an `[B, T, C]` tensor.
    fn row(&self, t: usize, c: usize) -> usize {
        (self.b * self.s.seq + t) * self.s.channels + self.h * self.s.head_size() + c
    }
    /// The head's index `b * heads + h`.
    fn index(&self) -> usize {
        self.b * self.s.heads + self.h
    }
}

/// Every head of the call, in the order of `lse`.
fn heads(s: AttnShape) -> Vec<Head> {
    (0..s.batch * s.heads)
        .map(|bh| Head {
            b: bh / s.heads,
            h: bh % s.heads,
            s,
        })
        .collect()
}

/// The dropout factors of row `i` of head `bh`, columns `0..=i`.
fn factors(dropout: Option<AttnDropout>, bh: usize, i: usize) -> Vec<f64> {
    let Some(d) = dropout else {
        return vec![1.0; i + 1];
    };
    let scale = 1.0 / (1.0 - d.p as f64);
    (0..=i as u32)
        .map(|j| {
            let w = attention_dropout_words(d.seed, d.offset + bh as u64, i as u32, j);
            if keeps(w[attention_dropout_word(i as u32, j)], d.p) {
                scale
            } else {
                0.0
            }
        })
        .collect()
}

/// Row `i`'s scores `S_ij` (j <= i) and their magnitudes `sum |q k|` scaled.
fn scores(qkv: &[f64], hd: Head, i: usize) -> (Vec<f64>, f64) {
    let hs = hd.s.head_size();
    let scale = 1.0 / (hs as f64).sqrt();
    let mut mag = 0.0f64;
    let s = (0..=i)
        .map(|j| {
            let (mut dot, mut m) = (0.0, 0.0);
            for c in 0..hs {
                let p = qkv[hd.qkv(i, 0, c)] * qkv[hd.qkv(j, 1, c)];
                dot += p;
                m += p.abs();
            }
            mag = mag.max(m * scale);
            dot * scale
        })
        .collect();
    (s, mag)
}

/// The forward of every head. `qkv` holds the op's (bf16) inputs.
pub fn forward(qkv: &[f64], s: AttnShape, dropout: Option<AttnDropout>) -> Forward {
    let hs = s.head_size();
    let per_head: Vec<_> = heads(s)
        .into_par_iter()
        .map(|hd| {
            let mut out = vec![0.0; s.seq * hs];
            let mut mag = vec![0.0; s.seq * hs];
            let mut lse = vec![0.0; s.seq];
            let mut score_mag = 0.0f64;
            for i in 0..s.seq {
                let (sc, m) = scores(qkv, hd, i);
                score_mag = score_mag.max(m);
                let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = sc.iter().map(|x| (x - max).exp()).sum();
                lse[i] = max + l.ln();
                let f = factors(dropout, hd.index(), i);
                for (j, x) in sc.iter().enumerate() {
                    let a = (x - lse[i]).exp() * f[j];
                    for c in 0..hs {
                        let v = qkv[hd.qkv(j, 2, c)];
                        out[i * hs + c] += a * v;
                        mag[i * hs + c] += a * v.abs();
                    }
                }
            }
            (hd, out, mag, lse, score_mag)
        })
        .collect();
    let mut r = Forward {
        out: vec![0.0; s.batch * s.seq * s.channels],
        lse: vec![0.0; s.rows()],
        out_mag: vec![0.0; s.batch * s.seq * s.channels],
        score_mag: 0.0,
    };
    for (hd, out, mag, lse, score_mag) in per_head {
        for i in 0..s.seq {
            for c in 0..hs {
                r.out[hd.row(i, c)] = out[i * hs + c];
                r.out_mag[hd.row(i, c)] = mag[i * hs + c];
            }
        }
        r.lse[hd.index() * s.seq..][..s.seq].copy_from_slice(&lse);
        r.score_mag = r.score_mag.max(score_mag);
    }
    r
}

/// The backward of every head, from the forward's `out` and `lse` as the
/// op receives them (`out` rounded to bf16, `lse` to f32).
pub fn backward(
    dout: &[f64],
    out: &[f64],
    lse: &[f64],
    qkv: &[f64],
    s: AttnShape,
    dropout: Option<AttnDropout>,
) -> Backward {
    let hs = s.head_size();
    let scale = 1.0 / (hs as f64).sqrt();
    let t_len = s.seq;
    let per_head: Vec<_> = heads(s)
        .into_par_iter()
        .map(|hd| {
            // [part][t * hs + c] for the gradient (0 dq, 1 dk, 2 dv) and its
            // two magnitudes.
            let zero = || vec![vec![0.0; t_len * hs]; 3];
            let (mut g, mut mag, mut fine) = (zero(), zero(), zero());
            let mut score_mag = 0.0f64;
            let dy = |t: usize, c: usize| dout[hd.row(t, c)];
            for i in 0..t_len {
                let (sc, m) = scores(qkv, hd, i);
                score_mag = score_mag.max(m);
                let f = factors(dropout, hd.index(), i);
                let lse_i = lse[hd.index() * t_len + i];
                let (mut d, mut d_mag) = (0.0, 0.0);
                for c in 0..hs {
                    d += dy(i, c) * out[hd.row(i, c)];
                    d_mag += (dy(i, c) * out[hd.row(i, c)]).abs();
                }
                for (j, x) in sc.iter().enumerate() {
                    let p = (x - lse_i).exp();
                    let a = p * f[j];
                    let (mut da, mut da_mag) = (0.0, 0.0);
                    for c in 0..hs {
                        da += dy(i, c) * qkv[hd.qkv(j, 2, c)];
                        da_mag += (dy(i, c) * qkv[hd.qkv(j, 2, c)]).abs();
                    }
                    let ds = p * (f[j] * da - d);
                    // What dS's fp32 evaluation is relative to, and dS itself.
                    let ds_fine = p * (f[j] * da_mag + d_mag) + ds.abs();
                    for c in 0..hs {
                        let (q, k) = (qkv[hd.qkv(i, 0, c)], qkv[hd.qkv(j, 1, c)]);
                        let (qi, kj) = (i * hs + c, j * hs + c);
                        g[0][qi] += scale * ds * k;
                        mag[0][qi] += scale * (ds * k).abs();
                        fine[0][qi] += scale * ds_fine * k.abs();
                        g[1][kj] += scale * ds * q;
                        mag[1][kj] += scale * (ds * q).abs();
                        fine[1][kj] += scale * ds_fine * q.abs();
                        g[2][kj] += a * dy(i, c);
                        mag[2][kj] += (a * dy(i, c)).abs();
                        fine[2][kj] += (a * dy(i, c)).abs();
                    }
                }
            }
            (hd, g, mag, fine, score_mag)
        })
        .collect();
    let mut r = Backward {
        dqkv: vec![0.0; qkv.len()],
        mag: vec![0.0; qkv.len()],
        fine_mag: vec![0.0; qkv.len()],
        score_mag: 0.0,
    };
    for (hd, g, mag, fine, score_mag) in per_head {
        for part in 0..3 {
            for t in 0..t_len {
                for c in 0..hs {
                    let at = hd.qkv(t, part, c);
                    r.dqkv[at] = g[part][t * hs + c];
                    r.mag[at] = mag[part][t * hs + c];
                    r.fine_mag[at] = fine[part][t * hs + c];
                }
            }
        }
        r.score_mag = r.score_mag.max(score_mag);
    }
    r
}

/// Tolerances of a bf16 implementation against the rounded exact values
/// (see the module documentation for the derivation).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The relative weight of fp32 rounding, `gamma`.
    pub gamma: f64,
}

impl Bounds {
    pub fn new(s: AttnShape, score_mag: f64) -> Self {
        let roundings = 2.0 * (s.head_size() + s.seq) as f64 + 64.0;
        Bounds {
            gamma: roundings * U_F * (1.0 + score_mag),
        }
    }

    /// The largest allowed `|kernel - cpu|` of a bf16 element whose exact
    /// value (after any accumulation) is `x`, given the element's magnitudes.
    pub fn bf16(&self, x: f64, mag: f64, fine_mag: f64) -> f64 {
        (U_B + self.gamma) * mag * (1.0 + U_B) + self.gamma * fine_mag + 2.0 * U_B * x.abs()
    }

    /// The largest allowed `|kernel - cpu|` of an `lse` element.
    pub fn lse(&self, x: f64) -> f64 {
        self.gamma + 3.0 * U_F * x.abs()
    }
}
