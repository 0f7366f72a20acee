// The counts family (layer_counts, mask_overlap): argument checks shared by its CPU and CUDA
// kernels, and the kernels' declarations.
#pragma once

#include <tuple>
#include <vector>

#include "checks.h"

namespace epi_fast {

// _checks.masks_matrix: bool [ratios, channels]; a 1-D mask is one row.
inline void check_masks(const at::Tensor& masks, const char* name) {
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool, name, " must be bool, got ", py::dtype(masks.scalar_type()));
  TORCH_CHECK_VALUE(masks.dim() == 1 || masks.dim() == 2, name, " must be [ratios, channels], got shape ",
                    py::shape(masks.sizes()));
}

// Rows and channels of a mask that check_masks accepted.
inline int64_t mask_rows(const at::Tensor& masks) { return masks.dim() == 1 ? 1 : masks.size(0); }
inline int64_t mask_channels(const at::Tensor& masks) { return masks.size(masks.dim() - 1); }

// _checks.mask_pair.
inline void check_mask_pair(const at::Tensor& a, const at::Tensor& b) {
  check_masks(a, "a");
  check_masks(b, "b");
  // Compared as [rows, channels], as the reference compares them after unsqueezing a 1-D mask.
  const std::vector<int64_t> sa{mask_rows(a), mask_channels(a)}, sb{mask_rows(b), mask_channels(b)};
  TORCH_CHECK_VALUE(sa == sb, "a has shape ", py::shape(sa), " but b ", py::shape(sb));
  TORCH_CHECK_VALUE(a.device() == b.device(), "a is on ", a.device(), " but b on ", b.device());
}

// Segment offsets of layer_counts: segments are required.
inline std::vector<int64_t> check_layer_counts(const at::Tensor& masks, at::IntArrayRef segment_sizes) {
  check_masks(masks, "masks");
  TORCH_CHECK_VALUE(!segment_sizes.empty(), "segment_sizes is empty");
  return segment_offsets(segment_sizes, mask_channels(masks));
}

// The family's kernels, one per backend (cpu/counts_kernel.cpp, cuda/counts_glue.cpp); counts.cpp
// registers them.
at::Tensor layer_counts_cpu(const at::Tensor& masks, at::IntArrayRef segment_sizes);
std::tuple<at::Tensor, at::Tensor> mask_overlap_cpu(const at::Tensor& a, const at::Tensor& b,
                                                    at::IntArrayRef segment_sizes);
at::Tensor layer_counts_cuda(const at::Tensor& masks, at::IntArrayRef segment_sizes);
std::tuple<at::Tensor, at::Tensor> mask_overlap_cuda(const at::Tensor& a, const at::Tensor& b,
                                                     at::IntArrayRef segment_sizes);

// layer_counts without the test hooks (they count the operator that the caller called): the
// second half of global_masks_counts (masks.h).
namespace cpu {
at::Tensor layer_counts(const at::Tensor& masks, at::IntArrayRef segment_sizes);
}
namespace cuda_glue {
at::Tensor layer_counts(const at::Tensor& masks, at::IntArrayRef segment_sizes);
}

}  // namespace epi_fast
