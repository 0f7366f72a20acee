// Launchers for the CUDA kernels: raw pointers, sizes and a stream, no torch types, so that
// the .cu file compiles without libtorch (quickly, and in the CMake core on CI).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "epi_fast/kernel_math.h"

namespace epi_fast {
namespace cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// One tensor seen as rows (its output channels on dim 0), contiguous. `grad` is used by the
// Taylor kernels only.
struct RowTensor {
  const void* data;
  const void* grad;
  int64_t rows;
  int64_t cols;
  int64_t out_offset;  // channel of row 0 in the output
};

// out[t.out_offset + r] = score of row r of tensor t, for every tensor; chunked multi-tensor
// launches, no per-layer launches.
void channel_scores(const RowTensor* tensors, int64_t count, DType dtype, ScoreKind kind,
                    float* out, cudaStream_t stream);

// raw[t.out_offset + r] += sum over row r of data * grad. `raw` must be zeroed by the caller.
// Channels that receive at most two rows (a BN weight and bias) are exact and run-to-run
// deterministic (float addition is commutative); three or more may differ in the last bit.
void taylor_raw(const RowTensor* tensors, int64_t count, DType dtype, float* raw,
                cudaStream_t stream);

// raw[c] = f(raw[c]) in place.
void taylor_finish(float* raw, int64_t channels, TaylorMode mode, cudaStream_t stream);

// If every f(raw[c] * inv_scale) is finite: acc[c] += it; else *skipped += 1. `flag` is a
// device int of scratch. inv_scale may be null. No host synchronisation.
void taylor_accumulate(const float* raw, int64_t channels, const float* inv_scale,
                       TaylorMode mode, float* acc, int64_t* skipped, int* flag,
                       cudaStream_t stream);

void group_reduce(const float* scores, const int64_t* group_ptr, const int64_t* member_idx,
                  int64_t groups, Reduce reduce, float* out, cudaStream_t stream);

// keys[i] = channel_key(scores[i], i); *nan_count += number of NaN scores.
void channel_keys(const float* scores, int64_t n, uint64_t* keys, int* nan_count,
                  cudaStream_t stream);

// Bytes of scratch that select_masks needs.
size_t select_masks_workspace(int64_t n, int64_t segments);

// Masks [m, n] and thresholds [m] from the keys. seg_offsets (device, segments + 1 entries) may
// be null for no segments; ks (device, m entries) are the removal counts.
void select_masks(const uint64_t* keys, int64_t n, const int64_t* seg_offsets, int64_t segments,
                  int64_t min_keep, const int64_t* ks, int64_t m, bool* masks, float* thresholds,
                  void* workspace, size_t workspace_bytes, cudaStream_t stream);

// counts[j, s] = number of true entries of a[j] (a[j] & b[j] when b is given) in segment s;
// differ[j, s] = number of entries where a[j] != b[j] (only when b and differ are given).
void segment_counts(const bool* a, const bool* b, int64_t m, int64_t n, const int64_t* seg_offsets,
                    int64_t segments, int64_t* counts, int64_t* differ, cudaStream_t stream);

// Throws std::runtime_error with the CUDA error text if the last launch failed.
void check_launch(const char* what);

}  // namespace cuda
}  // namespace epi_fast
