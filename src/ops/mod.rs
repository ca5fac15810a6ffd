//! The op layer: what every backend computes, and the one trait they share.
//!
//! Each op is a plain argument struct with its contract (which operands, how
//! long, which dtypes, which may alias) in `ops/<family>.rs`. The structs are
//! gathered in the [`Op`] enum, and a backend has a single entry point,
//! [`Backend::execute`]. Why an enum of structs rather than one trait method
//! per op: a wrapper (the profiler), a harness (conformance) or a debug mode
//! then handles every op, including ones added later, without a line per op;
//! and calls name their arguments (`MatmulBwd { dinp, dweight, .. }`) instead
//! of passing nine positional ones. Callers write
//! `backend.run(GeluFwd { out, inp })` ([`BackendExt::run`]).
//!
//! The list of ops is [`registry`]: it generates the enum, and it drives the
//! dispatch of both backends, the profiler and the conformance harness. A new
//! op is its contract here, a CPU reference in `cpu/<family>.rs`, a kernel in
//! `kernels/` with its launcher in `cuda/ops/<family>.rs`, and one registry
//! entry.
//!
//! Conventions shared by every op:
//! - Shapes are passed explicitly; tensors are row-major and contiguous.
//! - **Every backward op accumulates (`+=`) into every gradient it writes.**
//!   Gradient buffers are zeroed once before a backward pass. An `Option`
//!   gradient that is `None` is not computed at all (frozen tied blocks skip
//!   their weight gradients this way).
//! - Outputs must not overlap inputs unless an op says so.
//! - [`check`] validates every call before a backend touches memory; ops
//!   return `Result` so that a failed kernel launch reports which op and
//!   which shapes.

pub mod activation;
pub mod attention;
pub mod case;
pub mod check;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod optimizer;
pub mod profile;
pub mod registry;

pub use registry::{Op, ENTRIES};

use crate::mem::{Buffer, DType, Element, MemStats, Memory, View};
use anyhow::Result;
use std::sync::Arc;

/// What every op struct provides: its name, its validation and a short
/// description of its shape for messages and the profiler.
pub trait Contract: Copy + Into<Op> {
    /// The op's name in tables and messages (`"matmul_fwd"`).
    const NAME: &'static str;
    /// The compute dtypes the op is implemented for, on every backend (the
    /// conformance harness runs each of them): [`check::F32_ONLY`] or
    /// [`check::F32_BF16`]. Which operands follow the compute dtype and which
    /// keep their own is in `check`.
    const FLOATS: &'static [DType];
    /// Validates the call: shapes, lengths, dtypes, aliasing, scalars (see
    /// [`check`]). Backends call it (through [`Op::check`]) before anything else.
    fn check(&self) -> Result<()>;
    /// The sizes that matter, e.g. `"1024x768->2304"` for a matmul.
    fn shape(&self) -> String;
}

/// How a training step ran with respect to the step graph
/// ([`Backend::begin_graph_step`]; `cuda::graph`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum GraphStep {
    /// One op at a time: no graph (the CPU, `--no-graph`, the debug mode),
    /// or the step before a capture.
    Eager,
    /// Recorded into a new graph, which was then launched.
    Captured,
    /// Matched the graph whole; the graph was launched.
    Replayed,
    /// Differed from the graph (e.g. after a re-tie): the step ran one op at
    /// a time and the next step captures a new graph.
    FellBack,
}

/// What the step graph did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GraphCounts {
    pub captures: u64,
    pub replays: u64,
    pub fallbacks: u64,
}

/// A backend: memory, host copies and the op set.
pub trait Backend: Send + Sync {
    /// Short name for logs: "cpu", "emu", "cuda".
    fn name(&self) -> &str;
    /// The allocator, counting live and peak bytes; [`Buffer`]s hold it.
    fn memory(&self) -> Arc<dyn Memory>;
    fn mem_stats(&self) -> MemStats {
        self.memory().stats()
    }
    /// Copies `src` (exactly `dst`'s bytes) into backend memory; see
    /// [`BackendExt::upload`] for the typed form.
    fn write_bytes(&self, dst: View, src: &[u8]) -> Result<()>;
    /// Copies `src` into `dst` as [`Backend::write_bytes`] does, without
    /// the host waiting for the device: on a GPU the bytes go up from a
    /// pinned staging buffer, queued in order with the ops (the emulator
    /// models the same queue). `src` may be reused on return. The CPU
    /// copies at once.
    fn write_bytes_queued(&self, dst: View, src: &[u8]) -> Result<()> {
        self.write_bytes(dst, src)
    }
    /// Copies backend memory into `dst` (exactly `src`'s bytes), after all
    /// queued work; see [`BackendExt::download`].
    fn read_bytes(&self, src: View, dst: &mut [u8]) -> Result<()>;
    /// Waits for all queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Runs one op. Implementations call `op.check()` first.
    fn execute(&self, op: &Op) -> Result<()>;
    /// Starts a training step under the step graph: the ops and queued
    /// uploads until [`Backend::end_graph_step`] are captured into a graph,
    /// or checked against the one captured and not run one by one.
    /// Returns how the step is being run; a backend without graphs runs
    /// every step as usual.
    fn begin_graph_step(&self) -> Result<GraphStep> {
        Ok(GraphStep::Eager)
    }
    /// Ends the step begun by [`Backend::begin_graph_step`] (launching the
    /// graph where it was captured or matched) and says how it ran.
    fn end_graph_step(&self) -> Result<GraphStep> {
        Ok(GraphStep::Eager)
    }
    /// What the step graph did so far.
    fn graph_counts(&self) -> GraphCounts {
        GraphCounts::default()
    }
}

/// The typed conveniences over [`Backend`], for every backend and `dyn Backend`.
pub trait BackendExt: Backend {
    /// A zero-filled allocation of `len` elements of `dtype`.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer> {
        Buffer::new(self.memory(), dtype, len)
    }
    /// Copies host values into `dst`, whose dtype must be `T`'s and whose
    /// length must be `src.len()`.
    fn upload<T: Element>(&self, dst: View, src: &[T]) -> Result<()> {
        check::host_copy("upload", dst, T::DTYPE, src.len())?;
        self.write_bytes(dst, bytemuck::cast_slice(src))
    }
    /// [`BackendExt::upload`] without waiting for the device
    /// ([`Backend::write_bytes_queued`]).
    fn upload_queued<T: Element>(&self, dst: View, src: &[T]) -> Result<()> {
        check::host_copy("upload", dst, T::DTYPE, src.len())?;
        self.write_bytes_queued(dst, bytemuck::cast_slice(src))
    }
    /// The contents of `src`, whose dtype must be `T`'s.
    fn download<T: Element>(&self, src: View) -> Result<Vec<T>> {
        check::host_copy("download", src, T::DTYPE, src.len)?;
        let mut out = vec![T::zeroed(); src.len];
        self.read_bytes(src, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }
    /// Runs one op given as its argument struct.
    fn run(&self, op: impl Into<Op>) -> Result<()> {
        self.execute(&op.into())
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}
