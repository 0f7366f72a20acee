// Arithmetic written once for the C++ compiler and for nvcc. No torch headers: the CMake core and
// the .cu files include this without libtorch.
//
// What the CPU and CUDA kernels share, and therefore what a CPU test checks of the GPU's
// arithmetic without a GPU:
// - per element: the float32 widening of every input dtype, score_term, score_finish,
//   taylor_finish, is_finite, and the group reductions (reduce_*), which both backends apply to
//   a group's members in member order, so group_reduce agrees bit for bit;
// - the order keys of global_masks (float_order_key, channel_key) and removal_count, so masks,
//   thresholds and counts agree exactly for the same scores.
// Not shared: how a row is summed. The CPU kernels sum element j of a row into lane j % 16 and
// fold the lanes in the fixed tree below (row_score_sum, row_dot, and the AVX2 / AVX-512
// kernels, which give the same bits); the CUDA kernels give each lane of a team (1 to 32 lanes,
// epi_fast/work_split.h) a strided share of the row, or of one chunk of a long row, add the
// lanes with a shuffle tree and a long row's chunks in order, and nvcc may contract an
// element's multiply with the running sum into one FMA. So channel and Taylor scores agree between the
// CPU and CUDA within float tolerance, not bit for bit, and the row sums below are exercised on
// the CPU only.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define EPI_HD __host__ __device__ __forceinline__
#else
#define EPI_HD inline
#endif

namespace epi_fast {

// Loads widen to float32; all accumulation is float32 whatever the input dtype. Torch builds
// CUDA code with the implicit half conversions disabled, hence the explicit overloads.
template <typename T>
EPI_HD float to_float(T x) {
  return static_cast<float>(x);
}
#if defined(__CUDACC__)
EPI_HD float to_float(__half x) { return __half2float(x); }
EPI_HD float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
#endif

enum class ScoreKind : int { L1 = 0, L2 = 1, Abs = 2 };
enum class TaylorMode : int { Square = 0, Abs = 1 };
enum class Reduce : int { Sum = 0, Mean = 1, Max = 2 };

// Contribution of one element to its channel's running sum. The kind is a template parameter
// so that the inner loops carry no branch and vectorise.
template <ScoreKind K>
EPI_HD float score_term(float x) {
  return K == ScoreKind::L2 ? x * x : fabsf(x);
}

// Turns a channel's running sum into its score.
EPI_HD float score_finish(float acc, ScoreKind kind) {
  return kind == ScoreKind::L2 ? sqrtf(acc) : acc;
}

EPI_HD float taylor_finish(float raw, TaylorMode mode) {
  return mode == TaylorMode::Square ? raw * raw : fabsf(raw);
}

EPI_HD bool is_finite(float x) {
  // x - x is 0 for finite x and NaN for inf or NaN; robust under fast-math-free builds.
  return (x - x) == 0.0f;
}

EPI_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

EPI_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// Maps a float to an unsigned key with the same order (ascending), -0.0 folded onto +0.0 so
// that the two compare equal and the index decides between them.
EPI_HD uint32_t float_order_key(float x) {
  uint32_t u = float_bits(x);
  if (u == 0x80000000u) u = 0u;  // -0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

EPI_HD float order_key_float(uint32_t key) {
  uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  return bits_float(u);
}

// One total order over (score, index): ascending score, lower index first among equals.
// Every channel gets a distinct key, so "the k lowest" is always exactly k channels.
EPI_HD uint64_t channel_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(float_order_key(score)) << 32) | index;
}

EPI_HD float channel_key_score(uint64_t key) {
  return order_key_float(static_cast<uint32_t>(key >> 32));
}

// Keys of protected channels (the min_keep highest of a segment, kept at every ratio), above every
// key of a NaN-free score: float_order_key maps only a NaN (0x7fffffff) to 0xffffffff. Two widths,
// one per select: the CUDA select sorts the 64-bit (score, index) keys with CUB, so every key is
// distinct and the order needs no tie fix-up; the CPU select ranks the 32-bit score keys alone
// (half the bytes per pass over the scores) and breaks ties by index afterwards.
constexpr uint64_t kProtectedKey = ~static_cast<uint64_t>(0);
constexpr uint32_t kProtectedKey32 = ~static_cast<uint32_t>(0);

// k = floor(p * N + 0.5) in float64. Kept in separate statements and compiled without FMA
// contraction (see setup.py) so that it equals Python's float arithmetic bit for bit.
inline int64_t removal_count(double ratio, int64_t n) {
  volatile double scaled = ratio * static_cast<double>(n);
  return static_cast<int64_t>(std::floor(scaled + 0.5));
}

EPI_HD float reduce_init(Reduce r) {
  return r == Reduce::Max ? -INFINITY : 0.0f;
}

EPI_HD float reduce_step(float acc, float x, Reduce r) {
  if (r != Reduce::Max) return acc + x;
  // max that propagates NaN (fmaxf would drop it).
  if (x != x || acc != acc) return NAN;
  return x > acc ? x : acc;
}

EPI_HD float reduce_finish(float acc, int64_t count, Reduce r) {
  return r == Reduce::Mean ? acc / static_cast<float>(count) : acc;
}

// Sum of score_term over one contiguous row. Element j goes to lane j % kLanes; the lanes are
// folded in a fixed tree, (l, l+8) then (l, l+4) then (0+2)+(1+3), which is the order in which
// two 8-wide vector accumulators reduce. The CPU's AVX2 and AVX-512 kernels
// (csrc/ops/cpu/row_kernels.h) therefore give the same bits as this portable code, and the fixed
// order makes results independent of threading. The CUDA kernels do not use these (see above).
// Lanes past the end of a short row hold +0, and adding +0 changes no sum.
constexpr int kLanes = 16;

EPI_HD float fold_lanes(const float* lane) {
  float a[8], b[4];
  for (int l = 0; l < 8; ++l) a[l] = lane[l] + lane[l + 8];
  for (int l = 0; l < 4; ++l) b[l] = a[l] + a[l + 4];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

template <ScoreKind K, typename T>
EPI_HD float row_score_sum(const T* row, int64_t cols) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = 0.0f;
  int64_t j = 0;
  for (; j + kLanes <= cols; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] += score_term<K>(to_float(row[j + l]));
  }
  for (int l = 0; j < cols; ++j, ++l) lane[l] += score_term<K>(to_float(row[j]));
  return fold_lanes(lane);
}

// row_score_sum for a row of C < kLanes elements, C known at compile time: the same fold with
// the additions of empty lanes left out. Score terms are +0 or more (or NaN), and t + (+0) is t
// for every such t, so the bits are row_score_sum's (a compiler may not drop x + 0.0f itself,
// since -0 + 0 is +0). Not for dot rows, whose terms can be -0.
template <int C, ScoreKind K, typename T>
inline float short_row_score_sum(const T* row) {
  static_assert(C >= 1 && C < kLanes, "short rows have 1 to kLanes - 1 elements");
  float l[kLanes], a[8], b[4];
  for (int j = 0; j < C; ++j) l[j] = score_term<K>(to_float(row[j]));
  for (int i = 0; i < 8 && i < C; ++i) a[i] = i + 8 < C ? l[i] + l[i + 8] : l[i];
  for (int i = 0; i < 4 && i < C; ++i) b[i] = i + 4 < C ? a[i] + a[i + 4] : a[i];
  const float s02 = C > 2 ? b[0] + b[2] : b[0];
  if (C == 1) return s02;
  const float s13 = C > 3 ? b[1] + b[3] : b[1];
  return s02 + s13;
}

template <typename T>
EPI_HD float row_score_sum(const T* row, int64_t cols, ScoreKind kind) {
  switch (kind) {
    case ScoreKind::L2: return row_score_sum<ScoreKind::L2>(row, cols);
    case ScoreKind::L1: return row_score_sum<ScoreKind::L1>(row, cols);
    default: return row_score_sum<ScoreKind::Abs>(row, cols);
  }
}

template <typename T>
EPI_HD float row_dot(const T* a, const T* b, int64_t cols) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = 0.0f;
  int64_t j = 0;
  for (; j + kLanes <= cols; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] += to_float(a[j + l]) * to_float(b[j + l]);
  }
  for (int l = 0; j < cols; ++j, ++l) lane[l] += to_float(a[j]) * to_float(b[j]);
  return fold_lanes(lane);
}

// Index of the segment that holds position i, given offsets[0..segments] (offsets[0] = 0).
// Empty segments share their offset with the next one; the search returns the last segment
// whose start is <= i, which is the non-empty one that holds i.
EPI_HD int64_t segment_of(const int64_t* offsets, int64_t segments, int64_t i) {
  int64_t lo = 0, hi = segments - 1;
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace epi_fast
