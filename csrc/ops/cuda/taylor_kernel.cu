// Taylor scores on CUDA: per-row dot products through the shared multi-tensor row-sum launcher
// (multi_tensor_apply.cuh), then the finishing step; the accumulating form checks the whole step
// before it adds any of it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "epi_fast/kernel_math.h"
#include "multi_tensor_apply.cuh"
#include "taylor_kernel.h"

namespace epi_fast {
namespace cuda {
namespace {

// Taylor's row term: w * g, summed over a row; each row's sum is added into its channel (a
// BatchNorm's weight and bias add into the same channels).
struct DotOp {
  float* raw;
  __device__ float term(float w, float g) const { return w * g; }
  __device__ void write(int64_t channel, float sum) const { atomicAdd(raw + channel, sum); }
};

__global__ void taylor_finish_kernel(float* raw, int64_t n, TaylorMode mode) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    raw[i] = taylor_finish(raw[i], mode);
}

__device__ __forceinline__ float scaled_contribution(const float* raw, int64_t i, const float* inv_scale,
                                                     TaylorMode mode) {
  const float v = inv_scale ? raw[i] * *inv_scale : raw[i];
  return taylor_finish(v, mode);
}

__global__ void taylor_check_kernel(const float* raw, int64_t n, const float* inv_scale, TaylorMode mode,
                                    int* flag) {
  bool bad = false;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    bad |= !is_finite(scaled_contribution(raw, i, inv_scale, mode));
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
}

__global__ void taylor_apply_kernel(const float* raw, int64_t n, const float* inv_scale, TaylorMode mode,
                                    float* acc, int64_t* skipped, const int* flag) {
  if (*flag) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *skipped += 1;
    return;
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    // Two roundings, as on the CPU (compiled without contraction): nvcc would fuse the square
    // of the contribution into this add.
    acc[i] = __fadd_rn(acc[i], scaled_contribution(raw, i, inv_scale, mode));
}

}  // namespace

void taylor_raw(const RowTensor* tensors, int64_t count, DType dtype, float* raw, float* partials,
                cudaStream_t stream) {
  const DotOp op{raw};
  switch (dtype) {
    case DType::Float32: multi_tensor_row_sums<2, float>(tensors, count, op, partials, stream, "taylor_raw"); break;
    case DType::Float16: multi_tensor_row_sums<2, __half>(tensors, count, op, partials, stream, "taylor_raw"); break;
    case DType::BFloat16:
      multi_tensor_row_sums<2, __nv_bfloat16>(tensors, count, op, partials, stream, "taylor_raw");
      break;
  }
}

void taylor_finish(float* raw, int64_t channels, TaylorMode mode, cudaStream_t stream) {
  if (channels == 0) return;
  taylor_finish_kernel<<<grid_for(channels), kThreads, 0, stream>>>(raw, channels, mode);
  check_launch("taylor_finish");
}

void taylor_accumulate(const float* raw, int64_t channels, const float* inv_scale, TaylorMode mode, float* acc,
                       int64_t* skipped, int* flag, cudaStream_t stream) {
  check(cudaMemsetAsync(flag, 0, sizeof(int), stream), "taylor_accumulate");
  const unsigned blocks = grid_for(channels);
  if (channels > 0) {
    taylor_check_kernel<<<blocks, kThreads, 0, stream>>>(raw, channels, inv_scale, mode, flag);
    check_launch("taylor_accumulate (check)");
  }
  taylor_apply_kernel<<<blocks, kThreads, 0, stream>>>(raw, channels, inv_scale, mode, acc, skipped, flag);
  check_launch("taylor_accumulate (apply)");
}

}  // namespace cuda
}  // namespace epi_fast
