//! `dyntie doctor`: a thin front for [`crate::doctor`] and
//! [`crate::conformance`], which do the checking.

use super::select_backend;
use crate::cli::DoctorArgs;
use crate::config::BackendKind;
use crate::cpu::CpuBackend;
use crate::cuda::{self, limits, CudaDevice, EmuConfig};
use crate::dist::{Comm, Nccl};
use crate::mem::DType;
use crate::ops::{Backend, BackendExt};
use crate::precision::Precision;
use anyhow::{bail, Result};
use std::sync::Arc;

/// `dyntie doctor`: every kernel against the CPU reference on the GPU (or,
/// with `--emu`, under the emulator), then a short training run on both.
pub fn doctor(args: &DoctorArgs) -> Result<()> {
    let reference = Arc::new(CpuBackend::new());
    let mut nccl_device = None;
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
                    nccl_device = Some(gpu.shared_device());
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
    let mut plain = crate::doctor::doctor_training_config();
    let precision = args.precision.unwrap_or(Precision::Fp32);
    plain.precision = Some(precision);
    let mut recompute = plain.clone();
    recompute.train.recompute = true;
    recompute.train.steps = 10;
    // fp32: the kernels sum in other orders than the CPU. bf16: both sides
    // round the same fp32 values to bf16, and where a small fp32
    // difference straddles a rounding boundary the two differ by one bf16
    // unit in that element (tests/precision.rs measures 1e-7 on the loss).
    let train_tol: f64 = match precision {
        Precision::Fp32 => 1e-4,
        Precision::Bf16 => 1e-3,
    };
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
                    "{what}: {} steps, {} tie decisions; max relative loss difference {:.2e} (tolerance {train_tol:.0e}, {precision}); decisions {}; final loss cpu {:.5} vs kernels {:.5}",
                    c.steps,
                    c.decisions,
                    c.max_rel_diff,
                    if c.same_decisions { "identical" } else { "DIFFER" },
                    c.reference.last().copied().unwrap_or(f64::NAN),
                    c.candidate.last().copied().unwrap_or(f64::NAN),
                );
                c.agrees(train_tol)
            }
            Err(e) => {
                println!("{what}: ERROR {e:#}");
                false
            }
        };
    }
    let mut nccl_ok = true;
    if let Some(device) = nccl_device {
        nccl_ok = match check_nccl(device, candidate.as_ref()) {
            Ok(line) => {
                println!("nccl check: {line}");
                true
            }
            Err(e) => {
                println!("nccl check: ERROR {e:#}");
                false
            }
        };
    }
    println!(
        "summary: kernels {} passed, {kernel_failures} failed; training {}",
        results.len() - kernel_failures,
        if train_ok { "agrees" } else { "DISAGREES" }
    );
    if kernel_failures > 0 || !train_ok || !nccl_ok {
        bail!("dyntie doctor found problems (see the table above)");
    }
    Ok(())
}

/// A world-size-1 NCCL group on the real library: an all-reduce and a
/// broadcast that must leave the data as it was. Skipped (with the reason)
/// where NCCL is not installed.
fn check_nccl(device: Arc<CudaDevice>, be: &dyn Backend) -> Result<String> {
    if !Nccl::available() {
        return Ok(format!(
            "skipped: {:#}",
            Nccl::unique_id().expect_err("NCCL is not available")
        ));
    }
    let id = Nccl::unique_id()?;
    let comm = Nccl::new(device, &id, 0, 1)?;
    let values = [1.5f32, -2.0, 3.25];
    let buf = be.alloc(DType::F32, values.len())?;
    be.upload(buf.view(), &values)?;
    comm.all_reduce_sum(be, buf.view())?;
    let summed = be.download::<f32>(buf.view())?;
    if summed != values {
        bail!("an all-reduce over one rank changed {values:?} into {summed:?}");
    }
    let mut bytes = b"tie table".to_vec();
    comm.broadcast(be, 0, &mut bytes)?;
    comm.barrier()?;
    if bytes != b"tie table" {
        bail!("a broadcast over one rank changed its bytes");
    }
    Ok("world size 1: all-reduce, broadcast and barrier on libnccl agree".into())
}
