//! `EmuDevice`: host memory plus the CPU kernel emulator (kernels/emu/).
//!
//! Kernels run synchronously inside `launch`, so every launch error comes
//! back from the launch itself. Queued copies from pinned staging memory
//! run at once too, but count as in flight until the host waits past them
//! (a fence, a synchronize, a readback): a staging buffer rewritten before
//! then is reported, as a GPU could have read the new bytes. The knobs ([`EmuConfig`]) belong to the
//! device, not to the process: tests running in parallel threads each make
//! their own device. Memory comes from kernels/emu/memory.cpp: every
//! allocation between guard pages and red zones, so out-of-bounds accesses
//! are reported (that file says what is and is not caught).

use super::device::Fence;
use super::limits::{self, GpuLimits, KernelResources};
use super::{Device, LaunchDims};
use crate::mem::{MemStats, Memory};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_uint, c_void, CStr, CString};
use std::sync::{Arc, Mutex};

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
    /// The GPU whose launch limits (threads, registers, shared memory) the
    /// emulator enforces; by default the smallest architecture dyntie builds for.
    pub gpu: GpuLimits,
    /// Check each launch against the kernel's registers and static shared
    /// memory from the ptxas report, when this build has one. `false` checks
    /// as a build without the CUDA tools does: registers not at all, static
    /// shared memory only as the emulator places it.
    pub ptxas_report: bool,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            order: ResumeOrder::Forward,
            stack_bytes: 64 << 10,
            allow_early_return: false,
            gpu: GpuLimits::SM80,
            ptxas_report: true,
        }
    }
}

/// kernels/emu/runtime.cpp: `Config`.
#[repr(C)]
struct RawConfig {
    workers: c_uint,
    order: c_uint,
    seed: u64,
    stack_bytes: u64,
    allow_early_return: c_uint,
    max_dynamic_shared: c_uint,
    shared_optin_limit: c_uint,
    arch: c_uint,
}

extern "C" {
    fn emu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        smem_bytes: u64,
        args: *mut *mut c_void,
        nargs: c_uint,
        cfg: *const RawConfig,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn emu_kernel_count() -> c_uint;
    fn emu_kernel_name(i: c_uint) -> *const c_char;
    fn emu_alloc(bytes: usize) -> u64;
    fn emu_free(addr: u64);
    fn emu_check_range(addr: u64, bytes: usize, err: *mut c_char, err_len: usize) -> i32;
}

/// The emulator's allocator (kernels/emu/memory.cpp), counted.
#[derive(Default)]
struct EmuMemory {
    stats: Mutex<MemStats>,
}

impl Memory for EmuMemory {
    fn alloc(&self, bytes: usize) -> Result<u64> {
        // SAFETY: plain allocation; memory.cpp keeps its own registry.
        let addr = unsafe { emu_alloc(bytes) };
        if addr == 0 {
            bail!(
                "out of host memory: could not map {:.1} MiB for the emulator",
                bytes as f64 / (1 << 20) as f64
            );
        }
        self.stats.lock().unwrap().allocated(bytes);
        Ok(addr)
    }

    fn free(&self, addr: u64, bytes: usize) {
        // SAFETY: `addr` came from `alloc`; memory.cpp ignores (and reports) any other.
        unsafe { emu_free(addr) };
        self.stats.lock().unwrap().freed(bytes);
    }

    fn stats(&self) -> MemStats {
        *self.stats.lock().unwrap()
    }
}

/// Fails unless `[addr, addr + bytes)` lies inside one live allocation: a
/// copy out of bounds is an error, as on the GPU.
fn check_range(what: &str, addr: u64, bytes: usize) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let mut err = vec![0 as c_char; 512];
    // SAFETY: the registry lookup only reads; `err` has `err.len()` bytes.
    if unsafe { emu_check_range(addr, bytes, err.as_mut_ptr(), err.len()) } != 0 {
        // SAFETY: emu_check_range wrote a NUL-terminated message.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        bail!("emulator {what}: {msg}");
    }
    Ok(())
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

/// A copy from pinned memory that a GPU might still be running: the
/// emulator copies at once, but keeps the bytes it read until the host
/// waits past the copy, to catch a source rewritten in between.
struct QueuedCopy {
    /// Fences recorded before the copy was queued; a later one retires it.
    after: u64,
    src: u64,
    read: Vec<u8>,
}

/// The emulator's model of the queue between host and device: only what
/// the host waits for counts as run.
#[derive(Default)]
struct EmuQueue {
    copies: Vec<QueuedCopy>,
    fences_recorded: u64,
    /// Live pinned allocations: address and bytes.
    pinned: HashMap<u64, usize>,
}

impl EmuQueue {
    /// Retires the copies queued before fence `upto`, failing when one's
    /// source was rewritten while it was in flight.
    fn retire(&mut self, upto: u64) -> Result<()> {
        let (done, pending) = std::mem::take(&mut self.copies)
            .into_iter()
            .partition(|c| c.after < upto);
        self.copies = pending;
        for c in done {
            let (src, n) = (c.src as *const u8, c.read.len());
            // SAFETY: pinned memory is freed only after its copies retire
            // (`free_pinned` retires them first).
            if unsafe { std::slice::from_raw_parts(src, n) } != c.read.as_slice() {
                bail!(
                    "staging buffer {:#x} ({n} bytes) was rewritten before the copy that reads it \
                     had run: a GPU could have copied the new bytes; wait for the fence recorded \
                     after the copy before writing the buffer again",
                    c.src
                );
            }
        }
        Ok(())
    }
}

fn pinned_layout(bytes: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(bytes.max(1), crate::mem::HOST_ALIGN)
        .expect("a pinned allocation's size fits a layout")
}

pub struct EmuDevice {
    memory: Arc<EmuMemory>,
    config: EmuConfig,
    /// Dynamic shared memory each kernel opted in to (set_max_dynamic_shared).
    opt_ins: Mutex<HashMap<String, u32>>,
    queue: Mutex<EmuQueue>,
}

impl EmuDevice {
    pub fn new() -> Self {
        Self::with_config(EmuConfig::default())
    }
    pub fn with_config(config: EmuConfig) -> Self {
        EmuDevice {
            memory: Arc::new(EmuMemory::default()),
            config,
            opt_ins: Mutex::new(HashMap::new()),
            queue: Mutex::new(EmuQueue::default()),
        }
    }
    pub fn config(&self) -> EmuConfig {
        self.config
    }
    /// The kernel's registers and static shared memory on the emulated GPU,
    /// if known.
    fn resources(&self, kernel: &str) -> Option<KernelResources> {
        self.config
            .ptxas_report
            .then(|| limits::ptxas_report(kernel, self.config.gpu.arch))
            .flatten()
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
        check_range("copy to the device", dst, src.len())?;
        // SAFETY: `dst` lies in a live emulator allocation with room for
        // `src.len()` bytes (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        // Waits for all queued work, as on a GPU (from pageable memory).
        self.synchronize()
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // Waits for all queued work, as on a GPU.
        self.synchronize()?;
        check_range("copy from the device", src, dst.len())?;
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        check_range("device-to-device copy (source)", src, bytes)?;
        check_range("device-to-device copy (destination)", dst, bytes)?;
        // SAFETY: both lie in live allocations (checked above); `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        check_range("memset", dst, bytes)?;
        // SAFETY: as above.
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
        let gpu = self.config.gpu;
        let opt_in = self.opt_ins.lock().unwrap().get(kernel).copied();
        limits::check_launch(kernel, &dims, self.resources(kernel), opt_in, &gpu)?;
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
            max_dynamic_shared: opt_in.unwrap_or(0),
            shared_optin_limit: gpu.max_shared_per_block_optin,
            arch: gpu.arch,
        };
        let mut err = vec![0 as c_char; 2048];
        let rc = emu_launch(
            name.as_ptr(),
            dims.grid.as_ptr(),
            dims.block.as_ptr(),
            dims.shared_bytes as u64,
            args.as_mut_ptr(),
            args.len() as c_uint,
            &cfg,
            err.as_mut_ptr(),
            err.len(),
        );
        if rc != 0 {
            bail!("{}", CStr::from_ptr(err.as_ptr()).to_string_lossy());
        }
        Ok(())
    }
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()> {
        let mut opt_ins = self.opt_ins.lock().unwrap();
        if opt_ins.get(kernel).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        if !kernel_names().iter().any(|k| k == kernel) {
            bail!("no kernel named `{kernel}` was compiled into the emulator");
        }
        let gpu = self.config.gpu;
        limits::check_opt_in(kernel, bytes, self.resources(kernel), &gpu)?;
        opt_ins.insert(kernel.to_string(), bytes);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.queue.lock().unwrap().retire(u64::MAX)
    }
    fn alloc_pinned(&self, bytes: usize) -> Result<u64> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(pinned_layout(bytes)) };
        if ptr.is_null() {
            bail!("out of host memory: could not allocate {bytes} bytes of staging memory");
        }
        self.queue.lock().unwrap().pinned.insert(ptr as u64, bytes);
        Ok(ptr as u64)
    }
    fn free_pinned(&self, addr: u64, _bytes: usize) {
        let mut queue = self.queue.lock().unwrap();
        // Whatever reads it has run by now (the caller's contract); its
        // copies are checked before the memory goes.
        let in_flight = queue.copies.iter().any(|c| c.src == addr);
        if in_flight && queue.retire(u64::MAX).is_err() {
            eprintln!("warning: staging buffer {addr:#x} was rewritten while a copy read it");
        }
        if let Some(bytes) = queue.pinned.remove(&addr) {
            // SAFETY: allocated in `alloc_pinned` with this size.
            unsafe { std::alloc::dealloc(addr as *mut u8, pinned_layout(bytes)) };
        }
    }
    unsafe fn copy_htod_async(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        let mut queue = self.queue.lock().unwrap();
        let inside = queue
            .pinned
            .iter()
            .any(|(&a, &n)| a <= src && src + bytes as u64 <= a + n as u64);
        if !inside {
            bail!("queued copy to the device: {src:#x} + {bytes} bytes is not pinned staging memory of this device");
        }
        check_range("queued copy to the device", dst, bytes)?;
        let read = std::slice::from_raw_parts(src as *const u8, bytes).to_vec();
        std::ptr::copy_nonoverlapping(read.as_ptr(), dst as *mut u8, bytes);
        let after = queue.fences_recorded;
        queue.copies.push(QueuedCopy { after, src, read });
        Ok(())
    }
    fn record_fence(&self) -> Result<Fence> {
        let mut queue = self.queue.lock().unwrap();
        queue.fences_recorded += 1;
        Ok(Fence(queue.fences_recorded))
    }
    fn wait_fence(&self, fence: Fence) -> Result<()> {
        self.queue.lock().unwrap().retire(fence.0)
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
