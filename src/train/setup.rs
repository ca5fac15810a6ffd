//! What a run configuration resolves to before the first step: the random
//! streams derived from its seed, its dataset, its first tie table and its
//! learning-rate schedule.

use crate::config::{RunConfig, Schedule, TrainSettings};
use crate::data::{Dataset, SyntheticConfig};
use crate::optim::LrSchedule;
use crate::rng::HostRng;
use crate::tying::policy::TyingPolicy;
use crate::tying::table::TieTable;
use anyhow::Result;

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

/// Opens the dataset a run config names.
pub fn open_dataset(cfg: &RunConfig) -> Result<Dataset> {
    let Some(dir) = cfg.data.prepared_dir() else {
        let n = cfg.data.synthetic_tokens;
        let per_split = (n / 10).max(cfg.model.n_ctx * 4 + 1);
        return Dataset::synthetic(SyntheticConfig {
            seed: HostRng::derive(cfg.train.seed, SYNTHETIC_STREAM).next_u64(),
            train_tokens: n.max(cfg.model.n_ctx + 1),
            valid_tokens: per_split,
            test_tokens: per_split,
            ..SyntheticConfig::default()
        });
    };
    Dataset::open(dir)
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
