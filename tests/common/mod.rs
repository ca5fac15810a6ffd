//! What the kernel tests share: the backends they run on, random inputs,
//! uploads, the conformance assertion and the harness's error measure.
//! Each test binary compiles this module on its own, so items that only some
//! of them use are marked `allow(dead_code)`.

use dyntie::conformance::{check_ops, format_results, Dims};
use dyntie::cpu::CpuBackend;
use dyntie::cuda::{CudaDevice, EmuConfig, EmuDevice, KernelBackend, ResumeOrder};
use dyntie::mem::{Buffer, DType};
use dyntie::ops::{Backend, BackendExt, ENTRIES};
use dyntie::rng::HostRng;

/// The emulator with two workers (the CI machine's cores) in `order`.
pub fn emu(order: ResumeOrder) -> KernelBackend<EmuDevice> {
    KernelBackend::new(EmuDevice::with_config(EmuConfig {
        workers: 2,
        order,
        ..EmuConfig::default()
    }))
}

/// The emulator under forward and reverse resume order, and the GPU when
/// this machine has one (then the same comparisons check the real kernels).
pub fn backends() -> Vec<(String, Box<dyn Backend>)> {
    let mut out: Vec<(String, Box<dyn Backend>)> = [ResumeOrder::Forward, ResumeOrder::Reverse]
        .into_iter()
        .map(|order| {
            (
                format!("emu {order:?}"),
                Box::new(emu(order)) as Box<dyn Backend>,
            )
        })
        .collect();
    if dyntie::cuda::driver_present() {
        let dev =
            CudaDevice::new(0).expect("a CUDA driver is present but the GPU cannot be opened");
        out.push((
            dev.description().to_string(),
            Box::new(KernelBackend::new(dev)),
        ));
    }
    out
}

/// Asserts that `check_ops` passes every op in `ops` at every compute dtype
/// it supports and every one of `dims` on `be` against the CPU, printing the
/// harness's table when one fails.
pub fn assert_conformance(label: &str, be: &dyn Backend, ops: &[&str], dims: &[Dims], seed: u64) {
    let cpu = CpuBackend::new();
    let results = check_ops(&cpu, be, ops, dims, seed);
    let dtypes: usize = ops
        .iter()
        .map(|op| {
            let entry = ENTRIES.iter().find(|e| e.name == *op);
            entry.expect("a registered op").dtypes.len()
        })
        .sum();
    assert_eq!(results.len(), dtypes * dims.len());
    // Shown with --nocapture: how close each case came to its tolerance.
    println!("{label}:\n{}", format_results(&results));
    assert!(
        results.iter().all(|r| r.passed),
        "{label}:\n{}",
        format_results(&results)
    );
}

/// `n` normal samples times `scale`, reproducible from `seed`.
#[allow(dead_code)]
pub fn random(n: usize, scale: f64, seed: u64) -> Vec<f32> {
    let mut rng = HostRng::new(seed);
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// A buffer holding `data` (one element when `data` is empty, since a
/// backend cannot allocate nothing).
#[allow(dead_code)]
pub fn put(be: &dyn Backend, data: &[f32]) -> Buffer {
    let buf = be.alloc(DType::F32, data.len().max(1)).unwrap();
    be.upload(buf.view().slice(0, data.len()), data).unwrap();
    buf
}

/// `put` for token ids and targets.
#[allow(dead_code)]
pub fn put_u32(be: &dyn Backend, data: &[u32]) -> Buffer {
    let buf = be.alloc(DType::U32, data.len().max(1)).unwrap();
    be.upload(buf.view().slice(0, data.len()), data).unwrap();
    buf
}

/// `max |got - want| / max(max |want|, 1e-3)`, the harness's error measure
/// (infinite on any NaN).
#[allow(dead_code)]
pub fn norm_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs() as f64));
    got.iter().zip(want).fold(0.0, |worst, (g, w)| {
        let d = (*g as f64 - *w as f64).abs() / scale;
        if d.is_nan() {
            f64::INFINITY
        } else {
            worst.max(d)
        }
    })
}

/// The harness's tolerance for a reduction over `k` terms.
#[allow(unused_imports)]
pub use dyntie::ops::case::tol_for;
