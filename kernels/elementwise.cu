// Elementwise kernels: fill, copy, cast, add, accumulate.
//
// All of them are memory-bound, so they share one shape: a 1-D grid-stride
// loop over `n` elements (grid.cuh). Each is a template over the stored
// element type T, computing in float (dtype.cuh), instantiated below as
// elementwise_<op>_<dtype> for f32 and bf16 (mixed precision keeps its
// activations and their gradients in bf16).
#include "dtype.cuh"
#include "grid.cuh"

template <typename T>
__device__ void fill(T* dst, float value, u64 n) {
    const T v = from_f32<T>(value);
    GRID_STRIDE_LOOP(i, n) { dst[i] = v; }
}

// 16 bytes per load and store when both sides are aligned for it (slots and
// arenas are, offset views may not be), then the elements the packs leave.
template <typename T>
__device__ void copy(T* __restrict__ dst, const T* __restrict__ src, u64 n) {
    constexpr u64 P = Pack16<T>::N;
    u64 done = 0;
    if (aligned16(dst) && aligned16(src)) {
        done = n / P * P;
        GRID_STRIDE_LOOP(i, n / P) { store16(dst + i * P, load16(src + i * P)); }
    }
    GRID_STRIDE_LOOP(i, n - done) { dst[done + i] = src[done + i]; }
}

// dst = src converted to D (to bf16: round to nearest even). Named by the
// destination's type: elementwise_cast_bf16 refreshes the bf16 compute copy
// of fp32 master weights.
template <typename D, typename S>
__device__ void cast(D* __restrict__ dst, const S* __restrict__ src, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] = from_f32<D>(to_f32(src[i])); }
}

// `out` may alias `a` or `b` (the residual stream is updated in place), so no
// __restrict__ here: each element is read before it is written by the same thread.
template <typename T>
__device__ void add(T* out, const T* a, const T* b, u64 n) {
    GRID_STRIDE_LOOP(i, n) { out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i])); }
}

template <typename T>
__device__ void accumulate(T* __restrict__ dst, const T* __restrict__ src, u64 n) {
    GRID_STRIDE_LOOP(i, n) { dst[i] = from_f32<T>(to_f32(dst[i]) + to_f32(src[i])); }
}

extern "C" __global__ void elementwise_fill_f32(float* dst, float value, u64 n) { fill(dst, value, n); }

extern "C" __global__ void elementwise_copy_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    copy(dst, src, n);
}

extern "C" __global__ void elementwise_add_f32(float* out, const float* a, const float* b, u64 n) { add(out, a, b, n); }

extern "C" __global__ void elementwise_accumulate_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    accumulate(dst, src, n);
}

extern "C" __global__ void elementwise_fill_bf16(bf16* dst, float value, u64 n) { fill(dst, value, n); }

extern "C" __global__ void elementwise_copy_bf16(bf16* __restrict__ dst, const bf16* __restrict__ src, u64 n) {
    copy(dst, src, n);
}

extern "C" __global__ void elementwise_add_bf16(bf16* out, const bf16* a, const bf16* b, u64 n) { add(out, a, b, n); }

extern "C" __global__ void elementwise_accumulate_bf16(bf16* __restrict__ dst, const bf16* __restrict__ src, u64 n) {
    accumulate(dst, src, n);
}

extern "C" __global__ void elementwise_cast_bf16(bf16* __restrict__ dst, const float* __restrict__ src, u64 n) {
    cast(dst, src, n);
}

extern "C" __global__ void elementwise_cast_f32(float* __restrict__ dst, const bf16* __restrict__ src, u64 n) {
    cast(dst, src, n);
}
