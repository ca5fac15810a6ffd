//! `dyntie export`: a trained run's weights in another layout, written into
//! a new folder (or, with `--force`, over an earlier export), never into a
//! run folder.

use super::load_run;
use crate::cli::{ExportArgs, ExportFormat};
use crate::config::BackendKind;
use crate::model::hf;
use crate::train::run_dir;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What an export folder holds (`dyntie_check.json` marks it as one).
const EXPORT_FILES: [&str; 3] = ["config.json", "model.safetensors", "dyntie_check.json"];

/// `dyntie export --format hf`: the Hugging Face GPT-2 layout ([`hf`]),
/// computed on the CPU backend.
pub fn export(args: &ExportArgs) -> Result<()> {
    check_out(&args.out, &args.run, args.force)?;
    let (_, mut model) = load_run(&args.run, Some(BackendKind::Cpu), args.allow_non_finite)?;
    match args.format {
        ExportFormat::Hf => {
            // Written beside --out and moved in whole.
            let staging = sibling(&args.out, ".export-tmp")?;
            let old = sibling(&args.out, ".export-old")?;
            for d in [&staging, &old] {
                if d.exists() {
                    std::fs::remove_dir_all(d)
                        .with_context(|| format!("cannot remove {}", d.display()))?;
                }
            }
            if let Err(e) = hf::export(&mut model, &staging) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
            if args.out.exists() {
                std::fs::rename(&args.out, &old)
                    .with_context(|| format!("cannot move {} aside", args.out.display()))?;
            }
            std::fs::rename(&staging, &args.out)
                .with_context(|| format!("cannot move the export to {}", args.out.display()))?;
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("cannot remove {}", old.display()))?;
            }
            println!(
                "wrote {} (Hugging Face GPT-2 layout); check it with: python3 scripts/check_hf_export.py {}",
                args.out.display(),
                args.out.display()
            );
        }
    }
    Ok(())
}

/// Refuses an `--out` inside a run folder (the run's own included), a
/// file, a non-empty folder that is not an earlier export, and an earlier
/// export without `force`.
fn check_out(out: &Path, run: &Path, force: bool) -> Result<()> {
    let d = out.display();
    let target = resolved(out)?;
    if let Ok(run) = resolved(run) {
        if target.starts_with(&run) {
            bail!(
                "--out {d} is inside the run folder {}: the export would mix with (or replace) \
                 the run's files; choose a folder outside it",
                run.display()
            );
        }
    }
    if let Some(other) = target.ancestors().find(|a| run_dir::is_run(a)) {
        bail!(
            "--out {d} is inside the run folder {}: choose a folder outside any run",
            other.display()
        );
    }
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {d} is a file, not a folder");
    }
    let empty = std::fs::read_dir(out)
        .with_context(|| format!("cannot list --out {d}"))?
        .next()
        .is_none();
    if empty {
        return Ok(());
    }
    let earlier_export = out.join("dyntie_check.json").is_file();
    if !earlier_export {
        bail!("--out {d} is not empty and holds no earlier export: choose a new or empty folder");
    }
    if !force {
        bail!(
            "--out {d} holds an earlier export ({}): replace it with --force, or choose another --out",
            EXPORT_FILES.join(", ")
        );
    }
    Ok(())
}

/// `path` made absolute with symbolic links resolved, as far as it exists.
fn resolved(path: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    Ok(out)
}

/// `dir` with `suffix` added to its last name.
fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut name = dir
        .file_name()
        .with_context(|| format!("--out {} has no folder name", dir.display()))?
        .to_os_string();
    name.push(suffix);
    Ok(dir.with_file_name(name))
}
