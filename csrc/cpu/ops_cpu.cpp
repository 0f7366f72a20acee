// CPU kernels: at::parallel_for over rows (or segments); every reduction inside one row or
// segment runs on one thread in a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <numeric>
#include <vector>

#include "../checks.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {

// Row-block kernels: a portable version, an AVX2 one and an AVX-512 one, picked at run time by
// what the CPU has (the wheel runs anywhere). All put element j of a row in lane j % 16 (two
// 8-wide registers for AVX2, one 16-wide for AVX-512) and fold the lanes in kernel_math.h's
// fixed tree, so they return the same bits; set_cpu_simd_level caps the level (the tests
// compare them). AVX-512 streams long rows 5-25% faster than AVX2 on the Xeon machines, at the
// same bits.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define EPI_HAVE_AVX2 1
#include <immintrin.h>
#define EPI_AVX2 __attribute__((target("avx2,f16c")))
#define EPI_AVX512 __attribute__((target("avx512f,avx2,f16c")))
#else
#define EPI_HAVE_AVX2 0
#endif

namespace cpu_rows {

enum Level : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
std::atomic<int> g_simd_cap{kAvx512};  // the highest level the kernels may use

int cpu_level() {
#if EPI_HAVE_AVX2
  static const int level = !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) ? kPortable
                           : __builtin_cpu_supports("avx512f")                                 ? kAvx512
                                                                                               : kAvx2;
  return level;
#else
  return kPortable;
#endif
}

int simd_level() { return std::min(g_simd_cap.load(std::memory_order_relaxed), cpu_level()); }

template <ScoreKind K, typename T>
void score_rows_portable(const T* data, int64_t cols, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = score_finish(row_score_sum<K>(data + r * cols, cols), K);
}

template <typename T>
void dot_rows_portable(const T* a, const T* b, int64_t cols, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = row_dot(a + r * cols, b + r * cols, cols);
}

#if EPI_HAVE_AVX2
// Eight elements widened to float32 (exact for every input dtype).
EPI_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
EPI_AVX2 inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
EPI_AVX2 inline __m256 load8(const at::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// The last `rem` (1..15) elements of a row as two vectors for lanes 0-7 and 8-15, +0 past the
// end. float32 uses masked loads, which read nothing past the row; 16-bit types go through a
// small zeroed buffer.
EPI_AVX2 inline __m256i lane_mask(int64_t count) {  // lanes < count set; count in [0, 8]
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
EPI_AVX2 inline void load_tail(const float* p, int64_t rem, __m256& lo, __m256& hi) {
  lo = _mm256_maskload_ps(p, lane_mask(rem < 8 ? rem : 8));
  hi = rem > 8 ? _mm256_maskload_ps(p + 8, lane_mask(rem - 8)) : _mm256_setzero_ps();
}
template <typename T>
EPI_AVX2 inline void load_tail(const T* p, int64_t rem, __m256& lo, __m256& hi) {
  alignas(32) float buf[16] = {};
  for (int64_t l = 0; l < rem; ++l) buf[l] = static_cast<float>(p[l]);
  lo = _mm256_load_ps(buf);
  hi = _mm256_load_ps(buf + 8);
}

template <ScoreKind K>
EPI_AVX2 inline __m256 term8(__m256 x) {
  if (K == ScoreKind::L2) return _mm256_mul_ps(x, x);
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);  // |x|
}

// fold_lanes for lanes 0-7 in `lo` and 8-15 in `hi`.
EPI_AVX2 inline float fold8x2(__m256 lo, __m256 hi) {
  const __m256 a = _mm256_add_ps(lo, hi);                                           // l + (l+8)
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // l + (l+4)
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));                                           // 0+2, 1+3
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));                    // (0+2)+(1+3)
}

// Rows shorter than one 16-wide step (depthwise 3x3 filters: 9 elements) cost a masked load
// and a vector fold each, ~15 cycles for 9 elements; a scalar fold unrolled for the exact row
// length does the same arithmetic in a third of that. Same bits (short_row_score_sum).
template <ScoreKind K, typename T, int C>
void short_rows(const T* data, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = score_finish(short_row_score_sum<C, K>(data + r * C), K);
}

template <ScoreKind K, typename T, int... C>
bool short_rows_dispatch(const T* data, int64_t cols, int64_t rows, float* out,
                         std::integer_sequence<int, C...>) {
  // C runs over 0..kLanes-1; index 0 means "not a short row".
  return ((cols == C && C > 0 ? (short_rows<K, T, (C > 0 ? C : 1)>(data, rows, out), true) : false) || ...);
}

template <ScoreKind K, typename T>
EPI_AVX2 void score_rows_avx2(const T* data, int64_t cols, int64_t rows, float* out) {
  if (short_rows_dispatch<K>(data, cols, rows, out, std::make_integer_sequence<int, kLanes>{})) return;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = data + r * cols;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
      lo = _mm256_add_ps(lo, term8<K>(load8(row + j)));
      hi = _mm256_add_ps(hi, term8<K>(load8(row + j + 8)));
    }
    if (j < cols) {
      __m256 tlo, thi;
      load_tail(row + j, cols - j, tlo, thi);
      lo = _mm256_add_ps(lo, term8<K>(tlo));
      hi = _mm256_add_ps(hi, term8<K>(thi));
    }
    out[r] = score_finish(fold8x2(lo, hi), K);
  }
}

template <typename T>
EPI_AVX2 void dot_rows_avx2(const T* a, const T* b, int64_t cols, int64_t rows, float* out) {
  if (cols == 1) {
    // 1-D tensors (BatchNorm weight and bias, the Taylor criterion's usual members): one
    // product per row. The lanes' fold is +0 + a*b, which turns -0 into +0 and leaves every
    // other value as it is; so does "+ 0.0f" (kept: -ffp-contract=off, no fast-math).
    for (int64_t r = 0; r < rows; ++r) out[r] = to_float(a[r]) * to_float(b[r]) + 0.0f;
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* ra = a + r * cols;
    const T* rb = b + r * cols;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
      lo = _mm256_add_ps(lo, _mm256_mul_ps(load8(ra + j), load8(rb + j)));
      hi = _mm256_add_ps(hi, _mm256_mul_ps(load8(ra + j + 8), load8(rb + j + 8)));
    }
    if (j < cols) {
      __m256 alo, ahi, blo, bhi;
      load_tail(ra + j, cols - j, alo, ahi);
      load_tail(rb + j, cols - j, blo, bhi);
      lo = _mm256_add_ps(lo, _mm256_mul_ps(alo, blo));
      hi = _mm256_add_ps(hi, _mm256_mul_ps(ahi, bhi));
    }
    out[r] = fold8x2(lo, hi);
  }
}

// GCC 12 warns, where these kernels inline the AVX-512 intrinsics, that the intrinsics' own
// "undefined" pass-through operands may be used uninitialised: a false positive (every lane is
// written). Silenced for this block only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// AVX-512: lanes 0-15 in one register, i.e. the AVX2 kernels' lo (0-7) and hi (8-15) side by
// side; every lane sees the same adds in the same order, and the fold starts with lo + hi.
EPI_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
EPI_AVX512 inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
EPI_AVX512 inline __m512 load16(const at::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
// The last `rem` (1..15) elements, +0 past the end; float32 by a masked load, which reads
// nothing past the row.
EPI_AVX512 inline __m512 load_tail16(const float* p, int64_t rem) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << rem) - 1u), p);
}
template <typename T>
EPI_AVX512 inline __m512 load_tail16(const T* p, int64_t rem) {
  alignas(64) float buf[16] = {};
  for (int64_t l = 0; l < rem; ++l) buf[l] = static_cast<float>(p[l]);
  return _mm512_load_ps(buf);
}

template <ScoreKind K>
EPI_AVX512 inline __m512 term16(__m512 x) {
  if (K == ScoreKind::L2) return _mm512_mul_ps(x, x);
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));  // |x|
}

EPI_AVX512 inline float fold16(__m512 acc) {
  const __m256 lo = _mm512_castps512_ps256(acc);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
  return fold8x2(lo, hi);
}

template <ScoreKind K, typename T>
EPI_AVX512 void score_rows_avx512(const T* data, int64_t cols, int64_t rows, float* out) {
  if (short_rows_dispatch<K>(data, cols, rows, out, std::make_integer_sequence<int, kLanes>{})) return;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = data + r * cols;
    __m512 acc = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) acc = _mm512_add_ps(acc, term16<K>(load16(row + j)));
    if (j < cols) acc = _mm512_add_ps(acc, term16<K>(load_tail16(row + j, cols - j)));
    out[r] = score_finish(fold16(acc), K);
  }
}

template <typename T>
EPI_AVX512 void dot_rows_avx512(const T* a, const T* b, int64_t cols, int64_t rows, float* out) {
  if (cols == 1) {  // as in dot_rows_avx2
    for (int64_t r = 0; r < rows; ++r) out[r] = to_float(a[r]) * to_float(b[r]) + 0.0f;
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* ra = a + r * cols;
    const T* rb = b + r * cols;
    __m512 acc = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) acc = _mm512_add_ps(acc, _mm512_mul_ps(load16(ra + j), load16(rb + j)));
    if (j < cols)
      acc = _mm512_add_ps(acc, _mm512_mul_ps(load_tail16(ra + j, cols - j), load_tail16(rb + j, cols - j)));
    out[r] = fold16(acc);
  }
}
#pragma GCC diagnostic pop
#endif  // EPI_HAVE_AVX2

template <typename T>
using ScoreRows = void (*)(const T*, int64_t, int64_t, float*);
template <typename T>
using DotRows = void (*)(const T*, const T*, int64_t, int64_t, float*);

template <typename T>
ScoreRows<T> score_rows(ScoreKind kind) {
#if EPI_HAVE_AVX2
  const int level = simd_level();
  if (level == kAvx512) {
    switch (kind) {
      case ScoreKind::L1: return score_rows_avx512<ScoreKind::L1, T>;
      case ScoreKind::L2: return score_rows_avx512<ScoreKind::L2, T>;
      default: return score_rows_avx512<ScoreKind::Abs, T>;
    }
  }
  if (level == kAvx2) {
    switch (kind) {
      case ScoreKind::L1: return score_rows_avx2<ScoreKind::L1, T>;
      case ScoreKind::L2: return score_rows_avx2<ScoreKind::L2, T>;
      default: return score_rows_avx2<ScoreKind::Abs, T>;
    }
  }
#endif
  switch (kind) {
    case ScoreKind::L1: return score_rows_portable<ScoreKind::L1, T>;
    case ScoreKind::L2: return score_rows_portable<ScoreKind::L2, T>;
    default: return score_rows_portable<ScoreKind::Abs, T>;
  }
}

template <typename T>
DotRows<T> dot_rows() {
#if EPI_HAVE_AVX2
  const int level = simd_level();
  if (level == kAvx512) return dot_rows_avx512<T>;
  if (level == kAvx2) return dot_rows_avx2<T>;
#endif
  return dot_rows_portable<T>;
}
}  // namespace cpu_rows

namespace {
const char* level_name(int level) {
  return level == cpu_rows::kAvx512 ? "avx512" : level == cpu_rows::kAvx2 ? "avx2" : "portable";
}
}  // namespace

// Which row kernels the CPU ops use: "avx512", "avx2" or "portable". Exposed through the
// Python module.
std::string cpu_simd() { return level_name(cpu_rows::simd_level()); }

// The highest level the row kernels may use ("avx512", "avx2", "portable"; the CPU may allow
// less); returns the previous cap. For tests and benchmarks that compare the kernels.
std::string set_cpu_simd_level(const std::string& level) {
  int cap;
  if (level == "avx512") cap = cpu_rows::kAvx512;
  else if (level == "avx2") cap = cpu_rows::kAvx2;
  else if (level == "portable") cap = cpu_rows::kPortable;
  else TORCH_CHECK_VALUE(false, "unknown SIMD level '", level, "'; expected 'avx512', 'avx2' or 'portable'");
  return level_name(cpu_rows::g_simd_cap.exchange(cap));
}

// True: the best kernels the CPU has; False: the portable ones. Returns whether any SIMD level
// was allowed before.
bool set_cpu_simd(bool enabled) {
  return cpu_rows::g_simd_cap.exchange(enabled ? cpu_rows::kAvx512 : cpu_rows::kPortable) != cpu_rows::kPortable;
}

namespace {

struct Rows {
  std::vector<at::Tensor> keep_alive;  // contiguous copies of strided inputs
  std::vector<const void*> data;
  std::vector<const void*> grad;
  std::vector<int64_t> cols;
  std::vector<int64_t> row_start;  // prefix sums, size tensors + 1
};

Rows gather_rows(at::TensorList tensors, at::TensorList grads = {}) {
  Rows r;
  r.row_start.push_back(0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor t = tensors[i].contiguous();
    r.keep_alive.push_back(t);
    r.data.push_back(t.data_ptr());
    if (!grads.empty()) {
      at::Tensor g = grads[i].contiguous();
      r.keep_alive.push_back(g);
      r.grad.push_back(g.data_ptr());
    }
    const int64_t rows = t.size(0);
    r.cols.push_back(rows ? t.numel() / rows : 0);
    r.row_start.push_back(r.row_start.back() + rows);
  }
  return r;
}

// Splits the rows into tasks of about equal element counts. at::parallel_for hands each thread
// one contiguous share of the task range, so tasks of equal size balance the threads even when
// layers differ widely in row length (ResNet-50: rows of 27 to 4,608 elements). Problems under
// one task's worth of elements become a single task and run inline, with no parallel region.
std::vector<int64_t> balanced_tasks(const Rows& r) {
  constexpr int64_t kMinTaskElems = 1 << 16;
  int64_t total = 0;
  for (size_t t = 0; t < r.cols.size(); ++t) total += r.cols[t] * (r.row_start[t + 1] - r.row_start[t]);
  const int64_t tasks_wanted = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 8, total / kMinTaskElems));
  const int64_t per_task = std::max<int64_t>(1, (total + tasks_wanted - 1) / tasks_wanted);
  std::vector<int64_t> bounds{0};  // global row indices
  int64_t acc = 0;
  for (size_t t = 0; t < r.cols.size(); ++t) {
    const int64_t cols = std::max<int64_t>(r.cols[t], 1);  // empty rows still cost a write
    for (int64_t g = r.row_start[t]; g < r.row_start[t + 1];) {
      const int64_t room = std::max<int64_t>(1, (per_task - acc + cols - 1) / cols);
      const int64_t take = std::min(room, r.row_start[t + 1] - g);
      g += take;
      acc += take * cols;
      if (acc >= per_task) {
        bounds.push_back(g);
        acc = 0;
      }
    }
  }
  if (bounds.back() != r.row_start.back()) bounds.push_back(r.row_start.back());
  return bounds;
}

// Calls fn(tensor, first_row, rows, global_row) for the part of every tensor inside the
// global row range [begin, end): one call per block of consecutive rows, not per row.
template <typename Fn>
void for_blocks(const Rows& r, int64_t begin, int64_t end, Fn fn) {
  size_t t = std::upper_bound(r.row_start.begin(), r.row_start.end(), begin) - r.row_start.begin() - 1;
  for (; t + 1 < r.row_start.size() && r.row_start[t] < end; ++t) {
    const int64_t lo = std::max(begin, r.row_start[t]), hi = std::min(end, r.row_start[t + 1]);
    if (hi > lo) fn(t, lo - r.row_start[t], hi - lo, lo);
  }
}

// Runs fn over every row block, in parallel over balanced tasks.
template <typename Fn>
void parallel_blocks(const Rows& r, Fn fn) {
  const std::vector<int64_t> bounds = balanced_tasks(r);
  const int64_t tasks = static_cast<int64_t>(bounds.size()) - 1;
  if (tasks <= 0) return;
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    for_blocks(r, bounds[b], bounds[e], fn);
  });
}

// The k-th smallest of a set of 32-bit keys, for several k at once, by radix select over the
// keys' own range: the digit of a key is (key - min) >> shift, with the shift that spreads
// [min, max] over the histogram, so the skewed keys of real scores (a few exponents) still land
// in many buckets. Protected channels carry the sentinel key 0xffffffff; it is left out of max
// and lands in the last bucket. Only the buckets that hold a wanted rank are gathered and
// examined further. Each level reads its keys three times (min/max, histogram, gather), so 9
// ratios cost about as much as 1.
struct RankKey {
  uint32_t value;  // the k-th smallest key
  int64_t below;   // keys strictly below it
  int64_t equal;   // keys equal to it
};

constexpr uint32_t kKeptKey = 0xffffffffu;

// ranks: ascending, distinct, each in [1, n], relative to this key set; `below` is the number of
// keys of the whole problem below this set. Writes out[i] for ranks[i].
void select_ranks(const uint32_t* __restrict keys, int64_t n, const int64_t* ranks, int64_t count,
                  int64_t below, RankKey* out) {
  uint32_t lo = kKeptKey, hi = 0;
  bool sentinel = false;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = keys[i];
    lo = std::min(lo, k);
    sentinel |= k == kKeptKey;
    hi = std::max(hi, k == kKeptKey ? uint32_t{0} : k);
  }
  if (lo == kKeptKey || (lo == hi && !sentinel)) {  // every key is equal
    for (int64_t i = 0; i < count; ++i) out[i] = {lo, below, n};
    return;
  }
  if (n <= 64) {  // a few keys: sort them
    std::vector<uint32_t> v(keys, keys + n);
    std::sort(v.begin(), v.end());
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t x = v[ranks[i] - 1];
      const int64_t first = std::lower_bound(v.begin(), v.end(), x) - v.begin();
      const int64_t last = std::upper_bound(v.begin(), v.end(), x) - v.begin();
      out[i] = {x, below + first, last - first};
    }
    return;
  }
  const bool big = n >= 4096;
  const int bits = big ? 11 : 8;
  const uint32_t bins = 1u << bits, last = bins - 1;
  const uint32_t range = hi - lo;  // every real key is in [lo, lo + range]
  const int width = range ? 32 - __builtin_clz(range) : 0;
  // Real keys spread over all the buckets; the last may hold real keys besides the sentinel,
  // and a bucket's keys span less than 2^shift, so every level narrows the range.
  const int shift = std::max(0, width - bits);
  auto digit = [&](uint32_t k) { return std::min((k - lo) >> shift, last); };
  // Four interleaved histograms for big sets: runs of keys in one bucket would otherwise
  // serialise on one counter's load-add-store.
  const int copies = big ? 4 : 1;
  std::vector<uint32_t> hist(size_t{bins} * copies, 0);
  if (big) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
      for (int c = 0; c < 4; ++c) ++hist[c * bins + digit(keys[i + c])];
    for (; i < n; ++i) ++hist[digit(keys[i])];
    for (uint32_t d = 0; d < bins; ++d) hist[d] += hist[bins + d] + hist[2 * bins + d] + hist[3 * bins + d];
  } else {
    for (int64_t i = 0; i < n; ++i) ++hist[digit(keys[i])];
  }

  struct Target {
    uint32_t digit;
    int64_t before, size, first_rank, ranks;  // ranks [first_rank, first_rank + ranks)
  };
  std::vector<Target> targets;
  int64_t cum = 0, r = 0;
  for (uint32_t d = 0; d < bins && r < count; ++d) {
    const int64_t c = hist[d];
    if (c && ranks[r] <= cum + c) {
      Target t{d, cum, c, r, 0};
      while (r < count && ranks[r] <= cum + c) ++r, ++t.ranks;
      targets.push_back(t);
    }
    cum += c;
  }
  // One pass gathers every target bucket into one buffer (bucket t at start[t]).
  std::vector<int64_t> start(targets.size() + 1, 0);
  for (size_t t = 0; t < targets.size(); ++t) start[t + 1] = start[t] + targets[t].size;
  std::vector<int32_t> slot(bins, -1);
  for (size_t t = 0; t < targets.size(); ++t) slot[targets[t].digit] = static_cast<int32_t>(t);
  std::vector<int64_t> pos(start.begin(), start.end() - 1);
  std::vector<uint32_t> buffer(start.back());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = slot[digit(keys[i])];
    if (t >= 0) buffer[pos[t]++] = keys[i];
  }
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    const Target& t = targets[ti];
    std::vector<int64_t> sub(t.ranks);
    for (int64_t i = 0; i < t.ranks; ++i) sub[i] = ranks[t.first_rank + i] - t.before;
    select_ranks(buffer.data() + start[ti], t.size, sub.data(), t.ranks, below + t.before, out + t.first_rank);
  }
}

// row[i] = key[i] > cut, over [lo, hi): the bulk of every mask.
void keep_above(const uint32_t* __restrict key, uint32_t cut, int64_t lo, int64_t hi, uint8_t* __restrict row) {
  for (int64_t i = lo; i < hi; ++i) row[i] = key[i] > cut;
}

template <typename Fn>
void dispatch_dtype(at::ScalarType dtype, Fn fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kHalf: fn(at::Half{}); break;
    case at::kBFloat16: fn(at::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", dtype);
  }
}

at::Tensor channel_scores_cpu(at::TensorList tensors, c10::string_view criterion) {
  check_float_list(tensors, "tensors");
  const ScoreKind kind = parse_score_kind(criterion);
  if (kind == ScoreKind::Abs) check_abs_rows(tensors);
  Rows r = gather_rows(tensors);
  at::Tensor out = at::empty({r.row_start.back()}, tensors[0].options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  dispatch_dtype(tensors[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const auto score = cpu_rows::score_rows<T>(kind);
    parallel_blocks(r, [&](size_t t, int64_t row, int64_t rows, int64_t g) {
      score(static_cast<const T*>(r.data[t]) + row * r.cols[t], r.cols[t], rows, o + g);
    });
  });
  return out;
}

// Per-channel sums of w * g; tensors add into shared channels in list order.
at::Tensor taylor_raw_cpu(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                          int64_t channels) {
  check_pairs(params, grads);
  TORCH_CHECK_VALUE(channels >= 0, "num_channels must be non-negative, got ", channels);
  const std::vector<int64_t> offs = check_offsets(params, offsets, channels);
  Rows r = gather_rows(params, grads);
  std::vector<float> row_sums(r.row_start.back());
  dispatch_dtype(params[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const auto dot = cpu_rows::dot_rows<T>();
    parallel_blocks(r, [&](size_t t, int64_t row, int64_t rows, int64_t g) {
      dot(static_cast<const T*>(r.data[t]) + row * r.cols[t],
                                static_cast<const T*>(r.grad[t]) + row * r.cols[t], r.cols[t], rows,
                                row_sums.data() + g);
    });
  });
  at::Tensor raw = at::zeros({channels}, params[0].options().dtype(at::kFloat));
  float* out = raw.data_ptr<float>();
  for (size_t t = 0; t < offs.size(); ++t)
    for (int64_t row = 0; row < r.row_start[t + 1] - r.row_start[t]; ++row)
      out[offs[t] + row] += row_sums[r.row_start[t] + row];
  return raw;
}

at::Tensor taylor_scores_cpu(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                             int64_t channels, c10::string_view mode) {
  const TaylorMode m = parse_taylor_mode(mode);
  at::Tensor raw = taylor_raw_cpu(params, grads, offsets, channels);
  float* p = raw.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) p[c] = taylor_finish(p[c], m);
  return raw;
}

void taylor_accumulate_cpu(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                           at::TensorList grads, at::IntArrayRef offsets,
                           const c10::optional<at::Tensor>& inv_scale, c10::string_view mode) {
  const TaylorMode m = parse_taylor_mode(mode);
  // Every check comes before the first write: a refused call leaves acc and skipped as they were.
  check_pairs(params, grads);
  check_accumulators(acc, skipped, params[0]);
  check_inv_scale(inv_scale, acc);
  const int64_t channels = acc.numel();
  at::Tensor raw = taylor_raw_cpu(params, grads, offsets, channels);
  const float scale = inv_scale.has_value() ? inv_scale->to(at::kFloat).item<float>() : 1.0f;
  const float* p = raw.data_ptr<float>();
  bool finite = true;
  for (int64_t c = 0; c < channels && finite; ++c)
    finite = is_finite(taylor_finish(inv_scale.has_value() ? p[c] * scale : p[c], m));
  if (!finite) {
    skipped.add_(1);
    return;
  }
  float* a = acc.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c)
    a[c] += taylor_finish(inv_scale.has_value() ? p[c] * scale : p[c], m);
}

at::Tensor group_reduce_cpu(const at::Tensor& scores_in, const at::Tensor& group_ptr_in,
                            const at::Tensor& member_idx_in, c10::string_view reduce) {
  check_scores(scores_in);
  const Reduce red = parse_reduce(reduce);
  TORCH_CHECK_TYPE(group_ptr_in.scalar_type() == at::kLong && member_idx_in.scalar_type() == at::kLong,
                   "group_ptr and member_idx must be int64");
  at::Tensor scores = scores_in.contiguous(), ptr_t = group_ptr_in.contiguous(),
             idx_t = member_idx_in.contiguous();
  const int64_t groups = ptr_t.numel() - 1;
  TORCH_CHECK_VALUE(groups >= 1, "group_ptr needs at least two entries (one group)");
  const float* s = scores.data_ptr<float>();
  const int64_t* ptr = ptr_t.data_ptr<int64_t>();
  const int64_t* idx = idx_t.data_ptr<int64_t>();
  const int64_t n = scores.numel(), members = idx_t.numel();
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[groups] == members, "group_ptr must start at 0 and end at len(member_idx)");
  for (int64_t g = 0; g < groups; ++g)
    TORCH_CHECK_VALUE(ptr[g + 1] > ptr[g], "group_ptr must increase strictly: group ", g, " has no member");
  for (int64_t k = 0; k < members; ++k)
    TORCH_CHECK_VALUE(idx[k] >= 0 && idx[k] < n, "member_idx[", k, "] = ", idx[k], " is outside the ", n, " scores");
  at::Tensor out = at::empty({groups}, scores.options());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, groups, std::max<int64_t>(2048, groups * (1 << 16) / std::max<int64_t>(members, 1)), [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      float acc = reduce_init(red);
      for (int64_t k = ptr[g]; k < ptr[g + 1]; ++k) acc = reduce_step(acc, s[idx[k]], red);
      o[g] = reduce_finish(acc, ptr[g + 1] - ptr[g], red);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> global_masks_cpu(const at::Tensor& scores_in,
                                                    at::ArrayRef<double> ratios,
                                                    at::IntArrayRef segment_sizes,
                                                    int64_t min_keep) {
  check_scores(scores_in);
  at::Tensor scores = scores_in.contiguous();
  const int64_t n = scores.numel();
  TORCH_CHECK_VALUE(n < (int64_t{1} << 31), "global_masks supports up to 2^31 - 1 channels, got ", n);
  const std::vector<int64_t> offsets = segment_offsets(segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  constexpr int64_t kChunk = 1 << 16;  // elements per parallel task in the linear passes

  const float* s = scores.data_ptr<float>();
  // 32-bit order keys: ascending score, -0.0 folded onto +0.0. The index breaks ties below.
  std::vector<uint32_t> fkey(n);
  std::atomic<int64_t> nan_total{0};
  at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) {
    int64_t nans = 0;
    for (int64_t i = b; i < e; ++i) {
      nans += s[i] != s[i];
      fkey[i] = float_order_key(s[i]);
    }
    nan_total += nans;
  });
  const int64_t nans = nan_total.load();
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value", nans == 1 ? "" : "s",
                    "; masks are undefined");
  const std::vector<int64_t> ks = removal_counts(ratios, n, segment_sizes, min_keep);
  const int64_t m = static_cast<int64_t>(ks.size());

  // Protected: the min_keep highest (score, index) keys of each segment take the key
  // 0xffffffff, which no NaN-free score maps to and which sorts above every removable key.
  // removal_counts guarantees k <= the removable count, so the k-th smallest key is removable.
  if (segments > 0 && min_keep > 0) {
    const int64_t grain = n >= (1 << 18) ? 1 : segments;
    at::parallel_for(0, segments, grain, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> seg;
      for (int64_t sg = b; sg < e; ++sg) {
        const int64_t lo = offsets[sg], size = offsets[sg + 1] - lo;
        if (size == 0) continue;
        if (size <= min_keep) {
          std::fill(fkey.begin() + lo, fkey.begin() + lo + size, kKeptKey);
        } else if (min_keep == 1) {  // the highest key; among equals the highest index
          int64_t arg = lo;
          for (int64_t i = lo + 1; i < lo + size; ++i) arg = fkey[i] >= fkey[arg] ? i : arg;
          fkey[arg] = kKeptKey;
        } else {
          seg.resize(size);
          for (int64_t i = 0; i < size; ++i) seg[i] = channel_key(s[lo + i], static_cast<uint32_t>(lo + i));
          std::nth_element(seg.begin(), seg.begin() + (size - min_keep), seg.end());
          for (int64_t i = size - min_keep; i < size; ++i) fkey[static_cast<uint32_t>(seg[i])] = kKeptKey;
        }
      }
    });
  }

  // The k-th smallest key v of every distinct k > 0, with the counts below and equal to it:
  // every channel below v goes, and of the channels equal to v the lowest indices go until k
  // are removed.
  std::vector<int64_t> distinct;
  for (int64_t k : ks)
    if (k > 0) distinct.push_back(k);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::vector<RankKey> found(distinct.size());
  if (!distinct.empty())
    select_ranks(fkey.data(), n, distinct.data(), static_cast<int64_t>(distinct.size()), 0, found.data());
  std::vector<RankKey> kth(m);  // per ratio (unused where k == 0)
  for (int64_t j = 0; j < m; ++j)
    if (ks[j] > 0) kth[j] = found[std::lower_bound(distinct.begin(), distinct.end(), ks[j]) - distinct.begin()];

  at::Tensor masks = at::empty({m, n}, scores.options().dtype(at::kBool));
  at::Tensor thresholds = at::empty({m}, scores.options());
  bool* mk = masks.data_ptr<bool>();
  float* th = thresholds.data_ptr<float>();
  for (int64_t j = 0; j < m; ++j) th[j] = ks[j] == 0 ? -INFINITY : order_key_float(kth[j].value);
  // Keep every key above the cut; a k == 0 row keeps everything.
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, m * chunks, (m * n >= (1 << 18)) ? 1 : m * chunks, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t j = task / chunks, lo = (task % chunks) * kChunk, hi = std::min(n, lo + kChunk);
      uint8_t* row = reinterpret_cast<uint8_t*>(mk + j * n);
      if (ks[j] == 0) std::fill(row + lo, row + hi, uint8_t{1});
      else keep_above(fkey.data(), kth[j].value, lo, hi, row);
    }
  });
  // Ties at the k-th key: when fewer than all of the channels equal to v must go, keep those
  // past the first (k - below) by index.
  for (int64_t j = 0; j < m; ++j) {
    if (ks[j] == 0) continue;
    const RankKey& r = kth[j];
    int64_t quota = ks[j] - r.below;
    if (quota == r.equal) continue;
    bool* row = mk + j * n;
    for (int64_t i = 0; i < n; ++i) {
      if (fkey[i] != r.value) continue;
      if (quota > 0) --quota; else row[i] = true;
    }
  }
  return {masks, thresholds};
}

// Per (ratio, segment): entries set in a (and in b, where given) and, with b, entries that
// differ. Bools are bytes of 0 or 1, summed in 32-bit blocks so that the loops vectorise.
void segment_counts_cpu(const bool* a_in, const bool* b_in, int64_t m, int64_t n,
                        const std::vector<int64_t>& offsets, int64_t* counts, int64_t* differ) {
  const uint8_t* a = reinterpret_cast<const uint8_t*>(a_in);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(b_in);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  constexpr int64_t kBlock = int64_t{1} << 24;  // < 2^32 / 255: a uint32 sum cannot overflow
  // One task per (ratio, segment); a parallel region only pays off past ~256K mask entries.
  const int64_t tasks = m * segments;
  const int64_t grain = m * n >= (1 << 18) ? std::max<int64_t>(1, tasks / (4 * at::get_num_threads())) : tasks;
  at::parallel_for(0, tasks, std::max<int64_t>(grain, 1), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j = task / segments, sg = task % segments;
      const uint8_t* ra = a + j * n;
      const uint8_t* rb = b ? b + j * n : nullptr;
      int64_t both = 0, diff = 0;
      for (int64_t lo = offsets[sg]; lo < offsets[sg + 1]; lo += kBlock) {
        const int64_t hi = std::min(offsets[sg + 1], lo + kBlock);
        uint32_t x = 0, y = 0;
        if (rb) {
          for (int64_t i = lo; i < hi; ++i) {
            x += ra[i] & rb[i];
            y += ra[i] ^ rb[i];
          }
        } else {
          for (int64_t i = lo; i < hi; ++i) x += ra[i];
        }
        both += x;
        diff += y;
      }
      counts[task] = both;
      if (differ) differ[task] = diff;
    }
  });
}

at::Tensor layer_counts_cpu(const at::Tensor& masks_in, at::IntArrayRef segment_sizes) {
  check_masks(masks_in, "masks");
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty");
  at::Tensor masks = masks_in.contiguous();
  const int64_t m = masks.size(0), n = masks.size(1);
  const std::vector<int64_t> offsets = segment_offsets(segment_sizes, n);
  at::Tensor counts = at::empty({m, static_cast<int64_t>(segment_sizes.size())}, masks.options().dtype(at::kLong));
  segment_counts_cpu(masks.data_ptr<bool>(), nullptr, m, n, offsets, counts.data_ptr<int64_t>(), nullptr);
  return counts;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cpu(const at::Tensor& scores,
                                                                       at::ArrayRef<double> ratios,
                                                                       at::IntArrayRef segment_sizes,
                                                                       int64_t min_keep) {
  return masks_then_counts(global_masks_cpu, layer_counts_cpu, scores, ratios, segment_sizes, min_keep);
}

std::tuple<at::Tensor, at::Tensor> mask_overlap_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                                    at::IntArrayRef segment_sizes) {
  check_masks(a_in, "a");
  check_masks(b_in, "b");
  TORCH_CHECK_VALUE(a_in.sizes() == b_in.sizes(), "a has shape ", a_in.sizes(), " but b ", b_in.sizes());
  at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t m = a.size(0), n = a.size(1);
  std::vector<int64_t> whole{n};
  const std::vector<int64_t> offsets =
      segment_offsets(segment_sizes.empty() ? at::IntArrayRef(whole) : segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  at::Tensor both = at::empty({m, segments}, a.options().dtype(at::kLong));
  at::Tensor diff = at::empty({m, segments}, a.options().dtype(at::kLong));
  segment_counts_cpu(a.data_ptr<bool>(), b.data_ptr<bool>(), m, n, offsets,
                     both.data_ptr<int64_t>(), diff.data_ptr<int64_t>());
  return {both, diff};
}

}  // namespace

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) {
  m.impl("channel_scores", &channel_scores_cpu);
  m.impl("taylor_scores", &taylor_scores_cpu);
  m.impl("taylor_accumulate_", &taylor_accumulate_cpu);
  m.impl("group_reduce", &group_reduce_cpu);
  m.impl("global_masks", &global_masks_cpu);
  m.impl("layer_counts", &layer_counts_cpu);
  m.impl("global_masks_counts", &global_masks_counts_cpu);
  m.impl("mask_overlap", &mask_overlap_cpu);
}

}  // namespace epi_fast
