use clap::Parser;
use dyntie::cli::{Cli, Command};
use dyntie::commands;

fn main() {
    die_quietly_on_closed_stdout();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(args) => commands::train(args),
        Command::Eval(args) => commands::eval(args),
        Command::Prepare(args) => commands::prepare(args),
        Command::Sample(args) => commands::sample(args),
        Command::Export(args) => commands::export(args),
        Command::Bench(args) => commands::bench(args),
        Command::Doctor(args) => commands::doctor(args),
        Command::Experiment(args) => dyntie::experiment::command(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `println!` to a closed pipe (`dyntie ... | head`)
/// panics. Restore the default, as other command-line tools have it: the
/// process ends when its reader goes away (checkpoints are written
/// atomically, so nothing is left half-written).
fn die_quietly_on_closed_stdout() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: signal(2) with the default disposition; no handler runs.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
