//! The `dyntie` program: bad input is a one-line `error:` naming the file
//! or flag (never a panic), and every subcommand runs on a trained run.

#[path = "common/cli.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;

#[test]
fn bad_data_is_a_clear_error() {
    let root = temp_dir("data");
    let out = root.join("run");
    let train_on = |data: &Path| {
        train_args(&[
            "--steps",
            "2",
            "--out",
            s(&out),
            "--force",
            "--data",
            s(data),
        ])
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let run = |data: &Path, needles: &[&str]| {
        let args = train_on(data);
        fails(
            &args.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            needles,
        )
    };
    run(&root.join("missing"), &["missing", "meta.json"]);
    fs::create_dir_all(root.join("empty")).unwrap();
    run(&root.join("empty"), &["empty", "meta.json"]);
    fs::write(root.join("empty/meta.json"), b"{\"format_version\": 1").unwrap();
    run(&root.join("empty"), &["meta.json", "prepare"]);

    let good = prepared(&root);
    let train_bin = good.join("train.bin");
    let original = fs::read(&train_bin).unwrap();
    let with = |edit: &dyn Fn(&mut Vec<u8>), needles: &[&str]| {
        let mut bytes = original.clone();
        edit(&mut bytes);
        fs::write(&train_bin, &bytes).unwrap();
        run(&good, needles);
    };
    with(&|b| b[0] = b'X', &["train.bin", "magic"]);
    with(&|b| b[8] = 7, &["train.bin", "version 7"]);
    with(&|b| b.truncate(b.len() - 5), &["train.bin"]);
    // Width 2, vocabulary 256: id 300 at the tenth token.
    with(
        &|b| b[32 + 18..32 + 20].copy_from_slice(&300u16.to_le_bytes()),
        &["train.bin", "300"],
    );
    fs::write(&train_bin, &original).unwrap();
    // The valid split has 128 tokens: a context of 200 does not fit.
    let mut args = train_on(&good);
    let ctx = args.iter().position(|a| a == "--ctx").unwrap();
    args[ctx + 1] = "200".into();
    fails(
        &args.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        &["valid", "context"],
    );
    let metrics = fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    assert!(
        !metrics.contains("\"train\""),
        "a too-short split must be refused before training"
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn bad_flags_are_clear_errors() {
    let root = temp_dir("flags");
    let out = root.join("run");
    let o = s(&out);
    fails(
        &train_args(&["--d-model", "30", "--heads", "4", "--out", o]),
        &["--heads 4", "--d-model 30"],
    );
    fails(&train_args(&["--steps", "0", "--out", o]), &["--steps"]);
    fails(
        &["train", "--preset", "huge", "--out", o],
        &["preset", "huge"],
    );
    fails(
        &train_args(&["--tying", "sometimes", "--out", o]),
        &["sometimes"],
    );
    fails(
        &train_args(&["--tying", "pattern:0,2,1", "--out", o]),
        &["pattern"],
    );
    fails(
        &train_args(&["--tying", "pattern:0,0", "--out", o]),
        &["pattern"],
    );
    fails(
        &["train", "--resume", s(&root.join("nothing"))],
        &["--resume"],
    );
    fs::remove_dir_all(root).unwrap();
}

/// A bad value for an enum-like flag is refused before anything runs, in
/// one line that names the flag and lists the valid values.
#[test]
fn bad_option_values_are_one_line_errors_listing_the_valid_ones() {
    let root = temp_dir("values");
    let out = root.join("run");
    let o = s(&out);
    fails(
        &train_args(&["--schedule", "cosin", "--out", o]),
        &["'cosin'", "--schedule", "constant, cosine"],
    );
    fails(
        &train_args(&["--tie-grad", "both", "--out", o]),
        &["'both'", "--tie-grad", "shared, frozen"],
    );
    fails(
        &["eval", "--run", o, "--split", "train"],
        &["'train'", "--split", "valid, test"],
    );
    assert!(!out.exists(), "nothing is written");
    // A --config file is checked the same way, naming the file.
    let toml = root.join("bad.toml");
    fs::write(&toml, "[train]\nschedule = \"cosin\"\n").unwrap();
    fails(
        &train_args(&["--config", s(&toml), "--out", o]),
        &[
            "bad.toml",
            "unknown schedule 'cosin': use constant or cosine",
        ],
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_existing_run_is_refused_without_force() {
    let root = temp_dir("force");
    let out = root.join("run");
    ok(&train_args(&["--steps", "2", "--out", s(&out)]));
    fails(
        &train_args(&["--steps", "2", "--out", s(&out)]),
        &[s(&out), "--force"],
    );
    ok(&train_args(&["--steps", "2", "--out", s(&out), "--force"]));
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_closed_stdout_ends_the_program_without_a_panic() {
    let root = temp_dir("pipe");
    // A pipe whose reader is gone before dyntie writes its first line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_dyntie"))
        .args(train_args(&["--steps", "2", "--out", s(&root.join("run"))]))
        .stdout(writer)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.status.success(),
        "a write to a closed pipe went unnoticed"
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn resume_with_more_steps_extends_the_run_and_records_it() {
    let root = temp_dir("extend");
    let run = root.join("run");
    ok(&train_args(&["--steps", "3", "--out", s(&run)]));
    let config = || fs::read_to_string(run.join("config.toml")).unwrap();
    let before = config();
    // Fewer steps than the checkpoint holds: refused, nothing changed.
    fails(
        &["train", "--resume", s(&run), "--steps", "2"],
        &["already at step 3", "--steps 2"],
    );
    assert_eq!(config(), before);
    let out = ok(&["train", "--resume", s(&run), "--steps", "5"]);
    assert!(
        out.contains("from 3 to 5 steps") && out.contains("cosine schedule now ends at step 5"),
        "{out}"
    );
    assert!(config().contains("steps = 5"), "{}", config());
    // A later resume without --steps finds the run complete at 5.
    let out = ok(&["train", "--resume", s(&run)]);
    assert!(
        out.contains("resuming") && out.contains("at step 5"),
        "{out}"
    );
    assert!(!out.contains("length changes"), "{out}");
    // Flags that would change the run are refused, not ignored.
    let before = config();
    fails(
        &[
            "train",
            "--resume",
            s(&run),
            "--steps",
            "7",
            "--layers",
            "2",
            "--schedule",
            "constant",
        ],
        &["--layers, --schedule would change the run", "--out"],
    );
    assert_eq!(config(), before);
    // Recomputation may be turned on (it changes memory, not results).
    let out = ok(&["train", "--resume", s(&run), "--steps", "6", "--recompute"]);
    assert!(out.contains("recomputed from here on"), "{out}");
    assert!(config().contains("recompute = true"), "{}", config());
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn corrupt_checkpoints_are_clear_errors() {
    let root = temp_dir("ckpt");
    let run = root.join("run");
    let wide = root.join("wide");
    ok(&train_args(&["--steps", "2", "--out", s(&run)]));
    ok(&train_args(&[
        "--steps",
        "2",
        "--d-model",
        "64",
        "--out",
        s(&wide),
    ]));
    let ckpt = run.join("checkpoints/step-00000002");
    let resume = || fails(&["train", "--resume", s(&run), "--steps", "4"], &[]);
    let keep = |name: &str| fs::read(ckpt.join(name)).unwrap();
    let (state, model) = (keep("state.json"), keep("model.safetensors"));

    fs::write(ckpt.join("state.json"), b"{ not json").unwrap();
    assert!(resume().contains("state.json"));
    fs::write(ckpt.join("state.json"), &state).unwrap();

    fs::write(ckpt.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
    assert!(resume().contains("model.safetensors"));
    fs::write(ckpt.join("model.safetensors"), &model).unwrap();

    // A checkpoint from a model of another width.
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        fs::copy(wide.join("checkpoints/step-00000002").join(f), ckpt.join(f)).unwrap();
    }
    let err = resume();
    assert!(
        err.contains("shape") && err.contains(".safetensors"),
        "{err}"
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn eval_sample_export_run_on_a_trained_model() {
    let root = temp_dir("cmds");
    let run = root.join("run");
    ok(&train_args(&["--steps", "3", "--out", s(&run)]));

    let out = ok(&["eval", "--run", s(&run), "--split", "valid"]);
    assert!(out.contains("valid") && out.contains("perplexity"), "{out}");

    let out = ok(&["sample", "--run", s(&run), "--max-new-tokens", "5"]);
    let ids: Vec<u32> = out
        .split_whitespace()
        .map(|w| w.parse().expect("the synthetic corpus samples token ids"))
        .collect();
    assert_eq!(ids.len(), 6, "the start token and 5 new ones: {out}");

    let hf = root.join("hf");
    ok(&[
        "export",
        "--run",
        s(&run),
        "--format",
        "hf",
        "--out",
        s(&hf),
    ]);
    for f in ["config.json", "model.safetensors", "dyntie_check.json"] {
        assert!(hf.join(f).is_file(), "export wrote no {f}");
    }
    let config: Value = serde_json::from_slice(&fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["n_layer"], 3);
    assert_eq!(config["n_embd"], 32);
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    let t = dyntie::checkpoint::load_safetensors(&hf.join("model.safetensors")).unwrap();
    // Hugging Face Conv1D weights are [in, out].
    assert_eq!(t["transformer.h.0.attn.c_attn.weight"].0, vec![32, 96]);
    assert_eq!(t["transformer.h.2.mlp.c_fc.weight"].0, vec![32, 128]);
    assert_eq!(t["transformer.h.2.mlp.c_proj.weight"].0, vec![128, 32]);
    assert_eq!(t["transformer.wte.weight"].0, vec![vocab, 32]);
    assert!(!t.contains_key("lm_head.weight"));
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn bench_memory_counts_the_paper_model() {
    // 48 blocks in 6 groups of 8, each group on its first block.
    let pattern = format!(
        "pattern:{}",
        (0..48)
            .map(|i| (i / 8 * 8).to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = ok(&[
        "bench",
        "memory",
        "--preset",
        "paper",
        "--patterns",
        "none",
        "all",
        &pattern,
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON");
    let rows = v["rows"].as_array().unwrap();
    let report = |i: usize| &rows[i]["report"];
    assert_eq!(rows.len(), 3);
    let conventional = report(0)["trainable_params"].as_u64().unwrap();
    // The paper: about 1,556 M parameters, 30.74 M per block.
    assert!(
        (1_550_000_000..1_560_000_000).contains(&conventional),
        "{conventional}"
    );
    assert_eq!(report(1)["live_slots"], 1);
    assert_eq!(report(2)["live_slots"], 6);
    let block = report(0)["block_params"].as_u64().unwrap();
    assert_eq!(
        conventional - report(2)["trainable_params"].as_u64().unwrap(),
        42 * block
    );
}

#[test]
fn prepare_then_train_on_text() {
    let root = temp_dir("prep");
    let data = root.join("data");
    ok(&[
        "prepare",
        "--dataset",
        "text",
        "--input",
        "data/samples/text/input.txt",
        "--out",
        s(&data),
    ]);
    assert!(data.join("meta.json").is_file());
    // The GPT-2 tokenizer leaves 32 valid tokens: the context must be shorter.
    ok(&train_args(&[
        "--data",
        s(&data),
        "--steps",
        "2",
        "--ctx",
        "8",
        "--out",
        s(&root.join("run")),
    ]));
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn lambada_accuracy_runs_on_a_byte_level_model() {
    let root = temp_dir("lambada");
    let data = prepared(&root);
    let run = root.join("run");
    ok(&train_args(&[
        "--data",
        s(&data),
        "--steps",
        "2",
        "--out",
        s(&run),
    ]));
    let out = ok(&[
        "eval",
        "--run",
        s(&run),
        "--task",
        "lambada",
        "--data",
        "data/samples/lambada/lambada_test.jsonl",
    ]);
    let examples = fs::read_to_string("data/samples/lambada/lambada_test.jsonl")
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(
        out.contains(&format!("lambada: {examples} examples, last-word accuracy")),
        "{out}"
    );
    // A model trained for two steps guesses no multi-byte word right.
    assert!(out.contains("accuracy 0.00%"), "{out}");
    fails(
        &["eval", "--run", s(&run), "--task", "lambada"],
        &["--task lambada needs --data"],
    );
    fs::remove_dir_all(root).unwrap();
}
