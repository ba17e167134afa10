// Element-level pieces of the cell-list neighbour search, shared by the CPU driver and a
// future CUDA one. Cells are row-major 3x3 with lattice vectors as rows: r = s @ H.
#pragma once
#include <cmath>

#include "nffk/common.h"

namespace nffk {

// Inverse of a 3x3 matrix by the adjugate; false if it is singular or not finite.
NFFK_HD bool inverse3(const double* h, double* inv) {
  const double c00 = h[4] * h[8] - h[5] * h[7], c01 = h[5] * h[6] - h[3] * h[8], c02 = h[3] * h[7] - h[4] * h[6];
  const double det = h[0] * c00 + h[1] * c01 + h[2] * c02;
  if (!(std::fabs(det) > 0.0) || !std::isfinite(det)) return false;
  const double r = 1.0 / det;
  inv[0] = c00 * r;
  inv[1] = (h[2] * h[7] - h[1] * h[8]) * r;
  inv[2] = (h[1] * h[5] - h[2] * h[4]) * r;
  inv[3] = c01 * r;
  inv[4] = (h[0] * h[8] - h[2] * h[6]) * r;
  inv[5] = (h[2] * h[3] - h[0] * h[5]) * r;
  inv[6] = c02 * r;
  inv[7] = (h[1] * h[6] - h[0] * h[7]) * r;
  inv[8] = (h[0] * h[4] - h[1] * h[3]) * r;
  return true;
}

// s = r @ hinv: fractional coordinates of a Cartesian point.
NFFK_HD void fractional(const double* r, const double* hinv, double* s) {
  for (int k = 0; k < 3; ++k) s[k] = r[0] * hinv[k] + r[1] * hinv[3 + k] + r[2] * hinv[6 + k];
}

// Floor division for a possibly negative bin coordinate u: bin = u - nbins * image.
NFFK_HD index_t floor_div(index_t u, index_t nbins) {
  index_t q = u / nbins;
  return (u % nbins != 0 && u < 0) ? q - 1 : q;
}

// Bin index of a coordinate t (in bins, possibly NaN or out of range): clamped into [0, nbins).
NFFK_HD index_t clamp_bin(double t, index_t nbins) {
  if (!(t >= 0.0)) return 0;  // also catches NaN
  if (t >= double(nbins - 1)) return nbins - 1;
  return index_t(t);
}

// One candidate pair: the squared length of (r_j + image_offset - r_i), with
// delta = image_offset - r_i precomputed per (atom i, image bin).
NFFK_HD double squared_distance(const double* rj, const double* delta) {
  const double x = rj[0] + delta[0], y = rj[1] + delta[1], z = rj[2] + delta[2];
  return x * x + y * y + z * z;
}

}  // namespace nffk
