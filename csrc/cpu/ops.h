// Declarations of the CPU drivers, registered in csrc/bindings.cpp.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace nffk::cpu {

at::Tensor segment_sum(const at::Tensor& src, const at::Tensor& ptr);

// (senders, receivers, shifts, ptr, distances, vectors); distances/vectors are empty unless asked.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_list(
    const at::Tensor& positions, const at::Tensor& system_ptr, const at::Tensor& cells, const at::Tensor& pbc,
    double cutoff, bool self_interaction, bool distances, bool vectors);

// Tensor products (csrc/cpu/tensor_product.cpp): write `out`, every element of it.
void tp_forward(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& paths,
                const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
                bool weighted_only, const at::Tensor& out);
void tp_vjp_x1(const at::Tensor& g, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& paths,
               const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
               bool weighted_only, const at::Tensor& out);
void tp_vjp_x2(const at::Tensor& x1, const at::Tensor& g, const at::Tensor& w, const at::Tensor& paths,
               const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
               bool weighted_only, const at::Tensor& out);
void tp_vjp_w(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& g, const at::Tensor& paths,
              const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
              const at::Tensor& out);
// vjp_x1, vjp_x2 and vjp_w of one forward in one pass over the batch (w and gw: [W] shared or
// [batch, W]); an empty output is not computed.
void tp_vjp(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& w, const at::Tensor& g,
            const at::Tensor& paths, const at::Tensor& coefficients, const at::Tensor& cg_index,
            const at::Tensor& cg_value, bool weighted_only, const at::Tensor& gx1, const at::Tensor& gx2,
            const at::Tensor& gw);

// Fused neighbour-list convolution (csrc/cpu/conv.cpp): the graph is ConvGraph's five tensors
// (nffk/ops/conv.py), validated before any kernel runs; write `out`, every element of it.
#define NFFK_CONV_GRAPH_ARGS                                                                          \
  const at::Tensor &senders, const at::Tensor &receivers, const at::Tensor &receiver_ptr,            \
      const at::Tensor &sender_order, const at::Tensor &sender_ptr, const at::Tensor &paths,         \
      const at::Tensor &coefficients, const at::Tensor &cg_index, const at::Tensor &cg_value
void conv_forward(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, NFFK_CONV_GRAPH_ARGS,
                  bool weighted_only, const at::Tensor& out);
void conv_vjp_x(const at::Tensor& g, const at::Tensor& sh, const at::Tensor& w, NFFK_CONV_GRAPH_ARGS,
                bool weighted_only, const at::Tensor& out);
// vjp_x into gx and the per-edge vjp_w into gw, in one pass over the edges (one contraction with g
// for both where every path is weighted).
void conv_vjp_x_w(const at::Tensor& g, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& x,
                  NFFK_CONV_GRAPH_ARGS, bool weighted_only, const at::Tensor& gx, const at::Tensor& gw);
void conv_vjp_sh(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, NFFK_CONV_GRAPH_ARGS,
                 bool weighted_only, const at::Tensor& out);
void conv_vjp_w(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& g, NFFK_CONV_GRAPH_ARGS,
                const at::Tensor& out);
#undef NFFK_CONV_GRAPH_ARGS

// Equivariant Linear (csrc/cpu/linear.cpp): write `out`, every element of it.
void linear_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& paths, const at::Tensor& coefficients,
                    const at::Tensor& out);
void linear_vjp_x(const at::Tensor& g, const at::Tensor& w, const at::Tensor& paths, const at::Tensor& coefficients,
                  const at::Tensor& out);
void linear_vjp_w(const at::Tensor& x, const at::Tensor& g, const at::Tensor& paths, const at::Tensor& coefficients,
                  const at::Tensor& out);

// Spherical harmonics (csrc/cpu/spherical_harmonics.cpp): a, b are the recurrence tables and
// src, coef the gradient table of nffk.ops.spherical_harmonics; every element of the outputs is written.
void sh_forward(const at::Tensor& x, at::IntArrayRef ls, bool normalize, int64_t normalization, const at::Tensor& a,
                const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef, const at::Tensor& out);
void sh_vjp(const at::Tensor& x, const at::Tensor& grad, at::IntArrayRef ls, bool normalize, int64_t normalization,
            const at::Tensor& a, const at::Tensor& b, const at::Tensor& src, const at::Tensor& coef,
            const at::Tensor& out);
void sh_vjp_vjp(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& h, at::IntArrayRef ls, bool normalize,
                int64_t normalization, const at::Tensor& a, const at::Tensor& b, const at::Tensor& src,
                const at::Tensor& coef, const at::Tensor& grad_x, const at::Tensor& grad_grad);

}  // namespace nffk::cpu
