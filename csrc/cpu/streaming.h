// Non-temporal (streaming) stores for outputs larger than the caches: a plain store first reads
// the line it writes into the cache (read-for-ownership), so writing such an output moves twice
// its size; whole 64-byte lines written by streaming stores skip that read.
// And the other side of moving memory: software prefetches of what the kernels will read.
#pragma once
#include <cstdint>

#if defined(__linux__)
#include <unistd.h>
#endif

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

// One cache line asked for, for reading or for writing. As asm volatile: GCC takes a loop of
// __builtin_prefetch for one without side effects and, once it is inlined, may delete it. It did:
// in one build the whole next-tile sweep was gone and every kernel was 1.3-1.5x slower.
inline void prefetch_line(const char* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p);
  asm volatile("" : : "r"(p));
#endif
}

inline void prefetch_line_for_write(char* p) {
#if defined(__PRFCHW__)
  asm volatile("prefetchw %0" : : "m"(*p));
#else
  prefetch_line(p);
#endif
}

// One core's L2 size as the system reports it (1 MiB, this machine's, where it does not).
inline int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    long reported = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return reported > 0 ? int64_t(reported) : int64_t(1) << 20;
  }();
  return bytes;
}

// Asks for [row, row + bytes) to be brought into the cache ahead of use.
inline void prefetch_bytes(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t at = 0; at < bytes; at += 64) prefetch_line(p + at);
}

// The same, for memory about to be written (no need to share the lines with other cores).
inline void prefetch_bytes_for_write(void* row, int64_t bytes) {
  char* p = static_cast<char*>(row);
  for (int64_t at = 0; at < bytes; at += 64) prefetch_line_for_write(p + at);
}

// Ranges of lines asked for a few at a time across a tile's work (plan(steps), then step() once per
// block and drain() at the end) instead of in one burst at its start: a burst of ~3,000 lines
// (nequip's next tile) stalls the core while the misses queue up, and much of it arrived late
// (the x1 conversion at the next tile's start waited on memory). At most 8 ranges; more are left
// out, a prefetch being only a hint.
struct PacedPrefetch {
  struct Range {
    const char* p;
    int64_t bytes;
  };
  Range ranges[8];
  int count = 0, next = 0;
  int64_t offset = 0, lines_per_step = 0;
  void reset() { count = next = 0, offset = 0; }
  void add(const void* p, int64_t bytes) {
    if (count < 8) ranges[count++] = {static_cast<const char*>(p), bytes};
  }
  void plan(int64_t steps) {
    int64_t lines = 0;
    for (int r = 0; r < count; ++r) lines += (ranges[r].bytes + 63) / 64;
    lines_per_step = steps > 0 ? (lines + steps - 1) / steps : lines;
  }
  void issue(int64_t lines) {
    for (; lines > 0 && next < count; ) {
      const Range& r = ranges[next];
      prefetch_line(r.p + offset);
      offset += 64, --lines;
      if (offset >= r.bytes) ++next, offset = 0;
    }
  }
  void step() { issue(lines_per_step); }
  void drain() { issue(INT64_MAX); }
};

// The pacing of the tile loop running on this thread, if it paces (the tensor-product kernels step
// it from deep inside their block loops).
inline thread_local PacedPrefetch* paced_prefetch = nullptr;

// Sets paced_prefetch for a scope, and clears it however the scope is left.
struct PacingScope {
  explicit PacingScope(PacedPrefetch* paced) { paced_prefetch = paced; }
  ~PacingScope() { paced_prefetch = nullptr; }
  PacingScope(const PacingScope&) = delete;
  PacingScope& operator=(const PacingScope&) = delete;
};

// How far ahead of what it reads a kernel that streams through rows front to back asks for them
// (bytes), paced with the compute: one line asked for per line used (a C loop reading 28.5 KB per
// element from memory with 4 FMAs per line: 0.79 us per element, 0.90 with the hardware prefetcher
// alone, against a floor of 0.75).
constexpr int64_t kReadAhead = 4096;

// The line kReadAhead bytes past p.
template <typename T>
inline void prefetch_ahead(const T* p) {
  prefetch_line(reinterpret_cast<const char*>(p) + kReadAhead);
}

// The lines of [p, p + numbers) moved kReadAhead bytes on: what a front-to-back pass will read, or
// write, a little later.
template <typename T>
inline void prefetch_ahead(const T* p, int64_t numbers) {
  prefetch_bytes(reinterpret_cast<const char*>(p) + kReadAhead, numbers * int64_t(sizeof(T)));
}

template <typename T>
inline void prefetch_ahead_for_write(T* p, int64_t numbers) {
  prefetch_bytes_for_write(reinterpret_cast<char*>(p) + kReadAhead, numbers * int64_t(sizeof(T)));
}

}  // namespace nffk::cpu
