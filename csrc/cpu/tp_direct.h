// Direct kernels for the commonest output block of NequIP and MACE message functions: written by
// one uvu path with one x2 channel, whose channels fill whole vectors (irreps up to l = 7). For
// each group of channels they go from the inputs' rows to the output row in registers: the output
// (or g) stays in e3nn's [mul][d] order in memory and its components are interleaved in registers
// (register transposes past 7 components), where the general tiles of tp_tiles.h stage every block
// in channel-major scratch (zero it, accumulate, transpose it back: as many memory passes again as
// the data itself, and the weights copied once more).
//
// Per element, A is the path's CG contracted with x2 (tiles::project_group: A[(i * d3 + k) * TE],
// coefficient included), X the x1 block channel-major [d1][ld], w the path's weights (nullptr:
// unweighted), all channel groups of N = vector width.
#pragma once
#include <cstdint>
#include <type_traits>

#include "scratch.h"
#include "streaming.h"
#include "transpose.h"

namespace nffk::cpu::direct {

// A's (and vjp_x2's S's) entries lie the tile's TE elements apart. A constant, so that the FMA loops
// index them with immediate offsets (a_entry): with the stride a parameter, GCC multiplied it out
// per FMA (lea + imul + FMA).
template <typename T>
inline constexpr int64_t kStride = kLanes<T>;

#if defined(__AVX512F__)
inline constexpr bool kAvailable = true;

template <typename T>
using Tile = typename detail::TileOf<T>::type;
template <typename T>
using Reg = typename Tile<T>::Reg;

// Stores cols[k] (component k of N channels) as the channels' rows: rows = &row[u0][0], N * D
// contiguous. stream: by streaming stores where rows is 64-byte aligned (see streaming.h).
template <typename T, int D>
inline void store_rows(Reg<T>* cols, T* rows, bool stream = false) {
  constexpr int N = Tile<T>::N;
  if constexpr (D <= 7) {
    Reg<T> packed[D];
    detail::interleave<T, D>(cols, packed);
    if (stream && reinterpret_cast<uintptr_t>(rows) % 64 == 0) {
      for (int q = 0; q < D; ++q) Tile<T>::stream_full(rows + q * N, packed[q]);
      return;
    }
    for (int q = 0; q < D; ++q) Tile<T>::store_full(rows + q * N, packed[q]);
  } else {
    alignas(64) T staged[N * D];  // streamed: the rows gathered in L1, then whole lines out
    T* to = stream ? staged : rows;
    for (int m0 = 0; m0 < D; m0 += N) {  // a register transpose per N components
      const int count = D - m0 < N ? D - m0 : N;
      Reg<T> r[N];
      for (int m = 0; m < N; ++m) r[m] = m < count ? cols[m0 + m] : Tile<T>::zero();
      Tile<T>::transpose(r);
      for (int u = 0; u < N; ++u) Tile<T>::store(to + u * D + m0, r[u], count);
    }
    if (stream) copy_out(staged, N * D, rows, true);
  }
}

// The inverse: cols[k] = component k of the N channels whose rows start at `rows`.
template <typename T, int D>
inline void load_rows(const T* rows, Reg<T>* cols) {
  constexpr int N = Tile<T>::N;
  if constexpr (D <= 7) {
    Reg<T> packed[D];
    for (int q = 0; q < D; ++q) packed[q] = Tile<T>::load_full(rows + q * N);
    detail::deinterleave<T, D>(packed, cols);
  } else {
    for (int m0 = 0; m0 < D; m0 += N) {
      const int count = D - m0 < N ? D - m0 : N;
      Reg<T> r[N];
      for (int u = 0; u < N; ++u) r[u] = Tile<T>::load(rows + u * D + m0, count);
      Tile<T>::transpose(r);
      for (int m = 0; m < count; ++m) cols[m0 + m] = r[m];
    }
  }
}

// gk[k] = component k of g for the N channels from u0, g either the block in its row (e3nn's
// [mul][D] order; g_ld == 0) or a channel-major block [D][g_ld] (the convolution converts each
// receiver's gradient row once per call).
template <typename T, int D>
inline void load_g(const T* g, int64_t g_ld, int64_t u0, Reg<T>* gk) {
  if (g_ld == 0) {
    load_rows<T, D>(g + u0 * D, gk);
    return;
  }
  for (int k = 0; k < D; ++k) gk[k] = Tile<T>::load_full(g + k * g_ld + u0);
}

// The N numbers at p = v: by a streaming store with `stream` where p is 64-byte aligned (see
// streaming.h), else a plain one.
template <typename T>
inline void put(T* p, Reg<T> v, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(p) % 64 == 0) {
    Tile<T>::stream_full(p, v);
  } else {
    Tile<T>::store_full(p, v);
  }
}

// v[k] *= w[u] for the N channels from u0 (w == nullptr: an unweighted path, unchanged).
template <typename T, int D>
inline void scale_by_weights(const T* w, int64_t u0, Reg<T>* v) {
  if (w == nullptr) return;
  const Reg<T> wv = Tile<T>::load_full(w + u0);
  for (int k = 0; k < D; ++k) v[k] = Tile<T>::mul(v[k], wv);
}

// A[i][k] in every lane. In 64-bit arithmetic, so that an unrolled k becomes an immediate offset.
template <typename T, int D3>
inline Reg<T> a_entry(const T* A, int32_t i, int k) {
  return Tile<T>::set1(A[(int64_t(i) * D3 + k) * kStride<T>]);
}

// acc[k] = w[u] sum_i A[i][k] X[i][u] for the N channels from u0: an edge's output block.
template <typename T, int D3>
inline void forward_channels(int32_t d1, const T* A, const T* X, int64_t ld, const T* w, int64_t u0,
                             Reg<T>* acc) {
  for (int k = 0; k < D3; ++k) acc[k] = Tile<T>::zero();
  for (int32_t i = 0; i < d1; ++i) {
    const Reg<T> x = Tile<T>::load_full(X + i * ld + u0);
    for (int k = 0; k < D3; ++k) acc[k] = Tile<T>::fma(a_entry<T, D3>(A, i, k), x, acc[k]);
  }
  scale_by_weights<T, D3>(w, u0, acc);
}

// out[u][k] = w[u] sum_i A[i][k] X[i][u], stored straight into the output row (out = row + offset),
// by streaming stores with `stream`.
template <typename T, int D3>
void forward(int32_t d1, int64_t mul, const T* A, const T* X, int64_t ld, const T* w, T* out,
             bool stream) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> acc[D3];
    forward_channels<T, D3>(d1, A, X, ld, w, u0, acc);
    store_rows<T, D3>(acc, out + u0 * D3, stream);
  }
}

// sum[k][u] += w[u] sum_i A[i][k] X[i][u] into a channel-major block [D3][sum_ld]: the
// convolution's sum of a receiver's edges.
template <typename T, int D3>
void forward_accumulate(int32_t d1, int64_t mul, const T* A, const T* X, int64_t ld, const T* w,
                        T* sum, int64_t sum_ld) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> acc[D3];
    forward_channels<T, D3>(d1, A, X, ld, w, u0, acc);
    for (int k = 0; k < D3; ++k)
      Tile<T>::store_full(sum + k * sum_ld + u0, Tile<T>::add(Tile<T>::load_full(sum + k * sum_ld + u0), acc[k]));
  }
}

// gX[i][u] += sum_k A[i][k] w[u] g[u][k] (g and g_ld as for load_g), gX channel-major.
template <typename T, int D3>
void vjp_x1(int32_t d1, int64_t mul, const T* A, const T* g, int64_t g_ld, const T* w, T* gX,
            int64_t ld) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> gk[D3];
    load_g<T, D3>(g, g_ld, u0, gk);
    scale_by_weights<T, D3>(w, u0, gk);
    for (int32_t i = 0; i < d1; ++i) {
      Reg<T> acc = Tile<T>::load_full(gX + i * ld + u0);
      for (int k = 0; k < D3; ++k) acc = Tile<T>::fma(a_entry<T, D3>(A, i, k), gk[k], acc);
      Tile<T>::store_full(gX + i * ld + u0, acc);
    }
  }
}

// gw[u] (+)= sum_k g[u][k] sum_i A[i][k] X[i][u], into the weight row (gw = row + weight offset;
// g and g_ld as for load_g; stream: by streaming stores, not with accumulate).
template <typename T, int D3>
void vjp_w(int32_t d1, int64_t mul, const T* A, const T* X, int64_t ld, const T* g, int64_t g_ld,
           T* gw, bool accumulate, bool stream) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> gk[D3], y[D3];
    load_g<T, D3>(g, g_ld, u0, gk);
    for (int k = 0; k < D3; ++k) y[k] = Tile<T>::zero();
    for (int32_t i = 0; i < d1; ++i) {
      const Reg<T> x = Tile<T>::load_full(X + i * ld + u0);
      for (int k = 0; k < D3; ++k) y[k] = Tile<T>::fma(a_entry<T, D3>(A, i, k), x, y[k]);
    }
    Reg<T> acc = accumulate ? Tile<T>::load_full(gw + u0) : Tile<T>::zero();
    for (int k = 0; k < D3; ++k) acc = Tile<T>::fma(gk[k], y[k], acc);
    put<T>(gw + u0, acc, stream);
  }
}

// Both of the above for one weighted path, from one contraction of A with g per row of x1:
// t[i][u] = sum_k A[i][k] g[u][k], then gX[i][u] += w[u] t[i][u] and gw[u] (+)= sum_i X[i][u] t[i][u]
// (D3 + 2 FMAs per row and channel group, where the two kernels take 2 D3 + 1).
template <typename T, int D3>
void vjp_x1_w(int32_t d1, int64_t mul, const T* A, const T* g, int64_t g_ld, const T* w, T* gX,
              const T* X, int64_t ld, T* gw, bool accumulate, bool stream) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> gk[D3];
    load_g<T, D3>(g, g_ld, u0, gk);
    const Reg<T> wu = Tile<T>::load_full(w + u0);
    Reg<T> acc = accumulate ? Tile<T>::load_full(gw + u0) : Tile<T>::zero();
    for (int32_t i = 0; i < d1; ++i) {
      Reg<T> t = Tile<T>::zero();
      for (int k = 0; k < D3; ++k) t = Tile<T>::fma(a_entry<T, D3>(A, i, k), gk[k], t);
      T* gx = gX + i * ld + u0;
      Tile<T>::store_full(gx, Tile<T>::fma(wu, t, Tile<T>::load_full(gx)));
      acc = Tile<T>::fma(Tile<T>::load_full(X + i * ld + u0), t, acc);
    }
    put<T>(gw + u0, acc, stream);
  }
}

// S[((i0 + r) * D3 + k) * kStride] = sum_u X[i0 + r][u] G[k][u] for ROWS rows r of X: their
// ROWS * D3 sums stay in registers across the channel groups (one load of X per D3 FMAs), then are
// reduced N at a time (Tile::sum_rows). ROWS is a constant so that no sum needs a stack copy.
template <typename T, int D3, int ROWS>
inline void pair_sums(int32_t i0, int64_t mul, const T* X, int64_t ld, const T* G, T* S) {
  constexpr int N = Tile<T>::N, M = ROWS * D3;
  Reg<T> acc[M];
  for (int m = 0; m < M; ++m) acc[m] = Tile<T>::zero();
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> gk[D3];
    for (int k = 0; k < D3; ++k) gk[k] = Tile<T>::load_full(G + k * mul + u0);
    for (int r = 0; r < ROWS; ++r) {
      const Reg<T> x = Tile<T>::load_full(X + (i0 + r) * ld + u0);
      for (int k = 0; k < D3; ++k) acc[r * D3 + k] = Tile<T>::fma(x, gk[k], acc[r * D3 + k]);
    }
  }
  for (int m0 = 0; m0 < M; m0 += N) {
    Reg<T> r[N];
    for (int q = 0; q < N; ++q) r[q] = m0 + q < M ? acc[m0 + q] : Tile<T>::zero();
    alignas(64) T sums[N];
    Tile<T>::store_full(sums, Tile<T>::sum_rows(r));
    for (int q = 0; q < N && m0 + q < M; ++q) S[(i0 * D3 + m0 + q) * kStride<T>] = sums[q];
  }
}

// fn(i0, rows) over the d1 rows of x1 in blocks of R (rows: an integral_constant), so that the
// R * D3 pair sums of a block, D3 vectors of g and one of x1 fit in 31 registers. The rest, fewer
// than R rows: a count with_components has for the irreps' d1 (1-7, odd up to 15); any other row
// by row.
template <int D3, typename Fn>
inline void in_row_blocks(int32_t d1, Fn&& fn) {
  constexpr int R = D3 < 14 ? (28 - D3) / D3 : 1;
  int32_t i0 = 0;
  for (; i0 + R <= d1; i0 += R) fn(i0, std::integral_constant<int, R>{});
  if (i0 == d1) return;
  bool done = false;
  with_components<(R > 16 ? 15 : R - 1)>(d1 - i0, [&](auto rows) {
    fn(i0, rows);
    done = true;
  });
  for (; !done && i0 < d1; ++i0) fn(i0, std::integral_constant<int, 1>{});
}

// S[(i * d3 + k) * kStride] = sum_u X[i][u] w[u] g[u][k] for every (i, k) of the path, the CG's
// zero pairs included (13-28 % more FMAs on nequip and mace, against two loads per FMA when the
// pairs are walked one by one). The weighted g goes channel-major into G ([D3][mul], L1) once; then
// R rows of X at a time (pair_sums, in_row_blocks).
template <typename T, int D3>
void vjp_x2(int32_t d1, int64_t mul, const T* X, int64_t ld, const T* g, int64_t g_ld, const T* w, T* G, T* S) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> gk[D3];
    load_g<T, D3>(g, g_ld, u0, gk);
    scale_by_weights<T, D3>(w, u0, gk);
    for (int k = 0; k < D3; ++k) Tile<T>::store_full(G + k * mul + u0, gk[k]);
  }
  in_row_blocks<D3>(d1, [&](int32_t i0, auto rows) {
    pair_sums<T, D3, decltype(rows)::value>(i0, mul, X, ld, G, S);
  });
}

// r[t], lane e = row(e)[t] for the tile's elements e < count (zero past it): element rows as
// columns, by an N x N register transpose.
template <typename T, typename Row>
inline void rows_to_lanes(int64_t count, Row&& row, Reg<T>* r) {
  constexpr int N = Tile<T>::N;
  for (int e = 0; e < N; ++e) r[e] = e < count ? Tile<T>::load_full(row(e)) : Tile<T>::zero();
  Tile<T>::transpose(r);
}

// XT[(i * ld + u) * N + e] = X_e[i][u] for a block of whole channel groups (X[e]: element e's block,
// channel-major [d][ld], ld = mul): the layout of vjp_x2_across's x1.
template <typename T>
void block_to_lanes(int32_t d, const T* const* X, int64_t ld, int64_t count, T* XT) {
  constexpr int N = Tile<T>::N;
  Reg<T> r[N];
  for (int32_t i = 0; i < d; ++i)
    for (int64_t u0 = 0; u0 < ld; u0 += N) {
      rows_to_lanes<T>(count, [&](int e) { return X[e] + i * ld + u0; }, r);
      for (int u = 0; u < N; ++u) Tile<T>::store_full(XT + (i * ld + u0 + u) * N, r[u]);
    }
}

// S[(i * D3 + k) * N + e] (+)= sum_u XT[i][u][e] GT[k][u][e] over one channel group, for ROWS rows
// from i0 (XT's rows x_stride numbers apart; first: S not yet written).
template <typename T, int D3, int ROWS>
inline void across_sums(int32_t i0, const T* XT, int64_t x_stride, const T* GT, T* S, bool first) {
  constexpr int N = Tile<T>::N, M = ROWS * D3;
  Reg<T> acc[M];
  for (int m = 0; m < M; ++m) acc[m] = first ? Tile<T>::zero() : Tile<T>::load_full(S + (i0 * D3 + m) * N);
  for (int u = 0; u < N; ++u) {
    Reg<T> gk[D3];
    for (int k = 0; k < D3; ++k) gk[k] = Tile<T>::load_full(GT + (k * N + u) * N);
    for (int r = 0; r < ROWS; ++r) {
      const Reg<T> x = Tile<T>::load_full(XT + (i0 + r) * x_stride + u * N);
      for (int k = 0; k < D3; ++k) acc[r * D3 + k] = Tile<T>::fma(x, gk[k], acc[r * D3 + k]);
    }
  }
  for (int m = 0; m < M; ++m) Tile<T>::store_full(S + (i0 * D3 + m) * N, acc[m]);
}

// vjp_x2's pair sums of a path for the tile's elements at once, lanes = elements (N = the tile's
// TE): S[(i * D3 + k) * N + e] = sum_u X_e[i][u] w_e[u] g_e[u][k]. Per group of N channels, N x N
// register transposes put the elements' rows of g and w in lanes (x1's, XT, are made once per tile
// by block_to_lanes); then each pair (i, k) takes one FMA per channel into a vector of the elements'
// sums. vjp_x2 sums a pair over one element's channels, reduces it across the lanes and stores it
// as a scalar: for a path of one or two channel groups (the models' 16-channel convolutions,
// high-order's 32 channels) the reductions and the stores were most of the work.
// G[e] (with g_ld as for load_g) and W[e] (nullptr: unweighted): element e's blocks; rows from
// `count` on are taken as zero. GT: scratch of D3 N N numbers.
template <typename T, int D3>
void vjp_x2_across(int32_t d1, int64_t mul, const T* XT, const T* const* G, int64_t g_ld, const T* const* W,
                   int64_t count, T* GT, T* S) {
  constexpr int N = Tile<T>::N;
  Reg<T> r[N], wt[N];
  const bool weighted = W[0] != nullptr;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    if (weighted) {
      rows_to_lanes<T>(count, [&](int e) { return W[e] + u0; }, r);
      for (int u = 0; u < N; ++u) wt[u] = r[u];
    }
    const auto put_g = [&](int k, int u, Reg<T> v) {
      Tile<T>::store_full(GT + (k * N + u) * N, weighted ? Tile<T>::mul(v, wt[u]) : v);
    };
    if (g_ld == 0) {  // e3nn's [mul][D3] rows: number f of the group's N D3 is (u, k) = (f / D3, f % D3)
      for (int q = 0; q < D3; ++q) {
        rows_to_lanes<T>(count, [&](int e) { return G[e] + u0 * D3 + q * N; }, r);
        for (int t = 0; t < N; ++t) put_g((q * N + t) % D3, (q * N + t) / D3, r[t]);
      }
    } else {
      for (int k = 0; k < D3; ++k) {
        rows_to_lanes<T>(count, [&](int e) { return G[e] + k * g_ld + u0; }, r);
        for (int u = 0; u < N; ++u) put_g(k, u, r[u]);
      }
    }
    in_row_blocks<D3>(d1, [&](int32_t i0, auto rows) {
      across_sums<T, D3, decltype(rows)::value>(i0, XT + u0 * N, mul * N, GT, S, u0 == 0);
    });
  }
}

#else
// Without AVX-512 no block is direct (kAvailable): the kernels are declared for the call sites in
// tp_tiles.h, which discard them at compile time, and never defined.
inline constexpr bool kAvailable = false;
template <typename T, int D3>
void forward(int32_t d1, int64_t mul, const T* A, const T* X, int64_t ld, const T* w, T* out,
             bool stream);
template <typename T, int D3>
void forward_accumulate(int32_t d1, int64_t mul, const T* A, const T* X, int64_t ld, const T* w,
                        T* sum, int64_t sum_ld);
template <typename T, int D3>
void vjp_x1(int32_t d1, int64_t mul, const T* A, const T* g, int64_t g_ld, const T* w, T* gX,
            int64_t ld);
template <typename T, int D3>
void vjp_x2(int32_t d1, int64_t mul, const T* X, int64_t ld, const T* g, int64_t g_ld, const T* w, T* G, T* S);
template <typename T, int D3>
void vjp_w(int32_t d1, int64_t mul, const T* A, const T* X, int64_t ld, const T* g, int64_t g_ld,
           T* gw, bool accumulate, bool stream);
template <typename T, int D3>
void vjp_x1_w(int32_t d1, int64_t mul, const T* A, const T* g, int64_t g_ld, const T* w, T* gX,
              const T* X, int64_t ld, T* gw, bool accumulate, bool stream);
template <typename T>
void block_to_lanes(int32_t d, const T* const* X, int64_t ld, int64_t count, T* XT);
template <typename T, int D3>
void vjp_x2_across(int32_t d1, int64_t mul, const T* XT, const T* const* G, int64_t g_ld, const T* const* W,
                   int64_t count, T* GT, T* S);
#endif

}  // namespace nffk::cpu::direct
