// Torch-facing CUDA drivers, compiled only when torch has CUDA (setup.py): argument checks, the
// current stream, and the launchers of csrc/cuda/launchers.h. Registered under torch.ops.nffk_C:
// CUDA implementations of the spherical-harmonics ops (same schema as the CPU ones), and the
// CUDA-only tensor-product and conv ops, which take the device-resident program tables built
// once per plan by nffk.ops.tensor_product.cuda_program. Nothing here synchronises with the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <tuple>

#include "launchers.h"

namespace nffk::cuda {
namespace {

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(status));
}

void check_cuda(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_rows(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, int64_t rows,
                int64_t width) {
  check_cuda(op, name, t, like);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), ", expected ",
              like.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == width, op, ": ", name, " must be [", rows, ", ",
              width, "], got ", t.sizes());
}

// ---------------------------------------------------------------------------------------------
// Spherical harmonics
// ---------------------------------------------------------------------------------------------
void sh_dispatch(SHKernel kernel, const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor& h,
                 at::IntArrayRef ls, bool normalize, int64_t normalization, const at::Tensor& a, const at::Tensor& b,
                 const at::Tensor& src, const at::Tensor& coef, const at::Tensor& out, const at::Tensor& out2) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the cuda backend computes in float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, op, ": x must be [points, 3], got ", x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nffk_cuda_spherical_harmonics", [&] {
    SHDegrees<scalar_t> deg;
    TORCH_CHECK(sh_degrees<scalar_t>(ls.data(), int64_t(ls.size()), normalization, &deg), op,
                ": the cuda backend computes 1 to ", kSHMaxDegrees, " degrees in [0, ", kSHMaxL,
                "] with normalization 0, 1 or 2, got ls=", ls, ", normalization=", normalization);
    const int64_t points = x.size(0), count = int64_t(deg.lmax + 1) * (deg.lmax + 1);
    check_rows(op, "x", x, x, points, 3);
    for (const at::Tensor* t : {&a, &b}) {
      check_cuda(op, "a recurrence table", *t, x);
      TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->numel() == (deg.lmax + 1) * (deg.lmax + 2) / 2, op,
                  ": recurrence tables must have ", (deg.lmax + 1) * (deg.lmax + 2) / 2, " entries of x's dtype");
    }
    check_cuda(op, "src", src, x);
    check_cuda(op, "coef", coef, x);
    TORCH_CHECK(src.scalar_type() == at::kInt && src.numel() == count * 6 && coef.scalar_type() == x.scalar_type() &&
                    coef.numel() == count * 6,
                op, ": gradient tables must be int32 and x's dtype, [", count, ", 3, 2]");
    const scalar_t* pg = nullptr;
    const scalar_t* ph = nullptr;
    scalar_t* po2 = nullptr;
    if (kernel != SHKernel::kValues) {
      check_rows(op, "grad", grad, x, points, deg.dim);
      pg = grad.data_ptr<scalar_t>();
    }
    if (kernel == SHKernel::kVjpVjp) {
      check_rows(op, "h", h, x, points, 3);
      check_rows(op, "grad_grad", out2, x, points, deg.dim);
      ph = h.data_ptr<scalar_t>();
      po2 = out2.data_ptr<scalar_t>();
    }
    check_rows(op, "out", out, x, points, kernel == SHKernel::kValues ? deg.dim : 3);
    check_launch(spherical_harmonics<scalar_t>(kernel, deg, normalize, x.data_ptr<scalar_t>(), pg, ph,
                                               a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), src.data_ptr<int32_t>(),
                                               coef.data_ptr<scalar_t>(), points, out.data_ptr<scalar_t>(), po2,
                                               c10::cuda::getCurrentCUDAStream()),
                 op);
  });
}

void sh_forward(const at::Tensor& x, at::IntArrayRef ls, bool normalize, int64_t normalization, const at::Tensor& a,
                const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef, const at::Tensor& out) {
  sh_dispatch(SHKernel::kValues, "nffk_C::sh_forward", x, at::Tensor(), at::Tensor(), ls, normalize, normalization, a,
              b, src, coef, out, at::Tensor());
}

void sh_vjp(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef ls, bool normalize, int64_t normalization,
            const at::Tensor& a, const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef,
            const at::Tensor& out) {
  sh_dispatch(SHKernel::kVjp, "nffk_C::sh_vjp", x, grad, at::Tensor(), ls, normalize, normalization, a, b, src, coef,
              out, at::Tensor());
}

void sh_vjp_vjp(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& h, at::IntArrayRef ls, bool normalize,
                int64_t normalization, const at::Tensor& a, const at::Tensor& b, const at::Tensor& src,
                const at::Tensor& coef, const at::Tensor& grad_x, const at::Tensor& grad_grad) {
  sh_dispatch(SHKernel::kVjpVjp, "nffk_C::sh_vjp_vjp", x, grad, h, ls, normalize, normalization, a, b, src, coef,
              grad_x, grad_grad);
}

// ---------------------------------------------------------------------------------------------
// Tensor products and conv
// ---------------------------------------------------------------------------------------------
constexpr int64_t kWeightChunk = 32;  // edges per partial sum of a shared-weight gradient

template <typename T>
TPProgram<T> program_from(const char* op, const at::Tensor& like, const at::Tensor& program, at::IntArrayRef layout,
                          const at::Tensor& cg_value, const at::Tensor& coefficients) {
  check_cuda(op, "program", program, like);
  check_cuda(op, "cg_value", cg_value, like);
  check_cuda(op, "coefficients", coefficients, like);
  TORCH_CHECK(program.scalar_type() == at::kInt && program.dim() == 1, op, ": program must be a 1-D int32 tensor");
  TORCH_CHECK(cg_value.scalar_type() == like.scalar_type() && coefficients.scalar_type() == like.scalar_type(), op,
              ": cg_value and coefficients must have the inputs' dtype");
  TORCH_CHECK(int64_t(layout.size()) == kTPLayoutSize, op, ": layout must have ", int(kTPLayoutSize), " entries");
  for (int k : {kPaths, kPairs, kCgJ, kOutSegments, kOutGroup, kOutSlots, kX1Segments, kX1Group, kX1Slots,
                kX2Segments, kX2Group, kX2Slots, kWeightSlots})
    TORCH_CHECK(layout[k] >= 0 && layout[k] <= program.numel(), op, ": layout entry ", k, " is outside the program");
  TORCH_CHECK(layout[kMaxD] >= 1 && layout[kMaxD] <= kTPMaxD, op, ": the cuda backend handles irreps up to l = ",
              (kTPMaxD - 1) / 2);
  return tp_program<T>(program.data_ptr<int32_t>(), layout.data(), cg_value.data_ptr<T>(),
                       coefficients.data_ptr<T>());
}

// Widths of (a, b, out) of each kernel.
template <typename T>
std::array<int64_t, 3> widths(TPKernel kernel, const TPProgram<T>& p) {
  switch (kernel) {
    case TPKernel::kForward: return {p.dim1, p.dim2, p.dim_out};
    case TPKernel::kVjpX1: return {p.dim_out, p.dim2, p.dim1};
    case TPKernel::kVjpX2: return {p.dim1, p.dim_out, p.dim2};
    default: return {p.dim1, p.dim2, p.dim_out};  // vjp_w: (x1, x2, g); out is the weight gradient
  }
}

TPKernel kernel_of(const char* op, int64_t kernel) {
  TORCH_CHECK(kernel >= 0 && kernel <= 3, op, ": kernel must be 0 (forward), 1 (vjp_x1), 2 (vjp_x2) or 3 (vjp_w)");
  return static_cast<TPKernel>(kernel);
}

// Checks a, b, w and out of one call; returns whether the weights are shared.
bool check_operands(const char* op, TPKernel kernel, const std::array<int64_t, 3>& width, int64_t weight_numel,
                    const at::Tensor& a, const at::Tensor& b, const at::Tensor& w, const at::Tensor& out,
                    int64_t a_rows, int64_t b_rows, int64_t out_rows, int64_t edges) {
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, op,
              ": the cuda backend computes in float32 or float64, got ", a.scalar_type());
  check_rows(op, "a", a, a, a_rows, width[0]);
  check_rows(op, "b", b, a, b_rows, width[1]);
  if (kernel == TPKernel::kVjpW) {  // w is the output gradient g here; out is the weight gradient
    check_rows(op, "g", w, a, out_rows, width[2]);
    const bool shared = out.dim() == 1;
    check_cuda(op, "out", out, a);
    TORCH_CHECK(out.scalar_type() == a.scalar_type() &&
                    (shared ? out.size(0) == weight_numel : out.dim() == 2 && out.size(0) == edges &&
                                                                out.size(1) == weight_numel),
                op, ": out must be [", weight_numel, "] or [", edges, ", ", weight_numel, "]");
    return shared;
  }
  check_cuda(op, "w", w, a);
  const bool shared = w.dim() == 1;
  TORCH_CHECK(w.scalar_type() == a.scalar_type() &&
                  (shared ? w.size(0) == weight_numel
                          : w.dim() == 2 && w.size(0) == edges && w.size(1) == weight_numel),
              op, ": w must be [", weight_numel, "] or [", edges, ", ", weight_numel, "]");
  check_rows(op, "out", out, a, out_rows, width[2]);
  return shared;
}

template <typename T>
void weight_grad(const char* op, const TPProgram<T>& prog, bool shared, int64_t edges, const at::Tensor& out,
                 const std::function<cudaError_t(int64_t, T*)>& launch) {
  if (!shared) {
    check_launch(launch(1, out.data_ptr<T>()), op);
    return;
  }
  // Per-chunk partial sums, then one deterministic reduction over the chunks.
  const int64_t chunks = std::max<int64_t>(1, (edges + kWeightChunk - 1) / kWeightChunk);
  at::Tensor partial = at::zeros({chunks, prog.weight_numel}, out.options());
  check_launch(launch(kWeightChunk, partial.data_ptr<T>()), op);
  at::sum_out(const_cast<at::Tensor&>(out), partial, {0});
}

void tp_cuda(int64_t kernel_id, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
             const at::Tensor& program, at::IntArrayRef layout, const at::Tensor& cg_value,
             const at::Tensor& coefficients, bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::tp_cuda";
  const TPKernel kernel = kernel_of(op, kernel_id);
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nffk_cuda_tp", [&] {
    const TPProgram<scalar_t> prog = program_from<scalar_t>(op, a, program, layout, cg_value, coefficients);
    const int64_t batch = a.size(0);
    const bool shared = check_operands(op, kernel, widths(kernel, prog), prog.weight_numel, a, b, w, out, batch,
                                       batch, batch, batch);
    if (kernel == TPKernel::kVjpW) {
      weight_grad<scalar_t>(op, prog, shared, batch, out, [&](int64_t chunk, scalar_t* partial) {
        return tp_weight_grad<scalar_t>(prog, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                        EdgeRows{}, batch, chunk, partial, stream);
      });
      return;
    }
    check_launch(tp_contract<scalar_t>(kernel, prog, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                       w.data_ptr<scalar_t>(), shared, weighted_only, EdgeRows{}, batch,
                                       out.data_ptr<scalar_t>(), stream),
                 op);
  });
}

void conv_cuda(int64_t kernel_id, const at::Tensor& a, const at::Tensor& b, const at::Tensor& w,
               const at::Tensor& senders, const at::Tensor& receivers, const at::Tensor& receiver_ptr,
               const at::Tensor& sender_order, const at::Tensor& sender_ptr, const at::Tensor& program,
               at::IntArrayRef layout, const at::Tensor& cg_value, const at::Tensor& coefficients, bool weighted_only,
               const at::Tensor& out) {
  const char* op = "nffk_C::conv_cuda";
  const TPKernel kernel = kernel_of(op, kernel_id);
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t edges = senders.numel(), nodes = receiver_ptr.numel() - 1;
  for (const auto& [name, t, size] : {std::tuple<const char*, const at::Tensor&, int64_t>{"senders", senders, edges},
                                      {"receivers", receivers, edges},
                                      {"receiver_ptr", receiver_ptr, nodes + 1},
                                      {"sender_order", sender_order, edges},
                                      {"sender_ptr", sender_ptr, nodes + 1}}) {
    check_cuda(op, name, t, a);
    TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.numel() == size, op, ": ", name,
                " must be int64 [", size, "]");
  }
  TORCH_CHECK(nodes >= 0, op, ": receiver_ptr must have num_nodes + 1 entries");
  const ConvGraph graph{senders.data_ptr<int64_t>(), receivers.data_ptr<int64_t>(), receiver_ptr.data_ptr<int64_t>(),
                        sender_order.data_ptr<int64_t>(), sender_ptr.data_ptr<int64_t>(), nodes, edges};
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "nffk_cuda_conv", [&] {
    const TPProgram<scalar_t> prog = program_from<scalar_t>(op, a, program, layout, cg_value, coefficients);
    const auto width = widths(kernel, prog);
    const scalar_t *pa = a.data_ptr<scalar_t>(), *pb = b.data_ptr<scalar_t>(), *pw = w.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    switch (kernel) {
      case TPKernel::kForward: {  // a = x [nodes], b = sh [edges] -> out [nodes]
        const bool shared = check_operands(op, kernel, width, prog.weight_numel, a, b, w, out, nodes, edges, nodes,
                                           edges);
        check_launch(conv_forward<scalar_t>(prog, graph, pa, pb, pw, shared, weighted_only, po, stream), op);
        break;
      }
      case TPKernel::kVjpX1: {  // a = g [nodes], b = sh [edges] -> out [nodes]
        const bool shared = check_operands(op, kernel, width, prog.weight_numel, a, b, w, out, nodes, edges, nodes,
                                           edges);
        check_launch(conv_vjp_x<scalar_t>(prog, graph, pa, pb, pw, shared, weighted_only, po, stream), op);
        break;
      }
      case TPKernel::kVjpX2: {  // a = x [nodes], b = g [nodes] -> out [edges]
        const bool shared = check_operands(op, kernel, width, prog.weight_numel, a, b, w, out, nodes, nodes, edges,
                                           edges);
        check_launch(conv_vjp_sh<scalar_t>(prog, graph, pa, pb, pw, shared, weighted_only, po, stream), op);
        break;
      }
      default: {  // a = x [nodes], b = sh [edges], w = g [nodes] -> out [W] or [edges, W]
        const bool shared = check_operands(op, kernel, width, prog.weight_numel, a, b, w, out, nodes, edges, nodes,
                                           edges);
        weight_grad<scalar_t>(op, prog, shared, edges, out, [&](int64_t chunk, scalar_t* partial) {
          return conv_vjp_w<scalar_t>(prog, graph, pa, pb, pw, chunk, partial, stream);
        });
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Neighbour list: the search of kernels/neighbor_list.py's cell list (count, or fill at offsets)
// ---------------------------------------------------------------------------------------------
void nl_search_cuda(const at::Tensor& wrapped, const at::Tensor& system, const at::Tensor& bin3,
                    const at::Tensor& slot_x, const at::Tensor& slot_y, const at::Tensor& slot_z,
                    const at::Tensor& slot_atom, const at::Tensor& bin_start, const at::Tensor& params,
                    const at::Tensor& cells, const at::Tensor& wrap_bin, const at::Tensor& wrap_image, double cutoff_sq,
                    int64_t image_bias, int64_t image_width, bool self_interaction, bool fill,
                    const at::Tensor& offsets, const at::Tensor& counts, const at::Tensor& senders,
                    const at::Tensor& images) {
  const char* op = "nffk_C::nl_search_cuda";
  const int64_t atoms = system.numel(), systems = cells.numel() / 9;
  using Spec = std::tuple<const char*, const at::Tensor&, c10::ScalarType, int64_t>;
  for (const auto& [name, t, dtype, size] :
       {Spec{"wrapped", wrapped, at::kDouble, 3 * atoms}, Spec{"system", system, at::kLong, atoms},
        Spec{"bin3", bin3, at::kLong, 3 * atoms}, Spec{"slot_x", slot_x, at::kDouble, atoms},
        Spec{"slot_y", slot_y, at::kDouble, atoms}, Spec{"slot_z", slot_z, at::kDouble, atoms},
        Spec{"slot_atom", slot_atom, at::kLong, atoms}, Spec{"bin_start", bin_start, at::kLong, -1},
        Spec{"params", params, at::kLong, kNLParams * systems}, Spec{"cells", cells, at::kDouble, 9 * systems},
        Spec{"wrap_bin", wrap_bin, at::kLong, -1}, Spec{"wrap_image", wrap_image, at::kLong, wrap_bin.numel()},
        Spec{"counts", counts, at::kLong, atoms}}) {
    check_cuda(op, name, t, wrapped);
    TORCH_CHECK(t.scalar_type() == dtype && (size < 0 || t.numel() == size), op, ": ", name, " must be ", dtype,
                size < 0 ? "" : " with " + std::to_string(size) + " elements", ", got ", t.scalar_type(), " ",
                t.sizes());
  }
  TORCH_CHECK(image_width > 0 && image_bias >= 0, op, ": image_width must be > 0 and image_bias >= 0");
  NLSearch search{wrapped.data_ptr<double>(), system.data_ptr<int64_t>(), bin3.data_ptr<int64_t>(),
                  slot_x.data_ptr<double>(), slot_y.data_ptr<double>(), slot_z.data_ptr<double>(),
                  slot_atom.data_ptr<int64_t>(), bin_start.data_ptr<int64_t>(), params.data_ptr<int64_t>(),
                  cells.data_ptr<double>(), wrap_bin.data_ptr<int64_t>(), wrap_image.data_ptr<int64_t>(),
                  cutoff_sq, image_bias, image_width, self_interaction};
  const c10::cuda::CUDAGuard guard(wrapped.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (!fill) {
    check_launch(nl_search(search, atoms, nullptr, counts.data_ptr<int64_t>(), nullptr, nullptr, stream), op);
    return;
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"offsets", offsets}, {"senders", senders},
                                {"images", images}}) {
    check_cuda(op, name, t, wrapped);
    TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be int64");
  }
  TORCH_CHECK(offsets.numel() == atoms + 1 && senders.numel() == images.numel(), op,
              ": offsets must have atoms + 1 entries and senders / images one per pair");
  // The caller sized senders / images from offsets[atoms] (the total of the counts).
  check_launch(nl_search(search, atoms, offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                         senders.data_ptr<int64_t>(), images.data_ptr<int64_t>(), stream),
               op);
}

}  // namespace
}  // namespace nffk::cuda

TORCH_LIBRARY_FRAGMENT(nffk_C, m) {
  // CUDA-only ops: `program` and `layout` from nffk.ops.tensor_product.cuda_program; kernel 0 forward,
  // 1 vjp_x1, 2 vjp_x2, 3 vjp_w (then `w` is the output gradient and `out` the weight gradient).
  m.def(
      "tp_cuda(int kernel, Tensor a, Tensor b, Tensor w, Tensor program, int[] layout, Tensor cg_value, "
      "Tensor coefficients, bool weighted_only, Tensor(a!) out) -> ()");
  m.def(
      "conv_cuda(int kernel, Tensor a, Tensor b, Tensor w, Tensor senders, Tensor receivers, Tensor receiver_ptr, "
      "Tensor sender_order, Tensor sender_ptr, Tensor program, int[] layout, Tensor cg_value, Tensor coefficients, "
      "bool weighted_only, Tensor(a!) out) -> ()");
  m.def(
      "nl_search_cuda(Tensor wrapped, Tensor system, Tensor bin3, Tensor slot_x, Tensor slot_y, Tensor slot_z, "
      "Tensor slot_atom, Tensor bin_start, Tensor params, Tensor cells, Tensor wrap_bin, Tensor wrap_image, "
      "float cutoff_sq, int image_bias, int image_width, bool self_interaction, bool fill, Tensor offsets, "
      "Tensor(a!) counts, Tensor(b!) senders, Tensor(c!) images) -> ()");
}

TORCH_LIBRARY_IMPL(nffk_C, CUDA, m) {
  m.impl("sh_forward", &nffk::cuda::sh_forward);
  m.impl("sh_vjp", &nffk::cuda::sh_vjp);
  m.impl("sh_vjp_vjp", &nffk::cuda::sh_vjp_vjp);
  m.impl("tp_cuda", &nffk::cuda::tp_cuda);
  m.impl("conv_cuda", &nffk::cuda::conv_cuda);
  m.impl("nl_search_cuda", &nffk::cuda::nl_search_cuda);
}
