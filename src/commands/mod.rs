//! What each `dyntie` subcommand does, callable from tests as well as from
//! `main.rs`.

pub mod bench;
pub mod run;

pub use bench::bench;
pub use run::{eval, export, prepare, sample, train};

use crate::backend::cpu::CpuBackend;
use crate::backend::kernels::KernelBackend;
use crate::backend::Backend;
use crate::cli::DoctorArgs;
use crate::config::BackendKind;
use crate::device::cuda::{self, CudaDevice};
use crate::device::emu::EmuDevice;
use anyhow::{bail, Result};
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

/// `dyntie doctor`: every kernel against the CPU reference on the GPU (or,
/// with `--emu`, under the emulator), then a short training run on both.
pub fn doctor(args: &DoctorArgs) -> Result<()> {
    let reference = Arc::new(CpuBackend::new());
    let (candidate, gpu): (Arc<dyn Backend>, bool) = if args.emu {
        println!("dyntie doctor: checking the kernels under the CPU emulator");
        (select_backend(BackendKind::Emu)?.backend, false)
    } else {
        println!("kernels in this build: {}", cuda::gpu_build_info());
        match select_backend(BackendKind::Cuda) {
            Ok(selected) => {
                println!("dyntie doctor: checking {}", selected.why);
                (selected.backend, true)
            }
            Err(e) if args.allow_no_gpu => {
                println!("dyntie doctor: no GPU to check ({e:#}); exiting 0 (--allow-no-gpu)");
                return Ok(());
            }
            Err(e) => {
                return Err(e.context("dyntie doctor needs a GPU (--allow-no-gpu exits 0 without one, --emu checks the emulator)"))
            }
        }
    };
    let results = crate::doctor::check_kernels(reference.as_ref(), candidate.as_ref(), gpu);
    print!("{}", crate::conformance::format_results(&results));
    let kernel_failures = results.iter().filter(|r| !r.passed).count();

    // The training run, then a shorter one with activation recomputation
    // (on both backends: on the CPU it is bit for bit the plain run).
    let plain = crate::doctor::doctor_training_config();
    let mut recompute = plain.clone();
    recompute.train.recompute = true;
    recompute.train.steps = 10;
    const TRAIN_TOL: f64 = 1e-4;
    let mut train_ok = true;
    for (what, cfg) in [
        ("training check", plain),
        ("training check, --recompute", recompute),
    ] {
        let scratch = std::env::temp_dir().join(format!("dyntie-doctor-{}", std::process::id()));
        let cmp =
            crate::doctor::compare_training(&cfg, reference.clone(), candidate.clone(), &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        train_ok &= match &cmp {
            Ok(c) => {
                println!(
                    "{what}: {} steps, {} tie decisions; max relative loss difference {:.2e} (tolerance {TRAIN_TOL:.0e}); decisions {}; final loss cpu {:.5} vs kernels {:.5}",
                    c.steps,
                    c.decisions,
                    c.max_rel_diff,
                    if c.same_decisions { "identical" } else { "DIFFER" },
                    c.reference.last().copied().unwrap_or(f64::NAN),
                    c.candidate.last().copied().unwrap_or(f64::NAN),
                );
                c.agrees(TRAIN_TOL)
            }
            Err(e) => {
                println!("{what}: ERROR {e:#}");
                false
            }
        };
    }
    println!(
        "summary: kernels {} passed, {kernel_failures} failed; training {}",
        results.len() - kernel_failures,
        if train_ok { "agrees" } else { "DISAGREES" }
    );
    if kernel_failures > 0 || !train_ok {
        bail!("dyntie doctor found problems (see the table above)");
    }
    Ok(())
}
