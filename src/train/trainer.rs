//! The [`Trainer`]: a run's state, built for a new run or for a resume of
//! one, and the loop that trains it to its last step (agent decisions,
//! optimizer steps, logging, evaluation and checkpoints on the way).

use super::agent_driver::{self, DynamicState};
use super::checkpoint::read_state;
use super::log::{progress_bar, say};
use super::run_dir;
use super::setup::{initial_table, lr_schedule, open_dataset, switch_target, DATA_STREAM};
use crate::config::RunConfig;
use crate::data::{Batch, Dataset, EvalWindows, Split, TrainBatcher};
use crate::metrics::{self, JsonlWriter};
use crate::model::accounting::MemoryReport;
use crate::model::{activation_bytes, Gpt2};
use crate::ops::Backend;
use crate::optim::{AdamW, LrSchedule};
use crate::rng::HostRng;
use anyhow::{ensure, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    pub(super) cfg: RunConfig,
    pub(super) dir: PathBuf,
    pub(super) model: Gpt2,
    pub(super) opt: AdamW,
    pub(super) schedule: LrSchedule,
    pub(super) data: Dataset,
    pub(super) batcher: TrainBatcher,
    pub(super) dynamic: Option<DynamicState>,
    /// Fixed windows of the training split, in eval mode, for the default reward.
    pub(super) reward_batch: Batch,
    pub(super) step: u64,
    pub(super) tokens_seen: u64,
    pub(super) elapsed_s: f64,
    pub(super) metrics: JsonlWriter,
    pub(super) ties: JsonlWriter,
    /// Print progress lines (set false in tests).
    pub verbose: bool,
    /// What resuming with another `--steps` changed, for the user.
    pub(super) extension_note: Option<String>,
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
        run_dir::create(dir, force)?;
        let data = open_dataset(&cfg)?;
        let mc = cfg.model.for_dataset(data.vocab_size, &data.name)?;
        // The resolved vocabulary goes into config.toml, so the run can be
        // loaded without its dataset.
        let mut cfg = cfg;
        cfg.model.vocab_size = mc.vocab_size;
        let table = initial_table(&cfg, &cfg.tying.policy, mc.n_layer)?;
        let model = Gpt2::with_table(backend, mc, cfg.train.seed, table)?;
        let trainer = Self::assemble(cfg, dir, model, data)?;
        run_dir::write_config(dir, &trainer.cfg)?;
        Ok(trainer)
    }

    /// Continues the run in `dir` from its checkpoint; `steps` may extend it.
    pub fn resume(dir: &Path, backend: Arc<dyn Backend>, steps: Option<usize>) -> Result<Trainer> {
        let mut cfg = run_dir::load_config(dir, "--resume")?;
        let recorded_steps = cfg.train.steps;
        if let Some(s) = steps {
            cfg.train.steps = s;
        }
        cfg.validate()?;
        let (ckpt, state) = read_state(dir, cfg.model.n_layer)?;
        ensure!(
            cfg.train.steps as u64 >= state.step,
            "{} is already at step {}; --steps {} would end before it (give more steps to extend the run)",
            dir.display(),
            state.step,
            cfg.train.steps
        );
        let data = open_dataset(&cfg)?;
        let mc = cfg.model.for_dataset(data.vocab_size, &data.name)?;
        let model = Gpt2::with_table(backend, mc, cfg.train.seed, state.table.clone())?;
        let mut t = Self::assemble(cfg, dir, model, data)?;
        t.restore(&ckpt, state)?;
        // Lines logged after the checkpoint belong to a future that is redone.
        metrics::truncate_after_step(&dir.join(run_dir::METRICS), t.step)?;
        metrics::truncate_after_step(&dir.join(run_dir::TIES), t.step)?;
        if t.cfg.train.steps != recorded_steps {
            // config.toml describes the run, so a later resume, eval or
            // sample sees the new length too.
            run_dir::write_config(dir, &t.cfg)?;
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

    /// The trainer of `cfg` at step 0 around a model just built for it.
    fn assemble(cfg: RunConfig, dir: &Path, mut model: Gpt2, data: Dataset) -> Result<Trainer> {
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
        let schedule = lr_schedule(t);
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
        let reward_batch = agent_driver::reward_batch(&cfg, &data)?;
        let dynamic = DynamicState::start(&cfg, model.config().n_layer)?;
        Ok(Trainer {
            metrics: JsonlWriter::append(&dir.join(run_dir::METRICS))?,
            ties: JsonlWriter::append(&dir.join(run_dir::TIES))?,
            dir: dir.to_path_buf(),
            cfg,
            model,
            opt,
            schedule,
            data,
            batcher,
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
        let acts =
            activation_bytes(mc, self.cfg.train.batch, mc.n_ctx, self.cfg.train.recompute) as u64;
        let n = mc.n_layer;
        let table = self.model.slots().table();
        (
            MemoryReport::from_table(mc, table, false, acts),
            MemoryReport::from_counts(mc, n, n, false, acts),
        )
    }

    /// Turns on activation recomputation for the rest of the run (it
    /// changes memory and time, not the results) and records it in
    /// config.toml.
    pub fn enable_recompute(&mut self) -> Result<()> {
        self.cfg.train.recompute = true;
        self.model.set_recompute(true);
        run_dir::write_config(&self.dir, &self.cfg)
    }

    /// After a resume that changed the step count: what that changed (the
    /// run's length, and the learning rate of a cosine schedule).
    pub fn extension_note(&self) -> Option<&str> {
        self.extension_note.as_deref()
    }

    /// Trains to the configured number of steps, evaluating, checkpointing
    /// and logging on the way; ends with valid and test perplexity, the
    /// final checkpoint and `report.svg`.
    pub fn run(&mut self) -> Result<Summary> {
        let total = self.cfg.train.steps as u64;
        let tc = self.cfg.train.clone();
        let bar = progress_bar(total, self.step, self.verbose);
        let k = self.cfg.tying.agent_k as u64;
        let mut window_start = Instant::now();
        let mut window_tokens = 0u64;
        while self.step < total {
            // `--tying switch:STEP:A>B` changes the structure once.
            let n_layer = self.model.config().n_layer;
            if let Some(target) = switch_target(&self.cfg, self.step, n_layer)? {
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
                let loss = self.evaluate(Split::Valid, tc.eval_max_windows)?;
                self.log_eval(Split::Valid, loss)?;
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
        let valid = self.evaluate(Split::Valid, tc.final_eval_max_windows)?;
        self.log_eval(Split::Valid, valid)?;
        let test = self.evaluate(Split::Test, tc.final_eval_max_windows)?;
        self.log_eval(Split::Test, test)?;
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
}
