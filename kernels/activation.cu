// Activations and dropout: GELU (tanh approximation) and inverted dropout,
// forward and backward.
//
// Memory-bound like the elementwise kernels and shaped the same way: a 1-D
// grid-stride loop over `n` elements, consecutive threads on consecutive
// floats, the grid capped by the host.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// tanhf, not a fast approximation: the CPU reference is compared elementwise.
#define GELU_SCALE 0.7978845608028654f

extern "C" __global__ void activation_gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
    }
}

// dinp += gelu'(x) * dout (backward ops accumulate).
extern "C" __global__ void activation_gelu_bwd_f32(float* __restrict__ dinp, const float* __restrict__ inp,
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
extern "C" __global__ void activation_dropout_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, float p,
                                           float scale, u64 seed, u64 offset, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = philox_uniform(seed, offset + i) >= p ? inp[i] * scale : 0.0f; }
}

extern "C" __global__ void activation_dropout_bwd_f32(float* __restrict__ dinp, const float* __restrict__ dout, float p,
                                           float scale, u64 seed, u64 offset, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        if (philox_uniform(seed, offset + i) >= p) dinp[i] += dout[i] * scale;
    }
}
