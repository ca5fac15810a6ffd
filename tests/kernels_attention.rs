//! The attention kernels (the products of kernels/matmul.cu and the softmax
//! of kernels/attention.cu) under the emulator, against `CpuBackend`, through
//! the conformance harness under forward, reverse and random resume order,
//! plus shapes that cross the 64-row tiles of the causal products. On a
//! machine with a GPU the same checks run on it too.

use dyntie::backend::cpu::CpuBackend;
use dyntie::backend::kernels::KernelBackend;
use dyntie::backend::{AttnShape, Backend};
use dyntie::conformance::{check_ops, format_results, Dims};
use dyntie::device::{CudaDevice, EmuConfig, EmuDevice, ResumeOrder};

fn emu(order: ResumeOrder) -> (String, Box<dyn Backend>) {
    let dev = EmuDevice::with_config(EmuConfig {
        workers: 2,
        order,
        ..EmuConfig::default()
    });
    (format!("emu {order:?}"), Box::new(KernelBackend::new(dev)))
}

/// The emulator in forward and reverse order, and the GPU when there is one.
fn backends() -> Vec<(String, Box<dyn Backend>)> {
    let mut out = vec![emu(ResumeOrder::Forward), emu(ResumeOrder::Reverse)];
    if dyntie::device::cuda::driver_present() {
        let dev =
            CudaDevice::new(0).expect("a CUDA driver is present but the GPU cannot be opened");
        out.push((
            dev.description().to_string(),
            Box::new(KernelBackend::new(dev)),
        ));
    }
    out
}

fn assert_all_pass(label: &str, dims: &[Dims], seed: u64, be: &dyn Backend) {
    let ops = ["attention_fwd", "attention_bwd"];
    let cpu = CpuBackend::new();
    let results = check_ops(&cpu, be, &ops, dims, seed);
    assert_eq!(results.len(), ops.len() * dims.len());
    assert!(
        results.iter().all(|r| r.passed),
        "{label}:\n{}",
        format_results(&results)
    );
}

#[test]
fn the_conformance_harness_passes_the_attention_ops() {
    for (label, be) in backends() {
        assert_all_pass(&label, &Dims::standard(), 31, be.as_ref());
    }
    let (label, be) = emu(ResumeOrder::Random(9));
    assert_all_pass(&label, &Dims::standard(), 32, be.as_ref());
}

#[test]
fn sequences_across_several_tiles_and_single_positions() {
    // T = 130 spans three 64-row tiles, so the skipped triangles and the
    // diagonal tiles of every causal product are exercised; T = 1 and one
    // head of size 1 are the degenerate ends.
    let dims = [
        Dims {
            batch: 1,
            seq: 130,
            channels: 16,
            heads: 2,
            vocab: 2,
        },
        Dims {
            batch: 3,
            seq: 1,
            channels: 8,
            heads: 2,
            vocab: 2,
        },
        Dims {
            batch: 2,
            seq: 5,
            channels: 1,
            heads: 1,
            vocab: 2,
        },
    ];
    for (label, be) in backends() {
        assert_all_pass(&label, &dims, 33, be.as_ref());
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let (_, be) = emu(ResumeOrder::Forward);
    let (out, att, qkv) = (
        be.alloc_f32(2 * 3 * 12).unwrap(),
        be.alloc_f32(2 * 5 * 3 * 3).unwrap(),
        be.alloc_f32(2 * 3 * 36).unwrap(),
    );
    let shape = AttnShape {
        batch: 2,
        seq: 3,
        channels: 12,
        heads: 5,
    };
    let msg = be
        .attention_fwd(out.f32(), att.f32(), qkv.f32(), shape)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("12 channels do not split into 5 heads"),
        "{msg}"
    );
    let shape = AttnShape { heads: 4, ..shape };
    let msg = be
        .attention_fwd(out.f32(), att.f32().slice(0, 10), qkv.f32(), shape)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("attention_fwd: att has 10 elements but the shape needs 72"),
        "{msg}"
    );
}
