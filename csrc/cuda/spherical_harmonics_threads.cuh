// The work of one CUDA thread of the spherical-harmonics kernels (one point), as a __host__
// __device__ function: csrc/cuda/spherical_harmonics.cu launches it, and
// tests/kernels/cuda_emulation.cu runs the same function on the CPU against the reference. The
// element-level code is that of nffk/spherical_harmonics.h with one lane (B = 1), the same
// arithmetic as the CPU driver csrc/cpu/spherical_harmonics.cpp.
#pragma once
#include "launchers.h"
#include "nffk/spherical_harmonics.h"

namespace nffk::cuda::threads {

constexpr double kNormalizeEps = 1e-12;  // torch.nn.functional.normalize's

// Point n. L: a compile-time bound on lmax, so that the per-point arrays have a fixed size.
template <typename T, int L>
NFFK_HD void sh_thread(SHKernel kernel, const SHDegrees<T>& deg, bool normalize, const T* x, const T* grad,
                       const T* h, const T* a, const T* b, const int32_t* src, const T* coef, index_t n, T* out,
                       T* out2) {
  constexpr int kCount = (L + 1) * (L + 1);
  T P[kCount], gP[kCount], W[kCount];
  const int32_t count = (deg.lmax + 1) * (deg.lmax + 1);
  const T xn[3] = {x[n * 3], x[n * 3 + 1], x[n * 3 + 2]};
  sh::Frame<T, 1> frame;
  frame.set(xn, normalize, T(kNormalizeEps));
  sh::values<T, 1>(deg.lmax, a, b, frame.u[0], frame.u[1], frame.u[2], P);
  if (kernel == SHKernel::kValues) {
    for (int32_t r = 0; r < deg.count; ++r)
      for (int32_t c = 0; c < 2 * deg.degree[r] + 1; ++c)
        out[n * deg.dim + deg.offset[r] + c] = deg.scale[r] * P[deg.degree[r] * deg.degree[r] + c];
    return;
  }
  for (int32_t t = 0; t < count; ++t) gP[t] = T(0);
  for (int32_t r = 0; r < deg.count; ++r)
    for (int32_t c = 0; c < 2 * deg.degree[r] + 1; ++c)
      gP[deg.degree[r] * deg.degree[r] + c] += deg.scale[r] * grad[n * deg.dim + deg.offset[r] + c];
  T v[3] = {T(0), T(0), T(0)};
  sh::gradient_dot<T, 1>(count, src, coef, P, gP, v);  // v = (dP/du)^T gP
  T result[3];
  if (kernel == SHKernel::kVjp) {
    frame.apply(v, result);
    for (int i = 0; i < 3; ++i) out[n * 3 + i] = result[i];
    return;
  }
  // Second derivatives, with k = J h (as the CPU driver): d<h, J v(u)>/dgY = (dY/du) k and
  // d<h, J v(u)>/dx = J (sum_t gP_t d2P_t/du2 k) + d/dx <J h, v>|_v.
  const T hn[3] = {h[n * 3], h[n * 3 + 1], h[n * 3 + 2]};
  T k[3];
  frame.apply(hn, k);
  sh::gradient_jvp<T, 1>(count, src, coef, P, k, W);
  for (int32_t r = 0; r < deg.count; ++r)
    for (int32_t c = 0; c < 2 * deg.degree[r] + 1; ++c)
      out2[n * deg.dim + deg.offset[r] + c] = deg.scale[r] * W[deg.degree[r] * deg.degree[r] + c];
  for (int32_t t = 0; t < count; ++t) W[t] = T(0);
  sh::gradient_scatter<T, 1>(count, src, coef, gP, k, W);
  T hess[3] = {T(0), T(0), T(0)};
  sh::gradient_dot<T, 1>(deg.lmax * deg.lmax, src, coef, P, W, hess);
  frame.apply(hess, result);
  frame.add_curvature(hn, v, result);
  for (int i = 0; i < 3; ++i) out[n * 3 + i] = result[i];
}

}  // namespace nffk::cuda::threads
