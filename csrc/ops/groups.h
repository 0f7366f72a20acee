// The groups family (group_reduce): argument checks shared by its CPU and CUDA kernels.
#pragma once

#include <algorithm>

#include "checks.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {

// _checks.REDUCTIONS, in its order.
inline Reduce parse_reduce(c10::string_view reduce) {
  static const std::pair<const char*, Reduce> names[] = {
      {"sum", Reduce::Sum}, {"mean", Reduce::Mean}, {"max", Reduce::Max}};
  return parse_name(reduce, names, "reduce");
}

// _checks.group_index_types: two 1-D int64 tensors on the scores' device, one group at least.
inline void check_group_index_types(const at::Tensor& scores, const at::Tensor& group_ptr,
                                    const at::Tensor& member_idx) {
  const std::pair<const char*, const at::Tensor*> index[] = {{"group_ptr", &group_ptr}, {"member_idx", &member_idx}};
  for (const auto& [name, t] : index) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong && t->dim() == 1, name, " must be a 1-D int64 tensor");
    TORCH_CHECK_VALUE(t->device() == scores.device(), name, " is on ", t->device(), ", scores on ", scores.device());
  }
  TORCH_CHECK_VALUE(group_ptr.numel() >= 2, "group_ptr needs at least two entries (one group)");
}

// _checks.group_index_values on host copies: a CSR index whose groups all have members, every
// member a score. On CUDA this needs the index on the host (a synchronisation), so the CUDA
// kernel leaves it to the Python wrapper, which checks an index once (see
// epi_fast/ops/groups.py).
inline void check_group_index_values(const int64_t* ptr, int64_t groups, const int64_t* idx, int64_t members,
                                     int64_t scores) {
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[groups] == members, "group_ptr must start at 0 and end at len(member_idx)=",
                    members, ", got ", ptr[0], "..", ptr[groups]);
  for (int64_t g = 0; g < groups; ++g)
    TORCH_CHECK_VALUE(ptr[g + 1] > ptr[g], "group_ptr must increase strictly: every group needs at least one member");
  if (members == 0) return;
  const auto [lo, hi] = std::minmax_element(idx, idx + members);
  TORCH_CHECK_VALUE(*lo >= 0 && *hi < scores, "member_idx holds ", *lo, "..", *hi, ", outside the ", scores,
                    " scores");
}

// What group_reduce checks on every backend, in the reference's order (the index's values
// aside); the reduction.
inline Reduce check_group_reduce(const at::Tensor& scores, const at::Tensor& group_ptr, const at::Tensor& member_idx,
                                 c10::string_view reduce) {
  check_scores(scores);
  const Reduce r = parse_reduce(reduce);
  check_group_index_types(scores, group_ptr, member_idx);
  return r;
}

// The family's kernels, one per backend (cpu/groups_kernel.cpp, cuda/groups_glue.cpp); groups.cpp
// registers them.
at::Tensor group_reduce_cpu(const at::Tensor& scores, const at::Tensor& group_ptr, const at::Tensor& member_idx,
                            c10::string_view reduce);
at::Tensor group_reduce_cuda(const at::Tensor& scores, const at::Tensor& group_ptr, const at::Tensor& member_idx,
                             c10::string_view reduce);

}  // namespace epi_fast
