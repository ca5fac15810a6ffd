//! The [`Device`] trait, and [`CudaDevice`]: the kernels on an NVIDIA GPU
//! through the driver API (`cudarc`, loaded dynamically, so nothing links
//! against CUDA).
//!
//! A device speaks in byte addresses and `cuLaunchKernel`-style argument
//! lists, so the emulator ([`super::EmuDevice`]) and the driver are
//! interchangeable under one kernel backend. `CudaDevice` loads every module
//! build.rs embedded when it opens the GPU and resolves all their kernels
//! once, with the registers and static shared memory the driver reports for
//! each, so that every launch is checked against the GPU's limits
//! ([`super::limits`]) before the driver sees it. All its work goes to one
//! non-blocking compute stream ([`super::stream`]), so copies and launches
//! run in program order.

use super::launch::LaunchDims;
use super::limits::{self, GpuLimits, KernelResources};
use super::module::{GpuModule, GPU_BUILD, GPU_MODULES};
use super::stream::{driver_err, Event, Stream};
use crate::mem::{MemStats, Memory};
use anyhow::{bail, Context, Result};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub trait Device: Send + Sync + 'static {
    /// Short name for logs: "emu", "cuda".
    fn name(&self) -> &str;
    /// The allocator, counting live and peak bytes; `Buffer`s hold it.
    fn memory(&self) -> Arc<dyn Memory>;
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
    /// fails, on the GPU and under the emulator alike; more than the
    /// architecture allows even with it is refused here. The launcher
    /// ([`super::launch::Launcher`]) calls it before every launch with dynamic
    /// shared memory; a device skips kernels already allowed as much.
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()>;
    /// Waits for all queued work; reports errors of kernels that already ran.
    fn synchronize(&self) -> Result<()>;
    /// `bytes` of page-locked host memory, which the device reads while the
    /// host goes on ([`Device::copy_htod_async`]); on the emulator ordinary
    /// memory. Freed with [`Device::free_pinned`], not by a `Buffer`.
    fn alloc_pinned(&self, bytes: usize) -> Result<u64>;
    /// Frees what [`Device::alloc_pinned`] returned, once no queued copy
    /// reads it.
    fn free_pinned(&self, addr: u64, bytes: usize);
    /// Queues a copy of `bytes` from pinned host memory at `src` to device
    /// address `dst`, in order with the launches, and returns at once.
    ///
    /// # Safety
    /// `src` is this device's pinned memory holding `bytes` bytes, `dst` a
    /// device allocation with room for them, and the host leaves `src`
    /// unchanged until it has waited for a fence recorded after this call.
    unsafe fn copy_htod_async(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Marks the current end of the queue.
    fn record_fence(&self) -> Result<Fence>;
    /// Waits until everything queued before `fence` has run.
    fn wait_fence(&self, fence: Fence) -> Result<()>;
    /// (free, total) bytes of device memory.
    fn mem_info(&self) -> Result<(u64, u64)>;
    /// Whether the device captures queued work into a graph of its own
    /// ([`Device::begin_capture`]). The emulator does not: the kernel
    /// backend replays its recorded launch list there (`cuda::graph`).
    fn captures_graphs(&self) -> bool {
        false
    }
    /// Starts capturing: work queued from now on is recorded, not run.
    fn begin_capture(&self) -> Result<()> {
        bail!("the {} device does not capture graphs", self.name())
    }
    /// Ends the capture and makes it the graph [`Device::launch_graph`]
    /// launches, replacing the previous one.
    fn end_capture(&self) -> Result<()> {
        bail!("the {} device does not capture graphs", self.name())
    }
    /// Queues the captured graph.
    fn launch_graph(&self) -> Result<()> {
        bail!("the {} device does not capture graphs", self.name())
    }
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

/// A point in a device's queue ([`Device::record_fence`]); fences of one
/// device are numbered in the order they were recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence(pub u64);

/// Whether the CUDA driver library (libcuda) can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    unsafe { sys::is_culib_present() }
}

const MIB: f64 = (1u64 << 20) as f64;

/// The GPU's context, its compute stream and its memory: cuMemAlloc/cuMemFree
/// in the device's context, counted. It keeps the primary context alive as
/// long as any `Buffer` does.
struct CudaMemory {
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
    /// `None` only while the context is being set up and torn down.
    stream: Option<Stream>,
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

    fn stream(&self) -> &Stream {
        self.stream
            .as_ref()
            .expect("the stream lives as long as the context")
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
        // Memory is zero-filled by contract; on the stream, ahead of any
        // work that uses it.
        // SAFETY: `ptr` was just allocated with this size.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.stream().raw()) }
            .map_err(|e| driver_err("cuMemsetD8Async", e))?;
        self.stats.lock().unwrap().allocated(bytes);
        Ok(ptr)
    }

    fn free(&self, addr: u64, bytes: usize) {
        // Freeing cannot report an error through this interface; a failure
        // here means the context is already broken and the next call says so.
        // Work queued on the stream may still use the memory: wait for it.
        if self.bind().is_ok() && self.stream().synchronize().is_ok() {
            // SAFETY: `addr` came from `alloc`, and no queued work uses it.
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
        if self.bind().is_ok() {
            self.stream = None;
        }
        // SAFETY: retained in `CudaDevice::new`.
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

/// A kernel of the loaded modules, with what the launch checks need.
#[derive(Clone, Copy)]
struct Function {
    handle: sys::CUfunction,
    /// Registers and static shared memory of the loaded code, from the driver.
    resources: KernelResources,
}

pub struct CudaDevice {
    /// Declared before `memory`, so its events go before the context.
    fences: Mutex<Fences>,
    /// The step graph, once captured (and likewise dropped first).
    graph: Mutex<Option<Graph>>,
    memory: Arc<CudaMemory>,
    modules: Vec<sys::CUmodule>,
    /// Every kernel of every module, resolved when the device opens.
    functions: HashMap<&'static str, Function>,
    /// The dynamic shared memory each kernel has been allowed so far
    /// (set_max_dynamic_shared).
    shared_opt_in: Mutex<HashMap<&'static str, u32>>,
    /// This GPU's per-block limits, from the driver.
    limits: GpuLimits,
    description: String,
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
        let mut memory = CudaMemory {
            ctx,
            dev,
            stream: None,
            stats: Mutex::new(MemStats::default()),
        };
        memory.bind()?;
        memory.stream = Some(Stream::new()?);
        let memory = Arc::new(memory);
        let attr = |a| {
            // SAFETY: `dev` is a valid device.
            unsafe { result::device::get_attribute(dev, a) }
                .map(|v| v as u32)
                .map_err(|e| driver_err("cuDeviceGetAttribute", e))
        };
        use sys::CUdevice_attribute as A;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let arch = major * 10 + minor;
        let limits = GpuLimits {
            arch,
            max_threads_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            max_registers_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK)?,
            max_shared_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
            max_shared_per_block_optin: attr(
                A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?,
        };
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for m in GPU_MODULES {
            let module = load_module(m, arch)
                .with_context(|| format!("loading kernels/{}.cu on {name} (sm_{arch})", m.name))?;
            modules.push(module);
            for &kernel in m.kernels {
                let cname = CString::new(kernel)?;
                // SAFETY: `module` is loaded and not unloaded before `self` drops.
                let handle =
                    unsafe { result::module::get_function(module, cname) }.map_err(|e| {
                        driver_err(&format!("kernel {kernel} in kernels/{}.cu", m.name), e)
                    })?;
                let attr = |a| {
                    // SAFETY: `handle` is a function of a loaded module.
                    unsafe { result::function::get_function_attribute(handle, a) }
                        .map(|v| v as u32)
                        .map_err(|e| driver_err(&format!("cuFuncGetAttribute of {kernel}"), e))
                };
                use sys::CUfunction_attribute as F;
                let resources = KernelResources {
                    registers: attr(F::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
                    static_shared: attr(F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
                };
                functions.insert(kernel, Function { handle, resources });
            }
        }
        Ok(CudaDevice {
            fences: Mutex::new(Fences::default()),
            graph: Mutex::new(None),
            memory,
            modules,
            functions,
            shared_opt_in: Mutex::new(HashMap::new()),
            limits,
            description: format!("{name} (sm_{arch}), kernels {GPU_BUILD}"),
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

    fn stream(&self) -> &Stream {
        self.memory.stream()
    }

    /// Makes this GPU's context current on the calling thread and returns
    /// its compute stream, for a library that queues work on it (NCCL).
    pub(crate) fn stream_for_libraries(&self) -> Result<sys::CUstream> {
        self.memory.bind()?;
        Ok(self.stream().raw())
    }

    fn function(&self, kernel: &str) -> Result<(&'static str, Function)> {
        match self.functions.get_key_value(kernel) {
            Some((&name, &f)) => Ok((name, f)),
            None => bail!("no GPU kernel named `{kernel}` in the embedded modules"),
        }
    }
}

/// An instantiated CUDA graph, destroyed on drop.
struct Graph {
    exec: sys::CUgraphExec,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: instantiated in `end_capture`, destroyed once.
        let _ = unsafe { sys::cuGraphExecDestroy(self.exec) };
    }
}

/// The events behind the recorded fences not yet waited for, oldest first,
/// and retired ones kept for reuse.
#[derive(Default)]
struct Fences {
    pending: std::collections::VecDeque<(Fence, Event)>,
    spare: Vec<Event>,
    recorded: u64,
}

impl Fences {
    /// Retires every fence up to `last` (the stream runs in order).
    fn retire_up_to(&mut self, last: Fence) {
        while self.pending.front().is_some_and(|(f, _)| *f <= last) {
            let (_, event) = self.pending.pop_front().expect("checked above");
            self.spare.push(event);
        }
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
            let _ = self.stream().synchronize();
            for &module in &self.modules {
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
        // SAFETY: `dst` is a device allocation of at least `src.len()` bytes;
        // the stream is synchronized before `src`'s borrow ends.
        unsafe { result::memcpy_htod_async(dst, src, self.stream().raw()) }
            .map_err(|e| driver_err("copy to GPU", e))?;
        self.stream().synchronize()
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: `src` is a device allocation of at least `dst.len()` bytes;
        // the stream is synchronized before `dst` is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream().raw()) }
            .map_err(|e| driver_err("copy from GPU (an earlier kernel may have failed)", e))?;
        self.stream().synchronize()
    }
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: both are device allocations of at least `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream().raw()) }
            .map_err(|e| driver_err("device-to-device copy", e))
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: device allocation of at least `bytes`.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream().raw()) }
            .map_err(|e| driver_err("cuMemsetD8Async", e))
    }
    unsafe fn launch(
        &self,
        kernel: &str,
        dims: LaunchDims,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.memory.bind()?;
        let (name, f) = self.function(kernel)?;
        let opt_in = self.shared_opt_in.lock().unwrap().get(name).copied();
        limits::check_launch(kernel, &dims, Some(f.resources), opt_in, &self.limits)?;
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        result::launch_kernel(
            f.handle,
            (gx, gy, gz),
            (bx, by, bz),
            dims.shared_bytes,
            self.stream().raw(),
            args,
        )
        .map_err(|e| driver_err("cuLaunchKernel", e))
    }
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()> {
        let (name, f) = self.function(kernel)?;
        let mut allowed = self.shared_opt_in.lock().unwrap();
        if allowed.get(name).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        limits::check_opt_in(kernel, bytes, Some(f.resources), &self.limits)?;
        self.memory.bind()?;
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
        allowed.insert(name, bytes);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.memory.bind()?;
        self.stream().synchronize()?;
        let mut fences = self.fences.lock().unwrap();
        let last = Fence(fences.recorded);
        fences.retire_up_to(last);
        Ok(())
    }
    fn alloc_pinned(&self, bytes: usize) -> Result<u64> {
        self.memory.bind()?;
        // SAFETY: plain page-locked allocation in the current context.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }.map_err(|e| {
            driver_err(
                &format!("cuMemHostAlloc of {bytes} bytes of pinned host memory"),
                e,
            )
        })?;
        Ok(ptr as u64)
    }
    fn free_pinned(&self, addr: u64, _bytes: usize) {
        if self.memory.bind().is_ok() {
            // SAFETY: `addr` came from `alloc_pinned`; no queued copy reads it.
            let _ = unsafe { result::free_host(addr as *mut c_void) };
        }
    }
    unsafe fn copy_htod_async(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.memory.bind()?;
        // SAFETY: the caller's contract: `src` is pinned memory of `bytes`
        // bytes that stays unchanged until a later fence is waited for.
        let src = std::slice::from_raw_parts(src as *const u8, bytes);
        result::memcpy_htod_async(dst, src, self.stream().raw())
            .map_err(|e| driver_err("queued copy to GPU", e))
    }
    fn record_fence(&self) -> Result<Fence> {
        self.memory.bind()?;
        let mut fences = self.fences.lock().unwrap();
        let event = match fences.spare.pop() {
            Some(e) => e,
            None => Event::fence()?,
        };
        event.record(self.stream())?;
        fences.recorded += 1;
        let fence = Fence(fences.recorded);
        fences.pending.push_back((fence, event));
        Ok(fence)
    }
    fn wait_fence(&self, fence: Fence) -> Result<()> {
        self.memory.bind()?;
        let mut fences = self.fences.lock().unwrap();
        // A fence no longer pending has been waited for already.
        if let Some((_, event)) = fences.pending.iter().find(|(f, _)| *f == fence) {
            event.wait()?;
        }
        fences.retire_up_to(fence);
        Ok(())
    }
    fn mem_info(&self) -> Result<(u64, u64)> {
        self.memory.bind()?;
        let (free, total) = result::mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))?;
        Ok((free as u64, total as u64))
    }
    fn captures_graphs(&self) -> bool {
        true
    }
    fn begin_capture(&self) -> Result<()> {
        self.memory.bind()?;
        // Thread-local: only a wait on this thread (which the kernel
        // backend refuses while capturing anyway) breaks the capture.
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        // SAFETY: the compute stream of the current context.
        unsafe { sys::cuStreamBeginCapture_v2(self.stream().raw(), mode) }
            .result()
            .map_err(|e| driver_err("cuStreamBeginCapture", e))
    }
    fn end_capture(&self) -> Result<()> {
        self.memory.bind()?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: the stream is capturing (begin_capture).
        unsafe { sys::cuStreamEndCapture(self.stream().raw(), &mut graph) }
            .result()
            .map_err(|e| driver_err("cuStreamEndCapture (the captured step was invalidated)", e))?;
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: `graph` was just captured; it is destroyed once
        // instantiated (the executable graph keeps what it needs).
        let instantiated = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }
            .result()
            .map_err(|e| driver_err("cuGraphInstantiate", e));
        // SAFETY: as above.
        let _ = unsafe { sys::cuGraphDestroy(graph) };
        instantiated?;
        *self.graph.lock().unwrap() = Some(Graph { exec });
        Ok(())
    }
    fn launch_graph(&self) -> Result<()> {
        self.memory.bind()?;
        let graph = self.graph.lock().unwrap();
        let Some(g) = graph.as_ref() else {
            bail!("no captured graph to launch");
        };
        // SAFETY: an instantiated graph of this context, on its stream.
        unsafe { sys::cuGraphLaunch(g.exec, self.stream().raw()) }
            .result()
            .map_err(|e| driver_err("cuGraphLaunch", e))
    }
    /// Timed with events on the compute stream.
    fn time_ms(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.memory.bind()?;
        let (start, end) = (Event::new()?, Event::new()?);
        self.synchronize()?;
        start.record(self.stream())?;
        work()?;
        end.record(self.stream())?;
        end.elapsed_ms_since(&start)
    }
}
