//! Everything that exists only for NVIDIA GPUs: devices, the compiled
//! kernels, launches, streams, and the kernel backend with its launchers.
//!
//! [`EmuDevice`] runs the kernels of `kernels/` on the CPU under the
//! emulator (in its own guarded memory); [`CudaDevice`] runs the same kernels
//! on an NVIDIA GPU through the driver API. [`KernelBackend`] is written once over
//! [`Device`] and serves both: it dispatches each op to its launcher in
//! `ops/<family>.rs`, which builds typed [`launch::Args`] and launches
//! kernels by family, op and dtype ([`module`]). Both devices check every
//! launch against what the GPU allows ([`limits`]: threads, registers and
//! shared memory from the ptxas report), so a launch the emulator accepts
//! does not fail on a GPU for lack of resources.
//!
//! Token and target uploads go through [`staging`]: pinned host buffers
//! copied on the compute stream, so queuing a step never waits for the GPU.
//!
//! The debug mode `DYNTIE_SYNC_LAUNCHES=1` (or `dyntie doctor
//! --sync-launches`) waits for every kernel as it is launched, so the first
//! one that fails is named with its op and shapes instead of surfacing at a
//! later copy.

pub mod backend;
pub mod device;
pub mod emu;
pub mod graph;
pub mod launch;
pub mod limits;
pub mod module;
pub mod ops;
pub mod params;
pub mod staging;
pub mod stream;

pub use backend::KernelBackend;
pub use device::{driver_present, CudaDevice, Device, Fence};
pub use emu::{EmuConfig, EmuDevice, ResumeOrder};
pub use launch::LaunchDims;
pub use limits::GpuLimits;
pub use module::gpu_build_info;
