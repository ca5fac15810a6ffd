use clap::Parser;

/// Train GPT-2-style transformers with dynamic layer tying.
#[derive(Parser)]
#[command(name = "dyntie", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
