// Activations and dropout: GELU (GPT-2's tanh approximation, and the exact
// erf form BERT uses) and inverted dropout, forward and backward.
//
// Memory-bound like the elementwise kernels and shaped the same way: a 1-D
// grid-stride loop over `n` elements, templated over the stored type T and
// computing in float, instantiated as activation_<op>_<dtype> for f32 and
// bf16 (each bf16 output rounded once, from the float result).
#include "dtype.cuh"
#include "grid.cuh"
#include "philox.cuh"

// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// tanhf, not a fast approximation: the CPU reference is compared elementwise.
#define GELU_SCALE 0.7978845608028654f

template <typename T>
__device__ void gelu_fwd(T* __restrict__ out, const T* __restrict__ inp, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float x = to_f32(inp[i]);
        const float cube = 0.044715f * x * x * x;
        out[i] = from_f32<T>(0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube))));
    }
}

// dinp += gelu'(x) * dout (backward ops accumulate).
template <typename T>
__device__ void gelu_bwd(T* __restrict__ dinp, const T* __restrict__ inp, const T* __restrict__ dout, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float x = to_f32(inp[i]);
        const float cube = 0.044715f * x * x * x;
        const float t = tanhf(GELU_SCALE * (x + cube));
        const float sech2 = 1.0f - t * t;
        const float grad = 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = from_f32<T>(to_f32(dinp[i]) + grad * to_f32(dout[i]));
    }
}

// The exact GELU, x Φ(x), with Φ(x) = erfc(-x / sqrt 2) / 2: erfc rather
// than 1 + erf, which cancels to 0 for large negative x and loses the tail
// (CUDA's erfcf is within 4 ulp everywhere; the reference is the f64 Φ).
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

template <typename T>
__device__ void gelu_erf_fwd(T* __restrict__ out, const T* __restrict__ inp, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float x = to_f32(inp[i]);
        out[i] = from_f32<T>(x * 0.5f * erfcf(-x * INV_SQRT2));
    }
}

// dinp += (Φ(x) + x φ(x)) * dout, φ the standard normal density.
template <typename T>
__device__ void gelu_erf_bwd(T* __restrict__ dinp, const T* __restrict__ inp, const T* __restrict__ dout, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float x = to_f32(inp[i]);
        const float grad = 0.5f * erfcf(-x * INV_SQRT2) + x * expf(-0.5f * x * x) * INV_SQRT_2PI;
        dinp[i] = from_f32<T>(to_f32(dinp[i]) + grad * to_f32(dout[i]));
    }
}

// Inverted dropout. The mask is recomputed from (seed, offset + i) with
// Philox, in the forward and again in the backward, so it is never stored.
// `scale` = 1 / (1 - p) is computed on the host, once (0 when p == 1).
template <typename T>
__device__ void dropout_fwd(T* __restrict__ out, const T* __restrict__ inp, float p, float scale, u64 seed,
                            u64 offset, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        out[i] = from_f32<T>(philox_uniform(seed, offset + i) >= p ? to_f32(inp[i]) * scale : 0.0f);
    }
}

template <typename T>
__device__ void dropout_bwd(T* __restrict__ dinp, const T* __restrict__ dout, float p, float scale, u64 seed,
                            u64 offset, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        if (philox_uniform(seed, offset + i) >= p) dinp[i] = from_f32<T>(to_f32(dinp[i]) + to_f32(dout[i]) * scale);
    }
}

extern "C" __global__ void activation_gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, u64 n) {
    gelu_fwd(out, inp, n);
}

extern "C" __global__ void activation_gelu_bwd_f32(float* __restrict__ dinp, const float* __restrict__ inp,
                                                   const float* __restrict__ dout, u64 n) {
    gelu_bwd(dinp, inp, dout, n);
}

extern "C" __global__ void activation_gelu_erf_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, u64 n) {
    gelu_erf_fwd(out, inp, n);
}

extern "C" __global__ void activation_gelu_erf_bwd_f32(float* __restrict__ dinp, const float* __restrict__ inp,
                                                       const float* __restrict__ dout, u64 n) {
    gelu_erf_bwd(dinp, inp, dout, n);
}

extern "C" __global__ void activation_dropout_fwd_f32(float* __restrict__ out, const float* __restrict__ inp, float p,
                                                      float scale, u64 seed, u64 offset, u64 n) {
    dropout_fwd(out, inp, p, scale, seed, offset, n);
}

extern "C" __global__ void activation_dropout_bwd_f32(float* __restrict__ dinp, const float* __restrict__ dout,
                                                      float p, float scale, u64 seed, u64 offset, u64 n) {
    dropout_bwd(dinp, dout, p, scale, seed, offset, n);
}

extern "C" __global__ void activation_gelu_fwd_bf16(bf16* __restrict__ out, const bf16* __restrict__ inp, u64 n) {
    gelu_fwd(out, inp, n);
}

extern "C" __global__ void activation_gelu_bwd_bf16(bf16* __restrict__ dinp, const bf16* __restrict__ inp,
                                                    const bf16* __restrict__ dout, u64 n) {
    gelu_bwd(dinp, inp, dout, n);
}

extern "C" __global__ void activation_gelu_erf_fwd_bf16(bf16* __restrict__ out, const bf16* __restrict__ inp, u64 n) {
    gelu_erf_fwd(out, inp, n);
}

extern "C" __global__ void activation_gelu_erf_bwd_bf16(bf16* __restrict__ dinp, const bf16* __restrict__ inp,
                                                        const bf16* __restrict__ dout, u64 n) {
    gelu_erf_bwd(dinp, inp, dout, n);
}

extern "C" __global__ void activation_dropout_fwd_bf16(bf16* __restrict__ out, const bf16* __restrict__ inp, float p,
                                                       float scale, u64 seed, u64 offset, u64 n) {
    dropout_fwd(out, inp, p, scale, seed, offset, n);
}

extern "C" __global__ void activation_dropout_bwd_bf16(bf16* __restrict__ dinp, const bf16* __restrict__ dout,
                                                       float p, float scale, u64 seed, u64 offset, u64 n) {
    dropout_bwd(dinp, dout, p, scale, seed, offset, n);
}
