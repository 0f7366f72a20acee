// The masks family (global_masks, global_masks_counts): argument checks shared by its CPU and
// CUDA kernels, and the composition of global_masks_counts.
//
// min_keep comes in two forms, one schema overload each: an int for every segment (the default
// overload, the per-epoch path) and a 1-D int64 tensor with one minimum per segment
// (`.per_segment`). Both reach the kernels as a MinKeep. Check order, as in the reference
// (epi_fast/ops/reference.py): scores, ratios, min_keep's form (the int's value; the tensor's
// dtype and dim), segment sizes, the tensor's relation to the segments (given, its length, then
// its entries), the NaN count, and last k against the unprotected count. The tensor's entries
// come after the segment sizes so that the Python wrappers, which check forms but never read a
// tensor's values (a CUDA tensor's would cost a synchronisation, and a graph break under
// torch.compile), leave the same first error to the operator.
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

// _checks.min_keep on a tensor: its form (dtype, dim), not its values.
inline void check_min_keep(const at::Tensor& min_keep) {
  TORCH_CHECK_TYPE(min_keep.scalar_type() == at::kLong, "min_keep tensor has dtype ",
                   py::dtype(min_keep.scalar_type()), "; expected torch.int64");
  TORCH_CHECK_VALUE(min_keep.dim() == 1, "min_keep must be an int or a 1-D tensor (one minimum per segment), got shape ",
                    py::shape(min_keep.sizes()));
}

// min_keep as the kernels take it: one minimum for every segment (the int form) or one per
// segment (the tensor form, its values on the host). A segment of size s protects min(s, keep)
// channels in either form: a minimum past the segment's size protects the whole segment.
struct MinKeep {
  int64_t all = 0;                   // the int form's value
  std::vector<int64_t> per_segment;  // the tensor form's values (one per segment), else empty
  bool by_segment = false;

  int64_t operator[](size_t s) const { return by_segment ? per_segment[s] : all; }
  // The channels segment s protects: min(its size, its minimum).
  int64_t protected_in(const std::vector<int64_t>& offsets, size_t s) const {
    return std::min<int64_t>(offsets[s + 1] - offsets[s], (*this)[s]);
  }
};

// _checks.segment_keeps: the tensor form needs segments, one entry per segment, none negative.
// Reads the tensor's values (a device-to-host copy when it is on a GPU).
inline MinKeep check_min_keep_values(const at::Tensor& min_keep, at::IntArrayRef segment_sizes) {
  TORCH_CHECK_VALUE(!segment_sizes.empty(),
                    "min_keep holds one minimum per segment, but no segment_sizes were given");
  TORCH_CHECK_VALUE(min_keep.size(0) == static_cast<int64_t>(segment_sizes.size()),
                    "min_keep must have one entry per segment (", segment_sizes.size(), "), got ", min_keep.size(0));
  const at::Tensor host = min_keep.cpu().contiguous();
  const int64_t* v = host.const_data_ptr<int64_t>();
  MinKeep keep;
  keep.by_segment = true;
  keep.per_segment.assign(v, v + host.numel());
  for (size_t s = 0; s < keep.per_segment.size(); ++s)
    TORCH_CHECK_VALUE(keep.per_segment[s] >= 0, "min_keep[", s, "] = ", keep.per_segment[s], " is negative");
  return keep;
}

// What the checks that need no score value give the kernels: the segment offsets [S + 1] (S = 0
// without segments) and min_keep.
struct MaskArgs {
  std::vector<int64_t> offsets;
  MinKeep keep;
};

inline void check_channel_limit(const at::Tensor& scores) {
  TORCH_CHECK_VALUE(scores.numel() < (int64_t{1} << 31), "global_masks supports up to 2^31 - 1 channels, got ",
                    scores.numel());
}

// Every check of global_masks that needs no score value, in the reference's order.
inline MaskArgs check_global_masks(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                   at::IntArrayRef segment_sizes, int64_t min_keep) {
  check_scores(scores);
  check_ratios(ratios);
  check_min_keep(min_keep);
  MaskArgs args{segment_offsets(segment_sizes, scores.numel()), {}};
  args.keep.all = min_keep;
  check_channel_limit(scores);
  return args;
}

inline MaskArgs check_global_masks(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                   at::IntArrayRef segment_sizes, const at::Tensor& min_keep) {
  check_scores(scores);
  check_ratios(ratios);
  check_min_keep(min_keep);
  std::vector<int64_t> offsets = segment_offsets(segment_sizes, scores.numel());
  MaskArgs args{std::move(offsets), check_min_keep_values(min_keep, segment_sizes)};
  check_channel_limit(scores);
  return args;
}

// _checks.nan_count, once the NaN scores are counted.
inline void check_nan_count(int64_t nans) {
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value", nans == 1 ? "" : "s", "; masks are undefined");
}

// k = floor(p * N + 0.5) per ratio; _checks.check_removable: k may not exceed what min_keep per
// segment leaves removable.
inline std::vector<int64_t> removal_counts(at::ArrayRef<double> ratios, int64_t n, const MaskArgs& args) {
  int64_t free = n;
  for (size_t s = 0; s + 1 < args.offsets.size(); ++s) free -= args.keep.protected_in(args.offsets, s);
  std::vector<int64_t> ks;
  ks.reserve(ratios.size());
  for (const double p : ratios) {
    const int64_t k = removal_count(p, n);
    if (args.keep.by_segment) {
      TORCH_CHECK_VALUE(k <= free, "ratio ", py::floating(p), " removes ", k, " of ", n,
                        " channels, but the per-segment min_keep leaves only ", free, " removable");
    } else {
      TORCH_CHECK_VALUE(k <= free, "ratio ", py::floating(p), " removes ", k, " of ", n, " channels, but min_keep=",
                        args.keep.all, " per segment leaves only ", free, " removable");
    }
    ks.push_back(k);
  }
  return ks;
}

// The checks that follow the kernels' NaN count, in the one order every backend and the
// reference use: the NaN count first, then k against the unprotected count. Returns k per ratio.
inline std::vector<int64_t> checks_after_nan_count(int64_t nans, at::ArrayRef<double> ratios, int64_t n,
                                                   const MaskArgs& args) {
  check_nan_count(nans);
  return removal_counts(ratios, n, args);
}

// global_masks_counts on the CPU: global_masks, then layer_counts on the masks just written (in
// cache), so the dispatcher and the Python wrapper are crossed once instead of twice. `between`
// runs between the two (the test hooks' "masks" stage). The CUDA glue composes its own, to reuse
// the segment offsets it has already copied to the device.
template <typename MasksFn, typename CountsFn, typename Between, typename Keep>
std::tuple<at::Tensor, at::Tensor, at::Tensor> masks_then_counts(MasksFn global_masks_fn, CountsFn layer_counts_fn,
                                                                 Between between, const at::Tensor& scores,
                                                                 at::ArrayRef<double> ratios,
                                                                 at::IntArrayRef segment_sizes, const Keep& min_keep) {
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty: counts are taken per segment");
  auto [masks, thresholds] = global_masks_fn(scores, ratios, segment_sizes, min_keep);
  between();
  at::Tensor counts = layer_counts_fn(masks, segment_sizes);
  return {masks, thresholds, counts};
}

// The family's kernels, one per backend and overload (cpu/masks_kernel.cpp, cuda/masks_glue.cpp);
// masks.cpp registers them.
std::tuple<at::Tensor, at::Tensor> global_masks_cpu(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                    at::IntArrayRef segment_sizes, int64_t min_keep);
std::tuple<at::Tensor, at::Tensor> global_masks_per_segment_cpu(const at::Tensor& scores,
                                                                at::ArrayRef<double> ratios,
                                                                at::IntArrayRef segment_sizes,
                                                                const at::Tensor& min_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cpu(const at::Tensor& scores,
                                                                       at::ArrayRef<double> ratios,
                                                                       at::IntArrayRef segment_sizes,
                                                                       int64_t min_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_per_segment_cpu(const at::Tensor& scores,
                                                                                   at::ArrayRef<double> ratios,
                                                                                   at::IntArrayRef segment_sizes,
                                                                                   const at::Tensor& min_keep);
std::tuple<at::Tensor, at::Tensor> global_masks_cuda(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                     at::IntArrayRef segment_sizes, int64_t min_keep);
std::tuple<at::Tensor, at::Tensor> global_masks_per_segment_cuda(const at::Tensor& scores,
                                                                 at::ArrayRef<double> ratios,
                                                                 at::IntArrayRef segment_sizes,
                                                                 const at::Tensor& min_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cuda(const at::Tensor& scores,
                                                                        at::ArrayRef<double> ratios,
                                                                        at::IntArrayRef segment_sizes,
                                                                        int64_t min_keep);
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_per_segment_cuda(const at::Tensor& scores,
                                                                                    at::ArrayRef<double> ratios,
                                                                                    at::IntArrayRef segment_sizes,
                                                                                    const at::Tensor& min_keep);

}  // namespace epi_fast
