// Direct kernels for the commonest output block of NequIP and MACE message functions: written by
// one uvu path with one x2 channel, whose channels fill whole vectors and whose irrep has at most
// 7 components. For each group of channels they go from the inputs' rows to the output row in
// registers: the output (or g) stays in e3nn's [mul][d] order in memory and its components are
// (de)interleaved in registers, where the general tiles of tp_tiles.h stage every block in
// channel-major scratch (zero it, accumulate, transpose it back: as many memory passes again as
// the data itself, and the weights copied once more).
//
// Per element, A is the path's CG contracted with x2 (tiles::project_group: A[(i * d3 + k) * TE],
// coefficient included), X the x1 block channel-major [d1][ld], w the path's weights (nullptr:
// unweighted), all channel groups of N = vector width.
#pragma once
#include <cstdint>
#include <type_traits>

#include "transpose.h"

namespace nffk::cpu::direct {

#if defined(__AVX512F__)
inline constexpr bool kAvailable = true;
inline constexpr int kMaxD = 7;

template <typename T>
using Tile = typename detail::TileOf<T>::type;
template <typename T>
using Reg = typename Tile<T>::Reg;

// out[u][k] = w[u] sum_i A[i][k] X[i][u], stored straight into the output row (out = row + offset).
template <typename T, int D3>
void forward(int32_t d1, int64_t mul, const T* A, int64_t stride, const T* X, int64_t ld, const T* w, T* out) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> acc[D3], rows[D3];
    for (int k = 0; k < D3; ++k) acc[k] = Tile<T>::zero();
    for (int32_t i = 0; i < d1; ++i) {
      const Reg<T> x = Tile<T>::load_full(X + i * ld + u0);
      for (int k = 0; k < D3; ++k) acc[k] = Tile<T>::fma(Tile<T>::set1(A[(i * D3 + k) * stride]), x, acc[k]);
    }
    if (w != nullptr) {
      const Reg<T> wv = Tile<T>::load_full(w + u0);
      for (int k = 0; k < D3; ++k) acc[k] = Tile<T>::mul(acc[k], wv);
    }
    detail::interleave<T, D3>(acc, rows);
    for (int q = 0; q < D3; ++q) Tile<T>::store_full(out + u0 * D3 + q * N, rows[q]);
  }
}

// gX[i][u] += sum_k A[i][k] w[u] g[u][k], g read from its row (g = row + offset), gX channel-major.
template <typename T, int D3>
void vjp_x1(int32_t d1, int64_t mul, const T* A, int64_t stride, const T* g, const T* w, T* gX, int64_t ld) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> rows[D3], gk[D3];
    for (int q = 0; q < D3; ++q) rows[q] = Tile<T>::load_full(g + u0 * D3 + q * N);
    detail::deinterleave<T, D3>(rows, gk);
    if (w != nullptr) {
      const Reg<T> wv = Tile<T>::load_full(w + u0);
      for (int k = 0; k < D3; ++k) gk[k] = Tile<T>::mul(gk[k], wv);
    }
    for (int32_t i = 0; i < d1; ++i) {
      Reg<T> acc = Tile<T>::load_full(gX + i * ld + u0);
      for (int k = 0; k < D3; ++k) acc = Tile<T>::fma(Tile<T>::set1(A[(i * D3 + k) * stride]), gk[k], acc);
      Tile<T>::store_full(gX + i * ld + u0, acc);
    }
  }
}

// gw[u] (+)= sum_k g[u][k] sum_i A[i][k] X[i][u], into the weight row (gw = row + weight offset).
template <typename T, int D3>
void vjp_w(int32_t d1, int64_t mul, const T* A, int64_t stride, const T* X, int64_t ld, const T* g, T* gw,
           bool accumulate) {
  constexpr int N = Tile<T>::N;
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
    Reg<T> rows[D3], gk[D3], y[D3];
    for (int q = 0; q < D3; ++q) rows[q] = Tile<T>::load_full(g + u0 * D3 + q * N);
    detail::deinterleave<T, D3>(rows, gk);
    for (int k = 0; k < D3; ++k) y[k] = Tile<T>::zero();
    for (int32_t i = 0; i < d1; ++i) {
      const Reg<T> x = Tile<T>::load_full(X + i * ld + u0);
      for (int k = 0; k < D3; ++k) y[k] = Tile<T>::fma(Tile<T>::set1(A[(i * D3 + k) * stride]), x, y[k]);
    }
    Reg<T> acc = accumulate ? Tile<T>::load_full(gw + u0) : Tile<T>::zero();
    for (int k = 0; k < D3; ++k) acc = Tile<T>::fma(gk[k], y[k], acc);
    Tile<T>::store_full(gw + u0, acc);
  }
}

// kernel(std::integral_constant<int, d3>{}) for the block's component count 1 <= d3 <= kMaxD.
template <typename Kernel>
void with_components(int32_t d3, Kernel&& kernel) {
  switch (d3) {
    case 1: kernel(std::integral_constant<int, 1>{}); break;
    case 2: kernel(std::integral_constant<int, 2>{}); break;
    case 3: kernel(std::integral_constant<int, 3>{}); break;
    case 4: kernel(std::integral_constant<int, 4>{}); break;
    case 5: kernel(std::integral_constant<int, 5>{}); break;
    case 6: kernel(std::integral_constant<int, 6>{}); break;
    case 7: kernel(std::integral_constant<int, 7>{}); break;
    default: break;
  }
}
#else
inline constexpr bool kAvailable = false;
inline constexpr int kMaxD = 0;
#endif

}  // namespace nffk::cpu::direct
