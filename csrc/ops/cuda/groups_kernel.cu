// group_reduce on CUDA: one thread per group, members in order (the CPU's order too).
#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "epi_fast/kernel_math.h"
#include "groups_kernel.h"

namespace epi_fast {
namespace cuda {
namespace {

__global__ void group_reduce_kernel(const float* scores, const int64_t* ptr, const int64_t* idx, int64_t groups,
                                    Reduce reduce, float* out) {
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = reduce_init(reduce);
    const int64_t begin = ptr[g], end = ptr[g + 1];
    for (int64_t k = begin; k < end; ++k) acc = reduce_step(acc, scores[idx[k]], reduce);
    out[g] = reduce_finish(acc, end - begin, reduce);
  }
}

}  // namespace

void group_reduce(const float* scores, const int64_t* group_ptr, const int64_t* member_idx, int64_t groups,
                  Reduce reduce, float* out, cudaStream_t stream) {
  if (groups == 0) return;
  group_reduce_kernel<<<grid_for(groups), kThreads, 0, stream>>>(scores, group_ptr, member_idx, groups, reduce,
                                                                 out);
  check_launch("group_reduce");
}

}  // namespace cuda
}  // namespace epi_fast
