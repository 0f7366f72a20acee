// What the families' CUDA glue shares: the check for an earlier pending CUDA error, torch tensors
// turned into the torch-free launch types, the current stream, scratch, small host vectors copied
// to the device without a synchronisation.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/EmptyTensor.h>
#include <ATen/ops/tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <vector>

#include "../py_format.h"
#include "epi_fast/cuda_launch.h"

namespace epi_fast {
namespace cuda_glue {

// Called first by every CUDA operator. The runtime keeps one pending error per host thread: an
// error that an earlier launch left there (a kernel nobody checked, an asynchronous fault) would
// otherwise surface in this operator's first launch check as its own. It is reported here, named
// as earlier, before this operator runs anything, and cleared so that it is reported once (a
// sticky error, such as an illegal address, stays: every later CUDA call fails with it). Never
// retried: the caller gets the error.
inline void check_no_pending_error(const char* op) {
  const cudaError_t err = cudaPeekAtLastError();
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();
  TORCH_CHECK(false, "epi_fast.", op, ": a CUDA error from an earlier operation was pending when ", op,
              " was called (", cudaGetErrorName(err), ": ", cudaGetErrorString(err), "); ", op,
              " did not run. The error comes from CUDA work launched before it (run with "
              "CUDA_LAUNCH_BLOCKING=1 to find where).");
}

inline cuda::DType launch_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::Float32;
    case at::kHalf: return cuda::DType::Float16;
    case at::kBFloat16: return cuda::DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", py::dtype(t));
  }
}

// Rows of every tensor (with its gradient, for Taylor) for a multi-tensor launch; contiguous
// copies of strided inputs live as long as the table.
struct RowTable {
  std::vector<at::Tensor> keep_alive;
  std::vector<cuda::RowTensor> rows;
};

inline RowTable row_table(at::TensorList tensors, at::TensorList grads, const std::vector<int64_t>& offsets) {
  RowTable table;
  table.rows.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor t = tensors[i].contiguous();
    table.keep_alive.push_back(t);
    const void* grad = nullptr;
    if (!grads.empty()) {
      at::Tensor g = grads[i].contiguous();
      table.keep_alive.push_back(g);
      grad = g.data_ptr();
    }
    const int64_t rows = t.size(0);
    table.rows.push_back({{t.data_ptr(), grad}, rows, rows ? t.numel() / rows : 0, offsets[i]});
  }
  return table;
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// float32 scratch of `count` elements on `like`'s device (none when count is 0), from torch's
// caching allocator on the current stream (so CUDA-graph capture takes it from the graph's pool).
inline at::Tensor float_scratch(int64_t count, const at::Tensor& like) {
  if (count == 0) return at::Tensor();
  return at::detail::empty_cuda({count}, like.options().dtype(at::kFloat));
}

inline float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

inline at::Tensor device_vector(const std::vector<int64_t>& values, const at::Device& device) {
  // Pinned and non-blocking: the copy joins the stream without a host synchronisation (the
  // caching host allocator keeps the buffer alive until the copy has run).
  at::Tensor host = at::tensor(values, at::TensorOptions().dtype(at::kLong)).pin_memory();
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace cuda_glue
}  // namespace epi_fast
