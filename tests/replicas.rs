//! Data-parallel training in one process (`dyntie train --replicas N`):
//! replicas on the CPU and under the emulator train like one replica on
//! the whole batch, with the same tie decisions; a failing replica or a
//! tie table that drifts stops the whole run with an error, never a hang;
//! a resume with the same replicas is bit for bit; the binary trains with
//! replicas and refuses what it cannot do. (Replicas as separate processes:
//! tests/launch.rs.)

#[path = "common/cli.rs"]
mod cli;

use anyhow::Result;
use dyntie::checkpoint;
use dyntie::config::{BackendKind, RunConfig, Schedule};
use dyntie::cpu::CpuBackend;
use dyntie::cuda::{EmuDevice, KernelBackend};
use dyntie::dist::{Comm, CommStats, InProcess};
use dyntie::mem::View;
use dyntie::metrics::read_jsonl;
use dyntie::ops::Backend;
use dyntie::train::{checkpoint_dirs, FaultKind, Join, ReplicaFault, Replicas, Summary, Trainer};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-replicas-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

type MakeBackend = fn() -> Arc<dyn Backend>;

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

fn emu() -> Arc<dyn Backend> {
    Arc::new(KernelBackend::new(EmuDevice::new()))
}

/// A dynamic run of a small model that decides every 2 steps (the first
/// decisions of a 3-block model are all made within 20 steps). No dropout:
/// replicas draw their own masks, so only without dropout is one replica
/// on the whole batch the same computation.
fn config(steps: usize) -> RunConfig {
    let mut c = RunConfig::preset("tiny").unwrap();
    c.backend = BackendKind::Cpu;
    c.model.n_layer = 3;
    c.model.n_embd = 32;
    c.model.n_head = 2;
    c.model.n_ctx = 16;
    c.model.dropout = 0.0;
    c.train.batch = 4;
    c.train.steps = steps;
    c.train.schedule = Schedule::Constant;
    c.train.log_every = 1;
    c.train.eval_every = 0;
    c.train.checkpoint_every = 10;
    c.tying.policy = "dynamic".parse().unwrap();
    c.tying.agent_k = 2;
    c.data.synthetic_tokens = 4000;
    c
}

/// Trains `cfg` in `dir` on `replicas` replicas of `backend` (a plain run
/// for one), in a thread watched by a clock: a run that hangs fails the
/// test instead of hanging it.
fn train(
    cfg: RunConfig,
    dir: &Path,
    backend: MakeBackend,
    replicas: usize,
    fault: Option<ReplicaFault>,
) -> Result<Summary> {
    let (dir, (tx, rx)) = (dir.to_path_buf(), mpsc::channel());
    std::thread::spawn(move || {
        let run = || -> Result<Summary> {
            let mut t = Trainer::create(cfg, backend(), &dir, false)?;
            t.verbose = false;
            with_replicas(&mut t, backend, replicas, fault)
        };
        let _ = tx.send(run());
    });
    rx.recv_timeout(Duration::from_secs(600))
        .expect("the run hung (no result within 10 minutes)")
}

fn with_replicas(
    t: &mut Trainer,
    backend: MakeBackend,
    replicas: usize,
    fault: Option<ReplicaFault>,
) -> Result<Summary> {
    if replicas == 1 {
        return t.run();
    }
    let mut r = Replicas::in_process((1..replicas).map(|_| backend()).collect())?;
    r.fault = fault;
    t.run_replicated(r)
}

/// The train lines of metrics.jsonl.
fn train_lines(dir: &Path) -> Vec<Value> {
    read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .collect()
}

/// Each closed decision: its step, block, action and the slots after it.
fn decisions(dir: &Path) -> Vec<(Value, Value, Value, Value)> {
    read_jsonl(&dir.join("ties.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r["step"].clone(),
                r["layer"].clone(),
                r["action"].clone(),
                r["slots_after"].clone(),
            )
        })
        .collect()
}

/// The largest relative difference between the losses of two runs, step
/// by step (they must log the same steps and tokens).
fn loss_gap(a: &Path, b: &Path) -> f64 {
    let (la, lb) = (train_lines(a), train_lines(b));
    assert_eq!(la.len(), lb.len(), "both runs log every step");
    la.iter()
        .zip(&lb)
        .map(|(x, y)| {
            assert_eq!(x["step"], y["step"]);
            assert_eq!(
                x["tokens"], y["tokens"],
                "tokens per step do not depend on replicas"
            );
            let (x, y) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
            (x - y).abs() / x.abs()
        })
        .fold(0.0, f64::max)
}

/// `replicas` replicas on rows of the batch against one replica on the
/// whole batch. They are the same sums in another order, so the losses
/// differ by rounding only. The bound is derived from a run with a like
/// reordering and no replicas: one replica in 2 micro-batches of half the
/// rows (whose gradients are added one after the other), against the whole
/// batch at once; where that reordering happens to round the same (the
/// emulated kernels reduce rows in the same blocks either way), from one
/// rounding of the logged fp32 loss (`f32::EPSILON` relative). The
/// replicas' gap may be a few times that (4 replicas split the sums
/// further, and training carries a difference on), never orders of
/// magnitude more; and the decisions are the same.
fn replicas_train_like_one(backend: MakeBackend, replicas: usize, steps: usize, tag: &str) {
    let dirs = ["one", "accum", "replicas"].map(|k| temp_dir(&format!("{tag}-{k}")));
    train(config(steps), &dirs[0], backend, 1, None).unwrap();
    let mut accum = config(steps);
    accum.train.batch /= 2;
    accum.train.grad_accum = 2;
    train(accum, &dirs[1], backend, 1, None).unwrap();
    train(config(steps), &dirs[2], backend, replicas, None).unwrap();
    let reordering = loss_gap(&dirs[0], &dirs[1]);
    let gap = loss_gap(&dirs[0], &dirs[2]);
    eprintln!("{tag}: relative loss gap {gap:.2e}, reordering alone {reordering:.2e}");
    assert!(
        reordering < 1e-5,
        "{tag}: the reordered sums should differ by rounding only ({reordering:e})"
    );
    assert!(
        gap < 1e-5,
        "{tag}: {replicas} replicas' losses differ by {gap:e} (relative) from one replica's"
    );
    let rounding = reordering.max(f32::EPSILON as f64);
    assert!(
        gap <= 10.0 * rounding,
        "{tag}: {replicas} replicas' losses differ by {gap:e} (relative), more than 10 x the \
         {rounding:e} of rounding the same sums in another order"
    );
    let (one, many) = (decisions(&dirs[0]), decisions(&dirs[2]));
    assert!(one.len() >= steps / 2 - 1, "{tag}: decisions were made");
    assert_eq!(one, many, "{tag}: the replicas decided other ties");
    for d in dirs {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn two_and_four_cpu_replicas_train_like_one_replica_on_the_whole_batch() {
    replicas_train_like_one(cpu, 2, 20, "cpu2");
    replicas_train_like_one(cpu, 4, 20, "cpu4");
}

#[test]
fn two_emulated_replicas_train_like_one_replica_on_the_whole_batch() {
    replicas_train_like_one(emu, 2, 6, "emu2");
}

#[test]
fn a_failing_replica_stops_the_run_with_its_error() {
    for rank in [1, 0, 2] {
        let dir = temp_dir(&format!("fail{rank}"));
        let fault = ReplicaFault {
            rank,
            step: 3,
            kind: FaultKind::Error,
        };
        let mut cfg = config(10);
        cfg.train.batch = 6;
        let err = train(cfg, &dir, cpu, 3, Some(fault)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("replica {rank} failed at step 3")),
            "rank {rank}: {msg}"
        );
        if rank > 0 {
            assert!(
                msg.contains(&format!("replica {rank} of 3 failed")),
                "{msg}"
            );
        }
        // Rank 0 wrote the steps before the failure, and none after.
        let logged = train_lines(&dir).len();
        assert!(logged <= 3, "rank {rank}: {logged} steps logged");
        let _ = fs::remove_dir_all(dir);
    }
}

#[test]
fn a_tie_table_that_differs_on_one_replica_stops_every_replica() {
    let dir = temp_dir("skew");
    // Before the decision of step 2 (about block 2), replica 1 changes the
    // tie of block 1 on its own.
    let fault = ReplicaFault {
        rank: 1,
        step: 2,
        kind: FaultKind::SkewTable,
    };
    let err = train(config(10), &dir, cpu, 2, Some(fault)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("the tie table at step 2 differs between replicas"),
        "{msg}"
    );
    let _ = fs::remove_dir_all(dir);
}

/// The newest checkpoint folder of a run.
fn newest(run: &Path) -> PathBuf {
    checkpoint_dirs(run).into_iter().next().unwrap()
}

#[test]
fn a_resume_with_the_same_replicas_is_bit_for_bit() -> Result<()> {
    let (a, b) = (temp_dir("resume-a"), temp_dir("resume-b"));
    // With dropout: each replica's masks are a function of the step, so a
    // resume draws them again.
    let cfg = |steps| {
        let mut c = config(steps);
        c.model.dropout = 0.1;
        c
    };
    train(cfg(20), &a, cpu, 2, None)?;
    train(cfg(10), &b, cpu, 2, None)?;
    let mut t = Trainer::resume(&b, cpu(), Some(20))?;
    t.verbose = false;
    assert_eq!(t.step(), 10);
    with_replicas(&mut t, cpu, 2, None)?;
    drop(t);
    let clean = |d: &Path| -> Vec<Value> {
        train_lines(d)
            .into_iter()
            .map(|mut r| {
                for k in ["tokens_per_s", "elapsed_s", "peak_bytes"] {
                    r.as_object_mut().unwrap().remove(k);
                }
                r
            })
            .collect()
    };
    assert_eq!(clean(&a).len(), 20);
    assert_eq!(clean(&a), clean(&b), "train lines differ");
    let ties = |d: &Path| fs::read_to_string(d.join("ties.jsonl")).unwrap();
    assert_eq!(ties(&a), ties(&b), "ties.jsonl differs");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let ta = checkpoint::load_safetensors(&newest(&a).join(file))?;
        let tb = checkpoint::load_safetensors(&newest(&b).join(file))?;
        assert_eq!(ta.len(), tb.len());
        for (name, (_, data)) in &ta {
            let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(data) == bits(&tb[name].1), "{file}: {name} differs");
        }
    }
    for d in [a, b] {
        let _ = fs::remove_dir_all(d);
    }
    Ok(())
}

/// A comm that notes every all-reduce (its length, and whether it was
/// handed over during the backward pass) and passes it on.
struct Noted {
    inner: InProcess,
    calls: Arc<Mutex<Vec<(usize, bool)>>>,
}

impl Comm for Noted {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&self, be: &dyn Backend, buf: View) -> Result<()> {
        self.calls.lock().unwrap().push((buf.len, false));
        self.inner.all_reduce_sum(be, buf)
    }
    fn all_reduce_sum_overlapped(&self, be: &dyn Backend, buf: View) -> Result<()> {
        self.calls.lock().unwrap().push((buf.len, true));
        self.inner.all_reduce_sum(be, buf)
    }
    fn broadcast(&self, be: &dyn Backend, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        self.inner.broadcast(be, root, bytes)
    }
    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
    fn stats(&self) -> CommStats {
        self.inner.stats()
    }
}

/// Each trainable slot's gradient is summed as soon as the backward pass
/// has left the lowest block on it, the last blocks' slots first (while
/// the pass goes on, with NCCL on a stream of its own); the globals, whose
/// gradient the embedding completes at the very end, and the loss follow.
#[test]
fn slots_are_summed_as_the_backward_pass_completes_them() -> Result<()> {
    for (policy, overlapped_slots) in [("none", 3), ("pattern:0,1,1", 2), ("all", 1)] {
        let dir = temp_dir(&format!("order-{}", policy.replace([':', ','], "-")));
        let mut cfg = config(1);
        cfg.tying.policy = policy.parse().unwrap();
        let mut t = Trainer::create(cfg, cpu(), &dir, false)?;
        t.verbose = false;
        let (block, globals) = (
            t.model().block_layout().len(),
            t.model().global_layout().len(),
        );
        let calls = Arc::new(Mutex::new(Vec::new()));
        let joins = InProcess::group(2)?
            .into_iter()
            .map(|inner| {
                let calls = calls.clone();
                Box::new(move || Ok(Box::new(Noted { inner, calls }) as Box<dyn Comm>)) as Join
            })
            .collect();
        t.run_replicated(Replicas {
            backends: vec![cpu()],
            joins,
            fault: None,
        })?;
        // Both ranks note into one list, each call once per rank.
        let calls = calls.lock().unwrap().clone();
        let mut expected = vec![(block, true); overlapped_slots];
        expected.extend([(globals, false), (1, false)]);
        let mut both: Vec<(usize, bool)> = expected.iter().flat_map(|&c| [c, c]).collect();
        let mut seen = calls.clone();
        both.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, both, "{policy}: {calls:?}");
        // In order: every overlapped sum before the globals' and the loss's.
        let last_overlapped = calls.iter().rposition(|c| c.1).unwrap();
        let first_plain = calls.iter().position(|c| !c.1).unwrap();
        assert!(last_overlapped < first_plain, "{policy}: {calls:?}");
        let _ = fs::remove_dir_all(dir);
    }
    Ok(())
}

/// The bytes the replicas sum per step, as the comm counted them, are the
/// trainable gradients and the loss that `bench memory` counts, and fewer
/// when blocks are tied.
#[test]
fn the_bytes_all_reduced_per_step_are_the_counted_ones_and_drop_with_ties() {
    let mut reduced = Vec::new();
    for policy in ["none", "all"] {
        let dir = temp_dir(&format!("volume-{policy}"));
        let mut cfg = config(2);
        cfg.tying.policy = policy.parse().unwrap();
        let summary = train(cfg, &dir, cpu, 2, None).unwrap();
        let line = train_lines(&dir).pop().unwrap();
        let per_step = line["all_reduce_bytes_per_step"].as_u64().unwrap();
        assert_eq!(per_step, summary.counted.all_reduce_bytes, "{policy}");
        reduced.push(per_step);
        let _ = fs::remove_dir_all(dir);
    }
    // Three blocks on one slot: two blocks' gradients fewer.
    assert!(reduced[1] < reduced[0], "{reduced:?}");
}

#[test]
fn the_binary_trains_with_replicas_and_refuses_what_it_cannot_do() {
    use cli::*;
    let root = temp_dir("cli");
    fs::create_dir_all(&root).unwrap();
    let out = root.join("run");
    let args = train_args(&[
        "--backend",
        "cpu",
        "--steps",
        "4",
        "--tying",
        "dynamic",
        "--agent-k",
        "2",
        "--replicas",
        "2",
        "--out",
        s(&out),
    ]);
    let said = ok(&args);
    assert!(said.contains("2 data-parallel replicas"), "{said}");
    let lines = read_jsonl(&out.join("metrics.jsonl")).unwrap();
    let last = lines.iter().rfind(|r| r["kind"] == "train").unwrap();
    assert_eq!(
        (last["step"].as_u64(), last["replicas"].as_u64()),
        (Some(4), Some(2))
    );
    assert!(last["all_reduce_bytes_per_step"].as_u64().unwrap() > 0);
    // Resumed with the same replicas (--gpus is the same flag).
    let said = ok(&["train", "--resume", s(&out), "--steps", "6", "--gpus", "2"]);
    assert!(said.contains("resuming"), "{said}");
    let odd_out = root.join("odd");
    let odd = train_args(&["--batch", "3", "--replicas", "2", "--out", s(&odd_out)]);
    fails(&odd, &["--batch 3", "--replicas 2", "multiple of 2"]);
    assert!(!odd_out.exists(), "nothing is written for a refused run");
    let launched_out = root.join("launched");
    let launched = command()
        .args(train_args(&["--out", s(&launched_out)]))
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .output()
        .unwrap();
    failed(
        "a launched process that does not know where rank 0 is",
        &launched,
        &["WORLD_SIZE is set but MASTER_ADDR is not"],
    );
    assert!(
        !launched_out.exists(),
        "nothing is written for a refused run"
    );
    let _ = fs::remove_dir_all(root);
}
