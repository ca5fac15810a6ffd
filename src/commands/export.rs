//! `dyntie export`: a trained run's weights in another layout, written into
//! a new folder (or, with `--force`, over an earlier export), never into a
//! run folder.

use super::{argmax, load_run};
use crate::cli::{ExportArgs, ExportFormat};
use crate::config::BackendKind;
use crate::data::{Batch, EvalWindows, Split, IGNORE_INDEX};
use crate::model::{hf, Model};
use crate::train::{open_run_dataset, run_dir};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// What an export folder holds (`dyntie_check.json` marks it as one).
const EXPORT_FILES: [&str; 3] = ["config.json", "model.safetensors", "dyntie_check.json"];

/// Validation windows whose loss the export records for the comparison
/// script's perplexity check.
const CHECK_WINDOWS: usize = 8;

/// New tokens of the greedy continuation in `dyntie_check.json`.
const GREEDY_TOKENS: usize = 16;

/// `dyntie export --format hf`: the Hugging Face layout of the run's
/// architecture ([`hf`]), computed on the CPU backend, with the first
/// validation windows of the run's dataset for the comparison script.
pub fn export(args: &ExportArgs) -> Result<()> {
    check_out(&args.out, &args.run, args.force)?;
    let (cfg, mut model) = load_run(&args.run, Some(BackendKind::Cpu), args.allow_non_finite)?;
    let data = open_run_dataset(&cfg, None)
        .context("opening the run's dataset for the validation windows")?;
    let windows = EvalWindows::new(data.held_out(Split::Valid), model.config().n_ctx)?;
    let valid = valid_windows(&mut model, &windows.batch(0, CHECK_WINDOWS))?;
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
            if let Err(e) = hf::export(&mut model, &staging, valid) {
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
                "wrote {} (Hugging Face {} layout); check it with: python3 scripts/check_hf_export.py {}",
                args.out.display(),
                cfg.model.arch,
                args.out.display()
            );
        }
    }
    Ok(())
}

/// The validation windows (ignored targets as -1), dyntie's mean loss over
/// their targets, and its greedy continuation of the first window's first
/// half.
fn valid_windows(model: &mut Model, valid: &Batch) -> Result<serde_json::Value> {
    let t = valid.context;
    ensure!(
        valid.rows > 0,
        "the validation split has no window of {t} tokens"
    );
    let (sum, count) = model.eval_loss(&valid.inputs, &valid.targets, valid.rows, t)?;
    ensure!(count > 0, "the validation windows have no targets");
    let targets: Vec<i64> = valid
        .targets
        .iter()
        .map(|&x| if x == IGNORE_INDEX { -1 } else { x as i64 })
        .collect();
    let prompt = valid.inputs[..t.div_ceil(2)].to_vec();
    let mut tokens = prompt.clone();
    for _ in 0..GREEDY_TOKENS {
        let window = &tokens[tokens.len().saturating_sub(t)..];
        let logits = model.logits_last(window, window.len())?;
        tokens.push(argmax(&logits) as u32);
    }
    Ok(serde_json::json!({
        "inputs": valid.inputs.chunks(t).collect::<Vec<_>>(),
        "targets": targets.chunks(t).collect::<Vec<_>>(),
        "loss": sum / count as f64,
        "greedy_prompt": prompt,
        "greedy": tokens[prompt.len()..],
    }))
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
