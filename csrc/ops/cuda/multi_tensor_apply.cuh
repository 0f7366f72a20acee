// One launcher for every kernel that sums rows over many tensors, in the style of apex's
// multi_tensor_apply: the host fills a table of tensor pointers, sizes and row plans
// (epi_fast/work_split.h), passes it by value as a kernel argument, and launches warps over the
// rows of all the table's tensors: a team of 1 to 32 lanes per short row, a warp per chunk of a
// long row. What is summed per element and what becomes of a row's sum is a functor (an Op), so
// a new row-sum kernel is one Op, not a copy of these loops.
//
// Op contract (Depth operands per tensor, read as float32):
//   __device__ float term(float a) const;            // Depth 1: one element's contribution
//   __device__ float term(float a, float b) const;   // Depth 2: the same for a pair
//   __device__ void write(int64_t channel, float sum) const;  // once per row, with its whole sum
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda_common.cuh"
#include "epi_fast/cuda_launch.h"
#include "epi_fast/kernel_math.h"
#include "epi_fast/work_split.h"

namespace epi_fast {
namespace cuda {

// Tensors per launch: the table travels as a kernel argument (under the 4 KiB limit of the
// oldest architectures at depth 2), so models with more tensors take a few launches, never one
// per layer.
constexpr int kTableSize = 48;

// Depth = operands per tensor (1: the scores; 2: Taylor's weight and gradient).
template <int Depth>
struct RowTable {
  static_assert(Depth >= 1 && Depth <= kMaxOperands, "a row table has 1 to kMaxOperands operands");
  const void* operand[Depth][kTableSize];
  int64_t rows[kTableSize];
  int64_t cols[kTableSize];
  int64_t out_offset[kTableSize];
  int64_t chunks[kTableSize];       // split::RowPlan::chunks
  int64_t part_offset[kTableSize];  // first scratch float of a chunked tensor's partial sums
  int64_t unit_start[kTableSize + 1];  // prefix sums of the tensors' warps within this launch
  int team[kTableSize];             // split::RowPlan::team
  int count;
};
static_assert(sizeof(RowTable<kMaxOperands>) <= 4000, "the row table must fit in a kernel argument");

// The slot of the table whose units hold `unit` (a tensor without rows has no slot).
template <int Depth>
__device__ __forceinline__ int table_slot(const RowTable<Depth>& table, int64_t unit) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table.unit_start[mid] <= unit) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// This lane's share of the sum of op.term over elements [w.begin, w.end) of row `row` of the
// tensor(s): a scalar head up to the first 16-byte boundary, whole vectors, a scalar tail.
template <int Depth, typename T, typename Op>
__device__ float lane_row_sum(const T* a, const T* b, const split::RowWork& w, int sub, int team, const Op& op) {
  constexpr int kVec = split::kVectorBytes / sizeof(T);
  float acc = 0.0f;
  const int64_t n = w.end - w.begin;
  if constexpr (Depth == 1) {
    const int64_t head = split::head_elems(reinterpret_cast<uintptr_t>(a + w.begin), static_cast<int>(sizeof(T)), n);
    split::team_span(
        w.begin, w.end, head, kVec, sub, team, [&](int64_t j) { acc += op.term(to_float(a[j])); },
        [&](int64_t j) {
          const uint4 pack = *reinterpret_cast<const uint4*>(a + j);
          const T* e = reinterpret_cast<const T*>(&pack);
#pragma unroll
          for (int q = 0; q < kVec; ++q) acc += op.term(to_float(e[q]));
        });
  } else {
    const int64_t head = split::head_elems2(reinterpret_cast<uintptr_t>(a + w.begin),
                                            reinterpret_cast<uintptr_t>(b + w.begin), static_cast<int>(sizeof(T)), n);
    split::team_span(
        w.begin, w.end, head, kVec, sub, team, [&](int64_t j) { acc += op.term(to_float(a[j]), to_float(b[j])); },
        [&](int64_t j) {
          const uint4 pa = *reinterpret_cast<const uint4*>(a + j);
          const uint4 pb = *reinterpret_cast<const uint4*>(b + j);
          const T* ea = reinterpret_cast<const T*>(&pa);
          const T* eb = reinterpret_cast<const T*>(&pb);
#pragma unroll
          for (int q = 0; q < kVec; ++q) acc += op.term(to_float(ea[q]), to_float(eb[q]));
        });
  }
  return acc;
}

// Sums of the lanes of each aligned team of `team` lanes, in a fixed tree; every lane of the
// warp must call it (with the same team).
__device__ __forceinline__ float team_sum(float v, int team) {
  for (int offset = team / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Every unit of the table, a warp each (grid-stride): unchunked rows are summed and written,
// chunks of long rows leave their sums in `partials`.
template <int Depth, typename T, typename Op>
__global__ void row_sums_kernel(RowTable<Depth> table, Op op, float* partials) {
  const int lane = threadIdx.x & 31;
  const int64_t total = table.unit_start[table.count];
  const int64_t chunk = split::chunk_elems(static_cast<int>(sizeof(T)));
  for (int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; unit < total;
       unit += static_cast<int64_t>(gridDim.x) * kWarps) {
    // unit is the same for the whole warp, so are slot and plan: the shuffles below converge.
    const int slot = table_slot(table, unit);
    const split::RowPlan plan{table.team[slot], table.chunks[slot]};
    const int64_t cols = table.cols[slot];
    const split::RowWork w = split::row_work(unit - table.unit_start[slot], lane, table.rows[slot], cols, plan, chunk);
    const int sub = lane & (plan.team - 1);
    float acc = 0.0f;
    if (w.valid) {
      const T* a = static_cast<const T*>(table.operand[0][slot]) + w.row * cols;
      const T* b = nullptr;
      if constexpr (Depth == 2) b = static_cast<const T*>(table.operand[1][slot]) + w.row * cols;
      acc = lane_row_sum<Depth>(a, b, w, sub, plan.team, op);
    }
    acc = team_sum(acc, plan.team);
    if (w.valid && sub == 0) {
      if (plan.chunks > 1) partials[table.part_offset[slot] + w.row * plan.chunks + w.chunk] = acc;
      else op.write(table.out_offset[slot] + w.row, acc);
    }
  }
}

// The chunked rows' sums: each row's partial sums added in chunk order, then written.
template <int Depth, typename Op>
__global__ void row_partials_kernel(RowTable<Depth> table, Op op, const float* partials) {
  for (int slot = 0; slot < table.count; ++slot) {
    const int64_t chunks = table.chunks[slot];
    if (chunks <= 1) continue;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < table.rows[slot];
         r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float* p = partials + table.part_offset[slot] + r * chunks;
      float s = 0.0f;
      for (int64_t k = 0; k < chunks; ++k) s += p[k];
      op.write(table.out_offset[slot] + r, s);
    }
  }
}

// Applies op to every row of tensors[0..count) (tensors without rows are left out), kTableSize
// tensors per launch on `stream`; `partials` holds row_sum_partials(tensors, count, sizeof(T))
// floats (cuda_launch.h; the glue allocates them; null when that is 0); `what` names the launch
// in a CUDA error.
template <int Depth, typename T, typename Op>
void multi_tensor_row_sums(const RowTensor* tensors, int64_t count, const Op& op, float* partials,
                           cudaStream_t stream, const char* what) {
  int64_t i = 0, part = 0;
  while (i < count) {
    RowTable<Depth> table{};
    int n = 0;
    int64_t units = 0, chunked_rows = 0;
    for (; i < count && n < kTableSize; ++i) {
      const RowTensor& t = tensors[i];
      if (t.rows == 0) continue;
      const split::RowPlan plan = split::row_plan(t.cols, static_cast<int>(sizeof(T)));
      for (int d = 0; d < Depth; ++d) table.operand[d][n] = t.operand[d];
      table.rows[n] = t.rows;
      table.cols[n] = t.cols;
      table.out_offset[n] = t.out_offset;
      table.team[n] = plan.team;
      table.chunks[n] = plan.chunks;
      table.part_offset[n] = part;
      part += split::row_partials(t.rows, plan);
      if (plan.chunks > 1) chunked_rows = std::max(chunked_rows, t.rows);
      table.unit_start[n] = units;
      units += split::row_units(t.rows, plan);
      ++n;
    }
    table.unit_start[n] = units;
    table.count = n;
    if (n == 0) continue;
    row_sums_kernel<Depth, T><<<grid_for_warps(units), kThreads, 0, stream>>>(table, op, partials);
    check_launch(what);
    if (chunked_rows > 0) {
      row_partials_kernel<Depth><<<grid_for(chunked_rows), kThreads, 0, stream>>>(table, op, partials);
      check_launch(what);
    }
  }
}

}  // namespace cuda
}  // namespace epi_fast
