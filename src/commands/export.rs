//! `dyntie export`: a trained run's weights in another layout.

use super::{argmax, load_run};
use crate::cli::{ExportArgs, ExportFormat};
use crate::config::BackendKind;
use crate::data::{Batch, EvalWindows, Split, IGNORE_INDEX};
use crate::model::{hf, Model};
use crate::train::open_dataset;
use anyhow::{ensure, Context, Result};

/// Validation windows whose loss the export records for the comparison
/// script's perplexity check.
const CHECK_WINDOWS: usize = 8;

/// New tokens of the greedy continuation in `dyntie_check.json`.
const GREEDY_TOKENS: usize = 16;

/// `dyntie export --format hf`: the Hugging Face layout of the run's
/// architecture ([`hf`]), computed on the CPU backend, with the first
/// validation windows of the run's dataset for the comparison script.
pub fn export(args: &ExportArgs) -> Result<()> {
    let (cfg, mut model) = load_run(&args.run, Some(BackendKind::Cpu))?;
    let data =
        open_dataset(&cfg).context("opening the run's dataset for the validation windows")?;
    let windows = EvalWindows::new(data.held_out(Split::Valid), model.config().n_ctx)?;
    let valid = windows.batch(0, CHECK_WINDOWS);
    match args.format {
        ExportFormat::Hf => {
            let valid = valid_windows(&mut model, &valid)?;
            hf::export(&mut model, &args.out, valid)?;
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
