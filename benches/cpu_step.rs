//! Tokens per second of one training step (forward, backward, gradient
//! clipping, AdamW) of a 6-layer GPT-2 on the CPU backend.
//!
//! `cargo bench --bench cpu_step`; compare with
//! `python benches/pytorch_baseline.py --threads <the thread count printed here>`.

use anyhow::Result;
use dyntie::backend::cpu::CpuBackend;
use dyntie::model::{Gpt2, Gpt2Config};
use dyntie::optim::AdamW;
use dyntie::rng::HostRng;
use std::sync::Arc;
use std::time::Instant;

const WARMUP: usize = 2;
const STEPS: usize = 5;

fn main() -> Result<()> {
    let cfg = Gpt2Config {
        n_layer: 6,
        n_embd: 256,
        n_head: 8,
        n_ctx: 128,
        vocab_size: 50257,
        dropout: 0.0,
        bias: true,
    };
    let (b, t) = (8, 128);
    let mut model = Gpt2::new(Arc::new(CpuBackend::new()), cfg.clone(), 0)?;
    let mut opt = AdamW::new(model.backend().as_ref(), 3e-4, 0.9, 0.95, 1e-8, 0.1)?;
    let mut rng = HostRng::new(1);
    let mut ids = || -> Vec<u32> {
        (0..b * t)
            .map(|_| rng.below(cfg.vocab_size as u64) as u32)
            .collect()
    };
    let (tokens, targets) = (ids(), ids());

    let mut times = Vec::new();
    for step in 0..WARMUP + STEPS {
        let start = Instant::now();
        model.zero_grads()?;
        let loss = model.forward_backward(&tokens, &targets, b, t, step as u64, 1.0)?;
        opt.clip_and_update(&model, Some(1.0))?;
        model.backend().synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!("step {step}: loss {loss:.4}, {secs:.3} s");
        if step >= WARMUP {
            times.push(secs);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "cpu_step: {} layers, width {}, {} heads, T={t}, B={b}, vocab {}: {} params, {} threads",
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        cfg.vocab_size,
        cfg.total_params(),
        rayon::current_num_threads()
    );
    println!(
        "median step {:.3} s over {STEPS} steps: {:.0} tokens/s; peak counted memory {:.1} MiB",
        median,
        (b * t) as f64 / median,
        model.backend().mem_stats().peak_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
