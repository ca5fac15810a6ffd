//! The `dyntie` subcommands, one file each, callable from tests as well as
//! from `main.rs`; and what several of them share: choosing the backend,
//! opening a trained run.

pub mod bench;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod prepare;
pub mod sample;
pub mod train;

pub use bench::bench;
pub use doctor::doctor;
pub use eval::eval;
pub use export::export;
pub use prepare::prepare;
pub use sample::sample;
pub use train::train;

use crate::backend::cpu::CpuBackend;
use crate::backend::kernels::KernelBackend;
use crate::backend::Backend;
use crate::config::{BackendKind, RunConfig};
use crate::data::{Dataset, Tokenizer};
use crate::device::cuda::{self, CudaDevice};
use crate::device::emu::EmuDevice;
use crate::model::Gpt2;
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
}

/// The one place a `--backend` value becomes a backend.
pub fn select_backend(kind: BackendKind) -> Result<SelectedBackend> {
    let cpu = |why: String| SelectedBackend {
        backend: Arc::new(CpuBackend::new()),
        why,
        cuda: None,
    };
    let gpu = |dev: CudaDevice, why: String| {
        let kernels = Arc::new(KernelBackend::new(dev));
        SelectedBackend {
            backend: kernels.clone(),
            why,
            cuda: Some(kernels),
        }
    };
    match kind {
        BackendKind::Cpu => Ok(cpu("backend cpu (asked for with --backend cpu)".into())),
        BackendKind::Emu => Ok(SelectedBackend {
            backend: Arc::new(KernelBackend::new(EmuDevice::new())),
            why: "backend emu: the CUDA kernels on the CPU emulator (for testing; much slower than cpu)"
                .into(),
            cuda: None,
        }),
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
