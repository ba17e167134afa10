// CPU drivers of the spherical-harmonics kernels: values, vjp and the vjp's own vjp (second
// derivatives), for blocks of kLanes<T> points (SIMD over points, OpenMP over blocks; every point
// is independent, so results do not depend on the thread count). Element-level code:
// nffk/spherical_harmonics.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "nffk/spherical_harmonics.h"
#include "ops.h"
#include "scratch.h"
#include "streaming.h"
#include "transpose.h"

namespace nffk::cpu {
namespace {

constexpr double kNormalizeEps = 1e-12;  // torch.nn.functional.normalize's
// Outputs at least this large are streamed (past the caches a consumer could still find them in;
// from 4 MiB did not help, bench/NOTES.md).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// Outputs below kStreamBytes are written by plain stores, each of which first reads its line into
// the cache: from memory when the pool's buffer is cold. Asking for the lines a block of points will
// write (with write intent), and the rows it will read, kReadAhead bytes ahead (prefetch_ahead)
// overlaps those reads with the compute and, unlike streaming stores, leaves the output in cache
// for its consumer (bench/NOTES.md, version 15).
template <typename T>
inline void ask_ahead(const T* points, T* rows, int64_t row_numbers) {
  prefetch_ahead(points, 3 * kLanes<T>);
  prefetch_ahead_for_write(rows, row_numbers);
}

// Everything a call needs, checked once: requested degrees, their output offsets and scales,
// and the coefficient tables converted to the compute type.
template <typename T>
struct SHPlan {
  int32_t lmax = 0, count = 0, dim = 0;  // count = (lmax + 1)^2 components computed
  std::vector<int32_t> degrees, offsets;
  std::vector<T> scale;  // per requested degree: normalisation relative to "component"
  std::vector<T> a, b, coef;
  const int32_t* src = nullptr;
  bool all_degrees = true;  // ls = 0, 1, ..., lmax: output column c is component c (no gather)
  bool unit_scale = true;   // every scale is 1 ("component")
};

template <typename T>
SHPlan<T> make_plan(const char* op, at::IntArrayRef ls, int64_t normalization, const at::Tensor& a,
                    const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef) {
  SHPlan<T> plan;
  TORCH_CHECK(!ls.empty(), op, ": ls must name at least one degree");
  TORCH_CHECK(normalization >= 0 && normalization <= 2, op, ": normalization must be 0 (integral), 1 (component) ",
              "or 2 (norm), got ", normalization);
  for (int64_t l : ls) {
    TORCH_CHECK(l >= 0 && l <= 1000, op, ": degrees must lie in [0, 1000], got ", l);
    plan.lmax = std::max<int32_t>(plan.lmax, static_cast<int32_t>(l));
  }
  const int64_t L = plan.lmax;
  plan.count = static_cast<int32_t>((L + 1) * (L + 1));
  for (const at::Tensor* t : {&a, &b})
    TORCH_CHECK(t->scalar_type() == at::kDouble && t->dim() == 1 && t->size(0) == (L + 1) * (L + 2) / 2 &&
                    t->is_contiguous() && t->device().is_cpu(),
                op, ": recurrence tables must be float64 [", (L + 1) * (L + 2) / 2, "]");
  TORCH_CHECK(src.scalar_type() == at::kInt && src.is_contiguous() && src.numel() == plan.count * 6 &&
                  coef.scalar_type() == at::kDouble && coef.is_contiguous() && coef.numel() == plan.count * 6,
              op, ": gradient tables must be int32 and float64 [", plan.count, ", 3, 2]");
  const int32_t* s = src.data_ptr<int32_t>();
  for (int32_t t = 0; t < plan.count; ++t) {
    const int32_t l = static_cast<int32_t>(std::sqrt(double(t)));
    for (int k = 0; k < 6; ++k)  // a derivative of degree l reads degree l - 1 only
      TORCH_CHECK(s[t * 6 + k] < 0 || (s[t * 6 + k] >= (l - 1) * (l - 1) && s[t * 6 + k] < l * l), op,
                  ": gradient table entry ", t, " is out of range");
  }
  plan.src = s;
  for (int64_t l : ls) {
    plan.degrees.push_back(static_cast<int32_t>(l));
    plan.offsets.push_back(plan.dim);
    plan.dim += static_cast<int32_t>(2 * l + 1);
    const double n = normalization == 0 ? 1.0 / std::sqrt(4.0 * M_PI)
                     : normalization == 1 ? 1.0 : 1.0 / std::sqrt(2.0 * double(l) + 1.0);
    plan.scale.push_back(static_cast<T>(n));
    plan.all_degrees = plan.all_degrees && l == static_cast<int64_t>(plan.degrees.size()) - 1;
    plan.unit_scale = plan.unit_scale && n == 1.0;
  }
  const double *pa = a.data_ptr<double>(), *pb = b.data_ptr<double>(), *pc = coef.data_ptr<double>();
  plan.a.assign(pa, pa + a.numel());
  plan.b.assign(pb, pb + b.numel());
  plan.coef.assign(pc, pc + coef.numel());
  return plan;
}

// Scratch of one task: B points, structure of arrays.
template <typename T>
struct SHScratch {
  static constexpr int B = kLanes<T>;
  AlignedBuffer<T> memory;
  T *x, *P, *gP, *W, *cols, *v, *k, *h, *out3, *staged;
  explicit SHScratch(const SHPlan<T>& plan) {
    const int64_t sizes[] = {3 * B, plan.count * B, plan.count * B, plan.count * B, int64_t(plan.dim) * B,
                             3 * B, 3 * B, 3 * B, 3 * B, int64_t(plan.dim) * B};
    T** slots[] = {&x, &P, &gP, &W, &cols, &v, &k, &h, &out3, &staged};
    int64_t total = 0;
    for (int64_t size : sizes) total += round_up(size, B);
    memory.allocate(total);
    int64_t at = 0;
    for (size_t n = 0; n < sizeof(sizes) / sizeof(sizes[0]); ++n) {
      *slots[n] = memory.data() + at;
      at += round_up(sizes[n], B);
    }
  }
};

#if defined(__AVX512F__)
// rows [B][3] -> lanes [3][B] for one 64-byte vector of B lanes. Element 3n + a of the three
// input vectors goes to lane n of axis a: the first permute takes it from vectors 0 and 1 (index
// < 2B), the second keeps those lanes and takes the rest from vector 2.
template <typename T>
struct Deinterleave3 {
  static constexpr int B = kLanes<T>;
  alignas(64) int32_t first[3][16], second[3][16];  // 32-bit indices (floats) or 64-bit (doubles)
  Deinterleave3() {
    for (int a = 0; a < 3; ++a)
      for (int n = 0; n < 16; ++n) {
        const int e = 3 * n + a;
        first[a][n] = n < B ? e % (2 * B) : 0;
        second[a][n] = n < B ? (e < 2 * B ? n : B + e - 2 * B) : 0;
      }
  }
  void operator()(const float* rows, float* lanes) const {
    const __m512 v0 = _mm512_loadu_ps(rows), v1 = _mm512_loadu_ps(rows + 16), v2 = _mm512_loadu_ps(rows + 32);
    for (int a = 0; a < 3; ++a) {
      const __m512 t = _mm512_permutex2var_ps(v0, _mm512_load_si512(first[a]), v1);
      _mm512_store_ps(lanes + a * 16, _mm512_permutex2var_ps(t, _mm512_load_si512(second[a]), v2));
    }
  }
  void operator()(const double* rows, double* lanes) const {
    const __m512d v0 = _mm512_loadu_pd(rows), v1 = _mm512_loadu_pd(rows + 8), v2 = _mm512_loadu_pd(rows + 16);
    for (int a = 0; a < 3; ++a) {
      const __m512i i1 = _mm512_cvtepi32_epi64(_mm256_load_si256(reinterpret_cast<const __m256i*>(first[a])));
      const __m512i i2 = _mm512_cvtepi32_epi64(_mm256_load_si256(reinterpret_cast<const __m256i*>(second[a])));
      const __m512d t = _mm512_permutex2var_pd(v0, i1, v1);
      _mm512_store_pd(lanes + a * 8, _mm512_permutex2var_pd(t, i2, v2));
    }
  }
};
#endif

// rows [count][3] -> lanes [3][B] (zero past count)
template <typename T>
void load3(const T* rows, int64_t count, T* lanes) {
  constexpr int B = kLanes<T>;
  if (count == B) {
#if defined(__AVX512F__)
    // A full block is 3 whole vectors of interleaved x, y, z: two two-source permutes per axis
    // give each axis as one whole vector (whole-vector stores, so the loads that follow are
    // forwarded from them; the compiler's version stored pieces and stalled those loads).
    static const Deinterleave3<T> permute;
    permute(rows, lanes);
#else
    for (int a = 0; a < 3; ++a)
      NFFK_SIMD for (int n = 0; n < B; ++n) lanes[a * B + n] = rows[n * 3 + a];
#endif
    return;
  }
  for (int a = 0; a < 3; ++a)
    for (int n = 0; n < B; ++n) lanes[a * B + n] = n < count ? rows[n * 3 + a] : T(0);
}

template <typename T>
void store3(const T* lanes, int64_t count, T* rows) {
  constexpr int B = kLanes<T>;
  for (int64_t n = 0; n < count; ++n)
    for (int a = 0; a < 3; ++a) rows[n * 3 + a] = lanes[a * B + n];
}

// cols[c] = scale * P[t(c)] for the requested degrees, then rows [count][dim]. When the degrees
// are 0..lmax the columns are P itself (scaled in place, if at all): no gather copy.
template <typename T>
void store_values(const SHPlan<T>& plan, T* P, T* cols, T* staged, int64_t count, T* rows, bool stream) {
  constexpr int B = kLanes<T>;
  if (plan.all_degrees) {
    if (!plan.unit_scale)
      for (size_t l = 0; l < plan.degrees.size(); ++l) {
        const T scale = plan.scale[l];
        T* p = P + l * l * B;
        NFFK_SIMD for (int n = 0; n < int(2 * l + 1) * B; ++n) p[n] *= scale;
      }
    cols = P;
  } else {
    for (size_t r = 0; r < plan.degrees.size(); ++r) {
      const int32_t l = plan.degrees[r];
      const T scale = plan.scale[r];
      for (int32_t c = 0; c < 2 * l + 1; ++c) {
        const T* p = P + (l * l + c) * B;
        T* o = cols + (plan.offsets[r] + c) * B;
        NFFK_SIMD for (int n = 0; n < B; ++n) o[n] = scale * p[n];
      }
    }
  }
  if (count < B) {
    from_channel_major(cols, B, count, plan.dim, rows);
    return;
  }
  // A full block's rows are one contiguous run of B * dim numbers: transpose into L1 scratch
  // (the tile transpose's row stores are masked and unaligned), then copy with whole-vector stores.
  from_channel_major(cols, B, B, plan.dim, staged);
  copy_out(staged, int64_t(B) * plan.dim, rows, stream);
}

// gP[t] = sum over requested degrees of scale * grad[c(t)] (rows [count][dim] -> lanes).
template <typename T>
void load_grad(const SHPlan<T>& plan, const T* rows, int64_t count, T* cols, T* gP) {
  constexpr int B = kLanes<T>;
  to_channel_major(rows, count, plan.dim, cols, B);
  std::fill(gP, gP + plan.count * B, T(0));
  for (size_t r = 0; r < plan.degrees.size(); ++r) {
    const int32_t l = plan.degrees[r];
    const T scale = plan.scale[r];
    for (int32_t c = 0; c < 2 * l + 1; ++c) {
      const T* g = cols + (plan.offsets[r] + c) * B;
      T* o = gP + (l * l + c) * B;
      NFFK_SIMD for (int n = 0; n < B; ++n) o[n] += scale * g[n];
    }
  }
}

#if defined(__AVX512F__)
// Float32 values of degrees 0..LMAX, LMAX <= 3: at most 16 components, so a block of 16 points is
// one 16x16 register tile and never leaves the registers between its load and its rows' stores
// (the generic path goes through L1 scratch with runtime bounds at every step, which at these
// degrees costs several times the arithmetic).
namespace small {

// 1 / max(|v|, eps) from r2 = |v|^2: rsqrt14 and one Newton step (a few ulp), then the edge cases
// of torch.nn.functional.normalize: below eps it divides by eps; |v|^2 = inf gives 0.
inline __m512 inverse_norm(__m512 r2, float eps) {
  const __m512 guess = _mm512_rsqrt14_ps(r2);
  __m512 inv = 0.5f * guess * (3.0f - r2 * guess * guess);
  inv = _mm512_mask_mov_ps(inv, _mm512_cmp_ps_mask(r2, _mm512_set1_ps(eps * eps), _CMP_LT_OQ),
                           _mm512_set1_ps(1.0f / eps));
  return _mm512_mask_mov_ps(inv, _mm512_cmp_ps_mask(r2, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ), _mm512_setzero_ps());
}

// P[t] for t < (LMAX + 1)^2: the recurrence of sh::values, unrolled (every index is a constant,
// so P stays in registers).
template <int LMAX>
inline void values(const float* a, const float* b, __m512 x, __m512 y, __m512 z, __m512* P) {
  const __m512 r2 = x * x + y * y + z * z;
  __m512 c = z, s = x;  // c_l + i s_l = (z + i x)^l
  P[0] = _mm512_set1_ps(1.0f);
#pragma GCC unroll 4
  for (int l = 1; l <= LMAX; ++l) {
    const int t = l * (l + 1) / 2, base = l * l;
    P[base] = a[t + l] * s;
    P[base + 2 * l] = a[t + l] * c;
#pragma GCC unroll 8
    for (int m = -(l - 1); m <= l - 1; ++m) {
      const int M = m < 0 ? -m : m;
      const __m512 above = P[(l - 1) * (l - 1) + (l - 1) + m];
      P[base + l + m] = M <= l - 2 ? a[t + M] * y * above - b[t + M] * r2 * P[(l - 2) * (l - 2) + (l - 2) + m]
                                   : a[t + M] * y * above;
    }
    const __m512 cn = z * c - x * s;
    s = z * s + x * c;
    c = cn;
  }
}

template <int LMAX>
void values_rows(const SHPlan<float>& plan, bool normalize, const float* px, int64_t points, int64_t begin,
                 int64_t end, float* out, bool stream) {
  constexpr int B = 16, kCount = (LMAX + 1) * (LMAX + 1);
  const float eps = float(kNormalizeEps);
  const __mmask16 row_mask = static_cast<__mmask16>((1u << kCount) - 1);
  alignas(64) float lanes[3 * B];
  alignas(64) float staged[B * kCount];
  static const Deinterleave3<float> deinterleave;
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t n0 = blk * B, count = std::min<int64_t>(B, points - n0);
    if (count == B)
      deinterleave(px + n0 * 3, lanes);
    else
      load3(px + n0 * 3, count, lanes);
    __m512 x = _mm512_load_ps(lanes), y = _mm512_load_ps(lanes + B), z = _mm512_load_ps(lanes + 2 * B);
    if (normalize) {
      const __m512 inv = inverse_norm(x * x + y * y + z * z, eps);
      x *= inv;
      y *= inv;
      z *= inv;
    }
    __m512 r[B];
    values<LMAX>(plan.a.data(), plan.b.data(), x, y, z, r);
    if (!plan.unit_scale)
      for (int l = 0; l <= LMAX; ++l)
        for (int t = l * l; t < (l + 1) * (l + 1); ++t) r[t] *= plan.scale[l];
    for (int t = kCount; t < B; ++t) r[t] = _mm512_setzero_ps();
    detail::transpose16(r);  // r[n] = the row of point n0 + n (lanes >= kCount are zero)
    float* rows = out + n0 * kCount;
    if (!stream) ask_ahead(px + n0 * 3, rows, B * kCount);
    if (count < B) {
      for (int n = 0; n < count; ++n) _mm512_mask_storeu_ps(rows + n * kCount, row_mask, r[n]);
    } else if (stream) {  // rows through L1, then non-temporal whole-vector stores
      for (int n = 0; n < B; ++n) _mm512_mask_storeu_ps(staged + n * kCount, row_mask, r[n]);
      copy_out(staged, B * kCount, rows, true);
    } else if (kCount == B) {
      for (int n = 0; n < B; ++n) _mm512_storeu_ps(rows + n * B, r[n]);
    } else {
      for (int n = 0; n < B; ++n) _mm512_mask_storeu_ps(rows + n * kCount, row_mask, r[n]);
    }
  }
  stream_fence();
}

}  // namespace small

// Runs the register kernel where it applies (float32, values of 0..lmax with lmax <= 3); false otherwise.
template <typename T>
bool small_values(const SHPlan<T>& plan, bool normalize, int64_t points, const T* px, T* out, bool stream) {
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    if (!plan.all_degrees || plan.lmax > 3) return false;
    const int64_t blocks = (points + 15) / 16;
    const int64_t grain = std::max<int64_t>(1, 4096 / (16 * (plan.dim + 3)));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      switch (plan.lmax) {
        case 0: small::values_rows<0>(plan, normalize, px, points, begin, end, out, stream); break;
        case 1: small::values_rows<1>(plan, normalize, px, points, begin, end, out, stream); break;
        case 2: small::values_rows<2>(plan, normalize, px, points, begin, end, out, stream); break;
        default: small::values_rows<3>(plan, normalize, px, points, begin, end, out, stream); break;
      }
    });
    return true;
  }
}
#else
template <typename T>
bool small_values(const SHPlan<T>&, bool, int64_t, const T*, T*, bool) {
  return false;
}
#endif

enum class SHKernel { kValues, kVjp, kVjpVjp };

template <typename T>
void run_sh(SHKernel kernel, const SHPlan<T>& plan, bool normalize, int64_t points, const T* px, const T* pg,
            const T* ph, T* out, T* out2) {
  constexpr int B = kLanes<T>;
  const T* a = plan.a.data();
  const T* b = plan.b.data();
  const T* coef = plan.coef.data();
  const int64_t blocks = (points + B - 1) / B;
  const int64_t grain = std::max<int64_t>(1, 4096 / (B * (plan.dim + 3)));
  const bool stream = points * plan.dim * int64_t(sizeof(T)) >= kStreamBytes;
  if (kernel == SHKernel::kValues && small_values(plan, normalize, points, px, out, stream)) return;
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    SHScratch<T> s(plan);
    sh::Frame<T, B> frame;
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n0 = blk * B, count = std::min<int64_t>(B, points - n0);
      load3(px + n0 * 3, count, s.x);
      frame.set(s.x, normalize, T(kNormalizeEps));
      sh::values<T, B>(plan.lmax, a, b, frame.u[0], frame.u[1], frame.u[2], s.P);
      if (kernel == SHKernel::kValues) {
        if (!stream) ask_ahead(px + n0 * 3, out + n0 * plan.dim, B * plan.dim);
        store_values(plan, s.P, s.cols, s.staged, count, out + n0 * plan.dim, stream);
        continue;
      }
      prefetch_ahead(pg + n0 * plan.dim, B * plan.dim);  // dL/dY rows (see ask_ahead)
      load_grad(plan, pg + n0 * plan.dim, count, s.cols, s.gP);
      std::fill(s.v, s.v + 3 * B, T(0));
      sh::gradient_dot<T, B>(plan.count, plan.src, coef, s.P, s.gP, s.v);  // v = (dP/du)^T gP
      if (kernel == SHKernel::kVjp) {
        frame.apply(s.v, s.out3);
        store3(s.out3, count, out + n0 * 3);
        continue;
      }
      // Second derivatives, with k = J h: d<h, J v(u)>/dgY = (dY/du) k and
      // d<h, J v(u)>/dx = J (sum_t gP_t d2P_t/du2 k) + d/dx <J h, v>|_v.
      load3(ph + n0 * 3, count, s.h);
      frame.apply(s.h, s.k);
      sh::gradient_jvp<T, B>(plan.count, plan.src, coef, s.P, s.k, s.W);
      store_values(plan, s.W, s.cols, s.staged, count, out2 + n0 * plan.dim, stream);
      std::fill(s.W, s.W + plan.count * B, T(0));
      sh::gradient_scatter<T, B>(plan.count, plan.src, coef, s.gP, s.k, s.W);
      std::fill(s.out3, s.out3 + 3 * B, T(0));
      sh::gradient_dot<T, B>(plan.lmax * plan.lmax, plan.src, coef, s.P, s.W, s.out3);
      frame.apply(s.out3, s.k);
      frame.add_curvature(s.h, s.v, s.k);
      store3(s.k, count, out + n0 * 3);
    }
    stream_fence();
  });
}

void check_points(const char* op, const char* name, const at::Tensor& t, int64_t points, int64_t width,
                  c10::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == points && t.size(1) == width, op, ": ", name, " must be [", points, ", ",
              width, "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

template <typename T>
void dispatch_sh(SHKernel kernel, const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& h,
                 at::IntArrayRef ls, bool normalize, int64_t normalization, const at::Tensor& a, const at::Tensor& b,
                 const at::Tensor& src, const at::Tensor& coef, const at::Tensor& out, const at::Tensor& out2) {
  const SHPlan<T> plan = make_plan<T>(op, ls, normalization, a, b, src, coef);
  const auto dtype = x.scalar_type();
  const int64_t points = x.size(0);
  check_points(op, "x", x, points, 3, dtype);
  const T* pg = nullptr;
  const T* ph = nullptr;
  T* po2 = nullptr;
  if (kernel != SHKernel::kValues) {
    check_points(op, "grad", grad, points, plan.dim, dtype);
    pg = grad.data_ptr<T>();
  }
  if (kernel == SHKernel::kVjpVjp) {
    check_points(op, "h", h, points, 3, dtype);
    check_points(op, "grad_grad", out2, points, plan.dim, dtype);
    ph = h.data_ptr<T>();
    po2 = out2.data_ptr<T>();
  }
  check_points(op, "out", out, points, kernel == SHKernel::kValues ? plan.dim : 3, dtype);
  advise_huge_pages(out.data_ptr<T>(), static_cast<size_t>(out.numel()) * sizeof(T));
  run_sh<T>(kernel, plan, normalize, points, x.data_ptr<T>(), pg, ph, out.data_ptr<T>(), po2);
}

void dispatch(SHKernel kernel, const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& h,
              at::IntArrayRef ls, bool normalize, int64_t normalization, const at::Tensor& a, const at::Tensor& b,
              const at::Tensor& src, const at::Tensor& coef, const at::Tensor& out, const at::Tensor& out2) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the cpu backend computes in float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, op, ": x must be [points, 3], got ", x.sizes());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nffk_spherical_harmonics", [&] {
    dispatch_sh<scalar_t>(kernel, op, x, grad, h, ls, normalize, normalization, a, b, src, coef, out, out2);
  });
}

}  // namespace

void sh_forward(const at::Tensor& x, at::IntArrayRef ls, bool normalize, int64_t normalization, const at::Tensor& a,
                const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef, const at::Tensor& out) {
  dispatch(SHKernel::kValues, "nffk_C::sh_forward", x, at::Tensor(), at::Tensor(), ls, normalize, normalization, a, b,
           src, coef, out, at::Tensor());
}

void sh_vjp(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef ls, bool normalize, int64_t normalization,
            const at::Tensor& a, const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef,
            const at::Tensor& out) {
  dispatch(SHKernel::kVjp, "nffk_C::sh_vjp", x, grad, at::Tensor(), ls, normalize, normalization, a, b, src, coef,
           out, at::Tensor());
}

void sh_vjp_vjp(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& h, at::IntArrayRef ls, bool normalize,
                int64_t normalization, const at::Tensor& a, const at::Tensor& b, const at::Tensor& src,
                const at::Tensor& coef, const at::Tensor& grad_x, const at::Tensor& grad_grad) {
  dispatch(SHKernel::kVjpVjp, "nffk_C::sh_vjp_vjp", x, grad, h, ls, normalize, normalization, a, b, src, coef, grad_x,
           grad_grad);
}

}  // namespace nffk::cpu
