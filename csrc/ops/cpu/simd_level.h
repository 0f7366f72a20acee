// Which CPU row kernels run: the best level the CPU has, capped by set_cpu_simd_level (the
// tests compare the levels bit for bit; the benchmarks time them). Torch-free: module.cpp binds
// these without the kernels.
#pragma once

#include <algorithm>
#include <atomic>
#include <string_view>

namespace epi_fast {
namespace cpu {

enum SimdLevel : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kBest = kAvx512 };

extern std::atomic<int> g_simd_cap;  // the highest level the kernels may use

int cpu_simd_level();  // what this CPU runs: avx512f -> kAvx512, avx2 + f16c -> kAvx2, else kPortable

inline int simd_level() { return std::min(g_simd_cap.load(std::memory_order_relaxed), cpu_simd_level()); }

const char* simd_level_name(int level);        // "avx512", "avx2", "portable"
int simd_level_from_name(std::string_view name);  // -1 for another name
const char* simd_level_names();                 // "'avx512', 'avx2' or 'portable'", for messages
int exchange_simd_cap(int cap);                 // sets the cap; returns the previous one

}  // namespace cpu
}  // namespace epi_fast
