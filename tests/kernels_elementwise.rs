//! The elementwise kernels (kernels/elementwise.cu) under the emulator,
//! against `CpuBackend`, under forward and reverse resume order. Sizes are not
//! multiples of the block size and span several blocks.

mod common;

use common::{assert_conformance, backends, put, random};
use dyntie::backend::cpu::CpuBackend;
use dyntie::backend::kernels::KernelBackend;
use dyntie::backend::{Backend, Buffer, View};
use dyntie::cuda::{CudaDevice, EmuDevice};

const N: usize = 256 * 5 + 37;

/// One op applied to a backend and the views of its inputs.
type Op<'a> = dyn Fn(&dyn Backend, &[View<f32>]) -> anyhow::Result<()> + 'a;

/// Runs `op` on the CPU and on every emulated backend with the same inputs
/// (`inputs[0]` is also the initial content of the output) and compares the
/// output buffer `inputs[0]`.
fn check(name: &str, inputs: &[Vec<f32>], tol: f32, op: &Op) {
    let cpu = CpuBackend::new();
    let run = |be: &dyn Backend| -> Vec<f32> {
        let bufs: Vec<Buffer> = inputs.iter().map(|x| put(be, x)).collect();
        let views: Vec<View<f32>> = bufs.iter().map(|b| b.f32()).collect();
        op(be, &views).unwrap();
        be.synchronize().unwrap();
        be.download_f32(views[0]).unwrap()
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
        be.fill(v[0], 0.75)
    });
    check("copy", &[a.clone(), b.clone()], 0.0, &|be, v| {
        be.copy(v[0], v[1])
    });
    check("add", &[a.clone(), b.clone(), c.clone()], 0.0, &|be, v| {
        be.add(v[0], v[1], v[2])
    });
    check("add in place", &[a.clone(), b.clone()], 0.0, &|be, v| {
        be.add(v[0], v[0], v[1])
    });
    check("accumulate", &[a.clone(), b.clone()], 0.0, &|be, v| {
        be.accumulate(v[0], v[1])
    });
}

#[test]
fn gelu_matches_the_cpu() {
    let (a, x, d) = (random(N, 2.0, 4), random(N, 2.0, 5), random(N, 2.0, 6));
    check("gelu_fwd", &[a.clone(), x.clone()], 1e-6, &|be, v| {
        be.gelu_fwd(v[0], v[1])
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
        be.gelu_bwd(bufs[0].f32(), bufs[1].f32(), bufs[2].f32())
            .unwrap();
        be.download_f32(bufs[0].f32()).unwrap()
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
            be.dropout_fwd(v[0], v[1], p, seed, offset)
        });
        check("dropout_bwd", &[a.clone(), x.clone()], 1e-6, &|be, v| {
            be.dropout_bwd(v[0], v[1], p, seed, offset)
        });
    }
}

#[test]
fn big_tensors_use_the_grid_stride_loop_and_report_speed() {
    // More elements than one capped grid covers, so threads loop.
    let n = dyntie::backend::kernels::MAX_GRID_1D as usize * 256 * 2 + 1000;
    let x = random(n, 2.0, 9);
    let be = KernelBackend::new(EmuDevice::new());
    let xb = put(&be, &x);
    let out = be.alloc_f32(n).unwrap();
    let ms = dyntie::cuda::Device::time_ms(be.device(), &mut || be.gelu_fwd(out.f32(), xb.f32()))
        .unwrap();
    eprintln!("emulated gelu_fwd over {n} elements: {ms:.1} ms");
    be.fill(out.f32(), 2.0).unwrap();
    be.accumulate(out.f32(), xb.f32()).unwrap();
    let got = be.download_f32(out.f32()).unwrap();
    assert!(got.iter().zip(&x).all(|(g, x)| *g == 2.0 + x));
}

#[test]
fn bad_shapes_and_missing_kernels_are_errors() {
    let be = KernelBackend::new(EmuDevice::new());
    let (a, b) = (be.alloc_f32(10).unwrap(), be.alloc_f32(11).unwrap());
    let msg = be.copy(a.f32(), b.f32()).unwrap_err().to_string();
    assert!(
        msg.contains("copy") && msg.contains("10") && msg.contains("11"),
        "{msg}"
    );
    let big = be.alloc_f32(20).unwrap();
    let msg = be
        .dropout_fwd(a.f32(), big.f32().slice(0, 10), 1.5, 0, 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not in [0, 1]"), "{msg}");
    let msg = be
        .gelu_fwd(big.f32().slice(0, 10), big.f32().slice(5, 10))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("gelu_fwd: output out overlaps input inp"),
        "{msg}"
    );
    let msg = be
        .add(big.f32().slice(0, 10), big.f32().slice(2, 10), a.f32())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("overlaps input a"), "{msg}");
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
        "add",
        "accumulate",
        "gelu_fwd",
        "gelu_bwd",
        "dropout_fwd",
        "dropout_bwd",
    ];
    for (label, be) in backends() {
        assert_conformance(&label, be.as_ref(), &ops, &Dims::standard(), 11);
    }
}
