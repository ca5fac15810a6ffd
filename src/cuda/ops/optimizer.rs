//! Launchers of kernels/optimizer.cu: 1-D grid-stride passes over parameters.

use super::KernelOp;
use crate::cuda::launch::{Args, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::ops::optimizer::{Adamw, SumSquares};
use anyhow::Result;

const ADAMW: KernelId = kernel_id!(optimizer, adamw);
const SUM_SQUARES: KernelId = kernel_id!(optimizer, sum_squares);

impl KernelOp for Adamw {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let hp = self.hp;
        // Bias corrections in f64, exactly as the CPU reference computes them.
        let t = hp.step as i32;
        let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
        let n = self.params.len;
        let args = Args::new()
            .ptr(self.params)
            .ptr(self.grads)
            .ptr(self.m)
            .ptr(self.v)
            .opt(self.copy)
            .f32(hp.beta1)
            .f32(hp.beta2)
            .f32(hp.eps)
            .f32(1.0 - hp.lr * hp.weight_decay)
            .f32((hp.lr as f64 / bc1) as f32)
            .f32(bc2.sqrt() as f32)
            .f32(hp.grad_scale)
            .u64(n as u64);
        l.launch_1d(&ADAMW, self.params.dtype, n, args)
    }
}

impl KernelOp for SumSquares {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.x.len;
        let args = Args::new()
            .ptr(self.acc.slice(0, 1))
            .ptr(self.x)
            .u64(n as u64);
        l.launch_1d(&SUM_SQUARES, self.x.dtype, n, args)
    }
}
