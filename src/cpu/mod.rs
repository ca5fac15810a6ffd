//! `CpuBackend`: the pure-Rust reference implementation of every op, one
//! file per op family (`cpu/<family>.rs` for `ops/<family>.rs`).
//!
//! [`Backend::execute`] first runs the op's contract check (`ops::check`:
//! lengths, alignment, dtypes, no forbidden overlap); each family file then
//! turns the op's views into slices, which that check makes sound, and does
//! the arithmetic. Matmuls go through the `gemm` crate, everything
//! row-parallel through rayon.
//!
//! Reductions across threads are split into fixed chunks whose partial
//! results are combined in order, so every result is bit-for-bit the same
//! however many threads run it (a resumed run must continue exactly).
//!
//! **bf16.** The CPU is also the reference of every op's bf16 variant: it
//! reads the bf16 operands widened to f32 (exactly), computes in f32 (or
//! f64) by the same code as the fp32 op, and rounds each bf16 output once,
//! to nearest even ([`FloatsMut::store`]), where the kernel rounds it.
//! Outputs that stay fp32 in mixed precision (statistics, weight gradients,
//! losses) are not rounded. Attention rounds its intermediate products too,
//! as its kernels store them in bf16 (see `cpu/attention.rs`). So a kernel
//! and this reference differ by fp32 summation order plus at most one bf16
//! rounding step per output, which is what the conformance tolerances
//! allow.

mod activation;
mod attention;
mod elementwise;
mod embedding;
mod layernorm;
mod loss;
mod math;
mod matmul;
mod optimizer;

use crate::mem::{DType, Element, HostMemory, Memory, View};
use crate::ops::registry::for_each_op;
use crate::ops::{check, Backend, Op};
use anyhow::Result;
use half::bf16;
use half::slice::HalfFloatSliceExt;
use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// Elements per parallel task for elementwise ops: big enough to amortize
/// rayon's scheduling, small enough to balance over a few cores.
const CHUNK: usize = 1 << 14;

/// The CPU backend. Memory is plain host memory; every op runs to completion
/// before it returns.
pub struct CpuBackend {
    memory: Arc<HostMemory>,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend {
            memory: Arc::new(HostMemory::new()),
        }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// An op's CPU reference, implemented in `cpu/<family>.rs` for each op struct.
trait CpuOp {
    /// Runs the op; its contract check has passed.
    fn run(&self) -> Result<()>;
}

macro_rules! cpu_dispatch {
    ($($family:ident::$op:ident => $case:path,)*) => {
        fn dispatch(op: &Op) -> Result<()> {
            match op {
                $(Op::$op(args) => CpuOp::run(args),)*
            }
        }
    };
}
for_each_op!(cpu_dispatch);

/// The first `len` elements of `v` as a shared slice.
///
/// # Safety
/// `v` is an operand of an op whose contract check passed (so `v` holds at
/// least `len` elements of `T`, aligned, and no output overlaps it unless the
/// contract allows exactly that alias, which the caller then handles), and
/// it addresses live host memory of this backend (the [`Backend`] contract:
/// views come from this backend's buffers).
unsafe fn read<'a, T: Element>(v: View, len: usize) -> &'a [T] {
    debug_assert_eq!(v.dtype, T::DTYPE);
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(v.addr as *const T, len)
}

/// The first `len` elements of `v` as an exclusive slice.
///
/// # Safety
/// As for [`read`], and no other slice over the same bytes may live at the
/// same time.
unsafe fn write<'a, T: Element>(v: View, len: usize) -> &'a mut [T] {
    debug_assert_eq!(v.dtype, T::DTYPE);
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(v.addr as *mut T, len)
}

/// The first `len` elements of a float view as f32: the memory itself when
/// it is f32, a widened (exact) copy when it is bf16.
///
/// # Safety
/// As for [`read`].
unsafe fn read_floats<'a>(v: View, len: usize) -> Cow<'a, [f32]> {
    match v.dtype {
        DType::BF16 => {
            let mut wide = vec![0f32; len];
            read::<bf16>(v, len).convert_to_f32_slice(&mut wide);
            Cow::Owned(wide)
        }
        _ => Cow::Borrowed(read::<f32>(v, len)),
    }
}

/// A float output (or accumulator) as an f32 slice: the memory itself when
/// it is f32; for bf16 a widened copy of its contents, which
/// [`FloatsMut::store`] rounds back to nearest even.
pub(crate) struct FloatsMut<'a> {
    view: View,
    data: FloatsData<'a>,
}

enum FloatsData<'a> {
    Memory(&'a mut [f32]),
    Widened(Vec<f32>),
}

impl FloatsMut<'_> {
    /// Writes a widened copy back, rounding each value to bf16 (nothing to
    /// do for f32, whose memory was written directly).
    fn store(self) {
        if let FloatsData::Widened(wide) = &self.data {
            // SAFETY: as when this was made (see `write_floats`).
            unsafe { write::<bf16>(self.view, wide.len()) }.convert_from_f32_slice(wide);
        }
    }
}

impl Deref for FloatsMut<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.data {
            FloatsData::Memory(m) => m,
            FloatsData::Widened(w) => w,
        }
    }
}

impl DerefMut for FloatsMut<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.data {
            FloatsData::Memory(m) => m,
            FloatsData::Widened(w) => w,
        }
    }
}

/// The first `len` elements of a float view to write or accumulate into,
/// as f32 (see [`FloatsMut`]).
///
/// # Safety
/// As for [`write`]; for a bf16 view only the widened copy is borrowed
/// mutably, so another operand may be the same memory (an allowed alias):
/// it is read from its own copy.
unsafe fn write_floats<'a>(v: View, len: usize) -> FloatsMut<'a> {
    let data = match v.dtype {
        DType::BF16 => FloatsData::Widened(read_floats(v, len).into_owned()),
        _ => FloatsData::Memory(write::<f32>(v, len)),
    };
    FloatsMut {
        view: v.slice(0, len),
        data,
    }
}

/// Rounds every value to the nearest bf16 (kept as f32): where a kernel
/// stores an intermediate result in bf16.
fn round_bf16(x: &mut [f32]) {
    for v in x {
        *v = bf16::from_f32(*v).to_f32();
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn memory(&self) -> Arc<dyn Memory> {
        self.memory.clone()
    }

    fn write_bytes(&self, dst: View, src: &[u8]) -> Result<()> {
        check::host_bytes("upload", dst, src.len())?;
        // SAFETY: `dst` addresses `src.len()` bytes of this backend's host
        // memory (checked above and the Backend contract); `copy` allows
        // the host data to overlap it.
        unsafe { std::ptr::copy(src.as_ptr(), dst.addr as *mut u8, src.len()) };
        Ok(())
    }

    fn read_bytes(&self, src: View, dst: &mut [u8]) -> Result<()> {
        check::host_bytes("download", src, dst.len())?;
        // SAFETY: as in `write_bytes`.
        unsafe { std::ptr::copy(src.addr as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn execute(&self, op: &Op) -> Result<()> {
        op.check()?;
        dispatch(op)
    }
}
