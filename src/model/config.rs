//! The model's architecture and shape: the one type that the run
//! configuration, the model, its activation plan, the memory accounting, the
//! benchmarks and the export all read. It is the `[model]` section of
//! `config.toml`.

use super::{BlockLayout, GlobalLayout};
use crate::autograd::Gelu;
use crate::ops::layernorm::LAYERNORM_EPS;
use anyhow::{bail, ensure, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The architecture (`--arch`). Both have the same block parameters (two
/// LayerNorms, fused qkv, attention output projection, a 4x MLP) and tie
/// the same way; they differ in where the LayerNorms sit, the GELU, the
/// embeddings and the head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// GPT-2: pre-LayerNorm blocks, tanh GELU, a final LayerNorm, the
    /// decoder tied to the token embeddings.
    #[default]
    #[value(name = "gpt2")]
    Gpt2,
    /// A causal BERT language model (transformers' `BertLMHeadModel` with
    /// `is_decoder`): post-LayerNorm blocks, exact erf GELU, token-type
    /// embeddings and a LayerNorm on the embeddings, the LM head's transform
    /// (dense, GELU, LayerNorm) before the tied decoder, which has a bias.
    Bert,
}
crate::choice_text!(Arch, "architecture");

impl Arch {
    /// LayerNorm epsilon: GPT-2's 1e-5, BERT's 1e-12.
    pub fn layernorm_eps(self) -> f32 {
        match self {
            Arch::Gpt2 => LAYERNORM_EPS,
            Arch::Bert => 1e-12,
        }
    }

    /// The MLP's (and BERT's head transform's) activation.
    pub fn gelu(self) -> Gelu {
        match self {
            Arch::Gpt2 => Gelu::Tanh,
            Arch::Bert => Gelu::Erf,
        }
    }

    /// Whether the LayerNorms follow the residual adds (BERT) rather than
    /// open each sublayer (GPT-2).
    pub fn post_norm(self) -> bool {
        self == Arch::Bert
    }
}

/// The shape of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The architecture (`--arch`); a config.toml without it is GPT-2's.
    #[serde(default)]
    pub arch: Arch,
    /// Transformer blocks (`--layers`).
    pub n_layer: usize,
    /// Width (`--d-model`).
    pub n_embd: usize,
    /// Attention heads (`--heads`); they divide the width.
    pub n_head: usize,
    /// Context length (`--ctx`): the longest sequence, and the rows of wpe.
    pub n_ctx: usize,
    /// Vocabulary size (`--vocab`). In a run configuration 0 means "the
    /// dataset's", resolved by [`ModelConfig::for_dataset`] when the run
    /// starts; a model needs it resolved.
    pub vocab_size: usize,
    /// Dropout probability on the embeddings, both residual branches and the
    /// attention probabilities.
    pub dropout: f32,
    /// Whether linear layers and LayerNorms have biases.
    pub bias: bool,
}

impl ModelConfig {
    /// Checks everything but the vocabulary, which a run configuration may
    /// leave to the dataset. The messages name the flag and the field.
    pub fn validate_shape(&self) -> Result<()> {
        for (flag, field, v) in [
            ("--layers", "n_layer", self.n_layer),
            ("--d-model", "n_embd", self.n_embd),
            ("--heads", "n_head", self.n_head),
            ("--ctx", "n_ctx", self.n_ctx),
        ] {
            if v == 0 {
                bail!("{flag} ({field}) must be at least 1");
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "--heads {} does not divide --d-model {} (n_head must divide n_embd): \
                 choose a head count that divides the width",
                self.n_head,
                self.n_embd
            );
        }
        if self.arch == Arch::Bert && !self.bias {
            bail!("--arch bert always has biases (bias = false is for gpt2 only)");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("--dropout {} (dropout) must be in [0, 1)", self.dropout);
        }
        if self.vocab_size > u32::MAX as usize {
            bail!(
                "--vocab {} (vocab_size) does not fit token ids of 32 bits",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// Checks that the sizes make a model: [`ModelConfig::validate_shape`]
    /// and a resolved vocabulary.
    pub fn validate(&self) -> Result<()> {
        self.validate_shape()?;
        ensure!(
            self.vocab_size > 0,
            "vocab_size must be at least 1 (0, \"the dataset's\", is resolved when a run starts)"
        );
        Ok(())
    }

    /// This shape on a dataset whose tokens are below `data_vocab`: an unset
    /// (0) vocabulary becomes the dataset's, a given one must cover it.
    pub fn for_dataset(&self, data_vocab: usize, data_name: &str) -> Result<ModelConfig> {
        let cfg = self.with_default_vocab(data_vocab);
        ensure!(
            cfg.vocab_size >= data_vocab,
            "--vocab {} is smaller than the vocabulary of dataset '{data_name}' ({data_vocab}): \
             leave --vocab out to use the dataset's",
            cfg.vocab_size
        );
        cfg.validate()?;
        Ok(cfg)
    }

    /// This shape with an unset (0) vocabulary replaced by `vocab`.
    pub fn with_default_vocab(&self, vocab: usize) -> ModelConfig {
        let mut cfg = self.clone();
        if cfg.vocab_size == 0 {
            cfg.vocab_size = vocab;
        }
        cfg
    }

    /// Parameters of one transformer block.
    pub fn block_params(&self) -> usize {
        BlockLayout::new(self).len()
    }

    /// Parameters that are never tied: the embeddings and the head (see
    /// [`GlobalLayout`]), without the vocabulary's padding rows.
    pub fn global_params(&self) -> usize {
        GlobalLayout::new(self)
            .entries()
            .iter()
            .map(|e| e.numel())
            .sum()
    }

    /// Elements the globals' buffer holds: [`Self::global_params`] plus the
    /// zero rows that pad the vocabulary to [`Self::padded_vocab`].
    pub fn global_elements(&self) -> usize {
        GlobalLayout::new(self).len()
    }

    /// The vocabulary the decoder computes with: `vocab_size` rounded up to
    /// a multiple of [`super::layout::VOCAB_ALIGN`].
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.next_multiple_of(super::layout::VOCAB_ALIGN)
    }

    /// Parameters of a conventional (untied) model.
    pub fn total_params(&self) -> usize {
        self.global_params() + self.n_layer * self.block_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 2,
            n_embd: 32,
            n_head: 2,
            n_ctx: 16,
            vocab_size: 97,
            dropout: 0.0,
            bias: true,
        }
    }

    #[test]
    fn validate_rejects_bad_sizes_with_the_field_name() {
        assert!(cfg().validate().is_ok());
        let e = ModelConfig { n_head: 3, ..cfg() }.validate().unwrap_err();
        assert!(e.to_string().contains("n_head"), "{e}");
        let e = ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 0,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("n_layer"), "{e}");
        let e = ModelConfig {
            dropout: 1.0,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("dropout"), "{e}");
        assert!(ModelConfig {
            dropout: -0.1,
            ..cfg()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_vocabulary_may_wait_for_the_dataset_but_a_model_needs_it() {
        let open = ModelConfig {
            vocab_size: 0,
            ..cfg()
        };
        open.validate_shape().unwrap();
        assert!(open
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
        assert_eq!(open.for_dataset(256, "bytes").unwrap().vocab_size, 256);
        assert_eq!(cfg().for_dataset(50, "small").unwrap().vocab_size, 97);
        let e = cfg().for_dataset(256, "bytes").unwrap_err().to_string();
        assert!(
            e.contains("--vocab 97") && e.contains("'bytes' (256)"),
            "{e}"
        );
    }

    #[test]
    fn gpt2_xl_sizes_match_the_paper() {
        let xl = ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 48,
            n_embd: 1600,
            n_head: 25,
            n_ctx: 1024,
            vocab_size: 50257,
            dropout: 0.0,
            bias: true,
        };
        // 12 C^2 + 13 C per block: 30.74 M at C = 1600.
        assert_eq!(xl.block_params(), 12 * 1600 * 1600 + 13 * 1600);
        // GPT-2 XL: 1,557,611,200 parameters (wte tied with the head).
        assert_eq!(xl.total_params(), 1_557_611_200);
    }
}
