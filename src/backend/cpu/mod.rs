//! `CpuBackend`: the pure-Rust reference implementation of every op.
//!
//! This file turns the raw [`View`]s of the [`Backend`] calls into slices,
//! after checking that each view is long enough for the stated shape and that
//! no output overlaps another operand (except where an op allows it);
//! `kernels.rs` does the arithmetic over those slices. Matmuls go through the
//! `gemm` crate, everything row-parallel through rayon.

mod kernels;
mod math;

use super::host_memory::HostMemory;
use super::{AdamWStep, AttnShape, Backend, Memory, View};
use anyhow::{bail, ensure, Result};
use std::sync::Arc;

/// The CPU backend. Memory is plain host memory; every op runs to completion
/// before it returns.
pub struct CpuBackend {
    memory: Arc<HostMemory>,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend {
            memory: Arc::new(HostMemory::new()),
        }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// The bytes an op touches through one view: its first `len` elements.
#[derive(Clone, Copy)]
struct Span {
    name: &'static str,
    start: u64,
    end: u64,
}

/// Checks that `v` holds at least `len` elements and is aligned for `T`, and
/// returns the span of its first `len` elements.
fn span<T>(op: &str, name: &'static str, v: View<T>, len: usize) -> Result<Span> {
    ensure!(
        v.len >= len,
        "cpu {op}: `{name}` has {} elements but the shape needs {len}",
        v.len
    );
    ensure!(
        len == 0 || (v.addr != 0 && v.addr.is_multiple_of(std::mem::align_of::<T>() as u64)),
        "cpu {op}: `{name}` address {:#x} is null or misaligned",
        v.addr
    );
    let bytes = (len * std::mem::size_of::<T>()) as u64;
    Ok(Span {
        name,
        start: v.addr,
        end: v.addr + bytes,
    })
}

/// Checks that no written span overlaps another written span or a read one.
/// This is what makes the `&mut` slices below sound.
fn disjoint(op: &str, writes: &[Span], reads: &[Span]) -> Result<()> {
    for (i, w) in writes.iter().enumerate() {
        for o in writes[i + 1..].iter().chain(reads) {
            let empty = w.start == w.end || o.start == o.end;
            if !empty && w.start < o.end && o.start < w.end {
                bail!(
                    "cpu {op}: output `{}` overlaps `{}`; outputs must not overlap other operands",
                    w.name,
                    o.name
                );
            }
        }
    }
    Ok(())
}

/// The first `len` elements of `v` as a shared slice.
///
/// # Safety
/// `v` must address live host memory (the [`Backend`] contract: views come
/// from this backend's buffers), checked by [`span`] for length and
/// alignment, and no `&mut` slice over the same bytes may live at the same
/// time (checked by [`disjoint`]).
unsafe fn read<'a, T>(v: View<T>, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(v.addr as *const T, len)
}

/// The first `len` elements of `v` as an exclusive slice.
///
/// # Safety
/// As for [`read`], and no other slice over the same bytes may live at the
/// same time.
unsafe fn write<'a, T>(v: View<T>, len: usize) -> &'a mut [T] {
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(v.addr as *mut T, len)
}

/// Copies host data into host memory behind a view (both are host memory
/// here), after checking the view and that the two do not overlap.
fn upload<T: Copy>(op: &str, dst: View<T>, src: &[T]) -> Result<()> {
    let n = same_len(op, &[("dst", dst.len), ("src", src.len())])?;
    let d = span(op, "dst", dst, n)?;
    let s = Span {
        name: "src",
        start: src.as_ptr() as u64,
        end: src.as_ptr() as u64 + std::mem::size_of_val(src) as u64,
    };
    disjoint(op, &[d], &[s])?;
    // SAFETY: checked by `span` and `disjoint` above.
    unsafe { write(dst, n) }.copy_from_slice(src);
    Ok(())
}

/// The contents of a view, copied out.
fn download<T: Copy>(op: &str, src: View<T>) -> Result<Vec<T>> {
    span(op, "src", src, src.len)?;
    // SAFETY: checked by `span`; nothing is written.
    Ok(unsafe { read(src, src.len) }.to_vec())
}

fn same_len(op: &str, views: &[(&str, usize)]) -> Result<usize> {
    let n = views[0].1;
    for (name, len) in views {
        ensure!(
            *len == n,
            "cpu {op}: `{name}` has {len} elements but `{}` has {n}; they must match",
            views[0].0
        );
    }
    Ok(n)
}

fn check_tokens(op: &str, tokens: &[u32], vocab: usize) -> Result<()> {
    if let Some(pos) = tokens.iter().position(|&t| t as usize >= vocab) {
        bail!(
            "cpu {op}: token id {} at position {pos} is not below the vocabulary size {vocab}",
            tokens[pos]
        );
    }
    Ok(())
}

fn check_attn(op: &str, s: AttnShape) -> Result<()> {
    ensure!(
        s.heads > 0 && s.channels.is_multiple_of(s.heads),
        "cpu {op}: {} channels do not split into {} heads",
        s.channels,
        s.heads
    );
    Ok(())
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn memory(&self) -> Arc<dyn Memory> {
        self.memory.clone()
    }

    fn upload_f32(&self, dst: View<f32>, src: &[f32]) -> Result<()> {
        upload("upload_f32", dst, src)
    }

    fn download_f32(&self, src: View<f32>) -> Result<Vec<f32>> {
        download("download_f32", src)
    }

    fn upload_u32(&self, dst: View<u32>, src: &[u32]) -> Result<()> {
        upload("upload_u32", dst, src)
    }

    fn download_u32(&self, src: View<u32>) -> Result<Vec<u32>> {
        download("download_u32", src)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn fill(&self, dst: View<f32>, value: f32) -> Result<()> {
        span("fill", "dst", dst, dst.len)?;
        // SAFETY: checked by `span`; the only view.
        kernels::fill(unsafe { write(dst, dst.len) }, value);
        Ok(())
    }

    fn copy(&self, dst: View<f32>, src: View<f32>) -> Result<()> {
        let op = "copy";
        let n = same_len(op, &[("dst", dst.len), ("src", src.len)])?;
        let d = span(op, "dst", dst, n)?;
        let s = span(op, "src", src, n)?;
        if dst.addr == src.addr {
            return Ok(());
        }
        disjoint(op, &[d], &[s])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe { write(dst, n).copy_from_slice(read(src, n)) };
        Ok(())
    }

    fn add(&self, out: View<f32>, a: View<f32>, b: View<f32>) -> Result<()> {
        let op = "add";
        let n = same_len(op, &[("out", out.len), ("a", a.len), ("b", b.len)])?;
        let (o, sa, sb) = (
            span(op, "out", out, n)?,
            span(op, "a", a, n)?,
            span(op, "b", b, n)?,
        );
        // `out` may be exactly `a` or `b`: then the op is an accumulation.
        // SAFETY (all arms): spans checked above; each arm makes one `&mut`
        // slice and only shared slices of views that `disjoint` proved apart
        // from it.
        match (out.addr == a.addr, out.addr == b.addr) {
            (true, true) => kernels::scale(unsafe { write(out, n) }, 2.0),
            (true, false) => {
                disjoint(op, &[o], &[sb])?;
                kernels::accumulate(unsafe { write(out, n) }, unsafe { read(b, n) });
            }
            (false, true) => {
                disjoint(op, &[o], &[sa])?;
                kernels::accumulate(unsafe { write(out, n) }, unsafe { read(a, n) });
            }
            (false, false) => {
                disjoint(op, &[o], &[sa, sb])?;
                kernels::add(unsafe { write(out, n) }, unsafe { read(a, n) }, unsafe {
                    read(b, n)
                });
            }
        }
        Ok(())
    }

    fn accumulate(&self, dst: View<f32>, src: View<f32>) -> Result<()> {
        let op = "accumulate";
        let n = same_len(op, &[("dst", dst.len), ("src", src.len)])?;
        let d = span(op, "dst", dst, n)?;
        let s = span(op, "src", src, n)?;
        disjoint(op, &[d], &[s])?;
        // SAFETY: checked by `span` and `disjoint` above.
        kernels::accumulate(unsafe { write(dst, n) }, unsafe { read(src, n) });
        Ok(())
    }

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
        ensure!(c > 0, "cpu {op}: zero channels");
        let vocab = wte.len / c;
        let o = span(op, "out", out, n * c)?;
        let t = span(op, "tokens", tokens, n)?;
        let e = span(op, "wte", wte, vocab * c)?;
        let p = span(op, "wpe", wpe, seq * c)?;
        disjoint(op, &[o], &[t, e, p])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            let tokens = read(tokens, n);
            check_tokens(op, tokens, vocab)?;
            kernels::embedding_fwd(
                write(out, n * c),
                tokens,
                read(wte, vocab * c),
                read(wpe, seq * c),
                seq,
                c,
            );
        }
        Ok(())
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
        ensure!(c > 0, "cpu {op}: zero channels");
        let vocab = dwte.len / c;
        let de = span(op, "dwte", dwte, vocab * c)?;
        let dp = span(op, "dwpe", dwpe, seq * c)?;
        let d = span(op, "dout", dout, n * c)?;
        let t = span(op, "tokens", tokens, n)?;
        disjoint(op, &[de, dp], &[d, t])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            let tokens = read(tokens, n);
            check_tokens(op, tokens, vocab)?;
            kernels::embedding_bwd(
                write(dwte, vocab * c),
                write(dwpe, seq * c),
                read(dout, n * c),
                tokens,
                seq,
                c,
            );
        }
        Ok(())
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
        ensure!(c > 0, "cpu {op}: zero channels");
        let writes = [
            span(op, "out", out, n * c)?,
            span(op, "mean", mean, n)?,
            span(op, "rstd", rstd, n)?,
        ];
        let reads = [
            span(op, "inp", inp, n * c)?,
            span(op, "weight", weight, c)?,
            span(op, "bias", bias, c)?,
        ];
        disjoint(op, &writes, &reads)?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::layernorm_fwd(
                write(out, n * c),
                write(mean, n),
                write(rstd, n),
                read(inp, n * c),
                read(weight, c),
                read(bias, c),
                c,
            );
        }
        Ok(())
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
        ensure!(c > 0, "cpu {op}: zero channels");
        let mut writes = vec![span(op, "dinp", dinp, n * c)?];
        if let Some(v) = dweight {
            writes.push(span(op, "dweight", v, c)?);
        }
        if let Some(v) = dbias {
            writes.push(span(op, "dbias", v, c)?);
        }
        let reads = [
            span(op, "dout", dout, n * c)?,
            span(op, "inp", inp, n * c)?,
            span(op, "weight", weight, c)?,
            span(op, "mean", mean, n)?,
            span(op, "rstd", rstd, n)?,
        ];
        disjoint(op, &writes, &reads)?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::layernorm_bwd(
                write(dinp, n * c),
                dweight.map(|v| write(v, c)),
                dbias.map(|v| write(v, c)),
                read(dout, n * c),
                read(inp, n * c),
                read(weight, c),
                read(mean, n),
                read(rstd, n),
                c,
            );
        }
        Ok(())
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
        let o = span(op, "out", out, n * oc)?;
        let mut reads = vec![
            span(op, "inp", inp, n * ic)?,
            span(op, "weight", weight, oc * ic)?,
        ];
        if let Some(b) = bias {
            reads.push(span(op, "bias", b, oc)?);
        }
        disjoint(op, &[o], &reads)?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::matmul_fwd(
                write(out, n * oc),
                read(inp, n * ic),
                read(weight, oc * ic),
                bias.map(|b| read(b, oc)),
                n,
                ic,
                oc,
            );
        }
        Ok(())
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
        let mut writes = Vec::new();
        if let Some(v) = dinp {
            writes.push(span(op, "dinp", v, n * ic)?);
        }
        if let Some(v) = dweight {
            writes.push(span(op, "dweight", v, oc * ic)?);
        }
        if let Some(v) = dbias {
            writes.push(span(op, "dbias", v, oc)?);
        }
        let reads = [
            span(op, "dout", dout, n * oc)?,
            span(op, "inp", inp, n * ic)?,
            span(op, "weight", weight, oc * ic)?,
        ];
        disjoint(op, &writes, &reads)?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::matmul_bwd(
                dinp.map(|v| write(v, n * ic)),
                dweight.map(|v| write(v, oc * ic)),
                dbias.map(|v| write(v, oc)),
                read(dout, n * oc),
                read(inp, n * ic),
                read(weight, oc * ic),
                n,
                ic,
                oc,
            );
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
        check_attn(op, shape)?;
        let AttnShape {
            batch: b,
            seq: t,
            channels: c,
            heads: h,
        } = shape;
        let writes = [
            span(op, "out", out, b * t * c)?,
            span(op, "att", att, b * h * t * t)?,
        ];
        let q = span(op, "qkv", qkv, b * t * 3 * c)?;
        disjoint(op, &writes, &[q])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::attention_fwd(
                write(out, b * t * c),
                write(att, b * h * t * t),
                read(qkv, b * t * 3 * c),
                shape,
            );
        }
        Ok(())
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
        check_attn(op, shape)?;
        let AttnShape {
            batch: b,
            seq: t,
            channels: c,
            heads: h,
        } = shape;
        let writes = [
            span(op, "dqkv", dqkv, b * t * 3 * c)?,
            span(op, "scratch", scratch, b * h * t * t)?,
        ];
        let reads = [
            span(op, "dout", dout, b * t * c)?,
            span(op, "qkv", qkv, b * t * 3 * c)?,
            span(op, "att", att, b * h * t * t)?,
        ];
        disjoint(op, &writes, &reads)?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::attention_bwd(
                write(dqkv, b * t * 3 * c),
                write(scratch, b * h * t * t),
                read(dout, b * t * c),
                read(qkv, b * t * 3 * c),
                read(att, b * h * t * t),
                shape,
            );
        }
        Ok(())
    }

    fn gelu_fwd(&self, out: View<f32>, inp: View<f32>) -> Result<()> {
        let op = "gelu_fwd";
        let n = same_len(op, &[("out", out.len), ("inp", inp.len)])?;
        disjoint(op, &[span(op, "out", out, n)?], &[span(op, "inp", inp, n)?])?;
        // SAFETY: checked by `span` and `disjoint` above.
        kernels::gelu_fwd(unsafe { write(out, n) }, unsafe { read(inp, n) });
        Ok(())
    }

    fn gelu_bwd(&self, dinp: View<f32>, inp: View<f32>, dout: View<f32>) -> Result<()> {
        let op = "gelu_bwd";
        let n = same_len(
            op,
            &[("dinp", dinp.len), ("inp", inp.len), ("dout", dout.len)],
        )?;
        let reads = [span(op, "inp", inp, n)?, span(op, "dout", dout, n)?];
        disjoint(op, &[span(op, "dinp", dinp, n)?], &reads)?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe { kernels::gelu_bwd(write(dinp, n), read(inp, n), read(dout, n)) };
        Ok(())
    }

    fn dropout_fwd(
        &self,
        out: View<f32>,
        inp: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()> {
        let op = "dropout_fwd";
        ensure!(
            (0.0..=1.0).contains(&p),
            "cpu {op}: dropout probability {p} is not in [0, 1]"
        );
        let n = same_len(op, &[("out", out.len), ("inp", inp.len)])?;
        disjoint(op, &[span(op, "out", out, n)?], &[span(op, "inp", inp, n)?])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe { kernels::dropout(write(out, n), read(inp, n), p, seed, offset, false) };
        Ok(())
    }

    fn dropout_bwd(
        &self,
        dinp: View<f32>,
        dout: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()> {
        let op = "dropout_bwd";
        ensure!(
            (0.0..=1.0).contains(&p),
            "cpu {op}: dropout probability {p} is not in [0, 1]"
        );
        let n = same_len(op, &[("dinp", dinp.len), ("dout", dout.len)])?;
        disjoint(
            op,
            &[span(op, "dinp", dinp, n)?],
            &[span(op, "dout", dout, n)?],
        )?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe { kernels::dropout(write(dinp, n), read(dout, n), p, seed, offset, true) };
        Ok(())
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
        ensure!(v > 0, "cpu {op}: zero vocabulary");
        let l = span(op, "losses", losses, n)?;
        let x = span(op, "logits", logits, n * v)?;
        let t = span(op, "targets", targets, n)?;
        // SAFETY: checked by `span`; nothing writes `targets`.
        let tgts = unsafe { read(targets, n) };
        if let Some(pos) = tgts
            .iter()
            .position(|&y| y != ignore_index && y as usize >= v)
        {
            bail!(
                "cpu {op}: target {} in row {pos} is neither below the vocabulary size {v} nor the ignore index {ignore_index}",
                tgts[pos]
            );
        }
        match dlogits {
            None => {
                disjoint(op, &[l], &[x, t])?;
                // SAFETY: checked by `span` and `disjoint` above.
                unsafe {
                    kernels::softmax_xent(
                        write(losses, n),
                        read(logits, n * v),
                        tgts,
                        v,
                        ignore_index,
                    )
                };
            }
            Some(dl) => {
                let d = span(op, "dlogits", dl, n * v)?;
                let aliased = dl.addr == logits.addr;
                if aliased {
                    disjoint(op, &[l, d], &[t])?;
                } else {
                    disjoint(op, &[l, d], &[x, t])?;
                }
                // SAFETY: checked by `span` and `disjoint` above; when
                // `dlogits` is the logits' memory only the `&mut` slice of it
                // is made.
                unsafe {
                    let src = if aliased {
                        None
                    } else {
                        Some(read(logits, n * v))
                    };
                    kernels::softmax_xent_grad(
                        write(losses, n),
                        write(dl, n * v),
                        src,
                        tgts,
                        v,
                        ignore_index,
                        grad_scale,
                    )
                };
            }
        }
        Ok(())
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
        ensure!(hp.step >= 1, "cpu {op}: step is 1-based, got 0");
        let n = same_len(
            op,
            &[
                ("params", params.len),
                ("grads", grads.len),
                ("m", m.len),
                ("v", v.len),
            ],
        )?;
        let writes = [
            span(op, "params", params, n)?,
            span(op, "m", m, n)?,
            span(op, "v", v, n)?,
        ];
        disjoint(op, &writes, &[span(op, "grads", grads, n)?])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            kernels::adamw(
                write(params, n),
                read(grads, n),
                write(m, n),
                write(v, n),
                hp,
            )
        };
        Ok(())
    }

    fn sum_squares(&self, acc: View<f32>, x: View<f32>) -> Result<()> {
        let op = "sum_squares";
        let a = span(op, "acc", acc, 1)?;
        disjoint(op, &[a], &[span(op, "x", x, x.len)?])?;
        // SAFETY: checked by `span` and `disjoint` above.
        unsafe {
            let total = kernels::sum_squares(read(x, x.len));
            let acc = &mut write(acc, 1)[0];
            *acc = (*acc as f64 + total) as f32;
        }
        Ok(())
    }
}
