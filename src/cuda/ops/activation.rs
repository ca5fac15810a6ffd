//! Launchers of kernels/activation.cu: 1-D grid-stride loops.

use super::KernelOp;
use crate::cuda::launch::{Args, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::ops::activation::{DropoutBwd, DropoutFwd, GeluBwd, GeluErfBwd, GeluErfFwd, GeluFwd};
use anyhow::Result;

const GELU_FWD: KernelId = kernel_id!(activation, gelu_fwd);
const GELU_BWD: KernelId = kernel_id!(activation, gelu_bwd);
const GELU_ERF_FWD: KernelId = kernel_id!(activation, gelu_erf_fwd);
const GELU_ERF_BWD: KernelId = kernel_id!(activation, gelu_erf_bwd);
const DROPOUT_FWD: KernelId = kernel_id!(activation, dropout_fwd);
const DROPOUT_BWD: KernelId = kernel_id!(activation, dropout_bwd);

impl KernelOp for GeluFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.out.len;
        let args = Args::new().ptr(self.out).ptr(self.inp).u64(n as u64);
        l.launch_1d(&GELU_FWD, self.out.dtype, n, args)
    }
}

impl KernelOp for GeluBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.dinp.len;
        let args = Args::new()
            .ptr(self.dinp)
            .ptr(self.inp)
            .ptr(self.dout)
            .u64(n as u64);
        l.launch_1d(&GELU_BWD, self.dinp.dtype, n, args)
    }
}

impl KernelOp for GeluErfFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.out.len;
        let args = Args::new().ptr(self.out).ptr(self.inp).u64(n as u64);
        l.launch_1d(&GELU_ERF_FWD, self.out.dtype, n, args)
    }
}

impl KernelOp for GeluErfBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.dinp.len;
        let args = Args::new()
            .ptr(self.dinp)
            .ptr(self.inp)
            .ptr(self.dout)
            .u64(n as u64);
        l.launch_1d(&GELU_ERF_BWD, self.dinp.dtype, n, args)
    }
}

/// `1 / (1 - p)`, or 0 for `p == 1` (everything dropped, no 0 * inf), as the
/// CPU reference does; computed once here rather than per element.
fn keep_scale(p: f32) -> f32 {
    if p < 1.0 {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

impl KernelOp for DropoutFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.out.len;
        let args = Args::new()
            .ptr(self.out)
            .ptr(self.inp)
            .f32(self.p)
            .f32(keep_scale(self.p))
            .u64(self.seed)
            .u64(self.offset)
            .u64(n as u64);
        l.launch_1d(&DROPOUT_FWD, self.out.dtype, n, args)
    }
}

impl KernelOp for DropoutBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.dinp.len;
        let args = Args::new()
            .ptr(self.dinp)
            .ptr(self.dout)
            .f32(self.p)
            .f32(keep_scale(self.p))
            .u64(self.seed)
            .u64(self.offset)
            .u64(n as u64);
        l.launch_1d(&DROPOUT_BWD, self.dinp.dtype, n, args)
    }
}
