//! Run folders: the names of what a run leaves in its folder, creating the
//! folder of a new run, recognising a run folder by its `config.toml`, and
//! rewriting that file when a resume changes the run.

use crate::checkpoint::write_file_atomically;
use crate::config::RunConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The resolved configuration: what makes a folder a run folder.
pub const CONFIG: &str = "config.toml";
/// One line per logged training step and per evaluation.
pub const METRICS: &str = "metrics.jsonl";
/// One line per closed agent decision.
pub const TIES: &str = "ties.jsonl";
/// Loss, perplexity and tie-pattern plots.
pub const REPORT: &str = "report.svg";
/// The last checkpoint, replaced atomically.
pub const CHECKPOINT: &str = "checkpoint";

/// Makes `dir` ready for a new run: created if needed; a folder holding
/// another run is refused unless `force`, which removes that run's logs,
/// report and checkpoint.
pub fn create(dir: &Path, force: bool) -> Result<()> {
    if dir.join(CONFIG).exists() && !force {
        bail!(
            "{} already holds a run: choose another --out, continue it with --resume {}, \
             or overwrite it with --force",
            dir.display(),
            dir.display()
        );
    }
    if force && dir.exists() {
        for f in [METRICS, TIES, REPORT] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir_all(dir.join(CHECKPOINT));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create run folder {}", dir.display()))
}

/// The configuration of the run in `dir`; `flag` names the option that
/// gave the folder, for the error when it is not a run folder.
pub fn load_config(dir: &Path, flag: &str) -> Result<RunConfig> {
    RunConfig::load(&dir.join(CONFIG))
        .with_context(|| format!("{flag} {}: not a dyntie run folder", dir.display()))
}

/// Writes the run's `config.toml` (atomically: a reader sees the old file
/// or the new one).
pub fn write_config(dir: &Path, cfg: &RunConfig) -> Result<()> {
    write_file_atomically(&dir.join(CONFIG), cfg.to_toml().as_bytes())
}
