// Launcher of counts_kernel.cu (torch-free; called by counts_glue.cpp and, for
// global_masks_counts, through it by masks_glue.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace epi_fast {
namespace cuda {

// counts[j, s] = number of true entries of a[j] (a[j] & b[j] when b is given) in segment s;
// differ[j, s] = number of entries where a[j] != b[j] (only when b and differ are given).
// seg_table: split::segment_table(offsets) on the device (the segment offsets, then each
// segment's first piece); pieces: its last entry, the pieces of one mask row (read on the host).
void segment_counts(const bool* a, const bool* b, int64_t m, int64_t n, const int64_t* seg_table, int64_t segments,
                    int64_t pieces, int64_t* counts, int64_t* differ, cudaStream_t stream);

}  // namespace cuda
}  // namespace epi_fast
