// The warp and block reductions every kernel family uses: sums, maxima and
// the online (max, sum of exponentials) pairs of a softmax.
//
// Warp reductions are xor butterflies over all 32 lanes (every lane ends
// with the result), so no shared memory and no block barrier are needed;
// callers must run them with the whole warp. Block reductions go through
// one value per warp in shared memory that the caller provides.
#pragma once

#include "common.cuh"

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// Sum over the warp (float or double).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

// Maximum over the warp.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the block, in thread 0 only: each warp reduces with shuffles and
// writes its total to `warp_totals` (one entry per warp, at least
// blockDim.x / 32), then thread 0 adds the totals in warp order. Every
// thread of the block must call it (it has a barrier).
template <typename T>
__device__ __forceinline__ T block_sum_to_thread0(T v, T* warp_totals) {
    v = warp_sum(v);
    if (threadIdx.x % WARP_SIZE == 0) warp_totals[threadIdx.x / WARP_SIZE] = v;
    __syncthreads();
    T total = 0;
    if (threadIdx.x == 0) {
        for (u32 w = 0; w < blockDim.x / WARP_SIZE; w++) total += warp_totals[w];
    }
    return total;
}

// A softmax's running statistics: the maximum seen and the sum of
// exp(x - max) so far. Merging two keeps a row's exponentials in range
// without a separate pass for the maximum (online softmax).
struct MaxSum {
    float max, sum;
};

// The empty pair (max -inf, sum 0) adds nothing; testing for it avoids
// exp(-inf - -inf) = NaN. expf, not __expf: results are compared
// elementwise with the CPU reference.
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float top = fmaxf(a.max, b.max);
    if (top == -INFINITY) return a;
    return MaxSum{top, a.sum * expf(a.max - top) + b.sum * expf(b.max - top)};
}

// The merged pair over the warp, in every lane.
__device__ __forceinline__ MaxSum warp_merge(MaxSum p) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        const MaxSum other{__shfl_xor_sync(FULL_MASK, p.max, offset), __shfl_xor_sync(FULL_MASK, p.sum, offset)};
        p = merge(p, other);
    }
    return p;
}
