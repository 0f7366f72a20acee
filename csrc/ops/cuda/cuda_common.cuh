// Launch geometry, error checks and warp arithmetic shared by the families' CUDA kernels.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace epi_fast {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("epi_fast CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// Throws std::runtime_error with the CUDA error text if the launch just made failed. The runtime
// keeps one pending error per host thread, which cudaGetLastError returns and clears whoever
// caused it; every operator's glue first reports an error that was already pending as an earlier
// one (cuda_glue::check_no_pending_error, glue.h), so what this finds is this launch's own.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }
// CUB reads its launches' errors with cudaPeekAtLastError, which leaves them pending: clear a
// failure here so that it is reported once, as this call's, and not again by the next operator.
inline void check_cub(cudaError_t err, const char* what) {
  if (err != cudaSuccess) (void)cudaGetLastError();
  check(err, what);
}

// Blocks in a grid: at most this many, the kernels loop (grid-stride) over the rest.
constexpr int64_t kMaxBlocks = 65535;

// Blocks of kThreads for a grid-stride loop over n elements, a thread each.
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, kMaxBlocks)));
}

// Blocks of kThreads for a grid-stride loop over n units of work, a warp each.
inline unsigned grid_for_warps(int64_t n) {
  const int64_t blocks = (n + kWarps - 1) / kWarps;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, kMaxBlocks)));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ unsigned warp_sum(unsigned v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ long long warp_max(long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const long long other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

}  // namespace cuda
}  // namespace epi_fast
