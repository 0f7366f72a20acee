// The CPU row kernels: per-row L1 / L2 / abs sums (channel_scores) and per-row dot products
// (Taylor), in a portable version, an AVX2 one and an AVX-512 one, picked at run time by what the
// CPU has (the wheel runs anywhere) and capped by set_cpu_simd_level (simd_level.h). All put
// element j of a row in lane j % 16 (two 8-wide registers for AVX2, one 16-wide for AVX-512)
// and fold the lanes in kernel_math.h's fixed tree, so they return the same bits; the tests
// compare them. AVX-512 streams long rows 5-25% faster than AVX2 on the Xeon machines, at the
// same bits. A new level is one more set of kernels here, a case in score_rows / dot_rows and a
// name in simd_level.{h,cpp}.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <utility>

#include "epi_fast/kernel_math.h"
#include "simd_level.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define EPI_HAVE_AVX2 1
#include <immintrin.h>
#define EPI_AVX2 __attribute__((target("avx2,f16c")))
#define EPI_AVX512 __attribute__((target("avx512f,avx2,f16c")))
#else
#define EPI_HAVE_AVX2 0
#endif

namespace epi_fast {
namespace cpu {

template <ScoreKind K, typename T>
void score_rows_portable(const T* data, int64_t cols, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = score_finish(row_score_sum<K>(data + r * cols, cols), K);
}

template <typename T>
void dot_rows_portable(const T* a, const T* b, int64_t cols, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = row_dot(a + r * cols, b + r * cols, cols);
}

#if EPI_HAVE_AVX2
// Eight elements widened to float32 (exact for every input dtype).
EPI_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
EPI_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
EPI_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// The last `rem` (1..15) elements of a row as two vectors for lanes 0-7 and 8-15, +0 past the
// end. float32 uses masked loads, which read nothing past the row; 16-bit types go through a
// small zeroed buffer.
EPI_AVX2 inline __m256i lane_mask(int64_t count) {  // lanes < count set; count in [0, 8]
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
EPI_AVX2 inline void load_tail(const float* p, int64_t rem, __m256& lo, __m256& hi) {
  lo = _mm256_maskload_ps(p, lane_mask(rem < 8 ? rem : 8));
  hi = rem > 8 ? _mm256_maskload_ps(p + 8, lane_mask(rem - 8)) : _mm256_setzero_ps();
}
template <typename T>
EPI_AVX2 inline void load_tail(const T* p, int64_t rem, __m256& lo, __m256& hi) {
  alignas(32) float buf[16] = {};
  for (int64_t l = 0; l < rem; ++l) buf[l] = static_cast<float>(p[l]);
  lo = _mm256_load_ps(buf);
  hi = _mm256_load_ps(buf + 8);
}

template <ScoreKind K>
EPI_AVX2 inline __m256 term8(__m256 x) {
  if (K == ScoreKind::L2) return _mm256_mul_ps(x, x);
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);  // |x|
}

// fold_lanes for lanes 0-7 in `lo` and 8-15 in `hi`.
EPI_AVX2 inline float fold8x2(__m256 lo, __m256 hi) {
  const __m256 a = _mm256_add_ps(lo, hi);                                           // l + (l+8)
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));  // l + (l+4)
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));                                           // 0+2, 1+3
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));                    // (0+2)+(1+3)
}

// Rows shorter than one 16-wide step (depthwise 3x3 filters: 9 elements) cost a masked load
// and a vector fold each, ~15 cycles for 9 elements; a scalar fold unrolled for the exact row
// length does the same arithmetic in a third of that. Same bits (short_row_score_sum).
template <ScoreKind K, typename T, int C>
void short_rows(const T* data, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = score_finish(short_row_score_sum<C, K>(data + r * C), K);
}

template <ScoreKind K, typename T, int... C>
bool short_rows_dispatch(const T* data, int64_t cols, int64_t rows, float* out,
                         std::integer_sequence<int, C...>) {
  // C runs over 0..kLanes-1; index 0 means "not a short row".
  return ((cols == C && C > 0 ? (short_rows<K, T, (C > 0 ? C : 1)>(data, rows, out), true) : false) || ...);
}

template <ScoreKind K, typename T>
EPI_AVX2 void score_rows_avx2(const T* data, int64_t cols, int64_t rows, float* out) {
  if (short_rows_dispatch<K>(data, cols, rows, out, std::make_integer_sequence<int, kLanes>{})) return;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = data + r * cols;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
      lo = _mm256_add_ps(lo, term8<K>(load8(row + j)));
      hi = _mm256_add_ps(hi, term8<K>(load8(row + j + 8)));
    }
    if (j < cols) {
      __m256 tlo, thi;
      load_tail(row + j, cols - j, tlo, thi);
      lo = _mm256_add_ps(lo, term8<K>(tlo));
      hi = _mm256_add_ps(hi, term8<K>(thi));
    }
    out[r] = score_finish(fold8x2(lo, hi), K);
  }
}

template <typename T>
EPI_AVX2 void dot_rows_avx2(const T* a, const T* b, int64_t cols, int64_t rows, float* out) {
  if (cols == 1) {
    // 1-D tensors (BatchNorm weight and bias, the Taylor criterion's usual members): one
    // product per row. The lanes' fold is +0 + a*b, which turns -0 into +0 and leaves every
    // other value as it is; so does "+ 0.0f" (kept: -ffp-contract=off, no fast-math).
    for (int64_t r = 0; r < rows; ++r) out[r] = to_float(a[r]) * to_float(b[r]) + 0.0f;
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* ra = a + r * cols;
    const T* rb = b + r * cols;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
      lo = _mm256_add_ps(lo, _mm256_mul_ps(load8(ra + j), load8(rb + j)));
      hi = _mm256_add_ps(hi, _mm256_mul_ps(load8(ra + j + 8), load8(rb + j + 8)));
    }
    if (j < cols) {
      __m256 alo, ahi, blo, bhi;
      load_tail(ra + j, cols - j, alo, ahi);
      load_tail(rb + j, cols - j, blo, bhi);
      lo = _mm256_add_ps(lo, _mm256_mul_ps(alo, blo));
      hi = _mm256_add_ps(hi, _mm256_mul_ps(ahi, bhi));
    }
    out[r] = fold8x2(lo, hi);
  }
}

// GCC 12 warns, where these kernels inline the AVX-512 intrinsics, that the intrinsics' own
// "undefined" pass-through operands may be used uninitialised: a false positive (every lane is
// written). Silenced for this block only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// AVX-512: lanes 0-15 in one register, i.e. the AVX2 kernels' lo (0-7) and hi (8-15) side by
// side; every lane sees the same adds in the same order, and the fold starts with lo + hi.
EPI_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
EPI_AVX512 inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
EPI_AVX512 inline __m512 load16(const c10::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
// The last `rem` (1..15) elements, +0 past the end; float32 by a masked load, which reads
// nothing past the row.
EPI_AVX512 inline __m512 load_tail16(const float* p, int64_t rem) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << rem) - 1u), p);
}
template <typename T>
EPI_AVX512 inline __m512 load_tail16(const T* p, int64_t rem) {
  alignas(64) float buf[16] = {};
  for (int64_t l = 0; l < rem; ++l) buf[l] = static_cast<float>(p[l]);
  return _mm512_load_ps(buf);
}

template <ScoreKind K>
EPI_AVX512 inline __m512 term16(__m512 x) {
  if (K == ScoreKind::L2) return _mm512_mul_ps(x, x);
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));  // |x|
}

EPI_AVX512 inline float fold16(__m512 acc) {
  const __m256 lo = _mm512_castps512_ps256(acc);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
  return fold8x2(lo, hi);
}

template <ScoreKind K, typename T>
EPI_AVX512 void score_rows_avx512(const T* data, int64_t cols, int64_t rows, float* out) {
  if (short_rows_dispatch<K>(data, cols, rows, out, std::make_integer_sequence<int, kLanes>{})) return;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = data + r * cols;
    __m512 acc = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) acc = _mm512_add_ps(acc, term16<K>(load16(row + j)));
    if (j < cols) acc = _mm512_add_ps(acc, term16<K>(load_tail16(row + j, cols - j)));
    out[r] = score_finish(fold16(acc), K);
  }
}

template <typename T>
EPI_AVX512 void dot_rows_avx512(const T* a, const T* b, int64_t cols, int64_t rows, float* out) {
  if (cols == 1) {  // as in dot_rows_avx2
    for (int64_t r = 0; r < rows; ++r) out[r] = to_float(a[r]) * to_float(b[r]) + 0.0f;
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* ra = a + r * cols;
    const T* rb = b + r * cols;
    __m512 acc = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) acc = _mm512_add_ps(acc, _mm512_mul_ps(load16(ra + j), load16(rb + j)));
    if (j < cols)
      acc = _mm512_add_ps(acc, _mm512_mul_ps(load_tail16(ra + j, cols - j), load_tail16(rb + j, cols - j)));
    out[r] = fold16(acc);
  }
}
#pragma GCC diagnostic pop
#endif  // EPI_HAVE_AVX2

template <typename T>
using ScoreRows = void (*)(const T*, int64_t, int64_t, float*);
template <typename T>
using DotRows = void (*)(const T*, const T*, int64_t, int64_t, float*);

template <typename T>
ScoreRows<T> score_rows(ScoreKind kind) {
#if EPI_HAVE_AVX2
  const int level = simd_level();
  if (level == kAvx512) {
    switch (kind) {
      case ScoreKind::L1: return score_rows_avx512<ScoreKind::L1, T>;
      case ScoreKind::L2: return score_rows_avx512<ScoreKind::L2, T>;
      default: return score_rows_avx512<ScoreKind::Abs, T>;
    }
  }
  if (level == kAvx2) {
    switch (kind) {
      case ScoreKind::L1: return score_rows_avx2<ScoreKind::L1, T>;
      case ScoreKind::L2: return score_rows_avx2<ScoreKind::L2, T>;
      default: return score_rows_avx2<ScoreKind::Abs, T>;
    }
  }
#endif
  switch (kind) {
    case ScoreKind::L1: return score_rows_portable<ScoreKind::L1, T>;
    case ScoreKind::L2: return score_rows_portable<ScoreKind::L2, T>;
    default: return score_rows_portable<ScoreKind::Abs, T>;
  }
}

template <typename T>
DotRows<T> dot_rows() {
#if EPI_HAVE_AVX2
  const int level = simd_level();
  if (level == kAvx512) return dot_rows_avx512<T>;
  if (level == kAvx2) return dot_rows_avx2<T>;
#endif
  return dot_rows_portable<T>;
}

}  // namespace cpu
}  // namespace epi_fast
