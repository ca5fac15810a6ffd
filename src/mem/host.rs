//! Host memory for the CPU backend: aligned, zero-filled,
//! counted allocations addressed by their host pointer.

use super::{MemStats, Memory};
use anyhow::{bail, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Mutex;

/// Alignment of every host allocation (matches what cudaMalloc guarantees).
pub const HOST_ALIGN: usize = 256;

#[derive(Default)]
pub struct HostMemory {
    stats: Mutex<MemStats>,
}

impl HostMemory {
    pub fn new() -> Self {
        Self::default()
    }

    fn layout(bytes: usize) -> Result<Layout> {
        Ok(Layout::from_size_align(bytes.max(1), HOST_ALIGN)?)
    }
}

impl Memory for HostMemory {
    fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout = Self::layout(bytes)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            bail!(
                "out of host memory: could not allocate {} MiB",
                bytes as f64 / (1 << 20) as f64
            );
        }
        self.stats.lock().unwrap().allocated(bytes);
        Ok(ptr as u64)
    }

    fn free(&self, addr: u64, bytes: usize) {
        let layout = Self::layout(bytes).expect("layout was valid at allocation");
        // SAFETY: `addr` came from `alloc` with the same size and alignment.
        unsafe { dealloc(addr as *mut u8, layout) };
        self.stats.lock().unwrap().freed(bytes);
    }

    fn stats(&self) -> MemStats {
        *self.stats.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{Buffer, DType};
    use std::sync::Arc;

    #[test]
    fn counts_live_and_peak_bytes() {
        let mem = Arc::new(HostMemory::new());
        let a = Buffer::new(mem.clone(), DType::F32, 250).unwrap();
        let b = Buffer::new(mem.clone(), DType::BF16, 12).unwrap();
        assert_eq!(a.addr() % HOST_ALIGN as u64, 0);
        assert_eq!(mem.stats().live_bytes, 1024);
        drop(a);
        assert_eq!(mem.stats().live_bytes, 24);
        assert_eq!(mem.stats().peak_bytes, 1024);
        assert_eq!(mem.stats().live_allocations, 1);
        drop(b);
        assert_eq!(mem.stats().live_allocations, 0);
    }
}
