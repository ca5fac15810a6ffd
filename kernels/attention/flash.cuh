// What the flash attention kernels share (flash_fwd.cu, flash_bwd.cu): the
// geometry of one head in the fused layouts, the swizzled shared-memory
// tiles and their cp.async loader, the ldmatrix fragment loads, row
// statistics over a lane quad, dropout factors in fragment layout, and the
// epilogue stores.
//
// Layouts: qkv [B, T, 3C] (q, k, v of head h at columns h*hs, C + h*hs,
// 2C + h*hs), out and dout [B, T, C], lse and delta [B, heads, T] (f32).
//
// Tiles: a tile holds ROWS rows of one head's q, k, v, out or dout, padded
// to DP = 64 or 128 columns with zeros (head sizes up to 64 and up to 128;
// the model is never padded), as 16-byte chunks. Chunk c of row r sits at
// c ^ (r % 8) within its row: the 8 rows one ldmatrix matrix reads (plain or
// .trans) and the chunks a quarter-warp of cp.async writes fall into 8
// different 4-bank groups, without padding.
//
// Tensor-core fragments (common.cuh): per warp, A is 16 rows x 16 k, B is
// 16 k x 8 n (two n-tiles per ldmatrix.x4), C is 16 x 8 fp32 with this lane
// holding rows g = lane / 4 and g + 8, columns 2t and 2t + 1 (t = lane % 4).
// A score tile in C layout becomes the A operand of the next product without
// leaving registers (flash_c_to_a): two 16 x 8 C tiles are one 16 x 16 A.
#pragma once

#include "common.cuh"
#include "dtype.cuh"
#include "params.h"
#include "philox.cuh"
#include "reduce.cuh"

#define FLASH_LOG2E 1.4426950408889634f
#define FLASH_LN2 0.6931471805599453f

// The unit of the tiles; declaring dynamic shared memory of this type makes
// it 16-byte aligned, as cp.async and ldmatrix need.
struct alignas(16) FlashChunk {
    u32 w[4];
};

// One (sequence, head) of a call: blockIdx.y is b * heads + h.
struct FlashHead {
    int seq, channels, heads, hs;
    u64 bh;       // b * heads + h: the index of this head's rows in lse/delta
    u64 qkv_row;  // element offset of (b, t = 0, q of head h) in qkv
    u64 out_row;  // element offset of (b, t = 0, head h) in out/dout
    __device__ __forceinline__ FlashHead(int seq_, int channels_, int heads_)
        : seq(seq_), channels(channels_), heads(heads_), hs(channels_ / heads_), bh(blockIdx.y) {
        const u64 b = bh / heads, h = bh % heads;
        qkv_row = b * seq * 3 * channels + h * hs;
        out_row = b * seq * channels + h * hs;
    }
    // Row stride of qkv and of out/dout, in elements.
    __device__ __forceinline__ u64 qkv_ld() const { return 3 * (u64)channels; }
    __device__ __forceinline__ u64 out_ld() const { return (u64)channels; }
};

// Byte offset of chunk c of row r in a tile of DP columns.
template <int DP>
__device__ __forceinline__ int flash_chunk(int row, int c) {
    static_assert(DP == 64 || DP == 128, "tiles are 64 or 128 columns");
    return 16 * (row * (DP / 8) + (c ^ (row & 7)));
}

// Copies rows 0..ROWS-1 of a matrix (row 0 at `src`, rows `ld` elements
// apart) into a tile, zero past `rows_left` rows and `hs` columns. With
// `aligned` (src and ld allow 16-byte copies: the launcher checks) the
// copies are cp.async, issued now and landed by a later cp_async_wait and
// barrier; otherwise plain 2-byte loads and a 16-byte shared store, done on
// return (any head size, any alignment; slower, and the pipeline then only
// overlaps one warp's loads with another's math).
template <int ROWS, int DP>
__device__ __forceinline__ void flash_load_tile(char* tile, const bf16* src, u64 ld, int rows_left, int hs,
                                                bool aligned) {
    constexpr int CH = DP / 8;
    for (int q = threadIdx.x; q < ROWS * CH; q += FLASH_THREADS) {
        const int row = q / CH, c = q % CH;
        const int cols = row < rows_left ? min(max(hs - c * 8, 0), 8) : 0;
        char* dst = tile + flash_chunk<DP>(row, c);
        // A chunk with nothing to read keeps a valid address (row 0).
        const bf16* from = cols > 0 ? src + (u64)row * ld + c * 8 : src;
        if (aligned) {
            cp_async_16_zfill(dst, from, 2 * cols);
        } else {
            FlashChunk chunk;
#pragma unroll
            for (int w = 0; w < 4; w++) {
                const float lo = 2 * w < cols ? to_f32(from[2 * w]) : 0.0f;
                const float hi = 2 * w + 1 < cols ? to_f32(from[2 * w + 1]) : 0.0f;
                chunk.w[w] = pack_bf16x2(lo, hi);
            }
            *(FlashChunk*)dst = chunk;
        }
    }
}

// The key/value stream of the forward and dq kernels: two pipeline stages
// at `tiles`, each a K tile of FLASH_BLOCK_N keys followed by its V tile.
template <int DP>
struct FlashKvStream {
    static constexpr int TILE = FLASH_BLOCK_N * DP * 2;  // bytes of one K or V tile
    char* tiles;
    const bf16* k_src;  // key 0 of this head in qkv; its v is `channels` later
    u64 ld;
    int seq, hs, channels;
    bool aligned;
    // Issues the copies of key tile kt into stage kt % 2.
    __device__ __forceinline__ void load(int kt) const {
        char* stage = tiles + (kt & 1) * 2 * TILE;
        const int k0 = kt * FLASH_BLOCK_N;
        const bf16* k = k_src + (u64)k0 * ld;
        flash_load_tile<FLASH_BLOCK_N, DP>(stage, k, ld, seq - k0, hs, aligned);
        flash_load_tile<FLASH_BLOCK_N, DP>(stage + TILE, k + channels, ld, seq - k0, hs, aligned);
    }
    // Starts the copies of tile kt + 1 (if any), waits until tile kt (from
    // the call before, or the prologue's load(0) and commit) has landed for
    // every thread, and returns its K tile (V follows at + TILE).
    __device__ __forceinline__ const char* advance(int kt, int n_tiles) const {
        if (kt + 1 < n_tiles) load(kt + 1);
        cp_async_commit();
        cp_async_wait<1>();  // tile kt has landed (the group after it may be empty)
        __syncthreads();
        return tiles + (kt & 1) * 2 * TILE;
    }
};

// A operand: rows row0..row0+15, k columns 16 kk..16 kk+15 of a tile.
template <int DP>
__device__ __forceinline__ void flash_load_a(u32 a[4], const char* tile, int row0, int kk, int lane) {
    const int j = lane >> 3, row = row0 + (j & 1) * 8 + (lane & 7);
    ldmatrix_x4(a, tile + flash_chunk<DP>(row, 2 * kk + (j >> 1)));
}

// B operands of two n-tiles from a tile whose rows are n (k along the row,
// as K for q k^T): rows n0..n0+15, k columns 16 kk..: {b[0], b[1]} for
// n-tile n0, {b[2], b[3]} for n0 + 8.
template <int DP>
__device__ __forceinline__ void flash_load_b_rows_n(u32 b[4], const char* tile, int n0, int kk, int lane) {
    const int j = lane >> 3, row = n0 + (j >> 1) * 8 + (lane & 7);
    ldmatrix_x4(b, tile + flash_chunk<DP>(row, 2 * kk + (j & 1)));
}

// B operands of two n-tiles from a tile whose rows are k (as V for p v):
// k rows 16 kk..16 kk+15, columns n0..n0+15, through ldmatrix.trans.
template <int DP>
__device__ __forceinline__ void flash_load_b_rows_k(u32 b[4], const char* tile, int kk, int n0, int lane) {
    const int j = lane >> 3, row = 16 * kk + (j & 1) * 8 + (lane & 7);
    ldmatrix_x4_trans(b, tile + flash_chunk<DP>(row, (n0 >> 3) + (j >> 1)));
}

// The A operand of k-step kk from two C-layout tiles (columns 16 kk..+7 and
// 16 kk+8..+15 of a 16-row result), rounded to bf16.
__device__ __forceinline__ void flash_c_to_a(u32 a[4], const float lo[4], const float hi[4]) {
    a[0] = pack_bf16x2(lo[0], lo[1]);
    a[1] = pack_bf16x2(lo[2], lo[3]);
    a[2] = pack_bf16x2(hi[0], hi[1]);
    a[3] = pack_bf16x2(hi[2], hi[3]);
}

// acc (16 x DP, C layout) += S T for a warp's 16 x 64 score tile S in C
// layout (only its first `pairs` 16-key groups; the rest are zero) and a
// tile T whose rows are those keys (V in the forward, K for dq): S goes from
// the accumulators into A operands without leaving registers.
template <int DP>
__device__ __forceinline__ void flash_scores_times_tile(float acc[DP / 8][4], float s[8][4], int pairs,
                                                        const char* tile, int lane) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        if (kk >= pairs) continue;
        u32 a[4];
        flash_c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int np = 0; np < DP / 16; np++) {
            u32 b[4];
            flash_load_b_rows_k<DP>(b, tile, kk, np * 16, lane);
            mma_m16n8k16_bf16_f32(acc[2 * np], a, b);
            mma_m16n8k16_bf16_f32(acc[2 * np + 1], a, b + 2);
        }
    }
}

// A row's maximum and sum over the four lanes of a quad (the lanes that
// hold one row of a C tile).
__device__ __forceinline__ float flash_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}
__device__ __forceinline__ float flash_quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

// Attention dropout of one head (philox.cuh; crate::rng::attention_dropout_words).
struct FlashDropout {
    bool on;
    u32 threshold;
    float scale;  // 1 / (1 - p)
    u64 seed, head;
    __device__ __forceinline__ FlashDropout(float p, u64 seed_, u64 offset, u64 bh)
        : on(p > 0.0f), threshold(dropout_threshold(p)), scale(1.0f / (1.0f - p)), seed(seed_), head(offset + bh) {}
    // Which of this lane's four C elements (i, j), (i, j + 1), (i + 8, j),
    // (i + 8, j + 1) are kept (bit e for element e): one Philox call, as
    // i % 16 < 8 and j is even in every tile the kernels ask about.
    __device__ __forceinline__ u32 keep_bits(u32 i, u32 j) const {
        const Philox4 w = attn_dropout_words(seed, head, i, j);
        u32 bits = 0;
#pragma unroll
        for (int e = 0; e < 4; e++) bits |= (u32)dropout_keeps(w.v[e], threshold) << e;
        return bits;
    }
};

// Stores (or, with `accumulate`, adds to what is there) a warp's 16 x DP
// fp32 result in C layout, row r multiplied by row_scale[r >= 8], into rows
// row0.. (those below rows_left) and columns < hs of a bf16 matrix at `dst`
// (row stride ld). Two columns at a time where the pair is 4-byte aligned.
template <int DP>
__device__ __forceinline__ void flash_store_rows(bf16* dst, u64 ld, int row0, int rows_left, int hs,
                                                 const float acc[DP / 8][4], const float row_scale[2],
                                                 bool accumulate, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const bool paired = ((u64)dst % 4 == 0) && (ld % 2 == 0);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int row = row0 + g + 8 * half;
        if (row >= rows_left) continue;
        bf16* out = dst + (u64)row * ld;
#pragma unroll
        for (int nt = 0; nt < DP / 8; nt++) {
            const int col = nt * 8 + 2 * t;
            if (col >= hs) continue;
            float v0 = acc[nt][2 * half] * row_scale[half], v1 = acc[nt][2 * half + 1] * row_scale[half];
            const bool two = col + 1 < hs;
            if (accumulate) {
                v0 += to_f32(out[col]);
                if (two) v1 += to_f32(out[col + 1]);
            }
            if (two && paired) {
                *(u32*)(out + col) = pack_bf16x2(v0, v1);
            } else {
                out[col] = from_f32<bf16>(v0);
                if (two) out[col + 1] = from_f32<bf16>(v1);
            }
        }
    }
}
