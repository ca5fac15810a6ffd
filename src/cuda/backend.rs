//! `KernelBackend<D>`: the op set as kernel launches on any [`Device`] — the
//! GPU ([`CudaDevice`](super::CudaDevice)) or the CPU emulator
//! ([`EmuDevice`](super::EmuDevice)).
//!
//! [`Backend::execute`] checks the op's contract, then hands it to its
//! launcher (`cuda/ops/<family>.rs`, dispatched from the op registry) with a
//! [`Launcher`] that checks each launch's arguments against the kernel's C
//! signature and names the op and shapes in every error.

use super::device::Device;
use super::graph::{Handled, StepGraph};
use super::launch::Launcher;
use super::ops::dispatch;
use super::staging::StagingRing;
use crate::mem::{Memory, View};
use crate::ops::{check, Backend, GraphCounts, GraphStep, Op};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The environment variable that turns on the synchronous debug mode.
pub const SYNC_LAUNCHES_ENV: &str = "DYNTIE_SYNC_LAUNCHES";

pub struct KernelBackend<D: Device> {
    device: Arc<D>,
    /// Pinned buffers that queued uploads go through.
    staging: Mutex<StagingRing>,
    /// The training step's graph ([`Backend::begin_graph_step`]).
    graph: Mutex<StepGraph>,
    /// Wait for every kernel as it is launched (the debug mode).
    sync_launches: AtomicBool,
}

impl<D: Device> KernelBackend<D> {
    /// The backend over `device`; the debug mode is on when
    /// `DYNTIE_SYNC_LAUNCHES` is set to anything but `0` or nothing.
    pub fn new(device: D) -> Self {
        let sync = std::env::var(SYNC_LAUNCHES_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        let graph = StepGraph::new(device.captures_graphs());
        KernelBackend {
            device: Arc::new(device),
            staging: Mutex::new(StagingRing::default()),
            graph: Mutex::new(graph),
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

    /// Tells the step graph that the host is about to wait for the device.
    fn before_wait(&self, what: &str) -> Result<()> {
        let device = self.device.as_ref();
        self.graph.lock().unwrap().on_wait(device, what)
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
        self.before_wait("an upload that waits")?;
        self.device.copy_htod(dst.addr, src)
    }

    fn write_bytes_queued(&self, dst: View, src: &[u8]) -> Result<()> {
        check::host_bytes("upload", dst, src.len())?;
        let device = self.device.as_ref();
        if self
            .graph
            .lock()
            .unwrap()
            .on_upload(device, dst.addr, src)?
            == Handled::Done
        {
            return Ok(());
        }
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
        self.before_wait("a download")?;
        self.device.copy_dtoh(dst, src.addr)
    }

    fn synchronize(&self) -> Result<()> {
        self.before_wait("a synchronize")?;
        self.device.synchronize()
    }

    fn execute(&self, op: &Op) -> Result<()> {
        op.check()?;
        let launcher =
            Launcher::with_graph(self.device.as_ref(), self.sync_launches(), &self.graph);
        dispatch(op, &launcher).with_context(|| format!("{} [{}]", op.name(), op.shape()))
    }

    /// The debug mode waits for every kernel, which a captured step cannot
    /// do: it runs every step as usual.
    fn begin_graph_step(&self) -> Result<GraphStep> {
        if self.sync_launches() {
            return Ok(GraphStep::Eager);
        }
        self.graph.lock().unwrap().begin(self.device.as_ref())
    }

    fn end_graph_step(&self) -> Result<GraphStep> {
        if self.sync_launches() {
            return Ok(GraphStep::Eager);
        }
        self.graph.lock().unwrap().end(self.device.as_ref())
    }

    fn graph_counts(&self) -> GraphCounts {
        self.graph.lock().unwrap().counts()
    }
}

impl<D: Device> Drop for KernelBackend<D> {
    fn drop(&mut self) {
        let device = self.device.as_ref();
        // Nothing to report to: a failed kernel shows at the next call on
        // the device, and without it the buffers are gone with the process.
        let graph = self.graph.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = graph.release(device);
        let staging = self.staging.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = staging.release(device);
    }
}
