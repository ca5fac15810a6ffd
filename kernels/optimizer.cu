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

// The slots of the step-statistics buffer (src/ops/optimizer.rs, `stat`):
// a training step sums its loss and squared gradient norm here, and
// optimizer_finish_step turns them into the clip scale and the skip flag
// that AdamW reads, so the host reads nothing inside a step.
enum StepStat {
    STAT_LOSS = 0,
    STAT_NORM_SQ = 1,
    STAT_NORM = 2,
    STAT_SCALE = 3,
    STAT_SKIP = 4,
    STAT_SKIPPED = 5,
    STAT_SKIPPED_IN_A_ROW = 6,
    STAT_DECAY = 7,
    STAT_STEP_SIZE = 8,
    STAT_BC2_SQRT = 9,
};

// One AdamW update, in the reference's order of operations. The host computes
// the bias corrections once, in double as the reference does, and passes
// `step_size` = lr / (1 - beta1^t), `bc2_sqrt` = sqrt(1 - beta2^t) and
// `decay` = 1 - lr * weight_decay, so the kernel needs no pow per element.
// In mixed precision `copy` (else null) receives the new weights rounded to
// bf16 in the same pass: the compute copy the matmuls read, refreshed
// without another read of the fp32 weights. Both AdamW kernels run this
// function, so they agree bit for bit.
__device__ __forceinline__ void adamw_tensor(float* __restrict__ params, const float* __restrict__ grads,
                                             float* __restrict__ m, float* __restrict__ v, bf16* __restrict__ copy,
                                             float beta1, float beta2, float eps, float decay, float step_size,
                                             float bc2_sqrt, float grad_scale, u64 n) {
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

// One tensor. The gradient scale (clipping) and the skip flag are read from
// the step statistics, so the launch does not wait for the host to learn
// the gradient norm.
extern "C" __global__ void optimizer_adamw_f32(float* __restrict__ params, const float* __restrict__ grads,
                                               float* __restrict__ m, float* __restrict__ v,
                                               bf16* __restrict__ copy, const float* __restrict__ stats,
                                               float beta1, float beta2, float eps, float decay, float step_size,
                                               float bc2_sqrt, u64 n) {
    if (stats[STAT_SKIP] != 0.0f) return;
    adamw_tensor(params, grads, m, v, copy, beta1, beta2, eps, decay, step_size, bc2_sqrt, stats[STAT_SCALE], n);
}

// Every tensor of a step in one launch: `list` holds `count` entries of six
// 64-bit words (params, grads, m, v, copy or 0, length with bit 63 set when
// the tensor decays; AdamwTensor::entry in src/ops/optimizer.rs), each word
// stored as two u32 halves, low first (u32 is the index dtype the backends
// copy). Every thread walks the entries in order and strides over each
// tensor: one launch instead of ~150 for GPT-2, at the price of idle threads
// on the small tensors (biases, LayerNorm weights), a tiny share of the work.
__device__ __forceinline__ u64 list_word(const u32* __restrict__ list, u64 i) {
    return (u64)list[2 * i] | ((u64)list[2 * i + 1] << 32);
}

// The learning rate and the step count come from the statistics too (the
// host writes decay, step_size and bc2_sqrt there before each step), so a
// captured step (a CUDA graph) follows the schedule without re-capture.
extern "C" __global__ void optimizer_adamw_multi_f32(const u32* __restrict__ list, u64 count,
                                                     const float* __restrict__ stats, float beta1, float beta2,
                                                     float eps) {
    if (stats[STAT_SKIP] != 0.0f) return;
    const float grad_scale = stats[STAT_SCALE];
    const float decay = stats[STAT_DECAY];
    const float step_size = stats[STAT_STEP_SIZE];
    const float bc2_sqrt = stats[STAT_BC2_SQRT];
    const u64 decays_bit = 1ull << 63;
    for (u64 e = 0; e < count; ++e) {
        const u64 base = 6 * e;
        const u64 len_and_flag = list_word(list, base + 5);
        adamw_tensor((float*)list_word(list, base), (const float*)list_word(list, base + 1),
                     (float*)list_word(list, base + 2), (float*)list_word(list, base + 3),
                     (bf16*)list_word(list, base + 4), beta1, beta2, eps,
                     (len_and_flag & decays_bit) ? decay : 1.0f, step_size, bc2_sqrt, grad_scale,
                     len_and_flag & ~decays_bit);
    }
}

// acc[0] += scale * sum(f(x)), f(x) = x^2 or x, with the same bits whatever
// order the blocks run in. Each thread sums its elements in double and the
// block reduces with shuffles and shared memory (still double, fixed order);
// thread 0 writes the block's total to `scratch` and counts the block done.
// The last block to finish (the counter reaches gridDim.x) adds the totals
// in block order, still in double, rounds once into `acc`, and sets the
// counter back to 0 for the next launch. A global atomicAdd per block (the
// earlier shape) rounded in whatever order blocks finished, so two runs of
// one training step differed in the last bits of the norm; a second launch
// would also be deterministic but would double the sums' launches (one per
// gradient buffer and one per micro-batch).
// `scratch` (SUM_SCRATCH_LEN floats, src/ops/optimizer.rs): a u32 counter,
// one float of padding, then up to MAX_GRID_1D doubles.
template <bool SQUARE, typename T>
__device__ void sum_into(float* acc, float* scratch, const T* __restrict__ x, u64 n, double scale) {
    SMEM(double, warp_totals, [32]);
    SMEM(u32, is_last, [1]);
    u32* done = (u32*)scratch;
    volatile double* totals = (volatile double*)(scratch + 2);
    double s = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double v = to_f32(x[i]);
        s += SQUARE ? v * v : v;
    }
    const double block_total = block_sum_to_thread0(s, warp_totals);
    if (threadIdx.x == 0) {
        totals[blockIdx.x] = block_total;
        // The total is visible to every block before the count says so.
        __threadfence();
        is_last[0] = atomicAdd(done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last[0]) return;
    __threadfence();
    // Thread t adds totals t, t + blockDim.x, ... and the block reduces in
    // warp order: a fixed order for a fixed launch shape.
    double t = 0.0;
    for (u32 b = threadIdx.x; b < gridDim.x; b += blockDim.x) t += totals[b];
    const double total = block_sum_to_thread0(t, warp_totals);
    if (threadIdx.x == 0) {
        acc[0] = (float)((double)acc[0] + total * scale);
        *done = 0;
    }
}

extern "C" __global__ void optimizer_sum_squares_f32(float* acc, float* scratch, const float* __restrict__ x,
                                                     u64 n) {
    sum_into<true>(acc, scratch, x, n, 1.0);
}

extern "C" __global__ void optimizer_sum_scaled_f32(float* acc, float* scratch, const float* __restrict__ x,
                                                    float scale, u64 n) {
    sum_into<false>(acc, scratch, x, n, scale);
}

// Finite when neither NaN (every comparison false) nor infinite.
__device__ __forceinline__ bool finite_f32(float x) { return fabsf(x) <= 3.402823466e38f; }

// Closes the step statistics (see FinishStep in src/ops/optimizer.rs): a
// handful of scalars, so one thread; it runs between the norm and AdamW on
// the same stream, which orders it without any host involvement.
extern "C" __global__ void optimizer_finish_step_f32(float* stats, float max_norm, u64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float norm = sqrtf(stats[STAT_NORM_SQ]);
        const bool bad = !(finite_f32(stats[STAT_LOSS]) && finite_f32(norm));
        stats[STAT_NORM] = norm;
        stats[STAT_SCALE] = bad ? 0.0f : max_norm > 0.0f ? fminf(max_norm / (norm + 1e-6f), 1.0f) : 1.0f;
        stats[STAT_SKIP] = bad ? 1.0f : 0.0f;
        stats[STAT_SKIPPED] += bad ? 1.0f : 0.0f;
        stats[STAT_SKIPPED_IN_A_ROW] = bad ? stats[STAT_SKIPPED_IN_A_ROW] + 1.0f : 0.0f;
    }
}
