//! The [`Trainer`]: a run's state, built for a new run or for a resume of
//! one, and the loop that trains it to its last step (agent decisions,
//! optimizer steps, logging, evaluation and checkpoints on the way).

use super::agent_driver::{self, DynamicState};
use super::checkpoint::{newest_good, skipped_notes, Snapshot};
use super::interrupt::{self, Interrupted};
use super::log::{progress_bar, say};
use super::replicas::ReplicaFault;
use super::run_dir::{self, RunLock};
use super::setup::{
    adamw, initial_table, lr_schedule, open_dataset, open_run_dataset, switch_target, DATA_STREAM,
};
use crate::config::{RunConfig, Schedule};
use crate::data::{Batch, Dataset, EvalWindows, Split, TrainBatcher};
use crate::dist::{Comm, Single};
use crate::metrics::{self, JsonlWriter};
use crate::model::accounting::MemoryReport;
use crate::model::{activation_bytes, Model};
use crate::ops::Backend;
use crate::optim::{AdamW, LrSchedule};
use crate::precision::Precision;
use crate::rng::HostRng;
use anyhow::{bail, ensure, Context, Result};
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
    pub(super) model: Model,
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
    /// The run folder's logs and lock: rank 0's alone (`None` on the other
    /// replicas of a data-parallel run, which write nothing).
    pub(super) files: Option<RunFiles>,
    /// Print progress lines (set false in tests).
    pub verbose: bool,
    /// What resuming changed (another `--steps`, checkpoints passed
    /// over, logs cut back), for the user.
    pub(super) notes: Vec<String>,
    /// The step of the newest checkpoint on disk (written or resumed from).
    pub(super) last_checkpoint: Option<u64>,
    /// Skipped updates already reported in a printed line.
    pub(super) reported_skips: u64,
    /// A test hook: the steps whose gradients are made NaN
    /// ([`Trainer::poison_gradients`]); empty otherwise.
    pub(super) poisoned_steps: std::ops::Range<u64>,
    /// How this replica talks to the others ([`Single`] without replicas).
    pub(super) comm: Arc<dyn Comm>,
    /// A test hook of data-parallel runs (see `replicas`).
    pub(super) fault: Option<ReplicaFault>,
    /// Run steps under the step graph ([`Trainer::set_step_graph`]).
    pub(super) use_graph: bool,
}

/// What rank 0 writes in the run folder while it trains.
pub(super) struct RunFiles {
    pub(super) metrics: JsonlWriter,
    pub(super) ties: JsonlWriter,
    /// One process at a time in the run folder.
    _lock: RunLock,
}

impl RunFiles {
    /// Opens the logs of run folder `dir`, taken with `lock`.
    fn open(dir: &Path, lock: RunLock) -> Result<RunFiles> {
        Ok(RunFiles {
            metrics: JsonlWriter::append(&dir.join(run_dir::METRICS))?,
            ties: JsonlWriter::append(&dir.join(run_dir::TIES))?,
            _lock: lock,
        })
    }
}

impl Trainer {
    /// A new run in `dir`: a folder that does not exist, an empty one, or
    /// with `force` a run folder, whose old run is removed only once the
    /// new one is fully built (configuration, data, tie table, model).
    pub fn create(
        cfg: RunConfig,
        backend: Arc<dyn Backend>,
        dir: &Path,
        force: bool,
    ) -> Result<Trainer> {
        cfg.validate()?;
        run_dir::check_new(dir, force)?;
        let data = open_dataset(&cfg)?;
        let mc = cfg.model.for_dataset(data.vocab_size, &data.name)?;
        let mut cfg = cfg;
        // The resolved vocabulary goes into config.toml, so the run can be
        // loaded without its dataset; the dataset's place (absolute, so the
        // run works from any folder), content hash and tokenizer, so eval
        // and sample find it and notice when it was prepared again.
        cfg.model.vocab_size = mc.vocab_size;
        // Likewise the precision the backend defaults to.
        cfg.precision = Some(cfg.precision_on(backend.name()));
        if let Some(place) = cfg.data.prepared_dir() {
            let absolute = std::path::absolute(place)
                .with_context(|| format!("cannot resolve --data {}", place.display()))?;
            cfg.data.source = absolute.display().to_string();
            cfg.data.dataset_id = data.id.clone();
            cfg.data.tokenizer = data.tokenizer_kind();
        }
        let table = initial_table(&cfg, &cfg.tying.policy, mc.n_layer)?;
        let model = Model::with_table(backend, mc, cfg.train.seed, table)?;
        let mut trainer = Self::assemble(cfg, dir, model, data)?;
        // The folder is taken after everything else was built and checked.
        trainer.files = Some(RunFiles::open(dir, run_dir::take(dir, force)?)?);
        run_dir::write_config(dir, &trainer.cfg)?;
        Ok(trainer)
    }

    /// Continues the run in `dir` from its newest good checkpoint; `steps`
    /// may extend it. Newer checkpoints that do not read back whole and
    /// finite are passed over (and named in [`Trainer::notes`]).
    pub fn resume(dir: &Path, backend: Arc<dyn Backend>, steps: Option<usize>) -> Result<Trainer> {
        Self::resume_from(dir, backend, steps, None)
    }

    /// [`Trainer::resume`], with the run's dataset found at `moved` (the
    /// same tokens, checked by their content hash; config.toml records
    /// the new place).
    pub fn resume_from(
        dir: &Path,
        backend: Arc<dyn Backend>,
        steps: Option<usize>,
        moved: Option<&Path>,
    ) -> Result<Trainer> {
        let mut cfg = run_dir::load_config(dir, "--resume")?;
        let lock = RunLock::acquire(dir)?;
        run_dir::mark(dir)?;
        if let Some(place) = moved {
            let found = crate::data::Dataset::read_meta(place)
                .with_context(|| format!("--data {}", place.display()))?
                .content_id();
            ensure!(
                cfg.data.dataset_id.as_deref() == Some(found.as_str()),
                "--data {} is not the dataset this run trained on (content {found}, the run \
                 recorded {}): a resume continues on the same tokens",
                place.display(),
                cfg.data.dataset_id.as_deref().unwrap_or("nothing")
            );
            cfg.data.source = std::path::absolute(place)?.display().to_string();
            run_dir::write_config(dir, &cfg)?;
        }
        let recorded_steps = cfg.train.steps;
        if let Some(s) = steps {
            cfg.train.steps = s;
        }
        cfg.validate()?;
        let ckpt = newest_good(dir, cfg.model.n_layer, false)?;
        let mut notes = skipped_notes(&ckpt);
        ensure!(
            cfg.train.steps as u64 >= ckpt.state.step,
            "{} is already at step {}; --steps {} would end before it (give more steps to extend the run)",
            dir.display(),
            ckpt.state.step,
            cfg.train.steps
        );
        let data = open_run_dataset(&cfg, None)?;
        let mc = cfg.model.for_dataset(data.vocab_size, &data.name)?;
        let model = Model::with_table(backend, mc, cfg.train.seed, ckpt.state.table.clone())?;
        let logs = ckpt.state.logs;
        let skipped: Vec<PathBuf> = ckpt.skipped.iter().map(|(p, _)| p.clone()).collect();
        // Lines logged after the checkpoint belong to a future that is
        // redone: cut the logs back to what the checkpoint saw.
        let step = ckpt.state.step;
        for (name, len) in [
            (run_dir::METRICS, logs.map(|l| l.metrics)),
            (run_dir::TIES, logs.map(|l| l.ties)),
        ] {
            let path = dir.join(name);
            match len {
                Some(len) => {
                    if let Some(note) = metrics::truncate_to(&path, len)? {
                        notes.push(note);
                    }
                }
                None => metrics::truncate_after_step(&path, step)?,
            }
        }
        // Checkpoints newer than the one resumed from were passed over as
        // broken: kept aside for inspection, out of the way of the new ones.
        for path in skipped {
            if path.starts_with(dir.join(run_dir::CHECKPOINTS)) {
                let mut aside = path.clone().into_os_string();
                aside.push(".broken");
                std::fs::rename(&path, &aside)
                    .with_context(|| format!("cannot move {} aside", path.display()))?;
            }
        }
        let mut t = Self::assemble(cfg, dir, model, data)?;
        t.files = Some(RunFiles::open(dir, lock)?);
        t.restore(ckpt)?;
        // The checkpoint wrote the fp32 weights.
        t.model.refresh_compute_copies()?;
        t.notes = notes;
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
            t.notes.push(note);
        }
        Ok(t)
    }

    /// A replica of another trainer (rank 0 of a data-parallel run) from
    /// its configuration and a [`Snapshot`] of its state, on `backend`:
    /// the same tie table, weights, moments, optimizer state, data position
    /// and step; no agent (rank 0 decides) and no run folder (rank 0 writes
    /// it). `dir` is rank 0's folder, named in messages only.
    pub(super) fn follower(
        cfg: RunConfig,
        dir: &Path,
        backend: Arc<dyn Backend>,
        snapshot: &Snapshot,
    ) -> Result<Trainer> {
        let data = open_run_dataset(&cfg, None)?;
        let mc = cfg.model.for_dataset(data.vocab_size, &data.name)?;
        let ckpt = snapshot.load(&dir.join("(rank 0's state)"), mc.n_layer)?;
        let model = Model::with_table(backend, mc, cfg.train.seed, ckpt.state.table.clone())?;
        let mut t = Self::assemble(cfg, dir, model, data)?;
        t.restore(ckpt)?;
        t.model.refresh_compute_copies()?;
        t.dynamic = None;
        t.verbose = false;
        Ok(t)
    }

    /// The trainer of `cfg` at step 0 around a model just built for it,
    /// without its run folder (the caller takes it, once everything else
    /// has been built and checked, and opens the logs: [`RunFiles::open`]).
    fn assemble(cfg: RunConfig, dir: &Path, mut model: Model, data: Dataset) -> Result<Trainer> {
        let t = &cfg.train;
        model.set_recompute(t.recompute);
        let backend = model.backend().clone();
        model.set_precision(cfg.precision_on(backend.name()))?;
        let opt = adamw(t, backend.as_ref())?;
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
            files: None,
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
            notes: Vec::new(),
            last_checkpoint: None,
            reported_skips: 0,
            poisoned_steps: 0..0,
            comm: Arc::new(Single::new()),
            fault: None,
            use_graph: true,
        })
    }

    /// Rank 0's run files (an error on any other replica: only rank 0
    /// writes the run folder).
    pub(super) fn files(&self) -> Result<&RunFiles> {
        self.files
            .as_ref()
            .context("only rank 0 writes the run folder")
    }

    pub(super) fn files_mut(&mut self) -> Result<&mut RunFiles> {
        self.files
            .as_mut()
            .context("only rank 0 writes the run folder")
    }

    pub fn model(&self) -> &Model {
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
        let (batch, recompute) = (self.cfg.train.batch, self.cfg.train.recompute);
        let model = &self.model;
        let (dtype, copy) = (
            model.precision().compute_dtype(),
            model.precision().has_compute_copy(),
        );
        let acts =
            activation_bytes(mc, batch, mc.n_ctx, recompute, model.attention(), dtype) as u64;
        let n = mc.n_layer;
        let table = self.model.slots().table();
        (
            MemoryReport::from_table(mc, table, copy, acts),
            MemoryReport::from_counts(mc, n, n, copy, acts),
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

    /// Switches the precision for the rest of the run (the checkpoint holds
    /// fp32 master weights and moments, so nothing is lost either way) and
    /// records it in config.toml.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.cfg.precision = Some(precision);
        self.model.set_precision(precision)?;
        run_dir::write_config(&self.dir, &self.cfg)
    }

    /// What a resume changed or passed over, one line each (another
    /// step count, a new learning rate, broken checkpoints, cut logs).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Sets the peak learning rate from here on (a diverged run continued
    /// with a lower rate) and records it in config.toml; a cosine
    /// schedule's floor is scaled by the same factor. Returns what changed.
    pub fn change_lr(&mut self, lr: f32) -> Result<String> {
        let t = &mut self.cfg.train;
        let (old_lr, old_min) = (t.lr, t.min_lr);
        t.lr = lr;
        t.min_lr = (old_min as f64 * lr as f64 / old_lr as f64) as f32;
        self.cfg.validate()?;
        self.schedule = lr_schedule(&self.cfg.train);
        run_dir::write_config(&self.dir, &self.cfg)?;
        let mut note =
            format!("the learning rate changes from {old_lr:e} to {lr:e} (config.toml updated)");
        if self.cfg.train.schedule == Schedule::Cosine {
            note += &format!(
                "; the cosine schedule's floor min_lr from {old_min:e} to {:e}",
                self.cfg.train.min_lr
            );
        }
        Ok(note)
    }

    /// Trains to the configured number of steps, evaluating, checkpointing
    /// and logging on the way; ends with valid and test perplexity, the
    /// final checkpoint and `report.svg`.
    pub fn run(&mut self) -> Result<Summary> {
        interrupt::install()?;
        let tc = self.cfg.train.clone();
        self.train_until(tc.steps as u64)?;
        if let Some(signal) = interrupt::requested() {
            return Err(self.stop(signal));
        }
        let trained = self.log_lengths()?;
        let valid = self.evaluate(Split::Valid, tc.final_eval_max_windows)?;
        self.log_eval(Split::Valid, valid)?;
        let test = self.evaluate(Split::Test, tc.final_eval_max_windows)?;
        self.log_eval(Split::Test, test)?;
        self.save_checkpoint_with(trained)?;
        self.write_report()?;
        for (split, loss) in [("valid", valid), ("test", test)] {
            if !loss.is_finite() {
                bail!(
                    "the final {split} loss is {loss} (perplexity {}): the model assigns some \
                     token no probability; the checkpoint of step {} is written, but this run \
                     is not a result ({})",
                    loss.exp(),
                    self.step,
                    self.how_to_recover()
                );
            }
        }
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

    /// Trains up to step `stop` (at most the configured number of steps),
    /// with the agent's decisions, logging, evaluation and checkpoints on
    /// the way, but not the final evaluation of [`Trainer::run`]. Between
    /// log steps, evaluations, checkpoints and agent decisions nothing is
    /// read back from the device.
    pub fn train_until(&mut self, stop: u64) -> Result<()> {
        let total = self.cfg.train.steps as u64;
        let stop = stop.min(total);
        let tc = self.cfg.train.clone();
        let bar = progress_bar(total, self.step, self.verbose);
        let k = self.cfg.tying.agent_k as u64;
        let mut window_start = Instant::now();
        let mut window_tokens = 0u64;
        // What the steps of the window all-reduced, for the log.
        let (mut window_steps, mut window_reduced) = (0u64, self.comm.stats().all_reduce_bytes);
        let n_layer = self.model.config().n_layer;
        let agent = agent_driver::has_agent(&self.cfg, n_layer);
        while self.step < stop {
            // Only rank 0 stops on a signal (with a checkpoint); the other
            // replicas stop when it leaves the group.
            if let Some(signal) = interrupt::requested().filter(|_| self.is_leader()) {
                bar.finish_and_clear();
                return Err(self.stop(signal));
            }
            self.make_fault()?;
            // `--tying switch:STEP:A>B` changes the structure once.
            if let Some(target) = switch_target(&self.cfg, self.step, n_layer)? {
                self.model.set_tie_state(&target)?;
                self.check_same_table()?;
            }
            if agent && self.step.is_multiple_of(k) {
                let applied = self.agent_step()?;
                self.share_tie_decision(applied)?;
            }
            let started = Instant::now();
            let before = self.tokens_seen;
            self.train_step()?;
            self.step += 1;
            self.elapsed_s += started.elapsed().as_secs_f64();
            if !self.is_leader() {
                // Logs, evaluations and checkpoints are rank 0's.
                continue;
            }
            window_tokens += self.tokens_seen - before;
            window_steps += 1;
            if self.step.is_multiple_of(tc.log_every as u64) || self.step == total {
                let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                let stats = self.read_step_stats()?;
                let reduced = self.comm.stats().all_reduce_bytes;
                self.log_train(&stats, tps, (reduced - window_reduced) / window_steps)?;
                if stats.skipped > self.reported_skips {
                    say(
                        &bar,
                        format!(
                            "step {:>6}: {} updates skipped so far (non-finite loss or gradient norm)",
                            self.step, stats.skipped
                        ),
                    );
                    self.reported_skips = stats.skipped;
                }
                let unique = self.model.slots().table().live_slots().len();
                bar.set_message(format!(
                    "loss {:.3} | {tps:.0} tok/s | blocks {unique}/{}",
                    stats.loss,
                    self.model.config().n_layer
                ));
                window_start = Instant::now();
                window_tokens = 0;
                (window_steps, window_reduced) = (0, reduced);
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
        Ok(())
    }

    /// After SIGINT or SIGTERM between two steps: the checkpoint of this
    /// step and the report, then the error that ends the program with the
    /// signal's exit status and says how to resume.
    fn stop(&mut self, signal: i32) -> anyhow::Error {
        let saved = self
            .save_checkpoint()
            .and_then(|_| self.write_report())
            .map(|_| self.step);
        Interrupted {
            signal,
            dir: self.dir.clone(),
            saved: saved.map_err(|e| format!("{e:#}")),
        }
        .into()
    }
}
