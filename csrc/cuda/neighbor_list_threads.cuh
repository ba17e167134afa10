// The work of one CUDA thread of the neighbour-list search (one receiver), as a __host__
// __device__ function: csrc/cuda/neighbor_list.cu launches it and tests/kernels/cuda_emulation.cu
// runs it on the CPU. The same search as kernels/neighbor_list.py (_search_kernel): visit every
// bin within reach together with the integer image T it is seen through; consecutive bins of a
// row seen through the same image are one contiguous range of atoms.
#pragma once
#include "launchers.h"
#include "nffk/neighbor_list.h"

namespace nffk::cuda::threads {

// Number of neighbours of receiver i; with offsets, also writes them at offsets[i] onwards.
NFFK_HD index_t search_receiver(const NLSearch& s, index_t i, const index_t* offsets, index_t* senders,
                                index_t* images) {
  const index_t* prm = s.params + s.system[i] * kNLParams;
  const double* h = s.cells + s.system[i] * 9;
  const index_t nb1 = prm[1], nb2 = prm[2];
  index_t lo[3], hi[3];
  for (int k = 0; k < 3; ++k) {  // open directions stay inside the grid; periodic ones wrap through the tables
    const index_t b = s.bin3[3 * i + k], reach = prm[3 + k];
    lo[k] = prm[6 + k] != 0 ? b - reach : (b - reach > 0 ? b - reach : 0);
    hi[k] = prm[6 + k] != 0 ? b + reach : (b + reach < prm[k] - 1 ? b + reach : prm[k] - 1);
  }
  const index_t wrap0 = prm[10] + prm[3], wrap1 = prm[11] + prm[4], wrap2 = prm[12] + prm[5];
  const double rx = s.wrapped[3 * i], ry = s.wrapped[3 * i + 1], rz = s.wrapped[3 * i + 2];
  const index_t bias = s.image_bias, width = s.image_width;
  const index_t own_image = (bias * width + bias) * width + bias;
  const index_t first = offsets == nullptr ? 0 : offsets[i];
  index_t found = 0;
  for (index_t u0 = lo[0]; u0 <= hi[0]; ++u0) {
    const index_t c0 = s.wrap_bin[wrap0 + u0], t0 = s.wrap_image[wrap0 + u0];
    for (index_t u1 = lo[1]; u1 <= hi[1]; ++u1) {
      const index_t c1 = s.wrap_bin[wrap1 + u1], t1 = s.wrap_image[wrap1 + u1];
      const index_t row = prm[9] + (c0 * nb1 + c1) * nb2;
      const double row_x = double(t0) * h[0] + double(t1) * h[3] - rx;
      const double row_y = double(t0) * h[1] + double(t1) * h[4] - ry;
      const double row_z = double(t0) * h[2] + double(t1) * h[5] - rz;
      for (index_t u2 = lo[2]; u2 <= hi[2];) {
        const index_t c2 = s.wrap_bin[wrap2 + u2], t2 = s.wrap_image[wrap2 + u2];
        const index_t run = hi[2] - u2 < nb2 - 1 - c2 ? hi[2] - u2 : nb2 - 1 - c2;  // same image further on
        const index_t begin = s.bin_start[row + c2], end = s.bin_start[row + c2 + run + 1];
        u2 += run + 1;
        // Candidate j is kept when |r_j + T @ H - r_i| < cutoff (cell rows are lattice vectors).
        const double delta[3] = {double(t2) * h[6] + row_x, double(t2) * h[7] + row_y, double(t2) * h[8] + row_z};
        const index_t image = ((t0 + bias) * width + t1 + bias) * width + t2 + bias;
        for (index_t p = begin; p < end; ++p) {
          const double rj[3] = {s.slot_x[p], s.slot_y[p], s.slot_z[p]};
          const index_t atom = s.slot_atom[p];
          if (!(squared_distance(rj, delta) < s.cutoff_sq)) continue;
          if (!s.self_interaction && atom == i && image == own_image) continue;
          if (offsets != nullptr) {
            senders[first + found] = atom;
            images[first + found] = image;
          }
          ++found;
        }
      }
    }
  }
  return found;
}

}  // namespace nffk::cuda::threads
