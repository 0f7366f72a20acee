// The masks family's schemas and which kernel serves which dispatch key (see scores.cpp).
#include <torch/library.h>

#include "masks.h"

TORCH_LIBRARY_FRAGMENT(epi_fast, m) {
  m.def("global_masks(Tensor scores, float[] ratios, int[] segment_sizes, int min_keep) -> (Tensor, Tensor)");
  // min_keep per segment: a 1-D int64 tensor (any device), one minimum per segment. An overload,
  // not an optional argument beside the int, so that each call says min_keep once and the
  // per-epoch int form stays the schema it was.
  m.def(
      "global_masks.per_segment(Tensor scores, float[] ratios, int[] segment_sizes, Tensor min_keep) "
      "-> (Tensor, Tensor)");
  // global_masks then layer_counts on the masks just written: one call per epoch end.
  m.def(
      "global_masks_counts(Tensor scores, float[] ratios, int[] segment_sizes, int min_keep) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "global_masks_counts.per_segment(Tensor scores, float[] ratios, int[] segment_sizes, Tensor min_keep) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(epi_fast, CPU, m) {
  m.impl("global_masks", &epi_fast::global_masks_cpu);
  m.impl("global_masks.per_segment", &epi_fast::global_masks_per_segment_cpu);
  m.impl("global_masks_counts", &epi_fast::global_masks_counts_cpu);
  m.impl("global_masks_counts.per_segment", &epi_fast::global_masks_counts_per_segment_cpu);
}
#ifdef EPI_FAST_WITH_CUDA
// The .per_segment kernels also serve CPU scores with a CUDA min_keep (the dispatcher picks the
// CUDA key from any CUDA argument): they hand those to the CPU kernels.
TORCH_LIBRARY_IMPL(epi_fast, CUDA, m) {
  m.impl("global_masks", &epi_fast::global_masks_cuda);
  m.impl("global_masks.per_segment", &epi_fast::global_masks_per_segment_cuda);
  m.impl("global_masks_counts", &epi_fast::global_masks_counts_cuda);
  m.impl("global_masks_counts.per_segment", &epi_fast::global_masks_counts_per_segment_cuda);
}
#endif
