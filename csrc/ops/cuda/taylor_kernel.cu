// Taylor scores on CUDA: per-row dot products through the shared multi-tensor launcher, then
// the finishing step; the accumulating form checks the whole step before it adds any of it.
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

template <typename T>
__device__ float warp_row_dot(const T* a, const T* b, int64_t cols, int lane) {
  constexpr int kVec = 16 / sizeof(T);
  float acc = 0.0f;
  int64_t tail = 0;
  if (((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) & 15u) == 0) {
    const int64_t vectors = cols / kVec;
    const uint4* va = reinterpret_cast<const uint4*>(a);
    const uint4* vb = reinterpret_cast<const uint4*>(b);
#pragma unroll 4
    for (int64_t v = lane; v < vectors; v += 32) {
      uint4 pa = va[v], pb = vb[v];
      const T* ea = reinterpret_cast<const T*>(&pa);
      const T* eb = reinterpret_cast<const T*>(&pb);
#pragma unroll
      for (int q = 0; q < kVec; ++q) acc += to_float(ea[q]) * to_float(eb[q]);
    }
    tail = vectors * kVec;
  }
  for (int64_t j = tail + lane; j < cols; j += 32) acc += to_float(a[j]) * to_float(b[j]);
  return warp_sum(acc);
}

template <typename T>
struct DotRow {
  float* raw;
  __device__ void operator()(const RowTable<2>& table, int slot, int64_t r, int lane) const {
    const int64_t cols = table.cols[slot];
    const T* w = static_cast<const T*>(table.operand[0][slot]) + r * cols;
    const T* g = static_cast<const T*>(table.operand[1][slot]) + r * cols;
    const float s = warp_row_dot(w, g, cols, lane);
    if (lane == 0) atomicAdd(raw + table.out_offset[slot] + r, s);
  }
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
    acc[i] += scaled_contribution(raw, i, inv_scale, mode);
}

}  // namespace

void taylor_raw(const RowTensor* tensors, int64_t count, DType dtype, float* raw, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: multi_tensor_apply<2>(tensors, count, DotRow<float>{raw}, stream, "taylor_raw"); break;
    case DType::Float16: multi_tensor_apply<2>(tensors, count, DotRow<__half>{raw}, stream, "taylor_raw"); break;
    case DType::BFloat16:
      multi_tensor_apply<2>(tensors, count, DotRow<__nv_bfloat16>{raw}, stream, "taylor_raw");
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
