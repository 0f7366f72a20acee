// taylor_scores and taylor_accumulate_ on the CPU: per-row dot products over balanced row
// blocks, then per-channel sums in list order.
//
// taylor_accumulate_ computes the whole step into scratch and commits it last: the commit is
// the only write to acc and skipped, plain stores that cannot throw, so a call that raises has
// applied its step entirely (an error after the commit) or not at all (any error before it).
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <vector>

#include "../taylor.h"
#include "../test_hooks.h"
#include "parallel_rows.h"
#include "row_kernels.h"

namespace epi_fast {
namespace {

// raw[offs[t] + r] += sum over row r of params[t] * grads[t]; tensors that share channels add
// into them in list order. `raw` holds the channels and is zeroed by the caller.
void taylor_raw(at::TensorList params, at::TensorList grads, const std::vector<int64_t>& offs, float* raw) {
  const cpu::Rows r = cpu::gather_rows(params, grads);
  std::vector<float> row_sums(r.row_start.back());
  cpu::dispatch_dtype(params[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const auto dot = cpu::dot_rows<T>();
    cpu::parallel_blocks(r, [&](size_t t, int64_t row, int64_t rows, int64_t g) {
      dot(static_cast<const T*>(r.data[t]) + row * r.cols[t], static_cast<const T*>(r.grad[t]) + row * r.cols[t],
          r.cols[t], rows, row_sums.data() + g);
    });
  });
  for (size_t t = 0; t < offs.size(); ++t)
    for (int64_t row = 0; row < r.row_start[t + 1] - r.row_start[t]; ++row) raw[offs[t] + row] += row_sums[r.row_start[t] + row];
}

// inv_scale's value as float32 (what .to(float32).item() gives), read in place: it is one
// element on the CPU, checked floating.
float scale_value(const at::Tensor& s) {
  switch (s.scalar_type()) {
    case at::kFloat: return *s.const_data_ptr<float>();
    case at::kDouble: return static_cast<float>(*s.const_data_ptr<double>());
    case at::kHalf: return static_cast<float>(*s.const_data_ptr<c10::Half>());
    case at::kBFloat16: return static_cast<float>(*s.const_data_ptr<c10::BFloat16>());
    default: return s.to(at::kFloat).item<float>();
  }
}

}  // namespace

at::Tensor taylor_scores_cpu(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                             int64_t num_channels, c10::string_view mode_name) {
  test_hooks::enter("taylor_scores");
  TaylorMode mode;
  const std::vector<int64_t> offs = check_taylor_scores(params, grads, offsets, num_channels, &mode, mode_name);
  at::Tensor out(at::detail::empty_cpu({num_channels}, params[0].options().dtype(at::kFloat)));
  float* p = out.data_ptr<float>();
  std::fill_n(p, num_channels, 0.0f);
  taylor_raw(params, grads, offs, p);
  for (int64_t c = 0; c < num_channels; ++c) p[c] = taylor_finish(p[c], mode);
  test_hooks::at("taylor_scores", "written");
  return out;
}

void taylor_accumulate_cpu(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                           at::TensorList grads, at::IntArrayRef offsets, const c10::optional<at::Tensor>& inv_scale,
                           c10::string_view mode_name) {
  test_hooks::enter("taylor_accumulate_");
  TaylorMode mode;
  const std::vector<int64_t> offs =
      check_taylor_accumulate(acc, skipped, params, grads, offsets, inv_scale, &mode, mode_name);
  const int64_t channels = acc.numel();
  std::vector<float> step(channels, 0.0f);
  taylor_raw(params, grads, offs, step.data());
  const bool scaled = inv_scale.has_value();
  const float scale = scaled ? scale_value(*inv_scale) : 1.0f;
  // A step is skipped when any channel's contribution is non-finite: every inf/NaN gradient (an
  // AMP overflow step) produces one, and so does an overflowing product.
  bool finite = true;
  for (int64_t c = 0; c < channels; ++c) {
    step[c] = taylor_finish(scaled ? step[c] * scale : step[c], mode);
    finite &= is_finite(step[c]);
  }
  test_hooks::at("taylor_accumulate_", "scratch");
  if (finite) {
    float* a = acc.data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) a[c] += step[c];
  } else {
    ++*skipped.data_ptr<int64_t>();
  }
  test_hooks::at("taylor_accumulate_", "written");
}

}  // namespace epi_fast

