//! Checks a kernel backend against the CPU reference: every op on random
//! inputs (the conformance harness), then the same short training run on
//! both, step by step. `dyntie doctor` runs it on the GPU; the tests run it
//! on the emulator.

use crate::config::RunConfig;
use crate::conformance::{self, CaseResult, Dims};
use crate::metrics::read_jsonl;
use crate::ops::Backend;
use crate::train::Trainer;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Per-step agreement of two training runs of the same config.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainingComparison {
    pub steps: usize,
    /// Training losses of the reference and the candidate, per step.
    pub reference: Vec<f64>,
    pub candidate: Vec<f64>,
    /// The largest `|a - b| / |a|` over the steps.
    pub max_rel_diff: f64,
    /// Whether every agent decision (layer, action) was the same.
    pub same_decisions: bool,
    pub decisions: usize,
}

impl TrainingComparison {
    pub fn agrees(&self, tol: f64) -> bool {
        self.max_rel_diff <= tol && self.same_decisions
    }
}

/// Trains `cfg` once on each backend (run folders under `scratch`) and
/// compares the per-step losses (`log_every` is forced to 1) and the tie
/// decisions.
pub fn compare_training(
    cfg: &RunConfig,
    reference: Arc<dyn Backend>,
    candidate: Arc<dyn Backend>,
    scratch: &Path,
) -> Result<TrainingComparison> {
    let mut cfg = cfg.clone();
    cfg.train.log_every = 1;
    let mut runs = Vec::new();
    for (name, backend) in [("reference", reference), ("candidate", candidate)] {
        let dir = scratch.join(name);
        let mut t = Trainer::create(cfg.clone(), backend, &dir, true)?;
        t.verbose = false;
        t.run()
            .with_context(|| format!("training on the {name} backend"))?;
        let losses: Vec<f64> = read_jsonl(&dir.join("metrics.jsonl"))?
            .iter()
            .filter(|r| r["kind"] == "train")
            .filter_map(|r| r["loss"].as_f64())
            .collect();
        let decisions: Vec<(u64, u64)> = read_jsonl(&dir.join("ties.jsonl"))?
            .iter()
            .filter_map(|r| Some((r["layer"].as_u64()?, r["action"].as_u64()?)))
            .collect();
        runs.push((losses, decisions));
    }
    let (b, a) = (runs.pop().unwrap(), runs.pop().unwrap());
    let max_rel_diff =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| {
                let d = (x - y).abs() / x.abs().max(1e-12);
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    d
                }
            })
            .fold(
                if a.0.len() == b.0.len() {
                    0.0
                } else {
                    f64::INFINITY
                },
                f64::max,
            );
    Ok(TrainingComparison {
        steps: a.0.len(),
        same_decisions: a.1 == b.1,
        decisions: a.1.len(),
        reference: a.0,
        candidate: b.0,
        max_rel_diff,
    })
}

/// The shapes the doctor checks: the standard odd ones, plus (on a real GPU)
/// a GPT-2-small-like one with the full GPT-2 vocabulary.
pub fn doctor_dims(gpu: bool) -> Vec<Dims> {
    let mut dims = Dims::standard();
    if gpu {
        dims.push(Dims {
            batch: 4,
            seq: 64,
            channels: 768,
            heads: 12,
            vocab: 50257,
        });
    }
    dims
}

/// Every op of `candidate` against `reference`.
pub fn check_kernels(
    reference: &dyn Backend,
    candidate: &dyn Backend,
    gpu: bool,
) -> Vec<CaseResult> {
    conformance::check_ops(reference, candidate, &[], &doctor_dims(gpu), 1234)
}

/// The short training comparison the doctor runs: a tiny GPT-2 with dynamic
/// tying and dropout, so decisions, slot copies and frees all happen.
pub fn doctor_training_config() -> RunConfig {
    let mut cfg = RunConfig::preset("tiny").expect("tiny is a preset");
    cfg.model.dropout = 0.1;
    cfg.train.steps = 30;
    cfg.train.batch = 4;
    cfg.tying.agent_k = 2;
    cfg.tying.param_cost = 0.5;
    cfg.data.synthetic_tokens = 20_000;
    cfg
}
