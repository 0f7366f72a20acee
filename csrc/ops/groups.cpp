// The groups family's schema and which kernel serves which dispatch key (see scores.cpp).
#include <torch/library.h>

#include "groups.h"

TORCH_LIBRARY_FRAGMENT(epi_fast, m) {
  m.def("group_reduce(Tensor scores, Tensor group_ptr, Tensor member_idx, str reduce) -> Tensor");
}

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) { m.impl("group_reduce", &epi_fast::group_reduce_cpu); }
#ifdef EPI_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) { m.impl("group_reduce", &epi_fast::group_reduce_cuda); }
#endif
