// The CPU's global select (global_masks): the k-th smallest of 32-bit order keys for several k
// at once, and the masks' bulk fill.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "epi_fast/kernel_math.h"

namespace epi_fast {
namespace cpu {

// The k-th smallest of a set of 32-bit keys, for several k at once, by radix select over the
// keys' own range: the digit of a key is (key - min) >> shift, with the shift that spreads
// [min, max] over the histogram, so the skewed keys of real scores (a few exponents) still land
// in many buckets. Protected channels carry the sentinel kProtectedKey32; it is left out of max
// and lands in the last bucket. Only the buckets that hold a wanted rank are gathered and
// examined further. Each level reads its keys three times (min/max, histogram, gather), so 9
// ratios cost about as much as 1.
struct RankKey {
  uint32_t value;  // the k-th smallest key
  int64_t below;   // keys strictly below it
  int64_t equal;   // keys equal to it
};

// ranks: ascending, distinct, each in [1, n], relative to this key set; `below` is the number of
// keys of the whole problem below this set. Writes out[i] for ranks[i].
inline void select_ranks(const uint32_t* __restrict keys, int64_t n, const int64_t* ranks, int64_t count,
                         int64_t below, RankKey* out) {
  uint32_t lo = kProtectedKey32, hi = 0;
  bool sentinel = false;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = keys[i];
    lo = std::min(lo, k);
    sentinel |= k == kProtectedKey32;
    hi = std::max(hi, k == kProtectedKey32 ? uint32_t{0} : k);
  }
  if (lo == kProtectedKey32 || (lo == hi && !sentinel)) {  // every key is equal
    for (int64_t i = 0; i < count; ++i) out[i] = {lo, below, n};
    return;
  }
  if (n <= 64) {  // a few keys: sort them
    std::vector<uint32_t> v(keys, keys + n);
    std::sort(v.begin(), v.end());
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t x = v[ranks[i] - 1];
      const int64_t first = std::lower_bound(v.begin(), v.end(), x) - v.begin();
      const int64_t last = std::upper_bound(v.begin(), v.end(), x) - v.begin();
      out[i] = {x, below + first, last - first};
    }
    return;
  }
  const bool big = n >= 4096;
  const int bits = big ? 11 : 8;
  const uint32_t bins = 1u << bits, last = bins - 1;
  const uint32_t range = hi - lo;  // every real key is in [lo, lo + range]
  const int width = range ? 32 - __builtin_clz(range) : 0;
  // Real keys spread over all the buckets; the last may hold real keys besides the sentinel,
  // and a bucket's keys span less than 2^shift, so every level narrows the range.
  const int shift = std::max(0, width - bits);
  auto digit = [&](uint32_t k) { return std::min((k - lo) >> shift, last); };
  // Four interleaved histograms for big sets: runs of keys in one bucket would otherwise
  // serialise on one counter's load-add-store.
  const int copies = big ? 4 : 1;
  std::vector<uint32_t> hist(size_t{bins} * copies, 0);
  if (big) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
      for (int c = 0; c < 4; ++c) ++hist[c * bins + digit(keys[i + c])];
    for (; i < n; ++i) ++hist[digit(keys[i])];
    for (uint32_t d = 0; d < bins; ++d) hist[d] += hist[bins + d] + hist[2 * bins + d] + hist[3 * bins + d];
  } else {
    for (int64_t i = 0; i < n; ++i) ++hist[digit(keys[i])];
  }

  struct Target {
    uint32_t digit;
    int64_t before, size, first_rank, ranks;  // ranks [first_rank, first_rank + ranks)
  };
  std::vector<Target> targets;
  int64_t cum = 0, r = 0;
  for (uint32_t d = 0; d < bins && r < count; ++d) {
    const int64_t c = hist[d];
    if (c && ranks[r] <= cum + c) {
      Target t{d, cum, c, r, 0};
      while (r < count && ranks[r] <= cum + c) ++r, ++t.ranks;
      targets.push_back(t);
    }
    cum += c;
  }
  // One pass gathers every target bucket into one buffer (bucket t at start[t]).
  std::vector<int64_t> start(targets.size() + 1, 0);
  for (size_t t = 0; t < targets.size(); ++t) start[t + 1] = start[t] + targets[t].size;
  std::vector<int32_t> slot(bins, -1);
  for (size_t t = 0; t < targets.size(); ++t) slot[targets[t].digit] = static_cast<int32_t>(t);
  std::vector<int64_t> pos(start.begin(), start.end() - 1);
  std::vector<uint32_t> buffer(start.back());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = slot[digit(keys[i])];
    if (t >= 0) buffer[pos[t]++] = keys[i];
  }
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    const Target& t = targets[ti];
    std::vector<int64_t> sub(t.ranks);
    for (int64_t i = 0; i < t.ranks; ++i) sub[i] = ranks[t.first_rank + i] - t.before;
    select_ranks(buffer.data() + start[ti], t.size, sub.data(), t.ranks, below + t.before, out + t.first_rank);
  }
}

// row[i] = key[i] > cut, over [lo, hi): the bulk of every mask.
inline void keep_above(const uint32_t* __restrict key, uint32_t cut, int64_t lo, int64_t hi, uint8_t* __restrict row) {
  for (int64_t i = lo; i < hi; ++i) row[i] = key[i] > cut;
}

}  // namespace cpu
}  // namespace epi_fast
