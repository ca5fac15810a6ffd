// The bias gradient of a linear layer: column sums of dout.
//
// A separate pass rather than a GEMM epilogue: it reads dout once more
// (rows x cols), which is small next to the weight-gradient product, and a
// column sum in the epilogue would need atomics across the M tiles of C.
// Templated over dout's type T (f32, or bf16 in mixed precision); the
// gradient is fp32.
#include "dtype.cuh"
#include "params.h"

// dbias[col] += sum over rows of dout[row, col]. A block owns BIAS_COLS (32)
// columns and its BIAS_WARPS (16) warps split the rows (each warp reads 32
// consecutive elements of a row: coalesced), then the 16 partial sums per
// column meet in shared memory. Each column is summed by one block in a fixed order, so the result
// is deterministic (no atomics) and needs no zeroed scratch.
template <typename T>
__device__ void bias_grad(float* __restrict__ dbias, const T* __restrict__ dout, int rows, int cols) {
    SMEM(float, part, [BIAS_WARPS][BIAS_COLS + 1]);
    const int lane = threadIdx.x % BIAS_COLS, warp = threadIdx.x / BIAS_COLS;
    const int col = blockIdx.x * BIAS_COLS + lane;
    float s = 0.0f;
    if (col < cols)
        for (int r = warp; r < rows; r += BIAS_WARPS) s += to_f32(dout[(u64)r * cols + col]);
    part[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && col < cols) {
        float total = 0.0f;
        for (int w = 0; w < BIAS_WARPS; w++) total += part[w][lane];
        dbias[col] += total;
    }
}

extern "C" __global__ void gemm_bias_grad_f32(float* __restrict__ dbias, const float* __restrict__ dout, int rows,
                                              int cols) {
    bias_grad(dbias, dout, rows, cols);
}

extern "C" __global__ void gemm_bias_grad_bf16(float* __restrict__ dbias, const bf16* __restrict__ dout, int rows,
                                               int cols) {
    bias_grad(dbias, dout, rows, cols);
}
