// Launchers of masks_kernel.cu (torch-free; called by masks_glue.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace epi_fast {
namespace cuda {

// keys[i] = channel_key(scores[i], i); *nan_count += number of NaN scores.
void channel_keys(const float* scores, int64_t n, uint64_t* keys, int* nan_count, cudaStream_t stream);

// How the protected channels (the p = min(size, min_keep) highest keys of each segment) are
// found, chosen on the host from the largest p of any segment: none (no segments, or every
// p = 0), a per-segment maximum (every p <= 1: the highest key, among equal scores the highest
// index), or a segmented sort (some p >= 2).
enum class Protection : int { None = 0, Max = 1, Sort = 2 };

// The segments and their minima, as select_masks reads them. seg_offsets: device, segments + 1
// entries (null, with segments = 0, for no segments); seg_min_keep: device, one per segment, or
// null for min_keep in every segment.
struct Segments {
  const int64_t* seg_offsets;
  int64_t segments;
  int64_t min_keep;
  const int64_t* seg_min_keep;
  Protection protection;
};

// Bytes of scratch that select_masks needs.
size_t select_masks_workspace(int64_t n, int64_t segments, Protection protection);

// Masks [m, n] and thresholds [m] from the keys; ks (device, m entries) are the removal counts,
// each at most the unprotected count (the glue checks that). Any m: the kernels loop over the
// ratios.
void select_masks(const uint64_t* keys, int64_t n, const Segments& seg, const int64_t* ks, int64_t m, bool* masks,
                  float* thresholds, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace epi_fast
