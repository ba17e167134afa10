// CUDA drivers of the fused conv: the tensor-product kernels of csrc/cuda/tensor_product.cu run
// over the graph's CSR views, so that no per-edge tensor is written and nothing is accumulated
// with atomics (bit-for-bit reproducible):
//   forward  one thread per (receiver, output channel) sums its receiver-CSR run, edges in order
//   vjp_x    one thread per (sender, x channel) sums its run of the sender-sorted view
//   vjp_sh   one thread per (edge, sh channel): no reduction
//   vjp_w    one thread per (chunk of edges, weight); chunks are summed afterwards in a fixed order
#include "launchers.h"

namespace nffk::cuda {

template <typename T>
cudaError_t conv_forward(const TPProgram<T>& program, const ConvGraph& graph, const T* x, const T* sh, const T* w,
                         bool shared_weights, bool weighted_only, T* out, cudaStream_t stream) {
  EdgeRows edges;
  edges.ptr = graph.receiver_ptr;  // edges are sorted by receiver: no permutation
  edges.x1 = graph.senders;
  return tp_contract(TPKernel::kForward, program, x, sh, w, shared_weights, weighted_only, edges, graph.nodes, out,
                     stream);
}

template <typename T>
cudaError_t conv_vjp_x(const TPProgram<T>& program, const ConvGraph& graph, const T* g, const T* sh, const T* w,
                       bool shared_weights, bool weighted_only, T* out, cudaStream_t stream) {
  EdgeRows edges;
  edges.ptr = graph.sender_ptr;
  edges.order = graph.sender_order;
  edges.out = graph.receivers;
  return tp_contract(TPKernel::kVjpX1, program, g, sh, w, shared_weights, weighted_only, edges, graph.nodes, out,
                     stream);
}

template <typename T>
cudaError_t conv_vjp_sh(const TPProgram<T>& program, const ConvGraph& graph, const T* x, const T* g, const T* w,
                        bool shared_weights, bool weighted_only, T* out, cudaStream_t stream) {
  EdgeRows edges;
  edges.x1 = graph.senders;
  edges.out = graph.receivers;
  return tp_contract(TPKernel::kVjpX2, program, x, g, w, shared_weights, weighted_only, edges, graph.edges, out,
                     stream);
}

template <typename T>
cudaError_t conv_vjp_w(const TPProgram<T>& program, const ConvGraph& graph, const T* x, const T* sh, const T* g,
                       index_t chunk, T* partial, cudaStream_t stream) {
  EdgeRows edges;
  edges.x1 = graph.senders;
  edges.out = graph.receivers;
  return tp_weight_grad(program, x, sh, g, edges, graph.edges, chunk, partial, stream);
}

#define NFFK_INSTANTIATE(T)                                                                                       \
  template cudaError_t conv_forward<T>(const TPProgram<T>&, const ConvGraph&, const T*, const T*, const T*, bool,   \
                                       bool, T*, cudaStream_t);                                                   \
  template cudaError_t conv_vjp_x<T>(const TPProgram<T>&, const ConvGraph&, const T*, const T*, const T*, bool,     \
                                     bool, T*, cudaStream_t);                                                     \
  template cudaError_t conv_vjp_sh<T>(const TPProgram<T>&, const ConvGraph&, const T*, const T*, const T*, bool,    \
                                      bool, T*, cudaStream_t);                                                    \
  template cudaError_t conv_vjp_w<T>(const TPProgram<T>&, const ConvGraph&, const T*, const T*, const T*, index_t, \
                                     T*, cudaStream_t);
NFFK_INSTANTIATE(float)
NFFK_INSTANTIATE(double)
#undef NFFK_INSTANTIATE

}  // namespace nffk::cuda
