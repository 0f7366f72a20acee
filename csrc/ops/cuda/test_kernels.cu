// Test-only CUDA helpers (bound as _C._test_* in module.cpp): a launch that fails and is left
// unchecked, so that tests can check how the operators treat an error that earlier CUDA work
// left pending.
#include <cuda_runtime.h>

#include "test_kernels.h"

namespace epi_fast {
namespace cuda {
namespace {

__global__ void noop_kernel() {}

}  // namespace

int leave_pending_error() {
  // More threads per block than any GPU allows: cudaErrorInvalidConfiguration, a launch error
  // that is not sticky (it stays pending until cudaGetLastError reads it).
  noop_kernel<<<1, 4096>>>();
  return static_cast<int>(cudaPeekAtLastError());
}

}  // namespace cuda
}  // namespace epi_fast
