//! Launchers of kernels/layernorm.cu: one warp per row.

use super::KernelOp;
use crate::cuda::launch::{to_u32, Args, LaunchDims, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::cuda::params::{LAYERNORM_BWD_MAX_GRID, ROW_BLOCK};
use crate::ops::layernorm::{LayernormBwd, LayernormFwd};
use anyhow::Result;

const FWD: KernelId = kernel_id!(layernorm, fwd);
const BWD: KernelId = kernel_id!(layernorm, bwd);

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
            .opt(self.dweight)
            .opt(self.dbias)
            .ptr(self.dout)
            .ptr(self.inp)
            .ptr(self.weight)
            .ptr(self.mean)
            .ptr(self.rstd)
            .u32(rows)
            .u32(c);
        // The block's partial dweight and dbias live in shared memory.
        let params = self.dweight.is_some() || self.dbias.is_some();
        let dims = LaunchDims {
            shared_bytes: if params { 2 * c * 4 } else { 0 },
            ..LaunchDims::linear(
                rows.div_ceil(ROW_BLOCK / 32).min(LAYERNORM_BWD_MAX_GRID),
                ROW_BLOCK,
            )
        };
        l.launch(&BWD, self.dinp.dtype, dims, args)
    }
}
