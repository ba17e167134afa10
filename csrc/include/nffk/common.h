// Shared by the CPU (OpenMP) and CUDA drivers: element-level code is written once.
#pragma once

#if defined(__CUDACC__)
#define NFFK_HD __host__ __device__ __forceinline__
#define NFFK_SIMD
#define NFFK_SIMD_SUM(var)
#else
#if defined(NFFK_PROFILE)  // keep element-level functions apart in a profile
#define NFFK_HD __attribute__((noinline))
#else
#define NFFK_HD inline
#endif
// Loops over contiguous channels or lanes: vectorise them (a GPU maps them to threads instead).
#define NFFK_PRAGMA(text) _Pragma(#text)
#define NFFK_SIMD NFFK_PRAGMA(omp simd)
#define NFFK_SIMD_SUM(var) NFFK_PRAGMA(omp simd reduction(+ : var))
#endif

#include <cstdint>

namespace nffk {
using index_t = int64_t;
}  // namespace nffk
