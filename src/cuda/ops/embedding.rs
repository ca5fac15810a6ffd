//! Launchers of kernels/embedding.cu.

use super::KernelOp;
use crate::cuda::launch::{to_u32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::ROW_BLOCK;
use crate::ops::embedding::{EmbeddingBwd, EmbeddingFwd};
use anyhow::{ensure, Result};

const FWD: KernelId = kernel_id!(embedding, fwd);
const BWD: KernelId = kernel_id!(embedding, bwd);

impl KernelOp for EmbeddingFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let (n, c) = (self.batch * self.seq, self.channels);
        let rows = to_u32("batch x seq", n)?;
        if rows == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(self.out)
            .ptr(self.tokens)
            .ptr(self.wte)
            .ptr(self.wpe)
            .opt(self.token_type)
            .u32(rows)
            .u32(to_u32("seq", self.seq)?)
            .u32(to_u32("channels", c)?)
            .u32(to_u32("vocabulary", self.wte.len / c)?);
        let dims = LaunchDims::linear(rows.div_ceil(ROW_BLOCK / 32), ROW_BLOCK);
        l.launch(&FWD, self.out.dtype, dims, args)
    }
}

impl KernelOp for EmbeddingBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let c = self.channels;
        if self.batch == 0 {
            return Ok(());
        }
        // One thread per (position, channel), indexed in 32 bits.
        ensure!(
            self.seq * c <= i32::MAX as usize,
            "seq x channels = {} is too large for one launch",
            self.seq * c
        );
        let args = Args::new()
            .ptr(self.dwte)
            .ptr(self.dwpe)
            .opt(self.dtoken_type)
            .ptr(self.dout)
            .ptr(self.tokens)
            .u32(to_u32("batch", self.batch)?)
            .u32(to_u32("seq", self.seq)?)
            .u32(to_u32("channels", c)?)
            .u32(to_u32("vocabulary", self.dwte.len / c)?);
        // Named by the activations' dtype; the gradients are fp32.
        l.launch_1d(&BWD, self.dout.dtype, self.seq * c, args)
    }
}
