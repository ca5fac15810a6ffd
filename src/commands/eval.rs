//! `dyntie eval`: a trained run's perplexity on a split, or its LAMBADA
//! last-word accuracy.

use super::{argmax, load_run, tokenizer_of};
use crate::cli::{EvalArgs, EvalTask};
use crate::config::RunConfig;
use crate::data::{self, Tokenizer};
use crate::model::Model;
use crate::train;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// `dyntie eval`: perplexity on a split, or LAMBADA last-word accuracy.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let (cfg, mut model) = load_run(&args.run, args.backend, args.allow_non_finite)?;
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
                r.examples,
                100.0 * r.accuracy,
                r.perplexity
            );
            if r.unscored > 0 {
                println!(
                    "{} of them could not be scored (a target word longer than the context of \
                     {}, or no context) and count as wrong",
                    r.unscored,
                    model.config().n_ctx
                );
            }
            ensure!(
                r.perplexity.is_finite(),
                "the target perplexity is {}: the model is broken",
                r.perplexity
            );
            Ok(())
        }
    }
}

/// The loss and perplexity on `--split` of the run's dataset (checked to
/// be the one it trained on) or of the one `--data` names (checked to use
/// the run's tokenizer).
fn perplexity(args: &EvalArgs, cfg: RunConfig, model: &mut Model) -> Result<()> {
    let data = train::open_run_dataset(&cfg, args.data.as_deref().map(Path::new))?;
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
    ensure!(
        loss.is_finite(),
        "the {} loss is {loss}: the model assigns some token no probability",
        args.split
    );
    Ok(())
}

/// LAMBADA's numbers: a target word is right when every one of its tokens
/// is the greedy prediction.
struct Lambada {
    examples: usize,
    accuracy: f64,
    /// Perplexity of the scored target tokens.
    perplexity: f64,
    /// Examples that cannot be scored (counted as wrong): a target of more
    /// tokens than the context, or nothing before it.
    unscored: usize,
}

fn lambada(model: &mut Model, tok: &Tokenizer, path: &Path) -> Result<Lambada> {
    let examples = data::lambada_examples(path, tok)?;
    ensure!(!examples.is_empty(), "{} has no examples", path.display());
    let n_ctx = model.config().n_ctx;
    let v = model.config().vocab_size;
    let (mut right, mut nll, mut count, mut unscored) = (0usize, 0.0f64, 0usize, 0usize);
    for ex in &examples {
        // The first target token needs one token before it, and the whole
        // target must lie inside the window of n_ctx inputs.
        if ex.context.is_empty() || ex.target.is_empty() || ex.target.len() > n_ctx {
            unscored += 1;
            continue;
        }
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
    Ok(Lambada {
        examples: examples.len(),
        accuracy: right as f64 / examples.len() as f64,
        perplexity: (nll / count.max(1) as f64).exp(),
        unscored,
    })
}
