// Launchers of scores_kernel.cu (torch-free; called by scores_glue.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "epi_fast/cuda_launch.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {
namespace cuda {

// out[t.out_offset + r] = score of row r of tensor t, for every tensor; chunked multi-tensor
// launches, no per-layer launches. `partials`: row_sum_partials(tensors, count, element bytes)
// floats of scratch (cuda_launch.h), null when that is 0.
void channel_scores(const RowTensor* tensors, int64_t count, DType dtype, ScoreKind kind, float* out,
                    float* partials, cudaStream_t stream);

}  // namespace cuda
}  // namespace epi_fast
