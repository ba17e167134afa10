// CPU drivers of the equivariant Linear map (forward, vjp_x, vjp_w): OpenMP over batch elements,
// SIMD over output channels, element-level arithmetic from nffk/linear.h. Every output element is
// written; results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "nffk/linear.h"
#include "ops.h"
#include "scratch.h"
#include "transpose.h"

namespace nffk::cpu {
namespace {

// Columns of the path table: PATH_FIELDS in nffk/ops/linear.py.
enum LinearField : int { kMulIn, kMulOut, kDim, kOffsetIn, kOffsetOut, kWeightOffset, kLinearFields };

template <typename T>
struct LinearPath {
  int64_t mul_in, mul_out, d, offset_in, offset_out, weight_offset, ld_in, ld_out;
  T coefficient;
};

template <typename T>
struct LinearProgram {
  std::vector<LinearPath<T>> paths;
  std::vector<std::vector<int32_t>> out_groups, in_groups;  // paths sharing an output (input) block
  std::vector<std::pair<int64_t, int64_t>> out_gaps, in_gaps;
  int64_t max_block = 0, max_weights = 0;
};

template <typename T>
LinearProgram<T> build(const char* op, const at::Tensor& table, const at::Tensor& coefficients, int64_t dim_in,
                       int64_t dim_out, int64_t weight_numel) {
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 2 && table.size(1) == kLinearFields &&
                  table.is_contiguous() && table.device().is_cpu(),
              op, ": paths must be a contiguous CPU int64 table [paths, ", int(kLinearFields), "]");
  TORCH_CHECK(coefficients.dim() == 1 && coefficients.size(0) == table.size(0) && coefficients.is_contiguous() &&
                  coefficients.scalar_type() == c10::CppTypeToScalarType<T>::value,
              op, ": coefficients must be [", table.size(0), "] of the inputs' dtype");
  LinearProgram<T> prog;
  const int64_t* rows = table.data_ptr<int64_t>();
  const T* coefs = coefficients.data_ptr<T>();
  std::vector<std::pair<int64_t, int64_t>> in_cover, out_cover;
  for (int64_t p = 0; p < table.size(0); ++p) {
    const int64_t* r = rows + p * kLinearFields;
    for (int f = 0; f < kLinearFields; ++f) TORCH_CHECK(r[f] >= 0, op, ": path ", p, " has a negative table entry");
    TORCH_CHECK(r[kOffsetIn] + r[kMulIn] * r[kDim] <= dim_in && r[kOffsetOut] + r[kMulOut] * r[kDim] <= dim_out &&
                    r[kWeightOffset] + r[kMulIn] * r[kMulOut] <= weight_numel,
                op, ": path ", p, " reaches past the rows of x, out or w");
    if (r[kMulIn] == 0 || r[kMulOut] == 0 || r[kDim] == 0) continue;
    out_cover.emplace_back(r[kOffsetOut], r[kOffsetOut] + r[kMulOut] * r[kDim]);
    in_cover.emplace_back(r[kOffsetIn], r[kOffsetIn] + r[kMulIn] * r[kDim]);
    prog.paths.push_back({r[kMulIn], r[kMulOut], r[kDim], r[kOffsetIn], r[kOffsetOut], r[kWeightOffset],
                          round_up(r[kMulIn], kLanes<T>), round_up(r[kMulOut], kLanes<T>), coefs[p]});
    prog.max_block = std::max({prog.max_block, r[kDim] * round_up(r[kMulIn], kLanes<T>),
                               r[kDim] * round_up(r[kMulOut], kLanes<T>)});
    prog.max_weights = std::max(prog.max_weights, std::max(r[kMulIn], r[kMulOut]) *
                                                      round_up(std::max(r[kMulIn], r[kMulOut]), kLanes<T>));
  }
  auto group = [&](bool by_output) {
    std::vector<std::vector<int32_t>> groups;
    std::vector<int64_t> offsets;
    for (size_t n = 0; n < prog.paths.size(); ++n) {
      const LinearPath<T>& p = prog.paths[n];
      const int64_t offset = by_output ? p.offset_out : p.offset_in;
      const auto at = std::find(offsets.begin(), offsets.end(), offset);
      if (at == offsets.end()) {
        offsets.push_back(offset);
        groups.push_back({static_cast<int32_t>(n)});
      } else {
        const LinearPath<T>& q = prog.paths[groups[at - offsets.begin()][0]];
        TORCH_CHECK(by_output ? (q.mul_out == p.mul_out && q.d == p.d) : (q.mul_in == p.mul_in && q.d == p.d), op,
                    ": paths disagree on the block at offset ", offset);
        groups[at - offsets.begin()].push_back(static_cast<int32_t>(n));
      }
    }
    return groups;
  };
  prog.out_groups = group(true);
  prog.in_groups = group(false);
  prog.out_gaps = gaps(out_cover, dim_out);
  prog.in_gaps = gaps(in_cover, dim_in);
  return prog;
}

// W[u][w] -> padded[u][ld_out] (forward) or transposed[w][ld_in] (vjp_x), zero padding.
template <typename T>
void stage_weights(const LinearPath<T>& p, const T* w, bool transpose, T* dst) {
  if (!transpose) {
    for (int64_t u = 0; u < p.mul_in; ++u) {
      std::copy(w + u * p.mul_out, w + (u + 1) * p.mul_out, dst + u * p.ld_out);
      std::fill(dst + u * p.ld_out + p.mul_out, dst + (u + 1) * p.ld_out, T(0));
    }
  } else {
    for (int64_t v = 0; v < p.mul_out; ++v) {
      for (int64_t u = 0; u < p.mul_in; ++u) dst[v * p.ld_in + u] = w[u * p.mul_out + v];
      std::fill(dst + v * p.ld_in + p.mul_in, dst + (v + 1) * p.ld_in, T(0));
    }
  }
}

template <typename T>
void mix(const T* x, int64_t rows, int64_t d, const T* M, int64_t ld, T c, T* out) {
  if (ld % (2 * kLanes<T>) == 0) {
    linear::mix<T, 2 * kLanes<T>>(x, rows, d, M, ld, c, out, ld, ld);
  } else {
    linear::mix<T, kLanes<T>>(x, rows, d, M, ld, c, out, ld, ld);
  }
}

enum class LinearKernel { kForward, kVjpX, kVjpW };

template <typename T>
void run_linear(LinearKernel kernel, const char* op, const at::Tensor& a, const at::Tensor& w,
                const at::Tensor& table, const at::Tensor& coefficients, const at::Tensor& out, int64_t dim_in,
                int64_t dim_out, int64_t weight_numel, bool shared) {
  const LinearProgram<T> prog = build<T>(op, table, coefficients, dim_in, dim_out, weight_numel);
  const int64_t batch = a.size(0);
  const T* pa = a.data_ptr<T>();  // x (forward, vjp_w) or g (vjp_x)
  const T* pw = w.defined() ? w.data_ptr<T>() : nullptr;  // g for vjp_w
  T* po = out.data_ptr<T>();
  advise_huge_pages(po, static_cast<size_t>(out.numel()) * sizeof(T));
  const int64_t a_dim = kernel == LinearKernel::kVjpX ? dim_out : dim_in;
  const int64_t out_dim = kernel == LinearKernel::kForward ? dim_out : (kernel == LinearKernel::kVjpX ? dim_in : 0);

  // Shared weights are staged once per call.
  std::vector<AlignedBuffer<T>> staged(prog.paths.size());
  const bool stage_once = shared && kernel != LinearKernel::kVjpW;
  if (stage_once) {
    for (size_t n = 0; n < prog.paths.size(); ++n) {
      staged[n].allocate(prog.max_weights);
      stage_weights(prog.paths[n], pw + prog.paths[n].weight_offset, kernel == LinearKernel::kVjpX, staged[n].data());
    }
  }

  auto element = [&](int64_t e, T* block, T* weights, T* gw, bool accumulate) {
    const T* row = pa + e * a_dim;
    if (kernel == LinearKernel::kVjpW) {
      const T* g = pw + e * dim_out;
      if (!accumulate) std::fill(gw, gw + weight_numel, T(0));  // weights of paths with no channels
      for (const LinearPath<T>& p : prog.paths) {
        to_channel_major(g + p.offset_out, p.mul_out, p.d, block, p.ld_out);
        linear::outer(row + p.offset_in, p.mul_in, p.d, block, p.ld_out, p.mul_out, p.coefficient,
                      gw + p.weight_offset, true);
      }
      return;
    }
    T* dst = po + e * out_dim;
    const auto& gaps = kernel == LinearKernel::kForward ? prog.out_gaps : prog.in_gaps;
    for (const auto& [begin, end] : gaps) std::fill(dst + begin, dst + end, T(0));
    const T* we = shared ? pw : pw + e * weight_numel;
    // One output-side block at a time (forward: output irreps; vjp_x: input irreps), summing paths.
    const bool fwd = kernel == LinearKernel::kForward;
    for (const std::vector<int32_t>& members : fwd ? prog.out_groups : prog.in_groups) {
      const LinearPath<T>& first = prog.paths[members[0]];
      const int64_t ld = fwd ? first.ld_out : first.ld_in;
      std::fill(block, block + first.d * ld, T(0));
      for (int32_t k : members) {
        const LinearPath<T>& p = prog.paths[k];
        const T* M = staged[k].data();
        if (!stage_once) {
          stage_weights(p, we + p.weight_offset, !fwd, weights);
          M = weights;
        }
        if (fwd) {
          mix(row + p.offset_in, p.mul_in, p.d, M, ld, p.coefficient, block);
        } else {
          mix(row + p.offset_out, p.mul_out, p.d, M, ld, p.coefficient, block);
        }
      }
      from_channel_major(block, ld, fwd ? first.mul_out : first.mul_in, first.d,
                         dst + (fwd ? first.offset_out : first.offset_in));
    }
  };

  if (kernel == LinearKernel::kVjpW && shared) {
    // Fixed blocks of elements summed in order: the same bits for any thread count.
    const int64_t size = std::max<int64_t>(64, (batch + 255) / 256);
    const int64_t blocks = (batch + size - 1) / size;
    std::vector<T> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * weight_numel), T(0));
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      AlignedBuffer<T> block;
      block.allocate(prog.max_block);
      for (int64_t b = begin; b < end; ++b)
        for (int64_t e = b * size; e < std::min(batch, (b + 1) * size); ++e)
          element(e, block.data(), nullptr, partial.data() + b * weight_numel, true);
    });
    at::parallel_for(0, weight_numel, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        T sum = T(0);
        for (int64_t b = 0; b < blocks; ++b) sum += partial[b * weight_numel + k];
        po[k] = sum;
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(dim_in + dim_out, 1));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    AlignedBuffer<T> block, weights;
    block.allocate(prog.max_block);
    weights.allocate(prog.max_weights);
    for (int64_t e = begin; e < end; ++e)
      element(e, block.data(), weights.data(), po + e * weight_numel, false);
  });
}

void check(const char* op, const char* name, const at::Tensor& t, c10::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void dispatch(LinearKernel kernel, const char* op, const at::Tensor& a, const at::Tensor& w, const at::Tensor& table,
              const at::Tensor& coefficients, const at::Tensor& out, int64_t dim_in, int64_t dim_out,
              int64_t weight_numel, bool shared) {
  const auto dtype = a.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": the cpu backend computes in float32 or float64, got ",
              dtype);
  check(op, kernel == LinearKernel::kVjpX ? "g" : "x", a, dtype);
  check(op, kernel == LinearKernel::kVjpW ? "g" : "weight", w, dtype);
  check(op, "out", out, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "nffk_linear", [&] {
    run_linear<scalar_t>(kernel, op, a, w, table, coefficients, out, dim_in, dim_out, weight_numel, shared);
  });
}

int64_t weights_of(const char* op, const at::Tensor& w, int64_t batch, bool& shared) {
  TORCH_CHECK(w.dim() == 1 || (w.dim() == 2 && w.size(0) == batch), op, ": weights must be [W] or [", batch,
              ", W], got ", w.sizes());
  shared = w.dim() == 1;
  return w.size(-1);
}

}  // namespace

void linear_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& paths, const at::Tensor& coefficients,
                    const at::Tensor& out) {
  const char* op = "nffk_C::linear_forward";
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2 && out.size(0) == x.size(0), op, ": x [batch, dim_in] and out [batch, ",
              "dim_out] expected, got ", x.sizes(), " and ", out.sizes());
  bool shared;
  const int64_t numel = weights_of(op, w, x.size(0), shared);
  dispatch(LinearKernel::kForward, op, x, w, paths, coefficients, out, x.size(1), out.size(1), numel, shared);
}

void linear_vjp_x(const at::Tensor& g, const at::Tensor& w, const at::Tensor& paths, const at::Tensor& coefficients,
                  const at::Tensor& out) {
  const char* op = "nffk_C::linear_vjp_x";
  TORCH_CHECK(g.dim() == 2 && out.dim() == 2 && out.size(0) == g.size(0), op, ": g [batch, dim_out] and out [batch, ",
              "dim_in] expected, got ", g.sizes(), " and ", out.sizes());
  bool shared;
  const int64_t numel = weights_of(op, w, g.size(0), shared);
  dispatch(LinearKernel::kVjpX, op, g, w, paths, coefficients, out, out.size(1), g.size(1), numel, shared);
}

void linear_vjp_w(const at::Tensor& x, const at::Tensor& g, const at::Tensor& paths, const at::Tensor& coefficients,
                  const at::Tensor& out) {
  const char* op = "nffk_C::linear_vjp_w";
  TORCH_CHECK(x.dim() == 2 && g.dim() == 2 && g.size(0) == x.size(0), op, ": x [batch, dim_in] and g [batch, dim_out] ",
              "expected, got ", x.sizes(), " and ", g.sizes());
  bool shared;
  const int64_t numel = weights_of(op, out, x.size(0), shared);
  dispatch(LinearKernel::kVjpW, op, x, g, paths, coefficients, out, x.size(1), g.size(1), numel, shared);
}

}  // namespace nffk::cpu
