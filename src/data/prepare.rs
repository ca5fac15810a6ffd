//! `prepare`: turn a corpus in its usual layout into `train.bin`,
//! `valid.bin`, `test.bin` and `meta.json`.
//!
//! Layouts (`input` is a folder unless noted):
//! - `wikitext-2`, `wikitext-103`: `wiki.{train,valid,test}.tokens`, or the
//!   `.raw` variant. Each file is tokenized as one text, newlines included
//!   (the usual GPT-2 convention), so line ends become BPE tokens such as
//!   `\n` (198); the parallel encoder gives exactly the tokens of a
//!   whole-file encode.
//! - `lambada`: `lambada_test.jsonl` (folder or the file), one
//!   `{"text": ...}` per line. Evaluation only: all passages go to
//!   `test.bin`, each followed by the separator (`<|endoftext|>`);
//!   `train.bin` and `valid.bin` are empty.
//! - `lm1b` (One Billion Word): training shards
//!   `training-monolingual.tokenized.shuffled/news.en-*-of-00100` (all, in
//!   name order) form train; the held-out shard
//!   `heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050`
//!   is test and `...-00001-of-00050` is valid. Each line is one sentence,
//!   tokenized alone and followed by the separator.
//! - `text`: any UTF-8 file, cut on line boundaries into train/valid/test by
//!   byte fractions (default 0.9/0.05/0.05).
//!
//! The separator is `<|endoftext|>` for GPT-2 and `\n` for bytes.

use super::tokenizer::{Tokenizer, TokenizerKind};
use super::tokfile::{write_atomic, write_tokens, TokenWriter};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const SPLITS: [&str; 3] = ["train", "valid", "test"];
pub const META_VERSION: u32 = 1;

/// The corpus layouts `prepare` understands (`--dataset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Corpus {
    #[value(name = "wikitext-2")]
    WikiText2,
    #[value(name = "wikitext-103")]
    WikiText103,
    Lambada,
    Lm1b,
    Text,
}
crate::choice_text!(Corpus, "dataset");

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Fractions of train/valid/test for the `text` layout.
    pub split_ratio: [f64; 3],
    /// Replace a dataset already in the output folder.
    pub force: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            split_ratio: [0.9, 0.05, 0.05],
            force: false,
        }
    }
}

/// The sha256 of each token file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitHashes {
    pub train: String,
    pub valid: String,
    pub test: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: u64,
    pub valid: u64,
    pub test: u64,
}

/// Contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format_version: u32,
    pub dataset: String,
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub tokens: SplitCounts,
    pub sources: Vec<SourceFile>,
    /// The token files' hashes (absent in datasets prepared before they
    /// were recorded); part of the dataset's content id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<SplitHashes>,
}

#[derive(Clone, Debug)]
pub struct PrepareSummary {
    pub out_dir: PathBuf,
    pub meta: Meta,
    pub seconds: f64,
}

/// Prepare `input` (see the module doc for layouts) into `out_dir`: a
/// folder that does not exist, an empty one, or (with `options.force`) one
/// holding a dataset. Everything is written into a folder beside it first
/// and moved in only when complete; meta.json last, so a folder is never
/// taken for a dataset while its files are being replaced.
pub fn prepare(
    corpus: Corpus,
    input: &Path,
    out_dir: &Path,
    tokenizer: &Tokenizer,
    options: &PrepareOptions,
) -> Result<PrepareSummary> {
    let t0 = Instant::now();
    if !input.exists() {
        bail!(
            "input {} does not exist; give the {} folder or file",
            input.display(),
            corpus
        );
    }
    check_out_dir(out_dir, options.force)?;
    let staging = Staging::new(out_dir)?;
    let meta = prepare_into(corpus, input, &staging.dir, tokenizer, options)?;
    staging.move_into(out_dir)?;
    Ok(PrepareSummary {
        out_dir: out_dir.to_path_buf(),
        meta,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The files a prepared dataset consists of.
const DATASET_FILES: [&str; 4] = ["train.bin", "valid.bin", "test.bin", "meta.json"];

/// Refuses an output folder that is a file, holds something other than a
/// dataset, or holds a dataset and `force` is not given.
fn check_out_dir(out_dir: &Path, force: bool) -> Result<()> {
    let d = out_dir.display();
    if !out_dir.exists() {
        return Ok(());
    }
    if !out_dir.is_dir() {
        bail!("--out {d} is a file, not a folder");
    }
    let has_dataset = DATASET_FILES.iter().any(|f| out_dir.join(f).exists());
    let empty = std::fs::read_dir(out_dir)
        .with_context(|| format!("cannot list --out {d}"))?
        .next()
        .is_none();
    if has_dataset && !force {
        bail!(
            "--out {d} already holds a dataset: runs trained on it would no longer match it; \
             choose another --out, or replace it with --force"
        );
    }
    if !has_dataset && !empty {
        bail!("--out {d} is not empty and holds no dataset: choose a new or empty folder");
    }
    Ok(())
}

/// A folder beside the output folder that a dataset is written into
/// before it replaces the output's files; removed when dropped.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(out_dir: &Path) -> Result<Staging> {
        let mut name = out_dir
            .file_name()
            .with_context(|| format!("--out {} has no folder name", out_dir.display()))?
            .to_os_string();
        name.push(".prepare-tmp");
        let dir = out_dir.with_file_name(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        create_out_dir(&dir)?;
        Ok(Staging { dir })
    }

    /// Moves the finished dataset into `out_dir`: the old meta.json goes
    /// first and the new one comes last.
    fn move_into(&self, out_dir: &Path) -> Result<()> {
        create_out_dir(out_dir)?;
        let meta = out_dir.join("meta.json");
        if meta.exists() {
            std::fs::remove_file(&meta)
                .with_context(|| format!("cannot remove {}", meta.display()))?;
        }
        for f in DATASET_FILES {
            let (from, to) = (self.dir.join(f), out_dir.join(f));
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole preparation, into `out_dir` (the staging folder).
fn prepare_into(
    corpus: Corpus,
    input: &Path,
    out_dir: &Path,
    tokenizer: &Tokenizer,
    options: &PrepareOptions,
) -> Result<Meta> {
    let mut sources = Vec::new();
    let vocab = tokenizer.vocab_size();
    let counts: [u64; 3] = match corpus {
        Corpus::WikiText2 | Corpus::WikiText103 => {
            let ext = ["tokens", "raw"]
                .into_iter()
                .find(|e| input.join(format!("wiki.train.{e}")).is_file())
                .with_context(|| {
                    format!(
                        "{}: no wiki.train.tokens or wiki.train.raw; give the folder of the \
                         extracted {} archive",
                        input.display(),
                        corpus
                    )
                })?;
            let mut out = Vec::new();
            for split in SPLITS {
                let text = read_text(&input.join(format!("wiki.{split}.{ext}")), &mut sources)?;
                out.push(tokenizer.encode(&text));
            }
            write_splits(out_dir, vocab, out.try_into().unwrap())?
        }
        Corpus::Lambada => {
            let file = if input.is_dir() {
                input.join("lambada_test.jsonl")
            } else {
                input.to_path_buf()
            };
            let text = read_text(&file, &mut sources)?;
            let docs = lambada_texts(&file, &text)?;
            let test = encode_documents(tokenizer, &docs);
            write_splits(out_dir, vocab, [Vec::new(), Vec::new(), test])?
        }
        Corpus::Lm1b => prepare_lm1b(input, out_dir, tokenizer, &mut sources)?,
        Corpus::Text => {
            if input.is_dir() {
                bail!(
                    "{} is a folder; the text dataset takes one UTF-8 file",
                    input.display()
                );
            }
            let text = read_text(input, &mut sources)?;
            let [a, b] = split_points(&text, options.split_ratio)?;
            let parts = [&text[..a], &text[a..b], &text[b..]];
            write_splits(out_dir, vocab, parts.map(|p| tokenizer.encode(p)))?
        }
    };

    let meta = Meta {
        format_version: META_VERSION,
        dataset: corpus.to_string(),
        tokenizer: tokenizer.kind(),
        vocab_size: vocab,
        tokens: SplitCounts {
            train: counts[0],
            valid: counts[1],
            test: counts[2],
        },
        sources,
        token_sha256: Some(SplitHashes {
            train: file_sha256(&bin_path(out_dir, "train"))?,
            valid: file_sha256(&bin_path(out_dir, "valid"))?,
            test: file_sha256(&bin_path(out_dir, "test"))?,
        }),
    };
    let json = serde_json::to_string_pretty(&meta)?;
    write_atomic(&out_dir.join("meta.json"), json.as_bytes())?;
    Ok(meta)
}

/// The sha256 of a file, read in pieces.
fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn create_out_dir(out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output folder {}", out_dir.display()))
}

fn bin_path(out_dir: &Path, split: &str) -> PathBuf {
    out_dir.join(format!("{split}.bin"))
}

fn write_splits(out_dir: &Path, vocab: usize, splits: [Vec<u32>; 3]) -> Result<[u64; 3]> {
    create_out_dir(out_dir)?;
    for (split, toks) in SPLITS.iter().zip(&splits) {
        write_tokens(&bin_path(out_dir, split), toks, vocab)?;
    }
    Ok(splits.map(|s| s.len() as u64))
}

/// Read a UTF-8 file and record its size and sha256.
fn read_text(path: &Path, sources: &mut Vec<SourceFile>) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    sources.push(SourceFile {
        path: path.display().to_string(),
        bytes: bytes.len() as u64,
        sha256: format!("{:x}", Sha256::digest(&bytes)),
    });
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (first bad byte at offset {}); convert it to UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Encode independent documents in parallel, each followed by the separator.
fn encode_documents<S: AsRef<str> + Sync>(tokenizer: &Tokenizer, docs: &[S]) -> Vec<u32> {
    let sep = tokenizer.separator();
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map(|d| {
            let mut t = tokenizer.encode(d.as_ref());
            t.extend_from_slice(&sep);
            t
        })
        .collect();
    encoded.concat()
}

/// The passages of a LAMBADA jsonl text (`path` names it in errors).
pub fn lambada_texts(path: &Path, text: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Line {
        text: String,
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Line>(l)
                .map(|x| x.text)
                .with_context(|| {
                    format!(
                        "{}:{}: expected a JSON object {{\"text\": ...}}",
                        path.display(),
                        i + 1
                    )
                })
        })
        .collect()
}

/// One LAMBADA example: predict `target` (the last word, with its leading
/// space) from `context` (the passage before it, trailing spaces removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LambadaExample {
    pub context: Vec<u32>,
    pub target: Vec<u32>,
}

/// Read `lambada_test.jsonl` (or a folder holding it) into examples.
pub fn lambada_examples(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<LambadaExample>> {
    let file = if path.is_dir() {
        path.join("lambada_test.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = read_text(&file, &mut Vec::new())?;
    lambada_examples_from_text(&file, &text, tokenizer)
}

/// The examples of the text of a LAMBADA jsonl file (`file` names it in
/// errors): each passage's last word is the target.
pub fn lambada_examples_from_text(
    file: &Path,
    text: &str,
    tokenizer: &Tokenizer,
) -> Result<Vec<LambadaExample>> {
    let texts = lambada_texts(file, text)?;
    texts
        .par_iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.trim_end();
            let cut = t.rfind(char::is_whitespace).with_context(|| {
                format!(
                    "{} example {}: needs at least two words",
                    file.display(),
                    i + 1
                )
            })?;
            let word = t[cut..].trim_start();
            Ok(LambadaExample {
                context: tokenizer.encode(t[..cut].trim_end()),
                target: tokenizer.encode(&format!(" {word}")),
            })
        })
        .collect()
}

fn prepare_lm1b(
    input: &Path,
    out_dir: &Path,
    tokenizer: &Tokenizer,
    sources: &mut Vec<SourceFile>,
) -> Result<[u64; 3]> {
    let train_dir = input.join("training-monolingual.tokenized.shuffled");
    let held_dir = input.join("heldout-monolingual.tokenized.shuffled");
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&train_dir)
        .with_context(|| {
            format!(
                "cannot list {}; give the One Billion Word folder that holds it",
                train_dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("news.en-") && n.ends_with("-of-00100")
        })
        .collect();
    if shards.is_empty() {
        bail!(
            "{}: no news.en-*-of-00100 training shards",
            train_dir.display()
        );
    }
    shards.sort();
    let held = |k: u32| held_dir.join(format!("news.en.heldout-{k:05}-of-00050"));
    for k in [0, 1] {
        if !held(k).is_file() {
            bail!(
                "{}: missing; the held-out shards 00000 (test) and 00001 (valid) are needed",
                held(k).display()
            );
        }
    }
    let sentences = |path: &Path, sources: &mut Vec<SourceFile>| -> Result<Vec<u32>> {
        let text = read_text(path, sources)?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        Ok(encode_documents(tokenizer, &lines))
    };
    create_out_dir(out_dir)?;
    // The full training set is ~0.8 G tokens: stream it one shard at a time.
    let vocab = tokenizer.vocab_size();
    let mut train = TokenWriter::create(&bin_path(out_dir, "train"), vocab)?;
    for shard in &shards {
        train.push(&sentences(shard, sources)?)?;
    }
    let train = train.finish()?;
    let mut counts = [train, 0, 0];
    for (i, k) in [(1, 1), (2, 0)] {
        let toks = sentences(&held(k), sources)?;
        write_tokens(&bin_path(out_dir, SPLITS[i]), &toks, vocab)?;
        counts[i] = toks.len() as u64;
    }
    Ok(counts)
}

/// Byte offsets where valid and test begin: the first line start at or
/// after each cumulative fraction.
fn split_points(text: &str, ratio: [f64; 3]) -> Result<[usize; 2]> {
    let sum: f64 = ratio.iter().sum();
    if ratio.iter().any(|r| r.is_nan() || *r <= 0.0) || (sum - 1.0).abs() > 1e-6 {
        bail!("split ratio {ratio:?} must be three positive fractions summing to 1");
    }
    let line_start_after = |frac: f64| {
        let at = ((text.len() as f64 * frac) as usize).min(text.len());
        if at == 0 {
            return 0;
        }
        text[at - 1..].find('\n').map_or(text.len(), |i| at + i)
    };
    Ok([
        line_start_after(ratio[0]),
        line_start_after(ratio[0] + ratio[1]),
    ])
}

/// Whitespace word count: `lines`, and `tokens` counting one `<eos>` per
/// line (the usual WikiText word-level statistic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordCount {
    pub lines: usize,
    pub tokens: usize,
}

pub fn count_words(path: &Path) -> Result<WordCount> {
    let text = read_text(path, &mut Vec::new())?;
    let mut wc = WordCount {
        lines: 0,
        tokens: 0,
    };
    for line in text.lines() {
        wc.lines += 1;
        wc.tokens += line.split_whitespace().count() + 1;
    }
    Ok(wc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points_land_on_line_starts() {
        let text = "aaaa\nbbbb\ncccc\ndddd\n";
        let [a, b] = split_points(text, [0.5, 0.25, 0.25]).unwrap();
        assert_eq!(&text[..a], "aaaa\nbbbb\n");
        assert_eq!(&text[a..b], "cccc\n");
        assert_eq!(&text[b..], "dddd\n");
        assert!(split_points(text, [0.5, 0.5, 0.0]).is_err());
        assert!(split_points(text, [0.5, 0.3, 0.3]).is_err());
    }
}
