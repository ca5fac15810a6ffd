//! What a GPU allows a launch: block size, registers and shared memory.
//!
//! Both devices run [`check_launch`] before every launch, so a launch the
//! emulator accepts does not fail on a GPU, and a failing one says why
//! instead of a bare driver error code. The messages name the error the
//! driver would return. A kernel's registers and static shared memory come
//! from the ptxas report that build.rs records when it compiles the cubins
//! (on the GPU, from the loaded function itself).

use super::LaunchDims;
use anyhow::{ensure, Result};

/// Per-block limits of an NVIDIA architecture (CUDA programming guide,
/// "technical specifications per compute capability").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLimits {
    /// Compute capability, e.g. 80 for sm_80.
    pub arch: u32,
    pub max_threads_per_block: u32,
    /// 32-bit registers of one block, all its threads together.
    pub max_registers_per_block: u32,
    /// Static + dynamic shared memory a block gets without the opt-in.
    pub max_shared_per_block: u32,
    /// Static + dynamic shared memory a block may have with the opt-in
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
    pub max_shared_per_block_optin: u32,
}

impl GpuLimits {
    /// A100 (the smallest architecture dyntie builds cubins for).
    pub const SM80: GpuLimits = GpuLimits::new(80, 163 << 10);
    /// RTX 30xx/40xx, L4, L40 (sm_86, sm_89): they run the sm_80 cubins with
    /// less shared memory.
    pub const SM86: GpuLimits = GpuLimits::new(86, 99 << 10);
    /// H100, H200.
    pub const SM90: GpuLimits = GpuLimits::new(90, 227 << 10);

    const fn new(arch: u32, max_shared_per_block_optin: u32) -> GpuLimits {
        GpuLimits {
            arch,
            max_threads_per_block: 1024,
            max_registers_per_block: 64 << 10,
            max_shared_per_block: DEFAULT_SHARED_PER_BLOCK,
            max_shared_per_block_optin,
        }
    }
}

/// Shared memory per block without the opt-in, on every architecture since sm_70.
pub const DEFAULT_SHARED_PER_BLOCK: u32 = 48 << 10;

/// A kernel's resources as ptxas reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// 32-bit registers per thread.
    pub registers: u32,
    /// Static (`SMEM`/`__shared__`) shared memory per block, in bytes.
    pub static_shared: u32,
}

/// One kernel's line of the ptxas report for one architecture.
pub struct PtxasEntry {
    pub kernel: &'static str,
    pub arch: u32,
    pub resources: KernelResources,
}

// PTXAS_REPORT (every kernel of kernels/**/*.cu, kernels/tests/ included, for
// each cubin architecture) and PTXAS_REPORT_STATUS, written by build.rs.
include!(concat!(env!("OUT_DIR"), "/ptxas_report.rs"));

/// Whether this build has the ptxas report (NVRTC was found at build time).
pub fn ptxas_report_available() -> bool {
    !PTXAS_REPORT.is_empty()
}

/// One line for `doctor`: what the report covers, or why there is none (and
/// so which launch checks are not made).
pub fn ptxas_report_status() -> &'static str {
    PTXAS_REPORT_STATUS
}

/// The report for `kernel` as compiled for a GPU of compute capability
/// `arch`: that of the cubin the driver would load there (same major
/// version, highest not above `arch`).
pub fn ptxas_report(kernel: &str, arch: u32) -> Option<KernelResources> {
    PTXAS_REPORT
        .iter()
        .filter(|e| e.kernel == kernel && e.arch / 10 == arch / 10 && e.arch <= arch)
        .max_by_key(|e| e.arch)
        .map(|e| e.resources)
}

/// Registers a block of `threads` threads takes: the GPU allocates them per
/// warp, in units of 256.
pub fn registers_per_block(registers_per_thread: u32, threads: u32) -> u64 {
    let per_warp = (registers_per_thread as u64 * 32).next_multiple_of(256);
    threads.div_ceil(32) as u64 * per_warp
}

/// The checks `cuLaunchKernel` makes. `resources` is `None` where they are
/// not known (no ptxas report in this build): then registers are not
/// checked, and static shared memory only as the emulator places it.
/// `opt_in` is the dynamic shared memory the kernel was allowed with
/// [`check_opt_in`] (`Device::set_max_dynamic_shared`), if any.
pub fn check_launch(
    kernel: &str,
    dims: &LaunchDims,
    resources: Option<KernelResources>,
    opt_in: Option<u32>,
    gpu: &GpuLimits,
) -> Result<()> {
    let [bx, by, bz] = dims.block;
    let threads = bx as u64 * by as u64 * bz as u64;
    ensure!(
        (1..=gpu.max_threads_per_block as u64).contains(&threads)
            && bx <= 1024
            && by <= 1024
            && bz <= 64,
        "kernel {kernel}: block ({bx},{by},{bz}) has {threads} threads; it must have 1 to {} \
         (x and y at most 1024, z at most 64): on a GPU the launch fails with \
         CUDA_ERROR_INVALID_VALUE",
        gpu.max_threads_per_block
    );
    let [gx, gy, gz] = dims.grid;
    ensure!(
        gx >= 1 && (1..=65535).contains(&gy) && (1..=65535).contains(&gz) && gx < 1 << 31,
        "kernel {kernel}: grid ({gx},{gy},{gz}) is empty or beyond CUDA's limits (x below 2^31, \
         y and z at most 65535): on a GPU the launch fails with CUDA_ERROR_INVALID_VALUE"
    );
    let static_shared = resources.map_or(0, |r| r.static_shared);
    if let Some(r) = resources {
        let need = registers_per_block(r.registers, threads as u32);
        ensure!(
            need <= gpu.max_registers_per_block as u64,
            "kernel {kernel}: {} registers per thread (ptxas) x {threads} threads take {need} \
             registers per block (allocated per warp, in units of 256), more than the {} of \
             sm_{}: on a GPU the launch fails with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (too many \
             resources requested for launch); launch fewer threads per block or bound the \
             kernel's registers with __launch_bounds__",
            r.registers,
            gpu.max_registers_per_block,
            gpu.arch
        );
    }
    let dynamic = dims.shared_bytes;
    match opt_in {
        None => ensure!(
            static_shared as u64 + dynamic as u64 <= gpu.max_shared_per_block as u64,
            "kernel {kernel}: {static_shared} bytes of static + {dynamic} of dynamic shared memory \
             per block is more than the {} a block gets without the opt-in \
             (Device::set_max_dynamic_shared, i.e. cuFuncSetAttribute \
             CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES): on a GPU the launch fails with \
             CUDA_ERROR_INVALID_VALUE",
            gpu.max_shared_per_block
        ),
        Some(allowed) => ensure!(
            dynamic <= allowed,
            "kernel {kernel}: {dynamic} bytes of dynamic shared memory per block is more than the \
             {allowed} it opted in to: on a GPU the launch fails with CUDA_ERROR_INVALID_VALUE"
        ),
    }
    Ok(())
}

/// The check `cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)`
/// makes: the kernel's static shared memory plus `bytes` must fit in what a
/// block may have on this architecture.
pub fn check_opt_in(
    kernel: &str,
    bytes: u32,
    resources: Option<KernelResources>,
    gpu: &GpuLimits,
) -> Result<()> {
    let static_shared = resources.map_or(0, |r| r.static_shared);
    ensure!(
        static_shared as u64 + bytes as u64 <= gpu.max_shared_per_block_optin as u64,
        "kernel {kernel}: {bytes} bytes of dynamic + {static_shared} of static shared memory per \
         block is more than the {} a block may have on sm_{}, even with the opt-in: on a GPU \
         cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) fails with \
         CUDA_ERROR_INVALID_VALUE",
        gpu.max_shared_per_block_optin,
        gpu.arch
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(block: u32, shared_bytes: u32) -> LaunchDims {
        LaunchDims {
            grid: [4, 1, 1],
            block: [block, 1, 1],
            shared_bytes,
        }
    }

    #[test]
    fn registers_are_allocated_per_warp_in_units_of_256() {
        assert_eq!(registers_per_block(64, 1024), 65536);
        // 63 registers round up to 64 per thread (2016 -> 2048 per warp).
        assert_eq!(registers_per_block(63, 1024), 65536);
        assert_eq!(registers_per_block(65, 1024), 32 * 2304);
        // A partial warp takes a whole warp's registers.
        assert_eq!(registers_per_block(32, 33), 2 * 1024);
    }

    #[test]
    fn a_block_that_needs_too_many_registers_is_refused() {
        let r = |registers| {
            Some(KernelResources {
                registers,
                static_shared: 0,
            })
        };
        let gpu = GpuLimits::SM90;
        assert!(check_launch("k", &dims(1024, 0), r(64), None, &gpu).is_ok());
        let err = check_launch("k", &dims(1024, 0), r(65), None, &gpu).unwrap_err();
        assert!(
            err.to_string()
                .contains("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
            "{err}"
        );
        assert!(check_launch("k", &dims(512, 0), r(128), None, &gpu).is_ok());
    }

    #[test]
    fn shared_memory_over_48_kib_needs_the_opt_in() {
        let r = Some(KernelResources {
            registers: 32,
            static_shared: 1024,
        });
        let gpu = GpuLimits::SM80;
        assert!(check_launch("k", &dims(128, (48 << 10) - 1024), r, None, &gpu).is_ok());
        let err = check_launch("k", &dims(128, (48 << 10) - 1023), r, None, &gpu).unwrap_err();
        assert!(err.to_string().contains("without the opt-in"), "{err}");
        assert!(check_launch("k", &dims(128, 100 << 10), r, Some(100 << 10), &gpu).is_ok());
        assert!(check_launch("k", &dims(128, 101 << 10), r, Some(100 << 10), &gpu).is_err());
        // The opt-in itself stops at the architecture's maximum, static included.
        assert!(check_opt_in("k", (163 << 10) - 1024, r, &gpu).is_ok());
        assert!(check_opt_in("k", (163 << 10) - 1023, r, &gpu).is_err());
        assert!(check_opt_in("k", 200 << 10, r, &GpuLimits::SM90).is_ok());
    }

    #[test]
    fn the_report_is_looked_up_by_the_cubin_a_gpu_would_load() {
        if !ptxas_report_available() {
            eprintln!("skipped: {}", ptxas_report_status());
            return;
        }
        let sm80 = ptxas_report("gemm_simt_f32", 80).expect("gemm_simt_f32 in the sm_80 report");
        assert_eq!(ptxas_report("gemm_simt_f32", 86), Some(sm80));
        assert!(ptxas_report("gemm_simt_f32", 90).is_some());
        assert_eq!(ptxas_report("gemm_simt_f32", 75), None);
        assert_eq!(ptxas_report("no_such_kernel", 90), None);
    }
}
