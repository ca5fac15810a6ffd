// Kernels that exercise the emulated tensor-core helpers (tests/tensor_core.rs).
// Host only; the mini GEMM comes in a correct form and two wrong ones.
#include "common.cuh"

// One mma on fragments gathered straight from global memory per the PTX
// layouts: d[16][8] = a[16][16] @ b + c, b stored as [n = 8][k = 16], c and d
// row-major [16][8]. One warp.
extern "C" __global__ void test_mma_fragments(float* d, const bf16* a, const bf16* b, const float* c) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    const u32* a32 = (const u32*)a;  // a pair of bf16 per word: [16][8] words
    const u32* b32 = (const u32*)b;  // [8][8] words
    u32 fa[4] = {a32[g * 8 + t], a32[(g + 8) * 8 + t], a32[g * 8 + t + 4], a32[(g + 8) * 8 + t + 4]};
    u32 fb[2] = {b32[g * 8 + t], b32[g * 8 + t + 4]};
    float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
    mma_m16n8k16_bf16_f32(acc, fa, fb);
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// ldmatrix of four 8 x 8 matrices stored one after another (src[256], row
// major), as .x4 or .x2, plain or .trans; out[lane * 4 + j] = register j
// (0xdeadbeef where the shape has no register j). One warp.
extern "C" __global__ void test_ldmatrix(u32* out, const u32* src, int trans, int x2) {
    SMEM(u32, tile, [128]);  // 256 bf16
    const int lane = threadIdx.x;
    for (int i = lane; i < 128; i += 32) tile[i] = src[i];
    __syncwarp();
    // Lane l gives row l % 8 of matrix l / 8: 16 bytes = 4 words per row.
    const u32* row = tile + (lane / 8) * 32 + (lane % 8) * 4;
    u32 r[4] = {0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu};
    if (x2) {
        if (trans)
            ldmatrix_x2_trans(r, row);
        else
            ldmatrix_x2(r, row);
    } else {
        if (trans)
            ldmatrix_x4_trans(r, row);
        else
            ldmatrix_x4(r, row);
    }
    for (int j = 0; j < 4; j++) out[lane * 4 + j] = r[j];
}

// cp.async ordering. Each thread copies 4 floats into three slots of its own:
// slot 0 and slot 1 as two committed groups, slot 2 (the last float only,
// src-size 4 of 16 bytes, zero-filled) left open. It records its slots
// before any wait, after wait<1>, and after commit + wait<0>:
// out[thread][snapshot][slot][4].
extern "C" __global__ void test_cp_async_order(float* out, const float* src) {
    SMEM(float, slots, [64][3][4]);
    const int tid = threadIdx.x;
    const float* s = src + tid * 12;
    cp_async_16(slots[tid][0], s);
    cp_async_commit();
    cp_async_16(slots[tid][1], s + 4);
    cp_async_commit();
    cp_async_16_zfill(slots[tid][2], s + 8, 4);
    float* o = out + tid * 36;
    for (int snap = 0; snap < 3; snap++) {
        if (snap == 1) cp_async_wait<1>();
        if (snap == 2) {
            cp_async_commit();
            cp_async_wait<0>();
        }
        for (int slot = 0; slot < 3; slot++)
            for (int e = 0; e < 4; e++) o[snap * 12 + slot * 4 + e] = slots[tid][slot][e];
    }
}

// Half the warp in mma, the other half in ldmatrix: must be reported.
extern "C" __global__ void test_mixed_tensor_ops(float* out) {
    SMEM(u32, tile, [128]);
    const int lane = threadIdx.x;
    for (int i = lane; i < 128; i += 32) tile[i] = 0;
    __syncwarp();
    u32 r[4] = {0, 0, 0, 0};
    float acc[4] = {0, 0, 0, 0};
    if (lane < 16)
        mma_m16n8k16_bf16_f32(acc, r, r);
    else
        ldmatrix_x4(r, tile + (lane % 8) * 4);
    out[lane] = acc[0] + (float)r[0];
}

// A one-warp GEMM with the shape of the real one: d[16][8] = a[16][k] @ b^T,
// b stored [8][k], k a multiple of 16. Each 16-deep slice goes through a
// 2-stage cp.async pipeline into shared memory and is read with ldmatrix.
// BUG 0 is correct; BUG 1 hands the mma a1 and a2 swapped (a wrong fragment
// index); BUG 2 waits with wait_group 2 where 1 is needed, so it reads each
// stage before its copy has landed (on a GPU it would often pass by luck).
template <int BUG>
__device__ void mini_gemm(float* d, const bf16* a, const bf16* b, int k) {
    SMEM(bf16, sa, [2][16 * 16]);
    SMEM(bf16, sb, [2][8 * 16]);
    const int lane = threadIdx.x, steps = k / 16;
    // Stage s of slice `step`: A row lane/2, chunk lane%2; B row lane/2 (lanes 0..15).
    auto load = [&](int s, int step) {
        const int row = lane / 2, chunk = lane % 2;
        cp_async_16(&sa[s][row * 16 + chunk * 8], a + (u64)row * k + step * 16 + chunk * 8);
        if (lane < 16) cp_async_16(&sb[s][row * 16 + chunk * 8], b + (u64)row * k + step * 16 + chunk * 8);
    };
    float acc[4] = {0, 0, 0, 0};
    load(0, 0);
    cp_async_commit();
    for (int step = 0; step < steps; step++) {
        if (step + 1 < steps) load((step + 1) % 2, step + 1);
        cp_async_commit();
        if (BUG == 2)
            cp_async_wait<2>();
        else
            cp_async_wait<1>();
        __syncwarp();
        const int s = step % 2, j = lane / 8, r = lane % 8;
        u32 fa[4], fb[2];
        // A: matrix j = rows (j % 2) * 8 + r, k chunk j / 2. B: matrix j = k chunk j.
        ldmatrix_x4(fa, &sa[s][((j % 2) * 8 + r) * 16 + (j / 2) * 8]);
        ldmatrix_x2(fb, &sb[s][r * 16 + (j % 2) * 8]);
        if (BUG == 1) {
            u32 swapped[4] = {fa[0], fa[2], fa[1], fa[3]};
            mma_m16n8k16_bf16_f32(acc, swapped, fb);
        } else {
            mma_m16n8k16_bf16_f32(acc, fa, fb);
        }
        __syncwarp();  // everyone is done with stage s before it is refilled
    }
    const int g = lane >> 2, t = lane & 3;
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

extern "C" __global__ void test_mini_gemm(float* d, const bf16* a, const bf16* b, int k) { mini_gemm<0>(d, a, b, k); }
extern "C" __global__ void test_mini_gemm_wrong_fragment(float* d, const bf16* a, const bf16* b, int k) {
    mini_gemm<1>(d, a, b, k);
}
extern "C" __global__ void test_mini_gemm_read_before_wait(float* d, const bf16* a, const bf16* b, int k) {
    mini_gemm<2>(d, a, b, k);
}
