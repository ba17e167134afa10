// CUDA driver of the spherical-harmonics kernels: one thread per point (grid-stride loop over
// spherical_harmonics_threads.cuh). No host synchronisation.
#include <algorithm>

#include "launchers.h"
#include "spherical_harmonics_threads.cuh"

namespace nffk::cuda {
namespace {

constexpr int kThreads = 128;
constexpr index_t kMaxBlocks = 1 << 20;

template <typename T, int L>
__global__ void __launch_bounds__(kThreads) sh_kernel(SHKernel kernel, SHDegrees<T> deg, bool normalize,
                                                      const T* __restrict__ x, const T* __restrict__ grad,
                                                      const T* __restrict__ h, const T* __restrict__ a,
                                                      const T* __restrict__ b, const int32_t* __restrict__ src,
                                                      const T* __restrict__ coef, index_t points, T* __restrict__ out,
                                                      T* __restrict__ out2) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t n = index_t(blockIdx.x) * blockDim.x + threadIdx.x; n < points; n += stride)
    threads::sh_thread<T, L>(kernel, deg, normalize, x, grad, h, a, b, src, coef, n, out, out2);
}

}  // namespace

template <typename T>
cudaError_t spherical_harmonics(SHKernel kernel, const SHDegrees<T>& degrees, bool normalize, const T* x,
                                const T* grad, const T* h, const T* a, const T* b, const int32_t* src, const T* coef,
                                index_t points, T* out, T* out2, cudaStream_t stream) {
  if (points <= 0) return cudaSuccess;
  if (degrees.lmax < 0 || degrees.lmax > kSHMaxL || degrees.count <= 0 || degrees.count > kSHMaxDegrees)
    return cudaErrorInvalidValue;
  const unsigned blocks = unsigned(std::min<index_t>((points + kThreads - 1) / kThreads, kMaxBlocks));
  // Small degrees get small per-thread arrays (registers rather than local memory).
  if (degrees.lmax <= 3) {
    sh_kernel<T, 3><<<blocks, kThreads, 0, stream>>>(kernel, degrees, normalize, x, grad, h, a, b, src, coef, points,
                                                     out, out2);
  } else if (degrees.lmax <= 6) {
    sh_kernel<T, 6><<<blocks, kThreads, 0, stream>>>(kernel, degrees, normalize, x, grad, h, a, b, src, coef, points,
                                                     out, out2);
  } else {
    sh_kernel<T, kSHMaxL><<<blocks, kThreads, 0, stream>>>(kernel, degrees, normalize, x, grad, h, a, b, src, coef,
                                                           points, out, out2);
  }
  return cudaGetLastError();
}

#define NFFK_INSTANTIATE(T)                                                                                   \
  template cudaError_t spherical_harmonics<T>(SHKernel, const SHDegrees<T>&, bool, const T*, const T*, const T*, \
                                              const T*, const T*, const int32_t*, const T*, index_t, T*, T*,      \
                                              cudaStream_t);
NFFK_INSTANTIATE(float)
NFFK_INSTANTIATE(double)
#undef NFFK_INSTANTIATE

}  // namespace nffk::cuda
