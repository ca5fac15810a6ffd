// LayerNorm forward and backward over rows of `channels` elements.
//
// One warp per row: a row (768-1600 elements for GPT-2) is too short to need
// a whole block, and a warp reduces with shuffles alone, without shared
// memory or block barriers. Lane l touches columns l, l + 32, ..., so every
// load of the warp is 32 consecutive elements (coalesced). The row is read
// again in the second pass rather than kept in registers: it is still in
// L1/L2, and the kernel stays correct for any width without a per-thread
// array. Templated over the activations' type T; statistics and the weight
// gradients are fp32, and everything is computed in fp32.
#include "dtype.cuh"
#include "grid.cuh"
#include "reduce.cuh"

// Two passes (mean, then the mean of squared deviations) as the CPU reference
// does: E[x^2] - E[x]^2 cancels badly for rows with a large mean.
template <typename T>
__device__ void layernorm_fwd(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                              const T* __restrict__ inp, const T* __restrict__ weight, const T* __restrict__ bias,
                              u32 rows, u32 channels, float eps) {
    const u32 lane = lane_id();
    const u64 row = warp_row();
    // The whole warp leaves together, and no block barrier follows.
    if (row >= rows) return;
    const T* x = inp + row * channels;
    T* y = out + row * channels;

    float sum = 0.0f;
    for (u32 c = lane; c < channels; c += 32) sum += to_f32(x[c]);
    const float mu = warp_sum(sum) / (float)channels;
    float sq = 0.0f;
    for (u32 c = lane; c < channels; c += 32) {
        const float d = to_f32(x[c]) - mu;
        sq += d * d;
    }
    // Exact 1/sqrt, not rsqrtf: once per row, and it matches the reference.
    const float rs = 1.0f / sqrtf(warp_sum(sq) / (float)channels + eps);
    for (u32 c = lane; c < channels; c += 32) {
        y[c] = from_f32<T>((to_f32(x[c]) - mu) * rs * to_f32(weight[c]) + to_f32(bias[c]));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// dinp += rs * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight,
// one warp per row as in the forward. The weight and bias gradients are column
// sums over all rows: each block adds its rows into a partial sum in shared
// memory (shared atomics, contended by at most the block's warps), then adds
// that partial to the global gradient with one atomicAdd per column. The
// alternative, per-block partials in global memory and a second reduction
// kernel, would be deterministic but needs a scratch buffer the op contract
// does not provide; with the grid capped near one wave the atomics are a
// few per column per SM. `dweight`/`dbias` may be null (frozen blocks): then
// no shared memory is used and the launch passes 0 dynamic bytes.
// Dynamic shared memory: 2 * channels floats when either gradient is wanted
// (over 48 KiB from 6144 channels, which the launcher's opt-in allows).
template <typename T>
__device__ void layernorm_bwd(T* __restrict__ dinp, float* dweight, float* dbias, const T* __restrict__ dout,
                              const T* __restrict__ inp, const T* __restrict__ weight,
                              const float* __restrict__ mean, const float* __restrict__ rstd, u32 rows,
                              u32 channels) {
    DYN_SMEM(float, smem);
    float* dw_part = smem;
    float* db_part = smem + channels;
    const bool params = dweight != nullptr || dbias != nullptr;
    if (params) {
        for (u32 c = threadIdx.x; c < 2 * channels; c += blockDim.x) smem[c] = 0.0f;
    }
    __syncthreads();

    const u32 lane = lane_id(), warps = blockDim.x / 32;
    for (u64 row = warp_row(); row < rows; row += (u64)gridDim.x * warps) {
        const T* dy = dout + row * channels;
        const T* x = inp + row * channels;
        T* dx = dinp + row * channels;
        const float mu = mean[row], rs = rstd[row];

        float sum_dn = 0.0f, sum_dn_n = 0.0f;
        for (u32 c = lane; c < channels; c += 32) {
            const float dn = to_f32(dy[c]) * to_f32(weight[c]);
            sum_dn += dn;
            sum_dn_n += dn * (to_f32(x[c]) - mu) * rs;
        }
        const float mean_dn = warp_sum(sum_dn) / (float)channels;
        const float mean_dn_n = warp_sum(sum_dn_n) / (float)channels;
        for (u32 c = lane; c < channels; c += 32) {
            const float g = to_f32(dy[c]);
            const float n = (to_f32(x[c]) - mu) * rs;
            dx[c] = from_f32<T>(to_f32(dx[c]) + rs * (g * to_f32(weight[c]) - mean_dn - n * mean_dn_n));
            if (params) {
                atomicAdd(&dw_part[c], g * n);
                atomicAdd(&db_part[c], g);
            }
        }
    }

    __syncthreads();
    if (params) {
        for (u32 c = threadIdx.x; c < channels; c += blockDim.x) {
            if (dweight) atomicAdd(&dweight[c], dw_part[c]);
            if (dbias) atomicAdd(&dbias[c], db_part[c]);
        }
    }
}

extern "C" __global__ void layernorm_fwd_f32(float* __restrict__ out, float* __restrict__ mean,
                                             float* __restrict__ rstd, const float* __restrict__ inp,
                                             const float* __restrict__ weight, const float* __restrict__ bias,
                                             u32 rows, u32 channels, float eps) {
    layernorm_fwd(out, mean, rstd, inp, weight, bias, rows, channels, eps);
}

extern "C" __global__ void layernorm_bwd_f32(float* __restrict__ dinp, float* dweight, float* dbias,
                                             const float* __restrict__ dout, const float* __restrict__ inp,
                                             const float* __restrict__ weight, const float* __restrict__ mean,
                                             const float* __restrict__ rstd, u32 rows, u32 channels) {
    layernorm_bwd(dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, channels);
}

// Mixed precision: bf16 rows, weights and outputs; fp32 statistics and
// weight gradients.
extern "C" __global__ void layernorm_fwd_bf16(bf16* __restrict__ out, float* __restrict__ mean,
                                              float* __restrict__ rstd, const bf16* __restrict__ inp,
                                              const bf16* __restrict__ weight, const bf16* __restrict__ bias,
                                              u32 rows, u32 channels, float eps) {
    layernorm_fwd(out, mean, rstd, inp, weight, bias, rows, channels, eps);
}

extern "C" __global__ void layernorm_bwd_bf16(bf16* __restrict__ dinp, float* dweight, float* dbias,
                                              const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                                              const bf16* __restrict__ weight, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, u32 rows, u32 channels) {
    layernorm_bwd(dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, channels);
}
