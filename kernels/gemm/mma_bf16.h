// Launch constants and the parameter struct of the bf16 tensor-core GEMM
// (gemm/mma_bf16.cu). The Rust side keeps a #[repr(C)] twin of
// GemmBf16Params and asserts the same size.
#pragma once

// Block tile (M x N x K), warps and pipeline depth; see mma_bf16.cu for why.
#define MMA_BM 128
#define MMA_BN 128
#define MMA_BK 32
#define MMA_WARPS_M 2
#define MMA_WARPS_N 4
#define MMA_THREADS (32 * MMA_WARPS_M * MMA_WARPS_N)
#define MMA_STAGES 3
// Dynamic shared memory per block: STAGES x (A tile + B tile) of bf16,
// 3 x (128 x 32 + 32 x 128) x 2 B = 48 KiB, the most a block may use
// without the launcher's opt-in.
#define MMA_SMEM_BYTES (MMA_STAGES * (MMA_BM + MMA_BN) * MMA_BK * 2)

// Which triangle a causal attention product may skip (as gemm_f32's).
#define MMA_DENSE 0
#define MMA_OUT_LOWER 1  // only C[m, n] with n <= m is needed: skip tiles above the diagonal
#define MMA_A_LOWER 2    // A[m, k] == 0 for k > m: stop the k loop after the tile's last row
#define MMA_A_UPPER 3    // A[m, k] == 0 for k < m: start the k loop at the tile's first row

// C (+)= alpha op(A) op(B) (+ bias), then optionally GELU, per batch in
// blockIdx.z. A and B are bf16; C is bf16 or fp32 (c_f32). M, N and K are
// free. gemm_bf16_{nn,nt,tn,tt} need what 16-byte cp.async needs: a and b
// 16-byte aligned, lda, ldb and the four a/b batch strides multiples of 8
// elements; the _unaligned kernels need nothing of the kind.
struct GemmBf16Params {
    void* c;            // [M, N] with row stride ldc: bf16, or float when c_f32
    const void* a;      // bf16: [M, K] with row stride lda, or [K, M] when trans_a
    const void* b;      // bf16: [K, N] with row stride ldb, or [N, K] when trans_b
    const void* bias;   // bf16 [N], or null
    void* pre;          // gelu only: the pre-activation, same layout and type as c
    // Batch offsets in elements: batch z = outer * batch_inner + inner.
    unsigned long long a_outer, a_inner, b_outer, b_inner, c_outer, c_inner;
    int m, n, k;
    int lda, ldb, ldc;
    int accumulate;  // C += ... (C's old value read in its own type)
    int gelu;        // C = gelu(v), pre = v (v: the biased product); not with accumulate
    int c_f32;       // C (and pre) are fp32, else bf16
    int causal;      // MMA_DENSE or one of the triangles above
    int batch_inner;
    float alpha;
};
static_assert(sizeof(GemmBf16Params) == 136, "GemmBf16Params layout changed: update its Rust twin");
