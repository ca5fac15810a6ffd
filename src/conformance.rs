//! One harness that runs every op on two backends with the same random
//! inputs and compares the outputs. It walks the op registry
//! ([`crate::ops::ENTRIES`]): each entry builds its case (inputs at given
//! sizes, the ops to run, the outputs to compare and a tolerance), so a new
//! op is checked as soon as it is registered. The kernel tests use it with
//! `KernelBackend<EmuDevice>` against `CpuBackend`; `dyntie doctor` uses it
//! with the CUDA backend on a real GPU.
//!
//! Error measure: `max |candidate - reference| / max(|reference|, 1e-3)` over
//! each output tensor (a normalised max error: element-wise relative errors
//! explode near zero). Gradient outputs start from random non-zero values, so
//! the `+=` contract is checked too. Tolerances grow with the reduction
//! length `K` ([`crate::ops::case::tol_for`]): `2e-6 * sqrt(K) + 2e-6` for
//! sums over `K` terms, which leaves room for a different summation order and
//! fused multiply-adds but not for a wrong index.

pub use crate::ops::case::Dims;

use crate::mem::{Buffer, DType, View};
use crate::ops::case::{Bound, Case, CaseBuilder, Init};
use crate::ops::registry::Entry;
use crate::ops::{Backend, BackendExt, ENTRIES};
use crate::rng::HostRng;
use anyhow::{bail, Result};

/// One op at one shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub op: String,
    pub shape: String,
    pub max_err: f64,
    pub tol: f64,
    pub passed: bool,
    /// Set when the candidate failed to run (for example an op without a kernel).
    pub error: Option<String>,
}

/// Every op name the registry holds, in the order the harness runs them.
pub fn op_names() -> Vec<&'static str> {
    ENTRIES.iter().map(|e| e.name).collect()
}

/// A case's tensors on one backend.
struct Placed {
    /// Owns the memory `views` address.
    _buffers: Vec<Buffer>,
    views: Vec<View>,
}

impl Placed {
    fn new(be: &dyn Backend, tensors: &[Init]) -> Result<Placed> {
        let mut buffers = Vec::new();
        let mut views = Vec::new();
        for t in tensors {
            let (dtype, len) = match t {
                Init::F32(v) => (DType::F32, v.len()),
                Init::U32(v) => (DType::U32, v.len()),
            };
            // A backend cannot allocate nothing: at least one element.
            let buf = be.alloc(dtype, len.max(1))?;
            let view = buf.view().slice(0, len);
            match t {
                Init::F32(v) => be.upload(view, v)?,
                Init::U32(v) => be.upload(view, v)?,
            }
            buffers.push(buf);
            views.push(view);
        }
        Ok(Placed {
            _buffers: buffers,
            views,
        })
    }

    fn bound(&self) -> Bound<'_> {
        Bound(&self.views)
    }
}

/// Runs `case` on both backends; returns the normalised error.
fn run_case(reference: &dyn Backend, candidate: &dyn Backend, case: &Case) -> Result<f64> {
    let r = Placed::new(reference, &case.tensors)?;
    let c = Placed::new(candidate, &case.tensors)?;
    for step in &case.steps {
        reference.execute(&(step.build)(&r.bound()))?;
        if step.copy_to_candidate.is_empty() {
            candidate.execute(&(step.build)(&c.bound()))?;
        }
        for t in &step.copy_to_candidate {
            let data = reference.download::<f32>(r.views[t.0])?;
            candidate.upload(c.views[t.0], &data)?;
        }
    }
    let mut worst = 0.0f64;
    for t in &case.compare {
        let (rv, cv) = (r.views[t.0], c.views[t.0]);
        if rv.dtype != DType::F32 {
            bail!(
                "the case compares a {} tensor; only f32 outputs are compared",
                rv.dtype
            );
        }
        let a = reference.download::<f32>(rv)?;
        let b = candidate.download::<f32>(cv)?;
        let scale = a.iter().fold(1e-3f64, |m, x| m.max(x.abs() as f64));
        for (x, y) in a.iter().zip(&b) {
            let d = (*x as f64 - *y as f64).abs() / scale;
            // A NaN anywhere must fail the case.
            worst = if d.is_nan() {
                f64::INFINITY
            } else {
                worst.max(d)
            };
        }
    }
    Ok(worst)
}

/// Runs the named ops (all of them when `ops` is empty) at every shape of
/// `dims`, candidate against reference. An unknown name is a failed case.
pub fn check_ops(
    reference: &dyn Backend,
    candidate: &dyn Backend,
    ops: &[&str],
    dims: &[Dims],
    seed: u64,
) -> Vec<CaseResult> {
    let mut rng = HostRng::new(seed);
    let mut results = Vec::new();
    let names: Vec<&str> = if ops.is_empty() {
        op_names()
    } else {
        ops.to_vec()
    };
    for name in names {
        let entry: Option<&Entry> = ENTRIES.iter().find(|e| e.name == name);
        for d in dims {
            let outcome = match entry {
                Some(entry) => {
                    let mut b = CaseBuilder::new(&mut rng);
                    (entry.case)(&mut b, *d);
                    let case = b.finish();
                    run_case(reference, candidate, &case).map(|err| (err, case.tol))
                }
                None => Err(anyhow::anyhow!("the op registry has no op '{name}'")),
            };
            results.push(match outcome {
                Ok((err, tol)) => CaseResult {
                    op: name.to_string(),
                    shape: d.describe(),
                    max_err: err,
                    tol,
                    passed: err <= tol,
                    error: None,
                },
                Err(e) => CaseResult {
                    op: name.to_string(),
                    shape: d.describe(),
                    max_err: f64::NAN,
                    tol: 0.0,
                    passed: false,
                    error: Some(format!("{e:#}")),
                },
            });
        }
    }
    results
}

/// A plain-text table: op, shape, max error, tolerance, verdict.
pub fn format_results(results: &[CaseResult]) -> String {
    let mut s = format!(
        "{:<15} {:<26} {:>11} {:>9}  result\n",
        "op", "shape", "max err", "tol"
    );
    for r in results {
        let verdict = match (&r.error, r.passed) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, true) => "pass".into(),
            (None, false) => "FAIL".into(),
        };
        s.push_str(&format!(
            "{:<15} {:<26} {:>11.3e} {:>9.1e}  {verdict}\n",
            r.op, r.shape, r.max_err, r.tol
        ));
    }
    let passed = results.iter().filter(|r| r.passed).count();
    s.push_str(&format!(
        "{passed} passed, {} failed\n",
        results.len() - passed
    ));
    s
}
