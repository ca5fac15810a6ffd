//! Driving the `dyntie` binary as a user would, for the command-line test
//! suites: run it, expect success or a one-line error, and the small shapes
//! they train. Each suite includes this file with `#[path]`, so helpers one
//! suite does not use are marked `allow(dead_code)`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A fresh scratch folder for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-cli-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// The binary under test, ready for arguments.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dyntie"))
}

pub fn dyntie(args: &[&str]) -> Output {
    command().args(args).output().expect("cannot run dyntie")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(args: &[&str]) -> String {
    let out = dyntie(args);
    assert!(
        out.status.success(),
        "dyntie {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Checks that `out` is a failure with exit status 1 and one `error:` line
/// mentioning every word of `needles`; returns that line.
pub fn failed(what: &str, out: &Output, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    let err = err.trim();
    assert!(
        err.starts_with("error:") && err.lines().count() == 1,
        "{what}: not a one-line error:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "{what}: '{n}' not in: {err}");
    }
    err.to_string()
}

/// Runs dyntie, expects a failure with one `error:` line mentioning every
/// word of `needles`; returns that line.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    failed(&format!("dyntie {args:?}"), &dyntie(args), needles)
}

/// The shape every test trains: a few steps of a 3-block model.
pub const SMALL: &[&str] = &[
    "--preset",
    "tiny",
    "--layers",
    "3",
    "--d-model",
    "32",
    "--heads",
    "2",
    "--ctx",
    "16",
    "--batch",
    "4",
];

/// `train` with the small shape, where a flag in `extra` replaces the
/// small shape's value.
pub fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train"];
    for pair in SMALL.chunks(2) {
        if !extra.contains(&pair[0]) {
            v.extend_from_slice(pair);
        }
    }
    v.extend_from_slice(extra);
    v
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A byte-level dataset prepared from the text sample.
pub fn prepared(root: &Path) -> PathBuf {
    let dir = root.join("text");
    ok(&[
        "prepare",
        "--dataset",
        "text",
        "--input",
        "data/samples/text/input.txt",
        "--tokenizer",
        "byte",
        "--out",
        s(&dir),
    ]);
    dir
}

/// Waits for `child` to end, killing it after `limit` (a hang fails the
/// test), and collects its output.
pub fn finish(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "dyntie did not end within {limit:?}:\n{}\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
