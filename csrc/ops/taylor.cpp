// The taylor family's schemas and which kernel serves which dispatch key (see scores.cpp).
#include <torch/library.h>

#include "taylor.h"

namespace epi_fast {
namespace {

// A sparse tensor among the arguments dispatches here: the checks name it where the reference
// does (params, grads, acc, skipped, inv_scale), the last line where it does not look.
at::Tensor taylor_scores_sparse(at::TensorList params, at::TensorList grads, at::IntArrayRef offsets,
                                int64_t num_channels, c10::string_view mode) {
  TaylorMode m;
  check_taylor_scores(params, grads, offsets, num_channels, &m, mode);
  TORCH_CHECK_TYPE(false, "taylor_scores takes dense tensors");
}

void taylor_accumulate_sparse(const at::Tensor& acc, const at::Tensor& skipped, at::TensorList params,
                              at::TensorList grads, at::IntArrayRef offsets,
                              const c10::optional<at::Tensor>& inv_scale, c10::string_view mode) {
  TaylorMode m;
  check_taylor_accumulate(acc, skipped, params, grads, offsets, inv_scale, &m, mode);
  TORCH_CHECK_TYPE(false, "taylor_accumulate_ takes dense tensors");
}

}  // namespace
}  // namespace epi_fast

TORCH_LIBRARY_FRAGMENT(epi_fast, m) {
  m.def("taylor_scores(Tensor[] params, Tensor[] grads, int[] offsets, int num_channels, str taylor_mode) -> Tensor");
  m.def(
      "taylor_accumulate_(Tensor(a!) acc, Tensor(b!) skipped, Tensor[] params, Tensor[] grads, "
      "int[] offsets, Tensor? inv_scale, str taylor_mode) -> ()");
}

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) {
  m.impl("taylor_scores", &epi_fast::taylor_scores_cpu);
  m.impl("taylor_accumulate_", &epi_fast::taylor_accumulate_cpu);
}
TORCH_LIBRARY_IMPL(epi_fast, SparseCPU, m) {
  m.impl("taylor_scores", &epi_fast::taylor_scores_sparse);
  m.impl("taylor_accumulate_", &epi_fast::taylor_accumulate_sparse);
}
#ifdef EPI_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) {
  m.impl("taylor_scores", &epi_fast::taylor_scores_cuda);
  m.impl("taylor_accumulate_", &epi_fast::taylor_accumulate_cuda);
}
#endif
TORCH_LIBRARY_IMPL(epi_fast, SparseCUDA, m) {
  m.impl("taylor_scores", &epi_fast::taylor_scores_sparse);
  m.impl("taylor_accumulate_", &epi_fast::taylor_accumulate_sparse);
}
