// The one place where the GPU and the host differ. Kernel files include this
// and never use #ifdef themselves: under NVRTC they get CUDA's own intrinsics,
// the bf16 type of cuda_bf16.h and the tensor-core instructions as inline
// PTX; under the host compiler they get the CPU emulator (kernels/emu/emu.h,
// kernels/emu/tensor_core.h). Kernels read and write elements through
// dtype.cuh, never through the bf16 primitives below.
//
// Tensor-core and asynchronous-copy wrappers (mma.sync, ldmatrix, cp.async):
// kernels call only these small functions, never the instructions directly,
// so the same source runs on the GPU and under the emulator (warp
// collectives that rebuild the tiles from all 32 lanes per the PTX ISA
// fragment layouts and compute in double; cp.async that writes its
// destination only when cp_async_wait retires its group, NaN until then).
// The fragment layouts, with g = lane / 4 and t = lane % 4 (PTX ISA,
// mma.m16n8k16 with .bf16 and ldmatrix):
//
//   A (16 x 16, row-major), 4 registers of two bf16, lower index in the low
//     half: a0 (row g, cols 2t, 2t+1), a1 (row g+8, same cols),
//     a2 (row g, cols 2t+8, 2t+9), a3 (row g+8, cols 2t+8, 2t+9)
//   B (16 x 8, k x n): b0 (k 2t, 2t+1; n g), b1 (k 2t+8, 2t+9; n g)
//   C/D (16 x 8, fp32): c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, ...)
//   ldmatrix .x4: lanes 8j..8j+7 give the 16-byte row addresses of matrix j;
//     register j of lane l holds row l/4, elements 2(l%4), 2(l%4)+1 of
//     matrix j. With .trans: rows 2(l%4), 2(l%4)+1 at column l/4.
//
// Every tensor-core call must be made by all 32 lanes of the warp (the
// .sync.aligned forms), except the cp.async family, which is per thread.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)

// NVRTC compiles without the C library headers: define what the kernels use.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif
#define DYN_SMEM(T, name) extern __shared__ T name[]
// 16-byte aligned, so that cp.async and ldmatrix may address any static tile.
#define SMEM(T, name, dims) __shared__ __align__(16) T name dims

// bf16: CUDA's own __nv_bfloat16 (cuda_bf16.h, found through the CUDA
// include directory build.rs passes to NVRTC).
#include <cuda_bf16.h>
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 f32_to_bf16(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ unsigned short bf16_bits(bf16 v) { return __bfloat16_as_ushort(v); }

// ---- tensor cores: inline PTX (sm_80 and later) --------------------------------

__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// acc += A (16 x 16) * B (16 x 8), fp32 accumulate, per-lane fragments as above.
__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float acc[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8 x 8 bf16 matrices from shared memory; `row` is this lane's row address.
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
// Two matrices: only lanes 0..15 give addresses (the others' are ignored).
__device__ __forceinline__ void ldmatrix_x2(u32 r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(u32 r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
}

// 16 bytes global -> shared, bypassing L1 (.cg); both addresses 16-byte
// aligned. The _zfill form reads only the first `src_bytes` (0..16) bytes and
// writes zeros for the rest: the ragged edges of a tile (0 reads nothing).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src));
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src),
                 "r"(src_bytes));
}
// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N committed groups are still in flight (this thread's
// own copies only: a __syncthreads must follow before others read them).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#else

#include "emu/emu.h"
#include "emu/tensor_core.h"

// bf16: emu::bf16, 16 trivially copyable bits whose conversion from float
// rounds to nearest-even exactly like the `half` crate's `bf16::from_f32`,
// so a test can round its inputs on the Rust side and expect the kernel to
// see the same bits.
typedef ::emu::bf16 bf16;

inline float bf16_to_f32(bf16 v) { return ::emu::bf16_value(v); }
inline bf16 f32_to_bf16(float v) { return ::emu::round_to_bf16(v); }
inline unsigned short bf16_bits(bf16 v) { return v.bits; }

// ---- tensor cores: the emulator's versions (emu/tensor_core.cpp) ----------------

inline void mma_m16n8k16_bf16_f32(float acc[4], const u32 a[4], const u32 b[2]) {
    ::emu::mma_m16n8k16_bf16_f32(acc, a, b);
}
inline void ldmatrix_x4(u32 r[4], const void* row) { ::emu::ldmatrix(r, 4, false, row); }
inline void ldmatrix_x4_trans(u32 r[4], const void* row) { ::emu::ldmatrix(r, 4, true, row); }
inline void ldmatrix_x2(u32 r[2], const void* row) { ::emu::ldmatrix(r, 2, false, row); }
inline void ldmatrix_x2_trans(u32 r[2], const void* row) { ::emu::ldmatrix(r, 2, true, row); }
inline void cp_async_16(void* smem_dst, const void* gmem_src) { ::emu::cp_async(smem_dst, gmem_src, 16); }
inline void cp_async_16_zfill(void* smem_dst, const void* gmem_src, int src_bytes) {
    ::emu::cp_async(smem_dst, gmem_src, src_bytes);
}
inline void cp_async_commit() { ::emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
    ::emu::cp_async_wait(N);
}

#endif

static_assert(sizeof(bf16) == 2, "bf16 must be 16 bits");
