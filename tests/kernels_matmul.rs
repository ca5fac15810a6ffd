//! The matmul kernels (kernels/gemm/) under the emulator, against
//! `CpuBackend`, through the conformance harness under forward, reverse and
//! random resume order, plus edge shapes the harness does not reach. On a
//! machine with a GPU the same checks run on it too.

mod common;

use common::{assert_conformance, backends, emu, norm_err, put, random, tol_for};
use dyntie::conformance::Dims;
use dyntie::cpu::CpuBackend;
use dyntie::cuda::ResumeOrder;
use dyntie::mem::{Buffer, DType};
use dyntie::ops::matmul::{MatmulBwd, MatmulFwd};
use dyntie::ops::{Backend, BackendExt};

#[test]
fn the_conformance_harness_passes_the_matmul_ops() {
    let ops = ["matmul_fwd", "matmul_gelu_fwd", "matmul_bwd"];
    let dims = Dims::standard();
    for (label, be) in backends() {
        assert_conformance(&label, be.as_ref(), &ops, &dims, 21);
    }
    assert_conformance(
        "emu Random(5)",
        &emu(ResumeOrder::Random(5)),
        &ops,
        &dims,
        22,
    );
}

/// Forward and full backward at `(rows, ic, oc)` on `be` and the CPU; the
/// gradients start from non-zero values (the `+=` contract).
fn check_shape(label: &str, be: &dyn Backend, rows: usize, ic: usize, oc: usize) {
    let cpu = CpuBackend::new();
    let (x, w, bias, dy) = (
        random(rows * ic, 1.0, 1),
        random(oc * ic, 1.0, 2),
        random(oc, 1.0, 3),
        random(rows * oc, 1.0, 4),
    );
    let (out0, dx0, dw0, db0) = (
        random(rows * oc, 1.0, 5),
        random(rows * ic, 1.0, 6),
        random(oc * ic, 1.0, 7),
        random(oc, 1.0, 8),
    );
    let run = |be: &dyn Backend| -> Vec<Vec<f32>> {
        let bufs: Vec<Buffer> = [&x, &w, &bias, &dy, &out0, &dx0, &dw0, &db0]
            .iter()
            .map(|d| put(be, d))
            .collect();
        let v = |i: usize, len: usize| bufs[i].view().slice(0, len);
        be.run(MatmulFwd {
            out: v(4, rows * oc),
            inp: v(0, rows * ic),
            weight: v(1, oc * ic),
            bias: Some(v(2, oc)),
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap();
        be.run(MatmulBwd {
            dinp: Some(v(5, rows * ic)),
            dweight: Some(v(6, oc * ic)),
            dbias: Some(v(7, oc)),
            dout: v(3, rows * oc),
            inp: v(0, rows * ic),
            weight: v(1, oc * ic),
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap();
        [(4, rows * oc), (5, rows * ic), (6, oc * ic), (7, oc)]
            .iter()
            .map(|&(i, len)| be.download(v(i, len)).unwrap())
            .collect()
    };
    let (want, got) = (run(&cpu), run(be));
    let tol = tol_for(rows.max(ic).max(oc));
    for (name, (g, w)) in ["out", "dinp", "dweight", "dbias"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        let err = norm_err(g, w);
        assert!(
            err <= tol,
            "{label}: {name} at rows {rows} in {ic} out {oc}: error {err:.2e} > {tol:.1e}"
        );
    }
}

#[test]
fn edge_shapes_match_the_cpu() {
    // Exact tile multiples, one past them, single rows/columns, a long k
    // loop, and k smaller than one k-slice.
    let shapes = [
        (64, 64, 64),
        (65, 17, 129),
        (1, 1, 1),
        (1, 300, 3),
        (130, 3, 1),
        (5, 1, 70),
    ];
    for (label, be) in backends() {
        for &(rows, ic, oc) in &shapes {
            check_shape(&label, be.as_ref(), rows, ic, oc);
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let be = emu(ResumeOrder::Forward);
    let buf = || be.alloc(DType::F32, 12).unwrap();
    let (a, b, c) = (buf(), buf(), buf());
    let (a, b, c) = (a.view(), b.view(), c.view());
    let fwd = |out, inp, weight, rows| MatmulFwd {
        out,
        inp,
        weight,
        bias: None,
        rows,
        in_ch: 4,
        out_ch: 3,
    };
    // inp needs 4 x 4 = 16 elements.
    let msg = be.run(fwd(a, b, c, 4)).unwrap_err().to_string();
    assert!(
        msg.contains("matmul_fwd: inp has 12 elements but the shape needs 16"),
        "{msg}"
    );
    let msg = be.run(fwd(a, a, c, 3)).unwrap_err().to_string();
    assert!(msg.contains("output out overlaps input inp"), "{msg}");
    let msg = be
        .run(MatmulBwd {
            dinp: Some(a),
            dweight: Some(a),
            dbias: None,
            dout: b,
            inp: c,
            weight: c,
            rows: 3,
            in_ch: 4,
            out_ch: 3,
        })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("output dinp overlaps output dweight"), "{msg}");
}

#[test]
fn a_256_cube_product_matches_and_reports_emulator_speed() {
    // Several blocks in both grid dimensions and a 16-slice k loop.
    let n = 256;
    let (x, w) = (random(n * n, 1.0, 9), random(n * n, 1.0, 10));
    let cpu = CpuBackend::new();
    let be = emu(ResumeOrder::Forward);
    let run = |be: &dyn Backend| {
        let (xb, wb) = (put(be, &x), put(be, &w));
        let out = be.alloc(DType::F32, n * n).unwrap();
        let t = std::time::Instant::now();
        be.run(MatmulFwd {
            out: out.view(),
            inp: xb.view(),
            weight: wb.view(),
            bias: None,
            rows: n,
            in_ch: n,
            out_ch: n,
        })
        .unwrap();
        be.synchronize().unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        (be.download::<f32>(out.view()).unwrap(), ms)
    };
    let (want, _) = run(&cpu);
    let (got, ms) = run(&be);
    eprintln!("emulated matmul_fwd 256 x 256 x 256: {ms:.1} ms");
    let tol = tol_for(n);
    let err = norm_err(&got, &want);
    assert!(err <= tol, "256^3 product: error {err:.2e} > {tol:.1e}");
}
