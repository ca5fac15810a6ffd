//! `dyntie sample`: text (or, for the synthetic corpus, token ids) from a
//! trained run, printed as it is generated.

use super::{argmax, load_run, tokenizer_of};
use crate::cli::SampleArgs;
use crate::data::Tokenizer;
use crate::rng::HostRng;
use anyhow::{bail, Context, Result};
use std::io::Write;

/// `dyntie sample`.
pub fn sample(args: &SampleArgs) -> Result<()> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature {} must be a number >= 0 (0 picks the most likely token)",
            args.temperature
        );
    }
    let (cfg, mut model) = load_run(&args.run, args.backend, args.allow_non_finite)?;
    let vocab = model.config().vocab_size;
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
                    .filter(|&id| (id as usize) < vocab)
                    .with_context(|| {
                        format!("the synthetic corpus is token ids: '{w}' is not an id below the vocabulary of {vocab}")
                    })
            })
            .collect::<Result<_>>()?,
        (None, true) => vec![0],
    };
    if tokens.is_empty() {
        // A prompt of only whitespace under a tokenizer that drops nothing
        // still encodes to tokens; this covers any that would not.
        tokens = tok.as_ref().map_or(vec![0], Tokenizer::separator);
    }
    let n_ctx = model.config().n_ctx;
    // Ids the tokenizer has no text for (a vocabulary padded beyond it)
    // are never drawn.
    let drawable = tok.as_ref().map_or(vocab, |t| t.vocab_size().min(vocab));
    let mut rng = HostRng::new(args.seed);
    let mut out = Printer::new(tok, &args.prompt, &tokens)?;
    for _ in 0..args.max_new_tokens {
        let window = &tokens[tokens.len().saturating_sub(n_ctx)..];
        let logits = model.logits_last(window, window.len())?;
        let next = pick(&logits[..drawable], args.temperature, args.top_k, &mut rng) as u32;
        tokens.push(next);
        out.push(next)?;
    }
    out.finish()
}

/// Writes the sample as it grows: the prompt, then each new token as soon
/// as it is text. BPE tokens can end in the middle of a UTF-8 character,
/// so decoded bytes wait until they complete one.
struct Printer {
    tok: Option<Tokenizer>,
    /// Generated tokens whose bytes are not all printed yet.
    pending: Vec<u32>,
    stdout: std::io::Stdout,
}

impl Printer {
    fn new(tok: Option<Tokenizer>, prompt: &str, prompt_tokens: &[u32]) -> Result<Printer> {
        let mut p = Printer {
            tok,
            pending: Vec::new(),
            stdout: std::io::stdout(),
        };
        let start = match &p.tok {
            Some(_) => prompt.to_string(),
            None => join_ids(prompt_tokens),
        };
        p.write(&start)?;
        Ok(p)
    }

    fn push(&mut self, id: u32) -> Result<()> {
        let Some(tok) = &self.tok else {
            return self.write(&format!(" {id}"));
        };
        self.pending.push(id);
        let bytes = tok.decode_bytes(&self.pending)?;
        // Print up to the last complete character; keep the tokens whose
        // bytes are cut (at most 3 bytes of one character wait).
        let valid = match std::str::from_utf8(&bytes) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Bytes that are never UTF-8 print as U+FFFD, like decode does.
            Err(_) => bytes.len(),
        };
        if valid == bytes.len() {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            self.pending.clear();
            return self.write(&text);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if let Some(tok) = &self.tok {
            let rest = tok.decode(&self.pending)?;
            self.write(&rest)?;
        }
        self.write("\n")
    }

    fn write(&mut self, text: &str) -> Result<()> {
        let mut lock = self.stdout.lock();
        lock.write_all(text.as_bytes())
            .and_then(|_| lock.flush())
            .context("cannot write the sample to stdout")
    }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(" ")
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
