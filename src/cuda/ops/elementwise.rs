//! Launchers of kernels/elementwise.cu: 1-D grid-stride loops.

use super::{pointwise, KernelOp};
use crate::cuda::launch::{Args, Launcher};
use crate::cuda::module::{kernel_id, KernelId};
use crate::ops::elementwise::{Accumulate, Add, Cast, CopyView, Fill};
use anyhow::Result;

const FILL: KernelId = kernel_id!(elementwise, fill);
const COPY: KernelId = kernel_id!(elementwise, copy);
/// Named by the destination's dtype: `elementwise_cast_bf16` reads f32.
const CAST: KernelId = kernel_id!(elementwise, cast);
const ADD: KernelId = kernel_id!(elementwise, add);
const ACCUMULATE: KernelId = kernel_id!(elementwise, accumulate);

impl KernelOp for Fill {
    fn launch(&self, l: &Launcher) -> Result<()> {
        let n = self.dst.len;
        let args = Args::new().ptr(self.dst).f32(self.value).u64(n as u64);
        l.launch_1d(&FILL, self.dst.dtype, n, args)
    }
}

impl KernelOp for CopyView {
    fn launch(&self, l: &Launcher) -> Result<()> {
        // The contract allows `dst` to be exactly `src`: nothing to do (and
        // the kernel's pointers are `__restrict__`).
        if self.dst.addr == self.src.addr {
            return Ok(());
        }
        pointwise(l, &COPY, &[self.dst, self.src])
    }
}

impl KernelOp for Cast {
    fn launch(&self, l: &Launcher) -> Result<()> {
        pointwise(l, &CAST, &[self.dst, self.src])
    }
}

impl KernelOp for Add {
    fn launch(&self, l: &Launcher) -> Result<()> {
        pointwise(l, &ADD, &[self.out, self.a, self.b])
    }
}

impl KernelOp for Accumulate {
    fn launch(&self, l: &Launcher) -> Result<()> {
        pointwise(l, &ACCUMULATE, &[self.dst, self.src])
    }
}
