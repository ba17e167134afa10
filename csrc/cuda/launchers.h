// Host-callable launchers of the CUDA kernels in csrc/cuda/*.cu: plain C++ on raw device pointers
// (no torch types), so nvcc compiles them without a CUDA build of torch and any C++ driver can call
// them with the stream of its choice. Each returns the launch status (cudaGetLastError()).
#pragma once
#include <cuda_runtime_api.h>

#include "nffk/common.h"

namespace nffk::cuda {

// out[s, :] = sum of src[ptr[s]:ptr[s+1], :] for s < segments; src [rows, width], out [segments, width].
// Deterministic: each segment is summed by one thread, rows in order (nffk/segment.h).
template <typename scalar_t>
cudaError_t segment_sum(const scalar_t* src, const index_t* ptr, index_t segments, index_t width, scalar_t* out,
                        cudaStream_t stream);

}  // namespace nffk::cuda
