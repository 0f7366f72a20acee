"""group_reduce on CUDA: teams of 1 to 32 lanes per group (the mean group size rounded up), groups
longer than their team (several rounds), NaN in a late round, the grid-stride loop past 65,535
blocks. The CUDA kernel folds each group in member order, so its results are the CPU kernel's
bit for bit (sum, mean and max alike)."""

from __future__ import annotations

import pytest
import torch

import epi_fast.ops as ops
import epi_fast.ops.reference as R
from cuda_support import CUDA, DEV, GRID_STRIDE_WARPS

pytestmark = CUDA


def _index(sizes, n, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(sizes, dtype=torch.int64)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    idx = torch.randint(n, (int(ptr[-1]),), generator=g)
    return ptr, idx


def _same(cuda_out, cpu_out, msg):
    # the CPU's bits (NaN where the CPU has NaN)
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, rtol=0, atol=0, equal_nan=True, msg=msg)


# Group-size patterns: all singletons (team 1), small groups (teams 2 and 4), a mean of 6 with
# one group of 300 members (team 8, many rounds for one lane group), wide groups (team 32).
PATTERNS = {
    "singletons": [1] * 1000,
    "pairs": [1, 2] * 400,
    "small": [3, 4, 5, 2] * 200,
    "one_long": [6] * 500 + [300] + [1] * 20,
    "wide": [40, 33, 64, 31] * 50,
    "mixed": [1, 17, 2, 100, 3, 1, 1, 65] * 60,
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_equals_the_cpu_kernel_bit_for_bit(pattern, reduce):
    n = 5000
    scores = torch.randn(n, generator=torch.Generator().manual_seed(1)) * 10
    ptr, idx = _index(PATTERNS[pattern], n, 2)
    expected = ops.group_reduce(scores, ptr, idx, reduce)
    _same(ops.group_reduce(scores.to(DEV), ptr.to(DEV), idx.to(DEV), reduce), expected, f"{pattern} {reduce}")
    _same(ops.group_reduce_trusted(scores.to(DEV), ptr.to(DEV), idx.to(DEV), reduce), expected, "trusted")
    torch.testing.assert_close(expected, R.group_reduce(scores, ptr, idx, reduce), rtol=1e-5, atol=1e-4,
                               equal_nan=True)


@pytest.mark.sanitize
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_nan_and_inf_in_a_late_round(reduce):
    n = 400
    scores = torch.randn(n, generator=torch.Generator().manual_seed(3))
    scores[397] = float("nan")
    scores[398] = float("inf")
    scores[399] = float("-inf")
    # a mean of 39 members: teams of 32 lanes; group 1 holds 100 members (4 rounds) with the NaN
    # as its 90th (round 3), group 2 the inf as its last, group 3 -inf alone
    ptr = torch.tensor([0, 3, 103, 153, 154], dtype=torch.int64)
    idx = torch.cat([torch.arange(3), torch.arange(10, 99), torch.tensor([397]), torch.arange(100, 110),
                     torch.arange(200, 249), torch.tensor([398]), torch.tensor([399])])
    assert idx.numel() == 154 and int(idx[3 + 89]) == 397
    expected = ops.group_reduce(scores, ptr, idx, reduce)
    got = ops.group_reduce(scores.to(DEV), ptr.to(DEV), idx.to(DEV), reduce)
    _same(got, expected, reduce)
    assert torch.isnan(got[1]) and got[2] == float("inf") and got[3] == float("-inf")


@pytest.mark.large
def test_grid_stride_past_65535_blocks():
    # 17 M singleton groups take one lane each: more warps than 65,535 blocks hold
    groups = 17_000_000
    assert groups / 32 > GRID_STRIDE_WARPS
    scores = torch.randn(groups, device=DEV)
    ptr = torch.arange(groups + 1, device=DEV)
    idx = torch.randperm(groups, device=DEV)
    for reduce in ("sum", "max"):
        got = ops.group_reduce_trusted(scores, ptr, idx, reduce)
        torch.testing.assert_close(got, scores[idx], rtol=0, atol=0, msg=reduce)
    # and wide groups past it: 600,000 groups of 40 members (team 32, a warp a group)
    ptr = torch.arange(0, 40 * 600_001, 40, device=DEV)
    idx = torch.randint(groups, (40 * 600_000,), device=DEV)
    got = ops.group_reduce_trusted(scores, ptr, idx, "max")
    torch.testing.assert_close(got, scores[idx].reshape(600_000, 40).amax(1), rtol=0, atol=0)


def test_repeats_bit_for_bit():
    scores = torch.randn(20000, device=DEV)
    ptr, idx = _index(PATTERNS["mixed"] * 10, 20000, 4)
    ptr, idx = ptr.to(DEV), idx.to(DEV)
    for reduce in ("sum", "mean"):
        first = ops.group_reduce_trusted(scores, ptr, idx, reduce)
        for _ in range(3):
            assert torch.equal(ops.group_reduce_trusted(scores, ptr, idx, reduce), first)
