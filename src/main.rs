use clap::Parser;
use dyntie::cli::{Cli, Command};
use dyntie::commands;

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(args) => commands::train(args),
        Command::Eval(args) => commands::eval(args),
        Command::Prepare(args) => commands::prepare(args),
        Command::Sample(args) => commands::sample(args),
        Command::Export(args) => commands::export(args),
        Command::Bench(args) => commands::bench(args),
        Command::Doctor(args) => commands::doctor(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
