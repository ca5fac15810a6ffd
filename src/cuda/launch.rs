//! Launching a kernel: geometry, typed arguments checked against the
//! kernel's C signature, the shared-memory opt-in, and the synchronous debug
//! mode. What a GPU allows a launch (threads, registers, shared memory) is
//! checked by both devices, in [`super::limits`].
//!
//! A launcher (`cuda/ops/<family>.rs`) writes each kernel's arguments once,
//! with [`Args`]: `.ptr(view)`, `.u32(n)`, `.params(&gemm)`. Before the
//! launch, [`Launcher::launch`] compares what was passed with the parameter
//! list build.rs read from the kernel's `extern "C" __global__` declaration
//! (count, scalar types, the element type behind each pointer, struct
//! names), so a launcher and its kernel cannot silently disagree; structs
//! that cross by value come from `kernels/include/params.h` (see
//! `cuda::params`).

use super::device::Device;
use super::graph::{Handled, StepGraph};
use super::module::{signature, KernelId, ParamType};
use super::params::{ELEMENTWISE_BLOCK, MAX_GRID_1D};
use crate::mem::{DType, View};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::ffi::c_void;
use std::sync::Mutex;

/// Kernel launch geometry, as `cuLaunchKernel` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// A 1-D grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchDims {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// Blocks for `n` elements, one per thread, capped at [`MAX_GRID_1D`].
pub fn grid_1d(n: u64, block: u32) -> u32 {
    n.div_ceil(block as u64).clamp(1, MAX_GRID_1D as u64) as u32
}

/// `value` as a kernel's `u32` parameter, or an error naming it.
pub fn to_u32(what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).with_context(|| format!("{what} = {value} does not fit in 32 bits"))
}

/// `value` as a kernel's `int` parameter, or an error naming it.
pub fn to_i32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value)
        .with_context(|| format!("{what} = {value} does not fit the kernels' 32-bit sizes"))
}

/// A struct passed to a kernel by value, with its C name (checked against
/// the kernel's parameter type).
pub trait KernelParams: bytemuck::NoUninit {
    const C_NAME: &'static str;
}

const MAX_ARGS: usize = 24;
const MAX_WORDS: usize = 64;

/// The arguments of one launch, built in the kernel's parameter order. Each
/// value is stored in 8-byte-aligned words (no allocation); `cuLaunchKernel`
/// gets a pointer to each.
#[derive(Clone)]
pub struct Args {
    words: [u64; MAX_WORDS],
    used: usize,
    /// (word offset, what was passed; `Ptr(None)` is a null pointer)
    slots: [(usize, ParamType); MAX_ARGS],
    count: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self::new()
    }
}

impl Args {
    pub fn new() -> Self {
        Args {
            words: [0; MAX_WORDS],
            used: 0,
            slots: [(0, ParamType::U32); MAX_ARGS],
            count: 0,
        }
    }

    fn push(mut self, bytes: &[u8], passed: ParamType) -> Self {
        let words = bytes.len().div_ceil(8);
        assert!(
            self.count < MAX_ARGS && self.used + words <= MAX_WORDS,
            "more kernel arguments than Args holds"
        );
        bytemuck::cast_slice_mut::<u64, u8>(&mut self.words[self.used..self.used + words])
            [..bytes.len()]
            .copy_from_slice(bytes);
        self.slots[self.count] = (self.used, passed);
        self.count += 1;
        self.used += words;
        self
    }

    /// A view's address, for a `T*` parameter whose `T` is the view's dtype.
    pub fn ptr(self, view: View) -> Self {
        self.push(&view.addr.to_ne_bytes(), ParamType::Ptr(Some(view.dtype)))
    }

    /// An optional view: null for `None` (the kernel skips that operand).
    pub fn opt(self, view: Option<View>) -> Self {
        match view {
            Some(v) => self.ptr(v),
            None => self.push(&0u64.to_ne_bytes(), ParamType::Ptr(None)),
        }
    }

    pub fn f32(self, value: f32) -> Self {
        self.push(&value.to_ne_bytes(), ParamType::F32)
    }

    pub fn u32(self, value: u32) -> Self {
        self.push(&value.to_ne_bytes(), ParamType::U32)
    }

    pub fn u64(self, value: u64) -> Self {
        self.push(&value.to_ne_bytes(), ParamType::U64)
    }

    pub fn i32(self, value: i32) -> Self {
        self.push(&value.to_ne_bytes(), ParamType::I32)
    }

    /// A struct passed by value.
    pub fn params<P: KernelParams>(self, params: &P) -> Self {
        self.push(bytemuck::bytes_of(params), ParamType::Struct(P::C_NAME))
    }

    /// Fails unless the arguments match `kernel`'s C parameters.
    fn check(&self, kernel: &str) -> Result<()> {
        let Some(params) = signature(kernel) else {
            bail!("no kernel named {kernel} in kernels/");
        };
        ensure!(
            params.len() == self.count,
            "kernel {kernel} takes {} parameters but its launcher passed {}",
            params.len(),
            self.count
        );
        for (i, (p, &(_, passed))) in params.iter().zip(&self.slots).enumerate() {
            // A null pointer fits any pointer parameter; a view only one
            // whose pointee is the view's dtype.
            let ok = match (p.ty, passed) {
                (ParamType::Ptr(want), ParamType::Ptr(got)) => got.is_none() || got == want,
                (want, got) => want == got,
            };
            ensure!(
                ok,
                "kernel {kernel}: parameter {i} `{}` is `{}` but its launcher passed {passed:?}",
                p.name,
                p.c_type
            );
        }
        Ok(())
    }

    /// The number of arguments.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The same arguments, word for word (a recorded launch replays only
    /// when the host would launch it with exactly these).
    pub(crate) fn same_as(&self, other: &Args) -> bool {
        self.count == other.count
            && self.words[..self.used] == other.words[..other.used]
            && self.slots[..self.count] == other.slots[..other.count]
    }

    /// One pointer per argument, as `cuLaunchKernel` takes them.
    pub(crate) fn pointers(&mut self) -> [*mut c_void; MAX_ARGS] {
        let mut ptrs = [std::ptr::null_mut(); MAX_ARGS];
        let base = self.words.as_mut_ptr();
        for (p, &(word, _)) in ptrs.iter_mut().zip(&self.slots[..self.count]) {
            // SAFETY: `word < used <= MAX_WORDS`, inside `words`.
            *p = unsafe { base.add(word) } as *mut c_void;
        }
        ptrs
    }
}

/// Launches the kernels of one op on a device: checks every launch's
/// arguments, opts in to large shared memory, and in the debug mode waits
/// for each kernel. Every error names the kernel and its geometry (and the
/// kernel backend adds the op and its shape).
pub struct Launcher<'a> {
    device: &'a dyn Device,
    sync: bool,
    /// The step graph that records or checks each launch, if any.
    graph: Option<&'a Mutex<StepGraph>>,
}

impl<'a> Launcher<'a> {
    pub fn new(device: &'a dyn Device, sync: bool) -> Self {
        Launcher {
            device,
            sync,
            graph: None,
        }
    }

    /// A launcher whose launches go through `graph` ([`StepGraph::on_launch`]).
    pub fn with_graph(device: &'a dyn Device, sync: bool, graph: &'a Mutex<StepGraph>) -> Self {
        Launcher {
            device,
            sync,
            graph: Some(graph),
        }
    }

    /// Launches `kernel` for `dtype`.
    pub fn launch(
        &self,
        kernel: &KernelId,
        dtype: DType,
        dims: LaunchDims,
        args: Args,
    ) -> Result<()> {
        let name = kernel.name(dtype);
        let result = if signature(name).is_none() {
            Err(anyhow!(
                "no such kernel in kernels/: {}_{} is built for {}",
                kernel.family,
                kernel.op,
                kernel.dtypes()
            ))
        } else {
            self.launch_named(name, dims, args)
        };
        result.with_context(|| {
            format!(
                "kernel {name} (grid {:?}, block {:?}, {} bytes of dynamic shared memory)",
                dims.grid, dims.block, dims.shared_bytes
            )
        })
    }

    /// A 1-D grid-stride kernel over `n` elements; nothing for `n == 0`.
    pub fn launch_1d(&self, kernel: &KernelId, dtype: DType, n: usize, args: Args) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let dims = LaunchDims::linear(grid_1d(n as u64, ELEMENTWISE_BLOCK), ELEMENTWISE_BLOCK);
        self.launch(kernel, dtype, dims, args)
    }

    fn launch_named(&self, name: &'static str, dims: LaunchDims, mut args: Args) -> Result<()> {
        args.check(name)?;
        // Without the opt-in a block gets 48 KiB of static and dynamic
        // shared memory together, so any dynamic amount may need it. The
        // device refuses more than its architecture allows (cuda::limits)
        // and skips kernels already allowed as much.
        if dims.shared_bytes > 0 {
            self.device
                .set_max_dynamic_shared(name, dims.shared_bytes)?;
        }
        if let Some(graph) = self.graph {
            let mut graph = graph.lock().unwrap();
            if graph.on_launch(self.device, name, dims, &args)? == Handled::Done {
                return Ok(());
            }
        }
        let mut ptrs = args.pointers();
        // SAFETY: the arguments match the kernel's parameters in number and
        // type (checked above, against the C declaration); every pointer is a
        // view of this device's memory that the op's contract check validated
        // for the extent the kernel touches.
        unsafe { self.device.launch(name, dims, &mut ptrs[..args.count]) }?;
        if self.sync {
            self.device
                .synchronize()
                .context("the kernel failed (found by the synchronous debug mode)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::module::kernel_id;
    use crate::mem::{HostMemory, Memory};
    use std::sync::{Arc, Mutex};

    /// A device whose kernels "run" asynchronously and fail: the failure
    /// shows only at the next synchronize, as on a GPU.
    #[derive(Default)]
    struct FailingDevice {
        calls: Mutex<Vec<String>>,
        opted_in: Mutex<Vec<(String, u32)>>,
    }

    impl Device for FailingDevice {
        fn name(&self) -> &str {
            "failing"
        }
        fn memory(&self) -> Arc<dyn Memory> {
            Arc::new(HostMemory::new())
        }
        fn copy_htod(&self, _: u64, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn copy_dtoh(&self, _: &mut [u8], _: u64) -> Result<()> {
            Ok(())
        }
        fn copy_dtod(&self, _: u64, _: u64, _: usize) -> Result<()> {
            Ok(())
        }
        fn memset(&self, _: u64, _: u8, _: usize) -> Result<()> {
            Ok(())
        }
        unsafe fn launch(&self, kernel: &str, _: LaunchDims, _: &mut [*mut c_void]) -> Result<()> {
            self.calls.lock().unwrap().push(format!("launch {kernel}"));
            Ok(())
        }
        fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()> {
            self.opted_in.lock().unwrap().push((kernel.into(), bytes));
            Ok(())
        }
        fn synchronize(&self) -> Result<()> {
            self.calls.lock().unwrap().push("sync".into());
            bail!("an illegal address was encountered")
        }
        fn alloc_pinned(&self, _: usize) -> Result<u64> {
            bail!("no pinned memory")
        }
        fn free_pinned(&self, _: u64, _: usize) {}
        unsafe fn copy_htod_async(&self, _: u64, _: u64, _: usize) -> Result<()> {
            Ok(())
        }
        fn record_fence(&self) -> Result<crate::cuda::Fence> {
            Ok(crate::cuda::Fence(0))
        }
        fn wait_fence(&self, _: crate::cuda::Fence) -> Result<()> {
            Ok(())
        }
        fn mem_info(&self) -> Result<(u64, u64)> {
            Ok((0, 0))
        }
    }

    const FILL: KernelId = kernel_id!(elementwise, fill);

    fn fill_args(dtype: DType) -> Args {
        Args::new().ptr(View::new(256, 10, dtype)).f32(1.0).u64(10)
    }

    #[test]
    fn arguments_are_checked_against_the_kernel_declaration() {
        let dev = FailingDevice::default();
        let l = Launcher::new(&dev, false);
        l.launch_1d(&FILL, DType::F32, 10, fill_args(DType::F32))
            .unwrap();
        let err = |args| {
            format!(
                "{:#}",
                l.launch_1d(&FILL, DType::F32, 10, args).unwrap_err()
            )
        };
        let e = err(Args::new()
            .ptr(View::new(256, 10, DType::F32))
            .u32(1)
            .u64(10));
        assert!(
            e.contains("kernel elementwise_fill_f32")
                && e.contains("parameter 1 `value` is `float` but its launcher passed U32"),
            "{e}"
        );
        let e = err(fill_args(DType::U32));
        assert!(e.contains("parameter 0 `dst` is `float*`"), "{e}");
        let e = err(Args::new().ptr(View::new(256, 10, DType::F32)).f32(1.0));
        assert!(
            e.contains("takes 3 parameters but its launcher passed 2"),
            "{e}"
        );
        // A dtype the kernel family has no instantiation for.
        let sum_squares = kernel_id!(optimizer, sum_squares);
        let args = Args::new()
            .ptr(View::new(256, 1, DType::F32))
            .ptr(View::new(512, 10, DType::BF16))
            .u64(10);
        let e = format!(
            "{:#}",
            l.launch_1d(&sum_squares, DType::BF16, 10, args)
                .unwrap_err()
        );
        assert!(
            e.contains("kernel optimizer_sum_squares_bf16")
                && e.contains("optimizer_sum_squares is built for f32"),
            "{e}"
        );
        assert_eq!(
            dev.calls.lock().unwrap().len(),
            1,
            "only the good launch ran"
        );
    }

    #[test]
    fn the_debug_mode_names_the_kernel_that_failed() {
        let dev = FailingDevice::default();
        // Without it the failure stays queued: the launch reports success.
        Launcher::new(&dev, false)
            .launch_1d(&FILL, DType::F32, 10, fill_args(DType::F32))
            .unwrap();
        let e = Launcher::new(&dev, true)
            .launch_1d(&FILL, DType::F32, 10, fill_args(DType::F32))
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.starts_with("kernel elementwise_fill_f32 (grid [1, 1, 1], block [256, 1, 1]")
                && e.contains("found by the synchronous debug mode")
                && e.contains("illegal address"),
            "{e}"
        );
        assert_eq!(
            *dev.calls.lock().unwrap(),
            [
                "launch elementwise_fill_f32",
                "launch elementwise_fill_f32",
                "sync"
            ]
        );
    }

    #[test]
    fn every_launch_with_dynamic_shared_memory_opts_in_first() {
        let dev = FailingDevice::default();
        let l = Launcher::new(&dev, false);
        let dims = |shared_bytes| LaunchDims {
            shared_bytes,
            ..LaunchDims::linear(1, 32)
        };
        for bytes in [0, 48 << 10, 100 << 10] {
            l.launch(&FILL, DType::F32, dims(bytes), fill_args(DType::F32))
                .unwrap();
        }
        let name = "elementwise_fill_f32".to_string();
        assert_eq!(
            *dev.opted_in.lock().unwrap(),
            [(name.clone(), 48 << 10), (name, 100 << 10)]
        );
    }
}
