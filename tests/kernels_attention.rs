//! The attention kernels (the products of kernels/gemm/simt_f32.cu and the
//! softmax of kernels/attention/unfused.cu) under the emulator, against `CpuBackend`, through
//! the conformance harness under forward, reverse and random resume order,
//! plus shapes that cross the 64-row tiles of the causal products. On a
//! machine with a GPU the same checks run on it too.

mod common;

use common::{assert_conformance, backends, emu};
use dyntie::conformance::Dims;
use dyntie::cuda::ResumeOrder;
use dyntie::mem::DType;
use dyntie::ops::attention::{AttentionFwd, AttnShape};
use dyntie::ops::BackendExt;

const OPS: [&str; 2] = ["attention_fwd", "attention_bwd"];

#[test]
fn the_conformance_harness_passes_the_attention_ops() {
    let dims = Dims::standard();
    for (label, be) in backends() {
        assert_conformance(&label, be.as_ref(), &OPS, &dims, 31);
    }
    assert_conformance(
        "emu Random(9)",
        &emu(ResumeOrder::Random(9)),
        &OPS,
        &dims,
        32,
    );
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
        assert_conformance(&label, be.as_ref(), &OPS, &dims, 33);
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let be = emu(ResumeOrder::Forward);
    let buf = |len| be.alloc(DType::F32, len).unwrap();
    let (out, att, qkv) = (buf(2 * 3 * 12), buf(2 * 5 * 3 * 3), buf(2 * 3 * 36));
    let shape = AttnShape {
        batch: 2,
        seq: 3,
        channels: 12,
        heads: 5,
    };
    let fwd = |att, shape| AttentionFwd {
        out: out.view(),
        att,
        qkv: qkv.view(),
        shape,
    };
    let msg = be.run(fwd(att.view(), shape)).unwrap_err().to_string();
    assert!(
        msg.contains("12 channels do not split into 5 heads"),
        "{msg}"
    );
    let shape = AttnShape { heads: 4, ..shape };
    let msg = be
        .run(fwd(att.view().slice(0, 10), shape))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("attention_fwd: att has 10 elements but the shape needs 72"),
        "{msg}"
    );
}
