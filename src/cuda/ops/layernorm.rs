//! Launchers of kernels/layernorm.cu: one warp per row, and the backward's
//! weight and bias gradients one block per 32 columns.

use super::KernelOp;
use crate::cuda::launch::{to_u32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::{LAYERNORM_PARAMS_BLOCK, ROW_BLOCK};
use crate::ops::layernorm::{LayernormBwd, LayernormFwd};
use anyhow::Result;

const FWD: KernelId = kernel_id!(layernorm, fwd);
const BWD_INP: KernelId = kernel_id!(layernorm, bwd_inp);
const BWD_PARAMS: KernelId = kernel_id!(layernorm, bwd_params);

impl KernelOp for LayernormFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let rows = to_u32("rows", self.rows)?;
        if rows == 0 {
            return Ok(());
        }
        let args = Args::new()
            .ptr(self.out)
            .ptr(self.mean)
            .ptr(self.rstd)
            .ptr(self.inp)
            .ptr(self.weight)
            .ptr(self.bias)
            .u32(rows)
            .u32(to_u32("channels", self.channels)?)
            .f32(self.eps);
        let dims = LaunchDims::linear(rows.div_ceil(ROW_BLOCK / 32), ROW_BLOCK);
        l.launch(&FWD, self.out.dtype, dims, args)
    }
}

impl KernelOp for LayernormBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let rows = to_u32("rows", self.rows)?;
        if rows == 0 {
            return Ok(());
        }
        let c = to_u32("channels", self.channels)?;
        let args = Args::new()
            .ptr(self.dinp)
            .ptr(self.dout)
            .ptr(self.inp)
            .ptr(self.weight)
            .ptr(self.mean)
            .ptr(self.rstd)
            .u32(rows)
            .u32(c);
        let dims = LaunchDims::linear(rows.div_ceil(ROW_BLOCK / 32), ROW_BLOCK);
        l.launch(&BWD_INP, self.dinp.dtype, dims, args)?;
        if self.dweight.is_none() && self.dbias.is_none() {
            return Ok(());
        }
        let args = Args::new()
            .opt(self.dweight)
            .opt(self.dbias)
            .ptr(self.dout)
            .ptr(self.inp)
            .ptr(self.mean)
            .ptr(self.rstd)
            .u32(rows)
            .u32(c);
        let dims = LaunchDims::linear(c.div_ceil(32), LAYERNORM_PARAMS_BLOCK);
        l.launch(&BWD_PARAMS, self.dinp.dtype, dims, args)
    }
}
