//! `dyntie bench`: counted (and measured) memory per tie pattern, and the
//! training throughput with a per-op time breakdown.

use crate::cli::{BenchArgs, BenchWhat};
use crate::commands::{check_memory_with_vocab, replicas_of, select_backend, SelectedBackend};
use crate::config::RunConfig;
use crate::cuda::Device;
use crate::dist::{all_reduce_gradients, Comm, CommStats};
use crate::mem::MemStats;
use crate::model::accounting::{format_memory_table, MemoryReport};
use crate::model::{AttentionPath, Model, ModelConfig};
use crate::ops::profile::{HostTraffic, OpStat, ProfiledBackend};
use crate::ops::{Backend, GraphCounts};
use crate::optim::AdamW;
use crate::precision::Precision;
use crate::rng::HostRng;
use crate::train::{initial_table, memory, run_dir};
use crate::tying::policy::TyingPolicy;
use crate::tying::table::{TieGrad, TieTable};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// `dyntie bench WHAT`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Memory => memory(args),
        BenchWhat::Throughput => throughput(args),
        BenchWhat::Kernels => super::bench_kernels::kernels(args),
        BenchWhat::Compare => {
            println!(
                "dyntie bench compare is a script: it runs this binary and the PyTorch baseline \
                 alternately on one config and prints the ratios:\n\n    \
                 scripts/compare.sh --backend cpu --layers 6 --d-model 256 --heads 8 --ctx 128 --batch 8\n\n\
                 (PYTHON=... picks the interpreter with torch; ROUNDS=N the rounds; DYNTIE_BIN=... this binary)"
            );
            Ok(())
        }
    }
}

/// The vocabulary of a bench model when no --vocab is given: GPT-2's.
const GPT2_VOCAB: usize = 50257;

/// Counted training memory for each requested tie pattern.
fn memory(args: &BenchArgs) -> Result<()> {
    let mut cfg = args.model.resolve()?;
    cfg.validate()?;
    if args.measure && cfg.precision.is_none() {
        // Count in the precision the measured step runs in: it chooses the
        // attention path, and so what attention stores.
        cfg.precision = Some(cfg.precision_on(select_backend(cfg.backend)?.backend.name()));
    }
    let mc = cfg.model.with_default_vocab(GPT2_VOCAB);
    mc.validate()?;
    // A model beyond counting is an error before its sizes are multiplied out.
    memory::need(&cfg, mc.vocab_size)?;
    let path = AttentionPath::choose(memory::counted_precision(&cfg), &mc);
    let acts = memory::counted_activation_bytes(&cfg, &mc);
    let copy = memory::counted_precision(&cfg).has_compute_copy();
    let options = cfg.tie_options();
    let mut rows: Vec<(String, MemoryReport)> = Vec::new();
    let mut tables: Vec<TieTable> = Vec::new();
    let mut patterns = args.patterns.clone();
    if patterns.is_empty() && args.from_run.is_none() {
        patterns = vec![TyingPolicy::None, TyingPolicy::All];
    }
    for policy in &patterns {
        policy.check_blocks(mc.n_layer)?;
        if policy.is_dynamic() {
            bail!("--patterns: 'dynamic' has no fixed table; give --from-run DIR for a trained run's table");
        }
        let seed = HostRng::new(cfg.train.seed).next_u64();
        let state = policy.initial_state(mc.n_layer, seed, options.init)?;
        let table = TieTable::from_state(&state, options)?;
        rows.push((
            policy.to_string(),
            MemoryReport::from_table(&mc, &table, copy, acts),
        ));
        tables.push(table);
    }
    if let Some(dir) = &args.from_run {
        let ties = crate::metrics::read_jsonl(&dir.join(run_dir::TIES))?;
        let last = ties.last().with_context(|| {
            format!(
                "{} has no tie decisions (ties.jsonl is empty or missing)",
                dir.display()
            )
        })?;
        let state: Vec<usize> =
            serde_json::from_value(last["state_after"].clone()).with_context(|| {
                format!(
                    "{}/ties.jsonl: the last line has no state_after",
                    dir.display()
                )
            })?;
        if state.len() != mc.n_layer {
            bail!(
                "{}: the run has {} blocks, but the bench model has {}; pass the run's --preset/--layers",
                dir.display(),
                state.len(),
                mc.n_layer
            );
        }
        let table = TieTable::from_state(&state, options)?;
        rows.push((
            format!("run {}", dir.display()),
            MemoryReport::from_table(&mc, &table, copy, acts),
        ));
        tables.push(table);
    }
    // --measure: one training step per pattern on the backend, each on a fresh
    // backend so that every peak is that pattern's own.
    let mut measured: Vec<Measured> = Vec::new();
    if args.measure {
        for table in tables {
            let selected = select_backend(cfg.backend)?;
            check_memory_with_vocab(&cfg, mc.vocab_size, &selected)?;
            let mut runner = StepRunner::new(selected.backend.clone(), &cfg, &mc, table, 1)?;
            runner.step()?;
            measured.push(measure_memory(
                &selected,
                runner.model.backend().mem_stats(),
            ));
        }
    }
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(i, (name, r))| {
                serde_json::json!({ "pattern": name, "report": r, "measured": measured.get(i) })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": mc, "batch": cfg.train.batch, "recompute": cfg.train.recompute,
                "attention": path.to_string(), "rows": out
            }))?
        );
    } else {
        println!(
            "model: {} {} blocks x width {}, {} heads, context {}, vocab {}, batch {} ({}, AdamW{}); \
             attention {path} (precision {})",
            mc.arch,
            mc.n_layer,
            mc.n_embd,
            mc.n_head,
            mc.n_ctx,
            mc.vocab_size,
            cfg.train.batch,
            if copy {
                "fp32 masters with bf16 copies, bf16 activations"
            } else {
                "fp32"
            },
            if cfg.train.recompute {
                ", activations recomputed"
            } else {
                ""
            },
            cfg.precision.unwrap_or(Precision::Fp32)
        );
        let refs: Vec<(&str, &MemoryReport)> = rows.iter().map(|(n, r)| (n.as_str(), r)).collect();
        print!("{}", format_memory_table(&refs));
        if !measured.is_empty() {
            println!("measured on {} after one training step:", cfg.backend);
            for ((name, r), m) in rows.iter().zip(&measured) {
                println!(
                    "  {name:<20} peak {:>10.1} MiB  live {:>10.1} MiB  (counted {:.1} MiB){}",
                    mib(m.peak_bytes),
                    mib(m.live_bytes),
                    mib(r.total_bytes),
                    m.device_line()
                );
            }
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The GPU's name (for the MFU table).
fn gpu_name(selected: &SelectedBackend) -> Option<String> {
    selected
        .cuda
        .as_ref()
        .map(|c| c.device().description().to_string())
}

/// The allocator's counts and, on CUDA, the device's free and total memory.
fn measure_memory(selected: &SelectedBackend, stats: MemStats) -> Measured {
    let (free, total) = match selected.cuda.as_ref().map(|c| c.device().mem_info()) {
        Some(Ok((f, t))) => (Some(f), Some(t)),
        _ => (None, None),
    };
    Measured {
        live_bytes: stats.live_bytes,
        peak_bytes: stats.peak_bytes,
        device_free_bytes: free,
        device_total_bytes: total,
    }
}

/// Memory as the backend's allocator counted it (and, on CUDA, the device's view).
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub live_bytes: u64,
    pub peak_bytes: u64,
    pub device_free_bytes: Option<u64>,
    pub device_total_bytes: Option<u64>,
}

impl Measured {
    fn device_line(&self) -> String {
        match (self.device_free_bytes, self.device_total_bytes) {
            (Some(f), Some(t)) => format!("; device {:.0} MiB free of {:.0} MiB", mib(f), mib(t)),
            _ => String::new(),
        }
    }
}

/// One full training step at a time on fixed random tokens: zero the
/// gradients, forward and backward, clip, AdamW, synchronize.
struct StepRunner {
    model: Model,
    opt: AdamW,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    batch: usize,
    seq: usize,
    clip: Option<f32>,
    step: u64,
    /// Steps under the step graph (`cuda::graph`); not with dropout, whose
    /// seeds change every step, nor with replicas.
    graph: bool,
    /// With replicas: how this one sums its gradients with the others'.
    comm: Option<Box<dyn Comm>>,
}

impl StepRunner {
    fn new(
        backend: Arc<dyn Backend>,
        cfg: &RunConfig,
        mc: &ModelConfig,
        table: TieTable,
        data_seed: u64,
    ) -> Result<StepRunner> {
        let t = &cfg.train;
        let mut model = Model::with_table(backend, mc.clone(), t.seed, table)?;
        model.set_recompute(t.recompute);
        let be = model.backend().clone();
        model.set_precision(cfg.precision_on(be.name()))?;
        let opt = AdamW::new(be.as_ref(), t.lr, t.beta1, t.beta2, t.eps, t.weight_decay)?;
        let (batch, seq) = (t.batch, mc.n_ctx);
        let mut rng = HostRng::new(data_seed);
        let mut ids = || -> Vec<u32> {
            (0..batch * seq)
                .map(|_| rng.below(mc.vocab_size as u64) as u32)
                .collect()
        };
        let (tokens, targets) = (ids(), ids());
        Ok(StepRunner {
            model,
            opt,
            tokens,
            targets,
            batch,
            seq,
            clip: (t.grad_clip > 0.0).then_some(t.grad_clip),
            step: 0,
            graph: mc.dropout == 0.0,
            comm: None,
        })
    }

    /// Queues one step as the trainer does, with nothing read back.
    fn queue_step(&mut self) -> Result<()> {
        let be = self.model.backend().clone();
        if self.graph {
            be.begin_graph_step()?;
        }
        self.queue_ops()?;
        if self.graph {
            be.end_graph_step()?;
        }
        Ok(())
    }

    fn queue_ops(&mut self) -> Result<()> {
        self.model.zero_grads()?;
        self.opt.begin_step(self.model.backend().as_ref())?;
        let replicas = self.comm.as_ref().map_or(1, |c| c.world_size());
        self.model.forward_backward_on_device(
            &self.tokens,
            &self.targets,
            self.batch,
            self.seq,
            self.step,
            1.0 / replicas as f32,
            self.opt.loss_sum(),
        )?;
        if let Some(comm) = &self.comm {
            let be = self.model.backend().as_ref();
            all_reduce_gradients(comm.as_ref(), be, &self.model.gradients_to_reduce())?;
            comm.all_reduce_sum(be, self.opt.loss_sum().acc)?;
        }
        self.opt.clip_and_update_on_device(&self.model, self.clip)?;
        self.step += 1;
        Ok(())
    }

    /// One step and the read of its loss, which waits for it.
    fn step(&mut self) -> Result<f32> {
        self.queue_step()?;
        Ok(self.opt.read_stats(self.model.backend().as_ref())?.loss)
    }
}

/// Dense peak throughput per GPU, in TFLOP/s, from NVIDIA's data sheets:
/// `(name, fp32 without tensor cores, bf16 on tensor cores without
/// sparsity)`. MFU divides by the peak of the precision a step runs in: the
/// fp32 kernels are SIMT code, so the TF32 tensor-core peak would not be an
/// honest denominator for them; the bf16 GEMMs run on tensor cores. More
/// specific names come first (an "H100 PCIe" also contains "H100").
pub const PEAK_TFLOPS: &[(&str, f64, f64)] = &[
    ("H100 PCIe", 51.2, 756.0),
    ("H100 NVL", 60.0, 835.0),
    ("H100", 66.9, 989.4), // SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 66.9, 989.4), // same GH100 SMs and clocks as the H100 SXM
    ("A100", 19.5, 312.0),
];

/// The dense peak of the named GPU in `precision`, if it is in
/// [`PEAK_TFLOPS`].
pub fn peak_tflops(gpu_name: &str, precision: Precision) -> Option<f64> {
    PEAK_TFLOPS.iter().find(|(k, ..)| gpu_name.contains(k)).map(
        |&(_, fp32, bf16)| match precision {
            Precision::Fp32 => fp32,
            Precision::Bf16 => bf16,
        },
    )
}

/// Training FLOPs per token, `6 N + 12 L T C` (Kaplan et al. 2020; PaLM
/// appendix B), where N counts the weights of every matmul that runs: the
/// four linear layers of all L blocks (12 C^2 each, tied or not, since a tied
/// block still computes) plus the output head (V C, tied to wte). Biases,
/// LayerNorms and the embedding lookup are left out, as usual. With
/// `--tie-grad frozen` tied blocks skip their weight gradients, so this
/// overcounts their backward a little.
pub fn flops_per_token(mc: &ModelConfig) -> (u64, f64) {
    let (l, c, t, v) = (
        mc.n_layer as u64,
        mc.n_embd as u64,
        mc.n_ctx as u64,
        mc.vocab_size as u64,
    );
    let n = l * 12 * c * c + v * c;
    (n, (6 * n + 12 * l * t * c) as f64)
}

/// What `dyntie bench throughput` reports (also its `--json`).
#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub backend: String,
    /// Host-device calls of one training step (forward, backward, clipping,
    /// AdamW), without the bench's read of the loss after it.
    pub traffic: HostTraffic,
    /// What the step graph did over the warm-up and timed steps (all zero
    /// with --no-graph, with dropout, and on the CPU).
    pub graph: GraphCounts,
    pub backend_description: String,
    pub threads: usize,
    pub model: ModelConfig,
    pub batch: usize,
    pub tying: TyingPolicy,
    pub tie_grad: TieGrad,
    pub tie_state: Vec<usize>,
    /// Activation recomputation (`--recompute`).
    pub recompute: bool,
    pub seed: u64,
    pub optimizer: OptimizerSettings,
    pub warmup: usize,
    pub steps: usize,
    pub tokens_per_step: usize,
    pub tokens_per_s: f64,
    pub ms_per_step_median: f64,
    pub ms_per_step_min: f64,
    pub step_ms: Vec<f64>,
    pub losses: Vec<f32>,
    pub params: u64,
    pub trainable_params: u64,
    pub counted: MemoryReport,
    pub measured: Measured,
    /// The whole process's peak resident set (Linux), comparable with
    /// PyTorch's `ru_maxrss` on the CPU.
    pub peak_rss_bytes: Option<u64>,
    /// The N of `6 N + 12 L T C` (see `flops_per_token`).
    pub flops_n: u64,
    pub flops_per_token: f64,
    pub gpu: Option<String>,
    /// The precision the steps ran in, which chooses the peak.
    pub precision: Precision,
    pub peak_tflops: Option<f64>,
    pub mfu: Option<f64>,
    /// Steps run with profiling on (serialized; not part of the timing above).
    pub profiled_steps: usize,
    pub profile_ms_per_step: f64,
    pub ops: Vec<OpRow>,
    /// The matmul rows of `ops`, split by shape (`rows x in -> out`).
    pub matmul_shapes: Vec<OpRow>,
    /// With --replicas N: the same step on N data-parallel replicas.
    pub scaling: Option<ScalingReport>,
}

/// The AdamW and clipping settings of the run (constant learning rate).
#[derive(Debug, Serialize)]
pub struct OptimizerSettings {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub grad_clip: f32,
}

#[derive(Debug, Serialize)]
pub struct OpRow {
    pub op: String,
    pub calls_per_step: f64,
    pub ms_per_step: f64,
    pub share: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `dyntie bench throughput`: times full training steps of one tie pattern.
fn throughput(args: &BenchArgs) -> Result<()> {
    let report = run_throughput(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_throughput(&report));
    }
    Ok(())
}

/// Runs the throughput benchmark and returns its report.
pub fn run_throughput(args: &BenchArgs) -> Result<ThroughputReport> {
    if args.steps == 0 {
        bail!("--steps must be at least 1 (the timed steps)");
    }
    let mut cfg = args.model.resolve()?;
    // A bench times a fixed pattern; with no --tying that is the conventional model.
    if args.model.tying.is_none() {
        cfg.tying.policy = TyingPolicy::None;
    }
    cfg.validate()?;
    let mc = cfg.model.with_default_vocab(GPT2_VOCAB);
    mc.validate()?;
    let policy = cfg.tying.policy.clone();
    if policy.is_dynamic() {
        bail!("--tying dynamic changes the table while training; benchmark a fixed pattern (none, all, every:K, pattern:...)");
    }
    let selected = select_backend(cfg.backend)?;
    check_memory_with_vocab(&cfg, mc.vocab_size, &selected)?;
    let table = initial_table(&cfg, &policy, mc.n_layer)?;
    let tie_state = table.state().to_vec();
    cfg.precision = Some(cfg.precision_on(selected.backend.name()));
    let acts = memory::counted_activation_bytes(&cfg, &mc);
    let copy = memory::counted_precision(&cfg).has_compute_copy();
    let counted = MemoryReport::from_table(&mc, &table, copy, acts);

    let profiled = Arc::new(ProfiledBackend::new(selected.backend.clone()));
    let mut runner = StepRunner::new(profiled.clone(), &cfg, &mc, table, 1)?;
    runner.graph &= !args.model.no_graph;
    let mut losses = Vec::new();
    for _ in 0..args.warmup {
        losses.push(runner.step()?);
    }
    // What one step asks of the host, counted on a step of its own.
    let before = profiled.traffic();
    runner.queue_step()?;
    let traffic = profiled.traffic().since(before);
    losses.push(runner.opt.read_stats(profiled.as_ref())?.loss);
    let mut step_ms = Vec::new();
    for _ in 0..args.steps {
        let start = Instant::now();
        losses.push(runner.step()?);
        step_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // Memory before profiling, so the report is the plain run's.
    let measured = measure_memory(&selected, selected.backend.mem_stats());

    let graph = profiled.graph_counts();
    let tokens_per_step = cfg.train.batch * mc.n_ctx;
    let med = median(&step_ms);
    let tokens_per_s = tokens_per_step as f64 / (med / 1e3);
    let scaling = if args.replicas > 1 {
        Some(measure_scaling(
            args,
            &cfg,
            &mc,
            &selected,
            &runner.model.slots().table().clone(),
            tokens_per_s,
        )?)
    } else {
        None
    };
    // The breakdown: a separate profiled step (serialized after each op,
    // so one op at a time).
    runner.graph = false;
    let profiled_steps = 1;
    profiled.set_enabled(true)?;
    let start = Instant::now();
    for _ in 0..profiled_steps {
        losses.push(runner.step()?);
    }
    let profile_ms = start.elapsed().as_secs_f64() * 1e3 / profiled_steps as f64;
    profiled.set_enabled(false)?;
    let op_stats: Vec<(&str, OpStat)> = profiled.report();
    let op_total: f64 = op_stats.iter().map(|(_, s)| s.secs).sum();
    let ops = op_stats
        .iter()
        .map(|(name, s)| OpRow {
            op: name.to_string(),
            calls_per_step: s.calls as f64 / profiled_steps as f64,
            ms_per_step: s.secs * 1e3 / profiled_steps as f64,
            share: if op_total > 0.0 {
                s.secs / op_total
            } else {
                0.0
            },
        })
        .collect();
    let matmul_shapes = profiled
        .matmul_report()
        .into_iter()
        .map(|(name, s)| OpRow {
            op: name,
            calls_per_step: s.calls as f64 / profiled_steps as f64,
            ms_per_step: s.secs * 1e3 / profiled_steps as f64,
            share: if op_total > 0.0 {
                s.secs / op_total
            } else {
                0.0
            },
        })
        .collect();

    let (flops_n, fpt) = flops_per_token(&mc);
    let gpu = gpu_name(&selected);
    let precision = memory::counted_precision(&cfg);
    let peak = gpu.as_deref().and_then(|g| peak_tflops(g, precision));
    let mfu = peak.map(|p| fpt * tokens_per_s / (p * 1e12));
    Ok(ThroughputReport {
        backend: selected.backend.name().to_string(),
        backend_description: selected.why.clone(),
        threads: rayon::current_num_threads(),
        model: mc.clone(),
        batch: cfg.train.batch,
        tying: cfg.tying.policy.clone(),
        tie_grad: cfg.tying.tie_grad,
        tie_state,
        recompute: cfg.train.recompute,
        seed: cfg.train.seed,
        optimizer: OptimizerSettings {
            lr: cfg.train.lr,
            beta1: cfg.train.beta1,
            beta2: cfg.train.beta2,
            eps: cfg.train.eps,
            weight_decay: cfg.train.weight_decay,
            grad_clip: cfg.train.grad_clip,
        },
        warmup: args.warmup,
        steps: args.steps,
        traffic,
        graph,
        tokens_per_step,
        tokens_per_s,
        ms_per_step_median: med,
        ms_per_step_min: step_ms.iter().copied().fold(f64::INFINITY, f64::min),
        step_ms,
        losses,
        params: counted.params,
        trainable_params: counted.trainable_params,
        counted,
        measured,
        peak_rss_bytes: peak_rss_bytes(),
        flops_n,
        flops_per_token: fpt,
        gpu,
        precision,
        peak_tflops: peak,
        mfu,
        profiled_steps,
        profile_ms_per_step: profile_ms,
        ops,
        matmul_shapes,
        scaling,
    })
}

/// Data-parallel replicas timed together ([`ThroughputReport::scaling`]).
#[derive(Clone, Debug, Serialize)]
pub struct ScalingReport {
    pub replicas: usize,
    /// Rows per replica per step (the bench's --batch: weak scaling).
    pub batch_per_replica: usize,
    /// Rank 0's step times (every step ends with the replicas' all-reduce).
    pub step_ms: Vec<f64>,
    pub ms_per_step_median: f64,
    /// All replicas together.
    pub tokens_per_s: f64,
    pub tokens_per_s_per_replica: f64,
    /// Tokens/s per replica over one replica's alone.
    pub efficiency: f64,
    /// What each step summed over the replicas (gradients and the loss).
    pub all_reduce_bytes_per_step: u64,
}

/// Times `args.replicas` replicas training `table` together: rank 0 on the
/// selected backend, the others on the backends of `--replicas` in
/// training (GPUs 1..N, or threads with backends of their own), each on its
/// own random batch of --batch rows, the gradients summed every step.
fn measure_scaling(
    args: &BenchArgs,
    cfg: &RunConfig,
    mc: &ModelConfig,
    selected: &SelectedBackend,
    table: &TieTable,
    single_tokens_per_s: f64,
) -> Result<ScalingReport> {
    let n = args.replicas;
    let others = replicas_of(selected, n)?;
    let backends = std::iter::once(selected.backend.clone()).chain(others.backends);
    let results: Vec<Result<(Vec<f64>, CommStats)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = backends
            .zip(others.joins)
            .enumerate()
            .map(|(rank, (backend, join))| {
                scope.spawn(move || -> Result<(Vec<f64>, CommStats)> {
                    let comm = join()?;
                    let mut runner =
                        StepRunner::new(backend, cfg, mc, table.clone(), 1 + rank as u64)?;
                    runner.graph = false;
                    runner.comm = Some(comm);
                    for _ in 0..args.warmup {
                        runner.step()?;
                    }
                    let before = runner.comm.as_ref().unwrap().stats();
                    let mut step_ms = Vec::new();
                    for _ in 0..args.steps {
                        let start = Instant::now();
                        runner.step()?;
                        step_ms.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                    let after = runner.comm.as_ref().unwrap().stats();
                    let moved = CommStats {
                        all_reduce_bytes: after.all_reduce_bytes - before.all_reduce_bytes,
                        ..after
                    };
                    Ok((step_ms, moved))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a replica thread panicked"))
            })
            .collect()
    });
    let mut results = results.into_iter();
    let (step_ms, moved) = results.next().expect("rank 0")?;
    for (rank, r) in results.enumerate() {
        r.with_context(|| format!("replica {} of the scaling bench", rank + 1))?;
    }
    let med = median(&step_ms);
    let tokens_per_s = (n * cfg.train.batch * mc.n_ctx) as f64 / (med / 1e3);
    Ok(ScalingReport {
        replicas: n,
        batch_per_replica: cfg.train.batch,
        ms_per_step_median: med,
        step_ms,
        tokens_per_s,
        tokens_per_s_per_replica: tokens_per_s / n as f64,
        efficiency: tokens_per_s / n as f64 / single_tokens_per_s,
        all_reduce_bytes_per_step: moved.all_reduce_bytes / args.steps as u64,
    })
}

/// The process's peak resident set (`VmHWM` in /proc/self/status), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The human-readable form of a throughput report.
pub fn format_throughput(r: &ThroughputReport) -> String {
    use std::fmt::Write;
    let m = &r.model;
    let mut s = String::new();
    let _ = writeln!(s, "{}, {} threads", r.backend_description, r.threads);
    let _ = writeln!(
        s,
        "model: {} blocks x width {}, {} heads, T={}, B={}, vocab {}, dropout {}; tying {} (state {:?}, tie-grad {}){}",
        m.n_layer, m.n_embd, m.n_head, m.n_ctx, r.batch, m.vocab_size, m.dropout, r.tying, r.tie_state, r.tie_grad,
        if r.recompute { "; activations recomputed" } else { "" }
    );
    let _ = writeln!(
        s,
        "params {} stored, {} trainable",
        r.params, r.trainable_params
    );
    let _ = writeln!(
        s,
        "{} timed steps after {} warm-up: {:.0} tokens/s; ms/step median {:.1}, min {:.1}",
        r.steps, r.warmup, r.tokens_per_s, r.ms_per_step_median, r.ms_per_step_min
    );
    let t = &r.traffic;
    let _ = writeln!(
        s,
        "per step: {} launches, {} graph launches, {} queued uploads, {} waiting uploads, {} \
         readbacks, {} synchronizations (the loss read after each timed step not counted)",
        t.launches, t.graph_launches, t.queued_uploads, t.uploads, t.readbacks, t.syncs
    );
    if let Some(sc) = &r.scaling {
        let _ = writeln!(
            s,
            "{} replicas of {} rows each: {:.0} tokens/s, {:.0} per replica ({:.0}% of one alone); \
             ms/step median {:.1}; {:.2} MiB all-reduced per step",
            sc.replicas,
            sc.batch_per_replica,
            sc.tokens_per_s,
            sc.tokens_per_s_per_replica,
            sc.efficiency * 100.0,
            sc.ms_per_step_median,
            mib(sc.all_reduce_bytes_per_step)
        );
    }
    let g = &r.graph;
    let _ = writeln!(
        s,
        "step graph: {} captures, {} replays, {} fallbacks",
        g.captures, g.replays, g.fallbacks
    );
    let _ = writeln!(
        s,
        "memory: counted {:.1} MiB; measured peak {:.1} MiB, live {:.1} MiB{}; process peak RSS {}",
        mib(r.counted.total_bytes),
        mib(r.measured.peak_bytes),
        mib(r.measured.live_bytes),
        r.measured.device_line(),
        r.peak_rss_bytes
            .map_or("unknown".into(), |b| format!("{:.1} MiB", mib(b)))
    );
    match (r.mfu, r.peak_tflops) {
        (Some(mfu), Some(peak)) => {
            let _ = writeln!(
                s,
                "MFU {:.1}% of the {peak} TFLOP/s {} peak; {:.3} GFLOP/token (6N + 12LTC, N = {} matmul weights)",
                mfu * 100.0,
                match r.precision {
                    Precision::Fp32 => "fp32 (non-tensor-core)",
                    Precision::Bf16 => "bf16 tensor-core (dense)",
                },
                r.flops_per_token / 1e9,
                r.flops_n
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "MFU: not reported ({}); {:.3} GFLOP/token (6N + 12LTC, N = {} matmul weights)",
                match &r.gpu {
                    Some(g) => format!("no {} peak on file for {g}", r.precision),
                    None => "not a GPU".into(),
                },
                r.flops_per_token / 1e9,
                r.flops_n
            );
        }
    }
    let _ = writeln!(
        s,
        "per-op time of {} profiled step(s) ({:.1} ms/step, synchronized after every op):",
        r.profiled_steps, r.profile_ms_per_step
    );
    let _ = writeln!(
        s,
        "  {:<16} {:>8} {:>10} {:>7}",
        "op", "calls", "ms/step", "share"
    );
    for o in &r.ops {
        let _ = writeln!(
            s,
            "  {:<16} {:>8} {:>10.2} {:>6.1}%",
            o.op,
            o.calls_per_step,
            o.ms_per_step,
            o.share * 100.0
        );
    }
    let _ = writeln!(s, "matmuls by shape (rows x in -> out):");
    for o in &r.matmul_shapes {
        let _ = writeln!(
            s,
            "  {:<34} {:>4} {:>10.2} {:>6.1}%",
            o.op,
            o.calls_per_step,
            o.ms_per_step,
            o.share * 100.0
        );
    }
    s
}
