// The counts family's schemas and which kernel serves which dispatch key (see scores.cpp).
#include <torch/library.h>

#include "counts.h"

TORCH_LIBRARY_FRAGMENT(epi_fast, m) {
  m.def("layer_counts(Tensor masks, int[] segment_sizes) -> Tensor");
  m.def("mask_overlap(Tensor a, Tensor b, int[] segment_sizes) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) {
  m.impl("layer_counts", &epi_fast::layer_counts_cpu);
  m.impl("mask_overlap", &epi_fast::mask_overlap_cpu);
}
#ifdef EPI_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) {
  m.impl("layer_counts", &epi_fast::layer_counts_cuda);
  m.impl("mask_overlap", &epi_fast::mask_overlap_cuda);
}
#endif
