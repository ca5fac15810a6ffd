// Flash attention, backward: dqkv += the gradient of flash_fwd.cu's output,
// from q, k, v, the forward's out and lse and the output gradient dout,
// recomputing the probabilities P = exp(S - lse) tile by tile (no T x T
// matrix). With A = P * F (F the dropout factors, drawn again from the seed),
// D = rowsum(dout * out), dS = P * (F * (dout v^T) - D):
// dv = A^T dout, dk = dS^T q / sqrt(hs), dq = dS k / sqrt(hs).
//
// Two kernels, in this order, and why two: a block that owns a key tile can
// sum dk and dv over every query, but dq of one query gathers from every key
// tile, i.e. from many blocks. Adding those with float atomics would make
// the result depend on the order blocks finish; instead dq has a kernel of
// its own, shaped like the forward (a block owns 64 query rows and walks the
// key tiles), which recomputes S and dout v^T: about 40% more tensor-core
// work than the atomic version (7 products of T x T x hs instead of 5),
// deterministic, every element of dqkv written by one thread.
// - attention_flash_bwd_dq_*: per (64 queries, head): D for its rows (written
//   to `delta` for the next kernel), then per key tile S = Q K^T,
//   dP = dout V^T, dS in registers, dq += dS K.
// - attention_flash_bwd_dkdv_*: per (64 keys, head), each warp owning 16
//   keys, walking the query tiles at or after the keys: S^T = K Q^T and
//   dP^T = V dout^T (keys as rows, so that A^T and dS^T come out of the
//   accumulators already in A-operand layout), dv += A^T dout,
//   dk += dS^T Q. The queries go in steps of 64 (32 for 128-column heads, so
//   that dk, dv and the two score tiles fit the registers) through a
//   two-stage cp.async pipeline, with their lse and delta.
// Dropout masks: the dq kernel holds S in the forward's layout, one Philox
// call per lane per 16 x 8 tile. The dk/dv kernel holds S^T, whose four
// elements per lane belong to four different calls; so each lane draws its
// calls in the forward's layout (at most 32 bits: 64 queries x 16 keys per
// warp) and fetches the bits of its transposed elements from the two lanes
// that hold them with two shuffles: the same cost as the forward.
#include "attention/flash.cuh"

template <int DP>
__device__ __forceinline__ void flash_bwd_dq(bf16* __restrict__ dqkv, float* __restrict__ delta,
                                             const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                             const float* __restrict__ lse, const bf16* __restrict__ qkv, int seq,
                                             int channels, int heads, float p, u64 seed, u64 offset, int aligned) {
    static_assert(FLASH_BLOCK_M == FLASH_BLOCK_N && FLASH_BLOCK_N == 64 && FLASH_THREADS == 128,
                  "four warps of 16 query rows, key tiles as tall as query tiles");
    static_assert((2 * FLASH_BLOCK_M + 4 * FLASH_BLOCK_N) * DP * 2 == (DP == 64 ? FLASH_DQ_SMEM_64 : FLASH_DQ_SMEM_128),
                  "params.h's shared-memory size is this layout's");
    DYN_SMEM(FlashChunk, smem);
    char* const q_tile = (char*)smem;
    char* const do_tile = q_tile + FLASH_BLOCK_M * DP * 2;
    char* const kv_tiles = do_tile + FLASH_BLOCK_M * DP * 2;

    const FlashHead hd(seq, channels, heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int q_block = gridDim.x - 1 - blockIdx.x;
    const int q0 = q_block * FLASH_BLOCK_M, n_tiles = q_block + 1;
    const u64 ld = hd.qkv_ld();
    const bool al = aligned != 0;
    const FlashKvStream<DP> kv{kv_tiles, qkv + hd.qkv_row + channels, ld, seq, hd.hs, channels, al};

    flash_load_tile<FLASH_BLOCK_M, DP>(q_tile, qkv + hd.qkv_row + (u64)q0 * ld, ld, seq - q0, hd.hs, al);
    flash_load_tile<FLASH_BLOCK_M, DP>(do_tile, dout + hd.out_row + (u64)q0 * hd.out_ld(), hd.out_ld(), seq - q0,
                                       hd.hs, al);
    kv.load(0);
    cp_async_commit();

    // D = rowsum(dout * out) of the warp's 16 rows, in fp32 from global
    // memory (while the copies fly); kept for this lane's rows, and written
    // to `delta` for the dk/dv kernel. Rows past the end: D = 0 and lse
    // = +inf, so their probabilities and dS are exactly zero.
    const int row = q0 + warp * 16 + g;
    float d_row[2] = {0.0f, 0.0f}, lse2[2];
    for (int r = 0; r < 16; r++) {
        const int i = q0 + warp * 16 + r;
        float acc = 0.0f;
        if (i < seq) {
            const u64 at = hd.out_row + (u64)i * hd.out_ld();
            for (int c = lane; c < hd.hs; c += 32) acc += to_f32(dout[at + c]) * to_f32(out[at + c]);
        }
        acc = warp_sum(acc);
        if (r == g) d_row[0] = acc;
        if (r == g + 8) d_row[1] = acc;
        if (lane == 0 && i < seq) delta[hd.bh * seq + i] = acc;
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = row + 8 * r;
        lse2[r] = i < seq ? lse[hd.bh * seq + i] * FLASH_LOG2E : INFINITY;
    }

    const float scale = 1.0f / sqrtf((float)hd.hs), scale_log2 = scale * FLASH_LOG2E;
    const FlashDropout drop(p, seed, offset, hd.bh);
    float dq[DP / 8][4];
#pragma unroll
    for (int nt = 0; nt < DP / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dq[nt][e] = 0.0f;

    for (int kt = 0; kt < n_tiles; kt++) {
        const int k0 = kt * FLASH_BLOCK_N;
        const char* k_tile = kv.advance(kt, n_tiles);
        const char* v_tile = k_tile + kv.TILE;
        const bool diag = kt == n_tiles - 1;
        const int pairs = diag ? warp + 1 : 4;  // 16-key groups at or below this warp's rows

        // S = Q K^T and dP = dout V^T, 16 x 64 per warp.
        float s[8][4], dp[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; kk++) {
            u32 aq[4], ad[4];
            flash_load_a<DP>(aq, q_tile, warp * 16, kk, lane);
            flash_load_a<DP>(ad, do_tile, warp * 16, kk, lane);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                if (np >= pairs) continue;
                u32 b[4];
                flash_load_b_rows_n<DP>(b, k_tile, np * 16, kk, lane);
                mma_m16n8k16_bf16_f32(s[2 * np], aq, b);
                mma_m16n8k16_bf16_f32(s[2 * np + 1], aq, b + 2);
                flash_load_b_rows_n<DP>(b, v_tile, np * 16, kk, lane);
                mma_m16n8k16_bf16_f32(dp[2 * np], ad, b);
                mma_m16n8k16_bf16_f32(dp[2 * np + 1], ad, b + 2);
            }
        }
        // dS = P * (F * dP - D), in place of S.
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            if (nt >= 2 * pairs) continue;
            const u32 keep = drop.on ? drop.keep_bits((u32)row, (u32)(k0 + nt * 8 + 2 * t)) : 0xfu;
            const float f = drop.on ? drop.scale : 1.0f;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = row + 8 * (e >> 1), j = k0 + nt * 8 + 2 * t + (e & 1);
                const float pr = diag && j > i ? 0.0f : exp2f(s[nt][e] * scale_log2 - lse2[e >> 1]);
                s[nt][e] = pr * (((keep >> e) & 1 ? f : 0.0f) * dp[nt][e] - d_row[e >> 1]);
            }
        }
        // dq += dS K.
        flash_scores_times_tile<DP>(dq, s, pairs, k_tile, lane);
        __syncthreads();
    }
    const float row_scale[2] = {scale, scale};
    flash_store_rows<DP>(dqkv + hd.qkv_row + (u64)q0 * ld, ld, warp * 16, seq - q0, hd.hs, dq, row_scale, true,
                         lane);
}

template <int DP, int QB>
__device__ __forceinline__ void flash_bwd_dkdv(bf16* __restrict__ dqkv, const float* __restrict__ delta,
                                               const bf16* __restrict__ dout, const float* __restrict__ lse,
                                               const bf16* __restrict__ qkv, int seq, int channels, int heads,
                                               float p, u64 seed, u64 offset, int aligned) {
    constexpr int TILE = FLASH_BLOCK_N * DP * 2;  // a K or V tile
    constexpr int QTILE = QB * DP * 2;            // a Q or dout tile
    constexpr int NQ = QB / 8;                    // 8-query groups per step
    static_assert(FLASH_BLOCK_N == 64 && FLASH_THREADS == 128 && FLASH_BLOCK_N % QB == 0 && QB % 16 == 0,
                  "four warps of 16 keys; query steps divide the key tile");
    static_assert(2 * TILE + 4 * QTILE + 4 * QB * 4 == (DP == 64 ? FLASH_DKDV_SMEM_64 : FLASH_DKDV_SMEM_128),
                  "params.h's shared-memory size is this layout's");
    static_assert(QB / 16 * 2 * 4 <= 32, "one lane's dropout bits of a step fit 32 bits");
    DYN_SMEM(FlashChunk, smem);
    char* const k_tile = (char*)smem;
    char* const v_tile = k_tile + TILE;
    // Stage s: Q at qd_tiles + 2 s QTILE, dout after it; lse2 and delta of the
    // stage's queries at stats + 2 s QB and stats + (2 s + 1) QB.
    char* const qd_tiles = v_tile + TILE;
    float* const stats = (float*)(qd_tiles + 4 * QTILE);

    const FlashHead hd(seq, channels, heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int k0 = blockIdx.x * FLASH_BLOCK_N;  // the first key tiles have the most queries
    const int kw = k0 + warp * 16;              // this warp's first key
    const u64 ld = hd.qkv_ld();
    const bf16* const q_src = qkv + hd.qkv_row;
    const bf16* const do_src = dout + hd.out_row;
    const bool al = aligned != 0;
    const int steps = (seq - k0 + QB - 1) / QB;  // queries k0.. in steps of QB

    flash_load_tile<FLASH_BLOCK_N, DP>(k_tile, q_src + channels + (u64)k0 * ld, ld, seq - k0, hd.hs, al);
    flash_load_tile<FLASH_BLOCK_N, DP>(v_tile, q_src + 2 * channels + (u64)k0 * ld, ld, seq - k0, hd.hs, al);
    // Copies step `it`'s Q and dout tiles (cp.async) and its lse, scaled to
    // log2 units, and delta (plain loads) into stage it % 2. Rows past the
    // end: lse = +inf, delta = 0, so they add nothing.
    auto load_step = [&](int it) {
        const int qs = k0 + it * QB, s = it & 1;
        char* tiles = qd_tiles + 2 * s * QTILE;
        flash_load_tile<QB, DP>(tiles, q_src + (u64)qs * ld, ld, seq - qs, hd.hs, al);
        flash_load_tile<QB, DP>(tiles + QTILE, do_src + (u64)qs * hd.out_ld(), hd.out_ld(), seq - qs, hd.hs, al);
        for (int x = threadIdx.x; x < QB; x += FLASH_THREADS) {
            const int i = qs + x;
            stats[2 * s * QB + x] = i < seq ? lse[hd.bh * seq + i] * FLASH_LOG2E : INFINITY;
            stats[(2 * s + 1) * QB + x] = i < seq ? delta[hd.bh * seq + i] : 0.0f;
        }
    };
    load_step(0);
    cp_async_commit();

    const float scale = 1.0f / sqrtf((float)hd.hs), scale_log2 = scale * FLASH_LOG2E;
    const FlashDropout drop(p, seed, offset, hd.bh);
    float dk[DP / 8][4], dv[DP / 8][4];
#pragma unroll
    for (int nt = 0; nt < DP / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[nt][e] = dv[nt][e] = 0.0f;
    // The lanes that hold, in the forward's layout, the dropout bits of this
    // lane's transposed elements (see the header): element e uses src[e & 1].
    const int src[2] = {4 * (2 * t) + (g >> 1), 4 * (2 * t + 1) + (g >> 1)};

    for (int it = 0; it < steps; it++) {
        if (it + 1 < steps) load_step(it + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int qs = k0 + it * QB, s = it & 1;
        const char* q_tile = qd_tiles + 2 * s * QTILE;
        const char* do_tile = q_tile + QTILE;
        const float* lse2 = stats + 2 * s * QB;
        const float* d_col = stats + (2 * s + 1) * QB;
        // Keys past every query of this step contribute nothing.
        if (kw < qs + QB) {
            const bool masked = kw + 15 > qs;  // some key of the warp is after some query
            // S^T = K Q^T and dP^T = V dout^T: 16 keys x QB queries.
            float st[NQ][4], dpt[NQ][4];
#pragma unroll
            for (int nt = 0; nt < NQ; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < DP / 16; kk++) {
                u32 ak[4], av[4];
                flash_load_a<DP>(ak, k_tile, warp * 16, kk, lane);
                flash_load_a<DP>(av, v_tile, warp * 16, kk, lane);
#pragma unroll
                for (int np = 0; np < NQ / 2; np++) {
                    u32 b[4];
                    flash_load_b_rows_n<DP>(b, q_tile, np * 16, kk, lane);
                    mma_m16n8k16_bf16_f32(st[2 * np], ak, b);
                    mma_m16n8k16_bf16_f32(st[2 * np + 1], ak, b + 2);
                    flash_load_b_rows_n<DP>(b, do_tile, np * 16, kk, lane);
                    mma_m16n8k16_bf16_f32(dpt[2 * np], av, b);
                    mma_m16n8k16_bf16_f32(dpt[2 * np + 1], av, b + 2);
                }
            }
            // Dropout bits: this lane's calls in the forward's layout
            // (queries as rows: tile (mi, ni) = queries qs + 16 mi.., keys
            // kw + 8 ni..), then the two lanes holding its transposed ones.
            u32 have[2] = {0xffffffffu, 0xffffffffu};
            if (drop.on) {
                u32 mine = 0;
#pragma unroll
                for (int mi = 0; mi < QB / 16; mi++)
#pragma unroll
                    for (int ni = 0; ni < 2; ni++)
                        mine |= drop.keep_bits((u32)(qs + 16 * mi + g), (u32)(kw + 8 * ni + 2 * t)) << (4 * (2 * mi + ni));
                have[0] = __shfl_sync(FULL_MASK, mine, src[0]);
                have[1] = __shfl_sync(FULL_MASK, mine, src[1]);
            }
            // A^T = P^T F into st, dS^T = P^T (F dP^T - D) into dpt. Element
            // e of n-tile nt: key kw + g + 8 (e / 2), query qs + 8 nt + 2 t + e % 2.
#pragma unroll
            for (int nt = 0; nt < NQ; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = nt * 8 + 2 * t + (e & 1);
                    const int j = kw + g + 8 * (e >> 1), i = qs + col;
                    const int bit = ((nt >> 1) * 2 + (e >> 1)) * 4 + (nt & 1) * 2 + (g & 1);
                    const float f = (have[e & 1] >> bit) & 1 ? (drop.on ? drop.scale : 1.0f) : 0.0f;
                    const float pr = masked && j > i ? 0.0f : exp2f(st[nt][e] * scale_log2 - lse2[col]);
                    st[nt][e] = pr * f;
                    dpt[nt][e] = pr * (f * dpt[nt][e] - d_col[col]);
                }
            // dv += A^T dout, dk += dS^T Q (k-steps over the step's queries).
#pragma unroll
            for (int kk = 0; kk < QB / 16; kk++) {
                u32 aa[4], as[4];
                flash_c_to_a(aa, st[2 * kk], st[2 * kk + 1]);
                flash_c_to_a(as, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                for (int np = 0; np < DP / 16; np++) {
                    u32 b[4];
                    flash_load_b_rows_k<DP>(b, do_tile, kk, np * 16, lane);
                    mma_m16n8k16_bf16_f32(dv[2 * np], aa, b);
                    mma_m16n8k16_bf16_f32(dv[2 * np + 1], aa, b + 2);
                    flash_load_b_rows_k<DP>(b, q_tile, kk, np * 16, lane);
                    mma_m16n8k16_bf16_f32(dk[2 * np], as, b);
                    mma_m16n8k16_bf16_f32(dk[2 * np + 1], as, b + 2);
                }
            }
        }
        __syncthreads();
    }
    const float k_scale[2] = {scale, scale}, v_scale[2] = {1.0f, 1.0f};
    bf16* const dk_dst = dqkv + hd.qkv_row + channels + (u64)k0 * ld;
    flash_store_rows<DP>(dk_dst, ld, warp * 16, seq - k0, hd.hs, dk, k_scale, true, lane);
    flash_store_rows<DP>(dk_dst + channels, ld, warp * 16, seq - k0, hd.hs, dv, v_scale, true, lane);
}

// dqkv, qkv [B, T, 3C], dout, out [B, T, C] (bf16); lse, delta [B, heads, T]
// (f32). Grid (ceil(T / 64), B * heads), FLASH_THREADS threads,
// FLASH_DQ_SMEM_<DP> / FLASH_DKDV_SMEM_<DP> bytes of dynamic shared memory;
// the dq kernel first (it writes delta).
extern "C" __global__ void __launch_bounds__(FLASH_THREADS) attention_flash_bwd_dq_d64_bf16(
    bf16* __restrict__ dqkv, float* __restrict__ delta, const bf16* __restrict__ dout, const bf16* __restrict__ out,
    const float* __restrict__ lse, const bf16* __restrict__ qkv, int seq, int channels, int heads, float p, u64 seed,
    u64 offset, int aligned) {
    flash_bwd_dq<64>(dqkv, delta, dout, out, lse, qkv, seq, channels, heads, p, seed, offset, aligned);
}
extern "C" __global__ void __launch_bounds__(FLASH_THREADS) attention_flash_bwd_dq_d128_bf16(
    bf16* __restrict__ dqkv, float* __restrict__ delta, const bf16* __restrict__ dout, const bf16* __restrict__ out,
    const float* __restrict__ lse, const bf16* __restrict__ qkv, int seq, int channels, int heads, float p, u64 seed,
    u64 offset, int aligned) {
    flash_bwd_dq<128>(dqkv, delta, dout, out, lse, qkv, seq, channels, heads, p, seed, offset, aligned);
}
extern "C" __global__ void __launch_bounds__(FLASH_THREADS) attention_flash_bwd_dkdv_d64_bf16(
    bf16* __restrict__ dqkv, const float* __restrict__ delta, const bf16* __restrict__ dout,
    const float* __restrict__ lse, const bf16* __restrict__ qkv, int seq, int channels, int heads, float p, u64 seed,
    u64 offset, int aligned) {
    flash_bwd_dkdv<64, FLASH_DKDV_QUERIES_64>(dqkv, delta, dout, lse, qkv, seq, channels, heads, p, seed, offset,
                                               aligned);
}
extern "C" __global__ void __launch_bounds__(FLASH_THREADS) attention_flash_bwd_dkdv_d128_bf16(
    bf16* __restrict__ dqkv, const float* __restrict__ delta, const bf16* __restrict__ dout,
    const float* __restrict__ lse, const bf16* __restrict__ qkv, int seq, int channels, int heads, float p, u64 seed,
    u64 offset, int aligned) {
    flash_bwd_dkdv<128, FLASH_DKDV_QUERIES_128>(dqkv, delta, dout, lse, qkv, seq, channels, heads, p, seed, offset,
                                                 aligned);
}
