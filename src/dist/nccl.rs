//! NVIDIA's collective library (NCCL) through cudarc, loaded at run time.
//!
//! `libnccl.so.2` is found like the driver is (the system's, or the
//! `nvidia-nccl-cu12` wheel's folder on `LD_LIBRARY_PATH`); without it, and
//! on machines without a GPU, [`Nccl::new`] says so instead of panicking.
//! Every collective is queued on the device's compute stream, in order with
//! the kernels that produce and consume the gradients, so an all-reduce
//! needs no host synchronization.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use cudarc::nccl::{result, sys};

use super::{check_all_reduce, Comm, CommStats};
use crate::cuda::stream::{driver_err, Event, Stream};
use crate::cuda::{CudaDevice, Device};
use crate::mem::{Buffer, DType, View};
use crate::ops::Backend;
use cudarc::driver::result as driver;
use cudarc::driver::sys::{CUevent_wait_flags, CUstream};

/// The bytes that name one group of ranks; rank 0 makes them
/// ([`Nccl::unique_id`]) and every other rank must receive them.
pub type NcclId = [u8; 128];

/// One rank of an NCCL communicator, bound to one GPU.
pub struct Nccl {
    comm: sys::ncclComm_t,
    rank: usize,
    world_size: usize,
    device: Arc<CudaDevice>,
    /// Four bytes of device memory for the barrier and broadcast lengths.
    scratch: Buffer,
    stats: Mutex<CommStats>,
    /// Made at the first overlapped all-reduce.
    overlap: Mutex<Option<Overlap>>,
}

/// Where the all-reduces that overlap the backward pass run: a stream of
/// their own, so the compute stream goes on with the next blocks while
/// NCCL sums a finished slot; `ready` orders each after the kernels that
/// completed its gradient, `done` orders the optimizer after all of them.
struct Overlap {
    stream: Stream,
    ready: Event,
    done: Event,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a
// time; `Comm`'s methods take `&self` but every use is serialized by the
// replica that owns it (one thread per rank).
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

fn nccl_err(what: &str, e: result::NcclError) -> anyhow::Error {
    anyhow!("{what} failed: NCCL error {:?}", e.0)
}

fn require_library() -> Result<()> {
    // SAFETY: only tries to dlopen libnccl.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        bail!(
            "NCCL is not installed (libnccl.so.2 could not be loaded): install it \
             (`pip install nvidia-nccl-cu12` and add its lib folder to LD_LIBRARY_PATH, or the \
             system's libnccl2), or train on one GPU"
        )
    }
}

impl Nccl {
    /// Whether the NCCL library can be loaded on this machine.
    pub fn available() -> bool {
        require_library().is_ok()
    }

    /// A new group's id, made by rank 0 and sent to every other rank.
    pub fn unique_id() -> Result<NcclId> {
        require_library()?;
        let id = result::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// Joins group `id` as `rank` of `world_size` on `device`; returns when
    /// every rank has joined.
    pub fn new(
        device: Arc<CudaDevice>,
        id: &NcclId,
        rank: usize,
        world_size: usize,
    ) -> Result<Nccl> {
        require_library()?;
        if rank >= world_size {
            bail!("rank {rank} of a group of {world_size}: ranks are 0..{world_size}");
        }
        let scratch = Buffer::new(device.memory(), DType::F32, 1)?;
        device.stream_for_libraries()?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as ::core::ffi::c_char),
        };
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the communicator; the device's context is
        // current on this thread.
        unsafe { result::comm_init_rank(&mut comm, world_size as i32, id, rank as i32) }.map_err(
            |e| {
                nccl_err(
                    &format!("ncclCommInitRank (rank {rank} of {world_size})"),
                    e,
                )
            },
        )?;
        Ok(Nccl {
            comm,
            rank,
            world_size,
            device,
            scratch,
            stats: Mutex::new(CommStats::default()),
            overlap: Mutex::new(None),
        })
    }

    fn check_backend(&self, be: &dyn Backend) -> Result<()> {
        if be.name() != "cuda" {
            bail!(
                "NCCL moves GPU memory; this buffer belongs to the {} backend",
                be.name()
            );
        }
        Ok(())
    }

    /// Queues an fp32 sum of `buf` over the ranks on `stream`.
    fn queue_all_reduce(&self, buf: View, stream: CUstream) -> Result<()> {
        // SAFETY: `buf` is fp32 device memory of this GPU (checked by the
        // callers), reduced in place on a stream of this device.
        unsafe {
            result::all_reduce(
                buf.addr as *const _,
                buf.addr as *mut _,
                buf.len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(|e| nccl_err("ncclAllReduce", e))?;
        let mut stats = self.stats.lock().unwrap();
        stats.all_reduces += 1;
        stats.all_reduce_bytes += buf.bytes() as u64;
        Ok(())
    }

    /// Queues a broadcast of `count` elements at device address `addr`.
    fn broadcast_device(&self, addr: u64, count: usize, root: usize) -> Result<()> {
        let stream = self.device.stream_for_libraries()?;
        // SAFETY: `addr` holds `count` bytes of this device's memory; the
        // stream belongs to the device whose context is current.
        unsafe {
            result::broadcast(
                addr as *const _,
                addr as *mut _,
                count,
                sys::ncclDataType_t::ncclUint8,
                root as i32,
                self.comm,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(|e| nccl_err("ncclBroadcast", e))?;
        Ok(())
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

impl Comm for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, be: &dyn Backend, buf: View) -> Result<()> {
        check_all_reduce(buf)?;
        self.check_backend(be)?;
        let stream = self.device.stream_for_libraries()?;
        self.queue_all_reduce(buf, stream)
    }

    fn all_reduce_sum_overlapped(&self, be: &dyn Backend, buf: View) -> Result<()> {
        check_all_reduce(buf)?;
        self.check_backend(be)?;
        let compute = self.device.stream_for_libraries()?;
        let mut overlap = self.overlap.lock().unwrap();
        if overlap.is_none() {
            *overlap = Some(Overlap {
                stream: Stream::new()?,
                ready: Event::fence()?,
                done: Event::fence()?,
            });
        }
        let o = overlap.as_ref().expect("made above");
        // SAFETY: live events and streams of this device's context (bound
        // by `stream_for_libraries`). A wait takes the event's latest
        // record, so one event serves every slot in turn.
        unsafe {
            driver::event::record(o.ready.raw(), compute)
                .map_err(|e| driver_err("cuEventRecord", e))?;
            driver::stream::wait_event(
                o.stream.raw(),
                o.ready.raw(),
                CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
            .map_err(|e| driver_err("cuStreamWaitEvent", e))?;
        }
        self.queue_all_reduce(buf, o.stream.raw())
    }

    fn wait_overlapped(&self, be: &dyn Backend) -> Result<()> {
        self.check_backend(be)?;
        let overlap = self.overlap.lock().unwrap();
        let Some(o) = overlap.as_ref() else {
            return Ok(());
        };
        let compute = self.device.stream_for_libraries()?;
        // SAFETY: as in `all_reduce_sum_overlapped`.
        unsafe {
            driver::event::record(o.done.raw(), o.stream.raw())
                .map_err(|e| driver_err("cuEventRecord", e))?;
            driver::stream::wait_event(
                compute,
                o.done.raw(),
                CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
            .map_err(|e| driver_err("cuStreamWaitEvent", e))
        }
    }

    fn broadcast(&self, be: &dyn Backend, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        self.check_backend(be)?;
        if root >= self.world_size {
            bail!(
                "broadcast from rank {root}, but the group has {} ranks",
                self.world_size
            );
        }
        // The length first, so every rank can size its copy.
        let len_at = self.scratch.view().addr;
        let len = u32::try_from(bytes.len())
            .map_err(|_| anyhow!("a broadcast of {} bytes is too large", bytes.len()))?;
        self.device.copy_htod(len_at, &len.to_le_bytes())?;
        self.broadcast_device(len_at, 4, root)?;
        let mut len = [0u8; 4];
        self.device.copy_dtoh(&mut len, len_at)?;
        bytes.resize(u32::from_le_bytes(len) as usize, 0);
        if !bytes.is_empty() {
            let data = Buffer::new(self.device.memory(), DType::U32, bytes.len().div_ceil(4))?;
            self.device.copy_htod(data.view().addr, bytes)?;
            self.broadcast_device(data.view().addr, bytes.len(), root)?;
            self.device.copy_dtoh(bytes, data.view().addr)?;
        }
        self.stats.lock().unwrap().broadcasts += 1;
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier: a one-float all-reduce that every rank waits for.
        let stream = self.device.stream_for_libraries()?;
        let at = self.scratch.view().addr;
        // SAFETY: the scratch float is this device's memory.
        unsafe {
            result::all_reduce(
                at as *const _,
                at as *mut _,
                1,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(|e| nccl_err("ncclAllReduce (barrier)", e))?;
        let mut one = [0u8; 4];
        self.device.copy_dtoh(&mut one, at)
    }

    fn stats(&self) -> CommStats {
        *self.stats.lock().unwrap()
    }
}
