"""Helpers that several operator-family test files share (``from _helpers import ...``), and how
those files test.

Each family file (test_scores, test_taylor, test_groups, test_masks, test_counts) holds four
kinds of test:

- Hand-computed cases: expected values are worked out by hand in the comments; inputs are small
  and exactly representable, so scores are compared with a tight tolerance and masks,
  thresholds, counts and maxima exactly.
- Error tables: every implementation raises ValueError / TypeError naming the problem. Each case
  has exactly one thing wrong, so the reference (``epi_fast.ops._checks``) and the compiled
  operators (their C++ checks, which say the same words; the wrappers check in Python only what
  the schema cannot carry) must agree on the exception type and message. Device mixing is tested
  with the "meta" device, which needs no GPU: a meta tensor routes the call to the fake kernels,
  which check with ``_checks`` too.
- Raw messages (``CASES``): the C++ checks say word for word what the reference's Python checks
  say. The error tables match messages by pattern through the public functions; here each
  operator is called raw (``torch.ops.epi_fast``, no Python in between) and its message must
  equal the reference's ``str(exception)`` exactly, with the same exception type: Python's
  spelling of dtypes, shapes, floats and strings included.
- Property tests: random inputs, every implementation against an oracle, plus invariants. For
  the ``cpu`` and ``cuda`` implementations the oracle is ``epi_fast.ops.reference``; for
  ``reference`` itself it is an independent brute force named in the family file, which guards
  the oracle. Hypothesis runs derandomized so failures reproduce; inputs are generated from a
  drawn seed (one draw per tensor, not per element) to keep examples cheap. Tolerances are
  explained in epi_fast/testing/compare.py.

All but the raw messages run on every implementation (the ``impl`` fixture, tests/conftest.py:
reference, cpu, cuda); the raw messages call the CPU operator and the reference directly.

The helpers here are grouped by the kind of test that uses them: the hand-computed cases, the
error tables (argument builders that take an ``Impl``), the raw-operator message cases (CPU
tensors, no ``Impl``) and the property tests (hypothesis settings, random tensors and layer
lists). A helper that one family file alone uses stays in that file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from epi_fast.testing import assert_scores_close

INF, NAN = math.inf, math.nan
F32, I64 = torch.float32, torch.int64
META = torch.device("meta")
HALF_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
               pytest.param(torch.bfloat16, id="bf16")]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# -- hand-computed cases -----------------------------------------------------------------------

def scores_equal(impl, actual, expected):
    assert actual.device.type == impl.device.type
    assert_scores_close(actual, torch.tensor(expected, dtype=F32), msg=impl.name)


def masks_of(rows):
    return torch.tensor([[c == "1" for c in r] for r in rows], dtype=torch.bool)


# -- error tables: cases (id, call(impl, ops), exception, match) -------------------------------

def ones(impl, *shape, dtype=F32):
    return torch.ones(shape, dtype=dtype, device=impl.device)


def scores(impl, n=4):
    return torch.arange(n, dtype=F32, device=impl.device)


def bmask(impl, *shape):
    return torch.ones(shape, dtype=torch.bool, device=impl.device)


def error_params(*groups):
    """pytest params ``call, exc, match`` with ids ``{group}-{name}``, from (group, cases) pairs."""
    return [
        pytest.param(call, exc, match, id=f"{group}-{name}")
        for group, cases in groups
        for name, call, exc, match in cases
    ]


# -- raw operator messages: cases (id, the raw operator call, the reference call) --------------

OP = torch.ops.epi_fast


def raised(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return type(info.value), str(info.value)


def cpu_ones(*shape, dtype=F32):
    return torch.ones(shape, dtype=dtype)


def cpu_pg(dtype=F32):
    return [cpu_ones(2, 3, dtype=dtype), cpu_ones(2, dtype=dtype)]


def s8():
    return torch.arange(8, dtype=F32)


def cpu_bmask(*shape):
    return torch.ones(shape, dtype=torch.bool)


def message_params(cases):
    """pytest params ``raw, ref`` with the cases' ids."""
    return [pytest.param(r, f, id=i) for i, r, f in cases]


# -- property tests ----------------------------------------------------------------------------

def fast(n: int):
    return settings(
        derandomize=True,
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- random tensors ----------------------------------------------------------------------------

TIES = torch.tensor([-1.0, -0.0, 0.0, 0.5, 1.0, 2.0])
SPECIAL = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])


def values(shape, kind: str, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """float32 values: "normal" (randn * scale), "ties" (a tiny set incl. +-0), "zeros",
    "special" (normal with some zeros, +-0, +-inf and NaN sprinkled in)."""
    if kind == "ties":
        return TIES[torch.randint(len(TIES), shape, generator=gen)]
    if kind == "zeros":
        return torch.zeros(shape)
    x = torch.randn(shape, generator=gen) * scale
    if kind == "special" and x.numel():
        hit = torch.rand(shape, generator=gen) < 0.1
        pick = SPECIAL[torch.randint(len(SPECIAL), shape, generator=gen)]
        x = torch.where(hit, pick, x)
    return x


LAYOUTS = ("contiguous", "transposed", "strided_cols", "strided_rows", "channels_last")


@dataclass
class Spec:
    """A tensor of `shape` stored as `base` and seen through `view` (so that it can be rebuilt on
    any device with the same strides)."""
    base: torch.Tensor
    view: Callable[[torch.Tensor], torch.Tensor]

    def on(self, device, dtype=None) -> torch.Tensor:
        b = self.base if dtype is None else self.base.to(dtype)
        return self.view(b.to(device))


def spec(shape, layout: str, make) -> Spec:
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        return Spec(make((shape[1], shape[0]) + shape[2:]), lambda t: t.transpose(0, 1))
    if layout == "strided_cols" and len(shape) >= 2:
        return Spec(make(shape[:-1] + (2 * shape[-1],)), lambda t: t[..., ::2])
    if layout == "strided_rows":
        return Spec(make((2 * shape[0],) + shape[1:]), lambda t: t[::2])
    if layout == "channels_last" and len(shape) == 4:
        r, c, h, w = shape
        return Spec(make((r, h, w, c)), lambda t: t.permute(0, 3, 1, 2))
    return Spec(make(shape), lambda t: t)


shapes = st.one_of(
    st.tuples(st.integers(0, 9)),                                          # BN-like vectors
    st.tuples(st.integers(0, 9), st.integers(0, 40)),                      # linear, incl. 1-row / 1-col / 0-col
    st.tuples(st.integers(1, 6), st.integers(0, 4), st.integers(1, 3), st.integers(1, 3)),  # conv
    st.tuples(st.just(1), st.integers(1, 300)),                            # one long row
    st.tuples(st.integers(1, 300), st.just(1)),                            # one column
)


@st.composite
def layer_list(draw, max_layers=6, kinds=("normal", "ties", "zeros", "special")):
    n = draw(st.integers(1, max_layers))
    shps = [draw(shapes) for _ in range(n)]
    layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(n)]
    kind = draw(st.sampled_from(kinds))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return shps, layouts, kind, scale, seed


def build(layers, count=1):
    """`count` lists of Specs with the same shapes and layouts (e.g. params and grads)."""
    shps, layouts, kind, scale, seed = layers
    gen = torch.Generator().manual_seed(seed)
    return [[spec(s, l, lambda sh: values(sh, kind, gen, scale)) for s, l in zip(shps, layouts)]
            for _ in range(count)]
