//! Vectorizable `exp` and `tanh`, the lane-parallel reductions over rows
//! that softmax and cross-entropy share, and running loops with AVX2 when
//! present.
//!
//! libm's `expf`/`tanhf` are scalar calls, which made the softmax over a
//! 50257-word vocabulary as slow as the lm_head matmul. These versions are
//! plain arithmetic without calls or data-dependent branches, so LLVM turns
//! loops over them into SIMD code.
//!
//! Rust never contracts `a * b + c` into an FMA on its own, so a loop compiled
//! for AVX2 gives bit-identical results to the baseline build: [`simd`] only
//! changes speed, never numbers.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n * LN2_HI` is exact for the `n` we meet.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to an integer,
/// which then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Below this `e^x` is under the smallest normal f32: return 0.
const EXP_LO: f32 = -87.336_55;
/// Inputs are clamped here so that `2^n` stays a normal f32.
const EXP_HI: f32 = 88.0;

/// `e^x` with a relative error of a few ulp on `[-87.3, 88]`; 0 below that
/// range, `e^88` above it, NaN for NaN. Cephes' `expf` polynomial.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = if x > EXP_HI { EXP_HI } else { x };
    let xc = if xc < EXP_LO { EXP_LO } else { xc };
    // x = n ln2 + r with |r| <= ln2 / 2, then e^x = 2^n e^r.
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * (r * r) + r + 1.0;
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < EXP_LO {
        0.0
    } else {
        er * two_n
    }
}

/// `tanh(x)` to a few ulp of *absolute* error (not relative: near 0 the
/// result is `1 - (something close to 1)`). GELU only ever adds it to 1 or
/// squares it, where absolute error is what matters.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    // Beyond 10 the formula gives exactly +-1 in f32, and exp stays in range.
    let xc = if x > 10.0 { 10.0 } else { x };
    let xc = if xc < -10.0 { -10.0 } else { xc };
    1.0 - 2.0 / (exp(2.0 * xc) + 1.0)
}

/// Runs `f`, compiled for AVX2 and FMA when the CPU has them. Mark the
/// closure `#[inline(always)]` (and what it calls) so that it is compiled
/// inside the AVX2 function rather than called from it.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `with_avx2` is compiled for.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Independent partial results per lane let LLVM vectorize reductions
/// (a single running f32 sum would fix the order and forbid it).
const LANES: usize = 16;

#[inline(always)]
pub(super) fn max_of(x: &[f32]) -> f32 {
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
pub(super) fn exp_in_place(x: &mut [f32], max: f32, scale: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in lanes.iter_mut().zip(c) {
            *v = exp((*v - max) * scale);
            *s += *v;
        }
    }
    let mut sum = 0.0;
    for v in chunks.into_remainder() {
        *v = exp((*v - max) * scale);
        sum += *v;
    }
    sum + lanes.iter().sum::<f32>()
}

/// Writes `dst = e^(src - max)` and returns its sum.
#[inline(always)]
pub(super) fn exp_from(dst: &mut [f32], src: &[f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = dst.chunks_exact_mut(LANES);
    let src_chunks = src.chunks_exact(LANES);
    let src_tail = src_chunks.remainder();
    for (c, s) in (&mut chunks).zip(src_chunks) {
        for ((acc, d), &x) in lanes.iter_mut().zip(c).zip(s) {
            *d = exp(x - max);
            *acc += *d;
        }
    }
    let mut sum = 0.0;
    for (d, &x) in chunks.into_remainder().iter_mut().zip(src_tail) {
        *d = exp(x - max);
        sum += *d;
    }
    sum + lanes.iter().sum::<f32>()
}

/// `sum(e^(x - max))` without writing.
#[inline(always)]
pub(super) fn exp_sum(x: &[f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += exp(v - max);
        }
    }
    tail.iter().map(|&v| exp(v - max)).sum::<f32>() + lanes.iter().sum::<f32>()
}

#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `[lo, hi]` in `steps` steps, returning the worst error of `f`
    /// against `reference` in f64, as `|f - ref| / (abs_floor + |ref|)`.
    fn worst(f: fn(f32) -> f32, reference: fn(f64) -> f64, lo: f32, hi: f32, floor: f64) -> f64 {
        let steps = 200_000;
        (0..=steps)
            .map(|i| {
                let x = lo + (hi - lo) * i as f32 / steps as f32;
                let want = reference(x as f64);
                (f(x) as f64 - want).abs() / (floor + want.abs())
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let eps = f32::EPSILON as f64;
        let err = worst(exp, f64::exp, -87.0, 88.0, 0.0);
        assert!(err < 2.0 * eps, "exp relative error {err:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn tanh_is_accurate_in_absolute_terms() {
        let eps = f32::EPSILON as f64;
        let err = worst(tanh, f64::tanh, -12.0, 12.0, 1.0);
        assert!(err < 2.0 * eps, "tanh absolute error {err:e}");
        assert_eq!(tanh(20.0), 1.0);
        assert_eq!(tanh(-20.0), -1.0);
    }

    #[test]
    fn simd_and_plain_builds_agree_bitwise() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let plain: Vec<f32> = xs.iter().map(|&x| exp(x) + tanh(x)).collect();
        let fast = simd(
            #[inline(always)]
            || xs.iter().map(|&x| exp(x) + tanh(x)).collect::<Vec<f32>>(),
        );
        assert_eq!(plain, fast);
    }
}
