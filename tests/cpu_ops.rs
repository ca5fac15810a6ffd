//! `CpuBackend` against straightforward f64 references.
//!
//! Each op has an f64 reference forward and backward below. Every reference
//! backward is first checked against central finite differences of
//! `loss = sum(out * w)` for random `w`; then the backend's f32 results are
//! compared with the reference on the same (f32-representable) inputs.
//! Backward calls always start from non-zero gradient buffers, so the
//! comparisons also check that gradients are accumulated (`+=`).
//!
//! Shapes are small and odd on purpose (B=2, T=7, C=12, 3 heads, vocab 11).

use dyntie::cpu::CpuBackend;
use dyntie::mem::{Buffer, DType};
use dyntie::ops::activation::{DropoutBwd, DropoutFwd, GeluBwd, GeluErfBwd, GeluErfFwd, GeluFwd};
use dyntie::ops::attention::{exact, AttentionBwd, AttentionFwd, AttnDropout, AttnShape};
use dyntie::ops::elementwise::{Accumulate, Add, CopyView, Fill};
use dyntie::ops::embedding::{EmbeddingBwd, EmbeddingFwd};
use dyntie::ops::layernorm::{LayernormBwd, LayernormFwd, LAYERNORM_EPS};
use dyntie::ops::loss::SoftmaxXent;
use dyntie::ops::matmul::{MatmulBwd, MatmulFwd};
use dyntie::ops::optimizer::{stat, AdamWStep, Adamw, SumSquares, SUM_SCRATCH_LEN};
use dyntie::ops::BackendExt;
use dyntie::rng::{attention_dropout_keep, dropout_keep, HostRng};

const B: usize = 2;
const T: usize = 7;
const C: usize = 12;
const NH: usize = 3;
const V: usize = 11;
const N: usize = B * T;
const SHAPE: AttnShape = AttnShape {
    batch: B,
    seq: T,
    channels: C,
    heads: NH,
};

/// Attention dropout of the tests: p = 0.3 at a head offset past 2^32.
const ATTN_DROPOUT: AttnDropout = AttnDropout {
    p: 0.3,
    seed: 17,
    offset: (1 << 32) - 1,
};

/// f32 round-off unit.
const EPS32: f64 = f32::EPSILON as f64;

// ---------------------------------------------------------------- harness

struct Bench {
    be: CpuBackend,
    rng: HostRng,
}

impl Bench {
    fn new(seed: u64) -> Self {
        Bench {
            be: CpuBackend::new(),
            rng: HostRng::new(seed),
        }
    }

    /// Standard normal values that are exactly representable in f32, so the
    /// f64 reference sees the same inputs as the backend.
    fn randn(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.rng.normal() as f32 as f64).collect()
    }

    fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n)
            .map(|_| self.rng.below(vocab as u64) as u32)
            .collect()
    }

    fn up(&self, x: &[f64]) -> Buffer {
        let buf = self.be.alloc(DType::F32, x.len()).unwrap();
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        self.be.upload(buf.view(), &x32).unwrap();
        buf
    }

    fn up_u32(&self, x: &[u32]) -> Buffer {
        let buf = self.be.alloc(DType::U32, x.len()).unwrap();
        self.be.upload(buf.view(), x).unwrap();
        buf
    }

    fn down(&self, b: &Buffer) -> Vec<f64> {
        let v: Vec<f32> = self.be.download(b.view()).unwrap();
        v.into_iter().map(f64::from).collect()
    }
}

/// `|got - want| <= tol * (1 + |want|)` elementwise, reporting the worst.
fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: lengths differ");
    let mut worst = (0.0f64, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{name}[{i}] = {g} is not finite");
        let err = (g - w).abs() / (1.0 + w.abs());
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= tol,
        "{name}: error {:.3e} > {tol:.1e} at [{i}]: got {}, want {}",
        worst.0,
        got[i],
        want[i]
    );
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn plus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// Checks `analytic[i]` = d loss / d inputs[i] by central differences,
/// within 1e-6 relative (`|a - n| <= 1e-6 * max(1, |n|)`).
fn fd_check(
    name: &str,
    inputs: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
    analytic: &[Vec<f64>],
) {
    let h = 1e-5;
    let mut x = inputs.to_vec();
    for (k, grad) in analytic.iter().enumerate() {
        for j in 0..x[k].len() {
            let x0 = x[k][j];
            x[k][j] = x0 + h;
            let up = loss(&x);
            x[k][j] = x0 - h;
            let down = loss(&x);
            x[k][j] = x0;
            let numeric = (up - down) / (2.0 * h);
            assert!(
                (grad[j] - numeric).abs() <= 1e-6 * numeric.abs().max(1.0),
                "{name}: d/d input{k}[{j}]: analytic {} vs numeric {numeric}",
                grad[j]
            );
        }
    }
}

// ------------------------------------------------------------- references

mod reference {
    use super::*;

    pub fn embedding_fwd(tokens: &[u32], wte: &[f64], wpe: &[f64], c: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for (r, &tok) in tokens.iter().enumerate() {
            let t = r % T;
            for i in 0..c {
                out.push(wte[tok as usize * c + i] + wpe[t * c + i]);
            }
        }
        out
    }

    pub fn embedding_bwd(dout: &[f64], tokens: &[u32], vocab: usize, c: usize) -> [Vec<f64>; 2] {
        let mut dwte = vec![0.0; vocab * c];
        let mut dwpe = vec![0.0; T * c];
        for (r, &tok) in tokens.iter().enumerate() {
            for i in 0..c {
                dwte[tok as usize * c + i] += dout[r * c + i];
                dwpe[(r % T) * c + i] += dout[r * c + i];
            }
        }
        [dwte, dwpe]
    }

    /// (out, mean, rstd)
    pub fn layernorm_fwd(x: &[f64], w: &[f64], b: &[f64], c: usize, eps: f32) -> [Vec<f64>; 3] {
        let (mut out, mut means, mut rstds) = (vec![], vec![], vec![]);
        for row in x.chunks(c) {
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for i in 0..c {
                out.push((row[i] - mean) * rstd * w[i] + b[i]);
            }
            means.push(mean);
            rstds.push(rstd);
        }
        [out, means, rstds]
    }

    /// (dinp, dweight, dbias)
    pub fn layernorm_bwd(dy: &[f64], x: &[f64], w: &[f64], c: usize, eps: f32) -> [Vec<f64>; 3] {
        let [_, means, rstds] = layernorm_fwd(x, w, &vec![0.0; c], c, eps);
        let (mut dx, mut dw, mut db) = (vec![], vec![0.0; c], vec![0.0; c]);
        for (r, (row, dyr)) in x.chunks(c).zip(dy.chunks(c)).enumerate() {
            let norm: Vec<f64> = row.iter().map(|v| (v - means[r]) * rstds[r]).collect();
            let dnorm: Vec<f64> = dyr.iter().zip(w).map(|(d, w)| d * w).collect();
            let m1 = dnorm.iter().sum::<f64>() / c as f64;
            let m2 = dot(&dnorm, &norm) / c as f64;
            for i in 0..c {
                dx.push(rstds[r] * (dnorm[i] - m1 - norm[i] * m2));
                dw[i] += dyr[i] * norm[i];
                db[i] += dyr[i];
            }
        }
        [dx, dw, db]
    }

    pub fn matmul_fwd(x: &[f64], w: &[f64], bias: &[f64], ic: usize, oc: usize) -> Vec<f64> {
        let mut out = vec![];
        for row in x.chunks(ic) {
            for o in 0..oc {
                out.push(dot(row, &w[o * ic..(o + 1) * ic]) + bias[o]);
            }
        }
        out
    }

    /// (dinp, dweight, dbias)
    pub fn matmul_bwd(dy: &[f64], x: &[f64], w: &[f64], ic: usize, oc: usize) -> [Vec<f64>; 3] {
        let rows = x.len() / ic;
        let (mut dx, mut dw, mut db) = (vec![0.0; rows * ic], vec![0.0; oc * ic], vec![0.0; oc]);
        for r in 0..rows {
            for o in 0..oc {
                let g = dy[r * oc + o];
                db[o] += g;
                for i in 0..ic {
                    dx[r * ic + i] += g * w[o * ic + i];
                    dw[o * ic + i] += g * x[r * ic + i];
                }
            }
        }
        [dx, dw, db]
    }

    /// Index of q (part 0), k (1) or v (2), channel `i` of head `h`.
    fn qkv_at(b: usize, t: usize, part: usize, h: usize, i: usize) -> usize {
        (b * T + t) * 3 * C + part * C + h * (C / NH) + i
    }

    /// (out, att)
    /// The dropout factor of probability (t, u) of head `bh`: 0, or
    /// 1 / (1 - p) where kept; 1 without dropout.
    fn drop_factor(dropout: Option<AttnDropout>, bh: usize, t: usize, u: usize) -> f64 {
        dropout.map_or(1.0, |d| {
            let kept =
                attention_dropout_keep(d.seed, d.offset + bh as u64, t as u32, u as u32, d.p);
            if kept {
                1.0 / (1.0 - d.p as f64)
            } else {
                0.0
            }
        })
    }

    /// `[out, att]`: att the probabilities before dropout, out = drop(att) v.
    pub fn attention_fwd(qkv: &[f64], dropout: Option<AttnDropout>) -> [Vec<f64>; 2] {
        let hs = C / NH;
        let scale = 1.0 / (hs as f64).sqrt();
        let mut out = vec![0.0; B * T * C];
        let mut att = vec![0.0; B * NH * T * T];
        for b in 0..B {
            for h in 0..NH {
                for t in 0..T {
                    let s: Vec<f64> = (0..=t)
                        .map(|u| {
                            let d: f64 = (0..hs)
                                .map(|i| qkv[qkv_at(b, t, 0, h, i)] * qkv[qkv_at(b, u, 1, h, i)])
                                .sum();
                            d * scale
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - max).exp()).sum();
                    for u in 0..=t {
                        let p = (s[u] - max).exp() / z;
                        att[((b * NH + h) * T + t) * T + u] = p;
                        let a = p * drop_factor(dropout, b * NH + h, t, u);
                        for i in 0..hs {
                            out[(b * T + t) * C + h * hs + i] += a * qkv[qkv_at(b, u, 2, h, i)];
                        }
                    }
                }
            }
        }
        [out, att]
    }

    /// dqkv, by whole-matrix algebra per head, with A = drop(P) and F the
    /// dropout factors: dA = dO V^T, dV = A^T dO, dP = F * dA,
    /// dS = P * (dP - rowsum(P * dP)), dQ = dS K * scale, dK = dS^T Q * scale.
    pub fn attention_bwd(dout: &[f64], qkv: &[f64], dropout: Option<AttnDropout>) -> Vec<f64> {
        let hs = C / NH;
        let scale = 1.0 / (hs as f64).sqrt();
        let [_, att] = attention_fwd(qkv, dropout);
        let mut dqkv = vec![0.0; qkv.len()];
        for b in 0..B {
            for h in 0..NH {
                let f = |t: usize, u: usize| drop_factor(dropout, b * NH + h, t, u);
                let p = |t: usize, u: usize| att[((b * NH + h) * T + t) * T + u];
                let dout_at = |t: usize, i: usize| dout[(b * T + t) * C + h * hs + i];
                let mut dp = vec![vec![0.0; T]; T];
                for (t, dpt) in dp.iter_mut().enumerate() {
                    for (u, dptu) in dpt.iter_mut().enumerate() {
                        *dptu = f(t, u)
                            * (0..hs)
                                .map(|i| dout_at(t, i) * qkv[qkv_at(b, u, 2, h, i)])
                                .sum::<f64>();
                    }
                }
                for u in 0..T {
                    for i in 0..hs {
                        dqkv[qkv_at(b, u, 2, h, i)] =
                            (0..T).map(|t| p(t, u) * f(t, u) * dout_at(t, i)).sum();
                    }
                }
                let mut ds = vec![vec![0.0; T]; T];
                for t in 0..T {
                    let rowsum: f64 = (0..T).map(|u| p(t, u) * dp[t][u]).sum();
                    for u in 0..T {
                        ds[t][u] = p(t, u) * (dp[t][u] - rowsum);
                    }
                }
                for t in 0..T {
                    for i in 0..hs {
                        dqkv[qkv_at(b, t, 0, h, i)] = scale
                            * (0..T)
                                .map(|u| ds[t][u] * qkv[qkv_at(b, u, 1, h, i)])
                                .sum::<f64>();
                        dqkv[qkv_at(b, t, 1, h, i)] = scale
                            * (0..T)
                                .map(|u| ds[u][t] * qkv[qkv_at(b, u, 0, h, i)])
                                .sum::<f64>();
                    }
                }
            }
        }
        dqkv
    }

    const K: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)

    pub fn gelu(x: &[f64]) -> Vec<f64> {
        x.iter()
            .map(|&x| 0.5 * x * (1.0 + (K * (x + 0.044715 * x.powi(3))).tanh()))
            .collect()
    }

    pub fn gelu_bwd(x: &[f64], dy: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(dy)
            .map(|(&x, dy)| {
                let th = (K * (x + 0.044715 * x.powi(3))).tanh();
                let du = K * (1.0 + 3.0 * 0.044715 * x * x);
                dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du)
            })
            .collect()
    }

    pub fn dropout(x: &[f64], p: f32, seed: u64, offset: u64) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, x)| {
                if dropout_keep(seed, offset + i as u64, p) {
                    x / (1.0 - p as f64)
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// (losses, dlogits = (softmax - onehot) * grad_scale)
    pub fn softmax_xent(
        logits: &[f64],
        targets: &[u32],
        vocab: usize,
        ignore: u32,
        grad_scale: f64,
    ) -> [Vec<f64>; 2] {
        let (mut losses, mut dl) = (vec![], vec![]);
        for (row, &tgt) in logits.chunks(vocab).zip(targets) {
            if tgt == ignore {
                losses.push(0.0);
                dl.extend(std::iter::repeat_n(0.0, vocab));
                continue;
            }
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
            losses.push(z.ln() + max - row[tgt as usize]);
            for (j, v) in row.iter().enumerate() {
                let onehot = if j == tgt as usize { 1.0 } else { 0.0 };
                dl.push(((v - max).exp() / z - onehot) * grad_scale);
            }
        }
        [losses, dl]
    }
}

// ------------------------------------------------ reference gradient checks

#[test]
fn reference_backwards_match_finite_differences() {
    let mut tb = Bench::new(1);
    let tokens = tb.tokens(N, V);

    let (wte, wpe) = (tb.randn(V * C), tb.randn(T * C));
    let w = tb.randn(N * C);
    let [dwte, dwpe] = reference::embedding_bwd(&w, &tokens, V, C);
    fd_check(
        "embedding",
        &[wte, wpe],
        |x| dot(&reference::embedding_fwd(&tokens, &x[0], &x[1], C), &w),
        &[dwte, dwpe],
    );

    let (x, lw, lb) = (tb.randn(N * C), tb.randn(C), tb.randn(C));
    let [dx, dlw, dlb] = reference::layernorm_bwd(&w, &x, &lw, C, LAYERNORM_EPS);
    fd_check(
        "layernorm",
        &[x, lw, lb],
        |x| {
            dot(
                &reference::layernorm_fwd(&x[0], &x[1], &x[2], C, LAYERNORM_EPS)[0],
                &w,
            )
        },
        &[dx, dlw, dlb],
    );

    let (ic, oc) = (C, 5);
    let (x, mw, mb, w) = (
        tb.randn(N * ic),
        tb.randn(oc * ic),
        tb.randn(oc),
        tb.randn(N * oc),
    );
    let grads = reference::matmul_bwd(&w, &x, &mw, ic, oc);
    fd_check(
        "matmul",
        &[x, mw, mb],
        |x| dot(&reference::matmul_fwd(&x[0], &x[1], &x[2], ic, oc), &w),
        &grads,
    );

    let (qkv, w) = (tb.randn(N * 3 * C), tb.randn(N * C));
    for (name, dropout) in [
        ("attention", None),
        ("attention dropout", Some(ATTN_DROPOUT)),
    ] {
        let dqkv = reference::attention_bwd(&w, &qkv, dropout);
        fd_check(
            name,
            std::slice::from_ref(&qkv),
            |x| dot(&reference::attention_fwd(&x[0], dropout)[0], &w),
            &[dqkv],
        );
    }

    let x: Vec<f64> = tb.randn(N * C).iter().map(|v| 3.0 * v).collect();
    let dx = reference::gelu_bwd(&x, &w);
    fd_check("gelu", &[x], |x| dot(&reference::gelu(&x[0]), &w), &[dx]);

    let x = tb.randn(N * C);
    let dx = reference::dropout(&w, 0.3, 9, 5);
    fd_check(
        "dropout",
        &[x],
        |x| dot(&reference::dropout(&x[0], 0.3, 9, 5), &w),
        &[dx],
    );

    // d(grad_scale * sum(losses)) / d logits is the returned dlogits.
    let mut targets = tb.tokens(N, V);
    targets[3] = u32::MAX;
    let logits = tb.randn(N * V);
    let [_, dl] = reference::softmax_xent(&logits, &targets, V, u32::MAX, 0.7);
    fd_check(
        "softmax_xent",
        &[logits],
        |x| {
            0.7 * reference::softmax_xent(&x[0], &targets, V, u32::MAX, 0.7)[0]
                .iter()
                .sum::<f64>()
        },
        &[dl],
    );
}

// ------------------------------------------------- backend vs reference

#[test]
fn embedding_matches_reference() {
    let mut tb = Bench::new(2);
    let tokens = tb.tokens(N, V);
    let (wte, wpe, dout) = (tb.randn(V * C), tb.randn(T * C), tb.randn(N * C));
    let (g_wte, g_wpe) = (tb.randn(V * C), tb.randn(T * C));
    let (tt, g_tt) = (tb.randn(C), tb.randn(C));
    let tok = tb.up_u32(&tokens);
    let (bwte, bwpe, bdout, btt) = (tb.up(&wte), tb.up(&wpe), tb.up(&dout), tb.up(&tt));
    // GPT-2's embeddings, then BERT's with the token-type row.
    for with_type in [false, true] {
        let out = tb.be.alloc(DType::F32, N * C).unwrap();
        tb.be
            .run(EmbeddingFwd {
                out: out.view(),
                tokens: tok.view(),
                wte: bwte.view(),
                wpe: bwpe.view(),
                token_type: with_type.then(|| btt.view()),
                batch: B,
                seq: T,
                channels: C,
            })
            .unwrap();
        let mut want = reference::embedding_fwd(&tokens, &wte, &wpe, C);
        if with_type {
            for (i, w) in want.iter_mut().enumerate() {
                *w += tt[i % C];
            }
        }
        // One or two additions per element: exact up to two roundings.
        assert_close("embedding out", &tb.down(&out), &want, 2.0 * EPS32);

        let (dwte, dwpe, dtt) = (tb.up(&g_wte), tb.up(&g_wpe), tb.up(&g_tt));
        tb.be
            .run(EmbeddingBwd {
                dwte: dwte.view(),
                dwpe: dwpe.view(),
                dtoken_type: with_type.then(|| dtt.view()),
                dout: bdout.view(),
                tokens: tok.view(),
                batch: B,
                seq: T,
                channels: C,
            })
            .unwrap();
        let [rwte, rwpe] = reference::embedding_bwd(&dout, &tokens, V, C);
        // At most N (or B) additions onto each row.
        let tol = 2.0 * N as f64 * EPS32;
        assert_close("dwte", &tb.down(&dwte), &plus(&g_wte, &rwte), tol);
        assert_close("dwpe", &tb.down(&dwpe), &plus(&g_wpe, &rwpe), tol);
        // The token-type row's gradient: the sum of every row of dout.
        let mut rtt = vec![0.0; C];
        for (i, d) in dout.iter().enumerate() {
            rtt[i % C] += d;
        }
        let want_tt = if with_type {
            plus(&g_tt, &rtt)
        } else {
            g_tt.clone()
        };
        assert_close("dtoken_type", &tb.down(&dtt), &want_tt, tol);
    }
}

#[test]
fn embedding_rejects_out_of_range_tokens() {
    let tb = Bench::new(3);
    let tok = tb.up_u32(&[0, V as u32]);
    let (wte, wpe, out) = (
        tb.up(&[0.0; V * C]),
        tb.up(&[0.0; 2 * C]),
        tb.up(&[0.0; 2 * C]),
    );
    let err = tb
        .be
        .run(EmbeddingFwd {
            out: out.view(),
            tokens: tok.view(),
            wte: wte.view(),
            wpe: wpe.view(),
            token_type: None,
            batch: 1,
            seq: 2,
            channels: C,
        })
        .unwrap_err();
    assert!(err.to_string().contains("token id 11"), "{err}");
}

#[test]
fn layernorm_matches_reference() {
    // Large enough to change every output: an epsilon left out shows.
    const TESTED_EPS: f32 = 0.25;
    let mut tb = Bench::new(4);
    let (x, w, b, dy) = (tb.randn(N * C), tb.randn(C), tb.randn(C), tb.randn(N * C));
    let (g_x, g_w, g_b) = (tb.randn(N * C), tb.randn(C), tb.randn(C));
    let (bx, bw, bb, bdy) = (tb.up(&x), tb.up(&w), tb.up(&b), tb.up(&dy));
    let (out, mean, rstd) = (
        tb.be.alloc(DType::F32, N * C).unwrap(),
        tb.be.alloc(DType::F32, N).unwrap(),
        tb.be.alloc(DType::F32, N).unwrap(),
    );
    tb.be
        .run(LayernormFwd {
            out: out.view(),
            mean: mean.view(),
            rstd: rstd.view(),
            inp: bx.view(),
            weight: bw.view(),
            bias: bb.view(),
            rows: N,
            channels: C,
            eps: TESTED_EPS,
        })
        .unwrap();
    let [rout, rmean, rrstd] = reference::layernorm_fwd(&x, &w, &b, C, TESTED_EPS);
    // Sums over C channels.
    let tol = 4.0 * C as f64 * EPS32;
    assert_close("ln out", &tb.down(&out), &rout, tol);
    assert_close("ln mean", &tb.down(&mean), &rmean, tol);
    assert_close("ln rstd", &tb.down(&rstd), &rrstd, tol);

    let (dx, dw, db) = (tb.up(&g_x), tb.up(&g_w), tb.up(&g_b));
    let bwd = |dinp: &Buffer, dweight: Option<&Buffer>, dbias: Option<&Buffer>| {
        tb.be.run(LayernormBwd {
            dinp: dinp.view(),
            dweight: dweight.map(Buffer::view),
            dbias: dbias.map(Buffer::view),
            dout: bdy.view(),
            inp: bx.view(),
            weight: bw.view(),
            mean: mean.view(),
            rstd: rstd.view(),
            rows: N,
            channels: C,
        })
    };
    bwd(&dx, Some(&dw), Some(&db)).unwrap();
    let [rdx, rdw, rdb] = reference::layernorm_bwd(&dy, &x, &w, C, TESTED_EPS);
    // dinp sums over C, dweight and dbias over N rows.
    assert_close("ln dinp", &tb.down(&dx), &plus(&g_x, &rdx), tol);
    let tol_rows = 4.0 * N as f64 * EPS32;
    assert_close("ln dweight", &tb.down(&dw), &plus(&g_w, &rdw), tol_rows);
    assert_close("ln dbias", &tb.down(&db), &plus(&g_b, &rdb), tol_rows);

    // A `None` weight gradient is skipped; the others are unchanged by that.
    let (dx2, db2) = (tb.up(&g_x), tb.up(&g_b));
    bwd(&dx2, None, Some(&db2)).unwrap();
    assert_eq!(tb.down(&dx2), tb.down(&dx));
    assert_eq!(tb.down(&db2), tb.down(&db));
}

/// Runs matmul fwd and bwd on `rows x ic -> oc` against the reference.
fn check_matmul(seed: u64, rows: usize, ic: usize, oc: usize) {
    let mut tb = Bench::new(seed);
    let (x, w, b, dy) = (
        tb.randn(rows * ic),
        tb.randn(oc * ic),
        tb.randn(oc),
        tb.randn(rows * oc),
    );
    let (g_x, g_w, g_b) = (tb.randn(rows * ic), tb.randn(oc * ic), tb.randn(oc));
    let (bx, bw, bb, bdy) = (tb.up(&x), tb.up(&w), tb.up(&b), tb.up(&dy));
    let out = tb.be.alloc(DType::F32, rows * oc).unwrap();
    tb.be
        .run(MatmulFwd {
            out: out.view(),
            inp: bx.view(),
            weight: bw.view(),
            bias: Some(bb.view()),
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap();
    // Each output is a sum of `ic` products plus the bias.
    let tol = |k: usize| 2.0 * k as f64 * EPS32;
    let rout = reference::matmul_fwd(&x, &w, &b, ic, oc);
    assert_close("matmul out", &tb.down(&out), &rout, tol(ic));
    tb.be
        .run(MatmulFwd {
            out: out.view(),
            inp: bx.view(),
            weight: bw.view(),
            bias: None,
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap();
    let rout = reference::matmul_fwd(&x, &w, &vec![0.0; oc], ic, oc);
    assert_close("matmul out (no bias)", &tb.down(&out), &rout, tol(ic));

    let (dx, dw, db) = (tb.up(&g_x), tb.up(&g_w), tb.up(&g_b));
    tb.be
        .run(MatmulBwd {
            dinp: Some(dx.view()),
            dweight: Some(dw.view()),
            dbias: Some(db.view()),
            dout: bdy.view(),
            inp: bx.view(),
            weight: bw.view(),
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap();
    let [rdx, rdw, rdb] = reference::matmul_bwd(&dy, &x, &w, ic, oc);
    assert_close("matmul dinp", &tb.down(&dx), &plus(&g_x, &rdx), tol(oc));
    assert_close(
        "matmul dweight",
        &tb.down(&dw),
        &plus(&g_w, &rdw),
        tol(rows),
    );
    assert_close("matmul dbias", &tb.down(&db), &plus(&g_b, &rdb), tol(rows));

    // Each gradient alone, with the others `None`, gives the same values.
    let (dx2, dw2, db2) = (tb.up(&g_x), tb.up(&g_w), tb.up(&g_b));
    let (dyv, xv, wv) = (bdy.view(), bx.view(), bw.view());
    let alone = |dinp, dweight, dbias| {
        tb.be.run(MatmulBwd {
            dinp,
            dweight,
            dbias,
            dout: dyv,
            inp: xv,
            weight: wv,
            rows,
            in_ch: ic,
            out_ch: oc,
        })
    };
    alone(Some(dx2.view()), None, None).unwrap();
    alone(None, Some(dw2.view()), None).unwrap();
    alone(None, None, Some(db2.view())).unwrap();
    assert_eq!(tb.down(&dx2), tb.down(&dx));
    assert_eq!(tb.down(&dw2), tb.down(&dw));
    assert_eq!(tb.down(&db2), tb.down(&db));
}

#[test]
fn matmul_matches_reference_on_small_odd_shapes() {
    check_matmul(5, N, C, V);
    check_matmul(6, 1, 3, 1);
}

#[test]
fn matmul_matches_reference_on_blocked_and_threaded_shapes() {
    // Sizes off every register-tile multiple, and large enough for gemm to
    // block and split the work over threads.
    check_matmul(7, 67, 130, 75);
    check_matmul(8, 193, 161, 129);
    // Wide enough (oc >= 4 blocks of 1 MiB / (4 ic) dweight rows) for the
    // weight gradient to go by row blocks, with a short last block.
    check_matmul(10, 5, 1031, 1100);
}

#[test]
fn matmul_is_deterministic() {
    let mut tb = Bench::new(9);
    let (rows, ic, oc) = (256, 192, 320);
    let (x, w, dy) = (tb.randn(rows * ic), tb.randn(oc * ic), tb.randn(rows * oc));
    let (x, w, dy) = (tb.up(&x), tb.up(&w), tb.up(&dy));
    let run = || {
        let dw = tb.be.alloc(DType::F32, oc * ic).unwrap();
        let dx = tb.be.alloc(DType::F32, rows * ic).unwrap();
        tb.be
            .run(MatmulBwd {
                dinp: Some(dx.view()),
                dweight: Some(dw.view()),
                dbias: None,
                dout: dy.view(),
                inp: x.view(),
                weight: w.view(),
                rows,
                in_ch: ic,
                out_ch: oc,
            })
            .unwrap();
        (tb.down(&dx), tb.down(&dw))
    };
    assert_eq!(run(), run());
}

#[test]
fn attention_matches_reference() {
    let mut tb = Bench::new(10);
    for dropout in [None, Some(ATTN_DROPOUT)] {
        let (qkv, dout, g) = (tb.randn(N * 3 * C), tb.randn(N * C), tb.randn(N * 3 * C));
        let (bqkv, bdout) = (tb.up(&qkv), tb.up(&dout));
        let out = tb.be.alloc(DType::F32, N * C).unwrap();
        // Filled with garbage: the op must write every element, zeros included.
        let att = tb.up(&vec![7.0; B * NH * T * T]);
        let dropped = tb.up(&vec![5.0; B * NH * T * T]);
        tb.be
            .run(AttentionFwd {
                out: out.view(),
                att: att.view(),
                dropped: dropout.map(|_| dropped.view()),
                qkv: bqkv.view(),
                shape: SHAPE,
                dropout,
            })
            .unwrap();
        let [rout, ratt] = reference::attention_fwd(&qkv, dropout);
        // Dot products of hs=4 and softmax/value sums over up to T=7 keys.
        let tol = 4.0 * (C / NH + T) as f64 * EPS32;
        assert_close("attention out", &tb.down(&out), &rout, tol);
        let att_got = tb.down(&att);
        assert_close("attention att", &att_got, &ratt, tol);
        for (i, a) in att_got.iter().enumerate() {
            let (t, u) = ((i / T) % T, i % T);
            if u > t {
                assert_eq!(*a, 0.0, "att above the diagonal at {i}");
            }
        }

        let dqkv = tb.up(&g);
        let scratch = tb.up(&vec![-3.0; B * NH * T * T]);
        tb.be
            .run(AttentionBwd {
                dqkv: dqkv.view(),
                scratch: scratch.view(),
                dout: bdout.view(),
                qkv: bqkv.view(),
                att: att.view(),
                shape: SHAPE,
                dropout,
            })
            .unwrap();
        let rd = reference::attention_bwd(&dout, &qkv, dropout);
        assert_close("attention dqkv", &tb.down(&dqkv), &plus(&g, &rd), tol);
    }
}

/// The flash ops' meaning (`exact`, which the CPU flash ops round and the
/// flash kernels are compared with) is the attention of the reference
/// above, whose backward is checked by finite differences: in f64 they
/// differ only by summation order.
#[test]
fn flash_semantics_match_the_reference_attention() {
    let mut tb = Bench::new(12);
    for dropout in [None, Some(ATTN_DROPOUT)] {
        let (qkv, dout) = (tb.randn(N * 3 * C), tb.randn(N * C));
        let fwd = exact::forward(&qkv, SHAPE, dropout);
        let [rout, _] = reference::attention_fwd(&qkv, dropout);
        assert_close("flash out", &fwd.out, &rout, 1e-12);
        let bwd = exact::backward(&dout, &fwd.out, &fwd.lse, &qkv, SHAPE, dropout);
        let rd = reference::attention_bwd(&dout, &qkv, dropout);
        assert_close("flash dqkv", &bwd.dqkv, &rd, 1e-12);
    }
}

#[test]
fn attention_dropout_drops_about_p_of_the_probabilities_and_scales_the_rest() {
    let mut tb = Bench::new(13);
    let (b, t, c, nh) = (2, 64, 8, 2);
    let shape = AttnShape {
        batch: b,
        seq: t,
        channels: c,
        heads: nh,
    };
    let qkv = tb.randn(b * t * 3 * c);
    let qkv = tb.up(&qkv);
    let len = b * nh * t * t;
    let (out, att, dropped) = (
        tb.be.alloc(DType::F32, b * t * c).unwrap(),
        tb.be.alloc(DType::F32, len).unwrap(),
        tb.be.alloc(DType::F32, len).unwrap(),
    );
    tb.be
        .run(AttentionFwd {
            out: out.view(),
            att: att.view(),
            dropped: Some(dropped.view()),
            qkv: qkv.view(),
            shape,
            dropout: Some(ATTN_DROPOUT),
        })
        .unwrap();
    let (p, a) = (tb.down(&att), tb.down(&dropped));
    let (mut kept, mut live) = (0, 0);
    let scale = 1.0 / (1.0 - ATTN_DROPOUT.p as f64);
    for (i, (p, a)) in p.iter().zip(&a).enumerate() {
        let (row, col) = ((i / t) % t, i % t);
        if col > row {
            continue;
        }
        live += 1;
        if *a != 0.0 {
            kept += 1;
            assert!((a - p * scale).abs() <= 1e-6 * a.abs(), "[{i}]: {a} vs {p}");
        }
    }
    let share = kept as f64 / live as f64;
    assert!((share - 0.7).abs() < 0.03, "kept {kept} of {live}");
}

#[test]
fn attention_rejects_heads_that_do_not_divide_channels() {
    let tb = Bench::new(11);
    let (out, att, qkv) = (tb.up(&[0.0; 10]), tb.up(&[0.0; 4]), tb.up(&[0.0; 30]));
    let shape = AttnShape {
        batch: 1,
        seq: 1,
        channels: 10,
        heads: 3,
    };
    assert!(tb
        .be
        .run(AttentionFwd {
            out: out.view(),
            att: att.view(),
            dropped: None,
            qkv: qkv.view(),
            shape,
            dropout: None,
        })
        .is_err());
}

#[test]
fn gelu_matches_reference() {
    let mut tb = Bench::new(12);
    let x: Vec<f64> = tb
        .randn(N * C)
        .iter()
        .map(|v| (3.0 * v) as f32 as f64)
        .collect();
    let (dy, g) = (tb.randn(N * C), tb.randn(N * C));
    let (bx, bdy) = (tb.up(&x), tb.up(&dy));
    let out = tb.be.alloc(DType::F32, N * C).unwrap();
    tb.be
        .run(GeluFwd {
            out: out.view(),
            inp: bx.view(),
        })
        .unwrap();
    // tanh and a handful of products: a few roundings per element.
    let tol = 16.0 * EPS32;
    assert_close("gelu out", &tb.down(&out), &reference::gelu(&x), tol);
    let dx = tb.up(&g);
    tb.be
        .run(GeluBwd {
            dinp: dx.view(),
            inp: bx.view(),
            dout: bdy.view(),
        })
        .unwrap();
    let want = plus(&g, &reference::gelu_bwd(&x, &dy));
    assert_close("gelu dinp", &tb.down(&dx), &want, tol);
}

/// `x Φ(x)` and its derivative `Φ(x) + x φ(x)` at points across both tails,
/// from Python's `math.erfc` (an independent implementation).
const GELU_ERF_POINTS: [(f64, f64, f64); 9] = [
    (-6.0, -5.919525870226207e-09, -3.5468709453902015e-08),
    (-3.0, -0.004049694094890287, -0.011945647204183927),
    (-1.0, -0.15865525393145707, -0.08331547058768629),
    (-0.5, -0.15426876936299344, 0.13250487534383712),
    (0.0, 0.0, 0.5),
    (0.3, 0.18537342665668577, 0.7323277668271098),
    (1.0, 0.8413447460685429, 1.0833154705876864),
    (2.5, 2.4844758366855597, 1.037611085908145),
    (5.0, 4.99999856674214, 1.0000071469460017),
];

/// The exact GELU on the CPU: forward and backward `(x, dout = 1)`.
fn gelu_erf(tb: &Bench, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (bx, ones) = (tb.up(x), tb.up(&vec![1.0; x.len()]));
    let (out, dx) = (tb.up(&vec![0.0; x.len()]), tb.up(&vec![0.0; x.len()]));
    let fwd = GeluErfFwd {
        out: out.view(),
        inp: bx.view(),
    };
    tb.be.run(fwd).unwrap();
    let bwd = GeluErfBwd {
        dinp: dx.view(),
        inp: bx.view(),
        dout: ones.view(),
    };
    tb.be.run(bwd).unwrap();
    (tb.down(&out), tb.down(&dx))
}

#[test]
fn gelu_erf_matches_known_values_in_both_tails() {
    let tb = Bench::new(21);
    let x: Vec<f64> = GELU_ERF_POINTS.iter().map(|p| p.0).collect();
    let (out, grad) = gelu_erf(&tb, &x);
    for (i, &(x, f, df)) in GELU_ERF_POINTS.iter().enumerate() {
        // Computed in f64 and rounded once: within one f32 rounding, relative
        // even in the far negative tail, where 1 + erf would have cancelled.
        assert!(
            (out[i] - f).abs() <= EPS32 * f.abs(),
            "gelu_erf({x}) = {} vs {f}",
            out[i]
        );
        assert!(
            (grad[i] - df).abs() <= EPS32 * df.abs(),
            "gelu_erf'({x}) = {} vs {df}",
            grad[i]
        );
    }
}

#[test]
fn gelu_erf_backward_matches_finite_differences_of_the_forward() {
    let mut tb = Bench::new(22);
    let mut x: Vec<f64> = tb
        .randn(300)
        .iter()
        .map(|v| (3.0 * v) as f32 as f64)
        .collect();
    x.extend(GELU_ERF_POINTS.iter().map(|p| p.0));
    // h a power of two, and the quotient over the f32 points actually used.
    let h = 1.0 / 64.0;
    let (xp, xm): (Vec<f64>, Vec<f64>) = x
        .iter()
        .map(|&x| ((x + h) as f32 as f64, (x - h) as f32 as f64))
        .unzip();
    let (fp, _) = gelu_erf(&tb, &xp);
    let (fm, _) = gelu_erf(&tb, &xm);
    let (_, grad) = gelu_erf(&tb, &x);
    for i in 0..x.len() {
        let fd = (fp[i] - fm[i]) / (xp[i] - xm[i]);
        // Truncation h^2/6 times the third derivative's maximum (0.78):
        // 3.2e-5; plus two f32 roundings of outputs up to 12, over 2h: 7e-5
        // in all.
        assert!(
            (fd - grad[i]).abs() <= 1e-4,
            "gelu_erf'({}) = {} but the central difference is {fd}",
            x[i],
            grad[i]
        );
    }
}

#[test]
fn dropout_matches_reference_across_chunks() {
    let mut tb = Bench::new(13);
    // Longer than the backend's parallel chunk, so chunk offsets are tested.
    let n = 40_001;
    let (x, dy, g) = (tb.randn(n), tb.randn(n), tb.randn(n));
    let (p, seed, offset) = (0.25, 0xDEAD_BEEF, 1_000_003);
    let (bx, bdy) = (tb.up(&x), tb.up(&dy));
    let out = tb.be.alloc(DType::F32, n).unwrap();
    let fwd = |out: &Buffer, p, offset| {
        tb.be.run(DropoutFwd {
            out: out.view(),
            inp: bx.view(),
            p,
            seed,
            offset,
        })
    };
    fwd(&out, p, offset).unwrap();
    let got = tb.down(&out);
    assert_close(
        "dropout out",
        &got,
        &reference::dropout(&x, p, seed, offset),
        EPS32,
    );

    let kept = got.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.75).abs() < 0.01, "kept fraction {kept}");

    // The same (seed, offset) gives the same mask; the backward uses it too.
    let out2 = tb.be.alloc(DType::F32, n).unwrap();
    fwd(&out2, p, offset).unwrap();
    assert_eq!(tb.down(&out2), got);
    let dx = tb.up(&g);
    tb.be
        .run(DropoutBwd {
            dinp: dx.view(),
            dout: bdy.view(),
            p,
            seed,
            offset,
        })
        .unwrap();
    let dx = tb.down(&dx);
    let want = plus(&g, &reference::dropout(&dy, p, seed, offset));
    assert_close("dropout dinp", &dx, &want, 2.0 * EPS32);
    for i in 0..n {
        assert_eq!(
            got[i] == 0.0,
            dx[i] as f32 == g[i] as f32,
            "mask differs at {i}"
        );
    }

    // Another offset is another mask; p = 0 keeps all, p = 1 drops all.
    fwd(&out2, p, offset + 1).unwrap();
    assert_ne!(tb.down(&out2), got);
    fwd(&out2, 0.0, offset).unwrap();
    assert_eq!(tb.down(&out2), x);
    fwd(&out2, 1.0, offset).unwrap();
    assert!(tb.down(&out2).iter().all(|&v| v == 0.0));
    assert!(fwd(&out2, 1.5, offset).is_err());
}

#[test]
fn softmax_xent_matches_reference_with_ignored_rows_and_aliasing() {
    let mut tb = Bench::new(14);
    let ignore = 7;
    let mut targets = tb.tokens(N, V);
    targets[0] = ignore;
    targets[N - 2] = ignore;
    let logits = tb.randn(N * V);
    let (bt, bl) = (tb.up_u32(&targets), tb.up(&logits));
    let (losses, dl) = (
        tb.be.alloc(DType::F32, N).unwrap(),
        tb.up(&vec![5.0; N * V]),
    );
    let scale = 1.0 / 13.0;
    tb.be
        .run(SoftmaxXent {
            losses: losses.view(),
            dlogits: Some(dl.view()),
            logits: bl.view(),
            targets: bt.view(),
            rows: N,
            vocab: V,
            padded_vocab: V,
            ignore_index: ignore,
            grad_scale: scale,
        })
        .unwrap();
    let [rl, rdl] = reference::softmax_xent(&logits, &targets, V, ignore, scale as f64);
    // Sums of exp over the vocabulary.
    let tol = 4.0 * V as f64 * EPS32;
    let got_l = tb.down(&losses);
    assert_close("xent losses", &got_l, &rl, tol);
    let got_dl = tb.down(&dl);
    assert_close("xent dlogits", &got_dl, &rdl, tol);
    assert_eq!(got_l[0], 0.0);
    assert!(got_dl[..V].iter().all(|&v| v == 0.0));

    // Without dlogits: the same losses.
    tb.be
        .run(SoftmaxXent {
            losses: losses.view(),
            dlogits: None,
            logits: bl.view(),
            targets: bt.view(),
            rows: N,
            vocab: V,
            padded_vocab: V,
            ignore_index: ignore,
            grad_scale: scale,
        })
        .unwrap();
    assert_eq!(tb.down(&losses), got_l);

    // dlogits written over the logits themselves: identical results.
    tb.be
        .run(SoftmaxXent {
            losses: losses.view(),
            dlogits: Some(bl.view()),
            logits: bl.view(),
            targets: bt.view(),
            rows: N,
            vocab: V,
            padded_vocab: V,
            ignore_index: ignore,
            grad_scale: scale,
        })
        .unwrap();
    assert_eq!(tb.down(&losses), got_l);
    assert_eq!(tb.down(&bl), got_dl);
}

#[test]
fn softmax_xent_is_stable_for_large_logits() {
    let mut tb = Bench::new(15);
    let targets = tb.tokens(N, V);
    let logits = tb.randn(N * V);
    let shifted: Vec<f64> = logits.iter().map(|v| v * 30.0 + 1000.0).collect();
    let shifted: Vec<f64> = shifted.iter().map(|&v| v as f32 as f64).collect();
    let (bt, bl) = (tb.up_u32(&targets), tb.up(&shifted));
    let (losses, dl) = (
        tb.be.alloc(DType::F32, N).unwrap(),
        tb.be.alloc(DType::F32, N * V).unwrap(),
    );
    tb.be
        .run(SoftmaxXent {
            losses: losses.view(),
            dlogits: Some(dl.view()),
            logits: bl.view(),
            targets: bt.view(),
            rows: N,
            vocab: V,
            padded_vocab: V,
            ignore_index: u32::MAX,
            grad_scale: 1.0,
        })
        .unwrap();
    let [rl, rdl] = reference::softmax_xent(&shifted, &targets, V, u32::MAX, 1.0);
    // Logits near 1000 carry an absolute error of 1000 * EPS32 each.
    let tol = 4.0 * 1000.0 * EPS32;
    assert_close("xent losses (large)", &tb.down(&losses), &rl, tol);
    assert_close("xent dlogits (large)", &tb.down(&dl), &rdl, tol);
}

#[test]
fn softmax_xent_rejects_targets_beyond_the_vocabulary() {
    let tb = Bench::new(16);
    let (bt, bl, losses) = (tb.up_u32(&[V as u32]), tb.up(&[0.0; V]), tb.up(&[0.0]));
    let err = tb
        .be
        .run(SoftmaxXent {
            losses: losses.view(),
            dlogits: None,
            logits: bl.view(),
            targets: bt.view(),
            rows: 1,
            vocab: V,
            padded_vocab: V,
            ignore_index: u32::MAX,
            grad_scale: 1.0,
        })
        .unwrap_err();
    assert!(err.to_string().contains("target 11"), "{err}");
}

#[test]
fn adamw_matches_a_hand_computed_step() {
    let tb = Bench::new(17);
    let hp = AdamWStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 1,
    };
    let stats: Vec<f64> = stat::with_scale(0.5, false)
        .iter()
        .map(|&x| x as f64)
        .collect();
    let stats = tb.up(&stats);
    let p0 = [0.5, -1.0, 2.0, 0.0];
    let g = [0.2, -0.4, 0.0, 3.0];
    let (bp, bg) = (tb.up(&p0), tb.up(&g));
    let (m, v) = (
        tb.be.alloc(DType::F32, 4).unwrap(),
        tb.be.alloc(DType::F32, 4).unwrap(),
    );
    tb.be
        .run(Adamw {
            params: bp.view(),
            grads: bg.view(),
            m: m.view(),
            v: v.view(),
            copy: None,
            stats: stats.view(),
            hp,
        })
        .unwrap();
    // Step 1: m_hat = g', v_hat = g'^2 (g' = g * 0.5), so the update is
    // lr * sign(g') (to within eps), after decay by (1 - lr * wd) = 0.999.
    let want = [0.5 * 0.999 - 0.01, -0.999 + 0.01, 2.0 * 0.999, 0.0 - 0.01];
    assert_close("adamw p (step 1)", &tb.down(&bp), &want, 2.0 * EPS32);
    assert_close(
        "adamw m",
        &tb.down(&m),
        &[0.01, -0.02, 0.0, 0.15],
        2.0 * EPS32,
    );
    let v_want = [0.05 * 0.01, 0.05 * 0.04, 0.0, 0.05 * 2.25];
    assert_close("adamw v", &tb.down(&v), &v_want, 2.0 * EPS32);

    // Step 2 from there, against the formula in f64.
    let (p1, m1, v1) = (tb.down(&bp), tb.down(&m), tb.down(&v));
    let g2 = [-0.1, 0.3, 1.0, 0.0];
    tb.be.upload(bg.view(), &g2.map(|x| x as f32)).unwrap();
    tb.be
        .run(Adamw {
            params: bp.view(),
            grads: bg.view(),
            m: m.view(),
            v: v.view(),
            copy: None,
            stats: stats.view(),
            hp: AdamWStep { step: 2, ..hp },
        })
        .unwrap();
    let want: Vec<f64> = (0..4)
        .map(|i| {
            let gi = g2[i] * 0.5;
            let mi = 0.9 * m1[i] + 0.1 * gi;
            let vi = 0.95 * v1[i] + 0.05 * gi * gi;
            let (mh, vh) = (mi / (1.0 - 0.81), vi / (1.0 - 0.9025));
            p1[i] * 0.999 - 0.01 * mh / (vh.sqrt() + 1e-8)
        })
        .collect();
    assert_close("adamw p (step 2)", &tb.down(&bp), &want, 8.0 * EPS32);
}

#[test]
fn sum_squares_accumulates_in_f64() {
    let mut tb = Bench::new(18);
    // 2^24 + 1 is not an f32: a plain f32 running sum of these ones stalls.
    let n = (1 << 24) + 4;
    let x = vec![1.0; n];
    let (acc, bx) = (tb.up(&[0.25]), tb.up(&x));
    // The kernels' scratch; the CPU does not touch it.
    let scratch = tb.be.alloc(DType::F32, SUM_SCRATCH_LEN).unwrap();
    tb.be
        .run(SumSquares {
            acc: acc.view(),
            scratch: scratch.view(),
            x: bx.view(),
        })
        .unwrap();
    assert_eq!(tb.down(&acc)[0], ((n as f64) + 0.25) as f32 as f64);

    let y = tb.randn(N * C);
    let (acc, by) = (tb.up(&[1.5]), tb.up(&y));
    tb.be
        .run(SumSquares {
            acc: acc.view(),
            scratch: scratch.view(),
            x: by.view(),
        })
        .unwrap();
    let want = 1.5 + dot(&y, &y);
    assert_close("sum_squares", &tb.down(&acc), &[want], EPS32);
}

#[test]
fn elementwise_ops_and_add_aliasing() {
    let mut tb = Bench::new(19);
    let n = 37;
    let (a, b) = (tb.randn(n), tb.randn(n));
    let sum: Vec<f64> = plus(&a, &b).iter().map(|&v| v as f32 as f64).collect();
    let (ba, bb, out) = (tb.up(&a), tb.up(&b), tb.be.alloc(DType::F32, n).unwrap());
    tb.be
        .run(Add {
            out: out.view(),
            a: ba.view(),
            b: bb.view(),
        })
        .unwrap();
    assert_eq!(tb.down(&out), sum);

    // out = a
    tb.be
        .run(Add {
            out: ba.view(),
            a: ba.view(),
            b: bb.view(),
        })
        .unwrap();
    assert_eq!(tb.down(&ba), sum);
    // out = b
    let ba = tb.up(&a);
    tb.be
        .run(Add {
            out: bb.view(),
            a: ba.view(),
            b: bb.view(),
        })
        .unwrap();
    assert_eq!(tb.down(&bb), sum);
    // out = a = b
    tb.be
        .run(Add {
            out: ba.view(),
            a: ba.view(),
            b: ba.view(),
        })
        .unwrap();
    assert_eq!(tb.down(&ba), a.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    // a partial overlap is refused
    let big = tb.up(&vec![1.0; 2 * n]);
    let err = tb
        .be
        .run(Add {
            out: big.view().slice(1, n),
            a: big.view().slice(0, n),
            b: bb.view(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");

    let ba = tb.up(&a);
    tb.be
        .run(Accumulate {
            dst: ba.view(),
            src: bb.view(),
        })
        .unwrap();
    let want: Vec<f64> = a
        .iter()
        .zip(&sum)
        .map(|(a, s)| (a + s) as f32 as f64)
        .collect();
    assert_eq!(tb.down(&ba), want);

    tb.be
        .run(CopyView {
            dst: out.view(),
            src: bb.view(),
        })
        .unwrap();
    assert_eq!(tb.down(&out), tb.down(&bb));
    tb.be
        .run(Fill {
            dst: out.view(),
            value: -2.5,
        })
        .unwrap();
    assert_eq!(tb.down(&out), vec![-2.5; n]);
}

#[test]
fn short_views_are_refused_with_the_operand_name() {
    let tb = Bench::new(20);
    let (x, w, out) = (tb.up(&[0.0; 12]), tb.up(&[0.0; 12]), tb.up(&[0.0; 3]));
    let err = tb
        .be
        .run(MatmulFwd {
            out: out.view(),
            inp: x.view(),
            weight: w.view(),
            bias: None,
            rows: 2,
            in_ch: 6,
            out_ch: 2,
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("matmul_fwd: out has 3 elements but the shape needs 4"),
        "{err}"
    );
    let err = tb
        .be
        .run(CopyView {
            dst: out.view(),
            src: x.view(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("must match"), "{err}");
}
