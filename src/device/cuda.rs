//! `CudaDevice`: the kernels on an NVIDIA GPU through the driver API
//! (`cudarc`, loaded dynamically, so nothing links against CUDA).
//!
//! Modules come from the PTX and cubins that build.rs embedded; kernels are
//! looked up by name on first use. All work goes to the legacy default
//! stream, so copies and launches run in program order.

use super::limits::{self, GpuLimits, KernelResources};
use super::{Device, LaunchDims};
use crate::backend::{MemStats, Memory};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

/// The kernels of one `kernels/*.cu` file, compiled by build.rs.
pub struct GpuModule {
    pub name: &'static str,
    /// (virtual architecture, e.g. 80 for compute_80, PTX text)
    pub ptx: &'static [(u32, &'static str)],
    /// (real architecture, e.g. 90 for sm_90, cubin image)
    pub cubins: &'static [(u32, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/gpu_kernels.rs"));

/// Whether the CUDA driver library (libcuda) can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    unsafe { sys::is_culib_present() }
}

/// What build.rs produced: the NVRTC version and targets, or why there are
/// no GPU kernels in this binary.
pub fn gpu_build_info() -> &'static str {
    GPU_BUILD
}

const MIB: f64 = (1u64 << 20) as f64;

fn driver_err(what: &str, e: result::DriverError) -> anyhow::Error {
    let name = e
        .error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    anyhow!("{what}: {name}")
}

/// The device's memory: cuMemAlloc/cuMemFree in the device's context,
/// counted. It keeps the primary context alive as long as any `Buffer` does.
struct CudaMemory {
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
    stats: Mutex<MemStats>,
}

// SAFETY: a CUDA context may be used from any thread once made current there,
// which every method does first.
unsafe impl Send for CudaMemory {}
unsafe impl Sync for CudaMemory {}

impl CudaMemory {
    fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the lifetime of `self`.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| driver_err("cuCtxSetCurrent", e))
    }
}

impl Memory for CudaMemory {
    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // cuMemAlloc returns 256-byte aligned memory (at least), as Memory requires.
        // SAFETY: plain allocation in the current context.
        let ptr = match unsafe { result::malloc_sync(bytes.max(1)) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                bail!(
                    "out of GPU memory: asked for {:.1} MiB with {:.1} MiB free of {:.1} MiB; \
                     try a smaller --batch or --ctx (or more tying)",
                    bytes as f64 / MIB,
                    free as f64 / MIB,
                    total as f64 / MIB
                );
            }
            Err(e) => return Err(driver_err(&format!("cuMemAlloc of {bytes} bytes"), e)),
        };
        // Memory is zero-filled by contract.
        // SAFETY: `ptr` was just allocated with this size.
        unsafe { result::memset_d8_sync(ptr, 0, bytes) }
            .map_err(|e| driver_err("cuMemsetD8", e))?;
        self.stats.lock().unwrap().allocated(bytes);
        Ok(ptr)
    }

    fn free(&self, addr: u64, bytes: usize) {
        // Freeing cannot report an error through this interface; a failure
        // here means the context is already broken and the next call says so.
        if self.bind().is_ok() {
            // SAFETY: `addr` came from `alloc`.
            let _ = unsafe { result::free_sync(addr) };
        }
        self.stats.lock().unwrap().freed(bytes);
    }

    fn stats(&self) -> MemStats {
        *self.stats.lock().unwrap()
    }
}

impl Drop for CudaMemory {
    fn drop(&mut self) {
        // SAFETY: retained in `CudaDevice::new`.
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

/// A kernel looked up in the loaded modules, with what the launch checks need.
#[derive(Clone, Copy)]
struct Function {
    handle: sys::CUfunction,
    /// Registers and static shared memory of the loaded code, from the driver.
    resources: KernelResources,
    /// Dynamic shared memory it opted in to (set_max_dynamic_shared).
    opt_in: Option<u32>,
}

struct Modules {
    modules: Vec<(&'static str, sys::CUmodule)>,
    functions: HashMap<String, Function>,
}

pub struct CudaDevice {
    memory: Arc<CudaMemory>,
    modules: Mutex<Modules>,
    description: String,
    /// This GPU's per-block limits, from the driver.
    limits: GpuLimits,
}

// SAFETY: see CudaMemory; module and function handles are plain handles valid
// in the (shared) primary context.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal`. Fails with a clear message when there is no CUDA
    /// driver, no GPU, or when this binary was built without GPU kernels.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        // Touching the driver API without libcuda would panic inside cudarc.
        if !driver_present() {
            bail!(
                "no CUDA driver found (libcuda.so could not be loaded): this machine has no usable \
                 NVIDIA GPU; use --backend cpu (or emu)"
            );
        }
        if GPU_MODULES.is_empty() {
            bail!(
                "this binary was {GPU_BUILD}; run scripts/install-cuda-tools.sh (or set NVRTC_LIB) \
                 and rebuild"
            );
        }
        result::init().map_err(|e| driver_err("cuInit (is an NVIDIA GPU visible?)", e))?;
        let count = result::device::get_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        if ordinal >= count as usize {
            bail!("CUDA device {ordinal} requested but {count} GPU(s) are visible");
        }
        let dev = result::device::get(ordinal as i32).map_err(|e| driver_err("cuDeviceGet", e))?;
        // SAFETY: `dev` is a valid device; the context is released by CudaMemory.
        let ctx = unsafe { result::primary_ctx::retain(dev) }
            .map_err(|e| driver_err("cuDevicePrimaryCtxRetain", e))?;
        let memory = Arc::new(CudaMemory {
            ctx,
            dev,
            stats: Mutex::new(MemStats::default()),
        });
        memory.bind()?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))? as u32;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))? as u32;
        let arch = major * 10 + minor;
        let limit = |a| {
            attr(a)
                .map(|v| v as u32)
                .map_err(|e| driver_err("cuDeviceGetAttribute", e))
        };
        use sys::CUdevice_attribute as A;
        let limits = GpuLimits {
            arch,
            max_threads_per_block: limit(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            max_registers_per_block: limit(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK)?,
            max_shared_per_block: limit(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
            max_shared_per_block_optin: limit(
                A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?,
        };
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
        let mut modules = Vec::new();
        for m in GPU_MODULES {
            let module = load_module(m, arch)
                .with_context(|| format!("loading kernels/{}.cu on {name} (sm_{arch})", m.name))?;
            modules.push((m.name, module));
        }
        Ok(CudaDevice {
            memory,
            modules: Mutex::new(Modules {
                modules,
                functions: HashMap::new(),
            }),
            description: format!("{name} (sm_{arch}), kernels {GPU_BUILD}"),
            limits,
        })
    }

    /// This GPU's per-block launch limits.
    pub fn limits(&self) -> GpuLimits {
        self.limits
    }

    /// GPU name, compute capability and how the kernels were built.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn function(&self, kernel: &str) -> Result<Function> {
        let mut m = self.modules.lock().unwrap();
        if let Some(&f) = m.functions.get(kernel) {
            return Ok(f);
        }
        let cname = CString::new(kernel)?;
        for &(_, module) in &m.modules {
            // SAFETY: `module` is loaded and not unloaded before `self` drops.
            let Ok(handle) = (unsafe { result::module::get_function(module, cname.clone()) })
            else {
                continue;
            };
            let attr = |a| {
                // SAFETY: `handle` is a function of a loaded module.
                unsafe { result::function::get_function_attribute(handle, a) }
                    .map(|v| v as u32)
                    .map_err(|e| driver_err(&format!("cuFuncGetAttribute of {kernel}"), e))
            };
            use sys::CUfunction_attribute as A;
            let f = Function {
                handle,
                resources: KernelResources {
                    registers: attr(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
                    static_shared: attr(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
                },
                opt_in: None,
            };
            m.functions.insert(kernel.to_string(), f);
            return Ok(f);
        }
        bail!("no GPU kernel named `{kernel}` in the embedded modules")
    }
}

/// The best image for compute capability `arch`: the cubin for this major
/// version closest below it (binary compatible), else PTX to JIT, newest first.
fn load_module(m: &GpuModule, arch: u32) -> Result<sys::CUmodule> {
    let mut errors = Vec::new();
    let mut cubins: Vec<_> = m
        .cubins
        .iter()
        .filter(|(a, _)| a / 10 == arch / 10 && *a <= arch)
        .collect();
    cubins.sort_by_key(|(a, _)| std::cmp::Reverse(*a));
    for (a, image) in cubins {
        // include_bytes! gives no alignment guarantee; ELF images want 8 bytes.
        let mut aligned = vec![0u64; image.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..image.len()].copy_from_slice(image);
        // SAFETY: a cubin image produced by NVRTC.
        match unsafe { result::module::load_data(aligned.as_ptr() as *const c_void) } {
            Ok(module) => return Ok(module),
            Err(e) => errors.push(format!("sm_{a} cubin: {:?}", e)),
        }
    }
    let mut ptx: Vec<_> = m.ptx.iter().filter(|(a, _)| *a <= arch).collect();
    ptx.sort_by_key(|(a, _)| std::cmp::Reverse(*a));
    for (a, text) in ptx {
        let c = CString::new(*text)?;
        // SAFETY: NUL-terminated PTX text.
        match unsafe { result::module::load_data(c.as_ptr() as *const c_void) } {
            Ok(module) => return Ok(module),
            Err(e) => errors.push(format!(
                "compute_{a} PTX: {e:?} (a driver older than the NVRTC that wrote the PTX rejects it)"
            )),
        }
    }
    if errors.is_empty() {
        bail!("no cubin or PTX built for this GPU's architecture");
    }
    bail!("no image loaded: {}", errors.join("; "))
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.memory.bind().is_ok() {
            for &(_, module) in &self.modules.lock().unwrap().modules {
                // SAFETY: loaded in `new`, unloaded once.
                let _ = unsafe { result::module::unload(module) };
            }
        }
    }
}

impl Device for CudaDevice {
    fn name(&self) -> &str {
        "cuda"
    }
    fn memory(&self) -> Arc<dyn Memory> {
        self.memory.clone()
    }
    fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: `dst` is a device allocation of at least `src.len()` bytes.
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(|e| driver_err("copy to GPU", e))
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: `src` is a device allocation of at least `dst.len()` bytes.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(|e| driver_err("copy from GPU (an earlier kernel may have failed)", e))
    }
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: both are device allocations of at least `bytes`.
        unsafe { result::memcpy_dtod_sync(dst, src, bytes) }
            .map_err(|e| driver_err("device-to-device copy", e))
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: device allocation of at least `bytes`.
        unsafe { result::memset_d8_sync(dst, byte, bytes) }.map_err(|e| driver_err("cuMemsetD8", e))
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        dims: LaunchDims,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.memory.bind()?;
        let f = self.function(kernel)?;
        limits::check_launch(kernel, &dims, Some(f.resources), f.opt_in, &self.limits)?;
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        result::launch_kernel(
            f.handle,
            (gx, gy, gz),
            (bx, by, bz),
            dims.shared_bytes,
            std::ptr::null_mut(),
            args,
        )
        .map_err(|e| {
            driver_err(
                &format!(
                    "launching kernel {kernel} (grid {:?}, block {:?})",
                    dims.grid, dims.block
                ),
                e,
            )
        })
    }
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()> {
        self.memory.bind()?;
        let f = self.function(kernel)?;
        if f.opt_in.is_some_and(|b| b >= bytes) {
            return Ok(());
        }
        limits::check_opt_in(kernel, bytes, Some(f.resources), &self.limits)?;
        // SAFETY: a function of a loaded module; the value was checked above.
        unsafe {
            result::function::set_function_attribute(
                f.handle,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(|e| {
            driver_err(
                &format!("opting {kernel} in to {bytes} bytes of shared memory"),
                e,
            )
        })?;
        let mut m = self.modules.lock().unwrap();
        m.functions.get_mut(kernel).expect("looked up above").opt_in = Some(bytes);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.memory.bind()?;
        result::ctx::synchronize()
            .map_err(|e| driver_err("a GPU kernel failed (found at synchronize)", e))
    }
    fn mem_info(&self) -> Result<(u64, u64)> {
        self.memory.bind()?;
        let (free, total) = result::mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))?;
        Ok((free as u64, total as u64))
    }
}
