// global_masks and global_masks_counts on CUDA: checks, keys, the select (masks_kernel.cu) and,
// for global_masks_counts, layer_counts on the same stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>
#include <vector>

#include "../counts.h"
#include "../masks.h"
#include "../test_hooks.h"
#include "glue.h"
#include "masks_kernel.h"

namespace epi_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> global_masks(const at::Tensor& scores_in, at::ArrayRef<double> ratios,
                                                at::IntArrayRef segment_sizes, int64_t min_keep) {
  const std::vector<int64_t> offsets = check_global_masks(scores_in, ratios, segment_sizes, min_keep);
  const int64_t m = static_cast<int64_t>(ratios.size());
  TORCH_CHECK_VALUE(m <= 65535, "at most 65535 ratios per call, got ", m);
  c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n = scores.numel();
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  auto stream = cuda_glue::current_stream();

  at::Tensor keys(at::detail::empty_cuda({n}, scores.options().dtype(at::kLong)));
  at::Tensor nan_count(at::detail::empty_cuda({1}, scores.options().dtype(at::kInt)));
  nan_count.zero_();
  cuda::channel_keys(scores.data_ptr<float>(), n, reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()),
                     nan_count.data_ptr<int>(), stream);
  // The one host synchronisation: NaN scores must raise, and the error needs the count.
  check_nan_count(nan_count.item<int>());
  const std::vector<int64_t> ks = removal_counts(ratios, n, segment_sizes, min_keep);

  at::Tensor ks_dev = cuda_glue::device_vector(ks, scores.device());
  at::Tensor offsets_dev;
  if (segments > 0) offsets_dev = cuda_glue::device_vector(offsets, scores.device());
  const size_t bytes = cuda::select_masks_workspace(n, segments);
  at::Tensor workspace(at::detail::empty_cuda({static_cast<int64_t>(bytes)}, scores.options().dtype(at::kByte)));
  at::Tensor masks(at::detail::empty_cuda({m, n}, scores.options().dtype(at::kBool)));
  at::Tensor thresholds(at::detail::empty_cuda({m}, scores.options()));
  cuda::select_masks(reinterpret_cast<const uint64_t*>(keys.data_ptr<int64_t>()), n,
                     segments > 0 ? offsets_dev.data_ptr<int64_t>() : nullptr, segments, min_keep,
                     ks_dev.data_ptr<int64_t>(), m, masks.data_ptr<bool>(), thresholds.data_ptr<float>(),
                     workspace.data_ptr(), bytes, stream);
  return {masks, thresholds};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> global_masks_cuda(const at::Tensor& scores, at::ArrayRef<double> ratios,
                                                     at::IntArrayRef segment_sizes, int64_t min_keep) {
  test_hooks::enter("global_masks");
  auto result = global_masks(scores, ratios, segment_sizes, min_keep);
  test_hooks::at("global_masks", "written");
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_masks_counts_cuda(const at::Tensor& scores,
                                                                        at::ArrayRef<double> ratios,
                                                                        at::IntArrayRef segment_sizes,
                                                                        int64_t min_keep) {
  test_hooks::enter("global_masks_counts");
  auto result = masks_then_counts(
      global_masks, cuda_glue::layer_counts, [] { test_hooks::at("global_masks_counts", "masks"); }, scores, ratios,
      segment_sizes, min_keep);
  test_hooks::at("global_masks_counts", "written");
  return result;
}

}  // namespace epi_fast

