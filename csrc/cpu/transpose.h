// Block transposes between e3nn's [mul][d] rows and the channel-major [d][ld] scratch of the
// element-level code, with AVX-512 register tiles where available (16x16 floats, 8x8 doubles)
// and the portable loops of nffk/tensor_product.h otherwise. The transposes are a large share of
// a memory-bound kernel's instructions (a scalar transpose costs a load and a store per number).
#pragma once
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nffk/tensor_product.h"

namespace nffk::cpu {

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

// Register tiles: rows of up to N numbers, masked at the edges of the block.
struct Float16 {
  using Reg = __m512;
  static constexpr int N = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p, int count) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p); }
  static Reg load_full(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg v, int count) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v); }
  static void store_full(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void transpose(Reg* r) { transpose16(r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
};

struct Double8 {
  using Reg = __m512d;
  static constexpr int N = 8;
  static Reg zero() { return _mm512_setzero_pd(); }
  static Reg load(const double* p, int count) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p); }
  static Reg load_full(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, Reg v, int count) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v); }
  static void store_full(double* p, Reg v) { _mm512_storeu_pd(p, v); }
  static void transpose(Reg* r) { transpose8(r); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_pd(a, b); }
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

}  // namespace detail

// dst[m][u] = src[u][m] for u < mul, zero for mul <= u < ld (ld a multiple of the tile size).
template <typename T>
NFFK_HD void to_channel_major(const T* src, int64_t mul, int64_t d, T* dst, int64_t ld) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  typename Tile::Reg r[N];
  for (int64_t u0 = 0; u0 < ld; u0 += N) {
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
  for (int64_t u0 = 0; u0 < mul; u0 += N) {
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
  Tile::transpose(acc);
  for (int step = N / 2; step >= 1; step /= 2)
    for (int r = 0; r < step; ++r) acc[r] = Tile::add(acc[r], acc[r + step]);
  Tile::store(out, acc[0], count);
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
