//! The arithmetic of every CPU op over plain slices. Shapes and overlap were
//! checked by the caller (`mod.rs`), so these functions only compute.
//!
//! Reductions across threads are split into fixed chunks whose partial results
//! are combined in order, so every result is bit-for-bit the same however many
//! threads run it (a resumed run must continue exactly).

use super::math::{self, simd};
use crate::backend::{AdamWStep, AttnShape, LAYERNORM_EPS};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Elements per parallel task for elementwise ops: big enough to amortize
/// rayon's scheduling, small enough to balance over a few cores.
const CHUNK: usize = 1 << 14;

/// Rows per task in row reductions (layernorm weight gradients).
const ROW_CHUNK: usize = 64;

pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

pub fn accumulate(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d += s;
            }
        });
}

pub fn scale(dst: &mut [f32], factor: f32) {
    dst.par_chunks_mut(CHUNK).for_each(|d| {
        for d in d {
            *d *= factor;
        }
    });
}

pub fn fill(dst: &mut [f32], value: f32) {
    dst.par_chunks_mut(CHUNK).for_each(|d| d.fill(value));
}

pub fn embedding_fwd(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    seq: usize,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(row, (o, &tok))| {
            let e = &wte[tok as usize * c..][..c];
            let p = &wpe[(row % seq) * c..][..c];
            for ((o, e), p) in o.iter_mut().zip(e).zip(p) {
                *o = e + p;
            }
        });
}

/// Sequential on purpose: repeated tokens scatter into the same rows, and the
/// op is a few hundred thousand adds.
pub fn embedding_bwd(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    seq: usize,
    c: usize,
) {
    for (row, (d, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        let e = &mut dwte[tok as usize * c..][..c];
        for (e, d) in e.iter_mut().zip(d) {
            *e += d;
        }
        let p = &mut dwpe[(row % seq) * c..][..c];
        for (p, d) in p.iter_mut().zip(d) {
            *p += d;
        }
    }
}

pub fn layernorm_fwd(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .zip(inp.par_chunks(c))
        .for_each(|((o, (m, r)), x)| {
            let mu = x.iter().sum::<f32>() / c as f32;
            // Two passes: the variance of centred values does not cancel.
            let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + LAYERNORM_EPS).sqrt();
            for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (x - mu) * rs * w + b;
            }
            *m = mu;
            *r = rs;
        });
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((di, (dy, x)), (&mu, &rs))| {
            // dnorm = dy * w; dx = rs * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
            let mut sum_dn = 0.0f32;
            let mut sum_dn_n = 0.0f32;
            for ((dy, x), w) in dy.iter().zip(x).zip(weight) {
                let dn = dy * w;
                sum_dn += dn;
                sum_dn_n += dn * (x - mu) * rs;
            }
            let mean_dn = sum_dn / c as f32;
            let mean_dn_n = sum_dn_n / c as f32;
            for (((di, dy), x), w) in di.iter_mut().zip(dy).zip(x).zip(weight) {
                let n = (x - mu) * rs;
                *di += rs * (dy * w - mean_dn - n * mean_dn_n);
            }
        });
    if dweight.is_none() && dbias.is_none() {
        return;
    }
    // Per-chunk partial sums of dy * norm and dy, combined in chunk order.
    let partials: Vec<Vec<f32>> = dout
        .par_chunks(c * ROW_CHUNK)
        .zip(inp.par_chunks(c * ROW_CHUNK))
        .zip(mean.par_chunks(ROW_CHUNK).zip(rstd.par_chunks(ROW_CHUNK)))
        .map(|((dy, x), (mu, rs))| {
            let mut acc = vec![0.0f32; 2 * c];
            let (dw, db) = acc.split_at_mut(c);
            for (((dy, x), mu), rs) in dy.chunks_exact(c).zip(x.chunks_exact(c)).zip(mu).zip(rs) {
                for (((dw, db), dy), x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
                    *dw += dy * (x - mu) * rs;
                    *db += dy;
                }
            }
            acc
        })
        .collect();
    if let Some(dweight) = dweight {
        for p in &partials {
            for (d, p) in dweight.iter_mut().zip(&p[..c]) {
                *d += p;
            }
        }
    }
    if let Some(dbias) = dbias {
        for p in &partials {
            for (d, p) in dbias.iter_mut().zip(&p[c..]) {
                *d += p;
            }
        }
    }
}

/// A row-major matrix operand for [`matmul`]: base pointer and strides in
/// elements (`rs` between rows, `cs` between columns).
#[derive(Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    /// `rows x cols` row-major data.
    pub fn rows(data: &[f32], cols: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
    /// The transpose of `rows x cols` row-major data (so `cols x rows`).
    pub fn transposed(data: &[f32], cols: usize) -> Mat {
        Mat {
            ptr: data.as_ptr(),
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`, accumulating when `accumulate`.
/// `dst` is row-major `m x n`; the operands were built from slices of at
/// least the sizes their strides reach, none overlapping `dst`.
pub fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, m: usize, n: usize, k: usize, accumulate: bool) {
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` is an exclusive slice of at least m*n elements; the
    // operands are as this function's contract says.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            n,
            lhs,
            rhs,
            m,
            n,
            k,
            accumulate,
            Parallelism::Rayon(0),
        )
    };
}

/// [`matmul`] over raw memory: `dst` has row stride `dst_rs`.
///
/// # Safety
/// `dst` and the operands must be valid for every element their strides
/// reach for these sizes, and nothing else may access the `dst` elements or
/// write the operands during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    lhs: Mat,
    rhs: Mat,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    // gemm computes dst = alpha * dst + beta * lhs @ rhs, reading dst only
    // when asked to.
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

pub fn matmul_fwd(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    ic: usize,
    oc: usize,
) {
    if let Some(bias) = bias {
        out.par_chunks_mut(oc).for_each(|o| o.copy_from_slice(bias));
    }
    // out = inp @ weight^T (+ the bias already there)
    matmul(
        out,
        Mat::rows(inp, ic),
        Mat::transposed(weight, ic),
        rows,
        oc,
        ic,
        bias.is_some(),
    );
}

/// Bytes of dweight one task owns in the blocked weight-gradient product.
/// Whole-matrix gemm on the 50257-wide head keeps re-streaming a 51 MB
/// dweight through the caches (~90 GFLOP/s per core on the Xeon this was
/// tuned on, 2 MB L2); 1 MiB blocks that stay in L2 gave ~115 (benches/gemm.rs,
/// `lm_head bwd dweight`). Small enough for 1 MB-L2 cores too.
const DWEIGHT_BLOCK_BYTES: usize = 1 << 20;

#[allow(clippy::too_many_arguments)]
pub fn matmul_bwd(
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    ic: usize,
    oc: usize,
) {
    if let Some(dinp) = dinp {
        // dinp[rows, ic] += dout[rows, oc] @ weight[oc, ic]
        matmul(
            dinp,
            Mat::rows(dout, oc),
            Mat::rows(weight, ic),
            rows,
            ic,
            oc,
            true,
        );
    }
    if let Some(dweight) = dweight {
        // dweight[oc, ic] += dout^T[oc, rows] @ inp[rows, ic]
        let block_rows = (DWEIGHT_BLOCK_BYTES / (4 * ic)).max(1);
        if oc >= 4 * block_rows {
            // Wide outputs (the vocabulary head): one single-threaded product
            // per block of output rows, so each task's dweight block stays in
            // its core's L2 while all `rows` of the reduction stream past it.
            dweight
                .par_chunks_mut(block_rows * ic)
                .enumerate()
                .for_each(|(blk, dw)| {
                    let j0 = blk * block_rows;
                    // SAFETY: `dw` is this task's own rows j0.. of dweight;
                    // dout's columns j0..j0+n and `inp` are read-only here.
                    unsafe {
                        gemm_raw(
                            dw.as_mut_ptr(),
                            ic,
                            Mat::transposed(&dout[j0..], oc),
                            Mat::rows(inp, ic),
                            dw.len() / ic,
                            ic,
                            rows,
                            true,
                            Parallelism::None,
                        )
                    };
                });
        } else {
            matmul(
                dweight,
                Mat::transposed(dout, oc),
                Mat::rows(inp, ic),
                oc,
                ic,
                rows,
                true,
            );
        }
    }
    if let Some(dbias) = dbias {
        // Column sums; each task owns a block of columns and walks all rows
        // in order, so the sum order never depends on the thread count.
        const COLS: usize = 64;
        dbias
            .par_chunks_mut(COLS)
            .enumerate()
            .for_each(|(blk, db)| {
                let j0 = blk * COLS;
                for row in dout.chunks_exact(oc) {
                    for (d, g) in db.iter_mut().zip(&row[j0..]) {
                        *d += g;
                    }
                }
            });
    }
}

/// The base of a slice that parallel tasks write in disjoint parts.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used where each task writes elements no other task touches.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The element at `offset`. A method, so that closures capture the
    /// whole (`Send`) struct rather than its raw-pointer field.
    ///
    /// # Safety
    /// `offset` must lie inside the slice this was made from.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// Causal attention, one task per (batch, head). Per head:
/// `att = softmax(mask(q k^T) / sqrt(hs))`, then `out = att v`, both as
/// single-threaded gemm calls on strided views of `qkv` (the products also
/// cover the masked upper triangle, where `att` is zero: twice the minimum
/// arithmetic, but far faster than scalar loops). Memory: `att` only.
pub fn attention_fwd(out: &mut [f32], att: &mut [f32], qkv: &[f32], s: AttnShape) {
    let (t_len, c, nh) = (s.seq, s.channels, s.heads);
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let out = SharedMut(out.as_mut_ptr());
    att.par_chunks_mut(t_len * t_len)
        .enumerate()
        .for_each(|(bh, att)| {
            let (b, h) = (bh / nh, bh % nh);
            // q of head h at row 0 of sequence b; k and v follow at +C, +2C.
            let q = &qkv[b * t_len * 3 * c + h * hs..];
            let rows = |off: usize| Mat {
                ptr: q[off..].as_ptr(),
                rs: 3 * c as isize,
                cs: 1,
            };
            let k_t = Mat {
                ptr: q[c..].as_ptr(),
                rs: 1,
                cs: 3 * c as isize,
            };
            // SAFETY: `att` is this task's own T x T block; q, k and v reach
            // at most (T-1)*3C + 2C + hs elements past `q`'s start, inside
            // sequence b of `qkv`.
            unsafe {
                gemm_raw(
                    att.as_mut_ptr(),
                    t_len,
                    rows(0),
                    k_t,
                    t_len,
                    t_len,
                    hs,
                    false,
                    Parallelism::None,
                )
            };
            simd(
                #[inline(always)]
                || {
                    for (t, row) in att.chunks_exact_mut(t_len).enumerate() {
                        let (live, masked) = row.split_at_mut(t + 1);
                        let max = max_of(live);
                        let inv = 1.0 / exp_in_place(live, max, scale);
                        for a in live {
                            *a *= inv;
                        }
                        masked.fill(0.0);
                    }
                },
            );
            // SAFETY: this task alone writes head h's `hs` columns of the T
            // rows of sequence b in `out`; the operands are as above.
            unsafe {
                let dst = out.at(b * t_len * c + h * hs);
                gemm_raw(
                    dst,
                    c,
                    Mat::rows(att, t_len),
                    rows(2 * c),
                    t_len,
                    hs,
                    t_len,
                    false,
                    Parallelism::None,
                );
            }
        });
}

/// Backward of [`attention_fwd`], one task per (batch, head), with gemm:
/// `dp = dy v^T` (into `scratch`), `dv += att^T dy`,
/// `ds = att * (dp - rowsum(att * dp)) / sqrt(hs)`, `dq += ds k`, `dk += ds^T q`.
pub fn attention_bwd(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    s: AttnShape,
) {
    let (t_len, c, nh) = (s.seq, s.channels, s.heads);
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let dqkv = SharedMut(dqkv.as_mut_ptr());
    scratch
        .par_chunks_mut(t_len * t_len)
        .enumerate()
        .for_each(|(bh, ds)| {
            let (b, h) = (bh / nh, bh % nh);
            let base = b * t_len * 3 * c + h * hs;
            let q = &qkv[base..];
            let rows = |off: usize| Mat {
                ptr: q[off..].as_ptr(),
                rs: 3 * c as isize,
                cs: 1,
            };
            let v_t = Mat {
                ptr: q[2 * c..].as_ptr(),
                rs: 1,
                cs: 3 * c as isize,
            };
            let p = &att[bh * t_len * t_len..][..t_len * t_len];
            let dy = Mat {
                ptr: dout[b * t_len * c + h * hs..].as_ptr(),
                rs: c as isize,
                cs: 1,
            };
            let (dq, dk, dv) = unsafe {
                // SAFETY: offsets inside sequence b of `dqkv`, as for `q`.
                let dq = dqkv.at(base);
                (dq, dq.add(c), dq.add(2 * c))
            };
            let (t, c3) = (t_len, 3 * c);
            // SAFETY: `ds` is this task's own T x T block; this task alone
            // writes head h's columns of q, k and v in sequence b of `dqkv`;
            // every operand reaches only inside its slice (see the forward).
            unsafe {
                gemm_raw(
                    ds.as_mut_ptr(),
                    t,
                    dy,
                    v_t,
                    t,
                    t,
                    hs,
                    false,
                    Parallelism::None,
                );
                gemm_raw(
                    dv,
                    c3,
                    Mat::transposed(p, t),
                    dy,
                    t,
                    hs,
                    t,
                    true,
                    Parallelism::None,
                );
            }
            simd(
                #[inline(always)]
                || {
                    for (i, (ds, p)) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
                        let (live, masked) = ds.split_at_mut(i + 1);
                        let pdp = dot(&p[..=i], live);
                        for (d, &p) in live.iter_mut().zip(p) {
                            *d = p * (*d - pdp) * scale;
                        }
                        masked.fill(0.0);
                    }
                },
            );
            // SAFETY: as above.
            unsafe {
                gemm_raw(
                    dq,
                    c3,
                    Mat::rows(ds, t),
                    rows(c),
                    t,
                    hs,
                    t,
                    true,
                    Parallelism::None,
                );
                gemm_raw(
                    dk,
                    c3,
                    Mat::transposed(ds, t),
                    rows(0),
                    t,
                    hs,
                    t,
                    true,
                    Parallelism::None,
                );
            }
        });
}

/// Independent partial results per lane let LLVM vectorize reductions
/// (a single running f32 sum would fix the order and forbid it).
const LANES: usize = 16;

#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Replaces each `x` by `e^((x - max) * scale)` and returns their sum.
#[inline(always)]
fn exp_in_place(x: &mut [f32], max: f32, scale: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in lanes.iter_mut().zip(c) {
            *v = math::exp((*v - max) * scale);
            *s += *v;
        }
    }
    let mut sum = 0.0;
    for v in chunks.into_remainder() {
        *v = math::exp((*v - max) * scale);
        sum += *v;
    }
    sum + lanes.iter().sum::<f32>()
}

/// Writes `dst = e^(src - max)` and returns its sum.
#[inline(always)]
fn exp_from(dst: &mut [f32], src: &[f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = dst.chunks_exact_mut(LANES);
    let src_chunks = src.chunks_exact(LANES);
    let src_tail = src_chunks.remainder();
    for (c, s) in (&mut chunks).zip(src_chunks) {
        for ((acc, d), &x) in lanes.iter_mut().zip(c).zip(s) {
            *d = math::exp(x - max);
            *acc += *d;
        }
    }
    let mut sum = 0.0;
    for (d, &x) in chunks.into_remainder().iter_mut().zip(src_tail) {
        *d = math::exp(x - max);
        sum += *d;
    }
    sum + lanes.iter().sum::<f32>()
}

/// `sum(e^(x - max))` without writing.
#[inline(always)]
fn exp_sum(x: &[f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += math::exp(v - max);
        }
    }
    tail.iter().map(|&v| math::exp(v - max)).sum::<f32>() + lanes.iter().sum::<f32>()
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((s, a), b) in lanes.iter_mut().zip(ca).zip(cb) {
            *s += a * b;
        }
    }
    tail + lanes.iter().sum::<f32>()
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;

pub fn gelu_fwd(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            simd(
                #[inline(always)]
                || {
                    for (o, &x) in o.iter_mut().zip(x) {
                        let th = math::tanh(GELU_K * (x + GELU_A * x * x * x));
                        *o = 0.5 * x * (1.0 + th);
                    }
                },
            )
        });
}

pub fn gelu_bwd(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(di, (x, dy))| {
            simd(
                #[inline(always)]
                || {
                    for ((di, &x), dy) in di.iter_mut().zip(x).zip(dy) {
                        let th = math::tanh(GELU_K * (x + GELU_A * x * x * x));
                        let du = GELU_K * (1.0 + 3.0 * GELU_A * x * x);
                        *di += dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du);
                    }
                },
            )
        });
}

/// `out[i] (+)= inp[i] * mask(offset + i) / (1 - p)`: the forward overwrites,
/// the backward accumulates. `p == 1` drops everything (no 0 * inf).
pub fn dropout(out: &mut [f32], inp: &[f32], p: f32, seed: u64, offset: u64, accumulate: bool) {
    let keep_scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(blk, (o, x))| {
            let base = offset + (blk * CHUNK) as u64;
            for (i, (o, x)) in o.iter_mut().zip(x).enumerate() {
                let kept = crate::rng::dropout_keep(seed, base + i as u64, p);
                let y = if kept { x * keep_scale } else { 0.0 };
                if accumulate {
                    *o += y;
                } else {
                    *o = y;
                }
            }
        });
}

/// `losses[r] = logsumexp(logits[r]) - logits[r][target]`, or 0 on ignored
/// rows. Subtracting the row maximum keeps exp in range.
pub fn softmax_xent(
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    vocab: usize,
    ignore_index: u32,
) {
    losses
        .par_iter_mut()
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .for_each(|(loss, (row, &tgt))| {
            if tgt == ignore_index {
                *loss = 0.0;
                return;
            }
            *loss = simd(
                #[inline(always)]
                || {
                    let max = max_of(row);
                    exp_sum(row, max).ln() - (row[tgt as usize] - max)
                },
            );
        });
}

/// [`softmax_xent`] with its gradient `(softmax - onehot) * grad_scale`
/// written to `dlogits`. `logits` is `None` when the logits are `dlogits`'
/// own memory (the aliased call): each row is then read and overwritten in
/// place. Either way a row is read once from memory and then stays in cache.
pub fn softmax_xent_grad(
    losses: &mut [f32],
    dlogits: &mut [f32],
    logits: Option<&[f32]>,
    targets: &[u32],
    vocab: usize,
    ignore_index: u32,
    grad_scale: f32,
) {
    losses
        .par_iter_mut()
        .zip(dlogits.par_chunks_mut(vocab).zip(targets.par_iter()))
        .enumerate()
        .for_each(|(r, (loss, (row, &tgt)))| {
            if tgt == ignore_index {
                *loss = 0.0;
                row.fill(0.0);
                return;
            }
            let tgt = tgt as usize;
            let src = logits.map(|l| &l[r * vocab..][..vocab]);
            *loss = simd(
                #[inline(always)]
                || {
                    let (max, target_logit, sum) = match src {
                        Some(src) => {
                            let max = max_of(src);
                            (max, src[tgt], exp_from(row, src, max))
                        }
                        None => {
                            let max = max_of(row);
                            (max, row[tgt], exp_in_place(row, max, 1.0))
                        }
                    };
                    let k = grad_scale / sum;
                    for x in row.iter_mut() {
                        *x *= k;
                    }
                    row[tgt] -= grad_scale;
                    sum.ln() - (target_logit - max)
                },
            );
        });
}

pub fn adamw(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], hp: AdamWStep) {
    // Bias corrections in f64, as PyTorch computes them on the host.
    let t = hp.step as i32;
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - hp.lr * hp.weight_decay;
    let (b1, b2) = (hp.beta1, hp.beta2);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * hp.grad_scale;
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + hp.eps);
            }
        });
}

/// `sum(x^2)` in f64, from fixed chunks summed in order.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    partials.iter().sum()
}
