// Segment (CSR) reductions: out[s, :] = sum of src[ptr[s]:ptr[s+1], :].
#pragma once
#include "nffk/common.h"

namespace nffk {

// One segment, `width` features, rows in order: deterministic by construction.
template <typename scalar_t>
NFFK_HD void segment_sum_row(const scalar_t* src, index_t begin, index_t end, index_t width, scalar_t* out) {
  for (index_t f = 0; f < width; ++f) out[f] = scalar_t(0);
  for (index_t r = begin; r < end; ++r) {
    const scalar_t* row = src + r * width;
    for (index_t f = 0; f < width; ++f) out[f] += row[f];
  }
}

}  // namespace nffk
