//! `KernelBackend<D>`: the [`Backend`] ops as kernel launches on any
//! [`Device`] — the GPU (`CudaDevice`) or the CPU emulator (`EmuDevice`).
//!
//! Each op checks its shapes, packs its arguments the way `cuLaunchKernel`
//! takes them and launches one kernel of `kernels/<family>.cu`. To add a
//! family: write the kernels, then replace the op's `no_kernel` call with a
//! launch through [`KernelBackend::launch`] or [`KernelBackend::launch_1d`].

use super::{AdamWStep, AttnShape, Backend, Memory, View};
use crate::device::{Device, LaunchDims};
use anyhow::{bail, ensure, Context, Result};
use std::ffi::c_void;
use std::sync::Arc;

/// Threads per block of the 1-D elementwise kernels: a multiple of the warp
/// size, small enough that several blocks fit on every SM.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Cap on the 1-D grid: 1024 blocks of 256 threads is about one full wave on
/// an H100 (132 SMs x 2048 resident threads); the kernels' grid-stride loops
/// cover bigger tensors with several elements per thread. Fewer, busier
/// threads also make the emulator several times faster (a thread costs a fiber).
pub const MAX_GRID_1D: u64 = 1024;

/// Blocks for `n` elements, one per thread, capped at [`MAX_GRID_1D`].
pub fn grid_1d(n: u64, block: u32) -> u32 {
    n.div_ceil(block as u64).clamp(1, MAX_GRID_1D) as u32
}

/// A kernel argument: a pointer to the value, as `cuLaunchKernel` wants.
pub fn arg<T>(value: &mut T) -> *mut c_void {
    value as *mut T as *mut c_void
}

pub struct KernelBackend<D: Device> {
    device: Arc<D>,
}

fn no_kernel<T>(op: &str) -> Result<T> {
    bail!("{op} has no kernel yet (use the cpu backend)")
}

fn same_len(op: &str, a: (&str, usize), b: (&str, usize)) -> Result<()> {
    ensure!(
        a.1 == b.1,
        "{op}: {} has {} elements but {} has {}",
        a.0,
        a.1,
        b.0,
        b.1
    );
    Ok(())
}

/// Fails when the output shares memory with an input it may not alias:
/// the kernels read and write through different pointers, so a partial
/// overlap would give results that depend on thread timing.
fn disjoint(op: &str, out: (&str, View<f32>), inputs: &[(&str, View<f32>)]) -> Result<()> {
    let (o0, o1) = (out.1.addr, out.1.addr + out.1.bytes() as u64);
    for (name, v) in inputs {
        let (i0, i1) = (v.addr, v.addr + v.bytes() as u64);
        ensure!(
            o0 >= i1 || i0 >= o1 || out.1.len == 0 || v.len == 0,
            "{op}: output {} overlaps input {name}",
            out.0
        );
    }
    Ok(())
}

/// `1 / (1 - p)`, or 0 for `p == 1` (everything dropped, no 0 * inf), as the
/// CPU reference does.
fn check_dropout_p(op: &str, p: f32) -> Result<f32> {
    ensure!(
        (0.0..=1.0).contains(&p),
        "{op}: dropout probability {p} is not in [0, 1]"
    );
    Ok(if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 })
}

impl<D: Device> KernelBackend<D> {
    pub fn new(device: D) -> Self {
        KernelBackend {
            device: Arc::new(device),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Launches `kernel`, naming it and its geometry in any error.
    ///
    /// # Safety
    /// As [`Device::launch`]: `args` must match the kernel's parameters.
    pub unsafe fn launch(
        &self,
        kernel: &str,
        dims: LaunchDims,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.device.launch(kernel, dims, args)
    }

    /// Launches a 1-D grid-stride kernel over `n` elements; nothing for `n == 0`.
    ///
    /// # Safety
    /// As [`Device::launch`].
    pub unsafe fn launch_1d(&self, kernel: &str, n: usize, args: &mut [*mut c_void]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let dims = LaunchDims {
            grid: [grid_1d(n as u64, ELEMENTWISE_BLOCK), 1, 1],
            block: [ELEMENTWISE_BLOCK, 1, 1],
            shared_bytes: 0,
        };
        self.launch(kernel, dims, args)
            .with_context(|| format!("{} backend: {kernel} over {n} elements", self.device.name()))
    }

    fn upload<T: bytemuck::Pod>(&self, dst: View<T>, src: &[T]) -> Result<()> {
        ensure!(
            src.len() == dst.len,
            "upload: {} host elements into a view of {}",
            src.len(),
            dst.len
        );
        self.device.copy_htod(dst.addr, bytemuck::cast_slice(src))
    }

    fn download<T: bytemuck::Pod + Default>(&self, src: View<T>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); src.len];
        self.device
            .copy_dtoh(bytemuck::cast_slice_mut(&mut out), src.addr)?;
        Ok(out)
    }
}

impl<D: Device> Backend for KernelBackend<D> {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn memory(&self) -> Arc<dyn Memory> {
        self.device.memory()
    }
    fn upload_f32(&self, dst: View<f32>, src: &[f32]) -> Result<()> {
        self.upload(dst, src)
    }
    fn download_f32(&self, src: View<f32>) -> Result<Vec<f32>> {
        self.download(src)
    }
    fn upload_u32(&self, dst: View<u32>, src: &[u32]) -> Result<()> {
        self.upload(dst, src)
    }
    fn download_u32(&self, src: View<u32>) -> Result<Vec<u32>> {
        self.download(src)
    }
    fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }

    // ---- elementwise (kernels/elementwise.cu) ----------------------------

    fn fill(&self, dst: View<f32>, value: f32) -> Result<()> {
        let (mut d, mut v, mut n) = (dst.addr, value, dst.len as u64);
        // SAFETY: fill_f32(float*, float, u64) over `dst`.
        unsafe {
            self.launch_1d(
                "fill_f32",
                dst.len,
                &mut [arg(&mut d), arg(&mut v), arg(&mut n)],
            )
        }
    }

    fn copy(&self, dst: View<f32>, src: View<f32>) -> Result<()> {
        same_len("copy", ("dst", dst.len), ("src", src.len))?;
        disjoint("copy", ("dst", dst), &[("src", src)])?;
        let (mut d, mut s, mut n) = (dst.addr, src.addr, dst.len as u64);
        // SAFETY: copy_f32(float*, const float*, u64).
        unsafe {
            self.launch_1d(
                "copy_f32",
                dst.len,
                &mut [arg(&mut d), arg(&mut s), arg(&mut n)],
            )
        }
    }

    fn add(&self, out: View<f32>, a: View<f32>, b: View<f32>) -> Result<()> {
        same_len("add", ("out", out.len), ("a", a.len))?;
        same_len("add", ("out", out.len), ("b", b.len))?;
        // `out` may be exactly `a` or `b` (each element is read, then written
        // by one thread), but must not partly overlap them.
        let others: Vec<_> = [("a", a), ("b", b)]
            .into_iter()
            .filter(|(_, v)| v.addr != out.addr)
            .collect();
        disjoint("add", ("out", out), &others)?;
        let (mut o, mut pa, mut pb, mut n) = (out.addr, a.addr, b.addr, out.len as u64);
        // SAFETY: add_f32(float*, const float*, const float*, u64).
        unsafe {
            self.launch_1d(
                "add_f32",
                out.len,
                &mut [arg(&mut o), arg(&mut pa), arg(&mut pb), arg(&mut n)],
            )
        }
    }

    fn accumulate(&self, dst: View<f32>, src: View<f32>) -> Result<()> {
        same_len("accumulate", ("dst", dst.len), ("src", src.len))?;
        disjoint("accumulate", ("dst", dst), &[("src", src)])?;
        let (mut d, mut s, mut n) = (dst.addr, src.addr, dst.len as u64);
        // SAFETY: accumulate_f32(float*, const float*, u64).
        unsafe {
            self.launch_1d(
                "accumulate_f32",
                dst.len,
                &mut [arg(&mut d), arg(&mut s), arg(&mut n)],
            )
        }
    }

    fn gelu_fwd(&self, out: View<f32>, inp: View<f32>) -> Result<()> {
        same_len("gelu_fwd", ("out", out.len), ("inp", inp.len))?;
        disjoint("gelu_fwd", ("out", out), &[("inp", inp)])?;
        let (mut o, mut i, mut n) = (out.addr, inp.addr, out.len as u64);
        // SAFETY: gelu_fwd_f32(float*, const float*, u64).
        unsafe {
            self.launch_1d(
                "gelu_fwd_f32",
                out.len,
                &mut [arg(&mut o), arg(&mut i), arg(&mut n)],
            )
        }
    }

    fn gelu_bwd(&self, dinp: View<f32>, inp: View<f32>, dout: View<f32>) -> Result<()> {
        same_len("gelu_bwd", ("dinp", dinp.len), ("inp", inp.len))?;
        same_len("gelu_bwd", ("dinp", dinp.len), ("dout", dout.len))?;
        disjoint("gelu_bwd", ("dinp", dinp), &[("inp", inp), ("dout", dout)])?;
        let (mut di, mut i, mut d, mut n) = (dinp.addr, inp.addr, dout.addr, dinp.len as u64);
        // SAFETY: gelu_bwd_f32(float*, const float*, const float*, u64).
        unsafe {
            self.launch_1d(
                "gelu_bwd_f32",
                dinp.len,
                &mut [arg(&mut di), arg(&mut i), arg(&mut d), arg(&mut n)],
            )
        }
    }

    fn dropout_fwd(
        &self,
        out: View<f32>,
        inp: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()> {
        same_len("dropout_fwd", ("out", out.len), ("inp", inp.len))?;
        disjoint("dropout_fwd", ("out", out), &[("inp", inp)])?;
        let mut scale = check_dropout_p("dropout_fwd", p)?;
        let (mut o, mut i, mut p, mut seed, mut offset, mut n) =
            (out.addr, inp.addr, p, seed, offset, out.len as u64);
        // SAFETY: dropout_fwd_f32(float*, const float*, float, float, u64, u64, u64).
        unsafe {
            self.launch_1d(
                "dropout_fwd_f32",
                out.len,
                &mut [
                    arg(&mut o),
                    arg(&mut i),
                    arg(&mut p),
                    arg(&mut scale),
                    arg(&mut seed),
                    arg(&mut offset),
                    arg(&mut n),
                ],
            )
        }
    }

    fn dropout_bwd(
        &self,
        dinp: View<f32>,
        dout: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()> {
        same_len("dropout_bwd", ("dinp", dinp.len), ("dout", dout.len))?;
        disjoint("dropout_bwd", ("dinp", dinp), &[("dout", dout)])?;
        let mut scale = check_dropout_p("dropout_bwd", p)?;
        let (mut di, mut d, mut p, mut seed, mut offset, mut n) =
            (dinp.addr, dout.addr, p, seed, offset, dinp.len as u64);
        // SAFETY: dropout_bwd_f32(float*, const float*, float, float, u64, u64, u64).
        unsafe {
            self.launch_1d(
                "dropout_bwd_f32",
                dinp.len,
                &mut [
                    arg(&mut di),
                    arg(&mut d),
                    arg(&mut p),
                    arg(&mut scale),
                    arg(&mut seed),
                    arg(&mut offset),
                    arg(&mut n),
                ],
            )
        }
    }

    // ---- families still without kernels ---------------------------------

    fn embedding_fwd(
        &self,
        _out: View<f32>,
        _tokens: View<u32>,
        _wte: View<f32>,
        _wpe: View<f32>,
        _batch: usize,
        _seq: usize,
        _channels: usize,
    ) -> Result<()> {
        no_kernel("embedding_fwd")
    }
    fn embedding_bwd(
        &self,
        _dwte: View<f32>,
        _dwpe: View<f32>,
        _dout: View<f32>,
        _tokens: View<u32>,
        _batch: usize,
        _seq: usize,
        _channels: usize,
    ) -> Result<()> {
        no_kernel("embedding_bwd")
    }
    fn layernorm_fwd(
        &self,
        _out: View<f32>,
        _mean: View<f32>,
        _rstd: View<f32>,
        _inp: View<f32>,
        _weight: View<f32>,
        _bias: View<f32>,
        _rows: usize,
        _channels: usize,
    ) -> Result<()> {
        no_kernel("layernorm_fwd")
    }
    fn layernorm_bwd(
        &self,
        _dinp: View<f32>,
        _dweight: Option<View<f32>>,
        _dbias: Option<View<f32>>,
        _dout: View<f32>,
        _inp: View<f32>,
        _weight: View<f32>,
        _mean: View<f32>,
        _rstd: View<f32>,
        _rows: usize,
        _channels: usize,
    ) -> Result<()> {
        no_kernel("layernorm_bwd")
    }
    fn matmul_fwd(
        &self,
        _out: View<f32>,
        _inp: View<f32>,
        _weight: View<f32>,
        _bias: Option<View<f32>>,
        _rows: usize,
        _in_ch: usize,
        _out_ch: usize,
    ) -> Result<()> {
        no_kernel("matmul_fwd")
    }
    fn matmul_bwd(
        &self,
        _dinp: Option<View<f32>>,
        _dweight: Option<View<f32>>,
        _dbias: Option<View<f32>>,
        _dout: View<f32>,
        _inp: View<f32>,
        _weight: View<f32>,
        _rows: usize,
        _in_ch: usize,
        _out_ch: usize,
    ) -> Result<()> {
        no_kernel("matmul_bwd")
    }
    fn attention_fwd(
        &self,
        _out: View<f32>,
        _att: View<f32>,
        _qkv: View<f32>,
        _shape: AttnShape,
    ) -> Result<()> {
        no_kernel("attention_fwd")
    }
    fn attention_bwd(
        &self,
        _dqkv: View<f32>,
        _scratch: View<f32>,
        _dout: View<f32>,
        _qkv: View<f32>,
        _att: View<f32>,
        _shape: AttnShape,
    ) -> Result<()> {
        no_kernel("attention_bwd")
    }
    fn softmax_xent(
        &self,
        _losses: View<f32>,
        _dlogits: Option<View<f32>>,
        _logits: View<f32>,
        _targets: View<u32>,
        _rows: usize,
        _vocab: usize,
        _ignore_index: u32,
        _grad_scale: f32,
    ) -> Result<()> {
        no_kernel("softmax_xent")
    }
    fn adamw(
        &self,
        _params: View<f32>,
        _grads: View<f32>,
        _m: View<f32>,
        _v: View<f32>,
        _hp: AdamWStep,
    ) -> Result<()> {
        no_kernel("adamw")
    }
    fn sum_squares(&self, _acc: View<f32>, _x: View<f32>) -> Result<()> {
        no_kernel("sum_squares")
    }
}
