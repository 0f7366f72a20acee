// The CPU row kernels' level state (simd_level.h).
#include "simd_level.h"

namespace epi_fast {
namespace cpu {

std::atomic<int> g_simd_cap{kBest};

int cpu_simd_level() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const int level = !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) ? kPortable
                           : __builtin_cpu_supports("avx512f")                                 ? kAvx512
                                                                                               : kAvx2;
  return level;
#else
  return kPortable;
#endif
}

const char* simd_level_name(int level) {
  return level == kAvx512 ? "avx512" : level == kAvx2 ? "avx2" : "portable";
}

int simd_level_from_name(std::string_view name) {
  if (name == "avx512") return kAvx512;
  if (name == "avx2") return kAvx2;
  if (name == "portable") return kPortable;
  return -1;
}

const char* simd_level_names() { return "'avx512', 'avx2' or 'portable'"; }

int exchange_simd_cap(int cap) { return g_simd_cap.exchange(cap); }

}  // namespace cpu
}  // namespace epi_fast
