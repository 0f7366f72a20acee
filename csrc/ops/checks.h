// Argument checks that several operator families share, for every backend.
//
// The operators' checks hold the rules: every refusal comes from here or from a family's header
// (csrc/ops/<family>.h), before the first write, with the message that the reference's Python
// check (epi_fast/ops/_checks.py) gives for the same input, in the same order, so that the
// reference, the CPU and the CUDA operators raise the same error. TORCH_CHECK_VALUE reaches
// Python as ValueError, TORCH_CHECK_TYPE as TypeError. The Python wrappers check only what the
// schema cannot carry (a non-tensor in a list, a ratio given as a tensor, ...).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

#include "py_format.h"

namespace epi_fast {

// _checks.tensor_list: a non-empty list of floating tensors with a dim 0, dense, sharing one
// device and one dtype. Per tensor first (0-dim, dtype, sparse), then each against the first.
inline void check_tensor_list(at::TensorList tensors, const char* name) {
  TORCH_CHECK_VALUE(!tensors.empty(), name, " is empty: pass at least one tensor");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.dim() != 0, name, "[", i, "] is 0-dimensional: channels are read along dim 0");
    const auto dtype = t.scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name, "[", i,
                     "] has dtype ", py::dtype(dtype), "; supported: float32, float16, bfloat16");
    TORCH_CHECK_TYPE(!t.is_sparse(), name, "[", i, "] is sparse; pass dense tensors");
  }
  const at::Tensor& first = tensors[0];
  for (size_t i = 1; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.device() == first.device(), name, " mixes devices: ", name, "[0] is on ", first.device(),
                      ", ", name, "[", i, "] on ", t.device());
    TORCH_CHECK_TYPE(t.scalar_type() == first.scalar_type(), name, " mixes dtypes: ", name, "[0] is ",
                     py::dtype(first.scalar_type()), ", ", name, "[", i, "] is ", py::dtype(t.scalar_type()));
  }
}

// _checks.criterion: one of a family's names (criterion, mode, reduce), or the list of them.
template <typename E, size_t N>
E parse_name(c10::string_view value, const std::pair<const char*, E> (&names)[N], const char* what) {
  for (const auto& entry : names)
    if (value == entry.first) return entry.second;
  std::string expected;
  for (size_t i = 0; i < N; ++i) expected += (i ? ", " : "") + py::repr(names[i].first);
  TORCH_CHECK_VALUE(false, "unknown ", what, " ", py::repr(std::string_view(value.data(), value.size())),
                    "; expected one of ", expected);
}

// _checks.scores_vector.
inline void check_scores(const at::Tensor& scores) {
  TORCH_CHECK_VALUE(scores.dim() == 1, "scores must be 1-D (one score per channel), got shape ",
                    py::shape(scores.sizes()));
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat, "scores must be float32, got ",
                   py::dtype(scores.scalar_type()));
}

// _checks.offsets: the channel of every tensor's row 0 (consecutive when `offsets` is empty);
// every row must land inside the `channels` outputs.
inline std::vector<int64_t> row_offsets(at::TensorList tensors, at::IntArrayRef offsets, int64_t channels) {
  std::vector<int64_t> out(tensors.size());
  if (offsets.empty()) {
    int64_t acc = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      out[i] = acc;
      acc += tensors[i].size(0);
    }
  } else {
    TORCH_CHECK_VALUE(offsets.size() == tensors.size(), "offsets has ", offsets.size(), " entries for ",
                      tensors.size(), " tensors");
    out.assign(offsets.begin(), offsets.end());
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t rows = tensors[i].size(0);
    // out[i] <= channels - rows, not out[i] + rows <= channels: an offset near 2^63 must not wrap.
    TORCH_CHECK_VALUE(out[i] >= 0 && out[i] <= channels - rows, "tensor ", i, " maps rows ", out[i], "..",
                      py::integer(static_cast<__int128>(out[i]) + rows - 1), " outside the ", channels,
                      " channels");
  }
  return out;
}

// _checks.segment_sizes on sizes already taken as int64: offsets [S + 1] of the segments, for
// `total` channels; empty sizes mean "no segments" (the callers that need segments refuse that
// first).
inline std::vector<int64_t> segment_offsets(at::IntArrayRef sizes, int64_t total) {
  for (size_t s = 0; s < sizes.size(); ++s)
    TORCH_CHECK_VALUE(sizes[s] >= 0, "segment_sizes[", s, "] = ", sizes[s], " is negative");
  std::vector<int64_t> offsets(sizes.size() + 1, 0);
  __int128 sum = 0;
  size_t first_past = sizes.size();  // the first segment that ends past `total`
  for (size_t s = 0; s < sizes.size(); ++s) {
    sum += sizes[s];
    if (sum > total && first_past == sizes.size()) first_past = s;
    offsets[s + 1] = static_cast<int64_t>(sum);  // only read when the sum is `total`
  }
  // A sum past int64 would have wrapped in the schema's arithmetic; the Python wrappers name its
  // true value before the call (Python's integers hold it), torch.ops callers get where it broke.
  TORCH_CHECK_VALUE(sizes.empty() || sum <= INT64_MAX, "segment_sizes add up to more than the ", total,
                    " channels (from segment_sizes[", first_past, "] = ", sizes[first_past], " on)");
  TORCH_CHECK_VALUE(sizes.empty() || sum == total, "segment_sizes add up to ", py::integer(sum), ", but there are ",
                    total, " channels");
  return offsets;
}

}  // namespace epi_fast
