// Host side of kernels/include/common.cuh: what a kernel sees when it runs under the
// CPU emulator. Every CUDA thread is a fiber; one block runs at a time on
// each worker thread, so per-worker (`__thread`) state is per-block state.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

// The running fiber's CUDA coordinates. The scheduler rewrites `thread`
// before every switch into a fiber; the others are set once per block.
struct Coords {
    dim3 thread, block, block_dim, grid_dim;
};
extern __thread Coords tls_coords;

// Shared memory of the block running on this worker. Both kinds are filled
// with SMEM_POISON bytes before every block (0xff: NaN as float, double and
// bf16, -1 as an integer), so a read before a write shows up and no block
// sees what an earlier one left.
constexpr unsigned char SMEM_POISON = 0xff;
void* dyn_smem();

// Static shared memory (SMEM): each declaration gets its place in the
// worker's per-block arena from the first thread of a block that reaches it
// and keeps it for the rest of the block. `block` is the worker's block
// serial number when the place was given, so the check is one compare.
struct StaticSmemSlot {
    unsigned long long block;
    void* ptr;
};
extern __thread unsigned long long tls_block_serial;
void* place_static_smem(StaticSmemSlot& slot, std::size_t bytes, std::size_t align);
inline void* static_smem(StaticSmemSlot& slot, std::size_t bytes, std::size_t align) {
    if (__builtin_expect(slot.block == tls_block_serial, 1)) return slot.ptr;
    return place_static_smem(slot, bytes, align);
}

void syncthreads();

// Warp collectives: deposit, the last lane computes for the whole warp.
enum Collective : int { SYNCWARP, SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL, WARP_OP };
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int param, int width);

// ---- hooks of the tensor-core emulation (tensor_core.cpp) ----
// WARP_OP: each lane's `value` points to its record; the last lane to arrive
// calls warp_op_run once for the whole warp, which leaves every lane's
// results in its record. Returns null, or what was wrong.
const char* warp_op_run(void* const records[32], unsigned mask);
// Called before every block: drops the per-thread cp.async state.
void tensor_core_block_start(unsigned threads);
// Reports `msg` for the running thread and abandons its block.
[[noreturn]] void kernel_fail(const char* msg);

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of an unsupported type");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <typename T>
inline T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

// Launch trampolines: unpack a cuLaunchKernel-style `void** args` into the
// kernel's parameters.
template <typename... A, std::size_t... I>
inline void call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
inline void call_packed(void (*f)(A...), void** args) {
    call_unpacked(f, args, std::index_sequence_for<A...>{});
}
template <auto F>
void trampoline(void** args) {
    call_packed(F, args);
}

// What the launch checks need to know about a kernel's parameters: how
// many there are and which are pointers (bit i for parameter i).
struct KernelParams {
    unsigned count;
    unsigned long long pointers;
};
template <typename... A>
constexpr KernelParams params_of(void (*)(A...)) {
    static_assert(sizeof...(A) <= 64, "a kernel with more than 64 parameters");
    unsigned long long pointers = 0;
    unsigned i = 0;
    ((pointers |= (unsigned long long)std::is_pointer_v<A> << i++), ...);
    return {(unsigned)sizeof...(A), pointers};
}

struct KernelEntry {
    const char* name;
    void (*launch)(void** args);
    KernelParams params;
};
struct KernelTable {
    const KernelEntry* entries;
    unsigned len;
};

}  // namespace emu

#define threadIdx (::emu::tls_coords.thread)
#define blockIdx (::emu::tls_coords.block)
#define blockDim (::emu::tls_coords.block_dim)
#define gridDim (::emu::tls_coords.grid_dim)
#define warpSize 32

#define __global__
#define __device__ inline
#define __host__
#define __constant__ inline
#define __forceinline__ __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Static shared memory lives in a per-worker arena that is poisoned before
// every block; a plain `static thread_local` would carry one block's values
// into the next. So `__shared__` itself is refused: declare with SMEM.
#define __shared__                                                                                              \
    _Pragma("GCC error \"write SMEM(T, name, [dims]) instead of __shared__ T name[dims]: under the emulator \
static shared memory must come from the poisoned per-block arena (kernels/README.md)\"")
#define SMEM(T, name, dims)                                                                              \
    static_assert(std::is_trivially_default_constructible_v<std::remove_all_extents_t<T dims>> &&        \
                      std::is_trivially_destructible_v<std::remove_all_extents_t<T dims>>,               \
                  "shared memory holds trivially constructible types only");                            \
    static thread_local ::emu::StaticSmemSlot name##_emu_slot;                                            \
    T(&name) dims = *static_cast<T(*) dims>(::emu::static_smem(name##_emu_slot, sizeof(T dims), alignof(T dims)))
#define DYN_SMEM(T, name) T* name = static_cast<T*>(::emu::dyn_smem())

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::warp_collective(::emu::SYNCWARP, mask, 0, 0, 32); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_collective(::emu::SHFL_IDX, mask, ::emu::to_bits(v), src, width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_collective(::emu::SHFL_UP, mask, ::emu::to_bits(v), (int)delta, width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_collective(::emu::SHFL_DOWN, mask, ::emu::to_bits(v), (int)delta, width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_collective(::emu::SHFL_XOR, mask, ::emu::to_bits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)::emu::warp_collective(::emu::BALLOT, mask, pred != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int pred) { return (int)::emu::warp_collective(::emu::ANY, mask, pred != 0, 0, 32); }
inline int __all_sync(unsigned mask, int pred) { return (int)::emu::warp_collective(::emu::ALL, mask, pred != 0, 0, 32); }

// Atomics: real atomics, since blocks run on several workers at once.
// Float add as a compare-and-swap loop, as on GPUs without native support.
inline float atomicAdd(float* addr, float v) {
    float old, next;
    __atomic_load(addr, &old, __ATOMIC_RELAXED);
    do {
        next = old + v;
    } while (!__atomic_compare_exchange(addr, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline double atomicAdd(double* addr, double v) {
    double old, next;
    __atomic_load(addr, &old, __ATOMIC_RELAXED);
    do {
        next = old + v;
    } while (!__atomic_compare_exchange(addr, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* a, float v) {
    float old;
    __atomic_exchange(a, &v, &old, __ATOMIC_RELAXED);
    return old;
}
inline int atomicCAS(int* a, int cmp, int v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline unsigned atomicCAS(unsigned* a, unsigned cmp, unsigned v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long cmp, unsigned long long v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
template <typename T>
inline T atomic_update_(T* a, T v, bool take_max) {
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while ((take_max ? v > old : v < old) &&
           !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicMax(int* a, int v) { return atomic_update_(a, v, true); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return atomic_update_(a, v, true); }
inline int atomicMin(int* a, int v) { return atomic_update_(a, v, false); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return atomic_update_(a, v, false); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Math: the GPU's fast intrinsics are the exact functions here.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline int __float_as_int(float x) { return ::emu::from_bits<int>(::emu::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return ::emu::from_bits<unsigned>(::emu::to_bits(x)); }
inline float __int_as_float(int x) { return ::emu::from_bits<float>(::emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::emu::from_bits<float>(::emu::to_bits(x)); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
// Mixed signed/unsigned arguments compare as unsigned, as CUDA's overloads do.
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
