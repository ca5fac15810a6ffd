//! Tokens/s of whole training steps (forward + backward + AdamW) on the CPU
//! backend, at the GPT-2 shape the engine's CPU speed is judged on: 6 blocks
//! x 256, 8 heads, T=128, B=8, vocab 50257, no tying, dropout 0.
//!
//! `cargo bench --bench step` prints the same report as
//! `dyntie bench throughput` (tokens/s, memory, per-op breakdown). Flags
//! after `--` replace or extend the defaults, e.g.
//! `cargo bench --bench step -- --tying all --steps 20`. Threads: rayon's
//! default (every core), or `RAYON_NUM_THREADS=1`. `scripts/compare.sh` runs
//! the PyTorch baseline on the same configuration in the same sitting.

use clap::Parser;
use dyntie::cli::{Cli, Command};
use dyntie::commands::bench::{format_throughput, run_throughput};

const DEFAULTS: &[(&str, &str)] = &[
    ("--backend", "cpu"),
    ("--layers", "6"),
    ("--d-model", "256"),
    ("--heads", "8"),
    ("--ctx", "128"),
    ("--batch", "8"),
    ("--vocab", "50257"),
    ("--dropout", "0"),
    ("--tying", "none"),
];

fn main() {
    // cargo passes `--bench` to harness=false targets; it is not ours.
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // A default yields to the same flag given on the command line.
    let given = |flag: &str| {
        extra
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let defaults = DEFAULTS
        .iter()
        .filter(|(flag, _)| !given(flag))
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect::<Vec<_>>();
    let argv = ["dyntie", "bench", "throughput"]
        .into_iter()
        .map(String::from)
        .chain(defaults)
        .chain(extra);
    let cli = Cli::parse_from(argv);
    let Command::Bench(args) = &cli.command else {
        unreachable!("the argument list starts with `bench`")
    };
    match run_throughput(args) {
        Ok(report) => print!("{}", format_throughput(&report)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
