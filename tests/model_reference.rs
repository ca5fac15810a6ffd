//! dyntie's GPT-2 on the CPU backend against a PyTorch float64 reference
//! (`scripts/reference/gpt2_reference.py` writes the fixture), and its
//! causal BERT against transformers' `BertLMHeadModel`
//! (`scripts/reference/bert_reference.py`), with the same tolerances.
//!
//! Tensors are compared by relative L2 error, `||ours - ref|| / ||ref||`,
//! per tensor; scalar losses by relative error `|ours - ref| / |ref|`.

use anyhow::{Context, Result};
use dyntie::cpu::CpuBackend;
use dyntie::model::hf::tensor_names;
use dyntie::model::lm::IGNORE_INDEX;
use dyntie::model::{Arch, Model, ModelConfig};
use dyntie::optim::AdamW;
use safetensors::{Dtype, SafeTensors};
use std::sync::Arc;

const GPT2_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gpt2_reference.safetensors"
);
const BERT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/bert_reference.safetensors"
);

/// Both fixtures' shape; BERT's intermediate size is 4 x 32 as ours.
fn config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        n_layer: 2,
        n_embd: 32,
        n_head: 2,
        n_ctx: 16,
        vocab_size: 97,
        dropout: 0.0,
        bias: true,
    }
}

struct Fixture {
    arch: Arch,
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(arch: Arch) -> Result<Self> {
        let path = match arch {
            Arch::Gpt2 => GPT2_FIXTURE,
            Arch::Bert => BERT_FIXTURE,
        };
        Ok(Fixture {
            arch,
            bytes: std::fs::read(path).with_context(|| format!("reading {path}"))?,
        })
    }

    /// dyntie's parameter `name` (`prefix` "" for the weights, "grad." for
    /// their gradients). The GPT-2 fixture stores dyntie's names; the BERT
    /// one stores transformers', mapped back through the export's table
    /// (the rows of the fused qkv come from query, key and value).
    fn param(&self, prefix: &str, name: &str, shape: &[usize]) -> Vec<f64> {
        if self.arch == Arch::Gpt2 {
            return self.f64s(&format!("{prefix}{name}"));
        }
        let len: usize = shape.iter().product();
        let row_len = len / shape[0];
        let mut out = vec![f64::NAN; len];
        for t in tensor_names(&config(self.arch))
            .into_iter()
            .filter(|t| t.ours == name)
        {
            assert!(!t.transposed, "BERT's linear weights are [out, in] as ours");
            let data = self.f64s(&format!("{prefix}{}", t.hf));
            let start = t.rows.map_or(0, |r| r.start * row_len);
            out[start..start + data.len()].copy_from_slice(&data);
        }
        assert!(
            out.iter().all(|x| x.is_finite()),
            "{prefix}{name} is not covered by the fixture"
        );
        out
    }

    fn f64s(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            d => panic!("{name}: unexpected dtype {d:?}"),
        }
    }

    /// Token ids, with the reference's -1 mapped to our ignore index.
    fn ids(&self, name: &str) -> Vec<u32> {
        self.f64s(name)
            .into_iter()
            .map(|x| if x < 0.0 { IGNORE_INDEX } else { x as u32 })
            .collect()
    }
}

fn rel_l2(ours: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let diff: f64 = ours
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (a as f64 - b).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

fn loaded_model(fx: &Fixture) -> Result<Model> {
    let model = Model::new(Arc::new(CpuBackend::new()), config(fx.arch), 0)?;
    for (name, shape) in model.param_names() {
        let values = fx.param("", &name, &shape);
        model.write_param(&name, &values.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
    }
    Ok(model)
}

#[test]
fn logits_loss_and_gradients_match_pytorch() -> Result<()> {
    forward_and_backward_match(Arch::Gpt2)
}

#[test]
fn bert_logits_loss_and_gradients_match_transformers() -> Result<()> {
    forward_and_backward_match(Arch::Bert)
}

#[test]
fn ten_adamw_steps_match_pytorch() -> Result<()> {
    adamw_steps_match(Arch::Gpt2)
}

#[test]
fn bert_ten_adamw_steps_match_transformers() -> Result<()> {
    adamw_steps_match(Arch::Bert)
}

fn forward_and_backward_match(arch: Arch) -> Result<()> {
    let fx = Fixture::load(arch)?;
    let mut model = loaded_model(&fx)?;
    let (tokens, targets) = (fx.ids("tokens"), fx.ids("targets"));
    let (b, t) = (2, 16);

    let (sum, count) = model.eval_loss(&tokens, &targets, b, t)?;
    assert_eq!(count, b * t - 2, "two targets are ignored");
    let logits = model.last_logits()?;
    let err = rel_l2(&logits, &fx.f64s("logits"));
    assert!(err < 1e-4, "{arch}: logits: relative L2 error {err:e}");
    let ref_loss = fx.f64s("loss")[0];
    let eval_loss = sum / count as f64;
    assert!(
        ((eval_loss - ref_loss) / ref_loss).abs() < 1e-5,
        "eval loss {eval_loss} vs {ref_loss}"
    );

    model.zero_grads()?;
    let loss = model.forward_backward(&tokens, &targets, b, t, 0, 1.0)? as f64;
    assert!(
        ((loss - ref_loss) / ref_loss).abs() < 1e-5,
        "loss {loss} vs {ref_loss}"
    );
    let mut worst = 0f64;
    for (name, shape) in model.param_names() {
        let reference = fx.param("grad.", &name, &shape);
        let err = rel_l2(&model.read_grad(&name)?, &reference);
        assert!(
            err < 1e-4,
            "{arch}: grad of {name}: relative L2 error {err:e}"
        );
        worst = worst.max(err);
    }
    eprintln!(
        "{arch}: logits error {err:e}, loss {loss} vs {ref_loss}, worst gradient error {worst:e}"
    );
    Ok(())
}

fn adamw_steps_match(arch: Arch) -> Result<()> {
    let fx = Fixture::load(arch)?;
    let mut model = loaded_model(&fx)?;
    let (tokens, targets) = (fx.ids("tokens"), fx.ids("targets"));
    let mut opt = AdamW::new(model.backend().as_ref(), 1e-3, 0.9, 0.95, 1e-8, 0.1)?;
    let reference = fx.f64s("adamw_losses");
    let mut worst = 0f64;
    for (step, &want) in reference.iter().enumerate() {
        model.zero_grads()?;
        let loss = model.forward_backward(&tokens, &targets, 2, 16, 0, 1.0)? as f64;
        opt.clip_and_update(&model, Some(1.0))?;
        let err = ((loss - want) / want).abs();
        assert!(err < 1e-5, "step {step}: loss {loss} vs {want}");
        worst = worst.max(err);
    }
    eprintln!("worst relative loss error over 10 AdamW steps {worst:e}");
    assert!(
        reference[9] < reference[0] - 0.3,
        "the reference itself learns"
    );
    Ok(())
}
