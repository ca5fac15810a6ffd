//! Run folders: the names of what a run leaves in its folder, the marker
//! that makes a folder a run folder, the lock that keeps one process at a
//! time in it, taking a folder for a new run, and rewriting `config.toml`
//! when a resume changes the run.
//!
//! A folder is a run folder when it holds [`MARKER`]. A new run goes into a
//! folder that does not exist yet, an empty one, or (with `--force`) a run
//! folder; anything else is refused, and nothing is removed before the new
//! run has been fully built (see `Trainer::create`). Folders written before
//! the marker existed are recognised by their `config.toml` for resume,
//! eval, sample and export, and get the marker on their next resume.

use crate::checkpoint::write_file_atomically;
use crate::config::RunConfig;
use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// The marker file: what makes a folder a run folder (a format line).
pub const MARKER: &str = ".dyntie-run";
/// The advisory lock of the training process, holding its pid.
pub const LOCK: &str = ".dyntie-lock";
/// The resolved configuration.
pub const CONFIG: &str = "config.toml";
/// One line per logged training step and per evaluation.
pub const METRICS: &str = "metrics.jsonl";
/// One line per closed agent decision.
pub const TIES: &str = "ties.jsonl";
/// Loss, perplexity and tie-pattern plots.
pub const REPORT: &str = "report.svg";
/// The kept checkpoints, one folder per step (`step-00000120/`).
pub const CHECKPOINTS: &str = "checkpoints";
/// The single checkpoint folder of runs written before `checkpoints/`;
/// still read (with its `.old` twin), never written.
pub const LEGACY_CHECKPOINT: &str = "checkpoint";

const MARKER_TEXT: &str = "dyntie run folder, format 1\n";

/// Whether `dir` is a run folder (its marker, or a `config.toml` from
/// before the marker).
pub fn is_run(dir: &Path) -> bool {
    dir.join(MARKER).is_file() || dir.join(CONFIG).is_file()
}

/// Refuses early, before anything is built, a folder that a new run may not
/// take: a file, a folder that is not a run folder and not empty, a run
/// without `force`, or a run another process is training.
pub fn check_new(dir: &Path, force: bool) -> Result<()> {
    let d = dir.display();
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("--out {d} is a file, not a folder: choose another --out");
    }
    // A lock file alone is what a run killed while it set up leaves.
    let entries = fs::read_dir(dir)
        .with_context(|| format!("cannot list --out {d}"))?
        .flatten()
        .filter(|e| e.file_name() != LOCK)
        .count();
    if entries == 0 {
        return Ok(());
    }
    if !dir.join(MARKER).is_file() {
        bail!(
            "--out {d} is not empty and is not a dyntie run folder (no {MARKER}): \
             dyntie neither uses nor deletes it; choose another --out{}",
            if dir.join(CONFIG).is_file() {
                format!(
                    " (it looks like a run from an older dyntie: --resume {d} continues it, \
                     and marks it as a run folder)"
                )
            } else {
                String::new()
            }
        );
    }
    if !force {
        bail!(
            "{d} already holds a run: choose another --out, continue it with --resume {d}, \
             or replace it with --force"
        );
    }
    // Fails now, with the holder's pid, if another process trains there
    // (without writing anything into the old run).
    RunLock::probe(dir)
}

/// Takes `dir` for a new run whose configuration, data, tie table and
/// memory have all been checked: creates it, locks it, removes what an
/// earlier run left there (only when it is a run folder, which
/// [`check_new`] made sure of), and writes the marker.
pub fn take(dir: &Path, force: bool) -> Result<RunLock> {
    check_new(dir, force)?;
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create run folder {}", dir.display()))?;
    let lock = RunLock::acquire(dir)?;
    if dir.join(MARKER).is_file() {
        for f in [CONFIG, METRICS, TIES, REPORT] {
            remove_if_present(&dir.join(f))?;
        }
        for d in [
            CHECKPOINTS,
            LEGACY_CHECKPOINT,
            "checkpoint.old",
            "checkpoint.tmp",
        ] {
            let path = dir.join(d);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    mark(dir)?;
    Ok(lock)
}

/// Writes the marker (a resumed run from before the marker gets one). In
/// place, not by rename: even a torn marker marks the folder.
pub fn mark(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER);
    if path.is_file() {
        return Ok(());
    }
    fs::write(&path, MARKER_TEXT).with_context(|| format!("cannot write {}", path.display()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The exclusive lock of a run folder, held while a process trains in it
/// and released when dropped or when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `dir` (an existing folder), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        try_lock(dir, &mut file)?;
        let mut record = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        record().with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Fails like [`RunLock::acquire`] when another process holds the lock
    /// of `dir`, but changes nothing in the folder.
    pub fn probe(dir: &Path) -> Result<()> {
        match File::open(dir.join(LOCK)) {
            Ok(mut file) => try_lock(dir, &mut file),
            Err(_) => Ok(()),
        }
    }
}

/// Takes the exclusive lock on `file` (the lock file of `dir`); the error
/// names the holder's pid, which the holder wrote into the file.
fn try_lock(dir: &Path, file: &mut File) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim();
            let (who, kill) = if pid.is_empty() {
                ("another dyntie process".to_string(), "PID")
            } else {
                (format!("another dyntie process (pid {pid})"), pid)
            };
            bail!(
                "{} is in use: {who} is training in it; wait for it to end, or stop it \
                 (kill -INT {kill} writes a checkpoint first)",
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", dir.join(LOCK).display()))
        }
    }
}

/// The configuration of the run in `dir`; `flag` names the option that
/// gave the folder, for the error when it is not a run folder.
pub fn load_config(dir: &Path, flag: &str) -> Result<RunConfig> {
    if !dir.is_dir() {
        bail!("{flag} {}: no such folder", dir.display());
    }
    if !is_run(dir) {
        bail!(
            "{flag} {}: not a dyntie run folder (no {MARKER} or {CONFIG})",
            dir.display()
        );
    }
    let cfg = RunConfig::load(&dir.join(CONFIG)).with_context(|| {
        format!(
            "{flag} {}: cannot read the run's configuration",
            dir.display()
        )
    })?;
    cfg.validate().with_context(|| {
        format!(
            "{flag} {}: {} holds an invalid value",
            dir.display(),
            CONFIG
        )
    })?;
    Ok(cfg)
}

/// Writes the run's `config.toml` (atomically: a reader sees the old file
/// or the new one).
pub fn write_config(dir: &Path, cfg: &RunConfig) -> Result<()> {
    write_file_atomically(&dir.join(CONFIG), cfg.to_toml().as_bytes())
}
