// Small helpers of the CPU drivers: SIMD width, rounding, aligned per-task scratch.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace nffk::cpu {

// Channels per SIMD chunk: one 64-byte vector (AVX-512), also a cache line.
template <typename T>
inline constexpr int kLanes = static_cast<int>(64 / sizeof(T));

inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Uninitialised, 64-byte aligned storage owned by one task (kernels write before they read).
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }
  void allocate(int64_t count) {
    std::free(data_);
    const size_t bytes = static_cast<size_t>(round_up(count > 0 ? count : 1, 64 / sizeof(T)) * sizeof(T));
    data_ = static_cast<T*>(std::aligned_alloc(64, round_up(static_cast<int64_t>(bytes), 64)));
    if (data_ == nullptr) throw std::bad_alloc();
  }
  T* data() { return data_; }

 private:
  T* data_ = nullptr;
};

// Large outputs are usually fresh allocations whose pages the kernel faults in one 4 KiB page at a
// time, which can cost more than the kernel itself. Where transparent huge pages are available on
// request (the common `madvise` setting), ask for them: 2 MiB per fault. Advice only; harmless
// for memory already touched.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The parts of [0, size) that no range in `covered` touches: output elements no path writes,
// which a kernel must zero itself (outputs are never pre-filled).
inline std::vector<std::pair<int64_t, int64_t>> gaps(std::vector<std::pair<int64_t, int64_t>> covered, int64_t size) {
  std::sort(covered.begin(), covered.end());
  std::vector<std::pair<int64_t, int64_t>> result;
  int64_t at = 0;
  for (const auto& [begin, end] : covered) {
    if (begin > at) result.emplace_back(at, begin);
    at = std::max(at, end);
  }
  if (at < size) result.emplace_back(at, size);
  return result;
}

}  // namespace nffk::cpu
