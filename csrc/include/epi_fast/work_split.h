// How the CUDA kernels split their work among warps and lanes, written once for nvcc and for the
// C++ compiler: the kernels call these functions, and tests/cpp/test_work_split.cpp runs the same
// functions on the host and checks that every element is visited exactly once, by a lane of the
// right row, with every 16-byte vector load aligned. No torch and no CUDA headers.
//
// Rows (channel_scores, taylor_scores / taylor_accumulate_): each tensor's rows get a plan by
// their length. A short row goes to a team of 1 to 32 lanes (a BatchNorm's one-value rows take
// one lane each, 32 rows a warp, instead of a warp each with 31 lanes idle); a row longer than
// one chunk (chunk_elems) is cut into chunks, one warp each, whose sums go to a scratch buffer
// and are added in chunk order by a second kernel (a 1 x 4M row is then read by a few thousand
// warps, not by one). Every sum has a fixed order, so results repeat bit for bit for the same tensor (the same
// values at another 16-byte alignment, e.g. a view with a storage offset, may differ in the last bit).
//
// Segments (layer_counts, mask_overlap): each (mask row, segment) is cut into pieces of at most
// kPieceBytes bytes, one warp each, so neither many short segments nor one long one leaves the
// GPU idle, and the number of mask rows has no limit of its own.
#pragma once

#include <cstdint>
#include <vector>

#include "epi_fast/kernel_math.h"

namespace epi_fast {
namespace split {

constexpr int kWarpLanes = 32;
constexpr int kVectorBytes = 16;  // one uint4 load
// Vectors per lane in one chunk: a chunk is 4 KiB, 8 loads per lane, enough in flight to hide
// the latency of the first.
constexpr int kChunkVectors = 8;
// Mask bytes per piece: 4 vectors per lane.
constexpr int64_t kPieceBytes = int64_t{kWarpLanes} * kVectorBytes * 4;

EPI_HD int64_t chunk_elems(int elem_bytes) {
  return int64_t{kWarpLanes} * (kVectorBytes / elem_bytes) * kChunkVectors;
}

// team: lanes that sum one row or chunk (a power of two that divides 32); chunks: chunks per row
// (1: the team sums the whole row and writes it; more: a warp per chunk, team 32).
struct RowPlan {
  int team;
  int64_t chunks;
};

// The plan of rows of `cols` elements of `elem_bytes` bytes: chunks when a row is longer than
// one chunk, else the smallest team that gives each lane at most about one vector's worth.
inline RowPlan row_plan(int64_t cols, int elem_bytes) {
  const int64_t chunk = chunk_elems(elem_bytes);
  if (cols > chunk) return {kWarpLanes, (cols + chunk - 1) / chunk};
  const int64_t per_lane = kVectorBytes / elem_bytes;
  int team = 1;
  while (team < kWarpLanes && team * per_lane < cols) team *= 2;
  return {team, 1};
}

// Warps that the rows of one tensor take.
inline int64_t row_units(int64_t rows, RowPlan plan) {
  if (plan.chunks > 1) return rows * plan.chunks;
  return (rows * plan.team + kWarpLanes - 1) / kWarpLanes;
}

// Scratch floats that the chunked rows of one tensor need (0 for unchunked rows).
inline int64_t row_partials(int64_t rows, RowPlan plan) { return plan.chunks > 1 ? rows * plan.chunks : 0; }

// What lane `lane` of the warp that holds unit `unit` of a tensor (its units counted from 0)
// sums: elements [begin, end) of row `row` (chunk `chunk` of it), or nothing (valid false: a
// lane past the tensor's last row, which still takes part in its warp's shuffles).
struct RowWork {
  int64_t row;
  int64_t chunk;
  int64_t begin;
  int64_t end;
  bool valid;
};

EPI_HD RowWork row_work(int64_t unit, int lane, int64_t rows, int64_t cols, RowPlan plan, int64_t chunk) {
  RowWork w;
  if (plan.chunks > 1) {
    w.row = unit / plan.chunks;
    w.chunk = unit - w.row * plan.chunks;
    w.begin = w.chunk * chunk;
    w.end = w.begin + chunk < cols ? w.begin + chunk : cols;
    w.valid = w.row < rows;
  } else {
    w.row = unit * (kWarpLanes / plan.team) + lane / plan.team;
    w.chunk = 0;
    w.begin = 0;
    w.end = cols;
    w.valid = w.row < rows;
  }
  return w;
}

// Elements from `addr` to the next 16-byte boundary, at most n: the scalar head before the
// vector loads. n (no vectors) when the address is not a whole number of elements from one.
EPI_HD int64_t head_elems(uintptr_t addr, int elem_bytes, int64_t n) {
  const uintptr_t to_boundary = (kVectorBytes - (addr & (kVectorBytes - 1))) & (kVectorBytes - 1);
  if (to_boundary % static_cast<uintptr_t>(elem_bytes) != 0) return n;
  const int64_t head = static_cast<int64_t>(to_boundary) / elem_bytes;
  return head < n ? head : n;
}

// The scalar head of a span read from two operands at once: vectors only where both are aligned
// alike.
EPI_HD int64_t head_elems2(uintptr_t a, uintptr_t b, int elem_bytes, int64_t n) {
  if (((a ^ b) & (kVectorBytes - 1)) != 0) return n;
  return head_elems(a, elem_bytes, n);
}

// Visits what lane `sub` of a team of `team` lanes reads of the span [begin, end) (indices into
// the row): scalar(j) for the `head` elements before the first 16-byte boundary and for those
// after the last whole vector, vector(j) for each vector of `vec` elements that starts at j. The
// lanes of a team read neighbouring elements (vectors), so a warp's loads coalesce.
// (nvcc: the device kernels instantiate this with device lambdas, the host test with host ones.)
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Scalar, typename Vector>
EPI_HD void team_span(int64_t begin, int64_t end, int64_t head, int vec, int sub, int team, Scalar&& scalar,
                      Vector&& vector) {
  const int64_t n = end - begin;
  if (head > n) head = n;
  for (int64_t j = sub; j < head; j += team) scalar(begin + j);
  const int64_t vectors = (n - head) / vec;
  const int64_t body = begin + head;
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
  for (int64_t v = sub; v < vectors; v += team) vector(body + v * vec);
  for (int64_t j = head + vectors * vec + sub; j < n; j += team) scalar(begin + j);
}

// -- segments ------------------------------------------------------------------------------------

// The segment table of layer_counts / mask_overlap: the offsets [S + 1] of the segments, then
// the first piece of each segment [S + 1] (the last entry is the pieces of one mask row).
inline std::vector<int64_t> segment_table(const std::vector<int64_t>& offsets) {
  const size_t s1 = offsets.size();
  std::vector<int64_t> table(offsets);
  table.resize(2 * s1, 0);
  int64_t pieces = 0;
  for (size_t s = 0; s + 1 < s1; ++s) {
    table[s1 + s] = pieces;
    pieces += (offsets[s + 1] - offsets[s] + kPieceBytes - 1) / kPieceBytes;
  }
  if (s1) table[2 * s1 - 1] = pieces;
  return table;
}

// Piece `task` of all mask rows: bytes [begin, end) of mask row `row`, in segment `segment`.
struct Piece {
  int64_t row;
  int64_t segment;
  int64_t begin;
  int64_t end;
};

EPI_HD Piece piece_of(int64_t task, const int64_t* table, int64_t segments) {
  const int64_t* offsets = table;
  const int64_t* first_piece = table + segments + 1;
  const int64_t pieces = first_piece[segments];
  Piece p;
  p.row = task / pieces;
  const int64_t q = task - p.row * pieces;
  // Empty segments have no pieces and share their first piece with the next segment: the last
  // segment whose first piece is <= q is the non-empty one that holds q.
  p.segment = segment_of(first_piece, segments, q);
  p.begin = offsets[p.segment] + (q - first_piece[p.segment]) * kPieceBytes;
  const int64_t stop = offsets[p.segment + 1];
  p.end = p.begin + kPieceBytes < stop ? p.begin + kPieceBytes : stop;
  return p;
}

}  // namespace split
}  // namespace epi_fast
