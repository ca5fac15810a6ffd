//! `dyntie doctor`: a thin front for [`crate::doctor`] and
//! [`crate::conformance`], which do the checking.

use super::select_backend;
use crate::cli::DoctorArgs;
use crate::config::BackendKind;
use crate::cpu::CpuBackend;
use crate::cuda::{self, limits, EmuConfig};
use crate::ops::Backend;
use anyhow::{bail, Result};
use std::sync::Arc;

/// `dyntie doctor`: every kernel against the CPU reference on the GPU (or,
/// with `--emu`, under the emulator), then a short training run on both.
pub fn doctor(args: &DoctorArgs) -> Result<()> {
    let reference = Arc::new(CpuBackend::new());
    let (candidate, gpu): (Arc<dyn Backend>, bool) = if args.emu {
        println!("dyntie doctor: checking the kernels under the CPU emulator");
        let gpu = EmuConfig::default().gpu;
        println!(
            "launch checks: the limits of sm_{} ({} KiB of shared memory per block with the \
             opt-in); kernel registers and static shared memory: {}",
            gpu.arch,
            gpu.max_shared_per_block_optin >> 10,
            limits::ptxas_report_status()
        );
        let selected = select_backend(BackendKind::Emu)?;
        if args.sync_launches {
            selected.sync_launches();
        }
        (selected.backend, false)
    } else {
        println!("kernels in this build: {}", cuda::gpu_build_info());
        match select_backend(BackendKind::Cuda) {
            Ok(selected) => {
                if let Some(gpu) = &selected.cuda {
                    println!("dyntie doctor: checking {}", gpu.device().description());
                }
                println!(
                    "launch checks: the limits of this GPU; kernel registers and static shared \
                     memory from the driver"
                );
                if args.sync_launches {
                    selected.sync_launches();
                }
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
