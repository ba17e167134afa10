// CUDA driver of the CSR segment sum: the element-level loop of nffk/segment.h (shared with the
// OpenMP driver csrc/cpu/segment.cpp), one thread per segment over a grid-stride loop.
#include <algorithm>

#include "launchers.h"
#include "nffk/segment.h"

namespace nffk::cuda {
namespace {

constexpr int kThreads = 256;
constexpr index_t kMaxBlocks = 65535;

template <typename scalar_t>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ src, const index_t* __restrict__ ptr,
                                   index_t segments, index_t width, scalar_t* __restrict__ out) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t s = index_t(blockIdx.x) * blockDim.x + threadIdx.x; s < segments; s += stride)
    segment_sum_row(src, ptr[s], ptr[s + 1], width, out + s * width);
}

}  // namespace

template <typename scalar_t>
cudaError_t segment_sum(const scalar_t* src, const index_t* ptr, index_t segments, index_t width, scalar_t* out,
                        cudaStream_t stream) {
  if (segments <= 0) return cudaSuccess;
  const index_t blocks = std::min<index_t>((segments + kThreads - 1) / kThreads, kMaxBlocks);
  segment_sum_kernel<scalar_t><<<unsigned(blocks), kThreads, 0, stream>>>(src, ptr, segments, width, out);
  return cudaGetLastError();
}

template cudaError_t segment_sum<float>(const float*, const index_t*, index_t, index_t, float*, cudaStream_t);
template cudaError_t segment_sum<double>(const double*, const index_t*, index_t, index_t, double*, cudaStream_t);

}  // namespace nffk::cuda
