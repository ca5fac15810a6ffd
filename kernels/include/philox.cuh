// Philox4x32-10, identical to crate::rng::philox4x32: dropout masks are a pure
// function of (seed, element index), so they match the CPU bit for bit and
// never need to be stored.
#pragma once

#include "common.cuh"

struct Philox4 {
    u32 v[4];
};

__device__ __forceinline__ Philox4 philox4x32(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        u32 hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        u32 hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    Philox4 r = {{c0, c1, c2, c3}};
    return r;
}

// crate::rng::philox_uniform: the first word's top 24 bits, in [0, 1).
__device__ __forceinline__ float philox_uniform(u64 seed, u64 index) {
    Philox4 r = philox4x32((u32)index, (u32)(index >> 32), 0, 0, (u32)seed, (u32)(seed >> 32));
    return (float)(r.v[0] >> 8) * (1.0f / 16777216.0f);
}
