//! The bottom layer: element types, views, buffers and allocators.
//!
//! Memory is addressed by raw byte addresses (`u64`): a host pointer for the
//! CPU backend and the emulator, a device pointer for CUDA. That keeps the tie
//! table a table of plain addresses and lets one kernel backend serve the GPU
//! and the emulator alike.
//!
//! **Views are untyped and carry their [`DType`]**: a [`View`] is
//! `{addr, len, dtype}`, not a `View<T>`. The op layer above is a set of
//! plain argument structs gathered in one `Op` enum; if views were generic,
//! every op struct would be generic too, the enum would need one variant per
//! op and dtype, and a matmul reading bf16 activations while accumulating into
//! an fp32 gradient would need a struct per combination. With the dtype a
//! value, one `MatmulFwd` serves every precision, `ops::check` validates the
//! dtypes each op accepts at run time, and the kernel launcher picks
//! `<family>_<op>_<dtype>` from the same value. Static typing comes back at
//! the host edge: [`Element`] ties a Rust type to its dtype, and uploads and
//! downloads check that the two agree.

mod host;

pub use host::{HostMemory, HOST_ALIGN};

use anyhow::{bail, Result};
use std::sync::Arc;

/// The element types a view can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    /// bfloat16: the tensor cores' input type (unused until mixed precision lands).
    BF16,
    /// Token ids and targets.
    U32,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::BF16, DType::U32];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 => 2,
        }
    }

    /// The suffix of kernel names (`elementwise_add_f32`) and the name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
        }
    }

    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host type that backend memory holds, and the dtype that names it.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
}

impl Element for u32 {
    const DTYPE: DType = DType::U32;
}

/// A window into backend memory: `len` elements of `dtype` starting at `addr`.
/// `Copy`, and owns nothing: a [`Buffer`] owns the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub addr: u64,
    pub len: usize,
    pub dtype: DType,
}

impl View {
    pub fn new(addr: u64, len: usize, dtype: DType) -> Self {
        View { addr, len, dtype }
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
        View::new(
            self.addr + (offset * self.dtype.size()) as u64,
            len,
            self.dtype,
        )
    }

    /// The same bytes as elements of `dtype` (an activation arena also holds
    /// the token ids). Panics when the bytes do not divide into `dtype`.
    pub fn reinterpret(self, dtype: DType) -> Self {
        let bytes = self.bytes();
        assert!(
            bytes.is_multiple_of(dtype.size()),
            "{bytes} bytes of {} do not divide into {dtype} elements",
            self.dtype
        );
        View::new(self.addr, bytes / dtype.size(), dtype)
    }

    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
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

/// An owned, zero-filled allocation of `len` elements of one dtype. Dropping
/// it returns the memory at once, which is what makes a tie give memory back.
pub struct Buffer {
    addr: u64,
    len: usize,
    dtype: DType,
    memory: Arc<dyn Memory>,
}

impl Buffer {
    pub fn new(memory: Arc<dyn Memory>, dtype: DType, len: usize) -> Result<Buffer> {
        let Some(bytes) = len.checked_mul(dtype.size()) else {
            bail!("a buffer of {len} {dtype} elements does not fit in the address space");
        };
        let addr = memory.alloc(bytes)?;
        Ok(Buffer {
            addr,
            len,
            dtype,
            memory,
        })
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
    /// The whole buffer.
    pub fn view(&self) -> View {
        View::new(self.addr, self.len, self.dtype)
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({:#x}, {} x {})", self.addr, self.len, self.dtype)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.memory.free(self.addr, self.bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_slice_and_reinterpret_in_their_own_element_size() {
        let v = View::new(1024, 10, DType::BF16);
        let s = v.slice(3, 4);
        assert_eq!((s.addr, s.len, s.dtype), (1030, 4, DType::BF16));
        let w = v.reinterpret(DType::F32);
        assert_eq!((w.addr, w.len, w.bytes()), (1024, 5, 20));
        assert_eq!(<half::bf16 as Element>::DTYPE.size(), 2);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_slice_past_the_end_is_a_bug() {
        View::new(0, 4, DType::F32).slice(2, 3);
    }
}
