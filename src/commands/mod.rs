//! The `dyntie` subcommands, one file each, callable from tests as well as
//! from `main.rs`; and what several of them share: choosing the backend,
//! opening a trained run.

pub mod bench;
pub mod doctor;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod prepare;
pub mod sample;
pub mod train;

pub use bench::bench;
pub use doctor::doctor;
pub use eval::eval;
pub use experiment::experiment;
pub use export::export;
pub use prepare::prepare;
pub use sample::sample;
pub use train::train;

use crate::config::{BackendKind, RunConfig};
use crate::cpu::CpuBackend;
use crate::cuda::{self, CudaDevice, EmuDevice, KernelBackend};
use crate::data::{Dataset, Tokenizer};
use crate::model::Gpt2;
use crate::ops::Backend;
use crate::train::run_dir;
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;

/// The backend a `--backend` flag names, and what the commands say or ask
/// about it.
pub struct SelectedBackend {
    pub backend: Arc<dyn Backend>,
    /// Which backend and why it was chosen (a run's first line).
    pub why: String,
    /// On CUDA, the kernel backend again with its device's type, for the
    /// GPU's name and free memory.
    pub cuda: Option<Arc<KernelBackend<CudaDevice>>>,
    /// Under the emulator, the same.
    pub emu: Option<Arc<KernelBackend<EmuDevice>>>,
}

impl SelectedBackend {
    /// Turns on the synchronous debug mode of a kernel backend (as
    /// `DYNTIE_SYNC_LAUNCHES=1` does): every launch waits for its kernel, so
    /// the first that fails is named with its op and shapes. The CPU backend
    /// has nothing to wait for.
    pub fn sync_launches(&self) {
        if let Some(k) = &self.cuda {
            k.set_sync_launches(true);
        }
        if let Some(k) = &self.emu {
            k.set_sync_launches(true);
        }
    }
}

/// The one place a `--backend` value becomes a backend.
pub fn select_backend(kind: BackendKind) -> Result<SelectedBackend> {
    let cpu = |why: String| SelectedBackend {
        backend: Arc::new(CpuBackend::new()),
        why,
        cuda: None,
        emu: None,
    };
    let gpu = |dev: CudaDevice, why: String| {
        let kernels = Arc::new(KernelBackend::new(dev));
        SelectedBackend {
            backend: kernels.clone(),
            why,
            cuda: Some(kernels),
            emu: None,
        }
    };
    match kind {
        BackendKind::Cpu => Ok(cpu("backend cpu (asked for with --backend cpu)".into())),
        BackendKind::Emu => {
            let kernels = Arc::new(KernelBackend::new(EmuDevice::new()));
            Ok(SelectedBackend {
                backend: kernels.clone(),
                why: "backend emu: the CUDA kernels on the CPU emulator (for testing; much slower \
                      than cpu)"
                    .into(),
                cuda: None,
                emu: Some(kernels),
            })
        }
        BackendKind::Cuda => {
            let dev = CudaDevice::new(0)?;
            let why = format!("backend cuda on {}", dev.description());
            Ok(gpu(dev, why))
        }
        BackendKind::Auto => {
            if !cuda::driver_present() {
                return Ok(cpu(
                    "backend cpu (auto: no CUDA driver on this machine)".into()
                ));
            }
            match CudaDevice::new(0) {
                Ok(dev) => {
                    let why = format!("backend cuda (auto: found {})", dev.description());
                    Ok(gpu(dev, why))
                }
                Err(e) => Ok(cpu(format!("backend cpu (auto: CUDA unusable: {e:#})"))),
            }
        }
    }
}

/// The resolved config and the trained model of a run folder.
pub fn load_run(dir: &Path, backend: Option<BackendKind>) -> Result<(RunConfig, Gpt2)> {
    let cfg = run_dir::load_config(dir, "--run")?;
    let selected = select_backend(backend.unwrap_or(cfg.backend))?;
    let model = crate::train::load_model(dir, &cfg, selected.backend)?;
    Ok((cfg, model))
}

/// The tokenizer of the dataset a run trained on; `None` for the synthetic
/// corpus, whose ids are not text.
fn tokenizer_of(cfg: &RunConfig) -> Result<Option<Tokenizer>> {
    match cfg.data.prepared_dir() {
        Some(dir) => Ok(Dataset::open(dir)?.tokenizer),
        None => Ok(None),
    }
}

/// The index of the largest value (the first of equal ones).
fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_mode_reaches_the_selected_kernel_backend() {
        let selected = select_backend(BackendKind::Emu).unwrap();
        let emu = selected.emu.clone().expect("the emulator's kernel backend");
        // Off unless DYNTIE_SYNC_LAUNCHES is set (it is not, in the tests).
        assert_eq!(
            emu.sync_launches(),
            std::env::var(cuda::backend::SYNC_LAUNCHES_ENV)
                .is_ok_and(|v| !v.is_empty() && v != "0")
        );
        selected.sync_launches();
        assert!(emu.sync_launches());
        // The CPU backend has no kernels to wait for.
        let cpu = select_backend(BackendKind::Cpu).unwrap();
        assert!(cpu.cuda.is_none() && cpu.emu.is_none());
        cpu.sync_launches();
    }
}
