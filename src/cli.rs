//! The `dyntie` command line: argument definitions and how flags override
//! the resolved configuration.

use crate::config::{AgentInput, BackendKind, Preset, RunConfig, Schedule};
use crate::data::{Corpus, Split, TokenizerKind};
use crate::model::Arch;
use crate::precision::Precision;
use crate::tying::policy::TyingPolicy;
use crate::tying::settings::{AgentFlags, AgentSettings};
use crate::tying::table::{InitTies, TieGrad};
use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Train GPT-2-style transformers with dynamic layer tying (Hay & Wolf, ICLR 2024).
///
/// A small Q-learning agent decides every few steps, block by block, whether a
/// transformer block trains its own weights or reuses an earlier block's. Tied
/// blocks share one buffer, so parameters, gradients and optimizer state
/// shrink. Start with `dyntie train` (no arguments): a small model on a
/// built-in synthetic corpus, on the GPU if there is one, else on the CPU.
#[derive(Parser, Debug)]
#[command(name = "dyntie", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (with no flags: a small model with dynamic tying on the synthetic corpus).
    Train(Box<TrainArgs>),
    /// Perplexity of a trained run on a split, or LAMBADA last-word accuracy.
    Eval(EvalArgs),
    /// Tokenize a corpus into train/valid/test token files.
    Prepare(PrepareArgs),
    /// Generate text from a trained run.
    Sample(SampleArgs),
    /// Write a run's weights in another layout (Hugging Face GPT-2 or BERT).
    Export(ExportArgs),
    /// Memory and throughput benchmarks.
    Bench(Box<BenchArgs>),
    /// Check the GPU: every kernel against the CPU reference, then a short training run.
    Doctor(DoctorArgs),
    /// Train a grid of configurations x variants x seeds one run after another
    /// (resuming where it stopped) and summarise it: tables and figures.
    Experiment(ExperimentArgs),
}

/// Model shape flags, shared by `train` and `bench`.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelFlags {
    /// Start from a preset (default small).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// A TOML file overriding the preset (any subset of config.toml's fields).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Architecture: GPT-2, or a causal BERT (post-LN blocks, erf GELU,
    /// token-type embeddings, the LM head's transform).
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Transformer blocks.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Model width.
    #[arg(long = "d-model")]
    pub d_model: Option<usize>,
    /// Attention heads (must divide the width).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Context length.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Vocabulary size (default: the dataset's tokenizer).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Dropout probability (embeddings, residual branches and attention probabilities).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Tying policy: dynamic, none, all, every:K, random, pattern:0,0,1,..,
    /// cyclic:K, sequence, reverse.
    #[arg(long, value_name = "POLICY")]
    pub tying: Option<TyingPolicy>,
    /// Compute backend (default auto).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Numeric precision: fp32, or bf16 mixed precision (fp32 master
    /// weights, moments, gradients and reductions; bf16 activations and
    /// matmul inputs). Default: bf16 on cuda, fp32 on cpu and emu.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Random seed for initialization, data order, dropout and the agent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Activation checkpointing: keep only each block's output and recompute
    /// the rest in backward (much less activation memory, one more forward
    /// pass of the blocks per step; the same gradients).
    #[arg(long)]
    pub recompute: bool,
    /// Launch every op of a training step one by one instead of replaying
    /// the step captured as one graph (train, bench throughput; for
    /// debugging, with DYNTIE_SYNC_LAUNCHES=1 to find a failing kernel).
    #[arg(long = "no-graph")]
    pub no_graph: bool,
}

impl ModelFlags {
    /// The preset (default `small`), then `--config`, then the flags.
    pub fn resolve(&self) -> Result<RunConfig> {
        let mut cfg = RunConfig::for_preset(self.preset.unwrap_or(Preset::Small));
        if let Some(path) = &self.config {
            cfg.merge_toml_file(path)?;
        }
        let m = &mut cfg.model;
        set(&mut m.arch, self.arch);
        set(&mut m.n_layer, self.layers);
        set(&mut m.n_embd, self.d_model);
        set(&mut m.n_head, self.heads);
        set(&mut m.n_ctx, self.ctx);
        set(&mut m.vocab_size, self.vocab);
        set(&mut m.dropout, self.dropout);
        set(&mut cfg.train.batch, self.batch);
        set(&mut cfg.train.seed, self.seed);
        set(&mut cfg.tying.policy, self.tying.clone());
        set(&mut cfg.backend, self.backend);
        if self.precision.is_some() {
            cfg.precision = self.precision;
        }
        if self.recompute {
            cfg.train.recompute = true;
        }
        Ok(cfg)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    /// `synthetic` (built in) or a folder written by `dyntie prepare` (on
    /// --resume: the new place of the run's dataset, if it moved).
    #[arg(long)]
    pub data: Option<String>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate (also on --resume: a diverged run continues from
    /// its last good checkpoint with a lower rate; config.toml records it).
    #[arg(long)]
    pub lr: Option<f32>,
    /// The floor of the cosine schedule.
    #[arg(long = "min-lr")]
    pub min_lr: Option<f32>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Micro-batches per optimizer step.
    #[arg(long = "grad-accum")]
    pub grad_accum: Option<usize>,
    /// Where a tied block's gradient goes.
    #[arg(long = "tie-grad", value_enum)]
    pub tie_grad: Option<TieGrad>,
    /// The tie table before the first decision.
    #[arg(long = "init-ties", value_enum)]
    pub init_ties: Option<InitTies>,
    /// Training steps between two agent decisions.
    #[arg(long = "agent-k")]
    pub agent_k: Option<usize>,
    /// Reward cost per trainable block (pushes the agent towards tying).
    #[arg(long = "param-cost")]
    pub param_cost: Option<f32>,
    /// How the agent sees the tie state.
    #[arg(long = "agent-input", value_enum)]
    pub agent_input: Option<AgentInput>,
    /// Reproduce the authors' code instead of the clean reading of the paper.
    #[arg(long = "paper-compat")]
    pub paper_compat: bool,
    #[command(flatten)]
    pub agent: AgentFlags,
    /// Steps between validation passes (0: only at the end).
    #[arg(long = "eval-every")]
    pub eval_every: Option<usize>,
    /// Steps between checkpoints (0: only at the end).
    #[arg(long = "checkpoint-every")]
    pub checkpoint_every: Option<usize>,
    /// How many of the newest checkpoints to keep (default 2).
    #[arg(long = "keep-checkpoints")]
    pub keep_checkpoints: Option<usize>,
    /// Run folder (default: runs/<date>-<time>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Replace the run in --out (only a run folder, and only once the new
    /// run is fully set up).
    #[arg(long)]
    pub force: bool,
    /// Data-parallel replicas in this process (--gpus is the same flag). On
    /// cuda one per GPU, GPUs 0..N-1, gradients summed with NCCL; on cpu and
    /// emu one thread each (for testing). --batch stays the global batch:
    /// each replica trains on batch/N of its rows, so a step sees the same
    /// tokens whatever N is. Rank 0 decides ties and broadcasts them, and
    /// alone writes the run folder. May change on --resume (bit for bit
    /// only with the same N). For several processes or machines, launch
    /// one process per replica with RANK, WORLD_SIZE, LOCAL_RANK,
    /// MASTER_ADDR and MASTER_PORT set (as torchrun does) and leave N at 1;
    /// see the README's "Several processes and machines".
    #[arg(long, visible_alias = "gpus", value_name = "N", default_value_t = 1)]
    pub replicas: usize,
}

impl TrainArgs {
    /// The flags given that would change a run's configuration, which a
    /// resume takes from the run's config.toml instead (only --steps, --lr,
    /// --backend, --precision, --recompute and the place of the same
    /// dataset, --data, may change on resume).
    pub fn fixed_on_resume(&self) -> Vec<&'static str> {
        let m = &self.model;
        [
            ("--preset", m.preset.is_some()),
            ("--config", m.config.is_some()),
            ("--arch", m.arch.is_some()),
            ("--layers", m.layers.is_some()),
            ("--d-model", m.d_model.is_some()),
            ("--heads", m.heads.is_some()),
            ("--ctx", m.ctx.is_some()),
            ("--batch", m.batch.is_some()),
            ("--vocab", m.vocab.is_some()),
            ("--dropout", m.dropout.is_some()),
            ("--tying", m.tying.is_some()),
            ("--seed", m.seed.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--grad-accum", self.grad_accum.is_some()),
            ("--tie-grad", self.tie_grad.is_some()),
            ("--init-ties", self.init_ties.is_some()),
            ("--agent-k", self.agent_k.is_some()),
            ("--param-cost", self.param_cost.is_some()),
            ("--agent-input", self.agent_input.is_some()),
            ("--paper-compat", self.paper_compat),
            ("--eval-every", self.eval_every.is_some()),
            ("--checkpoint-every", self.checkpoint_every.is_some()),
            ("--keep-checkpoints", self.keep_checkpoints.is_some()),
            ("--force", self.force),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .chain(self.agent.given())
        .collect()
    }

    pub fn resolve(&self) -> Result<RunConfig> {
        let mut cfg = self.model.resolve()?;
        set(&mut cfg.data.source, self.data.clone());
        set(&mut cfg.train.steps, self.steps);
        set(&mut cfg.train.lr, self.lr);
        set(&mut cfg.train.min_lr, self.min_lr);
        set(&mut cfg.train.schedule, self.schedule);
        set(&mut cfg.train.grad_accum, self.grad_accum);
        set(&mut cfg.tying.tie_grad, self.tie_grad);
        set(&mut cfg.tying.init_ties, self.init_ties);
        set(&mut cfg.tying.agent_k, self.agent_k);
        set(&mut cfg.tying.param_cost, self.param_cost);
        set(&mut cfg.tying.agent_input, self.agent_input);
        set(&mut cfg.train.eval_every, self.eval_every);
        set(&mut cfg.train.checkpoint_every, self.checkpoint_every);
        set(&mut cfg.train.keep_checkpoints, self.keep_checkpoints);
        if self.paper_compat {
            cfg.tying.paper_compat = true;
            cfg.agent = AgentSettings::paper();
        }
        self.agent.apply(&mut cfg.agent)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The run folder.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Dataset folder (default: the one the run trained on); with --task,
    /// the task's file.
    #[arg(long, value_name = "PATH")]
    pub data: Option<String>,
    /// The split whose perplexity to report.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Instead of perplexity, a task on a file given with --data.
    #[arg(long, value_enum)]
    pub task: Option<EvalTask>,
    /// Compute backend (default: the run's).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Load a checkpoint whose weights hold NaN or infinity (to look at a
    /// broken run).
    #[arg(long = "allow-non-finite")]
    pub allow_non_finite: bool,
}

/// The tasks of `dyntie eval --task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvalTask {
    /// LAMBADA last-word accuracy (a lambada_test.jsonl file).
    Lambada,
}
crate::choice_text!(EvalTask, "task");

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// The corpus layout.
    #[arg(long, value_enum)]
    pub dataset: Corpus,
    /// The corpus: a folder (wikitext, lm1b) or a file (lambada, text).
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// Output folder (default: data/prepared/<dataset>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The tokenizer.
    #[arg(long, value_enum, default_value_t = TokenizerKind::Gpt2)]
    pub tokenizer: TokenizerKind,
    /// Replace a dataset already in --out (runs trained on it will refuse it).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[arg(long = "max-new-tokens", default_value_t = 100)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the K most likely tokens (0 = all).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute backend (default: the run's).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Load a checkpoint whose weights hold NaN or infinity.
    #[arg(long = "allow-non-finite")]
    pub allow_non_finite: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// The layout to write.
    #[arg(long, value_enum, default_value_t = ExportFormat::Hf)]
    pub format: ExportFormat,
    /// A new or empty folder (or, with --force, an earlier export).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an earlier export in --out.
    #[arg(long)]
    pub force: bool,
    /// Export a checkpoint whose weights hold NaN or infinity.
    #[arg(long = "allow-non-finite")]
    pub allow_non_finite: bool,
}

/// The layouts of `dyntie export --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face GPT2LMHeadModel or BertLMHeadModel (config.json, model.safetensors).
    Hf,
}
crate::choice_text!(ExportFormat, "export format");

/// What `dyntie bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchWhat {
    /// Counted (and with --measure, allocated) training memory per tie pattern.
    Memory,
    /// Tokens/s of whole training steps, with a per-op breakdown.
    Throughput,
    /// How to compare with the PyTorch baseline (scripts/compare.sh).
    Compare,
    /// Every matrix product of a step (GPT-2 124M and the paper config) in
    /// fp32 and bf16: FLOPs, bytes and, on a GPU, time and TFLOP/s.
    Kernels,
}
crate::choice_text!(BenchWhat, "benchmark");

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: BenchWhat,
    #[command(flatten)]
    pub model: ModelFlags,
    /// Tie patterns to compare (memory), e.g. none all pattern:0,0,1,1.
    #[arg(long, num_args = 1.., value_name = "POLICY")]
    pub patterns: Vec<TyingPolicy>,
    /// Take the final tie table of a run (memory).
    #[arg(long = "from-run", value_name = "DIR")]
    pub from_run: Option<PathBuf>,
    /// Also measure the allocator on the backend (memory).
    #[arg(long)]
    pub measure: bool,
    /// Timed steps (throughput).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps before the timed ones (throughput).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compare every product with the CPU backend (kernels; always under
    /// --backend emu, at cut-down sizes).
    #[arg(long)]
    pub check: bool,
    /// Also time N data-parallel replicas (throughput; --gpus is the same
    /// flag): each trains --batch rows per step (weak scaling) on its own
    /// GPU, or as a thread on the CPU and the emulator, and the report adds
    /// tokens/s per replica and the scaling efficiency against one.
    #[arg(long, visible_alias = "gpus", value_name = "N", default_value_t = 1)]
    pub replicas: usize,
    /// The card's measured bf16 peak in TFLOP/s for the fraction column
    /// (kernels; default 790, cuBLAS at 8192^3 on an H100/H200; fp32 rows
    /// use the nominal 67).
    #[arg(long = "peak-tflops")]
    pub peak_tflops: Option<f64>,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Exit 0 on a machine without a GPU (after saying so).
    #[arg(long = "allow-no-gpu")]
    pub allow_no_gpu: bool,
    /// Check the kernels under the CPU emulator instead of a GPU.
    #[arg(long)]
    pub emu: bool,
    /// The precision of the training check, on both backends (default
    /// fp32; the kernels are checked at every dtype either way).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Wait for every kernel as it is launched and name the first that fails,
    /// with its op and shapes (as DYNTIE_SYNC_LAUNCHES=1 does).
    #[arg(long = "sync-launches")]
    pub sync_launches: bool,
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// The grid file (TOML: out, seeds, [[config]] and [[variant]] entries with
    /// train flags; see the documentation of src/experiment/grid.rs).
    pub grid: PathBuf,
    /// Print each run's state and command; train nothing, write nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Train nothing: summarise the finished runs.
    #[arg(long = "summary-only")]
    pub summary_only: bool,
    /// Train at most N runs, then summarise and stop.
    #[arg(long = "max-runs", value_name = "N")]
    pub max_runs: Option<usize>,
    /// No progress lines from the trainer.
    #[arg(long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_preset_and_contradictions_are_errors() {
        let cli =
            Cli::try_parse_from(["dyntie", "train", "--preset", "tiny", "--layers", "3"]).unwrap();
        let Command::Train(args) = cli.command else {
            panic!("not train")
        };
        let cfg = args.resolve().unwrap();
        assert_eq!((cfg.preset, cfg.model.n_layer), (Preset::Tiny, 3));

        let agent = |extra: &[&str]| {
            let argv = ["dyntie", "train"].iter().chain(extra).copied();
            let Command::Train(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not train")
            };
            args.resolve()
        };
        let cfg = agent(&[
            "--tie-merge",
            "average",
            "--decide-until",
            "0.5",
            "--epsilon-schedule",
            "linear:0.25",
        ])
        .unwrap();
        assert_eq!(
            cfg.agent.tie_merge,
            crate::tying::settings::TieMerge::Average
        );
        assert_eq!(cfg.agent.decide_until, 0.5);
        assert_eq!(
            agent(&["--paper-compat"]).unwrap().agent,
            AgentSettings::paper()
        );
        let err = agent(&["--paper-compat", "--decide-until", "0.5"]).unwrap_err();
        assert!(err.to_string().contains("--paper-compat"), "{err}");
        assert!(agent(&["--epsilon-schedule", "linear:2"]).is_err());

        let cli =
            Cli::try_parse_from(["dyntie", "train", "--d-model", "30", "--heads", "4"]).unwrap();
        let Command::Train(args) = cli.command else {
            panic!("not train")
        };
        assert!(args.resolve().is_err());
    }

    #[test]
    fn invalid_option_values_are_rejected_where_they_are_parsed() {
        for (args, bad, valid) in [
            (&["train", "--schedule"][..], "cosin", "constant, cosine"),
            (&["train", "--tie-grad"], "both", "shared, frozen"),
            (&["train", "--init-ties"], "ones", "independent, zero"),
            (&["train", "--agent-input"], "scaled", "raw, normalized"),
            (&["train", "--backend"], "gpu", "auto, cpu, cuda, emu"),
            (&["train", "--preset"], "huge", "tiny, small, gpt2"),
            (&["bench", "memory", "--arch"], "roberta", "gpt2, bert"),
            (&["eval", "--run", "r", "--split"], "train", "valid, test"),
            (&["eval", "--run", "r", "--task"], "hellaswag", "lambada"),
            (
                &["prepare", "--input", "x", "--dataset"],
                "c4",
                "wikitext-2",
            ),
            (
                &[
                    "prepare",
                    "--dataset",
                    "text",
                    "--input",
                    "x",
                    "--tokenizer",
                ],
                "sentencepiece",
                "gpt2, byte",
            ),
            (
                &["export", "--run", "r", "--out", "o", "--format"],
                "onnx",
                "hf",
            ),
            (&["bench"], "kernel", "memory, throughput, compare, kernels"),
            (&["train", "--precision"], "fp16", "fp32, bf16"),
        ] {
            let mut argv = vec!["dyntie"];
            argv.extend_from_slice(args);
            argv.push(bad);
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::InvalidValue,
                "{args:?} {bad}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("'{bad}'")) && text.contains(valid),
                "{args:?} {bad}: {text}"
            );
        }
        // The tying policy's own parser names what is wrong.
        let err = Cli::try_parse_from(["dyntie", "train", "--tying", "every:0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
