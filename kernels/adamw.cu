// The optimizer step (AdamW) and the squared gradient norm for clipping.
//
// Both are memory-bound passes over every parameter, so they share the
// elementwise shape: a 1-D grid-stride loop, consecutive threads on
// consecutive floats, with the grid capped by the host.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// One AdamW update, in the reference's order of operations. The host computes
// the bias corrections once, in double as the reference does, and passes
// `step_size` = lr / (1 - beta1^t), `bc2_sqrt` = sqrt(1 - beta2^t) and
// `decay` = 1 - lr * weight_decay, so the kernel needs no pow per element.
extern "C" __global__ void adamw_f32(float* __restrict__ params, const float* __restrict__ grads,
                                     float* __restrict__ m, float* __restrict__ v, float beta1, float beta2,
                                     float eps, float decay, float step_size, float bc2_sqrt, float grad_scale,
                                     u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

// acc[0] += sum(x^2). Each thread sums its elements in double, the block
// reduces with shuffles and shared memory (still double), and one atomicAdd
// per block adds the block's total: the reference sums in double, and the
// only float roundings left are those of the few hundred per-block additions
// into `acc`. A single-block launch would be exact but would use one SM of
// the GPU; a second reduction kernel would need a scratch buffer.
extern "C" __global__ void sum_squares_f32(float* acc, const float* __restrict__ x, u64 n) {
    SMEM(double, warp_total, [32]);
    double s = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double v = x[i];
        s += v * v;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (threadIdx.x % 32 == 0) warp_total[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (u32 w = 0; w < blockDim.x / 32; w++) total += warp_total[w];
        atomicAdd(acc, (float)total);
    }
}
