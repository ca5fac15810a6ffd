//! `KernelBackend<D>`: the [`Backend`] ops as kernel launches on any
//! [`Device`] — the GPU (`CudaDevice`) or the CPU emulator (`EmuDevice`).
//!
//! Each op checks its shapes, packs its arguments the way `cuLaunchKernel`
//! takes them and launches the kernels of `kernels/<family>.cu` through
//! [`KernelBackend::launch`] or [`KernelBackend::launch_1d`].

use super::{AdamWStep, AttnShape, Backend, Memory, View};
use crate::device::{Device, LaunchDims};
use anyhow::{ensure, Context, Result};
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

    /// Launches `kernel`, naming it and its geometry in any error; makes the
    /// shared memory opt-in first where the launch needs it.
    ///
    /// # Safety
    /// As [`Device::launch`]: `args` must match the kernel's parameters.
    pub unsafe fn launch(
        &self,
        kernel: &str,
        dims: LaunchDims,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        // Without the opt-in a block gets 48 KiB minus the kernel's static
        // shared memory; the devices skip the call when the kernel already
        // has at least this much.
        if dims.shared_bytes > 0 {
            self.device
                .set_max_dynamic_shared(kernel, dims.shared_bytes)?;
        }
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

    // ---- embeddings, layernorm, attention, loss, optimizer ----------------

    fn embedding_fwd(
        &self,
        out: View<f32>,
        tokens: View<u32>,
        wte: View<f32>,
        wpe: View<f32>,
        batch: usize,
        seq: usize,
        channels: usize,
    ) -> Result<()> {
        let op = "embedding_fwd";
        let (n, c) = (batch * seq, channels);
        ensure!(c > 0, "{op}: zero channels");
        let vocab = wte.len / c;
        holds(op, "out", out.len, n * c)?;
        holds(op, "tokens", tokens.len, n)?;
        holds(op, "wpe", wpe.len, seq * c)?;
        let out = out.slice(0, n * c);
        disjoint(
            op,
            ("out", out),
            &[
                ("tokens", as_f32(tokens.slice(0, n))),
                ("wte", wte.slice(0, vocab * c)),
                ("wpe", wpe.slice(0, seq * c)),
            ],
        )?;
        let (mut o, mut tk, mut e, mut p) = (out.addr, tokens.addr, wte.addr, wpe.addr);
        let (mut rows, mut seq, mut c, mut vocab) = (
            fits_u32(op, "batch x seq", n)?,
            fits_u32(op, "seq", seq)?,
            fits_u32(op, "channels", c)?,
            fits_u32(op, "vocabulary", vocab)?,
        );
        // SAFETY: embedding_fwd_f32(float*, const u32*, const float*, const
        // float*, u32 rows, u32 seq, u32 channels, u32 vocab); the views hold
        // the shapes checked above, and the kernel skips token ids >= vocab.
        unsafe {
            self.launch_rows(
                op,
                "embedding_fwd_f32",
                rows,
                &mut [
                    arg(&mut o),
                    arg(&mut tk),
                    arg(&mut e),
                    arg(&mut p),
                    arg(&mut rows),
                    arg(&mut seq),
                    arg(&mut c),
                    arg(&mut vocab),
                ],
            )
        }
    }
    fn embedding_bwd(
        &self,
        dwte: View<f32>,
        dwpe: View<f32>,
        dout: View<f32>,
        tokens: View<u32>,
        batch: usize,
        seq: usize,
        channels: usize,
    ) -> Result<()> {
        let op = "embedding_bwd";
        let (n, c) = (batch * seq, channels);
        ensure!(c > 0, "{op}: zero channels");
        let vocab = dwte.len / c;
        holds(op, "dwpe", dwpe.len, seq * c)?;
        holds(op, "dout", dout.len, n * c)?;
        holds(op, "tokens", tokens.len, n)?;
        let (dwte, dwpe) = (dwte.slice(0, vocab * c), dwpe.slice(0, seq * c));
        let reads = [
            ("dout", dout.slice(0, n * c)),
            ("tokens", as_f32(tokens.slice(0, n))),
        ];
        disjoint(op, ("dwte", dwte), &[reads[0], reads[1], ("dwpe", dwpe)])?;
        disjoint(op, ("dwpe", dwpe), &reads)?;
        // The kernel indexes positions x channels in 32 bits.
        ensure!(
            seq * c <= i32::MAX as usize,
            "{op}: seq x channels = {} is too large for one launch",
            seq * c
        );
        let (mut de, mut dp, mut d, mut tk) = (dwte.addr, dwpe.addr, dout.addr, tokens.addr);
        let (mut batch, mut seq_u, mut c_u, mut vocab) = (
            fits_u32(op, "batch", batch)?,
            fits_u32(op, "seq", seq)?,
            fits_u32(op, "channels", c)?,
            fits_u32(op, "vocabulary", vocab)?,
        );
        if batch == 0 {
            return Ok(());
        }
        // SAFETY: embedding_bwd_f32(float*, float*, const float*, const u32*,
        // u32 batch, u32 seq, u32 channels, u32 vocab), one thread per
        // (position, channel); shapes checked above.
        unsafe {
            self.launch_1d(
                "embedding_bwd_f32",
                seq * c,
                &mut [
                    arg(&mut de),
                    arg(&mut dp),
                    arg(&mut d),
                    arg(&mut tk),
                    arg(&mut batch),
                    arg(&mut seq_u),
                    arg(&mut c_u),
                    arg(&mut vocab),
                ],
            )
        }
    }
    fn layernorm_fwd(
        &self,
        out: View<f32>,
        mean: View<f32>,
        rstd: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        bias: View<f32>,
        rows: usize,
        channels: usize,
    ) -> Result<()> {
        let op = "layernorm_fwd";
        let (n, c) = (rows, channels);
        ensure!(c > 0, "{op}: zero channels");
        for (name, v, len) in [
            ("out", out, n * c),
            ("mean", mean, n),
            ("rstd", rstd, n),
            ("inp", inp, n * c),
            ("weight", weight, c),
            ("bias", bias, c),
        ] {
            holds(op, name, v.len, len)?;
        }
        let (out, mean, rstd) = (out.slice(0, n * c), mean.slice(0, n), rstd.slice(0, n));
        let reads = [
            ("inp", inp.slice(0, n * c)),
            ("weight", weight.slice(0, c)),
            ("bias", bias.slice(0, c)),
        ];
        disjoint(
            op,
            ("out", out),
            &[reads[0], reads[1], reads[2], ("mean", mean), ("rstd", rstd)],
        )?;
        disjoint(
            op,
            ("mean", mean),
            &[reads[0], reads[1], reads[2], ("rstd", rstd)],
        )?;
        disjoint(op, ("rstd", rstd), &reads)?;
        let (mut o, mut m, mut r, mut x, mut w, mut b) = (
            out.addr,
            mean.addr,
            rstd.addr,
            inp.addr,
            weight.addr,
            bias.addr,
        );
        let (mut rows, mut c) = (fits_u32(op, "rows", n)?, fits_u32(op, "channels", c)?);
        // SAFETY: layernorm_fwd_f32(float* out, float* mean, float* rstd,
        // const float* inp, const float* weight, const float* bias, u32 rows,
        // u32 channels); shapes and overlaps checked above.
        unsafe {
            self.launch_rows(
                op,
                "layernorm_fwd_f32",
                rows,
                &mut [
                    arg(&mut o),
                    arg(&mut m),
                    arg(&mut r),
                    arg(&mut x),
                    arg(&mut w),
                    arg(&mut b),
                    arg(&mut rows),
                    arg(&mut c),
                ],
            )
        }
    }
    fn layernorm_bwd(
        &self,
        dinp: View<f32>,
        dweight: Option<View<f32>>,
        dbias: Option<View<f32>>,
        dout: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        mean: View<f32>,
        rstd: View<f32>,
        rows: usize,
        channels: usize,
    ) -> Result<()> {
        let op = "layernorm_bwd";
        let (n, c) = (rows, channels);
        ensure!(c > 0, "{op}: zero channels");
        let mut writes = vec![("dinp", dinp, n * c)];
        writes.extend(dweight.map(|v| ("dweight", v, c)));
        writes.extend(dbias.map(|v| ("dbias", v, c)));
        let reads = [
            ("dout", dout, n * c),
            ("inp", inp, n * c),
            ("weight", weight, c),
            ("mean", mean, n),
            ("rstd", rstd, n),
        ];
        for (name, v, len) in writes.iter().chain(&reads) {
            holds(op, name, v.len, *len)?;
        }
        let writes: Vec<_> = writes
            .iter()
            .map(|&(nm, v, len)| (nm, v.slice(0, len)))
            .collect();
        let reads: Vec<_> = reads
            .iter()
            .map(|&(nm, v, len)| (nm, v.slice(0, len)))
            .collect();
        for (i, &w) in writes.iter().enumerate() {
            let others: Vec<_> = writes[i + 1..].iter().chain(&reads).copied().collect();
            disjoint(op, w, &others)?;
        }
        let params = dweight.is_some() || dbias.is_some();
        // The block's partial dweight and dbias live in shared memory.
        let shared_bytes = if params { 2 * c * 4 } else { 0 };
        ensure!(
            shared_bytes <= LAYERNORM_BWD_MAX_SHARED,
            "{op}: {c} channels need {shared_bytes} bytes of shared memory for the weight \
             gradients, more than the {LAYERNORM_BWD_MAX_SHARED} a block gets by default"
        );
        if n == 0 {
            return Ok(());
        }
        let (mut dx, mut dw, mut db) = (
            dinp.addr,
            dweight.map_or(0, |v| v.addr),
            dbias.map_or(0, |v| v.addr),
        );
        let (mut dy, mut x, mut w, mut m, mut r) =
            (dout.addr, inp.addr, weight.addr, mean.addr, rstd.addr);
        let (mut rows, mut c) = (fits_u32(op, "rows", n)?, fits_u32(op, "channels", c)?);
        let dims = LaunchDims {
            grid: [
                rows.div_ceil(ROW_BLOCK / 32).min(LAYERNORM_BWD_MAX_GRID),
                1,
                1,
            ],
            block: [ROW_BLOCK, 1, 1],
            shared_bytes: shared_bytes as u32,
        };
        // SAFETY: layernorm_bwd_f32(float* dinp, float* dweight, float* dbias,
        // const float* dout, inp, weight, mean, rstd, u32 rows, u32 channels);
        // null gradient pointers are skipped by the kernel; shapes checked above.
        unsafe {
            self.launch(
                "layernorm_bwd_f32",
                dims,
                &mut [
                    arg(&mut dx),
                    arg(&mut dw),
                    arg(&mut db),
                    arg(&mut dy),
                    arg(&mut x),
                    arg(&mut w),
                    arg(&mut m),
                    arg(&mut r),
                    arg(&mut rows),
                    arg(&mut c),
                ],
            )
        }
        .with_context(|| format!("{op}: {n} rows of {channels} channels"))
    }
    fn matmul_fwd(
        &self,
        out: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        bias: Option<View<f32>>,
        rows: usize,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<()> {
        let op = "matmul_fwd";
        let (n, ic, oc) = (rows, in_ch, out_ch);
        let out = fits(op, "out", out, n * oc)?;
        let inp = fits(op, "inp", inp, n * ic)?;
        let weight = fits(op, "weight", weight, oc * ic)?;
        let bias = bias.map(|b| fits(op, "bias", b, oc)).transpose()?;
        let mut inputs = vec![("inp", inp), ("weight", weight)];
        inputs.extend(bias.map(|b| ("bias", b)));
        disjoint(op, ("out", out), &inputs)?;
        // out[n, oc] = inp[n, ic] @ weight^T + bias, weight stored [oc, ic].
        let mut g = Gemm::new(
            (out.addr, oc),
            (inp.addr, ic, false),
            (weight.addr, ic, true),
        );
        g.bias = bias.map_or(0, |b| b.addr);
        launch_gemm(self, op, g, [n, oc, ic])
    }
    fn matmul_bwd(
        &self,
        dinp: Option<View<f32>>,
        dweight: Option<View<f32>>,
        dbias: Option<View<f32>>,
        dout: View<f32>,
        inp: View<f32>,
        weight: View<f32>,
        rows: usize,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<()> {
        let op = "matmul_bwd";
        let (n, ic, oc) = (rows, in_ch, out_ch);
        let dinp = dinp.map(|v| fits(op, "dinp", v, n * ic)).transpose()?;
        let dweight = dweight
            .map(|v| fits(op, "dweight", v, oc * ic))
            .transpose()?;
        let dbias = dbias.map(|v| fits(op, "dbias", v, oc)).transpose()?;
        let dout = fits(op, "dout", dout, n * oc)?;
        let inp = fits(op, "inp", inp, n * ic)?;
        let weight = fits(op, "weight", weight, oc * ic)?;
        // Every output is disjoint from the inputs and from the other outputs.
        let outs: Vec<_> = [("dinp", dinp), ("dweight", dweight), ("dbias", dbias)]
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| (name, v)))
            .collect();
        for (i, &o) in outs.iter().enumerate() {
            let mut others = vec![("dout", dout), ("inp", inp), ("weight", weight)];
            others.extend(outs[i + 1..].iter().copied());
            disjoint(op, o, &others)?;
        }
        if let Some(dinp) = dinp {
            // dinp[n, ic] += dout[n, oc] @ weight[oc, ic]
            let mut g = Gemm::new(
                (dinp.addr, ic),
                (dout.addr, oc, false),
                (weight.addr, ic, false),
            );
            g.accumulate = true;
            launch_gemm(self, op, g, [n, ic, oc])?;
        }
        if let Some(dweight) = dweight {
            // dweight[oc, ic] += dout^T @ inp[n, ic], dout stored [n, oc]. Tied
            // blocks accumulate into one slot's dweight this way.
            let mut g = Gemm::new(
                (dweight.addr, ic),
                (dout.addr, oc, true),
                (inp.addr, ic, false),
            );
            g.accumulate = true;
            launch_gemm(self, op, g, [oc, ic, n])?;
        }
        if let (Some(dbias), true) = (dbias, n > 0 && oc > 0) {
            let (mut db, mut d) = (dbias.addr, dout.addr);
            let (mut r, mut c) = (to_i32(op, "rows", n)?, to_i32(op, "out_ch", oc)?);
            let dims = LaunchDims {
                grid: [oc.div_ceil(BIAS_COLS) as u32, 1, 1],
                block: [BIAS_THREADS, 1, 1],
                shared_bytes: 0,
            };
            // SAFETY: bias_grad_f32(float*, const float*, int, int) over
            // dbias[oc] and dout[n, oc], both checked by `fits` above.
            unsafe {
                self.launch(
                    "bias_grad_f32",
                    dims,
                    &mut [arg(&mut db), arg(&mut d), arg(&mut r), arg(&mut c)],
                )
            }
            .with_context(|| format!("{op}: bias_grad_f32 over {n} x {oc}"))?;
        }
        Ok(())
    }
    fn attention_fwd(
        &self,
        out: View<f32>,
        att: View<f32>,
        qkv: View<f32>,
        shape: AttnShape,
    ) -> Result<()> {
        let op = "attention_fwd";
        let a = AttnGeom::new(op, shape)?;
        let (b, t, c, nh, hs) = (a.b, a.t, a.c, a.nh, a.hs);
        let out = fits(op, "out", out, b * t * c)?;
        let att = fits(op, "att", att, b * nh * t * t)?;
        let qkv = fits(op, "qkv", qkv, b * t * 3 * c)?;
        disjoint(op, ("out", out), &[("qkv", qkv), ("att", att)])?;
        disjoint(op, ("att", att), &[("qkv", qkv)])?;
        let (q, k, v) = (a.part(qkv, 0), a.part(qkv, 1), a.part(qkv, 2));
        // att = q k^T / sqrt(hs), only the tiles that reach the lower triangle.
        let mut g = Gemm::new((att.addr, t), (q, 3 * c, false), (k, 3 * c, true));
        g.alpha = 1.0 / (hs as f32).sqrt();
        g.causal = GEMM_OUT_LOWER;
        g.batch = a.batch([a.qkv_strides(), a.qkv_strides(), a.att_strides()]);
        launch_gemm(self, op, g, [t, t, hs])?;
        softmax_rows(self, op, att.addr, None, b * nh * t, t)?;
        // out = att @ v; att is zero above the diagonal.
        let mut g = Gemm::new((out.addr, c), (att.addr, t, false), (v, 3 * c, false));
        g.causal = GEMM_A_LOWER;
        g.batch = a.batch([a.att_strides(), a.qkv_strides(), a.out_strides()]);
        launch_gemm(self, op, g, [t, hs, t])
    }
    fn attention_bwd(
        &self,
        dqkv: View<f32>,
        scratch: View<f32>,
        dout: View<f32>,
        qkv: View<f32>,
        att: View<f32>,
        shape: AttnShape,
    ) -> Result<()> {
        let op = "attention_bwd";
        let a = AttnGeom::new(op, shape)?;
        let (b, t, c, nh, hs) = (a.b, a.t, a.c, a.nh, a.hs);
        let dqkv = fits(op, "dqkv", dqkv, b * t * 3 * c)?;
        let scratch = fits(op, "scratch", scratch, b * nh * t * t)?;
        let dout = fits(op, "dout", dout, b * t * c)?;
        let qkv = fits(op, "qkv", qkv, b * t * 3 * c)?;
        let att = fits(op, "att", att, b * nh * t * t)?;
        let inputs = [("dout", dout), ("qkv", qkv), ("att", att)];
        disjoint(
            op,
            ("dqkv", dqkv),
            &[("scratch", scratch), inputs[0], inputs[1], inputs[2]],
        )?;
        disjoint(op, ("scratch", scratch), &inputs)?;
        let (q, k, v) = (a.part(qkv, 0), a.part(qkv, 1), a.part(qkv, 2));
        let (dq, dk, dv) = (a.part(dqkv, 0), a.part(dqkv, 1), a.part(dqkv, 2));
        let (qs, ss, os) = (a.qkv_strides(), a.att_strides(), a.out_strides());

        // scratch = d(att) = dout v^T, needed on and below the diagonal only.
        let mut g = Gemm::new((scratch.addr, t), (dout.addr, c, false), (v, 3 * c, true));
        g.causal = GEMM_OUT_LOWER;
        g.batch = a.batch([os, qs, ss]);
        launch_gemm(self, op, g, [t, t, hs])?;
        // scratch = d(scores) (times the scale), zero above the diagonal.
        let scale = 1.0 / (hs as f32).sqrt();
        let rows = b * nh * t;
        softmax_rows(self, op, scratch.addr, Some((att.addr, scale)), rows, t)?;
        // dq += ds @ k
        let mut g = Gemm::new((dq, 3 * c), (scratch.addr, t, false), (k, 3 * c, false));
        (g.accumulate, g.causal) = (true, GEMM_A_LOWER);
        g.batch = a.batch([ss, qs, qs]);
        launch_gemm(self, op, g, [t, hs, t])?;
        // dk += ds^T @ q
        let mut g = Gemm::new((dk, 3 * c), (scratch.addr, t, true), (q, 3 * c, false));
        (g.accumulate, g.causal) = (true, GEMM_A_UPPER);
        g.batch = a.batch([ss, qs, qs]);
        launch_gemm(self, op, g, [t, hs, t])?;
        // dv += att^T @ dout
        let mut g = Gemm::new((dv, 3 * c), (att.addr, t, true), (dout.addr, c, false));
        (g.accumulate, g.causal) = (true, GEMM_A_UPPER);
        g.batch = a.batch([ss, os, qs]);
        launch_gemm(self, op, g, [t, hs, t])
    }
    fn softmax_xent(
        &self,
        losses: View<f32>,
        dlogits: Option<View<f32>>,
        logits: View<f32>,
        targets: View<u32>,
        rows: usize,
        vocab: usize,
        ignore_index: u32,
        grad_scale: f32,
    ) -> Result<()> {
        let op = "softmax_xent";
        let (n, v) = (rows, vocab);
        ensure!(v > 0, "{op}: zero vocabulary");
        holds(op, "losses", losses.len, n)?;
        holds(op, "logits", logits.len, n * v)?;
        holds(op, "targets", targets.len, n)?;
        let (losses, logits) = (losses.slice(0, n), logits.slice(0, n * v));
        let targets_f = ("targets", as_f32(targets.slice(0, n)));
        disjoint(op, ("losses", losses), &[("logits", logits), targets_f])?;
        if let Some(dl) = dlogits {
            holds(op, "dlogits", dl.len, n * v)?;
            let dl = dl.slice(0, n * v);
            disjoint(op, ("dlogits", dl), &[("losses", losses), targets_f])?;
            // In place is allowed (each logit is read before its gradient is
            // written), a partial overlap is not.
            if dl.addr != logits.addr {
                disjoint(op, ("dlogits", dl), &[("logits", logits)])?;
            }
        }
        if n == 0 {
            return Ok(());
        }
        let (mut l, mut dl, mut x, mut t) = (
            losses.addr,
            dlogits.map_or(0, |v| v.addr),
            logits.addr,
            targets.addr,
        );
        let (mut v_u, mut ignore, mut scale) =
            (fits_u32(op, "vocabulary", v)?, ignore_index, grad_scale);
        ensure!(
            n <= i32::MAX as usize,
            "{op}: {n} rows exceed the grid limit of one launch"
        );
        let dims = LaunchDims {
            grid: [n as u32, 1, 1],
            block: [XENT_BLOCK, 1, 1],
            shared_bytes: 0,
        };
        // SAFETY: softmax_xent_f32(float* losses, float* dlogits (may be
        // null or logits), const float* logits, const u32* targets, u32 vocab,
        // u32 ignore_index, float grad_scale), one block per row; shapes and
        // overlaps checked above.
        unsafe {
            self.launch(
                "softmax_xent_f32",
                dims,
                &mut [
                    arg(&mut l),
                    arg(&mut dl),
                    arg(&mut x),
                    arg(&mut t),
                    arg(&mut v_u),
                    arg(&mut ignore),
                    arg(&mut scale),
                ],
            )
        }
        .with_context(|| format!("{op}: {n} rows of {v} logits"))
    }
    fn adamw(
        &self,
        params: View<f32>,
        grads: View<f32>,
        m: View<f32>,
        v: View<f32>,
        hp: AdamWStep,
    ) -> Result<()> {
        let op = "adamw";
        ensure!(hp.step >= 1, "{op}: step is 1-based, got 0");
        same_len(op, ("params", params.len), ("grads", grads.len))?;
        same_len(op, ("params", params.len), ("m", m.len))?;
        same_len(op, ("params", params.len), ("v", v.len))?;
        disjoint(
            op,
            ("params", params),
            &[("grads", grads), ("m", m), ("v", v)],
        )?;
        disjoint(op, ("m", m), &[("grads", grads), ("v", v)])?;
        disjoint(op, ("v", v), &[("grads", grads)])?;
        // Bias corrections in f64, exactly as the CPU reference computes them.
        let t = hp.step as i32;
        let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
        let mut step_size = (hp.lr as f64 / bc1) as f32;
        let mut bc2_sqrt = bc2.sqrt() as f32;
        let mut decay = 1.0 - hp.lr * hp.weight_decay;
        let (mut b1, mut b2, mut eps, mut gs) = (hp.beta1, hp.beta2, hp.eps, hp.grad_scale);
        let (mut p, mut g, mut pm, mut pv, mut n) =
            (params.addr, grads.addr, m.addr, v.addr, params.len as u64);
        // SAFETY: adamw_f32(float* params, const float* grads, float* m,
        // float* v, float beta1, float beta2, float eps, float decay, float
        // step_size, float bc2_sqrt, float grad_scale, u64 n).
        unsafe {
            self.launch_1d(
                "adamw_f32",
                params.len,
                &mut [
                    arg(&mut p),
                    arg(&mut g),
                    arg(&mut pm),
                    arg(&mut pv),
                    arg(&mut b1),
                    arg(&mut b2),
                    arg(&mut eps),
                    arg(&mut decay),
                    arg(&mut step_size),
                    arg(&mut bc2_sqrt),
                    arg(&mut gs),
                    arg(&mut n),
                ],
            )
        }
    }
    fn sum_squares(&self, acc: View<f32>, x: View<f32>) -> Result<()> {
        let op = "sum_squares";
        holds(op, "acc", acc.len, 1)?;
        let acc = acc.slice(0, 1);
        disjoint(op, ("acc", acc), &[("x", x)])?;
        let (mut a, mut px, mut n) = (acc.addr, x.addr, x.len as u64);
        // SAFETY: sum_squares_f32(float* acc, const float* x, u64 n).
        unsafe {
            self.launch_1d(
                "sum_squares_f32",
                x.len,
                &mut [arg(&mut a), arg(&mut px), arg(&mut n)],
            )
        }
    }
}

// ---- helpers of the embedding, layernorm, classifier and optimizer ops ----

/// Threads per block of the one-warp-per-row kernels (layernorm, embedding
/// forward): 8 rows per block.
const ROW_BLOCK: u32 = 256;
/// Cap on layernorm_bwd's grid: every block ends with `2 * channels` atomic
/// adds of its partial weight and bias gradients, so keep to about two blocks
/// per H100 SM (132 SMs) and let the warps loop over the remaining rows.
const LAYERNORM_BWD_MAX_GRID: u32 = 264;
/// Dynamic shared memory a block may use without opting in (48 KiB).
const LAYERNORM_BWD_MAX_SHARED: usize = 48 << 10;
/// Threads per block of softmax_xent, one block per row: enough loads in
/// flight to stream a 50257-logit row, and 4 blocks still fit on an SM.
const XENT_BLOCK: u32 = 512;

/// Fails when a view is shorter than the shape needs.
fn holds(op: &str, name: &str, have: usize, need: usize) -> Result<()> {
    ensure!(
        have >= need,
        "{op}: {name} has {have} elements but the shape needs {need}"
    );
    Ok(())
}

/// A size passed to a kernel as `u32`.
fn fits_u32(op: &str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).with_context(|| format!("{op}: {what} = {value} does not fit in 32 bits"))
}

/// The same bytes as an f32 view, for overlap checks against integer inputs.
fn as_f32(v: View<u32>) -> View<f32> {
    View::new(v.addr, v.len)
}

impl<D: Device> KernelBackend<D> {
    /// Launches a one-warp-per-row kernel over `rows` rows; nothing for 0 rows.
    ///
    /// # Safety
    /// As [`Device::launch`].
    unsafe fn launch_rows(
        &self,
        op: &str,
        kernel: &str,
        rows: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let dims = LaunchDims {
            grid: [rows.div_ceil(ROW_BLOCK / 32), 1, 1],
            block: [ROW_BLOCK, 1, 1],
            shared_bytes: 0,
        };
        self.launch(kernel, dims, args)
            .with_context(|| format!("{op}: {rows} rows"))
    }
}

// ---- matmul and attention launch helpers (kernels/matmul.cu, attention.cu) ----

/// Threads of `bias_grad_f32` (32 columns x 16 warps) and columns per block.
const BIAS_THREADS: u32 = 512;
const BIAS_COLS: usize = 32;
/// Output tile of `gemm_f32` (square) and its threads per block.
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;
/// Threads per block of the row-wise attention softmax (one warp per row).
const SOFTMAX_THREADS: u32 = 256;
/// `causal` of `gemm_f32`: which triangle a product may skip (see matmul.cu).
const GEMM_DENSE: i32 = 0;
const GEMM_OUT_LOWER: i32 = 1;
const GEMM_A_LOWER: i32 = 2;
const GEMM_A_UPPER: i32 = 3;

fn fits(op: &str, name: &str, v: View<f32>, len: usize) -> Result<View<f32>> {
    ensure!(
        v.len >= len,
        "{op}: {name} has {} elements but the shape needs {len}",
        v.len
    );
    Ok(v.slice(0, len))
}

fn to_i32(op: &str, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x)
        .with_context(|| format!("{op}: {what} = {x} does not fit the kernels' 32-bit sizes"))
}

/// One `gemm_f32` call: `C (+)= alpha op(A) op(B) + bias`, each operand given
/// as (address, row stride of the stored matrix, stored transposed).
struct Gemm {
    c: (u64, usize),
    a: (u64, usize, bool),
    b: (u64, usize, bool),
    bias: u64,
    alpha: f32,
    accumulate: bool,
    causal: i32,
    /// (outer count, inner count, [a, b, c] (outer, inner) strides in
    /// elements): grid z runs over outer x inner products.
    batch: (usize, usize, [(usize, usize); 3]),
}

impl Gemm {
    fn new(c: (u64, usize), a: (u64, usize, bool), b: (u64, usize, bool)) -> Self {
        Gemm {
            c,
            a,
            b,
            bias: 0,
            alpha: 1.0,
            accumulate: false,
            causal: GEMM_DENSE,
            batch: (1, 1, [(0, 0); 3]),
        }
    }
}

/// The `GemmParams` struct of kernels/matmul.cu, field for field (passed by
/// value as the kernel's one parameter).
#[repr(C)]
struct GemmParams {
    c: u64,
    a: u64,
    b: u64,
    bias: u64,
    strides: [u64; 6],
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    trans_a: i32,
    trans_b: i32,
    accumulate: i32,
    causal: i32,
    batch_inner: i32,
    alpha: f32,
}
// matmul.cu asserts the same size for its struct.
const _: () = assert!(std::mem::size_of::<GemmParams>() == 128);

/// Launches `g` as `[m, n, k]` products, one per batch.
fn launch_gemm<D: Device>(
    be: &KernelBackend<D>,
    op: &str,
    g: Gemm,
    [m, n, k]: [usize; 3],
) -> Result<()> {
    let (outer, inner, s) = g.batch;
    let batches = outer * inner;
    if m == 0 || n == 0 || batches == 0 {
        return Ok(());
    }
    let grid = [n.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE), batches];
    ensure!(
        grid[1] <= 65535 && grid[2] <= 65535 && grid[0] <= i32::MAX as usize,
        "{op}: a {m} x {n} product over {batches} batches needs a grid of {grid:?} blocks, \
         beyond CUDA's limits"
    );
    let mut p = GemmParams {
        c: g.c.0,
        a: g.a.0,
        b: g.b.0,
        bias: g.bias,
        strides: [s[0].0, s[0].1, s[1].0, s[1].1, s[2].0, s[2].1].map(|x| x as u64),
        m: to_i32(op, "m", m)?,
        n: to_i32(op, "n", n)?,
        k: to_i32(op, "k", k)?,
        lda: to_i32(op, "lda", g.a.1)?,
        ldb: to_i32(op, "ldb", g.b.1)?,
        ldc: to_i32(op, "ldc", g.c.1)?,
        trans_a: g.a.2 as i32,
        trans_b: g.b.2 as i32,
        accumulate: g.accumulate as i32,
        causal: g.causal,
        batch_inner: inner as i32,
        alpha: g.alpha,
    };
    let dims = LaunchDims {
        grid: grid.map(|x| x as u32),
        block: [GEMM_THREADS, 1, 1],
        shared_bytes: 0,
    };
    // SAFETY: gemm_f32(GemmParams) by value; every operand was checked by
    // `fits` for the extent its strides reach.
    unsafe { be.launch("gemm_f32", dims, &mut [arg(&mut p)]) }
        .with_context(|| format!("{op}: gemm_f32 [{m} x {n} x {k}] over {batches} batches"))
}

/// Attention sizes, checked, and the batch layout of its products: one
/// product per (sequence, head).
struct AttnGeom {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    hs: usize,
}

impl AttnGeom {
    fn new(op: &str, s: AttnShape) -> Result<Self> {
        ensure!(
            s.heads > 0 && s.channels.is_multiple_of(s.heads),
            "{op}: {} channels do not split into {} heads",
            s.channels,
            s.heads
        );
        Ok(AttnGeom {
            b: s.batch,
            t: s.seq,
            c: s.channels,
            nh: s.heads,
            hs: s.channels / s.heads,
        })
    }
    /// Address of q (0), k (1) or v (2) of the first head in `qkv[B, T, 3C]`.
    fn part(&self, qkv: View<f32>, i: usize) -> u64 {
        qkv.addr + (i * self.c * 4) as u64
    }
    /// Strides of q, k, v (and their gradients) in `qkv[B, T, 3C]`.
    fn qkv_strides(&self) -> (usize, usize) {
        (self.t * 3 * self.c, self.hs)
    }
    /// Strides of `out[B, T, C]` and `dout`.
    fn out_strides(&self) -> (usize, usize) {
        (self.t * self.c, self.hs)
    }
    /// Strides of `att[B, heads, T, T]` and `scratch`.
    fn att_strides(&self) -> (usize, usize) {
        (self.nh * self.t * self.t, self.t * self.t)
    }
    fn batch(&self, strides: [(usize, usize); 3]) -> (usize, usize, [(usize, usize); 3]) {
        (self.b, self.nh, strides)
    }
}

/// Runs the row-wise softmax of attention.cu over `rows` rows of `seq` at
/// `x`, one warp per row: the forward, or with `bwd = Some((att, scale))` the
/// backward.
fn softmax_rows<D: Device>(
    be: &KernelBackend<D>,
    op: &str,
    x: u64,
    bwd: Option<(u64, f32)>,
    rows: usize,
    seq: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let blocks = rows.div_ceil(SOFTMAX_THREADS as usize / 32);
    ensure!(
        blocks <= i32::MAX as usize,
        "{op}: {rows} attention rows need more blocks than one launch takes"
    );
    let dims = LaunchDims {
        grid: [blocks as u32, 1, 1],
        block: [SOFTMAX_THREADS, 1, 1],
        shared_bytes: 0,
    };
    let (mut x, mut r, mut t) = (x, rows as u64, to_i32(op, "seq", seq)?);
    // SAFETY: attn_softmax_fwd_f32(float*, u64, int) and
    // attn_softmax_bwd_f32(float*, const float*, u64, int, float) over
    // `rows * seq` elements, checked by the caller.
    let (kernel, res) = match bwd {
        None => ("attn_softmax_fwd_f32", unsafe {
            be.launch(
                "attn_softmax_fwd_f32",
                dims,
                &mut [arg(&mut x), arg(&mut r), arg(&mut t)],
            )
        }),
        Some((mut att, mut scale)) => ("attn_softmax_bwd_f32", unsafe {
            be.launch(
                "attn_softmax_bwd_f32",
                dims,
                &mut [
                    arg(&mut x),
                    arg(&mut att),
                    arg(&mut r),
                    arg(&mut t),
                    arg(&mut scale),
                ],
            )
        }),
    };
    res.with_context(|| format!("{op}: {kernel} over {rows} rows of {seq}"))
}
