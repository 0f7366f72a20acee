// The masks family (global_masks, global_masks_counts): argument checks shared by its CPU and
// CUDA kernels, and the composition of global_masks_counts.
#pragma once

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {

// _checks.ratios on ratios already taken as float64: at least one, each in [0, 1).
inline void check_ratios(at::ArrayRef<double> ratios) {
  TORCH_CHECK_VALUE(!ratios.empty(), "ratios is empty: pass at least one ratio");
  for (size_t j = 0; j < ratios.size(); ++j) {
    const double p = ratios[j];
    TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "ratio ", py::floating(p), " (ratios[", j, "]) is outside [0, 1)");  // NaN too
  }
}

// _checks.min_keep on an int.
inline void check_min_keep(int64_t min_keep) {
  TORCH_CHECK_VALUE(min_keep >= 0, "min_keep must be a non-negative integer, got ", min_keep);
}

// Every check of global_masks that needs no score value, in the reference's order; the segment
// offsets [S + 1] (S = 0 without segments).
inline std::vector<int64_t> check_global_masks(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                               at::IntArrayRef segment_sizes, int64_t min_keep) {
  check_scores(scores);
  check_ratios(ratios);
  check_min_keep(min_keep);
  std::vector<int64_t> offsets = segment_offsets(segment_sizes, scores.numel());
  TORCH_CHECK_VALUE(scores.numel() < (int64_t{1} << 31), "global_masks supports up to 2^31 - 1 channels, got ",
                    scores.numel());
  return offsets;
}

// _checks.nan_count, once the NaN scores are counted.
inline void check_nan_count(int64_t nans) {
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value", nans == 1 ? "" : "s", "; masks are undefined");
}

// k = floor(p * N + 0.5) per ratio; _checks.check_removable: k may not exceed what min_keep per
// segment leaves removable.
inline std::vector<int64_t> removal_counts(at::ArrayRef<double> ratios, int64_t n, at::IntArrayRef sizes,
                                           int64_t min_keep) {
  int64_t free = n;
  for (auto s : sizes) free -= std::min<int64_t>(s, min_keep);
  std::vector<int64_t> ks;
  ks.reserve(ratios.size());
  for (const double p : ratios) {
    const int64_t k = removal_count(p, n);
    TORCH_CHECK_VALUE(k <= free, "ratio ", py::floating(p), " removes ", k, " of ", n, " channels, but min_keep=",
                      min_keep, " per segment leaves only ", free, " removable");
    ks.push_back(k);
  }
  return ks;
}

// global_masks_counts for any backend: that backend's global_masks, then its layer_counts on the
// masks just written (in cache on the CPU, queued on the same stream on CUDA), so the dispatcher
// and the Python wrapper are crossed once instead of twice. `between` runs between the two (the
// test hooks' "masks" stage).
template <typename MasksFn, typename CountsFn, typename Between>
std::tuple<at::Tensor, at::Tensor, at::Tensor> masks_then_counts(MasksFn global_masks_fn, CountsFn layer_counts_fn,
                                                                 Between between, const at::Tensor& scores,
                                                                 at::ArrayRef<double> ratios,
                                                                 at::IntArrayRef segment_sizes, int64_t min_keep) {
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty: counts are taken per segment");
  auto [masks, thresholds] = global_masks_fn(scores, ratios, segment_sizes, min_keep);
  between();
  at::Tensor counts = layer_counts_fn(masks, segment_sizes);
  return {masks, thresholds, counts};
}

// The family's kernels, one per backend (cpu/masks_kernel.cpp, cuda/masks_glue.cpp); masks.cpp
// registers them.
std::tuple<at::Tensor, at::Tensor> global_masks_cpu(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                    at::IntArrayRef segment_sizes, int64_t min_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cpu(const at::Tensor& scores,
                                                                       at::ArrayRef<double> ratios,
                                                                       at::IntArrayRef segment_sizes,
                                                                       int64_t min_keep);
std::tuple<at::Tensor, at::Tensor> global_masks_cuda(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                     at::IntArrayRef segment_sizes, int64_t min_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cuda(const at::Tensor& scores,
                                                                        at::ArrayRef<double> ratios,
                                                                        at::IntArrayRef segment_sizes,
                                                                        int64_t min_keep);

}  // namespace epi_fast
