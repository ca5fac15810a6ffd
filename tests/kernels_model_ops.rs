//! The layernorm, embedding, loss (softmax + cross-entropy) and optimizer
//! kernels (kernels/{layernorm,embedding,loss,optimizer}.cu)
//! under the emulator, against `CpuBackend`: the shared conformance harness
//! under forward, reverse and random resume order, then the edge cases it
//! does not reach (GPT-2's vocabulary, frozen layernorm gradients, grids
//! that loop, colliding tokens, bad ids and bad shapes). On a machine with a
//! GPU the same comparisons also run on it.

mod common;

use common::{assert_conformance, backends, emu, norm_err, put, put_u32, random, tol_for};
use dyntie::conformance::Dims;
use dyntie::cpu::CpuBackend;
use dyntie::cuda::ResumeOrder;
use dyntie::cuda::{EmuConfig, EmuDevice, KernelBackend};
use dyntie::mem::{Buffer, DType, View};
use dyntie::ops::embedding::{EmbeddingBwd, EmbeddingFwd};
use dyntie::ops::layernorm::{LayernormBwd, LayernormFwd};
use dyntie::ops::loss::SoftmaxXent;
use dyntie::ops::optimizer::{
    adamw_list, stat, AdamWStep, Adamw, AdamwMulti, SumScaled, SumSquares, SUM_SCRATCH_LEN,
};
use dyntie::ops::{Backend, BackendExt};

/// BERT's LayerNorm epsilon: the kernels take it as an argument.
const BERT_EPS: f32 = 1e-12;

const OPS: [&str; 10] = [
    "embedding_fwd",
    "embedding_bwd",
    "layernorm_fwd",
    "layernorm_bwd",
    "softmax_xent",
    "adamw",
    "adamw_multi",
    "sum_squares",
    "sum_scaled",
    "finish_step",
];

#[test]
fn the_conformance_harness_passes_these_ops() {
    let mut all: Vec<(String, Box<dyn Backend>)> = backends();
    all.push(("emu Random".into(), Box::new(emu(ResumeOrder::Random(5)))));
    for (label, be) in all {
        assert_conformance(&label, be.as_ref(), &OPS, &Dims::standard(), 23);
    }
}

// ---- a small harness for the edge cases -----------------------------------

/// Views of the float and the integer inputs, on one backend.
struct Views {
    f: Vec<View>,
    u: Vec<View>,
}

/// Runs `op` on the CPU and on every kernel backend with the same inputs and
/// returns, per backend, the downloaded contents of the float buffers listed
/// in `outputs`, after the reference's.
fn run_all(
    floats: &[Vec<f32>],
    ints: &[Vec<u32>],
    outputs: &[usize],
    op: &dyn Fn(&dyn Backend, &Views) -> anyhow::Result<()>,
) -> Vec<(String, Vec<Vec<f32>>)> {
    let run = |be: &dyn Backend| -> Vec<Vec<f32>> {
        let fb: Vec<Buffer> = floats.iter().map(|x| put(be, x)).collect();
        let ub: Vec<Buffer> = ints.iter().map(|x| put_u32(be, x)).collect();
        let views = Views {
            f: fb
                .iter()
                .zip(floats)
                .map(|(b, x)| b.view().slice(0, x.len()))
                .collect(),
            u: ub
                .iter()
                .zip(ints)
                .map(|(b, x)| b.view().slice(0, x.len()))
                .collect(),
        };
        op(be, &views).unwrap();
        be.synchronize().unwrap();
        outputs
            .iter()
            .map(|&i| be.download(views.f[i]).unwrap())
            .collect()
    };
    let mut out = vec![("cpu".to_string(), run(&CpuBackend::new()))];
    for (label, be) in backends() {
        out.push((label, run(be.as_ref())));
    }
    out
}

/// Asserts that every backend matches the reference (the first entry).
fn assert_match(name: &str, results: &[(String, Vec<Vec<f32>>)], tol: f64) {
    let want = &results[0].1;
    for (label, got) in &results[1..] {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = norm_err(g, w);
            assert!(
                err <= tol,
                "{name} on {label}: output {i} differs by {err:.3e} (tolerance {tol:.1e})"
            );
        }
    }
}

// ---- edge cases ---------------------------------------------------------

#[test]
fn softmax_xent_handles_the_gpt2_vocabulary_in_place_and_without_gradient() {
    // Rows far longer than a block, so every thread loops over the row; one
    // ignored row; logits spread widely so the online max changes often.
    let (rows, vocab) = (3, 50257);
    let logits = random(rows * vocab, 4.0, 1);
    let targets = vec![50256, u32::MAX, 7];
    let losses = random(rows, 1.0, 2);
    let dlogits = random(rows * vocab, 1.0, 3);
    let results = run_all(
        &[logits, losses.clone(), dlogits, losses],
        &[targets],
        &[0, 1, 2, 3],
        &|be, v| {
            let xent = |losses, dlogits, grad_scale| SoftmaxXent {
                losses,
                dlogits,
                logits: v.f[0],
                targets: v.u[0],
                rows,
                vocab,
                padded_vocab: vocab,
                ignore_index: u32::MAX,
                grad_scale,
            };
            // Loss only, then the gradient into a separate buffer, then in place.
            be.run(xent(v.f[3], None, 1.0))?;
            be.run(xent(v.f[1], Some(v.f[2]), 0.5))?;
            be.run(xent(v.f[1], Some(v.f[0]), 0.5))
        },
    );
    assert_match("softmax_xent, vocab 50257", &results, tol_for(vocab));
    for (label, out) in &results {
        // The ignored row: zero loss and zero gradient, in both forms.
        assert_eq!(out[1][1], 0.0, "{label}");
        assert_eq!(out[3][1], 0.0, "{label}");
        assert!(
            out[2][vocab..2 * vocab].iter().all(|&g| g == 0.0),
            "{label}"
        );
    }
}

#[test]
fn softmax_xent_rows_narrower_than_a_warp_and_a_bad_target() {
    // vocab 3: most threads of each block own no logit at all.
    let (rows, vocab) = (4, 3);
    let logits = random(rows * vocab, 2.0, 4);
    let results = run_all(
        &[logits, vec![9.0; rows], vec![9.0; rows * vocab]],
        &[vec![0, 2, 1, 2]],
        &[1, 2],
        &|be, v| {
            be.run(SoftmaxXent {
                losses: v.f[1],
                dlogits: Some(v.f[2]),
                logits: v.f[0],
                targets: v.u[0],
                rows,
                vocab,
                padded_vocab: vocab,
                ignore_index: 99,
                grad_scale: 1.0,
            })
        },
    );
    assert_match("softmax_xent, vocab 3", &results, tol_for(vocab));

    // A target that is neither valid nor ignored: the CPU refuses it; a kernel
    // cannot fail, so it poisons that row with NaN instead of reading outside it.
    for (label, be) in backends() {
        let x = put(be.as_ref(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = put_u32(be.as_ref(), &[1, 3]);
        let (l, d) = (
            be.alloc(DType::F32, 2).unwrap(),
            be.alloc(DType::F32, 6).unwrap(),
        );
        be.run(SoftmaxXent {
            losses: l.view(),
            dlogits: Some(d.view()),
            logits: x.view(),
            targets: t.view(),
            rows: 2,
            vocab: 3,
            padded_vocab: 3,
            ignore_index: u32::MAX,
            grad_scale: 1.0,
        })
        .unwrap();
        let (l, d): (Vec<f32>, Vec<f32>) = (
            be.download(l.view()).unwrap(),
            be.download(d.view()).unwrap(),
        );
        assert!(l[0].is_finite() && l[1].is_nan(), "{label}: {l:?}");
        assert!(d[..3].iter().all(|g| g.is_finite()), "{label}: {d:?}");
        assert!(d[3..].iter().all(|g| g.is_nan()), "{label}: {d:?}");
    }
}

#[test]
fn layernorm_bwd_skips_frozen_gradients_and_loops_over_many_rows() {
    // Many rows, so each warp of the weight-gradient pass (16 warps per
    // 32 columns) loops over ~135 of them; a width that is no multiple of 32.
    let (rows, c) = (264 * 8 + 45, 37);
    let x = random(rows * c, 2.0, 5);
    let w: Vec<f32> = random(c, 0.2, 6).iter().map(|v| v + 1.0).collect();
    let b = random(c, 0.2, 7);
    let dy = random(rows * c, 1.0, 8);
    let (dx, dw, db) = (
        random(rows * c, 1.0, 9),
        random(c, 1.0, 10),
        random(c, 1.0, 11),
    );
    let (out, mean, rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    let floats = [
        x,
        w,
        b,
        dy,
        dx.clone(),
        dw,
        db,
        out,
        mean,
        rstd,
        dx.clone(),
        dx,
    ];
    // 0 x, 1 w, 2 b, 3 dy, 4 dx, 5 dw, 6 db, 7 out, 8 mean, 9 rstd, 10 dx2, 11 dx3
    let results = run_all(&floats, &[], &[7, 8, 9, 4, 5, 6, 10, 11], &|be, v| {
        let f = &v.f;
        be.run(LayernormFwd {
            out: f[7],
            mean: f[8],
            rstd: f[9],
            inp: f[0],
            weight: f[1],
            bias: f[2],
            rows,
            channels: c,
            eps: BERT_EPS,
        })?;
        let bwd = |dinp, dweight, dbias| LayernormBwd {
            dinp,
            dweight,
            dbias,
            dout: f[3],
            inp: f[0],
            weight: f[1],
            mean: f[8],
            rstd: f[9],
            rows,
            channels: c,
        };
        // Full, only dweight, then a frozen block (neither).
        be.run(bwd(f[4], Some(f[5]), Some(f[6])))?;
        be.run(bwd(f[10], Some(f[5]), None))?;
        be.run(bwd(f[11], None, None))
    });
    // The mean and rstd feeding the backward come from each backend's own
    // forward, so the backward sees the forward's error too.
    assert_match(
        "layernorm fwd + bwd, many rows",
        &results,
        tol_for(rows) + tol_for(c),
    );
}

#[test]
fn layernorm_bwd_of_very_wide_rows() {
    // 6200 channels: 194 column blocks of the weight-gradient pass, the last
    // one partly past the row's end (6200 is no multiple of 32).
    let (rows, c) = (3, 6200);
    let x = random(rows * c, 2.0, 30);
    let w: Vec<f32> = random(c, 0.2, 31).iter().map(|v| v + 1.0).collect();
    let (b, dy) = (random(c, 0.2, 32), random(rows * c, 1.0, 33));
    let (dx, dw, db) = (
        random(rows * c, 1.0, 34),
        random(c, 1.0, 35),
        random(c, 1.0, 36),
    );
    let stats = vec![0.0; rows];
    let floats = [
        x,
        w,
        b,
        dy,
        dx,
        dw,
        db,
        vec![0.0; rows * c],
        stats.clone(),
        stats,
    ];
    let results = run_all(&floats, &[], &[4, 5, 6], &|be, v| {
        let f = &v.f;
        be.run(LayernormFwd {
            out: f[7],
            mean: f[8],
            rstd: f[9],
            inp: f[0],
            weight: f[1],
            bias: f[2],
            rows,
            channels: c,
            eps: BERT_EPS,
        })?;
        be.run(LayernormBwd {
            dinp: f[4],
            dweight: Some(f[5]),
            dbias: Some(f[6]),
            dout: f[3],
            inp: f[0],
            weight: f[1],
            mean: f[8],
            rstd: f[9],
            rows,
            channels: c,
        })
    });
    assert_match("layernorm, 6200 channels", &results, tol_for(c));
}

#[test]
fn embedding_bwd_adds_up_a_single_repeated_token() {
    // Every position holds the same token: all rows collide in dwte.
    let (batch, seq, c, vocab) = (9, 5, 33, 4);
    let dout = random(batch * seq * c, 1.0, 12);
    let (dwte, dwpe) = (random(vocab * c, 1.0, 13), random(seq * c, 1.0, 14));
    let results = run_all(
        &[dwte, dwpe, dout],
        &[vec![2; batch * seq]],
        &[0, 1],
        &|be, v| {
            be.run(EmbeddingBwd {
                dwte: v.f[0],
                dwpe: v.f[1],
                dtoken_type: None,
                dout: v.f[2],
                tokens: v.u[0],
                batch,
                seq,
                channels: c,
            })
        },
    );
    assert_match("embedding_bwd, one token", &results, tol_for(batch * seq));
}

#[test]
fn embedding_fwd_poisons_rows_of_out_of_range_tokens() {
    let (seq, c) = (2, 3);
    for (label, be) in backends() {
        let wte = put(be.as_ref(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]); // vocab 2
        let wpe = put(be.as_ref(), &[0.5; 6]);
        let tok = put_u32(be.as_ref(), &[1, 2]);
        let out = be.alloc(DType::F32, seq * c).unwrap();
        be.run(EmbeddingFwd {
            out: out.view(),
            tokens: tok.view(),
            wte: wte.view(),
            wpe: wpe.view(),
            token_type: None,
            batch: 1,
            seq,
            channels: c,
        })
        .unwrap();
        let got: Vec<f32> = be.download(out.view()).unwrap();
        assert_eq!(got[..3], [4.5, 5.5, 6.5], "{label}");
        assert!(got[3..].iter().all(|v| v.is_nan()), "{label}: {got:?}");
        // The backward skips the bad id instead of writing outside dwte.
        let dwte = be.alloc(DType::F32, 6).unwrap();
        let dwpe = be.alloc(DType::F32, 6).unwrap();
        let dout = put(be.as_ref(), &[1.0; 6]);
        be.run(EmbeddingBwd {
            dwte: dwte.view(),
            dwpe: dwpe.view(),
            dtoken_type: None,
            dout: dout.view(),
            tokens: tok.view(),
            batch: 1,
            seq,
            channels: c,
        })
        .unwrap();
        assert_eq!(
            be.download::<f32>(dwte.view()).unwrap(),
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            "{label}"
        );
    }
}

#[test]
fn adamw_first_step_and_sum_squares_over_many_blocks() {
    // More elements than one capped grid (1024 blocks x 256) covers.
    let n = 1024 * 256 + 1000;
    let (p, g) = (random(n, 0.5, 15), random(n, 0.1, 16));
    let hp = AdamWStep {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    let stats = stat::with_scale(1.0, false);
    let results = run_all(
        &[
            p,
            g.clone(),
            vec![0.0; n],
            vec![0.0; n],
            vec![0.25],
            stats,
            vec![0.0; SUM_SCRATCH_LEN],
        ],
        &[],
        &[0, 2, 3, 4],
        &|be, v| {
            be.run(Adamw {
                params: v.f[0],
                grads: v.f[1],
                m: v.f[2],
                v: v.f[3],
                copy: None,
                stats: v.f[5],
                hp,
            })?;
            be.run(SumSquares {
                acc: v.f[4],
                scratch: v.f[6],
                x: v.f[1],
            })
        },
    );
    assert_match("adamw step 1 + sum_squares", &results, tol_for(n));
    let exact: f64 = 0.25 + g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    for (label, out) in &results {
        let got = out[3][0] as f64;
        assert!(
            ((got - exact) / exact).abs() < 1e-6,
            "{label}: sum_squares {got} vs {exact}"
        );
    }
}

/// The kernels that reduce across blocks or warps without float atomics
/// give the same bits whatever order the emulator runs threads in (forward,
/// reverse, random) and however many workers take its blocks (so blocks
/// finish in another order): the layernorm backward (dinp, dweight, dbias)
/// and both sums, over more blocks than one capped grid. With per-block
/// atomicAdd in the sums or shared-memory atomics in the layernorm backward
/// this fails.
#[test]
fn layernorm_bwd_and_the_step_sums_are_bitwise_deterministic() {
    let (rows, c) = (300, 77);
    let n = 1024 * 256 + 1000;
    let floats = [
        random(rows * c, 2.0, 40),
        random(c, 0.2, 41).iter().map(|v| v + 1.0).collect(),
        random(c, 0.2, 42),
        random(rows * c, 1.0, 43),
        random(rows * c, 1.0, 44),
        random(c, 1.0, 45),
        random(c, 1.0, 46),
        vec![0.0; rows * c],
        vec![0.0; rows],
        vec![0.0; rows],
        random(n, 1.0, 47).iter().map(|v| v * v * v).collect(),
        vec![0.5, 0.5],
        vec![0.0; SUM_SCRATCH_LEN],
    ];
    // 0 x, 1 w, 2 b, 3 dy, 4 dx, 5 dw, 6 db, 7 out, 8 mean, 9 rstd,
    // 10 values to sum (cubed: a wide range of magnitudes), 11 the two sums,
    // 12 their scratch.
    let run = |be: &dyn Backend| -> Vec<Vec<u32>> {
        let bufs: Vec<Buffer> = floats.iter().map(|x| put(be, x)).collect();
        let f: Vec<View> = bufs.iter().map(|b| b.view()).collect();
        be.run(LayernormFwd {
            out: f[7],
            mean: f[8],
            rstd: f[9],
            inp: f[0],
            weight: f[1],
            bias: f[2],
            rows,
            channels: c,
            eps: BERT_EPS,
        })
        .unwrap();
        be.run(LayernormBwd {
            dinp: f[4],
            dweight: Some(f[5]),
            dbias: Some(f[6]),
            dout: f[3],
            inp: f[0],
            weight: f[1],
            mean: f[8],
            rstd: f[9],
            rows,
            channels: c,
        })
        .unwrap();
        be.run(SumSquares {
            acc: f[11].slice(0, 1),
            scratch: f[12],
            x: f[10],
        })
        .unwrap();
        be.run(SumScaled {
            acc: f[11].slice(1, 1),
            scratch: f[12],
            x: f[10],
            scale: 0.37,
        })
        .unwrap();
        [4, 5, 6, 11]
            .iter()
            .map(|&i| {
                let v = be.download::<f32>(f[i]).unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            })
            .collect()
    };
    let emu_with = |workers, order| {
        KernelBackend::new(EmuDevice::with_config(EmuConfig {
            workers,
            order,
            ..EmuConfig::default()
        }))
    };
    let first = run(&emu_with(1, ResumeOrder::Forward));
    for (workers, order) in [
        (1, ResumeOrder::Reverse),
        (2, ResumeOrder::Forward),
        (4, ResumeOrder::Reverse),
        (4, ResumeOrder::Random(9)),
        (3, ResumeOrder::Forward),
    ] {
        let got = run(&emu_with(workers, order));
        for (k, what) in ["dinp", "dweight", "dbias", "sums"].iter().enumerate() {
            assert!(
                got[k] == first[k],
                "{what} under {workers} workers, {order:?}, differs from 1 worker, Forward"
            );
        }
    }
}

/// The multi-tensor AdamW is the per-tensor one, bit for bit (both kernels
/// run one device function per element; the CPU runs the per-tensor
/// reference per entry), over tensors of lengths that are not multiples of
/// the block, with and without decay and a bf16 copy.
#[test]
fn adamw_multi_equals_the_per_tensor_adamw_bitwise() {
    let lens = [3 * 256 + 7, 1, 1024 * 256 + 3, 255];
    let hp = AdamWStep {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 4,
    };
    let mut all: Vec<(String, Box<dyn Backend>)> =
        vec![("cpu".into(), Box::new(CpuBackend::new()))];
    all.extend(backends());
    for (label, be) in all {
        let be = be.as_ref();
        let stats = put(be, &stat::for_update(0.7, false, &hp));
        // Two identical sets of tensors: one per-tensor, one multi-tensor.
        let sets: Vec<Vec<[Buffer; 5]>> = (0..2)
            .map(|_| {
                lens.iter()
                    .enumerate()
                    .map(|(k, &n)| {
                        let seed = 40 + 5 * k as u64;
                        let v: Vec<f32> = random(n, 0.01, seed + 3).iter().map(|x| x * x).collect();
                        [
                            put(be, &random(n, 0.5, seed)),
                            put(be, &random(n, 0.1, seed + 1)),
                            put(be, &random(n, 0.01, seed + 2)),
                            put(be, &v),
                            be.alloc(DType::BF16, n).unwrap(),
                        ]
                    })
                    .collect()
            })
            .collect();
        let tensor = |k: usize, b: &[Buffer; 5]| Adamw {
            params: b[0].view(),
            grads: b[1].view(),
            m: b[2].view(),
            v: b[3].view(),
            // Copies on the even tensors only; decay on the first two.
            copy: k.is_multiple_of(2).then(|| b[4].view()),
            stats: stats.view(),
            hp: AdamWStep {
                weight_decay: if k < 2 { hp.weight_decay } else { 0.0 },
                ..hp
            },
        };
        for (k, b) in sets[0].iter().enumerate() {
            be.run(tensor(k, b)).unwrap();
        }
        let tensors: Vec<_> = sets[1]
            .iter()
            .enumerate()
            .map(|(k, b)| tensor(k, b).tensor(k < 2))
            .collect();
        let (words, max_len) = adamw_list(&tensors).unwrap();
        let list = put_u32(be, &words);
        be.run(AdamwMulti {
            list: list.view().slice(0, words.len()),
            count: tensors.len(),
            max_len,
            stats: stats.view(),
            betas: hp.betas(),
        })
        .unwrap();
        for (k, (a, b)) in sets[0].iter().zip(&sets[1]).enumerate() {
            for i in 0..4 {
                let (x, y) = (
                    be.download::<f32>(a[i].view()),
                    be.download::<f32>(b[i].view()),
                );
                let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(x.unwrap()) == bits(y.unwrap()),
                    "{label}: tensor {k} operand {i}"
                );
            }
            let (x, y) = (
                be.download::<half::bf16>(a[4].view()).unwrap(),
                be.download::<half::bf16>(b[4].view()).unwrap(),
            );
            assert!(x == y, "{label}: tensor {k} bf16 copy");
        }
    }
}

/// A step flagged as skipped in the statistics changes no weight, moment
/// or compute copy, on every backend (a partial block included).
#[test]
fn adamw_changes_nothing_when_the_step_is_skipped() {
    let n = 3 * 256 + 5;
    let (p, g, m) = (random(n, 0.5, 21), random(n, 0.1, 22), random(n, 0.01, 23));
    let v: Vec<f32> = random(n, 0.01, 24).iter().map(|x| x * x).collect();
    let hp = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 3,
    };
    let inputs = [p, g, m, v, stat::with_scale(0.0, true)];
    let results = run_all(&inputs, &[], &[0, 2, 3], &|be, v| {
        be.run(Adamw {
            params: v.f[0],
            grads: v.f[1],
            m: v.f[2],
            v: v.f[3],
            copy: None,
            stats: v.f[4],
            hp,
        })
    });
    for (label, out) in &results {
        for (got, want) in out.iter().zip([&inputs[0], &inputs[2], &inputs[3]]) {
            assert!(got == want, "{label}: a skipped AdamW step wrote");
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let be = emu(ResumeOrder::Forward);
    let a = be.alloc(DType::F32, 64).unwrap();
    let v = a.view();
    let msg = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());

    let m = msg(be.run(LayernormFwd {
        out: v.slice(0, 12),
        mean: v.slice(12, 2),
        rstd: v.slice(14, 2),
        inp: v.slice(16, 12),
        weight: v.slice(28, 5),
        bias: v.slice(34, 6),
        rows: 2,
        channels: 6,
        eps: 1e-5,
    }));
    assert!(
        m.contains("layernorm_fwd: weight has 5 elements but the shape needs 6"),
        "{m}"
    );

    let big = be.alloc(DType::F32, 90_000).unwrap();
    let g = big.view();
    let bwd = |dinp, dweight, dout, inp, weight, mean, rstd, rows, channels| LayernormBwd {
        dinp,
        dweight: Some(dweight),
        dbias: None,
        dout,
        inp,
        weight,
        mean,
        rstd,
        rows,
        channels,
    };
    let m = msg(be.run(bwd(
        g.slice(0, 7000),
        g.slice(7000, 7000),
        g.slice(0, 7000),
        g.slice(0, 7000),
        g.slice(0, 7000),
        g.slice(0, 1),
        g.slice(0, 1),
        1,
        7000,
    )));
    assert!(
        m.contains("layernorm_bwd: output dinp overlaps input dout"),
        "{m}"
    );
    // dlogits may be the logits themselves, but not half of them.
    let t = be.alloc(DType::U32, 2).unwrap();
    let m = msg(be.run(SoftmaxXent {
        losses: v.slice(0, 2),
        dlogits: Some(v.slice(12, 20)),
        logits: v.slice(10, 20),
        targets: t.view(),
        rows: 2,
        vocab: 10,
        padded_vocab: 10,
        ignore_index: u32::MAX,
        grad_scale: 1.0,
    }));
    assert!(
        m.contains("softmax_xent: output dlogits overlaps input logits"),
        "{m}"
    );
    // Token ids must be u32.
    let m = msg(be.run(SoftmaxXent {
        losses: v.slice(0, 2),
        dlogits: None,
        logits: v.slice(10, 20),
        targets: v.slice(40, 2),
        rows: 2,
        vocab: 10,
        padded_vocab: 10,
        ignore_index: u32::MAX,
        grad_scale: 1.0,
    }));
    assert!(
        m.contains("softmax_xent: targets is f32 but must be u32"),
        "{m}"
    );

    let hp = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 0,
    };
    let adamw = |grads, hp| Adamw {
        params: v.slice(0, 8),
        grads,
        m: v.slice(16, 8),
        v: v.slice(24, 8),
        copy: None,
        stats: v.slice(32, stat::LEN),
        hp,
    };
    let m = msg(be.run(adamw(v.slice(8, 8), hp)));
    assert!(m.contains("adamw: step is 1-based"), "{m}");
    let hp = AdamWStep { step: 1, ..hp };
    let m = msg(be.run(adamw(v.slice(8, 7), hp)));
    assert!(
        m.contains("adamw: params has 8 elements but grads has 7"),
        "{m}"
    );

    let scratch = be.alloc(DType::F32, SUM_SCRATCH_LEN).unwrap();
    let m = msg(be.run(SumSquares {
        acc: v.slice(0, 1),
        scratch: scratch.view(),
        x: v.slice(0, 10),
    }));
    assert!(
        m.contains("sum_squares: output acc overlaps input x"),
        "{m}"
    );

    let m = msg(be.run(EmbeddingFwd {
        out: v.slice(0, 6),
        tokens: t.view(),
        wte: v.slice(6, 30),
        wpe: v.slice(36, 5),
        token_type: None,
        batch: 1,
        seq: 2,
        channels: 3,
    }));
    assert!(
        m.contains("embedding_fwd: wpe has 5 elements but the shape needs 6"),
        "{m}"
    );
}
