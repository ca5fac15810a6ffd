// The bf16 tensor-core GEMM: mma.sync m16n8k16 (bf16 in, fp32 accumulate),
// operands staged by cp.async through a 3-stage shared-memory pipeline and
// loaded into fragments with ldmatrix. It serves every product gemm_simt_f32
// serves (matmul forward and both backward products, the six attention
// products: transpose flags, accumulate, batch strides, causal skipping),
// with fused epilogues: bias, GELU (keeping the pre-activation for the
// backward) and accumulation into an fp32 C (weight gradients).
//
// Shape, and why:
// - Block tile 128 x 128 x 32, 8 warps as 2 (M) x 4 (N), each warp 64 x 32:
//   per 16-deep k step a warp issues 6 ldmatrix.x4 (4 for its A rows, 2 for
//   its B columns) for 16 mma, and the block reads 128 + 128 operand rows
//   per 128 x 128 outputs from global memory (arithmetic intensity 64
//   FLOP/byte of tile traffic, against ~206 FLOP/B of ridge on an H200:
//   enough with L2 reuse between neighbouring blocks).
// - Registers: 64 fp32 accumulators + 16 (A) + 8 (B) fragment registers +
//   addresses: 122-128 on sm_90, within the 128 that __launch_bounds__(256, 2)
//   allows, so two blocks (16 warps) share an SM and one block's loads hide
//   the other's math.
// - Shared memory: 3 stages x (8 KiB A + 8 KiB B) = 48 KiB, the most a
//   block gets without the opt-in; two blocks use 96 of the 228 KiB per SM.
//   Three stages keep two tiles in flight while the third is consumed.
// - Bank conflicts: a tile row is stored in 16-byte chunks (8 bf16). Tiles
//   whose rows run along k (128 rows x 4 chunks, "K-contiguous") XOR the
//   chunk with (row / 2) % 4; tiles whose rows run along m or n (32 rows x
//   16 chunks, "MN-contiguous") XOR it with row % 8. Either way the 8 rows
//   one ldmatrix matrix reads, and the 8 chunks a quarter-warp of cp.async
//   writes, fall into 8 different groups of 4 banks. No padding, so the
//   three stages stay at exactly 48 KiB.
// - Transposes: an operand stored with k contiguous (A as [M, K], B as
//   [N, K]) is loaded with ldmatrix; one stored the other way (A as [K, M],
//   B as [K, N]) with ldmatrix.trans. The four combinations are four
//   kernels (gemm_mma_<a><b>_bf16, n = as the math reads it, t = transposed), so
//   no layout test sits in the inner loop.
// - Ragged edges: every 16-byte load is a zero-filling cp.async whose source
//   size is cut at the matrix edge (0 bytes outside it), so any M, N and K
//   work; stores outside C are skipped. What cp.async needs is alignment
//   (params.h): base addresses 16-byte aligned, leading dimensions and a/b
//   batch strides multiples of 8 elements. Operands that are not (rare: the
//   model's widths are multiples of 64; an attention matrix with a sequence
//   length that is not a multiple of 8) go to the gemm_mma_*_unaligned_bf16
//   kernels, which load with plain 2-byte loads instead.
//
// Speed, predicted from the SASS (scripts/sass-check.sh; not yet measured
// on a GPU): one k-tile of the hot loop is 127-137 instructions per warp for
// 32 HMMA.16816 (12 LDSM, 4 LDGSTS, ~70 integer), about 4 issue slots per
// HMMA, under the ~6 cycles a scheduler spends per HMMA at mma.sync's rate on
// Hopper, so the loop should be tensor-pipe bound with 4 warps per
// scheduler. mma.sync reaches roughly two thirds of Hopper's wgmma peak,
// which caps this kernel near 60-65% of cuBLAS on large shapes; the
// straight-from-registers epilogue (2- and 4-byte stores) costs more on
// small ones. The wgmma path is what closes the rest.
#include "common.cuh"
#include "dtype.cuh"
#include "params.h"

// One operand tile, in 16-byte chunks (same count for both shapes, as BM == BN).
#define MMA_TILE_CHUNKS (MMA_BM * MMA_BK / 8)
#define MMA_TILE_BYTES (MMA_TILE_CHUNKS * 16)
static_assert(MMA_BM == MMA_BN && MMA_BK == 32 && MMA_THREADS == 256,
              "the tile loaders and swizzles below assume 128 x 128 x 32 with 256 threads");
static_assert(MMA_SMEM_BYTES == 2 * MMA_STAGES * MMA_TILE_BYTES, "shared memory is 2 tiles per stage");

// The unit of the tiles: declaring dynamic shared memory of this type makes
// its base 16-byte aligned, as cp.async and ldmatrix need.
struct alignas(16) Chunk16 {
    u32 words[4];
};

// Swizzled chunk index of (row, 16-byte chunk c) in each tile shape.
__device__ __forceinline__ int k_contig_chunk(int row, int c) { return row * 4 + (c ^ ((row >> 1) & 3)); }
__device__ __forceinline__ int mn_contig_chunk(int row, int c) { return row * 16 + (c ^ (row & 7)); }

// One thread's share of loading one operand, tile after tile: two 16-byte
// chunks per tile, rows mn0.. of a K-contiguous operand (g[mn * ld + k]) or
// k-rows of an MN-contiguous one (g[k * ld + mn]), zero beyond mn_end and
// k_end. Addresses and limits are set up once; each tile only advances them,
// so the main loop spends few integer instructions per copy. ALIGNED: one
// zero-filling cp.async per chunk. Otherwise (operands cp.async cannot take)
// eight 2-byte loads per chunk and one 16-byte shared store: synchronous, so
// the pipeline only overlaps the math with other warps' loads, but correct.
template <bool K_CONTIG, bool ALIGNED>
struct TileLoader {
    const bf16* src[2];  // this chunk's source in the next tile
    int left[2];         // elements of the row (K_CONTIG) or k-rows (else) before the edge
    int mn_bytes[2];     // MN-contiguous: bytes of the chunk inside the matrix
    int dst;             // byte offset of chunk 0 in a tile; chunk 1 is 4 KiB further
    u64 step;            // elements from one tile to the next

    __device__ __forceinline__ TileLoader(const bf16* g, int ld, int mn0, int mn_end, int k_begin, int k_end,
                                          int tid) {
        dst = 16 * (K_CONTIG ? k_contig_chunk(tid >> 2, tid & 3) : mn_contig_chunk(tid >> 4, tid & 15));
#pragma unroll
        for (int i = 0; i < 2; i++) {
            // Chunk 1 is 64 K-contiguous rows or 16 k-rows further: the same
            // swizzle phase, 4 KiB on.
            const int q = tid + i * MMA_THREADS;
            if (K_CONTIG) {
                const int row = q >> 2, c = q & 3, mn = mn0 + row, k = k_begin + c * 8;
                src[i] = g + (u64)mn * ld + k;
                left[i] = mn < mn_end ? k_end - k : -(1 << 30);
                mn_bytes[i] = 16;
            } else {
                const int row = q >> 4, c = q & 15, mn = mn0 + c * 8, k = k_begin + row;
                src[i] = g + (u64)k * ld + mn;
                left[i] = k_end - k;
                mn_bytes[i] = min(max(mn_end - mn, 0), 8) * 2;
            }
        }
        step = K_CONTIG ? (u64)MMA_BK : (u64)MMA_BK * ld;
    }

    // Copies the next tile into `tile` and moves on to the one after.
    __device__ __forceinline__ void issue(char* tile) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int bytes;
            if (K_CONTIG)
                bytes = min(max(left[i], 0), 8) * 2;
            else
                bytes = left[i] > 0 ? mn_bytes[i] : 0;
            char* to = tile + dst + i * (MMA_TILE_BYTES / 2);
            if (ALIGNED) {
                cp_async_16_zfill(to, src[i], bytes);
            } else {
                Chunk16 chunk;
#pragma unroll
                for (int w = 0; w < 4; w++) {
                    const float lo = 2 * w < bytes / 2 ? to_f32(src[i][2 * w]) : 0.0f;
                    const float hi = 2 * w + 1 < bytes / 2 ? to_f32(src[i][2 * w + 1]) : 0.0f;
                    chunk.words[w] = pack_bf16x2(lo, hi);
                }
                *(Chunk16*)to = chunk;
            }
            src[i] += step;
            left[i] -= MMA_BK;
        }
    }
};

// The 16 (m or n) x 16 (k) block at mn_base, k step kk of a tile, as four
// 8 x 8 matrices, in fragment order. For A (B_ORDER false) matrix j covers
// (mn +8 (j % 2), k +8 (j / 2)): registers a0..a3. For B it covers
// (mn +8 (j / 2), k +8 (j % 2)): n-tile mn_base gets {r0, r1} and n-tile
// mn_base + 8 gets {r2, r3}, each pair already in consecutive registers.
template <bool K_CONTIG, bool B_ORDER>
__device__ __forceinline__ void load_fragment(u32 r[4], const char* tile, int mn_base, int kk, int lane) {
    const int j = lane >> 3, rr = lane & 7;
    const int mn_off = (B_ORDER ? j >> 1 : j & 1) * 8, k_off = (B_ORDER ? j & 1 : j >> 1) * 8;
    if (K_CONTIG) {
        const int row = mn_base + mn_off + rr, c = (kk * 16 + k_off) >> 3;
        ldmatrix_x4(r, tile + 16 * k_contig_chunk(row, c));
    } else {
        const int row = kk * 16 + k_off + rr, c = (mn_base + mn_off) >> 3;
        ldmatrix_x4_trans(r, tile + 16 * mn_contig_chunk(row, c));
    }
}

// GELU, tanh form (as activation_gelu_fwd_f32 and the CPU's gelu_fwd).
__device__ __forceinline__ float gelu_tanh(float x) {
    const float cube = 0.044715f * x * x * x;
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + cube)));
}

// Stores v0 at c[idx] and, when `two`, v1 at c[idx + 1]: one paired store
// when the pair is aligned for it.
__device__ __forceinline__ void store_pair(void* c, bool f32, u64 idx, float v0, float v1, bool two, bool paired) {
    if (f32) {
        float* cf = (float*)c + idx;
        if (two && paired) {
            *(u64*)cf = (u64)__float_as_uint(v0) | ((u64)__float_as_uint(v1) << 32);
        } else {
            cf[0] = v0;
            if (two) cf[1] = v1;
        }
    } else {
        bf16* cb = (bf16*)c + idx;
        if (two && paired) {
            *(u32*)cb = pack_bf16x2(v0, v1);
        } else {
            cb[0] = from_f32<bf16>(v0);
            if (two) cb[1] = from_f32<bf16>(v1);
        }
    }
}
__device__ __forceinline__ float load_elem(const void* c, bool f32, u64 idx) {
    return f32 ? ((const float*)c)[idx] : to_f32(((const bf16*)c)[idx]);
}

template <bool TRANS_A, bool TRANS_B, bool ALIGNED>
__device__ __forceinline__ void gemm_mma_body(const GemmBf16Params& p) {
    constexpr bool A_K = !TRANS_A;  // A stored [M, K]
    constexpr bool B_K = TRANS_B;   // B stored [N, K]
    DYN_SMEM(Chunk16, smem_chunks);
    char* const a_tiles = (char*)smem_chunks;
    char* const b_tiles = a_tiles + MMA_STAGES * MMA_TILE_BYTES;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp / MMA_WARPS_N, warp_n = warp % MMA_WARPS_N;
    const int m0 = blockIdx.y * MMA_BM, n0 = blockIdx.x * MMA_BN;
    // Uniform per block, before any barrier: the whole block leaves together.
    if (p.causal == GEMM_OUT_LOWER && n0 > m0 + MMA_BM - 1) return;

    const u64 outer = blockIdx.z / p.batch_inner, inner = blockIdx.z % p.batch_inner;
    const bf16* a = (const bf16*)p.a + outer * p.a_outer + inner * p.a_inner;
    const bf16* b = (const bf16*)p.b + outer * p.b_outer + inner * p.b_inner;
    const u64 c_off = outer * p.c_outer + inner * p.c_inner;

    int k_begin = 0, k_end = p.k;
    if (p.causal == GEMM_A_LOWER) k_end = min(p.k, m0 + MMA_BM);
    if (p.causal == GEMM_A_UPPER) k_begin = m0;
    const int k_tiles = k_end > k_begin ? (k_end - k_begin + MMA_BK - 1) / MMA_BK : 0;

    TileLoader<A_K, ALIGNED> a_loader(a, p.lda, m0, p.m, k_begin, k_end, tid);
    TileLoader<B_K, ALIGNED> b_loader(b, p.ldb, n0, p.n, k_begin, k_end, tid);

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    // Prologue: the first STAGES-1 tiles in flight. Every iteration commits
    // one group (empty past the end) so that wait<STAGES-2> always means
    // "tile kt has landed".
#pragma unroll
    for (int s = 0; s < MMA_STAGES - 1; s++) {
        if (s < k_tiles) {
            a_loader.issue(a_tiles + s * MMA_TILE_BYTES);
            b_loader.issue(b_tiles + s * MMA_TILE_BYTES);
        }
        cp_async_commit();
    }
    // Byte offsets of the stage read now and of the stage loaded next.
    int read_off = 0, write_off = (MMA_STAGES - 1) * MMA_TILE_BYTES;
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<MMA_STAGES - 2>();
        // Tile kt is visible to all, and every warp is done with tile kt-1,
        // whose stage the prefetch below overwrites.
        __syncthreads();
        if (kt + MMA_STAGES - 1 < k_tiles) {
            a_loader.issue(a_tiles + write_off);
            b_loader.issue(b_tiles + write_off);
        }
        cp_async_commit();

        const char* at = a_tiles + read_off;
        const char* bt = b_tiles + read_off;
        read_off = read_off == (MMA_STAGES - 1) * MMA_TILE_BYTES ? 0 : read_off + MMA_TILE_BYTES;
        write_off = write_off == (MMA_STAGES - 1) * MMA_TILE_BYTES ? 0 : write_off + MMA_TILE_BYTES;
#pragma unroll
        for (int kk = 0; kk < MMA_BK / 16; kk++) {
            u32 af[4][4], bfr[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) load_fragment<A_K, false>(af[mi], at, warp_m * 64 + mi * 16, kk, lane);
#pragma unroll
            for (int nj = 0; nj < 4; nj += 2) load_fragment<B_K, true>(&bfr[nj][0], bt, warp_n * 32 + nj * 8, kk, lane);
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int nj = 0; nj < 4; nj++) mma_m16n8k16_bf16_f32(acc[mi][nj], af[mi], bfr[nj]);
        }
    }

    // Epilogue straight from the accumulators: this lane holds rows g, g+8
    // and columns 2t, 2t+1 of each 16 x 8 tile.
    const int g = lane >> 2, t = lane & 3;
    const bool f32 = p.c_f32 != 0;
    const bf16* bias = (const bf16*)p.bias;
    // Paired stores need the pair's address aligned to twice the element.
    const u64 esize = f32 ? 4 : 2;
    const bool paired = (p.ldc % 2 == 0) && (c_off % 2 == 0) && ((u64)p.c % (2 * esize) == 0) &&
                        (!p.gelu || (u64)p.pre % (2 * esize) == 0);
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int gm = m0 + warp_m * 64 + mi * 16 + h * 8 + g;
            if (gm >= p.m) continue;
#pragma unroll
            for (int nj = 0; nj < 4; nj++) {
                const int gn = n0 + warp_n * 32 + nj * 8 + 2 * t;
                if (gn >= p.n) continue;
                const bool two = gn + 1 < p.n;
                const u64 idx = c_off + (u64)gm * p.ldc + gn;
                float v0 = p.alpha * acc[mi][nj][2 * h], v1 = p.alpha * acc[mi][nj][2 * h + 1];
                if (bias) {
                    v0 += to_f32(bias[gn]);
                    if (two) v1 += to_f32(bias[gn + 1]);
                }
                if (p.gelu) {
                    store_pair(p.pre, f32, idx, v0, v1, two, paired);
                    v0 = gelu_tanh(v0);
                    v1 = gelu_tanh(v1);
                }
                if (p.accumulate) {
                    v0 += load_elem(p.c, f32, idx);
                    if (two) v1 += load_elem(p.c, f32, idx + 1);
                }
                store_pair(p.c, f32, idx, v0, v1, two, paired);
            }
        }
}

// a, b: n = stored as the product reads it (A [M, K], B [K, N]), t = stored
// transposed (A [K, M], B [N, K]). The matmul forward (inp @ W^T) is nt, its
// input gradient nn, its weight gradient tn; q k^T is nt, att v nn, ds^T q tn.
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_nn_bf16(GemmBf16Params p) {
    gemm_mma_body<false, false, true>(p);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_nt_bf16(GemmBf16Params p) {
    gemm_mma_body<false, true, true>(p);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_tn_bf16(GemmBf16Params p) {
    gemm_mma_body<true, false, true>(p);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_tt_bf16(GemmBf16Params p) {
    gemm_mma_body<true, true, true>(p);
}

// The same for operands cp.async cannot copy (see the header): any address
// and leading dimension, at a lower speed.
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_nn_unaligned_bf16(GemmBf16Params p) {
    gemm_mma_body<false, false, false>(p);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_nt_unaligned_bf16(GemmBf16Params p) {
    gemm_mma_body<false, true, false>(p);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_tn_unaligned_bf16(GemmBf16Params p) {
    gemm_mma_body<true, false, false>(p);
}
extern "C" __global__ void __launch_bounds__(MMA_THREADS, 2) gemm_mma_tt_unaligned_bf16(GemmBf16Params p) {
    gemm_mma_body<true, true, false>(p);
}
