//! A [`Backend`] wrapper that times every op of the backend it wraps.
//!
//! Profiling is off by default and then costs one atomic load per op, so a
//! benchmark can time its steps through the wrapper and switch profiling on
//! only for the steps whose breakdown it wants. While on, every op is followed
//! by `synchronize`, so that an asynchronous (GPU) op's time is charged to the
//! op itself rather than to whichever later call happens to wait for it; that
//! serialization is why profiled steps are slower and are not the headline
//! timing.

use super::{AdamWStep, AttnShape, Backend, MemStats, Memory, View};
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Calls and wall time of one op name while profiling was on.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct OpStat {
    pub calls: u64,
    pub secs: f64,
}

pub struct ProfiledBackend {
    inner: Arc<dyn Backend>,
    enabled: AtomicBool,
    stats: Mutex<BTreeMap<&'static str, OpStat>>,
    /// Matmuls again, per shape: they dominate a step, and which of them
    /// (the output head or the blocks' layers) is the first question.
    matmul_shapes: Mutex<BTreeMap<String, OpStat>>,
}

impl ProfiledBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        ProfiledBackend {
            inner,
            enabled: AtomicBool::new(false),
            stats: Mutex::new(BTreeMap::new()),
            matmul_shapes: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// Switches profiling on or off. Switching on first waits for queued work,
    /// so the first profiled op is not charged for earlier ones.
    pub fn set_enabled(&self, on: bool) -> Result<()> {
        if on {
            self.inner.synchronize()?;
        }
        self.enabled.store(on, Ordering::SeqCst);
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Forgets the accumulated statistics.
    pub fn reset(&self) {
        self.stats.lock().unwrap().clear();
        self.matmul_shapes.lock().unwrap().clear();
    }

    /// Matmul statistics per "op rows x in -> out" shape, slowest first.
    pub fn matmul_report(&self) -> Vec<(String, OpStat)> {
        let mut rows: Vec<_> = self
            .matmul_shapes
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        rows.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs).then(a.0.cmp(&b.0)));
        rows
    }

    /// A matmul, recorded under its op name and under its shape.
    fn matmul<R>(
        &self,
        name: &'static str,
        (rows, in_ch, out_ch): (usize, usize, usize),
        f: impl FnOnce(&dyn Backend) -> Result<R>,
    ) -> Result<R> {
        let start = Instant::now();
        let out = self.op(name, f)?;
        if self.is_enabled() {
            let secs = start.elapsed().as_secs_f64();
            let key = format!("{name} {rows}x{in_ch}->{out_ch}");
            let mut shapes = self.matmul_shapes.lock().unwrap();
            let s = shapes.entry(key).or_default();
            s.calls += 1;
            s.secs += secs;
        }
        Ok(out)
    }

    /// Per-op statistics, slowest op first.
    pub fn report(&self) -> Vec<(&'static str, OpStat)> {
        let mut rows: Vec<_> = self
            .stats
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        rows.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs).then(a.0.cmp(b.0)));
        rows
    }

    /// Runs one op; while profiling, synchronizes after it and records it.
    fn op<R>(&self, name: &'static str, f: impl FnOnce(&dyn Backend) -> Result<R>) -> Result<R> {
        if !self.is_enabled() {
            return f(self.inner.as_ref());
        }
        let start = Instant::now();
        let out = f(self.inner.as_ref())?;
        self.inner.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let mut stats = self.stats.lock().unwrap();
        let s = stats.entry(name).or_default();
        s.calls += 1;
        s.secs += secs;
        Ok(out)
    }
}

impl Backend for ProfiledBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn memory(&self) -> Arc<dyn Memory> {
        self.inner.memory()
    }
    fn mem_stats(&self) -> MemStats {
        self.inner.mem_stats()
    }
    fn upload_f32(&self, dst: View<f32>, src: &[f32]) -> Result<()> {
        self.op("upload", |b| b.upload_f32(dst, src))
    }
    fn download_f32(&self, src: View<f32>) -> Result<Vec<f32>> {
        self.op("download", |b| b.download_f32(src))
    }
    fn upload_u32(&self, dst: View<u32>, src: &[u32]) -> Result<()> {
        self.op("upload", |b| b.upload_u32(dst, src))
    }
    fn download_u32(&self, src: View<u32>) -> Result<Vec<u32>> {
        self.op("download", |b| b.download_u32(src))
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn fill(&self, dst: View<f32>, value: f32) -> Result<()> {
        self.op("fill", |b| b.fill(dst, value))
    }
    fn copy(&self, dst: View<f32>, src: View<f32>) -> Result<()> {
        self.op("copy", |b| b.copy(dst, src))
    }
    fn add(&self, out: View<f32>, a: View<f32>, b2: View<f32>) -> Result<()> {
        self.op("add", |b| b.add(out, a, b2))
    }
    fn accumulate(&self, dst: View<f32>, src: View<f32>) -> Result<()> {
        self.op("accumulate", |b| b.accumulate(dst, src))
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
        self.op("embedding_fwd", |b| {
            b.embedding_fwd(out, tokens, wte, wpe, batch, seq, channels)
        })
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
        self.op("embedding_bwd", |b| {
            b.embedding_bwd(dwte, dwpe, dout, tokens, batch, seq, channels)
        })
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
        self.op("layernorm_fwd", |b| {
            b.layernorm_fwd(out, mean, rstd, inp, weight, bias, rows, channels)
        })
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
        self.op("layernorm_bwd", |b| {
            b.layernorm_bwd(
                dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, channels,
            )
        })
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
        self.matmul("matmul_fwd", (rows, in_ch, out_ch), |b| {
            b.matmul_fwd(out, inp, weight, bias, rows, in_ch, out_ch)
        })
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
        self.matmul("matmul_bwd", (rows, in_ch, out_ch), |b| {
            b.matmul_bwd(dinp, dweight, dbias, dout, inp, weight, rows, in_ch, out_ch)
        })
    }
    fn attention_fwd(
        &self,
        out: View<f32>,
        att: View<f32>,
        qkv: View<f32>,
        shape: AttnShape,
    ) -> Result<()> {
        self.op("attention_fwd", |b| b.attention_fwd(out, att, qkv, shape))
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
        self.op("attention_bwd", |b| {
            b.attention_bwd(dqkv, scratch, dout, qkv, att, shape)
        })
    }
    fn gelu_fwd(&self, out: View<f32>, inp: View<f32>) -> Result<()> {
        self.op("gelu_fwd", |b| b.gelu_fwd(out, inp))
    }
    fn gelu_bwd(&self, dinp: View<f32>, inp: View<f32>, dout: View<f32>) -> Result<()> {
        self.op("gelu_bwd", |b| b.gelu_bwd(dinp, inp, dout))
    }
    fn dropout_fwd(
        &self,
        out: View<f32>,
        inp: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()> {
        self.op("dropout_fwd", |b| b.dropout_fwd(out, inp, p, seed, offset))
    }
    fn dropout_bwd(
        &self,
        dinp: View<f32>,
        dout: View<f32>,
        p: f32,
        seed: u64,
        offset: u64,
    ) -> Result<()> {
        self.op("dropout_bwd", |b| {
            b.dropout_bwd(dinp, dout, p, seed, offset)
        })
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
        self.op("softmax_xent", |b| {
            b.softmax_xent(
                losses,
                dlogits,
                logits,
                targets,
                rows,
                vocab,
                ignore_index,
                grad_scale,
            )
        })
    }
    fn adamw(
        &self,
        params: View<f32>,
        grads: View<f32>,
        m: View<f32>,
        v: View<f32>,
        hp: AdamWStep,
    ) -> Result<()> {
        self.op("adamw", |b| b.adamw(params, grads, m, v, hp))
    }
    fn sum_squares(&self, acc: View<f32>, x: View<f32>) -> Result<()> {
        self.op("sum_squares", |b| b.sum_squares(acc, x))
    }
}
