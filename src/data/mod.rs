//! Tokenizers, dataset preparation, memory-mapped token files, batches.
//!
//! - [`Tokenizer`]: GPT-2 BPE or bytes.
//! - [`tokfile`]: the `.bin` token file format (layout in its doc).
//! - [`prepare()`]: corpus layouts to `train/valid/test.bin` + `meta.json`.
//! - [`synthetic`]: a seeded corpus with a known entropy floor.
//! - [`TrainBatcher`], [`EvalWindows`]: training and evaluation windows.
//! - [`Dataset`]: a prepared folder or the synthetic corpus.

pub mod batch;
pub mod prepare;
pub mod synthetic;
pub mod tokenizer;
pub mod tokfile;

pub use batch::{Batch, EvalWindows, TokenSource, TrainBatcher, IGNORE_INDEX};
pub use prepare::{
    count_words, lambada_examples, lambada_examples_from_text, lambada_texts, prepare, Corpus,
    LambadaExample, Meta, PrepareOptions, PrepareSummary, WordCount,
};
pub use synthetic::{Synthetic, SyntheticConfig};
pub use tokenizer::{Tokenizer, TokenizerKind};
pub use tokfile::TokenFile;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use sha2::{Digest, Sha256};
use std::path::Path;

impl Meta {
    /// Parses and checks the text of a `meta.json`.
    pub fn parse(json: &str) -> Result<Meta> {
        let meta: Meta = serde_json::from_str(json)?;
        if meta.format_version != prepare::META_VERSION {
            bail!(
                "format version {} (expected {})",
                meta.format_version,
                prepare::META_VERSION
            );
        }
        if meta.vocab_size == 0 || meta.vocab_size > u32::MAX as usize {
            bail!("vocab_size {} is not a vocabulary size", meta.vocab_size);
        }
        Ok(meta)
    }

    /// What identifies the tokens: a hash of the tokenizer, the counts and
    /// the token files' own hashes (or, for a meta.json written before
    /// those were recorded, the sources' hashes). The same corpus prepared
    /// again the same way gets the same id; another tokenizer or corpus
    /// gets another.
    pub fn content_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "{}|{}|{}|{}|{}|{}",
            self.tokenizer,
            self.vocab_size,
            self.dataset,
            self.tokens.train,
            self.tokens.valid,
            self.tokens.test
        ));
        match &self.token_sha256 {
            Some(t) => h.update(format!("|{}|{}|{}", t.train, t.valid, t.test)),
            None => {
                for s in &self.sources {
                    h.update(format!("|{}", s.sha256));
                }
            }
        }
        format!("{:x}", h.finalize())[..16].to_string()
    }
}

/// A held-out split, the ones evaluation reads (`--split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Valid,
    Test,
}
crate::choice_text!(Split, "split");

/// A dataset's three splits and, for text corpora, its tokenizer.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    /// `None` for the synthetic corpus (its ids are not text).
    pub tokenizer: Option<Tokenizer>,
    /// A prepared dataset's content hash (see [`Meta::content_id`]);
    /// `None` for the synthetic corpus, which the run seed defines.
    pub id: Option<String>,
    pub vocab_size: usize,
    pub train: TokenSource,
    pub valid: TokenSource,
    pub test: TokenSource,
}

impl Dataset {
    /// Reads and checks `meta.json` of a prepared folder.
    pub fn read_meta(dir: &Path) -> Result<Meta> {
        let meta_path = dir.join("meta.json");
        let json = std::fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "cannot read {}; run `dyntie prepare` to create the dataset",
                meta_path.display()
            )
        })?;
        Meta::parse(&json).with_context(|| {
            format!(
                "{} is not a valid meta.json; re-run `dyntie prepare`",
                meta_path.display()
            )
        })
    }

    /// The vocabulary size a prepared folder's meta.json declares.
    pub fn vocab_of(dir: &Path) -> Result<usize> {
        Ok(Self::read_meta(dir)?.vocab_size)
    }

    /// Open a folder written by [`prepare()`], checking the token files
    /// against `meta.json`.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let meta = Self::read_meta(dir)?;
        let tokenizer = Tokenizer::new(meta.tokenizer);
        let counts = [meta.tokens.train, meta.tokens.valid, meta.tokens.test];
        let mut sources = Vec::new();
        for (split, count) in prepare::SPLITS.iter().zip(counts) {
            let file = TokenFile::open(&dir.join(format!("{split}.bin")))?;
            if file.len() as u64 != count || file.vocab_size() != meta.vocab_size {
                bail!(
                    "{}: {} tokens with vocab {}, but meta.json says {count} with vocab {}; \
                     re-run `dyntie prepare`",
                    file.path().display(),
                    file.len(),
                    file.vocab_size(),
                    meta.vocab_size
                );
            }
            sources.push(TokenSource::from_file(split, file));
        }
        let [train, valid, test]: [TokenSource; 3] = sources
            .try_into()
            .map_err(|_| anyhow::anyhow!("three splits"))?;
        Ok(Dataset {
            name: meta.dataset.clone(),
            tokenizer: Some(tokenizer),
            id: Some(meta.content_id()),
            vocab_size: meta.vocab_size,
            train,
            valid,
            test,
        })
    }

    /// The tokenizer's name, as meta.json and config.toml write it.
    pub fn tokenizer_kind(&self) -> Option<TokenizerKind> {
        self.tokenizer.as_ref().map(Tokenizer::kind)
    }

    /// The tokens of a held-out split.
    pub fn held_out(&self, split: Split) -> TokenSource {
        match split {
            Split::Valid => self.valid.clone(),
            Split::Test => self.test.clone(),
        }
    }

    /// Generate the synthetic corpus in memory.
    pub fn synthetic(cfg: SyntheticConfig) -> Result<Dataset> {
        let syn = Synthetic::new(cfg.clone())?;
        Ok(Dataset {
            name: "synthetic".to_string(),
            tokenizer: None,
            id: None,
            vocab_size: cfg.vocab,
            train: TokenSource::from_vec("train", syn.generate(cfg.train_tokens, 0)),
            valid: TokenSource::from_vec("valid", syn.generate(cfg.valid_tokens, 1)),
            test: TokenSource::from_vec("test", syn.generate(cfg.test_tokens, 2)),
        })
    }
}
