// The tile machinery of the CPU tensor-product kernels, shared by the tensor product
// (csrc/cpu/tensor_product.cpp) and the fused convolution (csrc/cpu/conv.cpp): the per-call
// program built from the plan's tables, per-task scratch, and one tile (up to kLanes<T> elements)
// of each of the four kernels. A tile reads its inputs through one row pointer per element, so a
// caller may gather rows (node features at an edge's sender, gradients at its receiver).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "scratch.h"
#include "streaming.h"
#include "tp_direct.h"
#include "transpose.h"
#include "nffk/tensor_product.h"

namespace nffk::cpu::tiles {


// Columns of the path table: PATH_FIELDS in nffk/ops/tensor_product.py.
enum Field : int {
  kMode, kL1, kL2, kL3, kMul1, kMul2, kMulOut, kOffset1, kOffset2, kOffsetOut, kWeightOffset, kHasWeight,
  kCgBegin, kCgEnd, kNumFields
};

// A block of a flat row and where its channel-major copy lives in scratch.
struct Block {
  int64_t offset, mul, d, ld, slot;
};

template <typename T>
struct Program {
  std::vector<tp::Path<T>> paths;  // grouped by output block
  std::vector<int32_t> path_x1;    // x1 block of each path
  std::vector<int32_t> group_begin;  // paths of out_blocks[b] are [group_begin[b], group_begin[b + 1])
  std::vector<Block> x1_blocks, out_blocks;
  std::vector<tp::CGPair> pairs;
  std::vector<int32_t> by_i, cg_j;
  std::vector<T> cg_value;
  std::vector<std::pair<int64_t, int64_t>> out_gaps, x1_gaps, weight_gaps;  // ranges no path writes
  int64_t x1_scratch = 0, out_scratch = 0, rows_size = 0, tile_a_size = 0, z_size = 0, max_ld = 0;
  int64_t out_row_size = 0;  // a whole output row in channel-major blocks (out_blocks[b].slot)
  std::vector<uint8_t> direct;  // per output block: its one path runs the kernels of tp_direct.h
  // Every weighted path in a direct block: run_direct asks for each element's next block of
  // weights while the current block computes, and the forward's tile sweep leaves the weights out.
  bool weights_by_block = false;
  bool all_direct = false;  // every output block direct (run_direct steps run_elements' pacing)
  // vjp_x2_across: the x1 blocks it reads (x1_to_lanes), and its scratch (x1's rows of the tile in
  // lanes, then one channel group of a block's g)
  std::vector<uint8_t> x1_in_lanes;
  int64_t across_scratch = 0;
  // Each path's CG non-zeros by x2 component (unproject_path): x2_terms[x2_term_begin[n] ..
  // x2_term_begin[n + 1]) for path n, sorted by j.
  struct X2Term {
    int32_t j, entry;  // x2 component; (i, k) as i * d3 + k
    T value;
  };
  std::vector<X2Term> x2_terms;
  std::vector<size_t> x2_term_begin;
  // Every path uvw: the kernels run a tile element by element, each element's paths in the order
  // of their weights (forward_by_element, vjp_by_element, vjp_x2_by_element), so that the weights
  // and their gradient stream front to back.
  bool by_element = false;
  std::vector<int32_t> weight_order, path_block;  // paths by weight offset; output block of each path
  std::vector<int64_t> a_offset;                   // each path's projections in a tile of all paths
};

// Whether vjp_x2 takes output block b for the tile's elements at once (direct::vjp_x2_across): a
// direct block of one or two channel groups. Measured (E = 1,000 / 200, vjp_x2 alone): the lmax-2
// model's 16-channel convolution 1.00 -> 0.61 ms a call, high-order (32 channels) 10.6 -> 7.3 ms;
// nequip (64 channels) 4.5-4.9 -> 4.8-5.2, where vjp_x2's reductions are shared by four groups.
template <typename T>
bool runs_across(const Program<T>& prog, size_t b) {
  return prog.direct[b] && prog.paths[prog.group_begin[b]].mul1 <= 2 * kLanes<T>;
}

// Reads and validates the plan's kernel tables (so that no table, however wrong, makes a kernel
// read or write out of bounds) and builds the per-call program.
template <typename T>
Program<T> build_program(const char* op, const at::Tensor& table, const at::Tensor& coefficients,
                         const at::Tensor& cg_index, const at::Tensor& cg_values, int64_t dim1, int64_t dim2,
                         int64_t dim_out, int64_t weight_numel, bool weighted_only) {
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 2 && table.size(1) == kNumFields &&
                  table.is_contiguous() && table.device().is_cpu(),
              op, ": paths must be a contiguous CPU int64 table [paths, ", int(kNumFields), "]");
  const int64_t num_paths = table.size(0);
  TORCH_CHECK(coefficients.dim() == 1 && coefficients.size(0) == num_paths && coefficients.is_contiguous() &&
                  coefficients.scalar_type() == c10::CppTypeToScalarType<T>::value,
              op, ": coefficients must be [", num_paths, "] of the inputs' dtype");
  TORCH_CHECK(cg_index.scalar_type() == at::kLong && cg_index.dim() == 2 && cg_index.size(1) == 3 &&
                  cg_index.is_contiguous(), op, ": cg_index must be a contiguous int64 [nnz, 3] tensor");
  const int64_t nnz = cg_index.size(0);
  TORCH_CHECK(cg_values.dim() == 1 && cg_values.size(0) == nnz && cg_values.is_contiguous() &&
                  cg_values.scalar_type() == c10::CppTypeToScalarType<T>::value,
              op, ": cg_value must be [", nnz, "] of the inputs' dtype");
  const int64_t* rows = table.data_ptr<int64_t>();
  const int64_t* index = cg_index.data_ptr<int64_t>();
  const T* values = cg_values.data_ptr<T>();
  const T* coefs = coefficients.data_ptr<T>();

  Program<T> prog;
  constexpr int64_t lanes = kLanes<T>;
  struct Raw {
    const int64_t* row;
    int64_t ordinal;
  };
  std::vector<Raw> kept;
  std::vector<std::pair<int64_t, int64_t>> weight_cover;
  for (int64_t p = 0; p < num_paths; ++p) {
    const int64_t* r = rows + p * kNumFields;
    const int64_t mode = r[kMode];
    TORCH_CHECK(mode == tp::kUVW || mode == tp::kUVU, op, ": path ", p, " has connection mode ", mode,
                ", which the cpu backend does not implement (only uvw and uvu)");
    for (int f = kL1; f <= kCgEnd; ++f) TORCH_CHECK(r[f] >= 0, op, ": path ", p, " has a negative table entry");
    const int64_t d1 = 2 * r[kL1] + 1, d2 = 2 * r[kL2] + 1, d3 = 2 * r[kL3] + 1;
    TORCH_CHECK(r[kOffset1] + r[kMul1] * d1 <= dim1 && r[kOffset2] + r[kMul2] * d2 <= dim2 &&
                    r[kOffsetOut] + r[kMulOut] * d3 <= dim_out,
                op, ": path ", p, " reaches past the rows of x1, x2 or out");
    TORCH_CHECK(r[kCgBegin] <= r[kCgEnd] && r[kCgEnd] <= nnz, op, ": path ", p, " has CG rows out of range");
    TORCH_CHECK(mode != tp::kUVU || r[kMulOut] == r[kMul1], op, ": uvu path ", p, " needs mul_out == mul1");
    TORCH_CHECK(mode != tp::kUVW || r[kHasWeight], op, ": uvw path ", p, " needs weights");
    const int64_t numel = r[kMul1] * r[kMul2] * (mode == tp::kUVW ? r[kMulOut] : 1);
    if (r[kHasWeight]) {
      TORCH_CHECK(r[kWeightOffset] + numel <= weight_numel, op, ": path ", p, " reaches past the weights");
    }
    for (int64_t e = r[kCgBegin]; e < r[kCgEnd]; ++e) {
      const int64_t* m = index + 3 * e;
      TORCH_CHECK(m[0] >= 0 && m[0] < d1 && m[1] >= 0 && m[1] < d2 && m[2] >= 0 && m[2] < d3, op,
                  ": CG non-zero ", e, " of path ", p, " is out of range");
    }
    if (weighted_only && !r[kHasWeight]) continue;
    if (r[kMul1] == 0 || r[kMul2] == 0 || r[kMulOut] == 0 || r[kCgBegin] == r[kCgEnd]) continue;
    kept.push_back({r, p});
    if (r[kHasWeight]) weight_cover.emplace_back(r[kWeightOffset], r[kWeightOffset] + numel);
  }
  // Group the paths by output block, keeping the plan's order inside a group.
  std::stable_sort(kept.begin(), kept.end(), [](const Raw& a, const Raw& b) {
    return a.row[kOffsetOut] < b.row[kOffsetOut];
  });

  // CG pairs per path, its non-zeros sorted by (m3, m1, m2).
  std::vector<int64_t> pair_begin, by_i_begin;
  for (const Raw& raw : kept) {
    const int64_t* r = raw.row;
    std::vector<int64_t> order(r[kCgEnd] - r[kCgBegin]);
    std::iota(order.begin(), order.end(), r[kCgBegin]);
    auto by_m3_m1_m2 = [&](int64_t a, int64_t b) {
      const int64_t *ma = index + 3 * a, *mb = index + 3 * b;
      return std::make_tuple(ma[2], ma[0], ma[1]) < std::make_tuple(mb[2], mb[0], mb[1]);
    };
    if (!std::is_sorted(order.begin(), order.end(), by_m3_m1_m2)) std::sort(order.begin(), order.end(), by_m3_m1_m2);
    pair_begin.push_back(static_cast<int64_t>(prog.pairs.size()));
    const int64_t first = static_cast<int64_t>(prog.pairs.size());
    for (int64_t e : order) {
      const int64_t* m = index + 3 * e;
      const int32_t slot = static_cast<int32_t>(prog.cg_j.size());
      if (static_cast<int64_t>(prog.pairs.size()) == first || prog.pairs.back().i != m[0] || prog.pairs.back().k != m[2])
        prog.pairs.push_back({static_cast<int32_t>(m[0]), static_cast<int32_t>(m[2]), slot, slot});
      prog.cg_j.push_back(static_cast<int32_t>(m[1]));
      prog.cg_value.push_back(values[e]);
      prog.pairs.back().end = slot + 1;
    }
    const int64_t count = static_cast<int64_t>(prog.pairs.size()) - first;
    std::vector<int32_t> local(count);
    std::iota(local.begin(), local.end(), 0);
    std::stable_sort(local.begin(), local.end(), [&](int32_t a, int32_t b) {
      const tp::CGPair &pa = prog.pairs[first + a], &pb = prog.pairs[first + b];
      return std::make_pair(pa.i, pa.k) < std::make_pair(pb.i, pb.k);
    });
    by_i_begin.push_back(static_cast<int64_t>(prog.by_i.size()));
    prog.by_i.insert(prog.by_i.end(), local.begin(), local.end());
  }

  // Blocks (one scratch slot per distinct x1 block; output blocks one at a time).
  std::vector<std::pair<int64_t, int64_t>> x1_cover, out_cover;
  for (size_t n = 0; n < kept.size(); ++n) {
    const int64_t* r = kept[n].row;
    const int64_t d1 = 2 * r[kL1] + 1, d3 = 2 * r[kL3] + 1;
    auto find_or_add = [&](std::vector<Block>& blocks, int64_t offset, int64_t mul, int64_t d, int64_t& scratch,
                           const char* what) -> int32_t {
      for (size_t b = 0; b < blocks.size(); ++b) {
        if (blocks[b].offset == offset) {
          TORCH_CHECK(blocks[b].mul == mul && blocks[b].d == d, op, ": paths disagree on the ", what,
                      " block at offset ", offset);
          return static_cast<int32_t>(b);
        }
      }
      const int64_t ld = round_up(mul, lanes);
      blocks.push_back({offset, mul, d, ld, scratch});
      scratch += d * ld;
      return static_cast<int32_t>(blocks.size() - 1);
    };
    prog.path_x1.push_back(find_or_add(prog.x1_blocks, r[kOffset1], r[kMul1], d1, prog.x1_scratch, "x1"));
    const size_t groups = prog.out_blocks.size();
    find_or_add(prog.out_blocks, r[kOffsetOut], r[kMulOut], d3, prog.out_row_size, "output");
    if (prog.out_blocks.size() != groups) prog.group_begin.push_back(static_cast<int32_t>(n));
  }
  prog.group_begin.push_back(static_cast<int32_t>(kept.size()));
  for (const Block& b : prog.x1_blocks) x1_cover.emplace_back(b.offset, b.offset + b.mul * b.d);
  for (const Block& b : prog.out_blocks) {
    out_cover.emplace_back(b.offset, b.offset + b.mul * b.d);
    prog.out_scratch = std::max(prog.out_scratch, b.d * b.ld);
    prog.max_ld = std::max(prog.max_ld, b.ld);
  }
  for (const Block& b : prog.x1_blocks) prog.max_ld = std::max(prog.max_ld, b.ld);
  // Distinct blocks must not overlap (they are irreps of one row).
  for (auto* cover : {&x1_cover, &out_cover}) {
    auto sorted = *cover;
    std::sort(sorted.begin(), sorted.end());
    for (size_t b = 1; b < sorted.size(); ++b)
      TORCH_CHECK(sorted[b].first >= sorted[b - 1].second, op, ": blocks of the path table overlap");
  }
  prog.out_gaps = gaps(out_cover, dim_out);
  prog.x1_gaps = gaps(x1_cover, dim1);
  prog.weight_gaps = gaps(weight_cover, weight_numel);

  for (size_t n = 0; n < kept.size(); ++n) {
    const int64_t* r = kept[n].row;
    tp::Path<T> path;
    path.mode = static_cast<int32_t>(r[kMode]);
    path.d1 = static_cast<int32_t>(2 * r[kL1] + 1);
    path.d2 = static_cast<int32_t>(2 * r[kL2] + 1);
    path.d3 = static_cast<int32_t>(2 * r[kL3] + 1);
    path.mul1 = static_cast<int32_t>(r[kMul1]);
    path.mul2 = static_cast<int32_t>(r[kMul2]);
    path.mul_out = static_cast<int32_t>(r[kMulOut]);
    path.offset1 = r[kOffset1];
    path.offset2 = r[kOffset2];
    path.offset_out = r[kOffsetOut];
    path.weight_offset = r[kWeightOffset];
    path.has_weight = static_cast<int32_t>(r[kHasWeight] != 0);
    path.coefficient = coefs[kept[n].ordinal];
    const int64_t end = n + 1 < kept.size() ? pair_begin[n + 1] : static_cast<int64_t>(prog.pairs.size());
    path.num_pairs = static_cast<int32_t>(end - pair_begin[n]);
    path.pairs = prog.pairs.data() + pair_begin[n];
    path.by_i = prog.by_i.data() + by_i_begin[n];
    path.cg_j = prog.cg_j.data();
    path.cg_value = prog.cg_value.data();
    prog.paths.push_back(path);
    const int64_t ld1 = round_up(path.mul1, lanes);
    prog.rows_size = std::max<int64_t>(prog.rows_size, std::max(path.d1, path.d3) * ld1);
    if (path.mode == tp::kUVW) {
      prog.z_size = std::max<int64_t>(prog.z_size, int64_t(path.mul2) * path.d3 * round_up(path.mul1, lanes));
    }
  }
  prog.x2_term_begin.push_back(0);
  for (const tp::Path<T>& p : prog.paths) {
    const size_t first = prog.x2_terms.size();
    for (int32_t q = 0; q < p.num_pairs; ++q)
      for (int32_t nz = p.pairs[q].begin; nz < p.pairs[q].end; ++nz)
        prog.x2_terms.push_back({p.cg_j[nz], p.pairs[q].i * p.d3 + p.pairs[q].k, p.cg_value[nz]});
    std::stable_sort(prog.x2_terms.begin() + first, prog.x2_terms.end(),
                     [](const auto& a, const auto& b) { return a.j < b.j; });
    prog.x2_term_begin.push_back(prog.x2_terms.size());
  }
  for (size_t b = 0; b + 1 < prog.group_begin.size(); ++b) {
    const tp::Path<T>& p = prog.paths[prog.group_begin[b]];
    prog.direct.push_back(direct::kAvailable && prog.group_begin[b + 1] - prog.group_begin[b] == 1 &&
                          p.mode == tp::kUVU && p.mul2 == 1 && p.mul1 % lanes == 0 && has_component_kernels(p.d3));
  }
  prog.all_direct = std::all_of(prog.direct.begin(), prog.direct.end(), [](uint8_t d) { return d != 0; });
  prog.weights_by_block = true;
  for (size_t b = 0; b < prog.direct.size(); ++b)
    for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n)
      if (prog.paths[n].has_weight && !prog.direct[b]) prog.weights_by_block = false;
  prog.x1_in_lanes.assign(prog.x1_blocks.size(), 0);
  for (size_t b = 0; b < prog.direct.size(); ++b)
    if (runs_across(prog, b)) {
      prog.x1_in_lanes[prog.path_x1[prog.group_begin[b]]] = 1;
      const int64_t g_group = int64_t(prog.paths[prog.group_begin[b]].d3) * lanes;
      prog.across_scratch = std::max(prog.across_scratch, (prog.x1_scratch + g_group) * lanes);
    }
  // Projections of one output block's paths for a tile: the largest group decides.
  for (size_t b = 0; b + 1 < prog.group_begin.size(); ++b) {
    int64_t size = 0;
    for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n)
      size += int64_t(prog.paths[n].mul2) * prog.paths[n].d1 * prog.paths[n].d3;
    prog.tile_a_size = std::max(prog.tile_a_size, size);
  }
  prog.by_element = !prog.paths.empty() && std::all_of(prog.paths.begin(), prog.paths.end(), [](const tp::Path<T>& p) {
    return p.mode == tp::kUVW;
  });
  if (prog.by_element) {
    int64_t a = 0;
    for (size_t b = 0; b + 1 < prog.group_begin.size(); ++b)
      for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
        prog.path_block.push_back(static_cast<int32_t>(b));
        prog.a_offset.push_back(a);
        a += int64_t(prog.paths[n].mul2) * prog.paths[n].d1 * prog.paths[n].d3;
      }
    prog.tile_a_size = std::max(prog.tile_a_size, a);
    prog.out_scratch = std::max(prog.out_scratch, prog.out_row_size);
    for (const tp::Path<T>& p : prog.paths)  // vjp_x2_by_element's x1^T W
      prog.z_size = std::max<int64_t>(prog.z_size, int64_t(p.d1) * round_up(p.mul_out, lanes));
    prog.weight_order.resize(prog.paths.size());
    std::iota(prog.weight_order.begin(), prog.weight_order.end(), 0);
    std::stable_sort(prog.weight_order.begin(), prog.weight_order.end(), [&](int32_t a, int32_t b) {
      return prog.paths[a].weight_offset < prog.paths[b].weight_offset;
    });
  }
  return prog;
}

// Whether every path has weights: then the weighted paths' program (vjp_w's) is this one, and
// vjp_x1 and vjp_w can share their contraction (vjp_x1_w_tile).
template <typename T>
bool every_path_weighted(const Program<T>& prog) {
  return std::all_of(prog.paths.begin(), prog.paths.end(), [](const tp::Path<T>& p) { return p.has_weight; });
}

// The program of a call, from a cache of recent ones. Building one checks and sorts every CG
// non-zero: high-order (175 paths, 11,896 non-zeros) ~250 us a call, as much as its kernels on a
// few dozen edges. The key is everything build_program reads, the tables byte for byte (a table
// changed in place, or a new one at a freed one's address, is a miss and is checked again).
template <typename T>
std::shared_ptr<const Program<T>> cached_program(const char* op, const at::Tensor& table, const at::Tensor& coefficients,
                                                 const at::Tensor& cg_index, const at::Tensor& cg_values, int64_t dim1,
                                                 int64_t dim2, int64_t dim_out, int64_t weight_numel,
                                                 bool weighted_only) {
  constexpr size_t kEntries = 16;
  const at::Tensor* tables[] = {&table, &coefficients, &cg_index, &cg_values};
  bool keyable = true;
  for (const at::Tensor* t : tables) keyable = keyable && t->defined() && t->device().is_cpu() && t->is_contiguous();
  if (!keyable) {  // build_program says what is wrong
    return std::make_shared<const Program<T>>(build_program<T>(op, table, coefficients, cg_index, cg_values, dim1, dim2,
                                                               dim_out, weight_numel, weighted_only));
  }
  std::vector<int64_t> signature = {dim1, dim2, dim_out, weight_numel, weighted_only};
  size_t bytes = 0;
  for (const at::Tensor* t : tables) {
    signature.push_back(static_cast<int64_t>(t->scalar_type()));
    for (int64_t d : t->sizes()) signature.push_back(d);
    signature.push_back(-1);
    bytes += t->nbytes();
  }
  auto same_tables = [&](const std::vector<char>& stored) {
    if (stored.size() != bytes) return false;
    size_t at = 0;
    for (const at::Tensor* t : tables) {
      if (t->nbytes() > 0 && std::memcmp(stored.data() + at, t->data_ptr(), t->nbytes()) != 0) return false;
      at += t->nbytes();
    }
    return true;
  };
  struct Entry {
    std::vector<int64_t> signature;  // dimensions, flags, the tables' dtypes and sizes
    std::vector<char> tables;
    std::shared_ptr<const Program<T>> program;
  };
  static std::mutex mutex;
  static std::list<Entry> entries;  // most recently used first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = entries.begin(); it != entries.end(); ++it)
      if (it->signature == signature && same_tables(it->tables)) {
        entries.splice(entries.begin(), entries, it);
        return it->program;
      }
  }
  Entry entry{std::move(signature), std::vector<char>(bytes), nullptr};
  entry.program = std::make_shared<const Program<T>>(build_program<T>(op, table, coefficients, cg_index, cg_values,
                                                                      dim1, dim2, dim_out, weight_numel, weighted_only));
  size_t at = 0;
  for (const at::Tensor* t : tables) {
    if (t->nbytes() > 0) std::memcpy(entry.tables.data() + at, t->data_ptr(), t->nbytes());
    at += t->nbytes();
  }
  std::shared_ptr<const Program<T>> program = entry.program;
  std::lock_guard<std::mutex> lock(mutex);
  entries.push_front(std::move(entry));
  if (entries.size() > kEntries) entries.pop_back();
  return program;
}

enum class Kernel { kForward, kVjpX1, kVjpX2, kVjpW };

// Weights of one path and element: mul1 x mul2 (x mul_out for uvw).
template <typename T>
int64_t path_weight_count(const tp::Path<T>& p) {
  return int64_t(p.mul1) * p.mul2 * (p.mode == tp::kUVW ? p.mul_out : 1);
}

// Per-task scratch, carved from one aligned allocation. A task works on tiles of kLanes<T>
// elements: the x2 side (CG projections) is vectorised over the tile, the rest over channels.
template <typename T>
struct TPScratch {
  static constexpr int TE = kLanes<T>;
  AlignedBuffer<T> memory;
  T *x1c, *gx1c, *x2t, *gx2t, *A, *outc, *gc, *rows, *z, *wv, *gwv, *staged_g, *stage, *across;
  // with_weight_gradient: vjp_x1's scratch also holds vjp_w's (vjp_x1_w_tile).
  TPScratch(const Program<T>& prog, Kernel kernel, int64_t dim2, bool with_weight_gradient = false) {
    const bool x1_grad = kernel == Kernel::kVjpX1, w_grad = kernel == Kernel::kVjpW || with_weight_gradient;
    int64_t weight_block = 0;  // the largest path's weights (vjp_w stages them before streaming)
    for (const tp::Path<T>& p : prog.paths)
      weight_block = std::max<int64_t>(weight_block, path_weight_count(p));
    const int64_t sizes[] = {x1_grad && !w_grad ? 0 : TE * prog.x1_scratch, x1_grad ? TE * prog.x1_scratch : 0,
                             TE * dim2, TE * dim2, TE * prog.tile_a_size, prog.out_scratch, prog.out_scratch,
                             prog.rows_size, prog.z_size, prog.max_ld, prog.max_ld,
                             kernel == Kernel::kVjpX2 ? prog.rows_size : 0, w_grad ? weight_block : 0,
                             kernel == Kernel::kVjpX2 ? prog.across_scratch : 0};
    T** slots[] = {&x1c, &gx1c, &x2t, &gx2t, &A, &outc, &gc, &rows, &z, &wv, &gwv, &staged_g, &stage, &across};
    int64_t total = 0;
    for (int64_t size : sizes) total += round_up(size, kLanes<T>);
    memory.allocate(total);
    int64_t at = 0;
    for (size_t n = 0; n < sizeof(sizes) / sizeof(sizes[0]); ++n) {
      *slots[n] = memory.data() + at;
      at += round_up(sizes[n], kLanes<T>);
    }
  }
};

// The weights of channel v of a uvu path as a contiguous, zero-padded vector (nullptr: unweighted).
template <typename T>
const T* uvu_weights(const tp::Path<T>& p, const T* w, int64_t v, int64_t ld, T* buffer) {
  if (!p.has_weight) return nullptr;
  const T* block = w + p.weight_offset;
  if (p.mul2 == 1) {
    std::copy(block, block + p.mul1, buffer);
  } else {
    for (int64_t u = 0; u < p.mul1; ++u) buffer[u] = block[u * p.mul2 + v];
  }
  std::fill(buffer + p.mul1, buffer + ld, T(0));
  return buffer;
}

template <typename T>
void fill_gaps(const std::vector<std::pair<int64_t, int64_t>>& ranges, T* row) {
  for (const auto& [begin, end] : ranges) std::fill(row + begin, row + end, T(0));
}

#if defined(__AVX512F__)
// out[k][w] += sum_{u, v} z[v][k][u] W[u][v][w] for rows k0 .. k0 + RB and the NC vectors of output
// channels from w0 (lanes past Wo masked on load; the output rows are padded to whole vectors).
// Registers hold the accumulators: GCC keeps those of the portable tp::uvw_forward on the stack,
// a store-to-load chain per input channel that made it 4x slower than its loads.
template <typename T, int RB, int NC>
void uvw_forward_block(const tp::Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3, int32_t k0,
                       int64_t w0) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  const int last = static_cast<int>(std::min<int64_t>(Wo - w0 - (NC - 1) * N, N));  // lanes of the last vector
  typename Tile::Reg acc[RB][NC];
#pragma GCC unroll 16
  for (int b = 0; b < RB; ++b)
#pragma GCC unroll 16
    for (int c = 0; c < NC; ++c) acc[b][c] = Tile::zero();
  // One loop over the rows (u, v) of W: with a loop per v inside one per u, GCC kept the
  // accumulators on the stack between the two, a store-to-load chain per row (35 % of this
  // function's samples on one reload).
  const int64_t rows = p.mul1 * V;
  int64_t u = 0, v = 0;
  for (int64_t row = 0; row < rows; ++row) {
    const T* wr = W + row * Wo + w0;
#pragma GCC unroll 16
    for (int c = 0; c < NC; ++c) prefetch_ahead(wr + c * N);
    typename Tile::Reg wv[NC];
#pragma GCC unroll 16
    for (int c = 0; c + 1 < NC; ++c) wv[c] = Tile::load_full(wr + c * N);
    wv[NC - 1] = Tile::load(wr + (NC - 1) * N, last);
    const T* zr = z + (v * d3 + k0) * ld1 + u;
#pragma GCC unroll 16
    for (int b = 0; b < RB; ++b) {
      const typename Tile::Reg zk = Tile::set1(zr[b * ld1]);
#pragma GCC unroll 16
      for (int c = 0; c < NC; ++c) acc[b][c] = Tile::fma(zk, wv[c], acc[b][c]);
    }
    if (++v == V) {
      v = 0;
      ++u;
    }
  }
#pragma GCC unroll 16
  for (int b = 0; b < RB; ++b)
#pragma GCC unroll 16
    for (int c = 0; c < NC; ++c) {
      T* o = out + (k0 + b) * ld3 + w0 + c * N;
      Tile::store_full(o, Tile::add(Tile::load_full(o), acc[b][c]));
    }
}

// gW[u][v][w] (+)= sum_k z[v][k][u] g[k][w] for the NC vectors of output channels from w0 (the
// last masked at Wo), accumulators in registers (GCC kept the portable loop's on the stack).
template <typename T, int NC>
void uvw_weight_grad_block(const tp::Path<T>& p, const T* z, int64_t ld1, const T* g, int64_t ld3, T* gW,
                           bool accumulate, int64_t w0) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  const int last = static_cast<int>(std::min<int64_t>(Wo - w0 - (NC - 1) * N, N));
  for (int64_t v = 0; v < V; ++v)
    for (int64_t u = 0; u < p.mul1; ++u) {
      typename Tile::Reg acc[NC];
      for (int c = 0; c < NC; ++c) acc[c] = Tile::zero();
      for (int64_t k = 0; k < d3; ++k) {
        const typename Tile::Reg zk = Tile::set1(z[(v * d3 + k) * ld1 + u]);
        for (int c = 0; c < NC; ++c) acc[c] = Tile::fma(zk, Tile::load_full(g + k * ld3 + w0 + c * N), acc[c]);
      }
      T* o = gW + (u * V + v) * Wo + w0;
      for (int c = 0; c < NC; ++c) {
        const int count = c + 1 < NC ? N : last;
        if (accumulate) acc[c] = Tile::add(acc[c], Tile::load(o + c * N, count));
        Tile::store(o + c * N, acc[c], count);
      }
    }
}

template <typename T, int RB>
void uvw_forward_rows(const tp::Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3, int32_t k0) {
  constexpr int N = kLanes<T>;
  for (int64_t w0 = 0; w0 < p.mul_out; w0 += 4 * N) {
    switch ((p.mul_out - w0 + N - 1) / N) {
      case 1: uvw_forward_block<T, RB, 1>(p, z, ld1, W, out, ld3, k0, w0); break;
      case 2: uvw_forward_block<T, RB, 2>(p, z, ld1, W, out, ld3, k0, w0); break;
      case 3: uvw_forward_block<T, RB, 3>(p, z, ld1, W, out, ld3, k0, w0); break;
      default: uvw_forward_block<T, RB, 4>(p, z, ld1, W, out, ld3, k0, w0); break;
    }
  }
}
#endif

// out[k][w] += sum_{u, v} z[v][k][u] W[u][v][w] (z: [V][d3][ld1]; out: [d3][ld3], padded to whole vectors).
template <typename T>
void uvw_forward(const tp::Path<T>& p, const T* z, int64_t ld1, const T* W, T* out, int64_t ld3) {
#if defined(__AVX512F__)
  int32_t k = 0;
  for (; k + 4 <= p.d3; k += 4) uvw_forward_rows<T, 4>(p, z, ld1, W, out, ld3, k);
  switch (p.d3 - k) {
    case 3: uvw_forward_rows<T, 3>(p, z, ld1, W, out, ld3, k); break;
    case 2: uvw_forward_rows<T, 2>(p, z, ld1, W, out, ld3, k); break;
    case 1: uvw_forward_rows<T, 1>(p, z, ld1, W, out, ld3, k); break;
    default: break;
  }
#else
  tp::uvw_forward<T, kLanes<T>>(p, z, ld1, W, out, ld3);
#endif
}

#if defined(__AVX512F__)
// Both gradients of a uvw path with one output component and one x2 channel, in one pass over the
// rows of W: h[u] = sum_w W[u][w] g[w] (rows summed in vector lanes, 16 reduced at once by
// Tile::sum_rows, where contract_weights_transposed spends a 16 x 16 transpose per tile of W) and
// gW[u][w] (+)= z[u] g[w]. NC vectors of output channels (Wo <= NC * N); h padded with zeros to ld1.
template <typename T, int NC>
void uvw_backward_d1(const tp::Path<T>& p, const T* W, const T* g, const T* z, T* h, int64_t ld1, T* gW,
                     bool accumulate) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  const int64_t Wo = p.mul_out;
  const int last = static_cast<int>(Wo - (NC - 1) * N);
  typename Tile::Reg gv[NC];
  for (int c = 0; c < NC; ++c) gv[c] = Tile::load(g + c * N, c + 1 < NC ? N : last);
  for (int64_t u0 = 0; u0 < ld1; u0 += N) {
    typename Tile::Reg part[N];
    for (int r = 0; r < N; ++r) {
      const int64_t u = u0 + r;
      part[r] = Tile::zero();
      if (u >= p.mul1) continue;
      const T* wr = W + u * Wo;
      T* gr = gW + u * Wo;
      const typename Tile::Reg zu = Tile::set1(z[u]);
      for (int c = 0; c < NC; ++c) {
        const int count = c + 1 < NC ? N : last;
        prefetch_ahead(wr + c * N);
        part[r] = Tile::fma(Tile::load(wr + c * N, count), gv[c], part[r]);
        typename Tile::Reg d = Tile::mul(zu, gv[c]);
        if (accumulate) d = Tile::add(d, Tile::load(gr + c * N, count));
        Tile::store(gr + c * N, d, count);
      }
    }
    Tile::store_full(h + u0, Tile::sum_rows(part));
  }
}
#endif

// Whether uvw_backward runs path p (one output component, one x2 channel, up to 4 vectors of
// output channels: fully-connected's scalar paths, 65 % of its weights).
template <typename T>
bool fuses_backward(const tp::Path<T>& p) {
#if defined(__AVX512F__)
  return p.d3 == 1 && p.mul2 == 1 && p.mul_out <= 4 * kLanes<T>;
#else
  return false;
#endif
}

template <typename T>
void uvw_backward(const tp::Path<T>& p, const T* W, const T* g, const T* z, T* h, int64_t ld1, T* gW, bool accumulate) {
#if defined(__AVX512F__)
  constexpr int N = kLanes<T>;
  switch ((p.mul_out + N - 1) / N) {
    case 1: uvw_backward_d1<T, 1>(p, W, g, z, h, ld1, gW, accumulate); break;
    case 2: uvw_backward_d1<T, 2>(p, W, g, z, h, ld1, gW, accumulate); break;
    case 3: uvw_backward_d1<T, 3>(p, W, g, z, h, ld1, gW, accumulate); break;
    default: uvw_backward_d1<T, 4>(p, W, g, z, h, ld1, gW, accumulate); break;
  }
#endif
}

// gW[u][v][w] (+)= sum_k z[v][k][u] g[k][w] (z: [V][d3][ld1]; g: [d3][ld3], padded to whole vectors).
template <typename T>
void uvw_weight_grad(const tp::Path<T>& p, const T* z, int64_t ld1, const T* g, int64_t ld3, T* gW, bool accumulate) {
#if defined(__AVX512F__)
  constexpr int N = kLanes<T>;
  for (int64_t w0 = 0; w0 < p.mul_out; w0 += 4 * N) {
    switch ((p.mul_out - w0 + N - 1) / N) {
      case 1: uvw_weight_grad_block<T, 1>(p, z, ld1, g, ld3, gW, accumulate, w0); break;
      case 2: uvw_weight_grad_block<T, 2>(p, z, ld1, g, ld3, gW, accumulate, w0); break;
      case 3: uvw_weight_grad_block<T, 3>(p, z, ld1, g, ld3, gW, accumulate, w0); break;
      default: uvw_weight_grad_block<T, 4>(p, z, ld1, g, ld3, gW, accumulate, w0); break;
    }
  }
#else
  tp::uvw_weight_grad<T, kLanes<T>>(p, z, ld1, g, ld3, gW, accumulate);
#endif
}

// The channel-side products with the widest channel chunk that divides ld (one or two vectors).
template <typename T>
void gemm(int32_t rows, int32_t cols, const T* M, int64_t sr, int64_t sc, const T* X, T* Y, int64_t ld) {
  if (ld % (2 * kLanes<T>) == 0) {
    tp::gemm<T, 2 * kLanes<T>>(rows, cols, M, sr, sc, X, ld, Y, ld, ld);
  } else {
    tp::gemm<T, kLanes<T>>(rows, cols, M, sr, sc, X, ld, Y, ld, ld);
  }
}

template <typename T>
void weight_grad(const T* A, int64_t si, int64_t sk, int32_t d1, int32_t d3, const T* X, const T* G, int64_t ld,
                 T* gw) {
  if (ld % (2 * kLanes<T>) == 0) {
    tp::weight_grad<T, 2 * kLanes<T>>(A, si, sk, d1, d3, X, G, ld, ld, gw);
  } else {
    tp::weight_grad<T, kLanes<T>>(A, si, sk, d1, d3, X, G, ld, ld, gw);
  }
}

// S[(i * d3 + k) * stride] = sum_u x1[i][u] rows[k][u] for the path's CG pairs, reduced in groups.
template <typename T>
void grouped_pair_dots(const tp::Path<T>& p, const T* x1, const T* rows, int64_t ld, T* S, int64_t stride) {
  constexpr int G = kDotGroup<T>;
  const T* a[G];
  const T* b[G];
  T result[G];
  for (int32_t q0 = 0; q0 < p.num_pairs; q0 += G) {
    const int count = static_cast<int>(std::min<int64_t>(G, p.num_pairs - q0));
    for (int r = 0; r < count; ++r) {
      a[r] = x1 + p.pairs[q0 + r].i * ld;
      b[r] = rows + p.pairs[q0 + r].k * ld;
    }
    dots(count, a, b, ld, result);
    for (int r = 0; r < count; ++r) S[(p.pairs[q0 + r].i * p.d3 + p.pairs[q0 + r].k) * stride] = result[r];
  }
}

#if defined(__AVX512F__)
// h[v][k][u] = sum_w W[u][v][w] g[k][w] for N channels u at a time: each N x N tile of W (rows u,
// columns w) transposed in registers, then h[v][k][u0..] += g[k][w] W[u0..][v][w], one broadcast
// FMA each, the D3 accumulators in registers. Per tile: N loads, one transpose, D3 x N FMAs; the
// dot products below reload each row of W for every k and reduce every 16 dots by shuffles
// (fully-connected's vjp_x1 spent half its compute there).
template <typename T, int D3>
void contract_weights_transposed(const tp::Path<T>& p, const T* W, const T* g, int64_t ld3, T* h, int64_t ld1) {
  using Tile = typename detail::TileOf<T>::type;
  constexpr int N = Tile::N;
  const int64_t V = p.mul2, Wo = p.mul_out;
  for (int64_t v = 0; v < V; ++v) {
    int64_t u0 = 0;
    for (; u0 < p.mul1; u0 += N) {
      const int rows = static_cast<int>(std::min<int64_t>(N, p.mul1 - u0));
      typename Tile::Reg acc[D3];
      for (int k = 0; k < D3; ++k) acc[k] = Tile::zero();
      for (int64_t w0 = 0; w0 < Wo; w0 += N) {
        const int cols = static_cast<int>(std::min<int64_t>(N, Wo - w0));
        typename Tile::Reg r[N];
        for (int u = 0; u < rows; ++u)
          prefetch_ahead(W + ((u0 + u) * V + v) * Wo + w0);
        for (int u = 0; u < N; ++u) r[u] = u < rows ? Tile::load(W + ((u0 + u) * V + v) * Wo + w0, cols) : Tile::zero();
        Tile::transpose(r);  // r[w] = W[u0 .. u0 + N][v][w0 + w]
        for (int w = 0; w < cols; ++w)
          for (int k = 0; k < D3; ++k) acc[k] = Tile::fma(Tile::set1(g[k * ld3 + w0 + w]), r[w], acc[k]);
      }
      for (int k = 0; k < D3; ++k) Tile::store_full(h + (v * D3 + k) * ld1 + u0, acc[k]);
    }
    for (int k = 0; k < D3; ++k) std::fill(h + (v * D3 + k) * ld1 + u0, h + (v * D3 + k) * ld1 + ld1, T(0));
  }
}
#endif

// h[v][k][u] = sum_w W[u][v][w] g[k][w] (zero for padding channels), reduced in groups of rows u.
template <typename T>
void contract_weights(const tp::Path<T>& p, const T* W, const T* g, int64_t ld3, T* h, int64_t ld1) {
#if defined(__AVX512F__)
  if (p.d3 <= 13 && has_component_kernels(p.d3)) {
    with_components<13>(p.d3, [&](auto d3) { contract_weights_transposed<T, decltype(d3)::value>(p, W, g, ld3, h, ld1); });
    return;
  }
#endif
  constexpr int G = kDotGroup<T>;
  const int64_t V = p.mul2, Wo = p.mul_out, d3 = p.d3;
  const T* a[G];
  const T* b[G];
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < d3; ++k) {
      T* hk = h + (v * d3 + k) * ld1;
      for (int64_t u0 = 0; u0 < p.mul1; u0 += G) {
        const int count = static_cast<int>(std::min<int64_t>(G, p.mul1 - u0));
        for (int r = 0; r < count; ++r) {
          a[r] = W + ((u0 + r) * V + v) * Wo;
          b[r] = g + k * ld3;
        }
        dots(count, a, b, Wo, hk + u0);
      }
      std::fill(hk + p.mul1, hk + ld1, T(0));
    }
}

// Rows of one operand: row(e) = base + (index ? index[e] : e) * stride. A null base means the
// kernel has no such operand; stride 0 shares one row (shared weights); an index gathers.
template <typename T>
struct Rows {
  T* base = nullptr;
  int64_t stride = 0;
  const int64_t* index = nullptr;
  T* row(int64_t e) const { return base == nullptr ? nullptr : base + (index ? index[e] : e) * stride; }
};

// One tile: up to TE elements, with each operand's row of each element.
template <typename T>
struct TileIO {
  static constexpr int TE = kLanes<T>;
  int64_t count = 0;
  const T *x1[TE], *x2[TE], *g[TE], *w[TE];  // nullptr where the kernel has no such input
  // x1 / g rows already in channel-major blocks (x1_blocks[].slot / out_blocks[].slot): a caller
  // that reads each node row many times (the convolution) converts them once per call.
  bool x1_channel_major = false, g_channel_major = false;
  T* out[TE];                                  // element e's output row (per-element outputs)
  int64_t dim1 = 0, dim2 = 0, dim_out = 0;

  // Elements first .. first + count - 1 of a batch (positions, looked up through each operand's Rows).
  TileIO(int64_t first, int64_t count_, const Rows<const T>& x1r, const Rows<const T>& x2r, const Rows<const T>& gr,
         const Rows<const T>& wr, const Rows<T>& outr, int64_t d1, int64_t d2, int64_t dout)
      : count(count_), dim1(d1), dim2(d2), dim_out(dout) {
    for (int64_t e = 0; e < count; ++e) {
      x1[e] = x1r.row(first + e);
      x2[e] = x2r.row(first + e);
      g[e] = gr.row(first + e);
      w[e] = wr.row(first + e);
      out[e] = outr.row(first + e);
    }
  }
};

// x2t[j][e] = x2[e][j] for the tile (zero for lanes past its end).
template <typename T>
void load_x2(const TileIO<T>& io, T* x2t) {
  constexpr int TE = kLanes<T>;
  for (int64_t j = 0; j < io.dim2; ++j) {
    T* row = x2t + j * TE;
    for (int64_t e = 0; e < io.count; ++e) row[e] = io.x2[e][j];
    for (int64_t e = io.count; e < TE; ++e) row[e] = T(0);
  }
}

template <typename T>
void load_x1(const Program<T>& prog, const TileIO<T>& io, T* x1c) {
  if (io.x1_channel_major) return;
  for (int64_t e = 0; e < io.count; ++e)
    for (const Block& b : prog.x1_blocks)
      to_channel_major(io.x1[e] + b.offset, b.mul, b.d, x1c + e * prog.x1_scratch + b.slot, b.ld);
}

// Element e's x1 in channel-major blocks (after load_x1).
template <typename T>
const T* x1_channel_major(const Program<T>& prog, const TileIO<T>& io, const T* x1c, int64_t e) {
  return io.x1_channel_major ? io.x1[e] : x1c + e * prog.x1_scratch;
}

// Block b of element e's g, channel-major [d][ld] (converted into `buffer` unless it already is).
template <typename T>
const T* g_block(const Program<T>& prog, const TileIO<T>& io, size_t b, int64_t e, T* buffer) {
  const Block& ob = prog.out_blocks[b];
  if (io.g_channel_major) return io.g[e] + ob.slot;
  to_channel_major(io.g[e] + ob.offset, ob.mul, ob.d, buffer, ob.ld);
  return buffer;
}

// A row in channel-major blocks (the layout the flags of TileIO announce).
template <typename T>
void row_to_channel_major(const std::vector<Block>& blocks, const T* row, T* dst) {
  for (const Block& b : blocks) to_channel_major(row + b.offset, b.mul, b.d, dst + b.slot, b.ld);
}

// tp::project_x2 for one path and x2 channel, each (i, k) pair's sum in a register: GCC keeps the
// portable loop's TE sums on the stack, a store-to-load chain per CG non-zero (the projections
// were 14 % of the lmax-2 model's conv forward).
template <typename T>
void project_path(const tp::Path<T>& p, const T* x2t, T* A) {
#if defined(__AVX512F__)
  using Tile = typename detail::TileOf<T>::type;
  static_assert(Tile::N == kLanes<T>, "one register per row of the tile");
  constexpr int TE = kLanes<T>;
  for (int32_t n = 0; n < p.d1 * p.d3; ++n) Tile::store_full(A + n * TE, Tile::zero());
  for (int32_t q = 0; q < p.num_pairs; ++q) {
    typename Tile::Reg acc = Tile::zero();
    for (int32_t nz = p.pairs[q].begin; nz < p.pairs[q].end; ++nz)
      acc = Tile::fma(Tile::set1(p.cg_value[nz]), Tile::load_full(x2t + p.cg_j[nz] * TE), acc);
    Tile::store_full(A + (p.pairs[q].i * p.d3 + p.pairs[q].k) * TE, Tile::mul(Tile::set1(p.coefficient), acc));
  }
#else
  tp::project_x2<T, kLanes<T>>(p, x2t, A);
#endif
}

// CG projections of every path (and x2 channel) of output block b, for the whole tile.
template <typename T>
void project_group(const Program<T>& prog, size_t b, const T* x2t, T* A) {
  constexpr int TE = kLanes<T>;
  for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
    const tp::Path<T>& p = prog.paths[n];
    for (int64_t v = 0; v < p.mul2; ++v) {
      project_path(p, x2t + (p.offset2 + v * p.d2) * TE, A);
      A += int64_t(p.d1) * p.d3 * TE;
    }
  }
}

// gx2t[j] += coefficient * sum_{i, k} C[i, j, k] S[(i * d3 + k) * TE] for path n (tp::unproject_x2),
// each component's sum in a register: the portable loop adds every non-zero into gx2t in memory, a
// store-to-load chain through each component's row.
template <typename T>
void unproject_path(const Program<T>& prog, int32_t n, const T* S, T* gx2t) {
  const tp::Path<T>& p = prog.paths[n];
#if defined(__AVX512F__)
  using Tile = typename detail::TileOf<T>::type;
  constexpr int TE = kLanes<T>;
  const size_t end = prog.x2_term_begin[n + 1];
  for (size_t t = prog.x2_term_begin[n]; t < end;) {
    const int32_t j = prog.x2_terms[t].j;
    typename Tile::Reg acc = Tile::zero();
    for (; t < end && prog.x2_terms[t].j == j; ++t)
      acc = Tile::fma(Tile::set1(prog.x2_terms[t].value), Tile::load_full(S + prog.x2_terms[t].entry * TE), acc);
    T* g = gx2t + j * TE;
    Tile::store_full(g, Tile::fma(Tile::set1(p.coefficient), acc, Tile::load_full(g)));
  }
#else
  tp::unproject_x2<T, kLanes<T>>(p, S, gx2t);
#endif
}

// ---------------------------------------------------------------------------------------------
// One tile of each kernel
// ---------------------------------------------------------------------------------------------
// Output block b of element e accumulates into sink.target(b, e) (channel-major [d][ld]), after
// which sink.done(b, e) runs: the tensor product stores each element's block, the convolution
// keeps summing the edges of one receiver (csrc/cpu/conv.cpp).
template <typename T>
struct StoreRows {
  const Program<T>& prog;
  const TileIO<T>& io;
  T* outc;
  bool stream = false;  // direct blocks by streaming stores (outputs larger than the caches)
  T* target(size_t b, int64_t) {
    const Block& ob = prog.out_blocks[b];
    std::fill(outc, outc + ob.d * ob.ld, T(0));
    return outc;
  }
  void done(size_t b, int64_t e) {
    const Block& ob = prog.out_blocks[b];
    from_channel_major(outc, ob.ld, ob.mul, ob.d, io.out[e] + ob.offset);
  }
};

// If the direct kernels (tp_direct.h) take output block b: kernel(d3, path, x1 block, e) for every
// element e of the tile (d3 an integral_constant) and true; else false. reads_g: the kernel reads
// g (direct_g says where).
template <typename T, typename Kernel>
bool run_direct(const Program<T>& prog, const TileIO<T>& io, size_t b, bool reads_g, Kernel&& kernel) {
  if constexpr (!direct::kAvailable) {
    return false;
  } else {
    if (!prog.direct[b]) return false;
    const bool reads_g_rows = reads_g && !io.g_channel_major;
    const int32_t n = prog.group_begin[b];
    const tp::Path<T>& p = prog.paths[n];
    const Block& xb = prog.x1_blocks[prog.path_x1[n]];
    // The next block's rows of g (or of the output, for the forward) of each element, fetched while
    // this block computes: large rows (high-order: 182 KB per element) are past the tile
    // prefetch's budget, and a block's 1-2 KB of each of 16 rows is too short a stream for the
    // hardware prefetcher.
    // So are the next block's weights of each element (a direct block's: mul1 numbers). The tile
    // sweep's copy of them came too late or was gone: nequip's forward at E = 10,000 stalled on
    // the weight loads (half the samples of direct::forward<3>) and took 17.4 ms, 14.3 with this.
    const Block* next = b + 1 < prog.out_blocks.size() ? &prog.out_blocks[b + 1] : nullptr;
    const tp::Path<T>* next_path = next != nullptr && prog.direct[b + 1] ? &prog.paths[prog.group_begin[b + 1]] : nullptr;
    const bool next_weights = next_path != nullptr && next_path->has_weight && io.w[0] != nullptr;
    if (paced_prefetch != nullptr) paced_prefetch->step();  // run_elements' next tile, a slice per block
    with_components(p.d3, [&](auto d3) {
      for (int64_t e = 0; e < io.count; ++e) {
        if (next != nullptr && reads_g_rows) prefetch_bytes(io.g[e] + next->offset, next->mul * next->d * int64_t(sizeof(T)));
        if (next_weights) prefetch_bytes(io.w[e] + next_path->weight_offset, next_path->mul1 * int64_t(sizeof(T)));
        kernel(d3, p, xb, e);
      }
    });
    return true;
  }
}

// Where a direct kernel reads element e's g of output block b: (pointer, g_ld) for load_g, i.e. the
// block in its row, or the channel-major block the convolution hands over.
template <typename T>
std::pair<const T*, int64_t> direct_g(const Program<T>& prog, const TileIO<T>& io, size_t b, int64_t e) {
  const Block& ob = prog.out_blocks[b];
  if (io.g_channel_major) return {io.g[e] + ob.slot, ob.ld};
  return {io.g[e] + ob.offset, 0};
}

// Element e's weights of a path of one x2 channel (nullptr: unweighted).
template <typename T>
const T* path_weights(const tp::Path<T>& p, const TileIO<T>& io, int64_t e) {
  return p.has_weight ? io.w[e] + p.weight_offset : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Programs whose paths are all uvw (Program::by_element): a tile's projections for every path at
// once, then element by element, each element's paths in the order of their weights. Its weights
// (fully-connected: 28.5 KB per element) and their gradients are then read and written front to
// back, one stream the kernels ask for ahead of use (kReadAhead, streaming.h), where the block-by-block
// order reads a few hundred bytes of each of 16 rows in turn (bench/NOTES.md, version 14).
// ---------------------------------------------------------------------------------------------
template <typename T>
void project_all(const Program<T>& prog, const T* x2t, T* A) {
  for (size_t b = 0; b < prog.out_blocks.size(); ++b)
    project_group(prog, b, x2t, A + prog.a_offset[prog.group_begin[b]] * kLanes<T>);
}

// Element e's projections of path n, x2 channel 0 (the next channel's follow at + d1 * d3 * TE).
template <typename T>
const T* path_projections(const Program<T>& prog, const T* A, int32_t n, int64_t e) {
  return A + prog.a_offset[n] * kLanes<T> + e;
}

// Element e's g, every output block channel-major at its slot (out_row_size numbers).
template <typename T>
void g_row_channel_major(const Program<T>& prog, const TileIO<T>& io, int64_t e, T* gc) {
  if (io.g_channel_major) {
    std::copy(io.g[e], io.g[e] + prog.out_row_size, gc);
    return;
  }
  row_to_channel_major(prog.out_blocks, io.g[e], gc);
}

// z[v] = A^T x1 for each x2 channel v of a uvw path (the product before its weights).
template <typename T>
void uvw_inputs(const tp::Path<T>& p, const T* A, const T* xc, int64_t ld, T* z) {
  constexpr int TE = kLanes<T>;
  for (int64_t v = 0; v < p.mul2; ++v, A += int64_t(p.d1) * p.d3 * TE, z += p.d3 * ld) {
    std::fill(z, z + p.d3 * ld, T(0));
    gemm(p.d3, p.d1, A, TE, int64_t(p.d3) * TE, xc, z, ld);
  }
}

template <typename T>
void forward_by_element(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s) {
  project_all(prog, s.x2t, s.A);
  for (int64_t e = 0; e < io.count; ++e) {
    T* row = s.outc;
    std::fill(row, row + prog.out_row_size, T(0));
    const T* x1e = x1_channel_major(prog, io, s.x1c, e);
    for (int32_t n : prog.weight_order) {
      const tp::Path<T>& p = prog.paths[n];
      const Block& xb = prog.x1_blocks[prog.path_x1[n]];
      const Block& ob = prog.out_blocks[prog.path_block[n]];
      uvw_inputs(p, path_projections(prog, s.A, n, e), x1e + xb.slot, xb.ld, s.z);
      uvw_forward(p, s.z, xb.ld, io.w[e] + p.weight_offset, row + ob.slot, ob.ld);
    }
    for (const Block& ob : prog.out_blocks) from_channel_major(row + ob.slot, ob.ld, ob.mul, ob.d, io.out[e] + ob.offset);
  }
}

// How vjp_w_tile writes element e's weight gradient into io.out[e]: plain stores, added to what
// is there (shared weights: one row for many elements), or staged per path and streamed out
// (per-element gradients larger than the caches; see streaming.h).
enum class WeightStore { kWrite, kAdd, kStream };

// Where element e's gradient of path p goes first (staged in L1 when streamed), and the copy that
// finishes it.
template <typename T>
T* weight_target(const tp::Path<T>& p, const TileIO<T>& io, WeightStore store, TPScratch<T>& s, int64_t e) {
  return store == WeightStore::kStream ? s.stage : io.out[e] + p.weight_offset;
}

template <typename T>
void finish_weights(const tp::Path<T>& p, const TileIO<T>& io, WeightStore store, const TPScratch<T>& s, int64_t e) {
  if (store == WeightStore::kStream) copy_out(s.stage, path_weight_count(p), io.out[e] + p.weight_offset, true);
}

// Before a tile's weight gradients: the gaps of each row that no path writes.
template <typename T>
void start_weights(const Program<T>& prog, const TileIO<T>& io, WeightStore store) {
  if (store != WeightStore::kAdd)
    for (int64_t e = 0; e < io.count; ++e) fill_gaps(prog.weight_gaps, io.out[e]);
}

// gW = (A^T x1) g^T for path n of element e (by-element programs; s.gc holds e's g row).
template <typename T>
void uvw_weight_gradient(const Program<T>& prog, const TileIO<T>& io, WeightStore store, TPScratch<T>& s, int32_t n,
                         int64_t e) {
  const tp::Path<T>& p = prog.paths[n];
  const Block& xb = prog.x1_blocks[prog.path_x1[n]];
  const Block& ob = prog.out_blocks[prog.path_block[n]];
  uvw_inputs(p, path_projections(prog, s.A, n, e), x1_channel_major(prog, io, s.x1c, e) + xb.slot, xb.ld, s.z);
  uvw_weight_grad(p, s.z, xb.ld, s.gc + ob.slot, ob.ld, weight_target(p, io, store, s, e), store == WeightStore::kAdd);
  finish_weights(p, io, store, s, e);
}

// vjp_x1_tile, vjp_w_tile or both (vjp_x1_w_tile) of a by-element program: x2 loaded, x1 too
// for the weights' gradient, gx1c zeroed for x1's.
template <typename T>
void vjp_by_element(const Program<T>& prog, const TileIO<T>& io, WeightStore store, TPScratch<T>& s, bool with_x1,
                    bool with_w) {
  constexpr int TE = kLanes<T>;
  project_all(prog, s.x2t, s.A);
  for (int64_t e = 0; e < io.count; ++e) {
    g_row_channel_major(prog, io, e, s.gc);
    // The next element's streamed gradient blocks start and end in lines shared with their
    // neighbours, which copy_out writes by plain stores: ask for them now, so that those stores
    // do not each wait on a read from memory.
    if (with_w && store == WeightStore::kStream && e + 1 < io.count)
      for (const tp::Path<T>& p : prog.paths) {
        T* block = io.out[e + 1] + p.weight_offset;
        prefetch_line_for_write(reinterpret_cast<char*>(block));
        prefetch_line_for_write(reinterpret_cast<char*>(block + path_weight_count(p) - 1));
      }
    for (int32_t n : prog.weight_order) {
      const tp::Path<T>& p = prog.paths[n];
      const Block& xb = prog.x1_blocks[prog.path_x1[n]];
      const Block& ob = prog.out_blocks[prog.path_block[n]];
      const bool fused = with_x1 && with_w && fuses_backward(p);  // both gradients from one pass over W
      if (with_x1) {  // gx1 += A h, h = W^T g
        const T* A = path_projections(prog, s.A, n, e);
        T* h = fused ? s.rows : s.z;  // the fused pass needs s.z for the weights' inputs
        if (fused) {
          uvw_inputs(p, A, x1_channel_major(prog, io, s.x1c, e) + xb.slot, xb.ld, s.z);
          uvw_backward(p, io.w[e] + p.weight_offset, s.gc + ob.slot, s.z, h, xb.ld, weight_target(p, io, store, s, e),
                       store == WeightStore::kAdd);
          finish_weights(p, io, store, s, e);
        } else {
          contract_weights(p, io.w[e] + p.weight_offset, s.gc + ob.slot, ob.ld, h, xb.ld);
        }
        for (int64_t v = 0; v < p.mul2; ++v, A += int64_t(p.d1) * p.d3 * TE)
          gemm(p.d1, p.d3, A, int64_t(p.d3) * TE, TE, h + v * p.d3 * xb.ld, s.gx1c + e * prog.x1_scratch + xb.slot,
               xb.ld);
      }
      if (with_w && !fused) uvw_weight_gradient(prog, io, store, s, n, e);
    }
  }
}

template <typename T, typename Sink>
void forward_tile(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s, Sink& sink) {
  constexpr int TE = kLanes<T>;
  load_x1(prog, io, s.x1c);
  load_x2(io, s.x2t);
  if constexpr (std::is_same_v<Sink, StoreRows<T>>) {
    if (prog.by_element) return forward_by_element(prog, io, s);
  }
  for (size_t b = 0; b < prog.out_blocks.size(); ++b) {
    const Block& ob = prog.out_blocks[b];
    project_group(prog, b, s.x2t, s.A);
    // Into the output row (streamed where it is large), or into the convolution's sum of a receiver.
    const bool done = run_direct(prog, io, b, false, [&](auto d3, const tp::Path<T>& p, const Block& xb, int64_t e) {
      const T* xc = x1_channel_major(prog, io, s.x1c, e) + xb.slot;
      if constexpr (std::is_same_v<Sink, StoreRows<T>>) {
        direct::forward<T, decltype(d3)::value>(p.d1, p.mul1, s.A + e, xc, xb.ld, path_weights(p, io, e),
                                                io.out[e] + p.offset_out, sink.stream);
      } else {
        direct::forward_accumulate<T, decltype(d3)::value>(p.d1, p.mul1, s.A + e, xc, xb.ld,
                                                           path_weights(p, io, e), sink.target(b, e), ob.ld);
        sink.done(b, e);
      }
    });
    if (done) continue;
    for (int64_t e = 0; e < io.count; ++e) {
      const T* w = io.w[e];
      T* outc = sink.target(b, e);
      const T* A = s.A + e;  // element e's matrices: stride TE
      for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
        const tp::Path<T>& p = prog.paths[n];
        const Block& xb = prog.x1_blocks[prog.path_x1[n]];
        const T* xc = x1_channel_major(prog, io, s.x1c, e) + xb.slot;
        const int64_t ld = xb.ld;
        for (int64_t v = 0; v < p.mul2; ++v, A += int64_t(p.d1) * p.d3 * TE) {
          if (p.mode == tp::kUVU) {
            // out += A^T (w x1): the weights of this x2 channel folded into x1
            const T* wv = uvu_weights(p, w, v, ld, s.wv);
            if (wv != nullptr) tp::weight_rows(p.d1, wv, xc, s.rows, ld, ld);
            gemm(p.d3, p.d1, A, TE, int64_t(p.d3) * TE, wv != nullptr ? s.rows : xc, outc, ld);
          } else {
            T* z = s.z + v * p.d3 * ld;
            std::fill(z, z + p.d3 * ld, T(0));
            gemm(p.d3, p.d1, A, TE, int64_t(p.d3) * TE, xc, z, ld);
          }
        }
        if (p.mode == tp::kUVW) uvw_forward(p, s.z, ld, w + p.weight_offset, outc, ob.ld);
      }
      sink.done(b, e);
    }
  }
}

// Element e's g (channel-major gc) of x2 channel v of path p, weighted: w g for uvu (into s.rows),
// W^T g for uvw (contract_weights put it in s.z beforehand). p.d3 rows of ld.
template <typename T>
const T* weighted_g(const tp::Path<T>& p, const T* w, const T* gc, int64_t v, int64_t ld, TPScratch<T>& s) {
  if (p.mode != tp::kUVU) return s.z + v * p.d3 * ld;
  tp::weight_rows(p.d3, uvu_weights(p, w, v, ld, s.wv), gc, s.rows, ld, ld);
  return s.rows;
}

// gx1 += output block b's part, through the general tiles (its projections in s.A).
template <typename T>
void vjp_x1_block(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s, size_t b) {
  constexpr int TE = kLanes<T>;
  const Block& ob = prog.out_blocks[b];
  for (int64_t e = 0; e < io.count; ++e) {
    const T* w = io.w[e];
    const T* gc = g_block(prog, io, b, e, s.gc);
    const T* A = s.A + e;
    for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
      const tp::Path<T>& p = prog.paths[n];
      const Block& xb = prog.x1_blocks[prog.path_x1[n]];
      T* gxc = s.gx1c + e * prog.x1_scratch + xb.slot;
      const int64_t ld = xb.ld;
      if (p.mode == tp::kUVW) contract_weights(p, w + p.weight_offset, gc, ob.ld, s.z, ld);
      for (int64_t v = 0; v < p.mul2; ++v, A += int64_t(p.d1) * p.d3 * TE)
        gemm(p.d1, p.d3, A, int64_t(p.d3) * TE, TE, weighted_g(p, w, gc, v, ld, s), gxc, ld);  // gx1 += A (w g)
    }
  }
}

// Leaves element e's gradient in s.gx1c + e * prog.x1_scratch (channel-major blocks).
template <typename T>
void vjp_x1_tile(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  std::fill(s.gx1c, s.gx1c + io.count * prog.x1_scratch, T(0));
  load_x2(io, s.x2t);
  if (prog.by_element) return vjp_by_element(prog, io, WeightStore::kWrite, s, true, false);
  for (size_t b = 0; b < prog.out_blocks.size(); ++b) {
    project_group(prog, b, s.x2t, s.A);
    const bool done = run_direct(prog, io, b, true, [&](auto d3, const tp::Path<T>& p, const Block& xb, int64_t e) {
      const auto [g, g_ld] = direct_g(prog, io, b, e);
      direct::vjp_x1<T, decltype(d3)::value>(p.d1, p.mul1, s.A + e, g, g_ld, path_weights(p, io, e),
                                             s.gx1c + e * prog.x1_scratch + xb.slot, xb.ld);
    });
    if (!done) vjp_x1_block(prog, io, s, b);
  }
}

// Row of x1 (gaps zeroed) from its channel-major blocks.
template <typename T>
void store_x1_row(const Program<T>& prog, const T* x1c, T* row) {
  for (const Block& b : prog.x1_blocks) from_channel_major(x1c + b.slot, b.ld, b.mul, b.d, row + b.offset);
  fill_gaps(prog.x1_gaps, row);
}

// The tile's x1 blocks that vjp_x2_across reads, with the elements in lanes (direct::block_to_lanes),
// block xb at s.across + xb.slot * TE: made once for all the paths that read it.
template <typename T>
void x1_to_lanes(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  for (size_t n = 0; n < prog.x1_blocks.size(); ++n) {
    if (!prog.x1_in_lanes[n]) continue;
    const Block& xb = prog.x1_blocks[n];
    const T* X[TE];
    for (int64_t e = 0; e < io.count; ++e) X[e] = x1_channel_major(prog, io, s.x1c, e) + xb.slot;
    direct::block_to_lanes<T>(static_cast<int32_t>(xb.d), X, xb.ld, io.count, s.across + xb.slot * TE);
  }
}

// The tile's x2 gradients from s.gx2t (x2 components by tile lane) into io.out's rows.
template <typename T>
void store_x2_gradients(const TileIO<T>& io, const TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  for (int64_t e = 0; e < io.count; ++e)
    for (int64_t j = 0; j < io.dim2; ++j) io.out[e][j] = s.gx2t[j * TE + e];
}

// vjp_x2_tile of a by-element program: each element's pair sums of every path, then the CG
// adjoint of all of them for the tile.
template <typename T>
void vjp_x2_by_element(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  if (io.count < TE) std::fill(s.A, s.A + prog.tile_a_size * TE, T(0));  // lanes past the tile's end
  for (int64_t e = 0; e < io.count; ++e) {
    g_row_channel_major(prog, io, e, s.gc);
    const T* x1e = x1_channel_major(prog, io, s.x1c, e);
    for (int32_t n : prog.weight_order) {
      const tp::Path<T>& p = prog.paths[n];
      const Block& xb = prog.x1_blocks[prog.path_x1[n]];
      const Block& ob = prog.out_blocks[prog.path_block[n]];
      T* S = s.A + prog.a_offset[n] * TE + e;
      if (p.mul2 == 1) {
        // S[i][k] = sum_w y[i][w] g[k][w] with y = x1^T W: the forward's contraction, x1's rows in
        // place of the projections (rows of W in vector lanes, no transposes).
        tp::Path<T> x1_rows = p;
        x1_rows.d3 = p.d1;
        std::fill(s.z, s.z + p.d1 * ob.ld, T(0));
        uvw_forward(x1_rows, x1e + xb.slot, xb.ld, io.w[e] + p.weight_offset, s.z, ob.ld);
        grouped_pair_dots(p, s.z, s.gc + ob.slot, ob.ld, S, TE);
        continue;
      }
      contract_weights(p, io.w[e] + p.weight_offset, s.gc + ob.slot, ob.ld, s.z, xb.ld);
      for (int64_t v = 0; v < p.mul2; ++v, S += int64_t(p.d1) * p.d3 * TE)
        grouped_pair_dots(p, x1e + xb.slot, s.z + v * p.d3 * xb.ld, xb.ld, S, TE);
    }
  }
  for (size_t n = 0; n < prog.paths.size(); ++n) {
    const tp::Path<T>& p = prog.paths[n];
    const T* S = s.A + prog.a_offset[n] * TE;
    for (int64_t v = 0; v < p.mul2; ++v, S += int64_t(p.d1) * p.d3 * TE)
      unproject_path(prog, static_cast<int32_t>(n), S, s.gx2t + (p.offset2 + v * p.d2) * TE);
  }
}

template <typename T>
void vjp_x2_tile(const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  load_x1(prog, io, s.x1c);
  std::fill(s.gx2t, s.gx2t + io.dim2 * TE, T(0));
  if (prog.by_element) {
    vjp_x2_by_element(prog, io, s);
    return store_x2_gradients(io, s);
  }
  if constexpr (direct::kAvailable) {
    if (prog.across_scratch > 0) x1_to_lanes(prog, io, s);
  }
  for (size_t b = 0; b < prog.out_blocks.size(); ++b) {
    const Block& ob = prog.out_blocks[b];
    if (io.count < TE) std::fill(s.A, s.A + prog.tile_a_size * TE, T(0));  // lanes past the tile's end
    const tp::Path<T>& first = prog.paths[prog.group_begin[b]];
    if constexpr (direct::kAvailable) {
      if (runs_across(prog, b)) {
        const Block& xb = prog.x1_blocks[prog.path_x1[prog.group_begin[b]]];
        const T *G[TE], *W[TE];
        int64_t g_ld = 0;
        for (int64_t e = 0; e < io.count; ++e) {
          std::tie(G[e], g_ld) = direct_g(prog, io, b, e);
          W[e] = path_weights(first, io, e);
        }
        with_components(first.d3, [&](auto d3) {
          direct::vjp_x2_across<T, decltype(d3)::value>(first.d1, first.mul1, s.across + xb.slot * TE, G, g_ld, W,
                                                        io.count, s.across + prog.x1_scratch * TE, s.A);
        });
        unproject_path(prog, prog.group_begin[b], s.A, s.gx2t + first.offset2 * TE);
        continue;
      }
    }
    const bool done = run_direct(prog, io, b, true, [&](auto d3, const tp::Path<T>& p, const Block& xb, int64_t e) {
      const auto [g, g_ld] = direct_g(prog, io, b, e);
      direct::vjp_x2<T, decltype(d3)::value>(p.d1, p.mul1, x1_channel_major(prog, io, s.x1c, e) + xb.slot, xb.ld, g,
                                             g_ld, path_weights(p, io, e), s.staged_g, s.A + e);
    });
    if (done) {
      unproject_path(prog, prog.group_begin[b], s.A, s.gx2t + first.offset2 * TE);
      continue;
    }
    for (int64_t e = 0; e < io.count; ++e) {
      const T* w = io.w[e];
      const T* gc = g_block(prog, io, b, e, s.gc);
      T* S = s.A + e;  // element e's pair sums: stride TE
      for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
        const tp::Path<T>& p = prog.paths[n];
        const Block& xb = prog.x1_blocks[prog.path_x1[n]];
        const T* xc = x1_channel_major(prog, io, s.x1c, e) + xb.slot;
        const int64_t ld = xb.ld;
        if (p.mode == tp::kUVW) contract_weights(p, w + p.weight_offset, gc, ob.ld, s.z, ld);
        for (int64_t v = 0; v < p.mul2; ++v, S += int64_t(p.d1) * p.d3 * TE)
          grouped_pair_dots(p, xc, weighted_g(p, w, gc, v, ld, s), ld, S, TE);
      }
    }
    // gx2 += the CG adjoint of the pair sums, vectorised over the tile (lanes past its end are
    // never read back).
    const T* S = s.A;
    for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
      const tp::Path<T>& p = prog.paths[n];
      for (int64_t v = 0; v < p.mul2; ++v, S += int64_t(p.d1) * p.d3 * TE)
        unproject_path(prog, n, S, s.gx2t + (p.offset2 + v * p.d2) * TE);
    }
  }
  store_x2_gradients(io, s);
}

// gw (+)= output block b's part, through the general tiles (its projections in s.A).
template <typename T>
void vjp_w_block(const Program<T>& prog, const TileIO<T>& io, WeightStore store, TPScratch<T>& s, size_t b) {
  constexpr int TE = kLanes<T>;
  const bool accumulate = store == WeightStore::kAdd;
  const Block& ob = prog.out_blocks[b];
  for (int64_t e = 0; e < io.count; ++e) {
    const T* gc = g_block(prog, io, b, e, s.gc);
    const T* A = s.A + e;
    for (int32_t n = prog.group_begin[b]; n < prog.group_begin[b + 1]; ++n) {
      const tp::Path<T>& p = prog.paths[n];
      const Block& xb = prog.x1_blocks[prog.path_x1[n]];
      const T* xc = x1_channel_major(prog, io, s.x1c, e) + xb.slot;
      const int64_t ld = xb.ld;
      T* block = weight_target(p, io, store, s, e);
      for (int64_t v = 0; v < p.mul2; ++v, A += int64_t(p.d1) * p.d3 * TE) {
        if (p.mode == tp::kUVU && p.mul2 == 1 && p.mul1 == ld && !accumulate) {
          // No padding to drop and no stride: straight into the row with vector stores.
          weight_grad(A, int64_t(p.d3) * TE, TE, p.d1, p.d3, xc, gc, ld, block);
        } else if (p.mode == tp::kUVU) {
          weight_grad(A, int64_t(p.d3) * TE, TE, p.d1, p.d3, xc, gc, ld, s.gwv);
          if (accumulate) {
            for (int64_t u = 0; u < p.mul1; ++u) block[u * p.mul2 + v] += s.gwv[u];
          } else {
            for (int64_t u = 0; u < p.mul1; ++u) block[u * p.mul2 + v] = s.gwv[u];
          }
        } else {
          T* z = s.z + v * p.d3 * ld;
          std::fill(z, z + p.d3 * ld, T(0));
          gemm(p.d3, p.d1, A, TE, int64_t(p.d3) * TE, xc, z, ld);
        }
      }
      if (p.mode == tp::kUVW) uvw_weight_grad(p, s.z, ld, gc, ob.ld, block, accumulate);
      finish_weights(p, io, store, s, e);
    }
  }
}

// gw = dF/dw^T g (or gw += it, see WeightStore).
template <typename T>
void vjp_w_tile(const Program<T>& prog, const TileIO<T>& io, WeightStore store, TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  load_x1(prog, io, s.x1c);
  load_x2(io, s.x2t);
  start_weights(prog, io, store);
  if (prog.by_element) return vjp_by_element(prog, io, store, s, false, true);
  for (size_t b = 0; b < prog.out_blocks.size(); ++b) {
    project_group(prog, b, s.x2t, s.A);
    const bool done = run_direct(prog, io, b, true, [&](auto d3, const tp::Path<T>& p, const Block& xb, int64_t e) {
      if (!p.has_weight) return;  // vjp_w's programs keep weighted paths only
      const auto [g, g_ld] = direct_g(prog, io, b, e);
      direct::vjp_w<T, decltype(d3)::value>(p.d1, p.mul1, s.A + e, x1_channel_major(prog, io, s.x1c, e) + xb.slot,
                                            xb.ld, g, g_ld, io.out[e] + p.weight_offset, store == WeightStore::kAdd,
                                            store == WeightStore::kStream);
    });
    if (!done) vjp_w_block(prog, io, store, s, b);
  }
}

// vjp_x1 and vjp_w of one tile together, for programs whose paths all have weights (then one
// program serves both): each block's CG projection is made once, and a direct block contracts it
// with g once, t[i][u] = sum_k A[i][k] g[u][k], for both gradients (direct::vjp_x1_w). io_x1 and
// io_w: the tile with each gradient's output rows; s from TPScratch(prog, kVjpX1, dim2, true).
template <typename T>
void vjp_x1_w_tile(const Program<T>& prog, const TileIO<T>& io_x1, const TileIO<T>& io_w, WeightStore store,
                   TPScratch<T>& s) {
  constexpr int TE = kLanes<T>;
  std::fill(s.gx1c, s.gx1c + io_x1.count * prog.x1_scratch, T(0));
  load_x1(prog, io_w, s.x1c);
  load_x2(io_w, s.x2t);
  start_weights(prog, io_w, store);
  if (prog.by_element) return vjp_by_element(prog, io_w, store, s, true, true);
  for (size_t b = 0; b < prog.out_blocks.size(); ++b) {
    project_group(prog, b, s.x2t, s.A);
    const bool done = run_direct(prog, io_w, b, true, [&](auto d3, const tp::Path<T>& p, const Block& xb, int64_t e) {
      const auto [g, g_ld] = direct_g(prog, io_w, b, e);
      direct::vjp_x1_w<T, decltype(d3)::value>(p.d1, p.mul1, s.A + e, g, g_ld, path_weights(p, io_w, e),
                                               s.gx1c + e * prog.x1_scratch + xb.slot,
                                               x1_channel_major(prog, io_w, s.x1c, e) + xb.slot, xb.ld,
                                               io_w.out[e] + p.weight_offset, store == WeightStore::kAdd,
                                               store == WeightStore::kStream);
    });
    if (done) continue;
    vjp_x1_block(prog, io_x1, s, b);
    vjp_w_block(prog, io_w, store, s, b);
  }
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------
inline void check_io(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors,
              const at::Tensor& out) {
  const auto dtype = out.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": the cpu backend computes in float32 or float64, got ",
              dtype);
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t->device());
    TORCH_CHECK(t->scalar_type() == dtype, op, ": ", name, " has dtype ", t->scalar_type(), ", expected ", dtype);
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous(), op, ": out must be a contiguous CPU tensor");
}

// ---------------------------------------------------------------------------------------------
// Per-element driver: every element's output is its own row (or, for shared weight gradients, a
// fixed-order sum over fixed blocks of elements: the same bits for any thread count).
// ---------------------------------------------------------------------------------------------
template <typename T>
struct ElementOperands {
  Rows<const T> x1, x2, g, w;
  bool x1_channel_major = false, g_channel_major = false;  // see TileIO
};

// Tiles per parallel task: enough that a task moves at least ~256 KiB (row = one element's numbers).
template <typename T>
int64_t tile_grain(int64_t row) {
  const int64_t tile_bytes = int64_t(sizeof(T)) * kLanes<T> * row;
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(tile_bytes, 1));
}

template <typename T>
TileIO<T> tile_at(const ElementOperands<T>& in, int64_t e0, int64_t count, const Rows<T>& out_rows, int64_t dim1,
                  int64_t dim2, int64_t dim_out) {
  TileIO<T> io(e0, count, in.x1, in.x2, in.g, in.w, out_rows, dim1, dim2, dim_out);
  io.x1_channel_major = in.x1_channel_major;
  io.g_channel_major = in.g_channel_major;
  return io;
}

// Asks for the rows the tile after the one at e0 will read while this one computes; returns what
// is left of the budget. Gathered rows (the convolution's x at senders, g at receivers) are
// scattered in memory, so each is fetched on its own. Per-element weights, g rows and x1 rows are
// read block by block, a few hundred bytes of each of the tile's rows in turn, which the hardware
// prefetcher does not follow: the next tile's rows of each are one contiguous range, asked for in
// one sweep (measured: forward and vjp kernels 1.2-1.5x faster on nequip, mace-medium and
// fully-connected at E = 1,000). At most half of L2: the other half holds the tile being computed
// (nequip's backward kernels read 615 KB a tile, and asking for all of the next one evicted the
// current one's rows before use: 10-15 % slower). weights, g_rows: whether the sweep asks for those
// rows at all (not where the kernels ask for them block by block: blocks_ask_ahead).
template <typename T>
int64_t prefetch_next_tile(const ElementOperands<T>& in, int64_t e0, int64_t batch, bool weights, bool g_rows,
                           PacedPrefetch* paced = nullptr) {
  constexpr int TE = kLanes<T>;
  for (const Rows<const T>* rows : {&in.x1, &in.g}) {
    if (rows->index == nullptr || rows->base == nullptr) continue;
    for (int64_t e = e0 + TE; e < std::min(e0 + 2 * TE, batch); ++e)
      if (rows->index[e] != rows->index[e - 1]) prefetch_bytes(rows->row(e), rows->stride * int64_t(sizeof(T)));
  }
  const int64_t next = std::min(e0 + 2 * TE, batch) - e0 - TE;  // elements of the next tile
  int64_t budget = l2_cache_bytes() / 2;
  for (const Rows<const T>* rows : {&in.w, &in.g, &in.x1}) {
    if ((rows == &in.w && !weights) || (rows == &in.g && !g_rows)) continue;
    if (rows->index != nullptr || rows->base == nullptr || rows->stride == 0 || next <= 0) continue;
    const int64_t bytes = next * rows->stride * int64_t(sizeof(T));
    if (bytes > budget) continue;
    if (paced != nullptr) {
      paced->add(rows->row(e0 + TE), bytes);
    } else {
      prefetch_bytes(rows->row(e0 + TE), bytes);
    }
    budget -= bytes;
  }
  return budget;
}

// Whether run_direct asks for each element's next block of g and of weights while a block computes,
// for every block this kernel runs: every block direct, and (vjp_x2) none taken across the tile
// (vjp_x2_across reads a block of all the tile's rows at once). Then the tile sweep leaves those
// rows out: asked for twice, they took L2 from the tile being computed (E = 10,000, builds
// alternated: vjp_x1 and vjp_w fused, mace-medium 17.2-18.0 -> 14.9-16.2 ms, nequip 25.7-29.9 ->
// 23.6-24.9; vjp_x2 15.9-16.2 -> 14.4-15.5 and 24.4-26.3 -> 21.4-22.6).
template <typename T>
bool blocks_ask_ahead(const Program<T>& prog, Kernel kernel) {
  if (!prog.all_direct) return false;
  for (size_t b = 0; kernel == Kernel::kVjpX2 && b < prog.out_blocks.size(); ++b)
    if (runs_across(prog, b)) return false;
  return true;
}

// The next tile's rows of a per-element output, with write intent (its blocks are stored a few
// hundred bytes per row in turn, as the inputs are read), if they fit in what is left of the
// budget; returns what is left then.
template <typename T>
int64_t prefetch_next_output(const Rows<T>& out, int64_t e0, int64_t batch, int64_t budget) {
  constexpr int TE = kLanes<T>;
  const int64_t next = std::min(e0 + 2 * TE, batch) - e0 - TE;
  const int64_t bytes = next * out.stride * int64_t(sizeof(T));
  if (out.stride == 0 || next <= 0 || bytes > budget) return budget;
  prefetch_bytes_for_write(out.row(e0 + TE), bytes);
  return budget - bytes;
}

// The tile's x1 gradients from s.gx1c into io.out's rows (streamed through x1_row, dim1 numbers of
// L1 scratch, with `stream`).
template <typename T>
void store_x1_gradients(const Program<T>& prog, const TileIO<T>& io, const TPScratch<T>& s, bool stream, T* x1_row) {
  for (int64_t e = 0; e < io.count; ++e) {
    if (stream) {
      store_x1_row(prog, s.gx1c + e * prog.x1_scratch, x1_row);
      copy_out(x1_row, io.dim1, io.out[e], true);
    } else {
      store_x1_row(prog, s.gx1c + e * prog.x1_scratch, io.out[e]);
    }
  }
}

// One kernel on one tile, into io.out's rows. x1_row: dim1 numbers of L1 scratch, for streamed
// x1 gradients.
template <typename T>
void run_tile(Kernel kernel, const Program<T>& prog, const TileIO<T>& io, TPScratch<T>& s, bool stream, T* x1_row) {
  switch (kernel) {
    case Kernel::kForward: {
      for (int64_t e = 0; e < io.count; ++e) fill_gaps(prog.out_gaps, io.out[e]);
      StoreRows<T> sink{prog, io, s.outc, stream};
      forward_tile(prog, io, s, sink);
      break;
    }
    case Kernel::kVjpX1:
      vjp_x1_tile(prog, io, s);
      store_x1_gradients(prog, io, s, stream, x1_row);
      break;
    case Kernel::kVjpX2: vjp_x2_tile(prog, io, s); break;
    case Kernel::kVjpW: vjp_w_tile(prog, io, stream ? WeightStore::kStream : WeightStore::kWrite, s); break;
  }
}

// Outputs from a core's L2 size on are written by streaming stores. A plain store would first read
// each line from memory: the pool's buffers are cold when they are reused, and even a consumer that
// reads the gradients right after was faster so (bench/NOTES.md, version 11). This covers
// per-element weight gradients (mace-medium: 5 MB at E = 1,000), x1 gradients and the forward's
// direct blocks; vjp_x2's output (dim2 numbers per element) is written row by row.
constexpr int64_t kStreamTensorProductBytes = int64_t(1) << 20;

template <typename T>
bool streams_output(Kernel kernel, const at::Tensor& out) {
  return kernel != Kernel::kVjpX2 && out.numel() * int64_t(sizeof(T)) >= kStreamTensorProductBytes;
}

// A shared weights' gradient: each fixed block of elements adds its tiles' gradients, in order, to
// its own partial row; then the rows are summed in block order (the same bits for any thread count).
template <typename T>
struct WeightGradientBlocks {
  int64_t size, count, numel;  // elements per block (a multiple of the tile), blocks, weights
  std::vector<T> partial;
  WeightGradientBlocks(int64_t batch, int64_t weight_numel)
      : size(round_up(std::max<int64_t>(64, (batch + 255) / 256), kLanes<T>)),
        count((batch + size - 1) / size),
        numel(weight_numel),
        partial(static_cast<size_t>(std::max<int64_t>(count, 1) * weight_numel), T(0)) {}
  Rows<T> rows(int64_t block) { return Rows<T>{partial.data() + block * numel, 0, nullptr}; }
  void sum_into(T* out) const {
    at::parallel_for(0, numel, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        T sum = T(0);
        for (int64_t b = 0; b < count; ++b) sum += partial[b * numel + k];
        out[k] = sum;
      }
    });
  }
};

template <typename T>
void run_backward(const Program<T>& prog, const Program<T>& weight_prog, const ElementOperands<T>& in,
                  const at::Tensor& gx1, const at::Tensor& gx2, const at::Tensor& gw, int64_t batch, int64_t dim1,
                  int64_t dim2, int64_t dim_out, int64_t weight_numel);

template <typename T>
void run_elements(Kernel kernel, const Program<T>& prog, const ElementOperands<T>& in, const at::Tensor& out,
                  int64_t batch, int64_t dim1, int64_t dim2, int64_t dim_out, int64_t weight_numel, bool shared) {
  constexpr int TE = kLanes<T>;
  T* po = out.data_ptr<T>();
  advise_huge_pages(po, static_cast<size_t>(out.numel()) * sizeof(T));
  const int64_t wstride = shared ? 0 : weight_numel;
  const int64_t out_stride = out.dim() == 2 ? out.size(1) : 0;

  if (kernel == Kernel::kVjpW && shared) {  // summed over fixed blocks of elements: run_backward does that
    run_backward(prog, prog, in, at::Tensor(), at::Tensor(), out, batch, dim1, dim2, dim_out, weight_numel);
    return;
  }

  // Tiles of TE elements; enough tiles per task that a task moves at least ~256 KiB.
  const int64_t tiles = (batch + TE - 1) / TE;
  const int64_t grain = tile_grain<T>(dim1 + dim2 + dim_out + wstride);
  const Rows<T> out_rows{po, out_stride, nullptr};
  const bool stream = streams_output<T>(kernel, out);
  // The forward and the weight gradient ask for the next tile's inputs a few lines per output
  // block instead of in one burst (nequip's forward at E = 10,000: 13.7 -> 12.4 ms, vjp_w 21 ->
  // 19). vjp_x1 and vjp_x2 were ~0.5-1 ms slower so, and keep the burst; so do programs with
  // blocks that are not direct (nothing would step the pacing: fully-connected's forward got the
  // whole next tile asked for at the end of the current one, 15 -> 22 ms).
  const bool pace = prog.all_direct && (kernel == Kernel::kForward || kernel == Kernel::kVjpW);
  const bool sweep_weights = !prog.by_element && !prog.weights_by_block;
  const bool sweep_g = !blocks_ask_ahead(prog, kernel);
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    TPScratch<T> s(prog, kernel, dim2);
    AlignedBuffer<T> x1_row;  // a streamed x1 gradient's row, assembled in L1
    if (stream && kernel == Kernel::kVjpX1) x1_row.allocate(dim1);
    PacedPrefetch paced;
    const PacingScope pacing(pace ? &paced : nullptr);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t e0 = t * TE, count = std::min<int64_t>(TE, batch - e0);
      paced.reset();
      const int64_t budget = prefetch_next_tile(in, e0, batch, sweep_weights, sweep_g, paced_prefetch);
      paced.plan(int64_t(prog.out_blocks.size()));
      if (!stream) prefetch_next_output(out_rows, e0, batch, budget);
      run_tile(kernel, prog, tile_at(in, e0, count, out_rows, dim1, dim2, dim_out), s, stream, x1_row.data());
      paced.drain();
    }
    if (stream) stream_fence();
  });
}

// The three gradients of a forward in one pass over the batch: gx1 = vjp_x1(g, x2, w), gx2 =
// vjp_x2(x1, g, w), gw = vjp_w(x1, x2, g), each written where its output is defined (two or three
// of them). Each tile runs the wanted kernels one after the other, so its g, x1, x2 and w (nequip:
// 16 x 39 KB) come from memory once and from L2 for the second and third kernel; run one by one,
// every kernel reads them from memory (nequip's three at E = 1,000: 13.8 -> 10.6 ms).
// Where every path is weighted (prog is weight_prog), vjp_x1 and vjp_w run as one tile function
// that contracts each block with g once for both (vjp_x1_w_tile; nequip's two at E = 1,000:
// 6.3 -> 4.8 ms). prog: the program of the x1 and x2 gradients; weight_prog: the weighted paths'
// (vjp_w's). gw: [batch, weight_numel], or [weight_numel] for shared weights, summed over
// WeightGradientBlocks (run_elements sends a shared weights' vjp_w here too).
template <typename T>
void run_backward(const Program<T>& prog, const Program<T>& weight_prog, const ElementOperands<T>& in,
                  const at::Tensor& gx1, const at::Tensor& gx2, const at::Tensor& gw, int64_t batch, int64_t dim1,
                  int64_t dim2, int64_t dim_out, int64_t weight_numel) {
  constexpr int TE = kLanes<T>;
  struct Output {
    Kernel kernel;
    const Program<T>* prog;
    Rows<T> rows;
    bool stream;
  };
  // vjp_x1 and vjp_w in one tile function where one program serves both (every path weighted).
  const bool x1_with_w = gx1.defined() && gw.defined() && &prog == &weight_prog;
  std::vector<Output> outputs;
  for (auto [kernel, program, t] : {std::tuple{Kernel::kVjpX1, &prog, &gx1}, std::tuple{Kernel::kVjpX2, &prog, &gx2},
                                    std::tuple{Kernel::kVjpW, &weight_prog, &gw}}) {
    if (!t->defined()) continue;
    advise_huge_pages(t->template data_ptr<T>(), static_cast<size_t>(t->numel()) * sizeof(T));
    outputs.push_back({kernel, program, Rows<T>{t->template data_ptr<T>(), t->dim() == 2 ? t->size(1) : 0, nullptr},
                       streams_output<T>(kernel, *t)});
  }
  const bool shared = gw.defined() && gw.dim() == 1;
  std::unique_ptr<WeightGradientBlocks<T>> blocks;
  if (shared) blocks = std::make_unique<WeightGradientBlocks<T>>(batch, weight_numel);
  // Parallel over tiles, or over the shared gradient's blocks of tiles.
  const int64_t tiles = (batch + TE - 1) / TE, tiles_per_unit = shared ? blocks->size / TE : 1;
  const int64_t units = (tiles + tiles_per_unit - 1) / tiles_per_unit;
  const int64_t grain = shared ? 1 : tile_grain<T>(dim1 + dim2 + dim_out + weight_numel);
  // The sweep leaves g and w to run_direct where every wanted kernel's blocks ask for them ahead.
  bool ahead = true;
  for (const Output& o : outputs) ahead = ahead && blocks_ask_ahead(*o.prog, o.kernel);
  const bool sweep_weights = !(prog.by_element && weight_prog.by_element) && !ahead;
  // vjp_w writes each element's row, or adds to its block's partial row (shared weights).
  const WeightStore weight_store = shared                                 ? WeightStore::kAdd
                                   : gw.defined() && outputs.back().stream ? WeightStore::kStream
                                                                           : WeightStore::kWrite;
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    std::vector<std::unique_ptr<TPScratch<T>>> scratch;
    for (const Output& o : outputs)
      scratch.push_back(o.kernel == Kernel::kVjpW && x1_with_w
                            ? nullptr
                            : std::make_unique<TPScratch<T>>(*o.prog, o.kernel, dim2, x1_with_w));
    AlignedBuffer<T> x1_row;
    x1_row.allocate(dim1);
    for (int64_t unit = begin; unit < end; ++unit) {
      const Rows<T> w_rows = shared ? blocks->rows(unit) : gw.defined() ? outputs.back().rows : Rows<T>{};
      for (int64_t t = unit * tiles_per_unit; t < std::min(tiles, (unit + 1) * tiles_per_unit); ++t) {
        const int64_t e0 = t * TE, count = std::min<int64_t>(TE, batch - e0);
        int64_t budget = prefetch_next_tile(in, e0, batch, sweep_weights, !ahead);
        for (const Output& o : outputs)  // without it, two gradients in one pass were slower than two kernels
          if (!o.stream) budget = prefetch_next_output(o.rows, e0, batch, budget);
        for (size_t n = 0; n < outputs.size(); ++n) {
          const Output& o = outputs[n];
          const TileIO<T> io = tile_at(in, e0, count, o.kernel == Kernel::kVjpW ? w_rows : o.rows, dim1, dim2, dim_out);
          if (o.kernel == Kernel::kVjpX1 && x1_with_w) {
            vjp_x1_w_tile(prog, io, tile_at(in, e0, count, w_rows, dim1, dim2, dim_out), weight_store, *scratch[n]);
            store_x1_gradients(prog, io, *scratch[n], o.stream, x1_row.data());
          } else if (o.kernel == Kernel::kVjpW) {
            if (!x1_with_w) vjp_w_tile(weight_prog, io, weight_store, *scratch[n]);  // else done with vjp_x1
          } else {
            run_tile(o.kernel, prog, io, *scratch[n], o.stream, x1_row.data());
          }
        }
      }
    }
    stream_fence();
  });
  if (shared) blocks->sum_into(gw.template data_ptr<T>());
}

}  // namespace nffk::cpu::tiles
