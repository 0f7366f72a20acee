// Tests of the arithmetic that the CPU and CUDA kernels share (csrc/include/epi_fast).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "epi_fast/kernel_math.h"

using namespace epi_fast;

static int failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static void test_key_order() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> values = {-inf, -1e30f, -2.5f, -1e-40f, -0.0f, 0.0f, 1e-40f, 1e-7f, 1.0f, 3.0f, 1e30f, inf};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 10.0f);
  for (int i = 0; i < 2000; ++i) values.push_back(normal(rng));
  for (int i = 0; i < 200; ++i) values.push_back(std::round(normal(rng)));  // ties
  // The key order must be (score ascending, index ascending), with -0.0 == +0.0.
  std::vector<std::tuple<float, uint32_t>> expect;
  std::vector<uint64_t> keys;
  for (uint32_t i = 0; i < values.size(); ++i) {
    const float v = values[i] == 0.0f ? 0.0f : values[i];
    expect.emplace_back(v, i);
    keys.push_back(channel_key(values[i], i));
  }
  std::sort(expect.begin(), expect.end());
  std::sort(keys.begin(), keys.end());
  for (size_t r = 0; r < keys.size(); ++r) {
    CHECK(static_cast<uint32_t>(keys[r]) == std::get<1>(expect[r]));
    CHECK(channel_key_score(keys[r]) == std::get<0>(expect[r]));
    CHECK(keys[r] != kProtectedKey);
  }
  // The CPU select's 32-bit sentinel sorts above the key of every NaN-free score, as the 64-bit
  // one does above every (score, index) key.
  for (const float v : values) CHECK(float_order_key(v) < kProtectedKey32);
  CHECK(static_cast<uint32_t>(kProtectedKey >> 32) == kProtectedKey32);
  CHECK(!std::signbit(channel_key_score(channel_key(-0.0f, 3))));  // -0.0 reads back as +0.0
}

static void test_removal_count() {
  CHECK(removal_count(0.25, 10) == 3);  // 2.5 + 0.5 = 3.0
  CHECK(removal_count(0.05, 10) == 1);
  CHECK(removal_count(0.0, 10) == 0);
  CHECK(removal_count(0.999, 10) == 10);
  CHECK(removal_count(static_cast<double>(0.3f), 5) == 2);  // 1.5000000596 + 0.5
  CHECK(removal_count(0.35, 10) == 4);                      // 0.35 * 10 = 3.5 exactly in float64
}

static void test_row_sums() {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int cols : {0, 1, 7, 8, 9, 31, 1000}) {
    std::vector<float> row(cols);
    double l1 = 0, l2 = 0, dot = 0;
    for (auto& x : row) {
      x = u(rng);
      l1 += std::fabs(x);
      l2 += double(x) * x;
      dot += double(x) * 0.5 * x;
    }
    std::vector<float> half(cols);
    for (int j = 0; j < cols; ++j) half[j] = 0.5f * row[j];
    CHECK(std::fabs(row_score_sum(row.data(), cols, ScoreKind::L1) - l1) <= 1e-5 * (1 + l1));
    CHECK(std::fabs(score_finish(row_score_sum(row.data(), cols, ScoreKind::L2), ScoreKind::L2) - std::sqrt(l2)) <=
          1e-5 * (1 + std::sqrt(l2)));
    CHECK(std::fabs(row_dot(row.data(), half.data(), cols) - dot) <= 1e-5 * (1 + std::fabs(dot)));
  }
  const float nan_row[3] = {1.0f, std::nanf(""), 2.0f};
  CHECK(std::isnan(row_score_sum(nan_row, 3, ScoreKind::L2)));
}

static void test_reduce_and_segments() {
  float acc = reduce_init(Reduce::Max);
  acc = reduce_step(acc, 1.0f, Reduce::Max);
  acc = reduce_step(acc, std::nanf(""), Reduce::Max);
  acc = reduce_step(acc, 5.0f, Reduce::Max);
  CHECK(std::isnan(acc));  // NaN propagates through max
  CHECK(reduce_finish(6.0f, 3, Reduce::Mean) == 2.0f);
  CHECK(taylor_finish(-3.0f, TaylorMode::Square) == 9.0f);
  CHECK(taylor_finish(-3.0f, TaylorMode::Abs) == 3.0f);
  CHECK(!is_finite(std::numeric_limits<float>::infinity()) && !is_finite(std::nanf("")) && is_finite(1e38f));
  // segments of sizes {0, 3, 0, 0, 2}: offsets {0, 0, 3, 3, 3, 5}
  const int64_t offsets[] = {0, 0, 3, 3, 3, 5};
  CHECK(segment_of(offsets, 5, 0) == 1);
  CHECK(segment_of(offsets, 5, 2) == 1);
  CHECK(segment_of(offsets, 5, 3) == 4);
  CHECK(segment_of(offsets, 5, 4) == 4);
}

int main() {
  test_key_order();
  test_removal_count();
  test_row_sums();
  test_reduce_and_segments();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("kernel math: all checks passed\n");
  return 0;
}
