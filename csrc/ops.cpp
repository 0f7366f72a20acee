// Operator schemas (one TORCH_LIBRARY for every device) and the Python module that loads them.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

// The torch release this module was compiled against, from setup.py: the loader compares it
// with the running torch before trusting the binary.
#ifndef EPI_FAST_TORCH_MAJOR
#define EPI_FAST_TORCH_MAJOR 0
#define EPI_FAST_TORCH_MINOR 0
#define EPI_FAST_TORCH_PATCH 0
#endif

namespace epi_fast {
std::string cpu_simd();          // ops_cpu.cpp
bool set_cpu_simd(bool enabled);  // ops_cpu.cpp
std::string set_cpu_simd_level(const std::string& level);  // ops_cpu.cpp
}  // namespace epi_fast

// No argument is called "mode": torch's functionalisation of in-place operators passes its own
// keyword of that name while tracing, which collides under torch.compile.
TORCH_LIBRARY(epi_fast, m) {
  m.def("channel_scores(Tensor[] tensors, str criterion) -> Tensor");
  m.def("taylor_scores(Tensor[] params, Tensor[] grads, int[] offsets, int num_channels, str taylor_mode) -> Tensor");
  m.def(
      "taylor_accumulate_(Tensor(a!) acc, Tensor(b!) skipped, Tensor[] params, Tensor[] grads, "
      "int[] offsets, Tensor? inv_scale, str taylor_mode) -> ()");
  m.def("group_reduce(Tensor scores, Tensor group_ptr, Tensor member_idx, str reduce) -> Tensor");
  m.def("global_masks(Tensor scores, float[] ratios, int[] segment_sizes, int min_keep) -> (Tensor, Tensor)");
  m.def("layer_counts(Tensor masks, int[] segment_sizes) -> Tensor");
  // global_masks then layer_counts on the masks just written: one call per epoch end.
  m.def(
      "global_masks_counts(Tensor scores, float[] ratios, int[] segment_sizes, int min_keep) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("mask_overlap(Tensor a, Tensor b, int[] segment_sizes) -> (Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "epi_fast compiled operators (registered under torch.ops.epi_fast)";
  module.attr("torch_version") = std::to_string(EPI_FAST_TORCH_MAJOR) + "." +
                                 std::to_string(EPI_FAST_TORCH_MINOR) + "." +
                                 std::to_string(EPI_FAST_TORCH_PATCH);
  module.def("cpu_simd", &epi_fast::cpu_simd,
             "The CPU row kernels in use: 'avx512' (where the CPU has AVX-512F), 'avx2' (AVX2 and "
             "F16C) or 'portable', picked at run time.");
  module.def("set_cpu_simd", &epi_fast::set_cpu_simd, pybind11::arg("enabled"),
             "Allow (True: the best the CPU has) or forbid (False) the SIMD CPU row kernels; returns "
             "whether they were allowed. All give the same bits; this exists to test and time them. "
             "It does not restore a cap set by set_cpu_simd_level: restore that with the level name "
             "set_cpu_simd_level returned.");
  module.def("set_cpu_simd_level", &epi_fast::set_cpu_simd_level, pybind11::arg("level"),
             "Cap the CPU row kernels at 'avx512', 'avx2' or 'portable' (the CPU may allow less); "
             "returns the previous cap.");
#ifdef EPI_FAST_WITH_CUDA
  module.attr("cuda_kernels_built") = true;
#else
  module.attr("cuda_kernels_built") = false;
#endif
}
