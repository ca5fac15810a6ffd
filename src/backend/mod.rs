//! The op set the model needs, forward and backward, behind one trait.
//!
//! Memory is addressed by raw addresses (`u64`): a host pointer for the CPU
//! backend and the emulator, a device pointer for CUDA. A [`View`] is a typed,
//! `Copy` window into such memory; a [`Buffer`] owns an allocation and gives it
//! back when dropped. This keeps the tie table a table of plain addresses and
//! lets one `KernelBackend` serve both the GPU and the emulator.
//!
//! Conventions shared by every implementation:
//! - Shapes are passed explicitly; tensors are row-major and contiguous.
//! - **Every backward op accumulates (`+=`) into every gradient it writes.**
//!   Gradient buffers are zeroed once before a backward pass. An `Option`
//!   gradient that is `None` is not computed at all (frozen tied blocks skip
//!   their weight gradients this way).
//! - Outputs must not overlap inputs unless an op says so.
//! - Ops return `Result` so that a failed kernel launch reports which op and
//!   which shapes; the CPU backend never fails.

pub mod cpu;
pub mod host_memory;
pub mod kernels;
pub mod profiled;

use anyhow::Result;
use std::marker::PhantomData;
use std::sync::Arc;

/// A typed window into backend memory: `len` elements of `T` starting at `addr`.
#[derive(Debug, PartialEq, Eq)]
pub struct View<T> {
    pub addr: u64,
    pub len: usize,
    _elem: PhantomData<T>,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for View<T> {}

impl<T> View<T> {
    pub fn new(addr: u64, len: usize) -> Self {
        View {
            addr,
            len,
            _elem: PhantomData,
        }
    }

    /// The sub-window `[offset, offset + len)`, in elements. Panics when it does
    /// not fit: that is a bug in the caller's shape arithmetic, not bad input.
    pub fn slice(self, offset: usize, len: usize) -> Self {
        assert!(
            offset + len <= self.len,
            "view slice [{offset}, {}) out of bounds of {} elements",
            offset + len,
            self.len
        );
        View::new(self.addr + (offset * std::mem::size_of::<T>()) as u64, len)
    }

    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// Live and peak bytes, counted by whoever hands out the memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemStats {
    pub live_bytes: u64,
    pub peak_bytes: u64,
    pub live_allocations: u64,
}

impl MemStats {
    /// Counts a new allocation of `bytes`.
    pub fn allocated(&mut self, bytes: usize) {
        self.live_bytes += bytes as u64;
        self.live_allocations += 1;
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
    }
    /// Counts the release of an allocation of `bytes`.
    pub fn freed(&mut self, bytes: usize) {
        self.live_bytes -= bytes as u64;
        self.live_allocations -= 1;
    }
}

/// Something that allocates raw memory and counts it.
pub trait Memory: Send + Sync {
    /// Allocates `bytes` zero-filled bytes, aligned to at least 256 bytes.
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Gives back an allocation made by `alloc` with the same size.
    fn free(&self, addr: u64, bytes: usize);
    fn stats(&self) -> MemStats;
}

/// An owned allocation. Dropping it returns the memory at once, which is
/// what makes a tie give memory back.
pub struct Buffer {
    addr: u64,
    bytes: usize,
    memory: Arc<dyn Memory>,
}

impl Buffer {
    pub fn new(memory: Arc<dyn Memory>, bytes: usize) -> Result<Buffer> {
        let addr = memory.alloc(bytes)?;
        Ok(Buffer {
            addr,
            bytes,
            memory,
        })
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn f32(&self) -> View<f32> {
        View::new(self.addr, self.bytes / 4)
    }
    pub fn u32(&self) -> View<u32> {
        View::new(self.addr, self.bytes / 4)
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({:#x}, {} bytes)", self.addr, self.bytes)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.memory.free(self.addr, self.bytes);
    }
}

/// Hyper-parameters of one AdamW update (decoupled weight decay, bias
/// correction). `step` is 1-based. Gradients are multiplied by `grad_scale`
/// first (global-norm clipping).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
    pub grad_scale: f32,
}

/// Shape of a causal self-attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
    pub heads: usize,
}

/// LayerNorm epsilon, as in GPT-2.
pub const LAYERNORM_EPS: f32 = 1e-5;

/// The tensor ops of GPT-2 training. `N` below is the number of rows
/// (batch x sequence positions), `C` the width.
pub trait Backend: Send + Sync {
    /// Short name for logs: "cpu", "emu", "cuda".
    fn name(&self) -> &str;

    // ---- memory -------------------------------------------------------
    fn memory(&self) -> Arc<dyn Memory>;
    /// A zero-filled allocation of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        Buffer::new(self.memory(), bytes)
    }
    fn alloc_f32(&self, len: usize) -> Result<Buffer> {
        self.alloc(len * 4)
    }
    fn mem_stats(&self) -> MemStats {
        self.memory().stats()
    }
    fn upload_f32(&self, dst: View<f32>, src: &[f32]) -> Result<()>;
    fn download_f32(&self, src: View<f32>) -> Result<Vec<f32>>;
    fn upload_u32(&self, dst: View<u32>, src: &[u32]) -> Result<()>;
    fn download_u32(&self, src: View<u32>) -> Result<Vec<u32>>;
    /// Waits for all queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    // ---- elementwise --------------------------------------------------
    fn fill(&self, dst: View<f32>, value: f32) -> Result<()>;
    fn copy(&self, dst: View<f32>, src: View<f32>) -> Result<()>;
    /// `out = a + b` (the residual connection). `out` may be `a` or `b`.
    fn add(&self, out: View<f32>, a: View<f32>, b: View<f32>) -> Result<()>;
    /// `dst += src` (the residual's backward, and gradient accumulation).
    fn accumulate(&self, dst: View<f32>, src: View<f32>) -> Result<()>;

    // ---- embeddings ---------------------------------------------------
    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`. Token ids must be < vocab
    /// (validated by the data layer before they reach a backend).
    #[allow(clippy::too_many_arguments)]
    fn embedding_fwd(
        &self,
        out: View<f32>,
        tokens: View<u32>,
        wte: View<f32>,
        wpe: View<f32>,
        batch: usize,
        seq: usize,
        channels: usize,
    ) -> Result<()>;
    /// Scatter-adds `dout` into the rows of `dwte` and `dwpe`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_bwd(
        &self,
        dwte: View<f32>,
        dwpe: View<f32>,
        dout: View<f32>,
        tokens: View<u32>,
        batch: usize,
        seq: usize,
        channels: usize,
    ) -> Result<()>;

    // ---- layernorm ----------------------------------------------------
    /// Normalizes each of `rows` rows of width `channels`; saves `mean` and
    /// `rstd` (one per row) for the backward.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        out: View<f32>,
        mean: View<f32>,
        rstd: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        bias: View<f32>,
        rows: usize,
        channels: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dinp: View<f32>,
        dweight: Option<View<f32>>,
        dbias: Option<View<f32>>,
        dout: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        mean: View<f32>,
        rstd: View<f32>,
        rows: usize,
        channels: usize,
    ) -> Result<()>;

    // ---- matmul -------------------------------------------------------
    /// `out[rows, oc] = inp[rows, ic] @ weight[oc, ic]^T + bias[oc]`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_fwd(
        &self,
        out: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        bias: Option<View<f32>>,
        rows: usize,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<()>;
    /// `dinp += dout @ weight`, `dweight += dout^T @ inp`, `dbias += sum_rows dout`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bwd(
        &self,
        dinp: Option<View<f32>>,
        dweight: Option<View<f32>>,
        dbias: Option<View<f32>>,
        dout: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        rows: usize,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<()>;

    // ---- attention ----------------------------------------------------
    /// Causal multi-head self-attention from the fused projection
    /// `qkv[B, T, 3C]` (q, k, v each `C` wide, split into `heads` heads).
    /// Writes `out[B, T, C]` and saves the softmax probabilities
    /// `att[B, heads, T, T]` (zero above the diagonal) for the backward.
    fn attention_fwd(
        &self,
        out: View<f32>,
        att: View<f32>,
        qkv: View<f32>,
        shape: AttnShape,
    ) -> Result<()>;
    /// `dqkv +=` the gradient; `scratch` is `[B, heads, T, T]` of workspace
    /// whose contents are undefined before and after.
    fn attention_bwd(
        &self,
        dqkv: View<f32>,
        scratch: View<f32>,
        dout: View<f32>,
        qkv: View<f32>,
        att: View<f32>,
        shape: AttnShape,
    ) -> Result<()>;

    // ---- activations and dropout --------------------------------------
    /// GELU, tanh approximation.
    fn gelu_fwd(&self, out: View<f32>, inp: View<f32>) -> Result<()>;
    fn gelu_bwd(&self, dinp: View<f32>, inp: View<f32>, dout: View<f32>) -> Result<()>;
    /// Inverted dropout: element `i` is kept iff
    /// [`crate::rng::dropout_keep`]`(seed, offset + i, p)`, and kept elements
    /// are scaled by `1 / (1 - p)`. The mask is never stored: the backward
    /// recomputes it from the same `(seed, offset)`.
    fn dropout_fwd(
        &self,
        out: View<f32>,
        inp: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()>;
    fn dropout_bwd(
        &self,
        dinp: View<f32>,
        dout: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()>;

    // ---- loss ---------------------------------------------------------
    /// Fused softmax + cross-entropy over `vocab` logits per row.
    /// `losses[r] = -log softmax(logits[r])[targets[r]]`, or 0 where
    /// `targets[r] == ignore_index`. When `dlogits` is given it receives
    /// (overwrites, not accumulates) `(softmax - onehot) * grad_scale`, zero
    /// on ignored rows; `dlogits` may be the same memory as `logits`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(
        &self,
        losses: View<f32>,
        dlogits: Option<View<f32>>,
        logits: View<f32>,
        targets: View<u32>,
        rows: usize,
        vocab: usize,
        ignore_index: u32,
        grad_scale: f32,
    ) -> Result<()>;

    // ---- optimizer ----------------------------------------------------
    /// One AdamW update of `params` from `grads`, moments `m` and `v`.
    fn adamw(
        &self,
        params: View<f32>,
        grads: View<f32>,
        m: View<f32>,
        v: View<f32>,
        hp: AdamWStep,
    ) -> Result<()>;
    /// `acc[0] += sum(x^2)` (global gradient norm, one buffer at a time).
    fn sum_squares(&self, acc: View<f32>, x: View<f32>) -> Result<()>;
}
