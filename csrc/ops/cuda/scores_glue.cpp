// channel_scores on CUDA: checks, the output, the launch (scores_kernel.cu) on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "../scores.h"
#include "../test_hooks.h"
#include "glue.h"
#include "scores_kernel.h"

namespace epi_fast {

at::Tensor channel_scores_cuda(at::TensorList tensors, c10::string_view criterion) {
  test_hooks::enter("channel_scores");
  cuda_glue::check_no_pending_error("channel_scores");
  const ScoreKind kind = check_channel_scores(tensors, criterion);
  c10::cuda::CUDAGuard guard(tensors[0].device());
  const std::vector<int64_t> offsets = row_offsets(tensors, {}, INT64_MAX);
  cuda_glue::RowTable table = cuda_glue::row_table(tensors, {}, offsets);
  int64_t total = 0;
  for (const auto& t : tensors) total += t.size(0);
  at::Tensor out(at::detail::empty_cuda({total}, tensors[0].options().dtype(at::kFloat)));
  const int64_t count = static_cast<int64_t>(table.rows.size());
  const at::Tensor partials = cuda_glue::float_scratch(
      cuda::row_sum_partials(table.rows.data(), count, static_cast<int>(tensors[0].element_size())), out);
  cuda::channel_scores(table.rows.data(), count, cuda_glue::launch_dtype(tensors[0].scalar_type()), kind,
                       out.data_ptr<float>(), cuda_glue::data_or_null(partials), cuda_glue::current_stream());
  test_hooks::at("channel_scores", "written");
  return out;
}

}  // namespace epi_fast

