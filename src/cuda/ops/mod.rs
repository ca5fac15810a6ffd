//! The launchers, one file per kernel family: each op struct implements
//! [`KernelOp`] in the file of the kernels it launches.

mod activation;
mod attention;
mod elementwise;
mod embedding;
mod gemm;
mod layernorm;
mod loss;
mod optimizer;

pub use gemm::{mma_kernel, Gemm};

use super::launch::{Args, Launcher};
use super::module::KernelId;
use crate::mem::View;
use crate::ops::registry::for_each_op;
use crate::ops::Op;
use anyhow::Result;

/// An op's kernels: what to launch, with which geometry and arguments.
trait KernelOp {
    /// Launches the op; its contract check has passed.
    fn launch(&self, l: &Launcher) -> Result<()>;
}

macro_rules! kernel_dispatch {
    ($($family:ident::$op:ident => $case:path,)*) => {
        /// Launches `op`'s kernels (its contract check has passed).
        pub(super) fn dispatch(op: &Op, l: &Launcher) -> Result<()> {
            match op {
                $(Op::$op(args) => KernelOp::launch(args, l),)*
            }
        }
    };
}
for_each_op!(kernel_dispatch);

/// Launches a 1-D grid-stride kernel whose parameters are one pointer per
/// view and then the element count, `views[0].len` (the element type is
/// `views[0]`'s): `(out, inp, n)`, `(dinp, inp, dout, n)`, `(out, a, b, n)`.
fn pointwise(l: &Launcher, kernel: &KernelId, views: &[View]) -> Result<()> {
    let n = views[0].len;
    let args = views.iter().fold(Args::new(), |args, &v| args.ptr(v));
    l.launch_1d(kernel, views[0].dtype, n, args.u64(n as u64))
}
