// global_masks and global_masks_counts on CUDA (both min_keep forms): checks, keys, the select
// (masks_kernel.cu) and, for global_masks_counts, the segment counts on the same stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../masks.h"
#include "epi_fast/work_split.h"
#include "../test_hooks.h"
#include "counts_kernel.h"
#include "glue.h"
#include "masks_kernel.h"

namespace epi_fast {
namespace {

// What one select leaves for the counts of global_masks_counts: the segment table (the offsets,
// then each segment's first counting piece) already on the device (one host-to-device copy per
// call, shared by the select and the counts).
struct Selected {
  at::Tensor masks, thresholds;
  // [offsets (S + 1) | first pieces (S + 1) | ks (m) | per-segment min_keep (S, tensor form only)]
  at::Tensor device_args;
  const int64_t* seg_offsets = nullptr;  // the table: its first S + 1 entries are the offsets
  int64_t pieces = 0;                    // counting pieces of one mask row
};

template <typename Keep>  // int64_t (the default overload) or at::Tensor (.per_segment)
Selected select(const at::Tensor& scores_in, at::ArrayRef<double> ratios, at::IntArrayRef segment_sizes,
                const Keep& min_keep) {
  const MaskArgs args = check_global_masks(scores_in, ratios, segment_sizes, min_keep);
  const int64_t m = static_cast<int64_t>(ratios.size());
  c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n = scores.numel();
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  auto stream = cuda_glue::current_stream();

  at::Tensor keys(at::detail::empty_cuda({n}, scores.options().dtype(at::kLong)));
  at::Tensor nan_count(at::detail::empty_cuda({1}, scores.options().dtype(at::kInt)));
  nan_count.zero_();
  cuda::channel_keys(scores.const_data_ptr<float>(), n, reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()),
                     nan_count.data_ptr<int>(), stream);
  // The one host synchronisation: NaN scores must raise, and the error needs the count. Then k
  // against the unprotected count, in the order of the CPU and the reference.
  const std::vector<int64_t> ks = checks_after_nan_count(nan_count.item<int>(), ratios, n, args);

  // The largest number of channels any segment protects decides how they are found.
  int64_t most = 0;
  for (int64_t s = 0; s < segments; ++s) most = std::max(most, args.keep.protected_in(args.offsets, s));
  const cuda::Protection protection =
      most == 0 ? cuda::Protection::None : most == 1 ? cuda::Protection::Max : cuda::Protection::Sort;

  // One pinned, stream-ordered copy for everything the kernels read per call.
  std::vector<int64_t> packed;
  packed.reserve((segments > 0 ? 2 * (segments + 1) : 0) + m + (args.keep.by_segment ? segments : 0));
  int64_t pieces = 0;
  if (segments > 0) {
    const std::vector<int64_t> table = split::segment_table(args.offsets);
    pieces = table.back();
    packed.insert(packed.end(), table.begin(), table.end());
  }
  const size_t ks_at = packed.size();
  packed.insert(packed.end(), ks.begin(), ks.end());
  const size_t keep_at = packed.size();
  if (args.keep.by_segment && protection != cuda::Protection::None)
    packed.insert(packed.end(), args.keep.per_segment.begin(), args.keep.per_segment.end());
  Selected out;
  out.device_args = cuda_glue::device_vector(packed, scores.device());
  const int64_t* dev = out.device_args.const_data_ptr<int64_t>();
  out.seg_offsets = segments > 0 ? dev : nullptr;
  out.pieces = pieces;

  const cuda::Segments seg{out.seg_offsets, segments, args.keep.all,
                           args.keep.by_segment && protection != cuda::Protection::None ? dev + keep_at : nullptr,
                           protection};
  const size_t bytes = cuda::select_masks_workspace(n, segments, protection);
  at::Tensor workspace(at::detail::empty_cuda({static_cast<int64_t>(bytes)}, scores.options().dtype(at::kByte)));
  out.masks = at::detail::empty_cuda({m, n}, scores.options().dtype(at::kBool));
  out.thresholds = at::detail::empty_cuda({m}, scores.options());
  cuda::select_masks(reinterpret_cast<const uint64_t*>(keys.const_data_ptr<int64_t>()), n, seg, dev + ks_at, m,
                     out.masks.data_ptr<bool>(), out.thresholds.data_ptr<float>(), workspace.data_ptr(), bytes,
                     stream);
  return out;
}

// layer_counts of the masks just selected, from the segment table the select copied to the
// device (segment_counts loops over any number of mask rows inside the kernel).
at::Tensor counts_of(const Selected& sel, int64_t segments) {
  c10::cuda::CUDAGuard guard(sel.masks.device());  // select's guard has ended: the stream is that device's
  const int64_t m = sel.masks.size(0), n = sel.masks.size(1);
  at::Tensor counts(at::detail::empty_cuda({m, segments}, sel.masks.options().dtype(at::kLong)));
  cuda::segment_counts(sel.masks.const_data_ptr<bool>(), nullptr, m, n, sel.seg_offsets, segments, sel.pieces,
                       counts.data_ptr<int64_t>(), nullptr, cuda_glue::current_stream());
  return counts;
}

template <typename Keep>
std::tuple<at::Tensor, at::Tensor> global_masks(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                at::IntArrayRef segment_sizes, const Keep& min_keep) {
  test_hooks::enter("global_masks");
  // First, as in every other operator: an error that earlier work left pending is that work's,
  // and the checks below may copy a CUDA min_keep to the host.
  cuda_glue::check_no_pending_error("global_masks");
  Selected sel = select(scores, ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks", "written");
  return {sel.masks, sel.thresholds};
}

template <typename Keep>
std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts(const at::Tensor& scores,
                                                                   at::ArrayRef<double> ratios,
                                                                   at::IntArrayRef segment_sizes,
                                                                   const Keep& min_keep) {
  test_hooks::enter("global_masks_counts");
  cuda_glue::check_no_pending_error("global_masks_counts");
  // masks_then_counts' first check, before every other (the CPU's order).
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty: counts are taken per segment");
  Selected sel = select(scores, ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks_counts", "masks");
  at::Tensor counts = counts_of(sel, static_cast<int64_t>(segment_sizes.size()));
  test_hooks::at("global_masks_counts", "written");
  return {sel.masks, sel.thresholds, counts};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> global_masks_cuda(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                     at::IntArrayRef segment_sizes, int64_t min_keep) {
  return global_masks(scores, ratios, segment_sizes, min_keep);
}

std::tuple<at::Tensor, at::Tensor> global_masks_per_segment_cuda(const at::Tensor& scores,
                                                                 at::ArrayRef<double> ratios,
                                                                 at::IntArrayRef segment_sizes,
                                                                 const at::Tensor& min_keep) {
  // A CUDA min_keep alone sends CPU scores here: the work runs where the scores are.
  if (!scores.is_cuda()) return global_masks_per_segment_cpu(scores, ratios, segment_sizes, min_keep);
  return global_masks(scores, ratios, segment_sizes, min_keep);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cuda(const at::Tensor& scores,
                                                                        at::ArrayRef<double> ratios,
                                                                        at::IntArrayRef segment_sizes,
                                                                        int64_t min_keep) {
  return global_masks_counts(scores, ratios, segment_sizes, min_keep);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_per_segment_cuda(const at::Tensor& scores,
                                                                                    at::ArrayRef<double> ratios,
                                                                                    at::IntArrayRef segment_sizes,
                                                                                    const at::Tensor& min_keep) {
  if (!scores.is_cuda()) return global_masks_counts_per_segment_cpu(scores, ratios, segment_sizes, min_keep);
  return global_masks_counts(scores, ratios, segment_sizes, min_keep);
}

}  // namespace epi_fast
