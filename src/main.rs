use clap::error::ErrorKind;
use clap::Parser;
use dyntie::cli::{Cli, Command};
use dyntie::commands;

fn main() {
    die_quietly_on_closed_stdout();
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_on_bad_arguments(e));
    let result = match &cli.command {
        Command::Train(args) => commands::train(args),
        Command::Eval(args) => commands::eval(args),
        Command::Prepare(args) => commands::prepare(args),
        Command::Sample(args) => commands::sample(args),
        Command::Export(args) => commands::export(args),
        Command::Bench(args) => commands::bench(args),
        Command::Doctor(args) => commands::doctor(args),
        Command::Experiment(args) => commands::experiment(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A bad value for a flag (`--schedule cosin`) is one `error:` line, exit
/// status 1, like every other error of the program; the other argument
/// errors, help and version are clap's own.
fn exit_on_bad_arguments(e: clap::Error) -> ! {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        e.exit();
    }
    // clap's message spreads the valid values and a tip over several lines.
    let text = e.to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    eprintln!("{}", line.join(" "));
    std::process::exit(1);
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
