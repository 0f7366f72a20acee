// group_reduce on CUDA: a team of lanes per group loads the group's members together, and the
// team folds them in member order (the CPU's order), so sums, means and maxima are the CPU's bit
// for bit while a group's loads are in flight at once rather than one after another.
#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "epi_fast/kernel_math.h"
#include "groups_kernel.h"

namespace epi_fast {
namespace cuda {
namespace {

// Groups of `team` lanes (a power of two dividing 32), 32 / team groups a warp, grid-stride over
// the warps. Each round, lane `sub` of a team loads member round * team + sub of its group; then
// every lane of the team folds the round's values in member order through shuffles (each lane
// ends with the same result; lane 0 of the team writes it). A warp runs as many rounds as its
// largest group needs, and every lane takes part in every shuffle.
__global__ void group_reduce_kernel(const float* scores, const int64_t* ptr, const int64_t* idx, int64_t groups,
                                    Reduce reduce, float* out, int team) {
  const int lane = threadIdx.x & 31;
  const int sub = lane & (team - 1);
  const int base = lane - sub;
  const int per_warp = 32 / team;
  const int64_t warps = (groups + per_warp - 1) / per_warp;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; w < warps;
       w += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t g = w * per_warp + lane / team;
    const bool valid = g < groups;
    const int64_t begin = valid ? ptr[g] : 0;
    const int64_t count = valid ? ptr[g + 1] - begin : 0;
    const long long rounds = warp_max(static_cast<long long>((count + team - 1) / team));
    float acc = reduce_init(reduce);
    for (long long r = 0; r < rounds; ++r) {
      const int64_t first = r * team;
      const float v = first + sub < count ? scores[idx[begin + first + sub]] : 0.0f;
      for (int i = 0; i < team; ++i) {
        const float x = __shfl_sync(0xffffffffu, v, base + i);
        if (first + i < count) acc = reduce_step(acc, x, reduce);
      }
    }
    if (valid && sub == 0) out[g] = reduce_finish(acc, count, reduce);
  }
}

}  // namespace

int group_team(int64_t groups, int64_t members) {
  // The mean group size, rounded up to a power of two: most groups then take one round.
  const int64_t mean = groups > 0 ? (members + groups - 1) / groups : 1;
  int team = 1;
  while (team < 32 && team < mean) team *= 2;
  return team;
}

void group_reduce(const float* scores, const int64_t* group_ptr, const int64_t* member_idx, int64_t groups,
                  int64_t members, Reduce reduce, float* out, cudaStream_t stream) {
  if (groups == 0) return;
  const int team = group_team(groups, members);
  const int64_t warps = (groups + 32 / team - 1) / (32 / team);
  group_reduce_kernel<<<grid_for_warps(warps), kThreads, 0, stream>>>(scores, group_ptr, member_idx, groups, reduce,
                                                                      out, team);
  check_launch("group_reduce");
}

}  // namespace cuda
}  // namespace epi_fast
