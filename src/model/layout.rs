//! Where each parameter lives inside a buffer.
//!
//! A block's parameters sit at fixed offsets in one contiguous slot buffer
//! (the same offsets for every slot), so a tie only swaps which buffer a layer
//! reads. Linear weights are stored `[out, in]`. The embeddings and the final
//! LayerNorm live in a separate global buffer laid out the same way.
//!
//! Weight decay follows the nanoGPT convention (its original form, with an
//! Embedding blacklist): the linear layers' weight matrices decay; biases,
//! LayerNorm weights and the embeddings wte, wpe and wtt do not. Since wte is
//! also the output head, decaying it would shrink the logits of rare tokens.
//!
//! Both architectures have the same block layout; in BERT, `ln1` is the
//! attention output's LayerNorm and `ln2` the MLP output's (post-LN). Their
//! globals differ (see [`GlobalLayout::new`]).

use super::{Arch, ModelConfig};
use crate::mem::View;

/// One named tensor inside a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    pub name: &'static str,
    /// Offset in elements from the start of the buffer.
    pub offset: usize,
    /// Elements the buffer holds for it: `shape`'s product, plus zero rows
    /// of padding for the vocabulary-sized tensors (see [`VOCAB_ALIGN`]).
    pub len: usize,
    /// The tensor's shape as saved, exported and counted (no padding).
    pub shape: Vec<usize>,
    /// Whether AdamW applies weight decay to it.
    pub decays: bool,
}

impl ParamEntry {
    /// All the elements the buffer holds for it, padding included (what the
    /// kernels and the optimizer see).
    pub fn view(&self, buffer: View) -> View {
        buffer.slice(self.offset, self.len)
    }

    /// The elements of `shape` alone, without padding (what checkpoints,
    /// exports and named parameter access see). Padding rows come last.
    pub fn used_view(&self, buffer: View) -> View {
        buffer.slice(self.offset, self.numel())
    }

    /// Elements of `shape`.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The vocabulary the model computes with is the real one rounded up to a
/// multiple of this (GPT-2's 50257 becomes 50304, as in llm.c): the bf16
/// GEMM's block tiles are 128 columns wide, so every logits row then starts
/// 16-byte aligned and no tile of the decoder is ragged. The padding rows of
/// `wte` (and of BERT's decoder bias) are zero and stay zero: the loss
/// leaves the padded logits out and writes them a zero gradient, so their
/// weight gradient is zero too, and neither tensor decays. Checkpoints,
/// exports and parameter counts never see the padding.
pub const VOCAB_ALIGN: usize = 128;

/// Appends entries at consecutive offsets.
#[derive(Default)]
struct Builder {
    entries: Vec<ParamEntry>,
    next: usize,
}

impl Builder {
    fn push(&mut self, name: &'static str, shape: &[usize]) {
        self.push_padded(name, shape, shape.iter().product());
    }

    /// An entry that holds `len >= shape.product()` elements.
    fn push_padded(&mut self, name: &'static str, shape: &[usize], len: usize) {
        self.entries.push(ParamEntry {
            name,
            offset: self.next,
            len,
            shape: shape.to_vec(),
            decays: shape.len() == 2 && !matches!(name, "wte" | "wpe" | "wtt"),
        });
        self.next += len;
    }
}

/// The fixed offsets of one block's parameters inside a slot buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    entries: Vec<ParamEntry>,
    len: usize,
}

impl BlockLayout {
    /// In order: `ln1.weight[C]`, `ln1.bias[C]`, `attn.qkv.weight[3C,C]`,
    /// `attn.qkv.bias[3C]`, `attn.proj.weight[C,C]`, `attn.proj.bias[C]`,
    /// `ln2.weight[C]`, `ln2.bias[C]`, `mlp.fc.weight[4C,C]`, `mlp.fc.bias[4C]`,
    /// `mlp.proj.weight[C,4C]`, `mlp.proj.bias[C]`; biases only with `cfg.bias`.
    pub fn new(cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        let mut b = Builder::default();
        let bias = |b: &mut Builder, name, len| {
            if cfg.bias {
                b.push(name, &[len]);
            }
        };
        b.push("ln1.weight", &[c]);
        bias(&mut b, "ln1.bias", c);
        b.push("attn.qkv.weight", &[3 * c, c]);
        bias(&mut b, "attn.qkv.bias", 3 * c);
        b.push("attn.proj.weight", &[c, c]);
        bias(&mut b, "attn.proj.bias", c);
        b.push("ln2.weight", &[c]);
        bias(&mut b, "ln2.bias", c);
        b.push("mlp.fc.weight", &[4 * c, c]);
        bias(&mut b, "mlp.fc.bias", 4 * c);
        b.push("mlp.proj.weight", &[c, 4 * c]);
        bias(&mut b, "mlp.proj.bias", c);
        BlockLayout {
            len: b.next,
            entries: b.entries,
        }
    }

    /// Total elements of one slot buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The view of `name` inside `buffer`; `name` must be one of this layout's
    /// (a typo is a bug, hence the panic).
    pub fn view(&self, buffer: View, name: &str) -> View {
        self.get(name)
            .unwrap_or_else(|| panic!("no block parameter named {name}"))
            .view(buffer)
    }

    /// Like `view`, but `None` for a bias the configuration leaves out.
    pub fn bias_view(&self, buffer: View, name: &str) -> Option<View> {
        self.get(name).map(|e| e.view(buffer))
    }
}

/// BERT's token-type vocabulary (`type_vocab_size`): its embedding table
/// has two rows, of which dyntie, with no segment ids, uses the first.
pub const TOKEN_TYPES: usize = 2;

/// The never-tied parameters: the embeddings and what follows the blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalLayout {
    entries: Vec<ParamEntry>,
    len: usize,
}

impl GlobalLayout {
    /// GPT-2: `wte[V,C]` (also the decoder; padded to `padded_vocab` rows), `wpe[n_ctx,C]`,
    /// `ln_f.weight[C]` and, with biases, `ln_f.bias[C]`.
    ///
    /// BERT: `wte`, `wpe`, `wtt[2,C]` (token types), the embeddings'
    /// LayerNorm `ln_emb.weight[C]`, `ln_emb.bias[C]`; the LM head's
    /// transform `head.fc.weight[C,C]`, `head.fc.bias[C]`, `head.ln.weight[C]`,
    /// `head.ln.bias[C]`; and the decoder's bias `head.decoder.bias[V]`
    /// (its weight is wte; padded like it).
    pub fn new(cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        let mut b = Builder::default();
        let padded = cfg.padded_vocab();
        b.push_padded("wte", &[cfg.vocab_size, c], padded * c);
        b.push("wpe", &[cfg.n_ctx, c]);
        match cfg.arch {
            Arch::Gpt2 => {
                b.push("ln_f.weight", &[c]);
                if cfg.bias {
                    b.push("ln_f.bias", &[c]);
                }
            }
            Arch::Bert => {
                b.push("wtt", &[TOKEN_TYPES, c]);
                b.push("ln_emb.weight", &[c]);
                b.push("ln_emb.bias", &[c]);
                b.push("head.fc.weight", &[c, c]);
                b.push("head.fc.bias", &[c]);
                b.push("head.ln.weight", &[c]);
                b.push("head.ln.bias", &[c]);
                b.push_padded("head.decoder.bias", &[cfg.vocab_size], padded);
            }
        }
        GlobalLayout {
            len: b.next,
            entries: b.entries,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn view(&self, buffer: View, name: &str) -> View {
        self.get(name)
            .unwrap_or_else(|| panic!("no global parameter named {name}"))
            .view(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bias: bool) -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 2,
            n_embd: 8,
            n_head: 2,
            n_ctx: 4,
            vocab_size: 11,
            dropout: 0.0,
            bias,
        }
    }

    #[test]
    fn block_entries_tile_the_buffer_and_only_matrices_decay() {
        for bias in [true, false] {
            let l = BlockLayout::new(&cfg(bias));
            let mut next = 0;
            for e in l.entries() {
                assert_eq!(e.offset, next, "{}", e.name);
                assert_eq!(e.len, e.shape.iter().product::<usize>());
                assert_eq!(
                    e.decays,
                    e.name.ends_with("weight") && !e.name.starts_with("ln")
                );
                next += e.len;
            }
            assert_eq!(next, l.len());
            let c = 8;
            let expect = if bias {
                12 * c * c + 13 * c
            } else {
                12 * c * c + 2 * c
            };
            assert_eq!(l.len(), expect);
            assert_eq!(l.get("mlp.proj.weight").unwrap().shape, vec![c, 4 * c]);
            assert_eq!(l.get("attn.qkv.bias").is_some(), bias);
        }
    }

    #[test]
    fn bert_globals_hold_token_types_and_the_head_transform() {
        let g = GlobalLayout::new(&ModelConfig {
            arch: Arch::Bert,
            ..cfg(true)
        });
        let names: Vec<_> = g.entries().iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "wte",
                "wpe",
                "wtt",
                "ln_emb.weight",
                "ln_emb.bias",
                "head.fc.weight",
                "head.fc.bias",
                "head.ln.weight",
                "head.ln.bias",
                "head.decoder.bias"
            ]
        );
        // V C + T C + 2 C + 2 C + (C C + C) + 2 C + V, with V = 11 padded to
        // 128 rows of wte and 128 decoder biases in the buffer.
        let used: usize = g.entries().iter().map(|e| e.numel()).sum();
        assert_eq!(used, 11 * 8 + 4 * 8 + 16 + 16 + 72 + 16 + 11);
        assert_eq!(g.len(), used + (128 - 11) * 8 + (128 - 11));
        assert_eq!(g.get("head.decoder.bias").unwrap().shape, [11]);
        let decaying: Vec<_> = g
            .entries()
            .iter()
            .filter(|e| e.decays)
            .map(|e| e.name)
            .collect();
        assert_eq!(decaying, ["head.fc.weight"]);
        // The same block layout as GPT-2's.
        assert_eq!(
            BlockLayout::new(&ModelConfig {
                arch: Arch::Bert,
                ..cfg(true)
            }),
            BlockLayout::new(&cfg(true))
        );
    }

    #[test]
    fn globals_hold_embeddings_and_final_norm() {
        let g = GlobalLayout::new(&cfg(true));
        let names: Vec<_> = g.entries().iter().map(|e| e.name).collect();
        assert_eq!(names, ["wte", "wpe", "ln_f.weight", "ln_f.bias"]);
        // wte holds 128 rows (11 padded to VOCAB_ALIGN); it saves as [11, 8].
        let wte = g.get("wte").unwrap();
        assert_eq!(
            (wte.shape.clone(), wte.numel(), wte.len),
            (vec![11, 8], 88, 128 * 8)
        );
        assert_eq!(g.get("wpe").unwrap().offset, 128 * 8);
        assert_eq!(g.len(), 128 * 8 + 4 * 8 + 16);
        assert!(!g.get("wte").unwrap().decays && !g.get("wpe").unwrap().decays);
        assert!(!g.get("ln_f.weight").unwrap().decays);
    }
}
