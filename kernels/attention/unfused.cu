// Causal self-attention, the unfused way (the reference path while a fused
// flash kernel does not exist): the launcher runs the products (scores =
// q k^T, out = att v, and in the backward datt = dout v^T, dq = ds k,
// dk = ds^T q, dv = att^T dout) with gemm/simt_f32.cu or gemm/mma_bf16.cu,
// one batch entry per (sequence, head), skipping the tiles the causal mask
// makes zero. This file
// holds the row-wise softmax between them, in f32 or bf16 (mixed precision:
// the products then run on the tensor-core GEMM and store bf16, the softmax
// computes in float).
//
// The [B, heads, T, T] matrix goes through global memory twice per pass. A
// fused flash-style kernel would instead keep a block of query rows in
// shared memory, stream k/v tiles past them with an online softmax (running
// max and sum), and never write att at all: O(T) memory instead of O(T^2),
// and the backward would recompute the probabilities from saved row
// statistics. The op contract saves `att`, so that is a contract change
// for later.
#include "dtype.cuh"
#include "grid.cuh"
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

// Softmax backward, in place on `ds`, which holds d(probabilities) on entry:
// ds = p * (dp - sum_j p_j dp_j) * scale on and below the diagonal, 0 above
// (the dq and dk products read a few entries past the diagonal).
template <typename T>
__device__ void softmax_bwd(T* ds, const T* __restrict__ att, u64 rows, int seq, float scale) {
    const u64 row = warp_row();
    const int lane = (int)lane_id();
    if (row >= rows) return;
    const int t = (int)(row % seq);
    T* d = ds + row * seq;
    const T* p = att + row * seq;
    float pdp = 0.0f;
    for (int i = lane; i <= t; i += 32) pdp += to_f32(p[i]) * to_f32(d[i]);
    pdp = warp_sum(pdp);
    for (int i = lane; i < seq; i += 32) {
        d[i] = from_f32<T>(i <= t ? to_f32(p[i]) * (to_f32(d[i]) - pdp) * scale : 0.0f);
    }
}

extern "C" __global__ void attention_softmax_fwd_f32(float* att, u64 rows, int seq) { softmax_fwd(att, rows, seq); }

extern "C" __global__ void attention_softmax_bwd_f32(float* ds, const float* __restrict__ att, u64 rows, int seq,
                                                     float scale) {
    softmax_bwd(ds, att, rows, seq, scale);
}

extern "C" __global__ void attention_softmax_fwd_bf16(bf16* att, u64 rows, int seq) { softmax_fwd(att, rows, seq); }

extern "C" __global__ void attention_softmax_bwd_bf16(bf16* ds, const bf16* __restrict__ att, u64 rows, int seq,
                                                      float scale) {
    softmax_bwd(ds, att, rows, seq, scale);
}
