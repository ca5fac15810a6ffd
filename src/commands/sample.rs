//! `dyntie sample`: text (or, for the synthetic corpus, token ids) from a
//! trained run.

use super::{argmax, load_run, tokenizer_of};
use crate::cli::SampleArgs;
use crate::rng::HostRng;
use anyhow::{Context, Result};

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
