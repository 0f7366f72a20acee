// Row blocks of many tensors, spread over the threads in tasks of about equal bytes: the CPU
// kernels of the scores and taylor families run their row kernels through this. Every row is
// reduced by one thread in a fixed order, so results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../py_format.h"

namespace epi_fast {
namespace cpu {

// Tensors as rows: data (and, for Taylor, the gradient of the same shape) of tensor t start at
// data[t] / grad[t], rows row_start[t]..row_start[t + 1] of all, cols[t] elements each.
struct Rows {
  std::vector<at::Tensor> keep_alive;  // contiguous copies of strided inputs (none for contiguous ones)
  std::vector<const void*> data;
  std::vector<const void*> grad;
  std::vector<int64_t> cols;
  std::vector<int64_t> row_start;  // prefix sums, size tensors + 1
};

// A tensor's data as one contiguous block: its own when it is contiguous (the common case, with
// no Tensor copy per call), else a contiguous copy kept alive in `keep`.
inline const void* contiguous_data(const at::Tensor& t, std::vector<at::Tensor>& keep) {
  if (t.is_contiguous()) return t.const_data_ptr();
  keep.push_back(t.contiguous());
  return keep.back().const_data_ptr();
}

inline Rows gather_rows(at::TensorList tensors, at::TensorList grads = {}) {
  Rows r;
  const size_t n = tensors.size();
  r.data.reserve(n);
  r.cols.reserve(n);
  r.row_start.reserve(n + 1);
  if (!grads.empty()) r.grad.reserve(n);
  r.row_start.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    r.data.push_back(contiguous_data(t, r.keep_alive));
    if (!grads.empty()) r.grad.push_back(contiguous_data(grads[i], r.keep_alive));
    const int64_t rows = t.size(0);
    r.cols.push_back(rows ? t.numel() / rows : 0);
    r.row_start.push_back(r.row_start.back() + rows);
  }
  return r;
}

// Splits the rows into tasks of about equal element counts. at::parallel_for hands each thread
// one contiguous share of the task range, so tasks of equal size balance the threads even when
// layers differ widely in row length (ResNet-50: rows of 27 to 4,608 elements). Problems under
// one task's worth of elements become a single task and run inline, with no parallel region.
inline std::vector<int64_t> balanced_tasks(const Rows& r) {
  constexpr int64_t kMinTaskElems = 1 << 16;
  int64_t total = 0;
  for (size_t t = 0; t < r.cols.size(); ++t) total += r.cols[t] * (r.row_start[t + 1] - r.row_start[t]);
  const int64_t tasks_wanted = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 8, total / kMinTaskElems));
  const int64_t per_task = std::max<int64_t>(1, (total + tasks_wanted - 1) / tasks_wanted);
  std::vector<int64_t> bounds{0};  // global row indices
  int64_t acc = 0;
  for (size_t t = 0; t < r.cols.size(); ++t) {
    const int64_t cols = std::max<int64_t>(r.cols[t], 1);  // empty rows still cost a write
    for (int64_t g = r.row_start[t]; g < r.row_start[t + 1];) {
      const int64_t room = std::max<int64_t>(1, (per_task - acc + cols - 1) / cols);
      const int64_t take = std::min(room, r.row_start[t + 1] - g);
      g += take;
      acc += take * cols;
      if (acc >= per_task) {
        bounds.push_back(g);
        acc = 0;
      }
    }
  }
  if (bounds.back() != r.row_start.back()) bounds.push_back(r.row_start.back());
  return bounds;
}

// Calls fn(tensor, first_row, rows, global_row) for the part of every tensor inside the
// global row range [begin, end): one call per block of consecutive rows, not per row.
template <typename Fn>
void for_blocks(const Rows& r, int64_t begin, int64_t end, Fn fn) {
  size_t t = std::upper_bound(r.row_start.begin(), r.row_start.end(), begin) - r.row_start.begin() - 1;
  for (; t + 1 < r.row_start.size() && r.row_start[t] < end; ++t) {
    const int64_t lo = std::max(begin, r.row_start[t]), hi = std::min(end, r.row_start[t + 1]);
    if (hi > lo) fn(t, lo - r.row_start[t], hi - lo, lo);
  }
}

// Runs fn over every row block, in parallel over balanced tasks.
template <typename Fn>
void parallel_blocks(const Rows& r, Fn fn) {
  const std::vector<int64_t> bounds = balanced_tasks(r);
  const int64_t tasks = static_cast<int64_t>(bounds.size()) - 1;
  if (tasks <= 0) return;
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    for_blocks(r, bounds[b], bounds[e], fn);
  });
}

// fn(T{}) with T the element type of a dtype that the checks accepted.
template <typename Fn>
void dispatch_dtype(at::ScalarType dtype, Fn fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kHalf: fn(c10::Half{}); break;
    case at::kBFloat16: fn(c10::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", py::dtype(dtype));
  }
}

}  // namespace cpu
}  // namespace epi_fast
