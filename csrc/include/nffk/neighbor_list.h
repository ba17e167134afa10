// Element-level pieces of the cell-list neighbour search, shared by the CPU driver and a
// future CUDA one. Cells are row-major 3x3 with lattice vectors as rows: r = s @ H.
#pragma once
#include <cmath>

#include "nffk/common.h"

namespace nffk {

// Inverse of a 3x3 matrix of lattice rows; false if it is singular or not finite. The rows are
// normalised first (H = D U, H^-1 = U^-1 D^-1), so very large or small cells do not overflow.
NFFK_HD bool inverse3(const double* h, double* inv) {
  double u[9], length[3];
  for (int k = 0; k < 3; ++k) {
    const double big = std::fmax(std::fabs(h[3 * k]), std::fmax(std::fabs(h[3 * k + 1]), std::fabs(h[3 * k + 2])));
    if (!(big > 0.0) || !std::isfinite(big)) return false;
    double norm = 0.0;  // of the row divided by its largest entry: no overflow
    for (int c = 0; c < 3; ++c) norm += (h[3 * k + c] / big) * (h[3 * k + c] / big);
    norm = std::sqrt(norm);
    length[k] = big * norm;
    for (int c = 0; c < 3; ++c) u[3 * k + c] = (h[3 * k + c] / big) / norm;
  }
  const double c00 = u[4] * u[8] - u[5] * u[7], c01 = u[5] * u[6] - u[3] * u[8], c02 = u[3] * u[7] - u[4] * u[6];
  const double det = u[0] * c00 + u[1] * c01 + u[2] * c02;
  if (!(std::fabs(det) > 1e-14)) return false;
  const double r = 1.0 / det;
  const double adj[9] = {c00, u[2] * u[7] - u[1] * u[8], u[1] * u[5] - u[2] * u[4],
                         c01, u[0] * u[8] - u[2] * u[6], u[2] * u[3] - u[0] * u[5],
                         c02, u[1] * u[6] - u[0] * u[7], u[0] * u[4] - u[1] * u[3]};
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 3; ++k) inv[3 * c + k] = adj[3 * c + k] * r / length[k];  // length may be inf: then 0  // column k scaled by 1/|row k|
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
