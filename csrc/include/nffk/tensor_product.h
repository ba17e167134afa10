// Element-level arithmetic of Clebsch–Gordan tensor products (connection modes uvu and uvw),
// shared by the CPU driver (csrc/cpu/tensor_product.cpp) and meant for a CUDA driver and for
// fused gather -> tensor product -> sum message-passing kernels.
//
// Channel-major blocks. e3nn's `mul_ir` rows store a block of `mul` channels of an irrep of
// dimension d as [mul][d] (component fastest). The code below works on the transpose [d][ld]
// (channel fastest, ld >= mul, padding channels zero) so that every arithmetic loop runs over
// contiguous channels: SIMD lanes on a CPU, threads on a GPU. `to_channel_major` and
// `from_channel_major` convert one block. Functions take a channel range of length n (a
// multiple of CH) at the pointers given; a driver may split the channels as it likes.
//
// CG pairs. A path's CG non-zeros are sorted by (m3, m1, m2). Consecutive entries with the same
// (m1 = i, m3 = k) form a CGPair whose m2 run is contracted with x2 first, per element:
//     a[q] = coefficient * sum_j C[i, j, k] x2[v, j]                     (project_x2)
// and everything channel-wise is then a sparse (d1 x d3) matrix `a` applied to channel vectors:
//     uvu forward   out[k][u] += w[u] * sum_{q: k_q = k} a[q] x1[i_q][u]
//     vjp x1        gx1[i][u] += sum_{q: i_q = i} a[q] (w g)[k_q][u]
//     vjp x2        s[q] = sum_u x1[i_q][u] (w g)[k_q][u],  gx2[v, j] += coefficient * sum_q C s[q]
//     vjp w         gw[u] = sum_k g[k][u] sum_{q: k_q = k} a[q] x1[i_q][u]
// uvw paths first form z[v][k][u] = sum_q a_v[q] x1[i_q][u] and mix channels with the weights.
#pragma once
#include "nffk/common.h"

namespace nffk::tp {

// Connection modes, numbered as nffk.ops.tensor_product.MODES.
enum Mode : int32_t { kUVW = 0, kUVU = 1 };

struct CGPair {
  int32_t i, k;        // m1 and m3
  int32_t begin, end;  // the run of CG non-zeros with these (m1, m3): m2 = cg_j[e], value cg_value[e]
};

// One path as element-level code sees it (built by a driver from the plan's kernel tables).
template <typename T>
struct Path {
  int32_t mode, d1, d2, d3, mul1, mul2, mul_out;
  int64_t offset1, offset2, offset_out, weight_offset;  // in the flat rows of x1, x2, out and w
  int32_t has_weight;
  T coefficient;
  const CGPair* pairs;  // sorted by (k, i)
  const int32_t* by_i;  // indices of `pairs` sorted by (i, k)
  int32_t num_pairs;
  const int32_t* cg_j;  // m2 of every CG non-zero of the plan
  const T* cg_value;    // and its value
};

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
NFFK_HD void to_channel_major_fixed(const T* src, int64_t mul, T* dst, int64_t ld) {
  for (int64_t u = 0; u < mul; ++u)
    for (int m = 0; m < D; ++m) dst[m * ld + u] = src[u * D + m];
}

template <typename T, int D>
NFFK_HD void from_channel_major_fixed(const T* src, int64_t ld, int64_t mul, T* dst) {
  for (int64_t u = 0; u < mul; ++u)
    for (int m = 0; m < D; ++m) dst[u * D + m] = src[m * ld + u];
}

// dst[m][u] = src[u][m] for u < mul, and 0 for mul <= u < ld.
template <typename T>
NFFK_HD void to_channel_major(const T* src, int64_t mul, int64_t d, T* dst, int64_t ld) {
  switch (d) {  // the common irreps get a fixed inner loop the compiler can unroll
    case 1: to_channel_major_fixed<T, 1>(src, mul, dst, ld); break;
    case 3: to_channel_major_fixed<T, 3>(src, mul, dst, ld); break;
    case 5: to_channel_major_fixed<T, 5>(src, mul, dst, ld); break;
    case 7: to_channel_major_fixed<T, 7>(src, mul, dst, ld); break;
    default:
      for (int64_t u = 0; u < mul; ++u)
        for (int64_t m = 0; m < d; ++m) dst[m * ld + u] = src[u * d + m];
  }
  for (int64_t m = 0; m < d; ++m)
    for (int64_t u = mul; u < ld; ++u) dst[m * ld + u] = T(0);
}

// dst[u][m] = src[m][u] for u < mul.
template <typename T>
NFFK_HD void from_channel_major(const T* src, int64_t ld, int64_t mul, int64_t d, T* dst) {
  switch (d) {
    case 1: from_channel_major_fixed<T, 1>(src, ld, mul, dst); break;
    case 3: from_channel_major_fixed<T, 3>(src, ld, mul, dst); break;
    case 5: from_channel_major_fixed<T, 5>(src, ld, mul, dst); break;
    case 7: from_channel_major_fixed<T, 7>(src, ld, mul, dst); break;
    default:
      for (int64_t u = 0; u < mul; ++u)
        for (int64_t m = 0; m < d; ++m) dst[u * d + m] = src[m * ld + u];
  }
}

// ---------------------------------------------------------------------------------------------
// The x2 side: scalars per element
// ---------------------------------------------------------------------------------------------
// a[q] = coefficient * sum_j C x2v[j] (x2v: the 2 l2 + 1 components of one x2 channel).
template <typename T>
NFFK_HD void project_x2(const Path<T>& p, const T* x2v, T* a) {
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    T sum = T(0);
    for (int32_t e = p.pairs[q].begin; e < p.pairs[q].end; ++e) sum += p.cg_value[e] * x2v[p.cg_j[e]];
    a[q] = p.coefficient * sum;
  }
}

// gx2v[j] += coefficient * sum_q C s[q]: the adjoint of project_x2.
template <typename T>
NFFK_HD void unproject_x2(const Path<T>& p, const T* s, T* gx2v) {
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    const T sq = p.coefficient * s[q];
    for (int32_t e = p.pairs[q].begin; e < p.pairs[q].end; ++e) gx2v[p.cg_j[e]] += p.cg_value[e] * sq;
  }
}

// ---------------------------------------------------------------------------------------------
// The channel side: CH channels at a time, accumulators in registers
// ---------------------------------------------------------------------------------------------
// out[k][u] += w[u] * sum_{q: k} a[q] x1[i_q][u]   (w == nullptr: unweighted path)
template <typename T, int CH>
NFFK_HD void cg_forward(const Path<T>& p, const T* a, const T* x1, const T* w, T* out, int64_t ld, int64_t n) {
  for (int64_t u0 = 0; u0 < n; u0 += CH) {
    int32_t q = 0;
    while (q < p.num_pairs) {
      const int32_t k = p.pairs[q].k;
      T acc[CH];
      NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] = T(0);
      for (; q < p.num_pairs && p.pairs[q].k == k; ++q) {
        const T aq = a[q];
        const T* row = x1 + p.pairs[q].i * ld + u0;
        NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] += aq * row[c];
      }
      T* o = out + k * ld + u0;
      if (w != nullptr) {
        NFFK_SIMD for (int c = 0; c < CH; ++c) o[c] += w[u0 + c] * acc[c];
      } else {
        NFFK_SIMD for (int c = 0; c < CH; ++c) o[c] += acc[c];
      }
    }
  }
}

// y[k][u] = sum_{q: k} a[q] x1[i_q][u] for every k < d3 (rows without pairs are zero).
template <typename T, int CH>
NFFK_HD void cg_contract(const Path<T>& p, const T* a, const T* x1, T* y, int64_t ld, int64_t n) {
  for (int32_t k = 0; k < p.d3; ++k) {
    NFFK_SIMD for (int64_t u = 0; u < n; ++u) y[k * ld + u] = T(0);
  }
  for (int64_t u0 = 0; u0 < n; u0 += CH) {
    int32_t q = 0;
    while (q < p.num_pairs) {
      const int32_t k = p.pairs[q].k;
      T acc[CH];
      NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] = T(0);
      for (; q < p.num_pairs && p.pairs[q].k == k; ++q) {
        const T aq = a[q];
        const T* row = x1 + p.pairs[q].i * ld + u0;
        NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] += aq * row[c];
      }
      T* o = y + k * ld + u0;
      NFFK_SIMD for (int c = 0; c < CH; ++c) o[c] = acc[c];
    }
  }
}

// gx1[i][u] += sum_{q: i} a[q] rows[k_q][u]   (rows: the weighted output gradient, [d3][ld])
template <typename T, int CH>
NFFK_HD void cg_adjoint(const Path<T>& p, const T* a, const T* rows, T* gx1, int64_t ld, int64_t n) {
  for (int64_t u0 = 0; u0 < n; u0 += CH) {
    int32_t q = 0;
    while (q < p.num_pairs) {
      const int32_t i = p.pairs[p.by_i[q]].i;
      T acc[CH];
      NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] = T(0);
      for (; q < p.num_pairs && p.pairs[p.by_i[q]].i == i; ++q) {
        const int32_t pq = p.by_i[q];
        const T aq = a[pq];
        const T* row = rows + p.pairs[pq].k * ld + u0;
        NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] += aq * row[c];
      }
      T* o = gx1 + i * ld + u0;
      NFFK_SIMD for (int c = 0; c < CH; ++c) o[c] += acc[c];
    }
  }
}

// s[q] += sum_u x1[i_q][u] rows[k_q][u]
template <typename T>
NFFK_HD void cg_dots(const Path<T>& p, const T* x1, const T* rows, T* s, int64_t ld, int64_t n) {
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    const T* xr = x1 + p.pairs[q].i * ld;
    const T* rr = rows + p.pairs[q].k * ld;
    T sum = T(0);
    NFFK_SIMD_SUM(sum) for (int64_t u = 0; u < n; ++u) sum += xr[u] * rr[u];
    s[q] += sum;
  }
}

// gw[u] = sum_k g[k][u] sum_{q: k} a[q] x1[i_q][u]
template <typename T, int CH>
NFFK_HD void cg_weight_grad(const Path<T>& p, const T* a, const T* x1, const T* g, T* gw, int64_t ld, int64_t n) {
  for (int64_t u0 = 0; u0 < n; u0 += CH) {
    T result[CH];
    NFFK_SIMD for (int c = 0; c < CH; ++c) result[c] = T(0);
    int32_t q = 0;
    while (q < p.num_pairs) {
      const int32_t k = p.pairs[q].k;
      T acc[CH];
      NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] = T(0);
      for (; q < p.num_pairs && p.pairs[q].k == k; ++q) {
        const T aq = a[q];
        const T* row = x1 + p.pairs[q].i * ld + u0;
        NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] += aq * row[c];
      }
      const T* gr = g + k * ld + u0;
      NFFK_SIMD for (int c = 0; c < CH; ++c) result[c] += gr[c] * acc[c];
    }
    NFFK_SIMD for (int c = 0; c < CH; ++c) gw[u0 + c] = result[c];
  }
}

// out[r][u] = w[u] * g[r][u] for r < rows (w == nullptr: copy)
template <typename T>
NFFK_HD void weight_rows(int32_t rows, const T* w, const T* g, T* out, int64_t ld, int64_t n) {
  for (int32_t r = 0; r < rows; ++r) {
    if (w != nullptr) {
      NFFK_SIMD for (int64_t u = 0; u < n; ++u) out[r * ld + u] = w[u] * g[r * ld + u];
    } else {
      NFFK_SIMD for (int64_t u = 0; u < n; ++u) out[r * ld + u] = g[r * ld + u];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// uvw: channel mixing. z[v][k][u] (ld1) from cg_contract per v; weights W[u][v][w] (w fastest);
// output blocks channel-major [d3][ld3] over the output channel w.
// ---------------------------------------------------------------------------------------------
// out[k][w] += sum_{u, v} z[v][k][u] W[u][v][w]
template <typename T>
NFFK_HD void uvw_forward(const Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3) {
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  for (int64_t u = 0; u < p.mul1; ++u)
    for (int64_t v = 0; v < V; ++v) {
      const T* wr = W + (u * V + v) * Wo;
      for (int64_t k = 0; k < d3; ++k) {
        const T zk = z[(v * d3 + k) * ld1 + u];
        T* o = out + k * ld3;
        NFFK_SIMD for (int64_t w = 0; w < Wo; ++w) o[w] += zk * wr[w];
      }
    }
}

// h[v][k][u] = sum_w W[u][v][w] g[k][w]
template <typename T>
NFFK_HD void uvw_contract_g(const Path<T>& p, const T* W, const T* g, int64_t ld3, T* h, int64_t ld1) {
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < d3; ++k)
      for (int64_t u = p.mul1; u < ld1; ++u) h[(v * d3 + k) * ld1 + u] = T(0);
  for (int64_t u = 0; u < p.mul1; ++u)
    for (int64_t v = 0; v < V; ++v) {
      const T* wr = W + (u * V + v) * Wo;
      for (int64_t k = 0; k < d3; ++k) {
        const T* gr = g + k * ld3;
        T sum = T(0);
        NFFK_SIMD_SUM(sum) for (int64_t w = 0; w < Wo; ++w) sum += wr[w] * gr[w];
        h[(v * d3 + k) * ld1 + u] = sum;
      }
    }
}

// gW[u][v][w] (+)= sum_k z[v][k][u] g[k][w]   (accumulate: add instead of assign)
template <typename T>
NFFK_HD void uvw_weight_grad(const Path<T>& p, const T* z, int64_t ld1, const T* g, int64_t ld3, T* gW,
                             bool accumulate) {
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  for (int64_t u = 0; u < p.mul1; ++u)
    for (int64_t v = 0; v < V; ++v) {
      T* o = gW + (u * V + v) * Wo;
      if (!accumulate) {
        NFFK_SIMD for (int64_t w = 0; w < Wo; ++w) o[w] = T(0);
      }
      for (int64_t k = 0; k < d3; ++k) {
        const T zk = z[(v * d3 + k) * ld1 + u];
        const T* gr = g + k * ld3;
        NFFK_SIMD for (int64_t w = 0; w < Wo; ++w) o[w] += zk * gr[w];
      }
    }
}

}  // namespace nffk::tp
