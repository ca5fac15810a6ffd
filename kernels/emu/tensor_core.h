// Host side of the bf16 type and the tensor-core wrappers of
// kernels/include/common.cuh: bf16 and the emulated tensor-core and cp.async
// instructions (tensor_core.cpp).
#pragma once

#include "emu.h"

namespace emu {

// bf16 as 16 raw bits. Conversion from float rounds to nearest-even and keeps
// NaNs quiet, bit for bit like the `half` crate's bf16::from_f32.
struct bf16 {
    uint16_t bits;
};
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>, "bf16 must be 16 trivial bits");

inline bf16 round_to_bf16(float v) {
    uint32_t x;
    std::memcpy(&x, &v, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return bf16{(uint16_t)((x >> 16) | 0x0040u)};
    const uint32_t round_bit = 0x8000u;
    // Round up when above the halfway point, or exactly halfway and odd.
    if ((x & round_bit) && (x & (3 * round_bit - 1))) return bf16{(uint16_t)((x >> 16) + 1)};
    return bf16{(uint16_t)(x >> 16)};
}
inline float bf16_value(bf16 v) {
    uint32_t x = (uint32_t)v.bits << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

// acc += A * B for one m16n8k16 tile: a warp collective over all 32 lanes.
void mma_m16n8k16_bf16_f32(float acc[4], const uint32_t a[4], const uint32_t b[2]);
// ldmatrix.m8n8.x{count}[.trans].b16: a warp collective over all 32 lanes.
void ldmatrix(uint32_t* regs, int count, bool trans, const void* row);
// cp.async of 16 bytes, of which the first `src_bytes` come from `src` and
// the rest are zeros. Per thread: the data is read now into this thread's
// staging area, `dst` is filled with NaN and gets the data only when a
// cp_async_wait retires the group.
void cp_async(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int groups_left);

}  // namespace emu
