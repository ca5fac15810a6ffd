//! Devices: raw memory, copies and kernel launches, in byte addresses.
//!
//! [`EmuDevice`] runs the kernels of `kernels/*.cu` on the CPU under the
//! emulator (host memory); [`CudaDevice`] runs the same kernels on an NVIDIA
//! GPU through the driver API. `KernelBackend` is written once over
//! [`Device`] and serves both.

pub mod cuda;
pub mod emu;
pub mod limits;

pub use cuda::CudaDevice;
pub use emu::{EmuConfig, EmuDevice, ResumeOrder};
pub use limits::GpuLimits;

use crate::backend::{MemStats, Memory};
use anyhow::Result;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Instant;

/// Kernel launch geometry, as `cuLaunchKernel` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
}

pub trait Device: Send + Sync + 'static {
    /// Short name for logs: "emu", "cuda".
    fn name(&self) -> &str;
    /// The allocator, counting live and peak bytes; `Buffer`s hold it.
    fn memory(&self) -> Arc<dyn Memory>;
    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.memory().alloc(bytes)
    }
    fn free(&self, addr: u64, bytes: usize) {
        self.memory().free(addr, bytes)
    }
    fn mem_stats(&self) -> MemStats {
        self.memory().stats()
    }
    /// Copies host bytes to device address `dst`.
    fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Copies from device address `src` into host bytes (waits for prior work).
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()>;
    /// Launches the kernel `kernel` (an `extern "C" __global__` name).
    ///
    /// # Safety
    /// `args` holds one pointer per kernel parameter, each pointing to a value
    /// of exactly that parameter's type, and every device address passed must
    /// be valid for what the kernel does with it.
    unsafe fn launch(&self, kernel: &str, dims: LaunchDims, args: &mut [*mut c_void])
        -> Result<()>;
    /// Lets `kernel` be launched with up to `bytes` of dynamic shared memory
    /// (`cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)`).
    /// Without it a block gets [`limits::DEFAULT_SHARED_PER_BLOCK`] of shared
    /// memory, static and dynamic together, and a launch that needs more
    /// fails, on the GPU and under the emulator alike.
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()>;
    /// Waits for all queued work; reports errors of kernels that already ran.
    fn synchronize(&self) -> Result<()>;
    /// (free, total) bytes of device memory.
    fn mem_info(&self) -> Result<(u64, u64)>;
    /// Wall time of `work` in milliseconds, from a synchronized start to a
    /// synchronized end.
    fn time_ms(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let start = Instant::now();
        work()?;
        self.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}
