// How threads map to elements and rows, shared by the kernel families.
#pragma once

#include "common.cuh"

// A 1-D grid-stride loop over `n` elements, consecutive threads on
// consecutive elements (coalesced). The host caps the grid, so the loop also
// covers tensors bigger than one launch's worth of threads; indices are
// 64-bit because activations of big models pass 2^31 elements.
#define GRID_STRIDE_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// One warp per row: the row this thread's warp owns, and the thread's lane.
__device__ __forceinline__ u64 warp_row() { return ((u64)blockIdx.x * blockDim.x + threadIdx.x) / 32; }
__device__ __forceinline__ u32 lane_id() { return threadIdx.x % 32; }
