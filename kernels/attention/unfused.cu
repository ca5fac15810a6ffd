// Causal self-attention, the unfused way (the reference path; the fused
// kernels are flash_fwd.cu and flash_bwd.cu): the launcher runs the products
// (scores = q k^T, out = att v, and in the backward datt = dout v^T,
// dq = ds k, dk = ds^T q, dv = att^T dout) with gemm/simt_f32.cu or
// gemm/mma_bf16.cu, one batch entry per (sequence, head), skipping the tiles
// the causal mask makes zero. This file holds the row-wise kernels between
// them: the softmax, its backward, and dropout on the probabilities, in f32
// or bf16 (mixed precision: the products then run on the tensor-core GEMM
// and store bf16, these kernels compute in float).
//
// The [B, heads, T, T] matrix goes through global memory several times per
// pass and is saved for the backward: O(T^2) memory, which is why the flash
// path exists.
#include "dtype.cuh"
#include "grid.cuh"
#include "philox.cuh"
#include "reduce.cuh"

// One warp per row of the [rows = B * heads * T, T] matrix: rows are short
// (T <= a few thousand), so 32 lanes stride over one row and combine with
// shuffles, with no shared memory and no __syncthreads. Row r is query
// position t = r % T; only columns 0..t are valid.

// In place: scaled scores in columns 0..t become probabilities; columns
// above the diagonal (never computed, or garbage) become exact zeros, as the
// backward and the att @ v product expect. Three passes over the row (max,
// sum of exponentials, then each exponential again times 1 / sum) rather than
// storing the exponentials in between: in bf16 that store would round each
// probability twice. expf, not __expf: the CPU reference is compared
// elementwise.
template <typename T>
__device__ void softmax_fwd(T* att, u64 rows, int seq) {
    const u64 row = warp_row();
    const int lane = (int)lane_id();
    if (row >= rows) return;  // whole warps leave together; no barrier follows
    const int t = (int)(row % seq);
    T* p = att + row * seq;
    float mx = -INFINITY;
    for (int i = lane; i <= t; i += 32) mx = fmaxf(mx, to_f32(p[i]));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int i = lane; i <= t; i += 32) sum += expf(to_f32(p[i]) - mx);
    const float inv = 1.0f / warp_sum(sum);
    // Each lane reads and writes only its own entries.
    for (int i = lane; i < seq; i += 32) p[i] = from_f32<T>(i <= t ? expf(to_f32(p[i]) - mx) * inv : 0.0f);
}

// Attention dropout of one row, row = (b * heads + h) * seq + t: the factor
// (0 or 1 / (1 - p)) of the column pair (j, j + 1), j even, from one Philox
// call (philox.cuh); p == 0 keeps everything without drawing.
struct RowDropout {
    float p, scale;
    u32 threshold;
    u64 seed, head;
    u32 t;
    __device__ __forceinline__ RowDropout(float p_, u64 seed_, u64 offset, u64 row, int seq)
        : p(p_), scale(1.0f / (1.0f - p_)), threshold(dropout_threshold(p_)), seed(seed_),
          head(offset + row / (u64)seq), t((u32)(row % (u64)seq)) {}
    __device__ __forceinline__ void factors(u32 j, float f[2]) const {
        if (p == 0.0f) {
            f[0] = f[1] = 1.0f;
            return;
        }
        // j is even: the pair's words are attn_dropout_word(t, j) and the
        // next one, picked with selects (an indexed word would live in local
        // memory).
        const Philox4 w = attn_dropout_words(seed, head, t, j);
        const bool upper = attn_dropout_word(t, j) == 2;
        const u32 word[2] = {upper ? w.v[2] : w.v[0], upper ? w.v[3] : w.v[1]};
#pragma unroll
        for (int k = 0; k < 2; k++) f[k] = dropout_keeps(word[k], threshold) ? scale : 0.0f;
    }
};

// dst = the row's probabilities after dropout, zero above the diagonal (the
// product with v reads them whole). Each lane takes column pairs, so one
// Philox call serves two elements.
template <typename T>
__device__ void dropout_probs(T* __restrict__ dst, const T* __restrict__ att, u64 rows, int seq, float p, u64 seed,
                              u64 offset) {
    const u64 row = warp_row();
    if (row >= rows) return;
    const RowDropout drop(p, seed, offset, row, seq);
    for (int j = 2 * (int)lane_id(); j < seq; j += 64) {
        float f[2];
        drop.factors((u32)j, f);
#pragma unroll
        for (int k = 0; k < 2; k++) {
            if (j + k >= seq) break;
            const int i = j + k;
            dst[row * seq + i] = from_f32<T>(i <= (int)drop.t ? to_f32(att[row * seq + i]) * f[k] : 0.0f);
        }
    }
}

// Softmax backward, in place on `ds`, which holds d(probabilities after
// dropout) on entry: with the dropout factors f, dp = f * ds, then
// ds = p * (dp - sum_j p_j dp_j) * scale on and below the diagonal, 0 above
// (the dq and dk products read a few entries past the diagonal). Each lane
// keeps to its own column pairs throughout.
template <typename T>
__device__ void softmax_bwd(T* ds, const T* __restrict__ att, u64 rows, int seq, float scale, float p, u64 seed,
                            u64 offset) {
    const u64 row = warp_row();
    if (row >= rows) return;
    const RowDropout drop(p, seed, offset, row, seq);
    const int t = (int)drop.t;
    T* d = ds + row * seq;
    const T* prob = att + row * seq;
    float pdp = 0.0f;
    for (int j = 2 * (int)lane_id(); j <= t; j += 64) {
        float f[2];
        drop.factors((u32)j, f);
#pragma unroll
        for (int k = 0; k < 2; k++) {
            if (j + k > t) break;
            const float dp = to_f32(d[j + k]) * f[k];
            d[j + k] = from_f32<T>(dp);
            pdp += to_f32(prob[j + k]) * dp;
        }
    }
    pdp = warp_sum(pdp);
    for (int j = 2 * (int)lane_id(); j < seq; j += 64) {
        for (int k = 0; k < 2 && j + k < seq; k++) {
            const int i = j + k;
            d[i] = from_f32<T>(i <= t ? to_f32(prob[i]) * (to_f32(d[i]) - pdp) * scale : 0.0f);
        }
    }
}

extern "C" __global__ void attention_softmax_fwd_f32(float* att, u64 rows, int seq) { softmax_fwd(att, rows, seq); }

extern "C" __global__ void attention_dropout_probs_f32(float* __restrict__ dst, const float* __restrict__ att,
                                                       u64 rows, int seq, float p, u64 seed, u64 offset) {
    dropout_probs(dst, att, rows, seq, p, seed, offset);
}

extern "C" __global__ void attention_softmax_bwd_f32(float* ds, const float* __restrict__ att, u64 rows, int seq,
                                                     float scale, float p, u64 seed, u64 offset) {
    softmax_bwd(ds, att, rows, seq, scale, p, seed, offset);
}

extern "C" __global__ void attention_softmax_fwd_bf16(bf16* att, u64 rows, int seq) { softmax_fwd(att, rows, seq); }

extern "C" __global__ void attention_dropout_probs_bf16(bf16* __restrict__ dst, const bf16* __restrict__ att,
                                                        u64 rows, int seq, float p, u64 seed, u64 offset) {
    dropout_probs(dst, att, rows, seq, p, seed, offset);
}

extern "C" __global__ void attention_softmax_bwd_bf16(bf16* ds, const bf16* __restrict__ att, u64 rows, int seq,
                                                      float scale, float p, u64 seed, u64 offset) {
    softmax_bwd(ds, att, rows, seq, scale, p, seed, offset);
}
