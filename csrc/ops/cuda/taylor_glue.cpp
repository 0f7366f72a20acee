// taylor_scores and taylor_accumulate_ on CUDA: checks, scratch through torch's caching
// allocator, the launches (taylor_kernel.cu) on the current stream. No host synchronisation:
// the accumulating form decides on the device whether a step is added or skipped.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "../taylor.h"
#include "../test_hooks.h"
#include "glue.h"
#include "taylor_kernel.h"

namespace epi_fast {
namespace {

// Per-channel sums of w * g, zero where no row maps.
at::Tensor taylor_raw(at::TensorList params, at::TensorList grads, const std::vector<int64_t>& offs,
                      int64_t channels) {
  cuda_glue::RowTable table = cuda_glue::row_table(params, grads, offs);
  at::Tensor raw(at::detail::empty_cuda({channels}, params[0].options().dtype(at::kFloat)));
  raw.zero_();
  const int64_t count = static_cast<int64_t>(table.rows.size());
  const at::Tensor partials = cuda_glue::float_scratch(
      cuda::row_sum_partials(table.rows.data(), count, static_cast<int>(params[0].element_size())), raw);
  cuda::taylor_raw(table.rows.data(), count, cuda_glue::launch_dtype(params[0].scalar_type()), raw.data_ptr<float>(),
                   cuda_glue::data_or_null(partials), cuda_glue::current_stream());
  return raw;
}

}  // namespace

at::Tensor taylor_scores_cuda(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                              int64_t num_channels, c10::string_view mode_name) {
  test_hooks::enter("taylor_scores");
  cuda_glue::check_no_pending_error("taylor_scores");
  TaylorMode mode;
  const std::vector<int64_t> offs = check_taylor_scores(params, grads, offsets, num_channels, &mode, mode_name);
  c10::cuda::CUDAGuard guard(params[0].device());
  at::Tensor raw = taylor_raw(params, grads, offs, num_channels);
  cuda::taylor_finish(raw.data_ptr<float>(), num_channels, mode, cuda_glue::current_stream());
  test_hooks::at("taylor_scores", "written");
  return raw;
}

void taylor_accumulate_cuda(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                            at::TensorList grads, at::IntArrayRef offsets, const c10::optional<at::Tensor>& inv_scale,
                            c10::string_view mode_name) {
  test_hooks::enter("taylor_accumulate_");
  cuda_glue::check_no_pending_error("taylor_accumulate_");
  TaylorMode mode;
  const std::vector<int64_t> offs =
      check_taylor_accumulate(acc, skipped, params, grads, offsets, inv_scale, &mode, mode_name);
  c10::cuda::CUDAGuard guard(params[0].device());
  at::Tensor scale;
  if (inv_scale.has_value()) scale = inv_scale->to(at::kFloat).contiguous();
  at::Tensor raw = taylor_raw(params, grads, offs, acc.numel());
  at::Tensor flag(at::detail::empty_cuda({1}, acc.options().dtype(at::kInt)));
  test_hooks::at("taylor_accumulate_", "scratch");
  // One launch checks the whole step, the next adds it or counts it skipped: acc and skipped
  // change in that launch only.
  cuda::taylor_accumulate(raw.data_ptr<float>(), acc.numel(), scale.defined() ? scale.data_ptr<float>() : nullptr,
                          mode, acc.data_ptr<float>(), skipped.data_ptr<int64_t>(), flag.data_ptr<int>(),
                          cuda_glue::current_stream());
  test_hooks::at("taylor_accumulate_", "written");
}

}  // namespace epi_fast

