// Tests of how the CUDA kernels split their work (csrc/include/epi_fast/work_split.h), run on the
// host: the kernels call these same functions, so a row element, a mask byte, that no lane reads
// or that two lanes read, or a misaligned vector load, shows up here without a GPU.
//
// For every plan the test plays each warp and lane as the kernels do (row_sums_kernel in
// csrc/ops/cuda/multi_tensor_apply.cuh, segment_counts_kernel in counts_kernel.cu) and records
// what they visit.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "epi_fast/cuda_launch.h"
#include "epi_fast/work_split.h"

using namespace epi_fast;

static int failures = 0;
#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                    \
    }                                                                                \
  } while (0)

static void test_row_plans() {
  for (int eb : {2, 4}) {
    const int64_t chunk = split::chunk_elems(eb);
    CHECK(chunk == 32 * (16 / eb) * split::kChunkVectors);
    for (int64_t cols : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{9}, int64_t{27}, int64_t{64}, int64_t{256},
                         chunk - 1, chunk, chunk + 1, 10 * chunk + 3, int64_t{4} << 20}) {
      const split::RowPlan p = split::row_plan(cols, eb);
      CHECK(p.team >= 1 && p.team <= 32 && (32 % p.team) == 0);
      if (cols > chunk) {
        CHECK(p.team == 32 && p.chunks == (cols + chunk - 1) / chunk);
      } else {
        CHECK(p.chunks == 1);
        // the smallest team that leaves each lane at most one vector's worth of a row
        const int64_t per_lane = 16 / eb;
        CHECK(p.team == 32 || p.team * per_lane >= cols);
        CHECK(p.team == 1 || (p.team / 2) * per_lane < cols);
      }
    }
  }
  CHECK(split::row_plan(1, 4).team == 1);   // a BatchNorm's one value: 32 rows a warp
  CHECK(split::row_plan(1, 2).team == 1);
  CHECK(split::row_plan(4 << 20, 2).chunks == 2048);  // a 1 x 4M fp16 row: 2048 warps
}

// Plays every warp of one tensor of rows x cols elements of eb bytes, stored from byte address
// `base` (row r at base + r * cols * eb), and checks that each element is read once, by the
// row's own team, with aligned vector loads, and that each row's sum lands in one place: written
// once (unchunked) or as one partial per chunk.
static void check_rows(int64_t rows, int64_t cols, int eb, uintptr_t base, int depth, uintptr_t base_b) {
  const split::RowPlan plan = split::row_plan(cols, eb);
  const int64_t chunk = split::chunk_elems(eb);
  const int vec = 16 / eb;
  std::vector<int> seen(static_cast<size_t>(rows * cols), 0);
  std::vector<int> writes(static_cast<size_t>(rows), 0);
  std::vector<int> partials(static_cast<size_t>(split::row_partials(rows, plan)), 0);
  const int64_t units = split::row_units(rows, plan);
  for (int64_t unit = 0; unit < units; ++unit) {
    for (int lane = 0; lane < 32; ++lane) {
      const split::RowWork w = split::row_work(unit, lane, rows, cols, plan, chunk);
      const int sub = lane & (plan.team - 1);
      if (!w.valid) {
        CHECK(plan.chunks == 1 && w.row >= rows);
        continue;
      }
      CHECK(w.row >= 0 && w.row < rows && w.begin >= 0 && w.begin <= w.end && w.end <= cols);
      const uintptr_t row_a = base + static_cast<uintptr_t>(w.row * cols * eb);
      const uintptr_t row_b = base_b + static_cast<uintptr_t>(w.row * cols * eb);
      const int64_t n = w.end - w.begin;
      const int64_t head =
          depth == 1 ? split::head_elems(row_a + static_cast<uintptr_t>(w.begin * eb), eb, n)
                     : split::head_elems2(row_a + static_cast<uintptr_t>(w.begin * eb),
                                          row_b + static_cast<uintptr_t>(w.begin * eb), eb, n);
      split::team_span(
          w.begin, w.end, head, vec, sub, plan.team,
          [&](int64_t j) {
            CHECK(j >= w.begin && j < w.end);
            ++seen[static_cast<size_t>(w.row * cols + j)];
          },
          [&](int64_t j) {
            CHECK(j >= w.begin && j + vec <= w.end);
            CHECK((row_a + static_cast<uintptr_t>(j * eb)) % 16 == 0);
            if (depth == 2) CHECK((row_b + static_cast<uintptr_t>(j * eb)) % 16 == 0);
            for (int q = 0; q < vec; ++q) ++seen[static_cast<size_t>(w.row * cols + j + q)];
          });
      if (sub == 0) {
        if (plan.chunks > 1) {
          CHECK(w.chunk >= 0 && w.chunk < plan.chunks);
          ++partials[static_cast<size_t>(w.row * plan.chunks + w.chunk)];
        } else {
          ++writes[static_cast<size_t>(w.row)];
        }
      }
    }
  }
  for (int s : seen) CHECK(s == 1);
  if (plan.chunks > 1) {
    for (int p : partials) CHECK(p == 1);
  } else {
    for (int c : writes) CHECK(c == 1);
  }
}

static void test_rows() {
  std::mt19937 rng(11);
  const int64_t col_cases[] = {0, 1, 2, 3, 5, 9, 16, 27, 31, 33, 64, 100, 255, 1023, 1024, 1025, 2047, 2048,
                               2049, 4608, 9000};
  for (int eb : {2, 4}) {
    for (int64_t cols : col_cases) {
      for (int64_t rows : {1, 2, 7, 33, 65}) {
        if (rows * cols > 400000) continue;
        for (int depth : {1, 2}) {
          // aligned, misaligned by whole elements (a storage offset), and two operands misaligned
          // differently (scalar loads only)
          const uintptr_t base = 4096 + static_cast<uintptr_t>(eb) * (rng() % 8);
          const uintptr_t base_b = depth == 2 && (rng() % 2) ? 8192 + static_cast<uintptr_t>(eb) * (rng() % 8)
                                                              : base + 65536 * 16;
          check_rows(rows, cols, eb, base, depth, base_b);
          check_rows(rows, cols, eb, 4096, depth, 8192);
        }
      }
    }
  }
}

static void test_row_sum_partials() {
  const int64_t chunk = split::chunk_elems(4);
  cuda::RowTensor t[3] = {{{nullptr, nullptr}, 5, chunk + 1, 0}, {{nullptr, nullptr}, 0, 10 * chunk, 5},
                          {{nullptr, nullptr}, 3, 7, 5}};
  CHECK(cuda::row_sum_partials(t, 3, 4) == 5 * 2);  // rows of 2 chunks; no rows, unchunked: none
}

// Plays every warp of layer_counts / mask_overlap over m rows of n mask bytes (row j at
// base + j * n) and checks that each byte of each row is counted once, into its own segment,
// with aligned vector loads.
static void check_segments(const std::vector<int64_t>& sizes, int64_t m, uintptr_t base) {
  std::vector<int64_t> offsets(sizes.size() + 1, 0);
  for (size_t s = 0; s < sizes.size(); ++s) offsets[s + 1] = offsets[s] + sizes[s];
  const int64_t n = offsets.back(), segments = static_cast<int64_t>(sizes.size());
  const std::vector<int64_t> table = split::segment_table(offsets);
  CHECK(table.size() == 2 * offsets.size());
  for (size_t s = 0; s < offsets.size(); ++s) CHECK(table[s] == offsets[s]);
  int64_t expect_pieces = 0;
  for (int64_t size : sizes) expect_pieces += (size + split::kPieceBytes - 1) / split::kPieceBytes;
  const int64_t pieces = table.back();
  CHECK(pieces == expect_pieces);
  std::vector<int> seen(static_cast<size_t>(m * n), 0);
  for (int64_t task = 0; task < m * pieces; ++task) {
    const split::Piece p = split::piece_of(task, table.data(), segments);
    CHECK(p.row >= 0 && p.row < m && p.segment >= 0 && p.segment < segments);
    CHECK(p.begin >= offsets[p.segment] && p.begin < p.end && p.end <= offsets[p.segment + 1]);
    CHECK(p.end - p.begin <= split::kPieceBytes);
    const uintptr_t row = base + static_cast<uintptr_t>(p.row * n);
    const int64_t head = split::head_elems(row + static_cast<uintptr_t>(p.begin), 1, p.end - p.begin);
    for (int lane = 0; lane < 32; ++lane) {
      split::team_span(
          p.begin, p.end, head, 16, lane, 32,
          [&](int64_t j) { ++seen[static_cast<size_t>(p.row * n + j)]; },
          [&](int64_t j) {
            CHECK((row + static_cast<uintptr_t>(j)) % 16 == 0 && j + 16 <= p.end);
            for (int q = 0; q < 16; ++q) ++seen[static_cast<size_t>(p.row * n + j + q)];
          });
    }
  }
  for (int s : seen) CHECK(s == 1);
}

static void test_segments() {
  const int64_t piece = split::kPieceBytes;
  const std::vector<std::vector<int64_t>> cases = {
      {1}, {7}, {0, 5, 0}, {3, 0, 0, 4}, {0, 0, 9},  {64, 64, 64, 256}, {piece}, {piece + 1}, {3 * piece - 5, 17},
      {0}, {0, 0}, {5 * piece + 3}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {100, 0, 2 * piece, 0}};
  for (const auto& sizes : cases)
    for (int64_t m : {1, 2, 5})
      for (uintptr_t base : {uintptr_t{4096}, uintptr_t{4097}, uintptr_t{4111}}) check_segments(sizes, m, base);
}

static void test_head_elems() {
  CHECK(split::head_elems(4096, 4, 100) == 0);
  CHECK(split::head_elems(4100, 4, 100) == 3);
  CHECK(split::head_elems(4100, 4, 2) == 2);
  CHECK(split::head_elems(4097, 4, 100) == 100);  // not a whole number of elements from a boundary
  CHECK(split::head_elems(4098, 2, 100) == 7);
  CHECK(split::head_elems2(4100, 8196, 4, 100) == 3);
  CHECK(split::head_elems2(4100, 8192, 4, 100) == 100);  // aligned differently: scalars only
}

int main() {
  test_row_plans();
  test_head_elems();
  test_rows();
  test_row_sum_partials();
  test_segments();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("work_split: all checks passed\n");
  return 0;
}
