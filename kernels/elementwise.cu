// Elementwise kernels: fill, copy, add, accumulate.
//
// All of them are memory-bound, so they share one shape: a 1-D grid-stride
// loop over `n` elements, consecutive threads touching consecutive floats
// (coalesced). The host caps the grid (see KernelBackend), so the loop also
// covers tensors bigger than one launch's worth of threads. Indices are
// 64-bit: activations of big models pass 2^31 elements.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

extern "C" __global__ void elementwise_fill_f32(float* dst, float value, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] = value; }
}

extern "C" __global__ void elementwise_copy_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] = src[i]; }
}

// `out` may alias `a` or `b` (the residual stream is updated in place), so no
// __restrict__ here: each element is read before it is written by the same thread.
extern "C" __global__ void elementwise_add_f32(float* out, const float* a, const float* b, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = a[i] + b[i]; }
}

extern "C" __global__ void elementwise_accumulate_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] += src[i]; }
}
