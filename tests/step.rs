//! A training step asks nothing of the host: the host-device traffic per
//! step counted through the backend, and a NaN gradient that skips exactly
//! one update, which is reported while training goes on; on the CPU and
//! under the emulator.

#[allow(dead_code)]
mod common;

use common::emu;
use dyntie::config::{BackendKind, RunConfig};
use dyntie::cpu::CpuBackend;
use dyntie::cuda::ResumeOrder;
use dyntie::metrics::read_jsonl;
use dyntie::model::Model;
use dyntie::ops::profile::{HostTraffic, ProfiledBackend};
use dyntie::ops::{Backend, BackendExt, GraphCounts};
use dyntie::train::Trainer;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-step-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn emulator() -> Arc<dyn Backend> {
    Arc::new(emu(ResumeOrder::Forward))
}

type MakeBackend = fn() -> Arc<dyn Backend>;

/// Each backend's name and a maker of fresh ones.
const BACKENDS: [(&str, MakeBackend); 2] = [("cpu", cpu), ("emu", emulator)];

/// A tiny model, two micro-batches per step, a warm-up and cosine schedule
/// (so the learning rate differs from step to step), logging every 4 steps.
fn config(policy: &str, steps: usize) -> RunConfig {
    let mut c = RunConfig::preset("tiny").unwrap();
    c.backend = BackendKind::Cpu;
    c.model.n_layer = 3;
    c.model.n_embd = 16;
    c.model.n_head = 2;
    c.model.n_ctx = 8;
    c.train.batch = 2;
    c.train.grad_accum = 2;
    c.train.steps = steps;
    c.train.warmup_steps = 3;
    c.train.log_every = 4;
    c.train.eval_every = 0;
    c.train.checkpoint_every = 0;
    c.tying.policy = policy.parse().unwrap();
    c.tying.agent_k = 3;
    c.data.synthetic_tokens = 4000;
    c
}

fn create(cfg: RunConfig, backend: Arc<dyn Backend>, dir: &Path) -> Trainer {
    let mut t = Trainer::create(cfg, backend, dir, true).unwrap();
    t.verbose = false;
    t
}

/// The host-device traffic of each step of a run of `steps` steps.
fn traffic_per_step(policy: &str, steps: u64, backend: Arc<dyn Backend>) -> Vec<HostTraffic> {
    let dir = temp_dir(&format!("traffic-{}-{policy}", backend.name()));
    let counted = Arc::new(ProfiledBackend::new(backend));
    let mut t = create(config(policy, steps as usize), counted.clone(), &dir);
    let per_step = (1..=steps)
        .map(|s| {
            let before = counted.traffic();
            t.train_until(s).unwrap();
            counted.traffic().since(before)
        })
        .collect();
    fs::remove_dir_all(&dir).unwrap();
    per_step
}

#[test]
fn between_log_steps_a_step_reads_nothing_back() {
    for (label, backend) in BACKENDS {
        let per_step = traffic_per_step("none", 8, backend());
        for (i, t) in per_step.iter().enumerate() {
            let step = i + 1;
            let log_step = step.is_multiple_of(4);
            // A log step reads the step statistics once, in one download.
            assert_eq!(t.readbacks, log_step as u64, "{label} step {step}: {t:?}");
            assert_eq!(t.syncs, 0, "{label} step {step}: {t:?}");
            // Tokens and targets of 2 micro-batches and AdamW's learning
            // rate and step, queued without the host waiting; at the first
            // step AdamW's tensor list, the one upload that waits.
            assert_eq!(t.queued_uploads, 5, "{label} step {step}: {t:?}");
            assert_eq!(t.uploads, (step == 1) as u64, "{label} step {step}: {t:?}");
            // The emulator runs the first step op by op, captures the
            // second as a graph and replays it from then on.
            if label == "emu" && step > 1 {
                assert_eq!((t.launches, t.graph_launches), (0, 1), "step {step}: {t:?}");
            } else {
                assert!(t.launches > 20, "{label} step {step}: {t:?}");
                assert_eq!(t.graph_launches, 0, "{label} step {step}: {t:?}");
            }
        }
    }
}

#[test]
fn with_the_agent_only_its_decision_steps_read_back() {
    // Decisions before the steps that end at 1, 4 and 7 (every 3 steps);
    // log steps 4 and 8.
    let per_step = traffic_per_step("dynamic", 8, cpu());
    for (i, t) in per_step.iter().enumerate() {
        let step = i as u64 + 1;
        let decision = (step - 1).is_multiple_of(3);
        let log_step = step.is_multiple_of(4);
        assert_eq!(t.syncs, 0, "step {step}: {t:?}");
        match (decision, log_step) {
            (false, false) => assert_eq!(t.readbacks, 0, "step {step}: {t:?}"),
            (false, true) => assert_eq!(t.readbacks, 1, "step {step}: {t:?}"),
            // The reward's perplexity: one read of the reward batch's losses.
            (true, _) => assert!(
                (1..=2 + log_step as u64).contains(&t.readbacks),
                "step {step}: {t:?}"
            ),
        }
    }
}

/// Every parameter and both moments of every live buffer.
fn weights_and_moments(m: &Model) -> Vec<Vec<f32>> {
    let be = m.backend();
    std::iter::once(m.globals())
        .chain(m.slots().live_slots().map(|(_, s)| s))
        .flat_map(|s| [&s.params, &s.adam_m, &s.adam_v])
        .map(|b| be.download::<f32>(b.view()).unwrap())
        .collect()
}

/// The train lines of metrics.jsonl without the fields that belong to the
/// process (wall clock, allocator high-water mark).
fn train_lines(dir: &Path) -> Vec<Value> {
    read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            for k in ["tokens_per_s", "elapsed_s", "peak_bytes", "graph"] {
                o.remove(k);
            }
            r
        })
        .collect()
}

/// Train lines of two runs that must agree, bit for bit on every backend:
/// the step's sums (loss, gradient norm) and the layernorm weight gradients
/// add their partial sums in a fixed order, and the emulator runs one
/// block's threads in a fixed order, so the embedding backward's atomics
/// land in the same order too.
fn assert_same_lines(label: &str, a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len(), "{label}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y, "{label}");
    }
}

/// Two emulated runs with the same seed give the same losses, gradient
/// norms, weights and moments, bit for bit, under either resume order,
/// though the emulator's two workers may finish blocks in another order.
/// Between the two orders the token embedding's gradient differs in its
/// last bits (its backward adds repeated tokens with float atomics, in
/// thread order within a block: kernels/embedding.cu), and through it
/// every weight; that is the one kernel left that is not deterministic.
#[test]
fn emulated_runs_with_the_same_seed_are_bitwise_equal() {
    let run = |order: ResumeOrder, tag: &str| {
        let dir = temp_dir(&format!("same-seed-{tag}"));
        let mut cfg = config("every:2", 6);
        cfg.train.log_every = 1;
        let mut t = create(cfg, Arc::new(emu(order)), &dir);
        t.run().unwrap();
        let out = (train_lines(&dir), weights_and_moments(t.model()));
        fs::remove_dir_all(&dir).unwrap();
        out
    };
    for order in [ResumeOrder::Forward, ResumeOrder::Reverse] {
        let (lines, weights) = run(order, &format!("{order:?}-a"));
        let (again, weights_again) = run(order, &format!("{order:?}-b"));
        assert_eq!(lines.len(), 6);
        assert_same_lines(&format!("{order:?}"), &lines, &again);
        assert!(
            weights == weights_again,
            "{order:?}: the weights or moments differ"
        );
    }
}

/// The step graph: a run whose steps are captured once and replayed trains
/// bit for bit as one launched op by op (`--no-graph`), across a re-tie
/// and a learning rate that changes every step (warm-up, then cosine).
/// Step 1 runs op by op, step 2 is captured, 3 to 5 replay it; the re-tie
/// before step 6 moves blocks to other slots, so step 6 differs from the
/// graph and falls back, step 7 captures again, 8 to 10 replay. A graph
/// replayed with a stale argument (the old slots' addresses, or the first
/// step's learning rate) would train other weights.
#[test]
fn a_replayed_step_graph_trains_bit_for_bit_as_op_by_op() {
    let run = |graph: bool| {
        let dir = temp_dir(&format!("graph-{graph}"));
        let mut cfg = config("switch:5:none>every:2", 10);
        cfg.train.log_every = 1;
        let counted = Arc::new(ProfiledBackend::new(emulator()));
        let mut t = create(cfg, counted.clone(), &dir);
        t.set_step_graph(graph);
        t.run().unwrap();
        let out = (
            train_lines(&dir),
            weights_and_moments(t.model()),
            counted.graph_counts(),
            t.model().slots().table().state().to_vec(),
        );
        fs::remove_dir_all(&dir).unwrap();
        out
    };
    let (lines, weights, counts, table) = run(true);
    let (eager_lines, eager_weights, eager_counts, _) = run(false);
    assert_eq!(eager_counts, GraphCounts::default());
    let expected = GraphCounts {
        captures: 2,
        replays: 6,
        fallbacks: 1,
    };
    assert_eq!(counts, expected);
    assert_eq!(table, [0, 0, 2], "the re-tie happened");
    let lrs: std::collections::BTreeSet<String> =
        lines.iter().map(|l| l["lr"].to_string()).collect();
    // Warm-up to the peak, then cosine: the peak is held for two steps.
    assert_eq!(lrs.len(), 9, "the learning rate changes from step to step");
    assert_same_lines("graph", &lines, &eager_lines);
    assert!(weights == eager_weights, "the weights or moments differ");
}

#[test]
fn a_nan_gradient_skips_exactly_one_update_and_training_goes_on() {
    for (label, backend) in BACKENDS {
        let mut cfg = config("every:2", 10);
        cfg.train.log_every = 1;
        let clean_dir = temp_dir(&format!("clean-{label}"));
        let mut clean = create(cfg.clone(), backend(), &clean_dir);
        clean.run().unwrap();

        let dir = temp_dir(&format!("nan-{label}"));
        let mut t = create(cfg, backend(), &dir);
        // The 5th step (0-based 4) gets a NaN gradient.
        t.poison_gradients(4..5);
        t.train_until(4).unwrap();
        let before = weights_and_moments(t.model());
        t.train_until(5).unwrap();
        assert!(
            weights_and_moments(t.model()) == before,
            "{label}: the skipped update changed weights or moments"
        );
        t.run().unwrap();

        let (a, b) = (train_lines(&clean_dir), train_lines(&dir));
        assert_eq!((a.len(), b.len()), (10, 10), "{label}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let step = i + 1;
            // The same learning rates: a skipped step advances the schedule.
            assert_eq!(x["lr"], y["lr"], "{label} step {step}");
            let skipped = y["skipped_updates"].as_u64().unwrap();
            assert_eq!(skipped, (step >= 5) as u64, "{label} step {step}: {y}");
            assert_eq!(x["skipped_updates"], 0, "{label} step {step}");
            assert!(
                y["loss"].as_f64().unwrap().is_finite(),
                "{label} step {step}"
            );
        }
        // Before the NaN the runs agree.
        assert_same_lines(label, &a[..4], &b[..4]);
        // The poisoned step's norm is NaN (null in JSON); the next is finite.
        assert!(b[4]["grad_norm"].is_null(), "{label}: {}", b[4]);
        assert!(b[5]["grad_norm"].as_f64().unwrap().is_finite(), "{label}");
        assert_ne!(
            a[5]["loss"], b[5]["loss"],
            "{label}: the runs differ after the skip"
        );
        for d in [clean_dir, dir] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}

#[test]
fn a_run_whose_updates_are_all_skipped_stops_as_diverged() {
    let dir = temp_dir("diverged");
    let mut cfg = config("none", 30);
    cfg.train.log_every = 1;
    let mut t = create(cfg, cpu(), &dir);
    t.poison_gradients(2..30);
    let err = format!("{:#}", t.run().unwrap_err());
    assert!(
        err.contains("training diverged: the last 8 updates up to step 10 were skipped"),
        "{err}"
    );
    assert!(err.contains("--lr"), "{err}");
    let lines = train_lines(&dir);
    assert_eq!(lines.len(), 9, "logged up to step 9");
    assert_eq!(lines[8]["skipped_updates"], 7);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_keeps_its_skip_count_and_continues_bit_for_bit() {
    for (label, backend) in BACKENDS {
        let mut cfg = config("every:2", 10);
        cfg.train.log_every = 1;
        cfg.train.checkpoint_every = 5;
        let whole_dir = temp_dir(&format!("whole-{label}"));
        let mut whole = create(cfg.clone(), backend(), &whole_dir);
        whole.poison_gradients(2..3);
        whole.run().unwrap();

        let dir = temp_dir(&format!("resumed-{label}"));
        let mut first = create(cfg, backend(), &dir);
        first.poison_gradients(2..3);
        // Past the checkpoint of step 5; the lines of step 6 are redone.
        first.train_until(6).unwrap();
        drop(first);
        let mut resumed = Trainer::resume(&dir, backend(), None).unwrap();
        resumed.verbose = false;
        resumed.run().unwrap();

        let (a, b) = (train_lines(&whole_dir), train_lines(&dir));
        assert_eq!(a.len(), 10, "{label}");
        assert_same_lines(label, &a, &b);
        assert_eq!(b[9]["skipped_updates"], 1, "{label}");
        for d in [whole_dir, dir] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}
