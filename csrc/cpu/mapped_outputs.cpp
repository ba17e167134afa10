// Large kernel outputs in their own huge-page mappings, kept for reuse after they are freed.
//
// A kernel writes all of its fresh output. Memory from torch's allocator (glibc malloc) for a
// buffer of megabytes is usually a fresh mmap that faults in one 4 KiB page at a time, ~0.5 ms
// per MB on this kind of machine: more than a tensor-product kernel's own work at 1,000 edges, or
// a neighbour-list search at 4,000 atoms. Here a buffer of a megabyte or more is a 2 MiB-aligned
// anonymous mapping with huge-page advice (2 MiB per fault, ~0.04 ms per MB of zeroing), and a
// freed buffer's mapping is kept for the next output of about its size, which then pays nothing.
// At most kept_limit() bytes / kKeptMappings stay kept. Huge pages are advice only: where they are off it
// is 4 KiB pages as with torch's allocator.
#include "mapped_outputs.h"

#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace nffk::cpu {
namespace {

#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define NFFK_MAPPED_OUTPUTS 1
constexpr size_t kHugePage = size_t(1) << 21;

struct Mapping {
  void* data = nullptr;
  size_t length = 0;
};

class MappingPool {
 public:
  // Never destroyed: outputs may be freed during exit, after static destructors ran.
  static MappingPool& instance() {
    static auto* pool = new MappingPool;
    return *pool;
  }

  // A kept mapping of [length, 2 length) bytes, else a fresh one; {nullptr, 0} if mmap fails.
  Mapping take(size_t length) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t k = kept_.size(); k-- > 0;)  // newest first
        if (kept_[k].length >= length && kept_[k].length < 2 * length) {
          const Mapping found = kept_[k];
          kept_.erase(kept_.begin() + k);
          kept_bytes_ -= found.length;
          return found;
        }
    }
    void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return {};
    const uintptr_t first = reinterpret_cast<uintptr_t>(raw), last = first + length + kHugePage;
    const uintptr_t begin = (first + kHugePage - 1) & ~uintptr_t(kHugePage - 1), end = begin + length;
    if (begin > first) munmap(raw, begin - first);  // keep exactly the aligned part
    if (last > end) munmap(reinterpret_cast<void*>(end), last - end);
    madvise(reinterpret_cast<void*>(begin), length, MADV_HUGEPAGE);
    return {reinterpret_cast<void*>(begin), length};
  }

  // Unmaps every kept mapping; returns their bytes.
  size_t release() {
    std::vector<Mapping> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      unmap.swap(kept_);
      kept_bytes_ = 0;
    }
    size_t bytes = 0;
    for (const Mapping& m : unmap) {
      munmap(m.data, m.length);
      bytes += m.length;
    }
    return bytes;
  }

  // Keeps a freed mapping, unmapping the oldest ones beyond the limits.
  void give(Mapping mapping) {
    std::vector<Mapping> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      kept_.push_back(mapping);
      kept_bytes_ += mapping.length;
      while (kept_bytes_ > kept_limit_ || kept_.size() > kKeptMappings) {
        unmap.push_back(kept_.front());
        kept_bytes_ -= kept_.front().length;
        kept_.erase(kept_.begin());
      }
    }
    for (const Mapping& m : unmap) munmap(m.data, m.length);
  }

 private:
  // Enough for the few outputs of one training step's largest kernels (a double backward keeps
  // ~4 outputs alive at once: at 10,000 edges of the nequip config, 261 MB each), small next to
  // the tensors that need them: 1/16 of the machine's memory, between 128 MiB and 2 GiB. An
  // output that does not fit is a fresh mapping every call, whose first touch cost 10x the kernel on
  // this project's VM (nequip forward at 10,000 edges: 60 -> 700 ms
  // when other code had allocated in between).
  static size_t kept_limit() {
    size_t limit = size_t(128) << 20;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) limit = std::max(limit, size_t(pages) * size_t(page) / 16);
#endif
    return std::min(limit, size_t(2) << 30);
  }
  static constexpr size_t kKeptMappings = 16;
  const size_t kept_limit_ = kept_limit();
  std::mutex mutex_;
  std::vector<Mapping> kept_;
  size_t kept_bytes_ = 0;
};
#endif

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if NFFK_MAPPED_OUTPUTS
  const size_t bytes = size_t(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (bytes >= kHugePage / 2) {
    const Mapping mapping = MappingPool::instance().take((bytes + kHugePage - 1) & ~(kHugePage - 1));
    if (mapping.data != nullptr) {
      c10::DataPtr owner(mapping.data, new Mapping(mapping), [](void* context) {
        const auto* m = static_cast<Mapping*>(context);
        MappingPool::instance().give(*m);
        delete m;
      }, at::Device(at::kCPU));
      c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(owner), at::getCPUAllocator(),
                           /*resizable=*/true);
      return at::empty({0}, options).set_(storage, 0, sizes);
    }
  }
#endif
  return at::empty(sizes, options);
}

int64_t release_outputs() {
#if NFFK_MAPPED_OUTPUTS
  return static_cast<int64_t>(MappingPool::instance().release());
#else
  return 0;
#endif
}

at::Tensor empty_output_op(at::IntArrayRef sizes, at::ScalarType dtype) {
  for (int64_t size : sizes) TORCH_CHECK(size >= 0, "nffk_C::empty_output: negative size in ", sizes);
  return empty_output(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

}  // namespace nffk::cpu
