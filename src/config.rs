//! The resolved configuration of a run: a preset, then a TOML file, then
//! command-line flags, each overriding the last. The result is written to the
//! run folder as `config.toml`, so a run can always be repeated exactly.

use crate::tying::settings::AgentSettings;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The model's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    /// Context length (the longest sequence, and the size of wpe).
    pub n_ctx: usize,
    /// Vocabulary size. 0 means "take it from the dataset's tokenizer".
    pub vocab_size: usize,
    pub dropout: f32,
    pub bias: bool,
}

/// Optimization and the schedule of the loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// Optimizer steps.
    pub steps: usize,
    pub lr: f32,
    /// `constant` or `cosine` (linear warmup, then cosine to `min_lr`).
    pub schedule: String,
    pub warmup_steps: usize,
    pub min_lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f32,
    pub seed: u64,
    /// Steps between progress log lines in metrics.jsonl.
    pub log_every: usize,
    /// Steps between validation passes; 0 evaluates only at the end.
    pub eval_every: usize,
    /// Limit on validation windows per periodic pass (0 = the whole split).
    pub eval_max_windows: usize,
    /// Limit on windows of the final valid and test passes (0 = the whole
    /// split, the default; a limit is for quick experiments and is recorded
    /// in config.toml).
    #[serde(default)]
    pub final_eval_max_windows: usize,
    /// Steps between checkpoints; 0 writes one only at the end.
    pub checkpoint_every: usize,
    /// Activation checkpointing: recompute each block's activations in its
    /// backward instead of keeping them (`--recompute`).
    #[serde(default)]
    pub recompute: bool,
}

/// Which layers share weights, and how the agent decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TyingSettings {
    /// dynamic | none | all | every:K | random | pattern:0,0,1,.. | cyclic:K | sequence | reverse
    pub policy: String,
    /// shared: every block on a slot adds its gradient; frozen: only the owner's.
    pub tie_grad: String,
    /// independent | zero: the table before the first decision.
    pub init_ties: String,
    /// Training steps between two agent decisions.
    pub agent_k: usize,
    /// Reproduce the authors' code instead of the clean reading (TYING.md).
    pub paper_compat: bool,
    /// Reward cost per trainable block (lambda in TYING.md).
    pub param_cost: f32,
    /// How the agent sees the state: raw (block indices, the paper's) or
    /// normalized (indices / (L - 1)).
    #[serde(default = "raw")]
    pub agent_input: String,
}

/// Where the tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// `synthetic`, or a folder written by `dyntie prepare`.
    pub source: String,
    /// Tokens per split of the synthetic corpus (train; valid and test get a tenth).
    pub synthetic_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: String,
    pub backend: String,
    pub model: ModelSettings,
    pub train: TrainSettings,
    pub tying: TyingSettings,
    /// The dynamic policy's settings beyond the paper's (see `tying::settings`).
    #[serde(default = "AgentSettings::legacy")]
    pub agent: AgentSettings,
    pub data: DataSettings,
}

pub const PRESETS: &[&str] = &[
    "tiny",
    "small",
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "paper",
];

impl RunConfig {
    /// The named preset. `small` is what `dyntie train` runs with no arguments.
    pub fn preset(name: &str) -> Result<RunConfig> {
        let model = |n_layer, n_embd, n_head, n_ctx| ModelSettings {
            n_layer,
            n_embd,
            n_head,
            n_ctx,
            vocab_size: 0,
            dropout: 0.0,
            bias: true,
        };
        let mut cfg = RunConfig {
            preset: name.to_string(),
            backend: "auto".into(),
            model: model(6, 128, 4, 64),
            train: TrainSettings {
                batch: 16,
                grad_accum: 1,
                steps: 300,
                lr: 1e-3,
                schedule: "cosine".into(),
                warmup_steps: 20,
                min_lr: 1e-4,
                weight_decay: 0.1,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                grad_clip: 1.0,
                seed: 1337,
                log_every: 10,
                eval_every: 100,
                eval_max_windows: 64,
                final_eval_max_windows: 0,
                checkpoint_every: 0,
                recompute: false,
            },
            tying: TyingSettings {
                policy: "dynamic".into(),
                tie_grad: "shared".into(),
                init_ties: "independent".into(),
                agent_k: 4,
                paper_compat: false,
                param_cost: 0.0,
                agent_input: "raw".into(),
            },
            agent: AgentSettings::legacy(),
            data: DataSettings {
                source: "synthetic".into(),
                synthetic_tokens: 400_000,
            },
        };
        match name {
            "tiny" => {
                cfg.model = model(4, 64, 4, 32);
                cfg.train.batch = 8;
                cfg.train.steps = 60;
                cfg.train.eval_every = 0;
                cfg.train.warmup_steps = 5;
                cfg.data.synthetic_tokens = 50_000;
            }
            "small" => {}
            "gpt2" => cfg.model = model(12, 768, 12, 1024),
            "gpt2-medium" => cfg.model = model(24, 1024, 16, 1024),
            "gpt2-large" => cfg.model = model(36, 1280, 20, 1024),
            "gpt2-xl" => cfg.model = model(48, 1600, 25, 1024),
            "paper" => {
                cfg.model = model(48, 1600, 16, 256);
                cfg.model.dropout = 0.2;
                cfg.train.batch = 16;
                cfg.train.lr = 1e-4;
                cfg.train.schedule = "constant".into();
                cfg.train.warmup_steps = 0;
                cfg.train.weight_decay = 0.01;
                cfg.train.beta2 = 0.999;
                cfg.train.grad_clip = 1.0;
                cfg.train.steps = 300 * 47 * 4;
            }
            other => bail!(
                "unknown preset '{other}': choose one of {}",
                PRESETS.join(", ")
            ),
        }
        if name.starts_with("gpt2") {
            cfg.train.batch = 8;
            cfg.train.lr = 6e-4;
            cfg.train.min_lr = 6e-5;
            cfg.train.warmup_steps = 100;
            cfg.train.steps = 5000;
            cfg.model.dropout = 0.1;
        }
        Ok(cfg)
    }

    /// Overrides this configuration with the fields present in a TOML file
    /// (any subset of the sections and fields of `config.toml`).
    pub fn merge_toml_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        self.merge_toml_str(&text)
            .with_context(|| format!("in config file {}", path.display()))
    }

    pub fn merge_toml_str(&mut self, text: &str) -> Result<()> {
        let overlay: toml::Table = toml::from_str(text).context("not valid TOML")?;
        let mut base = toml::Table::try_from(&*self)?;
        merge_tables(&mut base, overlay);
        *self = base
            .try_into()
            .context("a field has the wrong type or name")?;
        Ok(())
    }

    /// Reads a resolved `config.toml` as written into a run folder.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid dyntie config", path.display()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serializes")
    }

    /// Checks what no later stage can repair, with messages that name the flag.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        if m.n_layer == 0 || m.n_embd == 0 || m.n_head == 0 || m.n_ctx == 0 {
            bail!("--layers, --d-model, --heads and --ctx must all be at least 1");
        }
        if !m.n_embd.is_multiple_of(m.n_head) {
            bail!(
                "--heads {} does not divide --d-model {}: choose a head count that divides the width",
                m.n_head,
                m.n_embd
            );
        }
        if !(0.0..1.0).contains(&m.dropout) {
            bail!("--dropout {} must be in [0, 1)", m.dropout);
        }
        if t.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if t.batch == 0 || t.grad_accum == 0 {
            bail!("--batch and --grad-accum must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", t.lr);
        }
        if !["constant", "cosine"].contains(&t.schedule.as_str()) {
            bail!(
                "--schedule '{}' is unknown: use constant or cosine",
                t.schedule
            );
        }
        if !["shared", "frozen"].contains(&self.tying.tie_grad.as_str()) {
            bail!(
                "--tie-grad '{}' is unknown: use shared or frozen",
                self.tying.tie_grad
            );
        }
        if !["independent", "zero"].contains(&self.tying.init_ties.as_str()) {
            bail!(
                "--init-ties '{}' is unknown: use independent or zero",
                self.tying.init_ties
            );
        }
        if !["raw", "normalized"].contains(&self.tying.agent_input.as_str()) {
            bail!(
                "--agent-input '{}' is unknown: use raw or normalized",
                self.tying.agent_input
            );
        }
        if self.tying.agent_k == 0 {
            bail!("--agent-k must be at least 1");
        }
        self.agent
            .validate(self.tying.paper_compat, self.tying.param_cost)?;
        if !["auto", "cpu", "cuda", "emu"].contains(&self.backend.as_str()) {
            bail!(
                "--backend '{}' is unknown: use auto, cpu, cuda or emu",
                self.backend
            );
        }
        Ok(())
    }
}

fn raw() -> String {
    "raw".into()
}

fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_and_validates() {
        for name in PRESETS {
            let cfg = RunConfig::preset(name).unwrap();
            cfg.validate().unwrap();
            let again: RunConfig = toml::from_str(&cfg.to_toml()).unwrap();
            assert_eq!(again, cfg);
        }
        let paper = RunConfig::preset("paper").unwrap();
        assert_eq!(
            (
                paper.model.n_layer,
                paper.model.n_embd,
                paper.model.n_head,
                paper.model.n_ctx
            ),
            (48, 1600, 16, 256)
        );
        assert_eq!(paper.train.batch, 16);
        assert_eq!(paper.model.dropout, 0.2);
    }

    #[test]
    fn unknown_preset_is_a_clear_error() {
        let err = RunConfig::preset("huge").unwrap_err().to_string();
        assert!(
            err.contains("unknown preset 'huge'") && err.contains("tiny"),
            "{err}"
        );
    }

    #[test]
    fn toml_overrides_only_the_fields_it_names() {
        let mut cfg = RunConfig::preset("small").unwrap();
        cfg.merge_toml_str("[model]\nn_layer = 3\n[train]\nlr = 0.01\n")
            .unwrap();
        assert_eq!(cfg.model.n_layer, 3);
        assert_eq!(cfg.train.lr, 0.01);
        assert_eq!(cfg.model.n_embd, 128);
        let err = cfg.merge_toml_str("[model]\nlayers = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("layers"), "{err:#}");
    }

    #[test]
    fn impossible_shapes_are_rejected() {
        let mut cfg = RunConfig::preset("small").unwrap();
        cfg.model.n_head = 5;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--heads 5"));
        let mut cfg = RunConfig::preset("small").unwrap();
        cfg.train.steps = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("--steps"));
    }
}
