//! The flash attention kernels (kernels/attention/flash_fwd.cu,
//! flash_bwd.cu) under the emulator, against `CpuBackend`'s flash reference
//! (the exact f64 attention rounded once), through the conformance harness:
//! out, lse and dqkv (dq, dk, dv) with and without dropout, within the
//! bounds derived from bf16 rounding in `src/ops/attention/exact.rs`. Shapes
//! cover T = 1, 37 and 130 (not multiples of the 64-row tiles; 130 crosses
//! three of them), head sizes 64, 100 and 128 (both tile widths, one padded),
//! odd head sizes (the unaligned copy path) and several batch x head counts.
//! On a machine with a GPU the same checks run on it too.

mod common;

use common::{assert_conformance, backends, emu};
use dyntie::conformance::Dims;
use dyntie::cuda::ResumeOrder;
use dyntie::mem::DType;
use dyntie::ops::attention::{AttnShape, FlashAttentionFwd};
use dyntie::ops::BackendExt;

const OPS: [&str; 2] = ["flash_attention_fwd", "flash_attention_bwd"];

fn dims(batch: usize, seq: usize, heads: usize, head_size: usize) -> Dims {
    Dims {
        batch,
        seq,
        channels: heads * head_size,
        heads,
        vocab: 2,
    }
}

#[test]
fn head_size_64_across_tiles() {
    let shapes = [dims(1, 130, 1, 64), dims(2, 37, 2, 64), dims(3, 1, 1, 64)];
    for (label, be) in backends() {
        assert_conformance(&label, be.as_ref(), &OPS, &shapes, 41);
    }
}

#[test]
fn head_sizes_100_and_128() {
    // 100: the paper's 1600 / 16, padded to 128 columns in shared memory.
    let shapes = [
        dims(1, 130, 1, 100),
        dims(2, 37, 1, 128),
        dims(1, 1, 2, 100),
    ];
    for (label, be) in backends() {
        assert_conformance(&label, be.as_ref(), &OPS, &shapes, 42);
    }
}

#[test]
fn odd_head_sizes_and_random_resume_order() {
    // Head sizes that are no multiple of 8 take the plain-load path; the
    // random resume order checks that no result depends on which warp runs
    // first.
    let shapes = [dims(2, 37, 3, 4), dims(1, 67, 2, 18), dims(1, 70, 1, 72)];
    assert_conformance(
        "emu Random(5)",
        &emu(ResumeOrder::Random(5)),
        &OPS,
        &shapes,
        43,
    );
}

#[test]
fn head_sizes_above_128_are_errors_not_panics() {
    let be = emu(ResumeOrder::Forward);
    let shape = AttnShape {
        batch: 1,
        seq: 3,
        channels: 130,
        heads: 1,
    };
    let (qkv, out, lse) = (
        be.alloc(DType::BF16, 3 * 3 * 130).unwrap(),
        be.alloc(DType::BF16, 3 * 130).unwrap(),
        be.alloc(DType::F32, 3).unwrap(),
    );
    let msg = be
        .run(FlashAttentionFwd {
            out: out.view(),
            lse: lse.view(),
            qkv: qkv.view(),
            shape,
            dropout: None,
        })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("head size 130 (130 channels / 1 heads) is above the 128"),
        "{msg}"
    );
}
