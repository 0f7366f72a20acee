// layer_counts and mask_overlap on the CPU: one task per (mask row, segment).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../counts.h"
#include "../test_hooks.h"

namespace epi_fast {
namespace {

// Per (ratio, segment): entries set in a (and in b, where given) and, with b, entries that
// differ. Bools are bytes of 0 or 1, summed in 32-bit blocks so that the loops vectorise.
void segment_counts_cpu(const bool* a_in, const bool* b_in, int64_t m, int64_t n,
                        const std::vector<int64_t>& offsets, int64_t* counts, int64_t* differ) {
  const uint8_t* a = reinterpret_cast<const uint8_t*>(a_in);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(b_in);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  constexpr int64_t kBlock = int64_t{1} << 24;  // < 2^32 / 255: a uint32 sum cannot overflow
  // One task per (ratio, segment); a parallel region only pays off past ~256K mask entries.
  const int64_t tasks = m * segments;
  const int64_t grain = m * n >= (1 << 18) ? std::max<int64_t>(1, tasks / (4 * at::get_num_threads())) : tasks;
  at::parallel_for(0, tasks, std::max<int64_t>(grain, 1), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j = task / segments, sg = task % segments;
      const uint8_t* ra = a + j * n;
      const uint8_t* rb = b ? b + j * n : nullptr;
      int64_t both = 0, diff = 0;
      for (int64_t lo = offsets[sg]; lo < offsets[sg + 1]; lo += kBlock) {
        const int64_t hi = std::min(offsets[sg + 1], lo + kBlock);
        uint32_t x = 0, y = 0;
        if (rb) {
          for (int64_t i = lo; i < hi; ++i) {
            x += ra[i] & rb[i];
            y += ra[i] ^ rb[i];
          }
        } else {
          for (int64_t i = lo; i < hi; ++i) x += ra[i];
        }
        both += x;
        diff += y;
      }
      counts[task] = both;
      if (differ) differ[task] = diff;
    }
  });
}

}  // namespace

namespace cpu {

at::Tensor layer_counts(const at::Tensor& masks_in, at::IntArrayRef segment_sizes) {
  const std::vector<int64_t> offsets = check_layer_counts(masks_in, segment_sizes);
  const at::Tensor masks = masks_in.contiguous();
  const int64_t m = mask_rows(masks), n = mask_channels(masks);
  const int64_t segments = static_cast<int64_t>(segment_sizes.size());
  at::Tensor counts(at::detail::empty_cpu({m, segments}, masks.options().dtype(at::kLong)));
  segment_counts_cpu(masks.const_data_ptr<bool>(), nullptr, m, n, offsets, counts.data_ptr<int64_t>(), nullptr);
  return counts;
}

}  // namespace cpu

at::Tensor layer_counts_cpu(const at::Tensor& masks, at::IntArrayRef segment_sizes) {
  test_hooks::enter("layer_counts");
  at::Tensor counts = cpu::layer_counts(masks, segment_sizes);
  test_hooks::at("layer_counts", "written");
  return counts;
}

std::tuple<at::Tensor, at::Tensor> mask_overlap_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                                    at::IntArrayRef segment_sizes) {
  test_hooks::enter("mask_overlap");
  check_mask_pair(a_in, b_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t m = mask_rows(a), n = mask_channels(a);
  const int64_t whole[] = {n};  // no segments: one segment of all n
  const std::vector<int64_t> offsets =
      segment_offsets(segment_sizes.empty() ? at::IntArrayRef(whole) : segment_sizes, n);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  at::Tensor both(at::detail::empty_cpu({m, segments}, a.options().dtype(at::kLong)));
  at::Tensor diff(at::detail::empty_cpu({m, segments}, a.options().dtype(at::kLong)));
  segment_counts_cpu(a.const_data_ptr<bool>(), b.const_data_ptr<bool>(), m, n, offsets, both.data_ptr<int64_t>(),
                     diff.data_ptr<int64_t>());
  test_hooks::at("mask_overlap", "written");
  return {both, diff};
}

}  // namespace epi_fast

