//! What each `dyntie` subcommand does, callable from tests as well as from
//! `main.rs`.

pub mod bench;
pub mod run;

pub use bench::bench;
pub use run::{eval, export, prepare, sample, train};

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use anyhow::{bail, Result};
use std::sync::Arc;

/// The backend a `--backend` flag names, and a sentence saying why it was
/// chosen (printed as a run's first line).
pub fn select_backend(name: &str) -> Result<(Arc<dyn Backend>, String)> {
    match name {
        "cpu" => Ok((
            Arc::new(CpuBackend::new()),
            "backend cpu (asked for with --backend cpu)".into(),
        )),
        "auto" => Ok((
            Arc::new(CpuBackend::new()),
            "backend cpu (auto: this build has no CUDA backend yet)".into(),
        )),
        "cuda" | "emu" => {
            bail!("--backend {name} is not available in this build yet; use --backend cpu")
        }
        other => bail!("--backend '{other}' is unknown: use auto, cpu, cuda or emu"),
    }
}

/// `dyntie doctor`: on this build there is no CUDA backend yet, so there is
/// no GPU to check.
pub fn doctor(args: &crate::cli::DoctorArgs) -> Result<()> {
    if args.allow_no_gpu {
        println!("dyntie doctor: this build has no CUDA backend yet; nothing to check");
        return Ok(());
    }
    bail!("this build has no CUDA backend yet (run with --allow-no-gpu to exit 0)")
}
