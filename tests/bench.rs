//! `dyntie bench`: the profiling wrapper, the throughput and memory reports,
//! and the benchmark scripts' syntax.

use dyntie::commands::bench::{flops_per_token, peak_tflops};
use dyntie::cpu::CpuBackend;
use dyntie::model::{Arch, Model, ModelConfig};
use dyntie::ops::profile::ProfiledBackend;
use dyntie::ops::Backend;
use dyntie::optim::AdamW;
use dyntie::precision::Precision;
use dyntie::rng::HostRng;
use std::process::Command;
use std::sync::Arc;

fn cfg() -> ModelConfig {
    ModelConfig {
        arch: Arch::Gpt2,
        n_layer: 3,
        n_embd: 32,
        n_head: 4,
        n_ctx: 16,
        vocab_size: 97,
        dropout: 0.1,
        bias: true,
    }
}

/// Two training steps on `backend`: the losses and every parameter after.
fn train(backend: Arc<dyn Backend>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let c = cfg();
    let (b, t) = (2, c.n_ctx);
    let mut model = Model::new(backend, c.clone(), 7).unwrap();
    let mut opt = AdamW::new(model.backend().as_ref(), 1e-3, 0.9, 0.95, 1e-8, 0.1).unwrap();
    let mut rng = HostRng::new(3);
    let mut ids = || -> Vec<u32> { (0..b * t).map(|_| rng.below(97) as u32).collect() };
    let (tokens, targets) = (ids(), ids());
    let mut losses = Vec::new();
    for step in 0..2 {
        model.zero_grads().unwrap();
        losses.push(
            model
                .forward_backward(&tokens, &targets, b, t, step, 1.0)
                .unwrap(),
        );
        opt.clip_and_update(&model, Some(1.0)).unwrap();
    }
    let params = model
        .param_names()
        .iter()
        .map(|(n, _)| model.read_param(n).unwrap())
        .collect();
    (losses, params)
}

#[test]
fn profiled_backend_passes_results_through_bitwise() {
    let plain = train(Arc::new(CpuBackend::new()));
    let profiled = Arc::new(ProfiledBackend::new(Arc::new(CpuBackend::new())));
    profiled.set_enabled(true).unwrap();
    let wrapped = train(profiled.clone());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&plain.0), bits(&wrapped.0), "losses differ");
    assert_eq!(plain.1.len(), wrapped.1.len());
    for (a, b) in plain.1.iter().zip(&wrapped.1) {
        assert_eq!(bits(a), bits(b), "a parameter differs");
    }
}

#[test]
fn profiled_backend_counts_every_op_of_a_step() {
    let profiled = Arc::new(ProfiledBackend::new(Arc::new(CpuBackend::new())));
    let c = cfg();
    let mut model = Model::new(profiled.clone(), c.clone(), 7).unwrap();
    let mut opt = AdamW::new(profiled.as_ref(), 1e-3, 0.9, 0.95, 1e-8, 0.1).unwrap();
    let (b, t) = (2, c.n_ctx);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i % 97) as u32).collect();
    // Off: nothing is recorded.
    model.zero_grads().unwrap();
    model
        .forward_backward(&tokens, &tokens, b, t, 0, 1.0)
        .unwrap();
    assert!(profiled.report().is_empty());

    profiled.set_enabled(true).unwrap();
    model.zero_grads().unwrap();
    model
        .forward_backward(&tokens, &tokens, b, t, 1, 1.0)
        .unwrap();
    opt.clip_and_update(&model, Some(1.0)).unwrap();
    profiled.set_enabled(false).unwrap();

    let calls = |op: &str| {
        profiled
            .report()
            .iter()
            .find(|(n, _)| *n == op)
            .map_or(0, |(_, s)| s.calls)
    };
    let l = c.n_layer as u64;
    // Per block: qkv, attn.proj, mlp.proj; plus the output head. mlp.fc is
    // one matmul_gelu_fwd (GELU fused), with its backward a gelu_bwd and a
    // matmul_bwd.
    assert_eq!(calls("matmul_fwd"), 3 * l + 1);
    assert_eq!(calls("matmul_gelu_fwd"), l);
    assert_eq!(calls("matmul_bwd"), 4 * l + 1);
    assert_eq!(calls("attention_fwd"), l);
    assert_eq!(calls("attention_bwd"), l);
    assert_eq!(calls("layernorm_fwd"), 2 * l + 1);
    assert_eq!(calls("layernorm_bwd"), 2 * l + 1);
    assert_eq!(calls("gelu_fwd"), 0);
    assert_eq!(calls("gelu_bwd"), l);
    // Embeddings and both residual branches of every block.
    assert_eq!(calls("dropout_fwd"), 2 * l + 1);
    assert_eq!(calls("dropout_bwd"), 2 * l + 1);
    assert_eq!(calls("embedding_fwd"), 1);
    assert_eq!(calls("embedding_bwd"), 1);
    assert_eq!(calls("softmax_xent"), 1);
    // One AdamW launch for every parameter tensor; sum_squares once per
    // buffer; the step statistics closed once.
    assert_eq!(calls("adamw"), 0);
    assert_eq!(calls("adamw_multi"), 1);
    assert_eq!(calls("sum_squares"), l + 1);
    assert_eq!(calls("finish_step"), 1);
    // The per-shape matmul rows split the same calls. The decoder is as
    // wide as the padded vocabulary (97 -> 128).
    let shape_calls: u64 = profiled.matmul_report().iter().map(|(_, s)| s.calls).sum();
    assert_eq!(
        shape_calls,
        calls("matmul_fwd") + calls("matmul_gelu_fwd") + calls("matmul_bwd")
    );
    assert!(profiled
        .matmul_report()
        .iter()
        .any(|(k, s)| k == "matmul_fwd 32x32->128" && s.calls == 1));
    for (name, s) in profiled.report() {
        assert!(s.calls > 0 && s.secs >= 0.0, "{name}: {s:?}");
    }
    profiled.reset();
    assert!(profiled.report().is_empty());
}

fn dyntie(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dyntie"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dyntie {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dyntie printed JSON")
}

#[test]
fn bench_throughput_json_parses() {
    let r = dyntie(&[
        "bench",
        "throughput",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        "--backend",
        "cpu",
        "--tying",
        "all",
        "--replicas",
        "2",
    ]);
    assert_eq!(r["backend"], "cpu");
    assert_eq!(r["model"]["vocab_size"], 50257, "vocab 0 means GPT-2's");
    let layers = r["model"]["n_layer"].as_u64().unwrap() as usize;
    assert_eq!(r["tie_state"], serde_json::json!(vec![0; layers]));
    assert_eq!(r["step_ms"].as_array().unwrap().len(), 2);
    assert_eq!(
        r["losses"].as_array().unwrap().len(),
        5,
        "1 warm-up + 1 counted + 2 timed + 1 profiled"
    );
    // A step reads nothing back and never waits for the device.
    let traffic = &r["traffic"];
    assert_eq!(traffic["readbacks"], 0, "{traffic}");
    assert_eq!(traffic["syncs"], 0, "{traffic}");
    assert_eq!(traffic["uploads"], 0, "{traffic}");
    assert_eq!(
        traffic["queued_uploads"], 3,
        "tokens, targets, learning rate: {traffic}"
    );
    assert!(traffic["launches"].as_u64().unwrap() > 10, "{traffic}");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["ms_per_step_min"].as_f64() <= r["ms_per_step_median"].as_f64());
    assert!(r["mfu"].is_null(), "no MFU on the CPU");
    // All tied: one block's weights are stored.
    let (params, globals, block) = (
        r["params"].as_u64().unwrap(),
        r["counted"]["global_params"].as_u64().unwrap(),
        r["counted"]["block_params"].as_u64().unwrap(),
    );
    assert_eq!(params, globals + block);
    let peak = r["measured"]["peak_bytes"].as_u64().unwrap();
    assert!(
        peak >= 4 * params,
        "the weights alone are {} bytes",
        4 * params
    );
    // Two replicas: what they summed per step is what the memory table
    // counts for this tie pattern.
    let scaling = &r["scaling"];
    assert_eq!(scaling["replicas"], 2);
    assert_eq!(scaling["step_ms"].as_array().unwrap().len(), 2);
    assert_eq!(
        scaling["all_reduce_bytes_per_step"],
        r["counted"]["all_reduce_bytes"]
    );
    assert!(scaling["efficiency"].as_f64().unwrap() > 0.0);
    let ops = r["ops"].as_array().unwrap();
    assert!(ops.iter().any(|o| o["op"] == "matmul_fwd"));
    let share: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9);
}

#[test]
fn bench_memory_paper_config_has_1556m_parameters() {
    let r = dyntie(&["bench", "memory", "--preset", "paper", "--json"]);
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows[0]["pattern"], "none");
    let params = rows[0]["report"]["params"].as_u64().unwrap();
    assert_eq!((params as f64 / 1e6).round(), 1556.0, "{params}");
    assert_eq!(rows[1]["pattern"], "all");
    assert!(rows[1]["report"]["params"].as_u64().unwrap() < params / 10);
}

/// The paper's BERT (default BertConfig, GPT-2 vocabulary): the exact
/// counts are derived by hand in `model::accounting`'s tests.
#[test]
fn bench_memory_bert_preset_has_124_7m_parameters() {
    let r = dyntie(&[
        "bench", "memory", "--arch", "bert", "--preset", "bert", "--json",
    ]);
    assert_eq!(r["model"]["arch"], "bert");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows[0]["pattern"], "none");
    let none = &rows[0]["report"];
    assert_eq!(none["params"], 124_690_513);
    assert_eq!(none["block_params"], 7_087_872);
    assert_eq!(rows[1]["pattern"], "all");
    assert_eq!(rows[1]["report"]["params"], 39_636_049 + 7_087_872);
}

#[test]
fn mfu_denominators_and_flops() {
    let peak = |gpu: &str| {
        (
            peak_tflops(gpu, Precision::Fp32),
            peak_tflops(gpu, Precision::Bf16),
        )
    };
    assert_eq!(peak("NVIDIA H100 PCIe (sm_90)"), (Some(51.2), Some(756.0)));
    assert_eq!(
        peak("NVIDIA H100 80GB HBM3 (sm_90)"),
        (Some(66.9), Some(989.4))
    );
    assert_eq!(peak("NVIDIA H200 (sm_90)"), (Some(66.9), Some(989.4)));
    assert_eq!(
        peak("NVIDIA A100-SXM4-80GB (sm_80)"),
        (Some(19.5), Some(312.0))
    );
    assert_eq!(peak("Tesla T4"), (None, None));
    // GPT-2 small at T=1024: N = 12 * 12 * 768^2 + 50257 * 768 = 123,532,032.
    let gpt2 = ModelConfig {
        arch: Arch::Gpt2,
        n_layer: 12,
        n_embd: 768,
        n_head: 12,
        n_ctx: 1024,
        vocab_size: 50257,
        dropout: 0.0,
        bias: true,
    };
    let (n, f) = flops_per_token(&gpt2);
    assert_eq!(n, 123_532_032);
    assert_eq!(f, 6.0 * 123_532_032.0 + 12.0 * 12.0 * 1024.0 * 768.0);
}

#[test]
fn scripts_parse() {
    for s in ["scripts/compare.sh", "scripts/gpu-check.sh"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(s);
        let st = Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(st.success(), "bash -n {s}");
    }
}

/// `bench kernels` under the emulator: every product of a step of both
/// configs, in both dtypes, checked against the CPU at cut-down sizes; on
/// the CPU backend, which has no kernels, a clear error.
#[test]
fn bench_kernels_checks_every_product_under_the_emulator() {
    let out = Command::new(env!("CARGO_BIN_EXE_dyntie"))
        .args(["bench", "kernels", "--backend", "emu"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 2 models x 15 linear products x 2 dtypes, each compared.
    assert_eq!(text.matches(" pass (").count(), 60, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    // Attention is listed, not compared: unfused in both dtypes, flash in bf16.
    let rows = |op: &str| text.lines().filter(|l| l.contains(op)).count();
    assert_eq!((rows("  attention "), rows("  flash ")), (8, 4), "{text}");
    assert_eq!(rows("see the attention conformance cases"), 12, "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_dyntie"))
        .args(["bench", "kernels", "--backend", "cpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bench kernels times the CUDA kernels"),
        "{err}"
    );
}

/// What `bench memory` counts is what a training step allocates, in both
/// precisions: in bf16 that includes the weights' bf16 copies and the
/// activations at 2 bytes each. The count leaves out only a few small
/// buffers (the optimizer's tensor list, the step statistics and the
/// reductions' scratch: about 10 KiB here), hence the 64 KiB allowance.
#[test]
fn bench_memory_counts_what_a_step_allocates() {
    for precision in ["fp32", "bf16"] {
        let r = dyntie(&[
            "bench",
            "memory",
            "--preset",
            "tiny",
            "--vocab",
            "300",
            "--backend",
            "emu",
            "--precision",
            precision,
            "--measure",
            "--patterns",
            "none",
            "--patterns",
            "all",
            "--json",
        ]);
        for row in r["rows"].as_array().unwrap() {
            let counted = row["report"]["total_bytes"].as_u64().unwrap();
            let peak = row["measured"]["peak_bytes"].as_u64().unwrap();
            assert!(
                counted <= peak && peak <= counted + (64 << 10),
                "{precision} {}: counted {counted}, measured peak {peak}",
                row["pattern"]
            );
        }
    }
}
