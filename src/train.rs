//! The training loop: episodes, agent steps, evaluation, checkpoints, metrics.
//!
//! One optimizer step is `grad_accum` micro-batches of forward + backward,
//! then clipping and AdamW over the unique live slots. With the dynamic
//! policy, every `agent_k` steps the agent closes its previous decision
//! (reward, Q-update, a line in `ties.jsonl`) and makes the next one for the
//! next block (1, 2, ..., L-1, then a new episode), editing the tie table.

use crate::backend::Backend;
use crate::checkpoint::{self, NamedTensor};
use crate::config::RunConfig;
use crate::data::{Batch, Dataset, EvalWindows, SyntheticConfig, TrainBatcher, IGNORE_INDEX};
use crate::metrics::{self, JsonlWriter};
use crate::model::{activation_bytes, Gpt2, Gpt2Config};
use crate::optim::{AdamW, AdamWState, LrSchedule};
use crate::report::{self, EvalPoint, LossPoint, ReportData, TieSnapshot};
use crate::rng::HostRng;
use crate::tying::accounting::{MemoryReport, ModelShape};
use crate::tying::agent::{AgentConfig, Decision, QAgent, StateEncoding, TieRecord, Transition};
use crate::tying::policy::TyingPolicy;
use crate::tying::reward::{self, RewardBaseline};
use crate::tying::settings::RewardSpan;
use crate::tying::table::{InitTies, TieGrad, TieOptions, TieTable};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Streams derived from the run seed, so each consumer has its own sequence.
const DATA_STREAM: u64 = 1;
const DROPOUT_STREAM: u64 = 2;
const AGENT_STREAM: u64 = 3;
const REWARD_STREAM: u64 = 4;
const POLICY_STREAM: u64 = 5;
const SYNTHETIC_STREAM: u64 = 6;

/// Everything besides tensors that a checkpoint must restore for the run to
/// continue bit for bit.
#[derive(Serialize, Deserialize)]
struct TrainState {
    format_version: u32,
    step: u64,
    tokens_seen: u64,
    elapsed_s: f64,
    optimizer: AdamWState,
    batcher_rng: HostRng,
    table: TieTable,
    dynamic: Option<DynamicState>,
}

const STATE_VERSION: u32 = 1;

/// The dynamic policy's state between decisions.
#[derive(Clone, Serialize, Deserialize)]
struct DynamicState {
    agent: QAgent,
    episode: u64,
    /// The block the next decision is about (1..L-1).
    next_layer: usize,
    pending: Option<Pending>,
    /// Draws the random training batch of the paper's reward.
    reward_rng: HostRng,
    /// `--reward-baseline` (absent from checkpoints written before it).
    #[serde(default)]
    baseline: RewardBaseline,
}

/// A decision whose reward is not known yet.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    state: Vec<usize>,
    decision: Decision,
    /// The episode the decision belongs to (the counter moves on after the
    /// last block's decision, before that decision is closed).
    episode: u64,
    /// Perplexity on the reward batch just before the action.
    ppl_before: f64,
    /// And just after it, with `--reward immediate`.
    #[serde(default)]
    ppl_after_action: Option<f64>,
}

/// The outcome of [`Trainer::run`].
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub valid_ppl: f64,
    pub test_ppl: f64,
    pub unique_blocks: usize,
    pub n_layer: usize,
    pub counted: MemoryReport,
    pub conventional: MemoryReport,
}

pub struct Trainer {
    cfg: RunConfig,
    dir: PathBuf,
    model: Gpt2,
    opt: AdamW,
    schedule: LrSchedule,
    data: Dataset,
    batcher: TrainBatcher,
    policy: TyingPolicy,
    dynamic: Option<DynamicState>,
    /// Fixed windows of the training split, in eval mode, for the default reward.
    reward_batch: Batch,
    step: u64,
    tokens_seen: u64,
    elapsed_s: f64,
    metrics: JsonlWriter,
    ties: JsonlWriter,
    /// Print progress lines (set false in tests).
    pub verbose: bool,
    /// What resuming with another `--steps` changed, for the user.
    extension_note: Option<String>,
}

/// The model configuration a run config resolves to on a dataset.
pub fn model_config(cfg: &RunConfig, data: &Dataset) -> Result<Gpt2Config> {
    let m = &cfg.model;
    let vocab = if m.vocab_size == 0 {
        data.vocab_size
    } else {
        m.vocab_size
    };
    ensure!(
        vocab >= data.vocab_size,
        "--vocab {vocab} is smaller than the vocabulary of dataset '{}' ({}): \
         leave --vocab out to use the dataset's",
        data.name,
        data.vocab_size
    );
    let mc = Gpt2Config {
        n_layer: m.n_layer,
        n_embd: m.n_embd,
        n_head: m.n_head,
        n_ctx: m.n_ctx,
        vocab_size: vocab,
        dropout: m.dropout,
        bias: m.bias,
    };
    mc.validate()?;
    Ok(mc)
}

/// The shape the memory accounting needs.
pub fn model_shape(mc: &Gpt2Config) -> ModelShape {
    ModelShape {
        n_layer: mc.n_layer,
        n_embd: mc.n_embd,
        n_head: mc.n_head,
        n_ctx: mc.n_ctx,
        vocab_size: mc.vocab_size,
        bias: mc.bias,
    }
}

/// The tie options a run config asks for.
pub fn tie_options(cfg: &RunConfig) -> Result<TieOptions> {
    let init = InitTies::parse(&cfg.tying.init_ties)?;
    let tie_grad = TieGrad::parse(&cfg.tying.tie_grad)?;
    Ok(if cfg.tying.paper_compat {
        TieOptions {
            init,
            ..TieOptions::paper()
        }
    } else {
        TieOptions {
            init,
            paper_compat: false,
            tie_grad,
            merge: cfg.agent.tie_merge,
        }
    })
}

/// The table before training: the policy's fixed pattern, or the dynamic
/// policy's initial state.
pub fn initial_table(cfg: &RunConfig, policy: &TyingPolicy, n_layer: usize) -> Result<TieTable> {
    let options = tie_options(cfg)?;
    if policy.is_dynamic() {
        return TieTable::new(n_layer, options);
    }
    let seed = HostRng::derive(cfg.train.seed, POLICY_STREAM).next_u64();
    let state = policy.initial_state(n_layer, seed, options.init)?;
    TieTable::from_state(&state, options)
}

/// Opens the dataset a run config names.
pub fn open_dataset(cfg: &RunConfig) -> Result<Dataset> {
    if cfg.data.source == "synthetic" {
        let n = cfg.data.synthetic_tokens;
        let per_split = (n / 10).max(cfg.model.n_ctx * 4 + 1);
        return Dataset::synthetic(SyntheticConfig {
            seed: HostRng::derive(cfg.train.seed, SYNTHETIC_STREAM).next_u64(),
            train_tokens: n.max(cfg.model.n_ctx + 1),
            valid_tokens: per_split,
            test_tokens: per_split,
            ..SyntheticConfig::default()
        });
    }
    Dataset::open(Path::new(&cfg.data.source))
}

fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    HostRng::derive(seed ^ DROPOUT_STREAM, step << 16 | micro as u64).next_u64()
}

impl Trainer {
    /// A new run in `dir` (created; it must not hold another run unless `force`).
    pub fn create(
        cfg: RunConfig,
        backend: Arc<dyn Backend>,
        dir: &Path,
        force: bool,
    ) -> Result<Trainer> {
        cfg.validate()?;
        if dir.join("config.toml").exists() && !force {
            bail!(
                "{} already holds a run: choose another --out, continue it with --resume {}, \
                 or overwrite it with --force",
                dir.display(),
                dir.display()
            );
        }
        if force && dir.exists() {
            for f in ["metrics.jsonl", "ties.jsonl", "report.svg"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create run folder {}", dir.display()))?;
        let data = open_dataset(&cfg)?;
        let mc = model_config(&cfg, &data)?;
        // The resolved vocabulary goes into config.toml, so the run can be
        // loaded without its dataset.
        let mut cfg = cfg;
        cfg.model.vocab_size = mc.vocab_size;
        let policy = TyingPolicy::parse(&cfg.tying.policy, mc.n_layer)?;
        let table = initial_table(&cfg, &policy, mc.n_layer)?;
        let model = Gpt2::with_table(backend, mc, cfg.train.seed, table)?;
        let trainer = Self::assemble(cfg, dir, model, data, policy)?;
        std::fs::write(dir.join("config.toml"), trainer.cfg.to_toml())
            .with_context(|| format!("cannot write {}", dir.join("config.toml").display()))?;
        Ok(trainer)
    }

    /// Continues the run in `dir` from its checkpoint; `steps` may extend it.
    pub fn resume(dir: &Path, backend: Arc<dyn Backend>, steps: Option<usize>) -> Result<Trainer> {
        let config_path = dir.join("config.toml");
        let mut cfg = RunConfig::load(&config_path)
            .with_context(|| format!("--resume {}: not a dyntie run folder", dir.display()))?;
        let recorded_steps = cfg.train.steps;
        if let Some(s) = steps {
            cfg.train.steps = s;
        }
        cfg.validate()?;
        let (ckpt, state) = read_state(dir)?;
        let state_path = ckpt.join("state.json");
        ensure!(
            cfg.train.steps as u64 >= state.step,
            "{} is already at step {}; --steps {} would end before it (give more steps to extend the run)",
            dir.display(),
            state.step,
            cfg.train.steps
        );
        let data = open_dataset(&cfg)?;
        let mc = model_config(&cfg, &data)?;
        ensure!(
            state.table.n_layer() == mc.n_layer,
            "{}: the checkpoint has {} blocks but config.toml says {}",
            state_path.display(),
            state.table.n_layer(),
            mc.n_layer
        );
        let policy = TyingPolicy::parse(&cfg.tying.policy, mc.n_layer)?;
        let model = Gpt2::with_table(backend, mc, cfg.train.seed, state.table.clone())?;
        let mut t = Self::assemble(cfg, dir, model, data, policy)?;
        load_tensors(&t.model, &ckpt)?;
        t.opt.load_state(&state.optimizer);
        t.batcher.set_rng(state.batcher_rng);
        if let Some(d) = &state.dynamic {
            d.agent
                .check()
                .with_context(|| format!("{}: invalid agent state", state_path.display()))?;
        }
        ensure!(
            state.dynamic.is_some() == t.policy.is_dynamic(),
            "{}: the checkpoint's tying policy does not match config.toml",
            state_path.display()
        );
        t.dynamic = state.dynamic;
        t.step = state.step;
        t.tokens_seen = state.tokens_seen;
        t.elapsed_s = state.elapsed_s;
        // Lines logged after the checkpoint belong to a future that is redone.
        metrics::truncate_after_step(&dir.join("metrics.jsonl"), t.step)?;
        metrics::truncate_after_step(&dir.join("ties.jsonl"), t.step)?;
        if t.cfg.train.steps != recorded_steps {
            // config.toml describes the run, so a later resume, eval or
            // sample sees the new length too.
            checkpoint::write_file_atomically(&config_path, t.cfg.to_toml().as_bytes())?;
            let mut note = format!(
                "the run's length changes from {recorded_steps} to {} steps (config.toml updated)",
                t.cfg.train.steps
            );
            if let LrSchedule::WarmupCosine {
                max_lr,
                min_lr,
                warmup,
                ..
            } = t.schedule
            {
                let before = LrSchedule::WarmupCosine {
                    max_lr,
                    min_lr,
                    warmup,
                    total: recorded_steps as u32,
                };
                let at = t.step as u32;
                note += &format!(
                    "; the cosine schedule now ends at step {}: learning rate at step {at} {:.3e} (was {:.3e})",
                    t.cfg.train.steps,
                    t.schedule.lr(at),
                    before.lr(at)
                );
            }
            t.extension_note = Some(note);
        }
        Ok(t)
    }

    fn assemble(
        cfg: RunConfig,
        dir: &Path,
        mut model: Gpt2,
        data: Dataset,
        policy: TyingPolicy,
    ) -> Result<Trainer> {
        let t = &cfg.train;
        model.set_recompute(t.recompute);
        let backend = model.backend().clone();
        let opt = AdamW::new(
            backend.as_ref(),
            t.lr,
            t.beta1,
            t.beta2,
            t.eps,
            t.weight_decay,
        )?;
        let schedule = match t.schedule.as_str() {
            "constant" => LrSchedule::Constant { lr: t.lr },
            _ => LrSchedule::WarmupCosine {
                max_lr: t.lr,
                min_lr: t.min_lr,
                warmup: t.warmup_steps as u32,
                total: t.steps as u32,
            },
        };
        let n_ctx = cfg.model.n_ctx;
        // A split too short to evaluate would otherwise fail only after training.
        EvalWindows::new(data.valid.clone(), n_ctx)?;
        EvalWindows::new(data.test.clone(), n_ctx)?;
        let batcher = TrainBatcher::new(
            data.train.clone(),
            t.batch,
            n_ctx,
            HostRng::derive(t.seed, DATA_STREAM),
        )?;
        let mut reward_sampler = TrainBatcher::new(
            data.train.clone(),
            t.batch,
            n_ctx,
            HostRng::derive(t.seed, REWARD_STREAM),
        )?;
        let reward_batch = reward_sampler.next_batch();
        let n_layer = model.config().n_layer;
        let dynamic = if policy.is_dynamic() && n_layer > 1 {
            let mut ac =
                AgentConfig::new(n_layer, HostRng::derive(t.seed, AGENT_STREAM).next_u64());
            ac.paper_compat = cfg.tying.paper_compat;
            ac.encoding = match cfg.tying.agent_input.as_str() {
                "normalized" => StateEncoding::Normalized,
                _ => StateEncoding::Raw,
            };
            ac.epsilon_schedule = cfg.agent.epsilon_schedule;
            ac.explore_draw = cfg.agent.explore_draw;
            ac.td_target = cfg.agent.td_target;
            Some(DynamicState {
                agent: QAgent::new(ac)?,
                episode: 0,
                next_layer: 1,
                pending: None,
                reward_rng: HostRng::derive(t.seed, REWARD_STREAM + 100),
                baseline: RewardBaseline::default(),
            })
        } else {
            None
        };
        Ok(Trainer {
            metrics: JsonlWriter::append(&dir.join("metrics.jsonl"))?,
            ties: JsonlWriter::append(&dir.join("ties.jsonl"))?,
            dir: dir.to_path_buf(),
            cfg,
            model,
            opt,
            schedule,
            data,
            batcher,
            policy,
            dynamic,
            reward_batch,
            step: 0,
            tokens_seen: 0,
            elapsed_s: 0.0,
            verbose: true,
            extension_note: None,
        })
    }

    pub fn model(&self) -> &Gpt2 {
        &self.model
    }
    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counted training memory of the current table, and of the same
    /// model trained conventionally.
    pub fn memory(&self) -> (MemoryReport, MemoryReport) {
        let mc = self.model.config();
        let shape = model_shape(mc);
        let acts =
            activation_bytes(mc, self.cfg.train.batch, mc.n_ctx, self.cfg.train.recompute) as u64;
        let n = mc.n_layer;
        let table = self.model.slots().table();
        (
            MemoryReport::from_table(&shape, table, false, acts),
            MemoryReport::from_counts(&shape, n, n, false, acts),
        )
    }

    /// Turns on activation recomputation for the rest of the run (it
    /// changes memory and time, not the results) and records it in
    /// config.toml.
    pub fn enable_recompute(&mut self) -> Result<()> {
        self.cfg.train.recompute = true;
        self.model.set_recompute(true);
        checkpoint::write_file_atomically(
            &self.dir.join("config.toml"),
            self.cfg.to_toml().as_bytes(),
        )
    }

    /// After a resume that changed the step count: what that changed (the
    /// run's length, and the learning rate of a cosine schedule).
    pub fn extension_note(&self) -> Option<&str> {
        self.extension_note.as_deref()
    }

    /// One optimizer step; returns (mean loss, gradient norm).
    fn train_step(&mut self) -> Result<(f32, f32)> {
        let t = &self.cfg.train;
        let (accum, batch, n_ctx) = (t.grad_accum, t.batch, self.cfg.model.n_ctx);
        self.opt.lr = self.schedule.lr(self.step as u32);
        self.model.zero_grads()?;
        let mut loss = 0.0f32;
        for micro in 0..accum {
            let b = self.batcher.next_batch();
            let seed = dropout_seed(t.seed, self.step, micro);
            let l = self.model.forward_backward(
                &b.inputs,
                &b.targets,
                batch,
                n_ctx,
                seed,
                1.0 / accum as f32,
            )?;
            loss += l / accum as f32;
        }
        if !loss.is_finite() {
            bail!(
                "the training loss is {loss} at step {}: training diverged; lower --lr (now {})",
                self.step,
                self.cfg.train.lr
            );
        }
        let clip = (t.grad_clip > 0.0).then_some(t.grad_clip);
        let norm = self.opt.clip_and_update(&self.model, clip)?;
        self.tokens_seen += (accum * batch * n_ctx) as u64;
        Ok((loss, norm))
    }

    /// Mean loss over (up to `max_windows` windows of) a split.
    pub fn evaluate(&mut self, split: &str, max_windows: usize) -> Result<f64> {
        let source = match split {
            "train" => self.data.train.clone(),
            "valid" => self.data.valid.clone(),
            "test" => self.data.test.clone(),
            other => bail!("unknown split '{other}': use valid or test"),
        };
        evaluate_split(&mut self.model, source, self.cfg.train.batch, max_windows)
    }

    /// Perplexity on the reward batch (eval mode).
    fn reward_batch_ppl(&mut self) -> Result<f64> {
        let b = &self.reward_batch;
        let (sum, count) = self
            .model
            .eval_loss(&b.inputs, &b.targets, b.rows, b.context)?;
        Ok((sum / count as f64).exp())
    }

    /// Closes the pending decision and makes the next one.
    fn agent_step(&mut self) -> Result<()> {
        let Some(mut d) = self.dynamic.take() else {
            return Ok(());
        };
        let result = self.agent_step_with(&mut d);
        self.dynamic = Some(d);
        result
    }

    fn agent_step_with(&mut self, d: &mut DynamicState) -> Result<()> {
        let n_layer = self.model.config().n_layer;
        let (steps, k) = (self.cfg.train.steps as u64, self.cfg.tying.agent_k as u64);
        let deciding = self.cfg.agent.decides_at(self.step, steps);
        if !deciding && d.pending.is_none() {
            // The table is fixed for the rest of the run (`--decide-until`).
            return Ok(());
        }
        d.agent
            .set_planned_decisions(self.cfg.agent.planned_decisions(steps, k));
        let ppl_now = self.reward_batch_ppl()?;
        if let Some(p) = d.pending.take() {
            let r = if self.cfg.tying.paper_compat {
                // The code's reward: minus the perplexity of one random
                // training batch in eval mode.
                let mut sampler = TrainBatcher::new(
                    self.data.train.clone(),
                    self.cfg.train.batch,
                    self.cfg.model.n_ctx,
                    d.reward_rng.clone(),
                )?;
                let b = sampler.next_batch();
                d.reward_rng = sampler.rng().clone();
                let (sum, count) = self
                    .model
                    .eval_loss(&b.inputs, &b.targets, b.rows, b.context)?;
                reward::paper_reward(sum / count as f64)?
            } else {
                let unique = self.model.slots().table().trainable_slots().len();
                reward::relative_ppl_reward(
                    p.ppl_before,
                    p.ppl_after_action.unwrap_or(ppl_now),
                    self.cfg.tying.param_cost as f64,
                    unique,
                    self.cfg.agent.param_budget,
                    n_layer,
                )?
            };
            let window = self.cfg.agent.reward_baseline;
            let advantage = (window > 0).then(|| d.baseline.advantage(r, window));
            let table = self.model.slots().table();
            d.agent.learn(&Transition {
                state: &p.state,
                layer: p.decision.layer,
                action: p.decision.action,
                reward: advantage.unwrap_or(r),
                next_state: table.state(),
            })?;
            // The record carries the table right after that action, which
            // is the table now (nothing else changes it in between).
            let mut record = TieRecord::new(self.step, p.episode, &p.decision, r, table);
            record.advantage = advantage;
            self.ties.write(&record)?;
        }
        if !deciding {
            return Ok(());
        }
        let layer = d.next_layer;
        let table = self.model.slots().table();
        let state = table.state().to_vec();
        let limit = self.cfg.agent.param_limit;
        let allowed = if limit > 0 {
            Some(table.actions_within_limit(layer, limit)?)
        } else {
            None
        };
        let decision = d.agent.decide_within(&state, layer, allowed.as_deref())?;
        self.model.apply_action(layer, decision.action)?;
        let immediate =
            !self.cfg.tying.paper_compat && self.cfg.agent.reward == RewardSpan::Immediate;
        let ppl_after_action = if immediate {
            Some(self.reward_batch_ppl()?)
        } else {
            None
        };
        d.pending = Some(Pending {
            state,
            decision,
            episode: d.episode,
            ppl_before: ppl_now,
            ppl_after_action,
        });
        d.next_layer += 1;
        if d.next_layer >= n_layer {
            d.next_layer = 1;
            d.episode += 1;
            d.agent.end_episode();
        }
        Ok(())
    }

    /// Writes the checkpoint folder atomically.
    pub fn save_checkpoint(&mut self) -> Result<()> {
        let (model_t, opt_t) = collect_tensors(&self.model)?;
        let state = TrainState {
            format_version: STATE_VERSION,
            step: self.step,
            tokens_seen: self.tokens_seen,
            elapsed_s: self.elapsed_s,
            optimizer: self.opt.state(),
            batcher_rng: self.batcher.rng().clone(),
            table: self.model.slots().table().clone(),
            dynamic: self.dynamic.clone(),
        };
        checkpoint::write_dir_atomically(
            &self.dir.join("checkpoint"),
            &[
                (
                    "model.safetensors",
                    checkpoint::safetensors_bytes(&model_t)?,
                ),
                (
                    "optimizer.safetensors",
                    checkpoint::safetensors_bytes(&opt_t)?,
                ),
                ("state.json", serde_json::to_vec_pretty(&state)?),
            ],
        )
    }

    fn log_train(&mut self, loss: f32, norm: f32, tokens_per_s: f64) -> Result<()> {
        let (counted, _) = self.memory();
        let mem = self.model.backend().mem_stats();
        self.metrics.write(&serde_json::json!({
            "kind": "train",
            "step": self.step,
            "loss": loss,
            "lr": self.opt.lr,
            "grad_norm": norm,
            "tokens_per_s": tokens_per_s,
            "tokens": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "unique_blocks": counted.live_slots,
            "trainable_blocks": counted.trainable_slots,
            "trainable_params": counted.trainable_params,
            "counted_bytes": counted.total_bytes,
            "live_bytes": mem.live_bytes,
            "peak_bytes": mem.peak_bytes,
        }))
    }

    fn log_eval(&mut self, split: &str, loss: f64) -> Result<()> {
        self.metrics.write(&serde_json::json!({
            "kind": "eval",
            "step": self.step,
            "split": split,
            "loss": loss,
            "ppl": loss.exp(),
        }))
    }

    /// Trains to the configured number of steps, evaluating, checkpointing
    /// and logging on the way; ends with valid and test perplexity, the
    /// final checkpoint and `report.svg`.
    pub fn run(&mut self) -> Result<Summary> {
        let total = self.cfg.train.steps as u64;
        let tc = self.cfg.train.clone();
        let bar = progress_bar(total, self.step, self.verbose);
        let say = |bar: &indicatif::ProgressBar, msg: String| {
            if bar.is_hidden() {
                eprintln!("{msg}");
            } else {
                bar.println(msg);
            }
        };
        let k = self.cfg.tying.agent_k as u64;
        let mut window_start = Instant::now();
        let mut window_tokens = 0u64;
        while self.step < total {
            // `--tying switch:STEP:A>B` changes the structure once.
            let seed = HostRng::derive(tc.seed, POLICY_STREAM).next_u64();
            let n_layer = self.model.config().n_layer;
            let init = tie_options(&self.cfg)?.init;
            if let Some(target) = self.policy.switch_at(self.step, n_layer, seed, init)? {
                self.model.set_tie_state(&target)?;
            }
            if self.dynamic.is_some() && self.step.is_multiple_of(k) {
                self.agent_step()?;
            }
            let started = Instant::now();
            let before = self.tokens_seen;
            let (loss, norm) = self.train_step()?;
            self.step += 1;
            self.elapsed_s += started.elapsed().as_secs_f64();
            window_tokens += self.tokens_seen - before;
            if self.step.is_multiple_of(tc.log_every.max(1) as u64) || self.step == total {
                let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                self.log_train(loss, norm, tps)?;
                let unique = self.model.slots().table().live_slots().len();
                bar.set_message(format!(
                    "loss {loss:.3} | {tps:.0} tok/s | blocks {unique}/{}",
                    self.model.config().n_layer
                ));
                window_start = Instant::now();
                window_tokens = 0;
            }
            bar.set_position(self.step);
            if tc.eval_every > 0
                && self.step.is_multiple_of(tc.eval_every as u64)
                && self.step < total
            {
                let loss = self.evaluate("valid", tc.eval_max_windows)?;
                self.log_eval("valid", loss)?;
                say(
                    &bar,
                    format!(
                        "step {:>6}: valid loss {loss:.4}, ppl {:.2}",
                        self.step,
                        loss.exp()
                    ),
                );
            }
            if tc.checkpoint_every > 0 && self.step.is_multiple_of(tc.checkpoint_every as u64) {
                self.save_checkpoint()?;
            }
        }
        bar.finish_and_clear();
        let valid = self.evaluate("valid", tc.final_eval_max_windows)?;
        self.log_eval("valid", valid)?;
        let test = self.evaluate("test", tc.final_eval_max_windows)?;
        self.log_eval("test", test)?;
        self.save_checkpoint()?;
        self.write_report()?;
        let (counted, conventional) = self.memory();
        Ok(Summary {
            steps: self.step,
            seconds: self.elapsed_s,
            tokens_per_s: self.tokens_seen as f64 / self.elapsed_s.max(1e-9),
            valid_ppl: valid.exp(),
            test_ppl: test.exp(),
            unique_blocks: counted.live_slots,
            n_layer: self.model.config().n_layer,
            counted,
            conventional,
        })
    }

    /// Draws `report.svg` from the run's metrics and tie decisions.
    pub fn write_report(&self) -> Result<()> {
        write_report(&self.dir, self.model.slots().table())
    }
}

/// The checkpoint folder of run `dir` and its state, checked.
fn read_state(dir: &Path) -> Result<(PathBuf, TrainState)> {
    let ckpt = checkpoint::readable_dir(&dir.join("checkpoint"))?;
    let state_path = ckpt.join("state.json");
    let state: TrainState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", state_path.display()))?;
    ensure!(
        state.format_version == STATE_VERSION,
        "{}: checkpoint format {} is not the {} this dyntie writes",
        state_path.display(),
        state.format_version,
        STATE_VERSION
    );
    state
        .table
        .check()
        .with_context(|| format!("{}: invalid tie table", state_path.display()))?;
    Ok((ckpt, state))
}

/// The trained model of run `dir` (config `cfg`) from its checkpoint.
pub fn load_model(dir: &Path, cfg: &RunConfig, backend: Arc<dyn Backend>) -> Result<Gpt2> {
    let (ckpt, state) = read_state(dir)?;
    let m = &cfg.model;
    ensure!(
        m.vocab_size > 0,
        "{}: config.toml has no resolved vocab_size",
        dir.display()
    );
    let mc = Gpt2Config {
        n_layer: m.n_layer,
        n_embd: m.n_embd,
        n_head: m.n_head,
        n_ctx: m.n_ctx,
        vocab_size: m.vocab_size,
        dropout: m.dropout,
        bias: m.bias,
    };
    ensure!(
        state.table.n_layer() == mc.n_layer,
        "{}: the checkpoint has {} blocks but config.toml says {}",
        ckpt.display(),
        state.table.n_layer(),
        mc.n_layer
    );
    // Evaluation, sampling and export keep full logits (no recomputation).
    let model = Gpt2::with_table(backend, mc, cfg.train.seed, state.table)?;
    load_tensors(&model, &ckpt)?;
    Ok(model)
}

/// `report.svg` from `metrics.jsonl` and `ties.jsonl` in `dir`; `table` is
/// the final table (the only snapshot for a static policy).
pub fn write_report(dir: &Path, table: &TieTable) -> Result<()> {
    let records = metrics::read_jsonl(&dir.join("metrics.jsonl"))?;
    let num = |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_f64());
    let step = |r: &serde_json::Value| r.get("step").and_then(|v| v.as_u64()).unwrap_or(0);
    let losses: Vec<LossPoint> = records
        .iter()
        .filter(|r| r["kind"] == "train")
        .filter_map(|r| {
            Some(LossPoint {
                step: step(r),
                train_loss: num(r, "loss")?,
            })
        })
        .collect();
    let evals: Vec<EvalPoint> = records
        .iter()
        .filter(|r| r["kind"] == "eval" && r["split"] == "valid")
        .filter_map(|r| {
            Some(EvalPoint {
                step: step(r),
                valid_ppl: num(r, "ppl")?,
            })
        })
        .collect();
    let mut ties: Vec<TieSnapshot> = metrics::read_jsonl(&dir.join("ties.jsonl"))?
        .into_iter()
        .filter_map(|r| {
            let rec: TieRecord = serde_json::from_value(r).ok()?;
            Some(TieSnapshot {
                step: rec.step,
                state: rec.state_after,
                slots: rec.slots_after,
            })
        })
        .collect();
    let last_step = losses.last().map_or(0, |l| l.step);
    if ties.is_empty() {
        for s in [0, last_step] {
            ties.push(TieSnapshot {
                step: s,
                state: table.state().to_vec(),
                slots: table.slots().to_vec(),
            });
        }
    }
    let title = format!("dyntie run {}", dir.display());
    let svg = report::render_svg(&ReportData {
        title: &title,
        losses: &losses,
        evals: &evals,
        ties: &ties,
    });
    std::fs::write(dir.join("report.svg"), svg)
        .with_context(|| format!("cannot write {}", dir.join("report.svg").display()))
}

/// Mean loss over the windows of `source` (all of them when `max_windows`
/// is 0), in batches of `rows`; short batches are padded with ignored rows so
/// the model keeps one activation plan.
pub fn evaluate_split(
    model: &mut Gpt2,
    source: crate::data::TokenSource,
    rows: usize,
    max_windows: usize,
) -> Result<f64> {
    let n_ctx = model.config().n_ctx;
    let windows = EvalWindows::new(source, n_ctx)?;
    let n = if max_windows == 0 {
        windows.len()
    } else {
        windows.len().min(max_windows)
    };
    let (mut sum, mut count) = (0.0f64, 0usize);
    for first in (0..n).step_by(rows) {
        let mut b = windows.batch(first, rows.min(n - first));
        b.inputs.resize(rows * n_ctx, 0);
        b.targets.resize(rows * n_ctx, IGNORE_INDEX);
        let (s, c) = model.eval_loss(&b.inputs, &b.targets, rows, n_ctx)?;
        sum += s;
        count += c;
    }
    ensure!(count > 0, "the split has no targets to evaluate");
    Ok(sum / count as f64)
}

fn progress_bar(total: u64, at: u64, visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps | {msg} | ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_position(at);
    bar
}

/// Parameters (model.safetensors) and AdamW moments (optimizer.safetensors):
/// the globals by name, and each live slot as `slot.{k}.{name}`.
fn collect_tensors(model: &Gpt2) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>)> {
    let be = model.backend().as_ref();
    let (mut params, mut moments) = (Vec::new(), Vec::new());
    let mut add = |prefix: String,
                   entries: &[crate::model::ParamEntry],
                   slot: &crate::tying::slots::Slot|
     -> Result<()> {
        for e in entries {
            let name = format!("{prefix}{}", e.name);
            let shape = e.shape.clone();
            params.push(NamedTensor::new(
                &name,
                shape.clone(),
                be.download_f32(e.view(slot.params.f32()))?,
            ));
            moments.push(NamedTensor::new(
                format!("{name}.m"),
                shape.clone(),
                be.download_f32(e.view(slot.adam_m.f32()))?,
            ));
            moments.push(NamedTensor::new(
                format!("{name}.v"),
                shape,
                be.download_f32(e.view(slot.adam_v.f32()))?,
            ));
        }
        Ok(())
    };
    add(
        String::new(),
        model.global_layout().entries(),
        model.globals(),
    )?;
    for (k, slot) in model.slots().live_slots() {
        add(format!("slot.{k}."), model.block_layout().entries(), slot)?;
    }
    Ok((params, moments))
}

/// Loads what [`collect_tensors`] saved into a model built with the same
/// config and table.
fn load_tensors(model: &Gpt2, dir: &Path) -> Result<()> {
    let be = model.backend().as_ref();
    let p_path = dir.join("model.safetensors");
    let o_path = dir.join("optimizer.safetensors");
    let params = checkpoint::load_safetensors(&p_path)?;
    let moments = checkpoint::load_safetensors(&o_path)?;
    let mut expected = 0usize;
    let mut load = |prefix: String,
                    entries: &[crate::model::ParamEntry],
                    slot: &crate::tying::slots::Slot|
     -> Result<()> {
        for e in entries {
            let name = format!("{prefix}{}", e.name);
            for (map, key, path, buf) in [
                (&params, name.clone(), &p_path, &slot.params),
                (&moments, format!("{name}.m"), &o_path, &slot.adam_m),
                (&moments, format!("{name}.v"), &o_path, &slot.adam_v),
            ] {
                let (shape, data) = map.get(&key).with_context(|| {
                    format!(
                        "{}: tensor '{key}' is missing (checkpoint of another model?)",
                        path.display()
                    )
                })?;
                ensure!(
                    shape == &e.shape,
                    "{}: tensor '{key}' has shape {shape:?}, the model needs {:?}",
                    path.display(),
                    e.shape
                );
                be.upload_f32(e.view(buf.f32()), data)?;
            }
            expected += 1;
        }
        Ok(())
    };
    load(
        String::new(),
        model.global_layout().entries(),
        model.globals(),
    )?;
    for (k, slot) in model.slots().live_slots() {
        load(format!("slot.{k}."), model.block_layout().entries(), slot)?;
    }
    ensure!(
        params.len() == expected,
        "{}: {} tensors, but the model has {expected}: the checkpoint belongs to another model",
        p_path.display(),
        params.len()
    );
    Ok(())
}
