//! `dyntie prepare`: a corpus into train/valid/test token files.

use crate::cli::PrepareArgs;
use crate::data::{self, PrepareOptions, Tokenizer};
use anyhow::Result;
use std::path::PathBuf;

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
        &PrepareOptions {
            force: args.force,
            ..PrepareOptions::default()
        },
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
