//! Activation recomputation: a model that keeps only each block's output,
//! reruns the blocks in backward and computes the loss head by row chunks
//! computes the same loss and gradients as one that keeps every activation
//! (bit for bit on the CPU while the head is one chunk, to rounding with
//! several; on the kernels under the emulator within float-atomic noise),
//! with far less activation memory.

use anyhow::Result;
use dyntie::cpu::CpuBackend;
use dyntie::cuda::EmuDevice;
use dyntie::cuda::KernelBackend;
use dyntie::mem::DType;
use dyntie::model::{activation_bytes, ActivationPlan, Arch, AttentionPath, Model, ModelConfig};
use dyntie::ops::Backend;
use dyntie::precision::Precision;
use std::sync::Arc;

const B: usize = 2;
const T: usize = 7;

fn cfg(dropout: f32, bias: bool) -> ModelConfig {
    arch_cfg(Arch::Gpt2, dropout, bias)
}

fn arch_cfg(arch: Arch, dropout: f32, bias: bool) -> ModelConfig {
    ModelConfig {
        arch,
        n_layer: 4,
        n_embd: 24,
        n_head: 3,
        n_ctx: 8,
        vocab_size: 29,
        dropout,
        bias,
    }
}

fn batch(salt: usize) -> (Vec<u32>, Vec<u32>) {
    let tokens = (0..B * T).map(|i| ((i * 7 + salt) % 29) as u32).collect();
    let targets = (0..B * T)
        .map(|i| ((i * 5 + 3 * salt) % 29) as u32)
        .collect();
    (tokens, targets)
}

/// Losses of two accumulated micro-batches (different dropout seeds), the
/// gradients of every named parameter, and the bytes the backend holds (the
/// activation arena included).
fn run(
    be: Arc<dyn Backend>,
    cfg: ModelConfig,
    recompute: bool,
) -> Result<(Vec<f32>, Vec<Vec<f32>>, u64)> {
    run_in(be, cfg, recompute, Precision::Fp32)
}

/// [`run`] in `precision` (bf16: flash attention).
fn run_in(
    be: Arc<dyn Backend>,
    cfg: ModelConfig,
    recompute: bool,
    precision: Precision,
) -> Result<(Vec<f32>, Vec<Vec<f32>>, u64)> {
    let mut m = Model::new(be.clone(), cfg, 11)?;
    m.set_precision(precision)?;
    // Blocks 1 and 3 on block 0's slot: shared gradients accumulate over
    // the recomputed blocks too.
    m.tie(1, 0)?;
    m.tie(3, 0)?;
    m.set_recompute(recompute);
    m.zero_grads()?;
    let mut losses = Vec::new();
    for micro in 0..2 {
        let (tokens, targets) = batch(micro);
        losses.push(m.forward_backward(&tokens, &targets, B, T, 100 + micro as u64, 0.5)?);
    }
    let grads = m
        .param_names()
        .iter()
        .map(|(name, _)| m.read_grad(name))
        .collect::<Result<_>>()?;
    Ok((losses, grads, be.mem_stats().live_bytes))
}

#[test]
fn recomputed_gradients_equal_stored_ones_bit_for_bit_on_the_cpu() -> Result<()> {
    for (arch, dropout, bias) in [
        (Arch::Gpt2, 0.0, true),
        (Arch::Gpt2, 0.2, true),
        (Arch::Gpt2, 0.1, false),
        (Arch::Bert, 0.0, true),
        (Arch::Bert, 0.2, true),
    ] {
        let cfg = arch_cfg(arch, dropout, bias);
        let (l0, g0, live0) = run(Arc::new(CpuBackend::new()), cfg.clone(), false)?;
        let (l1, g1, live1) = run(Arc::new(CpuBackend::new()), cfg, true)?;
        assert_eq!(l0, l1, "losses, {arch}, dropout {dropout}, bias {bias}");
        assert!(g0.iter().flatten().any(|&g| g != 0.0));
        assert_eq!(g0, g1, "gradients, {arch}, dropout {dropout}, bias {bias}");
        assert!(live1 < live0, "{live1} bytes with recomputation vs {live0}");
    }
    Ok(())
}

/// Flash attention (bf16) recomputed: its forward saves only the
/// log-sum-exp, which the recomputed block writes again; bit for bit on the
/// CPU, within the flash backward's bf16 roundings (the same on both runs:
/// no atomics) on the emulated kernels.
#[test]
fn recomputation_with_flash_attention_matches_the_stored_run() -> Result<()> {
    let bf16 = Precision::Bf16;
    for (arch, dropout) in [(Arch::Gpt2, 0.2), (Arch::Bert, 0.1)] {
        let cfg = arch_cfg(arch, dropout, true);
        let m = Model::new(Arc::new(CpuBackend::new()), cfg.clone(), 1)?;
        assert_eq!(
            AttentionPath::choose(bf16, m.config()),
            AttentionPath::Flash
        );
        let (l0, g0, _) = run_in(Arc::new(CpuBackend::new()), cfg.clone(), false, bf16)?;
        let (l1, g1, _) = run_in(Arc::new(CpuBackend::new()), cfg, true, bf16)?;
        assert_eq!(l0, l1, "losses, {arch}, dropout {dropout}");
        assert!(g0.iter().flatten().any(|&g| g != 0.0));
        assert_eq!(g0, g1, "gradients, {arch}, dropout {dropout}");
    }
    let emu = || -> Arc<dyn Backend> { Arc::new(KernelBackend::new(EmuDevice::new())) };
    let (l0, g0, _) = run_in(emu(), cfg(0.1, true), false, bf16)?;
    let (l1, g1, _) = run_in(emu(), cfg(0.1, true), true, bf16)?;
    for (a, b) in l0.iter().zip(&l1) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
    }
    // As in the fp32 test below: only the LayerNorm and embedding weight
    // gradients' float atomics may add in another order (bf16 activations,
    // fp32 gradients).
    for (a, b) in g0.iter().flatten().zip(g1.iter().flatten()) {
        assert!((a - b).abs() <= 1e-5 * (a.abs() + 1e-3), "grad {a} vs {b}");
    }
    Ok(())
}

#[test]
fn recomputation_on_the_kernels_matches_the_stored_run() -> Result<()> {
    let emu = || -> Arc<dyn Backend> { Arc::new(KernelBackend::new(EmuDevice::new())) };
    let (l0, g0, _) = run(emu(), cfg(0.1, true), false)?;
    let (l1, g1, _) = run(emu(), cfg(0.1, true), true)?;
    for (a, b) in l0.iter().zip(&l1) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
    }
    // Forward kernels are deterministic; the backward's float atomics
    // (LayerNorm and embedding weight gradients) may add in another order.
    for (a, b) in g0.iter().flatten().zip(g1.iter().flatten()) {
        assert!((a - b).abs() <= 1e-5 * (a.abs() + 1e-3), "grad {a} vs {b}");
    }
    Ok(())
}

#[test]
fn recomputation_keeps_one_residual_stream_per_block() {
    let c = ModelConfig {
        arch: Arch::Gpt2,
        n_layer: 48,
        n_embd: 1600,
        n_head: 16,
        n_ctx: 256,
        vocab_size: 50257,
        dropout: 0.2,
        bias: true,
    };
    let (full, re) = (
        activation_bytes(&c, 16, 256, false, AttentionPath::Unfused, DType::F32),
        activation_bytes(&c, 16, 256, true, AttentionPath::Unfused, DType::F32),
    );
    // The chunked head keeps `head_rows` of the 4096 rows of logits.
    let rows = 16 * 256;
    let head_rows =
        ActivationPlan::new(&c, 16, 256, true, AttentionPath::Unfused, DType::F32).head_rows;
    assert_eq!(head_rows, 586, "4096 rows in 7 equal chunks of <= 128 MiB");
    // Logits rows are as wide as the padded vocabulary (50257 -> 50304).
    let logits_saved = (rows - head_rows) * 50304 * 4;
    // Per block beyond the first: ~16 B*T*C floats plus the attention matrix
    // B*H*T*T without recomputation, one B*T*C with.
    let blocks_saved = full - re - logits_saved;
    let (btc, bhtt) = (rows * 1600 * 4, 16 * 16 * 256 * 256 * 4);
    assert!(blocks_saved >= 47 * (15 * btc + bhtt), "{blocks_saved}");
    assert!(blocks_saved <= 47 * (16 * btc + bhtt), "{blocks_saved}");
}

/// GPT-2's vocabulary and 800 rows: the loss head goes in two chunks.
#[test]
fn the_chunked_loss_head_matches_the_whole_one() -> Result<()> {
    let cfg = ModelConfig {
        arch: Arch::Gpt2,
        n_layer: 2,
        n_embd: 8,
        n_head: 2,
        n_ctx: 100,
        vocab_size: 50257,
        dropout: 0.0,
        bias: true,
    };
    let (b, t) = (8, 100);
    let plan = ActivationPlan::new(&cfg, b, t, true, AttentionPath::Unfused, DType::F32);
    assert!(plan.head_rows < b * t && 2 * plan.head_rows >= b * t);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 50257) as u32).collect();
    let mut targets: Vec<u32> = (0..b * t).map(|i| (i * 104_729 % 50257) as u32).collect();
    targets[5] = u32::MAX; // an ignored position
                           // Loss, gradients, the logits of two last positions, and the model.
    type Outcome = (f32, Vec<Vec<f32>>, Vec<f32>, Model);
    let run = |recompute: bool| -> Result<Outcome> {
        let mut m = Model::new(Arc::new(CpuBackend::new()), cfg.clone(), 5)?;
        m.set_recompute(recompute);
        m.zero_grads()?;
        let loss = m.forward_backward(&tokens, &targets, b, t, 1, 1.0)?;
        let grads = m
            .param_names()
            .iter()
            .map(|(name, _)| m.read_grad(name))
            .collect::<Result<_>>()?;
        let last = m.logits_last(&tokens[..2 * t], t)?;
        Ok((loss, grads, last, m))
    };
    let (l0, g0, last0, _) = run(false)?;
    let (l1, g1, last1, chunked) = run(true)?;
    assert!((l0 - l1).abs() <= 1e-6 * l0.abs(), "loss {l0} vs {l1}");
    for (i, (a, b)) in g0.iter().zip(&g1).enumerate() {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "parameter {i} has no gradient");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale, "parameter {i}: {x} vs {y}");
        }
    }
    assert_eq!(last0, last1, "logits of the last positions");
    let err = chunked.last_logits().unwrap_err().to_string();
    assert!(err.contains("not kept"), "{err}");
    Ok(())
}
