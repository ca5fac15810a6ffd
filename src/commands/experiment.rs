//! `dyntie experiment`: trains a grid's runs one after another and
//! summarises them (the runner itself is in `crate::experiment`).

use crate::cli::ExperimentArgs;
use crate::experiment;
use anyhow::{bail, Result};

/// `dyntie experiment`.
pub fn experiment(args: &ExperimentArgs) -> Result<()> {
    let grid = experiment::grid::Grid::load(&args.grid)?;
    let opts = experiment::Options {
        dry_run: args.dry_run,
        summary_only: args.summary_only,
        max_runs: args.max_runs,
        verbose: !args.quiet,
    };
    let out = experiment::run_grid(&grid, &opts)?;
    println!(
        "{} of {} runs finished; {} left",
        out.results.len(),
        grid.runs.len(),
        out.unfinished.len()
    );
    for f in &out.written {
        println!("wrote {}", f.display());
    }
    if !out.failed.is_empty() {
        bail!(
            "{} run(s) failed: {}",
            out.failed.len(),
            out.failed
                .iter()
                .map(|(id, e)| format!("{id} ({e})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}
