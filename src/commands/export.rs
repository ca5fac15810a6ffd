//! `dyntie export`: a trained run's weights in another layout.

use super::load_run;
use crate::cli::{ExportArgs, ExportFormat};
use crate::config::BackendKind;
use crate::model::hf;
use anyhow::Result;

/// `dyntie export --format hf`: the Hugging Face GPT-2 layout ([`hf`]),
/// computed on the CPU backend.
pub fn export(args: &ExportArgs) -> Result<()> {
    let (_, mut model) = load_run(&args.run, Some(BackendKind::Cpu))?;
    match args.format {
        ExportFormat::Hf => {
            hf::export(&mut model, &args.out)?;
            println!(
                "wrote {} (Hugging Face GPT-2 layout); check it with: python3 scripts/check_hf_export.py {}",
                args.out.display(),
                args.out.display()
            );
        }
    }
    Ok(())
}
