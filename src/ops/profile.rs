//! A [`Backend`] wrapper that times every op of the backend it wraps.
//!
//! It wraps [`Backend::execute`] once for all ops and names each by
//! [`Op::name`], so a new op is profiled without a line here. Profiling is
//! off by default and then costs one atomic load per op, so a benchmark can
//! time its steps through the wrapper and switch profiling on only for the
//! steps whose breakdown it wants. While on, every op is followed by
//! `synchronize`, so that an asynchronous (GPU) op's time is charged to the
//! op itself rather than to whichever later call happens to wait for it;
//! that serialization is why profiled steps are slower and are not the
//! headline timing.
//!
//! Whether profiling or not, it counts the traffic between host and device
//! ([`HostTraffic`]): launches, uploads (waiting and queued), readbacks
//! and explicit synchronizations; a waiting upload, a readback and a
//! synchronization are each a point where the host waits for the device. Tests count them per training step through it.

use super::{Backend, GraphCounts, GraphStep, Op};
use crate::mem::{MemStats, Memory, View};
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Calls and wall time of one op name while profiling was on.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct OpStat {
    pub calls: u64,
    pub secs: f64,
}

/// The family whose ops are also recorded per shape: matmuls dominate a
/// step, and which of them (the output head or the blocks' layers) is the
/// first question.
const PER_SHAPE_FAMILY: &str = "matmul";

/// Calls between host and device through a [`ProfiledBackend`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostTraffic {
    /// Ops run one by one ([`Backend::execute`]): kernel launches on a GPU.
    /// The ops of a step that ran as a graph are not counted here.
    pub launches: u64,
    /// Steps launched as one graph (captured or replayed).
    pub graph_launches: u64,
    /// Host-to-device copies that wait for the device on CUDA (from
    /// pageable memory); the emulator and the CPU copy at once.
    pub uploads: u64,
    /// Host-to-device copies queued through a pinned staging buffer
    /// ([`Backend::write_bytes_queued`]): the host does not wait.
    pub queued_uploads: u64,
    /// Device-to-host copies: each waits for all queued work.
    pub readbacks: u64,
    /// Explicit waits for all queued work ([`Backend::synchronize`]).
    pub syncs: u64,
}

impl HostTraffic {
    /// The calls since `earlier`.
    pub fn since(self, earlier: HostTraffic) -> HostTraffic {
        HostTraffic {
            launches: self.launches - earlier.launches,
            graph_launches: self.graph_launches - earlier.graph_launches,
            uploads: self.uploads - earlier.uploads,
            queued_uploads: self.queued_uploads - earlier.queued_uploads,
            readbacks: self.readbacks - earlier.readbacks,
            syncs: self.syncs - earlier.syncs,
        }
    }
}

#[derive(Default)]
struct TrafficCounters {
    launches: AtomicU64,
    graph_launches: AtomicU64,
    /// Ops of the step in progress while it runs as a graph.
    graph_step_ops: AtomicU64,
    in_graph_step: AtomicBool,
    /// Whether the wrapped backend was asked to begin the step in progress.
    inner_graph_step: AtomicBool,
    uploads: AtomicU64,
    queued_uploads: AtomicU64,
    readbacks: AtomicU64,
    syncs: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub struct ProfiledBackend {
    inner: Arc<dyn Backend>,
    traffic: TrafficCounters,
    enabled: AtomicBool,
    stats: Mutex<BTreeMap<&'static str, OpStat>>,
    matmul_shapes: Mutex<BTreeMap<String, OpStat>>,
}

impl ProfiledBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        ProfiledBackend {
            inner,
            traffic: TrafficCounters::default(),
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

    /// The host-device calls made through this wrapper so far (the waits
    /// profiling itself adds are not counted).
    pub fn traffic(&self) -> HostTraffic {
        let t = &self.traffic;
        HostTraffic {
            launches: t.launches.load(Ordering::Relaxed),
            graph_launches: t.graph_launches.load(Ordering::Relaxed),
            uploads: t.uploads.load(Ordering::Relaxed),
            queued_uploads: t.queued_uploads.load(Ordering::Relaxed),
            readbacks: t.readbacks.load(Ordering::Relaxed),
            syncs: t.syncs.load(Ordering::Relaxed),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Forgets the accumulated statistics.
    pub fn reset(&self) {
        self.stats.lock().unwrap().clear();
        self.matmul_shapes.lock().unwrap().clear();
    }

    /// Per-op statistics, slowest op first.
    pub fn report(&self) -> Vec<(&'static str, OpStat)> {
        let rows = self.stats.lock().unwrap();
        slowest_first(rows.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// Matmul statistics per "op rows x in -> out" shape, slowest first.
    pub fn matmul_report(&self) -> Vec<(String, OpStat)> {
        let rows = self.matmul_shapes.lock().unwrap();
        slowest_first(rows.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    /// Runs `f`; while profiling, synchronizes after it and records its time
    /// under `name` (and under `shape` when given).
    fn timed<R>(
        &self,
        name: &'static str,
        shape: impl FnOnce() -> Option<String>,
        f: impl FnOnce(&dyn Backend) -> Result<R>,
    ) -> Result<R> {
        if !self.is_enabled() {
            return f(self.inner.as_ref());
        }
        let start = Instant::now();
        let out = f(self.inner.as_ref())?;
        self.inner.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        add(self.stats.lock().unwrap().entry(name).or_default(), secs);
        if let Some(key) = shape() {
            add(
                self.matmul_shapes.lock().unwrap().entry(key).or_default(),
                secs,
            );
        }
        Ok(out)
    }
}

fn add(stat: &mut OpStat, secs: f64) {
    stat.calls += 1;
    stat.secs += secs;
}

fn slowest_first<K: Ord>(mut rows: Vec<(K, OpStat)>) -> Vec<(K, OpStat)> {
    rows.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs).then(a.0.cmp(&b.0)));
    rows
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
    fn write_bytes(&self, dst: View, src: &[u8]) -> Result<()> {
        count(&self.traffic.uploads);
        self.timed("upload", || None, |b| b.write_bytes(dst, src))
    }
    fn write_bytes_queued(&self, dst: View, src: &[u8]) -> Result<()> {
        count(&self.traffic.queued_uploads);
        self.timed("queued upload", || None, |b| b.write_bytes_queued(dst, src))
    }
    fn read_bytes(&self, src: View, dst: &mut [u8]) -> Result<()> {
        count(&self.traffic.readbacks);
        self.timed("download", || None, |b| b.read_bytes(src, dst))
    }
    fn synchronize(&self) -> Result<()> {
        count(&self.traffic.syncs);
        self.inner.synchronize()
    }
    fn execute(&self, op: &Op) -> Result<()> {
        let t = &self.traffic;
        count(if t.in_graph_step.load(Ordering::Relaxed) {
            &t.graph_step_ops
        } else {
            &t.launches
        });
        let shape =
            || (op.family() == PER_SHAPE_FAMILY).then(|| format!("{} {}", op.name(), op.shape()));
        self.timed(op.name(), shape, |b| b.execute(op))
    }
    /// While profiling, every op is waited for, which a graph step cannot
    /// do: the step runs op by op.
    fn begin_graph_step(&self) -> Result<GraphStep> {
        let t = &self.traffic;
        let graphed = !self.is_enabled();
        t.inner_graph_step.store(graphed, Ordering::Relaxed);
        let how = if graphed {
            self.inner.begin_graph_step()?
        } else {
            GraphStep::Eager
        };
        t.graph_step_ops.store(0, Ordering::Relaxed);
        let in_graph = matches!(how, GraphStep::Captured | GraphStep::Replayed);
        t.in_graph_step.store(in_graph, Ordering::Relaxed);
        Ok(how)
    }
    fn end_graph_step(&self) -> Result<GraphStep> {
        let t = &self.traffic;
        t.in_graph_step.store(false, Ordering::Relaxed);
        let how = if t.inner_graph_step.swap(false, Ordering::Relaxed) {
            self.inner.end_graph_step()?
        } else {
            GraphStep::Eager
        };
        let ops = t.graph_step_ops.swap(0, Ordering::Relaxed);
        match how {
            GraphStep::Captured | GraphStep::Replayed => count(&t.graph_launches),
            // Run one by one after all.
            GraphStep::FellBack | GraphStep::Eager => {
                t.launches.fetch_add(ops, Ordering::Relaxed);
            }
        }
        Ok(how)
    }
    fn graph_counts(&self) -> GraphCounts {
        self.inner.graph_counts()
    }
}
