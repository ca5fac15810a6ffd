//! `EmuDevice`: host memory plus the CPU kernel emulator (kernels/emu/).
//!
//! Kernels run synchronously inside `launch`, so every launch error comes
//! back from the launch itself. The knobs ([`EmuConfig`]) belong to the
//! device, not to the process: tests running in parallel threads each make
//! their own device.

use super::{Device, LaunchDims};
use crate::mem::{HostMemory, Memory};
use anyhow::{bail, Result};
use std::ffi::{c_char, c_uint, c_void, CStr, CString};
use std::sync::Arc;

/// The order in which the emulator resumes a block's threads. A kernel that
/// lacks a `__syncthreads` gives different results under different orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeOrder {
    Forward,
    Reverse,
    /// A fresh permutation, from this seed, at every scheduling round.
    Random(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmuConfig {
    /// Worker threads running blocks (the launching thread is one of them).
    pub workers: usize,
    pub order: ResumeOrder,
    /// Stack of each emulated CUDA thread; a guard page catches overflows.
    pub stack_bytes: usize,
    /// Let threads return before a `__syncthreads` the others still reach
    /// (they count as arrived, as on Volta and later). CUDA calls this
    /// undefined, so by default it is reported as an error.
    pub allow_early_return: bool,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            order: ResumeOrder::Forward,
            stack_bytes: 64 << 10,
            allow_early_return: false,
        }
    }
}

#[repr(C)]
struct RawConfig {
    workers: c_uint,
    order: c_uint,
    seed: u64,
    stack_bytes: u64,
    allow_early_return: c_uint,
}

extern "C" {
    fn emu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        smem_bytes: u64,
        args: *mut *mut c_void,
        cfg: *const RawConfig,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn emu_kernel_count() -> c_uint;
    fn emu_kernel_name(i: c_uint) -> *const c_char;
}

/// Names of every kernel compiled into the emulator.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: the registry is static; names are NUL-terminated literals.
    unsafe {
        (0..emu_kernel_count())
            .map(|i| {
                CStr::from_ptr(emu_kernel_name(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

pub struct EmuDevice {
    memory: Arc<HostMemory>,
    config: EmuConfig,
}

impl EmuDevice {
    pub fn new() -> Self {
        Self::with_config(EmuConfig::default())
    }
    pub fn with_config(config: EmuConfig) -> Self {
        EmuDevice {
            memory: Arc::new(HostMemory::new()),
            config,
        }
    }
    pub fn config(&self) -> EmuConfig {
        self.config
    }
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl Device for EmuDevice {
    fn name(&self) -> &str {
        "emu"
    }
    fn memory(&self) -> Arc<dyn Memory> {
        self.memory.clone()
    }
    fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: `dst` is host memory from this device's allocator, valid for
        // `src.len()` bytes (the caller's View says so).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: both are host allocations of at least `bytes`; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        // SAFETY: host allocation of at least `bytes`.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        dims: LaunchDims,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let name = CString::new(kernel)?;
        let (order, seed) = match self.config.order {
            ResumeOrder::Forward => (0, 0),
            ResumeOrder::Reverse => (1, 0),
            ResumeOrder::Random(seed) => (2, seed),
        };
        let cfg = RawConfig {
            workers: self.config.workers.max(1) as c_uint,
            order,
            seed,
            stack_bytes: self.config.stack_bytes as u64,
            allow_early_return: self.config.allow_early_return as c_uint,
        };
        let mut err = vec![0 as c_char; 2048];
        let rc = emu_launch(
            name.as_ptr(),
            dims.grid.as_ptr(),
            dims.block.as_ptr(),
            dims.shared_bytes as u64,
            args.as_mut_ptr(),
            &cfg,
            err.as_mut_ptr(),
            err.len(),
        );
        if rc != 0 {
            bail!("{}", CStr::from_ptr(err.as_ptr()).to_string_lossy());
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn mem_info(&self) -> Result<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/meminfo")?;
        let field = |key: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(key))?;
            Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
        };
        match (field("MemAvailable:"), field("MemTotal:")) {
            (Some(free), Some(total)) => Ok((free, total)),
            _ => bail!("could not read MemAvailable/MemTotal from /proc/meminfo"),
        }
    }
}
