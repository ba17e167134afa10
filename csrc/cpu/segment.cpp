// CPU driver for the CSR segment sum (OpenMP over segments).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "nffk/segment.h"

namespace nffk::cpu {

template <typename scalar_t>
static void segment_sum_driver(const scalar_t* src, const int64_t* ptr, int64_t segments, int64_t width,
                               scalar_t* out) {
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t s = 0; s < segments; ++s) segment_sum_row(src, ptr[s], ptr[s + 1], width, out + s * width);
}

at::Tensor segment_sum(const at::Tensor& src, const at::Tensor& ptr) {
  TORCH_CHECK(src.dim() == 2, "segment_sum: src must be 2-D [rows, features], got ", src.sizes());
  TORCH_CHECK(ptr.dim() == 1 && ptr.scalar_type() == at::kLong, "segment_sum: ptr must be a 1-D int64 tensor");
  TORCH_CHECK(ptr.size(0) >= 1, "segment_sum: ptr needs at least one entry");
  auto x = src.contiguous();
  auto p = ptr.contiguous();
  const int64_t segments = p.size(0) - 1, width = x.size(1), rows = x.size(0);
  const int64_t* pp = p.data_ptr<int64_t>();
  TORCH_CHECK(pp[0] == 0 && pp[segments] == rows, "segment_sum: ptr must start at 0 and end at src.size(0)=", rows);
  for (int64_t s = 0; s < segments; ++s) TORCH_CHECK(pp[s] <= pp[s + 1], "segment_sum: ptr must be non-decreasing");
  auto out = at::empty({segments, width}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nffk_segment_sum", [&] {
    segment_sum_driver(x.data_ptr<scalar_t>(), pp, segments, width, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace nffk::cpu
