//! Conformance cases as data: the tensors an op is run on, the ops to run
//! and what to compare, so that the harness (`crate::conformance`) can run
//! the same case on two backends. Each registry entry has a function that
//! builds its case at given sizes and compute dtype.
//!
//! A case is built for one compute dtype (one of the op's
//! `Contract::FLOATS`): [`CaseBuilder::random`] and [`CaseBuilder::floats`]
//! make tensors of that dtype (bf16 values are rounded once, on the host,
//! and both backends start from the same bits), [`CaseBuilder::random_f32`]
//! and [`CaseBuilder::floats_f32`] tensors that are fp32 in every precision
//! (statistics, weight gradients). Each compared output has its own
//! tolerance, derived in the case from the rounding of its dtype and the
//! length of the reduction behind it (see [`tol_bf16`]).

use super::Op;
use crate::mem::{DType, View};
use crate::rng::HostRng;
use std::ops::Index;

/// The sizes one case is built at.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
    pub heads: usize,
    pub vocab: usize,
}

impl Dims {
    /// Odd sizes, a mid size that is no multiple of any tile, and one large
    /// enough for many blocks.
    pub fn standard() -> Vec<Dims> {
        vec![
            Dims {
                batch: 2,
                seq: 7,
                channels: 12,
                heads: 3,
                vocab: 11,
            },
            Dims {
                batch: 3,
                seq: 37,
                channels: 72,
                heads: 4,
                vocab: 101,
            },
            Dims {
                batch: 2,
                seq: 67,
                channels: 160,
                heads: 5,
                vocab: 517,
            },
        ]
    }

    pub fn describe(&self) -> String {
        format!(
            "B{} T{} C{} H{} V{}",
            self.batch, self.seq, self.channels, self.heads, self.vocab
        )
    }
}

/// The tolerance for a reduction over `k` terms: room for another summation
/// order and fused multiply-adds, not for a wrong index.
pub fn tol_for(k: usize) -> f64 {
    2e-6 * (k as f64).sqrt() + 2e-6
}

/// The unit roundoff of bf16: 8 significant bits, so rounding to nearest
/// moves a value by at most `2^-8` of its magnitude.
pub const BF16_UNIT: f64 = 1.0 / 256.0;

/// The tolerance (normalised, as the harness measures) of an output rounded
/// to bf16 once, whose fp32 value before the rounding may differ between the
/// two backends by `tol_f32` (normalised): the kernel and the CPU reference
/// read the same bf16 inputs and compute in fp32, so their unrounded values
/// `x_c`, `x_r` are `tol_f32 * M` apart (M the largest reference magnitude);
/// each side then rounds once, by at most `u |x| <= u M (1 + tol_f32)`
/// (u = [`BF16_UNIT`]). So `|round(x_c) - round(x_r)| / M <= 2 u (1 +
/// tol_f32) + tol_f32`, and the normalisation by the rounded reference's
/// largest magnitude (at least `M (1 - u)`) adds a factor `1 / (1 - u)`.
/// Usually the two roundings land on the same bf16 value; the bound is what
/// remains when an fp32 difference straddles a rounding boundary.
pub fn tol_bf16(tol_f32: f64) -> f64 {
    (2.0 * BF16_UNIT * (1.0 + tol_f32) + tol_f32) / (1.0 - BF16_UNIT)
}

/// A tensor of a case, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId(pub usize);

/// Initial contents of a case tensor.
#[derive(Clone, Debug)]
pub enum Init {
    F32(Vec<f32>),
    /// Stored as bf16 (each value rounded to nearest even).
    BF16(Vec<f32>),
    U32(Vec<u32>),
    /// 64-bit words stored as u32 pairs, low half first: device addresses
    /// of earlier tensors of the case, or plain values (the tensor lists of
    /// multi-tensor ops).
    Words(Vec<Word>),
}

/// One word of [`Init::Words`].
#[derive(Clone, Copy, Debug)]
pub enum Word {
    /// Where an earlier tensor of the case lies on the backend under test.
    Address(TensorId),
    Value(u64),
}

/// The views of a case's tensors on one backend, indexed by [`TensorId`].
pub struct Bound<'a>(pub &'a [View]);

impl Index<TensorId> for Bound<'_> {
    type Output = View;
    fn index(&self, t: TensorId) -> &View {
        &self.0[t.0]
    }
}

type BuildOp = Box<dyn Fn(&Bound) -> Op>;

/// One op of a case.
pub struct Step {
    pub build: BuildOp,
    /// Empty: run on both backends. Otherwise a preparation run on the
    /// reference only, after which these tensors are copied to the
    /// candidate (saved statistics that the op under test reads).
    pub copy_to_candidate: Vec<TensorId>,
}

/// One output to compare and how close it must be.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    pub tensor: TensorId,
    pub tol: f64,
    /// Measure `max |candidate - reference|` itself rather than normalised
    /// by the reference's largest magnitude: for bounds derived element by
    /// element (chains of bf16 roundings), which need no lower bound on the
    /// output's magnitude.
    pub absolute: bool,
}

pub struct Case {
    pub tensors: Vec<Init>,
    pub steps: Vec<Step>,
    /// Float tensors whose final contents must agree.
    pub compare: Vec<Check>,
}

/// Builds a [`Case`] from a seeded random stream.
pub struct CaseBuilder<'r> {
    rng: &'r mut HostRng,
    dtype: DType,
    case: Case,
}

impl<'r> CaseBuilder<'r> {
    /// A case whose compute dtype is `dtype` (f32 or bf16).
    pub fn new(rng: &'r mut HostRng, dtype: DType) -> Self {
        assert!(dtype.is_float(), "a case computes in a float dtype");
        CaseBuilder {
            rng,
            dtype,
            case: Case {
                tensors: Vec::new(),
                steps: Vec::new(),
                compare: Vec::new(),
            },
        }
    }

    /// The compute dtype the case is built for.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the case runs in bf16.
    pub fn bf16(&self) -> bool {
        self.dtype == DType::BF16
    }

    /// The tolerance of an output in the compute dtype whose fp32 value
    /// the two backends compute to within `tol_f32`: `tol_f32` itself in
    /// fp32, [`tol_bf16`] of it in bf16.
    pub fn tol_out(&self, tol_f32: f64) -> f64 {
        if self.bf16() {
            tol_bf16(tol_f32)
        } else {
            tol_f32
        }
    }

    /// `offset + scale * N(0, 1)` values.
    pub fn values(&mut self, len: usize, scale: f64, offset: f64) -> Vec<f32> {
        (0..len)
            .map(|_| (offset + scale * self.rng.normal()) as f32)
            .collect()
    }

    /// Ids below `below`.
    pub fn ids(&mut self, len: usize, below: usize) -> Vec<u32> {
        (0..len)
            .map(|_| self.rng.below(below as u64) as u32)
            .collect()
    }

    pub fn tensor(&mut self, init: Init) -> TensorId {
        self.case.tensors.push(init);
        TensorId(self.case.tensors.len() - 1)
    }

    /// A tensor of the case's compute dtype holding `data` (rounded, in bf16).
    pub fn floats(&mut self, data: Vec<f32>) -> TensorId {
        match self.dtype {
            DType::BF16 => self.tensor(Init::BF16(data)),
            _ => self.tensor(Init::F32(data)),
        }
    }

    /// An fp32 tensor holding `data`, whatever the compute dtype.
    pub fn floats_f32(&mut self, data: Vec<f32>) -> TensorId {
        self.tensor(Init::F32(data))
    }

    /// A tensor of the compute dtype of `len` values, `scale * N(0, 1)`.
    /// Outputs start random too, so that a backward's `+=` is checked.
    pub fn random(&mut self, len: usize, scale: f64) -> TensorId {
        let v = self.values(len, scale, 0.0);
        self.floats(v)
    }

    /// An fp32 tensor of `len` values, `scale * N(0, 1)`, whatever the
    /// compute dtype (statistics, weight gradients).
    pub fn random_f32(&mut self, len: usize, scale: f64) -> TensorId {
        let v = self.values(len, scale, 0.0);
        self.floats_f32(v)
    }

    /// Token ids below `below`.
    pub fn tokens(&mut self, len: usize, below: usize) -> TensorId {
        let ids = self.ids(len, below);
        self.tensor(Init::U32(ids))
    }

    /// Runs `op` on both backends.
    pub fn run(&mut self, op: impl Fn(&Bound) -> Op + 'static) {
        self.case.steps.push(Step {
            build: Box::new(op),
            copy_to_candidate: Vec::new(),
        });
    }

    /// Runs `op` on the reference only, then copies `results` to the candidate.
    pub fn prepare(&mut self, op: impl Fn(&Bound) -> Op + 'static, results: &[TensorId]) {
        self.case.steps.push(Step {
            build: Box::new(op),
            copy_to_candidate: results.to_vec(),
        });
    }

    /// Outputs to compare, with the tolerance of their normalised error
    /// (called again for outputs with another tolerance).
    pub fn compare(&mut self, outputs: &[TensorId], tol: f64) {
        self.case
            .compare
            .extend(outputs.iter().map(|&tensor| Check {
                tensor,
                tol,
                absolute: false,
            }));
    }

    /// Outputs to compare by their largest absolute difference.
    pub fn compare_abs(&mut self, outputs: &[TensorId], tol: f64) {
        self.case
            .compare
            .extend(outputs.iter().map(|&tensor| Check {
                tensor,
                tol,
                absolute: true,
            }));
    }

    /// `data` as the backends will hold it in the compute dtype, in f64
    /// (rounded to bf16 in a bf16 case): what a case's own bounds are
    /// computed from.
    pub fn stored(&self, data: &[f32]) -> Vec<f64> {
        if self.bf16() {
            data.iter()
                .map(|&x| half::bf16::from_f32(x).to_f64())
                .collect()
        } else {
            data.iter().map(|&x| x as f64).collect()
        }
    }

    pub fn finish(self) -> Case {
        self.case
    }
}
