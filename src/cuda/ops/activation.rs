//! Launchers of kernels/activation.cu: 1-D grid-stride loops.

use super::{pointwise, KernelOp};
use crate::cuda::launch::{Args, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::mem::View;
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
        pointwise(l, &GELU_FWD, &[self.out, self.inp])
    }
}

impl KernelOp for GeluBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        pointwise(l, &GELU_BWD, &[self.dinp, self.inp, self.dout])
    }
}

impl KernelOp for GeluErfFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        pointwise(l, &GELU_ERF_FWD, &[self.out, self.inp])
    }
}

impl KernelOp for GeluErfBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        pointwise(l, &GELU_ERF_BWD, &[self.dinp, self.inp, self.dout])
    }
}

/// Both dropout kernels: `(out, inp, p, scale, seed, offset, n)`, with
/// `scale = 1 / (1 - p)`, or 0 for `p == 1` (everything dropped, no
/// 0 * inf), as the CPU reference does; computed once here rather than per
/// element.
fn dropout(
    l: &Launcher,
    kernel: &KernelId,
    [out, inp]: [View; 2],
    p: f32,
    seed: u64,
    offset: u64,
) -> Result<()> {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let n = out.len;
    let args = Args::new()
        .ptr(out)
        .ptr(inp)
        .f32(p)
        .f32(scale)
        .u64(seed)
        .u64(offset)
        .u64(n as u64);
    l.launch_1d(kernel, out.dtype, n, args)
}

impl KernelOp for DropoutFwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let views = [self.out, self.inp];
        dropout(l, &DROPOUT_FWD, views, self.p, self.seed, self.offset)
    }
}

impl KernelOp for DropoutBwd {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let views = [self.dinp, self.dout];
        dropout(l, &DROPOUT_BWD, views, self.p, self.seed, self.offset)
    }
}
