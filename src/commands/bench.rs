//! `dyntie bench`: memory accounting (and, below, the timed benchmarks).

use crate::cli::BenchArgs;
use crate::config::RunConfig;
use crate::model::{activation_bytes, Gpt2Config};
use crate::rng::HostRng;
use crate::train::{model_shape, tie_options};
use crate::tying::accounting::{format_memory_table, MemoryReport};
use crate::tying::policy::TyingPolicy;
use crate::tying::table::TieTable;
use anyhow::{bail, Context, Result};

/// `dyntie bench WHAT`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    match args.what.as_str() {
        "memory" => memory(args),
        other => bail!("dyntie bench '{other}' is unknown: use memory"),
    }
}

/// The model config of a bench run: the preset and flags; vocab 0 means GPT-2's.
fn bench_model(cfg: &RunConfig) -> Gpt2Config {
    let m = &cfg.model;
    Gpt2Config {
        n_layer: m.n_layer,
        n_embd: m.n_embd,
        n_head: m.n_head,
        n_ctx: m.n_ctx,
        vocab_size: if m.vocab_size == 0 {
            50257
        } else {
            m.vocab_size
        },
        dropout: m.dropout,
        bias: m.bias,
    }
}

/// Counted training memory for each requested tie pattern.
fn memory(args: &BenchArgs) -> Result<()> {
    let cfg = args.model.resolve()?;
    cfg.validate()?;
    let mc = bench_model(&cfg);
    mc.validate()?;
    let shape = model_shape(&mc);
    let acts = activation_bytes(&mc, cfg.train.batch, mc.n_ctx) as u64;
    let options = tie_options(&cfg)?;
    let mut rows: Vec<(String, MemoryReport)> = Vec::new();
    let mut patterns = args.patterns.clone();
    if patterns.is_empty() && args.from_run.is_none() {
        patterns = vec!["none".into(), "all".into()];
    }
    for p in &patterns {
        let policy = TyingPolicy::parse(p, mc.n_layer)?;
        if policy.is_dynamic() {
            bail!("--patterns: 'dynamic' has no fixed table; give --from-run DIR for a trained run's table");
        }
        let seed = HostRng::new(cfg.train.seed).next_u64();
        let state = policy.initial_state(mc.n_layer, seed, options.init)?;
        let table = TieTable::from_state(&state, options)?;
        rows.push((
            p.clone(),
            MemoryReport::from_table(&shape, &table, false, acts),
        ));
    }
    if let Some(dir) = &args.from_run {
        let ties = crate::metrics::read_jsonl(&dir.join("ties.jsonl"))?;
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
            MemoryReport::from_table(&shape, &table, false, acts),
        ));
    }
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(name, r)| serde_json::json!({ "pattern": name, "report": r }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": mc, "batch": cfg.train.batch, "rows": out
            }))?
        );
    } else {
        println!(
            "model: {} blocks x width {}, {} heads, context {}, vocab {}, batch {} (fp32, AdamW)",
            mc.n_layer, mc.n_embd, mc.n_head, mc.n_ctx, mc.vocab_size, cfg.train.batch
        );
        let refs: Vec<(&str, &MemoryReport)> = rows.iter().map(|(n, r)| (n.as_str(), r)).collect();
        print!("{}", format_memory_table(&refs));
    }
    Ok(())
}
