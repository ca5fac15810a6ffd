//! The trainer end to end through the library API: resume is bit for bit,
//! an interrupted checkpoint write falls back to the last complete one, and
//! a dynamic run under a parameter cost ties blocks and logs every decision.

use anyhow::Result;
use dyntie::checkpoint;
use dyntie::config::{BackendKind, RunConfig, Schedule};
use dyntie::cpu::CpuBackend;
use dyntie::metrics::read_jsonl;
use dyntie::train::{checkpoint_dirs, Trainer};
use dyntie::tying::reward::RewardBaseline;
use dyntie::tying::settings::{AgentMoves, EpsilonSchedule, RewardSpan};
use dyntie::tying::table::InitTies;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-train-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

/// A model small enough for a few dozen steps in well under a second.
/// The schedule is constant so that a run cut at step 10 and extended to 20
/// follows the same learning rates as one planned for 20 steps.
fn config(policy: &str, steps: usize) -> RunConfig {
    let mut c = RunConfig::preset("tiny").unwrap();
    c.backend = BackendKind::Cpu;
    c.model.n_layer = 3;
    c.model.n_embd = 32;
    c.model.n_head = 2;
    c.model.n_ctx = 16;
    c.model.dropout = 0.1;
    c.train.batch = 4;
    c.train.steps = steps;
    c.train.schedule = Schedule::Constant;
    c.train.log_every = 1;
    c.train.eval_every = 0;
    c.train.checkpoint_every = 10;
    c.tying.policy = policy.parse().unwrap();
    c.tying.agent_k = 3;
    c.data.synthetic_tokens = 4000;
    c
}

fn create(cfg: RunConfig, dir: &Path) -> Result<Trainer> {
    let mut t = Trainer::create(cfg, Arc::new(CpuBackend::new()), dir, false)?;
    t.verbose = false;
    Ok(t)
}

fn resume(dir: &Path, steps: usize) -> Result<Trainer> {
    let mut t = Trainer::resume(dir, Arc::new(CpuBackend::new()), Some(steps))?;
    t.verbose = false;
    Ok(t)
}

/// The train lines of metrics.jsonl without the wall-clock fields and the
/// allocator's high-water mark, which belong to the process, not the run.
fn train_lines(dir: &Path) -> Vec<Value> {
    read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            for k in ["tokens_per_s", "elapsed_s", "peak_bytes", "graph"] {
                assert!(o.remove(k).is_some(), "train line without {k}");
            }
            r
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    let (la, lb) = (train_lines(a), train_lines(b));
    assert_eq!(la.len(), 20, "one train line per step");
    assert_eq!(lb.len(), 20, "one train line per step");
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x, y, "train metrics differ at step {}", x["step"]);
    }
    let ties = |d: &Path| fs::read_to_string(d.join("ties.jsonl")).unwrap();
    assert_eq!(ties(a), ties(b), "ties.jsonl differs");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let ta = checkpoint::load_safetensors(&newest(a).join(file)).unwrap();
        let tb = checkpoint::load_safetensors(&newest(b).join(file)).unwrap();
        assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
        for (name, (shape, data)) in &ta {
            let (shape_b, data_b) = &tb[name];
            assert_eq!(shape, shape_b, "{file}: {name}");
            let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(data) == bits(data_b), "{file}: {name} differs");
        }
    }
}

/// The newest checkpoint folder of a run.
fn newest(run: &Path) -> PathBuf {
    checkpoint_dirs(run)
        .into_iter()
        .next()
        .expect("the run has a checkpoint")
}

/// 20 steps in one go, and 10 + resume + 10, must agree bit for bit.
/// `interrupt` edits the run folder between the two halves.
fn check_resume(policy: &str, tag: &str, interrupt: impl Fn(&Path)) -> Result<()> {
    let (a, b) = (temp_dir(&format!("{tag}-a")), temp_dir(&format!("{tag}-b")));
    create(config(policy, 20), &a)?.run()?;
    create(config(policy, 10), &b)?.run()?;
    interrupt(&b);
    let mut t = resume(&b, 20)?;
    assert_eq!(t.step(), 10);
    t.run()?;
    assert_same_run(&a, &b);
    if policy == "dynamic" {
        let ties = read_jsonl(&a.join("ties.jsonl"))?;
        let steps: Vec<u64> = ties.iter().map(|r| r["step"].as_u64().unwrap()).collect();
        // Decisions at 0, 3, .., 18 are closed at 3, 6, .., 18: the one made
        // at step 9 is closed after the resume point.
        assert_eq!(steps, vec![3, 6, 9, 12, 15, 18]);
    }
    for d in [a, b] {
        fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn resume_is_bit_for_bit_with_dynamic_tying_and_dropout() -> Result<()> {
    check_resume("dynamic", "dyn", |_| {})
}

#[test]
fn resume_is_bit_for_bit_with_a_static_pattern() -> Result<()> {
    check_resume("pattern:0,1,1", "pat", |_| {})
}

/// A switch of structure exactly at the resume point (step 10) happens once,
/// after the resume, as in the uninterrupted run.
#[test]
fn resume_is_bit_for_bit_across_a_switch_of_structure() -> Result<()> {
    check_resume("switch:10:none>all", "switch", |_| {})?;
    let dir = temp_dir("switch-blocks");
    create(config("switch:10:none>all", 20), &dir)?.run()?;
    for r in train_lines(&dir) {
        let want = if r["step"].as_u64().unwrap() <= 10 {
            3
        } else {
            1
        };
        assert_eq!(r["unique_blocks"].as_u64(), Some(want), "{r}");
    }
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// A kill between the two renames that replace a checkpoint of the same
/// step leaves only `step-N.old/`, maybe with a half-written `step-N.tmp/`,
/// and lines logged after the checkpoint, the last one torn: resume uses
/// the old folder and drops the lines.
#[test]
fn resume_after_an_interrupted_checkpoint_write() -> Result<()> {
    check_resume("dynamic", "kill", |dir| {
        let step = newest(dir);
        let old = step.with_file_name("step-00000010.old");
        fs::rename(&step, &old).unwrap();
        let tmp = step.with_file_name("step-00000010.tmp");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("model.safetensors"), b"\x40\x00\x00").unwrap();
        fs::write(tmp.join("state.json"), b"{\"format_version\": 1, \"st").unwrap();
        let mut m = fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        m.push_str("{\"kind\":\"train\",\"step\":11,\"loss\":1.0}\n");
        fs::write(dir.join("metrics.jsonl"), m).unwrap();
        let mut t = fs::read_to_string(dir.join("ties.jsonl")).unwrap();
        t.push_str("{\"step\":12,\"layer\":1}\n{\"step\":15,\"lay");
        fs::write(dir.join("ties.jsonl"), t).unwrap();
    })
}

/// A complete checkpoint next to a partial `.tmp/` folder is used as is.
#[test]
fn a_partial_tmp_folder_next_to_a_checkpoint_is_ignored() -> Result<()> {
    check_resume("pattern:0,0,1", "tmp", |dir| {
        let tmp = dir.join("checkpoints/step-00000011.tmp");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("state.json"), b"garbage").unwrap();
    })
}

/// With one block the dynamic policy has nothing to decide: the run trains
/// like a static one and resumes like one.
#[test]
fn a_one_block_dynamic_run_resumes() -> Result<()> {
    let dir = temp_dir("oneblock");
    let mut cfg = config("dynamic", 2);
    cfg.model.n_layer = 1;
    create(cfg, &dir)?.run()?;
    let mut t = resume(&dir, 4)?;
    assert_eq!(t.step(), 2);
    t.run()?;
    assert_eq!(train_lines(&dir).len(), 4);
    assert_eq!(fs::read_to_string(dir.join("ties.jsonl"))?, "");
    fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn only_a_partial_tmp_folder_is_a_clear_error() -> Result<()> {
    let dir = temp_dir("onlytmp");
    create(config("none", 2), &dir)?.run()?;
    let step = newest(&dir);
    fs::rename(&step, step.with_file_name("step-00000002.tmp"))?;
    let err = format!("{:#}", resume(&dir, 4).err().expect("resume must fail"));
    assert!(err.contains("no checkpoint in"), "{err}");
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// A dynamic run whose reward charges for every trainable block ends with
/// fewer unique blocks than layers, and leaves complete logs and a report.
/// In 8 episodes epsilon only falls to 0.95^8 = 0.66, so most of these ties
/// come from exploration; that the agent learns the cost shows only over
/// longer runs (the share of greedy "independent" choices drops).
#[test]
fn dynamic_run_with_param_cost_ties_blocks_and_logs_everything() -> Result<()> {
    let dir = temp_dir("e2e");
    let mut cfg = config("dynamic", 48);
    cfg.model.n_layer = 4;
    cfg.tying.param_cost = 1.0;
    cfg.tying.agent_k = 2;
    cfg.train.eval_every = 16;
    cfg.train.eval_max_windows = 4;
    cfg.train.checkpoint_every = 0;
    let mut t = create(cfg, &dir)?;
    let s = t.run()?;
    assert!(
        s.unique_blocks < s.n_layer,
        "{} unique blocks of {} after a run with --param-cost 1",
        s.unique_blocks,
        s.n_layer
    );
    assert!(s.counted.trainable_params < s.conventional.trainable_params);

    // One line per closed decision: 24 decisions at steps 0, 2, .., 46, of
    // which the last is still open when the run ends.
    let ties = read_jsonl(&dir.join("ties.jsonl"))?;
    assert_eq!(ties.len(), 23);
    for (n, r) in ties.iter().enumerate() {
        for k in [
            "step",
            "episode",
            "layer",
            "action",
            "explored",
            "epsilon",
            "reward",
            "q_values",
            "state_after",
            "slots_after",
        ] {
            assert!(!r[k].is_null(), "ties.jsonl line {}: no {k}", n + 1);
        }
        assert_eq!(r["step"].as_u64(), Some(2 * (n as u64 + 1)));
        assert_eq!(r["layer"].as_u64(), Some(n as u64 % 3 + 1));
        assert_eq!(r["episode"].as_u64(), Some(n as u64 / 3));
        assert_eq!(r["state_after"].as_array().unwrap().len(), 4);
    }

    let metrics = read_jsonl(&dir.join("metrics.jsonl"))?;
    let train: Vec<_> = metrics.iter().filter(|r| r["kind"] == "train").collect();
    assert_eq!(train.len(), 48);
    for r in &train {
        for k in ["loss", "unique_blocks", "trainable_params", "counted_bytes"] {
            assert!(r[k].is_number(), "train line without {k}: {r}");
        }
    }
    let last = train.last().unwrap();
    assert_eq!(last["unique_blocks"].as_u64(), Some(s.unique_blocks as u64));
    assert_eq!(
        last["trainable_params"].as_u64(),
        Some(s.counted.trainable_params)
    );
    let evals: Vec<(&str, u64)> = metrics
        .iter()
        .filter(|r| r["kind"] == "eval")
        .map(|r| (r["split"].as_str().unwrap(), r["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        evals,
        vec![("valid", 16), ("valid", 32), ("valid", 48), ("test", 48)]
    );

    let svg = fs::read_to_string(dir.join("report.svg"))?;
    assert!(svg.trim_start().starts_with("<svg") || svg.starts_with("<?xml"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_balanced_xml(&svg);
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// `--decide-until 0.5` with `--epsilon-schedule linear:0.5`: the agent
/// decides during the first half of the steps only, with epsilon falling to
/// its floor over the first half of those decisions, and the table stays
/// fixed afterwards.
#[test]
fn the_table_is_fixed_after_the_decision_phase() -> Result<()> {
    let dir = temp_dir("phase");
    let mut cfg = config("dynamic", 40);
    cfg.model.n_layer = 4;
    cfg.tying.agent_k = 2;
    cfg.tying.param_cost = 1.0;
    cfg.agent.decide_until = 0.5;
    cfg.agent.epsilon_schedule = EpsilonSchedule::Linear { fraction: 0.5 };
    cfg.train.checkpoint_every = 0;
    create(cfg, &dir)?.run()?;
    // Decisions at steps 0, 2, .., 18; the last one is closed at step 20.
    let ties = read_jsonl(&dir.join("ties.jsonl"))?;
    let steps: Vec<u64> = ties.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=10).map(|k| 2 * k).collect::<Vec<u64>>());
    let eps: Vec<f64> = ties
        .iter()
        .map(|r| r["epsilon"].as_f64().unwrap())
        .collect();
    assert_eq!(eps[0], 1.0);
    assert!((eps[1] - (1.0 - 0.99 / 5.0)).abs() < 1e-12, "{eps:?}");
    assert!(eps[5..].iter().all(|&e| e == 0.01), "{eps:?}");
    let last_table = ties.last().unwrap()["slots_after"].clone();
    let unique = |slots: &Value| {
        let mut s: Vec<u64> = slots
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        s.sort_unstable();
        s.dedup();
        s.len() as u64
    };
    for r in train_lines(&dir)
        .iter()
        .filter(|r| r["step"].as_u64().unwrap() >= 20)
    {
        assert_eq!(r["unique_blocks"].as_u64(), Some(unique(&last_table)));
    }
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// `--reward-baseline 3`: each decision's record carries the advantage the
/// agent learned from, the reward minus the baseline of the rewards before.
#[test]
fn the_agent_learns_from_the_reward_minus_a_moving_baseline() -> Result<()> {
    let dir = temp_dir("baseline");
    let mut cfg = config("dynamic", 24);
    cfg.tying.agent_k = 2;
    cfg.agent.reward_baseline = 3;
    cfg.train.checkpoint_every = 0;
    create(cfg, &dir)?.run()?;
    let ties = read_jsonl(&dir.join("ties.jsonl"))?;
    assert_eq!(ties.len(), 11);
    let mut replay = RewardBaseline::default();
    for r in &ties {
        let want = replay.advantage(r["reward"].as_f64().unwrap(), 3);
        assert_eq!(r["advantage"].as_f64(), Some(want));
    }
    assert_eq!(ties[0]["advantage"].as_f64(), Some(0.0));
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// `--reward immediate`: the reward compares the reward batch just before
/// and just after the action, so a decision that leaves every block's
/// weights as they were (keep, re-tie to the same slot, or an untie, which
/// copies) gets exactly 0, and a tie that moves a block to another slot does not.
#[test]
fn the_immediate_reward_sees_only_the_action() -> Result<()> {
    let dir = temp_dir("immediate");
    let mut cfg = config("dynamic", 40);
    cfg.tying.agent_k = 2;
    cfg.agent.reward = RewardSpan::Immediate;
    cfg.train.checkpoint_every = 0;
    create(cfg, &dir)?.run()?;
    let ties = read_jsonl(&dir.join("ties.jsonl"))?;
    let (mut same, mut changed) = (0, 0);
    let mut slots = Value::from(vec![0, 1, 2]);
    for r in &ties {
        let reward = r["reward"].as_f64().unwrap();
        let untie_or_keep = r["action"] == r["layer"];
        if untie_or_keep || r["slots_after"] == slots {
            assert_eq!(reward, 0.0, "{r}");
            same += 1;
        } else {
            assert_ne!(reward, 0.0, "{r}");
            changed += 1;
        }
        slots = r["slots_after"].clone();
    }
    assert!(same > 0 && changed > 0, "{same} unchanged, {changed} moved");
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// `--param-limit 2` on 4 blocks: the first episode ties blocks until 2
/// are trainable, and no decision ever takes the count above 2 again.
#[test]
fn a_parameter_limit_is_never_exceeded_after_the_first_episode() -> Result<()> {
    let dir = temp_dir("limit");
    let mut cfg = config("dynamic", 40);
    cfg.model.n_layer = 4;
    cfg.tying.agent_k = 2;
    cfg.agent.param_limit = 2;
    cfg.train.checkpoint_every = 0;
    create(cfg, &dir)?.run()?;
    let ties = read_jsonl(&dir.join("ties.jsonl"))?;
    let trainable = |r: &Value| {
        let mut s: Vec<u64> = r["slots_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    let counts: Vec<usize> = ties.iter().map(trainable).collect();
    assert!(counts[2] <= 2, "{counts:?}");
    assert!(counts[2..].iter().all(|&c| c <= 2), "{counts:?}");
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// `--agent-moves grow` from one block (`--init-ties zero`): a decision
/// only ever makes a block independent, never moves it onto other weights,
/// so the number of unique blocks never falls; with `--param-limit 3` it
/// stops at 3.
#[test]
fn a_growing_agent_only_unties() -> Result<()> {
    let dir = temp_dir("grow");
    let mut cfg = config("dynamic", 60);
    cfg.model.n_layer = 5;
    cfg.tying.agent_k = 2;
    cfg.tying.init_ties = InitTies::Zero;
    cfg.agent.moves = AgentMoves::Grow;
    cfg.agent.param_limit = 3;
    cfg.train.checkpoint_every = 0;
    create(cfg, &dir)?.run()?;
    let ties = read_jsonl(&dir.join("ties.jsonl"))?;
    let state = |r: &Value| -> Vec<u64> {
        r["state_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let unique = |s: &[u64]| {
        s.iter()
            .enumerate()
            .filter(|&(i, &j)| i as u64 == j)
            .count()
    };
    let mut before = vec![0u64; 5];
    let mut unties = 0;
    for r in &ties {
        let after = state(r);
        for (i, (&b, &a)) in before.iter().zip(&after).enumerate() {
            assert!(
                a == b || a == i as u64,
                "block {i} moved from {b} to {a}: {r}"
            );
            unties += usize::from(a != b);
        }
        assert!(unique(&after) >= unique(&before), "{before:?} -> {after:?}");
        assert!(unique(&after) <= 3, "{after:?}");
        before = after;
    }
    assert!(
        unties > 0,
        "the agent never untied in {} decisions",
        ties.len()
    );
    fs::remove_dir_all(dir)?;
    Ok(())
}

/// Every opened element is closed in order (a small well-formedness check:
/// no attributes containing '>' are expected in the report).
fn assert_balanced_xml(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = start + rest[start..].find('>').expect("unterminated tag");
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let name = |t: &str| {
            t.trim_start_matches('/')
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap()
                .to_string()
        };
        if tag.starts_with('/') {
            assert_eq!(stack.pop(), Some(name(tag)), "mismatched </{tag}>");
        } else if !tag.ends_with('/') {
            stack.push(name(tag));
        }
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
}

/// A dynamic run with dropout and activation recomputation takes the same
/// steps, decisions and weights as one that keeps every activation, in less
/// memory.
#[test]
fn recomputation_changes_memory_and_nothing_else() -> Result<()> {
    let (a, b) = (temp_dir("keep"), temp_dir("recompute"));
    create(config("dynamic", 20), &a)?.run()?;
    let mut cfg = config("dynamic", 20);
    cfg.train.recompute = true;
    create(cfg, &b)?.run()?;
    let memory = |d: &Path| {
        let lines = train_lines(d);
        let bytes = lines[0]["counted_bytes"].as_u64().unwrap();
        let rest: Vec<Value> = lines
            .into_iter()
            .map(|mut r| {
                let o = r.as_object_mut().unwrap();
                o.remove("counted_bytes");
                o.remove("live_bytes");
                r
            })
            .collect();
        (bytes, rest)
    };
    let ((bytes_a, lines_a), (bytes_b, lines_b)) = (memory(&a), memory(&b));
    assert!(bytes_b < bytes_a, "{bytes_b} counted bytes vs {bytes_a}");
    assert_eq!(lines_a, lines_b);
    let read = |d: &Path, f: &str| fs::read(d.join(f)).unwrap();
    assert_eq!(read(&a, "ties.jsonl"), read(&b, "ties.jsonl"));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (fa, fb) = (newest(&a).join(f), newest(&b).join(f));
        assert!(
            fs::read(fa).unwrap() == fs::read(fb).unwrap(),
            "{f} differs"
        );
    }
    assert!(fs::read_to_string(b.join("config.toml"))?.contains("recompute = true"));
    for d in [a, b] {
        fs::remove_dir_all(d)?;
    }
    Ok(())
}
