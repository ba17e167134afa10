// The one place where nffk's compiled kernels are registered as torch ops (namespace nffk_C).
// Python wraps them in autograd-aware custom ops in nffk/ops/.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/ops.h"

TORCH_LIBRARY(nffk_C, m) {
  m.def("segment_sum(Tensor src, Tensor ptr) -> Tensor");
  m.def(
      "neighbor_list(Tensor positions, Tensor system_ptr, Tensor cells, Tensor pbc, float cutoff, "
      "bool self_interaction, bool distances, bool vectors) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(nffk_C, CPU, m) {
  m.impl("segment_sum", &nffk::cpu::segment_sum);
  m.impl("neighbor_list", &nffk::cpu::neighbor_list);
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
