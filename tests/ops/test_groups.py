"""The groups family, ``group_reduce``: its hand-computed cases, error table
(``GROUP_REDUCE``), raw-operator messages and property tests, as tests/ops/_helpers.py
describes them. The reference's own oracle: ``math.fsum`` and ``max`` in Python. Maxima are
compared exactly; the bound on sums and means scales with the sum of the magnitudes.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import epi_fast.ops.reference as R
from _helpers import (F32, I64, INF, META, NAN, OP, error_params, fast, message_params, raised, s8, scores,
                      scores_equal, values)
from epi_fast.testing import U, assert_bounded, assert_exact


# -- hand-computed cases -----------------------------------------------------------------------

def _groups(impl):
    # group 0 = members [0, 3], group 1 = [1], group 2 = [2, 4, 5]
    return impl.t([0, 2, 3, 6], torch.int64), impl.t([0, 3, 1, 2, 4, 5], torch.int64)


@pytest.mark.parametrize(
    "reduce, expected",
    [("sum", [5.0, 2.0, 2.5]), ("mean", [2.5, 2.0, 2.5 / 3]), ("max", [4.0, 2.0, 3.0])],
    ids=["sum", "mean", "max"],
)
def test_group_reduce_hand_computed(impl, reduce, expected):
    scores = impl.t([1.0, 2.0, 3.0, 4.0, -1.0, 0.5])
    out = impl.ops.group_reduce(scores, *_groups(impl), reduce)
    assert out.dtype == F32 and out.shape == (3,)
    if reduce == "max":
        assert_exact(out, torch.tensor(expected), impl.name)
    else:
        scores_equal(impl, out, expected)


def test_group_reduce_default_is_sum(impl):
    scores = impl.t([1.0, 2.0, 3.0, 4.0, -1.0, 0.5])
    scores_equal(impl, impl.ops.group_reduce(scores, *_groups(impl)), [5.0, 2.0, 2.5])


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_group_reduce_nan_propagates(impl, reduce):
    # NaN first in group 0 (member 4) and last in group 2 (member 5): both groups are NaN,
    # whatever the reduction (fmax would drop it; the contract propagates it).
    scores = impl.t([1.0, 2.0, 3.0, 4.0, NAN, NAN])
    ptr, idx = impl.t([0, 2, 3, 6], torch.int64), impl.t([4, 0, 1, 2, 3, 5], torch.int64)
    out = impl.ops.group_reduce(scores, ptr, idx, reduce).cpu()
    assert math.isnan(out[0]) and math.isnan(out[2])
    assert out[1] == 2.0


def test_group_reduce_max_infinities_and_repeats(impl):
    # a group of only -inf is -inf; a member may appear in several groups and twice in one.
    scores = impl.t([-INF, 5.0, INF, -2.0])
    ptr, idx = impl.t([0, 1, 4, 6], torch.int64), impl.t([0, 1, 3, 1, 2, 2], torch.int64)
    assert_exact(impl.ops.group_reduce(scores, ptr, idx, "max"), torch.tensor([-INF, 5.0, INF]), impl.name)
    scores_equal(impl, impl.ops.group_reduce(scores, ptr, idx, "sum"), [-INF, 8.0, INF])


# -- error table: (id, call(impl, ops), exception, match) --------------------------------------

def i64(impl, values):
    return torch.tensor(values, dtype=I64, device=impl.device)


GROUP_REDUCE = [
    ("scores-2d", lambda i, o: o.group_reduce(scores(i).reshape(2, 2), i64(i, [0, 1]), i64(i, [0]), "sum"),
     ValueError, r"scores must be 1-D \(one score per channel\), got shape \(2, 2\)"),
    ("scores-float64", lambda i, o: o.group_reduce(scores(i).double(), i64(i, [0, 1]), i64(i, [0]), "sum"),
     TypeError, r"scores must be float32, got torch.float64"),
    ("scores-not-tensor", lambda i, o: o.group_reduce([1.0, 2.0], i64(i, [0, 1]), i64(i, [0]), "sum"),
     TypeError, r"scores must be a tensor, got list"),
    ("unknown-reduce", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 1]), i64(i, [0]), "min"),
     ValueError, r"unknown reduce 'min'; expected one of 'sum', 'mean', 'max'"),
    ("group-ptr-int32", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 1]).int(), i64(i, [0]), "sum"),
     TypeError, r"group_ptr must be a 1-D int64 tensor"),
    ("member-idx-list", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 1]), [0], "sum"),
     TypeError, r"member_idx must be a 1-D int64 tensor"),
    ("group-ptr-device", lambda i, o: o.group_reduce(scores(i), torch.tensor([0, 1], device=META), i64(i, [0]), "sum"),
     ValueError, r"group_ptr is on meta, scores on"),
    ("one-entry-ptr", lambda i, o: o.group_reduce(scores(i), i64(i, [0]), i64(i, []), "sum"),
     ValueError, r"group_ptr needs at least two entries"),
    ("ptr-not-from-0", lambda i, o: o.group_reduce(scores(i), i64(i, [1, 3]), i64(i, [0, 1, 2]), "sum"),
     ValueError, r"group_ptr must start at 0 and end at len\(member_idx\)=3, got 1..3"),
    ("ptr-short-of-end", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 2]), i64(i, [0, 1, 2]), "max"),
     ValueError, r"end at len\(member_idx\)=3, got 0..2"),
    ("empty-group", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 2, 2, 3]), i64(i, [0, 1, 2]), "mean"),
     ValueError, r"group_ptr must increase strictly: every group needs at least one member"),
    ("member-out-of-range", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 2]), i64(i, [0, 5]), "sum"),
     ValueError, r"member_idx holds 0..5, outside the 4 scores"),
    ("member-negative", lambda i, o: o.group_reduce(scores(i), i64(i, [0, 2]), i64(i, [-1, 2]), "sum"),
     ValueError, r"member_idx holds -1..2, outside the 4 scores"),
]


ERRORS = error_params(("group_reduce", GROUP_REDUCE))


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_bad_arguments(impl, call, exc, match):
    with pytest.raises(exc, match=match):
        call(impl, impl.ops)


# -- raw messages: (id, the raw operator call, the reference call with the same meaning) -------

CASES = [
    ("groups-scores-2d", lambda: OP.group_reduce(s8().reshape(2, 4), torch.tensor([0, 1]), torch.tensor([0]), "sum"),
     lambda: R.group_reduce(s8().reshape(2, 4), torch.tensor([0, 1]), torch.tensor([0]), "sum")),
    ("groups-scores-half", lambda: OP.group_reduce(s8().half(), torch.tensor([0, 1]), torch.tensor([0]), "sum"),
     lambda: R.group_reduce(s8().half(), torch.tensor([0, 1]), torch.tensor([0]), "sum")),
    ("groups-reduce", lambda: OP.group_reduce(s8(), torch.tensor([0, 1]), torch.tensor([0]), "median"),
     lambda: R.group_reduce(s8(), torch.tensor([0, 1]), torch.tensor([0]), "median")),
    ("groups-member-2d", lambda: OP.group_reduce(s8(), torch.tensor([0, 1]), torch.tensor([[0]]), "sum"),
     lambda: R.group_reduce(s8(), torch.tensor([0, 1]), torch.tensor([[0]]), "sum")),
    ("groups-one-entry", lambda: OP.group_reduce(s8(), torch.tensor([0]), torch.tensor([], dtype=I64), "sum"),
     lambda: R.group_reduce(s8(), torch.tensor([0]), torch.tensor([], dtype=I64), "sum")),
    ("groups-ptr-ends", lambda: OP.group_reduce(s8(), torch.tensor([1, 3]), torch.tensor([0, 1, 2]), "sum"),
     lambda: R.group_reduce(s8(), torch.tensor([1, 3]), torch.tensor([0, 1, 2]), "sum")),
    ("groups-empty-group", lambda: OP.group_reduce(s8(), torch.tensor([0, 2, 2, 3]), torch.tensor([0, 1, 2]), "max"),
     lambda: R.group_reduce(s8(), torch.tensor([0, 2, 2, 3]), torch.tensor([0, 1, 2]), "max")),
    ("groups-member-range", lambda: OP.group_reduce(s8(), torch.tensor([0, 3]), torch.tensor([-2, 9, 3]), "mean"),
     lambda: R.group_reduce(s8(), torch.tensor([0, 3]), torch.tensor([-2, 9, 3]), "mean")),
]


@pytest.mark.parametrize("raw, ref", message_params(CASES))
def test_operator_says_what_the_reference_says(raw, ref):
    assert raised(raw) == raised(ref)


# -- property tests ----------------------------------------------------------------------------

@st.composite
def group_case(draw):
    n = draw(st.integers(1, 60))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=20))
    kind = draw(st.sampled_from(["normal", "ties", "special"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, sizes, kind, seed


def brute_group_reduce(scores, ptr, idx, reduce):
    s, ptr, idx = scores.tolist(), ptr.tolist(), idx.tolist()
    out = []
    for g in range(len(ptr) - 1):
        xs = [s[i] for i in idx[ptr[g]:ptr[g + 1]]]
        if reduce == "max":
            out.append(math.nan if any(math.isnan(x) for x in xs) else max(xs))
        else:
            tot = math.fsum(xs) if all(math.isfinite(x) for x in xs) else sum(xs)
            out.append(tot / len(xs) if reduce == "mean" else tot)
    return torch.tensor(out, dtype=torch.float64)


@fast(60)
@given(case=group_case(), reduce=st.sampled_from(["sum", "mean", "max"]))
def test_group_reduce(impl, case, reduce):
    n, sizes, kind, seed = case
    gen = torch.Generator().manual_seed(seed)
    scores = values((n,), kind, gen, 10.0)
    ptr = torch.tensor([0] + sizes).cumsum(0)
    idx = torch.randint(n, (sum(sizes),), generator=gen)
    got = impl.ops.group_reduce(scores.to(impl.device), ptr.to(impl.device), idx.to(impl.device), reduce)
    assert got.dtype == F32 and got.shape == (len(sizes),)
    expected = R.group_reduce(scores, ptr, idx, reduce) if impl.compiled else brute_group_reduce(scores, ptr, idx, reduce)
    if reduce == "max":
        torch.testing.assert_close(got.cpu(), expected.float(), rtol=0, atol=0, equal_nan=True)
    else:
        mag = brute_group_reduce(scores.abs(), ptr, idx, "sum").nan_to_num(0.0, 0.0, 0.0)
        length = torch.tensor(sizes, dtype=torch.float64)
        bound = (length + 2) * 2 * U * mag / (length if reduce == "mean" else 1)
        assert_bounded(got, expected, bound, f"{impl.name} {reduce}")
