// Block transposes between e3nn's [mul][d] rows and the channel-major [d][ld] scratch of the
// element-level code, with AVX-512 register tiles where available (16x16 floats, 8x8 doubles)
// and the portable loops of nffk/tensor_product.h otherwise. The transposes are a large share of
// a memory-bound kernel's instructions (a scalar transpose costs a load and a store per number).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nffk/tensor_product.h"

namespace nffk::cpu {

// Component counts with compiled register kernels: 1..7 and the odd ones up to 15 (irreps up to l = 7).
inline bool has_component_kernels(int64_t d) { return (d >= 1 && d <= 7) || (d <= 15 && d % 2 == 1); }

// kernel(std::integral_constant<int, d>{}) for such a d (has_component_kernels) up to MaxD, else
// nothing; kernels for larger d are not instantiated (callers whose kernels stop short of 15).
template <int MaxD = 15, typename Kernel>
void with_components(int64_t d, Kernel&& kernel) {
  auto run = [&](auto D) {
    if constexpr (decltype(D)::value <= MaxD) kernel(D);
  };
  switch (d) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    case 5: run(std::integral_constant<int, 5>{}); break;
    case 6: run(std::integral_constant<int, 6>{}); break;
    case 7: run(std::integral_constant<int, 7>{}); break;
    case 9: run(std::integral_constant<int, 9>{}); break;
    case 11: run(std::integral_constant<int, 11>{}); break;
    case 13: run(std::integral_constant<int, 13>{}); break;
    case 15: run(std::integral_constant<int, 15>{}); break;
    default: break;
  }
}

#if defined(__AVX512F__)
namespace detail {

inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
    const __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

inline void transpose8(__m512d* r) {
  __m512d t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0x88);
    r[i + 1] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0x88);
    r[i + 2] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0xdd);
    r[i + 3] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0xdd);
  }
  for (int i = 0; i < 2; ++i) {
    t[i] = _mm512_shuffle_f64x2(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f64x2(r[i], r[i + 4], 0xdd);
    t[i + 2] = _mm512_shuffle_f64x2(r[i + 2], r[i + 6], 0x88);
    t[i + 6] = _mm512_shuffle_f64x2(r[i + 2], r[i + 6], 0xdd);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// A loaded vector kept in its register: without this GCC folds the load into each instruction that
// uses the vector, and repeated loads of a line that misses the caches stall the core's stream of
// memory reads (measured: a front-to-back read with 4 FMAs per line 1.44 -> 0.79 us per 28.5 KB).
template <typename R>
inline R pinned(R r) {
  asm("" : "+v"(r));
  return r;
}

// Register tiles: rows of up to N numbers, masked at the edges of the block.
struct Float16 {
  using Reg = __m512;
  static constexpr int N = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p, int count) { return pinned(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p)); }
  static Reg load_full(const float* p) { return pinned(_mm512_loadu_ps(p)); }
  static void store(float* p, Reg v, int count) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v); }
  static void store_full(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void stream_full(float* p, Reg v) { _mm512_stream_ps(p, v); }  // p 64-byte aligned
  static void transpose(Reg* r) { transpose16(r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg set1(float x) { return _mm512_set1_ps(x); }
  // Lane i = a[index[i]] for index[i] < N, else b[index[i] - N].
  static Reg permute2(Reg a, const int32_t* index, Reg b) {
    return _mm512_permutex2var_ps(a, _mm512_load_si512(index), b);
  }
  // Lane i = the sum of r[i]'s lanes. A halving tree (each step adds the two halves of pairs of
  // vectors, 45 shuffles and adds) instead of a transpose and adds (79). With r read in the order
  // 4 (j % 4) + j / 4, the tree leaves the sums in order.
  static Reg sum_rows(const Reg* r) {
    Reg a[8], b[4], c[2];
    auto in = [&](int j) { return r[(j % 4) * 4 + j / 4]; };
    for (int i = 0; i < 8; ++i)  // halves of 256 bits: lanes 0-7 from in(2i), 8-15 from in(2i + 1)
      a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(in(2 * i), in(2 * i + 1), 0x44),
                           _mm512_shuffle_f32x4(in(2 * i), in(2 * i + 1), 0xEE));
    for (int i = 0; i < 4; ++i)  // quarters of 128 bits, one per input
      b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                           _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; ++i)  // pairs of lanes within each quarter
      c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44), _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
  }
};

struct Double8 {
  using Reg = __m512d;
  static constexpr int N = 8;
  static Reg zero() { return _mm512_setzero_pd(); }
  static Reg load(const double* p, int count) { return pinned(_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p)); }
  static Reg load_full(const double* p) { return pinned(_mm512_loadu_pd(p)); }
  static void store(double* p, Reg v, int count) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v); }
  static void store_full(double* p, Reg v) { _mm512_storeu_pd(p, v); }
  static void stream_full(double* p, Reg v) { _mm512_stream_pd(p, v); }  // p 64-byte aligned
  static void transpose(Reg* r) { transpose8(r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_pd(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_pd(a, b); }
  static Reg set1(double x) { return _mm512_set1_pd(x); }
  static Reg permute2(Reg a, const int64_t* index, Reg b) {
    return _mm512_permutex2var_pd(a, _mm512_load_si512(index), b);
  }
  // Lane i = the sum of r[i]'s lanes (the halving tree of Float16::sum_rows).
  static Reg sum_rows(const Reg* r) {
    Reg a[4], b[2];
    auto in = [&](int j) { return r[(j % 4) * 2 + j / 4]; };
    for (int i = 0; i < 4; ++i)
      a[i] = _mm512_add_pd(_mm512_shuffle_f64x2(in(2 * i), in(2 * i + 1), 0x44),
                           _mm512_shuffle_f64x2(in(2 * i), in(2 * i + 1), 0xEE));
    for (int i = 0; i < 2; ++i)
      b[i] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0x88),
                           _mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0xDD));
    return _mm512_add_pd(_mm512_unpacklo_pd(b[0], b[1]), _mm512_unpackhi_pd(b[0], b[1]));
  }
};

template <typename T>
struct TileOf;
template <>
struct TileOf<float> {
  using type = Float16;
};
template <>
struct TileOf<double> {
  using type = Double8;
};

// Shuffles between the two layouts of N channels of a block with d < N components: d
// channel-major vectors (one per component) and the same N * d numbers in [mul][d] order, d
// vectors again. Each output vector gathers lanes from all d inputs: two-source permutes, the
// first from inputs 0 and 1, then each further one merges input s into the vector so far, d (d - 1)
// in all, where a 16x16 register transpose costs 64 shuffles and N masked stores of d numbers (the
// stores dominate a memory-bound kernel: they reach memory in pieces). One permute a cycle is the
// limit; the earlier d * d masked one-source permutes (each with its mask from a table) took
// 20-45 % longer (d = 2-7, a loop in L1).
template <typename T>
struct SmallBlockShuffles {
  static constexpr int N = TileOf<T>::type::N;
  static constexpr int kMaxD = 7;
  using Index = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  // [d][output][s][lane], s = 1 .. d - 1: the index of the permute that brings in input s
  alignas(64) Index to_rows[kMaxD + 1][kMaxD][kMaxD][N];  // output: row vector q; inputs: components
  alignas(64) Index to_cols[kMaxD + 1][kMaxD][kMaxD][N];  // output: component m; inputs: row vectors
  SmallBlockShuffles() : to_rows(), to_cols() {
    for (int d = 2; d <= kMaxD; ++d) {
      for (int o = 0; o < d; ++o)  // lanes keep their place in the vector so far unless brought in
        for (int s = 2; s < d; ++s)
          for (int lane = 0; lane < N; ++lane) to_rows[d][o][s][lane] = to_cols[d][o][s][lane] = lane;
      // Lane `lane` of an output takes lane `from` of input `source`: in the first permute from
      // input 0 or 1, else in permute `source`.
      auto bring = [](Index (*steps)[N], int lane, int source, int from) {
        if (source <= 1) steps[1][lane] = source * N + from;
        else steps[source][lane] = N + from;
      };
      for (int f = 0; f < d * N; ++f) {  // number f of the [u][m] order: row vector q, lane t
        const int q = f / N, t = f % N, u = f / d, m = f % d;
        bring(to_rows[d][q], t, m, u);
        bring(to_cols[d][m], u, q, t);
      }
    }
  }
  static const SmallBlockShuffles& get() {
    static const SmallBlockShuffles tables;
    return tables;
  }
};

// One output of D inputs by the permutes of `steps` (a table of SmallBlockShuffles).
template <typename T, int D>
inline typename TileOf<T>::type::Reg merge_inputs(const typename TileOf<T>::type::Reg* in,
                                                  const typename SmallBlockShuffles<T>::Index (*steps)[TileOf<T>::type::N]) {
  using Tile = typename TileOf<T>::type;
  typename Tile::Reg r = Tile::permute2(in[0], steps[1], in[1]);
  for (int s = 2; s < D; ++s) r = Tile::permute2(r, steps[s], in[s]);
  return r;
}

// Registers: cols[m] holds component m of N channels; rows[q] the same N * D numbers in [u][m]
// order (channel u's components at lanes u * D .. u * D + D - 1 of the concatenation).
template <typename T, int D>
inline void interleave(const typename TileOf<T>::type::Reg* cols, typename TileOf<T>::type::Reg* rows) {
  if constexpr (D == 1) {
    rows[0] = cols[0];
  } else {
    const auto& sh = SmallBlockShuffles<T>::get();
    for (int q = 0; q < D; ++q) rows[q] = merge_inputs<T, D>(cols, sh.to_rows[D][q]);
  }
}

template <typename T, int D>
inline void deinterleave(const typename TileOf<T>::type::Reg* rows, typename TileOf<T>::type::Reg* cols) {
  if constexpr (D == 1) {
    cols[0] = rows[0];
  } else {
    const auto& sh = SmallBlockShuffles<T>::get();
    for (int m = 0; m < D; ++m) cols[m] = merge_inputs<T, D>(rows, sh.to_cols[D][m]);
  }
}

// dst[m][u] = src[u][m] for whole groups of N channels, D < N components; returns the channels done.
template <typename T, int D>
int64_t to_channel_major_small(const T* src, int64_t mul, T* dst, int64_t ld) {
  using Tile = typename TileOf<T>::type;
  constexpr int N = Tile::N;
  const int64_t full = mul / N * N;
  for (int64_t u0 = 0; u0 < full; u0 += N) {
    typename Tile::Reg rows[D], cols[D];
    for (int q = 0; q < D; ++q) rows[q] = Tile::load_full(src + u0 * D + q * N);
    deinterleave<T, D>(rows, cols);
    for (int m = 0; m < D; ++m) Tile::store_full(dst + m * ld + u0, cols[m]);
  }
  return full;
}

// dst[u][m] = src[m][u] for whole groups of N channels, D < N components; returns the channels done.
template <typename T, int D>
int64_t from_channel_major_small(const T* src, int64_t ld, int64_t mul, T* dst) {
  using Tile = typename TileOf<T>::type;
  constexpr int N = Tile::N;
  const int64_t full = mul / N * N;
  for (int64_t u0 = 0; u0 < full; u0 += N) {
    typename Tile::Reg rows[D], cols[D];
    for (int m = 0; m < D; ++m) cols[m] = Tile::load_full(src + m * ld + u0);
    interleave<T, D>(cols, rows);
    for (int q = 0; q < D; ++q) Tile::store_full(dst + u0 * D + q * N, rows[q]);
  }
  return full;
}

// The whole groups of N channels of a block with few components (the rest: register tiles).
template <typename T>
int64_t to_channel_major_groups(const T* src, int64_t mul, int64_t d, T* dst, int64_t ld) {
  if (d == 1) {
    std::copy(src, src + mul, dst);
    return mul;
  }
  int64_t done = 0;
  with_components<7>(d, [&](auto D) { done = to_channel_major_small<T, decltype(D)::value>(src, mul, dst, ld); });
  return done;
}

template <typename T>
int64_t from_channel_major_groups(const T* src, int64_t ld, int64_t mul, int64_t d, T* dst) {
  if (d == 1) {
    std::copy(src, src + mul, dst);
    return mul;
  }
  int64_t done = 0;
  with_components<7>(d, [&](auto D) { done = from_channel_major_small<T, decltype(D)::value>(src, ld, mul, dst); });
  return done;
}

}  // namespace detail

// dst[m][u] = src[u][m] for u < mul, zero for mul <= u < ld (ld a multiple of the tile size).
template <typename T>
NFFK_HD void to_channel_major(const T* src, int64_t mul, int64_t d, T* dst, int64_t ld) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  typename Tile::Reg r[N];
  const int64_t done = detail::to_channel_major_groups(src, mul, d, dst, ld);
  if (d == 1) {
    std::fill(dst + mul, dst + ld, T(0));
    return;
  }
  for (int64_t u0 = done; u0 < ld; u0 += N) {
    const int64_t rows = mul - u0 < N ? (mul - u0 > 0 ? mul - u0 : 0) : N;
    for (int64_t m0 = 0; m0 < d; m0 += N) {
      const int cols = static_cast<int>(d - m0 < N ? d - m0 : N);
      for (int u = 0; u < N; ++u) r[u] = u < rows ? Tile::load(src + (u0 + u) * d + m0, cols) : Tile::zero();
      Tile::transpose(r);
      for (int m = 0; m < cols; ++m) Tile::store_full(dst + (m0 + m) * ld + u0, r[m]);
    }
  }
}

// dst[u][m] = src[m][u] for u < mul.
template <typename T>
NFFK_HD void from_channel_major(const T* src, int64_t ld, int64_t mul, int64_t d, T* dst) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  typename Tile::Reg r[N];
  for (int64_t u0 = detail::from_channel_major_groups(src, ld, mul, d, dst); u0 < mul; u0 += N) {
    const int64_t rows = mul - u0 < N ? mul - u0 : N;
    for (int64_t m0 = 0; m0 < d; m0 += N) {
      const int cols = static_cast<int>(d - m0 < N ? d - m0 : N);
      for (int m = 0; m < N; ++m) r[m] = m < cols ? Tile::load_full(src + (m0 + m) * ld + u0) : Tile::zero();
      Tile::transpose(r);
      for (int u = 0; u < rows; ++u) Tile::store(dst + (u0 + u) * d + m0, r[u], cols);
    }
  }
}

// out[r] = sum_j a[r][j] b[r][j] for r < count <= tile size, j < n (any n: the tail is masked).
// The partial sums of all rows are reduced together by one register transpose.
template <typename T>
inline void dots(int count, const T* const* a, const T* const* b, int64_t n, T* out) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  typename Tile::Reg acc[N];
  const int64_t full = n / N * N;
  const int tail = static_cast<int>(n - full);
  for (int r = 0; r < N; ++r) {
    acc[r] = Tile::zero();
    if (r >= count) continue;
    for (int64_t j = 0; j < full; j += N) acc[r] = Tile::fma(Tile::load_full(a[r] + j), Tile::load_full(b[r] + j), acc[r]);
    if (tail) acc[r] = Tile::fma(Tile::load(a[r] + full, tail), Tile::load(b[r] + full, tail), acc[r]);
  }
  Tile::store(out, Tile::sum_rows(acc), count);
}

#else  // portable loops

template <typename T>
NFFK_HD void to_channel_major(const T* src, int64_t mul, int64_t d, T* dst, int64_t ld) {
  tp::to_channel_major(src, mul, d, dst, ld);
}

template <typename T>
NFFK_HD void from_channel_major(const T* src, int64_t ld, int64_t mul, int64_t d, T* dst) {
  tp::from_channel_major(src, ld, mul, d, dst);
}

template <typename T>
inline void dots(int count, const T* const* a, const T* const* b, int64_t n, T* out) {
  for (int r = 0; r < count; ++r) {
    T sum = T(0);
    for (int64_t j = 0; j < n; ++j) sum += a[r][j] * b[r][j];
    out[r] = sum;
  }
}

#endif

// Dot products are reduced in groups of this many (the register tile).
template <typename T>
inline constexpr int kDotGroup = 64 / sizeof(T);

}  // namespace nffk::cpu
