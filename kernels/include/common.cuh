// The one place where the GPU and the host differ. Kernel files include this
// and never use #ifdef themselves: under NVRTC they get CUDA's own intrinsics,
// under the host compiler they get the CPU emulator (kernels/emu/emu.h).
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)

// NVRTC compiles without the C library headers: define what the kernels use.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif
#define DYN_SMEM(T, name) extern __shared__ T name[]

#else

#include "emu/emu.h"

#endif

typedef unsigned int u32;
typedef unsigned long long u64;
