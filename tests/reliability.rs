//! Nothing lost, ever: what a careless or unlucky user does to a run,
//! through the `dyntie` binary. A failed `--force` leaves the old run byte
//! for byte; a folder that is not a run is never taken; one trainer per run
//! folder; Ctrl-C and SIGTERM stop with a checkpoint; a diverging run keeps
//! its last good checkpoint; kill -9 at random moments, each followed by a
//! resume, ends with the logs and weights of an uninterrupted run; memory
//! that is not there, numbers that make no sense, a dataset prepared again,
//! broken checkpoints, a truncated token file: each is a clear error.

#[path = "common/cli.rs"]
mod common;

use common::*;
use dyntie::checkpoint::{load_safetensors, safetensors_bytes, NamedTensor};
use dyntie::metrics::read_jsonl;
use dyntie::train::checkpoint_dirs;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// A `--config` file that logs every step.
fn log_every_step(root: &Path) -> PathBuf {
    let path = root.join("every-step.toml");
    fs::write(&path, "[train]\nlog_every = 1\n").unwrap();
    path
}

fn spawn(args: &[&str]) -> Child {
    command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start dyntie")
}

/// The `train` lines of a run's metrics.jsonl.
fn train_lines(run: &Path) -> Vec<Value> {
    read_jsonl(&run.join("metrics.jsonl"))
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .collect()
}

/// Waits until the run has logged `n` training steps; fails when the
/// trainer ends first.
fn wait_for_steps(run: &Path, n: usize, child: &mut Child) {
    let start = Instant::now();
    while train_lines(run).len() < n {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the trainer ended ({status}) before step {n}: {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no step {n} after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} failed");
}

/// The steps of the train lines, which must be 1..=n, each once.
fn assert_steps_once(run: &Path, n: u64) {
    let steps: Vec<u64> = train_lines(run)
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=n).collect::<Vec<_>>(), "{}", run.display());
}

#[test]
fn a_failed_force_leaves_the_old_run_byte_for_byte() {
    let root = temp_dir("force-fails");
    let run = root.join("run");
    let r = s(&run);
    ok(&train_args(&[
        "--steps",
        "3",
        "--checkpoint-every",
        "1",
        "--out",
        r,
    ]));
    let before = snapshot(&run);
    let data = prepared(&root);
    let missing = root.join("missing");
    for (extra, needles) in [
        (vec!["--data", s(&missing)], vec!["missing", "meta.json"]),
        (vec!["--tying", "pattern:0,2,1"], vec!["pattern"]),
        (vec!["--ctx", "1000000000"], vec!["memory"]),
        (vec!["--lr", "nan"], vec!["--lr"]),
        // The valid split (128 tokens) is shorter than one context.
        (
            vec!["--data", s(&data), "--ctx", "200"],
            vec!["valid", "context"],
        ),
    ] {
        let mut args = vec!["--steps", "2", "--out", r, "--force"];
        args.extend(extra);
        fails(&train_args(&args), &needles);
    }
    assert!(
        snapshot(&run) == before,
        "a failed --force changed the old run"
    );
    // The old run still resumes.
    ok(&["train", "--resume", r, "--steps", "4"]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_folder_that_is_not_a_run_is_never_taken() {
    let root = temp_dir("not-a-run");
    let other = root.join("mine");
    fs::create_dir_all(other.join("checkpoint")).unwrap();
    fs::write(other.join("checkpoint/model.safetensors"), b"my own").unwrap();
    fs::write(other.join("notes.txt"), b"keep me").unwrap();
    let before = snapshot(&other);
    for force in [&[][..], &["--force"]] {
        let mut args = vec!["--steps", "2", "--out", s(&other)];
        args.extend_from_slice(force);
        fails(
            &train_args(&args),
            &["not a dyntie run folder", "choose another --out"],
        );
    }
    let file = root.join("a-file");
    fs::write(&file, b"x").unwrap();
    fails(
        &train_args(&["--steps", "2", "--out", s(&file)]),
        &["is a file"],
    );
    // Export refuses the run's own folders and folders that hold other things.
    let run = root.join("run");
    ok(&train_args(&["--steps", "2", "--out", s(&run)]));
    let run_before = snapshot(&run);
    let inside = run.join("checkpoints/step-00000002");
    for out in [&inside, &run, &run.join("new")] {
        fails(
            &["export", "--run", s(&run), "--out", s(out)],
            &["inside the run folder"],
        );
    }
    fails(
        &["export", "--run", s(&run), "--out", s(&other), "--force"],
        &["not empty", "no earlier export"],
    );
    assert!(snapshot(&other) == before, "a foreign folder was changed");
    assert!(snapshot(&run) == run_before, "the run folder was changed");
    // An earlier export is replaced only with --force.
    let hf = root.join("hf");
    ok(&["export", "--run", s(&run), "--out", s(&hf)]);
    fails(
        &["export", "--run", s(&run), "--out", s(&hf)],
        &["earlier export", "--force"],
    );
    ok(&["export", "--run", s(&run), "--out", s(&hf), "--force"]);
    assert!(hf.join("model.safetensors").is_file());
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn one_trainer_per_run_folder_and_ctrl_c_leaves_a_resumable_checkpoint() {
    let root = temp_dir("lock");
    let cfg = log_every_step(&root);
    let run = root.join("run");
    let r = s(&run);
    let mut child = spawn(&train_args(&[
        "--steps",
        "1000000",
        "--config",
        s(&cfg),
        "--out",
        r,
    ]));
    wait_for_steps(&run, 3, &mut child);
    let pid = format!("pid {}", child.id());
    fails(
        &["train", "--resume", r, "--steps", "2000000"],
        &["in use", &pid],
    );
    fails(
        &train_args(&["--steps", "2", "--out", r, "--force"]),
        &["in use", &pid],
    );
    send(&child, "INT");
    let out = finish(child, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: stopped by Ctrl-C (SIGINT) at step")
            && last.contains(&format!("dyntie train --resume {r}")),
        "{err}"
    );
    let step: u64 = last
        .split("at step ")
        .nth(1)
        .and_then(|x| x.split(';').next())
        .and_then(|x| x.parse().ok())
        .unwrap();
    let newest = checkpoint_dirs(&run)[0].clone();
    assert!(newest.ends_with(format!("step-{step:08}")), "{newest:?}");
    assert_steps_once(&run, step);
    let more = (step + 3).to_string();
    ok(&["train", "--resume", r, "--steps", &more]);
    assert_steps_once(&run, step + 3);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn sigterm_stops_with_a_checkpoint_and_a_second_ctrl_c_quits_at_once() {
    let root = temp_dir("signals");
    let cfg = log_every_step(&root);
    let run = root.join("run");
    let r = s(&run);
    // Steps of a wider model take long enough (about a second, more on a
    // loaded machine) that two signals sent one after the other arrive
    // within one step; with a 256-wide model and batch 16 a heavily loaded
    // machine sometimes let the step end between them.
    let wide = [
        "--steps",
        "1000000",
        "--d-model",
        "384",
        "--ctx",
        "128",
        "--batch",
        "32",
        "--config",
        s(&cfg),
        "--out",
        r,
    ];
    let mut child = spawn(&train_args(&wide));
    wait_for_steps(&run, 1, &mut child);
    send(&child, "TERM");
    let out = finish(child, Duration::from_secs(120));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("stopped by SIGTERM") && err.contains("--resume"),
        "{err}"
    );
    let written = checkpoint_dirs(&run);
    assert_eq!(written.len(), 1, "{written:?}");
    let before = snapshot(&written[0]);

    let mut child = spawn(&["train", "--resume", r, "--steps", "2000000"]);
    let at = train_lines(&run).len();
    wait_for_steps(&run, at + 1, &mut child);
    // Two signals sent back to back can merge into one (standard signals do
    // not queue), so the second goes once the trainer has taken the first.
    send(&child, "INT");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut err = String::new();
    while !err.contains("stopping after the current step") {
        let read = stderr.read_line(&mut err).unwrap();
        assert!(read > 0, "the trainer ended without taking SIGINT: {err}");
    }
    send(&child, "INT");
    let out = finish(child, Duration::from_secs(60));
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("checkpoint of step"), "{err}");
    assert_eq!(checkpoint_dirs(&run), written, "no new checkpoint");
    assert!(snapshot(&written[0]) == before);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_diverging_run_keeps_its_good_checkpoint_and_continues_with_a_lower_rate() {
    let root = temp_dir("diverge");
    let run = root.join("run");
    let r = s(&run);
    ok(&train_args(&[
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--out",
        r,
    ]));
    let good = snapshot(&run.join("checkpoints/step-00000004"));
    let out = dyntie(&["train", "--resume", r, "--steps", "40", "--lr", "1e9"]);
    failed(
        "resume with --lr 1e9",
        &out,
        &["training diverged", "step 4 is intact", "--resume", "--lr"],
    );
    for dir in checkpoint_dirs(&run) {
        for f in ["model.safetensors", "optimizer.safetensors"] {
            for (name, (_, data)) in load_safetensors(&dir.join(f)).unwrap() {
                assert!(data.iter().all(|x| x.is_finite()), "{dir:?} {f} {name}");
            }
        }
    }
    assert!(snapshot(&run.join("checkpoints/step-00000004")) == good);
    let out = ok(&["train", "--resume", r, "--steps", "6", "--lr", "1e-4"]);
    assert!(
        out.contains("learning rate changes from 1e9 to 1e-4"),
        "{out}"
    );
    let config = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("lr = 0.0001"), "{config}");
    fs::remove_dir_all(root).unwrap();
}

/// kill -9 at random moments of training and checkpointing, each followed
/// by a resume (or, before the first checkpoint, a fresh start), until the
/// run completes: its logs hold every line once and equal those of an
/// uninterrupted run, and so do its weights. 50 kills by default
/// (`DYNTIE_KILLS=N` for another count). Most kills come a few milliseconds
/// after a step was logged, so each one lands in a different step or
/// checkpoint write; none waits past a second logged step, so however fast
/// the steps are, the run (three steps per kill) outlasts the kills.
#[test]
fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let kills: usize = std::env::var("DYNTIE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let root = temp_dir("kill9");
    let cfg = root.join("run.toml");
    // Log and checkpoint every step; the agent decides every 2 steps;
    // evaluations on the way.
    fs::write(
        &cfg,
        "[train]\nlog_every = 1\neval_every = 7\neval_max_windows = 2\n\
         final_eval_max_windows = 4\ncheckpoint_every = 1\n[tying]\nagent_k = 2\n",
    )
    .unwrap();
    let reference = root.join("reference");
    let run = root.join("run");
    let steps = 3 * kills as u64 + 20;
    let new_run = |out: &'static str| -> Vec<String> {
        let c = s(&cfg).to_string();
        let o = s(&root.join(out)).to_string();
        train_args(&["--seed", "7"])
            .into_iter()
            .map(String::from)
            .chain(["--steps".into(), steps.to_string()])
            .chain(["--config".into(), c, "--out".into(), o])
            .collect()
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    ok(&strs(&new_run("reference")));

    let mut rng = dyntie::rng::HostRng::new(15);
    let (mut done, mut killed) = (false, 0);
    while !done {
        let fresh = checkpoint_dirs(&run).is_empty();
        let mut a: Vec<String> = if fresh {
            new_run("run")
        } else {
            ["train", "--resume", s(&run)].map(String::from).to_vec()
        };
        if fresh && run.exists() {
            a.push("--force".into());
        }
        let mut child = spawn(&strs(&a));
        if killed < kills {
            // Mostly a few milliseconds after the next logged step (during
            // a step or a checkpoint write), sometimes anywhere in setup.
            let in_setup = rng.below(5) == 0;
            let logged = train_lines(&run).len();
            while !in_setup
                && child.try_wait().unwrap().is_none()
                && train_lines(&run).len() <= logged
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            let wait = if in_setup { 150 } else { 30 };
            let until = Instant::now() + Duration::from_millis(rng.below(wait));
            while Instant::now() < until
                && child.try_wait().unwrap().is_none()
                && train_lines(&run).len() <= logged + 1
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                let _ = child.wait();
                killed += 1;
                continue;
            }
        }
        let out = finish(child, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "after {killed} kills: {}",
            text(&out.stderr)
        );
        done = true;
    }
    eprintln!("{killed} kills");
    assert_eq!(killed, kills, "the run ended before every kill");

    // Every line once, and the same lines as the uninterrupted run's
    // (without the wall-clock and allocator fields of the process).
    let comparable = |dir: &Path, file: &str| -> Vec<Value> {
        read_jsonl(&dir.join(file))
            .unwrap()
            .into_iter()
            .map(|mut r| {
                if let Some(o) = r.as_object_mut() {
                    for k in [
                        "tokens_per_s",
                        "elapsed_s",
                        "peak_bytes",
                        "graph",
                        "live_bytes",
                    ] {
                        o.remove(k);
                    }
                }
                r
            })
            .collect()
    };
    for file in ["metrics.jsonl", "ties.jsonl"] {
        let (a, b) = (comparable(&reference, file), comparable(&run, file));
        let unique: BTreeSet<String> = b.iter().map(|r| r.to_string()).collect();
        assert_eq!(unique.len(), b.len(), "{file} holds a line twice");
        assert_eq!(a.len(), b.len(), "{file}: {} lines vs {}", b.len(), a.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{file} differs from the uninterrupted run");
        }
    }
    assert_steps_once(&run, steps);
    let newest = |d: &Path| checkpoint_dirs(d)[0].clone();
    assert!(newest(&run).ends_with(format!("step-{steps:08}")));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            fs::read(newest(&reference).join(f)).unwrap()
                == fs::read(newest(&run).join(f)).unwrap(),
            "{f} differs from the uninterrupted run"
        );
    }
    assert!(
        checkpoint_dirs(&run).len() <= 2,
        "only the 2 newest are kept"
    );
    fs::remove_dir_all(root).unwrap();
}

/// Rewrites a checkpoint file with one value of its first tensor replaced.
fn poison(file: &Path, value: f32) {
    let tensors: Vec<NamedTensor> = load_safetensors(file)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, (name, (shape, mut data)))| {
            if i == 0 {
                data[0] = value;
            }
            NamedTensor::new(name, shape, data)
        })
        .collect();
    fs::write(file, safetensors_bytes(&tensors).unwrap()).unwrap();
}

#[test]
fn broken_checkpoints_are_passed_over_or_refused_with_a_way_out() {
    let root = temp_dir("broken");
    let run = root.join("run");
    let r = s(&run);
    let cfg = log_every_step(&root);
    ok(&train_args(&[
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--config",
        s(&cfg),
        "--out",
        r,
    ]));
    let metrics = fs::read(run.join("metrics.jsonl")).unwrap();
    // A resume of the finished run logs nothing twice.
    ok(&["train", "--resume", r]);
    assert!(fs::read(run.join("metrics.jsonl")).unwrap() == metrics);

    // The newest (step 6) torn: resume falls back to step 4, says so, sets
    // the torn one aside and cuts the logs back to step 4.
    let six = run.join("checkpoints/step-00000006");
    let model = fs::read(six.join("model.safetensors")).unwrap();
    fs::write(six.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
    let out = ok(&["train", "--resume", r, "--steps", "8"]);
    assert!(
        out.contains("resuming") && out.contains("at step 4") && out.contains("skipping"),
        "{out}"
    );
    assert!(run.join("checkpoints/step-00000006.broken").is_dir());
    assert_steps_once(&run, 8);

    // NaN weights (written by an older version, or by hand) are refused by
    // eval, sample and export, and looked at with --allow-non-finite.
    for dir in checkpoint_dirs(&run) {
        poison(&dir.join("model.safetensors"), f32::NAN);
    }
    for args in [
        vec!["eval", "--run", r],
        vec!["sample", "--run", r, "--max-new-tokens", "2"],
        vec!["export", "--run", r, "--out", s(&root.join("hf"))],
    ] {
        fails(&args, &["non-finite", "--allow-non-finite"]);
    }
    fails(&["train", "--resume", r, "--steps", "9"], &["non-finite"]);
    let out = ok(&[
        "sample",
        "--run",
        r,
        "--max-new-tokens",
        "2",
        "--allow-non-finite",
    ]);
    assert_eq!(out.split_whitespace().count(), 3, "{out}");
    // A non-finite perplexity is printed, and is an error.
    let out = dyntie(&["eval", "--run", r, "--allow-non-finite"]);
    failed("eval of a NaN model", &out, &["loss is NaN"]);
    assert!(text(&out.stdout).contains("perplexity NaN"));
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn memory_that_is_not_there_is_named_before_anything_is_allocated() {
    let root = temp_dir("memory");
    let out_dir = root.join("run");
    let o = s(&out_dir);
    for (flag, value) in [
        ("--ctx", "1000000000"),
        ("--batch", "1000000000"),
        ("--batch", "100000000000000000"),
        ("--d-model", "4000000000"),
    ] {
        let start = Instant::now();
        let err = fails(
            &train_args(&[flag, value, "--heads", "1", "--out", o, "--backend", "cpu"]),
            &["memory"],
        );
        assert!(err.contains("MiB") || err.contains("iB"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{flag}: too slow"
        );
    }
    // The benchmarks that train allocate the same memory, and check it the same way.
    for (what, flag, value) in [
        ("throughput", "--batch", "1000000000"),
        ("throughput", "--ctx", "1000000000"),
        ("memory", "--batch", "100000000000000000"),
        ("memory", "--ctx", "1000000000"),
    ] {
        let mut args = vec![
            "bench",
            what,
            "--preset",
            "tiny",
            flag,
            value,
            "--backend",
            "cpu",
        ];
        if what == "memory" {
            args.push("--measure");
        }
        fails(&args, &["memory"]);
    }
    // The paper's model at a context and batch no machine here has memory
    // for: what it needs, what there is, what to change.
    fails(
        &[
            "train",
            "--preset",
            "paper",
            "--ctx",
            "1024",
            "--batch",
            "256",
            "--backend",
            "cpu",
            "--out",
            o,
        ],
        &[
            "this run needs",
            "MemAvailable",
            "weights 5638 MiB",
            "--recompute",
        ],
    );
    fails(
        &train_args(&["--batch", "10000000", "--backend", "cpu", "--out", o]),
        &["this run needs", "MemAvailable", "--recompute", "--batch"],
    );
    fails(
        &train_args(&["--layers", "5000", "--out", o]),
        &["--layers 5000", "4096"],
    );
    assert!(!root.join("run").exists(), "nothing is written");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn every_number_is_checked_wherever_it_comes_from() {
    let root = temp_dir("numbers");
    let out_dir = root.join("run");
    let o = s(&out_dir);
    for (extra, needle) in [
        (&["--lr", "nan"][..], "--lr"),
        (&["--lr=-1"], "--lr"),
        (&["--lr", "inf"], "--lr"),
        (&["--min-lr", "0.5"], "--min-lr"),
        (&["--min-lr", "nan"], "--min-lr"),
        (&["--keep-checkpoints", "0"], "--keep-checkpoints"),
        (&["--param-cost", "nan"], "--param-cost"),
        (&["--dropout", "nan"], "--dropout"),
        (&["--grad-accum", "0"], "--grad-accum"),
        (&["--steps", "5000000000"], "--steps"),
    ] {
        let mut args = vec!["--out", o];
        args.extend_from_slice(extra);
        fails(&train_args(&args), &[needle]);
    }
    for (toml, needle) in [
        ("[train]\nbeta1 = 1.5\n", "beta1"),
        ("[train]\nbeta2 = -0.1\n", "beta2"),
        ("[train]\neps = 0.0\n", "eps"),
        ("[train]\neps = nan\n", "eps"),
        ("[train]\nweight_decay = -0.01\n", "weight_decay"),
        ("[train]\nmin_lr = inf\n", "min_lr"),
        ("[train]\ngrad_clip = -1.0\n", "grad_clip"),
        ("[train]\nlog_every = 0\n", "log_every"),
        ("[data]\nsynthetic_tokens = 0\n", "synthetic_tokens"),
    ] {
        let path = root.join("bad.toml");
        fs::write(&path, toml).unwrap();
        fails(&train_args(&["--config", s(&path), "--out", o]), &[needle]);
    }
    assert!(!root.join("run").exists(), "nothing is written");
    // A run whose config.toml was edited by hand: resume, eval and sample
    // name the file and the field.
    let run = root.join("run");
    ok(&train_args(&["--steps", "2", "--out", o]));
    let path = run.join("config.toml");
    let config = fs::read_to_string(&path).unwrap();
    fs::write(&path, config.replace("beta2 = 0.95", "beta2 = 2.0")).unwrap();
    for args in [
        &["train", "--resume", o, "--steps", "3"][..],
        &["eval", "--run", o],
        &["sample", "--run", o],
    ] {
        fails(args, &["config.toml", "beta2"]);
    }
    fs::write(&path, config).unwrap();
    for t in ["--temperature=nan", "--temperature=-1", "--temperature=inf"] {
        fails(&["sample", "--run", o, t], &["--temperature"]);
    }
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_dataset_is_not_replaced_by_accident_and_runs_notice_when_it_was() {
    let root = temp_dir("dataset");
    let data = prepared(&root);
    let d = s(&data);
    let prepare = |tokenizer: &str, force: bool| {
        let mut a = vec![
            "prepare",
            "--dataset",
            "text",
            "--input",
            "data/samples/text/input.txt",
            "--tokenizer",
            tokenizer,
            "--out",
            d,
        ];
        if force {
            a.push("--force");
        }
        dyntie(&a)
    };
    let before = snapshot(&data);
    failed(
        "prepare again",
        &prepare("gpt2", false),
        &["already holds a dataset", "--force"],
    );
    assert!(snapshot(&data) == before);
    // A run on it, then eval from another working folder: the dataset's
    // place is recorded absolute.
    let run = root.join("run");
    let elsewhere = root.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    ok(&train_args(&[
        "--data",
        d,
        "--steps",
        "2",
        "--out",
        s(&run),
    ]));
    let eval = |args: &[&str]| {
        command()
            .args(args)
            .current_dir(&elsewhere)
            .output()
            .unwrap()
    };
    let out = eval(&["eval", "--run", s(&run)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The same corpus prepared again the same way is the same dataset.
    assert!(prepare("byte", true).status.success());
    let out = eval(&["eval", "--run", s(&run)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Another tokenizer: eval refuses, sample still decodes with the run's.
    assert!(prepare("gpt2", true).status.success());
    failed(
        "eval on a dataset prepared again",
        &eval(&["eval", "--run", s(&run)]),
        &["prepared again", "--data"],
    );
    fails(
        &["train", "--resume", s(&run), "--steps", "3"],
        &["prepared again"],
    );
    let other = root.join("bytes");
    ok(&[
        "prepare",
        "--dataset",
        "text",
        "--input",
        "data/samples/text/input.txt",
        "--tokenizer",
        "byte",
        "--out",
        s(&other),
    ]);
    ok(&["eval", "--run", s(&run), "--data", s(&other)]);
    fails(
        &["eval", "--run", s(&run), "--data", d],
        &["gpt2 tokenizer", "--tokenizer byte"],
    );
    ok(&[
        "sample",
        "--run",
        s(&run),
        "--prompt",
        "The ",
        "--max-new-tokens",
        "4",
    ]);
    // A moved dataset: a message that says so, not "run prepare"; a
    // resume takes its new place (only for the same tokens).
    let run2 = root.join("run2");
    ok(&train_args(&[
        "--data",
        s(&other),
        "--steps",
        "2",
        "--out",
        s(&run2),
    ]));
    let moved = root.join("moved");
    fs::rename(&other, &moved).unwrap();
    fs::rename(&data, root.join("gpt2-now")).unwrap();
    fails(&["eval", "--run", s(&run)], &["is not there", "--data"]);
    fails(&["eval", "--run", s(&run2)], &["is not there", "--data"]);
    fails(
        &[
            "train",
            "--resume",
            s(&run2),
            "--steps",
            "3",
            "--data",
            s(&root.join("gpt2-now")),
        ],
        &["not the dataset this run trained on"],
    );
    ok(&[
        "train",
        "--resume",
        s(&run2),
        "--steps",
        "3",
        "--data",
        s(&moved),
    ]);
    ok(&["eval", "--run", s(&run2)]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn sample_streams_and_lambada_takes_any_word() {
    let root = temp_dir("sample");
    let data = prepared(&root);
    let run = root.join("run");
    ok(&train_args(&[
        "--data",
        s(&data),
        "--steps",
        "2",
        "--ctx",
        "8",
        "--out",
        s(&run),
    ]));
    // The first bytes come while the sample is still being generated.
    let mut child = spawn(&[
        "sample",
        "--run",
        s(&run),
        "--prompt",
        "a",
        "--max-new-tokens",
        "100000000",
    ]);
    let mut first = [0u8; 8];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "sample printed only at its end"
    );
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(first[0], b'a');
    // Odd prompts and temperatures are no panic.
    for prompt in ["", " ", "\u{1F600}\u{7f}", &"long ".repeat(200)] {
        for t in ["0", "1e-30", "1e30"] {
            ok(&[
                "sample",
                "--run",
                s(&run),
                "--prompt",
                prompt,
                "--temperature",
                t,
                "--max-new-tokens",
                "3",
                "--top-k",
                "100000",
            ]);
        }
    }
    // A target word longer than the context (8 bytes), and a passage of one word.
    let lambada = root.join("lambada.jsonl");
    fs::write(
        &lambada,
        "{\"text\": \"the word is incomprehensibilities\"}\n{\"text\": \"  lonely\"}\n\
         {\"text\": \"a b\"}\n",
    )
    .unwrap();
    let out = ok(&[
        "eval",
        "--run",
        s(&run),
        "--task",
        "lambada",
        "--data",
        s(&lambada),
    ]);
    assert!(
        out.contains("lambada: 3 examples") && out.contains("2 of them could not be scored"),
        "{out}"
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_token_file_truncated_during_training_is_a_message_not_a_crash() {
    let root = temp_dir("truncate");
    let input = root.join("corpus.txt");
    let line = "the quick brown fox jumps over the lazy dog, again and again.\n";
    fs::write(&input, line.repeat(4000)).unwrap();
    let data = root.join("data");
    ok(&[
        "prepare",
        "--dataset",
        "text",
        "--input",
        s(&input),
        "--tokenizer",
        "byte",
        "--out",
        s(&data),
    ]);
    let run = root.join("run");
    let cfg = log_every_step(&root);
    let mut child = spawn(&train_args(&[
        "--data",
        s(&data),
        "--steps",
        "1000000",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
    ]));
    wait_for_steps(&run, 2, &mut child);
    // Rewritten in place by another program: cut to its header.
    fs::OpenOptions::new()
        .write(true)
        .open(data.join("train.bin"))
        .unwrap()
        .set_len(32)
        .unwrap();
    let out = finish(child, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SIGBUS") && err.contains("truncated") && err.contains("prepare"),
        "{err}"
    );
    fs::remove_dir_all(root).unwrap();
}
