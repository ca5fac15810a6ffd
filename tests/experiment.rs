//! `dyntie experiment` on a tiny grid over the synthetic corpus: every run
//! is trained once, a second call skips them, an interrupted run resumes
//! from its checkpoint and ends exactly where an uninterrupted one does, a
//! folder with other settings is refused, and the summary has every run.

use anyhow::Result;
use dyntie::config::RunConfig;
use dyntie::cpu::CpuBackend;
use dyntie::experiment::grid::{Grid, PlannedRun};
use dyntie::experiment::results::{RunResult, Segment};
use dyntie::experiment::{run_grid, run_state, Options, RunState};
use dyntie::metrics::read_jsonl;
use dyntie::train::{checkpoint_dirs, run_dir, Trainer};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-exp-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A 3-block model, 8 steps with a checkpoint at step 4. The schedule is
/// constant, so a run made 4 steps long and then extended to 8 takes the
/// same learning rates as one planned for 8.
const MODEL: &str = r#"
[model]
n_layer = 3
n_embd = 32
n_head = 2
n_ctx = 16
dropout = 0.1
[train]
batch = 4
steps = 8
schedule = "constant"
log_every = 1
eval_every = 0
checkpoint_every = 4
[tying]
agent_k = 2
[data]
synthetic_tokens = 4000
"#;

fn grid(root: &Path, extra_flags: &str) -> Grid {
    fs::write(root.join("tiny.toml"), MODEL).unwrap();
    let text = format!(
        r#"
out = "runs"
seeds = [1, 2]
[[config]]
name = "tiny"
flags = "--preset tiny --backend cpu --config {} {extra_flags}"
[[variant]]
name = "none"
flags = "--tying none"
[[variant]]
name = "dynamic"
flags = "--tying dynamic"
"#,
        root.join("tiny.toml").display()
    );
    fs::write(root.join("grid.toml"), text).unwrap();
    Grid::load(&root.join("grid.toml")).unwrap()
}

fn quiet() -> Options {
    Options::default()
}

fn ids(v: &[(String, String)]) -> Vec<&str> {
    v.iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn a_grid_runs_once_then_skips_and_summarises() -> Result<()> {
    let root = temp_dir("once");
    let g = grid(&root, "");
    assert_eq!(g.runs.len(), 4);
    assert!(g
        .runs
        .iter()
        .all(|r| run_state(r).unwrap() == RunState::Fresh));

    let out = run_grid(&g, &quiet())?;
    assert_eq!(
        out.trained,
        [
            "tiny/none/seed1",
            "tiny/dynamic/seed1",
            "tiny/none/seed2",
            "tiny/dynamic/seed2"
        ]
    );
    assert!(out.failed.is_empty() && out.unfinished.is_empty());
    assert_eq!(out.results.len(), 4);
    for (run, r) in g.runs.iter().zip(&out.results) {
        assert_eq!(run_state(run)?, RunState::Finished);
        assert_eq!(r.id, run.id());
        assert_eq!(r.steps, 8);
        assert!(r.valid_ppl.is_finite() && r.valid_ppl > 1.0);
        // 3 blocks of width 32 with biases: 12 C^2 + 13 C.
        assert_eq!(r.block_params, 12 * 32 * 32 + 13 * 32);
        assert_eq!(
            r.trainable_block_params_end,
            r.trainable_blocks_end * r.block_params
        );
        assert!(r.wall_s.unwrap() > 0.0 && r.cpu_s.unwrap() > 0.0);
        assert_eq!(r.command, run.command());
        assert_eq!(r.commits.len(), 1);
        let back: RunResult =
            serde_json::from_str(&fs::read_to_string(run.dir.join("result.json"))?)?;
        assert_eq!(&back, r);
    }
    let none = &out.results[0];
    assert_eq!((none.unique_blocks_end, none.trainable_blocks_end), (3, 3));
    assert_eq!(none.unique_blocks_mean, 3.0);
    assert!(none.ties.is_none());
    // Decisions at steps 0, 2, 4, 6; the last is still open at the end.
    let ties = out.results[1].ties.as_ref().unwrap();
    assert_eq!(ties.decisions, 3);
    assert_eq!(ties.ties + ties.unties, ties.changes);

    let summary = fs::read_to_string(g.report.join("summary.md"))?;
    for id in &out.trained {
        assert!(summary.contains(&format!("| {id} |")), "{id} missing");
    }
    assert!(summary.contains("| tiny | dynamic | 1,2 |"));
    assert!(!summary.contains("test ppl"), "test perplexity hidden");
    assert_eq!(read_jsonl(&g.report.join("results.jsonl"))?.len(), 4);
    let scatter = fs::read_to_string(g.report.join("ppl-vs-params-tiny.svg"))?;
    assert_eq!(scatter.matches("class=\"run\"").count(), 4);
    assert_eq!(scatter.matches("class=\"mean\"").count(), 2);
    let heat = fs::read_to_string(g.report.join("ties-tiny-dynamic-seed1.svg"))?;
    assert!(heat.contains("tie-heatmap"));

    // A second call trains nothing and reports the same results.
    let again = run_grid(&g, &quiet())?;
    assert!(again.trained.is_empty());
    assert_eq!(again.results, out.results);
    let lines = read_jsonl(&g.runs[0].dir.join("provenance.jsonl"))?;
    assert_eq!(lines.len(), 1, "a skipped run is not trained again");

    // The same folders under other settings are refused before any training.
    let changed = grid(&root, "--lr 0.5");
    let err = format!("{:#}", run_grid(&changed, &quiet()).unwrap_err());
    assert!(
        err.contains("other settings") && err.contains("train.lr"),
        "{err}"
    );
    fs::remove_dir_all(root)?;
    Ok(())
}

#[test]
fn an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one() -> Result<()> {
    let (a, b) = (temp_dir("whole"), temp_dir("cut"));
    let (ga, gb) = (grid(&a, ""), grid(&b, ""));
    let whole = run_grid(
        &ga,
        &Options {
            max_runs: Some(2),
            ..quiet()
        },
    )?;
    assert_eq!(whole.trained, ["tiny/none/seed1", "tiny/dynamic/seed1"]);
    assert_eq!(
        ids(&whole.unfinished),
        ["tiny/none/seed2", "tiny/dynamic/seed2"]
    );

    // Both runs killed after their checkpoint at step 4; the static one's
    // folder as a dyntie from before run-folder markers left it.
    cut_at_step_4(&gb.runs[0])?;
    let old = &gb.runs[0].dir;
    let newest = checkpoint_dirs(old)[0].clone();
    fs::rename(&newest, old.join(run_dir::LEGACY_CHECKPOINT))?;
    fs::remove_dir_all(old.join(run_dir::CHECKPOINTS))?;
    fs::remove_file(old.join(run_dir::MARKER))?;
    assert_eq!(run_state(&gb.runs[0])?, RunState::Interrupted { step: 4 });
    let run = &gb.runs[1];
    cut_at_step_4(run)?;
    assert!(run.dir.join(run_dir::MARKER).is_file());
    Segment::append(
        &run.dir,
        &Segment {
            commit: "before".into(),
            binary: String::new(),
            command: run.command(),
            machine: String::new(),
            started: String::new(),
            ended: String::new(),
            from_step: 0,
            to_step: 4,
            wall_s: 100.0,
            cpu_s: Some(50.0),
        },
    )?;
    assert_eq!(run_state(run)?, RunState::Interrupted { step: 4 });

    let cut = run_grid(
        &gb,
        &Options {
            max_runs: Some(2),
            ..quiet()
        },
    )?;
    assert_eq!(cut.trained, ["tiny/none/seed1", "tiny/dynamic/seed1"]);
    let (x, y) = (&whole.results[0], &cut.results[0]);
    assert_eq!(x.valid_ppl.to_bits(), y.valid_ppl.to_bits());
    assert!(gb.runs[0].dir.join(run_dir::MARKER).is_file());
    let (x, y) = (&whole.results[1], &cut.results[1]);
    assert_eq!(x.valid_ppl.to_bits(), y.valid_ppl.to_bits());
    assert_eq!(x.test_ppl.to_bits(), y.test_ppl.to_bits());
    assert_eq!(x.ties, y.ties);
    let ties = |d: &Path| fs::read_to_string(d.join("ties.jsonl")).unwrap();
    assert_eq!(ties(&ga.runs[1].dir), ties(&run.dir));
    // Both segments count: the recorded first one and the resumed one.
    let segments = read_jsonl(&run.dir.join("provenance.jsonl"))?;
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[1]["from_step"], 4);
    assert!(checkpoint_dirs(&run.dir)[0].ends_with("checkpoints/step-00000008"));
    assert!(segments[1]["command"]
        .as_str()
        .unwrap()
        .contains("--resume"));
    assert_eq!(y.commits.len(), 2);
    assert_eq!(y.commits[0], "before");
    assert!(y.wall_s.unwrap() > 100.0 && y.cpu_s.unwrap() > 50.0);
    assert!(y.command.contains("--tying dynamic"));

    // Without the record of the first segment, the time is not complete.
    let lines = fs::read_to_string(run.dir.join("provenance.jsonl"))?;
    let second = lines.lines().nth(1).unwrap().to_string();
    fs::write(run.dir.join("provenance.jsonl"), second + "\n")?;
    let r = RunResult::read(run)?.unwrap();
    assert_eq!((r.wall_s, r.cpu_s), (None, None));
    for d in [a, b] {
        fs::remove_dir_all(d)?;
    }
    Ok(())
}

/// A run killed after its checkpoint at step 4: the same config trained for
/// 4 steps, then config.toml back at 8 steps and the final evaluations of
/// step 4 gone.
fn cut_at_step_4(run: &PlannedRun) -> Result<()> {
    let mut cfg = run.resolve()?;
    cfg.train.steps = 4;
    let mut t = Trainer::create(cfg, Arc::new(CpuBackend::new()), &run.dir, false)?;
    t.verbose = false;
    t.run()?;
    drop(t);
    let mut cfg = RunConfig::load(&run.dir.join("config.toml"))?;
    cfg.train.steps = 8;
    fs::write(run.dir.join("config.toml"), cfg.to_toml())?;
    let metrics = fs::read_to_string(run.dir.join("metrics.jsonl"))?;
    let kept: String = metrics
        .lines()
        .filter(|l| !l.contains("\"kind\":\"eval\""))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(run.dir.join("metrics.jsonl"), kept)?;
    assert_eq!(run_state(run)?, RunState::Interrupted { step: 4 });
    Ok(())
}
