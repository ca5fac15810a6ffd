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

mod activation;
mod attention;
mod elementwise;
mod embedding;
mod layernorm;
mod loss;
mod math;
mod matmul;
mod optimizer;

use crate::mem::{Element, HostMemory, Memory, View};
use crate::ops::registry::for_each_op;
use crate::ops::{check, Backend, Op};
use anyhow::Result;
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
