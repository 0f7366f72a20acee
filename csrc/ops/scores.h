// The scores family (channel_scores): argument checks shared by its CPU and CUDA kernels.
#pragma once

#include "checks.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {

// _checks.SCORE_CRITERIA, in its order.
inline ScoreKind parse_score_kind(c10::string_view criterion) {
  static const std::pair<const char*, ScoreKind> names[] = {
      {"l1", ScoreKind::L1}, {"l2", ScoreKind::L2}, {"abs", ScoreKind::Abs}};
  return parse_name(criterion, names, "criterion");
}

// _checks.abs_rows.
inline void check_abs_rows(at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const int64_t cols = t.size(0) ? t.numel() / t.size(0) : 1;
    TORCH_CHECK_VALUE(t.size(0) == 0 || cols == 1, "criterion \"abs\" scores one value per channel, but tensors[",
                      i, "] has ", cols, " values per channel (shape ", py::shape(t.sizes()),
                      "); use \"l1\" or \"l2\" for filters");
  }
}

// Everything channel_scores checks, in the reference's order; the criterion's kind.
inline ScoreKind check_channel_scores(at::TensorList tensors, c10::string_view criterion) {
  check_tensor_list(tensors, "tensors");
  const ScoreKind kind = parse_score_kind(criterion);
  if (kind == ScoreKind::Abs) check_abs_rows(tensors);
  return kind;
}

// The family's kernels, one per backend (cpu/scores_kernel.cpp, cuda/scores_glue.cpp); scores.cpp
// registers them.
at::Tensor channel_scores_cpu(at::TensorList tensors, c10::string_view criterion);
at::Tensor channel_scores_cuda(at::TensorList tensors, c10::string_view criterion);

}  // namespace epi_fast
