// group_reduce on the CPU: one task per block of groups, members in order (the CUDA kernel's
// order too). The CSR index is checked here on every call: on the host that is one pass over it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>

#include "../groups.h"
#include "../test_hooks.h"

namespace epi_fast {

at::Tensor group_reduce_cpu(const at::Tensor& scores_in, const at::Tensor& group_ptr_in,
                            const at::Tensor& member_idx_in, c10::string_view reduce) {
  test_hooks::enter("group_reduce");
  const Reduce red = check_group_reduce(scores_in, group_ptr_in, member_idx_in, reduce);
  const at::Tensor scores = scores_in.contiguous(), ptr_t = group_ptr_in.contiguous(),
                   idx_t = member_idx_in.contiguous();
  const int64_t groups = ptr_t.numel() - 1;
  const float* s = scores.const_data_ptr<float>();
  const int64_t* ptr = ptr_t.const_data_ptr<int64_t>();
  const int64_t* idx = idx_t.const_data_ptr<int64_t>();
  const int64_t members = idx_t.numel();
  check_group_index_values(ptr, groups, idx, members, scores.numel());
  at::Tensor out(at::detail::empty_cpu({groups}, scores.options()));
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(2048, groups * (1 << 16) / std::max<int64_t>(members, 1));
  at::parallel_for(0, groups, grain, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      float acc = reduce_init(red);
      for (int64_t k = ptr[g]; k < ptr[g + 1]; ++k) acc = reduce_step(acc, s[idx[k]], red);
      o[g] = reduce_finish(acc, ptr[g + 1] - ptr[g], red);
    }
  });
  test_hooks::at("group_reduce", "written");
  return out;
}

}  // namespace epi_fast

