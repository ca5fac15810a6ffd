//! Throughput of the CPU backend's heavy ops at GPT-2 training shapes
//! (6 layers, width 256, 8 heads, T=128, B=8, vocab 50257: 1024 rows).
//!
//! `cargo bench --bench gemm` prints GFLOP/s for the matmuls (forward and
//! both backward products) and milliseconds for the fused loss and attention.
//!
//! Each op reports its best wall time and, on Linux, the mean CPU time all
//! threads spent per run (from /proc/self/task/*/schedstat): on a shared
//! machine the wall time depends on the neighbours, while GFLOP per CPU
//! second shows the code's own efficiency. Run with `RAYON_NUM_THREADS=1`
//! for single-core numbers.

use dyntie::cpu::CpuBackend;
use dyntie::mem::{Buffer, DType};
use dyntie::ops::attention::{AttentionBwd, AttentionFwd, AttnShape};
use dyntie::ops::loss::SoftmaxXent;
use dyntie::ops::matmul::{MatmulBwd, MatmulFwd};
use dyntie::ops::BackendExt;
use dyntie::rng::HostRng;
use std::time::Instant;

/// CPU time of all this process's threads so far, in seconds (None where
/// /proc does not say).
fn cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Best wall time and mean CPU time per run, in seconds, over at least
/// `reps` runs after one warm-up, and over at least half a second: the kernel
/// updates a running thread's CPU time only now and then, so short runs are
/// averaged.
fn best_of(reps: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    f();
    let (start_cpu, start) = (cpu_seconds(), Instant::now());
    let (mut best, mut runs) = (f64::INFINITY, 0);
    while runs < reps || (start.elapsed().as_secs_f64() < 0.5 && runs < 1000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    let cpu = match (start_cpu, cpu_seconds()) {
        (Some(c0), Some(c1)) => Some((c1 - c0) / runs as f64),
        _ => None,
    };
    (best, cpu)
}

fn cpu_note(cpu: Option<f64>, gflop: f64) -> String {
    match cpu {
        Some(c) if gflop > 0.0 => format!("  ({:6.1} GFLOP per CPU second)", gflop / c),
        Some(c) => format!("  ({:8.2} ms CPU)", c * 1e3),
        None => String::new(),
    }
}

fn random(be: &CpuBackend, rng: &mut HostRng, n: usize, scale: f64) -> Buffer {
    let buf = be.alloc(DType::F32, n).unwrap();
    let x: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    be.upload(buf.view(), &x).unwrap();
    buf
}

fn bench_matmul(be: &CpuBackend, rng: &mut HostRng, name: &str, rows: usize, ic: usize, oc: usize) {
    let reps = 5;
    let x = random(be, rng, rows * ic, 1.0);
    let w = random(be, rng, oc * ic, 0.02);
    let dy = random(be, rng, rows * oc, 1.0);
    let out = be.alloc(DType::F32, rows * oc).unwrap();
    let dx = be.alloc(DType::F32, rows * ic).unwrap();
    let dw = be.alloc(DType::F32, oc * ic).unwrap();
    let gflop = 2.0 * (rows * ic * oc) as f64 * 1e-9;
    let fwd = best_of(reps, || {
        be.run(MatmulFwd {
            out: out.view(),
            inp: x.view(),
            weight: w.view(),
            bias: None,
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap()
    });
    let bwd_x = best_of(reps, || {
        be.run(MatmulBwd {
            dinp: Some(dx.view()),
            dweight: None,
            dbias: None,
            dout: dy.view(),
            inp: x.view(),
            weight: w.view(),
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap()
    });
    let bwd_w = best_of(reps, || {
        be.run(MatmulBwd {
            dinp: None,
            dweight: Some(dw.view()),
            dbias: None,
            dout: dy.view(),
            inp: x.view(),
            weight: w.view(),
            rows,
            in_ch: ic,
            out_ch: oc,
        })
        .unwrap()
    });
    for (what, (t, cpu)) in [("fwd", fwd), ("bwd dinp", bwd_x), ("bwd dweight", bwd_w)] {
        println!(
            "matmul {name:<8} [{rows}x{ic}] x [{ic}x{oc}] {what:<12} {:8.2} ms {:6.1} GFLOP/s{}",
            t * 1e3,
            gflop / t,
            cpu_note(cpu, gflop)
        );
    }
}

fn main() {
    let be = CpuBackend::new();
    let mut rng = HostRng::new(0);
    println!("rayon threads: {}", rayon::current_num_threads());
    bench_matmul(&be, &mut rng, "lm_head", 1024, 256, 50257);
    bench_matmul(&be, &mut rng, "qkv", 1024, 256, 768);
    bench_matmul(&be, &mut rng, "mlp_fc", 1024, 256, 1024);
    bench_matmul(&be, &mut rng, "mlp_proj", 1024, 1024, 256);

    let (rows, vocab) = (1024, 50257);
    let logits = random(&be, &mut rng, rows * vocab, 1.0);
    let targets = be.alloc(DType::U32, rows).unwrap();
    let tgt: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
    be.upload(targets.view(), &tgt).unwrap();
    let losses = be.alloc(DType::F32, rows).unwrap();
    let dl = be.alloc(DType::F32, rows * vocab).unwrap();
    // Gradient into its own buffer, into the logits (as training does; the
    // repeated runs then start from earlier gradients, which is harmless),
    // and the loss alone.
    for (what, dlogits) in [
        ("dlogits apart", Some(dl.view())),
        ("dlogits in place", Some(logits.view())),
        ("loss only", None),
    ] {
        let t = best_of(5, || {
            be.run(SoftmaxXent {
                losses: losses.view(),
                dlogits,
                logits: logits.view(),
                targets: targets.view(),
                rows,
                vocab,
                padded_vocab: vocab,
                ignore_index: u32::MAX,
                grad_scale: 1.0 / rows as f32,
            })
            .unwrap()
        });
        println!(
            "softmax_xent [{rows}x{vocab}] {what:<17}  {:8.2} ms{}",
            t.0 * 1e3,
            cpu_note(t.1, 0.0)
        );
    }

    let shape = AttnShape {
        batch: 8,
        seq: 128,
        channels: 256,
        heads: 8,
    };
    let (b, t_len, c, h) = (8, 128, 256, 8);
    let qkv = random(&be, &mut rng, b * t_len * 3 * c, 1.0);
    let out = be.alloc(DType::F32, b * t_len * c).unwrap();
    let att = be.alloc(DType::F32, b * h * t_len * t_len).unwrap();
    let scratch = be.alloc(DType::F32, b * h * t_len * t_len).unwrap();
    let dout = random(&be, &mut rng, b * t_len * c, 1.0);
    let dqkv = be.alloc(DType::F32, b * t_len * 3 * c).unwrap();
    let fwd = best_of(5, || {
        be.run(AttentionFwd {
            out: out.view(),
            att: att.view(),
            qkv: qkv.view(),
            shape,
        })
        .unwrap()
    });
    let bwd = best_of(5, || {
        be.run(AttentionBwd {
            dqkv: dqkv.view(),
            scratch: scratch.view(),
            dout: dout.view(),
            qkv: qkv.view(),
            att: att.view(),
            shape,
        })
        .unwrap()
    });
    println!(
        "attention B=8 T=128 C=256 H=8 fwd             {:8.2} ms{}",
        fwd.0 * 1e3,
        cpu_note(fwd.1, 0.0)
    );
    println!(
        "attention B=8 T=128 C=256 H=8 bwd             {:8.2} ms{}",
        bwd.0 * 1e3,
        cpu_note(bwd.1, 0.0)
    );
}
