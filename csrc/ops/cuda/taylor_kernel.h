// Launchers of taylor_kernel.cu (torch-free; called by taylor_glue.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "epi_fast/cuda_launch.h"
#include "epi_fast/kernel_math.h"

namespace epi_fast {
namespace cuda {

// raw[t.out_offset + r] += sum over row r of operand[0] * operand[1]. `raw` must be zeroed by
// the caller; `partials`: row_sum_partials(tensors, count, element bytes) floats of scratch
// (cuda_launch.h), null when that is 0. Each row's sum has a fixed order; it is added into its
// channel atomically, so channels that receive at most two rows (a BN weight and bias) are
// run-to-run deterministic (float addition is commutative); three or more may differ in the
// last bit.
void taylor_raw(const RowTensor* tensors, int64_t count, DType dtype, float* raw, float* partials,
                cudaStream_t stream);

// raw[c] = f(raw[c]) in place.
void taylor_finish(float* raw, int64_t channels, TaylorMode mode, cudaStream_t stream);

// If every f(raw[c] * inv_scale) is finite: acc[c] += it; else *skipped += 1. `flag` is a
// device int of scratch. inv_scale may be null. No host synchronisation.
void taylor_accumulate(const float* raw, int64_t channels, const float* inv_scale, TaylorMode mode, float* acc,
                       int64_t* skipped, int* flag, cudaStream_t stream);

}  // namespace cuda
}  // namespace epi_fast
