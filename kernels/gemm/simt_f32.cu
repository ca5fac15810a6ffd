// The reference GEMM: one generic tiled fp32 product on the SIMT cores.
//
// Why one generic GEMM: the matmul forward (inp @ W^T), both weight-side
// backward products (dout @ W, dout^T @ inp) and all six products of
// attention (q k^T, att v, dout v^T, ds k, ds^T q, att^T dout) differ only in
// which operand is stored transposed, in their leading dimensions, in a batch
// offset and in whether the result overwrites or accumulates. One kernel with
// those as parameters is one kernel to get right, tune and check with ptxas.
// (The attention launcher uses it too.) It stays fp32-only by design: the
// tensor-core GEMM for bf16 is gemm/mma_bf16.cu.
#include "params.h"

// The tile sizes (params.h): output tile GEMM_TILE x GEMM_TILE per block,
// k-slices of GEMM_TK staged in shared memory. GEMM_THREADS = 256 threads
// as 16 x 16, each owning a 4 x 4 register tile at stride 16 (rows
// ty + 16 i, cols tx + 16 j): consecutive threads read consecutive
// shared-memory words (no bank conflicts on the B side, broadcasts on the A
// side) and store consecutive columns of C (coalesced). GemmParams and the
// causal flags are in params.h too.

// C = (accumulate ? C : 0) + alpha * op(A) op(B) + bias, for a batch of
// products in blockIdx.z. Any M, N, K: loads outside the matrices read 0
// and stores outside are skipped.
extern "C" __global__ void gemm_simt_f32(GemmParams p) {
    // +1 column of padding: the non-transposed loads write 16 k-values of one
    // row, which would otherwise land on 16 words 64 apart (one bank).
    SMEM(float, as, [GEMM_TK][GEMM_TILE + 1]);
    SMEM(float, bs, [GEMM_TK][GEMM_TILE + 1]);
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * GEMM_TILE, n0 = blockIdx.x * GEMM_TILE;
    // Uniform per block, before any barrier: the whole block leaves together.
    if (p.causal == GEMM_OUT_LOWER && n0 > m0 + GEMM_TILE - 1) return;

    const u64 outer = blockIdx.z / p.batch_inner, inner = blockIdx.z % p.batch_inner;
    const float* a = p.a + outer * p.a_outer + inner * p.a_inner;
    const float* b = p.b + outer * p.b_outer + inner * p.b_inner;
    float* c = p.c + outer * p.c_outer + inner * p.c_inner;

    int k_begin = 0, k_end = p.k;
    if (p.causal == GEMM_A_LOWER) k_end = min(p.k, m0 + GEMM_TILE);
    if (p.causal == GEMM_A_UPPER) k_begin = m0;

    float acc[GEMM_PER_THREAD][GEMM_PER_THREAD];
#pragma unroll
    for (int i = 0; i < GEMM_PER_THREAD; i++)
#pragma unroll
        for (int j = 0; j < GEMM_PER_THREAD; j++) acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += GEMM_TK) {
        // Each tile is 64 x 16 = 4 elements per thread. Consecutive threads
        // walk the operand's contiguous dimension, so global loads coalesce
        // whichever way the operand is stored.
#pragma unroll
        for (int r = 0; r < (GEMM_TILE * GEMM_TK) / GEMM_THREADS; r++) {
            const int idx = tid + r * GEMM_THREADS;
            const int mm = p.trans_a ? idx % GEMM_TILE : idx / GEMM_TK;
            const int ka = p.trans_a ? idx / GEMM_TILE : idx % GEMM_TK;
            const int gm = m0 + mm, gka = k0 + ka;
            float va = 0.0f;
            if (gm < p.m && gka < k_end)
                va = p.trans_a ? a[(u64)gka * p.lda + gm] : a[(u64)gm * p.lda + gka];
            as[ka][mm] = va;

            const int nn = p.trans_b ? idx / GEMM_TK : idx % GEMM_TILE;
            const int kb = p.trans_b ? idx % GEMM_TK : idx / GEMM_TILE;
            const int gn = n0 + nn, gkb = k0 + kb;
            float vb = 0.0f;
            if (gn < p.n && gkb < k_end)
                vb = p.trans_b ? b[(u64)gn * p.ldb + gkb] : b[(u64)gkb * p.ldb + gn];
            bs[kb][nn] = vb;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_TK; kk++) {
            float ra[GEMM_PER_THREAD], rb[GEMM_PER_THREAD];
#pragma unroll
            for (int i = 0; i < GEMM_PER_THREAD; i++) ra[i] = as[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < GEMM_PER_THREAD; j++) rb[j] = bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < GEMM_PER_THREAD; i++)
#pragma unroll
                for (int j = 0; j < GEMM_PER_THREAD; j++) acc[i][j] += ra[i] * rb[j];
        }
        // The next iteration overwrites the tiles others may still be reading.
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < GEMM_PER_THREAD; i++) {
        const int gm = m0 + ty + 16 * i;
        if (gm >= p.m) continue;
#pragma unroll
        for (int j = 0; j < GEMM_PER_THREAD; j++) {
            const int gn = n0 + tx + 16 * j;
            if (gn >= p.n) continue;
            float* dst = c + (u64)gm * p.ldc + gn;
            float v = p.alpha * acc[i][j];
            if (p.bias) v += p.bias[gn];
            if (p.accumulate) v += *dst;
            *dst = v;
        }
    }
}
