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
//!
//! Every op runs at every compute dtype its contract lists. In bf16 the CPU
//! reference reads the same bf16 inputs, computes in fp32 as documented and
//! rounds each output where the kernel does, so the two agree to an fp32
//! difference plus one bf16 rounding on each side; each case derives its
//! bf16 tolerances from that ([`crate::ops::case::tol_bf16`]). Where a bf16
//! rounding feeds further arithmetic (attention's scores and probabilities,
//! GELU of a product) the case bounds the difference element by element
//! from its own inputs and compares absolute differences.

pub use crate::ops::case::Dims;

use crate::mem::{Buffer, DType, View};
use crate::ops::case::{Bound, Case, CaseBuilder, Init, Word};
use crate::ops::registry::Entry;
use crate::ops::{Backend, BackendExt, ENTRIES};
use crate::rng::HostRng;
use anyhow::{bail, Result};
use half::bf16;

/// One op at one shape and compute dtype.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub op: String,
    pub dtype: DType,
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
        let mut views: Vec<View> = Vec::new();
        for t in tensors {
            let (dtype, len) = match t {
                Init::F32(v) => (DType::F32, v.len()),
                Init::BF16(v) => (DType::BF16, v.len()),
                Init::U32(v) => (DType::U32, v.len()),
                Init::Words(w) => (DType::U32, 2 * w.len()),
            };
            // A backend cannot allocate nothing: at least one element.
            let buf = be.alloc(dtype, len.max(1))?;
            let view = buf.view().slice(0, len);
            match t {
                Init::F32(v) => be.upload(view, v)?,
                Init::BF16(v) => {
                    let rounded: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                    be.upload(view, &rounded)?
                }
                Init::U32(v) => be.upload(view, v)?,
                Init::Words(words) => {
                    let halves: Vec<u32> = words
                        .iter()
                        .map(|w| match *w {
                            Word::Address(t) => views[t.0].addr,
                            Word::Value(v) => v,
                        })
                        .flat_map(|w| [w as u32, (w >> 32) as u32])
                        .collect();
                    be.upload(view, &halves)?
                }
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

/// The contents of a float view as f64, whatever its float dtype.
fn download_floats(be: &dyn Backend, v: View) -> Result<Vec<f64>> {
    Ok(match v.dtype {
        DType::F32 => be.download::<f32>(v)?.iter().map(|&x| x as f64).collect(),
        DType::BF16 => be.download::<bf16>(v)?.iter().map(|x| x.to_f64()).collect(),
        DType::U32 => bail!("the case compares a u32 tensor; only float outputs are compared"),
    })
}

/// Runs `case` on both backends; returns the worst output's normalised
/// error and its tolerance (the output whose error is the largest fraction
/// of its tolerance).
fn run_case(reference: &dyn Backend, candidate: &dyn Backend, case: &Case) -> Result<(f64, f64)> {
    let r = Placed::new(reference, &case.tensors)?;
    let c = Placed::new(candidate, &case.tensors)?;
    for step in &case.steps {
        reference.execute(&(step.build)(&r.bound()))?;
        if step.copy_to_candidate.is_empty() {
            candidate.execute(&(step.build)(&c.bound()))?;
        }
        for t in &step.copy_to_candidate {
            let (rv, cv) = (r.views[t.0], c.views[t.0]);
            let mut bytes = vec![0u8; rv.bytes()];
            reference.read_bytes(rv, &mut bytes)?;
            candidate.write_bytes(cv, &bytes)?;
        }
    }
    let (mut worst, mut worst_tol) = (0.0f64, 0.0f64);
    for check in &case.compare {
        let (t, tol) = (check.tensor, check.tol);
        let a = download_floats(reference, r.views[t.0])?;
        let b = download_floats(candidate, c.views[t.0])?;
        let scale = if check.absolute {
            1.0
        } else {
            a.iter().fold(1e-3f64, |m, x| m.max(x.abs()))
        };
        let mut err = 0.0f64;
        for (x, y) in a.iter().zip(&b) {
            let d = (x - y).abs() / scale;
            // A NaN anywhere must fail the case.
            err = if d.is_nan() {
                f64::INFINITY
            } else {
                err.max(d)
            };
        }
        if worst_tol == 0.0 || err / tol > worst / worst_tol {
            (worst, worst_tol) = (err, tol);
        }
    }
    Ok((worst, worst_tol))
}

/// Runs the named ops (all of them when `ops` is empty) at every compute
/// dtype they support and every shape of `dims`, candidate against
/// reference. An unknown name is a failed case.
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
        let dtypes = entry.map_or(&[DType::F32][..], |e| e.dtypes);
        for (&dtype, d) in dtypes.iter().flat_map(|t| dims.iter().map(move |d| (t, d))) {
            let outcome = match entry {
                Some(entry) => {
                    let mut b = CaseBuilder::new(&mut rng, dtype);
                    (entry.case)(&mut b, *d);
                    run_case(reference, candidate, &b.finish())
                }
                None => Err(anyhow::anyhow!("the op registry has no op '{name}'")),
            };
            results.push(match outcome {
                Ok((err, tol)) => CaseResult {
                    op: name.to_string(),
                    dtype,
                    shape: d.describe(),
                    max_err: err,
                    tol,
                    passed: err <= tol,
                    error: None,
                },
                Err(e) => CaseResult {
                    op: name.to_string(),
                    dtype,
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

/// A plain-text table: op, dtype, shape, max error, tolerance, verdict.
pub fn format_results(results: &[CaseResult]) -> String {
    let mut s = format!(
        "{:<16} {:<5} {:<26} {:>11} {:>9}  result\n",
        "op", "dtype", "shape", "max err", "tol"
    );
    for r in results {
        let verdict = match (&r.error, r.passed) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, true) => "pass".into(),
            (None, false) => "FAIL".into(),
        };
        s.push_str(&format!(
            "{:<16} {:<5} {:<26} {:>11.3e} {:>9.1e}  {verdict}\n",
            r.op, r.dtype, r.shape, r.max_err, r.tol
        ));
    }
    let passed = results.iter().filter(|r| r.passed).count();
    s.push_str(&format!(
        "{passed} passed, {} failed\n",
        results.len() - passed
    ));
    s
}
