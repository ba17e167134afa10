// CUDA drivers of the tensor-product kernels (uvu and uvw paths), shared by the plain tensor
// product and the fused conv (csrc/cuda/conv.cu): grid-stride loops over the threads of
// tensor_product_threads.cuh (one per output row and channel slot). No atomics, so results are
// deterministic; no host synchronisation.
#include <algorithm>

#include "launchers.h"
#include "tensor_product_threads.cuh"

namespace nffk::cuda {
namespace {

constexpr int kThreads = 128;
constexpr index_t kMaxBlocks = 1 << 20;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) contract_kernel(TPKernel kernel, TPProgram<T> prog, const T* __restrict__ a,
                                                            const T* __restrict__ b, const T* __restrict__ w,
                                                            bool shared_weights, bool weighted_only, EdgeRows edges,
                                                            index_t rows, T* __restrict__ out) {
  const index_t total = rows * threads::role_of(kernel, prog).num_slots;
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride)
    threads::contract_thread<T, D>(kernel, prog, a, b, w, shared_weights, weighted_only, edges, t, out);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) weight_grad_kernel(TPProgram<T> prog, const T* __restrict__ x1,
                                                               const T* __restrict__ x2, const T* __restrict__ g,
                                                               EdgeRows edges, index_t num_edges, index_t chunk,
                                                               T* __restrict__ partial) {
  const index_t total = (num_edges + chunk - 1) / chunk * prog.weight_numel;
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride)
    threads::weight_grad_thread<T, D>(prog, x1, x2, g, edges, num_edges, chunk, t, partial);
}

unsigned blocks_for(index_t total) {
  return unsigned(std::max<index_t>(1, std::min<index_t>((total + kThreads - 1) / kThreads, kMaxBlocks)));
}

}  // namespace

template <typename T>
cudaError_t tp_contract(TPKernel kernel, const TPProgram<T>& program, const T* a, const T* b, const T* w,
                        bool shared_weights, bool weighted_only, EdgeRows edges, index_t rows, T* out,
                        cudaStream_t stream) {
  if (kernel == TPKernel::kVjpW || program.max_d > kTPMaxD) return cudaErrorInvalidValue;
  const index_t total = rows * threads::role_of(kernel, program).num_slots;
  if (total <= 0) return cudaSuccess;
  if (program.max_d <= 7) {  // l <= 3: smaller per-thread arrays
    contract_kernel<T, 7><<<blocks_for(total), kThreads, 0, stream>>>(kernel, program, a, b, w, shared_weights,
                                                                     weighted_only, edges, rows, out);
  } else {
    contract_kernel<T, kTPMaxD><<<blocks_for(total), kThreads, 0, stream>>>(kernel, program, a, b, w, shared_weights,
                                                                           weighted_only, edges, rows, out);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t tp_weight_grad(const TPProgram<T>& program, const T* x1, const T* x2, const T* g, EdgeRows edges,
                           index_t num_edges, index_t chunk, T* partial, cudaStream_t stream) {
  if (chunk <= 0 || program.max_d > kTPMaxD) return cudaErrorInvalidValue;
  const index_t total = (num_edges + chunk - 1) / chunk * program.weight_numel;
  if (total <= 0) return cudaSuccess;
  if (program.max_d <= 7) {
    weight_grad_kernel<T, 7><<<blocks_for(total), kThreads, 0, stream>>>(program, x1, x2, g, edges, num_edges, chunk,
                                                                        partial);
  } else {
    weight_grad_kernel<T, kTPMaxD><<<blocks_for(total), kThreads, 0, stream>>>(program, x1, x2, g, edges, num_edges,
                                                                              chunk, partial);
  }
  return cudaGetLastError();
}

#define NFFK_INSTANTIATE(T)                                                                                    \
  template cudaError_t tp_contract<T>(TPKernel, const TPProgram<T>&, const T*, const T*, const T*, bool, bool,   \
                                      EdgeRows, index_t, T*, cudaStream_t);                                    \
  template cudaError_t tp_weight_grad<T>(const TPProgram<T>&, const T*, const T*, const T*, EdgeRows, index_t,   \
                                         index_t, T*, cudaStream_t);
NFFK_INSTANTIATE(float)
NFFK_INSTANTIATE(double)
#undef NFFK_INSTANTIATE

}  // namespace nffk::cuda
