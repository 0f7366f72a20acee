// layer_counts and mask_overlap on the CPU: one task per (mask row, segment).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "../counts.h"
#include "../test_hooks.h"

namespace epi_fast {
namespace {

// Bools are bytes of 0 or 1. Eight of them are read as one 64-bit word and added lane by lane
// into a word of byte counters (255 words at most, so that no lane overflows), whose lanes are
// then summed: about one add per eight entries, at a speed that does not depend on where the
// loop lands in the binary (a byte-at-a-time loop here ran 30% slower or faster with its code
// alignment alone).
inline uint64_t word_at(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

inline int64_t lane_sum(uint64_t lanes) {  // the eight byte counters of `lanes`, added
  lanes = (lanes & 0x00ff00ff00ff00ffull) + ((lanes >> 8) & 0x00ff00ff00ff00ffull);
  lanes = (lanes & 0x0000ffff0000ffffull) + ((lanes >> 16) & 0x0000ffff0000ffffull);
  return static_cast<int64_t>((lanes & 0xffffffffull) + (lanes >> 32));
}

// The true entries of f(a, b) over [lo, hi), f applied bytewise (to words and to bytes alike);
// b may be null where f ignores it.
template <typename F>
int64_t count_true(const uint8_t* a, const uint8_t* b, int64_t lo, int64_t hi, F f) {
  int64_t total = 0, i = lo;
  while (hi - i >= 8) {
    const int64_t words = std::min<int64_t>((hi - i) / 8, 255);
    uint64_t lanes = 0;
    for (int64_t k = 0; k < words; ++k, i += 8) lanes += f(word_at(a + i), b ? word_at(b + i) : 0);
    total += lane_sum(lanes);
  }
  for (; i < hi; ++i) total += f(uint64_t{a[i]}, b ? uint64_t{b[i]} : 0);
  return total;
}

// Per (ratio, segment): entries set in a or, where differ is given (mask_overlap), entries set
// in a and b, and in differ the entries where they differ. (Not told apart by b itself: an empty
// mask's data pointer may be null.)
void segment_counts_cpu(const bool* a_in, const bool* b_in, int64_t m, int64_t n,
                        const std::vector<int64_t>& offsets, int64_t* counts, int64_t* differ) {
  const uint8_t* a = reinterpret_cast<const uint8_t*>(a_in);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(b_in);
  const int64_t segments = static_cast<int64_t>(offsets.size()) - 1;
  // One task per (ratio, segment); a parallel region only pays off past ~256K mask entries.
  const int64_t tasks = m * segments;
  const int64_t grain = m * n >= (1 << 18) ? std::max<int64_t>(1, tasks / (4 * at::get_num_threads())) : tasks;
  at::parallel_for(0, tasks, std::max<int64_t>(grain, 1), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j = task / segments, sg = task % segments;
      const uint8_t* ra = a + j * n;
      const int64_t lo = offsets[sg], hi = offsets[sg + 1];
      if (differ) {
        const uint8_t* rb = b + j * n;
        counts[task] = count_true(ra, rb, lo, hi, [](uint64_t x, uint64_t y) { return x & y; });
        differ[task] = count_true(ra, rb, lo, hi, [](uint64_t x, uint64_t y) { return x ^ y; });
      } else {
        counts[task] = count_true(ra, nullptr, lo, hi, [](uint64_t x, uint64_t) { return x; });
      }
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

