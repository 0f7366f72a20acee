// channel_scores on the CPU: the row kernels over balanced row blocks.
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>

#include "../scores.h"
#include "../test_hooks.h"
#include "parallel_rows.h"
#include "row_kernels.h"

namespace epi_fast {

at::Tensor channel_scores_cpu(at::TensorList tensors, c10::string_view criterion) {
  test_hooks::enter("channel_scores");
  const ScoreKind kind = check_channel_scores(tensors, criterion);
  const cpu::Rows r = cpu::gather_rows(tensors);
  at::Tensor out(at::detail::empty_cpu({r.row_start.back()}, tensors[0].options().dtype(at::kFloat)));
  float* o = out.data_ptr<float>();
  cpu::dispatch_dtype(tensors[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const auto score = cpu::score_rows<T>(kind);
    cpu::parallel_blocks(r, [&](size_t t, int64_t row, int64_t rows, int64_t g) {
      score(static_cast<const T*>(r.data[t]) + row * r.cols[t], r.cols[t], rows, o + g);
    });
  });
  test_hooks::at("channel_scores", "written");
  return out;
}

}  // namespace epi_fast

