// global_masks on CUDA: 64-bit (score, index) keys, CUB radix sorts (segmented for the
// protected channels, then one over all keys), masks and thresholds for every ratio at once.

// Keep this library's CUB instantiations apart from the ones inside libtorch.
#ifndef CUB_WRAPPED_NAMESPACE
#define CUB_WRAPPED_NAMESPACE epi_fast_cub
#endif

#include <cub/cub.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>

#include "cuda_common.cuh"
#include "epi_fast/kernel_math.h"
#include "masks_kernel.h"

namespace cubw = CUB_WRAPPED_NAMESPACE::cub;

namespace epi_fast {
namespace cuda {
namespace {

__global__ void channel_keys_kernel(const float* scores, int64_t n, uint64_t* keys, int* nan_count) {
  int nans = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = scores[i];
    nans += (s != s);
    keys[i] = channel_key(s, static_cast<uint32_t>(i));
  }
  if (nans) atomicAdd(nan_count, nans);  // NaN scores are rare: no block reduction needed
}

// prot_key[s]: the smallest key among the min_keep highest keys of segment s (the protected
// ones are those >= it); kProtectedKey where nothing is protected.
__global__ void protection_kernel(const uint64_t* seg_sorted_desc, const int64_t* offsets, int64_t segments,
                                  int64_t min_keep, uint64_t* prot_key) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < segments;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t size = offsets[s + 1] - offsets[s];
    const int64_t p = size < min_keep ? size : min_keep;
    prot_key[s] = p > 0 ? seg_sorted_desc[offsets[s] + p - 1] : kProtectedKey;
  }
}

__global__ void removable_keys_kernel(const uint64_t* keys, int64_t n, const int64_t* offsets, int64_t segments,
                                      const uint64_t* prot_key, uint64_t* removable) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t key = keys[i];
    const uint64_t limit = prot_key[segment_of(offsets, segments, i)];
    removable[i] = (limit != kProtectedKey && key >= limit) ? kProtectedKey : key;
  }
}

__global__ void masks_kernel(const uint64_t* removable, int64_t n, const uint64_t* sorted, const int64_t* ks,
                             int64_t m, bool* masks) {
  const int64_t j = blockIdx.y;
  const int64_t k = ks[j];
  const uint64_t kth = k > 0 ? sorted[k - 1] : 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    masks[j * n + i] = k == 0 || removable[i] > kth;
}

__global__ void thresholds_kernel(const uint64_t* sorted, const int64_t* ks, int64_t m, float* thresholds) {
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const int64_t k = ks[j];
    thresholds[j] = k > 0 ? channel_key_score(sorted[k - 1]) : -INFINITY;
  }
}

size_t align_up(size_t bytes) { return (bytes + 255) & ~static_cast<size_t>(255); }

struct SelectWorkspace {
  uint64_t* removable;
  uint64_t* sorted;
  uint64_t* seg_sorted;
  uint64_t* prot_key;
  void* cub_temp;
  size_t cub_bytes;
  size_t total;
};

size_t cub_temp_bytes(int64_t n, int64_t segments) {
  size_t sort_bytes = 0, seg_bytes = 0;
  cubw::DeviceRadixSort::SortKeys(nullptr, sort_bytes, static_cast<const uint64_t*>(nullptr),
                                  static_cast<uint64_t*>(nullptr), static_cast<int>(n));
  if (segments > 0) {
    const int64_t* offsets = nullptr;
    cubw::DeviceSegmentedRadixSort::SortKeysDescending(nullptr, seg_bytes, static_cast<const uint64_t*>(nullptr),
                                                       static_cast<uint64_t*>(nullptr), static_cast<int>(n),
                                                       static_cast<int>(segments), offsets, offsets + 1);
  }
  return std::max(sort_bytes, seg_bytes);
}

SelectWorkspace carve(void* base, int64_t n, int64_t segments) {
  SelectWorkspace w{};
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* at = p ? p + off : nullptr;
    off += align_up(bytes);
    return at;
  };
  w.removable = reinterpret_cast<uint64_t*>(take(n * sizeof(uint64_t)));
  w.sorted = reinterpret_cast<uint64_t*>(take(n * sizeof(uint64_t)));
  w.seg_sorted = reinterpret_cast<uint64_t*>(take(segments > 0 ? n * sizeof(uint64_t) : 0));
  w.prot_key = reinterpret_cast<uint64_t*>(take(segments * sizeof(uint64_t)));
  w.cub_bytes = cub_temp_bytes(n, segments);
  w.cub_temp = take(w.cub_bytes);
  w.total = off;
  return w;
}

}  // namespace

void channel_keys(const float* scores, int64_t n, uint64_t* keys, int* nan_count, cudaStream_t stream) {
  if (n == 0) return;
  channel_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(scores, n, keys, nan_count);
  check_launch("channel_keys");
}

size_t select_masks_workspace(int64_t n, int64_t segments) { return carve(nullptr, n, segments).total; }

void select_masks(const uint64_t* keys, int64_t n, const int64_t* seg_offsets, int64_t segments, int64_t min_keep,
                  const int64_t* ks, int64_t m, bool* masks, float* thresholds, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream) {
  if (m == 0) return;
  const int64_t segs = seg_offsets ? segments : 0;
  SelectWorkspace w = carve(workspace, n, segs);
  if (workspace_bytes < w.total) throw std::runtime_error("epi_fast: select_masks workspace too small");
  const uint64_t* removable = keys;
  if (n > 0 && segs > 0 && min_keep > 0) {
    size_t bytes = w.cub_bytes;
    check(cubw::DeviceSegmentedRadixSort::SortKeysDescending(w.cub_temp, bytes, keys, w.seg_sorted,
                                                             static_cast<int>(n), static_cast<int>(segs),
                                                             seg_offsets, seg_offsets + 1, 0, 64, stream),
          "select_masks (segmented sort)");
    protection_kernel<<<grid_for(segs), kThreads, 0, stream>>>(w.seg_sorted, seg_offsets, segs, min_keep,
                                                               w.prot_key);
    check_launch("select_masks (protection)");
    removable_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(keys, n, seg_offsets, segs, w.prot_key,
                                                                w.removable);
    check_launch("select_masks (removable)");
    removable = w.removable;
  }
  if (n > 0) {
    size_t bytes = w.cub_bytes;
    check(cubw::DeviceRadixSort::SortKeys(w.cub_temp, bytes, removable, w.sorted, static_cast<int>(n), 0, 64,
                                          stream),
          "select_masks (sort)");
    dim3 grid(grid_for(n), static_cast<unsigned>(m));
    masks_kernel<<<grid, kThreads, 0, stream>>>(removable, n, w.sorted, ks, m, masks);
    check_launch("select_masks (masks)");
  }
  thresholds_kernel<<<1, 32, 0, stream>>>(w.sorted, ks, m, thresholds);
  check_launch("select_masks (thresholds)");
}

}  // namespace cuda
}  // namespace epi_fast
