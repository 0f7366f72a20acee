// CUDA kernels of epi_fast. Includes only CUDA headers and the project's own: the torch glue
// (ops_cuda.cpp) checks tensors, allocates and calls the launchers declared in cuda_launch.h.

// Keep this library's CUB instantiations apart from the ones inside libtorch.
#ifndef CUB_WRAPPED_NAMESPACE
#define CUB_WRAPPED_NAMESPACE epi_fast_cub
#endif

#include <cub/cub.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "epi_fast/cuda_launch.h"
#include "epi_fast/kernel_math.h"

namespace cubw = CUB_WRAPPED_NAMESPACE::cub;

namespace epi_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Tensors per launch: the table travels as a kernel argument (under the 4 KiB limit), as in
// multi_tensor_apply; models with more tensors take a few launches, never one per layer.
constexpr int kTableSize = 48;

struct RowTable {
  const void* data[kTableSize];
  const void* grad[kTableSize];
  int64_t cols[kTableSize];
  int64_t out_offset[kTableSize];
  int64_t row_start[kTableSize + 1];  // prefix sums of rows within this launch
  int count;
};

__device__ __forceinline__ int table_slot(const RowTable& table, int64_t row) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (table.row_start[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

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

template <ScoreKind K, typename T>
__global__ void channel_scores_kernel(RowTable table, float* out) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= table.row_start[table.count]) return;
  const int t = table_slot(table, row);
  const int64_t r = row - table.row_start[t];
  const int64_t cols = table.cols[t];
  const T* data = static_cast<const T*>(table.data[t]) + r * cols;
  const float s = warp_row_score<K>(data, cols, lane);
  if (lane == 0) out[table.out_offset[t] + r] = score_finish(s, K);
}

template <typename T>
__global__ void taylor_raw_kernel(RowTable table, float* raw) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= table.row_start[table.count]) return;
  const int t = table_slot(table, row);
  const int64_t r = row - table.row_start[t];
  const int64_t cols = table.cols[t];
  const T* w = static_cast<const T*>(table.data[t]) + r * cols;
  const T* g = static_cast<const T*>(table.grad[t]) + r * cols;
  const float s = warp_row_dot(w, g, cols, lane);
  if (lane == 0) atomicAdd(raw + table.out_offset[t] + r, s);
}

template <typename Kernel>
void for_each_chunk(const RowTensor* tensors, int64_t count, Kernel launch) {
  int64_t i = 0;
  while (i < count) {
    RowTable table{};
    int n = 0;
    int64_t rows = 0;
    for (; i < count && n < kTableSize; ++i) {
      if (tensors[i].rows == 0) continue;
      table.data[n] = tensors[i].data;
      table.grad[n] = tensors[i].grad;
      table.cols[n] = tensors[i].cols;
      table.out_offset[n] = tensors[i].out_offset;
      table.row_start[n] = rows;
      rows += tensors[i].rows;
      ++n;
    }
    table.row_start[n] = rows;
    table.count = n;
    if (n == 0) continue;
    const int64_t blocks = (rows + kWarps - 1) / kWarps;
    launch(table, static_cast<unsigned>(blocks));
  }
}

__global__ void taylor_finish_kernel(float* raw, int64_t n, TaylorMode mode) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    raw[i] = taylor_finish(raw[i], mode);
}

__device__ __forceinline__ float scaled_contribution(const float* raw, int64_t i,
                                                     const float* inv_scale, TaylorMode mode) {
  const float v = inv_scale ? raw[i] * *inv_scale : raw[i];
  return taylor_finish(v, mode);
}

__global__ void taylor_check_kernel(const float* raw, int64_t n, const float* inv_scale,
                                    TaylorMode mode, int* flag) {
  bool bad = false;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    bad |= !is_finite(scaled_contribution(raw, i, inv_scale, mode));
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
}

__global__ void taylor_apply_kernel(const float* raw, int64_t n, const float* inv_scale,
                                    TaylorMode mode, float* acc, int64_t* skipped,
                                    const int* flag) {
  if (*flag) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *skipped += 1;
    return;
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc[i] += scaled_contribution(raw, i, inv_scale, mode);
}

__global__ void group_reduce_kernel(const float* scores, const int64_t* ptr, const int64_t* idx,
                                    int64_t groups, Reduce reduce, float* out) {
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = reduce_init(reduce);
    const int64_t begin = ptr[g], end = ptr[g + 1];
    for (int64_t k = begin; k < end; ++k) acc = reduce_step(acc, scores[idx[k]], reduce);
    out[g] = reduce_finish(acc, end - begin, reduce);
  }
}

__global__ void channel_keys_kernel(const float* scores, int64_t n, uint64_t* keys,
                                    int* nan_count) {
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
__global__ void protection_kernel(const uint64_t* seg_sorted_desc, const int64_t* offsets,
                                  int64_t segments, int64_t min_keep, uint64_t* prot_key) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < segments;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t size = offsets[s + 1] - offsets[s];
    const int64_t p = size < min_keep ? size : min_keep;
    prot_key[s] = p > 0 ? seg_sorted_desc[offsets[s] + p - 1] : kProtectedKey;
  }
}

__global__ void removable_keys_kernel(const uint64_t* keys, int64_t n, const int64_t* offsets,
                                      int64_t segments, const uint64_t* prot_key,
                                      uint64_t* removable) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t key = keys[i];
    const uint64_t limit = prot_key[segment_of(offsets, segments, i)];
    removable[i] = (limit != kProtectedKey && key >= limit) ? kProtectedKey : key;
  }
}

__global__ void masks_kernel(const uint64_t* removable, int64_t n, const uint64_t* sorted,
                             const int64_t* ks, int64_t m, bool* masks) {
  const int64_t j = blockIdx.y;
  const int64_t k = ks[j];
  const uint64_t kth = k > 0 ? sorted[k - 1] : 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    masks[j * n + i] = k == 0 || removable[i] > kth;
}

__global__ void thresholds_kernel(const uint64_t* sorted, const int64_t* ks, int64_t m,
                                  float* thresholds) {
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const int64_t k = ks[j];
    thresholds[j] = k > 0 ? channel_key_score(sorted[k - 1]) : -INFINITY;
  }
}

__global__ void segment_counts_kernel(const bool* a, const bool* b, int64_t n,
                                      const int64_t* offsets, int64_t* counts, int64_t* differ,
                                      int64_t segments) {
  const int64_t s = blockIdx.x;
  const int64_t j = blockIdx.y;
  const bool* ra = a + j * n;
  const bool* rb = b ? b + j * n : nullptr;
  long long both = 0, diff = 0;
  for (int64_t i = offsets[s] + threadIdx.x; i < offsets[s + 1]; i += blockDim.x) {
    const bool x = ra[i];
    const bool y = rb ? rb[i] : true;
    both += (x && y);
    diff += (x != y);
  }
  __shared__ long long shared_both[kWarps], shared_diff[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) {
    both += __shfl_xor_sync(0xffffffffu, both, offset);
    diff += __shfl_xor_sync(0xffffffffu, diff, offset);
  }
  if ((threadIdx.x & 31) == 0) {
    shared_both[threadIdx.x / 32] = both;
    shared_diff[threadIdx.x / 32] = diff;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total_both = 0, total_diff = 0;
    for (int w = 0; w < kWarps; ++w) {
      total_both += shared_both[w];
      total_diff += shared_diff[w];
    }
    counts[j * segments + s] = total_both;
    if (differ) differ[j * segments + s] = total_diff;
  }
}

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
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
    cubw::DeviceSegmentedRadixSort::SortKeysDescending(
        nullptr, seg_bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
        static_cast<int>(n), static_cast<int>(segments), offsets, offsets + 1);
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

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("epi_fast CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

template <typename T>
void launch_scores(const RowTable& table, unsigned blocks, ScoreKind kind, float* out,
                   cudaStream_t stream) {
  switch (kind) {
    case ScoreKind::L1:
      channel_scores_kernel<ScoreKind::L1, T><<<blocks, kThreads, 0, stream>>>(table, out);
      break;
    case ScoreKind::L2:
      channel_scores_kernel<ScoreKind::L2, T><<<blocks, kThreads, 0, stream>>>(table, out);
      break;
    case ScoreKind::Abs:
      channel_scores_kernel<ScoreKind::Abs, T><<<blocks, kThreads, 0, stream>>>(table, out);
      break;
  }
}

}  // namespace

void check_launch(const char* what) { check(cudaGetLastError(), what); }

void channel_scores(const RowTensor* tensors, int64_t count, DType dtype, ScoreKind kind,
                    float* out, cudaStream_t stream) {
  for_each_chunk(tensors, count, [&](const RowTable& table, unsigned blocks) {
    switch (dtype) {
      case DType::Float32: launch_scores<float>(table, blocks, kind, out, stream); break;
      case DType::Float16: launch_scores<__half>(table, blocks, kind, out, stream); break;
      case DType::BFloat16: launch_scores<__nv_bfloat16>(table, blocks, kind, out, stream); break;
    }
    check_launch("channel_scores");
  });
}

void taylor_raw(const RowTensor* tensors, int64_t count, DType dtype, float* raw,
                cudaStream_t stream) {
  for_each_chunk(tensors, count, [&](const RowTable& table, unsigned blocks) {
    switch (dtype) {
      case DType::Float32:
        taylor_raw_kernel<float><<<blocks, kThreads, 0, stream>>>(table, raw);
        break;
      case DType::Float16:
        taylor_raw_kernel<__half><<<blocks, kThreads, 0, stream>>>(table, raw);
        break;
      case DType::BFloat16:
        taylor_raw_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(table, raw);
        break;
    }
    check_launch("taylor_raw");
  });
}

void taylor_finish(float* raw, int64_t channels, TaylorMode mode, cudaStream_t stream) {
  if (channels == 0) return;
  taylor_finish_kernel<<<grid_for(channels), kThreads, 0, stream>>>(raw, channels, mode);
  check_launch("taylor_finish");
}

void taylor_accumulate(const float* raw, int64_t channels, const float* inv_scale,
                       TaylorMode mode, float* acc, int64_t* skipped, int* flag,
                       cudaStream_t stream) {
  check(cudaMemsetAsync(flag, 0, sizeof(int), stream), "taylor_accumulate");
  const unsigned blocks = grid_for(channels);
  if (channels > 0) {
    taylor_check_kernel<<<blocks, kThreads, 0, stream>>>(raw, channels, inv_scale, mode, flag);
    check_launch("taylor_accumulate (check)");
  }
  taylor_apply_kernel<<<blocks, kThreads, 0, stream>>>(raw, channels, inv_scale, mode, acc,
                                                       skipped, flag);
  check_launch("taylor_accumulate (apply)");
}

void group_reduce(const float* scores, const int64_t* group_ptr, const int64_t* member_idx,
                  int64_t groups, Reduce reduce, float* out, cudaStream_t stream) {
  if (groups == 0) return;
  group_reduce_kernel<<<grid_for(groups), kThreads, 0, stream>>>(scores, group_ptr, member_idx,
                                                                 groups, reduce, out);
  check_launch("group_reduce");
}

void channel_keys(const float* scores, int64_t n, uint64_t* keys, int* nan_count,
                  cudaStream_t stream) {
  if (n == 0) return;
  channel_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(scores, n, keys, nan_count);
  check_launch("channel_keys");
}

size_t select_masks_workspace(int64_t n, int64_t segments) {
  return carve(nullptr, n, segments).total;
}

void select_masks(const uint64_t* keys, int64_t n, const int64_t* seg_offsets, int64_t segments,
                  int64_t min_keep, const int64_t* ks, int64_t m, bool* masks, float* thresholds,
                  void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (m == 0) return;
  const int64_t segs = seg_offsets ? segments : 0;
  SelectWorkspace w = carve(workspace, n, segs);
  if (workspace_bytes < w.total) throw std::runtime_error("epi_fast: select_masks workspace too small");
  const uint64_t* removable = keys;
  if (n > 0 && segs > 0 && min_keep > 0) {
    size_t bytes = w.cub_bytes;
    check(cubw::DeviceSegmentedRadixSort::SortKeysDescending(
              w.cub_temp, bytes, keys, w.seg_sorted, static_cast<int>(n), static_cast<int>(segs),
              seg_offsets, seg_offsets + 1, 0, 64, stream),
          "select_masks (segmented sort)");
    protection_kernel<<<grid_for(segs), kThreads, 0, stream>>>(w.seg_sorted, seg_offsets, segs,
                                                               min_keep, w.prot_key);
    check_launch("select_masks (protection)");
    removable_keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(keys, n, seg_offsets, segs,
                                                                w.prot_key, w.removable);
    check_launch("select_masks (removable)");
    removable = w.removable;
  }
  if (n > 0) {
    size_t bytes = w.cub_bytes;
    check(cubw::DeviceRadixSort::SortKeys(w.cub_temp, bytes, removable, w.sorted,
                                         static_cast<int>(n), 0, 64, stream),
          "select_masks (sort)");
    dim3 grid(grid_for(n), static_cast<unsigned>(m));
    masks_kernel<<<grid, kThreads, 0, stream>>>(removable, n, w.sorted, ks, m, masks);
    check_launch("select_masks (masks)");
  }
  thresholds_kernel<<<1, 32, 0, stream>>>(w.sorted, ks, m, thresholds);
  check_launch("select_masks (thresholds)");
}

void segment_counts(const bool* a, const bool* b, int64_t m, int64_t n, const int64_t* seg_offsets,
                    int64_t segments, int64_t* counts, int64_t* differ, cudaStream_t stream) {
  if (m == 0 || segments == 0) return;
  dim3 grid(static_cast<unsigned>(segments), static_cast<unsigned>(m));
  segment_counts_kernel<<<grid, kThreads, 0, stream>>>(a, b, n, seg_offsets, counts, differ,
                                                       segments);
  check_launch("segment_counts");
}

}  // namespace cuda
}  // namespace epi_fast
