// layer_counts and mask_overlap on CUDA: one block per (mask row, segment).
#include <cuda_runtime.h>

#include "counts_kernel.h"
#include "cuda_common.cuh"

namespace epi_fast {
namespace cuda {
namespace {

__global__ void segment_counts_kernel(const bool* a, const bool* b, int64_t n, const int64_t* offsets,
                                      int64_t* counts, int64_t* differ, int64_t segments) {
  const int64_t s = blockIdx.x;
  const int64_t j = blockIdx.y;
  const bool* ra = a + j * n;
  const bool* rb = b ? b + j * n : nullptr;
  long long both = 0, diff = 0;
  for (int64_t i = offsets[s] + threadIdx.x; i < offsets[s + 1]; i += blockDim.x) {
    const bool x = ra[i];
    const bool y = rb ? rb[i] : true;
    both += (x && y);
    diff += (x != y);
  }
  __shared__ long long shared_both[kWarps], shared_diff[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) {
    both += __shfl_xor_sync(0xffffffffu, both, offset);
    diff += __shfl_xor_sync(0xffffffffu, diff, offset);
  }
  if ((threadIdx.x & 31) == 0) {
    shared_both[threadIdx.x / 32] = both;
    shared_diff[threadIdx.x / 32] = diff;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total_both = 0, total_diff = 0;
    for (int w = 0; w < kWarps; ++w) {
      total_both += shared_both[w];
      total_diff += shared_diff[w];
    }
    counts[j * segments + s] = total_both;
    if (differ) differ[j * segments + s] = total_diff;
  }
}

}  // namespace

void segment_counts(const bool* a, const bool* b, int64_t m, int64_t n, const int64_t* seg_offsets,
                    int64_t segments, int64_t* counts, int64_t* differ, cudaStream_t stream) {
  if (m == 0 || segments == 0) return;
  dim3 grid(static_cast<unsigned>(segments), static_cast<unsigned>(m));
  segment_counts_kernel<<<grid, kThreads, 0, stream>>>(a, b, n, seg_offsets, counts, differ, segments);
  check_launch("segment_counts");
}

}  // namespace cuda
}  // namespace epi_fast
