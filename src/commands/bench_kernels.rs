//! `dyntie bench kernels`: every matrix product of one training step, in
//! fp32 and bf16, as the GEMM launcher runs them.
//!
//! For GPT-2 124M (or the model the flags describe) and the paper's config,
//! one row per distinct product: the linear layers' forward (`nt`), input
//! gradient (`nn`) and weight gradient (`tn`, accumulating into fp32), and
//! attention's forward and backward (its batched products and the softmax
//! between them, timed as one op), and flash attention's (bf16 only; at
//! GPT-2 124M's B8 H12 T1024 D64 and the paper's D100, the shapes
//! `benches/torch_attention.py` times PyTorch's `scaled_dot_product_attention`
//! at). Each row says its FLOPs and the bytes the
//! product must move at least (operands read once, the result written
//! once). On a GPU it also times the op and gives TFLOP/s and the fraction
//! of the card's peak (bf16: `--peak-tflops`, default 790, what cuBLAS
//! reaches on an 8192^3 product on the H100/H200 of GPU-CHECK.md; fp32 on
//! the SIMT cores: the nominal 67). With `--check` (always
//! under the emulator, which is about 1000x slower than a GPU, so there
//! every dimension is cut, see [`cut`]) each linear product is compared
//! with the CPU backend at the same dtype, to the conformance harness's
//! derived tolerances. Attention is timed only: its correctness is the
//! conformance suite's (element-wise bounds on its chain of bf16 roundings).

use super::select_backend;
use crate::cli::BenchArgs;
use crate::config::{Preset, RunConfig};
use crate::cpu::CpuBackend;
use crate::mem::{Buffer, DType};
use crate::model::ModelConfig;
use crate::ops::attention::{
    AttentionBwd, AttentionFwd, AttnShape, FlashAttentionBwd, FlashAttentionFwd,
};
use crate::ops::case::{tol_bf16, tol_for};
use crate::ops::matmul::{MatmulBwd, MatmulFwd};
use crate::ops::{Backend, BackendExt, Op};
use crate::rng::HostRng;
use anyhow::{ensure, Result};
use std::time::Instant;

/// One product of a step: `[m, n, k]` over `batch` entries.
#[derive(Clone, Debug)]
struct Product {
    model: String,
    name: String,
    kind: Kind,
    /// rows, in, out for a linear layer; batch, seq, channels, heads for
    /// attention.
    dims: [usize; 4],
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    LinearFwd,
    LinearDinp,
    LinearDweight,
    AttnFwd,
    AttnBwd,
    FlashFwd,
    FlashBwd,
}

impl Product {
    /// FLOPs (2 per multiply-add; attention counts the causal half).
    fn flops(&self) -> f64 {
        let [a, b, c, d] = self.dims.map(|x| x as f64);
        match self.kind {
            Kind::LinearFwd | Kind::LinearDinp | Kind::LinearDweight => 2.0 * a * b * c,
            // q k^T and att v: 2 products of seq x seq x head_dim per head, half of them masked.
            // Flash's backward also recomputes q k^T: counted as the
            // unfused backward (the useful work), as FLOP rates usually are.
            Kind::AttnFwd | Kind::FlashFwd => 2.0 * 2.0 * a * d * b * b * (c / d) / 2.0,
            Kind::AttnBwd | Kind::FlashBwd => 4.0 * 2.0 * a * d * b * b * (c / d) / 2.0,
        }
    }

    /// Bytes read and written at least, with `size`-byte elements (weight
    /// gradients are fp32 whatever the operands).
    fn bytes(&self, size: f64) -> f64 {
        let [a, b, c, d] = self.dims.map(|x| x as f64);
        match self.kind {
            Kind::LinearFwd => size * (a * b + b * c + a * c),
            Kind::LinearDinp => size * (a * c + b * c + a * b),
            Kind::LinearDweight => size * (a * c + a * b) + 4.0 * 2.0 * b * c,
            Kind::AttnFwd => size * (a * b * 3.0 * c + a * d * b * b + a * b * c),
            Kind::AttnBwd => size * (2.0 * a * b * 3.0 * c + 2.0 * a * d * b * b + a * b * c),
            // qkv in, out and the fp32 lse out; nothing of size T x T.
            Kind::FlashFwd => size * (a * b * 4.0 * c) + 4.0 * a * d * b,
            // qkv, out and dout in, dqkv out; lse in, D written and read.
            Kind::FlashBwd => size * (a * b * 8.0 * c) + 4.0 * 3.0 * a * d * b,
        }
    }

    /// The dtypes the op runs in: flash is bf16 only.
    fn dtypes(&self) -> &'static [DType] {
        match self.kind {
            Kind::FlashFwd | Kind::FlashBwd => &[DType::BF16],
            _ => &[DType::F32, DType::BF16],
        }
    }
}

/// The products of one step of `cfg` at `batch` sequences of `n_ctx`.
fn step_products(model: &str, cfg: &ModelConfig, batch: usize) -> Vec<Product> {
    let (n, c, v) = (batch * cfg.n_ctx, cfg.n_embd, cfg.vocab_size);
    let mut out = Vec::new();
    for (name, ic, oc) in [
        ("attn.qkv", c, 3 * c),
        ("attn.proj", c, c),
        ("mlp.fc", c, 4 * c),
        ("mlp.proj", 4 * c, c),
        ("head", c, v),
    ] {
        for (kind, what) in [
            (Kind::LinearFwd, "fwd"),
            (Kind::LinearDinp, "dinp"),
            (Kind::LinearDweight, "dweight"),
        ] {
            out.push(Product {
                model: model.into(),
                name: format!("{name} {what}"),
                kind,
                dims: [n, ic, oc, 0],
            });
        }
    }
    for (kind, name) in [
        (Kind::AttnFwd, "attention fwd"),
        (Kind::AttnBwd, "attention bwd"),
        (Kind::FlashFwd, "flash fwd"),
        (Kind::FlashBwd, "flash bwd"),
    ] {
        out.push(Product {
            model: model.into(),
            name: name.into(),
            kind,
            dims: [batch, cfg.n_ctx, c, cfg.n_head],
        });
    }
    out
}

/// Cuts a dimension for the emulator to `128 + x mod 97` (at most 224):
/// distinct dimensions mostly stay distinct, and off the tile multiples.
fn cut(x: usize) -> usize {
    if x > 224 {
        128 + x % 97
    } else {
        x
    }
}

/// The op of `p` at `dtype` over freshly allocated random operands on
/// `be`, seeded so that two backends get the same values; and the output
/// to compare with its tolerance.
struct Placed {
    op: Op,
    out: Buffer,
    tol: f64,
    _keep: Vec<Buffer>,
}

fn place(be: &dyn Backend, p: &Product, dtype: DType, seed: u64) -> Result<Placed> {
    let mut rng = HostRng::new(seed);
    let mut buf = |dt: DType, len: usize| -> Result<Buffer> {
        let data: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
        let b = be.alloc(dt, len)?;
        match dt {
            DType::BF16 => {
                let h: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
                be.upload(b.view(), &h)?
            }
            _ => be.upload(b.view(), &data)?,
        }
        Ok(b)
    };
    let tol = |k: usize| match dtype {
        DType::BF16 => tol_bf16(tol_for(k)),
        _ => tol_for(k),
    };
    let [a, b, c, d] = p.dims;
    // Attention's dims (unused by the linear products).
    let shape = AttnShape {
        batch: a,
        seq: b,
        channels: c,
        heads: d,
    };
    Ok(match p.kind {
        Kind::LinearFwd | Kind::LinearDinp | Kind::LinearDweight => {
            let (n, ic, oc) = (a, b, c);
            let (inp, w, dout) = (
                buf(dtype, n * ic)?,
                buf(dtype, oc * ic)?,
                buf(dtype, n * oc)?,
            );
            let (out, op, k) = match p.kind {
                Kind::LinearFwd => {
                    let out = buf(dtype, n * oc)?;
                    let op = MatmulFwd {
                        out: out.view(),
                        inp: inp.view(),
                        weight: w.view(),
                        bias: None,
                        rows: n,
                        in_ch: ic,
                        out_ch: oc,
                    }
                    .into();
                    (out, op, ic)
                }
                _ => {
                    let dinp = p.kind == Kind::LinearDinp;
                    let out = if dinp {
                        buf(dtype, n * ic)?
                    } else {
                        buf(DType::F32, oc * ic)?
                    };
                    let op = MatmulBwd {
                        dinp: dinp.then(|| out.view()),
                        dweight: (!dinp).then(|| out.view()),
                        dbias: None,
                        dout: dout.view(),
                        inp: inp.view(),
                        weight: w.view(),
                        rows: n,
                        in_ch: ic,
                        out_ch: oc,
                    }
                    .into();
                    (out, op, if dinp { oc } else { n })
                }
            };
            // The fp32 weight gradient is not rounded to bf16: its bound is fp32's.
            let t = if out.view().dtype == DType::F32 {
                tol_for(k)
            } else {
                tol(k)
            };
            Placed {
                op,
                out,
                tol: t,
                _keep: vec![inp, w, dout],
            }
        }
        Kind::AttnFwd | Kind::AttnBwd => {
            let (nc, att) = (a * b * c, a * d * b * b);
            let qkv = buf(dtype, 3 * nc)?;
            let probs = buf(dtype, att)?;
            let out = buf(dtype, if p.kind == Kind::AttnFwd { nc } else { 3 * nc })?;
            let dout = buf(dtype, nc)?;
            let scratch = buf(dtype, att)?;
            let op = if p.kind == Kind::AttnFwd {
                AttentionFwd {
                    out: out.view(),
                    att: probs.view(),
                    qkv: qkv.view(),
                    shape,
                    dropped: None,
                    dropout: None,
                }
                .into()
            } else {
                // Backward from the forward's own probabilities.
                be.run(AttentionFwd {
                    out: dout.view(),
                    att: probs.view(),
                    qkv: qkv.view(),
                    shape,
                    dropped: None,
                    dropout: None,
                })?;
                AttentionBwd {
                    dqkv: out.view(),
                    scratch: scratch.view(),
                    dout: dout.view(),
                    qkv: qkv.view(),
                    att: probs.view(),
                    shape,
                    dropout: None,
                }
                .into()
            };
            Placed {
                op,
                out,
                // Not compared (see the module docs).
                tol: f64::NAN,
                _keep: vec![qkv, probs, dout, scratch],
            }
        }
        Kind::FlashFwd | Kind::FlashBwd => {
            let nc = a * b * c;
            let qkv = buf(dtype, 3 * nc)?;
            let (fwd_out, lse, delta) = (
                buf(dtype, nc)?,
                buf(DType::F32, shape.rows())?,
                buf(DType::F32, shape.rows())?,
            );
            let fwd = FlashAttentionFwd {
                out: fwd_out.view(),
                lse: lse.view(),
                qkv: qkv.view(),
                shape,
                dropout: None,
            };
            let (op, out, keep) = if p.kind == Kind::FlashFwd {
                (fwd.into(), fwd_out, vec![qkv, lse, delta])
            } else {
                // Backward from the forward's own output and lse.
                be.run(fwd)?;
                let (dqkv, dout) = (buf(dtype, 3 * nc)?, buf(dtype, nc)?);
                let op = FlashAttentionBwd {
                    dqkv: dqkv.view(),
                    delta: delta.view(),
                    dout: dout.view(),
                    out: fwd_out.view(),
                    lse: lse.view(),
                    qkv: qkv.view(),
                    shape,
                    dropout: None,
                };
                (op.into(), dqkv, vec![qkv, fwd_out, lse, delta, dout])
            };
            Placed {
                op,
                out,
                // Not compared (see the module docs).
                tol: f64::NAN,
                _keep: keep,
            }
        }
    })
}

/// Largest |a - b| over the largest |b|.
fn normalised_error(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

fn download_f64(be: &dyn Backend, b: &Buffer) -> Result<Vec<f64>> {
    Ok(match b.view().dtype {
        DType::BF16 => be
            .download::<half::bf16>(b.view())?
            .iter()
            .map(|x| x.to_f64())
            .collect(),
        _ => be
            .download::<f32>(b.view())?
            .iter()
            .map(|&x| x as f64)
            .collect(),
    })
}

/// `dyntie bench kernels`.
pub fn kernels(args: &BenchArgs) -> Result<()> {
    let cfg = args.model.resolve()?;
    let selected = select_backend(cfg.backend)?;
    let be = selected.backend.as_ref();
    let on_gpu = be.name() == "cuda";
    let emulated = be.name() == "emu";
    ensure!(
        on_gpu || emulated,
        "bench kernels times the CUDA kernels: run it with --backend cuda (or --backend emu, \
         which checks them against the CPU at cut-down sizes); the cpu backend has none"
    );
    println!("{}", selected.why);
    let mut products = Vec::new();
    for (name, preset) in [("gpt2-124M", Preset::Gpt2), ("paper", Preset::Paper)] {
        let rc = RunConfig::for_preset(preset);
        let mc = rc.model.with_default_vocab(50257);
        products.extend(step_products(name, &mc, rc.train.batch));
    }
    let peak = |dt: DType| match dt {
        DType::BF16 => args.peak_tflops.unwrap_or(790.0),
        _ => 67.0,
    };
    let reference = CpuBackend::new();
    let check = args.check || emulated;
    println!(
        "{:<10} {:<18} {:<5} {:>24} {:>10} {:>10} {:>10} {:>9} {:>7} {}",
        "model",
        "product",
        "dtype",
        "shape",
        "GFLOP",
        "MB",
        "ms",
        "TFLOP/s",
        "peak",
        if check { "check (err / tol)" } else { "" }
    );
    let mut failed = Vec::new();
    for p in &products {
        for &dtype in p.dtypes() {
            let size = dtype.size() as f64;
            let (gflop, mb) = (p.flops() / 1e9, p.bytes(size) / 1e6);
            let shape = format!("{:?}", &p.dims[..if p.dims[3] == 0 { 3 } else { 4 }]);
            let mut timing = format!("{:>10} {:>9} {:>7}", "-", "-", "-");
            if on_gpu {
                let placed = place(be, p, dtype, 1)?;
                be.run(placed.op)?;
                be.synchronize()?;
                let reps = 10;
                let start = Instant::now();
                for _ in 0..reps {
                    be.run(placed.op)?;
                }
                be.synchronize()?;
                let s = start.elapsed().as_secs_f64() / reps as f64;
                let tflops = p.flops() / s / 1e12;
                timing = format!(
                    "{:>10.3} {:>9.1} {:>6.0}%",
                    s * 1e3,
                    tflops,
                    100.0 * tflops / peak(dtype)
                );
            }
            let mut verdict = String::new();
            let linear = p.dims[3] == 0;
            if check && !linear {
                verdict = "- (see the attention conformance cases)".into();
            }
            if check && linear {
                let mut small = p.clone();
                if emulated {
                    small.dims = small.dims.map(cut);
                }
                let cand = place(be, &small, dtype, 7)?;
                be.run(cand.op)?;
                let refr = place(&reference, &small, dtype, 7)?;
                reference.run(refr.op)?;
                let err = normalised_error(
                    &download_f64(be, &cand.out)?,
                    &download_f64(&reference, &refr.out)?,
                );
                let pass = err <= refr.tol;
                verdict = format!(
                    "{} ({err:.1e} / {:.1e}{})",
                    if pass { "pass" } else { "FAIL" },
                    refr.tol,
                    if emulated {
                        format!(" at {:?}", small.dims)
                    } else {
                        String::new()
                    }
                );
                if !pass {
                    failed.push(format!("{} {} {dtype}", p.model, p.name));
                }
            }
            println!(
                "{:<10} {:<18} {:<5} {:>24} {:>10.2} {:>10.1} {timing} {verdict}",
                p.model,
                p.name,
                dtype.name(),
                shape,
                gflop,
                mb
            );
        }
    }
    ensure!(
        failed.is_empty(),
        "{} products differ from the CPU reference: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_has_fifteen_linear_products_and_four_attention_ops() {
        let cfg = RunConfig::for_preset(Preset::Gpt2)
            .model
            .with_default_vocab(50257);
        let p = step_products("gpt2", &cfg, 8);
        assert_eq!(p.len(), 19);
        let flash: Vec<_> = p.iter().filter(|p| p.name.starts_with("flash")).collect();
        assert_eq!(flash.len(), 2);
        assert!(flash.iter().all(|p| p.dims == [8, 1024, 768, 12]));
        assert_eq!(flash[0].dtypes(), [DType::BF16]);
        // The head's forward: 8192 rows x 768 -> 50257.
        let head = p.iter().find(|p| p.name == "head fwd").unwrap();
        assert_eq!(head.flops(), 2.0 * 8192.0 * 768.0 * 50257.0);
        // Linear FLOPs of a step: 3 x 2 x rows x the parameters of the linears.
        let linear: f64 = p
            .iter()
            .filter(|p| p.dims[3] == 0)
            .map(Product::flops)
            .sum();
        let params = 12.0 * 768.0 * 768.0 + 768.0 * 50257.0;
        assert!((linear - 6.0 * 8192.0 * params).abs() < 1.0);
        assert_eq!(cut(50257), 128 + 50257 % 97);
        assert_eq!(cut(100), 100);
    }

    /// The flash rows' operands fit their ops' contracts (on a GPU they are
    /// only timed, so a wrong size would show there first): both run at a
    /// small shape under the emulator.
    #[test]
    fn flash_rows_place_runnable_ops() {
        let be = crate::cuda::KernelBackend::new(crate::cuda::EmuDevice::new());
        for kind in [Kind::FlashFwd, Kind::FlashBwd] {
            let p = Product {
                model: "small".into(),
                name: format!("{kind:?}"),
                kind,
                dims: [2, 37, 2 * 16, 2],
            };
            let placed = place(&be, &p, DType::BF16, 3).unwrap();
            be.run(placed.op).unwrap();
            let out = download_f64(&be, &placed.out).unwrap();
            assert!(out.iter().all(|x| x.is_finite()) && out.iter().any(|&x| x != 0.0));
        }
    }
}
