// Elementwise kernels: fill, copy, add, accumulate, GELU and dropout.
//
// All of them are memory-bound, so they share one shape: a 1-D grid-stride
// loop over `n` elements, consecutive threads touching consecutive floats
// (coalesced). The host caps the grid (see KernelBackend), so the loop also
// covers tensors bigger than one launch's worth of threads. Indices are
// 64-bit: activations of big models pass 2^31 elements.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

extern "C" __global__ void fill_f32(float* dst, float value, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] = value; }
}

extern "C" __global__ void copy_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] = src[i]; }
}

// `out` may alias `a` or `b` (the residual stream is updated in place), so no
// __restrict__ here: each element is read before it is written by the same thread.
extern "C" __global__ void add_f32(float* out, const float* a, const float* b, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = a[i] + b[i]; }
}

extern "C" __global__ void accumulate_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] += src[i]; }
}

// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// tanhf, not a fast approximation: the CPU reference is compared elementwise.
#define GELU_SCALE 0.7978845608028654f

extern "C" __global__ void gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
    }
}

// dinp += gelu'(x) * dout (backward ops accumulate).
extern "C" __global__ void gelu_bwd_f32(float* __restrict__ dinp, const float* __restrict__ inp,
                                        const float* __restrict__ dout, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        float arg = GELU_SCALE * (x + cube);
        float t = tanhf(arg);
        float sech2 = 1.0f - t * t;
        float grad = 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += grad * dout[i];
    }
}

// Inverted dropout. The mask is recomputed from (seed, offset + i) with
// Philox, in the forward and again in the backward, so it is never stored.
// `scale` = 1 / (1 - p) is computed on the host, once (0 when p == 1).
extern "C" __global__ void dropout_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, float p,
                                           float scale, u64 seed, u64 offset, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = philox_uniform(seed, offset + i) >= p ? inp[i] * scale : 0.0f; }
}

extern "C" __global__ void dropout_bwd_f32(float* __restrict__ dinp, const float* __restrict__ dout, float p,
                                           float scale, u64 seed, u64 offset, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        if (philox_uniform(seed, offset + i) >= p) dinp[i] += dout[i] * scale;
    }
}
