// bf16: the 16-bit storage type of the tensor-core path, on both sides.
//
// On the GPU it is CUDA's own __nv_bfloat16 (cuda_bf16.h, found through the
// CUDA include directory build.rs passes to NVRTC). Under the emulator it is
// emu::bf16 (emu/tensor_core.h): 16 trivially copyable bits whose conversion
// from float rounds to nearest-even exactly like the `half` crate's
// `bf16::from_f32`, so a test can round its inputs on the Rust side and
// expect the kernel to see the same bits. Arithmetic always happens in fp32:
// a kernel converts with bf16_to_f32 / f32_to_bf16 and never computes in bf16.
#pragma once

#include "common.cuh"

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)

#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 f32_to_bf16(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ unsigned short bf16_bits(bf16 v) { return __bfloat16_as_ushort(v); }

#else

#include "emu/tensor_core.h"
typedef ::emu::bf16 bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 v) { return ::emu::bf16_value(v); }
__device__ __forceinline__ bf16 f32_to_bf16(float v) { return ::emu::round_to_bf16(v); }
__device__ __forceinline__ unsigned short bf16_bits(bf16 v) { return v.bits; }

#endif

static_assert(sizeof(bf16) == 2, "bf16 must be 16 bits");

// Two bf16 in one 32-bit word, the first (lower column or k index) in the low
// half: the order of the mma.sync fragments and of memory.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)bf16_bits(f32_to_bf16(lo)) | ((u32)bf16_bits(f32_to_bf16(hi)) << 16);
}
