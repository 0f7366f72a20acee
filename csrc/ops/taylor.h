// The taylor family (taylor_scores, taylor_accumulate_): argument checks shared by its CPU and
// CUDA kernels.
#pragma once

#include <c10/util/Optional.h>

#include <vector>

#include "checks.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {

// _checks.TAYLOR_MODES, in its order.
inline TaylorMode parse_taylor_mode(c10::string_view mode) {
  static const std::pair<const char*, TaylorMode> names[] = {{"square", TaylorMode::Square},
                                                             {"abs", TaylorMode::Abs}};
  return parse_name(mode, names, "mode");
}

// _checks.pairs.
inline void check_pairs(at::TensorList params, at::TensorList grads) {
  check_tensor_list(params, "params");
  check_tensor_list(grads, "grads");
  TORCH_CHECK_VALUE(params.size() == grads.size(), params.size(), " params but ", grads.size(), " grads");
  TORCH_CHECK_TYPE(params[0].scalar_type() == grads[0].scalar_type(), "params are ",
                   py::dtype(params[0].scalar_type()), " but grads are ", py::dtype(grads[0].scalar_type()));
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK_VALUE(params[i].sizes() == grads[i].sizes(), "params[", i, "] has shape ",
                      py::shape(params[i].sizes()), " but grads[", i, "] ", py::shape(grads[i].sizes()));
    TORCH_CHECK_VALUE(params[i].device() == grads[i].device(), "params[", i, "] is on ", params[i].device(),
                      " but grads[", i, "] on ", grads[i].device());
  }
}

// _checks.accumulators: acc float32 [C] (dense, contiguous), skipped one int64, both on the
// params' device; inv_scale None or one floating element there too.
inline void check_accumulators(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                               const c10::optional<at::Tensor>& inv_scale) {
  TORCH_CHECK_TYPE(acc.layout() == at::kStrided && acc.scalar_type() == at::kFloat && acc.dim() == 1,
                   "acc must be a 1-D float32 tensor");
  TORCH_CHECK_VALUE(acc.is_contiguous(), "acc must be contiguous");
  TORCH_CHECK_TYPE(skipped.layout() == at::kStrided && skipped.scalar_type() == at::kLong && skipped.numel() == 1,
                   "skipped must be a one-element int64 tensor");
  TORCH_CHECK_VALUE(skipped.device() == acc.device(), "skipped is on ", skipped.device(), ", acc on ", acc.device());
  TORCH_CHECK_VALUE(params[0].device() == acc.device(), "params are on ", params[0].device(), ", acc on ",
                    acc.device());
  if (!inv_scale.has_value()) return;
  const at::Tensor& s = *inv_scale;
  TORCH_CHECK_TYPE(s.layout() == at::kStrided && s.is_floating_point() && s.numel() == 1,
                   "inv_scale must be None or a one-element float32 tensor (e.g. 1 / scaler.get_scale() as a "
                   "tensor), got a ", py::dtype(s.scalar_type()), " tensor of shape ", py::shape(s.sizes()));
  TORCH_CHECK_VALUE(s.device() == acc.device(), "inv_scale is on ", s.device(), ", acc on ", acc.device());
}

// Everything taylor_scores checks, in the reference's order; the channel of each tensor's row 0.
inline std::vector<int64_t> check_taylor_scores(at::TensorList params, at::TensorList grads,
                                                at::IntArrayRef offsets, int64_t num_channels, TaylorMode* mode,
                                                c10::string_view mode_name) {
  *mode = parse_taylor_mode(mode_name);
  check_pairs(params, grads);
  return row_offsets(params, offsets, num_channels);
}

// Everything taylor_accumulate_ checks, in the reference's order.
inline std::vector<int64_t> check_taylor_accumulate(const at::Tensor& acc, const at::Tensor& skipped,
                                                    at::TensorList params, at::TensorList grads,
                                                    at::IntArrayRef offsets,
                                                    const c10::optional<at::Tensor>& inv_scale, TaylorMode* mode,
                                                    c10::string_view mode_name) {
  *mode = parse_taylor_mode(mode_name);
  check_pairs(params, grads);
  check_accumulators(acc, skipped, params, inv_scale);
  return row_offsets(params, offsets, acc.numel());
}

// The family's kernels, one per backend (cpu/taylor_kernel.cpp, cuda/taylor_glue.cpp); taylor.cpp
// registers them.
at::Tensor taylor_scores_cpu(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                             int64_t num_channels, c10::string_view mode);
void taylor_accumulate_cpu(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                           at::TensorList grads, at::IntArrayRef offsets, const c10::optional<at::Tensor>& inv_scale,
                           c10::string_view mode);
at::Tensor taylor_scores_cuda(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                              int64_t num_channels, c10::string_view mode);
void taylor_accumulate_cuda(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                            at::TensorList grads, at::IntArrayRef offsets, const c10::optional<at::Tensor>& inv_scale,
                            c10::string_view mode);

}  // namespace epi_fast
