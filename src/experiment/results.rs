//! One run's results, read back from its folder: the final evaluations and
//! block counts from `metrics.jsonl`, the agent's decisions from
//! `ties.jsonl`, and where, when and how long from `provenance.jsonl` (one
//! line per process that trained the run; a resumed run has several).

use super::grid::PlannedRun;
use crate::config::RunConfig;
use crate::metrics::read_jsonl;
use crate::model::BlockLayout;
use crate::tying::agent::TieRecord;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One process's share of a run (a line of `provenance.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The commit the binary was built from (`DYNTIE_COMMIT` at build time).
    pub commit: String,
    pub binary: String,
    pub command: String,
    pub machine: String,
    /// UTC, `YYYYmmdd-HHMMSS`.
    pub started: String,
    pub ended: String,
    pub from_step: u64,
    pub to_step: u64,
    pub wall_s: f64,
    /// User + system CPU time of the process over the segment (all threads).
    pub cpu_s: Option<f64>,
}

impl Segment {
    pub fn append(dir: &Path, seg: &Segment) -> Result<()> {
        let path = dir.join("provenance.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(f, "{}", serde_json::to_string(seg)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What the agent did over a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TieStats {
    /// Decisions closed (one line of ties.jsonl each).
    pub decisions: usize,
    /// Decisions that changed the table: ties and unties.
    pub changes: usize,
    pub ties: usize,
    pub unties: usize,
    /// Decisions drawn at random (epsilon).
    pub explored: usize,
    /// The step of the last decision that changed the table.
    pub last_change_step: Option<u64>,
    pub mean_reward: f64,
}

/// The results file of one run (`result.json` in its folder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub id: String,
    pub config: String,
    pub variant: String,
    pub seed: u64,
    pub dir: String,
    pub policy: String,
    pub steps: u64,
    pub tokens: u64,
    pub valid_ppl: f64,
    pub test_ppl: f64,
    pub n_layer: usize,
    pub unique_blocks_end: usize,
    pub trainable_blocks_end: usize,
    /// Means over the logged training steps.
    pub unique_blocks_mean: f64,
    pub trainable_blocks_mean: f64,
    /// Parameters of one block.
    pub block_params: usize,
    pub trainable_block_params_end: usize,
    /// Every trainable parameter at the end (blocks, embeddings, final LayerNorm).
    pub trainable_params_end: u64,
    /// Seconds inside training steps (the run's own clock, kept across resumes).
    pub train_s: f64,
    /// Wall and CPU time summed over the recorded segments; `None` when a
    /// segment is missing (a process killed before it could record itself)
    /// or did not measure it.
    pub wall_s: Option<f64>,
    pub cpu_s: Option<f64>,
    /// The commits of the segments in order (several when resumed).
    pub commits: Vec<String>,
    pub command: String,
    pub machine: String,
    /// When the run ended (UTC).
    pub date: String,
    pub ties: Option<TieStats>,
}

/// The step at which a run folder holds its final test evaluation, if any.
pub fn finished_at(dir: &Path) -> Result<Option<u64>> {
    let metrics = read_jsonl(&dir.join("metrics.jsonl"))?;
    Ok(metrics
        .iter()
        .filter(|r| r["kind"] == "eval" && r["split"] == "test")
        .filter_map(|r| r["step"].as_u64())
        .next_back())
}

impl RunResult {
    /// The results of a finished run; `None` while it is not finished.
    pub fn read(run: &PlannedRun) -> Result<Option<RunResult>> {
        let dir = &run.dir;
        let cfg_path = dir.join("config.toml");
        if !cfg_path.exists() {
            return Ok(None);
        }
        let cfg = RunConfig::load(&cfg_path)?;
        let steps = cfg.train.steps as u64;
        if finished_at(dir)? != Some(steps) {
            return Ok(None);
        }
        let metrics = read_jsonl(&dir.join("metrics.jsonl"))?;
        let eval = |split: &str| {
            metrics
                .iter()
                .rfind(|r| r["kind"] == "eval" && r["split"] == split && r["step"] == steps)
                .and_then(|r| r["ppl"].as_f64())
                .with_context(|| format!("{}: no final {split} evaluation", dir.display()))
        };
        let train: Vec<&serde_json::Value> =
            metrics.iter().filter(|r| r["kind"] == "train").collect();
        let last = train
            .last()
            .with_context(|| format!("{}: metrics.jsonl has no training lines", dir.display()))?;
        let int = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or(0);
        let mean =
            |k: &str| train.iter().map(|r| int(r, k) as f64).sum::<f64>() / train.len() as f64;
        let m = &cfg.model;
        let block_params = BlockLayout::new(m).len();
        let trainable_blocks_end = int(last, "trainable_blocks") as usize;
        let segments: Vec<Segment> = read_jsonl(&dir.join("provenance.jsonl"))?
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}/provenance.jsonl is corrupt", dir.display()))?;
        // Complete when the recorded segments chain from step 0 to the end.
        let chained = !segments.is_empty()
            && segments[0].from_step == 0
            && segments.windows(2).all(|w| w[0].to_step == w[1].from_step)
            && segments.last().is_some_and(|s| s.to_step == steps);
        let wall_s = chained.then(|| segments.iter().map(|s| s.wall_s).sum());
        let cpu_s = if chained {
            segments.iter().map(|s| s.cpu_s).sum()
        } else {
            None
        };
        Ok(Some(RunResult {
            id: run.id(),
            config: run.config.clone(),
            variant: run.variant.clone(),
            seed: run.seed,
            dir: dir.display().to_string(),
            policy: cfg.tying.policy.to_string(),
            steps,
            tokens: int(last, "tokens"),
            valid_ppl: eval("valid")?,
            test_ppl: eval("test")?,
            n_layer: m.n_layer,
            unique_blocks_end: int(last, "unique_blocks") as usize,
            trainable_blocks_end,
            unique_blocks_mean: mean("unique_blocks"),
            trainable_blocks_mean: mean("trainable_blocks"),
            block_params,
            trainable_block_params_end: trainable_blocks_end * block_params,
            trainable_params_end: int(last, "trainable_params"),
            train_s: last["elapsed_s"].as_f64().unwrap_or(0.0),
            wall_s,
            cpu_s,
            commits: segments.iter().map(|s| s.commit.clone()).collect(),
            command: segments
                .first()
                .map_or_else(|| run.command(), |s| s.command.clone()),
            machine: segments.last().map_or(String::new(), |s| s.machine.clone()),
            date: segments.last().map_or(String::new(), |s| s.ended.clone()),
            ties: tie_stats(dir, &cfg)?,
        }))
    }
}

/// Counts over `ties.jsonl` (`None` for a static policy).
fn tie_stats(dir: &Path, cfg: &RunConfig) -> Result<Option<TieStats>> {
    let n = cfg.model.n_layer;
    let policy = &cfg.tying.policy;
    if !policy.is_dynamic() {
        return Ok(None);
    }
    let mut state = crate::train::initial_table(cfg, policy, n)?
        .state()
        .to_vec();
    let mut s = TieStats {
        decisions: 0,
        changes: 0,
        ties: 0,
        unties: 0,
        explored: 0,
        last_change_step: None,
        mean_reward: 0.0,
    };
    for line in read_jsonl(&dir.join("ties.jsonl"))? {
        let r: TieRecord = serde_json::from_value(line)
            .with_context(|| format!("{}/ties.jsonl is corrupt", dir.display()))?;
        s.decisions += 1;
        s.explored += r.explored as usize;
        s.mean_reward += r.reward;
        if r.state_after != state {
            s.changes += 1;
            if r.action < r.layer {
                s.ties += 1;
            } else {
                s.unties += 1;
            }
            s.last_change_step = Some(r.step);
            state = r.state_after;
        }
    }
    s.mean_reward /= s.decisions.max(1) as f64;
    Ok(Some(s))
}

/// User + system CPU seconds of this process so far (every thread).
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        /// `struct rusage` on 64-bit Linux: two timevals, then 14 longs.
        #[repr(C)]
        struct Rusage {
            utime: [i64; 2],
            stime: [i64; 2],
            rest: [i64; 14],
        }
        extern "C" {
            fn getrusage(who: i32, usage: *mut Rusage) -> i32;
        }
        const RUSAGE_SELF: i32 = 0;
        let mut u = Rusage {
            utime: [0; 2],
            stime: [0; 2],
            rest: [0; 14],
        };
        // SAFETY: getrusage(2) writes one struct rusage, whose layout on
        // 64-bit Linux is the one declared above.
        let rc = unsafe { getrusage(RUSAGE_SELF, &mut u) };
        if rc != 0 {
            return None;
        }
        let secs = |t: [i64; 2]| t[0] as f64 + t[1] as f64 * 1e-6;
        Some(secs(u.utime) + secs(u.stime))
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        None
    }
}

/// The processor and how many threads the run may use, for the tables.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown processor");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    format!("{model}, {cores} CPUs, RAYON_NUM_THREADS={threads}")
}

/// The commit this binary was built from: `DYNTIE_COMMIT` at build time
/// (`DYNTIE_COMMIT=$(git rev-parse --short HEAD) cargo build --release`).
pub fn build_commit() -> String {
    option_env!("DYNTIE_COMMIT")
        .unwrap_or("unrecorded (built without DYNTIE_COMMIT)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_seconds().unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until 20 ms of CPU time have been counted (or give up after
        // 20 s of wall time on a machine too busy to schedule this thread).
        while process_cpu_seconds().unwrap() - before < 0.02 && t.elapsed().as_secs() < 20 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let after = process_cpu_seconds().unwrap();
        assert!(after - before >= 0.02, "{before} -> {after}");
        assert!(machine_description().contains("CPUs"));
    }
}
