//! The matmul kernels (kernels/matmul.cu) under the emulator, against
//! `CpuBackend`, through the conformance harness under forward, reverse and
//! random resume order, plus edge shapes the harness does not reach. On a
//! machine with a GPU the same checks run on it too.

mod common;

use common::{assert_conformance, backends, emu, norm_err, put, random, tol_for};
use dyntie::backend::cpu::CpuBackend;
use dyntie::backend::{Backend, Buffer};
use dyntie::conformance::Dims;
use dyntie::cuda::ResumeOrder;

#[test]
fn the_conformance_harness_passes_the_matmul_ops() {
    let ops = ["matmul_fwd", "matmul_bwd"];
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
        let v = |i: usize, len: usize| bufs[i].f32().slice(0, len);
        be.matmul_fwd(
            v(4, rows * oc),
            v(0, rows * ic),
            v(1, oc * ic),
            Some(v(2, oc)),
            rows,
            ic,
            oc,
        )
        .unwrap();
        be.matmul_bwd(
            Some(v(5, rows * ic)),
            Some(v(6, oc * ic)),
            Some(v(7, oc)),
            v(3, rows * oc),
            v(0, rows * ic),
            v(1, oc * ic),
            rows,
            ic,
            oc,
        )
        .unwrap();
        [(4, rows * oc), (5, rows * ic), (6, oc * ic), (7, oc)]
            .iter()
            .map(|&(i, len)| be.download_f32(v(i, len)).unwrap())
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
    let (a, b, c) = (
        be.alloc_f32(12).unwrap(),
        be.alloc_f32(12).unwrap(),
        be.alloc_f32(12).unwrap(),
    );
    // inp needs 4 x 4 = 16 elements.
    let msg = be
        .matmul_fwd(a.f32(), b.f32(), c.f32(), None, 4, 4, 3)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("matmul_fwd: inp has 12 elements but the shape needs 16"),
        "{msg}"
    );
    let msg = be
        .matmul_fwd(a.f32(), a.f32(), c.f32(), None, 3, 4, 3)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("output out overlaps input inp"), "{msg}");
    let msg = be
        .matmul_bwd(
            Some(a.f32()),
            Some(a.f32()),
            None,
            b.f32(),
            c.f32(),
            c.f32(),
            3,
            4,
            3,
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("output dinp overlaps input dweight"), "{msg}");
}

#[test]
fn a_256_cube_product_matches_and_reports_emulator_speed() {
    // Several blocks in both grid dimensions and a 16-slice k loop.
    let n = 256;
    let (x, w) = (random(n * n, 1.0, 9), random(n * n, 1.0, 10));
    let cpu = CpuBackend::new();
    let be = emu(ResumeOrder::Forward);
    let run = |be: &dyn Backend| {
        let (xb, wb, out) = (put(be, &x), put(be, &w), be.alloc_f32(n * n).unwrap());
        let t = std::time::Instant::now();
        be.matmul_fwd(out.f32(), xb.f32(), wb.f32(), None, n, n, n)
            .unwrap();
        be.synchronize().unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        (be.download_f32(out.f32()).unwrap(), ms)
    };
    let (want, _) = run(&cpu);
    let (got, ms) = run(&be);
    eprintln!("emulated matmul_fwd 256 x 256 x 256: {ms:.1} ms");
    let tol = tol_for(n);
    let err = norm_err(&got, &want);
    assert!(err <= tol, "256^3 product: error {err:.2e} > {tol:.1e}");
}
