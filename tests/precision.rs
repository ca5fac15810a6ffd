//! Mixed precision (`--precision bf16`) end to end: the bf16 step on the
//! emulated kernels against the CPU's bf16 reference, bf16 training against
//! fp32 training, and runs that move between precisions and backends
//! through their (fp32) checkpoints.

use dyntie::config::{RunConfig, Schedule};
use dyntie::cpu::CpuBackend;
use dyntie::cuda::emu::EmuDevice;
use dyntie::cuda::KernelBackend;
use dyntie::metrics::read_jsonl;
use dyntie::model::{Arch, AttentionPath, Model, ModelConfig};
use dyntie::ops::profile::ProfiledBackend;
use dyntie::ops::{Backend, BackendExt};
use dyntie::optim::AdamW;
use dyntie::precision::Precision;
use dyntie::rng::HostRng;
use dyntie::train::Trainer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn emu() -> Arc<dyn Backend> {
    Arc::new(KernelBackend::new(EmuDevice::new()))
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-precision-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A few optimizer steps of a small model of `arch` with two blocks on one
/// slot and dropout, on `backend` in `precision`; the loss of each step.
fn step_losses(
    arch: Arch,
    backend: Arc<dyn Backend>,
    precision: Precision,
    steps: usize,
) -> Vec<f32> {
    let cfg = ModelConfig {
        arch,
        n_layer: 3,
        n_embd: 24,
        n_head: 3,
        n_ctx: 12,
        vocab_size: 37,
        dropout: 0.1,
        bias: true,
    };
    let mut model = Model::new(backend.clone(), cfg, 7).unwrap();
    model.tie(2, 1).unwrap();
    model.set_precision(precision).unwrap();
    let mut opt = AdamW::new(backend.as_ref(), 3e-3, 0.9, 0.95, 1e-8, 0.1).unwrap();
    let (batch, seq) = (2, 12);
    let mut rng = HostRng::new(11);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(37) as u32).collect() };
    (0..steps)
        .map(|s| {
            let (x, y) = (ids(batch * seq), ids(batch * seq));
            model.zero_grads().unwrap();
            let loss = model
                .forward_backward(&x, &y, batch, seq, 100 + s as u64, 1.0)
                .unwrap();
            opt.clip_and_update(&model, Some(1.0)).unwrap();
            loss
        })
        .collect()
}

/// The emulated kernels in bf16 against the CPU backend's bf16 reference:
/// both read the same bf16 inputs, compute in fp32 and round each output
/// once, so they differ only where an fp32 difference of the order of the
/// fp32 tolerances (1e-6 relative) straddles a bf16 rounding boundary; a
/// loss (an fp32 mean over rows) then moves by far less than 1e-3.
/// Both architectures: BERT's extra ops (post-LN, erf GELU, the token-type
/// row, the head transform) take the same bf16 paths.
#[test]
fn bf16_steps_on_the_emulator_match_the_cpu_bf16_reference() {
    let steps = 4;
    for arch in [Arch::Gpt2, Arch::Bert] {
        let reference = step_losses(arch, cpu(), Precision::Bf16, steps);
        let kernels = step_losses(arch, emu(), Precision::Bf16, steps);
        let fp32 = step_losses(arch, cpu(), Precision::Fp32, steps);
        eprintln!(
            "{arch:?} losses: cpu bf16 {reference:?}\n        emu bf16 {kernels:?}\n        cpu fp32 {fp32:?}"
        );
        for s in 0..steps {
            let rel = ((kernels[s] - reference[s]) / reference[s]).abs();
            assert!(
                rel <= 1e-3,
                "{arch:?} step {s}: emu bf16 {} vs cpu bf16 {}",
                kernels[s],
                reference[s]
            );
        }
        // bf16 is really in use: its losses are not fp32's.
        assert_ne!(
            reference, fp32,
            "{arch:?}: bf16 and fp32 gave the same losses"
        );
    }
}

/// Every compute copy (the globals' and each live slot's) holds exactly its
/// fp32 weights rounded to bf16.
fn assert_copies_are_rounded_weights(model: &Model, when: &str) {
    let be = model.backend();
    let slots = std::iter::once(model.globals()).chain(model.slots().live_slots().map(|(_, s)| s));
    for (k, slot) in slots.enumerate() {
        let copy = slot.compute.as_ref().expect("bf16 gives every slot a copy");
        let weights: Vec<f32> = be.download(slot.params.view()).unwrap();
        let got: Vec<half::bf16> = be.download(copy.view()).unwrap();
        let want: Vec<half::bf16> = weights.iter().map(|&w| half::bf16::from_f32(w)).collect();
        assert!(
            got == want,
            "{when}: slot {k}'s compute copy is not its rounded weights"
        );
    }
}

/// The compute copies follow the fp32 weights through everything that
/// writes them: switching to bf16, AdamW steps, an untie (a new slot),
/// writing a parameter by name (as loading does), and on both backends.
#[test]
fn compute_copies_follow_the_fp32_weights() {
    let runs = [Arch::Gpt2, Arch::Bert]
        .into_iter()
        .flat_map(|arch| [(arch, cpu()), (arch, emu())]);
    for (arch, backend) in runs {
        let cfg = ModelConfig {
            arch,
            n_layer: 3,
            n_embd: 16,
            n_head: 2,
            n_ctx: 8,
            vocab_size: 19,
            dropout: 0.0,
            bias: true,
        };
        let mut model = Model::new(backend.clone(), cfg, 3).unwrap();
        model.tie(2, 1).unwrap();
        model.set_precision(Precision::Bf16).unwrap();
        assert_copies_are_rounded_weights(&model, "after set_precision");
        let mut opt = AdamW::new(backend.as_ref(), 1e-2, 0.9, 0.95, 1e-8, 0.1).unwrap();
        let ids: Vec<u32> = (0..16).map(|i| (i * 7 % 19) as u32).collect();
        model.zero_grads().unwrap();
        model.forward_backward(&ids, &ids, 2, 8, 1, 1.0).unwrap();
        opt.clip_and_update(&model, None).unwrap();
        assert_copies_are_rounded_weights(&model, "after an AdamW step");
        model.untie(2).unwrap();
        assert_copies_are_rounded_weights(&model, "after an untie");
        let w = vec![0.123f32; 16];
        model.write_param("h.2.ln1.weight", &w).unwrap();
        assert_copies_are_rounded_weights(&model, "after write_param");
        model.set_precision(Precision::Fp32).unwrap();
        assert!(model.globals().compute.is_none());
    }
}

fn run_config(steps: usize) -> RunConfig {
    let mut cfg = RunConfig::preset("tiny").unwrap();
    cfg.model.n_layer = 4;
    cfg.model.n_embd = 16;
    cfg.model.n_head = 2;
    cfg.model.n_ctx = 8;
    cfg.train.batch = 2;
    cfg.train.steps = steps;
    cfg.train.log_every = 1;
    cfg.train.warmup_steps = 5;
    cfg.tying.agent_k = 4;
    cfg.tying.param_cost = 0.5;
    cfg.data.synthetic_tokens = 8_000;
    cfg
}

fn train(cfg: &RunConfig, backend: Arc<dyn Backend>, dir: &Path) {
    let mut t = Trainer::create(cfg.clone(), backend, dir, true).unwrap();
    t.verbose = false;
    t.run().unwrap();
}

fn losses(dir: &Path) -> Vec<f64> {
    read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "train")
        .filter_map(|r| r["loss"].as_f64())
        .collect()
}

/// (layer, action, explored, Q-values) of every decision in `ties.jsonl`.
fn decisions(dir: &Path) -> Vec<(u64, u64, bool, Vec<f64>)> {
    read_jsonl(&dir.join("ties.jsonl"))
        .unwrap()
        .iter()
        .map(|r| {
            let q = r["q_values"].as_array().unwrap();
            (
                r["layer"].as_u64().unwrap(),
                r["action"].as_u64().unwrap(),
                r["explored"].as_bool().unwrap(),
                q.iter().map(|v| v.as_f64().unwrap()).collect(),
            )
        })
        .collect()
}

fn final_loss(l: &[f64]) -> f64 {
    // The mean of the last 10 steps: one step's loss is noisy.
    let tail = &l[l.len() - 10..];
    tail.iter().sum::<f64>() / tail.len() as f64
}

/// 200 steps with dynamic tying: bf16 on the emulated kernels against fp32
/// on the CPU. bf16 rounds every activation by up to 2^-9 relative, so the
/// two runs drift apart slowly; they must end within 2% of each other and
/// take the same tying decisions until the first decision whose greedy
/// choice was between Q-values within 2% of each other (after which the
/// runs train different tie patterns and are compared by their loss only).
#[test]
fn bf16_training_on_the_emulator_follows_fp32_on_the_cpu() {
    let mut cfg = run_config(200);
    let dir = scratch("train");
    cfg.precision = Some(Precision::Fp32);
    train(&cfg, cpu(), &dir.join("fp32"));
    cfg.precision = Some(Precision::Bf16);
    train(&cfg, emu(), &dir.join("bf16"));
    let (a, b) = (losses(&dir.join("fp32")), losses(&dir.join("bf16")));
    assert_eq!((a.len(), b.len()), (200, 200));
    let (fa, fb) = (final_loss(&a), final_loss(&b));
    assert!(
        ((fa - fb) / fa).abs() <= 0.02,
        "final loss fp32 {fa} vs bf16 {fb}"
    );
    let (da, db) = (decisions(&dir.join("fp32")), decisions(&dir.join("bf16")));
    let same = da.iter().zip(&db).take_while(|(x, y)| x.1 == y.1).count();
    eprintln!(
        "final loss fp32 {fa:.4} bf16 {fb:.4}; {} decisions, the first {same} the same",
        da.len()
    );
    assert!(!da.is_empty() && da.len() == db.len());
    for (i, (x, y)) in da.iter().zip(&db).enumerate() {
        if (x.0, x.1, x.2) == (y.0, y.1, y.2) {
            continue;
        }
        // Exploration draws from the same stream in both runs, so a
        // difference must be a greedy choice between near-equal Q-values.
        assert!(!x.2 && !y.2, "decision {i}: {x:?} vs {y:?}");
        let q = &x.3;
        let gap = (q[x.1 as usize] - q[y.1 as usize]).abs();
        let scale = q.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            gap <= 0.02 * scale.max(1e-3),
            "decision {i} differs with Q-values {q:?} far apart: {x:?} vs {y:?}"
        );
        break;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The attention calls of a profiled run: (unfused, flash) forwards.
fn attention_calls(p: &ProfiledBackend) -> (u64, u64) {
    let calls = |name: &str| {
        p.report()
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, s)| s.calls)
    };
    (calls("attention_fwd"), calls("flash_attention_fwd"))
}

/// Flash attention in whole training runs: bf16 with dynamic tying on the
/// emulated kernels against the CPU's bf16 reference, both on the flash path
/// (checked from the ops they ran), without and with dropout. T = 37 is part
/// of one 64-row flash tile; head size 32 is padded to the 64-column tile.
/// As in `bf16_steps_on_the_emulator_match_the_cpu_bf16_reference`, both
/// read the same bf16 inputs and round each output once, so every step's
/// loss agrees within 1e-3 relative (here about 5e-5), and the agent, fed
/// those losses, takes the same decisions. The dropout is large (0.5) so
/// that masks differing between the backends show in the loss of this
/// barely trained model: with the emulator's attention dropout offset moved
/// by one, step 2 differs by 2.1e-3.
#[test]
fn flash_training_on_the_emulator_matches_the_cpu_bf16_reference() {
    let steps = 16;
    let dir = scratch("flash");
    for dropout in [0.0, 0.5] {
        let mut cfg = run_config(steps);
        cfg.model.n_embd = 64;
        cfg.model.n_head = 2;
        cfg.model.n_ctx = 37;
        cfg.model.dropout = dropout;
        cfg.tying.agent_k = 3;
        cfg.precision = Some(Precision::Bf16);
        let runs = [("cpu", cpu()), ("emu", emu())].map(|(name, be)| {
            let profiled = Arc::new(ProfiledBackend::new(be));
            profiled.set_enabled(true).unwrap();
            let run = dir.join(format!("{name}-{dropout}"));
            let mut t = Trainer::create(cfg.clone(), profiled.clone(), &run, true).unwrap();
            assert_eq!(t.model().attention(), AttentionPath::Flash);
            t.verbose = false;
            t.run().unwrap();
            let (unfused, flash) = attention_calls(&profiled);
            assert_eq!(unfused, 0, "{name}: the unfused attention ran");
            assert!(flash >= (steps * 4) as u64, "{name}: {flash} flash calls");
            run
        });
        let (a, b) = (losses(&runs[0]), losses(&runs[1]));
        assert_eq!((a.len(), b.len()), (steps, steps));
        let worst = a.iter().zip(&b).map(|(x, y)| ((x - y) / x).abs());
        eprintln!(
            "dropout {dropout}: losses {:.4} -> {:.4}, largest relative difference {:.1e}, {} decisions",
            a[0],
            a[steps - 1],
            worst.fold(0.0, f64::max),
            decisions(&runs[0]).len()
        );
        for (s, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                ((x - y) / x).abs() <= 1e-3,
                "dropout {dropout}, step {}: emu {y} vs cpu {x}",
                s + 1
            );
        }
        let key = |d: &[(u64, u64, bool, Vec<f64>)]| {
            d.iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>()
        };
        let (da, db) = (decisions(&runs[0]), decisions(&runs[1]));
        assert!(!da.is_empty(), "dropout {dropout}: no tying decisions");
        assert_eq!(key(&da), key(&db), "dropout {dropout}: decisions differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run trained in bf16 on the emulator, resumed in fp32 on the CPU, then
/// in bf16 on the emulator again: checkpoints hold the fp32 master weights
/// and moments, so every segment continues where the last one stopped, and
/// the whole follows an fp32 run on the CPU as closely as bf16 allows.
#[test]
fn runs_move_between_precisions_and_backends() {
    let mut cfg = run_config(12);
    cfg.train.schedule = Schedule::Constant;
    let dir = scratch("move");
    cfg.precision = Some(Precision::Fp32);
    train(&cfg, cpu(), &dir.join("whole"));
    let moved = dir.join("moved");
    let mut first = cfg.clone();
    first.train.steps = 4;
    first.precision = Some(Precision::Bf16);
    train(&first, emu(), &moved);
    for (backend, precision, steps) in [(cpu(), Precision::Fp32, 8), (emu(), Precision::Bf16, 12)] {
        let mut t = Trainer::resume(&moved, backend, Some(steps)).unwrap();
        t.set_precision(precision).unwrap();
        t.verbose = false;
        t.run().unwrap();
        let saved = RunConfig::load(&moved.join("config.toml")).unwrap();
        assert_eq!(saved.precision, Some(precision));
    }
    let (a, b) = (losses(&dir.join("whole")), losses(&moved));
    assert_eq!((a.len(), b.len()), (12, 12));
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            ((x - y) / x).abs() <= 0.02,
            "step {}: fp32 {x} vs moved {y}",
            step + 1
        );
    }
    // Steps 5-8 ran in fp32 from the bf16 segment's fp32 master weights,
    // not from the whole run's: they are not bitwise the whole run's.
    assert_ne!(a[4..8], b[4..8]);
    let _ = std::fs::remove_dir_all(&dir);
}
