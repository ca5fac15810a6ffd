//! Launcher of kernels/loss.cu: one block per row.

use super::KernelOp;
use crate::cuda::launch::{to_u32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::XENT_BLOCK;
use crate::ops::loss::SoftmaxXent;
use anyhow::{ensure, Result};

const SOFTMAX_XENT: KernelId = kernel_id!(loss, softmax_xent);

impl KernelOp for SoftmaxXent {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.rows;
        if n == 0 {
            return Ok(());
        }
        ensure!(
            n <= i32::MAX as usize,
            "{n} rows exceed the grid limit of one launch"
        );
        // `dlogits` may be null (no gradient) or the logits themselves.
        let args = Args::new()
            .ptr(self.losses)
            .opt(self.dlogits)
            .ptr(self.logits)
            .ptr(self.targets)
            .u32(to_u32("vocabulary", self.vocab)?)
            .u32(to_u32("padded vocabulary", self.padded_vocab)?)
            .u32(self.ignore_index)
            .f32(self.grad_scale);
        let dims = LaunchDims::linear(n as u32, XENT_BLOCK);
        l.launch(&SOFTMAX_XENT, self.logits.dtype, dims, args)
    }
}
