//! The optimizer's passes over parameters (AdamW, the squared norm) and the
//! step statistics that let a training step run without reading anything
//! back: the loss and the gradient norm are summed into a small device
//! buffer ([`stat`]), [`FinishStep`] turns them into the clip scale and the
//! skip flag there, and AdamW reads both from it.

use super::check::{self, input, output, F32_ONLY};
use super::Contract;
use crate::mem::{DType, View};
use anyhow::Result;

/// The slots of the step-statistics buffer (fp32, [`stat::LEN`] floats);
/// kernels/optimizer.cu numbers them the same way.
pub mod stat {
    /// The step's mean training loss, summed over its micro-batches.
    pub const LOSS: usize = 0;
    /// The sum of squared gradients.
    pub const NORM_SQ: usize = 1;
    /// `sqrt(NORM_SQ)`, the gradient norm before clipping.
    pub const NORM: usize = 2;
    /// The factor AdamW multiplies gradients by (clipping); 0 when skipped.
    pub const SCALE: usize = 3;
    /// 1 when the loss or the norm is not finite: AdamW changes nothing.
    pub const SKIP: usize = 4;
    /// Updates skipped so far in the run (exact up to 2^24).
    pub const SKIPPED: usize = 5;
    /// Updates skipped since the last applied one.
    pub const SKIPPED_IN_A_ROW: usize = 6;
    /// The update's schedule ([`super::AdamWStep::schedule`]), which the
    /// host writes before each step (a queued upload) and
    /// [`super::AdamwMulti`] reads, so that a captured step (a CUDA graph)
    /// follows the learning rate and the step count without re-capture:
    /// `1 - lr * weight_decay`,
    pub const DECAY: usize = 7;
    /// `lr / (1 - beta1^t)`,
    pub const STEP_SIZE: usize = 8;
    /// and `sqrt(1 - beta2^t)`.
    pub const BC2_SQRT: usize = 9;
    pub const LEN: usize = 10;
    /// Where the scratch of [`super::SumSquares`] and [`super::SumScaled`]
    /// starts in the statistics buffer (8-byte aligned: it holds doubles).
    pub const SCRATCH: usize = 10;
    /// The whole buffer: the statistics, then that scratch.
    pub const BUFFER_LEN: usize = SCRATCH + super::SUM_SCRATCH_LEN;

    /// Statistics that give AdamW the clip scale `scale`, or skip it (tests
    /// and conformance cases).
    pub fn with_scale(scale: f32, skip: bool) -> Vec<f32> {
        let mut s = vec![0.0; LEN];
        s[SCALE] = scale;
        s[SKIP] = skip as u8 as f32;
        s
    }

    /// [`with_scale`], with the schedule of the update `hp` for
    /// [`super::AdamwMulti`].
    pub fn for_update(scale: f32, skip: bool, hp: &super::AdamWStep) -> Vec<f32> {
        let mut s = with_scale(scale, skip);
        s[DECAY..LEN].copy_from_slice(&hp.schedule());
        s
    }
}

/// Hyper-parameters of one AdamW update (decoupled weight decay, bias
/// correction). `step` is 1-based. The gradient scale (clipping) and the
/// skip flag come from the step statistics on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
}

impl AdamWStep {
    /// What the update takes from the learning rate and the step count:
    /// `[1 - lr * weight_decay, lr / (1 - beta1^t), sqrt(1 - beta2^t)]`,
    /// the bias corrections in f64 as PyTorch computes them on the host.
    /// Every backend's AdamW applies these same floats.
    pub fn schedule(&self) -> [f32; 3] {
        let t = self.step as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        [
            1.0 - self.lr * self.weight_decay,
            (self.lr as f64 / bc1) as f32,
            bc2.sqrt() as f32,
        ]
    }

    /// The constant part, as [`AdamwMulti`] takes it.
    pub fn betas(&self) -> AdamWBetas {
        AdamWBetas {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }
}

/// The hyper-parameters of [`AdamwMulti`] that stay fixed over a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWBetas {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// One AdamW update of `params` from `grads`, moments `m` and `v`, all fp32
/// in every precision (master weights). In mixed precision `copy` receives
/// the updated weights rounded to bf16: the compute copy the matmuls read,
/// written in the same pass. Gradients are multiplied by
/// `stats[stat::SCALE]` first; when `stats[stat::SKIP]` is set nothing is
/// written at all.
#[derive(Clone, Copy, Debug)]
pub struct Adamw {
    pub params: View,
    pub grads: View,
    pub m: View,
    pub v: View,
    pub copy: Option<View>,
    pub stats: View,
    pub hp: AdamWStep,
}

impl Adamw {
    /// The tensor this op updates.
    pub fn tensor(&self, decays: bool) -> AdamwTensor {
        AdamwTensor {
            params: self.params,
            grads: self.grads,
            m: self.m,
            v: self.v,
            copy: self.copy,
            decays,
        }
    }
}

impl Contract for Adamw {
    const NAME: &'static str = "adamw";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check::one_based(Self::NAME, "step", self.hp.step)?;
        self.tensor(false).check(Self::NAME)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[input("stats", self.stats, stat::LEN).of(DType::F32)],
        )
    }
    fn shape(&self) -> String {
        format!("n={}", self.params.len)
    }
}

/// One tensor of a multi-tensor AdamW update ([`AdamwMulti`]): the
/// operands of [`Adamw`], and whether weight decay applies to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwTensor {
    pub params: View,
    pub grads: View,
    pub m: View,
    pub v: View,
    pub copy: Option<View>,
    pub decays: bool,
}

/// 64-bit words per entry of an [`AdamwMulti`] list.
pub const ENTRY_WORDS: usize = 6;

/// The bit of an entry's last word that says the tensor decays.
pub const DECAYS_BIT: u64 = 1 << 63;

impl AdamwTensor {
    /// The lengths and dtypes [`Adamw`] requires; `op` names the caller.
    pub fn check(&self, op: &str) -> Result<()> {
        let n = check::same_len(
            op,
            &[
                ("params", self.params),
                ("grads", self.grads),
                ("m", self.m),
                ("v", self.v),
            ],
        )?;
        check::operands(
            op,
            F32_ONLY,
            &[
                output("params", self.params, n),
                output("m", self.m, n),
                output("v", self.v, n),
                output("copy", self.copy, n).of(DType::BF16),
                input("grads", self.grads, n),
            ],
        )
    }

    /// The tensor's entry in a device list: the addresses of params,
    /// grads, m, v and copy (0 for none), then the length with
    /// [`DECAYS_BIT`] set when it decays.
    pub fn entry(&self) -> [u64; ENTRY_WORDS] {
        let len = self.params.len as u64 | if self.decays { DECAYS_BIT } else { 0 };
        [
            self.params.addr,
            self.grads.addr,
            self.m.addr,
            self.v.addr,
            self.copy.map_or(0, |c| c.addr),
            len,
        ]
    }
}

/// The device list of an [`AdamwMulti`] update: the entries of checked
/// tensors (each [`AdamwTensor::check`]ed), as u32 pairs (little-endian
/// 64-bit words, the dtype the backends copy), and the largest length.
pub fn adamw_list(tensors: &[AdamwTensor]) -> Result<(Vec<u32>, usize)> {
    let mut words = Vec::with_capacity(tensors.len() * ENTRY_WORDS * 2);
    let mut max_len = 0;
    for t in tensors {
        t.check(AdamwMulti::NAME)?;
        max_len = max_len.max(t.params.len);
        for w in t.entry() {
            words.extend([w as u32, (w >> 32) as u32]);
        }
    }
    Ok((words, max_len))
}

/// AdamW over many tensors in one pass: `list` holds `count` entries
/// ([`AdamwTensor::entry`], built by [`adamw_list`] from checked tensors of
/// this backend; the op cannot check device data, so building the list is
/// where the operands are validated). Each element is updated exactly as
/// [`Adamw`] updates it, with the learning rate, weight decay and step
/// count of the schedule in `stats` (from [`stat::DECAY`] on; no decay on
/// the entries that do not decay); `max_len` (the longest tensor) sizes
/// the grid.
#[derive(Clone, Copy, Debug)]
pub struct AdamwMulti {
    pub list: View,
    pub count: usize,
    pub max_len: usize,
    pub stats: View,
    pub betas: AdamWBetas,
}

impl Contract for AdamwMulti {
    const NAME: &'static str = "adamw_multi";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[
                input("list", self.list, self.count * ENTRY_WORDS * 2).of(DType::U32),
                input("stats", self.stats, stat::LEN).of(DType::F32),
            ],
        )
    }
    fn shape(&self) -> String {
        format!("tensors={} max_len={}", self.count, self.max_len)
    }
}

/// The fp32 scratch a sum needs on a device: a block counter and one double
/// per block (kernels/optimizer.cu, `sum_into`), so that the blocks'
/// partial sums are added in block order, the same bits in every run. The
/// counter must be 0 before the first sum (a fresh buffer is zeroed) and
/// each sum leaves it 0; sums that share a scratch must run one after
/// another (one stream). The CPU backend does not touch it.
pub const SUM_SCRATCH_LEN: usize = 2 + 2 * crate::cuda::params::MAX_GRID_1D as usize;

/// Where a device sum goes: the one float `acc` and the [`SUM_SCRATCH_LEN`]
/// floats of `scratch` it uses on the way.
#[derive(Clone, Copy, Debug)]
pub struct SumTarget {
    pub acc: View,
    pub scratch: View,
}

/// `acc[0] += sum(x^2)` (the global gradient norm, one buffer at a time),
/// deterministic: see [`SUM_SCRATCH_LEN`] for `scratch`.
#[derive(Clone, Copy, Debug)]
pub struct SumSquares {
    pub acc: View,
    pub scratch: View,
    pub x: View,
}

impl Contract for SumSquares {
    const NAME: &'static str = "sum_squares";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check_sum(Self::NAME, self.acc, self.scratch, self.x)
    }
    fn shape(&self) -> String {
        format!("n={}", self.x.len)
    }
}

/// The operands of a sum of all of `x` into the one float `acc`.
fn check_sum(op: &str, acc: View, scratch: View, x: View) -> Result<()> {
    check::operands(
        op,
        F32_ONLY,
        &[
            output("acc", acc, 1),
            output("scratch", scratch, SUM_SCRATCH_LEN).of(DType::F32),
            input("x", x, x.len),
        ],
    )
}

/// `acc[0] += scale * sum(x)` (the step's loss from the per-row losses,
/// which are 0 on ignored targets), deterministic like [`SumSquares`].
#[derive(Clone, Copy, Debug)]
pub struct SumScaled {
    pub acc: View,
    pub scratch: View,
    pub x: View,
    pub scale: f32,
}

impl Contract for SumScaled {
    const NAME: &'static str = "sum_scaled";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check_sum(Self::NAME, self.acc, self.scratch, self.x)
    }
    fn shape(&self) -> String {
        format!("n={}", self.x.len)
    }
}

/// Closes a step's statistics on the device: `NORM = sqrt(NORM_SQ)`; when
/// `LOSS` or `NORM` is not finite the step is skipped (`SKIP = 1`,
/// `SCALE = 0`, both skip counters advance), else `SCALE` is the clip
/// factor `min(1, max_norm / (NORM + 1e-6))` (1 when `max_norm` is 0) and
/// `SKIPPED_IN_A_ROW` returns to 0.
#[derive(Clone, Copy, Debug)]
pub struct FinishStep {
    pub stats: View,
    pub max_norm: f32,
}

impl Contract for FinishStep {
    const NAME: &'static str = "finish_step";
    const FLOATS: &'static [DType] = F32_ONLY;
    fn check(&self) -> Result<()> {
        check::nonnegative(Self::NAME, "max_norm", self.max_norm)?;
        check::operands(
            Self::NAME,
            Self::FLOATS,
            &[output("stats", self.stats, stat::LEN)],
        )
    }
    fn shape(&self) -> String {
        format!("max_norm={}", self.max_norm)
    }
}
