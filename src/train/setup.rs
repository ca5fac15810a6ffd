//! What a run configuration resolves to before the first step: the random
//! streams derived from its seed, its dataset, its first tie table and its
//! learning-rate schedule.

use crate::config::{RunConfig, Schedule, TrainSettings};
use crate::data::{Dataset, SyntheticConfig};
use crate::ops::Backend;
use crate::optim::{AdamW, LrSchedule};
use crate::rng::HostRng;
use crate::tying::policy::TyingPolicy;
use crate::tying::table::TieTable;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Streams derived from the run seed, so each consumer has its own sequence.
pub(super) const DATA_STREAM: u64 = 1;
pub(super) const DROPOUT_STREAM: u64 = 2;
pub(super) const AGENT_STREAM: u64 = 3;
pub(super) const REWARD_STREAM: u64 = 4;
const POLICY_STREAM: u64 = 5;
const SYNTHETIC_STREAM: u64 = 6;

/// The table before training: the policy's fixed pattern, or the dynamic
/// policy's initial state.
pub fn initial_table(cfg: &RunConfig, policy: &TyingPolicy, n_layer: usize) -> Result<TieTable> {
    let options = cfg.tie_options();
    if policy.is_dynamic() {
        return TieTable::new(n_layer, options);
    }
    let seed = HostRng::derive(cfg.train.seed, POLICY_STREAM).next_u64();
    let state = policy.initial_state(n_layer, seed, options.init)?;
    TieTable::from_state(&state, options)
}

/// The table a `switch:STEP:A>B` policy moves to before training step
/// `step` (`None` at every other step and for every other policy).
pub(super) fn switch_target(
    cfg: &RunConfig,
    step: u64,
    n_layer: usize,
) -> Result<Option<Vec<usize>>> {
    let seed = HostRng::derive(cfg.train.seed, POLICY_STREAM).next_u64();
    cfg.tying
        .policy
        .switch_at(step, n_layer, seed, cfg.tie_options().init)
}

/// The synthetic corpus of a run: its generator settings (the token
/// counts grow with the context, so that every split holds windows).
pub fn synthetic_config(cfg: &RunConfig) -> SyntheticConfig {
    let n = cfg.data.synthetic_tokens;
    let n_ctx = cfg.model.n_ctx;
    let per_split = (n / 10).max(n_ctx.saturating_mul(4).saturating_add(1));
    SyntheticConfig {
        seed: HostRng::derive(cfg.train.seed, SYNTHETIC_STREAM).next_u64(),
        train_tokens: n.max(n_ctx.saturating_add(1)),
        valid_tokens: per_split,
        test_tokens: per_split,
        ..SyntheticConfig::default()
    }
}

/// Opens the dataset a run config names.
pub fn open_dataset(cfg: &RunConfig) -> Result<Dataset> {
    match cfg.data.prepared_dir() {
        None => Dataset::synthetic(synthetic_config(cfg)),
        Some(dir) => Dataset::open(dir),
    }
}

/// The dataset a trained run reads: the one it trained on, checked to be
/// the same tokens (by the content hash config.toml records), or `other`
/// (`--data`), checked to use the run's tokenizer.
pub fn open_run_dataset(cfg: &RunConfig, other: Option<&Path>) -> Result<Dataset> {
    let Some(other) = other else {
        let Some(dir) = cfg.data.prepared_dir() else {
            return open_dataset(cfg);
        };
        if !dir.join("meta.json").is_file() {
            bail!(
                "the dataset this run trained on, {} (source in its config.toml), is not there \
                 (no meta.json): if it moved, give its new place with --data DIR",
                dir.display()
            );
        }
        let data = Dataset::open(dir)?;
        if let (Some(recorded), Some(found)) = (&cfg.data.dataset_id, &data.id) {
            if recorded != found {
                bail!(
                    "{} is no longer the dataset this run trained on: it was prepared again \
                     since (content {found}, {} tokenizer; the run recorded content {recorded}{}): \
                     prepare it again from the same corpus with the same tokenizer, or give the \
                     original with --data DIR",
                    dir.display(),
                    data.tokenizer_kind().map_or("no".into(), |k| k.to_string()),
                    cfg.data
                        .tokenizer
                        .map_or(String::new(), |k| format!(", {k} tokenizer"))
                );
            }
        }
        return Ok(data);
    };
    let data = Dataset::open(other).with_context(|| format!("--data {}", other.display()))?;
    if let (Some(run), Some(found)) = (cfg.data.tokenizer, data.tokenizer_kind()) {
        if run != found {
            bail!(
                "--data {}: its tokens come from the {found} tokenizer, the run was trained on \
                 {run} tokens; prepare the corpus with --tokenizer {run}",
                other.display()
            );
        }
    }
    Ok(data)
}

/// The optimizer of a run at step 0, on `backend`.
pub(super) fn adamw(t: &TrainSettings, backend: &dyn Backend) -> Result<AdamW> {
    AdamW::new(backend, t.lr, t.beta1, t.beta2, t.eps, t.weight_decay)
}

/// The learning rate of every step of a run of `t.steps` steps.
pub(super) fn lr_schedule(t: &TrainSettings) -> LrSchedule {
    match t.schedule {
        Schedule::Constant => LrSchedule::Constant { lr: t.lr },
        Schedule::Cosine => LrSchedule::WarmupCosine {
            max_lr: t.lr,
            min_lr: t.min_lr,
            warmup: t.warmup_steps as u32,
            total: t.steps as u32,
        },
    }
}
