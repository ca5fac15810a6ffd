//! The resolved configuration of a run: a preset, then a TOML file, then
//! command-line flags, each overriding the last. The result is written to the
//! run folder as `config.toml`, so a run can always be repeated exactly.

use crate::data::TokenizerKind;
use crate::model::{Arch, ModelConfig};
use crate::precision::Precision;
use crate::tying::agent::StateEncoding;
use crate::tying::policy::TyingPolicy;
use crate::tying::settings::AgentSettings;
use crate::tying::table::{InitTies, TieGrad, TieOptions};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A named starting configuration (`--preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// 4 blocks x 64, context 32: a few seconds on a CPU.
    Tiny,
    /// 6 blocks x 128, context 64: what `dyntie train` runs with no flags.
    Small,
    /// GPT-2 124M.
    #[value(name = "gpt2")]
    Gpt2,
    /// GPT-2 355M.
    #[value(name = "gpt2-medium")]
    Gpt2Medium,
    /// GPT-2 774M.
    #[value(name = "gpt2-large")]
    Gpt2Large,
    /// GPT-2 1.5B.
    #[value(name = "gpt2-xl")]
    Gpt2Xl,
    /// The paper's setup: 48 blocks x 1600, 16 heads, context 256.
    Paper,
    /// The paper's causal BERT: transformers' default BertConfig (12 blocks
    /// x 768, 12 heads, 512 positions) with the GPT-2 vocabulary.
    Bert,
    /// A causal BERT of `tiny`'s size: a few seconds on a CPU.
    #[value(name = "bert-tiny")]
    BertTiny,
}
crate::choice_text!(Preset, "preset");

/// Where the ops run (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CUDA when a GPU and the kernels are present, else the CPU.
    Auto,
    /// The pure-Rust reference backend.
    Cpu,
    /// The CUDA kernels on an NVIDIA GPU.
    Cuda,
    /// The CUDA kernels on the CPU emulator (for tests; much slower than cpu).
    Emu,
}
crate::choice_text!(BackendKind, "backend");

/// The learning-rate schedule (`--schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    /// The peak learning rate throughout.
    Constant,
    /// Linear warmup, then cosine down to `min_lr` at the last step.
    Cosine,
}
crate::choice_text!(Schedule, "schedule");

/// How the agent sees the tie state (`--agent-input`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AgentInput {
    /// Block indices as numbers (the paper's).
    #[default]
    Raw,
    /// Block indices divided by L - 1.
    Normalized,
}
crate::choice_text!(AgentInput, "agent input");

impl AgentInput {
    /// The agent's encoding of the state.
    pub fn encoding(self) -> StateEncoding {
        match self {
            AgentInput::Raw => StateEncoding::Raw,
            AgentInput::Normalized => StateEncoding::Normalized,
        }
    }
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
    pub schedule: Schedule,
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
    /// Checkpoints kept in `checkpoints/`, the newest ones; a resume falls
    /// back to an older one when a newer one does not read back whole.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Activation checkpointing: recompute each block's activations in its
    /// backward instead of keeping them (`--recompute`).
    #[serde(default)]
    pub recompute: bool,
}

fn default_keep_checkpoints() -> usize {
    2
}

/// Which layers share weights, and how the agent decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TyingSettings {
    /// dynamic | none | all | every:K | random | pattern:0,0,1,.. | cyclic:K | sequence | reverse
    pub policy: TyingPolicy,
    /// shared: every block on a slot adds its gradient; frozen: only the owner's.
    pub tie_grad: TieGrad,
    /// independent | zero: the table before the first decision.
    pub init_ties: InitTies,
    /// Training steps between two agent decisions.
    pub agent_k: usize,
    /// Reproduce the authors' code instead of the clean reading (TYING.md).
    pub paper_compat: bool,
    /// Reward cost per trainable block (lambda in TYING.md).
    pub param_cost: f32,
    /// How the agent sees the state: raw (block indices, the paper's) or
    /// normalized (indices / (L - 1)).
    #[serde(default)]
    pub agent_input: AgentInput,
}

impl RunConfig {
    /// The tie options these settings ask for: `--paper-compat` brings the
    /// paper code's (frozen ties, untie keeps the alias) but keeps `--init-ties`;
    /// otherwise `--tie-grad` and `--tie-merge` apply.
    pub fn tie_options(&self) -> TieOptions {
        let tying = &self.tying;
        if tying.paper_compat {
            TieOptions {
                init: tying.init_ties,
                ..TieOptions::paper()
            }
        } else {
            TieOptions {
                init: tying.init_ties,
                paper_compat: false,
                tie_grad: tying.tie_grad,
                merge: self.agent.tie_merge,
            }
        }
    }
}

/// Where the tokens come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// `synthetic`, or a folder written by `dyntie prepare`.
    pub source: String,
    /// Tokens per split of the synthetic corpus (train; valid and test get a tenth).
    pub synthetic_tokens: usize,
    /// The content hash of the prepared dataset the run trained on (from
    /// its meta.json), so eval and resume notice a dataset prepared again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// The tokenizer of those tokens (sample decodes with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerKind>,
}

impl DataSettings {
    /// The prepared dataset folder; `None` for the built-in synthetic corpus.
    pub fn prepared_dir(&self) -> Option<&Path> {
        (self.source != "synthetic").then(|| Path::new(&self.source))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: Preset,
    pub backend: BackendKind,
    /// `--precision`. `None` until a run starts, which takes its backend's
    /// default ([`Precision::default_for`]) and writes it into config.toml;
    /// a run's config.toml without it predates mixed precision and is fp32
    /// (see [`RunConfig::load`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    pub model: ModelConfig,
    pub train: TrainSettings,
    pub tying: TyingSettings,
    /// The dynamic policy's settings beyond the paper's (see `tying::settings`).
    #[serde(default = "AgentSettings::legacy")]
    pub agent: AgentSettings,
    pub data: DataSettings,
}

impl RunConfig {
    /// The preset of that name (`tiny`, `small`, ...; see [`Preset`]).
    pub fn preset(name: &str) -> Result<RunConfig> {
        Ok(RunConfig::for_preset(name.parse()?))
    }

    /// A preset's configuration. `small` is what `dyntie train` runs with no arguments.
    pub fn for_preset(preset: Preset) -> RunConfig {
        let model = |n_layer, n_embd, n_head, n_ctx| ModelConfig {
            arch: Arch::Gpt2,
            n_layer,
            n_embd,
            n_head,
            n_ctx,
            vocab_size: 0,
            dropout: 0.0,
            bias: true,
        };
        let mut cfg = RunConfig {
            preset,
            backend: BackendKind::Auto,
            precision: None,
            model: model(6, 128, 4, 64),
            train: TrainSettings {
                batch: 16,
                grad_accum: 1,
                steps: 300,
                lr: 1e-3,
                schedule: Schedule::Cosine,
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
                keep_checkpoints: 2,
                recompute: false,
            },
            tying: TyingSettings {
                policy: TyingPolicy::Dynamic,
                tie_grad: TieGrad::Shared,
                init_ties: InitTies::Independent,
                agent_k: 4,
                paper_compat: false,
                param_cost: 0.0,
                agent_input: AgentInput::Raw,
            },
            agent: AgentSettings::legacy(),
            data: DataSettings {
                source: "synthetic".into(),
                synthetic_tokens: 400_000,
                dataset_id: None,
                tokenizer: None,
            },
        };
        match preset {
            Preset::Tiny => {
                cfg.model = model(4, 64, 4, 32);
                cfg.train.batch = 8;
                cfg.train.steps = 60;
                cfg.train.eval_every = 0;
                cfg.train.warmup_steps = 5;
                cfg.data.synthetic_tokens = 50_000;
            }
            Preset::Small => {}
            Preset::Gpt2 => cfg.model = model(12, 768, 12, 1024),
            Preset::Gpt2Medium => cfg.model = model(24, 1024, 16, 1024),
            Preset::Gpt2Large => cfg.model = model(36, 1280, 20, 1024),
            Preset::Gpt2Xl => cfg.model = model(48, 1600, 25, 1024),
            Preset::Bert => {
                cfg.model = model(12, 768, 12, 512);
                cfg.model.arch = Arch::Bert;
            }
            Preset::BertTiny => {
                cfg = RunConfig::for_preset(Preset::Tiny);
                cfg.preset = preset;
                cfg.model.arch = Arch::Bert;
            }
            Preset::Paper => {
                cfg.model = model(48, 1600, 16, 256);
                cfg.model.dropout = 0.2;
                cfg.train.batch = 16;
                cfg.train.lr = 1e-4;
                cfg.train.schedule = Schedule::Constant;
                cfg.train.warmup_steps = 0;
                cfg.train.weight_decay = 0.01;
                cfg.train.beta2 = 0.999;
                cfg.train.grad_clip = 1.0;
                cfg.train.steps = 300 * 47 * 4;
            }
        }
        if matches!(
            preset,
            Preset::Gpt2 | Preset::Gpt2Medium | Preset::Gpt2Large | Preset::Gpt2Xl | Preset::Bert
        ) {
            cfg.train.batch = 8;
            cfg.train.lr = 6e-4;
            cfg.train.min_lr = 6e-5;
            cfg.train.warmup_steps = 100;
            cfg.train.steps = 5000;
            cfg.model.dropout = 0.1;
        }
        cfg
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
        let overlay: toml::Table = toml::from_str(text)
            .map_err(|e| toml_error(&e, text))
            .context("not valid TOML")?;
        let mut base = toml::Table::try_from(&*self)?;
        merge_tables(&mut base, overlay);
        *self = base
            .try_into()
            .map_err(|e| toml_error(&e, text))
            .context("a field has the wrong type or name")?;
        Ok(())
    }

    /// Reads a resolved `config.toml` as written into a run folder.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml_str(&text)
            .with_context(|| format!("{} is not a valid dyntie config", path.display()))
    }

    /// The precision a run on `backend` (`Backend::name`) uses: the one
    /// asked for, else the backend's default.
    pub fn precision_on(&self, backend: &str) -> Precision {
        self.precision
            .unwrap_or_else(|| Precision::default_for(backend))
    }

    /// Parses the text of a resolved `config.toml` (not validated). One
    /// without `precision` was written before mixed precision: fp32.
    pub fn from_toml_str(text: &str) -> Result<RunConfig> {
        let mut cfg: RunConfig = toml::from_str(text).map_err(|e| toml_error(&e, text))?;
        cfg.precision.get_or_insert(Precision::Fp32);
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serializes")
    }

    /// Checks every field, with messages that name the flag (where there
    /// is one) and the field of config.toml, wherever the value came from
    /// (a flag, a `--config` file, a run's config.toml on resume).
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        self.model.validate_shape()?;
        if self.model.n_layer > MAX_LAYERS {
            bail!(
                "--layers {} (n_layer) is more than this engine plans for ({MAX_LAYERS})",
                self.model.n_layer
            );
        }
        let at_least_one = [
            ("--steps", "steps", t.steps),
            ("--batch", "batch", t.batch),
            ("--grad-accum", "grad_accum", t.grad_accum),
            ("--agent-k", "agent_k", self.tying.agent_k),
            ("--keep-checkpoints", "keep_checkpoints", t.keep_checkpoints),
            ("", "[train] log_every", t.log_every),
            ("", "[data] synthetic_tokens", self.data.synthetic_tokens),
        ];
        for (flag, field, v) in at_least_one {
            if v == 0 {
                bail!("{} must be at least 1", name(flag, field));
            }
        }
        for (flag, field, v) in [
            ("--steps", "steps", t.steps),
            ("", "[train] warmup_steps", t.warmup_steps),
        ] {
            if v > u32::MAX as usize {
                bail!("{} {v} is more than {} steps", name(flag, field), u32::MAX);
            }
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("--lr (lr) must be a positive number, got {}", t.lr);
        }
        let finite = |flag: &str, field: &str, v: f32, ok: bool, range: &str| -> Result<()> {
            if !(v.is_finite() && ok) {
                bail!("{} must be {range}, got {v}", name(flag, field));
            }
            Ok(())
        };
        finite(
            "--min-lr",
            "min_lr",
            t.min_lr,
            t.min_lr >= 0.0 && t.min_lr <= t.lr,
            &format!("in [0, lr = {}] (the floor of the cosine schedule)", t.lr),
        )?;
        finite(
            "",
            "[train] weight_decay",
            t.weight_decay,
            t.weight_decay >= 0.0,
            "a number >= 0",
        )?;
        for (field, v) in [("[train] beta1", t.beta1), ("[train] beta2", t.beta2)] {
            finite("", field, v, (0.0..1.0).contains(&v), "in [0, 1)")?;
        }
        finite("", "[train] eps", t.eps, t.eps > 0.0, "a number > 0")?;
        finite(
            "",
            "[train] grad_clip",
            t.grad_clip,
            t.grad_clip >= 0.0,
            "a number >= 0 (0 turns clipping off)",
        )?;
        finite(
            "--param-cost",
            "param_cost",
            self.tying.param_cost,
            self.tying.param_cost >= 0.0,
            "a number >= 0",
        )?;
        self.agent
            .validate(self.tying.paper_compat, self.tying.param_cost)?;
        self.tying.policy.check_blocks(self.model.n_layer)?;
        Ok(())
    }
}

/// The most blocks a model may have (far beyond any model trained; it
/// bounds the per-block bookkeeping allocated before the memory check).
pub const MAX_LAYERS: usize = 4096;

/// "--flag (field)", or "[section] field (...)" for fields without a flag.
fn name(flag: &str, field: &str) -> String {
    if flag.is_empty() {
        format!("{field} (of a --config file or the run's config.toml)")
    } else {
        format!("{flag} ({field})")
    }
}

/// A TOML error in one line: where (the line of `text`, or the key) and what.
fn toml_error(e: &toml::de::Error, text: &str) -> anyhow::Error {
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            anyhow::anyhow!("line {line}: {}", e.message().trim())
        }
        None => {
            let text = e.to_string();
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            anyhow::anyhow!("{}", lines.join(" ").trim())
        }
    }
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
        for &preset in Preset::value_variants() {
            let cfg = RunConfig::for_preset(preset);
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
        let bert = RunConfig::preset("bert").unwrap().model;
        assert_eq!(
            (
                bert.arch,
                bert.n_layer,
                bert.n_embd,
                bert.n_head,
                bert.n_ctx
            ),
            (Arch::Bert, 12, 768, 12, 512)
        );
        // BertConfig's hidden_dropout_prob.
        assert_eq!(bert.dropout, 0.1);
        let tiny = RunConfig::preset("bert-tiny").unwrap();
        assert_eq!(tiny.preset, Preset::BertTiny);
        assert_eq!(
            tiny.model,
            ModelConfig {
                arch: Arch::Bert,
                ..RunConfig::preset("tiny").unwrap().model
            }
        );
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

    /// A config.toml as the first release wrote it: without the fields
    /// added since (`arch`, `final_eval_max_windows`, `recompute`, `agent_input`),
    /// which take their defaults.
    const FIRST_RELEASE_CONFIG: &str = r#"
preset = "tiny"
backend = "auto"

[model]
n_layer = 4
n_embd = 64
n_head = 4
n_ctx = 32
vocab_size = 512
dropout = 0.0
bias = true

[train]
batch = 8
grad_accum = 1
steps = 1
lr = 0.001
schedule = "cosine"
warmup_steps = 5
min_lr = 0.0001
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
eps = 0.00000001
grad_clip = 1.0
seed = 1337
log_every = 10
eval_every = 0
eval_max_windows = 64
checkpoint_every = 0

[tying]
policy = "every:2"
tie_grad = "shared"
init_ties = "independent"
agent_k = 4
paper_compat = false
param_cost = 0.0

[data]
source = "synthetic"
synthetic_tokens = 50000
"#;

    #[test]
    fn a_config_toml_without_the_newer_fields_still_loads() {
        let cfg: RunConfig = toml::from_str(FIRST_RELEASE_CONFIG).unwrap();
        assert_eq!(cfg.tying.policy, TyingPolicy::Every(2));
        assert_eq!(cfg.tying.agent_input, AgentInput::Raw);
        assert_eq!(cfg.train.schedule, Schedule::Cosine);
        assert_eq!(cfg.train.final_eval_max_windows, 0);
        assert!(!cfg.train.recompute);
        assert_eq!(cfg.model.arch, Arch::Gpt2);
        cfg.validate().unwrap();
        // Written again, it is the same text plus the new fields.
        let again = cfg.to_toml();
        for line in FIRST_RELEASE_CONFIG.lines().filter(|l| !l.is_empty()) {
            assert!(again.contains(line), "'{line}' not in:\n{again}");
        }
    }

    #[test]
    fn a_run_without_a_precision_is_fp32_and_new_runs_take_the_backends_default() {
        let dir = std::env::temp_dir().join(format!("dyntie-precision-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, FIRST_RELEASE_CONFIG).unwrap();
        let old = RunConfig::load(&path).unwrap();
        assert_eq!(old.precision, Some(Precision::Fp32));
        assert_eq!(old.precision_on("cuda"), Precision::Fp32);
        let mut cfg = RunConfig::for_preset(Preset::Small);
        assert_eq!(cfg.precision_on("cuda"), Precision::Bf16);
        assert_eq!(cfg.precision_on("cpu"), Precision::Fp32);
        assert_eq!(cfg.precision_on("emu"), Precision::Fp32);
        cfg.merge_toml_str("precision = \"bf16\"\n").unwrap();
        assert_eq!(cfg.precision_on("cpu"), Precision::Bf16);
        std::fs::write(&path, cfg.to_toml()).unwrap();
        assert_eq!(
            RunConfig::load(&path).unwrap().precision,
            Some(Precision::Bf16)
        );
        let err = cfg.merge_toml_str("precision = \"fp16\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown precision 'fp16': use fp32 or bf16"),
            "{err:#}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_option_values_in_toml_are_rejected_with_the_valid_ones() {
        let dir = std::env::temp_dir().join(format!("dyntie-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let bad = FIRST_RELEASE_CONFIG.replace("\"cosine\"", "\"cosin\"");
        std::fs::write(&path, bad).unwrap();
        let err = format!("{:#}", RunConfig::load(&path).unwrap_err());
        assert!(
            err.contains("config.toml is not a valid dyntie config: line 19: unknown schedule 'cosin': use constant or cosine"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
        let mut cfg = RunConfig::for_preset(Preset::Small);
        for (toml, needle) in [
            (
                "[train]\nschedule = \"cosin\"\n",
                "unknown schedule 'cosin': use constant or cosine",
            ),
            (
                "[tying]\ntie_grad = \"both\"\n",
                "unknown tie-grad mode 'both': use shared or frozen",
            ),
            (
                "[tying]\ninit_ties = \"ones\"\n",
                "unknown init-ties mode 'ones': use independent or zero",
            ),
            (
                "[tying]\nagent_input = \"scaled\"\n",
                "unknown agent input 'scaled': use raw or normalized",
            ),
            (
                "backend = \"gpu\"\n",
                "unknown backend 'gpu': use auto, cpu, cuda or emu",
            ),
            ("[tying]\npolicy = \"sometimes\"\n", "unknown policy"),
            (
                "[model]\narch = \"roberta\"\n",
                "unknown architecture 'roberta': use gpt2 or bert",
            ),
            ("preset = \"huge\"\n", "unknown preset 'huge'"),
        ] {
            let err = format!("{:#}", cfg.merge_toml_str(toml).unwrap_err());
            assert!(err.contains(needle), "{toml}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert_eq!(
            cfg,
            RunConfig::for_preset(Preset::Small),
            "a rejected file changes nothing"
        );
    }
}
