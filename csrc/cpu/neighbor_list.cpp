// CPU driver of the neighbour list: one cell list per system, OpenMP over fixed chunks of atoms.
//
// Phase A (per system): wrap atoms into the cell along periodic directions and counting-sort
// them into a grid of parallelepiped bins, each at least one cutoff thick along its face
// normal. Phase B (per receiver i): visit every bin within reach, each together with the
// integer image T it is seen through (a bin is visited once per distinct image, so a cell
// thinner than the cutoff gives many images); consecutive bins of a row with the same image
// are one contiguous range of atoms. B1 keeps the candidates closer than the cutoff as 64-bit
// keys (sender, image), sorted per receiver, in a per-thread scratch; their counts give the CSR
// pointer and outputs of exactly the right size. B2 decodes the keys into senders, shifts
// S = T - wrap[j] + wrap[i] and distances/vectors from the original positions. Every receiver's
// pairs depend on it alone and land in its own slice of the output, so the result does not
// depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define NFFK_NL_AVX512 1
#endif

#include "mapped_outputs.h"

#include "nffk/neighbor_list.h"
#include "ops.h"

namespace nffk::cpu {
namespace {

constexpr int64_t kChunkAtoms = 64;   // receivers per work item (granularity of the dynamic schedule)
constexpr double kBinsPerCutoff = 1;  // 2 tests fewer candidates but costs more per bin: slower here
constexpr double kMaxWrap = 1e9;      // atoms further than this many cells away are rejected
constexpr double kBinMargin = 1e-9;   // bins are this much (relative) thicker than needed
// Below about a millisecond of work a phase runs on one thread: waking the others costs more
// than it saves (and far more on a machine shared with other jobs).
constexpr int64_t kParallelBinning = 32768;        // atoms (binning: ~30 ns per atom)
constexpr double kParallelCandidates = 1 << 20;    // candidate pairs (searching: ~2-5 ns each)
// Keys (8 bytes per pair) a thread keeps in its scratch between calls: 16 MB (2M pairs).
constexpr size_t kKeepScratchKeys = size_t(1) << 21;

// The cell list of one system. Its arrays live in flat buffers shared by all systems (one
// allocation each, whatever the number of systems); the grid holds offsets into them.
struct Grid {
  int64_t begin = 0, end = 0;  // its atoms
  double h[9] = {}, hinv[9] = {};
  bool periodic[3] = {false, false, false};
  int64_t nbins[3] = {1, 1, 1};
  int64_t reach[3] = {0, 0, 0};                    // stencil half-width, in bins
  double lo[3] = {0, 0, 0}, scale[3] = {0, 0, 0};  // bin coordinate = (s - lo) * scale
  // Neighbour key = (sender << 3 * image_bits) | packed (T + image_bias): sorting keys sorts
  // by (sender, image).
  int image_bits = 1;
  int64_t image_bias = 0;
  int64_t bin_base = 0;                   // its bins: bin_start[bin_base + b], b <= total_bins()
  int64_t table_base[3] = {0, 0, 0};      // bin coordinate u in [-reach, nbins + reach) of axis k
                                          // -> (bin, image) at table[table_base[k] + u + reach[k]]
  int64_t total_bins() const { return nbins[0] * nbins[1] * nbins[2]; }
  int64_t table_size(int k) const { return nbins[k] + 2 * reach[k]; }
};

// Buffers shared by all systems.
struct Atoms {
  std::vector<double> wrapped, frac;  // [3N] wrapped Cartesian / fractional coordinates
  std::vector<int32_t> wrap, bin3;    // [3N] r' = r - wrap @ H; bin coordinates
  std::vector<double> slot_x, slot_y, slot_z;  // [N] wrapped positions in bin order
  std::vector<int32_t> slot_atom;              // [N] index within its system, in bin order
  std::vector<int64_t> bin_start, cursor;      // [sum of bins + 1 per system]
  std::vector<int32_t> table_bin, table_image;
};

enum Failure { kOk = 0, kSingular = 1, kTooFar = 2, kNoMemory = 3, kTooManyImages = 4 };

int bit_width(uint64_t x) {
  int bits = 0;
  while (x) { ++bits; x >>= 1; }
  return bits;
}

// Phase A1 for one system: fractional and wrapped coordinates of its atoms, and the shape of
// its grid (bins, reach, key packing).
template <typename scalar_t>
int shape_grid(Grid& g, const scalar_t* pos, double cutoff, Atoms& at) {
  const int64_t n = g.end - g.begin;
  if (!inverse3(g.h, g.hinv)) return kSingular;
  double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int64_t gi = g.begin; gi < g.end; ++gi) {
    const double r[3] = {double(pos[3 * gi]), double(pos[3 * gi + 1]), double(pos[3 * gi + 2])};
    double* s = at.frac.data() + 3 * gi;
    int32_t* w = at.wrap.data() + 3 * gi;
    fractional(r, g.hinv, s);
    for (int k = 0; k < 3; ++k) {
      w[k] = 0;
      if (g.periodic[k]) {
        if (!(std::fabs(s[k]) < kMaxWrap)) return kTooFar;
        const double f = std::floor(s[k]);
        w[k] = int32_t(f);
        s[k] -= f;
      }
      lo[k] = std::min(lo[k], s[k]);
      hi[k] = std::max(hi[k], s[k]);
    }
    for (int c = 0; c < 3; ++c)
      at.wrapped[3 * gi + c] = r[c] - (w[0] * g.h[c] + w[1] * g.h[3 + c] + w[2] * g.h[6 + c]);
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
    // Largest |image| on this axis: u / nbins for u in [-reach, nbins + reach).
    if (g.periodic[k]) max_image = std::max({max_image, -floor_div(-g.reach[k], g.nbins[k]),
                                              floor_div(g.nbins[k] - 1 + g.reach[k], g.nbins[k])});
  }
  g.image_bias = max_image;
  g.image_bits = std::max(1, bit_width(uint64_t(2 * max_image)));
  if (bit_width(uint64_t(n - 1)) + 3 * g.image_bits > 64) return kTooManyImages;
  return kOk;
}

// Phase A2 for one system: wrap tables, bin coordinates, counting sort of atoms into bins.
void fill_grid(const Grid& g, Atoms& at) {
  for (int k = 0; k < 3; ++k)
    for (int64_t q = 0; q < g.table_size(k); ++q) {
      const int64_t u = q - g.reach[k];
      const int64_t image = g.periodic[k] ? floor_div(u, g.nbins[k]) : 0;
      at.table_image[g.table_base[k] + q] = int32_t(image);
      at.table_bin[g.table_base[k] + q] = int32_t(u - image * g.nbins[k]);
    }
  int64_t* start = at.bin_start.data() + g.bin_base;
  int64_t* cursor = at.cursor.data() + g.bin_base;
  const int64_t total = g.total_bins();
  std::fill(start, start + total + 1, 0);
  auto bin_of = [&](int64_t gi) {
    const int32_t* b = at.bin3.data() + 3 * gi;
    return (int64_t(b[0]) * g.nbins[1] + b[1]) * g.nbins[2] + b[2];
  };
  for (int64_t gi = g.begin; gi < g.end; ++gi) {
    for (int k = 0; k < 3; ++k)
      at.bin3[3 * gi + k] = int32_t(clamp_bin((at.frac[3 * gi + k] - g.lo[k]) * g.scale[k], g.nbins[k]));
    ++start[bin_of(gi) + 1];
  }
  for (int64_t b = 0; b < total; ++b) start[b + 1] += start[b];
  std::copy(start, start + total, cursor);
  for (int64_t gi = g.begin; gi < g.end; ++gi) {  // stable: atoms stay in index order within a bin
    const int64_t slot = g.begin + cursor[bin_of(gi)]++;
    at.slot_x[slot] = at.wrapped[3 * gi];
    at.slot_y[slot] = at.wrapped[3 * gi + 1];
    at.slot_z[slot] = at.wrapped[3 * gi + 2];
    at.slot_atom[slot] = int32_t(gi - g.begin);
  }
}

// Phase B1 for receiver `a` (index within its system): writes its neighbours' keys (unsorted)
// to out[0:count] and returns count, or -1 if they do not fit in `capacity` (nothing is written
// beyond it). Slot positions are separate x, y, z arrays so that the distance loop vectorises.
int64_t search_atom(const Grid& g, const Atoms& at, int64_t a, double cutoff_sq, bool self_interaction,
                    uint64_t* out, int64_t capacity) {
  const int64_t gi = g.begin + a;
  const double* ri = at.wrapped.data() + 3 * gi;
  const double* xs = at.slot_x.data() + g.begin;
  const double* ys = at.slot_y.data() + g.begin;
  const double* zs = at.slot_z.data() + g.begin;
  const int32_t* atoms = at.slot_atom.data() + g.begin;
  const int64_t* bin_start = at.bin_start.data() + g.bin_base;
  const int32_t* bins[3];
  const int32_t* images[3];
  const int64_t b[3] = {at.bin3[3 * gi], at.bin3[3 * gi + 1], at.bin3[3 * gi + 2]};
  int64_t lo[3], hi[3];
  for (int k = 0; k < 3; ++k) {
    bins[k] = at.table_bin.data() + g.table_base[k] + g.reach[k];  // indexed by u in [-reach, nbins + reach)
    images[k] = at.table_image.data() + g.table_base[k] + g.reach[k];
    // Non-periodic axes stay inside the grid; on periodic ones the wrap tables cover the reach.
    lo[k] = g.periodic[k] ? b[k] - g.reach[k] : std::max<int64_t>(0, b[k] - g.reach[k]);
    hi[k] = g.periodic[k] ? b[k] + g.reach[k] : std::min(g.nbins[k] - 1, b[k] + g.reach[k]);
  }
  const int bits = g.image_bits, shift = 3 * g.image_bits;
  int64_t found = 0;
  for (int64_t u0 = lo[0]; u0 <= hi[0]; ++u0) {
    const int64_t c0 = bins[0][u0], t0 = images[0][u0];
    for (int64_t u1 = lo[1]; u1 <= hi[1]; ++u1) {
      const int64_t c1 = bins[1][u1], t1 = images[1][u1];
      const int64_t row = (c0 * g.nbins[1] + c1) * g.nbins[2];
      // Runs of consecutive bins along axis 2 seen through the same image.
      for (int64_t u2 = lo[2]; u2 <= hi[2];) {
        const int64_t c2 = bins[2][u2], t2 = images[2][u2];
        const int64_t run = std::min(hi[2] - u2, g.nbins[2] - 1 - c2);  // bins after the first
        const int64_t begin = bin_start[row + c2], end = bin_start[row + c2 + run + 1];
        u2 += run + 1;
        if (begin == end) continue;
        double delta[3];
        for (int c = 0; c < 3; ++c) delta[c] = t0 * g.h[c] + t1 * g.h[3 + c] + t2 * g.h[6 + c] - ri[c];
        // The run holding the receiver itself through image 0: it is at distance 0, not a neighbour.
        const bool skip_self = !self_interaction && (t0 | t1 | t2) == 0 && c0 == b[0] && c1 == b[1] && c2 <= b[2] &&
                               b[2] <= c2 + run;
        const uint64_t image = (uint64_t(t0 + g.image_bias) << (2 * bits)) | (uint64_t(t1 + g.image_bias) << bits) |
                               uint64_t(t2 + g.image_bias);
#if NFFK_NL_AVX512
        // Eight candidates at a time: the compare gives the kept lanes as a mask, and their keys
        // are packed to the front of a register (a compress to memory is slow on some CPUs) and
        // stored whole; the lanes past the kept ones are overwritten by the next store.
        const __m512d dx = _mm512_set1_pd(delta[0]), dy = _mm512_set1_pd(delta[1]), dz = _mm512_set1_pd(delta[2]);
        const __m512d limit = _mm512_set1_pd(cutoff_sq);
        const __m512i image_lanes = _mm512_set1_epi64(int64_t(image));
        const __m512i self_lanes = _mm512_set1_epi64(skip_self ? a : -1);
        for (int64_t p = begin; p < end; p += 8) {
          const __mmask8 live = end - p >= 8 ? __mmask8(0xff) : __mmask8((1u << (end - p)) - 1);
          const __m512d x = _mm512_add_pd(_mm512_maskz_loadu_pd(live, xs + p), dx);
          const __m512d y = _mm512_add_pd(_mm512_maskz_loadu_pd(live, ys + p), dy);
          const __m512d z = _mm512_add_pd(_mm512_maskz_loadu_pd(live, zs + p), dz);
          const __m512d d2 = _mm512_fmadd_pd(x, x, _mm512_fmadd_pd(y, y, _mm512_mul_pd(z, z)));
          const __m512i j = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(live, atoms + p));
          const __mmask8 kept = _mm512_mask_cmp_pd_mask(live, d2, limit, _CMP_LT_OQ) &
                                ~_mm512_cmpeq_epi64_mask(j, self_lanes);
          if (!kept) continue;
          if (found + 8 > capacity) return -1;
          const __m512i keys = _mm512_or_si512(_mm512_slli_epi64(j, unsigned(shift)), image_lanes);
          _mm512_storeu_si512(out + found, _mm512_maskz_compress_epi64(kept, keys));
          found += __builtin_popcount(kept);
        }
#else
        constexpr int64_t kBlock = 64;
        for (int64_t p0 = begin; p0 < end; p0 += kBlock) {
          const int64_t len = std::min(kBlock, end - p0);
          uint64_t kept = 0;  // bit q: candidate p0 + q is within the cutoff
          for (int64_t q = 0; q < len; ++q) {
            const double x = xs[p0 + q] + delta[0], y = ys[p0 + q] + delta[1], z = zs[p0 + q] + delta[2];
            kept |= uint64_t(x * x + y * y + z * z < cutoff_sq) << q;
          }
          for (; kept; kept &= kept - 1) {  // visit only the kept ones
            const int32_t j = atoms[p0 + __builtin_ctzll(kept)];
            if (skip_self && j == a) continue;
            if (found == capacity) return -1;
            out[found++] = (uint64_t(j) << shift) | image;
          }
        }
#endif
      }
    }
  }
  return found;
}

void insertion_sort(uint64_t* keys, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const uint64_t x = keys[i];
    int64_t j = i;
    for (; j > 0 && keys[j - 1] > x; --j) keys[j] = keys[j - 1];
    keys[j] = x;
  }
}

// Sorts one receiver's keys: a counting sort on the leading bits of (key - smallest key) into
// about n buckets, then an insertion sort that only has to order within buckets. Several times
// faster than std::sort at the typical 10-100 keys; std::sort when keys crowd into few buckets.
void sort_keys(uint64_t* keys, int64_t n, std::vector<uint64_t>& scratch) {
  constexpr int kMaxLogBuckets = 12;
  if (n <= 16) return insertion_sort(keys, n);
  uint64_t low = keys[0], high = keys[0];
  for (int64_t e = 1; e < n; ++e) {
    low = std::min(low, keys[e]);
    high = std::max(high, keys[e]);
  }
  const int log_buckets = std::min(bit_width(uint64_t(n)), kMaxLogBuckets);
  const int64_t buckets = int64_t(1) << log_buckets;
  const int shift = std::max(0, bit_width(high - low) - log_buckets);  // (key - low) >> shift < buckets
  uint32_t start[(1 << kMaxLogBuckets) + 1];
  std::fill(start, start + buckets + 1, 0u);
  for (int64_t e = 0; e < n; ++e) ++start[((keys[e] - low) >> shift) + 1];
  uint32_t crowded = 0;
  for (int64_t b = 0; b < buckets; ++b) crowded = std::max(crowded, start[b + 1]);
  if (crowded > 32) return std::sort(keys, keys + n);  // e.g. one atom's many images of itself
  for (int64_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
  if (int64_t(scratch.size()) < n) scratch.resize(2 * n);
  uint64_t* tmp = scratch.data();
  for (int64_t e = 0; e < n; ++e) tmp[start[(keys[e] - low) >> shift]++] = keys[e];
  insertion_sort(tmp, n);
  std::copy(tmp, tmp + n, keys);
}

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename scalar_t>
Result run(const at::Tensor& positions, const int64_t* system_ptr, int64_t num_systems, const double* cells,
           const bool* pbc, double cutoff, bool self_interaction, bool want_distances, bool want_vectors) {
  const scalar_t* pos = positions.data_ptr<scalar_t>();
  const int64_t num_atoms = positions.size(0);
  std::vector<Grid> grids(num_systems);
  Atoms at;
  at.wrapped.resize(3 * num_atoms);
  at.frac.resize(3 * num_atoms);
  at.wrap.resize(3 * num_atoms);
  at.bin3.resize(3 * num_atoms);

  // Phase A1: wrap atoms and shape each system's grid.
  int failure = kOk;
#pragma omp parallel for schedule(dynamic, 1) if (num_atoms >= kParallelBinning)
  for (int64_t s = 0; s < num_systems; ++s) {
    Grid& g = grids[s];
    g.begin = system_ptr[s];
    g.end = system_ptr[s + 1];
    std::memcpy(g.h, cells + 9 * s, sizeof(g.h));
    for (int k = 0; k < 3; ++k) g.periodic[k] = pbc[3 * s + k];
    if (g.begin == g.end) continue;
    const int status = shape_grid(g, pos, cutoff, at);
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

  // Offsets of each system's bins and wrap tables in the shared buffers.
  int64_t bins = 0, tables = 0;
  for (Grid& g : grids) {
    if (g.begin == g.end) continue;
    g.bin_base = bins;
    bins += g.total_bins() + 1;
    for (int k = 0; k < 3; ++k) {
      g.table_base[k] = tables;
      tables += g.table_size(k);
    }
  }
  at.bin_start.resize(bins);
  at.cursor.resize(bins);
  at.table_bin.resize(tables);
  at.table_image.resize(tables);
  at.slot_x.resize(num_atoms);
  at.slot_y.resize(num_atoms);
  at.slot_z.resize(num_atoms);
  at.slot_atom.resize(num_atoms);

  // Phase A2: fill the grids.
#pragma omp parallel for schedule(dynamic, 1) if (num_atoms >= kParallelBinning)
  for (int64_t s = 0; s < num_systems; ++s)
    if (grids[s].begin != grids[s].end) fill_grid(grids[s], at);

  // Work items: fixed-size chunks of receivers that never straddle two systems.
  struct Chunk {
    int64_t system, begin, end;
  };
  std::vector<Chunk> chunks;
  for (int64_t s = 0; s < num_systems; ++s)
    for (int64_t a = grids[s].begin; a < grids[s].end; a += kChunkAtoms)
      chunks.push_back({s, a, std::min(a + kChunkAtoms, grids[s].end)});
  const int64_t num_chunks = int64_t(chunks.size());
  const double cutoff_sq = cutoff * cutoff;
  // Candidates the counting pass will test: per atom, the atoms of the bins within reach.
  double candidates = 0;
  for (const Grid& g : grids) {
    const double n = double(g.end - g.begin);
    const double stencil = double(2 * g.reach[0] + 1) * double(2 * g.reach[1] + 1) * double(2 * g.reach[2] + 1);
    candidates += n * std::max(1.0, std::min(n, n / double(g.total_bins()) * stencil));
  }

  // Phase B: one parallel region, so that each thread still owns the keys it found.
  // B1 searches each receiver once and appends its kept candidates, as 64-bit keys (sender,
  // image) sorted, to the thread's key scratch, which persists across calls (its pages stay
  // faulted in); then ptr, and outputs of exactly the right size. B2 decodes each chunk's keys
  // into its slice of the outputs: senders, shifts S = T - wrap[j] + wrap[i], and distances /
  // vectors from the original positions (vector = r_j - r_i + S @ cell).
  const auto long_options = positions.options().dtype(at::kLong);
  at::Tensor ptr = at::empty({num_atoms + 1}, long_options);
  int64_t* out_ptr = ptr.data_ptr<int64_t>();
  out_ptr[0] = 0;
  at::Tensor senders, receivers, shifts, distances, vectors;
  struct ChunkKeys {
    const std::vector<uint64_t>* scratch;  // the keys of the thread that searched the chunk
    int64_t offset;
  };
  std::vector<ChunkKeys> chunk_keys(num_chunks);
  const int32_t* wrap = at.wrap.data();
  bool out_of_memory = false;
#pragma omp parallel if (candidates >= kParallelCandidates)
  {
    thread_local std::vector<uint64_t> keys, sort_scratch;
    int64_t used = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < num_chunks; ++c) {
      const Grid& g = grids[chunks[c].system];
      chunk_keys[c] = {&keys, used};
      try {  // an exception (out of memory) must not leave an OpenMP region
        for (int64_t gi = chunks[c].begin; gi < chunks[c].end; ++gi) {
          int64_t count;
          while ((count = search_atom(g, at, gi - g.begin, cutoff_sq, self_interaction, keys.data() + used,
                                      int64_t(keys.size()) - used)) < 0)
            keys.resize(std::max<size_t>(2 * keys.size(), 1 << 14));  // then search this atom again
          sort_keys(keys.data() + used, count, sort_scratch);
          out_ptr[gi + 1] = count;
          used += count;
        }
      } catch (...) {
#pragma omp critical(nffk_neighbor_list_failure)
        out_of_memory = true;
      }
    }
#pragma omp single
    if (!out_of_memory) {  // else some counts were never written
      for (int64_t i = 0; i < num_atoms; ++i) out_ptr[i + 1] += out_ptr[i];
      const int64_t num_pairs = out_ptr[num_atoms];
      try {
        senders = empty_output({num_pairs}, long_options);
        receivers = empty_output({num_pairs}, long_options);
        shifts = empty_output({num_pairs, 3}, long_options);
        distances = empty_output({want_distances ? num_pairs : 0}, positions.options());
        vectors = empty_output({want_vectors ? num_pairs : 0, 3}, positions.options());
      } catch (...) {
        out_of_memory = true;
      }
    }
    if (!out_of_memory) {
      int64_t* out_senders = senders.data_ptr<int64_t>();
      int64_t* out_receivers = receivers.data_ptr<int64_t>();
      int64_t* out_shifts = shifts.data_ptr<int64_t>();
      scalar_t* out_distances = want_distances ? distances.data_ptr<scalar_t>() : nullptr;
      scalar_t* out_vectors = want_vectors ? vectors.data_ptr<scalar_t>() : nullptr;
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < num_chunks; ++c) {
        const Grid& g = grids[chunks[c].system];
        const int bits = g.image_bits, shift = 3 * g.image_bits;
        const uint64_t mask = (uint64_t(1) << bits) - 1;
        const uint64_t* key = chunk_keys[c].scratch->data() + chunk_keys[c].offset;
        for (int64_t gi = chunks[c].begin; gi < chunks[c].end; ++gi) {
          const int64_t wi[3] = {wrap[3 * gi] - g.image_bias, wrap[3 * gi + 1] - g.image_bias,
                                 wrap[3 * gi + 2] - g.image_bias};
          const double ri[3] = {double(pos[3 * gi]), double(pos[3 * gi + 1]), double(pos[3 * gi + 2])};
          const int64_t first = out_ptr[gi], last = out_ptr[gi + 1];
          for (int64_t e = first; e < last; ++e, ++key) {
            const int64_t gj = g.begin + int64_t(*key >> shift);
            const int32_t* wj = wrap + 3 * gj;
            int64_t s[3];
            for (int k = 0; k < 3; ++k) s[k] = int64_t((*key >> ((2 - k) * bits)) & mask) + wi[k] - wj[k];
            out_senders[e] = gj;
            out_receivers[e] = gi;
            for (int k = 0; k < 3; ++k) out_shifts[3 * e + k] = s[k];
            if (!want_distances && !want_vectors) continue;
            double v[3];
            for (int d = 0; d < 3; ++d)
              v[d] = (double(pos[3 * gj + d]) - ri[d]) +
                     (double(s[0]) * g.h[d] + double(s[1]) * g.h[3 + d] + double(s[2]) * g.h[6 + d]);
            if (want_distances) out_distances[e] = scalar_t(std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]));
            if (want_vectors)
              for (int d = 0; d < 3; ++d) out_vectors[3 * e + d] = scalar_t(v[d]);
          }
        }
      }
    }
    // After the loop's barrier nobody reads the keys any more: give back what an unusually
    // large request made the scratch grow to.
    if (keys.size() > kKeepScratchKeys) std::vector<uint64_t>().swap(keys);
  }
  TORCH_CHECK(!out_of_memory, "neighbor_list: out of memory");
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
