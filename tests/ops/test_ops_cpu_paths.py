"""The CPU kernels' internal paths, each checked against another path or the oracle.

- Row kernels: the AVX-512 and AVX2 kernels (picked at run time) and the portable ones must give
  the same bits, since all sum element j of a row into lane j % 16 and fold the lanes in one
  fixed tree.
- global_masks: the radix select descends one 11-bit digit at a time into the buckets that hold
  the wanted ranks; inputs whose keys share many leading bits (scores a few ulps apart), heavy
  ties at the k-th key and duplicated ratios walk every level and the tie fix-up, and must give
  the reference's masks and thresholds exactly.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import epi_fast.ops.reference as reference
from epi_fast import ops as _ops
from epi_fast.ops._ext import _C

RATIOS_9 = [i / 10 for i in range(1, 10)]


@contextlib.contextmanager
def simd_level(level: str):
    previous = _C.set_cpu_simd_level(level)
    try:
        yield
    finally:
        _C.set_cpu_simd_level(previous)


def _supported(level: str) -> bool:
    with simd_level(level):
        return _C.cpu_simd() == level


# Each SIMD kernel set is compared with the portable one, on CPUs that have it.
over_simd_levels = pytest.mark.parametrize("level", [
    pytest.param(level, marks=pytest.mark.skipif(not _supported(level), reason=f"this CPU has no {level} kernels"))
    for level in ("avx2", "avx512")
])


def test_simd_switch_reports_and_restores():
    previous = _C.set_cpu_simd(False)
    try:
        assert _C.cpu_simd() == "portable"
        assert _C.set_cpu_simd(True) is False  # it was off
    finally:
        _C.set_cpu_simd(previous)
    assert _C.cpu_simd() in ("avx512", "avx2", "portable")
    with simd_level("avx2"):
        assert _C.cpu_simd() in ("avx2", "portable")
        with simd_level("portable"):
            assert _C.cpu_simd() == "portable"
        assert _C.cpu_simd() in ("avx2", "portable")
    with pytest.raises(ValueError, match="unknown SIMD level 'sse'"):
        _C.set_cpu_simd_level("sse")


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, what
    nan_a, nan_b = a.isnan(), b.isnan()
    assert torch.equal(nan_a, nan_b), f"{what}: NaN positions differ"
    bits_a = a[~nan_a].view(torch.int32)
    bits_b = b[~nan_b].view(torch.int32)
    bad = (bits_a != bits_b).nonzero().flatten()
    assert bad.numel() == 0, f"{what}: {bad.numel()} values differ, first at {bad[:5].tolist()}: " \
                             f"{a[~nan_a][bad[:5]].tolist()} vs {b[~nan_b][bad[:5]].tolist()}"


def _layers(dtype, seed, special=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(c, 1 + (c * 7) % 5) for c in range(1, 41)]  # every row length 1..40
    shapes += [(3, 63), (5, 64), (4, 65), (9, 147), (2, 576), (3, 1000), (1, 4608)]
    out = []
    for rows, cols in shapes:
        t = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g) * 3)
        if special:
            flat = t.view(-1)
            picks = torch.randint(0, flat.numel(), (max(1, flat.numel() // 7),), generator=g)
            values = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, 3e38, -3e38])
            flat[picks] = values[torch.randint(0, len(values), (picks.numel(),), generator=g)]
        out.append(t.to(dtype))
    return out


@over_simd_levels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "special-values"])
def test_simd_and_portable_scores_agree_bitwise(level, dtype, criterion, special):
    layers = _layers(dtype, seed=3, special=special)
    with simd_level(level):
        fast = _ops.channel_scores(layers, criterion)
    with simd_level("portable"):
        portable = _ops.channel_scores(layers, criterion)
    assert_same_bits(fast, portable, f"{criterion} {dtype}")


@over_simd_levels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_simd_and_portable_abs_agree_bitwise(level, dtype):
    vectors = [torch.randn(n).to(dtype) for n in (1, 7, 16, 33, 1000)]
    with simd_level(level):
        fast = _ops.channel_scores(vectors, "abs")
    with simd_level("portable"):
        portable = _ops.channel_scores(vectors, "abs")
    assert_same_bits(fast, portable, f"abs {dtype}")


@over_simd_levels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["finite", "special-values"])
def test_simd_and_portable_taylor_agree_bitwise(level, dtype, special):
    params = _layers(dtype, seed=5, special=special)
    grads = _layers(dtype, seed=6, special=special)
    with simd_level(level):
        fast = _ops.taylor_scores(params, grads)
    with simd_level("portable"):
        portable = _ops.taylor_scores(params, grads)
    assert_same_bits(fast, portable, f"taylor {dtype}")


@over_simd_levels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_simd_and_portable_taylor_agree_bitwise_on_1d_tensors(level, dtype):
    # BatchNorm weight and bias: one element per channel, where the AVX2 path multiplies
    # directly instead of folding lanes; signed zeros, underflow, inf and NaN included.
    g = torch.Generator().manual_seed(8)
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("inf"), float("nan"), -2.0, 3.0])
    params = [torch.randn(n, generator=g).to(dtype) for n in (1, 7, 64, 300)] + [special.to(dtype)]
    grads = [torch.randn(n, generator=g).to(dtype) for n in (1, 7, 64, 300)] + [special.flip(0).to(dtype)]
    offsets = [0, 1, 8, 72, 72]  # the last two share channels, as a BN's weight and bias do
    with simd_level(level):
        fast = _ops.taylor_scores(params, grads, offsets, 372, mode="abs")
        acc_fast = torch.zeros(372)
        _ops.taylor_accumulate_(acc_fast, torch.zeros(1, dtype=torch.int64), params[:4], grads[:4], offsets[:4])
    with simd_level("portable"):
        portable = _ops.taylor_scores(params, grads, offsets, 372, mode="abs")
        acc_port = torch.zeros(372)
        _ops.taylor_accumulate_(acc_port, torch.zeros(1, dtype=torch.int64), params[:4], grads[:4], offsets[:4])
    assert_same_bits(fast, portable, f"taylor 1-D {dtype}")
    assert_same_bits(acc_fast, acc_port, f"taylor_accumulate_ 1-D {dtype}")


def test_scores_match_reference_with_every_kernel():
    layers = _layers(torch.float32, seed=11)
    expected = reference.channel_scores(layers, "l2")
    for level in ("avx512", "avx2", "portable"):
        with simd_level(level):
            torch.testing.assert_close(_ops.channel_scores(layers, "l2"), expected, rtol=1e-5, atol=1e-6)


# --- global_masks: the radix select's levels and the tie fix-up --------------------------------

def _ulps_apart(n: int, spread: int, seed: int) -> torch.Tensor:
    """Scores that are 1.0 plus 0..spread-1 ulps: every key shares its top 32 - log2(spread) bits."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(0, spread, (n,), generator=g, dtype=torch.int32)
    return (torch.tensor(1.0).view(torch.int32) + steps).view(torch.float32)


def _cases():
    g = torch.Generator().manual_seed(0)
    yield "tiny-65", torch.randn(65, generator=g)
    yield "normal-5k", torch.randn(5000, generator=g).abs()
    yield "ulps-2-whole-descent", _ulps_apart(3000, 2, 1)  # two distinct keys, n >> 64: heavy ties
    yield "ulps-1000-level-1", _ulps_apart(4000, 1000, 2)  # one level-0 bucket, several level-1
    yield "ulps-5000-level-2", _ulps_apart(20000, 5000, 3)
    yield "few-values", torch.randint(0, 4, (7000,), generator=g).float()
    yield "all-equal", torch.full((1000,), 0.25)
    yield "signed-zeros-infs", torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1.0, -1.0] * 200)
    yield "wide-range", torch.randn(70000, generator=g) * torch.exp(torch.randn(70000, generator=g) * 10)


CASES = list(_cases())


@pytest.mark.parametrize("name, scores", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("min_keep", [0, 1, 3])
def test_global_masks_radix_select_matches_reference(name, scores, min_keep):
    n = scores.numel()
    sizes = [n // 4, n // 3, n - n // 4 - n // 3]
    all_ratios = RATIOS_9 + [0.0, 0.5, 0.5, 0.05]  # k = 0 and a duplicated ratio
    for segments in (sizes, None):
        keep = min_keep if segments is not None else 0
        removable = n - sum(min(s, keep) for s in (segments or []))
        ratios = [p for p in all_ratios if math.floor(p * n + 0.5) <= removable]
        ratios.append(removable / n - 1e-12)  # k = every removable channel: the largest real key
        assert math.floor(ratios[-1] * n + 0.5) == removable
        got_m, got_t = _ops.global_masks(scores, ratios, segments, keep)
        exp_m, exp_t = reference.global_masks(scores, ratios, segments, keep)
        assert torch.equal(got_m, exp_m), f"{name}: masks differ (segments={segments is not None}, min_keep={keep})"
        assert torch.equal(got_t.view(torch.int32), exp_t.view(torch.int32)), f"{name}: thresholds differ"


def test_global_masks_every_k_on_a_small_tied_vector():
    scores = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 2.0, 0.5, 1.0] * 10)  # n = 80 > 64: radix path
    n = scores.numel()
    ratios = [k / n for k in range(n)]
    got_m, got_t = _ops.global_masks(scores, ratios)
    exp_m, exp_t = reference.global_masks(scores, ratios)
    assert torch.equal(got_m, exp_m)
    assert torch.equal(got_t, exp_t)
    assert got_m.logical_not().sum(dim=1).tolist() == list(range(n))


@pytest.mark.parametrize("n", [1 << 16, (1 << 16) + 1, 3 * (1 << 16) + 17])
def test_global_masks_parallel_fill_chunks(n):
    # Above 2^18 mask entries the fill runs in parallel chunks of 2^16 channels.
    scores = torch.randint(0, 50, (n,)).float()  # ties that cross chunk boundaries
    got_m, got_t = _ops.global_masks(scores, RATIOS_9, [n // 2, n - n // 2], 2)
    exp_m, exp_t = reference.global_masks(scores, RATIOS_9, [n // 2, n - n // 2], 2)
    assert torch.equal(got_m, exp_m)
    assert torch.equal(got_t, exp_t)


@pytest.mark.parametrize("m, n", [(1, 10), (9, 1000), (3, (1 << 24) + 5)])
def test_layer_counts_and_overlap_match_reference(m, n):
    g = torch.Generator().manual_seed(n)
    a = torch.rand(m, n, generator=g) > 0.3
    b = torch.rand(m, n, generator=g) > 0.6
    sizes = [n // 3, 0, n - n // 3]
    assert torch.equal(_ops.layer_counts(a, sizes), reference.layer_counts(a, sizes))
    got = _ops.mask_overlap(a, b, sizes)
    exp = reference.mask_overlap(a, b, sizes)
    assert torch.equal(got[0], exp[0]) and torch.equal(got[1], exp[1])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 255 * 8 - 1, 255 * 8, 255 * 8 + 1, 3 * 255 * 8 + 5])
def test_counts_word_at_a_time_edges(n):
    # The CPU counts read 8 mask bytes per word and fold the byte counters every 255 words:
    # lengths around those sizes, segments that split words, empty masks and segments.
    g = torch.Generator().manual_seed(n)
    a, b = torch.rand(3, n, generator=g) > 0.5, torch.rand(3, n, generator=g) > 0.3
    for sizes in ([n], [n // 3, 0, n - n // 3], [0, n]):
        assert torch.equal(_ops.layer_counts(a, sizes), reference.layer_counts(a, sizes))
        got, exp = _ops.mask_overlap(a, b, sizes), reference.mask_overlap(a, b, sizes)
        assert torch.equal(got[0], exp[0]) and torch.equal(got[1], exp[1]), sizes
    full = torch.ones(2, n, dtype=torch.bool)
    assert _ops.layer_counts(full, [n]).tolist() == [[n], [n]]
