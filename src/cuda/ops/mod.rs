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

use super::launch::Launcher;
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
