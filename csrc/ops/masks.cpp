// The masks family's schemas and which kernel serves which dispatch key (see scores.cpp).
#include <torch/library.h>

#include "masks.h"

TORCH_LIBRARY_FRAGMENT(epi_fast, m) {
  m.def("global_masks(Tensor scores, float[] ratios, int[] segment_sizes, int min_keep) -> (Tensor, Tensor)");
  // global_masks then layer_counts on the masks just written: one call per epoch end.
  m.def(
      "global_masks_counts(Tensor scores, float[] ratios, int[] segment_sizes, int min_keep) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) {
  m.impl("global_masks", &epi_fast::global_masks_cpu);
  m.impl("global_masks_counts", &epi_fast::global_masks_counts_cpu);
}
#ifdef EPI_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) {
  m.impl("global_masks", &epi_fast::global_masks_cuda);
  m.impl("global_masks_counts", &epi_fast::global_masks_counts_cuda);
}
#endif
