// The optimizer step (AdamW) and the squared gradient norm for clipping.
//
// Both are memory-bound passes over every parameter, so they share the
// elementwise shape: a 1-D grid-stride loop, consecutive threads on
// consecutive elements, with the grid capped by the host. Master weights,
// gradients and moments are fp32 in every precision (ARCHITECTURE.md,
// decision 4), so AdamW takes float; the norm reads any gradient type T.
#include "dtype.cuh"
#include "grid.cuh"
#include "reduce.cuh"

// One AdamW update, in the reference's order of operations. The host computes
// the bias corrections once, in double as the reference does, and passes
// `step_size` = lr / (1 - beta1^t), `bc2_sqrt` = sqrt(1 - beta2^t) and
// `decay` = 1 - lr * weight_decay, so the kernel needs no pow per element.
// In mixed precision `copy` (else null) receives the new weights rounded to
// bf16 in the same pass: the compute copy the matmuls read, refreshed
// without another read of the fp32 weights.
extern "C" __global__ void optimizer_adamw_f32(float* __restrict__ params, const float* __restrict__ grads,
                                               float* __restrict__ m, float* __restrict__ v,
                                               bf16* __restrict__ copy, float beta1, float beta2, float eps,
                                               float decay, float step_size, float bc2_sqrt, float grad_scale, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float p = params[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        params[i] = p;
        if (copy) copy[i] = from_f32<bf16>(p);
    }
}

// acc[0] += sum(x^2). Each thread sums its elements in double, the block
// reduces with shuffles and shared memory (still double), and one atomicAdd
// per block adds the block's total: the reference sums in double, and the
// only float roundings left are those of the few hundred per-block additions
// into `acc`. A single-block launch would be exact but would use one SM of
// the GPU; a second reduction kernel would need a scratch buffer.
template <typename T>
__device__ void sum_squares(float* acc, const T* __restrict__ x, u64 n) {
    SMEM(double, warp_totals, [32]);
    double s = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double v = to_f32(x[i]);
        s += v * v;
    }
    const double total = block_sum_to_thread0(s, warp_totals);
    if (threadIdx.x == 0) atomicAdd(acc, (float)total);
}

extern "C" __global__ void optimizer_sum_squares_f32(float* acc, const float* __restrict__ x, u64 n) {
    sum_squares(acc, x, n);
}
