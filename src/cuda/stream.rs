//! Streams and events on the GPU.
//!
//! All of a [`CudaDevice`](super::CudaDevice)'s work (launches, copies,
//! memsets) goes to one compute [`Stream`], created non-blocking: it does
//! not synchronize with the legacy default stream, which any other library
//! in the process (or a stray `cuMemcpy`) would otherwise serialize against.
//! Events time work on the stream without a host round trip per launch.
//!
//! CUDA graphs belong here next: capture the stream
//! (`cuStreamBeginCapture`/`cuStreamEndCapture`) over one training step,
//! instantiate once, replay per step; the tie table being device-resident
//! lets a re-tie keep the same graph.

use anyhow::{anyhow, Result};
use cudarc::driver::{result, sys};

pub(crate) fn driver_err(what: &str, e: result::DriverError) -> anyhow::Error {
    let name = e
        .error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    anyhow!("{what}: {name}")
}

/// A non-blocking stream of the current context, destroyed on drop.
pub struct Stream {
    raw: sys::CUstream,
}

// SAFETY: a stream handle may be used from any thread of its context.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    /// A new stream in the current context that does not synchronize with
    /// the legacy default stream.
    pub fn new() -> Result<Stream> {
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| driver_err("cuStreamCreate", e))?;
        Ok(Stream { raw })
    }

    pub fn raw(&self) -> sys::CUstream {
        self.raw
    }

    /// Waits for everything queued on the stream; reports errors of kernels
    /// that already ran.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: a live stream of the current context.
        unsafe { result::stream::synchronize(self.raw) }
            .map_err(|e| driver_err("a GPU kernel failed (found at stream synchronize)", e))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; the context is still
        // alive (its owner drops the stream first).
        let _ = unsafe { result::stream::destroy(self.raw) };
    }
}

/// A timing or ordering event.
pub struct Event {
    raw: sys::CUevent,
}

impl Event {
    pub fn new() -> Result<Event> {
        let raw = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(|e| driver_err("cuEventCreate", e))?;
        Ok(Event { raw })
    }

    /// An event for ordering only (no timestamps, cheaper to record).
    pub fn fence() -> Result<Event> {
        let raw = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| driver_err("cuEventCreate", e))?;
        Ok(Event { raw })
    }

    pub fn raw(&self) -> sys::CUevent {
        self.raw
    }

    /// Waits until the work before the event's last record has run.
    pub fn wait(&self) -> Result<()> {
        // SAFETY: a live event of the current context.
        unsafe { result::event::synchronize(self.raw) }
            .map_err(|e| driver_err("a GPU kernel failed (found at cuEventSynchronize)", e))
    }

    /// Marks the current end of `stream`'s queue.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        // SAFETY: live event and stream of the current context.
        unsafe { result::event::record(self.raw, stream.raw) }
            .map_err(|e| driver_err("cuEventRecord", e))
    }

    /// Milliseconds from `start` to this event, once both have completed.
    pub fn elapsed_ms_since(&self, start: &Event) -> Result<f64> {
        // SAFETY: live events, both recorded.
        unsafe {
            result::event::synchronize(self.raw)
                .map_err(|e| driver_err("cuEventSynchronize", e))?;
            result::event::elapsed(start.raw, self.raw)
        }
        .map(f64::from)
        .map_err(|e| driver_err("cuEventElapsedTime", e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::event::destroy(self.raw) };
    }
}
