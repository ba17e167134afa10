// CPU drivers of the four tensor-product kernels (forward, vjp_x1, vjp_x2, vjp_w) for plans whose
// paths are all `uvu` or `uvw`: OpenMP over batch elements, SIMD over channels, element-level
// arithmetic from nffk/tensor_product.h. Every output element is written (the caller may hand
// NaN-filled buffers); results do not depend on the number of threads (elements are independent
// and shared-weight gradients are summed over fixed element blocks in a fixed order). The tiles
// and the per-element driver live in tp_tiles.h (shared with the fused convolution, conv.cpp).
#include "ops.h"
#include "tp_tiles.h"

namespace nffk::cpu {
namespace {
using namespace tiles;

template <typename T>
Rows<const T> rows_of(const at::Tensor& t, int64_t stride) {
  return Rows<const T>{t.defined() ? t.data_ptr<T>() : nullptr, stride, nullptr};
}

template <typename T>
void run_kernel(Kernel kernel, const char* op, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& g,
                const at::Tensor& w, const at::Tensor& out, const at::Tensor& table, const at::Tensor& coefficients,
                const at::Tensor& cg_index, const at::Tensor& cg_value, bool weighted_only, int64_t batch,
                int64_t dim1, int64_t dim2, int64_t dim_out, int64_t weight_numel, bool shared) {
  const auto program = cached_program<T>(op, table, coefficients, cg_index, cg_value, dim1, dim2, dim_out,
                                         weight_numel, weighted_only || kernel == Kernel::kVjpW);
  const Program<T>& prog = *program;
  const ElementOperands<T> operands{rows_of<T>(x1, dim1), rows_of<T>(x2, dim2), rows_of<T>(g, dim_out),
                                    rows_of<T>(w, shared ? 0 : weight_numel)};
  run_elements<T>(kernel, prog, operands, out, batch, dim1, dim2, dim_out, weight_numel, shared);
}

// Shapes: x1 [batch, dim1], x2 [batch, dim2], g/out [batch, dim_out], w [W] (shared) or [batch, W].
void dispatch(Kernel kernel, const char* op, const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& g,
              const at::Tensor& w, const at::Tensor& out, const at::Tensor& table, const at::Tensor& coefficients,
              const at::Tensor& cg_index, const at::Tensor& cg_value, bool weighted_only, int64_t dim1, int64_t dim2,
              int64_t dim_out, int64_t weight_numel, bool shared, int64_t batch) {
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "nffk_tensor_product", [&] {
    run_kernel<scalar_t>(kernel, op, x1, x2, g, w, out, table, coefficients, cg_index, cg_value, weighted_only,
                         batch, dim1, dim2, dim_out, weight_numel, shared);
  });
}

int64_t weight_numel_of(const char* op, const at::Tensor& w, int64_t batch, bool& shared) {
  TORCH_CHECK(w.dim() == 1 || w.dim() == 2, op, ": w must be [W] (shared) or [batch, W], got ", w.sizes());
  shared = w.dim() == 1;
  TORCH_CHECK(shared || w.size(0) == batch, op, ": w has ", w.size(0), " rows for a batch of ", batch);
  return w.size(-1);
}

void check_rows(const char* op, const char* name, const at::Tensor& t, int64_t batch) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == batch, op, ": ", name, " must be [", batch, ", dim], got ", t.sizes());
}

}  // namespace

void tp_vjp(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& g,
            const at::Tensor& paths, const at::Tensor& coefficients, const at::Tensor& cg_index,
            const at::Tensor& cg_value, bool weighted_only, const at::Tensor& gx1, const at::Tensor& gx2,
            const at::Tensor& gw) {
  const char* op = "nffk_C::tp_vjp";
  check_io(op, {{"x1", &x1}, {"x2", &x2}, {"w", &w}, {"g", &g}, {"gx1", &gx1}, {"gx2", &gx2}}, gw);
  const int64_t batch = x1.size(0);
  for (const auto& [name, t] : {std::pair{"x1", &x1}, {"x2", &x2}, {"g", &g}}) check_rows(op, name, *t, batch);
  bool shared;
  const int64_t numel = weight_numel_of(op, w, batch, shared);
  const std::pair<const char*, const at::Tensor*> outputs[] = {{"gx1", &gx1}, {"gx2", &gx2}, {"gw", &gw}};
  const at::Tensor* like[] = {&x1, &x2, &w};
  at::Tensor wanted[3];
  for (int n = 0; n < 3; ++n) {
    if (outputs[n].second->numel() == 0) continue;  // not wanted
    TORCH_CHECK(outputs[n].second->sizes() == like[n]->sizes(), op, ": ", outputs[n].first, " must have the shape ",
                like[n]->sizes(), " (or be empty: not computed), got ", outputs[n].second->sizes());
    wanted[n] = *outputs[n].second;
  }
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "nffk_tp_vjp", [&] {
    using T = scalar_t;
    const int64_t dim1 = x1.size(1), dim2 = x2.size(1), dim_out = g.size(1);
    const auto program = cached_program<T>(op, paths, coefficients, cg_index, cg_value, dim1, dim2, dim_out, numel,
                                           weighted_only);
    // vjp_w's program keeps the weighted paths; where every path is weighted it is the same one.
    const auto weight_program = weighted_only || every_path_weighted(*program)
                                    ? program
                                    : cached_program<T>(op, paths, coefficients, cg_index, cg_value, dim1, dim2,
                                                        dim_out, numel, true);
    run_backward<T>(*program, *weight_program,
                    ElementOperands<T>{rows_of<T>(x1, dim1), rows_of<T>(x2, dim2), rows_of<T>(g, dim_out),
                                       rows_of<T>(w, shared ? 0 : numel)},
                    wanted[0], wanted[1], wanted[2], batch, dim1, dim2, dim_out, numel);
  });
}

void tp_forward(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& paths,
                const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
                bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::tp_forward";
  check_io(op, {{"x1", &x1}, {"x2", &x2}, {"w", &w}}, out);
  const int64_t batch = x1.size(0);
  check_rows(op, "x1", x1, batch);
  check_rows(op, "x2", x2, batch);
  check_rows(op, "out", out, batch);
  bool shared;
  const int64_t numel = weight_numel_of(op, w, batch, shared);
  dispatch(Kernel::kForward, op, x1, x2, at::Tensor(), w, out, paths, coefficients, cg_index, cg_value, weighted_only,
           x1.size(1), x2.size(1), out.size(1), numel, shared, batch);
}

void tp_vjp_x1(const at::Tensor& g, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& paths,
               const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
               bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::tp_vjp_x1";
  check_io(op, {{"g", &g}, {"x2", &x2}, {"w", &w}}, out);
  const int64_t batch = g.size(0);
  check_rows(op, "g", g, batch);
  check_rows(op, "x2", x2, batch);
  check_rows(op, "out", out, batch);
  bool shared;
  const int64_t numel = weight_numel_of(op, w, batch, shared);
  dispatch(Kernel::kVjpX1, op, at::Tensor(), x2, g, w, out, paths, coefficients, cg_index, cg_value, weighted_only,
           out.size(1), x2.size(1), g.size(1), numel, shared, batch);
}

void tp_vjp_x2(const at::Tensor& x1, const at::Tensor& g, const at::Tensor& w, const at::Tensor& paths,
               const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
               bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::tp_vjp_x2";
  check_io(op, {{"x1", &x1}, {"g", &g}, {"w", &w}}, out);
  const int64_t batch = x1.size(0);
  check_rows(op, "x1", x1, batch);
  check_rows(op, "g", g, batch);
  check_rows(op, "out", out, batch);
  bool shared;
  const int64_t numel = weight_numel_of(op, w, batch, shared);
  dispatch(Kernel::kVjpX2, op, x1, at::Tensor(), g, w, out, paths, coefficients, cg_index, cg_value, weighted_only,
           x1.size(1), out.size(1), g.size(1), numel, shared, batch);
}

void tp_vjp_w(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& g, const at::Tensor& paths,
              const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
              const at::Tensor& out) {
  const char* op = "nffk_C::tp_vjp_w";
  check_io(op, {{"x1", &x1}, {"x2", &x2}, {"g", &g}}, out);
  const int64_t batch = x1.size(0);
  check_rows(op, "x1", x1, batch);
  check_rows(op, "x2", x2, batch);
  check_rows(op, "g", g, batch);
  bool shared;
  const int64_t numel = weight_numel_of(op, out, batch, shared);
  dispatch(Kernel::kVjpW, op, x1, x2, g, at::Tensor(), out, paths, coefficients, cg_index, cg_value, true,
           x1.size(1), x2.size(1), g.size(1), numel, shared, batch);
}

}  // namespace nffk::cpu
