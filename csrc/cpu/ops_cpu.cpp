// CPU kernels: at::parallel_for over rows (or segments); every reduction inside one row or
// segment runs on one thread in a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../checks.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {

// Row-block kernels, compiled twice (AVX2 and baseline x86-64) and picked at load time by the
// CPU's capabilities: the wheel runs anywhere, and AVX2 machines read at full bandwidth. They
// live outside the anonymous namespace because GCC's ifunc resolvers need external symbols.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EPI_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EPI_CPU_CLONES
#endif

namespace cpu_rows {
#define EPI_SCORE_ROWS(NAME, KIND, T)                                                   \
  EPI_CPU_CLONES void NAME(const T* data, int64_t cols, int64_t rows, float* out) {     \
    for (int64_t r = 0; r < rows; ++r)                                                  \
      out[r] = score_finish(row_score_sum<KIND>(data + r * cols, cols), KIND);          \
  }
#define EPI_DOT_ROWS(NAME, T)                                                           \
  EPI_CPU_CLONES void NAME(const T* a, const T* b, int64_t cols, int64_t rows, float* out) { \
    for (int64_t r = 0; r < rows; ++r) out[r] = row_dot(a + r * cols, b + r * cols, cols); \
  }
EPI_SCORE_ROWS(l1_f32, ScoreKind::L1, float)
EPI_SCORE_ROWS(l2_f32, ScoreKind::L2, float)
EPI_SCORE_ROWS(abs_f32, ScoreKind::Abs, float)
EPI_SCORE_ROWS(l1_f16, ScoreKind::L1, at::Half)
EPI_SCORE_ROWS(l2_f16, ScoreKind::L2, at::Half)
EPI_SCORE_ROWS(abs_f16, ScoreKind::Abs, at::Half)
EPI_SCORE_ROWS(l1_bf16, ScoreKind::L1, at::BFloat16)
EPI_SCORE_ROWS(l2_bf16, ScoreKind::L2, at::BFloat16)
EPI_SCORE_ROWS(abs_bf16, ScoreKind::Abs, at::BFloat16)
EPI_DOT_ROWS(dot_f32, float)
EPI_DOT_ROWS(dot_f16, at::Half)
EPI_DOT_ROWS(dot_bf16, at::BFloat16)
#undef EPI_SCORE_ROWS
#undef EPI_DOT_ROWS

template <typename T>
using ScoreRows = void (*)(const T*, int64_t, int64_t, float*);

template <typename T>
struct ForType;
template <>
struct ForType<float> {
  static constexpr ScoreRows<float> score[3] = {l1_f32, l2_f32, abs_f32};
  static constexpr auto dot = dot_f32;
};
template <>
struct ForType<at::Half> {
  static constexpr ScoreRows<at::Half> score[3] = {l1_f16, l2_f16, abs_f16};
  static constexpr auto dot = dot_f16;
};
template <>
struct ForType<at::BFloat16> {
  static constexpr ScoreRows<at::BFloat16> score[3] = {l1_bf16, l2_bf16, abs_bf16};
  static constexpr auto dot = dot_bf16;
};
}  // namespace cpu_rows

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

// LSD radix sort of 32-bit keys in three passes of 11 bits (2,048 bins: the histograms stay in
// L1); a pass whose digit is the same for every key is skipped.
void radix_sort(std::vector<uint32_t>& keys) {
  constexpr int kBits = 11, kBins = 1 << kBits, kPasses = 3;
  const size_t n = keys.size();
  if (n < 2) return;
  std::vector<uint32_t> tmp(n);
  std::vector<uint32_t> hist(kPasses * kBins, 0);
  for (uint32_t k : keys)
    for (int d = 0; d < kPasses; ++d) ++hist[d * kBins + ((k >> (kBits * d)) & (kBins - 1))];
  uint32_t* src = keys.data();
  uint32_t* dst = tmp.data();
  for (int d = 0; d < kPasses; ++d) {
    uint32_t* h = hist.data() + d * kBins;
    const int shift = kBits * d;
    if (h[(src[0] >> shift) & (kBins - 1)] == n) continue;
    uint32_t acc = 0;
    for (int b = 0; b < kBins; ++b) {
      const uint32_t c = h[b];
      h[b] = acc;
      acc += c;
    }
    for (size_t i = 0; i < n; ++i) dst[h[(src[i] >> shift) & (kBins - 1)]++] = src[i];
    std::swap(src, dst);
  }
  if (src != keys.data()) std::copy(src, src + n, keys.data());
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
    const auto score = cpu_rows::ForType<T>::score[static_cast<int>(kind)];
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
    parallel_blocks(r, [&](size_t t, int64_t row, int64_t rows, int64_t g) {
      cpu_rows::ForType<T>::dot(static_cast<const T*>(r.data[t]) + row * r.cols[t],
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
  check_pairs(params, grads);
  check_accumulators(acc, skipped, params[0]);
  const int64_t channels = acc.numel();
  at::Tensor raw = taylor_raw_cpu(params, grads, offsets, channels);
  float scale = 1.0f;
  if (inv_scale.has_value()) {
    TORCH_CHECK_VALUE(inv_scale->numel() == 1, "inv_scale must have one element");
    scale = inv_scale->to(at::kFloat).item<float>();
  }
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

  const float* s = scores.data_ptr<float>();
  // 32-bit order keys: ascending score, -0.0 folded onto +0.0. The index breaks ties below.
  std::vector<uint32_t> fkey(n);
  int64_t nans = 0;
  for (int64_t i = 0; i < n; ++i) {
    nans += s[i] != s[i];
    fkey[i] = float_order_key(s[i]);
  }
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value", nans == 1 ? "" : "s",
                    "; masks are undefined");
  const std::vector<int64_t> ks = removal_counts(ratios, n, segment_sizes, min_keep);
  const int64_t m = static_cast<int64_t>(ks.size());

  // Protected: the min_keep highest (score, index) keys of each segment.
  std::vector<uint8_t> protect(n, 0);
  if (segments > 0 && min_keep > 0) {
    // Partial sorts of a few thousand keys: parallel only when there is enough work.
    const int64_t grain = n >= (1 << 18) ? 1 : segments;
    at::parallel_for(0, segments, grain, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> seg;
      for (int64_t sg = b; sg < e; ++sg) {
        const int64_t lo = offsets[sg], size = offsets[sg + 1] - lo;
        if (size == 0) continue;
        if (size <= min_keep) {
          std::fill(protect.begin() + lo, protect.begin() + lo + size, 1);
          continue;
        }
        seg.resize(size);
        for (int64_t i = 0; i < size; ++i) seg[i] = channel_key(s[lo + i], static_cast<uint32_t>(lo + i));
        std::nth_element(seg.begin(), seg.begin() + (size - min_keep), seg.end());
        const uint64_t limit = seg[size - min_keep];  // keys >= limit are protected
        for (int64_t i = 0; i < size; ++i)
          protect[lo + i] = channel_key(s[lo + i], static_cast<uint32_t>(lo + i)) >= limit;
      }
    });
  }

  // One radix sort of the removable keys serves every ratio: the k-th smallest key v is
  // sorted[k - 1]; every channel below v goes, and of the channels equal to v the lowest
  // indices go until k are removed. Protected channels take the key 0xffffffff, which no
  // NaN-free score maps to and which is above every removable key.
  constexpr uint32_t kKept = 0xffffffffu;
  std::vector<uint32_t> pool;
  pool.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (protect[i]) fkey[i] = kKept; else pool.push_back(fkey[i]);
  }
  radix_sort(pool);

  at::Tensor masks = at::empty({m, n}, scores.options().dtype(at::kBool));
  at::Tensor thresholds = at::empty({m}, scores.options());
  bool* mk = masks.data_ptr<bool>();
  float* th = thresholds.data_ptr<float>();
  const int64_t grain = m * n >= (1 << 18) ? 1 : m;
  at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      bool* row = mk + j * n;
      const int64_t k = ks[j];
      if (k == 0) {
        std::fill(row, row + n, true);
        th[j] = -INFINITY;
        continue;
      }
      const uint32_t v = pool[k - 1];
      th[j] = order_key_float(v);
      // Branch-free: scores fall on either side of v at random, which defeats prediction.
      int64_t quota = k - (std::lower_bound(pool.begin(), pool.end(), v) - pool.begin());
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t key = fkey[i];
        const int64_t take = (key == v) & (quota > 0);
        quota -= take;
        row[i] = !((key < v) | take);
      }
    }
  });
  return {masks, thresholds};
}

void segment_counts_cpu(const bool* a, const bool* b, int64_t m, int64_t n,
                        const std::vector<int64_t>& offsets, int64_t* counts, int64_t* differ) {
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  // One task per (ratio, segment); a parallel region only pays off past ~256K mask entries.
  const int64_t tasks = m * segments;
  const int64_t grain = m * n >= (1 << 18) ? std::max<int64_t>(1, tasks / (4 * at::get_num_threads())) : tasks;
  at::parallel_for(0, tasks, std::max<int64_t>(grain, 1), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j = task / segments, sg = task % segments;
      const bool* ra = a + j * n;
      const bool* rb = b ? b + j * n : nullptr;
      int64_t both = 0, diff = 0;
      for (int64_t i = offsets[sg]; i < offsets[sg + 1]; ++i) {
        const bool y = rb ? rb[i] : true;
        both += ra[i] && y;
        diff += ra[i] != y;
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
  m.impl("mask_overlap", &mask_overlap_cpu);
}

}  // namespace epi_fast
