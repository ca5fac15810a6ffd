// Causal self-attention, the unfused way: KernelBackend runs the products
// (scores = q k^T, out = att v, and in the backward datt = dout v^T,
// dq = ds k, dk = ds^T q, dv = att^T dout) with gemm_simt_f32 of matmul.cu, one
// batch entry per (sequence, head), skipping the tiles the causal mask makes
// zero. This file holds the row-wise softmax between them.
//
// The [B, heads, T, T] matrix goes through global memory twice per pass. A
// fused flash-style kernel would instead keep a block of query rows in
// shared memory, stream k/v tiles past them with an online softmax (running
// max and sum), and never write att at all: O(T) memory instead of O(T^2),
// and the backward would recompute the probabilities from saved row
// statistics. The Backend contract saves `att`, so that is a contract change
// for later.
#include "common.cuh"

// One warp per row of the [rows = B * heads * T, T] matrix: rows are short
// (T <= a few thousand), so 32 lanes stride over one row and combine with
// shuffles, with no shared memory and no __syncthreads. Row r is query
// position t = r % T; only columns 0..t are valid.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// In place: scaled scores in columns 0..t become probabilities; columns
// above the diagonal (never computed, or garbage) become exact zeros, as the
// backward and the att @ v product expect. expf, not __expf: the CPU
// reference is compared elementwise.
extern "C" __global__ void attention_softmax_fwd_f32(float* att, u64 rows, int seq) {
    const u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps leave together; no barrier follows
    const int t = (int)(row % seq);
    float* p = att + row * seq;
    float mx = -INFINITY;
    for (int i = lane; i <= t; i += 32) mx = fmaxf(mx, p[i]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int i = lane; i <= t; i += 32) {
        const float e = expf(p[i] - mx);
        p[i] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    // Each lane rescales exactly the entries it wrote above.
    for (int i = lane; i < seq; i += 32) p[i] = i <= t ? p[i] * inv : 0.0f;
}

// Softmax backward, in place on `ds`, which holds d(probabilities) on entry:
// ds = p * (dp - sum_j p_j dp_j) * scale on and below the diagonal, 0 above
// (the dq and dk products read a few entries past the diagonal).
extern "C" __global__ void attention_softmax_bwd_f32(float* ds, const float* __restrict__ att, u64 rows, int seq,
                                                float scale) {
    const u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const int t = (int)(row % seq);
    float* d = ds + row * seq;
    const float* p = att + row * seq;
    float pdp = 0.0f;
    for (int i = lane; i <= t; i += 32) pdp += p[i] * d[i];
    pdp = warp_sum(pdp);
    for (int i = lane; i < seq; i += 32) d[i] = i <= t ? p[i] * (d[i] - pdp) * scale : 0.0f;
}
