// channel_scores on CUDA: per-row sums of score terms through the shared multi-tensor row-sum
// launcher (multi_tensor_apply.cuh), which gives short rows (a BatchNorm's one value) a team of
// a few lanes and long rows (a classifier's, a 1 x 4M layer's) a warp per chunk.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "epi_fast/kernel_math.h"
#include "multi_tensor_apply.cuh"
#include "scores_kernel.h"

namespace epi_fast {
namespace cuda {
namespace {

template <ScoreKind K>
struct ScoreOp {
  float* out;
  __device__ float term(float x) const { return score_term<K>(x); }
  __device__ void write(int64_t channel, float sum) const { out[channel] = score_finish(sum, K); }
};

template <typename T>
void launch(const RowTensor* tensors, int64_t count, ScoreKind kind, float* out, float* partials,
            cudaStream_t stream) {
  switch (kind) {
    case ScoreKind::L1:
      multi_tensor_row_sums<1, T>(tensors, count, ScoreOp<ScoreKind::L1>{out}, partials, stream, "channel_scores");
      break;
    case ScoreKind::L2:
      multi_tensor_row_sums<1, T>(tensors, count, ScoreOp<ScoreKind::L2>{out}, partials, stream, "channel_scores");
      break;
    case ScoreKind::Abs:
      multi_tensor_row_sums<1, T>(tensors, count, ScoreOp<ScoreKind::Abs>{out}, partials, stream, "channel_scores");
      break;
  }
}

}  // namespace

void channel_scores(const RowTensor* tensors, int64_t count, DType dtype, ScoreKind kind, float* out,
                    float* partials, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: launch<float>(tensors, count, kind, out, partials, stream); break;
    case DType::Float16: launch<__half>(tensors, count, kind, out, partials, stream); break;
    case DType::BFloat16: launch<__nv_bfloat16>(tensors, count, kind, out, partials, stream); break;
  }
}

}  // namespace cuda
}  // namespace epi_fast
