// The work of one CUDA thread of the tensor-product and conv kernels, as __host__ __device__
// functions: csrc/cuda/tensor_product.cu launches them, and tests/kernels/cuda_emulation.cu runs
// the very same functions on the CPU (no GPU needed) against the reference.
//
// One thread per (output row, slot): a slot is one channel c of one block (segment) of the
// produced row; it sums the paths of the segment's group and, for the conv, the edges of its
// row's CSR run in order. Element-level arithmetic is that of nffk/tensor_product.h (the CPU
// driver's), called with one channel (CH = 1) and one batch element (TE = 1): a channel's
// components are contiguous in e3nn's mul_ir layout, so a [d] row is a channel-major block of
// one channel (ld = 1).
#pragma once
#include "launchers.h"
#include "nffk/tensor_product.h"

namespace nffk::cuda::threads {

enum Column : int32_t {
  kMode, kD1, kD2, kD3, kMul1, kMul2, kMulOut, kOffset1, kOffset2, kOffsetOut, kWeightOffset, kHasWeight,
  kPairBegin, kPairEnd
};

template <typename T>
NFFK_HD tp::Path<T> load_path(const TPProgram<T>& prog, int32_t n) {
  const int32_t* r = prog.paths + n * kTPPathColumns;
  tp::Path<T> p;
  p.mode = r[kMode];
  p.d1 = r[kD1];
  p.d2 = r[kD2];
  p.d3 = r[kD3];
  p.mul1 = r[kMul1];
  p.mul2 = r[kMul2];
  p.mul_out = r[kMulOut];
  p.offset1 = r[kOffset1];
  p.offset2 = r[kOffset2];
  p.offset_out = r[kOffsetOut];
  p.weight_offset = r[kWeightOffset];
  p.has_weight = r[kHasWeight];
  p.coefficient = prog.coefficients[n];
  p.pairs = reinterpret_cast<const tp::CGPair*>(prog.pairs) + r[kPairBegin];  // int32 [4] rows
  p.by_i = nullptr;  // not used by the functions called here
  p.num_pairs = r[kPairEnd] - r[kPairBegin];
  p.cg_j = prog.cg_j;
  p.cg_value = prog.cg_value;
  return p;
}

// acc[k] += out[c][k] of one edge, for the paths of group [g0, g1) (output channel c).
template <typename T, int D>
NFFK_HD void add_forward(const TPProgram<T>& prog, int32_t g0, int32_t g1, int32_t c, const T* x1, const T* x2,
                         const T* w, bool weighted_only, T* acc) {
  T A[D * D], y[D];
  for (int32_t g = g0; g < g1; ++g) {
    const tp::Path<T> p = load_path(prog, prog.out.group[g]);
    if (weighted_only && !p.has_weight) continue;
    const T* pw = w + p.weight_offset;
    for (int32_t v = 0; v < p.mul2; ++v) {
      tp::project_x2<T, 1>(p, x2 + p.offset2 + v * p.d2, A);  // A[i][k] = coefficient C[i, j, k] x2[v, j]
      if (p.mode == tp::kUVU) {  // y[i] = w[c, v] x1[c][i]
        const T wv = p.has_weight ? pw[c * p.mul2 + v] : T(1);
        tp::weight_rows<T>(p.d1, &wv, x1 + p.offset1 + c * p.d1, y, 1, 1);
      } else {  // y[i] = sum_u x1[u][i] W[u, v, c]
        for (int32_t i = 0; i < p.d1; ++i) y[i] = T(0);
        tp::gemm<T, 1>(p.d1, p.mul1, x1 + p.offset1, 1, p.d1, pw + v * p.mul_out + c, index_t(p.mul2) * p.mul_out,
                       y, 1, 1);
      }
      tp::gemm<T, 1>(p.d3, p.d1, A, 1, p.d3, y, 1, acc, 1, 1);  // acc[k] += sum_i A[i][k] y[i]
    }
  }
}

// r[k] = the output gradient g seen by the (u, v) channel pair: w[u, v] g[u][k] for uvu,
// sum_w W[u, v, w] g[w][k] for uvw.
template <typename T>
NFFK_HD void weighted_g(const tp::Path<T>& p, const T* pw, const T* g, int32_t u, int32_t v, T* r) {
  const T* gb = g + p.offset_out;
  if (p.mode == tp::kUVU) {
    const T wv = p.has_weight ? pw[u * p.mul2 + v] : T(1);
    tp::weight_rows<T>(p.d3, &wv, gb + u * p.d3, r, 1, 1);
  } else {
    for (int32_t k = 0; k < p.d3; ++k) r[k] = T(0);
    tp::gemm<T, 1>(p.d3, p.mul_out, gb, 1, p.d3, pw + (index_t(u) * p.mul2 + v) * p.mul_out, 1, r, 1, 1);
  }
}

// acc[i] += gx1[c][i] of one edge (x1 channel c).
template <typename T, int D>
NFFK_HD void add_vjp_x1(const TPProgram<T>& prog, int32_t g0, int32_t g1, int32_t c, const T* g, const T* x2,
                        const T* w, bool weighted_only, T* acc) {
  T A[D * D], r[D];
  for (int32_t n = g0; n < g1; ++n) {
    const tp::Path<T> p = load_path(prog, prog.x1.group[n]);
    if (weighted_only && !p.has_weight) continue;
    for (int32_t v = 0; v < p.mul2; ++v) {
      tp::project_x2<T, 1>(p, x2 + p.offset2 + v * p.d2, A);
      weighted_g(p, w + p.weight_offset, g, c, v, r);
      tp::gemm<T, 1>(p.d1, p.d3, A, p.d3, 1, r, 1, acc, 1, 1);  // acc[i] += sum_k A[i][k] r[k]
    }
  }
}

// acc[j] += gx2[c][j] of one edge (x2 channel c).
template <typename T, int D>
NFFK_HD void add_vjp_x2(const TPProgram<T>& prog, int32_t g0, int32_t g1, int32_t c, const T* x1, const T* g,
                        const T* w, bool weighted_only, T* acc) {
  T S[D * D], r[D];
  for (int32_t n = g0; n < g1; ++n) {
    const tp::Path<T> p = load_path(prog, prog.x2.group[n]);
    if (weighted_only && !p.has_weight) continue;
    for (int32_t q = 0; q < p.d1 * p.d3; ++q) S[q] = T(0);
    for (int32_t u = 0; u < p.mul1; ++u) {  // S[i][k] = sum_u x1[u][i] r_u[k], over the CG pairs' (i, k)
      weighted_g(p, w + p.weight_offset, g, u, c, r);
      const T* xu = x1 + p.offset1 + u * p.d1;
      for (int32_t q = 0; q < p.num_pairs; ++q)
        S[p.pairs[q].i * p.d3 + p.pairs[q].k] += xu[p.pairs[q].i] * r[p.pairs[q].k];
    }
    tp::unproject_x2<T, 1>(p, S, acc);  // acc[j] += coefficient sum_{i, k} C[i, j, k] S[i][k]
  }
}

NFFK_HD index_t row_of(const index_t* index, index_t e) { return index == nullptr ? e : index[e]; }

template <typename T>
NFFK_HD const TPRole& role_of(TPKernel kernel, const TPProgram<T>& prog) {
  return kernel == TPKernel::kForward ? prog.out : kernel == TPKernel::kVjpX1 ? prog.x1 : prog.x2;
}

// Thread t < rows * num_slots of a forward / vjp_x1 / vjp_x2 launch (see tp_contract).
template <typename T, int D>
NFFK_HD void contract_thread(TPKernel kernel, const TPProgram<T>& prog, const T* a, const T* b, const T* w,
                             bool shared_weights, bool weighted_only, const EdgeRows& edges, index_t t, T* out) {
  const TPRole& role = role_of(kernel, prog);
  // Rows of a and b read by an edge, and their widths.
  const index_t* a_index = kernel == TPKernel::kVjpX1 ? edges.out : edges.x1;
  const index_t* b_index = kernel == TPKernel::kVjpX2 ? edges.out : edges.x2;
  const index_t a_width = kernel == TPKernel::kVjpX1 ? prog.dim_out : prog.dim1;
  const index_t b_width = kernel == TPKernel::kVjpX2 ? prog.dim_out : prog.dim2;
  const index_t row = t / role.num_slots, slot = t - row * role.num_slots;
  const int32_t* seg = role.segments + role.slots[2 * slot] * kTPSegmentColumns;
  const int32_t c = role.slots[2 * slot + 1], d = seg[2], g0 = seg[3], g1 = seg[4];
  T acc[D];
  for (int32_t m = 0; m < d; ++m) acc[m] = T(0);
  const index_t q0 = edges.ptr == nullptr ? row : edges.ptr[row];
  const index_t q1 = edges.ptr == nullptr ? row + 1 : edges.ptr[row + 1];
  for (index_t q = q0; q < q1 && g0 < g1; ++q) {  // this row's edges, in order
    const index_t e = edges.order == nullptr ? q : edges.order[q];
    const T* ar = a + row_of(a_index, e) * a_width;
    const T* br = b + row_of(b_index, e) * b_width;
    const T* wr = shared_weights ? w : w + e * prog.weight_numel;
    if (kernel == TPKernel::kForward) {
      add_forward<T, D>(prog, g0, g1, c, ar, br, wr, weighted_only, acc);
    } else if (kernel == TPKernel::kVjpX1) {
      add_vjp_x1<T, D>(prog, g0, g1, c, ar, br, wr, weighted_only, acc);
    } else {
      add_vjp_x2<T, D>(prog, g0, g1, c, ar, br, wr, weighted_only, acc);
    }
  }
  T* o = out + row * role.width + seg[0] + index_t(c) * d;
  for (int32_t m = 0; m < d; ++m) o[m] = acc[m];
}

// Thread t < chunks * weight_numel of a weight-gradient launch (see tp_weight_grad).
template <typename T, int D>
NFFK_HD void weight_grad_thread(const TPProgram<T>& prog, const T* x1, const T* x2, const T* g,
                                const EdgeRows& edges, index_t num_edges, index_t chunk, index_t t, T* partial) {
  T A[D * D], z[D];
  const index_t part = t / prog.weight_numel, j = t - part * prog.weight_numel;
  const int32_t* slot = prog.weight_slots + 4 * j;
  T sum = T(0);
  if (slot[0] >= 0) {
    const tp::Path<T> p = load_path(prog, slot[0]);
    const int32_t u = slot[1], v = slot[2], o = p.mode == tp::kUVU ? slot[1] : slot[3];
    const index_t e1 = part * chunk + chunk < num_edges ? part * chunk + chunk : num_edges;
    for (index_t e = part * chunk; e < e1; ++e) {  // the chunk's edges, in order
      const T* x1r = x1 + row_of(edges.x1, e) * prog.dim1;
      const T* x2r = x2 + row_of(edges.x2, e) * prog.dim2;
      const T* gr = g + row_of(edges.out, e) * prog.dim_out + p.offset_out + index_t(o) * p.d3;
      tp::project_x2<T, 1>(p, x2r + p.offset2 + v * p.d2, A);
      for (int32_t k = 0; k < p.d3; ++k) z[k] = T(0);
      tp::gemm<T, 1>(p.d3, p.d1, A, 1, p.d3, x1r + p.offset1 + u * p.d1, 1, z, 1, 1);  // z[k] = sum_i A[i][k] x1[u][i]
      for (int32_t k = 0; k < p.d3; ++k) sum += gr[k] * z[k];
    }
  }
  partial[t] = sum;
}

}  // namespace nffk::cuda::threads
