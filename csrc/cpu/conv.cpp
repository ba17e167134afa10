// CPU drivers of the fused neighbour-list convolution (nffk/ops/conv.py):
//   forward  out[i]  = sum over edges e = (j -> i) of TP(x[j], sh[e], w[e])
//   vjp_x    gx[j]   = sum over edges e = (j -> i) of vjp_x1(g[i], sh[e], w[e])
//   vjp_sh   gsh[e]  = vjp_x2(x[j], g[i], w[e])        (per edge)
//   vjp_w    gw[e]   = vjp_w(x[j], sh[e], g[i])         (per edge, or summed over edges when shared)
// built from the tensor product's tiles (tp_tiles.h) with gathered input rows. No per-edge output
// tensor exists. The forward's sums run over receiver segments, each owned by one task and summed
// in edge order from zero; vjp_x also runs in receiver order, into per-slab partial sender rows
// (slabs fixed by the graph) added in slab order. So there are no atomics, and the bits do not
// depend on the number of threads nor on where tiles or tasks begin (a tile's per-element
// arithmetic does not depend on its neighbours).
#include "ops.h"
#include "tp_tiles.h"

namespace nffk::cpu {
namespace {
using namespace tiles;

// The graph as raw index arrays, validated so that no index array, however wrong, makes a kernel
// read or write out of bounds.
struct Graph {
  const int64_t *senders, *receivers, *receiver_ptr, *sender_order, *sender_ptr;
  int64_t nodes, edges;
};

Graph check_graph(const char* op, const at::Tensor& senders, const at::Tensor& receivers,
                  const at::Tensor& receiver_ptr, const at::Tensor& sender_order, const at::Tensor& sender_ptr,
                  int64_t nodes) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"senders", &senders},
                                {"receivers", &receivers}, {"receiver_ptr", &receiver_ptr},
                                {"sender_order", &sender_order}, {"sender_ptr", &sender_ptr}}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous() && t->device().is_cpu(), op,
                ": ", name, " must be a contiguous 1-D CPU int64 tensor");
  }
  const int64_t edges = senders.size(0);
  TORCH_CHECK(receivers.size(0) == edges && sender_order.size(0) == edges, op,
              ": senders, receivers and sender_order must have one entry per edge");
  TORCH_CHECK(receiver_ptr.size(0) == nodes + 1 && sender_ptr.size(0) == nodes + 1, op,
              ": receiver_ptr and sender_ptr must have num_nodes + 1 = ", nodes + 1, " entries");
  Graph g{senders.data_ptr<int64_t>(), receivers.data_ptr<int64_t>(), receiver_ptr.data_ptr<int64_t>(),
          sender_order.data_ptr<int64_t>(), sender_ptr.data_ptr<int64_t>(), nodes, edges};
  for (const int64_t* ptr : {g.receiver_ptr, g.sender_ptr}) {
    TORCH_CHECK(ptr[0] == 0 && ptr[nodes] == edges, op, ": a CSR pointer must start at 0 and end at num_edges");
    for (int64_t i = 0; i < nodes; ++i) TORCH_CHECK(ptr[i] <= ptr[i + 1], op, ": a CSR pointer decreases");
  }
  for (int64_t i = 0; i < nodes; ++i) {
    for (int64_t e = g.receiver_ptr[i]; e < g.receiver_ptr[i + 1]; ++e)
      TORCH_CHECK(g.receivers[e] == i, op, ": receivers do not match receiver_ptr (edges must be sorted by receiver)");
    for (int64_t k = g.sender_ptr[i]; k < g.sender_ptr[i + 1]; ++k) {
      const int64_t e = g.sender_order[k];
      TORCH_CHECK(e >= 0 && e < edges && g.senders[e] == i, op, ": sender_order and sender_ptr do not match senders");
    }
  }
  return g;
}

// Splits the nodes 0..nodes-1 into chunks of whole CSR segments holding ~`edges_per_chunk` edges
// each, so that tasks are balanced whatever the degrees (isolated atoms, hubs).
std::vector<int64_t> chunks(const int64_t* ptr, int64_t nodes, int64_t edges_per_chunk) {
  std::vector<int64_t> bounds{0};
  for (int64_t i = 0; i < nodes; ++i)
    if (ptr[i + 1] - ptr[bounds.back()] >= edges_per_chunk || i + 1 == nodes) bounds.push_back(i + 1);
  return bounds;
}

template <typename T>
struct ChannelMajorLayout {
  std::vector<int64_t> offset;  // of each output block in a row's channel-major copy
  int64_t size = 0;
  explicit ChannelMajorLayout(const Program<T>& prog) {
    for (const Block& b : prog.out_blocks) {
      offset.push_back(size);
      size += b.d * b.ld;
    }
  }
};

// Forward sink: output block b of consecutive edges of one receiver accumulates in that
// receiver's channel-major sum, stored to its row when the next receiver begins.
template <typename T>
struct ReceiverSums {
  const Program<T>& prog;
  const ChannelMajorLayout<T>& layout;
  T* sums;                       // channel-major output blocks of the receivers being summed
  std::vector<int64_t> current;  // receiver whose sum block b holds (-1: none)
  const int64_t* receiver;       // receiver of each element of the current tile
  T* out;
  int64_t dim_out;

  T* target(size_t b, int64_t e) {
    const Block& ob = prog.out_blocks[b];
    T* sum = sums + layout.offset[b];
    if (receiver[e] != current[b]) {
      store(b);
      std::fill(sum, sum + ob.d * ob.ld, T(0));
      current[b] = receiver[e];
    }
    return sum;
  }
  void done(size_t, int64_t) {}
  void store(size_t b) {
    if (current[b] < 0) return;
    const Block& ob = prog.out_blocks[b];
    from_channel_major(sums + layout.offset[b], ob.ld, ob.mul, ob.d, out + current[b] * dim_out + ob.offset);
  }
};

// Node rows in channel-major blocks, converted once per call: each is read by ~30 edges, and the
// tiles then skip their per-edge block transposes.
template <typename T>
struct ChannelMajorNodes {
  AlignedBuffer<T> data;
  int64_t row_size;
  ChannelMajorNodes(const std::vector<Block>& blocks, int64_t row_size_, const T* rows, int64_t nodes, int64_t dim)
      : row_size(row_size_) {
    data.allocate(nodes * row_size);
    T* dst = data.data();
    at::parallel_for(0, nodes, 64, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        std::fill(dst + n * row_size, dst + (n + 1) * row_size, T(0));
        row_to_channel_major(blocks, rows + n * dim, dst + n * row_size);
      }
    });
  }
};

// Edges per task chunk: a few dozen tiles, so that scratch and segment state are amortised.
constexpr int64_t kEdgesPerChunk = 512;

template <typename T>
void conv_forward_impl(const Program<T>& prog, const Graph& graph, const T* x, const T* sh, const T* w,
                       int64_t wstride, T* out, int64_t dim1, int64_t dim2, int64_t dim_out) {
  constexpr int TE = kLanes<T>;
  const ChannelMajorLayout<T> layout(prog);
  const std::vector<int64_t> bounds = chunks(graph.receiver_ptr, graph.nodes, kEdgesPerChunk);
  ChannelMajorNodes<T> xc(prog.x1_blocks, prog.x1_scratch, x, graph.nodes, dim1);
  const Rows<const T> x_at_sender{xc.data.data(), xc.row_size, graph.senders}, sh_rows{sh, dim2, nullptr},
      w_rows{w, wstride, nullptr}, none{};
  at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t begin, int64_t end) {
    TPScratch<T> s(prog, Kernel::kForward, dim2);
    AlignedBuffer<T> sums;
    sums.allocate(layout.size);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = bounds[c], n1 = bounds[c + 1];
      // Rows no edge reaches (isolated atoms) and components no path writes stay zero.
      std::fill(out + n0 * dim_out, out + n1 * dim_out, T(0));
      ReceiverSums<T> sink{prog, layout, sums.data(), std::vector<int64_t>(prog.out_blocks.size(), -1), nullptr,
                           out, dim_out};
      const int64_t e_end = graph.receiver_ptr[n1];
      for (int64_t e0 = graph.receiver_ptr[n0]; e0 < e_end; e0 += TE) {
        // x rows at the senders are scattered (2.3 KB each for the NequIP layer, more than the
        // L3 holds for thousands of atoms): fetch the next tile's while this one computes.
        for (int64_t e = e0 + TE; e < std::min(e0 + 2 * TE, e_end); ++e)
          prefetch_bytes(x_at_sender.row(e), xc.row_size * int64_t(sizeof(T)));
        TileIO<T> io(e0, std::min<int64_t>(TE, e_end - e0), x_at_sender, sh_rows, none, w_rows, Rows<T>{}, dim1,
                     dim2, dim_out);
        io.x1_channel_major = true;
        sink.receiver = graph.receivers + e0;
        forward_tile(prog, io, s, sink);
      }
      for (size_t b = 0; b < prog.out_blocks.size(); ++b) sink.store(b);
    }
  });
}

// vjp_x in receiver order, like the forward: w and sh stream in storage order and g[i] is read
// once per receiver, while each edge's gradient is added into its sender's row of a partial sum.
// The sender-sorted alternative gathers w, sh and g rows at random and ran 2-3x slower than the
// forward on 30k edges of randomly ordered atoms. For determinism the receivers are split into a
// number of slabs that depends on the edge count only; each slab (one task) owns a partial
// [nodes, x1] buffer summed in edge order, and the slabs are added in slab order at the end: the
// same bits for any thread count.
constexpr int64_t kEdgesPerSlab = 4096;  // small enough that 2-8 threads get even shares at ~30k edges
constexpr int64_t kMaxSlabs = 8;  // partial buffers: kMaxSlabs x nodes x dim1 at most

// vjp_x as above. With gw (per-edge weights, every path weighted, x the node features), each tile
// also writes its edges' weight gradients from the same contraction with g (vjp_x1_w_tile, x
// gathered at senders): vjp_x and vjp_w of one backward in one pass; stream_w: gw by streaming stores.
template <typename T>
void conv_vjp_x_impl(const Program<T>& prog, const Graph& graph, const T* g, const T* sh, const T* w,
                     int64_t wstride, T* out, int64_t dim1, int64_t dim2, int64_t dim_out, const T* x = nullptr,
                     T* gw = nullptr, bool stream_w = false) {
  constexpr int TE = kLanes<T>;
  const int64_t size = prog.x1_scratch, nodes = graph.nodes;
  if (graph.edges == 0) {
    std::fill(out, out + nodes * dim1, T(0));
    return;
  }
  std::unique_ptr<ChannelMajorNodes<T>> xc;
  if (gw != nullptr) xc = std::make_unique<ChannelMajorNodes<T>>(prog.x1_blocks, prog.x1_scratch, x, nodes, dim1);
  const WeightStore weight_store = stream_w ? WeightStore::kStream : WeightStore::kWrite;
  const int64_t slabs = std::clamp<int64_t>(graph.edges / kEdgesPerSlab, 1, kMaxSlabs);
  const std::vector<int64_t> bounds = chunks(graph.receiver_ptr, nodes, (graph.edges + slabs - 1) / slabs);
  const int64_t parts = static_cast<int64_t>(bounds.size()) - 1;
  AlignedBuffer<T> partial;
  partial.allocate(parts * nodes * size);
  advise_huge_pages(partial.data(), static_cast<size_t>(parts * nodes * size) * sizeof(T));
  const Rows<const T> sh_rows{sh, dim2, nullptr}, w_rows{w, wstride, nullptr}, none{};
  ChannelMajorNodes<T> gc(prog.out_blocks, prog.out_row_size, g, nodes, dim_out);
  const Rows<const T> g_at_receiver{gc.data.data(), gc.row_size, graph.receivers};
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    TPScratch<T> s(prog, Kernel::kVjpX1, dim2, gw != nullptr);
    for (int64_t c = begin; c < end; ++c) {
      T* sums = partial.data() + c * nodes * size;
      std::fill(sums, sums + nodes * size, T(0));
      const int64_t e_end = graph.receiver_ptr[bounds[c + 1]];
      for (int64_t e0 = graph.receiver_ptr[bounds[c]]; e0 < e_end; e0 += TE) {
        const int64_t count = std::min<int64_t>(TE, e_end - e0);
        TileIO<T> io(e0, count, none, sh_rows, g_at_receiver, w_rows, Rows<T>{}, dim1, dim2, dim_out);
        io.g_channel_major = true;
        if (gw != nullptr) {
          TileIO<T> io_w(e0, count, Rows<const T>{xc->data.data(), xc->row_size, graph.senders}, sh_rows,
                         g_at_receiver, w_rows, Rows<T>{gw, wstride, nullptr}, dim1, dim2, dim_out);
          io_w.x1_channel_major = io_w.g_channel_major = true;
          vjp_x1_w_tile(prog, io, io_w, weight_store, s);
        } else {
          vjp_x1_tile(prog, io, s);
        }
        for (int64_t e = 0; e < io.count; ++e) {
          const T* edge = s.gx1c + e * size;
          T* acc = sums + graph.senders[e0 + e] * size;
#pragma omp simd
          for (int64_t n = 0; n < size; ++n) acc[n] += edge[n];
        }
      }
    }
    if (stream_w) stream_fence();
  });
  // gx[n] = the slabs' partial rows of n, added in slab order.
  at::parallel_for(0, nodes, 64, [&](int64_t begin, int64_t end) {
    AlignedBuffer<T> sum;
    sum.allocate(size);
    for (int64_t n = begin; n < end; ++n) {
      std::copy(partial.data() + n * size, partial.data() + (n + 1) * size, sum.data());
      for (int64_t c = 1; c < parts; ++c) {
        const T* row = partial.data() + (c * nodes + n) * size;
        T* acc = sum.data();
#pragma omp simd
        for (int64_t k = 0; k < size; ++k) acc[k] += row[k];
      }
      store_x1_row(prog, sum.data(), out + n * dim1);
    }
  });
}

enum class ConvKernel { kForward, kVjpX, kVjpSh, kVjpW, kVjpXW };

// Shapes: x/out of kForward [nodes, dim1] / [nodes, dim_out], g [nodes, dim_out], sh [edges, dim2],
// w [W] or [edges, W]; vjp outputs have their input's shape. kVjpXW: vjp_x into out, the per-edge
// vjp_w into gw.
template <typename T>
void run_conv(ConvKernel kernel, const char* op, const at::Tensor& x, const at::Tensor& sh, const at::Tensor& g,
              const at::Tensor& w, const Graph& graph, const at::Tensor& out, const at::Tensor& table,
              const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
              bool weighted_only, int64_t dim1, int64_t dim2, int64_t dim_out, int64_t weight_numel, bool shared,
              const at::Tensor& gw = at::Tensor()) {
  const auto program = cached_program<T>(op, table, coefficients, cg_index, cg_value, dim1, dim2, dim_out,
                                         weight_numel, weighted_only || kernel == ConvKernel::kVjpW);
  const Program<T>& prog = *program;
  auto data = [](const at::Tensor& t) -> const T* { return t.defined() ? t.data_ptr<T>() : nullptr; };
  const int64_t wstride = shared ? 0 : weight_numel;
  T* po = out.data_ptr<T>();
  switch (kernel) {
    case ConvKernel::kForward:
      conv_forward_impl(prog, graph, data(x), data(sh), data(w), wstride, po, dim1, dim2, dim_out);
      return;
    case ConvKernel::kVjpX:
      conv_vjp_x_impl(prog, graph, data(g), data(sh), data(w), wstride, po, dim1, dim2, dim_out);
      return;
    case ConvKernel::kVjpXW: {
      // One pass where one program serves both gradients (every path weighted), else one after the other.
      if (every_path_weighted(prog)) {
        conv_vjp_x_impl(prog, graph, data(g), data(sh), data(w), wstride, po, dim1, dim2, dim_out, data(x),
                        gw.data_ptr<T>(), streams_output<T>(Kernel::kVjpW, gw));
      } else {
        run_conv<T>(ConvKernel::kVjpX, op, x, sh, g, w, graph, out, table, coefficients, cg_index, cg_value,
                    weighted_only, dim1, dim2, dim_out, weight_numel, shared);
        run_conv<T>(ConvKernel::kVjpW, op, x, sh, g, w, graph, gw, table, coefficients, cg_index, cg_value, true,
                    dim1, dim2, dim_out, weight_numel, shared);
      }
      return;
    }
    case ConvKernel::kVjpSh:
    case ConvKernel::kVjpW: {
      // Per-edge outputs: the tensor product's driver over edges, with x gathered at senders and
      // g at receivers.
      ChannelMajorNodes<T> xc(prog.x1_blocks, prog.x1_scratch, data(x), graph.nodes, dim1);
      ChannelMajorNodes<T> gc(prog.out_blocks, prog.out_row_size, data(g), graph.nodes, dim_out);
      const ElementOperands<T> operands{Rows<const T>{xc.data.data(), xc.row_size, graph.senders},
                                        Rows<const T>{data(sh), dim2, nullptr},
                                        Rows<const T>{gc.data.data(), gc.row_size, graph.receivers},
                                        Rows<const T>{data(w), wstride, nullptr}, true, true};
      run_elements<T>(kernel == ConvKernel::kVjpSh ? Kernel::kVjpX2 : Kernel::kVjpW, prog, operands, out,
                      graph.edges, dim1, dim2, dim_out, weight_numel, shared);
      return;
    }
  }
}

void check_shape(const char* op, const char* name, const at::Tensor& t, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && (cols < 0 || t.size(1) == cols), op, ": ", name, " must be [",
              rows, ", ", cols < 0 ? "dim" : std::to_string(cols), "], got ", t.sizes());
}

int64_t weight_numel_of(const char* op, const at::Tensor& w, int64_t edges, bool& shared) {
  TORCH_CHECK(w.dim() == 1 || w.dim() == 2, op, ": w must be [W] (shared) or [edges, W], got ", w.sizes());
  shared = w.dim() == 1;
  TORCH_CHECK(shared || w.size(0) == edges, op, ": w has ", w.size(0), " rows for ", edges, " edges");
  return w.size(-1);
}

// Common entry: checks the graph and the shapes of the defined inputs (x, g: [nodes, dim];
// sh: [edges, dim2]; w: [W] or [edges, W]) against it, then runs `kernel`.
void conv_entry(ConvKernel kernel, const char* op, const at::Tensor& x, const at::Tensor& sh, const at::Tensor& g,
                const at::Tensor& w, const at::Tensor& senders, const at::Tensor& receivers,
                const at::Tensor& receiver_ptr, const at::Tensor& sender_order, const at::Tensor& sender_ptr,
                const at::Tensor& paths, const at::Tensor& coefficients, const at::Tensor& cg_index,
                const at::Tensor& cg_value, bool weighted_only, const at::Tensor& out, int64_t dim1, int64_t dim2,
                int64_t dim_out, int64_t weight_numel, bool shared, const at::Tensor& gw = at::Tensor()) {
  const int64_t nodes = receiver_ptr.dim() == 1 ? receiver_ptr.size(0) - 1 : -1;
  TORCH_CHECK(nodes >= 0, op, ": receiver_ptr must be [num_nodes + 1]");
  const Graph graph = check_graph(op, senders, receivers, receiver_ptr, sender_order, sender_ptr, nodes);
  if (x.defined()) check_shape(op, "x", x, nodes, dim1);
  if (g.defined()) check_shape(op, "g", g, nodes, dim_out);
  if (sh.defined()) check_shape(op, "sh", sh, graph.edges, dim2);
  if (w.defined()) TORCH_CHECK(shared || w.size(0) == graph.edges, op, ": w must have one row per edge");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "nffk_conv", [&] {
    run_conv<scalar_t>(kernel, op, x, sh, g, w, graph, out, paths, coefficients, cg_index, cg_value, weighted_only,
                       dim1, dim2, dim_out, weight_numel, shared, gw);
  });
}

}  // namespace

void conv_forward(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& senders,
                  const at::Tensor& receivers, const at::Tensor& receiver_ptr, const at::Tensor& sender_order,
                  const at::Tensor& sender_ptr, const at::Tensor& paths, const at::Tensor& coefficients,
                  const at::Tensor& cg_index, const at::Tensor& cg_value, bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::conv_forward";
  check_io(op, {{"x", &x}, {"sh", &sh}, {"w", &w}}, out);
  check_shape(op, "out", out, x.size(0), -1);
  TORCH_CHECK(x.dim() == 2 && sh.dim() == 2, op, ": x and sh must be 2-D");
  bool shared;
  const int64_t numel = weight_numel_of(op, w, sh.size(0), shared);
  conv_entry(ConvKernel::kForward, op, x, sh, at::Tensor(), w, senders, receivers, receiver_ptr, sender_order,
             sender_ptr, paths, coefficients, cg_index, cg_value, weighted_only, out, x.size(1), sh.size(1),
             out.size(1), numel, shared);
}

void conv_vjp_x(const at::Tensor& g, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& senders,
                const at::Tensor& receivers, const at::Tensor& receiver_ptr, const at::Tensor& sender_order,
                const at::Tensor& sender_ptr, const at::Tensor& paths, const at::Tensor& coefficients,
                const at::Tensor& cg_index, const at::Tensor& cg_value, bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::conv_vjp_x";
  check_io(op, {{"g", &g}, {"sh", &sh}, {"w", &w}}, out);
  TORCH_CHECK(g.dim() == 2 && sh.dim() == 2, op, ": g and sh must be 2-D");
  check_shape(op, "out", out, g.size(0), -1);
  bool shared;
  const int64_t numel = weight_numel_of(op, w, sh.size(0), shared);
  conv_entry(ConvKernel::kVjpX, op, at::Tensor(), sh, g, w, senders, receivers, receiver_ptr, sender_order,
             sender_ptr, paths, coefficients, cg_index, cg_value, weighted_only, out, out.size(1), sh.size(1),
             g.size(1), numel, shared);
}

void conv_vjp_x_w(const at::Tensor& g, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& x,
                  const at::Tensor& senders, const at::Tensor& receivers, const at::Tensor& receiver_ptr,
                  const at::Tensor& sender_order, const at::Tensor& sender_ptr, const at::Tensor& paths,
                  const at::Tensor& coefficients, const at::Tensor& cg_index, const at::Tensor& cg_value,
                  bool weighted_only, const at::Tensor& gx, const at::Tensor& gw) {
  const char* op = "nffk_C::conv_vjp_x_w";
  check_io(op, {{"g", &g}, {"sh", &sh}, {"w", &w}, {"x", &x}, {"gx", &gx}}, gw);
  TORCH_CHECK(g.dim() == 2 && sh.dim() == 2 && x.dim() == 2 && w.dim() == 2, op,
              ": g, sh, x and w (one row of weights per edge) must be 2-D");
  check_shape(op, "gx", gx, x.size(0), x.size(1));
  TORCH_CHECK(gw.sizes() == w.sizes(), op, ": gw must have w's shape ", w.sizes(), ", got ", gw.sizes());
  conv_entry(ConvKernel::kVjpXW, op, x, sh, g, w, senders, receivers, receiver_ptr, sender_order, sender_ptr, paths,
             coefficients, cg_index, cg_value, weighted_only, gx, x.size(1), sh.size(1), g.size(1), w.size(1), false,
             gw);
}

void conv_vjp_sh(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, const at::Tensor& senders,
                 const at::Tensor& receivers, const at::Tensor& receiver_ptr, const at::Tensor& sender_order,
                 const at::Tensor& sender_ptr, const at::Tensor& paths, const at::Tensor& coefficients,
                 const at::Tensor& cg_index, const at::Tensor& cg_value, bool weighted_only, const at::Tensor& out) {
  const char* op = "nffk_C::conv_vjp_sh";
  check_io(op, {{"x", &x}, {"g", &g}, {"w", &w}}, out);
  TORCH_CHECK(x.dim() == 2 && g.dim() == 2, op, ": x and g must be 2-D");
  check_shape(op, "out", out, senders.size(0), -1);
  bool shared;
  const int64_t numel = weight_numel_of(op, w, senders.size(0), shared);
  conv_entry(ConvKernel::kVjpSh, op, x, at::Tensor(), g, w, senders, receivers, receiver_ptr, sender_order,
             sender_ptr, paths, coefficients, cg_index, cg_value, weighted_only, out, x.size(1), out.size(1),
             g.size(1), numel, shared);
}

void conv_vjp_w(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& g, const at::Tensor& senders,
                const at::Tensor& receivers, const at::Tensor& receiver_ptr, const at::Tensor& sender_order,
                const at::Tensor& sender_ptr, const at::Tensor& paths, const at::Tensor& coefficients,
                const at::Tensor& cg_index, const at::Tensor& cg_value, const at::Tensor& out) {
  const char* op = "nffk_C::conv_vjp_w";
  check_io(op, {{"x", &x}, {"sh", &sh}, {"g", &g}}, out);
  TORCH_CHECK(x.dim() == 2 && sh.dim() == 2 && g.dim() == 2, op, ": x, sh and g must be 2-D");
  bool shared;
  const int64_t numel = weight_numel_of(op, out, sh.size(0), shared);
  conv_entry(ConvKernel::kVjpW, op, x, sh, g, at::Tensor(), senders, receivers, receiver_ptr, sender_order,
             sender_ptr, paths, coefficients, cg_index, cg_value, true, out, x.size(1), sh.size(1), g.size(1), numel,
             shared);
}

}  // namespace nffk::cpu
