//! Communication between data-parallel replicas.
//!
//! Every replica holds the whole model and trains on its own slice of each
//! batch; before the optimizer step the gradients of the live slots and of
//! the global parameters are summed over all replicas, so every replica
//! applies the same update. The tie table must be the same on every replica
//! at every step: the agent decides on rank 0 and [`Comm::broadcast`]s its
//! action, and [`same_on_every_rank`] compares a checksum of the table
//! across ranks so that a replica that drifted is named instead of training
//! a different model in silence.
//!
//! [`Comm`] has three implementations:
//! - [`Single`]: one replica, every collective a no-op (what a plain run uses);
//! - [`InProcess`]: replicas as threads of one process sharing host memory,
//!   with the semantics of the real thing (every rank gets bit-identical
//!   sums, in rank order); it works over any backend, so data-parallel
//!   training is tested on the CPU and under the emulator;
//! - [`Nccl`]: NVIDIA's collective library through cudarc, loaded at run
//!   time like the driver, on the device's compute stream;
//! - [`Tcp`]: replicas as separate processes (on one machine or several,
//!   launched by torchrun or a scheduler: [`Launch`]), joined over TCP; the
//!   collectives of CPU and emulator runs, and the way NCCL's group id
//!   reaches every process of a GPU run.
//!
//! Collectives are called by every rank in the same order with the same
//! lengths; a mismatch is an error on every rank, not a hang.
//!
//! `dyntie train --replicas N` uses it through `train::replicas` (one
//! process, a thread per replica); a run launched as several processes
//! (`RANK`, `WORLD_SIZE`, ...) through `commands::train`. The gradients
//! are summed one slot at a time as the backward pass completes them
//! ([`Comm::all_reduce_sum_overlapped`], from `Model::set_grad_ready`), the
//! globals and the loss after it.

mod in_process;
mod nccl;
mod single;
mod tcp;

pub use in_process::InProcess;
pub use nccl::Nccl;
pub use single::Single;
pub use tcp::{Launch, Tcp, DEFAULT_JOIN_TIMEOUT};

use anyhow::{bail, Result};

use crate::mem::{DType, View};
use crate::ops::{Backend, BackendExt};

/// What a [`Comm`] has moved so far, for `bench` and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommStats {
    /// Calls of [`Comm::all_reduce_sum`].
    pub all_reduces: u64,
    /// Bytes summed over all ranks (each rank's contribution counted once).
    pub all_reduce_bytes: u64,
    /// Calls of [`Comm::broadcast`].
    pub broadcasts: u64,
}

/// The collectives one replica needs.
pub trait Comm: Send + Sync {
    /// This replica's index, `0..world_size()`.
    fn rank(&self) -> usize;
    /// How many replicas train together.
    fn world_size(&self) -> usize;
    /// Replaces the fp32 buffer `buf` of backend `be` by its sum over all
    /// ranks. Every rank gets the same bits.
    fn all_reduce_sum(&self, be: &dyn Backend, buf: View) -> Result<()>;
    /// [`Comm::all_reduce_sum`] of a gradient that is complete while the
    /// backward pass goes on. An implementation may queue it beside the
    /// rest of the pass (NCCL: on a stream of its own, after an event on
    /// the compute stream) as long as [`Comm::wait_overlapped`] orders the
    /// compute stream after it. By default it is the plain all-reduce.
    fn all_reduce_sum_overlapped(&self, be: &dyn Backend, buf: View) -> Result<()> {
        self.all_reduce_sum(be, buf)
    }
    /// Makes the work queued after this call on `be` wait for every
    /// [`Comm::all_reduce_sum_overlapped`] before it.
    fn wait_overlapped(&self, _be: &dyn Backend) -> Result<()> {
        Ok(())
    }
    /// Makes every rank's `bytes` equal to rank `root`'s (their lengths may
    /// differ before the call). Host bytes: an agent action, a checksum.
    fn broadcast(&self, be: &dyn Backend, root: usize, bytes: &mut Vec<u8>) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    fn stats(&self) -> CommStats;
}

/// Sums `grads` (fp32 gradient buffers, e.g. [`Model::gradients_to_reduce`])
/// over all replicas, in order. Each replica scales its gradient by
/// `1 / world_size` when it accumulates it, so the sum is the gradient of
/// the mean loss over the whole batch.
///
/// [`Model::gradients_to_reduce`]: crate::model::Model::gradients_to_reduce
pub fn all_reduce_gradients(comm: &dyn Comm, be: &dyn Backend, grads: &[View]) -> Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    for &g in grads {
        comm.all_reduce_sum(be, g)?;
    }
    Ok(())
}

/// Checks that `value` (a checksum of the tie table, say) is the same on
/// every rank. On a mismatch every rank returns the same error, which names
/// how many ranks differ from rank 0 and what `what` is.
pub fn same_on_every_rank(comm: &dyn Comm, be: &dyn Backend, what: &str, value: u64) -> Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let mut root_value = value.to_le_bytes().to_vec();
    comm.broadcast(be, 0, &mut root_value)?;
    let differs = root_value != value.to_le_bytes();
    // Every rank learns how many ranks differ, so they all stop together.
    let count = be.alloc(DType::F32, 1)?;
    be.upload(count.view(), &[f32::from(u8::from(differs))])?;
    comm.all_reduce_sum(be, count.view())?;
    let differing = be.download::<f32>(count.view())?[0] as usize;
    if differing > 0 {
        bail!(
            "{what} differs between replicas: {differing} of {} ranks disagree with rank 0{}; \
             the replicas no longer train the same model",
            comm.world_size(),
            if differs {
                format!(" (this is rank {})", comm.rank())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The checks every implementation makes before an all-reduce.
fn check_all_reduce(buf: View) -> Result<()> {
    if buf.dtype != DType::F32 {
        bail!(
            "all-reduce of a {} buffer: gradients are summed in fp32",
            buf.dtype
        );
    }
    Ok(())
}

/// Native-endian fp32 values from bytes (any alignment).
fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The element-wise sum of every rank's fp32 bytes, rank 0's first, then
/// rank 1's, ...: the same order, so the same bits, on every rank and in
/// every implementation that sums on the host.
fn sum_in_rank_order(all: &[Vec<u8>]) -> Vec<f32> {
    let mut sum = floats(&all[0]);
    for bytes in &all[1..] {
        sum.iter_mut().zip(floats(bytes)).for_each(|(s, v)| *s += v);
    }
    sum
}

/// FNV-1a over `bytes`: a checksum of small host data (a tie table) that is
/// the same on every machine.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
