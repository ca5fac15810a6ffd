//! GPT-2 over slots: the configuration, the parameter layouts, the
//! activation plan and the model itself.

pub mod gpt2;
pub mod layout;
pub mod plan;

pub use gpt2::Gpt2;
pub use layout::{BlockLayout, GlobalLayout, ParamEntry};
pub use plan::{activation_bytes, ActivationPlan};

use anyhow::{bail, Result};

/// The shape of a GPT-2 model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gpt2Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    /// Longest sequence the position embeddings cover.
    pub n_ctx: usize,
    pub vocab_size: usize,
    /// Dropout probability on the embeddings and on both residual branches.
    pub dropout: f32,
    /// Whether linear layers and LayerNorms have biases.
    pub bias: bool,
}

impl Gpt2Config {
    /// Checks that the sizes make a model; the messages name the field to fix.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_ctx", self.n_ctx),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                bail!("model config: {name} must be > 0");
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "model config: n_head ({}) must divide n_embd ({}); pick a width that is a multiple of the head count",
                self.n_head,
                self.n_embd
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!(
                "model config: dropout must be in [0, 1), got {}",
                self.dropout
            );
        }
        if self.vocab_size > u32::MAX as usize {
            bail!(
                "model config: vocab_size {} does not fit token ids of 32 bits",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// Parameters of one transformer block.
    pub fn block_params(&self) -> usize {
        BlockLayout::new(self).len()
    }

    /// Parameters of a conventional (untied) model.
    pub fn total_params(&self) -> usize {
        GlobalLayout::new(self).len() + self.n_layer * self.block_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Gpt2Config {
        Gpt2Config {
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
        let e = Gpt2Config { n_head: 3, ..cfg() }.validate().unwrap_err();
        assert!(e.to_string().contains("n_head"), "{e}");
        let e = Gpt2Config {
            n_layer: 0,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("n_layer"), "{e}");
        let e = Gpt2Config {
            dropout: 1.0,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("dropout"), "{e}");
        assert!(Gpt2Config {
            dropout: -0.1,
            ..cfg()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn gpt2_xl_sizes_match_the_paper() {
        let xl = Gpt2Config {
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
