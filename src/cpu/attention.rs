//! CPU reference of `ops::attention`. In bf16 it rounds where the kernels
//! store bf16: the scaled scores, the probabilities and the output in the
//! forward; `d(att)`, `d(scores)` and each gradient after its product in the
//! backward (see `ops::attention`).

use super::math::{dot, exp_in_place, max_of, simd};
use super::matmul::{gemm_raw, Mat};
use super::{read_floats, round_bf16, write_floats, CpuOp};
use crate::mem::DType;
use crate::ops::attention::{AttentionBwd, AttentionFwd, AttnShape};
use anyhow::Result;
use gemm::Parallelism;
use rayon::prelude::*;

impl CpuOp for AttentionFwd {
    fn run(&self) -> Result<()> {
        let (qkv, out, att) = self.shape.lens();
        let round = self.qkv.dtype == DType::BF16;
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let (mut o, mut a) = (write_floats(self.out, out), write_floats(self.att, att));
            attention_fwd(
                &mut o,
                &mut a,
                &read_floats(self.qkv, qkv),
                self.shape,
                round,
            );
            o.store();
            a.store();
        }
        Ok(())
    }
}

impl CpuOp for AttentionBwd {
    fn run(&self) -> Result<()> {
        let (qkv, out, att) = self.shape.lens();
        let round = self.qkv.dtype == DType::BF16;
        // SAFETY: the contract check passed; see `read`.
        unsafe {
            let mut dqkv = write_floats(self.dqkv, qkv);
            let mut scratch = write_floats(self.scratch, att);
            attention_bwd(
                &mut dqkv,
                &mut scratch,
                &read_floats(self.dout, out),
                &read_floats(self.qkv, qkv),
                &read_floats(self.att, att),
                self.shape,
                round,
            );
            dqkv.store();
            scratch.store();
        }
        Ok(())
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

/// Rounds a `rows x cols` block at `ptr` (row stride `stride`) to bf16:
/// one head's columns of a `[T, 3C]` or `[T, C]` tensor after its product.
///
/// # Safety
/// The block must lie in memory this task alone writes.
unsafe fn round_block(ptr: *mut f32, rows: usize, cols: usize, stride: usize) {
    for r in 0..rows {
        round_bf16(std::slice::from_raw_parts_mut(ptr.add(r * stride), cols));
    }
}

/// Causal attention, one task per (batch, head). Per head:
/// `att = softmax(mask(q k^T) / sqrt(hs))`, then `out = att v`, both as
/// single-threaded gemm calls on strided views of `qkv` (the products also
/// cover the masked upper triangle, where `att` is zero: twice the minimum
/// arithmetic, but far faster than scalar loops). Memory: `att` only.
/// `round`: round to bf16 where the kernels store bf16.
fn attention_fwd(out: &mut [f32], att: &mut [f32], qkv: &[f32], s: AttnShape, round: bool) {
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
                        if round {
                            // The kernel's product stores the scaled scores.
                            for a in live.iter_mut() {
                                *a *= scale;
                            }
                            round_bf16(live);
                        }
                        let max = max_of(live);
                        let inv = 1.0 / exp_in_place(live, max, if round { 1.0 } else { scale });
                        for a in live.iter_mut() {
                            *a *= inv;
                        }
                        if round {
                            round_bf16(live);
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
                if round {
                    round_block(dst, t_len, hs, c);
                }
            }
        });
}

/// Backward of [`attention_fwd`], one task per (batch, head), with gemm:
/// `dp = dy v^T` (into `scratch`), `dv += att^T dy`,
/// `ds = att * (dp - rowsum(att * dp)) / sqrt(hs)`, `dq += ds k`, `dk += ds^T q`.
fn attention_bwd(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    s: AttnShape,
    round: bool,
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
                if round {
                    round_block(dv, t, hs, c3);
                }
            }
            simd(
                #[inline(always)]
                || {
                    for (i, (ds, p)) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
                        let (live, masked) = ds.split_at_mut(i + 1);
                        if round {
                            // The kernel's product stores d(att) in bf16.
                            round_bf16(live);
                        }
                        let pdp = dot(&p[..=i], live);
                        for (d, &p) in live.iter_mut().zip(p) {
                            *d = p * (*d - pdp) * scale;
                        }
                        if round {
                            round_bf16(live);
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
                if round {
                    round_block(dq, t, hs, c3);
                    round_block(dk, t, hs, c3);
                }
            }
        });
}
