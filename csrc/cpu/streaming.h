// Non-temporal (streaming) stores for outputs larger than the caches: a plain store first reads
// the line it writes into the cache (read-for-ownership), so writing such an output moves twice
// its size; whole 64-byte lines written by streaming stores skip that read.
#pragma once
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nffk/common.h"

namespace nffk::cpu {

// Each user sets the output size from which it streams: spherical_harmonics.cpp, tp_tiles.h.

// dst[0, n) = src[0, n). With `stream`, the whole 64-byte lines of dst are written by streaming
// stores (any alignment of dst; the partial lines at either end by plain stores). Callers end
// their streaming with stream_fence().
template <typename T>
inline void copy_out(const T* src, int64_t n, T* dst, bool stream) {
#if defined(__AVX512F__)
  if (stream) {
    constexpr int64_t N = 64 / sizeof(T);
    const int64_t misaligned = int64_t(reinterpret_cast<uintptr_t>(dst) % 64);
    int64_t head = misaligned == 0 || misaligned % sizeof(T) != 0 ? 0 : (64 - misaligned) / int64_t(sizeof(T));
    if (misaligned % sizeof(T) != 0) head = n;  // not element-aligned: plain stores only
    head = head < n ? head : n;
    for (int64_t i = 0; i < head; ++i) dst[i] = src[i];
    int64_t i = head;
    for (; i + N <= n; i += N) {
      if constexpr (sizeof(T) == 4)
        _mm512_stream_ps(reinterpret_cast<float*>(dst + i), _mm512_loadu_ps(reinterpret_cast<const float*>(src + i)));
      else
        _mm512_stream_pd(reinterpret_cast<double*>(dst + i), _mm512_loadu_pd(reinterpret_cast<const double*>(src + i)));
    }
    for (; i < n; ++i) dst[i] = src[i];
    return;
  }
#endif
  (void)stream;
  NFFK_SIMD for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// Orders this thread's streaming stores before anything it does next (their lines may otherwise
// still sit in write-combining buffers when another thread reads the output).
inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

}  // namespace nffk::cpu
