//! A run launched as several processes (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, as torchrun sets them), here on the CPU over TCP on this
//! machine: it trains bit for bit like `--replicas N` in one process, a
//! resume continues it bit for bit, and a process that runs another
//! command or dies stops the others with an error instead of a hang.

#[path = "common/cli.rs"]
mod cli;

use cli::*;
use dyntie::metrics::read_jsonl;
use dyntie::train::checkpoint_dirs;
use serde_json::Value;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `dyntie args` as rank `rank` of `world` processes.
fn spawn_rank(args: &[&str], rank: usize, world: usize, port: u16) -> Child {
    command()
        .args(args)
        .env("WORLD_SIZE", world.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("DYNTIE_JOIN_TIMEOUT_S", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start dyntie")
}

/// Runs `args` as `world` processes; returns each rank's output.
fn launch(args: &[&str], world: usize) -> Vec<Output> {
    let port = free_port();
    let children: Vec<Child> = (0..world)
        .map(|r| spawn_rank(args, r, world, port))
        .collect();
    children
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(300)))
        .collect()
}

fn succeeded(outs: &[Output]) {
    for (rank, out) in outs.iter().enumerate() {
        assert!(
            out.status.success(),
            "rank {rank} failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// The training lines' losses (every 10 steps) and the tie decisions (all
/// of each record: action, reward, Q-values, table) of a run folder.
fn trajectory(run: &Path) -> (Vec<Value>, Vec<Value>) {
    let losses = read_jsonl(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].clone())
        .collect();
    let ties = read_jsonl(&run.join("ties.jsonl"))
        .unwrap()
        .into_iter()
        .collect();
    (losses, ties)
}

/// The bytes of the newest checkpoint's weights and moments.
fn final_weights(run: &Path) -> Vec<u8> {
    let newest = &checkpoint_dirs(run)[0];
    ["model.safetensors", "optimizer.safetensors"]
        .iter()
        .flat_map(|f| fs::read(newest.join(f)).unwrap())
        .collect()
}

fn run_args<'a>(out: &'a Path, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = train_args(&[
        "--backend",
        "cpu",
        "--steps",
        steps,
        "--tying",
        "dynamic",
        "--agent-k",
        "2",
        "--checkpoint-every",
        "10",
        // A resume that extends the run keeps the learning rate's course.
        "--schedule",
        "constant",
        "--out",
        s(out),
    ]);
    v.extend_from_slice(extra);
    v
}

#[test]
fn processes_train_bit_for_bit_like_replicas_in_one_process_and_resume_so() {
    let root = temp_dir("launch");
    let threads = root.join("threads");
    let mut args = run_args(&threads, "20", &[]);
    args.extend_from_slice(&["--replicas", "2"]);
    ok(&args);

    let procs = root.join("procs");
    let outs = launch(&run_args(&procs, "20", &[]), 2);
    succeeded(&outs);
    let rank0 = text(&outs[0].stdout);
    assert!(rank0.contains("2 data-parallel processes"), "{rank0}");
    assert!(text(&outs[1].stdout).contains("rank 1: done at step 20"));
    let (losses, ties) = trajectory(&procs);
    assert_eq!(losses.len(), 2);
    assert!(!ties.is_empty(), "the agent decided");
    assert_eq!((losses, ties), trajectory(&threads), "the same numbers");
    assert!(
        final_weights(&procs) == final_weights(&threads),
        "the same weights"
    );
    let line = read_jsonl(&procs.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .rfind(|r| r["kind"] == "train")
        .unwrap();
    assert_eq!(line["replicas"].as_u64(), Some(2));
    assert!(line["all_reduce_bytes_per_step"].as_u64().unwrap() > 0);
    // Only rank 0 wrote: one folder, the one every rank was given.
    assert_eq!(fs::read_dir(&root).unwrap().count(), 2);

    // Stopped at step 10 and resumed as two processes: rank 0 sends the
    // checkpoint's state to rank 1, and the run ends where the straight one did.
    let halves = root.join("halves");
    succeeded(&launch(&run_args(&halves, "10", &[]), 2));
    let resume = ["train", "--resume", s(&halves), "--steps", "20"];
    let outs = launch(&resume, 2);
    succeeded(&outs);
    assert!(text(&outs[1].stdout).contains("training from step 10"));
    assert!(
        final_weights(&halves) == final_weights(&procs),
        "resumed bit for bit"
    );
    let _ = fs::remove_dir_all(root);
}

#[test]
fn a_process_with_another_command_or_one_that_dies_stops_the_run_with_an_error() {
    let root = temp_dir("launch-bad");
    // Rank 1 runs another command (another --steps): both stop at once,
    // and rank 0 has touched no folder.
    let port = free_port();
    let out = root.join("run");
    let a = spawn_rank(&run_args(&out, "8", &[]), 0, 2, port);
    let b = spawn_rank(&run_args(&out, "9", &[]), 1, 2, port);
    let (a, b) = (
        finish(a, Duration::from_secs(120)),
        finish(b, Duration::from_secs(120)),
    );
    failed("rank 0", &a, &["rank 1", "same dyntie command"]);
    failed("rank 1", &b, &["refused rank 1"]);
    assert!(!out.exists(), "nothing is written for a refused run");

    // Rank 1 is killed while training: rank 0 reports it and exits.
    let port = free_port();
    let long = run_args(&out, "400", &[]);
    let leader = spawn_rank(&long, 0, 2, port);
    let mut follower = spawn_rank(&long, 1, 2, port);
    let start = Instant::now();
    while read_jsonl(&out.join("metrics.jsonl")).map_or(0, |l| l.len()) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no training lines"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    follower.kill().unwrap();
    let _ = follower.wait();
    let a = finish(leader, Duration::from_secs(120));
    failed("rank 0 after rank 1 died", &a, &["rank 1 left the group"]);
    let _ = fs::remove_dir_all(root);
}
