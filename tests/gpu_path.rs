//! The GPU code path, exercised on the CPU: the whole training run (model,
//! autograd, AdamW, the Q-agent, the tie table) on `KernelBackend<EmuDevice>`
//! must match `CpuBackend` step for step, ties must free and allocate device
//! memory exactly as the table says, and checkpoints must move between
//! backends.

use dyntie::config::{RunConfig, Schedule};
use dyntie::cpu::CpuBackend;
use dyntie::cuda::emu::EmuDevice;
use dyntie::cuda::KernelBackend;
use dyntie::doctor::{compare_training, doctor_training_config};
use dyntie::metrics::read_jsonl;
use dyntie::model::{Arch, Model, ModelConfig};
use dyntie::ops::Backend;
use dyntie::train::Trainer;
use dyntie::tying::policy::TyingPolicy;
use dyntie::tying::table::TieGrad;
use std::path::PathBuf;
use std::sync::Arc;

/// Loss agreement asked of the kernels: 1e-4 relative at every step.
const LOSS_TOL: f64 = 1e-4;

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn emu() -> Arc<dyn Backend> {
    Arc::new(KernelBackend::new(EmuDevice::new()))
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-gpu-path-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn check_agreement(cfg: &RunConfig, tag: &str) {
    let dir = scratch(tag);
    let c = compare_training(cfg, cpu(), emu(), &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.steps, cfg.train.steps);
    assert!(
        c.agrees(LOSS_TOL),
        "{tag}: max relative loss difference {:.3e}, same decisions {} \ncpu {:?}\nemu {:?}",
        c.max_rel_diff,
        c.same_decisions,
        c.reference,
        c.candidate
    );
}

#[test]
fn dynamic_tying_with_dropout_trains_the_same_on_the_emulated_kernels() {
    let cfg = doctor_training_config();
    assert!(cfg.model.dropout > 0.0 && cfg.tying.policy == TyingPolicy::Dynamic);
    check_agreement(&cfg, "dynamic");
}

#[test]
fn frozen_tie_gradients_train_the_same_on_the_emulated_kernels() {
    let mut cfg = doctor_training_config();
    cfg.tying.tie_grad = TieGrad::Frozen;
    check_agreement(&cfg, "frozen");
}

#[test]
fn a_static_pattern_trains_the_same_on_the_emulated_kernels() {
    let mut cfg = doctor_training_config();
    cfg.tying.policy = "pattern:0,0,1,1".parse().unwrap();
    check_agreement(&cfg, "pattern");
}

/// The causal BERT with dynamic tying: the tying code does not know which
/// architecture it ties, so decisions and losses match as for GPT-2.
#[test]
fn bert_with_dynamic_tying_trains_the_same_on_the_emulated_kernels() {
    let mut cfg = doctor_training_config();
    cfg.model.arch = Arch::Bert;
    assert!(cfg.model.dropout > 0.0 && cfg.tying.policy == TyingPolicy::Dynamic);
    check_agreement(&cfg, "bert");
}

#[test]
fn ties_free_and_unties_allocate_device_memory_on_the_emulator() {
    let backend = emu();
    let cfg = ModelConfig {
        arch: Arch::Gpt2,
        n_layer: 4,
        n_embd: 16,
        n_head: 2,
        n_ctx: 8,
        vocab_size: 13,
        dropout: 0.0,
        bias: true,
    };
    let mut model = Model::new(backend.clone(), cfg, 1).unwrap();
    let slot_bytes = model.slots().slot_of(0).bytes() as u64;
    let live = |m: &Model| m.backend().mem_stats().live_bytes;
    let start = live(&model);
    model.tie(2, 1).unwrap();
    assert_eq!(live(&model), start - slot_bytes);
    model.tie(3, 2).unwrap(); // resolves to block 1's slot
    assert_eq!(live(&model), start - 2 * slot_bytes);
    assert_eq!(model.slots().live_slots().count(), 2);
    assert_eq!(model.slots().table().live_slots().len(), 2);
    model.untie(3).unwrap();
    assert_eq!(live(&model), start - slot_bytes);
    assert_eq!(model.slots().live_slots().count(), 3);
    // The untied copy holds the same weights it was copied from.
    let a = model.read_param("h.3.mlp.fc.weight").unwrap();
    let b = model.read_param("h.1.mlp.fc.weight").unwrap();
    assert_eq!(a, b);
    model.slots().check().unwrap();
}

fn losses(dir: &std::path::Path) -> Vec<f64> {
    read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "train")
        .filter_map(|r| r["loss"].as_f64())
        .collect()
}

#[test]
fn checkpoints_resume_across_backends() {
    let mut cfg = doctor_training_config();
    cfg.train.steps = 12;
    cfg.train.log_every = 1;
    // A cosine schedule depends on the total step count, which differs
    // between the segments below; a constant one does not.
    cfg.train.schedule = Schedule::Constant;
    // One run on the CPU alone.
    let whole = scratch("whole");
    let mut t = Trainer::create(cfg.clone(), cpu(), &whole, true).unwrap();
    t.verbose = false;
    t.run().unwrap();
    // The same run: 4 steps on cpu, 4 on emu, 4 on cpu.
    let moved = scratch("moved");
    let mut first = cfg.clone();
    first.train.steps = 4;
    let mut t = Trainer::create(first, cpu(), &moved, true).unwrap();
    t.verbose = false;
    t.run().unwrap();
    // A trainer holds its run folder's lock until it is dropped.
    drop(t);
    for (backend, steps) in [(emu(), 8), (cpu(), 12)] {
        let mut t = Trainer::resume(&moved, backend, Some(steps)).unwrap();
        t.verbose = false;
        t.run().unwrap();
    }
    let (a, b) = (losses(&whole), losses(&moved));
    assert_eq!(a.len(), 12);
    assert_eq!(b.len(), 12);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            ((x - y) / x).abs() <= LOSS_TOL,
            "step {}: cpu {x} vs moved {y}",
            step + 1
        );
    }
    // The first four steps ran on the same backend from the same state: bitwise.
    assert_eq!(a[..4], b[..4]);
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&moved);
}
