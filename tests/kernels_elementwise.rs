//! The elementwise and activation kernels (kernels/elementwise.cu,
//! kernels/activation.cu) under the emulator,
//! against `CpuBackend`, under forward and reverse resume order. Sizes are not
//! multiples of the block size and span several blocks.

mod common;

use common::{assert_conformance, backends, put, random};
use dyntie::cpu::CpuBackend;
use dyntie::cuda::{CudaDevice, Device, EmuDevice, KernelBackend};
use dyntie::mem::{Buffer, DType, View};
use dyntie::ops::activation::{DropoutBwd, DropoutFwd, GeluBwd, GeluFwd};
use dyntie::ops::elementwise::{Accumulate, Add, CopyView, Fill};
use dyntie::ops::optimizer::{SumSquares, SUM_SCRATCH_LEN};
use dyntie::ops::{Backend, BackendExt};

const N: usize = 256 * 5 + 37;

/// One op applied to a backend and the views of its inputs.
type Op<'a> = dyn Fn(&dyn Backend, &[View]) -> anyhow::Result<()> + 'a;

/// Runs `op` on the CPU and on every emulated backend with the same inputs
/// (`inputs[0]` is also the initial content of the output) and compares the
/// output buffer `inputs[0]`.
fn check(name: &str, inputs: &[Vec<f32>], tol: f32, op: &Op) {
    let cpu = CpuBackend::new();
    let run = |be: &dyn Backend| -> Vec<f32> {
        let bufs: Vec<Buffer> = inputs.iter().map(|x| put(be, x)).collect();
        let views: Vec<View> = bufs.iter().map(|b| b.view()).collect();
        op(be, &views).unwrap();
        be.synchronize().unwrap();
        be.download(views[0]).unwrap()
    };
    let want = run(&cpu);
    for (label, be) in backends() {
        let got = run(be.as_ref());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ok = (g - w).abs() <= tol * (1.0 + w.abs()) && (*g == 0.0) == (*w == 0.0);
            assert!(ok, "{name} on {label}: element {i}: {g} vs cpu {w}");
        }
    }
}

#[test]
fn fill_copy_add_accumulate_match_the_cpu() {
    let (a, b, c) = (random(N, 2.0, 1), random(N, 2.0, 2), random(N, 2.0, 3));
    check("fill", std::slice::from_ref(&a), 0.0, &|be, v| {
        be.run(Fill {
            dst: v[0],
            value: 0.75,
        })
    });
    check("copy", &[a.clone(), b.clone()], 0.0, &|be, v| {
        be.run(CopyView {
            dst: v[0],
            src: v[1],
        })
    });
    // Views off the 16-byte alignment the vector path needs, on either side.
    for (d, s) in [(1, 2), (0, 3), (4, 4)] {
        check(
            "copy, offset views",
            &[a.clone(), b.clone()],
            0.0,
            &|be, v| {
                be.run(CopyView {
                    dst: v[0].slice(d, N - 4),
                    src: v[1].slice(s, N - 4),
                })
            },
        );
    }
    check("add", &[a.clone(), b.clone(), c.clone()], 0.0, &|be, v| {
        be.run(Add {
            out: v[0],
            a: v[1],
            b: v[2],
        })
    });
    check("add in place", &[a.clone(), b.clone()], 0.0, &|be, v| {
        be.run(Add {
            out: v[0],
            a: v[0],
            b: v[1],
        })
    });
    check("accumulate", &[a.clone(), b.clone()], 0.0, &|be, v| {
        be.run(Accumulate {
            dst: v[0],
            src: v[1],
        })
    });
}

#[test]
fn gelu_matches_the_cpu() {
    let (a, x, d) = (random(N, 2.0, 4), random(N, 2.0, 5), random(N, 2.0, 6));
    check("gelu_fwd", &[a.clone(), x.clone()], 1e-6, &|be, v| {
        be.run(GeluFwd {
            out: v[0],
            inp: v[1],
        })
    });
    // The backward accumulates into a non-zero gradient. Both sides compute
    // tanh to a few ulp (the CPU with its own vectorised tanh, the kernel with
    // tanhf), and the backward amplifies a tanh error dt by
    // |dy| * |0.5 - x * tanh * du| (du = d(inner)/dx), so each element is
    // allowed 1e-6 relative plus 4 ulp of tanh carried through that factor.
    let cpu = CpuBackend::new();
    let inputs = [a, x.clone(), d.clone()];
    let run = |be: &dyn Backend| -> Vec<f32> {
        let bufs: Vec<Buffer> = inputs.iter().map(|v| put(be, v)).collect();
        be.run(GeluBwd {
            dinp: bufs[0].view(),
            inp: bufs[1].view(),
            dout: bufs[2].view(),
        })
        .unwrap();
        be.download(bufs[0].view()).unwrap()
    };
    let want = run(&cpu);
    for (label, be) in backends() {
        let got = run(be.as_ref());
        for i in 0..got.len() {
            let (xi, dy) = (x[i] as f64, d[i] as f64);
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let th = (k * (xi + 0.044715 * xi.powi(3))).tanh();
            let du = k * (1.0 + 3.0 * 0.044715 * xi * xi);
            let amp = dy.abs() * (0.5 - xi * th * du).abs();
            let tol = 1e-6 * (1.0 + want[i].abs() as f64) + amp * 4.0 * f32::EPSILON as f64;
            let diff = (got[i] as f64 - want[i] as f64).abs();
            assert!(
                diff <= tol,
                "gelu_bwd on {label}: element {i}: {} vs cpu {} (allowed {tol:.2e})",
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn dropout_masks_are_identical_to_the_cpu() {
    let (a, x) = (random(N, 2.0, 7), random(N, 2.0, 8));
    for (p, seed, offset) in [(0.1, 42, 0), (0.5, 7, 1 << 33), (0.0, 1, 5), (1.0, 3, 9)] {
        check("dropout_fwd", &[a.clone(), x.clone()], 1e-6, &|be, v| {
            be.run(DropoutFwd {
                out: v[0],
                inp: v[1],
                p,
                seed,
                offset,
            })
        });
        check("dropout_bwd", &[a.clone(), x.clone()], 1e-6, &|be, v| {
            be.run(DropoutBwd {
                dinp: v[0],
                dout: v[1],
                p,
                seed,
                offset,
            })
        });
    }
}

#[test]
fn big_tensors_use_the_grid_stride_loop_and_report_speed() {
    // More elements than one capped grid covers, so threads loop.
    let n = dyntie::cuda::params::MAX_GRID_1D as usize * 256 * 2 + 1000;
    let x = random(n, 2.0, 9);
    let be = KernelBackend::new(EmuDevice::new());
    let xb = put(&be, &x);
    let out = be.alloc(DType::F32, n).unwrap();
    let gelu = GeluFwd {
        out: out.view(),
        inp: xb.view(),
    };
    let ms = be.device().time_ms(&mut || be.run(gelu)).unwrap();
    eprintln!("emulated gelu_fwd over {n} elements: {ms:.1} ms");
    be.run(Fill {
        dst: out.view(),
        value: 2.0,
    })
    .unwrap();
    be.run(Accumulate {
        dst: out.view(),
        src: xb.view(),
    })
    .unwrap();
    let got: Vec<f32> = be.download(out.view()).unwrap();
    assert!(got.iter().zip(&x).all(|(g, x)| *g == 2.0 + x));
}

#[test]
fn bad_shapes_and_missing_kernels_are_errors() {
    let be = KernelBackend::new(EmuDevice::new());
    let (a, b) = (
        be.alloc(DType::F32, 10).unwrap(),
        be.alloc(DType::F32, 11).unwrap(),
    );
    let msg = be
        .run(CopyView {
            dst: a.view(),
            src: b.view(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("copy") && msg.contains("10") && msg.contains("11"),
        "{msg}"
    );
    let big = be.alloc(DType::F32, 20).unwrap();
    let msg = be
        .run(DropoutFwd {
            out: a.view(),
            inp: big.view().slice(0, 10),
            p: 1.5,
            seed: 0,
            offset: 0,
        })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not in [0, 1]"), "{msg}");
    let msg = be
        .run(GeluFwd {
            out: big.view().slice(0, 10),
            inp: big.view().slice(5, 10),
        })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("gelu_fwd: output out overlaps input inp"),
        "{msg}"
    );
    let msg = be
        .run(Add {
            out: big.view().slice(0, 10),
            a: big.view().slice(2, 10),
            b: a.view(),
        })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("overlaps input a"), "{msg}");
    // A bf16 view where the op only has an f32 kernel.
    let half = be.alloc(DType::BF16, 10).unwrap();
    let acc = be.alloc(DType::BF16, 1).unwrap();
    let scratch = be.alloc(DType::F32, SUM_SCRATCH_LEN).unwrap();
    let msg = be
        .run(SumSquares {
            acc: acc.view(),
            scratch: scratch.view(),
            x: half.view(),
        })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("sum_squares: acc is bf16, but sum_squares is only implemented for f32"),
        "{msg}"
    );
}

#[test]
fn cuda_device_without_a_gpu_is_an_error_not_a_panic() {
    let result = CudaDevice::new(0);
    if dyntie::cuda::driver_present() {
        // A GPU machine: opening it may work; it must not panic either way.
        if let Err(e) = result {
            eprintln!("CudaDevice::new with a driver present: {e:#}");
        }
        return;
    }
    let msg = format!(
        "{:#}",
        result
            .err()
            .expect("no driver, yet CudaDevice::new succeeded")
    );
    assert!(msg.contains("no CUDA driver found"), "{msg}");
    assert!(msg.contains("--backend cpu"), "{msg}");
}

#[test]
fn the_conformance_harness_passes_the_elementwise_ops() {
    // The same harness `dyntie doctor` runs on a GPU.
    use dyntie::conformance::Dims;
    let ops = [
        "fill",
        "copy",
        "cast",
        "add",
        "accumulate",
        "gelu_fwd",
        "gelu_bwd",
        "gelu_erf_fwd",
        "gelu_erf_bwd",
        "dropout_fwd",
        "dropout_bwd",
    ];
    for (label, be) in backends() {
        assert_conformance(&label, be.as_ref(), &ops, &Dims::standard(), 11);
    }
}
