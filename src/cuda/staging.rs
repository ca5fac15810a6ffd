//! Uploads that do not make the host wait: a ring of pinned (page-locked)
//! host staging buffers.
//!
//! A copy from pageable memory makes the host wait until the device has
//! read the bytes, which on a GPU means until everything queued before the
//! copy has run. [`StagingRing::upload`] instead copies the bytes into the
//! next buffer of the ring (host memory the GPU reads directly), queues the
//! device copy from it on the compute stream, in order with the kernels,
//! and records a fence after it. The host only waits when it comes round
//! to a buffer whose copy has not yet run, i.e. when it is more than
//! [`RING_LEN`] uploads ahead of the device: flow control, not a round trip
//! per upload. The token and target uploads of a training step go this way.
//!
//! Overwriting a staging buffer before the copy that reads it has run would
//! hand the device the next batch's bytes; the ring makes that impossible
//! by construction (a buffer is written only after its fence was waited
//! for), and the emulator checks it: it keeps each queued copy's bytes
//! until the host waits past it, and fails when the source changed in
//! between ([`super::EmuDevice`]).

use super::device::{Device, Fence};
use anyhow::Result;

/// Staging buffers in the ring: the number of uploads the host may queue
/// ahead of the device before it waits (a training micro-batch makes two).
pub const RING_LEN: usize = 8;

/// Smallest buffer allocated, so that small uploads never reallocate.
const MIN_BYTES: usize = 4 << 10;

/// One pinned buffer and the fence after the last copy that reads it.
#[derive(Default)]
struct Staging {
    addr: u64,
    bytes: usize,
    in_flight: Option<Fence>,
}

pub struct StagingRing {
    buffers: Vec<Staging>,
    next: usize,
}

impl Default for StagingRing {
    fn default() -> Self {
        StagingRing {
            buffers: (0..RING_LEN).map(|_| Staging::default()).collect(),
            next: 0,
        }
    }
}

impl StagingRing {
    /// Queues a copy of `src` to device address `dst` (which holds at least
    /// `src.len()` bytes) and returns as soon as `src` may be reused.
    pub fn upload(&mut self, device: &dyn Device, dst: u64, src: &[u8]) -> Result<()> {
        let buf = &mut self.buffers[self.next];
        self.next = (self.next + 1) % RING_LEN;
        // The only way into a buffer: past the fence of its last copy.
        if let Some(fence) = buf.in_flight.take() {
            device.wait_fence(fence)?;
        }
        if buf.bytes < src.len() {
            if buf.addr != 0 {
                device.free_pinned(buf.addr, buf.bytes);
                *buf = Staging::default();
            }
            let bytes = src.len().next_power_of_two().max(MIN_BYTES);
            buf.addr = device.alloc_pinned(bytes)?;
            buf.bytes = bytes;
        }
        // SAFETY: the buffer holds `buf.bytes >= src.len()` bytes of host
        // memory, and no queued copy reads it (its fence was waited for).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), buf.addr as *mut u8, src.len());
            device.copy_htod_async(dst, buf.addr, src.len())?;
        }
        buf.in_flight = Some(device.record_fence()?);
        Ok(())
    }

    /// Waits for every queued copy and frees the buffers.
    pub fn release(&mut self, device: &dyn Device) -> Result<()> {
        let waited = device.synchronize();
        for buf in &mut self.buffers {
            if buf.addr != 0 && waited.is_ok() {
                device.free_pinned(buf.addr, buf.bytes);
            }
            *buf = Staging::default();
        }
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::EmuDevice;

    /// More uploads than the ring has buffers, each of different bytes and
    /// sizes to its own destination: every destination gets its own bytes,
    /// and the emulator's check (no source changed before its copy ran)
    /// passes. With the wait before a buffer is written removed, the
    /// emulator reports the overwritten source at the final synchronize.
    #[test]
    fn uploads_wrap_round_the_ring_and_each_arrives_intact() {
        let device = EmuDevice::new();
        let mut ring = StagingRing::default();
        let memory = device.memory();
        let n = 3 * RING_LEN + 1;
        let sizes: Vec<usize> = (0..n).map(|i| 100 + 1000 * (i % 7)).collect();
        let dsts: Vec<u64> = sizes.iter().map(|&s| memory.alloc(s).unwrap()).collect();
        let payload = |i: usize| -> Vec<u8> { (0..sizes[i]).map(|k| (i * 31 + k) as u8).collect() };
        for (i, &dst) in dsts.iter().enumerate() {
            ring.upload(&device, dst, &payload(i)).unwrap();
        }
        device.synchronize().unwrap();
        for (i, &dst) in dsts.iter().enumerate() {
            let mut got = vec![0u8; sizes[i]];
            device.copy_dtoh(&mut got, dst).unwrap();
            assert_eq!(got, payload(i), "upload {i}");
        }
        ring.release(&device).unwrap();
        for (&dst, &s) in dsts.iter().zip(&sizes) {
            memory.free(dst, s);
        }
    }

    /// The emulator's check itself: a pinned buffer rewritten while the copy
    /// that reads it is still queued is reported, and only then.
    #[test]
    fn the_emulator_reports_a_staging_buffer_rewritten_in_flight() {
        let device = EmuDevice::new();
        let memory = device.memory();
        let dst = memory.alloc(64).unwrap();
        let src = device.alloc_pinned(64).unwrap();
        let fill = |b: u8| unsafe { std::ptr::write_bytes(src as *mut u8, b, 64) };

        // Rewritten after its fence was waited for: fine.
        fill(1);
        unsafe { device.copy_htod_async(dst, src, 64).unwrap() };
        let fence = device.record_fence().unwrap();
        device.wait_fence(fence).unwrap();
        fill(2);
        device.synchronize().unwrap();

        // Rewritten while in flight: reported at the next wait.
        unsafe { device.copy_htod_async(dst, src, 64).unwrap() };
        let fence = device.record_fence().unwrap();
        fill(3);
        let err = format!("{:#}", device.wait_fence(fence).unwrap_err());
        assert!(err.contains("rewritten before the copy"), "{err}");

        device.free_pinned(src, 64);
        memory.free(dst, 64);
    }
}
