// Element-level real spherical harmonics (e3nn conventions, "component" normalisation) and their
// first and second derivatives, for a block of B points held in lanes (structure of arrays:
// value t of point n at [t * B + n], t = l^2 + l + m). Shared by the CPU driver and meant for a
// CUDA one (one point per thread: B = 1).
//
// Values: the recurrence documented in nffk/o3/spherical_harmonics.py, with its coefficient
// tables a, b. Derivatives: d/dx_a Y_t = sum over <= 2 terms coef * Y_src with src of degree l - 1
// (tables src/coef [T][3][2] from nffk.ops.spherical_harmonics.gradient_table), so
//     vjp           v_a = sum_t gY_t dY_t/dx_a                       (gradient_dot)
//     jvp           (dY/dx k)_t = sum_a k_a dY_t/dx_a                 (gradient_jvp)
//     Hessian       sum_t gY_t sum_a k_a d2Y_t/dx_a dx_b = gradient_dot with weights
//                   W_src = sum_{t, a} gY_t k_a coef(t, a)            (gradient_scatter)
// Normalising the input (x / max(|x|, eps), as torch.nn.functional.normalize) is applied around
// these by the chain rule (`Frame`).
#pragma once
#include <cmath>

#include "nffk/common.h"

namespace nffk::sh {

// P[t][n] for every t < (lmax + 1)^2, from the coordinates of B points.
template <typename T, int B>
NFFK_HD void values(int32_t lmax, const T* a, const T* b, const T* x, const T* y, const T* z, T* P) {
  T r2[B], c[B], s[B];
  NFFK_SIMD for (int n = 0; n < B; ++n) {
    r2[n] = x[n] * x[n] + y[n] * y[n] + z[n] * z[n];
    c[n] = z[n];  // c_l + i s_l = (z + i x)^l
    s[n] = x[n];
    P[n] = T(1);
  }
  for (int32_t l = 1; l <= lmax; ++l) {
    const int32_t t = l * (l + 1) / 2, base = l * l;
    const T sectoral = a[t + l];
    T* first = P + base * B;
    T* last = P + (base + 2 * l) * B;
    NFFK_SIMD for (int n = 0; n < B; ++n) {
      first[n] = sectoral * s[n];
      last[n] = sectoral * c[n];
    }
    for (int32_t m = -(l - 1); m <= l - 1; ++m) {
      const int32_t M = m < 0 ? -m : m;
      T* out = P + (base + l + m) * B;
      const T* above = P + ((l - 1) * (l - 1) + (l - 1) + m) * B;
      const T am = a[t + M];
      if (M <= l - 2) {
        const T* below = P + ((l - 2) * (l - 2) + (l - 2) + m) * B;
        const T bm = b[t + M];
        NFFK_SIMD for (int n = 0; n < B; ++n) out[n] = am * y[n] * above[n] - bm * r2[n] * below[n];
      } else {
        NFFK_SIMD for (int n = 0; n < B; ++n) out[n] = am * y[n] * above[n];
      }
    }
    if (l < lmax) {
      NFFK_SIMD for (int n = 0; n < B; ++n) {
        const T cn = z[n] * c[n] - x[n] * s[n];
        s[n] = z[n] * s[n] + x[n] * c[n];
        c[n] = cn;
      }
    }
  }
}

// v[a][n] += sum_{1 <= t < count} weight[t][n] dP_t/dx_a
template <typename T, int B>
NFFK_HD void gradient_dot(int32_t count, const int32_t* src, const T* coef, const T* P, const T* weight, T* v) {
  for (int32_t t = 1; t < count; ++t) {
    const T* wt = weight + t * B;
    for (int a = 0; a < 3; ++a) {
      T* va = v + a * B;
      for (int term = 0; term < 2; ++term) {
        const int32_t from = src[(t * 3 + a) * 2 + term];
        if (from < 0) continue;
        const T c = coef[(t * 3 + a) * 2 + term];
        const T* p = P + from * B;
        NFFK_SIMD for (int n = 0; n < B; ++n) va[n] += c * wt[n] * p[n];
      }
    }
  }
}

// out[t][n] = sum_a k[a][n] dP_t/dx_a for t < count (out[0] = 0: Y_0 is constant)
template <typename T, int B>
NFFK_HD void gradient_jvp(int32_t count, const int32_t* src, const T* coef, const T* P, const T* k, T* out) {
  NFFK_SIMD for (int n = 0; n < B; ++n) out[n] = T(0);
  for (int32_t t = 1; t < count; ++t) {
    T* o = out + t * B;
    NFFK_SIMD for (int n = 0; n < B; ++n) o[n] = T(0);
    for (int a = 0; a < 3; ++a) {
      const T* ka = k + a * B;
      for (int term = 0; term < 2; ++term) {
        const int32_t from = src[(t * 3 + a) * 2 + term];
        if (from < 0) continue;
        const T c = coef[(t * 3 + a) * 2 + term];
        const T* p = P + from * B;
        NFFK_SIMD for (int n = 0; n < B; ++n) o[n] += c * ka[n] * p[n];
      }
    }
  }
}

// W[src][n] += weight[t][n] k[a][n] coef for every term of every t < count: afterwards
// gradient_dot(W) = sum_t weight_t sum_a k_a d2P_t/dx_a dx_b (W needs lmax^2 rows).
template <typename T, int B>
NFFK_HD void gradient_scatter(int32_t count, const int32_t* src, const T* coef, const T* weight, const T* k, T* W) {
  for (int32_t t = 1; t < count; ++t) {
    const T* wt = weight + t * B;
    for (int a = 0; a < 3; ++a) {
      const T* ka = k + a * B;
      for (int term = 0; term < 2; ++term) {
        const int32_t from = src[(t * 3 + a) * 2 + term];
        if (from < 0) continue;
        const T c = coef[(t * 3 + a) * 2 + term];
        T* w = W + from * B;
        NFFK_SIMD for (int n = 0; n < B; ++n) w[n] += c * wt[n] * ka[n];
      }
    }
  }
}

// The input map x -> u = x / max(|x|, eps) (or u = x without normalisation) and its Jacobian
// J = (I - u u^T) / |x| where |x| >= eps, I / eps below (torch.nn.functional.normalize).
template <typename T, int B>
struct Frame {
  T u[3][B];
  T inv[B];   // 1 / max(|x|, eps) (1 without normalisation)
  T proj[B];  // 1 where J projects (|x| >= eps and normalising), 0 where J = inv * I

  NFFK_HD void set(const T* x, bool normalize, T eps) {
    // Two branch-free loops (the choice hoisted out) so that each vectorises.
    if (normalize) {
      NFFK_SIMD for (int n = 0; n < B; ++n) {
        const T r = std::sqrt(x[n] * x[n] + x[B + n] * x[B + n] + x[2 * B + n] * x[2 * B + n]);
        inv[n] = T(1) / (r >= eps ? r : eps);
        proj[n] = r >= eps ? T(1) : T(0);
        for (int a = 0; a < 3; ++a) u[a][n] = x[a * B + n] * inv[n];
      }
    } else {
      NFFK_SIMD for (int n = 0; n < B; ++n) {
        inv[n] = T(1);
        proj[n] = T(0);
        for (int a = 0; a < 3; ++a) u[a][n] = x[a * B + n];
      }
    }
  }

  // out = J v (J is symmetric)
  NFFK_HD void apply(const T* v, T* out) const {
    NFFK_SIMD for (int n = 0; n < B; ++n) {
      const T uv = u[0][n] * v[n] + u[1][n] * v[B + n] + u[2][n] * v[2 * B + n];
      for (int a = 0; a < 3; ++a) out[a * B + n] = (v[a * B + n] - proj[n] * uv * u[a][n]) * inv[n];
    }
  }

  // out += d/dx <J(x) h, v> with v held fixed: [(3 p q - s) u - q h - p v] / |x|^2 where J projects
  // (p = u.h, q = u.v, s = h.v); zero where J is constant.
  NFFK_HD void add_curvature(const T* h, const T* v, T* out) const {
    NFFK_SIMD for (int n = 0; n < B; ++n) {
      const T p = u[0][n] * h[n] + u[1][n] * h[B + n] + u[2][n] * h[2 * B + n];
      const T q = u[0][n] * v[n] + u[1][n] * v[B + n] + u[2][n] * v[2 * B + n];
      const T s = h[n] * v[n] + h[B + n] * v[B + n] + h[2 * B + n] * v[2 * B + n];
      const T scale = proj[n] * inv[n] * inv[n];
      for (int a = 0; a < 3; ++a)
        out[a * B + n] += scale * ((T(3) * p * q - s) * u[a][n] - q * h[a * B + n] - p * v[a * B + n]);
    }
  }
};

}  // namespace nffk::sh
