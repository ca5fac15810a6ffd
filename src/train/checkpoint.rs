//! A run's checkpoints: parameters (`model.safetensors`), AdamW moments
//! (`optimizer.safetensors`) and everything else a resume needs to continue
//! bit for bit (`state.json`), in one folder per step under `checkpoints/`.
//! Saving (never from a non-finite state), keeping the newest K, finding
//! the newest good one (falling back past a corrupt or non-finite one),
//! restoring, and loading a trained model for eval, sample and export. Each
//! folder is written atomically by [`crate::checkpoint`].

use super::agent_driver::DynamicState;
use super::run_dir;
use super::Trainer;
use crate::checkpoint::{self as files, NamedTensor, TensorMap};
use crate::config::RunConfig;
use crate::model::{Model, ParamEntry};
use crate::ops::{Backend, BackendExt};
use crate::optim::{AdamWState, StepStats};
use crate::rng::HostRng;
use crate::tying::slots::Slot;
use crate::tying::table::TieTable;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything besides tensors that a checkpoint must restore for the run to
/// continue bit for bit.
#[derive(Serialize, Deserialize)]
pub(super) struct TrainState {
    format_version: u32,
    pub(super) step: u64,
    tokens_seen: u64,
    elapsed_s: f64,
    optimizer: AdamWState,
    batcher_rng: HostRng,
    pub(super) table: TieTable,
    dynamic: Option<DynamicState>,
    /// The lengths of `metrics.jsonl` and `ties.jsonl` when the checkpoint
    /// was written: a resume cuts the logs back to exactly these (absent in
    /// checkpoints of older versions, which are cut by step instead).
    #[serde(default)]
    pub(super) logs: Option<LogLengths>,
}

/// Byte lengths of the run's logs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct LogLengths {
    pub(super) metrics: u64,
    pub(super) ties: u64,
}

const STATE_VERSION: u32 = 1;

/// A checkpoint read from disk and checked: its state and tensors.
pub(super) struct Loaded {
    pub(super) path: PathBuf,
    pub(super) state: TrainState,
    params: TensorMap,
    moments: TensorMap,
    /// Newer checkpoints passed over, each with why.
    pub(super) skipped: Vec<(PathBuf, String)>,
}

impl Trainer {
    /// Writes the checkpoint of the current step (atomically) and removes
    /// the oldest beyond the `keep_checkpoints` newest. Refused when a
    /// parameter or moment is not finite: a diverged state never replaces a
    /// good checkpoint.
    pub fn save_checkpoint(&mut self) -> Result<()> {
        let logs = self.log_lengths()?;
        self.save_checkpoint_with(logs)
    }

    /// The current lengths of the run's logs.
    pub(super) fn log_lengths(&self) -> Result<LogLengths> {
        Ok(LogLengths {
            metrics: self.files()?.metrics.byte_len()?,
            ties: self.files()?.ties.byte_len()?,
        })
    }

    /// [`Trainer::save_checkpoint`] recording `logs` as what the checkpoint
    /// contains: the final one records the logs before the final
    /// evaluation, which a resume of the finished run does again.
    pub(super) fn save_checkpoint_with(&mut self, logs: LogLengths) -> Result<()> {
        let stats = self.opt.read_stats(self.model.backend().as_ref())?;
        if stats.skipped_in_a_row > 0 {
            // The weights are those of the last applied update, which may
            // be what made this step's loss or gradient non-finite.
            bail!(
                "training diverged: the update of step {} was skipped (its loss or gradient norm \
                 is not finite), so no checkpoint was written; {}",
                self.step,
                self.how_to_recover()
            );
        }
        let (model_t, opt_t) = collect_tensors(&self.model)?;
        for t in model_t.iter().chain(&opt_t) {
            let bad = t.data.iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                bail!(
                    "training diverged: at step {} tensor '{}' holds {bad} non-finite values \
                     (NaN or infinity), so no checkpoint was written; {}",
                    self.step,
                    t.name,
                    self.how_to_recover()
                );
            }
        }
        let state = self.train_state(&stats, Some(logs));
        let root = self.dir.join(run_dir::CHECKPOINTS);
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        files::write_dir_atomically(
            &root.join(step_name(self.step)),
            &[
                ("model.safetensors", files::safetensors_bytes(&model_t)?),
                ("optimizer.safetensors", files::safetensors_bytes(&opt_t)?),
                ("state.json", serde_json::to_vec_pretty(&state)?),
            ],
        )?;
        self.last_checkpoint = Some(self.step);
        prune(&root, self.cfg.train.keep_checkpoints)
    }

    /// Everything but the tensors that a checkpoint of this moment holds.
    fn train_state(&self, stats: &StepStats, logs: Option<LogLengths>) -> TrainState {
        TrainState {
            format_version: STATE_VERSION,
            step: self.step,
            tokens_seen: self.tokens_seen,
            elapsed_s: self.elapsed_s,
            optimizer: self.opt.state(stats),
            batcher_rng: self.batcher.rng().clone(),
            table: self.model.slots().table().clone(),
            dynamic: self.dynamic.clone(),
            logs,
        }
    }

    /// The checkpoint of this moment in memory, as the files it would
    /// write: what another replica is built from ([`Snapshot::load`]).
    pub(super) fn snapshot(&self) -> Result<Snapshot> {
        let stats = self.opt.read_stats(self.model.backend().as_ref())?;
        let (model_t, opt_t) = collect_tensors(&self.model)?;
        Ok(Snapshot {
            model: files::safetensors_bytes(&model_t)?,
            optimizer: files::safetensors_bytes(&opt_t)?,
            state: serde_json::to_vec(&self.train_state(&stats, None))?,
        })
    }

    /// What to do after a divergence: where the last good checkpoint is and
    /// the resume command with a lower learning rate.
    pub(super) fn how_to_recover(&self) -> String {
        let lower = self.cfg.train.lr / 4.0;
        let resume = format!(
            "continue from it with a lower learning rate: dyntie train --resume {} --lr {lower:e}",
            self.dir.display()
        );
        match self.last_checkpoint {
            Some(step) => format!("the checkpoint of step {step} is intact; {resume}"),
            None => format!(
                "this run has no checkpoint yet; start again with a lower --lr (now {:e}), or \
                 write checkpoints with --checkpoint-every N and {resume}",
                self.cfg.train.lr
            ),
        }
    }

    /// Puts a checkpoint into a trainer just assembled for the same run and
    /// table.
    pub(super) fn restore(&mut self, ckpt: Loaded) -> Result<()> {
        let state_path = ckpt.path.join("state.json");
        load_tensors(&self.model, &ckpt)?;
        let state = ckpt.state;
        self.opt
            .load_state(self.model.backend().as_ref(), &state.optimizer)?;
        self.reported_skips = state.optimizer.skipped;
        self.batcher.set_rng(state.batcher_rng);
        if let Some(d) = &state.dynamic {
            d.agent
                .check()
                .with_context(|| format!("{}: invalid agent state", state_path.display()))?;
        }
        ensure!(
            state.dynamic.is_some() == self.dynamic.is_some(),
            "{}: the checkpoint's tying policy does not match config.toml",
            state_path.display()
        );
        self.dynamic = state.dynamic;
        self.step = state.step;
        self.tokens_seen = state.tokens_seen;
        self.elapsed_s = state.elapsed_s;
        self.last_checkpoint = Some(state.step);
        Ok(())
    }
}

/// A checkpoint's three files in memory ([`Trainer::snapshot`]).
pub(super) struct Snapshot {
    pub(super) model: Vec<u8>,
    pub(super) optimizer: Vec<u8>,
    pub(super) state: Vec<u8>,
}

impl Snapshot {
    /// Reads the snapshot back as a checkpoint of a model of `n_layer`
    /// blocks; `from` names where it came from in errors.
    pub(super) fn load(&self, from: &Path, n_layer: usize) -> Result<Loaded> {
        let state: TrainState = serde_json::from_slice(&self.state)
            .with_context(|| format!("{}: the state is corrupt", from.display()))?;
        let state = check_state(state, n_layer)
            .with_context(|| format!("{} is not usable", from.display()))?;
        Ok(Loaded {
            path: from.to_path_buf(),
            state,
            params: files::parse_safetensors(&self.model, &from.join("model.safetensors"))?,
            moments: files::parse_safetensors(
                &self.optimizer,
                &from.join("optimizer.safetensors"),
            )?,
            skipped: Vec::new(),
        })
    }

    /// The snapshot as one message: each file's length, then its bytes.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [&self.model, &self.optimizer, &self.state] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Reads what [`Snapshot::to_bytes`] wrote.
    pub(super) fn from_bytes(mut bytes: &[u8]) -> Result<Snapshot> {
        let mut part = || -> Result<Vec<u8>> {
            ensure!(bytes.len() >= 8, "a replica state cut short");
            let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            ensure!(bytes.len() - 8 >= len, "a replica state cut short");
            let out = bytes[8..8 + len].to_vec();
            bytes = &bytes[8 + len..];
            Ok(out)
        };
        Ok(Snapshot {
            model: part()?,
            optimizer: part()?,
            state: part()?,
        })
    }
}

/// `step-00000120`: names that sort by step.
fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a folder named by [`step_name`].
fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The run's checkpoint folders, newest first: `checkpoints/step-N/` by
/// step (or its `.old` twin, left by a kill in the middle of replacing a
/// folder of the same step), then the single `checkpoint/` of older runs.
pub fn checkpoint_dirs(run: &Path) -> Vec<PathBuf> {
    let root = run.join(run_dir::CHECKPOINTS);
    let mut steps: Vec<(u64, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(step) = step_of(&name) {
                steps.push((step, e.path()));
            } else if let Some(step) = name.strip_suffix(".old").and_then(step_of) {
                if !root.join(step_name(step)).exists() {
                    steps.push((step, e.path()));
                }
            }
        }
    }
    steps.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out: Vec<PathBuf> = steps.into_iter().map(|(_, p)| p).collect();
    if let Ok(legacy) = files::readable_dir(&run.join(run_dir::LEGACY_CHECKPOINT)) {
        out.push(legacy);
    }
    out
}

/// Removes all but the newest `keep` checkpoints, and what interrupted
/// writes and removals left. A folder is renamed before it is removed, so
/// a kill during the removal never leaves a half-removed checkpoint under
/// a checkpoint's name.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut doomed: Vec<PathBuf> = Vec::new();
    let mut complete: Vec<(u64, PathBuf)> = Vec::new();
    for e in fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        match step_of(&name) {
            Some(step) => complete.push((step, e.path())),
            None if name.ends_with(".tmp") || name.ends_with(".del") => doomed.push(e.path()),
            None => {}
        }
    }
    complete.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, path) in complete.into_iter().skip(keep.max(1)) {
        let mut del = path.clone().into_os_string();
        del.push(".del");
        let del = PathBuf::from(del);
        fs::rename(&path, &del).with_context(|| format!("cannot move {} aside", path.display()))?;
        doomed.push(del);
    }
    for path in doomed {
        fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Reads and checks one checkpoint folder: its state (for a model of
/// `n_layer` blocks) and both tensor files, every value finite unless
/// `allow_non_finite`.
fn read_checkpoint(dir: &Path, n_layer: usize, allow_non_finite: bool) -> Result<Loaded> {
    let state = parse_state(&dir.join("state.json"), n_layer)?;
    let params = files::load_safetensors(&dir.join("model.safetensors"))?;
    let moments = files::load_safetensors(&dir.join("optimizer.safetensors"))?;
    if !allow_non_finite {
        for (file, map) in [
            ("model.safetensors", &params),
            ("optimizer.safetensors", &moments),
        ] {
            for (name, (_, data)) in map {
                let bad = data.iter().filter(|x| !x.is_finite()).count();
                ensure!(
                    bad == 0,
                    "{}: tensor '{name}' holds {bad} non-finite values (NaN or infinity)",
                    dir.join(file).display()
                );
            }
        }
    }
    Ok(Loaded {
        path: dir.to_path_buf(),
        state,
        params,
        moments,
        skipped: Vec::new(),
    })
}

/// The newest checkpoint of run `dir` that reads back whole and finite
/// (any finite check off with `allow_non_finite`), with the newer ones it
/// passed over.
pub(super) fn newest_good(dir: &Path, n_layer: usize, allow_non_finite: bool) -> Result<Loaded> {
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    for candidate in checkpoint_dirs(dir) {
        match read_checkpoint(&candidate, n_layer, allow_non_finite) {
            Ok(mut loaded) => {
                loaded.skipped = skipped;
                return Ok(loaded);
            }
            Err(e) => skipped.push((candidate, format!("{e:#}"))),
        }
    }
    if skipped.is_empty() {
        bail!(
            "no checkpoint in {}: the run has not written one yet (train with --checkpoint-every N)",
            dir.join(run_dir::CHECKPOINTS).display()
        );
    }
    let reasons: Vec<String> = skipped.iter().map(|(_, why)| why.clone()).collect();
    let non_finite = reasons.iter().any(|r| r.contains("non-finite"));
    bail!(
        "no usable checkpoint in {}: {}{}",
        dir.display(),
        reasons.join("; "),
        if non_finite {
            " (to look at a broken run anyway, add --allow-non-finite)"
        } else {
            ""
        }
    )
}

/// Parses and checks a `state.json` for a model of `n_layer` blocks.
pub fn parse_state_text(text: &str, n_layer: usize) -> Result<()> {
    check_state(serde_json::from_str(text)?, n_layer).map(|_| ())
}

fn parse_state(path: &Path, n_layer: usize) -> Result<TrainState> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let state: TrainState =
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?;
    check_state(state, n_layer).with_context(|| format!("{} is not usable", path.display()))
}

fn check_state(state: TrainState, n_layer: usize) -> Result<TrainState> {
    ensure!(
        state.format_version == STATE_VERSION,
        "checkpoint format {} is not the {} this dyntie writes",
        state.format_version,
        STATE_VERSION
    );
    ensure!(
        state.elapsed_s.is_finite() && state.elapsed_s >= 0.0,
        "elapsed_s {} is not a time",
        state.elapsed_s
    );
    state.table.check().context("invalid tie table")?;
    ensure!(
        state.table.n_layer() == n_layer,
        "the checkpoint has {} blocks but config.toml says {n_layer}",
        state.table.n_layer(),
    );
    if let Some(d) = &state.dynamic {
        d.agent.check().context("invalid agent state")?;
    }
    Ok(state)
}

/// The trained model of run `dir` (config `cfg`) from its newest good
/// checkpoint; the checkpoints passed over are described in `notes`.
pub fn load_model(
    dir: &Path,
    cfg: &RunConfig,
    backend: Arc<dyn Backend>,
    allow_non_finite: bool,
    notes: &mut Vec<String>,
) -> Result<Model> {
    let mc = cfg.model.clone();
    ensure!(
        mc.vocab_size > 0,
        "{}: config.toml has no resolved vocab_size",
        dir.display()
    );
    let ckpt = newest_good(dir, mc.n_layer, allow_non_finite)?;
    notes.extend(skipped_notes(&ckpt));
    // Evaluation, sampling and export keep full logits (no recomputation).
    let model = Model::with_table(backend, mc, cfg.train.seed, ckpt.state.table.clone())?;
    load_tensors(&model, &ckpt)?;
    Ok(model)
}

/// One line per checkpoint passed over: which, why, and which is used.
pub(super) fn skipped_notes(ckpt: &Loaded) -> Vec<String> {
    ckpt.skipped
        .iter()
        .map(|(path, why)| {
            format!(
                "warning: skipping {}: {why}; using {} (step {})",
                path.display(),
                ckpt.path.display(),
                ckpt.state.step
            )
        })
        .collect()
}

/// Parameters (model.safetensors) and AdamW moments (optimizer.safetensors):
/// the globals by name, and each live slot as `slot.{k}.{name}`.
fn collect_tensors(model: &Model) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>)> {
    let be = model.backend().as_ref();
    let (mut params, mut moments) = (Vec::new(), Vec::new());
    let mut add = |prefix: String, entries: &[ParamEntry], slot: &Slot| -> Result<()> {
        for e in entries {
            let name = format!("{prefix}{}", e.name);
            let shape = e.shape.clone();
            params.push(NamedTensor::new(
                &name,
                shape.clone(),
                be.download(e.used_view(slot.params.view()))?,
            ));
            moments.push(NamedTensor::new(
                format!("{name}.m"),
                shape.clone(),
                be.download(e.used_view(slot.adam_m.view()))?,
            ));
            moments.push(NamedTensor::new(
                format!("{name}.v"),
                shape,
                be.download(e.used_view(slot.adam_v.view()))?,
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
fn load_tensors(model: &Model, ckpt: &Loaded) -> Result<()> {
    let be = model.backend().as_ref();
    let p_path = ckpt.path.join("model.safetensors");
    let o_path = ckpt.path.join("optimizer.safetensors");
    let mut expected = 0usize;
    let mut load = |prefix: String, entries: &[ParamEntry], slot: &Slot| -> Result<()> {
        for e in entries {
            let name = format!("{prefix}{}", e.name);
            for (map, key, path, buf) in [
                (&ckpt.params, name.clone(), &p_path, &slot.params),
                (&ckpt.moments, format!("{name}.m"), &o_path, &slot.adam_m),
                (&ckpt.moments, format!("{name}.v"), &o_path, &slot.adam_v),
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
                be.upload(e.used_view(buf.view()), data)?;
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
        ckpt.params.len() == expected,
        "{}: {} tensors, but the model has {expected}: the checkpoint belongs to another model",
        p_path.display(),
        ckpt.params.len()
    );
    Ok(())
}
