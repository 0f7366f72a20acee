// layer_counts and mask_overlap on CUDA: checks, the outputs, the segment table (offsets and
// pieces, epi_fast/work_split.h) copied to the device without a synchronisation, the launch
// (counts_kernel.cu) on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>
#include <vector>

#include "../counts.h"
#include "../test_hooks.h"
#include "counts_kernel.h"
#include "epi_fast/work_split.h"
#include "glue.h"

namespace epi_fast {
namespace cuda_glue {

at::Tensor layer_counts(const at::Tensor& masks_in, at::IntArrayRef segment_sizes) {
  const std::vector<int64_t> offsets = check_layer_counts(masks_in, segment_sizes);
  c10::cuda::CUDAGuard guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  const int64_t m = mask_rows(masks), n = mask_channels(masks);
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  const std::vector<int64_t> seg_table = split::segment_table(offsets);
  at::Tensor table_dev = cuda_glue::device_vector(seg_table, masks.device());
  at::Tensor counts(at::detail::empty_cuda({m, segments}, masks.options().dtype(at::kLong)));
  cuda::segment_counts(masks.data_ptr<bool>(), nullptr, m, n, table_dev.data_ptr<int64_t>(), segments,
                       seg_table.back(), counts.data_ptr<int64_t>(), nullptr, cuda_glue::current_stream());
  return counts;
}

}  // namespace cuda_glue

at::Tensor layer_counts_cuda(const at::Tensor& masks, at::IntArrayRef segment_sizes) {
  test_hooks::enter("layer_counts");
  cuda_glue::check_no_pending_error("layer_counts");
  at::Tensor counts = cuda_glue::layer_counts(masks, segment_sizes);
  test_hooks::at("layer_counts", "written");
  return counts;
}

std::tuple<at::Tensor, at::Tensor> mask_overlap_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                                                     at::IntArrayRef segment_sizes) {
  test_hooks::enter("mask_overlap");
  cuda_glue::check_no_pending_error("mask_overlap");
  check_mask_pair(a_in, b_in);
  c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t m = mask_rows(a), n = mask_channels(a);
  const int64_t whole[] = {n};  // no segments: one segment of all n
  const std::vector<int64_t> offsets =
      segment_offsets(segment_sizes.empty() ? at::IntArrayRef(whole) : segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  const std::vector<int64_t> seg_table = split::segment_table(offsets);
  at::Tensor table_dev = cuda_glue::device_vector(seg_table, a.device());
  at::Tensor both(at::detail::empty_cuda({m, segments}, a.options().dtype(at::kLong)));
  at::Tensor diff(at::detail::empty_cuda({m, segments}, a.options().dtype(at::kLong)));
  cuda::segment_counts(a.data_ptr<bool>(), b.data_ptr<bool>(), m, n, table_dev.data_ptr<int64_t>(), segments,
                       seg_table.back(), both.data_ptr<int64_t>(), diff.data_ptr<int64_t>(),
                       cuda_glue::current_stream());
  test_hooks::at("mask_overlap", "written");
  return {both, diff};
}

}  // namespace epi_fast

