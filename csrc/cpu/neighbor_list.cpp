// CPU driver of the neighbour list: one cell list per system, OpenMP over fixed chunks of atoms.
//
// Phase A (per system): wrap atoms into the cell along periodic directions and counting-sort
// them into a grid of parallelepiped bins, each at least cutoff / kBinsPerCutoff thick along
// its face normal. Phase B (per receiver i): visit every bin within reach, each together with
// the integer image T it is seen through (a bin is visited once per distinct image, so a cell
// thinner than the cutoff gives many images); consecutive bins of a row with the same image
// are one contiguous range of atoms. Candidates closer than the cutoff are kept as 64-bit keys
// (sender, image), sorted per receiver. Phase C concatenates the chunks in order and writes
// senders, shifts S = T - wrap[j] + wrap[i], and distances/vectors from the original
// positions. Chunks have a fixed size and are concatenated in atom order, so the output does
// not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "nffk/neighbor_list.h"
#include "ops.h"

namespace nffk::cpu {
namespace {

constexpr int64_t kChunkAtoms = 64;   // receivers per work item (fixed: determinism)
constexpr double kBinsPerCutoff = 1;  // 2 tests fewer candidates but costs more per bin: slower here
constexpr double kMaxWrap = 1e9;      // atoms further than this many cells away are rejected
constexpr double kBinMargin = 1e-9;   // bins are this much (relative) thicker than needed

// The cell list of one system.
struct Grid {
  int64_t begin = 0, end = 0;  // its atoms
  double h[9] = {}, hinv[9] = {};
  bool periodic[3] = {false, false, false};
  int64_t nbins[3] = {1, 1, 1};
  int64_t reach[3] = {0, 0, 0};                    // stencil half-width, in bins
  double lo[3] = {0, 0, 0}, scale[3] = {0, 0, 0};  // bin coordinate = (s - lo) * scale
  std::vector<int64_t> bin_start;                  // CSR over bins, into this system's slots
  // Bin coordinate u in [-reach, nbins + reach) -> (bin, image): wrap[k][u + reach[k]].
  std::vector<int64_t> wrap_bin[3], wrap_image[3];
  // Neighbour key = (sender << 3 * image_bits) | packed (T + image_bias): sorting keys sorts
  // by (sender, image).
  int image_bits = 1;
  int64_t image_bias = 0;
};

enum Failure { kOk = 0, kSingular = 1, kTooFar = 2, kNoMemory = 3, kTooManyImages = 4 };

int bit_width(uint64_t x) {
  int bits = 0;
  while (x) { ++bits; x >>= 1; }
  return bits;
}

// Phase A for one system. Writes, for each of its atoms, the wrapped position, the wrap
// (r' = r - wrap @ H) and the bin coordinates; and the slots (atoms in bin order).
template <typename scalar_t>
int build_grid(Grid& g, const scalar_t* pos, double cutoff, double* wrapped, int32_t* wrap, int32_t* bin3,
               double* const xyz[3], int32_t* slot_atom) {
  const int64_t n = g.end - g.begin;
  if (!inverse3(g.h, g.hinv)) return kSingular;
  std::vector<double> frac(3 * n);
  double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int64_t a = 0; a < n; ++a) {
    const int64_t gi = g.begin + a;
    const double r[3] = {double(pos[3 * gi]), double(pos[3 * gi + 1]), double(pos[3 * gi + 2])};
    double s[3];
    fractional(r, g.hinv, s);
    for (int k = 0; k < 3; ++k) {
      int32_t w = 0;
      if (g.periodic[k]) {
        if (!(std::fabs(s[k]) < kMaxWrap)) return kTooFar;
        const double f = std::floor(s[k]);
        w = int32_t(f);
        s[k] -= f;
      }
      wrap[3 * gi + k] = w;
      frac[3 * a + k] = s[k];
      lo[k] = std::min(lo[k], s[k]);
      hi[k] = std::max(hi[k], s[k]);
    }
    const int32_t* w = wrap + 3 * gi;
    for (int c = 0; c < 3; ++c) wrapped[3 * gi + c] = r[c] - (w[0] * g.h[c] + w[1] * g.h[3 + c] + w[2] * g.h[6 + c]);
  }

  // A pair within the cutoff differs by less than thickness = cutoff * |dual_k| in s_k.
  double thickness[3], length[3], nb[3];
  const double max_bins = std::max<double>(8.0, 2.0 * double(n));
  for (int k = 0; k < 3; ++k) {
    const double dual = std::sqrt(g.hinv[k] * g.hinv[k] + g.hinv[3 + k] * g.hinv[3 + k] + g.hinv[6 + k] * g.hinv[6 + k]);
    thickness[k] = cutoff * dual;
    length[k] = g.periodic[k] ? 1.0 : hi[k] - lo[k];
    const double count = std::floor(length[k] * kBinsPerCutoff / (thickness[k] * (1.0 + kBinMargin)));
    nb[k] = count >= 1.0 ? std::min(count, max_bins) : 1.0;  // NaN -> 1
  }
  // Few atoms spread far apart (or a tiny cutoff): coarser bins, never more than ~2 per atom.
  while (nb[0] * nb[1] * nb[2] > max_bins) {
    const int k = (nb[0] >= nb[1] && nb[0] >= nb[2]) ? 0 : (nb[1] >= nb[2] ? 1 : 2);
    nb[k] = std::max(1.0, std::floor(nb[k] / 2));
  }
  int64_t max_image = 0;
  for (int k = 0; k < 3; ++k) {
    g.nbins[k] = int64_t(nb[k]);
    g.lo[k] = g.periodic[k] ? 0.0 : lo[k];
    g.scale[k] = g.periodic[k] ? nb[k] : (length[k] > 0.0 && std::isfinite(length[k]) ? nb[k] / length[k] : 0.0);
    double reach = std::ceil(thickness[k] * g.scale[k] * (1.0 + 0.1 * kBinMargin));
    reach = reach >= 0.0 ? std::min(reach, 1e6) : 0.0;
    if (!g.periodic[k]) reach = std::min(reach, nb[k] - 1.0);  // no images: stay inside the grid
    g.reach[k] = int64_t(reach);
    const int64_t span = g.nbins[k] + 2 * g.reach[k];
    g.wrap_bin[k].resize(span);
    g.wrap_image[k].resize(span);
    for (int64_t q = 0; q < span; ++q) {
      const int64_t u = q - g.reach[k];
      const int64_t image = g.periodic[k] ? floor_div(u, g.nbins[k]) : 0;
      g.wrap_image[k][q] = image;
      g.wrap_bin[k][q] = u - image * g.nbins[k];
      max_image = std::max(max_image, image >= 0 ? image : -image);
    }
  }
  g.image_bias = max_image;
  g.image_bits = std::max(1, bit_width(uint64_t(2 * max_image)));
  if (bit_width(uint64_t(n)) + 3 * g.image_bits > 64) return kTooManyImages;

  const int64_t total_bins = g.nbins[0] * g.nbins[1] * g.nbins[2];
  g.bin_start.assign(total_bins + 1, 0);
  std::vector<int64_t> bin_of(n);
  for (int64_t a = 0; a < n; ++a) {
    const int64_t gi = g.begin + a;
    int64_t b[3];
    for (int k = 0; k < 3; ++k) {
      b[k] = clamp_bin((frac[3 * a + k] - g.lo[k]) * g.scale[k], g.nbins[k]);
      bin3[3 * gi + k] = int32_t(b[k]);
    }
    bin_of[a] = (b[0] * g.nbins[1] + b[1]) * g.nbins[2] + b[2];
    ++g.bin_start[bin_of[a] + 1];
  }
  for (int64_t b = 0; b < total_bins; ++b) g.bin_start[b + 1] += g.bin_start[b];
  std::vector<int64_t> fill(g.bin_start.begin(), g.bin_start.end() - 1);
  for (int64_t a = 0; a < n; ++a) {  // stable: atoms stay in index order within a bin
    const int64_t slot = g.begin + fill[bin_of[a]]++;
    for (int c = 0; c < 3; ++c) xyz[c][slot] = wrapped[3 * (g.begin + a) + c];
    slot_atom[slot] = int32_t(a);
  }
  return kOk;
}

// Phase B for receiver `a` (index within its system): appends its neighbour keys, sorted, to
// `out`. Slot positions are separate x, y, z arrays so that the distance loop vectorises.
void search_atom(const Grid& g, const double* const xyz[3], const int32_t* slot_atom, const double* wrapped,
                 const int32_t* bin3, int64_t a, double cutoff_sq, bool self_interaction, std::vector<uint64_t>& scratch,
                 std::vector<uint64_t>& out) {
  constexpr int64_t kBlock = 64;
  const int64_t gi = g.begin + a;
  const double* ri = wrapped + 3 * gi;
  const double* xs = xyz[0] + g.begin;
  const double* ys = xyz[1] + g.begin;
  const double* zs = xyz[2] + g.begin;
  const int32_t* atoms = slot_atom + g.begin;
  const int bits = g.image_bits, shift = 3 * g.image_bits;
  const int64_t b0 = bin3[3 * gi], b1 = bin3[3 * gi + 1], b2 = bin3[3 * gi + 2];
  // Non-periodic axes: stay inside the grid; periodic axes: the wrap tables cover the reach.
  const int64_t lo2 = g.periodic[2] ? b2 - g.reach[2] : std::max<int64_t>(0, b2 - g.reach[2]);
  const int64_t hi2 = g.periodic[2] ? b2 + g.reach[2] : std::min(g.nbins[2] - 1, b2 + g.reach[2]);
  size_t found = 0;
  for (int64_t u0 = b0 - g.reach[0]; u0 <= b0 + g.reach[0]; ++u0) {
    if (!g.periodic[0] && (u0 < 0 || u0 >= g.nbins[0])) continue;
    const int64_t c0 = g.wrap_bin[0][u0 + g.reach[0]], t0 = g.wrap_image[0][u0 + g.reach[0]];
    for (int64_t u1 = b1 - g.reach[1]; u1 <= b1 + g.reach[1]; ++u1) {
      if (!g.periodic[1] && (u1 < 0 || u1 >= g.nbins[1])) continue;
      const int64_t c1 = g.wrap_bin[1][u1 + g.reach[1]], t1 = g.wrap_image[1][u1 + g.reach[1]];
      const int64_t row = (c0 * g.nbins[1] + c1) * g.nbins[2];
      // Runs of consecutive bins along axis 2 seen through the same image.
      for (int64_t u2 = lo2; u2 <= hi2;) {
        const int64_t c2 = g.wrap_bin[2][u2 + g.reach[2]], t2 = g.wrap_image[2][u2 + g.reach[2]];
        const int64_t run = std::min(hi2 - u2, g.nbins[2] - 1 - c2);  // bins after the first
        const int64_t begin = g.bin_start[row + c2], end = g.bin_start[row + c2 + run + 1];
        u2 += run + 1;
        if (begin == end) continue;
        double delta[3];
        for (int c = 0; c < 3; ++c) delta[c] = t0 * g.h[c] + t1 * g.h[3 + c] + t2 * g.h[6 + c] - ri[c];
        if (scratch.size() < found + size_t(end - begin)) scratch.resize(2 * (found + size_t(end - begin)));
        uint64_t* key = scratch.data();
        const uint64_t image = (uint64_t(t0 + g.image_bias) << (2 * bits)) | (uint64_t(t1 + g.image_bias) << bits) |
                               uint64_t(t2 + g.image_bias);
        const size_t first = found;
        for (int64_t p0 = begin; p0 < end; p0 += kBlock) {
          const int64_t len = std::min(kBlock, end - p0);
          uint64_t kept = 0;  // bit q: candidate p0 + q is within the cutoff
          for (int64_t q = 0; q < len; ++q) {
            const double x = xs[p0 + q] + delta[0], y = ys[p0 + q] + delta[1], z = zs[p0 + q] + delta[2];
            kept |= uint64_t(x * x + y * y + z * z < cutoff_sq) << q;
          }
          for (; kept; kept &= kept - 1)  // visit only the kept ones
            key[found++] = (uint64_t(atoms[p0 + __builtin_ctzll(kept)]) << shift) | image;
        }
        // The receiver is not its own neighbour through image 0 (it is at distance 0).
        if (!self_interaction && (t0 | t1 | t2) == 0 && c0 == b0 && c1 == b1 && c2 <= b2 && b2 <= c2 + run) {
          const uint64_t own = (uint64_t(a) << shift) | image;
          for (size_t q = first; q < found; ++q)
            if (key[q] == own) {
              std::copy(key + q + 1, key + found, key + q);
              --found;
              break;
            }
        }
      }
    }
  }
  std::sort(scratch.begin(), scratch.begin() + found);
  out.insert(out.end(), scratch.begin(), scratch.begin() + found);
}

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename scalar_t>
Result run(const at::Tensor& positions, const int64_t* system_ptr, int64_t num_systems, const double* cells,
           const bool* pbc, double cutoff, bool self_interaction, bool want_distances, bool want_vectors) {
  const scalar_t* pos = positions.data_ptr<scalar_t>();
  const int64_t num_atoms = positions.size(0);

  // Phase A: one grid per system.
  std::vector<Grid> grids(num_systems);
  std::vector<double> wrapped(3 * num_atoms);
  std::vector<int32_t> wrap(3 * num_atoms), bin3(3 * num_atoms);
  std::vector<double> slot_x(num_atoms), slot_y(num_atoms), slot_z(num_atoms);
  std::vector<int32_t> slot_atom(num_atoms);
  double* const xyz[3] = {slot_x.data(), slot_y.data(), slot_z.data()};
  int failure = kOk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < num_systems; ++s) {
    Grid& g = grids[s];
    g.begin = system_ptr[s];
    g.end = system_ptr[s + 1];
    std::memcpy(g.h, cells + 9 * s, sizeof(g.h));
    for (int k = 0; k < 3; ++k) g.periodic[k] = pbc[3 * s + k];
    if (g.begin == g.end) continue;
    int status;
    try {
      status = build_grid(g, pos, cutoff, wrapped.data(), wrap.data(), bin3.data(), xyz, slot_atom.data());
    } catch (...) {  // exceptions must not leave an OpenMP region
      status = kNoMemory;
    }
    if (status != kOk) {
#pragma omp critical(nffk_neighbor_list_failure)
      failure = std::max(failure, status);
    }
  }
  TORCH_CHECK_VALUE(failure != kSingular, "neighbor_list: a cell is singular");
  TORCH_CHECK_VALUE(failure != kTooFar, "neighbor_list: an atom lies more than ", kMaxWrap,
                    " cell lengths outside its cell along a periodic direction");
  TORCH_CHECK_VALUE(failure != kTooManyImages, "neighbor_list: too many periodic images (a cell is many thousand "
                    "times thinner than the cutoff)");
  TORCH_CHECK(failure != kNoMemory, "neighbor_list: out of memory while binning atoms");

  // Work items: fixed-size chunks of receivers that never straddle two systems.
  struct Chunk {
    int64_t system, begin, end;
  };
  std::vector<Chunk> chunks;
  for (int64_t s = 0; s < num_systems; ++s)
    for (int64_t a = grids[s].begin; a < grids[s].end; a += kChunkAtoms)
      chunks.push_back({s, a, std::min(a + kChunkAtoms, grids[s].end)});
  const int64_t num_chunks = int64_t(chunks.size());

  // Phase B: neighbour keys of each chunk's receivers, in order.
  std::vector<std::vector<uint64_t>> found(num_chunks);
  std::vector<int64_t> counts(num_atoms);
  const double cutoff_sq = cutoff * cutoff;
  bool out_of_memory = false;
#pragma omp parallel
  {
    std::vector<uint64_t> scratch(1024);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < num_chunks; ++c) {
      const Chunk& chunk = chunks[c];
      const Grid& g = grids[chunk.system];
      try {
        for (int64_t gi = chunk.begin; gi < chunk.end; ++gi) {
          const size_t before = found[c].size();
          search_atom(g, xyz, slot_atom.data(), wrapped.data(), bin3.data(), gi - g.begin, cutoff_sq, self_interaction,
                      scratch, found[c]);
          counts[gi] = int64_t(found[c].size() - before);
        }
      } catch (...) {
#pragma omp critical(nffk_neighbor_list_failure)
        out_of_memory = true;
      }
    }
  }
  TORCH_CHECK(!out_of_memory, "neighbor_list: out of memory while searching neighbours");

  // Phase C: concatenate in chunk order.
  std::vector<int64_t> chunk_offset(num_chunks + 1, 0);
  for (int64_t c = 0; c < num_chunks; ++c) chunk_offset[c + 1] = chunk_offset[c] + int64_t(found[c].size());
  const int64_t num_pairs = chunk_offset[num_chunks];
  const auto long_options = positions.options().dtype(at::kLong);
  at::Tensor senders = at::empty({num_pairs}, long_options);
  at::Tensor receivers = at::empty({num_pairs}, long_options);
  at::Tensor shifts = at::empty({num_pairs, 3}, long_options);
  at::Tensor ptr = at::empty({num_atoms + 1}, long_options);
  at::Tensor distances = at::empty({want_distances ? num_pairs : 0}, positions.options());
  at::Tensor vectors = at::empty({want_vectors ? num_pairs : 0, 3}, positions.options());
  int64_t* out_senders = senders.data_ptr<int64_t>();
  int64_t* out_receivers = receivers.data_ptr<int64_t>();
  int64_t* out_shifts = shifts.data_ptr<int64_t>();
  int64_t* out_ptr = ptr.data_ptr<int64_t>();
  scalar_t* out_distances = want_distances ? distances.data_ptr<scalar_t>() : nullptr;
  scalar_t* out_vectors = want_vectors ? vectors.data_ptr<scalar_t>() : nullptr;
  out_ptr[0] = 0;
  // Every atom belongs to exactly one chunk (empty systems have no atoms), so ptr is complete.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const Chunk& chunk = chunks[c];
    const Grid& g = grids[chunk.system];
    const int bits = g.image_bits, shift = 3 * g.image_bits;
    const uint64_t mask = (uint64_t(1) << bits) - 1;
    int64_t e = chunk_offset[c];
    const uint64_t* key = found[c].data();
    for (int64_t gi = chunk.begin; gi < chunk.end; ++gi) {
      const int32_t* wi = wrap.data() + 3 * gi;
      const int64_t stop = e + counts[gi];
      for (; e < stop; ++e, ++key) {
        const int64_t gj = g.begin + int64_t(*key >> shift);
        const int32_t* wj = wrap.data() + 3 * gj;
        int64_t s[3];
        for (int k = 0; k < 3; ++k)
          s[k] = int64_t((*key >> ((2 - k) * bits)) & mask) - g.image_bias - wj[k] + wi[k];
        out_senders[e] = gj;
        out_receivers[e] = gi;
        out_shifts[3 * e] = s[0];
        out_shifts[3 * e + 1] = s[1];
        out_shifts[3 * e + 2] = s[2];
        if (want_distances || want_vectors) {
          double v[3];
          for (int d = 0; d < 3; ++d)
            v[d] = (double(pos[3 * gj + d]) - double(pos[3 * gi + d])) + (s[0] * g.h[d] + s[1] * g.h[3 + d] + s[2] * g.h[6 + d]);
          if (want_distances) out_distances[e] = scalar_t(std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]));
          if (want_vectors)
            for (int d = 0; d < 3; ++d) out_vectors[3 * e + d] = scalar_t(v[d]);
        }
      }
      out_ptr[gi + 1] = e;
    }
  }
  return {senders, receivers, shifts, ptr, distances, vectors};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_list(
    const at::Tensor& positions, const at::Tensor& system_ptr, const at::Tensor& cells, const at::Tensor& pbc,
    double cutoff, bool self_interaction, bool distances, bool vectors) {
  TORCH_CHECK_VALUE(positions.dim() == 2 && positions.size(1) == 3, "neighbor_list: positions must be [num_atoms, 3]");
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
                    "neighbor_list: positions must be float32 or float64");
  TORCH_CHECK_VALUE(positions.size(0) < (int64_t(1) << 31), "neighbor_list: at most 2**31 - 1 atoms");
  TORCH_CHECK_VALUE(system_ptr.dim() == 1 && system_ptr.scalar_type() == at::kLong && system_ptr.size(0) >= 1,
                    "neighbor_list: system_ptr must be a non-empty 1-D int64 tensor");
  const int64_t num_systems = system_ptr.size(0) - 1;
  TORCH_CHECK_VALUE(cells.dim() == 3 && cells.size(0) == num_systems && cells.size(1) == 3 && cells.size(2) == 3 &&
                        cells.scalar_type() == at::kDouble,
                    "neighbor_list: cells must be float64 [num_systems, 3, 3]");
  TORCH_CHECK_VALUE(pbc.dim() == 2 && pbc.size(0) == num_systems && pbc.size(1) == 3 && pbc.scalar_type() == at::kBool,
                    "neighbor_list: pbc must be bool [num_systems, 3]");
  TORCH_CHECK_VALUE(std::isfinite(cutoff) && cutoff > 0, "neighbor_list: cutoff must be finite and > 0");
  const auto x = positions.contiguous();
  const auto sp = system_ptr.contiguous();
  const auto h = cells.contiguous();
  const auto p = pbc.contiguous();
  const int64_t* ptr = sp.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[num_systems] == x.size(0),
                    "neighbor_list: system_ptr must run from 0 to num_atoms=", x.size(0));
  for (int64_t s = 0; s < num_systems; ++s)
    TORCH_CHECK_VALUE(ptr[s] <= ptr[s + 1], "neighbor_list: system_ptr must be non-decreasing");
  Result result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nffk_neighbor_list", [&] {
    result = run<scalar_t>(x, ptr, num_systems, h.data_ptr<double>(), p.data_ptr<bool>(), cutoff, self_interaction,
                           distances, vectors);
  });
  return result;
}

}  // namespace nffk::cpu
