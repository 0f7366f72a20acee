// layer_counts and mask_overlap on CUDA: each (mask row, segment) is cut into pieces of at most
// split::kPieceBytes bytes, a warp each (grid-stride over all rows' pieces, so the number of mask
// rows has no limit of its own); a warp counts its piece with 16-byte loads and popcounts and
// adds the count into its (row, segment) entry. Integer additions: the counts are exact and
// independent of the order in which pieces finish.
#include <cuda_runtime.h>

#include <cstdint>

#include "counts_kernel.h"
#include "cuda_common.cuh"
#include "epi_fast/work_split.h"

namespace epi_fast {
namespace cuda {
namespace {

// A mask byte is 0 or 1 (torch's bool), so the popcount of a word is the count of its true bytes.
__device__ __forceinline__ unsigned popc4(uint4 v) {
  return __popc(v.x) + __popc(v.y) + __popc(v.z) + __popc(v.w);
}

template <bool Pair>
__global__ void segment_counts_kernel(const uint8_t* a, const uint8_t* b, int64_t n, const int64_t* table,
                                      int64_t segments, int64_t tasks, unsigned long long* counts,
                                      unsigned long long* differ) {
  const int lane = threadIdx.x & 31;
  for (int64_t task = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; task < tasks;
       task += static_cast<int64_t>(gridDim.x) * kWarps) {
    const split::Piece p = split::piece_of(task, table, segments);
    const uint8_t* ra = a + p.row * n;
    const uint8_t* rb = Pair ? b + p.row * n : nullptr;
    const int64_t len = p.end - p.begin;
    const int64_t head = Pair ? split::head_elems2(reinterpret_cast<uintptr_t>(ra + p.begin),
                                                   reinterpret_cast<uintptr_t>(rb + p.begin), 1, len)
                              : split::head_elems(reinterpret_cast<uintptr_t>(ra + p.begin), 1, len);
    unsigned both = 0, diff = 0;
    split::team_span(
        p.begin, p.end, head, split::kVectorBytes, lane, 32,
        [&](int64_t j) {
          const unsigned x = ra[j];
          if constexpr (Pair) {
            const unsigned y = rb[j];
            both += x & y;
            diff += x ^ y;
          } else {
            both += x;
          }
        },
        [&](int64_t j) {
          const uint4 va = *reinterpret_cast<const uint4*>(ra + j);
          if constexpr (Pair) {
            const uint4 vb = *reinterpret_cast<const uint4*>(rb + j);
            both += popc4(make_uint4(va.x & vb.x, va.y & vb.y, va.z & vb.z, va.w & vb.w));
            diff += popc4(make_uint4(va.x ^ vb.x, va.y ^ vb.y, va.z ^ vb.z, va.w ^ vb.w));
          } else {
            both += popc4(va);
          }
        });
    both = warp_sum(both);
    if (Pair) diff = warp_sum(diff);
    if (lane == 0) {
      const int64_t at = p.row * segments + p.segment;
      if (both) atomicAdd(counts + at, static_cast<unsigned long long>(both));
      if (Pair && diff) atomicAdd(differ + at, static_cast<unsigned long long>(diff));
    }
  }
}

}  // namespace

void segment_counts(const bool* a, const bool* b, int64_t m, int64_t n, const int64_t* seg_table, int64_t segments,
                    int64_t pieces, int64_t* counts, int64_t* differ, cudaStream_t stream) {
  if (m == 0 || segments == 0) return;
  const size_t bytes = static_cast<size_t>(m) * static_cast<size_t>(segments) * sizeof(int64_t);
  check(cudaMemsetAsync(counts, 0, bytes, stream), "segment_counts");
  if (differ) check(cudaMemsetAsync(differ, 0, bytes, stream), "segment_counts");
  const int64_t tasks = m * pieces;
  if (tasks == 0) return;
  auto* ua = reinterpret_cast<const uint8_t*>(a);
  auto* ub = reinterpret_cast<const uint8_t*>(b);
  auto* uc = reinterpret_cast<unsigned long long*>(counts);
  auto* ud = reinterpret_cast<unsigned long long*>(differ);
  if (b) {
    segment_counts_kernel<true><<<grid_for_warps(tasks), kThreads, 0, stream>>>(ua, ub, n, seg_table, segments, tasks,
                                                                                uc, ud);
  } else {
    segment_counts_kernel<false><<<grid_for_warps(tasks), kThreads, 0, stream>>>(ua, nullptr, n, seg_table, segments,
                                                                                 tasks, uc, nullptr);
  }
  check_launch("segment_counts");
}

}  // namespace cuda
}  // namespace epi_fast
