// Test-only CUDA helpers (test_kernels.cu; bound in module.cpp).
#pragma once

namespace epi_fast {
namespace cuda {

// Launches a kernel with an invalid configuration and does not check it, leaving
// cudaErrorInvalidConfiguration pending; returns the pending error's code.
int leave_pending_error();

}  // namespace cuda
}  // namespace epi_fast
