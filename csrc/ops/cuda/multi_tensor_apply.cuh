// One launcher for every kernel that works row by row over many tensors, in the style of apex's
// multi_tensor_apply: the host fills a table of tensor pointers and sizes, passes it by value as
// a kernel argument, and launches one warp per row of all the tables' tensors; what a warp does
// with its row is a functor. A new multi-tensor kernel is one functor, not a copy of this loop.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "epi_fast/cuda_launch.h"

namespace epi_fast {
namespace cuda {

// Tensors per launch: the table travels as a kernel argument (under the 4 KiB limit at depth 2),
// so models with more tensors take a few launches, never one per layer.
constexpr int kTableSize = 48;

// Depth = operands per tensor (1: the scores; 2: Taylor's weight and gradient).
template <int Depth>
struct RowTable {
  static_assert(Depth >= 1 && Depth <= kMaxOperands, "a row table has 1 to kMaxOperands operands");
  const void* operand[Depth][kTableSize];
  int64_t cols[kTableSize];
  int64_t out_offset[kTableSize];
  int64_t row_start[kTableSize + 1];  // prefix sums of rows within this launch
  int count;
};

// The slot of the table that holds row `row` of this launch.
template <int Depth>
__device__ __forceinline__ int table_slot(const RowTable<Depth>& table, int64_t row) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (table.row_start[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Functor contract: __device__ void operator()(const RowTable<Depth>& table, int slot,
// int64_t row, int lane) const, called by all 32 lanes of the warp that owns `row` (a row of
// the tensor in `slot`, counted from its first).
template <int Depth, typename Functor>
__global__ void multi_tensor_rows_kernel(RowTable<Depth> table, Functor fn) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= table.row_start[table.count]) return;
  const int slot = table_slot(table, row);
  fn(table, slot, row - table.row_start[slot], lane);
}

// Applies fn to every row of tensors[0..count) (tensors without rows are left out), kTableSize
// tensors per launch on `stream`; `what` names the launch in a CUDA error.
template <int Depth, typename Functor>
void multi_tensor_apply(const RowTensor* tensors, int64_t count, const Functor& fn, cudaStream_t stream,
                        const char* what) {
  int64_t i = 0;
  while (i < count) {
    RowTable<Depth> table{};
    int n = 0;
    int64_t rows = 0;
    for (; i < count && n < kTableSize; ++i) {
      if (tensors[i].rows == 0) continue;
      for (int d = 0; d < Depth; ++d) table.operand[d][n] = tensors[i].operand[d];
      table.cols[n] = tensors[i].cols;
      table.out_offset[n] = tensors[i].out_offset;
      table.row_start[n] = rows;
      rows += tensors[i].rows;
      ++n;
    }
    table.row_start[n] = rows;
    table.count = n;
    if (n == 0) continue;
    const int64_t blocks = (rows + kWarps - 1) / kWarps;
    multi_tensor_rows_kernel<Depth><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(table, fn);
    check_launch(what);
  }
}

}  // namespace cuda
}  // namespace epi_fast
