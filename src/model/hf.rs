//! The Hugging Face layouts: `config.json` and `model.safetensors` as
//! transformers' `GPT2LMHeadModel` or `BertLMHeadModel` read them, plus
//! `dyntie_check.json` with dyntie's logits for a fixed input, so that
//! `scripts/check_hf_export.py` can compare transformers against dyntie.
//!
//! GPT-2: Conv1D weights are `[in, out]`, the transpose of ours; `lm_head`
//! is tied to `wte` and not stored. BERT: `nn.Linear` weights are
//! `[out, in]` as ours; our fused qkv is split into query, key and value;
//! the decoder's weight is tied to the word embeddings and not stored, its
//! bias is `cls.predictions.bias`. Tied blocks are written out once per
//! layer: the layouts have no ties.

use super::lm::IGNORE_INDEX;
use super::{Arch, Model, ModelConfig};
use crate::checkpoint::{safetensors_bytes, NamedTensor};
use crate::rng::HostRng;
use anyhow::{ensure, Context, Result};
use std::ops::Range;
use std::path::Path;

/// Where one transformers tensor comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfTensor {
    /// Its name in transformers' state dict.
    pub hf: String,
    /// The dyntie parameter (see [`Model::param_names`]).
    pub ours: String,
    /// The rows (first index) of ours it takes; `None` for all of it.
    pub rows: Option<Range<usize>>,
    /// Stored as the transpose of ours (GPT-2's Conv1D).
    pub transposed: bool,
}

/// Every tensor of the transformers model of `cfg`, in order.
pub fn tensor_names(cfg: &ModelConfig) -> Vec<HfTensor> {
    let whole = |hf: &str, ours: &str| HfTensor {
        hf: hf.to_string(),
        ours: ours.to_string(),
        rows: None,
        transposed: false,
    };
    let mut out = Vec::new();
    match cfg.arch {
        Arch::Gpt2 => {
            out.push(whole("transformer.wte.weight", "wte"));
            out.push(whole("transformer.wpe.weight", "wpe"));
            out.push(whole("transformer.ln_f.weight", "ln_f.weight"));
            out.push(whole("transformer.ln_f.bias", "ln_f.bias"));
            let blocks = [
                ("ln1", "ln_1"),
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("ln2", "ln_2"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ];
            for layer in 0..cfg.n_layer {
                for (ours, hf) in blocks {
                    for (suffix, transposed) in
                        [("weight", !ours.starts_with("ln")), ("bias", false)]
                    {
                        out.push(HfTensor {
                            transposed,
                            ..whole(
                                &format!("transformer.h.{layer}.{hf}.{suffix}"),
                                &format!("h.{layer}.{ours}.{suffix}"),
                            )
                        });
                    }
                }
            }
        }
        Arch::Bert => {
            let emb = "bert.embeddings";
            out.push(whole(&format!("{emb}.word_embeddings.weight"), "wte"));
            out.push(whole(&format!("{emb}.position_embeddings.weight"), "wpe"));
            out.push(whole(&format!("{emb}.token_type_embeddings.weight"), "wtt"));
            out.push(whole(&format!("{emb}.LayerNorm.weight"), "ln_emb.weight"));
            out.push(whole(&format!("{emb}.LayerNorm.bias"), "ln_emb.bias"));
            let c = cfg.n_embd;
            for layer in 0..cfg.n_layer {
                let hf = format!("bert.encoder.layer.{layer}");
                let ours = format!("h.{layer}");
                for (k, part) in ["query", "key", "value"].into_iter().enumerate() {
                    for suffix in ["weight", "bias"] {
                        out.push(HfTensor {
                            rows: Some(k * c..(k + 1) * c),
                            ..whole(
                                &format!("{hf}.attention.self.{part}.{suffix}"),
                                &format!("{ours}.attn.qkv.{suffix}"),
                            )
                        });
                    }
                }
                for (theirs, mine) in [
                    ("attention.output.dense", "attn.proj"),
                    ("attention.output.LayerNorm", "ln1"),
                    ("intermediate.dense", "mlp.fc"),
                    ("output.dense", "mlp.proj"),
                    ("output.LayerNorm", "ln2"),
                ] {
                    for suffix in ["weight", "bias"] {
                        out.push(whole(
                            &format!("{hf}.{theirs}.{suffix}"),
                            &format!("{ours}.{mine}.{suffix}"),
                        ));
                    }
                }
            }
            let head = "cls.predictions";
            out.push(whole(
                &format!("{head}.transform.dense.weight"),
                "head.fc.weight",
            ));
            out.push(whole(
                &format!("{head}.transform.dense.bias"),
                "head.fc.bias",
            ));
            out.push(whole(
                &format!("{head}.transform.LayerNorm.weight"),
                "head.ln.weight",
            ));
            out.push(whole(
                &format!("{head}.transform.LayerNorm.bias"),
                "head.ln.bias",
            ));
            out.push(whole(&format!("{head}.bias"), "head.decoder.bias"));
        }
    }
    out
}

/// The transformers `config.json` of `cfg`.
fn config_json(m: &ModelConfig) -> serde_json::Value {
    match m.arch {
        Arch::Gpt2 => serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": m.vocab_size,
            "n_positions": m.n_ctx,
            "n_ctx": m.n_ctx,
            "n_embd": m.n_embd,
            "n_layer": m.n_layer,
            "n_head": m.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "resid_pdrop": m.dropout,
            "embd_pdrop": m.dropout,
            "attn_pdrop": 0.0,
            "layer_norm_epsilon": m.arch.layernorm_eps(),
            "initializer_range": 0.02,
            "tie_word_embeddings": true,
            "bos_token_id": 50256.min(m.vocab_size - 1),
            "eos_token_id": 50256.min(m.vocab_size - 1),
        }),
        // No pad token: dyntie trains every id's embedding row (with
        // BertConfig's default pad_token_id 0, transformers would keep row
        // 0 out of the input embedding's gradient).
        Arch::Bert => serde_json::json!({
            "model_type": "bert",
            "architectures": ["BertLMHeadModel"],
            "is_decoder": true,
            "vocab_size": m.vocab_size,
            "hidden_size": m.n_embd,
            "num_hidden_layers": m.n_layer,
            "num_attention_heads": m.n_head,
            "intermediate_size": 4 * m.n_embd,
            "hidden_act": "gelu",
            "hidden_dropout_prob": m.dropout,
            "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": m.n_ctx,
            "type_vocab_size": super::layout::TOKEN_TYPES,
            "initializer_range": 0.02,
            "layer_norm_eps": m.arch.layernorm_eps(),
            "position_embedding_type": "absolute",
            "pad_token_id": null,
            "tie_word_embeddings": true,
        }),
    }
}

/// Writes `model` into the folder `out` (created) in the Hugging Face
/// layout of its architecture, with `dyntie_check.json`: dyntie's logits for
/// a fixed input and `valid` (what the caller computed on validation data),
/// for `scripts/check_hf_export.py` to compare transformers against.
pub fn export(model: &mut Model, out: &Path, valid: serde_json::Value) -> Result<()> {
    let m = model.config().clone();
    ensure!(
        m.bias,
        "Hugging Face GPT-2 always has biases; this run trained without (bias = false)"
    );
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        model.param_names().into_iter().collect();
    let mut tensors = Vec::new();
    for t in tensor_names(&m) {
        let shape = shapes
            .get(&t.ours)
            .with_context(|| format!("the model has no parameter {}", t.ours))?;
        let mut data = model.read_param(&t.ours)?;
        let mut shape = shape.clone();
        if let Some(rows) = &t.rows {
            let row_len: usize = shape[1..].iter().product();
            data = data[rows.start * row_len..rows.end * row_len].to_vec();
            shape[0] = rows.len();
        }
        if t.transposed {
            let [rows, cols] = shape[..] else {
                anyhow::bail!("{} is not a matrix", t.ours);
            };
            data = transpose(&data, rows, cols);
            shape = vec![cols, rows];
        }
        tensors.push(NamedTensor::new(t.hf, shape, data));
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // A fixed input and dyntie's logits for it, for the comparison script.
    let len = m.n_ctx.min(16);
    let mut rng = HostRng::new(7);
    let input: Vec<u32> = (0..len)
        .map(|_| rng.below(m.vocab_size as u64) as u32)
        .collect();
    let targets = vec![IGNORE_INDEX; len];
    model.eval_loss(&input, &targets, 1, len)?;
    let logits = model.last_logits()?;
    let check = serde_json::json!({
        "input_ids": input,
        "logits": logits,
        "vocab_size": m.vocab_size,
        "valid": valid,
    });
    for (name, bytes) in [
        ("model.safetensors", safetensors_bytes(&tensors)?),
        ("config.json", serde_json::to_vec_pretty(&config_json(&m))?),
        ("dyntie_check.json", serde_json::to_vec(&check)?),
    ] {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `data` as `[rows, cols]`, transposed to `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(arch: Arch) -> ModelConfig {
        ModelConfig {
            arch,
            n_layer: 2,
            n_embd: 8,
            n_head: 2,
            n_ctx: 4,
            vocab_size: 11,
            dropout: 0.0,
            bias: true,
        }
    }

    #[test]
    fn every_parameter_element_is_exported_exactly_once() {
        for arch in [Arch::Gpt2, Arch::Bert] {
            let m = Model::new(
                std::sync::Arc::new(crate::cpu::CpuBackend::new()),
                cfg(arch),
                1,
            )
            .unwrap();
            let names = tensor_names(m.config());
            for (name, shape) in m.param_names() {
                let rows = shape[0];
                let mut covered = vec![0; rows];
                for t in names.iter().filter(|t| t.ours == name) {
                    for r in t.rows.clone().unwrap_or(0..rows) {
                        covered[r] += 1;
                    }
                }
                assert!(
                    covered.iter().all(|&k| k == 1),
                    "{arch}: {name} {covered:?}"
                );
            }
            assert!(names
                .iter()
                .all(|t| m.param_names().iter().any(|(n, _)| *n == t.ours)));
        }
    }
}
