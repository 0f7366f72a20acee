"""The CPU kernels' shared paths: results must not depend on how the CPU runs them.

These tests span the families because the paths they check are shared: one set of SIMD row
kernels (one switch, ``_C.set_cpu_simd_level``) serves ``channel_scores`` and the Taylor
operators, and the thread count applies to every CPU kernel. The CPU paths of one family are in
that family's file (global_masks' radix select in test_masks.py, the counts' word-at-a-time loop
in test_counts.py).

- Row kernels: the AVX-512 and AVX2 kernels (picked at run time) and the portable ones must give
  the same bits, since all sum element j of a row into lane j % 16 and fold the lanes in one
  fixed tree.
- Thread count: the scores, Taylor and mask operators give bitwise identical results with one
  thread and with several (CONTRACTS).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import epi_fast.ops.reference as reference
from epi_fast import ops as _ops
from epi_fast.ops._ext import _C


# -- SIMD levels: the row kernels give the same bits at every level ----------------------------

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


# -- thread count ------------------------------------------------------------------------------

def test_results_do_not_depend_on_thread_count(impl):
    # CONTRACTS: "Results do not depend on the thread count" -> bitwise identical, not just close.
    if impl.device.type != "cpu":
        pytest.skip("thread count applies to the CPU implementations")
    gen = torch.Generator().manual_seed(4)
    tensors = [torch.randn(r, 33, generator=gen) for r in torch.randint(1, 9, (500,), generator=gen).tolist()]
    tensors.append(torch.randn(4096, 1024, generator=gen))
    grads = [torch.randn(t.shape, generator=gen) for t in tensors]
    n = sum(t.shape[0] for t in tensors)
    scores = torch.randint(0, 50, (n,), generator=gen).float()
    sizes = [t.shape[0] for t in tensors]

    def run():
        acc, skipped = torch.zeros(n), torch.zeros(1, dtype=torch.int64)
        impl.ops.taylor_accumulate_(acc, skipped, tensors, grads)
        return [impl.ops.channel_scores(tensors, "l2"), impl.ops.channel_scores(tensors, "l1"),
                impl.ops.taylor_scores(tensors, grads), acc,
                *impl.ops.global_masks(scores, [0.1, 0.5, 0.9], sizes, 1)]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, before))
        many = run()
    finally:
        torch.set_num_threads(before)
    for i, (a, b) in enumerate(zip(one, many)):
        assert torch.equal(a, b), f"{impl.name}: result {i} differs between 1 and {max(2, before)} threads"
