// The scores family's schema and which kernel serves which dispatch key: the CPU and CUDA
// kernels (cpu/scores_kernel.cpp, cuda/scores_glue.cpp), and a refusal of sparse tensors.
// Registered here, not in the kernel files, so that only this TU of the family pays for
// torch/library.h and the dispatcher's boxing templates (~3.5 s a TU on two cores).
#include <torch/library.h>

#include "scores.h"

namespace epi_fast {
namespace {

// A sparse tensor in the list dispatches here (the sparse keys outrank the dense ones): the
// checks name it, in the reference's words.
at::Tensor channel_scores_sparse(at::TensorList tensors, c10::string_view criterion) {
  check_channel_scores(tensors, criterion);
  TORCH_CHECK_TYPE(false, "channel_scores takes dense tensors");
}

}  // namespace
}  // namespace epi_fast

// No argument of any epi_fast schema is called "mode": torch's functionalisation of in-place
// operators passes its own keyword of that name while tracing, which collides under
// torch.compile. Each family defines its schemas in a fragment of its own.
TORCH_LIBRARY_FRAGMENT(epi_fast, m) { m.def("channel_scores(Tensor[] tensors, str criterion) -> Tensor"); }

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) { m.impl("channel_scores", &epi_fast::channel_scores_cpu); }
TORCH_LIBRARY_IMPL(epi_fast, SparseCPU, m) { m.impl("channel_scores", &epi_fast::channel_scores_sparse); }
#ifdef EPI_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) { m.impl("channel_scores", &epi_fast::channel_scores_cuda); }
#endif
TORCH_LIBRARY_IMPL(epi_fast, SparseCUDA, m) { m.impl("channel_scores", &epi_fast::channel_scores_sparse); }
