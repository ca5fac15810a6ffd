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
#include "params.h"
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
// one warp per row as in the forward. The weight and bias gradients, column
// sums over all rows, are left to layernorm_bwd_params below.
template <typename T>
__device__ void layernorm_bwd_inp(T* __restrict__ dinp, const T* __restrict__ dout, const T* __restrict__ inp,
                                  const T* __restrict__ weight, const float* __restrict__ mean,
                                  const float* __restrict__ rstd, u32 rows, u32 channels) {
    const u32 lane = lane_id();
    const u64 row = warp_row();
    if (row >= rows) return;
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
        const float n = (to_f32(x[c]) - mu) * rs;
        dx[c] = from_f32<T>(to_f32(dx[c]) + rs * (to_f32(dy[c]) * to_f32(weight[c]) - mean_dn - n * mean_dn_n));
    }
}

// dweight += sum over rows of dout * norm, dbias += sum over rows of dout,
// with the same bits in every run: no float atomics. A block owns 32
// columns (lane l on column 32 * blockIdx.x + l, so each warp's loads are
// 128 consecutive bytes) and nobody else adds to them; its warp w sums rows
// w, w + warps, ... in row order, and warp 0 adds the warps' sums in warp
// order and then into the gradient (`+=`: tied layers accumulate into one
// slot). The price of determinism: dout and inp are read a second time
// (the row pass above reads them too), and the grid is only channels / 32
// blocks (24 for GPT-2 small), so on a GPU this pass is latency- rather
// than bandwidth-bound; a [blocks, channels] scratch of per-block partials
// would avoid both but needs a buffer the op contract does not provide.
// Either gradient may be null (a frozen block, or a bias-free model).
template <typename T>
__device__ void layernorm_bwd_params(float* __restrict__ dweight, float* __restrict__ dbias,
                                     const T* __restrict__ dout, const T* __restrict__ inp,
                                     const float* __restrict__ mean, const float* __restrict__ rstd, u32 rows,
                                     u32 channels) {
    constexpr u32 WARPS = LAYERNORM_PARAMS_BLOCK / 32;
    SMEM(float, dw_warps, [WARPS][32]);
    SMEM(float, db_warps, [WARPS][32]);
    const u32 lane = lane_id(), warp = threadIdx.x / 32;
    const u32 c = blockIdx.x * 32 + lane;
    float dw = 0.0f, db = 0.0f;
    if (c < channels) {
        for (u64 row = warp; row < rows; row += WARPS) {
            const float g = to_f32(dout[row * channels + c]);
            dw += g * ((to_f32(inp[row * channels + c]) - mean[row]) * rstd[row]);
            db += g;
        }
    }
    dw_warps[warp][lane] = dw;
    db_warps[warp][lane] = db;
    __syncthreads();
    if (warp != 0 || c >= channels) return;
    float sum_dw = 0.0f, sum_db = 0.0f;
    for (u32 w = 0; w < WARPS; w++) {
        sum_dw += dw_warps[w][lane];
        sum_db += db_warps[w][lane];
    }
    if (dweight) dweight[c] += sum_dw;
    if (dbias) dbias[c] += sum_db;
}

extern "C" __global__ void layernorm_fwd_f32(float* __restrict__ out, float* __restrict__ mean,
                                             float* __restrict__ rstd, const float* __restrict__ inp,
                                             const float* __restrict__ weight, const float* __restrict__ bias,
                                             u32 rows, u32 channels, float eps) {
    layernorm_fwd(out, mean, rstd, inp, weight, bias, rows, channels, eps);
}

extern "C" __global__ void layernorm_bwd_inp_f32(float* __restrict__ dinp, const float* __restrict__ dout,
                                                 const float* __restrict__ inp, const float* __restrict__ weight,
                                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                                 u32 rows, u32 channels) {
    layernorm_bwd_inp(dinp, dout, inp, weight, mean, rstd, rows, channels);
}

extern "C" __global__ void layernorm_bwd_params_f32(float* dweight, float* dbias, const float* __restrict__ dout,
                                                    const float* __restrict__ inp, const float* __restrict__ mean,
                                                    const float* __restrict__ rstd, u32 rows, u32 channels) {
    layernorm_bwd_params(dweight, dbias, dout, inp, mean, rstd, rows, channels);
}

// Mixed precision: bf16 rows, weights and outputs; fp32 statistics and
// weight gradients.
extern "C" __global__ void layernorm_fwd_bf16(bf16* __restrict__ out, float* __restrict__ mean,
                                              float* __restrict__ rstd, const bf16* __restrict__ inp,
                                              const bf16* __restrict__ weight, const bf16* __restrict__ bias,
                                              u32 rows, u32 channels, float eps) {
    layernorm_fwd(out, mean, rstd, inp, weight, bias, rows, channels, eps);
}

extern "C" __global__ void layernorm_bwd_inp_bf16(bf16* __restrict__ dinp, const bf16* __restrict__ dout,
                                                 const bf16* __restrict__ inp, const bf16* __restrict__ weight,
                                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                                 u32 rows, u32 channels) {
    layernorm_bwd_inp(dinp, dout, inp, weight, mean, rstd, rows, channels);
}

extern "C" __global__ void layernorm_bwd_params_bf16(float* dweight, float* dbias, const bf16* __restrict__ dout,
                                                    const bf16* __restrict__ inp, const float* __restrict__ mean,
                                                    const float* __restrict__ rstd, u32 rows, u32 channels) {
    layernorm_bwd_params(dweight, dbias, dout, inp, mean, rstd, rows, channels);
}
