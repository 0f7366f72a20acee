"""epi_fast.testing's comparisons, which the operator tests and the benchmarks share.

Not a family's test: every family's file (and the benchmarks) compares through these helpers, so
they are tested once, here.
"""

from __future__ import annotations

import math

import torch

from epi_fast.testing import RTOL, U, close, equal, score_rtol


def test_equal_needs_dtype_shape_and_values():
    a = torch.tensor([1, 2, 3])
    assert equal(a, a.clone())
    assert not equal(a, a.int())  # same values, another dtype
    assert not equal(a, a.reshape(1, 3))
    assert not equal(a, torch.tensor([1, 2, 4]))
    assert equal((a, torch.tensor([True])), [a.clone(), torch.tensor([True])])
    assert not equal((a,), (a, a))


def test_close_reads_float32_on_the_cpu():
    a = torch.tensor([1.0, math.nan, math.inf])
    assert close(a, a.clone(), rtol=0, atol=0)
    assert not close(a, a.clone(), rtol=0, atol=0, equal_nan=False)
    assert close(torch.tensor([1.0]).half(), torch.tensor([1.0005]), rtol=1e-3, atol=0)
    assert not close(torch.tensor([1.0]), torch.tensor([1.0, 1.0]), rtol=1, atol=1)


def test_score_rtol_grows_with_long_rows():
    assert score_rtol(1) == RTOL
    assert score_rtol(4608) == (4608 / 8 + 32) * U > RTOL
