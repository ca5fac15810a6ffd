//! Conformance cases as data: the tensors an op is run on, the ops to run
//! and what to compare, so that the harness (`crate::conformance`) can run
//! the same case on two backends. Each registry entry has a function that
//! builds its case at given sizes.

use super::Op;
use crate::mem::View;
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

/// A tensor of a case, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId(pub usize);

/// Initial contents of a case tensor.
#[derive(Clone, Debug)]
pub enum Init {
    F32(Vec<f32>),
    U32(Vec<u32>),
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

pub struct Case {
    pub tensors: Vec<Init>,
    pub steps: Vec<Step>,
    /// Float tensors whose final contents must agree.
    pub compare: Vec<TensorId>,
    pub tol: f64,
}

/// Builds a [`Case`] from a seeded random stream.
pub struct CaseBuilder<'r> {
    rng: &'r mut HostRng,
    case: Case,
}

impl<'r> CaseBuilder<'r> {
    pub fn new(rng: &'r mut HostRng) -> Self {
        CaseBuilder {
            rng,
            case: Case {
                tensors: Vec::new(),
                steps: Vec::new(),
                compare: Vec::new(),
                tol: 0.0,
            },
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

    pub fn floats(&mut self, data: Vec<f32>) -> TensorId {
        self.tensor(Init::F32(data))
    }

    /// A float tensor of `len` values, `scale * N(0, 1)`. Outputs start
    /// random too, so that a backward's `+=` is checked.
    pub fn random(&mut self, len: usize, scale: f64) -> TensorId {
        let v = self.values(len, scale, 0.0);
        self.floats(v)
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

    /// The outputs to compare and the tolerance of the normalised error.
    pub fn compare(&mut self, outputs: &[TensorId], tol: f64) {
        self.case.compare = outputs.to_vec();
        self.case.tol = tol;
    }

    pub fn finish(self) -> Case {
        self.case
    }
}
