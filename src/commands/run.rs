//! `train`, `eval`, `prepare`, `sample` and `export`.

use super::select_backend;
use crate::checkpoint::{self, NamedTensor};
use crate::cli::{
    EvalArgs, EvalTask, ExportArgs, ExportFormat, PrepareArgs, SampleArgs, TrainArgs,
};
use crate::config::{BackendKind, RunConfig};
use crate::data::{self, Dataset, PrepareOptions, Tokenizer};
use crate::metrics::utc_timestamp;
use crate::model::Gpt2;
use crate::rng::HostRng;
use crate::train::{self, run_dir, Trainer};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// `dyntie train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    let mut trainer = if let Some(dir) = &args.resume {
        let fixed = args.fixed_on_resume();
        ensure!(
            fixed.is_empty(),
            "--resume continues {} as its config.toml says; {} would change the run: drop {} (only --steps, --backend and --recompute may change on resume), or start a new run with --out",
            dir.display(),
            fixed.join(", "),
            if fixed.len() == 1 { "it" } else { "them" }
        );
        let cfg = run_dir::load_config(dir, "--resume")?;
        let selected = select_backend(args.model.backend.unwrap_or(cfg.backend))?;
        println!("{}", selected.why);
        let mut t = Trainer::resume(dir, selected.backend, args.steps)?;
        println!("resuming {} at step {}", dir.display(), t.step());
        if let Some(note) = t.extension_note() {
            println!("{note}");
        }
        if args.model.recompute && !t.config().train.recompute {
            t.enable_recompute()?;
            println!("activations are recomputed from here on (config.toml updated)");
        }
        t
    } else {
        let cfg = args.resolve()?;
        let dir = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(utc_timestamp()));
        let selected = select_backend(cfg.backend)?;
        println!("{}", selected.why);
        Trainer::create(cfg, selected.backend, &dir, args.force)?
    };
    describe(&trainer);
    let s = trainer.run()?;
    let pct = |a: u64, b: u64| 100.0 * (1.0 - a as f64 / b.max(1) as f64);
    println!(
        "done: {} steps in {:.1} s ({:.0} tokens/s)",
        s.steps, s.seconds, s.tokens_per_s
    );
    println!(
        "perplexity: valid {:.3}, test {:.3}",
        s.valid_ppl, s.test_ppl
    );
    println!(
        "unique blocks {}/{}; trainable parameters {:.3} M vs {:.3} M conventional ({:.0}% fewer)",
        s.unique_blocks,
        s.n_layer,
        s.counted.trainable_params as f64 / 1e6,
        s.conventional.trainable_params as f64 / 1e6,
        pct(s.counted.trainable_params, s.conventional.trainable_params)
    );
    println!(
        "counted training memory {:.1} MiB vs {:.1} MiB conventional ({:.0}% less)",
        s.counted.total_bytes as f64 / MIB,
        s.conventional.total_bytes as f64 / MIB,
        pct(s.counted.total_bytes, s.conventional.total_bytes)
    );
    println!(
        "run folder: {} (metrics.jsonl, ties.jsonl, report.svg, checkpoint/)",
        trainer.dir().display()
    );
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

fn describe(t: &Trainer) {
    let m = t.model().config();
    let n_params = t.model().global_layout().len() + m.n_layer * t.model().block_layout().len();
    let table = t.model().slots().table();
    println!(
        "model: {} blocks x width {}, {} heads, context {}, vocab {} ({:.2} M parameters untied){}",
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.n_ctx,
        m.vocab_size,
        n_params as f64 / 1e6,
        if t.model().recompute() {
            "; activations recomputed in backward"
        } else {
            ""
        }
    );
    println!(
        "tying: table {:?} ({} unique blocks); run folder {}",
        table.state(),
        table.live_slots().len(),
        t.dir().display()
    );
}

/// `dyntie eval`: perplexity on a split, or LAMBADA last-word accuracy.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let (cfg, mut model) = load_run(&args.run, args.backend)?;
    if let Some(EvalTask::Lambada) = args.task {
        let path = args
            .data
            .as_ref()
            .context("--task lambada needs --data PATH/lambada_test.jsonl")?;
        let tok = tokenizer_of(&cfg)?.context(
            "this run trained on the synthetic corpus, which is not text: LAMBADA needs a GPT-2 model",
        )?;
        let r = lambada(&mut model, &tok, Path::new(path))?;
        println!(
            "lambada: {} examples, last-word accuracy {:.2}%, target perplexity {:.3}",
            r.0,
            100.0 * r.1,
            r.2
        );
        return Ok(());
    }
    let mut cfg = cfg;
    if let Some(d) = &args.data {
        cfg.data.source = d.clone();
    }
    let data = train::open_dataset(&cfg)?;
    ensure!(
        data.vocab_size <= model.config().vocab_size,
        "dataset '{}' has vocabulary {} but the model only {}",
        data.name,
        data.vocab_size,
        model.config().vocab_size
    );
    let source = data.held_out(args.split);
    let loss = train::evaluate_split(&mut model, source, cfg.train.batch, 0)?;
    println!(
        "{} {}: loss {loss:.4}, perplexity {:.3}",
        data.name,
        args.split,
        loss.exp()
    );
    Ok(())
}

/// (examples, accuracy, perplexity of the target tokens): a target word is
/// right when every one of its tokens is the greedy prediction.
fn lambada(model: &mut Gpt2, tok: &Tokenizer, path: &Path) -> Result<(usize, f64, f64)> {
    let examples = data::lambada_examples(path, tok)?;
    let n_ctx = model.config().n_ctx;
    let v = model.config().vocab_size;
    let (mut right, mut nll, mut count) = (0usize, 0.0f64, 0usize);
    for ex in &examples {
        let mut seq: Vec<u32> = ex.context.iter().chain(&ex.target).copied().collect();
        if seq.len() > n_ctx + 1 {
            seq.drain(..seq.len() - n_ctx - 1);
        }
        let len = seq.len() - 1;
        let mut inputs = seq[..len].to_vec();
        let mut targets = vec![data::IGNORE_INDEX; len];
        let first_target = len - ex.target.len();
        targets[first_target..].copy_from_slice(&seq[first_target + 1..]);
        inputs.resize(n_ctx, 0);
        targets.resize(n_ctx, data::IGNORE_INDEX);
        let (sum, c) = model.eval_loss(&inputs, &targets, 1, n_ctx)?;
        nll += sum;
        count += c;
        let logits = model.last_logits()?;
        let all_right = (first_target..len).all(|p| {
            let row = &logits[p * v..(p + 1) * v];
            argmax(row) == targets[p] as usize
        });
        right += all_right as usize;
    }
    ensure!(!examples.is_empty(), "{} has no examples", path.display());
    Ok((
        examples.len(),
        right as f64 / examples.len() as f64,
        (nll / count.max(1) as f64).exp(),
    ))
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// The resolved config and the trained model of a run folder.
pub fn load_run(dir: &Path, backend: Option<BackendKind>) -> Result<(RunConfig, Gpt2)> {
    let cfg = run_dir::load_config(dir, "--run")?;
    let selected = select_backend(backend.unwrap_or(cfg.backend))?;
    let model = train::load_model(dir, &cfg, selected.backend)?;
    Ok((cfg, model))
}

fn tokenizer_of(cfg: &RunConfig) -> Result<Option<Tokenizer>> {
    match cfg.data.prepared_dir() {
        Some(dir) => Ok(Dataset::open(dir)?.tokenizer),
        None => Ok(None),
    }
}

/// `dyntie prepare`.
pub fn prepare(args: &PrepareArgs) -> Result<()> {
    let tok = Tokenizer::new(args.tokenizer);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("data/prepared").join(args.dataset.to_string()));
    let s = data::prepare(
        args.dataset,
        &args.input,
        &out,
        &tok,
        &PrepareOptions::default(),
    )?;
    println!(
        "{}: train {} / valid {} / test {} tokens ({} tokenizer, vocab {}) in {:.1} s -> {}",
        s.meta.dataset,
        s.meta.tokens.train,
        s.meta.tokens.valid,
        s.meta.tokens.test,
        s.meta.tokenizer,
        s.meta.vocab_size,
        s.seconds,
        s.out_dir.display()
    );
    println!(
        "train on it with: dyntie train --data {}",
        s.out_dir.display()
    );
    Ok(())
}

/// `dyntie sample`.
pub fn sample(args: &SampleArgs) -> Result<()> {
    let (cfg, mut model) = load_run(&args.run, args.backend)?;
    let tok = tokenizer_of(&cfg)?;
    let mut tokens: Vec<u32> = match (&tok, args.prompt.is_empty()) {
        (Some(t), false) => t.encode(&args.prompt),
        (Some(t), true) => t.separator(),
        (None, false) => args
            .prompt
            .split_whitespace()
            .map(|w| {
                w.parse::<u32>()
                    .ok()
                    .filter(|&id| (id as usize) < model.config().vocab_size)
                    .with_context(|| {
                        format!("the synthetic corpus is token ids: '{w}' is not an id below the vocabulary")
                    })
            })
            .collect::<Result<_>>()?,
        (None, true) => vec![0],
    };
    let n_ctx = model.config().n_ctx;
    let mut rng = HostRng::new(args.seed);
    let start = tokens.len();
    for _ in 0..args.max_new_tokens {
        let window = &tokens[tokens.len().saturating_sub(n_ctx)..];
        let logits = model.logits_last(window, window.len())?;
        tokens.push(pick(&logits, args.temperature, args.top_k, &mut rng) as u32);
    }
    match tok {
        Some(t) => println!("{}{}", args.prompt, t.decode(&tokens[start..])?),
        None => println!(
            "{}",
            tokens
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
    Ok(())
}

/// Greedy at temperature 0, else softmax sampling among the top `k` (0 = all).
fn pick(logits: &[f32], temperature: f32, k: usize, rng: &mut HostRng) -> usize {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if k > 0 {
        idx.truncate(k);
    }
    let max = logits[idx[0]] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature as f64).exp())
        .collect();
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (j, wj) in w.iter().enumerate() {
        u -= wj;
        if u <= 0.0 {
            return idx[j];
        }
    }
    idx[idx.len() - 1]
}

/// `dyntie export --format hf`: `config.json` and `model.safetensors` in the
/// Hugging Face GPT-2 layout (Conv1D weights are `[in, out]`, the transpose
/// of ours; `lm_head` is tied to `wte` and not stored), plus
/// `dyntie_check.json` with logits for a fixed input so that
/// `scripts/check_hf_export.py` can compare `transformers` against dyntie.
pub fn export(args: &ExportArgs) -> Result<()> {
    let ExportFormat::Hf = args.format;
    let (_, mut model) = load_run(&args.run, Some(BackendKind::Cpu))?;
    let m = model.config().clone();
    ensure!(
        m.bias,
        "Hugging Face GPT-2 always has biases; this run trained without (bias = false)"
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut tensors = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        tensors.push(NamedTensor::new(name, shape, data));
    };
    put(
        "transformer.wte.weight".into(),
        vec![m.vocab_size, m.n_embd],
        model.read_param("wte")?,
    );
    put(
        "transformer.wpe.weight".into(),
        vec![m.n_ctx, m.n_embd],
        model.read_param("wpe")?,
    );
    put(
        "transformer.ln_f.weight".into(),
        vec![m.n_embd],
        model.read_param("ln_f.weight")?,
    );
    put(
        "transformer.ln_f.bias".into(),
        vec![m.n_embd],
        model.read_param("ln_f.bias")?,
    );
    let ours_to_hf = [
        ("ln1.weight", "ln_1.weight"),
        ("ln1.bias", "ln_1.bias"),
        ("attn.qkv.weight", "attn.c_attn.weight"),
        ("attn.qkv.bias", "attn.c_attn.bias"),
        ("attn.proj.weight", "attn.c_proj.weight"),
        ("attn.proj.bias", "attn.c_proj.bias"),
        ("ln2.weight", "ln_2.weight"),
        ("ln2.bias", "ln_2.bias"),
        ("mlp.fc.weight", "mlp.c_fc.weight"),
        ("mlp.fc.bias", "mlp.c_fc.bias"),
        ("mlp.proj.weight", "mlp.c_proj.weight"),
        ("mlp.proj.bias", "mlp.c_proj.bias"),
    ];
    for layer in 0..m.n_layer {
        for (ours, hf) in ours_to_hf {
            let entry = model
                .block_layout()
                .get(ours)
                .with_context(|| format!("the block layout has no {ours}"))?;
            let data = model.read_param(&format!("h.{layer}.{ours}"))?;
            let name = format!("transformer.h.{layer}.{hf}");
            if let [out, inp] = entry.shape[..] {
                put(name, vec![inp, out], transpose(&data, out, inp));
            } else {
                put(name, entry.shape.clone(), data);
            }
        }
    }
    let config = serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": m.vocab_size,
        "n_positions": m.n_ctx,
        "n_ctx": m.n_ctx,
        "n_embd": m.n_embd,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "resid_pdrop": m.dropout,
        "embd_pdrop": m.dropout,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": crate::backend::LAYERNORM_EPS,
        "initializer_range": 0.02,
        "tie_word_embeddings": true,
        "bos_token_id": 50256.min(m.vocab_size - 1),
        "eos_token_id": 50256.min(m.vocab_size - 1),
    });
    // A fixed input and dyntie's logits for it, for the comparison script.
    let len = m.n_ctx.min(16);
    let mut rng = HostRng::new(7);
    let input: Vec<u32> = (0..len)
        .map(|_| rng.below(m.vocab_size as u64) as u32)
        .collect();
    let targets = vec![data::IGNORE_INDEX; len];
    model.eval_loss(&input, &targets, 1, len)?;
    let logits = model.last_logits()?;
    let check =
        serde_json::json!({ "input_ids": input, "logits": logits, "vocab_size": m.vocab_size });
    let out = &args.out;
    std::fs::write(
        out.join("model.safetensors"),
        checkpoint::safetensors_bytes(&tensors)?,
    )
    .with_context(|| format!("cannot write {}", out.join("model.safetensors").display()))?;
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(out.join("dyntie_check.json"), serde_json::to_vec(&check)?)?;
    println!(
        "wrote {} (Hugging Face GPT-2 layout); check it with: python3 scripts/check_hf_export.py {}",
        out.display(),
        out.display()
    );
    Ok(())
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}
