// What the CUDA launchers take: raw pointers, sizes and a stream, no torch types, so that the .cu
// files compile without libtorch (quickly, and in the CMake core on CI). Each family declares its
// launchers in csrc/ops/cuda/<family>_kernel.h and defines them in <family>_kernel.cu; the torch
// glue (<family>_glue.cpp) checks the tensors, allocates and calls them.
#pragma once

#include <cstdint>

#include "epi_fast/work_split.h"

namespace epi_fast {
namespace cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Operands a multi-tensor launch reads per tensor (Taylor: the weight and its gradient).
constexpr int kMaxOperands = 2;

// One tensor seen as rows (its output channels on dim 0), contiguous. operand[1] has the shape
// of operand[0] and is read only by launches of depth 2.
struct RowTensor {
  const void* operand[kMaxOperands];
  int64_t rows;
  int64_t cols;
  int64_t out_offset;  // channel of row 0 in the output
};

// Scratch floats that a multi-tensor row-sum launch over these tensors needs for the partial sums
// of its chunked rows (elem_bytes: the bytes of one element); the glue allocates them.
inline int64_t row_sum_partials(const RowTensor* tensors, int64_t count, int elem_bytes) {
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i)
    if (tensors[i].rows) total += split::row_partials(tensors[i].rows, split::row_plan(tensors[i].cols, elem_bytes));
  return total;
}

}  // namespace cuda
}  // namespace epi_fast
