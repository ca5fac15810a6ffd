// Flash attention, forward: causal softmax(q k^T / sqrt(hs)) v with
// optional dropout on the probabilities, bf16 in and out, fp32 statistics.
// No T x T matrix exists anywhere; the kernel saves the per-row
// log-sum-exp (lse, f32) from which flash_bwd.cu recomputes the
// probabilities.
//
// Shape, and why:
// - One block per (64 query rows, head), four warps of 16 rows each. The Q
//   tile stays in shared memory (loaded into fragments per k-step, which
//   keeps registers for the 16 x DP output accumulator); K and V tiles of 64
//   keys stream past it through a two-stage cp.async pipeline, the next
//   tile's copies in flight while this one is used.
// - Per key tile and warp: S = Q K^T on tensor cores (16 x 64 fp32), the
//   online softmax in registers (running max and sum per row; each row
//   lives in the four lanes of a quad, so row statistics are two shuffles),
//   then P, rounded to bf16, goes straight from the S accumulators into the
//   A operand of O += P V (no shared-memory round trip).
// - Causality: a block reads only key tiles at or before its own; in the
//   diagonal tile each warp skips the 8-key groups wholly above its rows
//   (their probabilities are exactly zero) and masks the rest. Blocks with
//   the most key tiles are launched first.
// - Dropout: one Philox call per lane per 16 x 8 score tile covers exactly
//   the four elements the lane holds (philox.cuh); the kept probabilities
//   are scaled by 1 / (1 - p) once, at the end. The row sum, and so lse, is
//   of the probabilities before dropout.
// - Head sizes up to 64 use 64-column tiles, up to 128 use 128-column ones
//   (zero-padded in shared memory; the model is never padded). Copies are
//   16-byte cp.async when q, k, v rows allow it (head size a multiple of 8,
//   aligned base), else plain loads (see flash_load_tile).
// - exp2f on scores pre-multiplied by log2(e); the tolerance derivation is
//   in src/ops/attention/exact.rs.
#include "attention/flash.cuh"

template <int DP>
__device__ __forceinline__ void flash_fwd(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                                          float* __restrict__ lse, int seq, int channels, int heads, float p,
                                          u64 seed, u64 offset, int aligned) {
    static_assert(FLASH_BLOCK_M == FLASH_BLOCK_N && FLASH_BLOCK_N == 64 && FLASH_THREADS == 128,
                  "four warps of 16 query rows, key tiles as tall as query tiles (the diagonal logic)");
    static_assert((FLASH_BLOCK_M + 4 * FLASH_BLOCK_N) * DP * 2 == (DP == 64 ? FLASH_FWD_SMEM_64 : FLASH_FWD_SMEM_128),
                  "params.h's shared-memory size is this layout's");
    DYN_SMEM(FlashChunk, smem);
    char* const q_tile = (char*)smem;
    // Stage s: K at kv_tiles + 2 s kv.TILE, V right after it (FlashKvStream).
    char* const kv_tiles = q_tile + FLASH_BLOCK_M * DP * 2;

    const FlashHead hd(seq, channels, heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int q_block = gridDim.x - 1 - blockIdx.x;  // the longest rows first
    const int q0 = q_block * FLASH_BLOCK_M, n_tiles = q_block + 1;
    const u64 ld = hd.qkv_ld();
    const bool al = aligned != 0;
    const FlashKvStream<DP> kv{kv_tiles, qkv + hd.qkv_row + channels, ld, seq, hd.hs, channels, al};

    flash_load_tile<FLASH_BLOCK_M, DP>(q_tile, qkv + hd.qkv_row + (u64)q0 * ld, ld, seq - q0, hd.hs, al);
    kv.load(0);
    cp_async_commit();

    const float scale_log2 = FLASH_LOG2E / sqrtf((float)hd.hs);
    const FlashDropout drop(p, seed, offset, hd.bh);
    const int row = q0 + warp * 16 + g;  // this lane's rows: row, row + 8
    float o[DP / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < DP / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[nt][e] = 0.0f;

    for (int kt = 0; kt < n_tiles; kt++) {
        const int k0 = kt * FLASH_BLOCK_N;
        const char* k_tile = kv.advance(kt, n_tiles);
        const char* v_tile = k_tile + kv.TILE;
        // In the diagonal tile this warp's rows see only keys below
        // 16 (warp + 1): 2 warp + 2 groups of 8, i.e. warp + 1 of 16.
        const bool diag = kt == n_tiles - 1;
        const int pairs = diag ? warp + 1 : 4;

        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; kk++) {
            u32 a[4];
            flash_load_a<DP>(a, q_tile, warp * 16, kk, lane);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                if (np >= pairs) continue;
                u32 b[4];
                flash_load_b_rows_n<DP>(b, k_tile, np * 16, kk, lane);
                mma_m16n8k16_bf16_f32(s[2 * np], a, b);
                mma_m16n8k16_bf16_f32(s[2 * np + 1], a, b + 2);
            }
        }

        // Scores in log2 units, masked; the rows' new maxima.
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = row + 8 * (e >> 1), j = k0 + nt * 8 + 2 * t + (e & 1);
                float v = s[nt][e] * scale_log2;
                if (nt >= 2 * pairs || (diag && j > i)) v = -INFINITY;
                s[nt][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = flash_quad_max(mx[r]);
            // A row with no key yet keeps max -inf; its sums stay zero.
            const float corr = mx[r] == -INFINITY ? 1.0f : exp2f(m[r] - mx[r]);
            l[r] *= corr;
#pragma unroll
            for (int nt = 0; nt < DP / 8; nt++) {
                o[nt][2 * r] *= corr;
                o[nt][2 * r + 1] *= corr;
            }
            m[r] = mx[r];
        }
        // Probabilities (unnormalized), their row sums before dropout, and
        // the dropped ones that multiply V.
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            if (nt >= 2 * pairs) continue;
            const u32 keep = drop.on ? drop.keep_bits((u32)row, (u32)(k0 + nt * 8 + 2 * t)) : 0xfu;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float base = m[e >> 1] == -INFINITY ? 0.0f : m[e >> 1];
                const float pr = exp2f(s[nt][e] - base);
                l[e >> 1] += pr;
                s[nt][e] = (keep >> e) & 1 ? pr : 0.0f;
            }
        }
        flash_scores_times_tile<DP>(o, s, pairs, v_tile, lane);
        __syncthreads();  // every warp is done with this stage before it is refilled
    }

    // O = dropout scale * o / l; lse = ln(sum) = (m + log2(l)) ln 2.
    float row_scale[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] = flash_quad_sum(l[r]);
        row_scale[r] = (drop.on ? drop.scale : 1.0f) / l[r];
        const int i = row + 8 * r;
        if (t == 0 && i < seq) lse[hd.bh * seq + i] = (m[r] + log2f(l[r])) * FLASH_LN2;
    }
    flash_store_rows<DP>(out + hd.out_row + (u64)q0 * hd.out_ld(), hd.out_ld(), warp * 16, seq - q0, hd.hs, o,
                         row_scale, false, lane);
}

// qkv [B, T, 3C], out [B, T, C] (bf16); lse [B, heads, T]. Grid
// (ceil(T / 64), B * heads), FLASH_THREADS threads, FLASH_FWD_SMEM_<DP>
// bytes of dynamic shared memory. `aligned`: 16-byte copies are allowed.
extern "C" __global__ void __launch_bounds__(FLASH_THREADS) attention_flash_fwd_d64_bf16(
    const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse, int seq, int channels, int heads,
    float p, u64 seed, u64 offset, int aligned) {
    flash_fwd<64>(qkv, out, lse, seq, channels, heads, p, seed, offset, aligned);
}
extern "C" __global__ void __launch_bounds__(FLASH_THREADS) attention_flash_fwd_d128_bf16(
    const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse, int seq, int channels, int heads,
    float p, u64 seed, u64 offset, int aligned) {
    flash_fwd<128>(qkv, out, lse, seq, channels, heads, p, seed, offset, aligned);
}
