// global_masks on CUDA: 64-bit (score, index) keys, the protected channels of each segment (a
// per-segment maximum where each segment protects at most one, a segmented radix sort
// otherwise), one CUB radix sort over the removable keys, masks and thresholds for every ratio.

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

// prot_key[s]: the smallest key among the p = min(size, min_keep of s) highest keys of segment
// s (the protected ones are those >= it); kProtectedKey where nothing is protected. From the
// segments sorted by descending key (Protection::Sort), or from each segment's highest key when
// every p <= 1 (Protection::Max; seg_max may be prot_key itself: each thread reads its entry
// before writing it).
__global__ void protection_kernel(const uint64_t* seg_sorted_desc, const uint64_t* seg_max, const int64_t* offsets,
                                  int64_t segments, int64_t min_keep, const int64_t* seg_min_keep,
                                  uint64_t* prot_key) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < segments;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t size = offsets[s + 1] - offsets[s];
    const int64_t keep = seg_min_keep ? seg_min_keep[s] : min_keep;
    const int64_t p = size < keep ? size : keep;
    uint64_t limit = kProtectedKey;
    if (p > 0) limit = seg_max ? seg_max[s] : seg_sorted_desc[offsets[s] + p - 1];
    prot_key[s] = limit;
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

// Rows of the masks grid-stride over blockIdx.y, so any number of ratios fits the 65,535 limit
// of gridDim.y.
__global__ void masks_kernel(const uint64_t* removable, int64_t n, const uint64_t* sorted, const int64_t* ks,
                             int64_t m, bool* masks) {
  for (int64_t j = blockIdx.y; j < m; j += gridDim.y) {
    const int64_t k = ks[j];
    const uint64_t kth = k > 0 ? sorted[k - 1] : 0;
    bool* row = masks + j * n;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
      row[i] = k == 0 || removable[i] > kth;
  }
}

__global__ void thresholds_kernel(const uint64_t* sorted, const int64_t* ks, int64_t m, float* thresholds) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < m;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = ks[j];
    thresholds[j] = k > 0 ? channel_key_score(sorted[k - 1]) : -INFINITY;
  }
}

size_t align_up(size_t bytes) { return (bytes + 255) & ~static_cast<size_t>(255); }

// The scratch of one select. `sorted` doubles as the segmented sort's output: that sort's last
// reader (protection_kernel) runs before the global sort writes `sorted`, on the same stream.
struct SelectWorkspace {
  uint64_t* removable;  // Max and Sort only
  uint64_t* sorted;
  uint64_t* prot_key;   // Max and Sort only; Max writes each segment's highest key here first
  void* cub_temp;
  size_t cub_bytes;
  size_t total;
};

size_t cub_temp_bytes(int64_t n, int64_t segments, Protection protection) {
  size_t sort_bytes = 0, protect_bytes = 0;
  const uint64_t* in = nullptr;
  uint64_t* out = nullptr;
  const int64_t* offsets = nullptr;
  check(cubw::DeviceRadixSort::SortKeys(nullptr, sort_bytes, in, out, static_cast<int>(n)),
        "select_masks (sort workspace)");
  if (protection == Protection::Sort)
    check(cubw::DeviceSegmentedRadixSort::SortKeysDescending(nullptr, protect_bytes, in, out, static_cast<int>(n),
                                                             static_cast<int>(segments), offsets, offsets + 1),
          "select_masks (segmented sort workspace)");
  else if (protection == Protection::Max)
    check(cubw::DeviceSegmentedReduce::Max(nullptr, protect_bytes, in, out, segments, offsets, offsets + 1),
          "select_masks (segment maximum workspace)");
  return std::max(sort_bytes, protect_bytes);
}

SelectWorkspace carve(void* base, int64_t n, int64_t segments, Protection protection) {
  SelectWorkspace w{};
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* at = p ? p + off : nullptr;
    off += align_up(bytes);
    return at;
  };
  const bool protects = protection != Protection::None;
  w.removable = reinterpret_cast<uint64_t*>(take(protects ? n * sizeof(uint64_t) : 0));
  w.sorted = reinterpret_cast<uint64_t*>(take(n * sizeof(uint64_t)));
  w.prot_key = reinterpret_cast<uint64_t*>(take(protects ? segments * sizeof(uint64_t) : 0));
  w.cub_bytes = n > 0 ? cub_temp_bytes(n, segments, protection) : 0;
  w.cub_temp = take(w.cub_bytes);
  w.total = off;
  return w;
}

Protection effective(const Segments& seg) {
  return seg.seg_offsets && seg.segments > 0 ? seg.protection : Protection::None;
}

}  // namespace

void channel_keys(const float* scores, int64_t n, uint64_t* keys, int* nan_count, cudaStream_t stream) {
  if (n == 0) return;
  channel_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(scores, n, keys, nan_count);
  check_launch("channel_keys");
}

size_t select_masks_workspace(int64_t n, int64_t segments, Protection protection) {
  return carve(nullptr, n, segments, segments > 0 ? protection : Protection::None).total;
}

void select_masks(const uint64_t* keys, int64_t n, const Segments& seg, const int64_t* ks, int64_t m, bool* masks,
                  float* thresholds, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (m == 0) return;
  const Protection protection = n > 0 ? effective(seg) : Protection::None;
  const int64_t segs = protection == Protection::None ? 0 : seg.segments;
  SelectWorkspace w = carve(workspace, n, segs, protection);
  if (workspace_bytes < w.total) throw std::runtime_error("epi_fast: select_masks workspace too small");
  const uint64_t* removable = keys;
  if (protection != Protection::None) {
    size_t bytes = w.cub_bytes;
    const uint64_t* seg_sorted = nullptr;
    const uint64_t* seg_max = nullptr;
    if (protection == Protection::Max) {
      // Each segment's highest (score, index) key: the highest score, the highest index among
      // equal scores, as the CPU's argmax and the reference pick. An empty segment gets 0,
      // never read (it protects nothing).
      check_cub(cubw::DeviceSegmentedReduce::Max(w.cub_temp, bytes, keys, w.prot_key, segs, seg.seg_offsets,
                                             seg.seg_offsets + 1, stream),
            "select_masks (segment maximum)");
      seg_max = w.prot_key;
    } else {
      check_cub(cubw::DeviceSegmentedRadixSort::SortKeysDescending(w.cub_temp, bytes, keys, w.sorted,
                                                               static_cast<int>(n), static_cast<int>(segs),
                                                               seg.seg_offsets, seg.seg_offsets + 1, 0, 64, stream),
            "select_masks (segmented sort)");
      seg_sorted = w.sorted;
    }
    protection_kernel<<<grid_for(segs), kThreads, 0, stream>>>(seg_sorted, seg_max, seg.seg_offsets, segs,
                                                               seg.min_keep, seg.seg_min_keep, w.prot_key);
    check_launch("select_masks (protection)");
    removable_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(keys, n, seg.seg_offsets, segs, w.prot_key,
                                                                w.removable);
    check_launch("select_masks (removable)");
    removable = w.removable;
  }
  if (n > 0) {
    size_t bytes = w.cub_bytes;
    check_cub(cubw::DeviceRadixSort::SortKeys(w.cub_temp, bytes, removable, w.sorted, static_cast<int>(n), 0, 64,
                                          stream),
          "select_masks (sort)");
    dim3 grid(grid_for(n), static_cast<unsigned>(std::min<int64_t>(m, 65535)));
    masks_kernel<<<grid, kThreads, 0, stream>>>(removable, n, w.sorted, ks, m, masks);
    check_launch("select_masks (masks)");
  }
  thresholds_kernel<<<grid_for(m), kThreads, 0, stream>>>(w.sorted, ks, m, thresholds);
  check_launch("select_masks (thresholds)");
}

}  // namespace cuda
}  // namespace epi_fast
