//! The layernorm, embedding, classifier (softmax + cross-entropy) and
//! optimizer kernels (kernels/{layernorm,embedding,classifier,adamw}.cu)
//! under the emulator, against `CpuBackend`: the shared conformance harness
//! under forward, reverse and random resume order, then the edge cases it
//! does not reach (GPT-2's vocabulary, frozen layernorm gradients, grids
//! that loop, colliding tokens, bad ids and bad shapes). On a machine with a
//! GPU the same comparisons also run on it.

mod common;

use common::{assert_conformance, backends, emu, norm_err, put, put_u32, random, tol_for};
use dyntie::backend::cpu::CpuBackend;
use dyntie::backend::{AdamWStep, Backend, Buffer, View};
use dyntie::conformance::Dims;
use dyntie::cuda::ResumeOrder;

const OPS: [&str; 7] = [
    "embedding_fwd",
    "embedding_bwd",
    "layernorm_fwd",
    "layernorm_bwd",
    "softmax_xent",
    "adamw",
    "sum_squares",
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
    f: Vec<View<f32>>,
    u: Vec<View<u32>>,
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
                .map(|(b, x)| b.f32().slice(0, x.len()))
                .collect(),
            u: ub
                .iter()
                .zip(ints)
                .map(|(b, x)| b.u32().slice(0, x.len()))
                .collect(),
        };
        op(be, &views).unwrap();
        be.synchronize().unwrap();
        outputs
            .iter()
            .map(|&i| be.download_f32(views.f[i]).unwrap())
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
            // Loss only, then the gradient into a separate buffer, then in place.
            be.softmax_xent(v.f[3], None, v.f[0], v.u[0], rows, vocab, u32::MAX, 1.0)?;
            be.softmax_xent(
                v.f[1],
                Some(v.f[2]),
                v.f[0],
                v.u[0],
                rows,
                vocab,
                u32::MAX,
                0.5,
            )?;
            be.softmax_xent(
                v.f[1],
                Some(v.f[0]),
                v.f[0],
                v.u[0],
                rows,
                vocab,
                u32::MAX,
                0.5,
            )
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
        &|be, v| be.softmax_xent(v.f[1], Some(v.f[2]), v.f[0], v.u[0], rows, vocab, 99, 1.0),
    );
    assert_match("softmax_xent, vocab 3", &results, tol_for(vocab));

    // A target that is neither valid nor ignored: the CPU refuses it; a kernel
    // cannot fail, so it poisons that row with NaN instead of reading outside it.
    for (label, be) in backends() {
        let x = put(be.as_ref(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = put_u32(be.as_ref(), &[1, 3]);
        let (l, d) = (be.alloc_f32(2).unwrap(), be.alloc_f32(6).unwrap());
        be.softmax_xent(
            l.f32(),
            Some(d.f32()),
            x.f32(),
            t.u32(),
            2,
            3,
            u32::MAX,
            1.0,
        )
        .unwrap();
        let (l, d) = (
            be.download_f32(l.f32()).unwrap(),
            be.download_f32(d.f32()).unwrap(),
        );
        assert!(l[0].is_finite() && l[1].is_nan(), "{label}: {l:?}");
        assert!(d[..3].iter().all(|g| g.is_finite()), "{label}: {d:?}");
        assert!(d[3..].iter().all(|g| g.is_nan()), "{label}: {d:?}");
    }
}

#[test]
fn layernorm_bwd_skips_frozen_gradients_and_loops_over_many_rows() {
    // More rows than the capped grid has warps (264 blocks x 8), so warps
    // loop; a width that is no multiple of 32.
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
        be.layernorm_fwd(f[7], f[8], f[9], f[0], f[1], f[2], rows, c)?;
        // Full, only dweight, then a frozen block (neither).
        be.layernorm_bwd(
            f[4],
            Some(f[5]),
            Some(f[6]),
            f[3],
            f[0],
            f[1],
            f[8],
            f[9],
            rows,
            c,
        )?;
        be.layernorm_bwd(
            f[10],
            Some(f[5]),
            None,
            f[3],
            f[0],
            f[1],
            f[8],
            f[9],
            rows,
            c,
        )?;
        be.layernorm_bwd(f[11], None, None, f[3], f[0], f[1], f[8], f[9], rows, c)
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
fn embedding_bwd_adds_up_a_single_repeated_token() {
    // Every position holds the same token: all rows collide in dwte.
    let (batch, seq, c, vocab) = (9, 5, 33, 4);
    let dout = random(batch * seq * c, 1.0, 12);
    let (dwte, dwpe) = (random(vocab * c, 1.0, 13), random(seq * c, 1.0, 14));
    let results = run_all(
        &[dwte, dwpe, dout],
        &[vec![2; batch * seq]],
        &[0, 1],
        &|be, v| be.embedding_bwd(v.f[0], v.f[1], v.f[2], v.u[0], batch, seq, c),
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
        let out = be.alloc_f32(seq * c).unwrap();
        be.embedding_fwd(out.f32(), tok.u32(), wte.f32(), wpe.f32(), 1, seq, c)
            .unwrap();
        let got = be.download_f32(out.f32()).unwrap();
        assert_eq!(got[..3], [4.5, 5.5, 6.5], "{label}");
        assert!(got[3..].iter().all(|v| v.is_nan()), "{label}: {got:?}");
        // The backward skips the bad id instead of writing outside dwte.
        let dwte = be.alloc_f32(6).unwrap();
        let dwpe = be.alloc_f32(6).unwrap();
        let dout = put(be.as_ref(), &[1.0; 6]);
        be.embedding_bwd(dwte.f32(), dwpe.f32(), dout.f32(), tok.u32(), 1, seq, c)
            .unwrap();
        assert_eq!(
            be.download_f32(dwte.f32()).unwrap(),
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
        grad_scale: 1.0,
    };
    let results = run_all(
        &[p, g.clone(), vec![0.0; n], vec![0.0; n], vec![0.25]],
        &[],
        &[0, 2, 3, 4],
        &|be, v| {
            be.adamw(v.f[0], v.f[1], v.f[2], v.f[3], hp)?;
            be.sum_squares(v.f[4], v.f[1])
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

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let be = emu(ResumeOrder::Forward);
    let a = be.alloc_f32(64).unwrap();
    let v = a.f32();
    let msg = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());

    let m = msg(be.layernorm_fwd(
        v.slice(0, 12),
        v.slice(12, 2),
        v.slice(14, 2),
        v.slice(16, 12),
        v.slice(28, 5),
        v.slice(34, 6),
        2,
        6,
    ));
    assert!(
        m.contains("layernorm_fwd: weight has 5 elements but the shape needs 6"),
        "{m}"
    );

    let big = be.alloc_f32(21_000).unwrap();
    let g = big.f32();
    let m = msg(be.layernorm_bwd(
        g.slice(0, 7000),
        Some(g.slice(7000, 7000)),
        None,
        g.slice(0, 7000),
        g.slice(0, 7000),
        g.slice(0, 7000),
        g.slice(0, 1),
        g.slice(0, 1),
        1,
        7000,
    ));
    assert!(
        m.contains("layernorm_bwd: output dinp overlaps input dout"),
        "{m}"
    );
    let m = msg(be.layernorm_bwd(
        g.slice(0, 7000),
        Some(g.slice(7000, 7000)),
        None,
        g.slice(14000, 0),
        g.slice(14000, 0),
        g.slice(14000, 7000),
        g.slice(14000, 0),
        g.slice(14000, 0),
        0,
        7000,
    ));
    assert!(
        m.contains("7000 channels need 56000 bytes of shared memory"),
        "{m}"
    );

    // dlogits may be the logits themselves, but not half of them.
    let t = be.alloc(8).unwrap();
    let m = msg(be.softmax_xent(
        v.slice(0, 2),
        Some(v.slice(12, 20)),
        v.slice(10, 20),
        t.u32().slice(0, 2),
        2,
        10,
        u32::MAX,
        1.0,
    ));
    assert!(
        m.contains("softmax_xent: output dlogits overlaps input logits"),
        "{m}"
    );

    let hp = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 0,
        grad_scale: 1.0,
    };
    let m = msg(be.adamw(
        v.slice(0, 8),
        v.slice(8, 8),
        v.slice(16, 8),
        v.slice(24, 8),
        hp,
    ));
    assert!(m.contains("adamw: step is 1-based"), "{m}");
    let hp = AdamWStep { step: 1, ..hp };
    let m = msg(be.adamw(
        v.slice(0, 8),
        v.slice(8, 7),
        v.slice(16, 8),
        v.slice(24, 8),
        hp,
    ));
    assert!(
        m.contains("adamw: params has 8 elements but grads has 7"),
        "{m}"
    );

    let m = msg(be.sum_squares(v.slice(0, 1), v.slice(0, 10)));
    assert!(
        m.contains("sum_squares: output acc overlaps input x"),
        "{m}"
    );

    let m = msg(be.embedding_fwd(
        v.slice(0, 6),
        t.u32(),
        v.slice(6, 30),
        v.slice(36, 5),
        1,
        2,
        3,
    ));
    assert!(
        m.contains("embedding_fwd: wpe has 5 elements but the shape needs 6"),
        "{m}"
    );
}
