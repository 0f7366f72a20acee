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

// Calls fn(tensor, row, global_row) for every row in [begin, end).
template <typename Fn>
void for_rows(const Rows& r, int64_t begin, int64_t end, Fn fn) {
  size_t t = std::upper_bound(r.row_start.begin(), r.row_start.end(), begin) - r.row_start.begin() - 1;
  for (int64_t g = begin; g < end; ++g) {
    while (g >= r.row_start[t + 1]) ++t;
    fn(t, g - r.row_start[t], g);
  }
}

// Runs fn over every row, in parallel over balanced tasks.
template <typename Fn>
void parallel_rows(const Rows& r, Fn fn) {
  const std::vector<int64_t> bounds = balanced_tasks(r);
  const int64_t tasks = static_cast<int64_t>(bounds.size()) - 1;
  if (tasks <= 0) return;
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    for_rows(r, bounds[b], bounds[e], fn);
  });
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
    parallel_rows(r, [&](size_t t, int64_t row, int64_t g) {
      const T* p = static_cast<const T*>(r.data[t]) + row * r.cols[t];
      o[g] = score_finish(row_score_sum(p, r.cols[t], kind), kind);
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
    parallel_rows(r, [&](size_t t, int64_t row, int64_t g) {
      const T* w = static_cast<const T*>(r.data[t]) + row * r.cols[t];
      const T* dw = static_cast<const T*>(r.grad[t]) + row * r.cols[t];
      row_sums[g] = row_dot(w, dw, r.cols[t]);
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
  std::vector<uint64_t> keys(n);
  int64_t nans = 0;
  for (int64_t i = 0; i < n; ++i) {
    nans += s[i] != s[i];
    keys[i] = channel_key(s[i], static_cast<uint32_t>(i));
  }
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value", nans == 1 ? "" : "s",
                    "; masks are undefined");
  const std::vector<int64_t> ks = removal_counts(ratios, n, segment_sizes, min_keep);
  const int64_t m = static_cast<int64_t>(ks.size());

  // Protected: the min_keep highest keys of each segment.
  std::vector<uint64_t> removable = keys;
  if (segments > 0 && min_keep > 0) {
    // Partial sorts of a few thousand keys: parallel only when there is enough work.
    const int64_t grain = n >= (1 << 18) ? 1 : segments;
    at::parallel_for(0, segments, grain, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> seg;
      for (int64_t sg = b; sg < e; ++sg) {
        const int64_t lo = offsets[sg], size = offsets[sg + 1] - lo;
        if (size == 0) continue;
        uint64_t limit = 0;  // keys >= limit are protected
        if (size > min_keep) {
          seg.assign(keys.begin() + lo, keys.begin() + lo + size);
          std::nth_element(seg.begin(), seg.begin() + (size - min_keep), seg.end());
          limit = seg[size - min_keep];
        }
        for (int64_t i = lo; i < lo + size; ++i)
          if (keys[i] >= limit) removable[i] = kProtectedKey;
      }
    });
  }

  // k-th smallest removable key for every ratio: one partial partition per distinct k, each
  // working on the part of the array above the previous one.
  std::vector<uint64_t> pool;
  pool.reserve(n);
  for (uint64_t k : removable)
    if (k != kProtectedKey) pool.push_back(k);
  std::vector<int64_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ks[a] < ks[b]; });
  std::vector<uint64_t> kth(m, 0);
  int64_t done = 0;  // pool[0, done) holds the done smallest keys, in no order
  for (int64_t j : order) {
    const int64_t k = ks[j];
    if (k == 0) continue;
    if (k > done) {
      std::nth_element(pool.begin() + done, pool.begin() + (k - 1), pool.end());
      done = k;
    }
    // pool[k - 1] is the k-th smallest once partitioned at k - 1; later partitions leave
    // [0, done) untouched, so it stays valid for equal k.
    kth[j] = *std::max_element(pool.begin(), pool.begin() + k);
  }

  at::Tensor masks = at::empty({m, n}, scores.options().dtype(at::kBool));
  at::Tensor thresholds = at::empty({m}, scores.options());
  bool* mk = masks.data_ptr<bool>();
  float* th = thresholds.data_ptr<float>();
  for (int64_t j = 0; j < m; ++j) th[j] = ks[j] ? channel_key_score(kth[j]) : -INFINITY;
  at::parallel_for(0, n, std::max<int64_t>(1 << 16, (1 << 18) / std::max<int64_t>(m, 1)), [&](int64_t b, int64_t e) {
    for (int64_t j = 0; j < m; ++j) {
      bool* row = mk + j * n;
      const bool none = ks[j] == 0;
      for (int64_t i = b; i < e; ++i) row[i] = none || removable[i] > kth[j];
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
