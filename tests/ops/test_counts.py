"""The counts family, ``layer_counts`` and ``mask_overlap``: their hand-computed cases, error
table (``COUNTS``), raw-operator messages and property tests, as tests/ops/_helpers.py
describes them, and the CPU counts' word-at-a-time paths. Counts are compared exactly; the
reference's own oracle: Python sums over the mask entries.

CPU paths (called on the CPU operator and the reference directly): the CPU counts read 8 mask
bytes per word and fold the byte counters every 255 words; mask lengths around those sizes,
segments that split words and masks past 2^24 entries must give the reference's counts exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import epi_fast.ops.reference as R
from _helpers import META, OP, bmask, cpu_bmask, error_params, fast, masks_of, message_params, raised
from epi_fast import ops as _ops
from epi_fast.testing import assert_exact


# -- hand-computed cases -----------------------------------------------------------------------

def test_layer_counts(impl):
    masks = impl.t(masks_of(["10110", "00111"]))
    out = impl.ops.layer_counts(masks, [2, 0, 3])
    assert_exact(out, torch.tensor([[1, 0, 2], [0, 0, 3]]), impl.name)
    assert out.device.type == impl.device.type
    # a 1-D mask is one row
    assert_exact(impl.ops.layer_counts(masks[1], torch.tensor([5])), torch.tensor([[3]]), impl.name)


def test_layer_counts_of_global_masks(impl):
    masks, _ = impl.ops.global_masks(impl.t([1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0]), [0.25, 0.5],
                                     segment_sizes=[3, 2, 1, 2])
    assert_exact(impl.ops.layer_counts(masks, [3, 2, 1, 2]), torch.tensor([[3, 1, 1, 1], [1, 1, 1, 1]]), impl.name)


def test_mask_overlap(impl):
    a = impl.t(masks_of(["1101", "0011"]))
    b = impl.t(masks_of(["1011", "0110"]))
    inter, diff = impl.ops.mask_overlap(a, b, [1, 3])
    # row 0: seg0 a=1 b=1 -> inter 1, diff 0; seg1 a=101 b=011 -> inter 1, diff 2
    # row 1: seg0 0/0; seg1 a=011 b=110 -> inter 1, diff 2
    assert_exact(inter, torch.tensor([[1, 1], [0, 1]]), impl.name)
    assert_exact(diff, torch.tensor([[0, 2], [0, 2]]), impl.name)
    inter, diff = impl.ops.mask_overlap(a, b)  # no segments: one segment of all N
    assert_exact(inter, torch.tensor([[2], [1]]), impl.name)
    assert_exact(diff, torch.tensor([[2], [2]]), impl.name)
    inter, diff = impl.ops.mask_overlap(a[0], b[0], [0, 4, 0])  # 1-D masks, empty segments
    assert_exact(inter, torch.tensor([[0, 2, 0]]), impl.name)
    assert_exact(diff, torch.tensor([[0, 2, 0]]), impl.name)


# -- error table: (id, call(impl, ops), exception, match) --------------------------------------

COUNTS = [
    ("counts-not-bool", lambda i, o: o.layer_counts(bmask(i, 2, 4).to(torch.uint8), [2, 2]), TypeError, r"masks must be bool, got torch.uint8"),
    ("counts-float-masks", lambda i, o: o.layer_counts(bmask(i, 2, 4).float(), [2, 2]), TypeError, r"masks must be bool, got torch.float32"),
    ("counts-3d", lambda i, o: o.layer_counts(bmask(i, 1, 2, 4), [2, 2]), ValueError, r"masks must be \[ratios, channels\], got shape \(1, 2, 4\)"),
    ("counts-not-tensor", lambda i, o: o.layer_counts([[True, False]], [2]), TypeError, r"masks must be a tensor, got list"),
    ("counts-sizes-do-not-add-up", lambda i, o: o.layer_counts(bmask(i, 2, 4), [2, 1]), ValueError, r"segment_sizes add up to 3, but there are 4 channels"),
    ("counts-size-negative", lambda i, o: o.layer_counts(bmask(i, 2, 4), [5, -1]), ValueError, r"segment_sizes\[1\] = -1 is negative"),
    ("counts-sizes-empty", lambda i, o: o.layer_counts(bmask(i, 2, 4), []), ValueError, r"segment_sizes is empty"),
    ("overlap-shape", lambda i, o: o.mask_overlap(bmask(i, 1, 4), bmask(i, 1, 3)), ValueError, r"a has shape \(1, 4\) but b \(1, 3\)"),
    ("overlap-rows", lambda i, o: o.mask_overlap(bmask(i, 2, 4), bmask(i, 1, 4)), ValueError, r"a has shape \(2, 4\) but b \(1, 4\)"),
    ("overlap-device", lambda i, o: o.mask_overlap(bmask(i, 1, 4), torch.ones(1, 4, dtype=torch.bool, device=META)),
     ValueError, r"a is on .* but b on meta"),
    ("overlap-b-not-bool", lambda i, o: o.mask_overlap(bmask(i, 1, 4), bmask(i, 1, 4).int()), TypeError, r"b must be bool, got torch.int32"),
    ("overlap-a-3d", lambda i, o: o.mask_overlap(bmask(i, 1, 1, 4), bmask(i, 1, 1, 4)), ValueError, r"a must be \[ratios, channels\]"),
    ("overlap-sizes", lambda i, o: o.mask_overlap(bmask(i, 1, 4), bmask(i, 1, 4), [3]), ValueError, r"segment_sizes add up to 3, but there are 4 channels"),
]


ERRORS = error_params(("counts", COUNTS))


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_bad_arguments(impl, call, exc, match):
    with pytest.raises(exc, match=match):
        call(impl, impl.ops)


# -- raw messages: (id, the raw operator call, the reference call with the same meaning) -------

CASES = [
    ("counts-not-bool", lambda: OP.layer_counts(cpu_bmask(2, 4).to(torch.uint8), [2, 2]),
     lambda: R.layer_counts(cpu_bmask(2, 4).to(torch.uint8), [2, 2])),
    ("counts-3d", lambda: OP.layer_counts(cpu_bmask(1, 2, 4), [2, 2]), lambda: R.layer_counts(cpu_bmask(1, 2, 4), [2, 2])),
    ("counts-0d", lambda: OP.layer_counts(torch.tensor(True), [1]), lambda: R.layer_counts(torch.tensor(True), [1])),
    ("counts-sizes", lambda: OP.layer_counts(cpu_bmask(2, 4), [2, 1]), lambda: R.layer_counts(cpu_bmask(2, 4), [2, 1])),
    ("counts-sizes-1d-mask", lambda: OP.layer_counts(cpu_bmask(4), [5]), lambda: R.layer_counts(cpu_bmask(4), [5])),
    ("overlap-shape", lambda: OP.mask_overlap(cpu_bmask(2, 4), cpu_bmask(4), []), lambda: R.mask_overlap(cpu_bmask(2, 4), cpu_bmask(4))),
    ("overlap-b-dtype", lambda: OP.mask_overlap(cpu_bmask(1, 4), cpu_bmask(1, 4).double(), []),
     lambda: R.mask_overlap(cpu_bmask(1, 4), cpu_bmask(1, 4).double())),
    ("overlap-sizes", lambda: OP.mask_overlap(cpu_bmask(1, 4), cpu_bmask(1, 4), [3]), lambda: R.mask_overlap(cpu_bmask(1, 4), cpu_bmask(1, 4), [3])),
]


@pytest.mark.parametrize("raw, ref", message_params(CASES))
def test_operator_says_what_the_reference_says(raw, ref):
    assert raised(raw) == raised(ref)


def test_layer_counts_takes_a_1d_mask_as_one_row():
    m = torch.tensor([True, False, True, True])
    assert OP.layer_counts(m, [1, 3]).tolist() == [[1, 2]] == R.layer_counts(m, [1, 3]).tolist()
    both, diff = OP.mask_overlap(m, ~m, [])
    assert both.tolist() == [[0]] and diff.tolist() == [[4]]


# -- property tests ----------------------------------------------------------------------------

@fast(40)
@given(m=st.integers(1, 4), sizes=st.lists(st.integers(0, 70), min_size=1, max_size=30), seed=st.integers(0, 2**31 - 1),
       layout=st.sampled_from(["contiguous", "strided", "one_row"]))
def test_counts_and_overlap(impl, m, sizes, seed, layout):
    n = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(m, 2 * n, generator=gen) < 0.5
    b = torch.rand(m, 2 * n, generator=gen) < 0.3
    view = {"contiguous": lambda t: t[:, :n], "strided": lambda t: t[:, ::2], "one_row": lambda t: t[0, :n]}[layout]
    da, db = view(a.to(impl.device)), view(b.to(impl.device))
    ca, cb = view(a), view(b)
    rows = 1 if layout == "one_row" else m
    counts = impl.ops.layer_counts(da, sizes)
    inter, diff = impl.ops.mask_overlap(da, db, sizes)
    inter_all, diff_all = impl.ops.mask_overlap(da, db)
    if impl.compiled:
        ref_counts = R.layer_counts(ca, sizes)
        ref_inter, ref_diff = R.mask_overlap(ca, cb, sizes)
        ref_inter_all, ref_diff_all = R.mask_overlap(ca, cb)
    else:
        ca2, cb2 = ca.reshape(rows, n).tolist(), cb.reshape(rows, n).tolist()
        bounds = [0] + np.cumsum(sizes).tolist()

        def seg(f, x, y):
            return torch.tensor([[sum(f(x[r][i], y[r][i]) for i in range(bounds[s], bounds[s + 1]))
                                  for s in range(len(sizes))] for r in range(rows)], dtype=torch.int64)
        ref_counts = seg(lambda u, v: u, ca2, cb2)
        ref_inter, ref_diff = seg(lambda u, v: u and v, ca2, cb2), seg(lambda u, v: u != v, ca2, cb2)
        ref_inter_all, ref_diff_all = ref_inter.sum(1, keepdim=True), ref_diff.sum(1, keepdim=True)
    for got, ref, what in [(counts, ref_counts, "counts"), (inter, ref_inter, "intersection"), (diff, ref_diff, "differing"),
                           (inter_all, ref_inter_all, "intersection, one segment"), (diff_all, ref_diff_all, "differing, one segment")]:
        assert got.device.type == impl.device.type
        assert_exact(got, ref, f"{impl.name} {what}")
    assert (counts.sum(1).cpu() == ca.reshape(rows, n).sum(1)).all()


# -- CPU paths: counts a word at a time --------------------------------------------------------

@pytest.mark.parametrize("m, n", [(1, 10), (9, 1000), (3, (1 << 24) + 5)])
def test_layer_counts_and_overlap_match_reference(m, n):
    g = torch.Generator().manual_seed(n)
    a = torch.rand(m, n, generator=g) > 0.3
    b = torch.rand(m, n, generator=g) > 0.6
    sizes = [n // 3, 0, n - n // 3]
    assert torch.equal(_ops.layer_counts(a, sizes), R.layer_counts(a, sizes))
    got = _ops.mask_overlap(a, b, sizes)
    exp = R.mask_overlap(a, b, sizes)
    assert torch.equal(got[0], exp[0]) and torch.equal(got[1], exp[1])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 255 * 8 - 1, 255 * 8, 255 * 8 + 1, 3 * 255 * 8 + 5])
def test_counts_word_at_a_time_edges(n):
    # The CPU counts read 8 mask bytes per word and fold the byte counters every 255 words:
    # lengths around those sizes, segments that split words, empty masks and segments.
    g = torch.Generator().manual_seed(n)
    a, b = torch.rand(3, n, generator=g) > 0.5, torch.rand(3, n, generator=g) > 0.3
    for sizes in ([n], [n // 3, 0, n - n // 3], [0, n]):
        assert torch.equal(_ops.layer_counts(a, sizes), R.layer_counts(a, sizes))
        got, exp = _ops.mask_overlap(a, b, sizes), R.mask_overlap(a, b, sizes)
        assert torch.equal(got[0], exp[0]) and torch.equal(got[1], exp[1]), sizes
    full = torch.ones(2, n, dtype=torch.bool)
    assert _ops.layer_counts(full, [n]).tolist() == [[n], [n]]
