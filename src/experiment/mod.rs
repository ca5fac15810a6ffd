//! `dyntie experiment GRID`: trains a grid of configurations x variants x
//! seeds one run after another, and summarises it.
//!
//! Each run is an ordinary run folder, `<out>/<config>/<variant>/seed<N>`,
//! trained in this process by the same code as `dyntie train` (the command a
//! user would type is recorded with it). Running the grid again skips the
//! finished runs and resumes an interrupted one from its checkpoint, so a
//! grid can be stopped at any time (`kill`, a reboot) and started again. A
//! folder whose config.toml differs from what the grid asks for, in a
//! setting that changes the result, is an error rather than a silent mix.
//!
//! Why a subcommand rather than a script: the runner resolves each run's
//! flags with the real command line and checks them all before the first
//! run starts, it reads the run folders with the same types that wrote
//! them, its figures reuse `report.rs`, and its resume and summary logic is
//! tested inside `cargo test` (`tests/experiment.rs`).
//!
//! After each run a line is appended to the folder's `provenance.jsonl`
//! (commit, binary, command, machine, dates, steps, wall and CPU time), and
//! the summary writes `result.json` into every finished folder plus
//! `summary.md`, `results.jsonl` and the figures into the report folder.

pub mod grid;
pub mod results;
pub mod summary;

use crate::commands::select_backend;
use crate::config::RunConfig;
use crate::metrics::utc_timestamp;
use crate::train::{checkpoint_dirs, Trainer};
use anyhow::{bail, Context, Result};
use grid::{config_differences, Grid, PlannedRun};
use results::{
    build_commit, finished_at, machine_description, process_cpu_seconds, RunResult, Segment,
};
use std::path::PathBuf;
use std::time::Instant;

/// Where a planned run stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// The final test evaluation is in metrics.jsonl.
    Finished,
    /// A checkpoint at this step: the run resumes from it.
    Interrupted { step: u64 },
    /// Nothing usable yet (no folder, or no checkpoint): trained from scratch.
    Fresh,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunState::Finished => write!(f, "finished"),
            RunState::Interrupted { step } => write!(f, "interrupted at step {step}"),
            RunState::Fresh => write!(f, "not started"),
        }
    }
}

/// The state of `run`'s folder; an error when the folder holds a run with
/// other settings than the grid's.
pub fn run_state(run: &PlannedRun) -> Result<RunState> {
    let cfg_path = run.dir.join("config.toml");
    if !cfg_path.exists() {
        return Ok(RunState::Fresh);
    }
    let recorded = RunConfig::load(&cfg_path)?;
    let planned = run.resolve()?;
    let diffs = config_differences(&recorded, &planned);
    if !diffs.is_empty() {
        bail!(
            "{}: {} holds a run with other settings than the grid's ({}): give the variant another name, or move the folder away",
            run.id(),
            run.dir.display(),
            diffs.join("; ")
        );
    }
    if finished_at(&run.dir)? == Some(recorded.train.steps as u64) {
        return Ok(RunState::Finished);
    }
    // The newest checkpoint whose state is readable is where resume starts
    // (`checkpoints/step-N/`, or the single `checkpoint/` of older runs).
    let step = checkpoint_dirs(&run.dir).into_iter().find_map(|ckpt| {
        let text = std::fs::read_to_string(ckpt.join("state.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
    });
    Ok(match step {
        Some(step) => RunState::Interrupted { step },
        None => RunState::Fresh,
    })
}

/// What [`run_grid`] should do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only print the plan.
    pub dry_run: bool,
    /// Train nothing; summarise what is there.
    pub summary_only: bool,
    /// Train at most this many runs, then summarise and stop.
    pub max_runs: Option<usize>,
    /// Progress lines from the trainer.
    pub verbose: bool,
}

/// What [`run_grid`] did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Runs trained (or resumed) to the end by this call.
    pub trained: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Finished runs, in grid order.
    pub results: Vec<RunResult>,
    /// Runs not finished when the call ended: (id, state).
    pub unfinished: Vec<(String, String)>,
    /// The report files written.
    pub written: Vec<PathBuf>,
}

/// Runs the grid's unfinished runs in order (see [`Options`]), then writes
/// the summary. A run that fails is reported and the next one starts.
pub fn run_grid(grid: &Grid, opts: &Options) -> Result<Outcome> {
    // Check every folder before training anything.
    let states: Vec<RunState> = grid.runs.iter().map(run_state).collect::<Result<_>>()?;
    let mut out = Outcome::default();
    if opts.dry_run {
        for (run, state) in grid.runs.iter().zip(&states) {
            println!("{:<40} {state}", run.id());
            if *state != RunState::Finished {
                println!("    {}", run.command());
            }
        }
    }
    let todo: Vec<(&PlannedRun, &RunState)> = grid
        .runs
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s != RunState::Finished)
        .collect();
    if !opts.dry_run && !opts.summary_only {
        let limit = opts.max_runs.unwrap_or(usize::MAX);
        for (k, (run, state)) in todo.iter().take(limit).enumerate() {
            println!(
                "[{}/{}] {} ({state}): {}",
                k + 1,
                todo.len().min(limit),
                run.id(),
                run.command()
            );
            match train_one(run, state, opts.verbose) {
                Ok(()) => out.trained.push(run.id()),
                Err(e) => {
                    println!("FAILED {}: {e:#}", run.id());
                    out.failed.push((run.id(), format!("{e:#}")));
                }
            }
        }
    }
    for run in &grid.runs {
        match RunResult::read(run)? {
            Some(r) => {
                let path = run.dir.join("result.json");
                std::fs::write(&path, serde_json::to_string_pretty(&r)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
                out.results.push(r);
            }
            None => out.unfinished.push((run.id(), run_state(run)?.to_string())),
        }
    }
    if !opts.dry_run {
        out.written = summary::write_report(grid, &out.results, &out.unfinished)?;
    }
    Ok(out)
}

/// Trains one run to its end in this process and records the segment.
fn train_one(run: &PlannedRun, state: &RunState, verbose: bool) -> Result<()> {
    let cfg = run.resolve()?;
    let selected = select_backend(cfg.backend)?;
    if verbose {
        println!("{}", selected.why);
    }
    let backend = selected.backend;
    let started = utc_timestamp();
    let (t0, cpu0) = (Instant::now(), process_cpu_seconds());
    let (mut trainer, command) = match state {
        RunState::Interrupted { .. } => (
            Trainer::resume(&run.dir, backend, None)?,
            format!("dyntie train --resume {}", run.dir.display()),
        ),
        _ => {
            // A fresh start replaces whatever an aborted attempt left.
            for stale in ["provenance.jsonl", "result.json"] {
                let _ = std::fs::remove_file(run.dir.join(stale));
            }
            (
                Trainer::create(cfg, backend, &run.dir, true)?,
                run.command(),
            )
        }
    };
    trainer.verbose = verbose;
    let from_step = trainer.step();
    let s = trainer.run()?;
    let cpu_s = process_cpu_seconds()
        .zip(cpu0)
        .map(|(now, before)| now - before);
    Segment::append(
        &run.dir,
        &Segment {
            commit: build_commit(),
            binary: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            command,
            machine: machine_description(),
            started,
            ended: utc_timestamp(),
            from_step,
            to_step: s.steps,
            wall_s: t0.elapsed().as_secs_f64(),
            cpu_s,
        },
    )?;
    println!(
        "{}: valid ppl {:.3}, {} unique blocks, {:.1} min",
        run.id(),
        s.valid_ppl,
        s.unique_blocks,
        t0.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
