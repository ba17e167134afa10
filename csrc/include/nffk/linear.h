// Element-level arithmetic of the equivariant Linear map (csrc/cpu/linear.cpp; reusable by a
// CUDA driver). A path maps an input block x[u][m] (mul_in channels of an irrep of dimension d)
// to an output block with weights W[u][w]:  out[w][m] += c * sum_u x[u][m] W[u][w].
// Output-side blocks are channel-major [d][ld] (channel fastest) so that loops over output
// channels are contiguous; inputs are read in e3nn's [channel][m] layout.
#pragma once
#include "nffk/common.h"

namespace nffk::linear {

// out[m][w] += c * sum_u x[u][m] M[u][w] for m < d, w < n (M rows of length ldm, n a multiple of CH).
template <typename T, int CH>
NFFK_HD void mix(const T* x, int64_t rows, int64_t d, const T* M, int64_t ldm, T c, T* out, int64_t ld, int64_t n) {
  constexpr int kMaxD = 8;  // components held in registers at once
  for (int64_t w0 = 0; w0 < n; w0 += CH) {
    for (int64_t m0 = 0; m0 < d; m0 += kMaxD) {
      const int64_t dm = d - m0 < kMaxD ? d - m0 : kMaxD;
      T acc[kMaxD][CH];
      for (int64_t m = 0; m < dm; ++m) {
        NFFK_SIMD for (int k = 0; k < CH; ++k) acc[m][k] = T(0);
      }
      for (int64_t u = 0; u < rows; ++u) {
        const T* mr = M + u * ldm + w0;
        for (int64_t m = 0; m < dm; ++m) {
          const T xv = x[u * d + m0 + m];
          NFFK_SIMD for (int k = 0; k < CH; ++k) acc[m][k] += xv * mr[k];
        }
      }
      for (int64_t m = 0; m < dm; ++m) {
        T* o = out + (m0 + m) * ld + w0;
        NFFK_SIMD for (int k = 0; k < CH; ++k) o[k] += c * acc[m][k];
      }
    }
  }
}

// gW[u][w] (+)= c * sum_m x[u][m] g[m][w]   (g channel-major [d][ld]; w < n)
template <typename T>
NFFK_HD void outer(const T* x, int64_t rows, int64_t d, const T* g, int64_t ld, int64_t n, T c, T* gW, bool accumulate) {
  for (int64_t u = 0; u < rows; ++u) {
    T* o = gW + u * n;
    if (!accumulate) {
      NFFK_SIMD for (int64_t w = 0; w < n; ++w) o[w] = T(0);
    }
    for (int64_t m = 0; m < d; ++m) {
      const T xv = c * x[u * d + m];
      const T* gr = g + m * ld;
      NFFK_SIMD for (int64_t w = 0; w < n; ++w) o[w] += xv * gr[w];
    }
  }
}

}  // namespace nffk::linear
