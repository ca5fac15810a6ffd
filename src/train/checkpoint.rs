//! A run's checkpoint folder: parameters (`model.safetensors`), AdamW
//! moments (`optimizer.safetensors`) and everything else a resume needs to
//! continue bit for bit (`state.json`). Saving, checking, restoring, and
//! loading a trained model for eval, sample and export. The files are
//! written atomically by [`crate::checkpoint`].

use super::agent_driver::DynamicState;
use super::run_dir;
use super::Trainer;
use crate::checkpoint::{self as files, NamedTensor};
use crate::config::RunConfig;
use crate::model::{Gpt2, ParamEntry};
use crate::ops::{Backend, BackendExt};
use crate::optim::AdamWState;
use crate::rng::HostRng;
use crate::tying::slots::Slot;
use crate::tying::table::TieTable;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
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
}

const STATE_VERSION: u32 = 1;

impl Trainer {
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
        files::write_dir_atomically(
            &self.dir.join(run_dir::CHECKPOINT),
            &[
                ("model.safetensors", files::safetensors_bytes(&model_t)?),
                ("optimizer.safetensors", files::safetensors_bytes(&opt_t)?),
                ("state.json", serde_json::to_vec_pretty(&state)?),
            ],
        )
    }

    /// Puts a checkpoint (folder `ckpt`, its `state`) into a trainer just
    /// assembled for the same run and table.
    pub(super) fn restore(&mut self, ckpt: &Path, state: TrainState) -> Result<()> {
        let state_path = ckpt.join("state.json");
        load_tensors(&self.model, ckpt)?;
        self.opt.load_state(&state.optimizer);
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
        Ok(())
    }
}

/// The checkpoint folder of run `dir` and its state, checked, for a model
/// of `n_layer` blocks.
pub(super) fn read_state(dir: &Path, n_layer: usize) -> Result<(PathBuf, TrainState)> {
    let ckpt = files::readable_dir(&dir.join(run_dir::CHECKPOINT))?;
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
    ensure!(
        state.table.n_layer() == n_layer,
        "{}: the checkpoint has {} blocks but config.toml says {n_layer}",
        state_path.display(),
        state.table.n_layer(),
    );
    Ok((ckpt, state))
}

/// The trained model of run `dir` (config `cfg`) from its checkpoint.
pub fn load_model(dir: &Path, cfg: &RunConfig, backend: Arc<dyn Backend>) -> Result<Gpt2> {
    let mc = cfg.model.clone();
    ensure!(
        mc.vocab_size > 0,
        "{}: config.toml has no resolved vocab_size",
        dir.display()
    );
    let (ckpt, state) = read_state(dir, mc.n_layer)?;
    // Evaluation, sampling and export keep full logits (no recomputation).
    let model = Gpt2::with_table(backend, mc, cfg.train.seed, state.table)?;
    load_tensors(&model, &ckpt)?;
    Ok(model)
}

/// Parameters (model.safetensors) and AdamW moments (optimizer.safetensors):
/// the globals by name, and each live slot as `slot.{k}.{name}`.
fn collect_tensors(model: &Gpt2) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>)> {
    let be = model.backend().as_ref();
    let (mut params, mut moments) = (Vec::new(), Vec::new());
    let mut add = |prefix: String, entries: &[ParamEntry], slot: &Slot| -> Result<()> {
        for e in entries {
            let name = format!("{prefix}{}", e.name);
            let shape = e.shape.clone();
            params.push(NamedTensor::new(
                &name,
                shape.clone(),
                be.download(e.view(slot.params.view()))?,
            ));
            moments.push(NamedTensor::new(
                format!("{name}.m"),
                shape.clone(),
                be.download(e.view(slot.adam_m.view()))?,
            ));
            moments.push(NamedTensor::new(
                format!("{name}.v"),
                shape,
                be.download(e.view(slot.adam_v.view()))?,
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
    let params = files::load_safetensors(&p_path)?;
    let moments = files::load_safetensors(&o_path)?;
    let mut expected = 0usize;
    let mut load = |prefix: String, entries: &[ParamEntry], slot: &Slot| -> Result<()> {
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
                be.upload(e.view(buf.view()), data)?;
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
