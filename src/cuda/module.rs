//! The compiled kernels: their names and C signatures (read from
//! `kernels/**/*.cu` by build.rs), lookup by family, op and dtype, and the
//! PTX and cubins embedded for the GPU.
//!
//! Kernel names follow `<family>_<op>_<dtype>` (`activation_gelu_fwd_f32`):
//! a kernel templated over the element type is instantiated once per dtype
//! under that name, and a launcher asks for `kernel_id!(activation,
//! gelu_fwd).name(view.dtype)`. A dtype without an instantiation is an error
//! that says which dtypes exist.

use crate::mem::DType;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A kernel family and op; one kernel per dtype it is instantiated for.
pub struct KernelId {
    pub family: &'static str,
    pub op: &'static str,
    /// `<family>_<op>_<dtype>` for each of `DType::ALL`.
    names: [&'static str; 3],
}

impl KernelId {
    pub const fn new(family: &'static str, op: &'static str, names: [&'static str; 3]) -> Self {
        KernelId { family, op, names }
    }

    /// The kernel's name for `dtype` (whether or not it was built).
    pub fn name(&self, dtype: DType) -> &'static str {
        match dtype {
            DType::F32 => self.names[0],
            DType::BF16 => self.names[1],
            DType::U32 => self.names[2],
        }
    }

    /// The dtypes this kernel is built for, for messages.
    pub fn dtypes(&self) -> String {
        let built: Vec<&str> = DType::ALL
            .iter()
            .filter(|&&d| signature(self.name(d)).is_some())
            .map(|d| d.name())
            .collect();
        if built.is_empty() {
            "no dtype".into()
        } else {
            built.join(", ")
        }
    }
}

/// `kernel_id!(family, op)`: the [`KernelId`] of `<family>_<op>_<dtype>`.
macro_rules! kernel_id {
    ($family:ident, $op:ident) => {
        $crate::cuda::module::KernelId::new(
            stringify!($family),
            stringify!($op),
            [
                concat!(stringify!($family), "_", stringify!($op), "_f32"),
                concat!(stringify!($family), "_", stringify!($op), "_bf16"),
                concat!(stringify!($family), "_", stringify!($op), "_u32"),
            ],
        )
    };
}
pub(crate) use kernel_id;

/// A kernel parameter's type as build.rs read it from the C declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// A pointer to elements of this dtype (`None`: a pointee we do not map).
    Ptr(Option<DType>),
    F32,
    U32,
    U64,
    I32,
    /// A struct passed by value, by its C name.
    Struct(&'static str),
}

/// One parameter of a kernel.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    /// The type as written in the .cu file, for messages.
    pub c_type: &'static str,
}

/// A kernel of `kernels/`, as declared there.
pub struct KernelSignature {
    pub name: &'static str,
    /// The source file, relative to `kernels/`.
    pub file: &'static str,
    pub params: &'static [Param],
}

include!(concat!(env!("OUT_DIR"), "/kernel_signatures.rs"));

/// The parameters of the kernel `name`, if `kernels/` defines it.
pub fn signature(name: &str) -> Option<&'static [Param]> {
    static BY_NAME: OnceLock<HashMap<&'static str, &'static KernelSignature>> = OnceLock::new();
    BY_NAME
        .get_or_init(|| KERNEL_SIGNATURES.iter().map(|k| (k.name, k)).collect())
        .get(name)
        .map(|k| k.params)
}

/// The kernels of one `kernels/**/*.cu` file, compiled by build.rs for the GPU.
pub struct GpuModule {
    /// The file, relative to `kernels/`, without `.cu`.
    pub name: &'static str,
    /// Its `extern "C" __global__` kernels.
    pub kernels: &'static [&'static str],
    /// (virtual architecture, e.g. 80 for compute_80, PTX text)
    pub ptx: &'static [(u32, &'static str)],
    /// (real architecture, e.g. 90 for sm_90, cubin image)
    pub cubins: &'static [(u32, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/gpu_kernels.rs"));

/// What build.rs produced: the NVRTC version and targets, or why there are
/// no GPU kernels in this binary.
pub fn gpu_build_info() -> &'static str {
    GPU_BUILD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_found_by_family_op_and_dtype() {
        let id = kernel_id!(elementwise, fill);
        assert_eq!(id.name(DType::F32), "elementwise_fill_f32");
        assert_eq!(id.name(DType::BF16), "elementwise_fill_bf16");
        assert_eq!(id.dtypes(), "f32, bf16");
        let params = signature("elementwise_fill_f32").unwrap();
        let types: Vec<ParamType> = params.iter().map(|p| p.ty).collect();
        assert_eq!(
            types,
            [
                ParamType::Ptr(Some(DType::F32)),
                ParamType::F32,
                ParamType::U64
            ]
        );
        assert_eq!(params[0].name, "dst");
        // An op with an fp32 kernel only.
        assert_eq!(kernel_id!(optimizer, sum_squares).dtypes(), "f32");
        assert!(signature("optimizer_sum_squares_bf16").is_none());
    }

    #[test]
    fn the_bf16_gemm_is_registered_with_its_parameter_struct() {
        // Declared `void __launch_bounds__(...) gemm_mma_nt_bf16(`: build.rs
        // reads the name and parameters past the bounds.
        for id in [kernel_id!(gemm, mma_nt), kernel_id!(gemm, mma_tn_unaligned)] {
            assert_eq!(id.dtypes(), "bf16");
            let params = signature(id.name(DType::BF16)).unwrap();
            let types: Vec<ParamType> = params.iter().map(|p| p.ty).collect();
            assert_eq!(types, [ParamType::Struct("GemmBf16Params")]);
        }
    }
}
