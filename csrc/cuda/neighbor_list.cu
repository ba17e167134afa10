// CUDA driver of the neighbour-list search: one thread per receiver (grid-stride loop over
// neighbor_list_threads.cuh), launched twice by nffk.ops.neighbor_list: count, then (after a
// prefix sum and one host synchronisation for the output size, made by the caller) fill.
#include <algorithm>

#include "launchers.h"
#include "neighbor_list_threads.cuh"

namespace nffk::cuda {
namespace {

constexpr int kThreads = 128;
constexpr index_t kMaxBlocks = 1 << 20;

__global__ void __launch_bounds__(kThreads) search_kernel(NLSearch search, index_t atoms,
                                                          const index_t* __restrict__ offsets,
                                                          index_t* __restrict__ counts, index_t* __restrict__ senders,
                                                          index_t* __restrict__ images) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < atoms; i += stride) {
    const index_t found = threads::search_receiver(search, i, offsets, senders, images);
    if (offsets == nullptr) counts[i] = found;
  }
}

}  // namespace

cudaError_t nl_search(const NLSearch& search, index_t atoms, const index_t* offsets, index_t* counts,
                      index_t* senders, index_t* images, cudaStream_t stream) {
  if (atoms <= 0) return cudaSuccess;
  const unsigned blocks = unsigned(std::min<index_t>((atoms + kThreads - 1) / kThreads, kMaxBlocks));
  search_kernel<<<blocks, kThreads, 0, stream>>>(search, atoms, offsets, counts, senders, images);
  return cudaGetLastError();
}

}  // namespace nffk::cuda
