// Shared by the CPU (OpenMP) and CUDA drivers: element-level code is written once.
#pragma once

#if defined(__CUDACC__)
#define NFFK_HD __host__ __device__ __forceinline__
#else
#define NFFK_HD inline
#endif

#include <cstdint>

namespace nffk {
using index_t = int64_t;
}  // namespace nffk
