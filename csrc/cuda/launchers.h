// Host-callable launchers of the CUDA kernels in csrc/cuda/*.cu: plain C++ on raw device pointers
// (no torch types), so nvcc compiles them without a CUDA build of torch and any C++ driver can call
// them with the stream of its choice. Each returns the launch status (cudaGetLastError()) and none
// synchronises with the host, except the neighbour list, whose output size depends on the data.
#pragma once
#include <cuda_runtime_api.h>

#include <cmath>

#include "nffk/common.h"

namespace nffk::cuda {

// out[s, :] = sum of src[ptr[s]:ptr[s+1], :] for s < segments; src [rows, width], out [segments, width].
// Deterministic: each segment is summed by one thread, rows in order (nffk/segment.h).
template <typename scalar_t>
cudaError_t segment_sum(const scalar_t* src, const index_t* ptr, index_t segments, index_t width, scalar_t* out,
                        cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Spherical harmonics (csrc/cuda/spherical_harmonics.cu): one thread per point, the element-level
// code of nffk/spherical_harmonics.h with one lane (B = 1).
// ---------------------------------------------------------------------------------------------
enum class SHKernel : int32_t { kValues = 0, kVjp = 1, kVjpVjp = 2 };

constexpr int32_t kSHMaxDegrees = 32;  // requested degrees per call
constexpr int32_t kSHMaxL = 10;        // (lmax + 1)^2 values are held per thread

// The requested degrees, passed by value to the kernel (nothing to copy to the device per call).
template <typename T>
struct SHDegrees {
  int32_t count = 0, lmax = 0, dim = 0;
  int32_t degree[kSHMaxDegrees], offset[kSHMaxDegrees];
  T scale[kSHMaxDegrees];  // normalisation relative to "component"
};

// The degrees ls[0..count) with normalisation 0 (integral), 1 (component) or 2 (norm); false if
// they are out of range (count or a degree).
template <typename T>
inline bool sh_degrees(const int64_t* ls, int64_t count, int64_t normalization, SHDegrees<T>* deg) {
  if (count <= 0 || count > kSHMaxDegrees || normalization < 0 || normalization > 2) return false;
  *deg = SHDegrees<T>();
  for (int64_t r = 0; r < count; ++r) {
    const int64_t l = ls[r];
    if (l < 0 || l > kSHMaxL) return false;
    const double n = normalization == 0 ? 1.0 / std::sqrt(4.0 * M_PI)
                     : normalization == 1 ? 1.0 : 1.0 / std::sqrt(2.0 * double(l) + 1.0);
    deg->degree[r] = int32_t(l);
    deg->offset[r] = deg->dim;
    deg->scale[r] = T(n);
    deg->dim += int32_t(2 * l + 1);
    deg->lmax = deg->lmax > int32_t(l) ? deg->lmax : int32_t(l);
    deg->count = int32_t(r + 1);
  }
  return true;
}

// kValues:  out [points, dim] = Y(x)
// kVjp:     out [points, 3] = (dY/dx)^T grad                          (grad [points, dim])
// kVjpVjp:  out [points, 3] = d<h, vjp>/dx, out2 [points, dim] = d<h, vjp>/dgrad   (h [points, 3])
// a, b: recurrence tables [(lmax + 1)(lmax + 2) / 2]; src, coef: gradient tables [(lmax + 1)^2, 3, 2],
// all in device memory in T (src int32), as nffk.ops.spherical_harmonics builds them.
template <typename T>
cudaError_t spherical_harmonics(SHKernel kernel, const SHDegrees<T>& degrees, bool normalize, const T* x,
                                const T* grad, const T* h, const T* a, const T* b, const int32_t* src, const T* coef,
                                index_t points, T* out, T* out2, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Tensor products and the fused conv (csrc/cuda/tensor_product.cu, conv.cu): uvu and uvw paths,
// one thread per (output row, channel of an irrep block), the element-level code of
// nffk/tensor_product.h with one channel per call. The program tables are built once per plan
// by nffk.ops.tensor_product.cuda_program and live in device memory.
// ---------------------------------------------------------------------------------------------
enum class TPKernel : int32_t { kForward = 0, kVjpX1 = 1, kVjpX2 = 2, kVjpW = 3 };

constexpr int32_t kTPPathColumns = 14;  // mode, d1, d2, d3, mul1, mul2, mul_out, offset1, offset2,
                                        // offset_out, weight_offset, has_weight, pair_begin, pair_end
constexpr int32_t kTPSegmentColumns = 5;  // offset, mul, d, group_begin, group_end
constexpr int32_t kTPMaxD = 13;           // irreps up to l = 6

// The blocks of one produced tensor (out for the forward, x1 / x2 for their vjps) cover its row:
// every (segment, channel) slot is one thread per row, summing the paths of its group (gaps of
// the row are segments of d = 1 with no paths: written as zeros).
struct TPRole {
  const int32_t* segments;  // [num_segments][kTPSegmentColumns]
  const int32_t* group;     // path numbers, grouped by segment
  const int32_t* slots;     // [num_slots][2]: segment, channel
  index_t num_slots;
  index_t width;            // elements in a row of the produced tensor
};

template <typename T>
struct TPProgram {
  const int32_t* paths;    // [num_paths][kTPPathColumns]
  const int32_t* pairs;    // [num_pairs][4]: m1, m3, begin, end (a run of CG non-zeros, see tp::CGPair)
  const int32_t* cg_j;     // m2 of every CG non-zero
  const T* cg_value;       // and its value
  const T* coefficients;   // [num_paths]
  TPRole out, x1, x2;
  const int32_t* weight_slots;  // [weight_numel][4]: path (-1: none, write 0), u, v, w
  index_t dim1, dim2, dim_out, weight_numel;
  int32_t max_d;           // largest 2l + 1 of any path (<= kTPMaxD)
};

// Entries of the `layout` list that comes with the int32 program tensor
// (nffk.ops.tensor_product.CUDA_LAYOUT): offsets of the tables in it, slot counts, dims.
enum TPLayout : int {
  kPaths, kPairs, kCgJ, kOutSegments, kOutGroup, kOutSlots, kOutNumSlots, kX1Segments, kX1Group, kX1Slots,
  kX1NumSlots, kX2Segments, kX2Group, kX2Slots, kX2NumSlots, kWeightSlots, kDim1, kDim2, kDimOut, kWeightNumel,
  kMaxD, kTPLayoutSize
};

template <typename T>
inline TPProgram<T> tp_program(const int32_t* base, const int64_t* layout, const T* cg_value, const T* coefficients) {
  TPProgram<T> p;
  p.paths = base + layout[kPaths];
  p.pairs = base + layout[kPairs];
  p.cg_j = base + layout[kCgJ];
  p.cg_value = cg_value;
  p.coefficients = coefficients;
  p.dim1 = layout[kDim1];
  p.dim2 = layout[kDim2];
  p.dim_out = layout[kDimOut];
  p.weight_numel = layout[kWeightNumel];
  p.max_d = int32_t(layout[kMaxD]);
  p.out = TPRole{base + layout[kOutSegments], base + layout[kOutGroup], base + layout[kOutSlots],
                 layout[kOutNumSlots], p.dim_out};
  p.x1 = TPRole{base + layout[kX1Segments], base + layout[kX1Group], base + layout[kX1Slots], layout[kX1NumSlots],
                p.dim1};
  p.x2 = TPRole{base + layout[kX2Segments], base + layout[kX2Group], base + layout[kX2Slots], layout[kX2NumSlots],
                p.dim2};
  p.weight_slots = base + layout[kWeightSlots];
  return p;
}

// Which rows of x1, x2 and out an edge e reads (nullptr: row e) and how edges group into output
// rows: with ptr, output row r sums the edges order[q] (or q) for ptr[r] <= q < ptr[r + 1];
// without, output row r is edge r. A plain tensor product is all nullptr.
struct EdgeRows {
  const index_t* ptr = nullptr;
  const index_t* order = nullptr;
  const index_t* x1 = nullptr;
  const index_t* x2 = nullptr;
  const index_t* out = nullptr;
};

// kForward: out = F(a = x1, b = x2, w); kVjpX1: out = vjp_x1(a = g, b = x2, w); kVjpX2: out =
// vjp_x2(a = x1, b = g, w). out has `rows` rows of the role's width; every element is written.
// w: [weight_numel] (shared_weights) or one row per edge; weighted_only skips paths without weights.
template <typename T>
cudaError_t tp_contract(TPKernel kernel, const TPProgram<T>& program, const T* a, const T* b, const T* w,
                        bool shared_weights, bool weighted_only, EdgeRows edges, index_t rows, T* out,
                        cudaStream_t stream);

// Weight gradient: partial[c, j] = sum over edges e of chunk c (edges [c * chunk, (c + 1) * chunk))
// of d<g_e, F(x1_e, x2_e, w)>/dw_j. chunk = 1 gives the per-edge gradient; a larger chunk, summed
// over c afterwards in a fixed order, the shared-weight gradient (deterministic, no atomics).
template <typename T>
cudaError_t tp_weight_grad(const TPProgram<T>& program, const T* x1, const T* x2, const T* g, EdgeRows edges,
                           index_t num_edges, index_t chunk, T* partial, cudaStream_t stream);

}  // namespace nffk::cuda

namespace nffk::cuda {

// ---------------------------------------------------------------------------------------------
// Fused conv (csrc/cuda/conv.cu): out[i] = sum over edges e = (j -> i) of TP(x[j], sh[e], w[e]),
// no per-edge tensor, no atomics. Edges are sorted by receiver (receiver_ptr, CSR); the sender-
// sorted view (sender_order, sender_ptr) lets vjp_x sum over each sender's edges the same way.
// w: [weight_numel] (shared_weights) or [edges, weight_numel].
// ---------------------------------------------------------------------------------------------
struct ConvGraph {
  const index_t* senders;       // [edges]
  const index_t* receivers;     // [edges], non-decreasing
  const index_t* receiver_ptr;  // [nodes + 1]
  const index_t* sender_order;  // [edges]
  const index_t* sender_ptr;    // [nodes + 1]
  index_t nodes, edges;
};

// out [nodes, dim_out] = conv(x, sh, w)
template <typename T>
cudaError_t conv_forward(const TPProgram<T>& program, const ConvGraph& graph, const T* x, const T* sh, const T* w,
                         bool shared_weights, bool weighted_only, T* out, cudaStream_t stream);
// out [nodes, dim1]: dx[j] = sum over edges e leaving j of vjp_x1(g[receivers[e]], sh[e], w[e])
template <typename T>
cudaError_t conv_vjp_x(const TPProgram<T>& program, const ConvGraph& graph, const T* g, const T* sh, const T* w,
                       bool shared_weights, bool weighted_only, T* out, cudaStream_t stream);
// out [edges, dim2]: vjp_x2(x[senders[e]], g[receivers[e]], w[e])
template <typename T>
cudaError_t conv_vjp_sh(const TPProgram<T>& program, const ConvGraph& graph, const T* x, const T* g, const T* w,
                        bool shared_weights, bool weighted_only, T* out, cudaStream_t stream);
// partial [ceil(edges / chunk), weight_numel] as tp_weight_grad, over the edges in receiver order.
template <typename T>
cudaError_t conv_vjp_w(const TPProgram<T>& program, const ConvGraph& graph, const T* x, const T* sh, const T* g,
                       index_t chunk, T* partial, cudaStream_t stream);

}  // namespace nffk::cuda

namespace nffk::cuda {

// ---------------------------------------------------------------------------------------------
// Neighbour list (csrc/cuda/neighbor_list.cu): the cell-list search of kernels/neighbor_list.py
// (whose torch code bins the atoms and sorts the pairs), one thread per receiver. Tables as
// documented there; every pointer is device memory.
// ---------------------------------------------------------------------------------------------
constexpr int32_t kNLParams = 13;  // per system: bins (3), reach (3), periodic (3), first bin,
                                   // first entry of each axis' wrap table (3)

struct NLSearch {
  const double* wrapped;     // [atoms][3] positions wrapped into their cell
  const index_t* system;     // [atoms] system of each atom
  const index_t* bin3;       // [atoms][3] bin coordinates
  const double* slot_x;      // [atoms] wrapped positions in bin order
  const double* slot_y;
  const double* slot_z;
  const index_t* slot_atom;  // [atoms] atom in each slot
  const index_t* bin_start;  // [bins + 1] first slot of each bin
  const index_t* params;     // [systems][kNLParams]
  const double* cells;       // [systems][9] binning cells (lattice vectors as rows)
  const index_t* wrap_bin;   // wrap tables: bin coordinate -> (bin, image) per system and axis
  const index_t* wrap_image;
  double cutoff_sq;
  index_t image_bias, image_width;  // image key of T = ((T0 + bias) * width + T1 + bias) * width + T2 + bias
  bool self_interaction;
};

// offsets == nullptr: counts[i] = number of neighbours of receiver i. Otherwise receiver i writes
// its neighbours (sender, image key), in visit order, at offsets[i], offsets[i] + 1, ...
cudaError_t nl_search(const NLSearch& search, index_t atoms, const index_t* offsets, index_t* counts,
                      index_t* senders, index_t* images, cudaStream_t stream);

}  // namespace nffk::cuda
