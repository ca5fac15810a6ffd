// Element types in memory and how kernels read and write them. Kernels are
// templated over the stored type T and compute in float: `to_f32` widens a
// loaded element, `from_f32<T>` narrows a result for storing (bf16: round to
// nearest even), so that no kernel file knows a storage format. The bf16
// type itself and its conversions on each side come from common.cuh. Kernel
// families are instantiated for float and bf16 (mixed precision: bf16
// activations, fp32 statistics, master weights and weight gradients); the
// tensor-core GEMM reads bf16.
#pragma once

#include "common.cuh"

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return bf16_to_f32(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);

template <>
__device__ __forceinline__ float from_f32<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) {
    return f32_to_bf16(v);
}

// Two bf16 in one 32-bit word, the first (lower column or k index) in the low
// half: the order of the mma.sync fragments and of memory.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)bf16_bits(f32_to_bf16(lo)) | ((u32)bf16_bits(f32_to_bf16(hi)) << 16);
}

// 16 bytes of T (4 floats, 8 bf16): one vector load or store instead of
// several scalar ones. The address must be 16-byte aligned.
template <typename T>
struct alignas(16) Pack16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

template <typename T>
__device__ __forceinline__ Pack16<T> load16(const T* p) {
    return *reinterpret_cast<const Pack16<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const Pack16<T>& x) {
    *reinterpret_cast<Pack16<T>*>(p) = x;
}

// Whether `p` may be used with load16/store16.
__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15) == 0; }
