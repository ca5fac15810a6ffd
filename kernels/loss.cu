// Fused softmax + cross-entropy over the vocabulary, with its gradient.
//
// One block per row: a GPT-2 row is 50257 logits (200 KB), too long for a
// warp and much too long for one thread; the block strides over it with
// consecutive threads on consecutive logits (coalesced). Each thread keeps an
// online (max, sum of exp(x - max)) pair, so the row is read once for the
// loss and once more for the gradient, never a third time for a separate max
// pass; the pairs are then merged with warp shuffles and across warps in
// shared memory (reduce.cuh). expf, not __expf: the gradient is compared
// elementwise with the reference, and the kernel is bound by memory, not by
// the exponentials. Templated over the logits' type T (f32, or bf16 in
// mixed precision: the softmax is computed in float, the gradient rounded
// once); losses are fp32. Rows are `stride` logits long, of which the first
// `vocab` are classes: the model pads its vocabulary to a multiple of 128
// for the matmul tiles, and the padding takes no part in the softmax.
#include "dtype.cuh"
#include "reduce.cuh"

// losses[row] = log(sum exp(x - max)) - (x[target] - max), or 0 where the
// target is `ignore_index`. When `dlogits` is not null it receives
// (softmax - onehot) * grad_scale, zero on ignored rows and in the padding. `dlogits` may be
// `logits` itself (no __restrict__ on either): each thread reads a logit
// before writing its gradient, and the target logit is read before the
// barrier that precedes any write. A target that is neither below `vocab`
// nor ignored gives a NaN loss and NaN gradient row (a kernel cannot fail;
// the data layer validates targets). Blocks must be a multiple of 32 threads.
template <typename T>
__device__ void softmax_xent(float* __restrict__ losses, T* dlogits, const T* logits,
                             const u32* __restrict__ targets, u32 vocab, u32 stride, u32 ignore_index,
                             float grad_scale) {
    SMEM(MaxSum, warp_stats, [32]);
    const u64 row = blockIdx.x;
    const T* x = logits + row * stride;
    T* dx = dlogits ? dlogits + row * stride : nullptr;
    const u32 target = targets[row];
    if (dx) {
        for (u32 c = vocab + threadIdx.x; c < stride; c += blockDim.x) dx[c] = from_f32<T>(0.0f);
    }
    // Both branches are uniform over the block, so no barrier is skipped by some threads only.
    if (target == ignore_index || target >= vocab) {
        const float fill = target == ignore_index ? 0.0f : NAN;
        if (dx) {
            for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) dx[c] = from_f32<T>(fill);
        }
        if (threadIdx.x == 0) losses[row] = fill;
        return;
    }
    const float target_logit = to_f32(x[target]);

    MaxSum own{-INFINITY, 0.0f};
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
        const float v = to_f32(x[c]);
        if (v > own.max) {
            own.sum = own.sum * expf(own.max - v) + 1.0f;
            own.max = v;
        } else {
            own.sum += expf(v - own.max);
        }
    }
    own = warp_merge(own);
    const u32 warps = blockDim.x / WARP_SIZE;
    if (threadIdx.x % WARP_SIZE == 0) warp_stats[threadIdx.x / WARP_SIZE] = own;
    __syncthreads();
    // Every thread merges the few per-warp pairs itself: cheaper than another
    // shuffle round plus a broadcast through shared memory and a barrier.
    MaxSum total{-INFINITY, 0.0f};
    for (u32 w = 0; w < warps; w++) total = merge(total, warp_stats[w]);

    if (threadIdx.x == 0) losses[row] = logf(total.sum) - (target_logit - total.max);
    if (dx) {
        const float k = grad_scale / total.sum;
        for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
            float g = expf(to_f32(x[c]) - total.max) * k;
            if (c == target) g -= grad_scale;
            dx[c] = from_f32<T>(g);
        }
    }
}

extern "C" __global__ void loss_softmax_xent_f32(float* __restrict__ losses, float* dlogits, const float* logits,
                                                 const u32* __restrict__ targets, u32 vocab, u32 stride,
                                                 u32 ignore_index, float grad_scale) {
    softmax_xent(losses, dlogits, logits, targets, vocab, stride, ignore_index, grad_scale);
}

extern "C" __global__ void loss_softmax_xent_bf16(float* __restrict__ losses, bf16* dlogits, const bf16* logits,
                                                  const u32* __restrict__ targets, u32 vocab, u32 stride,
                                                  u32 ignore_index, float grad_scale) {
    softmax_xent(losses, dlogits, logits, targets, vocab, stride, ignore_index, grad_scale);
}
