//! The bf16 tensor-core GEMM (kernels/gemm/mma_bf16.cu) under the emulator,
//! launched by kernel (not through an op: no op carries bf16 yet) with the
//! launcher's typed, signature-checked arguments, against an exact reference: the same bf16
//! inputs (rounded on the Rust side with the `half` crate, bit for bit as the
//! kernel's bf16), products summed in f64. Sizes are not multiples of the
//! 128 x 128 x 32 tile; every transpose case, batching with attention's
//! strides, the three causal modes and each epilogue are covered, and every
//! element outside the product must come back untouched.
//!
//! Tolerance, per element, derived rather than tuned (u_f = 2^-24, the unit
//! roundoff of fp32; u_b = 2^-8, that of bf16):
//! - bf16 products are exact in fp32 and in the emulator's f64, so all error
//!   comes from rounding sums. The emulated mma rounds its fp32 accumulator
//!   once per 16-deep step: at most u_f times the sum of magnitudes S so far.
//!   alpha, bias and the accumulate add one rounding each. So the fp32 value
//!   v before the store is within e = (ceil(K/16) + 3) u_f S of the exact
//!   result x, with S = |alpha| sum_k |a b| + |bias| + |old C|.
//! - An fp32 output is v: error <= e. A bf16 output rounds v once more:
//!   error <= u_b (|x| + e) + e.
//! - GELU is evaluated in fp32 from v: |gelu'| <= 1.13 carries e over, and
//!   the formula's own fp32 rounding adds at most
//!   0.5 |x| (6 u_f s (|x| + 0.044715 |x|^3) + 4 u_f) + 2 u_f |gelu(x)|
//!   (s = sqrt(2 / pi): six roundings in the tanh argument, two ulp for
//!   tanhf, two for the last products); then the bf16 rounding as above.

// Only the raw-launch helpers: the rest of tests/common is for the Backend tests.
#[path = "common/raw.rs"]
mod raw;

use dyntie::cuda::launch::{Args, Launcher};
use dyntie::cuda::ops::mma_kernel;
use dyntie::cuda::params::{
    GemmBf16Params, GEMM_A_LOWER, GEMM_A_UPPER, GEMM_DENSE, GEMM_OUT_LOWER, MMA_BM, MMA_BN,
    MMA_SMEM_BYTES, MMA_THREADS,
};
use dyntie::cuda::{EmuConfig, EmuDevice, LaunchDims, ResumeOrder};
use dyntie::mem::{Buffer, DType};
use half::bf16;
use raw::{download, random_bf16, upload};

const U_F: f64 = 1.0 / 16_777_216.0; // 2^-24
const U_B: f64 = 1.0 / 256.0; // 2^-8
const GELU_S: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)

/// One product: sizes, how each operand is stored, batching and epilogue.
#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    lda: usize,
    ldb: usize,
    ldc: usize,
    /// (outer, inner) batch counts and (outer, inner) strides of a, b, c.
    batch: (usize, usize),
    strides: [(usize, usize); 3],
    causal: i32,
    alpha: f32,
    bias: bool,
    gelu: bool,
    accumulate: bool,
    c_f32: bool,
    /// Run the `_unaligned` kernel (any leading dimension).
    unaligned: bool,
}

impl Case {
    /// A single product with leading dimensions the next multiple of 8.
    fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Case {
        let up8 = |x: usize| x.div_ceil(8) * 8;
        Case {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: up8(if trans_a { m } else { k }),
            ldb: up8(if trans_b { k } else { n }),
            ldc: n,
            batch: (1, 1),
            strides: [(0, 0); 3],
            causal: GEMM_DENSE,
            alpha: 1.0,
            bias: false,
            gelu: false,
            accumulate: false,
            c_f32: false,
            unaligned: false,
        }
    }
    fn batches(&self) -> usize {
        self.batch.0 * self.batch.1
    }
    /// Element offset of batch `z` in operand `i` (0 a, 1 b, 2 c).
    fn offset(&self, i: usize, z: usize) -> usize {
        let (so, si) = self.strides[i];
        (z / self.batch.1) * so + (z % self.batch.1) * si
    }
    /// Index of logical A[m, k] / B[k, n] / C[m, n] of batch z.
    fn a_at(&self, z: usize, m: usize, k: usize) -> usize {
        self.offset(0, z)
            + if self.trans_a {
                k * self.lda + m
            } else {
                m * self.lda + k
            }
    }
    fn b_at(&self, z: usize, k: usize, n: usize) -> usize {
        self.offset(1, z)
            + if self.trans_b {
                n * self.ldb + k
            } else {
                k * self.ldb + n
            }
    }
    fn c_at(&self, z: usize, m: usize, n: usize) -> usize {
        self.offset(2, z) + m * self.ldc + n
    }
    /// Elements each buffer needs (rounded up to whole 16-byte chunks).
    fn lens(&self) -> [usize; 3] {
        let last = self.batches() - 1;
        let (ar, br) = (
            if self.trans_a { self.k } else { self.m },
            if self.trans_b { self.n } else { self.k },
        );
        [
            self.offset(0, last) + ar * self.lda,
            self.offset(1, last) + br * self.ldb,
            self.offset(2, last) + self.m * self.ldc,
        ]
        .map(|x| x.div_ceil(8) * 8)
    }
    /// Whether C[m, n] is part of the result (OUT_LOWER needs n <= m only).
    fn wanted(&self, m: usize, n: usize) -> bool {
        self.causal != GEMM_OUT_LOWER || n <= m
    }
    /// Whether A[m, k] may be non-zero under the causal mode.
    fn a_live(&self, m: usize, k: usize) -> bool {
        match self.causal {
            GEMM_A_LOWER => k <= m,
            GEMM_A_UPPER => k >= m,
            _ => true,
        }
    }
}

fn device(order: ResumeOrder) -> EmuDevice {
    EmuDevice::with_config(EmuConfig {
        order,
        ..EmuConfig::default()
    })
}

/// C's old contents, in whichever type it has.
enum CData {
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

impl CData {
    fn get(&self, i: usize) -> f64 {
        match self {
            CData::Bf16(v) => v[i].to_f64(),
            CData::F32(v) => v[i] as f64,
        }
    }
    fn same_bits(&self, other: &CData, i: usize) -> bool {
        match (self, other) {
            (CData::Bf16(x), CData::Bf16(y)) => x[i].to_bits() == y[i].to_bits(),
            (CData::F32(x), CData::F32(y)) => x[i].to_bits() == y[i].to_bits(),
            _ => false,
        }
    }
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (GELU_S * (x + 0.044_715 * x * x * x)).tanh())
}

/// The fp32 rounding error of evaluating the kernel's GELU formula at x
/// (see the module comment).
fn gelu_eval_error(x: f64) -> f64 {
    let arg = 6.0 * U_F * GELU_S * (x.abs() + 0.044_715 * x.abs().powi(3));
    0.5 * x.abs() * (arg + 4.0 * U_F) + 2.0 * U_F * gelu(x).abs()
}

/// Runs `case` under the emulator; returns the launch's wall time in ms, or
/// Err(message) on a wrong element.
fn run_case(label: &str, case: &Case, order: ResumeOrder, seed: u64) -> Result<f64, String> {
    let dev = device(order);
    let [alen, blen, clen] = case.lens();
    let mut a = random_bf16(alen, seed);
    let b = random_bf16(blen, seed + 1);
    // The causal modes promise zeros in A's skipped triangle.
    for z in 0..case.batches() {
        for m in 0..case.m {
            for k in 0..case.k {
                if !case.a_live(m, k) {
                    a[case.a_at(z, m, k)] = bf16::ZERO;
                }
            }
        }
    }
    let bias = random_bf16(case.n, seed + 2);
    let c_old = random_bf16(clen, seed + 3);
    let c_old = if case.c_f32 {
        CData::F32(c_old.iter().map(|x| x.to_f32() * 3.0).collect())
    } else {
        CData::Bf16(c_old)
    };
    let c_buf = match &c_old {
        CData::Bf16(v) => upload(&dev, v),
        CData::F32(v) => upload(&dev, v),
    };
    let pre_buf = match &c_old {
        CData::Bf16(v) => upload(&dev, v),
        CData::F32(v) => upload(&dev, v),
    };
    let (a_buf, b_buf, bias_buf) = (upload(&dev, &a), upload(&dev, &b), upload(&dev, &bias));
    let [(a_outer, a_inner), (b_outer, b_inner), (c_outer, c_inner)] = case
        .strides
        .map(|(outer, inner)| (outer as u64, inner as u64));
    let p = GemmBf16Params {
        c: c_buf.addr(),
        a: a_buf.addr(),
        b: b_buf.addr(),
        bias: if case.bias { bias_buf.addr() } else { 0 },
        pre: if case.gelu { pre_buf.addr() } else { 0 },
        a_outer,
        a_inner,
        b_outer,
        b_inner,
        c_outer,
        c_inner,
        m: case.m as i32,
        n: case.n as i32,
        k: case.k as i32,
        lda: case.lda as i32,
        ldb: case.ldb as i32,
        ldc: case.ldc as i32,
        accumulate: case.accumulate as i32,
        gelu: case.gelu as i32,
        c_f32: case.c_f32 as i32,
        causal: case.causal,
        batch_inner: case.batch.1 as i32,
        alpha: case.alpha,
    };
    let dims = LaunchDims {
        grid: [
            case.n.div_ceil(MMA_BN as usize) as u32,
            case.m.div_ceil(MMA_BM as usize) as u32,
            case.batches() as u32,
        ],
        block: [MMA_THREADS as u32, 1, 1],
        shared_bytes: MMA_SMEM_BYTES as u32,
    };
    // Every address the strides reach lies inside the buffers (`Case::lens`).
    let kernel = mma_kernel(case.trans_a, case.trans_b, !case.unaligned);
    let start = std::time::Instant::now();
    Launcher::new(&dev, false)
        .launch(kernel, DType::BF16, dims, Args::new().params(&p))
        .map_err(|e| format!("{label}: launch failed: {e:#}"))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let fetch = |buf: &Buffer| match &c_old {
        CData::Bf16(_) => CData::Bf16(download(&dev, buf, clen)),
        CData::F32(_) => CData::F32(download(&dev, buf, clen)),
    };
    let (got, got_pre) = (fetch(&c_buf), fetch(&pre_buf));

    let out_rounding = if case.c_f32 { 0.0 } else { U_B };
    let alpha = case.alpha as f64;
    let mut touched = vec![false; clen];
    for z in 0..case.batches() {
        for m in 0..case.m {
            for n in 0..case.n {
                let i = case.c_at(z, m, n);
                touched[i] = true;
                if !case.wanted(m, n) {
                    continue;
                }
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for k in 0..case.k {
                    let prod = a[case.a_at(z, m, k)].to_f64() * b[case.b_at(z, k, n)].to_f64();
                    exact += prod;
                    mag += prod.abs();
                }
                exact *= alpha;
                mag *= alpha.abs();
                if case.bias {
                    exact += bias[n].to_f64();
                    mag += bias[n].to_f64().abs();
                }
                if case.accumulate {
                    exact += c_old.get(i);
                    mag += c_old.get(i).abs();
                }
                let e = (case.k.div_ceil(16) + 3) as f64 * U_F * mag;
                let check = |what: &str, got: f64, want: f64, err: f64| {
                    let tol = out_rounding * (want.abs() + err) + err;
                    if (got - want).abs() <= tol {
                        Ok(())
                    } else {
                        Err(format!(
                            "{label}: {what}[batch {z}, {m}, {n}] = {got} but {want} (tolerance {tol:.3e})"
                        ))
                    }
                };
                if case.gelu {
                    check("pre", got_pre.get(i), exact, e)?;
                    let err = 1.13 * e + gelu_eval_error(exact);
                    check("C", got.get(i), gelu(exact), err)?;
                } else {
                    check("C", got.get(i), exact, e)?;
                }
            }
        }
    }
    for (i, &t) in touched.iter().enumerate() {
        if !t && !got.same_bits(&c_old, i) {
            return Err(format!(
                "{label}: element {i} of C lies outside the product but was overwritten"
            ));
        }
        if !case.gelu && !got_pre.same_bits(&c_old, i) {
            return Err(format!("{label}: pre was written without gelu"));
        }
    }
    Ok(ms)
}

/// Runs `case`; panics on a wrong element. Returns the launch's time in ms.
fn assert_case(label: &str, case: &Case) -> f64 {
    run_case(label, case, ResumeOrder::Forward, 17).unwrap_or_else(|msg| panic!("{msg}\n{case:?}"))
}

#[test]
fn matmul_forward_with_bias_under_every_order() {
    // out[rows, oc] = inp[rows, ic] @ W[oc, ic]^T + bias: nt. K = 75 is not
    // a multiple of 8, so the last chunk of every row is partly zero-filled.
    let mut case = Case::new(130, 200, 75, false, true);
    case.bias = true;
    for order in [
        ResumeOrder::Forward,
        ResumeOrder::Reverse,
        ResumeOrder::Random(5),
    ] {
        if let Err(msg) = run_case("nt + bias", &case, order, 3) {
            panic!("{order:?}: {msg}");
        }
    }
}

#[test]
fn every_transpose_case_matches() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let case = Case::new(130, 72, 72, ta, tb);
        assert_case(&format!("trans_a {ta} trans_b {tb}"), &case);
    }
    // A single row (a decode step), and a K that is one k16 step with an N
    // that ends inside a 16-byte chunk of the [K, N] operand.
    assert_case("one row", &Case::new(1, 200, 72, false, true));
    assert_case("k = 16", &Case::new(70, 45, 16, false, false));
}

#[test]
fn gelu_keeps_the_pre_activation() {
    let mut case = Case::new(130, 200, 72, false, true);
    case.bias = true;
    case.gelu = true;
    assert_case("nt + bias + gelu", &case);
}

#[test]
fn weight_gradients_accumulate_into_fp32() {
    // dweight[oc, ic] += dout[rows, oc]^T @ inp[rows, ic]: tn, fp32 C, with
    // the reduction over 130 rows.
    let mut case = Case::new(200, 72, 130, true, false);
    case.accumulate = true;
    case.c_f32 = true;
    assert_case("tn accumulate f32", &case);
    // The input gradient accumulates into bf16: nn.
    let mut case = Case::new(130, 72, 200, false, false);
    case.accumulate = true;
    assert_case("nn accumulate bf16", &case);
    // fp32 output without accumulation (logits), scaled, odd ldc.
    let mut case = Case::new(33, 260, 64, false, true);
    case.c_f32 = true;
    case.alpha = 0.5;
    case.ldc = 263;
    assert_case("nt f32 out, alpha", &case);
}

/// Attention's products over (sequence, head) batches, with q, k, v inside
/// qkv[B, T, 3C] and att[B, heads, T, T], as KernelBackend lays them out.
#[test]
fn batched_causal_attention_products_match() {
    let (b, t, nh, hs) = (2, 200, 2, 24);
    let c = nh * hs;
    let qkv = (t * 3 * c, hs); // (outer, inner) strides inside qkv
    let att = (nh * t * t, t * t);
    let out = (t * c, hs);
    let attn = |m, n, k, ta, tb, lda, ldb, ldc, strides| {
        let mut case = Case::new(m, n, k, ta, tb);
        (case.lda, case.ldb, case.ldc) = (lda, ldb, ldc);
        case.batch = (b, nh);
        case.strides = strides;
        case
    };
    // att = q k^T / sqrt(hs), lower triangle only: two m-tiles, so the block
    // above the diagonal is skipped.
    let mut qk = attn(t, t, hs, false, true, 3 * c, 3 * c, t, [qkv, qkv, att]);
    qk.causal = GEMM_OUT_LOWER;
    qk.alpha = 1.0 / (hs as f32).sqrt();
    assert_case("q k^T", &qk);
    // out = att v with att zero above the diagonal: the first m-tile stops
    // its k loop at 128.
    let mut av = attn(t, hs, t, false, false, t, 3 * c, c, [att, qkv, out]);
    av.causal = GEMM_A_LOWER;
    assert_case("att v", &av);
    // dk += ds^T q with ds zero above the diagonal: the second m-tile starts
    // its k loop at 128.
    let mut dk = attn(t, hs, t, true, false, t, 3 * c, 3 * c, [att, qkv, qkv]);
    dk.causal = GEMM_A_UPPER;
    dk.accumulate = true;
    assert_case("ds^T q", &dk);
}

#[test]
fn the_unaligned_kernels_take_any_leading_dimension() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        // K = 69 and N = 45 end inside an 8-element chunk; odd leading
        // dimensions, wider than the rows.
        let mut case = Case::new(130, 45, 69, ta, tb);
        case.lda = if ta { 131 } else { 71 };
        case.ldb = if tb { 71 } else { 47 };
        case.ldc = 47; // odd: single bf16 stores, no pairs
        case.bias = true;
        case.unaligned = true;
        assert_case(&format!("unaligned trans_a {ta} trans_b {tb}"), &case);
    }
}

#[test]
fn a_misaligned_leading_dimension_is_reported() {
    // lda = 70 is not a multiple of 8 elements: cp.async's 16-byte rule.
    let mut case = Case::new(40, 40, 70, false, true);
    case.lda = 70;
    let err = run_case("misaligned", &case, ResumeOrder::Forward, 1).unwrap_err();
    assert!(err.contains("not 16-byte aligned"), "{err}");
}

extern "C" {
    /// kernels/emu/tensor_core.cpp: (matrices loaded by ldmatrix, extra
    /// passes their bank conflicts cost) since the process started.
    fn emu_ldmatrix_counters(out: *mut u64);
}

fn ldmatrix_counters() -> [u64; 2] {
    let mut out = [0u64; 2];
    // SAFETY: writes two integers.
    unsafe { emu_ldmatrix_counters(out.as_mut_ptr()) };
    out
}

#[test]
fn ldmatrix_reads_are_free_of_bank_conflicts_in_every_layout() {
    // Every test in this binary runs only gemm_mma_*, so whatever else runs
    // meanwhile cannot add conflicts that are not the GEMM's own.
    let before = ldmatrix_counters();
    for (ta, tb) in [(false, false), (true, true)] {
        assert_case("banks", &Case::new(64, 64, 64, ta, tb));
    }
    let after = ldmatrix_counters();
    assert!(after[0] > before[0], "no ldmatrix was counted");
    assert_eq!(
        after[1] - before[1],
        0,
        "the swizzled tiles cost extra shared-memory passes (bank conflicts)"
    );
}

#[test]
fn a_256_cube_product_matches_and_reports_emulator_speed() {
    let ms = assert_case("256^3", &Case::new(256, 256, 256, false, true));
    eprintln!("emulated gemm_mma_nt_bf16 256 x 256 x 256: {ms:.1} ms");
}
