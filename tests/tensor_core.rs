//! The emulated tensor-core helpers (the wrappers in
//! kernels/include/common.cuh, kernels/emu/tensor_core.cpp) on one warp against scalar references
//! written from the PTX ISA layouts, and the two defects the emulation must
//! expose: a wrong fragment index and a cp.async stage read before its wait.
//! Kernels: kernels/tests/tensor_core_tests.cu.

// Only the raw-launch helpers: the rest of tests/common is for the Backend tests.
#[path = "common/raw.rs"]
mod raw;

use dyntie::cuda::{Device, EmuConfig, EmuDevice, LaunchDims, ResumeOrder};
use half::bf16;
use raw::{arg, download, random_bf16, upload};

fn device(order: ResumeOrder) -> EmuDevice {
    EmuDevice::with_config(EmuConfig {
        workers: 1,
        order,
        ..EmuConfig::default()
    })
}

fn warp() -> LaunchDims {
    LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: 0,
    }
}

/// `a[m, k] @ b[n, k]^T + c[m, n]` in f64 (exact for bf16 products).
fn reference(a: &[bf16], b: &[bf16], c: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    (0..m * n)
        .map(|i| {
            let (row, col) = (i / n, i % n);
            let dot: f64 = (0..k)
                .map(|x| a[row * k + x].to_f64() * b[col * k + x].to_f64())
                .sum();
            dot + c[i] as f64
        })
        .collect()
}

/// Largest elementwise error, scaled by the sum of magnitudes it came from;
/// NaN counts as infinitely wrong.
fn worst_error(got: &[f32], want: &[f64], scale: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(scale)
        .map(|((&g, &w), &s)| {
            let e = (g as f64 - w).abs() / s.max(f64::MIN_POSITIVE);
            if e.is_nan() {
                f64::INFINITY
            } else {
                e
            }
        })
        .fold(0.0, f64::max)
}

/// Sum of |a||b| + |c| per output: what fp32 rounding errors scale with.
fn magnitudes(a: &[bf16], b: &[bf16], c: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let abs = |v: &[bf16]| v.iter().map(|x| bf16::from_f64(x.to_f64().abs())).collect();
    let (aa, ba): (Vec<bf16>, Vec<bf16>) = (abs(a), abs(b));
    let ca: Vec<f32> = c.iter().map(|x| x.abs()).collect();
    reference(&aa, &ba, &ca, m, n, k)
}

#[test]
fn one_mma_matches_the_scalar_product() {
    let dev = device(ResumeOrder::Forward);
    let a = random_bf16(16 * 16, 1);
    let b = random_bf16(8 * 16, 2); // stored [n][k]
    let c: Vec<f32> = random_bf16(16 * 8, 3).iter().map(|x| x.to_f32()).collect();
    let (ab, bb, cb) = (upload(&dev, &a), upload(&dev, &b), upload(&dev, &c));
    let d = upload(&dev, &[0f32; 128]);
    let (mut pd, mut pa, mut pb, mut pc) = (d.addr(), ab.addr(), bb.addr(), cb.addr());
    // SAFETY: test_mma_fragments(float*, const bf16*, const bf16*, const float*)
    // over 128, 256, 128 and 128 elements.
    unsafe {
        dev.launch(
            "test_mma_fragments",
            warp(),
            &mut [arg(&mut pd), arg(&mut pa), arg(&mut pb), arg(&mut pc)],
        )
    }
    .unwrap();
    let got: Vec<f32> = download(&dev, &d, 128);
    let want = reference(&a, &b, &c, 16, 8, 16);
    // The emulator sums in double and rounds once to fp32: half an ulp of
    // fp32 (2^-24 relative) of the sum of magnitudes bounds the error.
    let err = worst_error(&got, &want, &magnitudes(&a, &b, &c, 16, 8, 16));
    assert!(err <= 2f64.powi(-24), "mma: relative error {err:.2e}");
}

/// What ldmatrix should put into register `j` of `lane` for matrices stored
/// one after another as 8 x 8 row-major u16 (PTX ISA, ldmatrix).
fn ldmatrix_expected(src: &[u16], lane: usize, j: usize, trans: bool) -> u32 {
    let at = |row: usize, col: usize| src[j * 64 + row * 8 + col] as u32;
    let (lo, hi) = if trans {
        (
            at(2 * (lane % 4), lane / 4),
            at(2 * (lane % 4) + 1, lane / 4),
        )
    } else {
        (
            at(lane / 4, 2 * (lane % 4)),
            at(lane / 4, 2 * (lane % 4) + 1),
        )
    };
    lo | hi << 16
}

#[test]
fn ldmatrix_hands_out_the_ptx_layouts() {
    let dev = device(ResumeOrder::Reverse);
    let src: Vec<u16> = (0..256).map(|i| i as u16).collect(); // every element distinct
                                                              // In memory as the kernel reads it: two elements per word, the first low.
    let words: Vec<u32> = src
        .chunks(2)
        .map(|p| p[0] as u32 | (p[1] as u32) << 16)
        .collect();
    let sb = upload(&dev, &words);
    for (trans, x2) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let out = upload(&dev, &[0u32; 128]);
        let (mut po, mut ps, mut t, mut x) = (out.addr(), sb.addr(), trans, x2);
        // SAFETY: test_ldmatrix(u32* out[128], const u32* src[128], int, int).
        unsafe {
            dev.launch(
                "test_ldmatrix",
                warp(),
                &mut [arg(&mut po), arg(&mut ps), arg(&mut t), arg(&mut x)],
            )
        }
        .unwrap();
        let got: Vec<u32> = download(&dev, &out, 128);
        let regs = if x2 == 1 { 2 } else { 4 };
        for lane in 0..32 {
            for j in 0..4 {
                let want = if j < regs {
                    ldmatrix_expected(&src, lane, j, trans == 1)
                } else {
                    0xdead_beef
                };
                assert_eq!(
                    got[lane * 4 + j],
                    want,
                    "trans {trans} x2 {x2}: lane {lane} register {j}"
                );
            }
        }
    }
}

#[test]
fn cp_async_writes_only_when_its_group_is_waited_for() {
    let dev = device(ResumeOrder::Random(3));
    let threads = 64;
    let src: Vec<f32> = (0..threads * 12).map(|i| i as f32 + 0.5).collect();
    let sb = upload(&dev, &src);
    let out = upload(&dev, &vec![0f32; threads * 36]);
    let (mut po, mut ps) = (out.addr(), sb.addr());
    let dims = LaunchDims {
        block: [threads as u32, 1, 1],
        ..warp()
    };
    // SAFETY: test_cp_async_order(float* out[64 * 36], const float* src[64 * 12]).
    unsafe {
        dev.launch(
            "test_cp_async_order",
            dims,
            &mut [arg(&mut po), arg(&mut ps)],
        )
    }
    .unwrap();
    let got: Vec<f32> = download(&dev, &out, threads * 36);
    for t in 0..threads {
        let data = |slot: usize, e: usize| -> f32 {
            match slot {
                2 if e > 0 => 0.0, // zero-filled past the 4 source bytes
                _ => src[t * 12 + slot * 4 + e],
            }
        };
        // Snapshot 0: nothing waited for; 1: after wait<1>, only the older
        // committed group; 2: after commit + wait<0>, everything.
        let landed = [[false, false, false], [true, false, false], [true; 3]];
        for (snap, landed) in landed.iter().enumerate() {
            for (slot, &done) in landed.iter().enumerate() {
                for e in 0..4 {
                    let v = got[t * 36 + snap * 12 + slot * 4 + e];
                    let ok = if done { v == data(slot, e) } else { v.is_nan() };
                    assert!(
                        ok,
                        "thread {t} snapshot {snap} slot {slot}[{e}] = {v} (landed: {done})"
                    );
                }
            }
        }
    }
}

#[test]
fn lanes_in_different_tensor_core_instructions_are_reported() {
    let dev = device(ResumeOrder::Forward);
    let out = upload(&dev, &[0f32; 32]);
    let mut po = out.addr();
    // SAFETY: test_mixed_tensor_ops(float* out[32]).
    let err = unsafe { dev.launch("test_mixed_tensor_ops", warp(), &mut [arg(&mut po)]) }
        .expect_err("mixing mma and ldmatrix in one warp must fail")
        .to_string();
    assert!(err.contains("different tensor-core instructions"), "{err}");
}

/// Runs one of the mini GEMMs (d[16][8] = a[16][k] b[8][k]^T) and returns
/// its worst scaled error against the f64 reference.
fn mini_gemm_error(kernel: &str, order: ResumeOrder) -> f64 {
    let dev = device(order);
    let k = 64;
    let (a, b) = (random_bf16(16 * k, 4), random_bf16(8 * k, 5));
    let zero = vec![0f32; 128];
    let (ab, bb, d) = (upload(&dev, &a), upload(&dev, &b), upload(&dev, &zero));
    let (mut pd, mut pa, mut pb, mut pk) = (d.addr(), ab.addr(), bb.addr(), k as i32);
    // SAFETY: test_mini_gemm*(float* d[128], const bf16* a[16 k], const bf16* b[8 k], int k).
    unsafe {
        dev.launch(
            kernel,
            warp(),
            &mut [arg(&mut pd), arg(&mut pa), arg(&mut pb), arg(&mut pk)],
        )
    }
    .unwrap();
    let got: Vec<f32> = download(&dev, &d, 128);
    let want = reference(&a, &b, &zero, 16, 8, k);
    worst_error(&got, &want, &magnitudes(&a, &b, &zero, 16, 8, k))
}

/// Four mma steps, each rounding its fp32 accumulator once (2^-24 relative
/// to the running sum of magnitudes each time).
const MINI_GEMM_TOL: f64 = 4.0 / 16_777_216.0;

#[test]
fn the_mini_gemm_pipeline_is_right_under_every_order() {
    for order in [
        ResumeOrder::Forward,
        ResumeOrder::Reverse,
        ResumeOrder::Random(11),
    ] {
        let err = mini_gemm_error("test_mini_gemm", order);
        assert!(err <= MINI_GEMM_TOL, "{order:?}: error {err:.2e}");
    }
}

#[test]
fn a_wrong_fragment_index_fails_the_comparison() {
    let err = mini_gemm_error("test_mini_gemm_wrong_fragment", ResumeOrder::Forward);
    assert!(
        err > 0.01,
        "swapping fragments a1 and a2 went unnoticed (error {err:.2e})"
    );
}

#[test]
fn reading_a_stage_before_its_wait_fails_the_comparison() {
    let err = mini_gemm_error("test_mini_gemm_read_before_wait", ResumeOrder::Forward);
    assert!(
        err.is_infinite(),
        "a stage read before cp.async.wait_group retired it was not NaN (error {err:.2e})"
    );
}
