//! Launchers of kernels/optimizer.cu: 1-D grid-stride passes over parameters.

use super::KernelOp;
use crate::cuda::launch::{Args, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::mem::DType;
use crate::ops::optimizer::{
    stat, AdamWStep, Adamw, AdamwMulti, FinishStep, SumScaled, SumSquares,
};
use anyhow::Result;

const ADAMW: KernelId = kernel_id!(optimizer, adamw);
const ADAMW_MULTI: KernelId = kernel_id!(optimizer, adamw_multi);
const SUM_SQUARES: KernelId = kernel_id!(optimizer, sum_squares);
const SUM_SCALED: KernelId = kernel_id!(optimizer, sum_scaled);
const FINISH_STEP: KernelId = kernel_id!(optimizer, finish_step);

/// The hyper-parameters as the per-tensor kernel takes them: beta1, beta2,
/// eps, then decay, step_size and sqrt(1 - beta2^t)
/// ([`AdamWStep::schedule`]). The multi-tensor kernel reads the last three
/// from the step statistics instead.
fn adamw_scalars(args: Args, hp: &AdamWStep) -> Args {
    let [decay, step_size, bc2_sqrt] = hp.schedule();
    args.f32(hp.beta1)
        .f32(hp.beta2)
        .f32(hp.eps)
        .f32(decay)
        .f32(step_size)
        .f32(bc2_sqrt)
}

impl KernelOp for Adamw {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.params.len;
        let args = Args::new()
            .ptr(self.params)
            .ptr(self.grads)
            .ptr(self.m)
            .ptr(self.v)
            .opt(self.copy)
            .ptr(self.stats.slice(0, stat::LEN));
        let args = adamw_scalars(args, &self.hp).u64(n as u64);
        l.launch_1d(&ADAMW, self.params.dtype, n, args)
    }
}

impl KernelOp for AdamwMulti {
    fn launch(&self, l: &Launcher) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(self.list)
            .u64(self.count as u64)
            .ptr(self.stats.slice(0, stat::LEN))
            .f32(self.betas.beta1)
            .f32(self.betas.beta2)
            .f32(self.betas.eps);
        l.launch_1d(&ADAMW_MULTI, DType::F32, self.max_len, args)
    }
}

impl KernelOp for SumSquares {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.x.len;
        let args = Args::new()
            .ptr(self.acc.slice(0, 1))
            .ptr(self.scratch)
            .ptr(self.x)
            .u64(n as u64);
        l.launch_1d(&SUM_SQUARES, self.x.dtype, n, args)
    }
}

impl KernelOp for SumScaled {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.x.len;
        let args = Args::new()
            .ptr(self.acc.slice(0, 1))
            .ptr(self.scratch)
            .ptr(self.x)
            .f32(self.scale)
            .u64(n as u64);
        l.launch_1d(&SUM_SCALED, self.x.dtype, n, args)
    }
}

impl KernelOp for FinishStep {
    fn launch(&self, l: &Launcher) -> Result<()> {
        // One element: a single thread does the scalar arithmetic.
        let args = Args::new()
            .ptr(self.stats.slice(0, stat::LEN))
            .f32(self.max_norm)
            .u64(1);
        l.launch_1d(&FINISH_STEP, DType::F32, 1, args)
    }
}
