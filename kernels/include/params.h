// Launch constants and the structs passed to kernels by value: the one
// place both sides read them. build.rs generates the Rust twin
// (src/cuda/params.rs) from this file, so it accepts only two forms:
//   constexpr TYPE NAME = VALUE;   TYPE one of u32, int, float; VALUE a
//                                  literal or an expression of earlier
//                                  constants of the same TYPE
//   struct NAME { TYPE field, ...; };   TYPE one of u64, u32, int, float, T*
// and it writes the layout it computed for each struct into
// params_layout.h, which this file includes: both the host compiler and
// NVRTC then check it, and the Rust twin asserts the same offsets.
#pragma once

#include "common.cuh"

// ---- 1-D elementwise kernels (elementwise, activation, optimizer) ----------

// Threads per block: a multiple of the warp size, small enough that several
// blocks fit on every SM.
constexpr u32 ELEMENTWISE_BLOCK = 256;
// Cap on the 1-D grid: 1024 blocks of 256 threads is about one full wave on
// an H100 (132 SMs x 2048 resident threads); the grid-stride loops cover
// bigger tensors with several elements per thread. Fewer, busier threads
// also make the emulator several times faster (a thread costs a fiber).
constexpr u32 MAX_GRID_1D = 1024;

// ---- one warp per row (embedding forward, layernorm) ------------------------

// Threads per block: 8 rows per block.
constexpr u32 ROW_BLOCK = 256;
// Threads per block of layernorm_bwd_params (32 columns per block, one
// warp per 1/16 of the rows): as many loads in flight per block as the
// narrow grid (channels / 32 blocks) allows.
constexpr u32 LAYERNORM_PARAMS_BLOCK = 512;

// ---- loss ------------------------------------------------------------------

// Threads per block of softmax_xent, one block per row: enough loads in
// flight to stream a 50257-logit row, and 4 blocks still fit on an SM.
constexpr u32 XENT_BLOCK = 512;

// ---- attention ---------------------------------------------------------------

// Threads per block of the row-wise attention softmax (one warp per row).
constexpr u32 ATTN_SOFTMAX_BLOCK = 256;

// ---- attention/flash_*.cu --------------------------------------------------------

// Query rows per block (forward and dq) and keys per tile; four warps own 16
// query rows (or, in the dk/dv kernel, 16 keys) each. See flash.cuh for why.
constexpr int FLASH_BLOCK_M = 64;
constexpr int FLASH_BLOCK_N = 64;
constexpr int FLASH_THREADS = 128;
// Queries per step of the dk/dv kernel's loop, by padded head size: half at
// 128 so that dk, dv (64 registers each) and two score tiles fit.
constexpr int FLASH_DKDV_QUERIES_64 = 64;
constexpr int FLASH_DKDV_QUERIES_128 = 32;
// Dynamic shared memory per block (bf16 tiles of 64 or 128 columns, two
// pipeline stages). Forward: Q, then two stages of K and V.
constexpr int FLASH_FWD_SMEM_64 = (FLASH_BLOCK_M + 4 * FLASH_BLOCK_N) * 64 * 2;
constexpr int FLASH_FWD_SMEM_128 = (FLASH_BLOCK_M + 4 * FLASH_BLOCK_N) * 128 * 2;
// dq: Q and dout, then two stages of K and V.
constexpr int FLASH_DQ_SMEM_64 = (2 * FLASH_BLOCK_M + 4 * FLASH_BLOCK_N) * 64 * 2;
constexpr int FLASH_DQ_SMEM_128 = (2 * FLASH_BLOCK_M + 4 * FLASH_BLOCK_N) * 128 * 2;
// dk/dv: K and V, then two stages of Q and dout, then two stages of the
// queries' lse and delta (floats).
constexpr int FLASH_DKDV_SMEM_64 = (2 * FLASH_BLOCK_N + 4 * FLASH_DKDV_QUERIES_64) * 64 * 2 + 4 * FLASH_DKDV_QUERIES_64 * 4;
constexpr int FLASH_DKDV_SMEM_128 = (2 * FLASH_BLOCK_N + 4 * FLASH_DKDV_QUERIES_128) * 128 * 2 + 4 * FLASH_DKDV_QUERIES_128 * 4;

// ---- gemm/simt_f32.cu ----------------------------------------------------------

// Output tile per block (square) and the k-slice staged in shared memory.
// 256 threads as 16 x 16, each owning a 4 x 4 register tile at stride 16.
constexpr int GEMM_TILE = 64;
constexpr int GEMM_TK = 16;
constexpr int GEMM_THREADS = 256;
constexpr int GEMM_PER_THREAD = 4;

// Which triangle a causal attention product may skip (GemmParams.causal and
// GemmBf16Params.causal). The skipped entries are exact zeros (or are
// overwritten afterwards), so skipping them changes nothing but the work done.
constexpr int GEMM_DENSE = 0;
constexpr int GEMM_OUT_LOWER = 1;  // only C[m, n] with n <= m is needed: skip tiles above the diagonal
constexpr int GEMM_A_LOWER = 2;    // A[m, k] == 0 for k > m: stop the k loop after the tile's last row
constexpr int GEMM_A_UPPER = 3;    // A[m, k] == 0 for k < m: start the k loop at the tile's first row

// C = (accumulate ? C : 0) + alpha * op(A) op(B) + bias, for a batch of
// products in blockIdx.z (batch z = outer * batch_inner + inner; for
// attention, outer = sequence, inner = head). Offsets are in elements.
// Eight-byte fields first, so there is no padding.
struct GemmParams {
    float* c;
    const float* a;
    const float* b;
    const float* bias;  // null for none
    u64 a_outer, a_inner, b_outer, b_inner, c_outer, c_inner;
    int m, n, k;
    int lda, ldb, ldc;
    int trans_a;     // A stored as [K, M] (else [M, K])
    int trans_b;     // B stored as [N, K] (else [K, N])
    int accumulate;  // C += ... (else C = ...)
    int causal;      // GEMM_DENSE or one of the triangles above
    int batch_inner;
    float alpha;
};

// ---- gemm/mma_bf16.cu ----------------------------------------------------------

// Block tile (M x N x K), warps and pipeline depth; see mma_bf16.cu for why.
constexpr int MMA_BM = 128;
constexpr int MMA_BN = 128;
constexpr int MMA_BK = 32;
constexpr int MMA_WARPS_M = 2;
constexpr int MMA_WARPS_N = 4;
constexpr int MMA_THREADS = 32 * MMA_WARPS_M * MMA_WARPS_N;
constexpr int MMA_STAGES = 3;
// Dynamic shared memory per block: STAGES x (A tile + B tile) of bf16,
// 3 x (128 x 32 + 32 x 128) x 2 B = 48 KiB, the most a block may use
// without the launcher's opt-in.
constexpr int MMA_SMEM_BYTES = MMA_STAGES * (MMA_BM + MMA_BN) * MMA_BK * 2;

// C (+)= alpha op(A) op(B) (+ bias), then optionally GELU, per batch in
// blockIdx.z. A and B are bf16; C is bf16 or fp32 (c_f32). M, N and K are
// free. gemm_mma_{nn,nt,tn,tt}_bf16 need what 16-byte cp.async needs: a and
// b 16-byte aligned, lda, ldb and the four a/b batch strides multiples of 8
// elements; the _unaligned kernels need nothing of the kind.
struct GemmBf16Params {
    void* c;           // [M, N] with row stride ldc: bf16, or float when c_f32
    const void* a;     // bf16: [M, K] with row stride lda, or [K, M] (gemm_mma_t*)
    const void* b;     // bf16: [K, N] with row stride ldb, or [N, K] (gemm_mma_?t*)
    const void* bias;  // bf16 [N], or null
    void* pre;         // gelu only: the pre-activation, same layout and type as c
    // Batch offsets in elements: batch z = outer * batch_inner + inner.
    u64 a_outer, a_inner, b_outer, b_inner, c_outer, c_inner;
    int m, n, k;
    int lda, ldb, ldc;
    int accumulate;   // C += ... (C's old value read in its own type)
    int gelu;         // C = gelu(v), pre = v (v: the biased product); not with accumulate
    int c_f32;        // C (and pre) are fp32, else bf16
    int causal;       // GEMM_DENSE or one of the triangles above
    int batch_inner;
    float alpha;
};

// ---- gemm/bias_grad.cu ---------------------------------------------------------

// A block owns BIAS_COLS columns; its BIAS_WARPS warps split the rows.
constexpr int BIAS_COLS = 32;
constexpr int BIAS_WARPS = 16;

#include "params_layout.h"
