//! Tokenizers: GPT-2 BPE (r50k_base, via `tiktoken-rs`, offline) and bytes.

use anyhow::{Context, Result};
use clap::ValueEnum;
use rayon::prelude::*;
use tiktoken_rs::CoreBPE;

/// GPT-2's `<|endoftext|>` id.
pub const GPT2_EOT: u32 = 50256;
const GPT2_VOCAB: usize = 50257;

/// Texts larger than this are cut into chunks that are encoded in parallel.
const CHUNK_BYTES: usize = 1 << 16;

/// Which tokenizer (`--tokenizer`, and `tokenizer` in `meta.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenizerKind {
    /// GPT-2's byte-level BPE (r50k_base).
    #[value(alias = "r50k_base")]
    Gpt2,
    /// One token per UTF-8 byte.
    #[value(alias = "bytes")]
    Byte,
}
crate::choice_text!(TokenizerKind, "tokenizer");

/// A tokenizer, ready to encode.
#[derive(Clone)]
pub enum Tokenizer {
    /// GPT-2 byte-level BPE. The ranks table is built once per process.
    Gpt2(&'static CoreBPE),
    /// One token per UTF-8 byte.
    Byte,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind())
    }
}

/// A tokenizer by name: `gpt2` (alias `r50k_base`) or `byte`.
impl std::str::FromStr for Tokenizer {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Tokenizer> {
        Ok(Tokenizer::new(name.parse()?))
    }
}

impl Tokenizer {
    pub fn new(kind: TokenizerKind) -> Tokenizer {
        match kind {
            TokenizerKind::Gpt2 => Tokenizer::gpt2(),
            TokenizerKind::Byte => Tokenizer::Byte,
        }
    }

    pub fn gpt2() -> Tokenizer {
        Tokenizer::Gpt2(tiktoken_rs::r50k_base_singleton())
    }

    /// Which tokenizer this is, as written in `meta.json`.
    pub fn kind(&self) -> TokenizerKind {
        match self {
            Tokenizer::Gpt2(_) => TokenizerKind::Gpt2,
            Tokenizer::Byte => TokenizerKind::Byte,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gpt2(_) => GPT2_VOCAB,
            Tokenizer::Byte => 256,
        }
    }

    /// The tokens placed between independent documents (LAMBADA passages,
    /// LM1B sentences): `<|endoftext|>` for GPT-2, a newline for bytes.
    pub fn separator(&self) -> Vec<u32> {
        match self {
            Tokenizer::Gpt2(_) => vec![GPT2_EOT],
            Tokenizer::Byte => vec![b'\n' as u32],
        }
    }

    /// Encode text as ordinary text: a literal `<|endoftext|>` in the input
    /// is not turned into the special token. Long texts are encoded in
    /// parallel; the result is identical to encoding the text in one piece.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Byte => text.bytes().map(u32::from).collect(),
            Tokenizer::Gpt2(bpe) => {
                if text.len() <= CHUNK_BYTES {
                    return bpe.encode_ordinary(text);
                }
                let pieces: Vec<Vec<u32>> = split_at_pretoken_boundaries(text, CHUNK_BYTES)
                    .into_par_iter()
                    .map(|chunk| bpe.encode_ordinary(chunk))
                    .collect();
                pieces.concat()
            }
        }
    }

    /// Decode ids back to text (invalid UTF-8 is replaced, as a partial
    /// multi-byte character can be cut by a window).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// Decode ids to the bytes they stand for.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        match self {
            Tokenizer::Byte => ids
                .iter()
                .map(|&t| u8::try_from(t).with_context(|| format!("byte token id {t} >= 256")))
                .collect(),
            Tokenizer::Gpt2(bpe) => bpe.decode_bytes(ids).map_err(|e| {
                anyhow::anyhow!("GPT-2 token id {} is not in the vocabulary", e.token)
            }),
        }
    }
}

/// Cut `text` into chunks of about `target` bytes at places where the GPT-2
/// pre-tokenizer regex always has a match boundary, so that encoding the
/// chunks separately gives exactly the tokens of the whole text.
///
/// The cut goes just before a space that is followed by an ASCII letter or
/// digit. No regex alternative can cross it: the space can only begin a
/// ` ?\p{L}`/` ?\p{N}` match, and a whitespace run before it ends there in
/// both cases (`\s+(?!\S)` backtracks to it in the whole text; `\s++$`
/// takes it at the end of the chunk).
fn split_at_pretoken_boundaries(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut chunks = Vec::new();
    let mut start = 0;
    while bytes.len() - start > target {
        let cut = (start + target..bytes.len() - 1)
            .find(|&i| bytes[i] == b' ' && bytes[i + 1].is_ascii_alphanumeric());
        match cut {
            Some(i) => {
                chunks.push(&text[start..i]);
                start = i;
            }
            None => break,
        }
    }
    chunks.push(&text[start..]);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_known_ids_and_vocab() {
        let t = "gpt2".parse::<Tokenizer>().unwrap();
        assert_eq!(t.encode("Hello world"), vec![15496, 995]);
        assert_eq!(t.vocab_size(), 50257);
        assert_eq!(t.decode(&[GPT2_EOT]).unwrap(), "<|endoftext|>");
        assert_eq!(t.separator(), vec![50256]);
    }

    #[test]
    fn unknown_name_is_an_error() {
        let e = "sentencepiece"
            .parse::<Tokenizer>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt2"), "{e}");
    }

    #[test]
    fn round_trips() {
        let text = "Ünïcödé   text,\n\n\n  with  'quotes' it's 3.14 <|endoftext|> \t end \n";
        for name in ["gpt2", "byte"] {
            let t = name.parse::<Tokenizer>().unwrap();
            let ids = t.encode(text);
            assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
            assert_eq!(t.decode(&ids).unwrap(), text, "{name}");
        }
        assert_eq!(Tokenizer::Byte.encode("é"), vec![0xC3, 0xA9]);
    }

    #[test]
    fn parallel_chunks_encode_exactly_like_the_whole_text() {
        // Awkward whitespace around every kind of cut candidate.
        let unit = "Word  \n\n\n  next 12 x\t\ty  \n z' 's don't  ,, \u{a0}a é b\n \n = Head = \n";
        let text = unit.repeat(3000);
        let bpe = tiktoken_rs::r50k_base_singleton();
        let chunks = split_at_pretoken_boundaries(&text, 500);
        assert!(chunks.len() > 50);
        assert_eq!(chunks.concat(), text);
        let chunked: Vec<u32> = chunks.iter().flat_map(|c| bpe.encode_ordinary(c)).collect();
        assert_eq!(chunked, bpe.encode_ordinary(&text));
    }
}
