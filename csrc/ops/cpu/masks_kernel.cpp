// global_masks and global_masks_counts on the CPU (both min_keep forms): 32-bit order keys, the
// min_keep highest of each segment protected, one radix select for the k-th key of every ratio,
// the masks filled in parallel chunks with ties at the k-th key resolved by index.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <tuple>
#include <vector>

#include "../counts.h"
#include "../masks.h"
#include "../test_hooks.h"
#include "radix_select.h"

namespace epi_fast {
namespace {

// Keep: int64_t (the default overload) or at::Tensor (.per_segment); check_global_masks turns
// either into a MinKeep.
template <typename Keep>
std::tuple<at::Tensor, at::Tensor> global_masks(const at::Tensor& scores_in, at::ArrayRef<double> ratios,
                                                at::IntArrayRef segment_sizes, const Keep& min_keep) {
  const MaskArgs args = check_global_masks(scores_in, ratios, segment_sizes, min_keep);
  const std::vector<int64_t>& offsets = args.offsets;
  const MinKeep& keep = args.keep;
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n = scores.numel();
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  constexpr int64_t kChunk = 1 << 16;  // elements per parallel task in the linear passes

  const float* s = scores.const_data_ptr<float>();
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
  const std::vector<int64_t> ks = checks_after_nan_count(nan_total.load(), ratios, n, args);
  const int64_t m = static_cast<int64_t>(ks.size());

  // Protected: the p = min(size, min_keep of the segment) highest (score, index) keys of each
  // segment take the key kProtectedKey32, which no NaN-free score maps to and which sorts above
  // every removable key. removal_counts guarantees k <= the removable count, so the k-th
  // smallest key is removable.
  const bool any_protected = segments > 0 && (keep.by_segment || keep.all > 0);
  if (any_protected) {
    const int64_t grain = n >= (1 << 18) ? 1 : segments;
    at::parallel_for(0, segments, grain, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> seg;
      for (int64_t sg = b; sg < e; ++sg) {
        const int64_t lo = offsets[sg], size = offsets[sg + 1] - lo;
        const int64_t p = keep.protected_in(offsets, static_cast<size_t>(sg));
        if (p == 0) continue;
        if (p == size) {
          std::fill(fkey.begin() + lo, fkey.begin() + lo + size, kProtectedKey32);
        } else if (p == 1) {  // the highest key; among equals the highest index
          int64_t arg = lo;
          for (int64_t i = lo + 1; i < lo + size; ++i) arg = fkey[i] >= fkey[arg] ? i : arg;
          fkey[arg] = kProtectedKey32;
        } else {
          seg.resize(size);
          for (int64_t i = 0; i < size; ++i) seg[i] = channel_key(s[lo + i], static_cast<uint32_t>(lo + i));
          std::nth_element(seg.begin(), seg.begin() + (size - p), seg.end());
          for (int64_t i = size - p; i < size; ++i) fkey[static_cast<uint32_t>(seg[i])] = kProtectedKey32;
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
  std::vector<cpu::RankKey> found(distinct.size());
  if (!distinct.empty())
    cpu::select_ranks(fkey.data(), n, distinct.data(), static_cast<int64_t>(distinct.size()), 0, found.data());
  std::vector<cpu::RankKey> kth(m);  // per ratio (unused where k == 0)
  for (int64_t j = 0; j < m; ++j)
    if (ks[j] > 0) kth[j] = found[std::lower_bound(distinct.begin(), distinct.end(), ks[j]) - distinct.begin()];

  at::Tensor masks(at::detail::empty_cpu({m, n}, scores.options().dtype(at::kBool)));
  at::Tensor thresholds(at::detail::empty_cpu({m}, scores.options()));
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
      else cpu::keep_above(fkey.data(), kth[j].value, lo, hi, row);
    }
  });
  // Ties at the k-th key: when fewer than all of the channels equal to v must go, keep those
  // past the first (k - below) by index.
  for (int64_t j = 0; j < m; ++j) {
    if (ks[j] == 0) continue;
    const cpu::RankKey& r = kth[j];
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

}  // namespace

std::tuple<at::Tensor, at::Tensor> global_masks_cpu(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                    at::IntArrayRef segment_sizes, int64_t min_keep) {
  test_hooks::enter("global_masks");
  auto result = global_masks(scores, ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks", "written");
  return result;
}

std::tuple<at::Tensor, at::Tensor> global_masks_per_segment_cpu(const at::Tensor& scores,
                                                                at::ArrayRef<double> ratios,
                                                                at::IntArrayRef segment_sizes,
                                                                const at::Tensor& min_keep) {
  test_hooks::enter("global_masks");
  auto result = global_masks(scores, ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks", "written");
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cpu(const at::Tensor& scores,
                                                                       at::ArrayRef<double> ratios,
                                                                       at::IntArrayRef segment_sizes,
                                                                       int64_t min_keep) {
  test_hooks::enter("global_masks_counts");
  auto result = masks_then_counts(
      global_masks<int64_t>, cpu::layer_counts, [] { test_hooks::at("global_masks_counts", "masks"); }, scores,
      ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks_counts", "written");
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_per_segment_cpu(const at::Tensor& scores,
                                                                                   at::ArrayRef<double> ratios,
                                                                                   at::IntArrayRef segment_sizes,
                                                                                   const at::Tensor& min_keep) {
  test_hooks::enter("global_masks_counts");
  auto result = masks_then_counts(
      global_masks<at::Tensor>, cpu::layer_counts, [] { test_hooks::at("global_masks_counts", "masks"); }, scores,
      ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks_counts", "written");
  return result;
}

}  // namespace epi_fast
