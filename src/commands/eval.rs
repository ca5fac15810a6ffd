//! `dyntie eval`: a trained run's perplexity on a split, or its LAMBADA
//! last-word accuracy.

use super::{argmax, load_run, tokenizer_of};
use crate::cli::{EvalArgs, EvalTask};
use crate::config::RunConfig;
use crate::data::{self, Tokenizer};
use crate::model::Gpt2;
use crate::train;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// `dyntie eval`: perplexity on a split, or LAMBADA last-word accuracy.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let (cfg, mut model) = load_run(&args.run, args.backend)?;
    match args.task {
        None => perplexity(args, cfg, &mut model),
        Some(EvalTask::Lambada) => {
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
            Ok(())
        }
    }
}

/// The loss and perplexity on `--split` of the run's dataset (or of the one
/// `--data` names).
fn perplexity(args: &EvalArgs, mut cfg: RunConfig, model: &mut Gpt2) -> Result<()> {
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
    let loss = train::evaluate_split(model, source, cfg.train.batch, 0)?;
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
