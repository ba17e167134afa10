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
// (m1 = i, m3 = k) form a CGPair whose m2 run is contracted with one x2 channel v first, per element:
//     A[i][k] = coefficient * sum_j C[i, j, k] x2[v, j]                  (project_x2, d1 x d3)
// (vectorised over a tile of batch elements: it is scalar work per element) and everything
// channel-wise is then a small dense product with A, vectorised over channels u:
//     uvu forward   out[k][u] += sum_i A[i][k] (w x1)[i][u]             (gemm, Y = A^T X)
//     vjp x1        gx1[i][u] += sum_k A[i][k] (w g)[k][u]              (gemm, Y = A X)
//     vjp x2        S[i][k] = sum_u x1[i][u] (w g)[k][u]                 (pair_dots)
//                   gx2[v, j] += coefficient * sum_{i,k} C[i, j, k] S[i][k]   (unproject_x2)
//     vjp w         gw[u] = sum_k g[k][u] sum_i A[i][k] x1[i][u]         (weight_grad)
// uvw paths first form z[v][k][u] = sum_i A_v[i][k] x1[i][u] and mix channels with the weights.
// A is built from the CG non-zeros (a dense CG is never formed); its few zeros cost less than the
// bookkeeping of a sparse product would.
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
// For a tile of TE batch elements at once (lanes e), with x2 transposed to x2t[j][e] (the
// components of one x2 channel): A[(i * d3 + k) * TE + e] = coefficient * sum_j C[i, j, k] x2t[j][e],
// the path's CG contracted with x2, a dense d1 x d3 matrix per element built from the non-zeros.
template <typename T, int TE>
NFFK_HD void project_x2(const Path<T>& p, const T* x2t, T* A) {
  for (int32_t n = 0; n < p.d1 * p.d3 * TE; ++n) A[n] = T(0);
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    T acc[TE];
    NFFK_SIMD for (int e = 0; e < TE; ++e) acc[e] = T(0);
    for (int32_t nz = p.pairs[q].begin; nz < p.pairs[q].end; ++nz) {
      const T c = p.cg_value[nz];
      const T* x = x2t + p.cg_j[nz] * TE;
      NFFK_SIMD for (int e = 0; e < TE; ++e) acc[e] += c * x[e];
    }
    T* a = A + (p.pairs[q].i * p.d3 + p.pairs[q].k) * TE;
    NFFK_SIMD for (int e = 0; e < TE; ++e) a[e] = p.coefficient * acc[e];
  }
}

// The adjoint, for the x2 gradient: gx2t[j][e] += coefficient * sum_{i, k} C[i, j, k] S[(i * d3 + k) * TE + e]
// (only the (i, k) of the path's CG pairs are read).
template <typename T, int TE>
NFFK_HD void unproject_x2(const Path<T>& p, const T* S, T* gx2t) {
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    const T* s = S + (p.pairs[q].i * p.d3 + p.pairs[q].k) * TE;
    for (int32_t nz = p.pairs[q].begin; nz < p.pairs[q].end; ++nz) {
      const T c = p.coefficient * p.cg_value[nz];
      T* g = gx2t + p.cg_j[nz] * TE;
      NFFK_SIMD for (int e = 0; e < TE; ++e) g[e] += c * s[e];
    }
  }
}

// S[(i * d3 + k) * stride] = sum_u x1[i][u] rows[k][u] for the (i, k) of the path's CG pairs.
template <typename T>
NFFK_HD void pair_dots(const Path<T>& p, const T* x1, const T* rows, int64_t ld, int64_t n, T* S, int64_t stride) {
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    const T* xr = x1 + p.pairs[q].i * ld;
    const T* rr = rows + p.pairs[q].k * ld;
    T sum = T(0);
    NFFK_SIMD_SUM(sum) for (int64_t u = 0; u < n; ++u) sum += xr[u] * rr[u];
    S[(p.pairs[q].i * p.d3 + p.pairs[q].k) * stride] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// The channel side: small dense products of channel-major blocks, CH channels at a time with
// RB rows of accumulators in registers.
// ---------------------------------------------------------------------------------------------
// Y[r][u] += sum_c M[r * sr + c * sc] X[c][u] for rows r0 <= r < r0 + RB, channels u0 <= u < u0 + CH.
template <typename T, int CH, int RB>
NFFK_HD void gemm_block(int32_t r0, int32_t cols, const T* M, int64_t sr, int64_t sc, const T* X, int64_t ldx,
                        T* Y, int64_t ldy, int64_t u0) {
  T acc[RB][CH];
  for (int b = 0; b < RB; ++b) {
    NFFK_SIMD for (int c = 0; c < CH; ++c) acc[b][c] = T(0);
  }
  for (int32_t col = 0; col < cols; ++col) {
    const T* x = X + col * ldx + u0;
    for (int b = 0; b < RB; ++b) {
      const T m = M[(r0 + b) * sr + col * sc];
      NFFK_SIMD for (int c = 0; c < CH; ++c) acc[b][c] += m * x[c];
    }
  }
  for (int b = 0; b < RB; ++b) {
    T* y = Y + (r0 + b) * ldy + u0;
    NFFK_SIMD for (int c = 0; c < CH; ++c) y[c] += acc[b][c];
  }
}

// Y[r][u] += sum_c M[r * sr + c * sc] X[c][u] for r < rows, u < n (n a multiple of CH).
// With M = A (sr = 1, sc = d3): Y = A^T X, the forward map of a path; with sr = d3, sc = 1: Y = A X.
template <typename T, int CH>
NFFK_HD void gemm(int32_t rows, int32_t cols, const T* M, int64_t sr, int64_t sc, const T* X, int64_t ldx, T* Y,
                  int64_t ldy, int64_t n) {
  for (int64_t u0 = 0; u0 < n; u0 += CH) {
    int32_t r = 0;
    for (; r + 4 <= rows; r += 4) gemm_block<T, CH, 4>(r, cols, M, sr, sc, X, ldx, Y, ldy, u0);
    switch (rows - r) {
      case 3: gemm_block<T, CH, 3>(r, cols, M, sr, sc, X, ldx, Y, ldy, u0); break;
      case 2: gemm_block<T, CH, 2>(r, cols, M, sr, sc, X, ldx, Y, ldy, u0); break;
      case 1: gemm_block<T, CH, 1>(r, cols, M, sr, sc, X, ldx, Y, ldy, u0); break;
      default: break;
    }
  }
}

// gw[u] = sum_k G[k][u] sum_i A[i * si + k * sk] X[i][u]: the weight gradient of a uvu path (per x2 channel).
template <typename T, int CH, int RB>
NFFK_HD void weight_grad_block(int32_t k0, const T* A, int64_t si, int64_t sk, int32_t d1, const T* X, const T* G,
                               int64_t ld, int64_t u0, T* result) {
  T acc[RB][CH];
  for (int b = 0; b < RB; ++b) {
    NFFK_SIMD for (int c = 0; c < CH; ++c) acc[b][c] = T(0);
  }
  for (int32_t i = 0; i < d1; ++i) {
    const T* x = X + i * ld + u0;
    for (int b = 0; b < RB; ++b) {
      const T a = A[i * si + (k0 + b) * sk];
      NFFK_SIMD for (int c = 0; c < CH; ++c) acc[b][c] += a * x[c];
    }
  }
  for (int b = 0; b < RB; ++b) {
    const T* g = G + (k0 + b) * ld + u0;
    NFFK_SIMD for (int c = 0; c < CH; ++c) result[c] += g[c] * acc[b][c];
  }
}

template <typename T, int CH>
NFFK_HD void weight_grad(const T* A, int64_t si, int64_t sk, int32_t d1, int32_t d3, const T* X, const T* G, int64_t ld,
                         int64_t n, T* gw) {
  for (int64_t u0 = 0; u0 < n; u0 += CH) {
    T result[CH];
    NFFK_SIMD for (int c = 0; c < CH; ++c) result[c] = T(0);
    int32_t k = 0;
    for (; k + 4 <= d3; k += 4) weight_grad_block<T, CH, 4>(k, A, si, sk, d1, X, G, ld, u0, result);
    switch (d3 - k) {
      case 3: weight_grad_block<T, CH, 3>(k, A, si, sk, d1, X, G, ld, u0, result); break;
      case 2: weight_grad_block<T, CH, 2>(k, A, si, sk, d1, X, G, ld, u0, result); break;
      case 1: weight_grad_block<T, CH, 1>(k, A, si, sk, d1, X, G, ld, u0, result); break;
      default: break;
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
// out[k][w] += sum_{u, v} z[v][k][u] W[u][v][w] for rows k0 <= k < k0 + RB and the NC * CH output
// channels from w0 (those past Wo are not read: the tail of a weight row is masked). Each weight
// row's chunks are read together, so the per-element weights (most of a uvw kernel's bytes)
// stream through once in memory order.
template <typename T, int CH, int RB, int NC>
NFFK_HD void uvw_forward_block(const Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3,
                               int32_t k0, int64_t w0) {
  constexpr int C = NC * CH;
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  const int64_t count = Wo - w0 < C ? Wo - w0 : C;
  T acc[RB][C];
  for (int b = 0; b < RB; ++b) {
    NFFK_SIMD for (int c = 0; c < C; ++c) acc[b][c] = T(0);
  }
  for (int64_t u = 0; u < p.mul1; ++u)
    for (int64_t v = 0; v < V; ++v) {
      const T* wr = W + (u * V + v) * Wo + w0;
      T wv[C];
      if (count == C) {
        NFFK_SIMD for (int c = 0; c < C; ++c) wv[c] = wr[c];
      } else {
        NFFK_SIMD for (int c = 0; c < C; ++c) wv[c] = c < count ? wr[c] : T(0);
      }
      for (int b = 0; b < RB; ++b) {
        const T zk = z[(v * d3 + k0 + b) * ld1 + u];
        NFFK_SIMD for (int c = 0; c < C; ++c) acc[b][c] += zk * wv[c];
      }
    }
  for (int b = 0; b < RB; ++b) {
    T* o = out + (k0 + b) * ld3 + w0;
    NFFK_SIMD for (int c = 0; c < C; ++c) o[c] += acc[b][c];
  }
}

// Rows k0 .. k0 + RB of uvw_forward, the output channels in groups of up to 4 chunks.
template <typename T, int CH, int RB>
NFFK_HD void uvw_forward_rows(const Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3,
                              int32_t k0) {
  for (int64_t w0 = 0; w0 < p.mul_out; w0 += 4 * CH) {
    switch ((p.mul_out - w0 + CH - 1) / CH) {
      case 1: uvw_forward_block<T, CH, RB, 1>(p, z, ld1, W, out, ld3, k0, w0); break;
      case 2: uvw_forward_block<T, CH, RB, 2>(p, z, ld1, W, out, ld3, k0, w0); break;
      case 3: uvw_forward_block<T, CH, RB, 3>(p, z, ld1, W, out, ld3, k0, w0); break;
      default: uvw_forward_block<T, CH, RB, 4>(p, z, ld1, W, out, ld3, k0, w0); break;
    }
  }
}

// out[k][w] += sum_{u, v} z[v][k][u] W[u][v][w]   (z: [V][d3][ld1]; out: [d3][ld3], ld3 >= round_up(Wo, CH))
template <typename T, int CH>
NFFK_HD void uvw_forward(const Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3) {
  int32_t k = 0;
  for (; k + 4 <= p.d3; k += 4) uvw_forward_rows<T, CH, 4>(p, z, ld1, W, out, ld3, k);
  switch (p.d3 - k) {
    case 3: uvw_forward_rows<T, CH, 3>(p, z, ld1, W, out, ld3, k); break;
    case 2: uvw_forward_rows<T, CH, 2>(p, z, ld1, W, out, ld3, k); break;
    case 1: uvw_forward_rows<T, CH, 1>(p, z, ld1, W, out, ld3, k); break;
    default: break;
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
template <typename T, int CH>
NFFK_HD void uvw_weight_grad(const Path<T>& p, const T* z, int64_t ld1, const T* g, int64_t ld3, T* gW,
                             bool accumulate) {
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  for (int64_t u = 0; u < p.mul1; ++u)
    for (int64_t v = 0; v < V; ++v) {
      T* o = gW + (u * V + v) * Wo;
      for (int64_t w0 = 0; w0 < Wo; w0 += CH) {
        T acc[CH];
        NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] = T(0);
        for (int64_t k = 0; k < d3; ++k) {
          const T zk = z[(v * d3 + k) * ld1 + u];
          const T* gr = g + k * ld3 + w0;  // g rows are padded to ld3: reading a full chunk is safe
          NFFK_SIMD for (int c = 0; c < CH; ++c) acc[c] += zk * gr[c];
        }
        const int64_t count = Wo - w0 < CH ? Wo - w0 : CH;
        if (count == CH) {  // a fixed trip count: vector stores (GCC made the general loop a `rep movs`)
          if (accumulate) {
            NFFK_SIMD for (int c = 0; c < CH; ++c) o[w0 + c] += acc[c];
          } else {
            NFFK_SIMD for (int c = 0; c < CH; ++c) o[w0 + c] = acc[c];
          }
        } else if (accumulate) {
          for (int64_t c = 0; c < count; ++c) o[w0 + c] += acc[c];
        } else {
          for (int64_t c = 0; c < count; ++c) o[w0 + c] = acc[c];
        }
      }
    }
}

}  // namespace nffk::tp
