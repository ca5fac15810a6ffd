//! The Hugging Face GPT-2 layout: `config.json` and `model.safetensors` as
//! `GPT2LMHeadModel` reads them (Conv1D weights are `[in, out]`, the
//! transpose of ours; `lm_head` is tied to `wte` and not stored), plus
//! `dyntie_check.json` with dyntie's logits for a fixed input, so that
//! `scripts/check_hf_export.py` can compare `transformers` against dyntie.

use super::gpt2::IGNORE_INDEX;
use super::Gpt2;
use crate::checkpoint::{safetensors_bytes, NamedTensor};
use crate::ops::layernorm::LAYERNORM_EPS;
use crate::rng::HostRng;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Writes `model` into the folder `out` (created) in the Hugging Face GPT-2
/// layout. Every block is written out, tied or not: the layout has no ties.
pub fn export(model: &mut Gpt2, out: &Path) -> Result<()> {
    let m = model.config().clone();
    ensure!(
        m.bias,
        "Hugging Face GPT-2 always has biases; this run trained without (bias = false)"
    );
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tensors = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        tensors.push(NamedTensor::new(name, shape, data));
    };
    put(
        "transformer.wte.weight".into(),
        vec![m.vocab_size, m.n_embd],
        model.read_param("wte")?,
    );
    put(
        "transformer.wpe.weight".into(),
        vec![m.n_ctx, m.n_embd],
        model.read_param("wpe")?,
    );
    put(
        "transformer.ln_f.weight".into(),
        vec![m.n_embd],
        model.read_param("ln_f.weight")?,
    );
    put(
        "transformer.ln_f.bias".into(),
        vec![m.n_embd],
        model.read_param("ln_f.bias")?,
    );
    let ours_to_hf = [
        ("ln1.weight", "ln_1.weight"),
        ("ln1.bias", "ln_1.bias"),
        ("attn.qkv.weight", "attn.c_attn.weight"),
        ("attn.qkv.bias", "attn.c_attn.bias"),
        ("attn.proj.weight", "attn.c_proj.weight"),
        ("attn.proj.bias", "attn.c_proj.bias"),
        ("ln2.weight", "ln_2.weight"),
        ("ln2.bias", "ln_2.bias"),
        ("mlp.fc.weight", "mlp.c_fc.weight"),
        ("mlp.fc.bias", "mlp.c_fc.bias"),
        ("mlp.proj.weight", "mlp.c_proj.weight"),
        ("mlp.proj.bias", "mlp.c_proj.bias"),
    ];
    for layer in 0..m.n_layer {
        for (ours, hf) in ours_to_hf {
            let entry = model
                .block_layout()
                .get(ours)
                .with_context(|| format!("the block layout has no {ours}"))?;
            let data = model.read_param(&format!("h.{layer}.{ours}"))?;
            let name = format!("transformer.h.{layer}.{hf}");
            if let [out, inp] = entry.shape[..] {
                put(name, vec![inp, out], transpose(&data, out, inp));
            } else {
                put(name, entry.shape.clone(), data);
            }
        }
    }
    let config = serde_json::json!({
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
        "layer_norm_epsilon": LAYERNORM_EPS,
        "initializer_range": 0.02,
        "tie_word_embeddings": true,
        "bos_token_id": 50256.min(m.vocab_size - 1),
        "eos_token_id": 50256.min(m.vocab_size - 1),
    });
    // A fixed input and dyntie's logits for it, for the comparison script.
    let len = m.n_ctx.min(16);
    let mut rng = HostRng::new(7);
    let input: Vec<u32> = (0..len)
        .map(|_| rng.below(m.vocab_size as u64) as u32)
        .collect();
    let targets = vec![IGNORE_INDEX; len];
    model.eval_loss(&input, &targets, 1, len)?;
    let logits = model.last_logits()?;
    let check =
        serde_json::json!({ "input_ids": input, "logits": logits, "vocab_size": m.vocab_size });
    for (name, bytes) in [
        ("model.safetensors", safetensors_bytes(&tensors)?),
        ("config.json", serde_json::to_vec_pretty(&config)?),
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
