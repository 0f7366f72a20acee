// Launchers of masks_kernel.cu (torch-free; called by masks_glue.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace epi_fast {
namespace cuda {

// keys[i] = channel_key(scores[i], i); *nan_count += number of NaN scores.
void channel_keys(const float* scores, int64_t n, uint64_t* keys, int* nan_count, cudaStream_t stream);

// Bytes of scratch that select_masks needs.
size_t select_masks_workspace(int64_t n, int64_t segments);

// Masks [m, n] and thresholds [m] from the keys. seg_offsets (device, segments + 1 entries) may
// be null for no segments; ks (device, m entries) are the removal counts.
void select_masks(const uint64_t* keys, int64_t n, const int64_t* seg_offsets, int64_t segments, int64_t min_keep,
                  const int64_t* ks, int64_t m, bool* masks, float* thresholds, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace epi_fast
