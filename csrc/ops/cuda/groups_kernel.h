// Launcher of groups_kernel.cu (torch-free; called by groups_glue.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "epi_fast/kernel_math.h"

namespace epi_fast {
namespace cuda {

// out[g] = reduce over scores[member_idx[group_ptr[g]:group_ptr[g + 1]]], in member order;
// `members` is the length of member_idx (known on the host without reading the index).
void group_reduce(const float* scores, const int64_t* group_ptr, const int64_t* member_idx, int64_t groups,
                  int64_t members, Reduce reduce, float* out, cudaStream_t stream);

// Lanes per group that group_reduce uses (a power of two, 1 to 32): the mean group size rounded
// up.
int group_team(int64_t groups, int64_t members);

}  // namespace cuda
}  // namespace epi_fast
