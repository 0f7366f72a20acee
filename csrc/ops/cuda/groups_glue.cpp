// group_reduce on CUDA: checks, the output, the launch (groups_kernel.cu) on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAGuard.h>

#include "../groups.h"
#include "../test_hooks.h"
#include "glue.h"
#include "groups_kernel.h"

namespace epi_fast {

at::Tensor group_reduce_cuda(const at::Tensor& scores_in, const at::Tensor& group_ptr_in,
                             const at::Tensor& member_idx_in, c10::string_view reduce) {
  test_hooks::enter("group_reduce");
  cuda_glue::check_no_pending_error("group_reduce");
  const Reduce red = check_group_reduce(scores_in, group_ptr_in, member_idx_in, reduce);
  // The index's values are not checked here: that needs them on the host, a synchronisation on
  // every call. epi_fast.group_reduce checks them before the call; the internal path that
  // reuses an index it built and checked once does not.
  c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous(), ptr = group_ptr_in.contiguous(), idx = member_idx_in.contiguous();
  const int64_t groups = ptr.numel() - 1;
  at::Tensor out(at::detail::empty_cuda({groups}, scores.options()));
  cuda::group_reduce(scores.data_ptr<float>(), ptr.data_ptr<int64_t>(), idx.data_ptr<int64_t>(), groups,
                     idx.numel(), red, out.data_ptr<float>(), cuda_glue::current_stream());
  test_hooks::at("group_reduce", "written");
  return out;
}

}  // namespace epi_fast

