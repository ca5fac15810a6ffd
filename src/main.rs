use clap::error::ErrorKind;
use clap::Parser;
use dyntie::cli::{Cli, Command};
use dyntie::commands;
use dyntie::train::Interrupted;

fn main() {
    die_quietly_on_closed_stdout();
    explain_bus_errors();
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
        // A run stopped by Ctrl-C or SIGTERM ends as the shell expects
        // of that signal (130, 143).
        let status = e
            .downcast_ref::<Interrupted>()
            .map_or(1, Interrupted::exit_status);
        std::process::exit(status);
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

/// Token files are memory-mapped; when one is truncated while dyntie reads
/// it (another program rewrote it in place), the next read of a vanished
/// page raises SIGBUS, which would end the process without a word. This
/// handler says what happened and exits with status 1. Reading the file
/// length before every batch would leave the same race between the check
/// and the read; the handler has none. Checkpoints are written atomically,
/// so the last one is whole.
fn explain_bus_errors() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigbus(_: libc::c_int) {
            const MSG: &[u8] = b"error: bus error (SIGBUS) reading a memory-mapped file: a token \
file of the dataset was probably truncated or rewritten in place while dyntie read it; the last \
checkpoint is intact: prepare the dataset again (dyntie prepare --force) into a new file, then \
resume\n";
            // SAFETY: write(2) and _exit(2) are async-signal-safe.
            unsafe {
                libc::write(2, MSG.as_ptr().cast(), MSG.len());
                libc::_exit(1);
            }
        }
        // SAFETY: installs a handler that only calls async-signal-safe
        // functions; the sigaction struct is zeroed, then filled.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
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
