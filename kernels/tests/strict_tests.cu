// Kernels that are wrong in ways a GPU punishes only sometimes, or only at
// launch: the emulator must refuse or expose each (tests/emulator.rs).
#include "common.cuh"

// Reads static shared memory before writing it: every value must be NaN,
// in every block, even though the previous block on the worker wrote it.
extern "C" __global__ void test_static_smem_probe(float* out, int per_thread) {
    SMEM(float, buf, [1024]);
    for (int k = 0; k < per_thread; k++) {
        int i = threadIdx.x * per_thread + k;
        out[blockIdx.x * blockDim.x * per_thread + i] = buf[i];
        buf[i] = 1.0f;
    }
}

// A block sum written for exactly 256 threads: launched with fewer, the tree
// adds shared slots no thread wrote. Static shared memory that started out
// zero (or kept an earlier block's values) would hide that; poisoned, the
// sum is NaN.
extern "C" __global__ void test_sum_assumes_256_threads(const float* x, float* out, int n) {
    SMEM(float, buf, [256]);
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = 128; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, buf[0]);
}

// 16 KiB of static shared memory, and whatever dynamic shared memory the
// launch gives: together they must fit the block's limit.
extern "C" __global__ void test_static_and_dynamic_smem(float* out) {
    SMEM(float, tile, [4096]);
    DYN_SMEM(float, extra);
    tile[threadIdx.x] = (float)threadIdx.x;
    extra[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x] + extra[threadIdx.x];
}

// Writes `overrun` elements past the end of out[0..n).
extern "C" __global__ void test_write_past_end(float* out, int n, int overrun) {
    for (int i = threadIdx.x; i < n + overrun; i += blockDim.x) out[i] = 1.0f;
}

// Thread 5 of block 1 reads in[index] (an index far out of bounds in the test).
extern "C" __global__ void test_read_at(const float* in, float* out, long long index) {
    float v = 0.0f;
    if (blockIdx.x == 1 && threadIdx.x == 5) v = in[index];
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Writes one element before the start of `out`.
extern "C" __global__ void test_write_before_start(float* out) {
    if (threadIdx.x == 0) out[-1] = 1.0f;
}

// Keeps 96 loaded values live at once: ptxas gives it about 127 registers
// per thread, so a block of 1024 threads needs twice the registers an SM
// has and the launch fails on a GPU.
extern "C" __global__ void test_many_registers(float* out, const float* in, int n) {
    float v[96];
#pragma unroll
    for (int k = 0; k < 96; k++) v[k] = in[(k * 37 + threadIdx.x) % n];
    float scale = 0.0f;
#pragma unroll
    for (int k = 0; k < 96; k++) scale += v[k] * (float)(k + 1);
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < 96; k++) acc += v[k] * v[k] * scale;
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
