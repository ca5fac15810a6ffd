//! The `dyntie` subcommands, one file each, callable from tests as well as
//! from `main.rs`; and what several of them share: choosing the backend,
//! opening a trained run.

pub mod bench;
pub mod bench_kernels;
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
use crate::cuda::{self, CudaDevice, Device, EmuDevice, KernelBackend};
use crate::data::{Dataset, SyntheticConfig, Tokenizer};
use crate::dist::{Comm, Nccl};
use crate::model::Model;
use crate::ops::Backend;
use crate::train::memory::{self, Available};
use crate::train::{run_dir, Join, Replicas};
use anyhow::{Context, Result};
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
    select_backend_on(kind, 0)
}

/// [`select_backend`] on GPU `ordinal` of this machine (a launched run's
/// `LOCAL_RANK`) where the backend is CUDA.
pub fn select_backend_on(kind: BackendKind, ordinal: usize) -> Result<SelectedBackend> {
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
            let dev = CudaDevice::new(ordinal)?;
            let why = format!("backend cuda on {}", dev.description());
            Ok(gpu(dev, why))
        }
        BackendKind::Auto => {
            if !cuda::driver_present() {
                return Ok(cpu(
                    "backend cpu (auto: no CUDA driver on this machine)".into()
                ));
            }
            match CudaDevice::new(ordinal) {
                Ok(dev) => {
                    let why = format!("backend cuda (auto: found {})", dev.description());
                    Ok(gpu(dev, why))
                }
                Err(e) => Ok(cpu(format!("backend cpu (auto: CUDA unusable: {e:#})"))),
            }
        }
    }
}

/// The other `n - 1` replicas of a data-parallel run whose rank 0 runs on
/// `selected`: on a GPU, GPUs 1..n, joined with NCCL (the group's id made
/// here, in rank 0's process, and handed to each replica's thread); on the
/// CPU or the emulator, backends of the same kind joined in process.
pub fn replicas_of(selected: &SelectedBackend, n: usize) -> Result<Replicas> {
    if let Some(first) = &selected.cuda {
        let id = Nccl::unique_id()
            .context("--replicas on cuda sums the gradients with NCCL, which is not usable")?;
        let mut devices = vec![first.shared_device()];
        let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
        for gpu in 1..n {
            let kernels = KernelBackend::new(
                CudaDevice::new(gpu).with_context(|| format!("--replicas {n}: replica {gpu}"))?,
            );
            devices.push(kernels.shared_device());
            backends.push(Arc::new(kernels));
        }
        let joins = devices
            .into_iter()
            .enumerate()
            .map(|(rank, device)| {
                Box::new(move || Ok(Box::new(Nccl::new(device, &id, rank, n)?) as Box<dyn Comm>))
                    as Join
            })
            .collect();
        return Ok(Replicas {
            backends,
            joins,
            fault: None,
        });
    }
    let backends = (1..n)
        .map(|_| -> Arc<dyn Backend> {
            if selected.emu.is_some() {
                Arc::new(KernelBackend::new(EmuDevice::new()))
            } else {
                Arc::new(CpuBackend::new())
            }
        })
        .collect();
    Replicas::in_process(backends)
}

impl SelectedBackend {
    /// The memory this backend can still give: free device memory on a
    /// GPU, else the host's available memory. `None` when it cannot be read.
    pub fn available_memory(&self) -> Option<Available> {
        const MIB: f64 = (1u64 << 20) as f64;
        if let Some(gpu) = &self.cuda {
            let (free, total) = gpu.device().mem_info().ok()?;
            return Some(Available {
                bytes: free,
                what: format!(
                    "{} has {:.0} MiB free of {:.0} MiB",
                    gpu.device().description(),
                    free as f64 / MIB,
                    total as f64 / MIB
                ),
            });
        }
        let bytes = memory::host_available()?;
        Some(Available {
            bytes,
            what: format!(
                "the {} backend has {:.0} MiB (MemAvailable in /proc/meminfo)",
                self.backend.name(),
                bytes as f64 / MIB
            ),
        })
    }
}

/// Refuses, before anything is allocated, a run that needs more memory
/// than the backend has or more than can be counted.
pub fn check_memory(cfg: &RunConfig, selected: &SelectedBackend) -> Result<()> {
    let vocab = match cfg.data.prepared_dir() {
        // Only meta.json is read here; a dataset that does not open is
        // reported by the run itself.
        Some(dir) => Dataset::vocab_of(dir).unwrap_or(cfg.model.vocab_size),
        None => SyntheticConfig::default().vocab,
    };
    check_memory_with_vocab(cfg, vocab, selected)
}

/// [`check_memory`] for a run whose vocabulary size is already known.
pub fn check_memory_with_vocab(
    cfg: &RunConfig,
    vocab: usize,
    selected: &SelectedBackend,
) -> Result<()> {
    // Counted in the precision the run will take on this backend (it
    // chooses the attention path, and so what attention stores).
    let mut cfg = cfg.clone();
    cfg.precision = Some(cfg.precision_on(selected.backend.name()));
    match selected.available_memory() {
        Some(available) => memory::check(&cfg, vocab, &available),
        None => memory::need(&cfg, vocab).map(|_| ()),
    }
}

/// The resolved config and the trained model of a run folder, from its
/// newest good checkpoint (with `allow_non_finite`, also one holding NaN).
pub fn load_run(
    dir: &Path,
    backend: Option<BackendKind>,
    allow_non_finite: bool,
) -> Result<(RunConfig, Model)> {
    let cfg = run_dir::load_config(dir, "--run")?;
    let selected = select_backend(backend.unwrap_or(cfg.backend))?;
    check_memory(&cfg, &selected)?;
    let mut notes = Vec::new();
    let model =
        crate::train::load_model(dir, &cfg, selected.backend, allow_non_finite, &mut notes)?;
    for n in notes {
        eprintln!("{n}");
    }
    Ok((cfg, model))
}

/// The tokenizer of the dataset a run trained on (as config.toml records
/// it, or for older runs from the dataset); `None` for the synthetic
/// corpus, whose ids are not text.
fn tokenizer_of(cfg: &RunConfig) -> Result<Option<Tokenizer>> {
    if let Some(kind) = cfg.data.tokenizer {
        return Ok(Some(Tokenizer::new(kind)));
    }
    match cfg.data.prepared_dir() {
        Some(_) => Ok(crate::train::open_run_dataset(cfg, None)?.tokenizer),
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
