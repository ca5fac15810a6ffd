//! `KernelBackend<D>`: the op set as kernel launches on any [`Device`] — the
//! GPU ([`CudaDevice`](super::CudaDevice)) or the CPU emulator
//! ([`EmuDevice`](super::EmuDevice)).
//!
//! [`Backend::execute`] checks the op's contract, then hands it to its
//! launcher (`cuda/ops/<family>.rs`, dispatched from the op registry) with a
//! [`Launcher`] that checks each launch's arguments against the kernel's C
//! signature and names the op and shapes in every error.

use super::device::Device;
use super::launch::Launcher;
use super::ops::dispatch;
use super::staging::StagingRing;
use crate::mem::{Memory, View};
use crate::ops::{check, Backend, Op};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The environment variable that turns on the synchronous debug mode.
pub const SYNC_LAUNCHES_ENV: &str = "DYNTIE_SYNC_LAUNCHES";

pub struct KernelBackend<D: Device> {
    device: Arc<D>,
    /// Pinned buffers that queued uploads go through.
    staging: Mutex<StagingRing>,
    /// Wait for every kernel as it is launched (the debug mode).
    sync_launches: AtomicBool,
}

impl<D: Device> KernelBackend<D> {
    /// The backend over `device`; the debug mode is on when
    /// `DYNTIE_SYNC_LAUNCHES` is set to anything but `0` or nothing.
    pub fn new(device: D) -> Self {
        let sync = std::env::var(SYNC_LAUNCHES_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        KernelBackend {
            device: Arc::new(device),
            staging: Mutex::new(StagingRing::default()),
            sync_launches: AtomicBool::new(sync),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for what must keep it alive (a communicator on its stream).
    pub fn shared_device(&self) -> Arc<D> {
        self.device.clone()
    }

    /// Turns the synchronous debug mode on or off.
    pub fn set_sync_launches(&self, on: bool) {
        self.sync_launches.store(on, Ordering::Relaxed);
    }

    pub fn sync_launches(&self) -> bool {
        self.sync_launches.load(Ordering::Relaxed)
    }
}

impl<D: Device> Backend for KernelBackend<D> {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn memory(&self) -> Arc<dyn Memory> {
        self.device.memory()
    }

    fn write_bytes(&self, dst: View, src: &[u8]) -> Result<()> {
        check::host_bytes("upload", dst, src.len())?;
        self.device.copy_htod(dst.addr, src)
    }

    fn write_bytes_queued(&self, dst: View, src: &[u8]) -> Result<()> {
        check::host_bytes("upload", dst, src.len())?;
        let device = self.device.as_ref();
        self.staging.lock().unwrap().upload(device, dst.addr, src)?;
        if self.sync_launches() {
            device
                .synchronize()
                .context("a queued upload failed (found by the synchronous debug mode)")?;
        }
        Ok(())
    }

    fn read_bytes(&self, src: View, dst: &mut [u8]) -> Result<()> {
        check::host_bytes("download", src, dst.len())?;
        self.device.copy_dtoh(dst, src.addr)
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }

    fn execute(&self, op: &Op) -> Result<()> {
        op.check()?;
        dispatch(
            op,
            &Launcher::new(self.device.as_ref(), self.sync_launches()),
        )
        .with_context(|| format!("{} [{}]", op.name(), op.shape()))
    }
}

impl<D: Device> Drop for KernelBackend<D> {
    fn drop(&mut self) {
        let staging = self.staging.get_mut().unwrap_or_else(|e| e.into_inner());
        // Nothing to report to: a failed kernel shows at the next call on
        // the device, and without it the buffers are gone with the process.
        let _ = staging.release(self.device.as_ref());
    }
}
