// channel_scores on CUDA: one warp per row through the shared multi-tensor launcher.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "epi_fast/kernel_math.h"
#include "multi_tensor_apply.cuh"
#include "scores_kernel.h"

namespace epi_fast {
namespace cuda {
namespace {

// One warp reduces one row: 16-byte vector loads where the row is aligned, scalar otherwise.
template <ScoreKind K, typename T>
__device__ float warp_row_score(const T* row, int64_t cols, int lane) {
  constexpr int kVec = 16 / sizeof(T);
  float acc = 0.0f;
  int64_t tail = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15u) == 0) {
    const int64_t vectors = cols / kVec;
    const uint4* vrow = reinterpret_cast<const uint4*>(row);
#pragma unroll 4
    for (int64_t v = lane; v < vectors; v += 32) {
      uint4 pack = vrow[v];
      const T* e = reinterpret_cast<const T*>(&pack);
#pragma unroll
      for (int q = 0; q < kVec; ++q) acc += score_term<K>(to_float(e[q]));
    }
    tail = vectors * kVec;
  }
  for (int64_t j = tail + lane; j < cols; j += 32) acc += score_term<K>(to_float(row[j]));
  return warp_sum(acc);
}

template <ScoreKind K, typename T>
struct ScoreRow {
  float* out;
  __device__ void operator()(const RowTable<1>& table, int slot, int64_t r, int lane) const {
    const int64_t cols = table.cols[slot];
    const T* data = static_cast<const T*>(table.operand[0][slot]) + r * cols;
    const float s = warp_row_score<K>(data, cols, lane);
    if (lane == 0) out[table.out_offset[slot] + r] = score_finish(s, K);
  }
};

template <typename T>
void launch(const RowTensor* tensors, int64_t count, ScoreKind kind, float* out, cudaStream_t stream) {
  switch (kind) {
    case ScoreKind::L1:
      multi_tensor_apply<1>(tensors, count, ScoreRow<ScoreKind::L1, T>{out}, stream, "channel_scores");
      break;
    case ScoreKind::L2:
      multi_tensor_apply<1>(tensors, count, ScoreRow<ScoreKind::L2, T>{out}, stream, "channel_scores");
      break;
    case ScoreKind::Abs:
      multi_tensor_apply<1>(tensors, count, ScoreRow<ScoreKind::Abs, T>{out}, stream, "channel_scores");
      break;
  }
}

}  // namespace

void channel_scores(const RowTensor* tensors, int64_t count, DType dtype, ScoreKind kind, float* out,
                    cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: launch<float>(tensors, count, kind, out, stream); break;
    case DType::Float16: launch<__half>(tensors, count, kind, out, stream); break;
    case DType::BFloat16: launch<__nv_bfloat16>(tensors, count, kind, out, stream); break;
  }
}

}  // namespace cuda
}  // namespace epi_fast
