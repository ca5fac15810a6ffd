//! dyntie's GPT-2 on the CPU backend against a PyTorch float64 reference
//! (`scripts/reference/gpt2_reference.py` writes the fixture).
//!
//! Tensors are compared by relative L2 error, `||ours - ref|| / ||ref||`,
//! per tensor; scalar losses by relative error `|ours - ref| / |ref|`.

use anyhow::{Context, Result};
use dyntie::cpu::CpuBackend;
use dyntie::model::gpt2::IGNORE_INDEX;
use dyntie::model::{Gpt2, ModelConfig};
use dyntie::optim::AdamW;
use safetensors::{Dtype, SafeTensors};
use std::sync::Arc;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gpt2_reference.safetensors"
);

fn config() -> ModelConfig {
    ModelConfig {
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
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Result<Self> {
        Ok(Fixture {
            bytes: std::fs::read(FIXTURE).with_context(|| format!("reading {FIXTURE}"))?,
        })
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

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.f64s(name).into_iter().map(|x| x as f32).collect()
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

fn loaded_model(fx: &Fixture) -> Result<Gpt2> {
    let model = Gpt2::new(Arc::new(CpuBackend::new()), config(), 0)?;
    for (name, _) in model.param_names() {
        model.write_param(&name, &fx.f32s(&name))?;
    }
    Ok(model)
}

#[test]
fn logits_loss_and_gradients_match_pytorch() -> Result<()> {
    let fx = Fixture::load()?;
    let mut model = loaded_model(&fx)?;
    let (tokens, targets) = (fx.ids("tokens"), fx.ids("targets"));
    let (b, t) = (2, 16);

    let (sum, count) = model.eval_loss(&tokens, &targets, b, t)?;
    assert_eq!(count, b * t - 2, "two targets are ignored");
    let logits = model.last_logits()?;
    let err = rel_l2(&logits, &fx.f64s("logits"));
    assert!(err < 1e-4, "logits: relative L2 error {err:e}");
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
    for (name, _) in model.param_names() {
        let err = rel_l2(&model.read_grad(&name)?, &fx.f64s(&format!("grad.{name}")));
        assert!(err < 1e-4, "grad of {name}: relative L2 error {err:e}");
        worst = worst.max(err);
    }
    eprintln!("logits error {err:e}, loss {loss} vs {ref_loss}, worst gradient error {worst:e}");
    Ok(())
}

#[test]
fn ten_adamw_steps_match_pytorch() -> Result<()> {
    let fx = Fixture::load()?;
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
        reference[9] < reference[0] - 0.5,
        "the reference itself learns"
    );
    Ok(())
}
