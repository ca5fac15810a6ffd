// Kernels that exercise the emulator itself (tests/emulator.rs). They are
// compiled for the host only: several are wrong on purpose.
#include "common.cuh"

// Block-wide tree reduction in shared memory, then one atomicAdd per block.
extern "C" __global__ void test_reduce_sum(const float* x, float* out, int n) {
    SMEM(float, buf, [256]);
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, buf[0]);
}

// The same reduction with the barriers forgotten: its result depends on the
// order in which threads happen to run.
extern "C" __global__ void test_reduce_sum_no_sync(const float* x, float* out, int n) {
    SMEM(float, buf, [256]);
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    buf[threadIdx.x] = acc;
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
    }
    if (threadIdx.x == 0) atomicAdd(out, buf[0]);
}

// Threads past `n` leave before the barrier the others wait at.
extern "C" __global__ void test_early_return(float* out, int n) {
    SMEM(float, buf, [256]);
    if ((int)threadIdx.x >= n) return;
    buf[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = buf[(threadIdx.x + 1) % n];
}

// Every lane shuffles, but the mask only names the lower half-warp.
extern "C" __global__ void test_half_warp_shuffle(float* out) {
    float v = (float)threadIdx.x;
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, v, 1);
}

// Lane 0 of warp 1 waits in __syncwarp for lanes that wait at __syncthreads.
extern "C" __global__ void test_deadlock(float* out) {
    if (threadIdx.x == 32) __syncwarp();
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Every warp collective; out has 8 ints per thread.
extern "C" __global__ void test_warp_collectives(int* out) {
    int lane = threadIdx.x % 32;
    int v = (int)threadIdx.x;
    int sum = v;
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    int* o = out + threadIdx.x * 8;
    o[0] = sum;
    o[1] = __shfl_sync(0xffffffffu, v, 3);
    o[2] = __shfl_up_sync(0xffffffffu, v, 1);
    o[3] = __shfl_down_sync(0xffffffffu, v, 2, 16);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 2);
    o[5] = __any_sync(0xffffffffu, lane == 7);
    o[6] = __all_sync(0xffffffffu, lane < 31);
    __syncwarp();
    // Only the lower half-warp takes part: a partial mask used correctly.
    o[7] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1, 8) : -1;
}

// Atomics from many blocks at once.
extern "C" __global__ void test_atomics(unsigned* count, float* fsum, int* imax, int* imin) {
    int gid = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(count, 1u);
    atomicAdd(fsum, 0.5f);
    atomicMax(imax, gid);
    atomicMin(imin, -gid);
}

// Reads dynamic shared memory before writing it: every value must be NaN,
// in every block, even though the previous block wrote it.
extern "C" __global__ void test_dyn_smem_probe(float* out, int per_thread) {
    DYN_SMEM(float, smem);
    for (int k = 0; k < per_thread; k++) {
        int i = threadIdx.x * per_thread + k;
        out[blockIdx.x * blockDim.x * per_thread + i] = smem[i];
        smem[i] = 1.0f;
    }
}

// 16x16 shared-memory tiled matmul, c[n,n] = a[n,n] @ b[n,n]: the speed probe.
extern "C" __global__ void test_matmul_tiled(float* c, const float* a, const float* b, int n) {
    SMEM(float, ta, [16][16]);
    SMEM(float, tb, [16][16]);
    int row = blockIdx.y * 16 + threadIdx.y, col = blockIdx.x * 16 + threadIdx.x;
    float acc = 0.0f;
    for (int k0 = 0; k0 < n; k0 += 16) {
        ta[threadIdx.y][threadIdx.x] = row < n && k0 + (int)threadIdx.x < n ? a[row * n + k0 + threadIdx.x] : 0.0f;
        tb[threadIdx.y][threadIdx.x] = col < n && k0 + (int)threadIdx.y < n ? b[(k0 + threadIdx.y) * n + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < 16; k++) acc += ta[threadIdx.y][k] * tb[k][threadIdx.x];
        __syncthreads();
    }
    if (row < n && col < n) c[row * n + col] = acc;
}

// 128 KiB of locals: more than the default 64 KiB fiber stack.
extern "C" __global__ void test_stack_overflow(float* out, int n) {
    float big[32768];
    for (int i = 0; i < n; i++) big[i] = (float)i;
    out[threadIdx.x] = big[n - 1 - threadIdx.x];
}

// Even lanes shuffle while odd lanes vote: two different collectives at once.
extern "C" __global__ void test_mismatched_collectives(int* out) {
    int v = (int)threadIdx.x;
    if (threadIdx.x % 2 == 0) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
    } else {
        out[threadIdx.x] = (int)__ballot_sync(0xffffffffu, 1);
    }
}
