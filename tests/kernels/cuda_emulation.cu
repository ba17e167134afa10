// Runs the CUDA kernels' thread functions (csrc/cuda/*_threads.cuh) on the CPU, one call per
// thread in index order, for tests/kernels/test_cuda_emulation.py: without a GPU this checks the
// arithmetic and indexing of every CUDA kernel against the reference (launch configuration,
// streams and the torch bindings are left to `pytest -m gpu`). Built with nvcc as a host shared
// library and called through ctypes; float64 only (float32 is the same template).
#include <cstdint>

#include "neighbor_list_threads.cuh"
#include "spherical_harmonics_threads.cuh"
#include "tensor_product_threads.cuh"

using namespace nffk;
using namespace nffk::cuda;

namespace {

template <int D>
void contract_all(TPKernel kernel, const TPProgram<double>& prog, const double* a, const double* b, const double* w,
                  bool shared, bool weighted_only, const EdgeRows& edges, int64_t rows, double* out) {
  const int64_t total = rows * threads::role_of(kernel, prog).num_slots;
  for (int64_t t = 0; t < total; ++t)
    threads::contract_thread<double, D>(kernel, prog, a, b, w, shared, weighted_only, edges, t, out);
}

template <int D>
void weight_grad_all(const TPProgram<double>& prog, const double* x1, const double* x2, const double* g,
                     const EdgeRows& edges, int64_t edges_count, int64_t chunk, double* partial) {
  const int64_t total = (edges_count + chunk - 1) / chunk * prog.weight_numel;
  for (int64_t t = 0; t < total; ++t)
    threads::weight_grad_thread<double, D>(prog, x1, x2, g, edges, edges_count, chunk, t, partial);
}

}  // namespace

// kernel 0-2: out [rows, width] (tp_contract); kernel 3: partial [ceil(rows / chunk), weight_numel]
// (tp_weight_grad over `rows` edges, a = x1, b = x2, w = g). Index arrays may be null.
extern "C" int nffk_emulate_tp(int kernel, const int32_t* program, const int64_t* layout, const double* cg_value,
                               const double* coefficients, const double* a, const double* b, const double* w,
                               int shared, int weighted_only, const int64_t* ptr, const int64_t* order,
                               const int64_t* x1_index, const int64_t* x2_index, const int64_t* out_index,
                               int64_t rows, int64_t chunk, double* out) {
  const TPProgram<double> prog = tp_program<double>(program, layout, cg_value, coefficients);
  EdgeRows edges;
  edges.ptr = ptr;
  edges.order = order;
  edges.x1 = x1_index;
  edges.x2 = x2_index;
  edges.out = out_index;
  if (prog.max_d > kTPMaxD || kernel < 0 || kernel > 3) return 1;
  const bool small = prog.max_d <= 7;  // the launchers' choice of per-thread array size
  if (kernel == 3) {
    if (small) weight_grad_all<7>(prog, a, b, w, edges, rows, chunk, out);
    else weight_grad_all<kTPMaxD>(prog, a, b, w, edges, rows, chunk, out);
    return 0;
  }
  const TPKernel k = static_cast<TPKernel>(kernel);
  if (small) contract_all<7>(k, prog, a, b, w, shared != 0, weighted_only != 0, edges, rows, out);
  else contract_all<kTPMaxD>(k, prog, a, b, w, shared != 0, weighted_only != 0, edges, rows, out);
  return 0;
}

extern "C" int nffk_emulate_sh(int kernel, const int64_t* ls, int64_t count, int64_t normalization, int normalize,
                               const double* x, const double* grad, const double* h, const double* a, const double* b,
                               const int32_t* src, const double* coef, int64_t points, double* out, double* out2) {
  SHDegrees<double> deg;
  if (!sh_degrees<double>(ls, count, normalization, &deg) || kernel < 0 || kernel > 2) return 1;
  const SHKernel k = static_cast<SHKernel>(kernel);
  for (int64_t n = 0; n < points; ++n) {  // the launcher's choice of L, as in spherical_harmonics.cu
    if (deg.lmax <= 3) threads::sh_thread<double, 3>(k, deg, normalize != 0, x, grad, h, a, b, src, coef, n, out, out2);
    else if (deg.lmax <= 6) threads::sh_thread<double, 6>(k, deg, normalize != 0, x, grad, h, a, b, src, coef, n, out, out2);
    else threads::sh_thread<double, kSHMaxL>(k, deg, normalize != 0, x, grad, h, a, b, src, coef, n, out, out2);
  }
  return 0;
}

// The neighbour-list search (nl_search): offsets == nullptr counts, else fills.
extern "C" int nffk_emulate_nl_search(const double* wrapped, const int64_t* system, const int64_t* bin3,
                                      const double* slot_x, const double* slot_y, const double* slot_z,
                                      const int64_t* slot_atom, const int64_t* bin_start, const int64_t* params,
                                      const double* cells, const int64_t* wrap_bin, const int64_t* wrap_image,
                                      double cutoff_sq, int64_t image_bias, int64_t image_width, int self_interaction,
                                      int64_t atoms, const int64_t* offsets, int64_t* counts, int64_t* senders,
                                      int64_t* images) {
  const NLSearch search{wrapped, system, bin3, slot_x, slot_y, slot_z, slot_atom, bin_start, params, cells,
                        wrap_bin, wrap_image, cutoff_sq, image_bias, image_width, self_interaction != 0};
  for (int64_t i = 0; i < atoms; ++i) {
    const int64_t found = threads::search_receiver(search, i, offsets, senders, images);
    if (offsets == nullptr) counts[i] = found;
  }
  return 0;
}
