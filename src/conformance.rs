//! One harness that runs every `Backend` op on two backends with the same
//! random inputs and compares the outputs. The kernel tests use it with
//! `KernelBackend<EmuDevice>` against `CpuBackend`; `dyntie doctor` uses it
//! with the CUDA backend on a real GPU.
//!
//! Error measure: `max |candidate - reference| / max(|reference|, 1e-3)` over
//! each output tensor (a normalised max error: element-wise relative errors
//! explode near zero). Gradient outputs start from random non-zero values, so
//! the `+=` contract is checked too. Tolerances grow with the reduction
//! length `K`: `tol = 2e-6 * sqrt(K) + 2e-6` for sums over `K` terms, which
//! leaves room for a different summation order and fused multiply-adds but
//! not for a wrong index.

use crate::backend::{AdamWStep, AttnShape, Backend, Buffer, View};
use crate::rng::HostRng;
use anyhow::Result;

/// One op at one shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub op: String,
    pub shape: String,
    pub max_err: f64,
    pub tol: f64,
    pub passed: bool,
    /// Set when the candidate failed to run (for example an op without a kernel).
    pub error: Option<String>,
}

/// Every op name this harness knows, in the order it runs them.
pub const OPS: &[&str] = &[
    "fill",
    "copy",
    "add",
    "accumulate",
    "gelu_fwd",
    "gelu_bwd",
    "dropout_fwd",
    "dropout_bwd",
    "embedding_fwd",
    "embedding_bwd",
    "layernorm_fwd",
    "layernorm_bwd",
    "matmul_fwd",
    "matmul_bwd",
    "attention_fwd",
    "attention_bwd",
    "softmax_xent",
    "adamw",
    "sum_squares",
];

/// The shapes one op is checked at.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
    pub heads: usize,
    pub vocab: usize,
}

impl Dims {
    /// Odd sizes, a mid size that is no multiple of any tile, and one large
    /// enough for many blocks.
    pub fn standard() -> Vec<Dims> {
        vec![
            Dims {
                batch: 2,
                seq: 7,
                channels: 12,
                heads: 3,
                vocab: 11,
            },
            Dims {
                batch: 3,
                seq: 37,
                channels: 72,
                heads: 4,
                vocab: 101,
            },
            Dims {
                batch: 2,
                seq: 67,
                channels: 160,
                heads: 5,
                vocab: 517,
            },
        ]
    }

    fn describe(&self) -> String {
        format!(
            "B{} T{} C{} H{} V{}",
            self.batch, self.seq, self.channels, self.heads, self.vocab
        )
    }
}

fn tol_for(k: usize) -> f64 {
    2e-6 * (k as f64).sqrt() + 2e-6
}

/// A tensor living on both backends with the same contents.
struct Pair {
    r: Buffer,
    c: Buffer,
    len: usize,
}

impl Pair {
    fn rv(&self) -> View<f32> {
        self.r.f32().slice(0, self.len)
    }
    fn cv(&self) -> View<f32> {
        self.c.f32().slice(0, self.len)
    }
    fn ru(&self) -> View<u32> {
        self.r.u32().slice(0, self.len)
    }
    fn cu(&self) -> View<u32> {
        self.c.u32().slice(0, self.len)
    }
}

struct Harness<'a> {
    reference: &'a dyn Backend,
    candidate: &'a dyn Backend,
    rng: HostRng,
}

impl Harness<'_> {
    fn values(&mut self, len: usize, scale: f64, offset: f64) -> Vec<f32> {
        (0..len)
            .map(|_| (offset + scale * self.rng.normal()) as f32)
            .collect()
    }

    fn pair(&mut self, data: &[f32]) -> Result<Pair> {
        let r = self.reference.alloc_f32(data.len().max(1))?;
        let c = self.candidate.alloc_f32(data.len().max(1))?;
        self.reference
            .upload_f32(r.f32().slice(0, data.len()), data)?;
        self.candidate
            .upload_f32(c.f32().slice(0, data.len()), data)?;
        Ok(Pair {
            r,
            c,
            len: data.len(),
        })
    }

    fn random(&mut self, len: usize, scale: f64) -> Result<Pair> {
        let v = self.values(len, scale, 0.0);
        self.pair(&v)
    }

    fn tokens(&mut self, len: usize, below: usize) -> Result<Pair> {
        let ids: Vec<u32> = (0..len)
            .map(|_| self.rng.below(below as u64) as u32)
            .collect();
        let r = self.reference.alloc(len * 4)?;
        let c = self.candidate.alloc(len * 4)?;
        self.reference.upload_u32(r.u32().slice(0, len), &ids)?;
        self.candidate.upload_u32(c.u32().slice(0, len), &ids)?;
        Ok(Pair { r, c, len })
    }

    /// Normalised max error over the given outputs (the worst of them).
    fn compare(&self, outputs: &[&Pair]) -> Result<f64> {
        let mut worst = 0.0f64;
        for p in outputs {
            let a = self.reference.download_f32(p.rv())?;
            let b = self.candidate.download_f32(p.cv())?;
            let scale = a.iter().fold(1e-3f64, |m, x| m.max(x.abs() as f64));
            for (x, y) in a.iter().zip(&b) {
                let d = (*x as f64 - *y as f64).abs() / scale;
                // A NaN anywhere must fail the case.
                worst = if d.is_nan() {
                    f64::INFINITY
                } else {
                    worst.max(d)
                };
            }
        }
        Ok(worst)
    }

    /// Runs `op` on both backends; returns (normalised error, tolerance).
    fn run_inner(&mut self, op: &str, d: Dims) -> Result<(f64, f64)> {
        let (b, t, c, nh, v) = (d.batch, d.seq, d.channels, d.heads, d.vocab);
        let n = b * t;
        let (r, k) = (self.reference, self.candidate);
        macro_rules! both {
            ($call:expr) => {{
                let f = $call;
                f(r, true)?;
                f(k, false)?;
            }};
        }
        let sel = |p: &Pair, on_ref: bool| if on_ref { p.rv() } else { p.cv() };
        let selu = |p: &Pair, on_ref: bool| if on_ref { p.ru() } else { p.cu() };
        let len = n * c + 3; // an odd length for the elementwise ops
        Ok(match op {
            "fill" => {
                let out = self.random(len, 1.0)?;
                both!(|be: &dyn Backend, rf| be.fill(sel(&out, rf), 0.375));
                (self.compare(&[&out])?, 0.0)
            }
            "copy" => {
                let (out, x) = (self.random(len, 1.0)?, self.random(len, 1.0)?);
                both!(|be: &dyn Backend, rf| be.copy(sel(&out, rf), sel(&x, rf)));
                (self.compare(&[&out])?, 0.0)
            }
            "add" => {
                let (out, a, bb) = (
                    self.random(len, 1.0)?,
                    self.random(len, 1.0)?,
                    self.random(len, 1.0)?,
                );
                both!(|be: &dyn Backend, rf| be.add(sel(&out, rf), sel(&a, rf), sel(&bb, rf)));
                // In place, as the residual stream uses it.
                both!(|be: &dyn Backend, rf| be.add(sel(&a, rf), sel(&a, rf), sel(&bb, rf)));
                (self.compare(&[&out, &a])?, tol_for(1))
            }
            "accumulate" => {
                let (dst, src) = (self.random(len, 1.0)?, self.random(len, 1.0)?);
                both!(|be: &dyn Backend, rf| be.accumulate(sel(&dst, rf), sel(&src, rf)));
                (self.compare(&[&dst])?, tol_for(1))
            }
            "gelu_fwd" => {
                let (out, x) = (self.random(len, 1.0)?, self.random(len, 2.0)?);
                both!(|be: &dyn Backend, rf| be.gelu_fwd(sel(&out, rf), sel(&x, rf)));
                (self.compare(&[&out])?, 1e-5)
            }
            "gelu_bwd" => {
                let (dx, x, dy) = (
                    self.random(len, 1.0)?,
                    self.random(len, 2.0)?,
                    self.random(len, 1.0)?,
                );
                both!(|be: &dyn Backend, rf| be.gelu_bwd(sel(&dx, rf), sel(&x, rf), sel(&dy, rf)));
                (self.compare(&[&dx])?, 1e-5)
            }
            "dropout_fwd" => {
                let (out, x) = (self.random(len, 1.0)?, self.random(len, 1.0)?);
                both!(|be: &dyn Backend, rf| be.dropout_fwd(
                    sel(&out, rf),
                    sel(&x, rf),
                    0.2,
                    99,
                    12_345
                ));
                (self.compare(&[&out])?, 1e-6)
            }
            "dropout_bwd" => {
                let (dx, dy) = (self.random(len, 1.0)?, self.random(len, 1.0)?);
                both!(|be: &dyn Backend, rf| be.dropout_bwd(
                    sel(&dx, rf),
                    sel(&dy, rf),
                    0.3,
                    7,
                    1 << 33
                ));
                (self.compare(&[&dx])?, 1e-6)
            }
            "embedding_fwd" => {
                let out = self.random(n * c, 1.0)?;
                let tok = self.tokens(n, v)?;
                let (wte, wpe) = (self.random(v * c, 1.0)?, self.random(t * c, 1.0)?);
                both!(|be: &dyn Backend, rf| be.embedding_fwd(
                    sel(&out, rf),
                    selu(&tok, rf),
                    sel(&wte, rf),
                    sel(&wpe, rf),
                    b,
                    t,
                    c
                ));
                (self.compare(&[&out])?, tol_for(2))
            }
            "embedding_bwd" => {
                let (dwte, dwpe) = (self.random(v * c, 1.0)?, self.random(t * c, 1.0)?);
                let dout = self.random(n * c, 1.0)?;
                // Few distinct ids, so rows collide and the scatter must add.
                let tok = self.tokens(n, v.min(5))?;
                both!(|be: &dyn Backend, rf| be.embedding_bwd(
                    sel(&dwte, rf),
                    sel(&dwpe, rf),
                    sel(&dout, rf),
                    selu(&tok, rf),
                    b,
                    t,
                    c
                ));
                (self.compare(&[&dwte, &dwpe])?, tol_for(n))
            }
            "layernorm_fwd" => {
                let (out, mean, rstd) = (
                    self.random(n * c, 1.0)?,
                    self.random(n, 1.0)?,
                    self.random(n, 1.0)?,
                );
                let x = self.values(n * c, 2.0, 0.5);
                let x = self.pair(&x)?;
                let wv = self.values(c, 0.2, 1.0);
                let w = self.pair(&wv)?;
                let bias = self.random(c, 0.2)?;
                both!(|be: &dyn Backend, rf| be.layernorm_fwd(
                    sel(&out, rf),
                    sel(&mean, rf),
                    sel(&rstd, rf),
                    sel(&x, rf),
                    sel(&w, rf),
                    sel(&bias, rf),
                    n,
                    c
                ));
                (self.compare(&[&out, &mean, &rstd])?, tol_for(c))
            }
            "layernorm_bwd" => {
                let xv = self.values(n * c, 2.0, 0.5);
                let x = self.pair(&xv)?;
                let wv = self.values(c, 0.2, 1.0);
                let w = self.pair(&wv)?;
                let bias = self.random(c, 0.2)?;
                let (out, mean, rstd) = (
                    self.random(n * c, 1.0)?,
                    self.random(n, 1.0)?,
                    self.random(n, 1.0)?,
                );
                // mean/rstd come from the reference forward and are copied to the candidate.
                r.layernorm_fwd(
                    out.rv(),
                    mean.rv(),
                    rstd.rv(),
                    x.rv(),
                    w.rv(),
                    bias.rv(),
                    n,
                    c,
                )?;
                let (mv, rv) = (r.download_f32(mean.rv())?, r.download_f32(rstd.rv())?);
                k.upload_f32(mean.cv(), &mv)?;
                k.upload_f32(rstd.cv(), &rv)?;
                let (dx, dw, db, dy) = (
                    self.random(n * c, 1.0)?,
                    self.random(c, 1.0)?,
                    self.random(c, 1.0)?,
                    self.random(n * c, 1.0)?,
                );
                both!(|be: &dyn Backend, rf| be.layernorm_bwd(
                    sel(&dx, rf),
                    Some(sel(&dw, rf)),
                    Some(sel(&db, rf)),
                    sel(&dy, rf),
                    sel(&x, rf),
                    sel(&w, rf),
                    sel(&mean, rf),
                    sel(&rstd, rf),
                    n,
                    c
                ));
                (self.compare(&[&dx, &dw, &db])?, tol_for(c.max(n)))
            }
            "matmul_fwd" => {
                // rows x in -> out, with shapes that fit no tile: (n, c+1) -> 3c-1.
                let (ic, oc) = (c + 1, 3 * c - 1);
                let out = self.random(n * oc, 1.0)?;
                let (x, w, bias) = (
                    self.random(n * ic, 1.0)?,
                    self.random(oc * ic, 0.1)?,
                    self.random(oc, 1.0)?,
                );
                both!(|be: &dyn Backend, rf| be.matmul_fwd(
                    sel(&out, rf),
                    sel(&x, rf),
                    sel(&w, rf),
                    Some(sel(&bias, rf)),
                    n,
                    ic,
                    oc
                ));
                let out2 = self.random(n * oc, 1.0)?;
                both!(|be: &dyn Backend, rf| be.matmul_fwd(
                    sel(&out2, rf),
                    sel(&x, rf),
                    sel(&w, rf),
                    None,
                    n,
                    ic,
                    oc
                ));
                (self.compare(&[&out, &out2])?, tol_for(ic))
            }
            "matmul_bwd" => {
                let (ic, oc) = (c + 1, 3 * c - 1);
                let (x, w, dy) = (
                    self.random(n * ic, 1.0)?,
                    self.random(oc * ic, 0.1)?,
                    self.random(n * oc, 1.0)?,
                );
                let (dx, dw, db) = (
                    self.random(n * ic, 1.0)?,
                    self.random(oc * ic, 1.0)?,
                    self.random(oc, 1.0)?,
                );
                both!(|be: &dyn Backend, rf| be.matmul_bwd(
                    Some(sel(&dx, rf)),
                    Some(sel(&dw, rf)),
                    Some(sel(&db, rf)),
                    sel(&dy, rf),
                    sel(&x, rf),
                    sel(&w, rf),
                    n,
                    ic,
                    oc
                ));
                // The frozen-block form: only dX.
                let dx2 = self.random(n * ic, 1.0)?;
                both!(|be: &dyn Backend, rf| be.matmul_bwd(
                    Some(sel(&dx2, rf)),
                    None,
                    None,
                    sel(&dy, rf),
                    sel(&x, rf),
                    sel(&w, rf),
                    n,
                    ic,
                    oc
                ));
                (self.compare(&[&dx, &dw, &db, &dx2])?, tol_for(n.max(oc)))
            }
            "attention_fwd" | "attention_bwd" => {
                let shape = AttnShape {
                    batch: b,
                    seq: t,
                    channels: c,
                    heads: nh,
                };
                let qkv = self.random(n * 3 * c, 1.0)?;
                let (out, att) = (self.random(n * c, 1.0)?, self.random(b * nh * t * t, 1.0)?);
                if op == "attention_fwd" {
                    both!(|be: &dyn Backend, rf| be.attention_fwd(
                        sel(&out, rf),
                        sel(&att, rf),
                        sel(&qkv, rf),
                        shape
                    ));
                    (self.compare(&[&out, &att])?, tol_for(t.max(c / nh)))
                } else {
                    r.attention_fwd(out.rv(), att.rv(), qkv.rv(), shape)?;
                    let a = r.download_f32(att.rv())?;
                    k.upload_f32(att.cv(), &a)?;
                    let (dqkv, scratch, dy) = (
                        self.random(n * 3 * c, 1.0)?,
                        self.random(b * nh * t * t, 1.0)?,
                        self.random(n * c, 1.0)?,
                    );
                    both!(|be: &dyn Backend, rf| be.attention_bwd(
                        sel(&dqkv, rf),
                        sel(&scratch, rf),
                        sel(&dy, rf),
                        sel(&qkv, rf),
                        sel(&att, rf),
                        shape
                    ));
                    (self.compare(&[&dqkv])?, tol_for(t.max(c / nh)))
                }
            }
            "softmax_xent" => {
                let logits_v = self.values(n * v, 3.0, 0.0);
                let logits = self.pair(&logits_v)?;
                let mut ids: Vec<u32> = (0..n).map(|_| self.rng.below(v as u64) as u32).collect();
                ids[n / 2] = u32::MAX; // one ignored row
                let tgt = self.tokens(n, v)?;
                r.upload_u32(tgt.ru(), &ids)?;
                k.upload_u32(tgt.cu(), &ids)?;
                let (losses, dlogits) = (self.random(n, 1.0)?, self.random(n * v, 1.0)?);
                both!(|be: &dyn Backend, rf| be.softmax_xent(
                    sel(&losses, rf),
                    Some(sel(&dlogits, rf)),
                    sel(&logits, rf),
                    selu(&tgt, rf),
                    n,
                    v,
                    u32::MAX,
                    0.25
                ));
                // In place: dlogits overwrites logits.
                let losses2 = self.random(n, 1.0)?;
                both!(|be: &dyn Backend, rf| be.softmax_xent(
                    sel(&losses2, rf),
                    Some(sel(&logits, rf)),
                    sel(&logits, rf),
                    selu(&tgt, rf),
                    n,
                    v,
                    u32::MAX,
                    0.25
                ));
                (
                    self.compare(&[&losses, &dlogits, &losses2, &logits])?,
                    tol_for(v),
                )
            }
            "adamw" => {
                let len = c * c + 5;
                let (p, g, m) = (
                    self.random(len, 0.5)?,
                    self.random(len, 0.1)?,
                    self.random(len, 0.01)?,
                );
                let vv: Vec<f32> = self.values(len, 1e-3, 0.0).iter().map(|x| x * x).collect();
                let vv = self.pair(&vv)?;
                let hp = AdamWStep {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    step: 7,
                    grad_scale: 0.5,
                };
                both!(|be: &dyn Backend, rf| be.adamw(
                    sel(&p, rf),
                    sel(&g, rf),
                    sel(&m, rf),
                    sel(&vv, rf),
                    hp
                ));
                (self.compare(&[&p, &m, &vv])?, 1e-5)
            }
            "sum_squares" => {
                let acc_v = [1.5f32];
                let acc = self.pair(&acc_v)?;
                let x = self.random(len, 1.0)?;
                both!(|be: &dyn Backend, rf| be.sum_squares(sel(&acc, rf), sel(&x, rf)));
                (self.compare(&[&acc])?, tol_for(len))
            }
            other => anyhow::bail!("the conformance harness has no case for op '{other}'"),
        })
    }
}

/// Runs the named ops (all of [`OPS`] when `ops` is empty) at every shape of
/// `dims`, candidate against reference.
pub fn check_ops(
    reference: &dyn Backend,
    candidate: &dyn Backend,
    ops: &[&str],
    dims: &[Dims],
    seed: u64,
) -> Vec<CaseResult> {
    let ops: Vec<&str> = if ops.is_empty() {
        OPS.to_vec()
    } else {
        ops.to_vec()
    };
    let mut h = Harness {
        reference,
        candidate,
        rng: HostRng::new(seed),
    };
    let mut results = Vec::new();
    for op in ops {
        for d in dims {
            let res = match h.run_inner(op, *d) {
                Ok((err, tol)) => CaseResult {
                    op: op.to_string(),
                    shape: d.describe(),
                    max_err: err,
                    tol,
                    passed: err <= tol,
                    error: None,
                },
                Err(e) => CaseResult {
                    op: op.to_string(),
                    shape: d.describe(),
                    max_err: f64::NAN,
                    tol: 0.0,
                    passed: false,
                    error: Some(format!("{e:#}")),
                },
            };
            results.push(res);
        }
    }
    results
}

/// A plain-text table: op, shape, max error, tolerance, verdict.
pub fn format_results(results: &[CaseResult]) -> String {
    let mut s = format!(
        "{:<15} {:<26} {:>11} {:>9}  result\n",
        "op", "shape", "max err", "tol"
    );
    for r in results {
        let verdict = match (&r.error, r.passed) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, true) => "pass".into(),
            (None, false) => "FAIL".into(),
        };
        s.push_str(&format!(
            "{:<15} {:<26} {:>11.3e} {:>9.1e}  {verdict}\n",
            r.op, r.shape, r.max_err, r.tol
        ));
    }
    let passed = results.iter().filter(|r| r.passed).count();
    s.push_str(&format!(
        "{passed} passed, {} failed\n",
        results.len() - passed
    ));
    s
}
