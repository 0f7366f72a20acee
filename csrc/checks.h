// Argument checks of the torch glue. The Python wrappers validate first and name the problem
// in the caller's terms; these guard direct torch.ops calls so that no bad input reaches a
// kernel.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "epi_fast/kernel_math.h"

namespace epi_fast {

inline void check_float_list(at::TensorList tensors, const char* name) {
  TORCH_CHECK_VALUE(!tensors.empty(), name, " is empty: pass at least one tensor");
  const auto& first = tensors[0];
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK_VALUE(t.dim() >= 1, name, "[", i, "] is 0-dimensional: channels are read along dim 0");
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                         t.scalar_type() == at::kBFloat16,
                     name, "[", i, "] has dtype ", t.scalar_type(),
                     "; supported: float32, float16, bfloat16");
    TORCH_CHECK_TYPE(t.scalar_type() == first.scalar_type(), name, " mixes dtypes: ", name,
                     "[0] is ", first.scalar_type(), ", ", name, "[", i, "] is ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == first.device(), name, " mixes devices: ", name, "[0] is on ",
                      first.device(), ", ", name, "[", i, "] on ", t.device());
  }
}

inline ScoreKind parse_score_kind(c10::string_view s) {
  if (s == "l1") return ScoreKind::L1;
  if (s == "l2") return ScoreKind::L2;
  if (s == "abs") return ScoreKind::Abs;
  TORCH_CHECK_VALUE(false, "unknown criterion '", std::string(s), "'; expected 'l1', 'l2' or 'abs'");
}

inline TaylorMode parse_taylor_mode(c10::string_view s) {
  if (s == "square") return TaylorMode::Square;
  if (s == "abs") return TaylorMode::Abs;
  TORCH_CHECK_VALUE(false, "unknown mode '", std::string(s), "'; expected 'square' or 'abs'");
}

inline Reduce parse_reduce(c10::string_view s) {
  if (s == "sum") return Reduce::Sum;
  if (s == "mean") return Reduce::Mean;
  if (s == "max") return Reduce::Max;
  TORCH_CHECK_VALUE(false, "unknown reduce '", std::string(s), "'; expected 'sum', 'mean' or 'max'");
}

inline void check_abs_rows(at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const int64_t cols = t.size(0) ? t.numel() / t.size(0) : 1;
    TORCH_CHECK_VALUE(t.size(0) == 0 || cols == 1, "criterion 'abs' scores one value per channel, but tensors[", i,
                      "] has ", cols, " values per channel; use 'l1' or 'l2' for filters");
  }
}

// Channel offset of every tensor's row 0; validates that all rows land inside the output.
inline std::vector<int64_t> check_offsets(at::TensorList tensors, at::IntArrayRef offsets,
                                          int64_t channels) {
  std::vector<int64_t> out(tensors.size());
  if (offsets.empty()) {
    int64_t acc = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      out[i] = acc;
      acc += tensors[i].size(0);
    }
  } else {
    TORCH_CHECK_VALUE(offsets.size() == tensors.size(), "offsets has ", offsets.size(),
                      " entries for ", tensors.size(), " tensors");
    out.assign(offsets.begin(), offsets.end());
  }
  for (size_t i = 0; i < tensors.size(); ++i)
    // out[i] <= channels - rows, not out[i] + rows <= channels: an offset near 2^63 must not wrap.
    TORCH_CHECK_VALUE(out[i] >= 0 && out[i] <= channels - tensors[i].size(0), "tensor ", i,
                      " maps rows ", out[i], "..", out[i] + tensors[i].size(0) - 1,
                      " outside the ", channels, " channels");
  return out;
}

inline void check_pairs(at::TensorList params, at::TensorList grads) {
  check_float_list(params, "params");
  check_float_list(grads, "grads");
  TORCH_CHECK_VALUE(params.size() == grads.size(), params.size(), " params but ", grads.size(), " grads");
  TORCH_CHECK_TYPE(params[0].scalar_type() == grads[0].scalar_type(), "params are ",
                   params[0].scalar_type(), " but grads are ", grads[0].scalar_type());
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK_VALUE(params[i].sizes() == grads[i].sizes(), "params[", i, "] has shape ",
                      params[i].sizes(), " but grads[", i, "] ", grads[i].sizes());
    TORCH_CHECK_VALUE(params[i].device() == grads[i].device(), "params[", i, "] is on ",
                      params[i].device(), " but grads[", i, "] on ", grads[i].device());
  }
}

inline void check_accumulators(const at::Tensor& acc, const at::Tensor& skipped,
                               const at::Tensor& device_of) {
  TORCH_CHECK_TYPE(acc.scalar_type() == at::kFloat && acc.dim() == 1, "acc must be a 1-D float32 tensor");
  TORCH_CHECK_VALUE(acc.is_contiguous(), "acc must be contiguous");
  TORCH_CHECK_TYPE(skipped.scalar_type() == at::kLong && skipped.numel() == 1,
                   "skipped must be a one-element int64 tensor");
  TORCH_CHECK_VALUE(acc.device() == device_of.device() && skipped.device() == device_of.device(),
                    "acc and skipped must be on the gradients' device ", device_of.device());
}

// taylor_accumulate_'s optional 1 / loss scale: one floating element on acc's device.
inline void check_inv_scale(const c10::optional<at::Tensor>& inv_scale, const at::Tensor& acc) {
  if (!inv_scale.has_value()) return;
  TORCH_CHECK_TYPE(inv_scale->is_floating_point() && inv_scale->numel() == 1,
                   "inv_scale must be None or a one-element float32 tensor");
  TORCH_CHECK_VALUE(inv_scale->device() == acc.device(), "inv_scale is on ", inv_scale->device(),
                    ", acc on ", acc.device());
}

inline void check_scores(const at::Tensor& scores) {
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat, "scores must be float32, got ", scores.scalar_type());
  TORCH_CHECK_VALUE(scores.dim() == 1, "scores must be 1-D (one score per channel), got shape ", scores.sizes());
}

// Offsets [S + 1] of the segments; empty sizes mean "no segments".
inline std::vector<int64_t> segment_offsets(at::IntArrayRef sizes, int64_t total) {
  std::vector<int64_t> offsets(sizes.size() + 1, 0);
  for (size_t s = 0; s < sizes.size(); ++s) {
    TORCH_CHECK_VALUE(sizes[s] >= 0, "segment_sizes[", s, "] = ", sizes[s], " is negative");
    // Compared before adding: sizes near 2^63 must not wrap around to a sum that matches.
    TORCH_CHECK_VALUE(sizes[s] <= total - offsets[s], "segment_sizes add up to more than the ", total,
                      " channels (from segment_sizes[", s, "] = ", sizes[s], " on)");
    offsets[s + 1] = offsets[s] + sizes[s];
  }
  TORCH_CHECK_VALUE(sizes.empty() || offsets.back() == total, "segment_sizes add up to ",
                    offsets.back(), ", but there are ", total, " channels");
  return offsets;
}

// global_masks_counts for any backend: that backend's global_masks, then its layer_counts on
// the masks just written (in cache on the CPU, queued on the same stream on CUDA), so the
// dispatcher and the Python wrapper are crossed once instead of twice.
template <typename MasksFn, typename CountsFn>
std::tuple<at::Tensor, at::Tensor, at::Tensor> masks_then_counts(MasksFn global_masks_fn, CountsFn layer_counts_fn,
                                                                 const at::Tensor& scores,
                                                                 at::ArrayRef<double> ratios,
                                                                 at::IntArrayRef segment_sizes, int64_t min_keep) {
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty: counts are taken per segment");
  auto [masks, thresholds] = global_masks_fn(scores, ratios, segment_sizes, min_keep);
  at::Tensor counts = layer_counts_fn(masks, segment_sizes);
  return {masks, thresholds, counts};
}

inline std::vector<int64_t> removal_counts(at::ArrayRef<double> ratios, int64_t n,
                                           at::IntArrayRef sizes, int64_t min_keep) {
  TORCH_CHECK_VALUE(!ratios.empty(), "ratios is empty: pass at least one ratio");
  TORCH_CHECK_VALUE(min_keep >= 0, "min_keep must be non-negative, got ", min_keep);
  int64_t free = n;
  if (!sizes.empty()) {
    for (auto s : sizes) free -= std::min<int64_t>(s, min_keep);
  }
  std::vector<int64_t> ks;
  for (size_t j = 0; j < ratios.size(); ++j) {
    const double p = ratios[j];
    TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "ratio ", p, " (ratios[", j, "]) is outside [0, 1)");
    const int64_t k = removal_count(p, n);
    TORCH_CHECK_VALUE(k <= free, "ratio ", p, " removes ", k, " of ", n, " channels, but min_keep=",
                      min_keep, " per segment leaves only ", free, " removable");
    ks.push_back(k);
  }
  return ks;
}

inline void check_masks(const at::Tensor& masks, const char* name) {
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool, name, " must be bool, got ", masks.scalar_type());
  TORCH_CHECK_VALUE(masks.dim() == 2, name, " must be [ratios, channels], got shape ", masks.sizes());
}

}  // namespace epi_fast
