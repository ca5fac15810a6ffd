// Fused softmax + cross-entropy over the vocabulary, with its gradient.
//
// One block per row: a GPT-2 row is 50257 logits (200 KB), too long for a
// warp and much too long for one thread; the block strides over it with
// consecutive threads on consecutive logits (coalesced). Each thread keeps an
// online (max, sum of exp(x - max)) pair, so the row is read once for the
// loss and once more for the gradient, never a third time for a separate max
// pass; the pairs are then merged with warp shuffles and across warps in
// shared memory. expf, not __expf: the gradient is compared elementwise with
// the reference, and the kernel is bound by memory, not by the exponentials.
#include "common.cuh"

// Merges the pair (m2, s2) into (m, s). An empty pair (max -inf, sum 0) adds
// nothing; testing for it avoids exp(-inf - -inf) = NaN.
static __device__ __forceinline__ void xent_merge(float& m, float& s, float m2, float s2) {
    const float top = fmaxf(m, m2);
    if (top == -INFINITY) return;
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// losses[row] = log(sum exp(x - max)) - (x[target] - max), or 0 where the
// target is `ignore_index`. When `dlogits` is not null it receives
// (softmax - onehot) * grad_scale, zero on ignored rows. `dlogits` may be
// `logits` itself (no __restrict__ on either): each thread reads a logit
// before writing its gradient, and the target logit is read before the
// barrier that precedes any write. A target that is neither below `vocab`
// nor ignored gives a NaN loss and NaN gradient row (a kernel cannot fail;
// the data layer validates targets). Blocks must be a multiple of 32 threads.
extern "C" __global__ void softmax_xent_f32(float* __restrict__ losses, float* dlogits, const float* logits,
                                            const u32* __restrict__ targets, u32 vocab, u32 ignore_index,
                                            float grad_scale) {
    SMEM(float, warp_max, [32]);
    SMEM(float, warp_sum, [32]);
    const u64 row = blockIdx.x;
    const float* x = logits + row * vocab;
    float* dx = dlogits ? dlogits + row * vocab : nullptr;
    const u32 target = targets[row];
    // Both branches are uniform over the block, so no barrier is skipped by some threads only.
    if (target == ignore_index || target >= vocab) {
        const float fill = target == ignore_index ? 0.0f : NAN;
        if (dx) {
            for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) dx[c] = fill;
        }
        if (threadIdx.x == 0) losses[row] = fill;
        return;
    }
    const float target_logit = x[target];

    float m = -INFINITY, s = 0.0f;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
        const float v = x[c];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        xent_merge(m, s, m2, s2);
    }
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = s;
    }
    __syncthreads();
    // Every thread merges the few per-warp pairs itself: cheaper than another
    // shuffle round plus a broadcast through shared memory and a barrier.
    float row_max = -INFINITY, row_sum = 0.0f;
    for (u32 w = 0; w < warps; w++) xent_merge(row_max, row_sum, warp_max[w], warp_sum[w]);

    if (threadIdx.x == 0) losses[row] = logf(row_sum) - (target_logit - row_max);
    if (dx) {
        const float k = grad_scale / row_sum;
        for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
            float g = expf(x[c] - row_max) * k;
            if (c == target) g -= grad_scale;
            dx[c] = g;
        }
    }
}
