// The one place where nffk's compiled kernels are registered as torch ops (namespace nffk_C).
// Python wraps them in autograd-aware custom ops in nffk/ops/.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/mapped_outputs.h"
#include "cpu/ops.h"

TORCH_LIBRARY(nffk_C, m) {
  // An uninitialised output buffer (large ones in reused huge-page mappings: csrc/cpu/mapped_outputs.cpp).
  m.def("empty_output(int[] sizes, ScalarType dtype) -> Tensor");
  m.def("release_outputs() -> int");
  m.def("segment_sum(Tensor src, Tensor ptr) -> Tensor");
  m.def(
      "neighbor_list(Tensor positions, Tensor system_ptr, Tensor cells, Tensor pbc, float cutoff, "
      "bool self_interaction, bool distances, bool vectors) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Tensor products: the plan's kernel tables (paths, coefficients, cg_index, cg_value) travel with the
  // inputs; the caller allocates `out` and every element of it is written.
#define NFFK_TP_TABLES "Tensor paths, Tensor coefficients, Tensor cg_index, Tensor cg_value"
  m.def("tp_forward(Tensor x1, Tensor x2, Tensor w, " NFFK_TP_TABLES ", bool weighted_only, Tensor(a!) out) -> ()");
  m.def("tp_vjp_x1(Tensor g, Tensor x2, Tensor w, " NFFK_TP_TABLES ", bool weighted_only, Tensor(a!) out) -> ()");
  m.def("tp_vjp_x2(Tensor x1, Tensor g, Tensor w, " NFFK_TP_TABLES ", bool weighted_only, Tensor(a!) out) -> ()");
  m.def("tp_vjp_w(Tensor x1, Tensor x2, Tensor g, " NFFK_TP_TABLES ", Tensor(a!) out) -> ()");
  // The three gradients of one forward in one pass; empty outputs are skipped.
  m.def("tp_vjp(Tensor x1, Tensor x2, Tensor w, Tensor g, " NFFK_TP_TABLES
        ", bool weighted_only, Tensor(a!) gx1, Tensor(b!) gx2, Tensor(c!) gw) -> ()");
  // Fused convolution: the graph's five tensors, then the tensor product's tables.
#define NFFK_CONV_GRAPH \
  "Tensor senders, Tensor receivers, Tensor receiver_ptr, Tensor sender_order, Tensor sender_ptr, " NFFK_TP_TABLES
  m.def("conv_forward(Tensor x, Tensor sh, Tensor w, " NFFK_CONV_GRAPH ", bool weighted_only, Tensor(a!) out) -> ()");
  m.def("conv_vjp_x(Tensor g, Tensor sh, Tensor w, " NFFK_CONV_GRAPH ", bool weighted_only, Tensor(a!) out) -> ()");
  m.def("conv_vjp_x_w(Tensor g, Tensor sh, Tensor w, Tensor x, " NFFK_CONV_GRAPH
        ", bool weighted_only, Tensor(a!) gx, Tensor(b!) gw) -> ()");
  m.def("conv_vjp_sh(Tensor x, Tensor g, Tensor w, " NFFK_CONV_GRAPH ", bool weighted_only, Tensor(a!) out) -> ()");
  m.def("conv_vjp_w(Tensor x, Tensor sh, Tensor g, " NFFK_CONV_GRAPH ", Tensor(a!) out) -> ()");
#undef NFFK_CONV_GRAPH
#undef NFFK_TP_TABLES
  m.def("linear_forward(Tensor x, Tensor w, Tensor paths, Tensor coefficients, Tensor(a!) out) -> ()");
  m.def("linear_vjp_x(Tensor g, Tensor w, Tensor paths, Tensor coefficients, Tensor(a!) out) -> ()");
  m.def("linear_vjp_w(Tensor x, Tensor g, Tensor paths, Tensor coefficients, Tensor(a!) out) -> ()");
  // Spherical harmonics: recurrence tables (a, b) and gradient table (src, coef) travel with the inputs.
#define NFFK_SH_ARGS "int[] ls, bool normalize, int normalization, Tensor a, Tensor b, Tensor src, Tensor coef"
  m.def("sh_forward(Tensor x, " NFFK_SH_ARGS ", Tensor(a!) out) -> ()");
  m.def("sh_vjp(Tensor x, Tensor grad, " NFFK_SH_ARGS ", Tensor(a!) out) -> ()");
  m.def("sh_vjp_vjp(Tensor x, Tensor grad, Tensor h, " NFFK_SH_ARGS ", Tensor(a!) grad_x, Tensor(b!) grad_grad) -> ()");
#undef NFFK_SH_ARGS
}

TORCH_LIBRARY_IMPL(nffk_C, CompositeExplicitAutograd, m) {
  m.impl("empty_output", &nffk::cpu::empty_output_op);
  m.impl("release_outputs", &nffk::cpu::release_outputs);
}

TORCH_LIBRARY_IMPL(nffk_C, CPU, m) {
  m.impl("segment_sum", &nffk::cpu::segment_sum);
  m.impl("neighbor_list", &nffk::cpu::neighbor_list);
  m.impl("tp_forward", &nffk::cpu::tp_forward);
  m.impl("tp_vjp_x1", &nffk::cpu::tp_vjp_x1);
  m.impl("tp_vjp_x2", &nffk::cpu::tp_vjp_x2);
  m.impl("tp_vjp_w", &nffk::cpu::tp_vjp_w);
  m.impl("tp_vjp", &nffk::cpu::tp_vjp);
  m.impl("conv_forward", &nffk::cpu::conv_forward);
  m.impl("conv_vjp_x", &nffk::cpu::conv_vjp_x);
  m.impl("conv_vjp_x_w", &nffk::cpu::conv_vjp_x_w);
  m.impl("conv_vjp_sh", &nffk::cpu::conv_vjp_sh);
  m.impl("conv_vjp_w", &nffk::cpu::conv_vjp_w);
  m.impl("linear_forward", &nffk::cpu::linear_forward);
  m.impl("linear_vjp_x", &nffk::cpu::linear_vjp_x);
  m.impl("linear_vjp_w", &nffk::cpu::linear_vjp_w);
  m.impl("sh_forward", &nffk::cpu::sh_forward);
  m.impl("sh_vjp", &nffk::cpu::sh_vjp);
  m.impl("sh_vjp_vjp", &nffk::cpu::sh_vjp_vjp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "nffk compiled kernels (ops are registered under torch.ops.nffk_C)";
#ifdef NFFK_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  module.attr("with_openmp") = true;
#else
  module.attr("with_openmp") = false;
#endif
}
