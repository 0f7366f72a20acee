"""The masks family, ``global_masks`` and ``global_masks_counts``: their hand-computed cases,
error tables (``GLOBAL_MASKS``, ``GLOBAL_MASKS_COUNTS``), raw-operator messages and property
tests, as tests/ops/_helpers.py describes them, and the CPU radix select's paths. Masks,
thresholds and counts are compared exactly; the ratios in the messages are printed as
``repr()`` prints them, for every float. The reference's own oracle: Python sorting of
(score, index) tuples (numpy's ``lexsort`` for the 2^20 scores).

min_keep per segment (the ``.per_segment`` overloads): hand-computed cases in every form (a
tensor on the device or the CPU, a list, a tuple, a view with a storage offset), its rows of the
error table and raw messages, and property tests against the brute force (which takes one
minimum per segment) and between the int form and a tensor filled with it.

CPU radix select (called on the CPU operator and the reference directly): global_masks descends
one 11-bit digit at a time into the buckets that hold the wanted ranks; inputs whose keys share
many leading bits (scores a few ulps apart), heavy ties at the k-th key and duplicated ratios
walk every level and the tie fix-up, and must give the reference's masks and thresholds exactly.

CUDA paths (marked ``cuda``, skipped without a GPU; ``pytest -m cuda`` collects them): each
compared with the CPU operator bit for bit: more ratios than gridDim.y holds, large segments
with min_keep >= 2 (the segmented sort), per-segment minima through each protection path, the
per-segment maximum's tie rule, NaN counts over many blocks and their precedence, storage
offsets, run-to-run determinism, a non-default stream, CPU scores with a CUDA min_keep.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import epi_fast.ops.reference as R
from _helpers import (F32, INF, NAN, OP, error_params, fast, masks_of, message_params, raised, s8, scores, values)
from epi_fast import ops as _ops
from epi_fast.testing import assert_exact


# -- hand-computed cases -----------------------------------------------------------------------

def check_masks(impl, scores, ratios, expected_rows, expected_thresholds, **kw):
    masks, thr = impl.ops.global_masks(impl.t(scores, F32), ratios, **kw)
    assert masks.device.type == impl.device.type and thr.device.type == impl.device.type
    assert_exact(masks, masks_of(expected_rows), f"{impl.name} masks")
    assert_exact(thr, torch.tensor(expected_thresholds, dtype=F32), f"{impl.name} thresholds")


SCORES10 = [5.0, 1.0, 4.0, 1.0, 3.0, 9.0, 2.0, 8.0, 0.0, 7.0]


def test_global_masks_rounding_half_up(impl):
    # p=0.25, N=10: 2.5 + 0.5 = 3.0 -> k=3: indices 8 (0.0), 1 and 3 (1.0, lower index first)
    check_masks(impl, SCORES10, 0.25, ["1010111101"], [1.0])
    # p=0.05, N=10: 0.5 + 0.5 = 1.0 -> k=1: index 8
    check_masks(impl, SCORES10, 0.05, ["1111111101"], [0.0])
    # p=0.04: 0.4 + 0.5 -> k=0
    check_masks(impl, SCORES10, [0.04], ["1111111111"], [-INF])


def test_global_masks_several_ratios_and_zero(impl):
    # ratio 0 removes nothing (threshold -inf); removal order 8, 1, 3, 6, 4, 2, 0, 9, 7, 5
    check_masks(
        impl, SCORES10, [0.0, 0.25, 0.5, 0.95],
        ["1111111111", "1010111101", "1010010101", "0000000000"],
        [-INF, 1.0, 3.0, 9.0],
    )


def test_global_masks_all_removed_without_segments(impl):
    # p = 0.96, N = 10: 9.6 + 0.5 -> k = 10 = N: allowed without segments
    check_masks(impl, [2.0, 1.0], 0.96, ["00"], [2.0])


@pytest.mark.parametrize(
    "ratios",
    [
        pytest.param(0.3, id="float"),
        pytest.param(torch.tensor([0.3], dtype=torch.float32), id="float32-tensor"),
        pytest.param(torch.tensor(0.3, dtype=torch.float64), id="float64-0d-tensor"),
        pytest.param(np.float32(0.3), id="numpy-float32"),
    ],
)
def test_global_masks_ratio_point_three(impl, ratios):
    # 0.3 * 10 + 0.5 = 3.5 whether 0.3 is the float64 or the float32 value -> k = 3
    check_masks(impl, SCORES10, ratios, ["1010111101"], [1.0])


def test_global_masks_ratio_float32_value_is_used(impl):
    # 0.35 (float64) * 10 = 3.5 -> k = 4; 0.35 stored in float32 is 0.3499999940 -> 3.4999999 -> k = 3.
    check_masks(impl, SCORES10, 0.35, ["1010110101"], [2.0])
    check_masks(impl, SCORES10, torch.tensor([0.35], dtype=torch.float32), ["1010111101"], [1.0])
    check_masks(impl, SCORES10, torch.tensor([0.35], dtype=torch.float64), ["1010110101"], [2.0])
    if impl.compiled:  # a ratios tensor on the scores' device works too
        check_masks(impl, SCORES10, torch.tensor([0.35], device=impl.device), ["1010111101"], [1.0])


def test_global_masks_ties_lower_index_first(impl):
    check_masks(impl, [2.0] * 6, 0.5, ["000111"], [2.0])
    check_masks(impl, [3.0, 1.0, 3.0, 1.0, 3.0], [0.3, 0.5], ["10101", "00101"], [1.0, 3.0])


def test_global_masks_negative_zero_equals_zero(impl):
    # -0.0 is not below +0.0: among the equal zeros the lower index goes first.
    check_masks(impl, [0.0, -0.0], 0.5, ["01"], [0.0])
    check_masks(impl, [0.0, 0.0, -0.0, -0.0, -1.0], 0.5, ["00110"], [0.0])
    check_masks(impl, [1.0, -0.0, 0.0, -0.0], 0.5, ["1001"], [0.0])


def test_global_masks_infinities(impl):
    scores = [INF, -INF, 0.0, -INF, INF, 1.0]
    # order: 1, 3 (-inf), 2 (0), 5 (1), 0, 4 (inf)
    check_masks(impl, scores, [0.2, 0.5, 0.9], ["101111", "100011", "000010"], [-INF, 0.0, INF])


def test_global_masks_segments_min_keep(impl):
    # segments [3,2,1,2]; min_keep=1 protects the highest of each: 2 (3.0), 4 (0.6), 5, and of
    # the tie 0.0/0.0 in the last segment the higher index 7. Removable in order: 6, 3, 0, 1.
    scores = [1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0]
    sizes = [3, 2, 1, 2]
    check_masks(impl, scores, [0.25, 0.5], ["11101101", "00101101"], [0.5, 2.0], segment_sizes=sizes, min_keep=1)
    # without segments the tie removes 6 then 7 first
    check_masks(impl, scores, [0.25], ["11111100"], [0.0])
    # min_keep=0 with segments protects nothing: same as without
    check_masks(impl, scores, [0.25], ["11111100"], [0.0], segment_sizes=sizes, min_keep=0)
    # min_keep is unused without segments, however large
    check_masks(impl, scores, [0.25], ["11111100"], [0.0], min_keep=100)
    # sizes as a tuple or an int64 tensor
    check_masks(impl, scores, [0.25], ["11101101"], [0.5], segment_sizes=tuple(sizes))
    check_masks(impl, scores, [0.25], ["11101101"], [0.5], segment_sizes=torch.tensor(sizes))


def test_global_masks_min_keep_larger_than_segment(impl):
    # sizes [2, 4], min_keep=3: segment 0 fully protected, segment 1 keeps 2, 4, 5 -> only 3 removable.
    scores = [0.0, 0.0, 5.0, 1.0, 7.0, 3.0]
    check_masks(impl, scores, 0.1, ["111011"], [1.0], segment_sizes=[2, 4], min_keep=3)
    # p = 0.25: 1.5 + 0.5 = 2 > 1 removable
    with pytest.raises(ValueError, match=r"removes 2 of 6 channels, but min_keep=3 per segment leaves only 1 removable"):
        impl.ops.global_masks(impl.t(scores), 0.25, segment_sizes=[2, 4], min_keep=3)


def test_global_masks_empty_segments(impl):
    # sizes [0, 3, 0, 2, 0]: protected 0 (3.0) and 3 (5.0); removable 1, 2, 4 in that order.
    check_masks(impl, [3.0, 1.0, 2.0, 5.0, 4.0], [0.2, 0.5], ["10111", "10010"], [1.0, 4.0],
                segment_sizes=[0, 3, 0, 2, 0], min_keep=1)


def test_global_masks_k_exceeds_unprotected(impl):
    # 4 of 8 removable (see test_global_masks_segments_min_keep); p = 0.6 -> k = floor(4.8 + 0.5) = 5
    with pytest.raises(ValueError, match=r"ratio 0.6 removes 5 of 8 channels, but min_keep=1 per segment leaves only 4 removable"):
        impl.ops.global_masks(impl.t([1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0]), [0.5, 0.6],
                              segment_sizes=[3, 2, 1, 2], min_keep=1)


def test_global_masks_nan_rejected(impl):
    with pytest.raises(ValueError, match=r"scores contain 2 NaN values"):
        impl.ops.global_masks(impl.t([1.0, NAN, 2.0, NAN]), 0.25)
    with pytest.raises(ValueError, match=r"scores contain 1 NaN value;"):
        impl.ops.global_masks(impl.t([NAN, 0.0]), 0.0)


def test_global_masks_noncontiguous_scores(impl):
    base = impl.t([5.0, -1.0, 1.0, -1.0, 4.0, -1.0, 1.0, -1.0])
    check_masks_view = impl.ops.global_masks(base[::2], 0.5)  # [5, 1, 4, 1] -> remove 1, 3
    assert_exact(check_masks_view[0], masks_of(["1010"]), impl.name)
    assert_exact(check_masks_view[1], torch.tensor([1.0]), impl.name)


def test_global_masks_empty_scores(impl):
    masks, thr = impl.ops.global_masks(impl.t(torch.zeros(0)), [0.0, 0.5])
    assert masks.shape == (2, 0) and masks.dtype == torch.bool
    assert_exact(thr, torch.tensor([-INF, -INF]), impl.name)


def test_global_masks_counts_is_masks_then_counts(impl):
    scores = impl.t([1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0])
    masks, thr, counts = impl.ops.global_masks_counts(scores, [0.25, 0.5], [3, 2, 1, 2])
    # Protected (each segment's highest; of the two zeros the higher index): 3.0, 0.6, 9.0 and
    # index 7. 0.25 -> k=2: 0.0 (index 6) and 0.5 go; 0.5 -> k=4: also 1.0 and 2.0.
    assert_exact(masks, masks_of(["11101101", "00101101"]), impl.name)
    assert_exact(thr, torch.tensor([0.5, 2.0]), impl.name)
    assert_exact(counts, torch.tensor([[3, 1, 1, 1], [1, 1, 1, 1]]), impl.name)
    assert counts.device.type == impl.device.type and counts.dtype == torch.int64
    # a k of zero and min_keep=0, through the same call
    masks, thr, counts = impl.ops.global_masks_counts(scores, [0.0, 0.75], [3, 2, 1, 2], min_keep=0)
    # 0.75 -> k=6 of the ascending order 0, 0, 0.5, 0.6, 1, 2: only 3.0 and 9.0 stay
    assert_exact(counts, torch.tensor([[3, 2, 1, 2], [1, 0, 1, 0]]), impl.name)
    assert_exact(thr, torch.tensor([-INF, 2.0]), impl.name)


# -- min_keep per segment: a 1-D int64 tensor (on the implementation's device or the CPU), a list
# or a tuple, one minimum per segment; a segment of size s protects min(s, its minimum).

def keep_forms(impl, keeps):
    """The forms of one per-segment min_keep: a tensor on the scores' device, a CPU tensor, a
    list, a tuple, and a view with a storage offset."""
    padded = torch.tensor([99] + list(keeps), dtype=torch.int64, device=impl.device)[1:]
    assert padded.storage_offset() == 1
    return [impl.t(keeps, torch.int64), torch.tensor(keeps, dtype=torch.int64), list(keeps), tuple(keeps), padded]


def check_per_segment(impl, scores, ratios, sizes, keeps, rows, thresholds):
    for keep in keep_forms(impl, keeps):
        check_masks(impl, scores, ratios, rows, thresholds, segment_sizes=sizes, min_keep=keep)
        counts = impl.ops.global_masks_counts(impl.t(scores, F32), ratios, sizes, keep)[2]
        assert_exact(counts, impl.ops.layer_counts(masks_of(rows).to(impl.device), sizes), f"{impl.name} counts")


def test_global_masks_min_keep_per_segment(impl):
    # segments [3, 2, 1, 2], minima [2, 0, 1, 1]: protected 2 (3.0) and 1 (2.0) of the first,
    # none of the second, 5 (9.0), and of the tie 0.0 / 0.0 the higher index 7. Removable in
    # order: 6 (0.0), 3 (0.5), 4 (0.6), 0 (1.0).
    scores = [1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0]
    check_per_segment(impl, scores, [0.25, 0.5], [3, 2, 1, 2], [2, 0, 1, 1], ["11101101", "01100101"], [0.5, 1.0])
    # 4 removable; p = 0.6 -> k = 5
    with pytest.raises(ValueError, match=r"^ratio 0.6 removes 5 of 8 channels, but the per-segment min_keep "
                                         r"leaves only 4 removable$"):
        impl.ops.global_masks(impl.t(scores), [0.5, 0.6], [3, 2, 1, 2], impl.t([2, 0, 1, 1]))


def test_global_masks_min_keep_per_segment_past_the_size(impl):
    # sizes [2, 4], minima [5, 1]: a minimum past the size protects the whole segment, as the int
    # form does (min_keep=3 on a segment of 2). Removable: 3 (1.0), 5 (3.0), 2 (5.0).
    scores = [0.0, 0.0, 5.0, 1.0, 7.0, 3.0]
    check_per_segment(impl, scores, [0.3, 0.45], [2, 4], [5, 1], ["111010", "110010"], [3.0, 5.0])
    check_per_segment(impl, scores, [0.3, 0.45], [2, 4], [2, 1], ["111010", "110010"], [3.0, 5.0])
    check_per_segment(impl, scores, [0.3, 0.45], [2, 4], [2**62, 1], ["111010", "110010"], [3.0, 5.0])
    with pytest.raises(ValueError, match=r"removes 4 of 6 channels, but the per-segment min_keep leaves only 3"):
        impl.ops.global_masks(impl.t(scores), 0.6, [2, 4], [5, 1])


def test_global_masks_min_keep_per_segment_zeros(impl):
    # every minimum 0: nothing protected, the masks of no segments at all
    scores = [1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0]
    check_per_segment(impl, scores, [0.25, 0.95], [3, 2, 1, 2], [0, 0, 0, 0], ["11111100", "00000000"], [0.0, 9.0])


def test_global_masks_min_keep_per_segment_size_one_and_empty(impl):
    # six segments of one channel, every other one kept: removable 5 (0.0), 3 (2.0), 1 (4.0)
    check_per_segment(impl, [5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [0.2, 0.5], [1] * 6, [1, 0, 1, 0, 1, 0],
                      ["111110", "101010"], [0.0, 4.0])
    # empty segments take any minimum (7 protects none of 0 channels); [0, 3, 0, 2]: 0 (3.0) of
    # the second, both of the fourth protected; removable 1 (1.0), 2 (2.0)
    check_per_segment(impl, [3.0, 1.0, 2.0, 5.0, 4.0], [0.2, 0.4], [0, 3, 0, 2], [7, 1, 0, 2],
                      ["10111", "10011"], [1.0, 2.0])


def test_global_masks_min_keep_per_segment_ties_and_signed_zeros(impl):
    # -0.0 equals +0.0: of each pair the higher index is protected, whichever sign it has
    check_per_segment(impl, [0.0, -0.0, 0.0, -0.0], [0.5], [2, 2], [1, 1], ["0101"], [0.0])
    check_per_segment(impl, [-0.0, 0.0, -0.0, 0.0], [0.5], [2, 2], [1, 1], ["0101"], [0.0])
    # two protected of three: 2 (1.0) and, of the equal zeros, 1; the threshold is +0.0
    masks, thr = impl.ops.global_masks(impl.t([-0.0, 0.0, 1.0]), 0.2, [3], impl.t([2]))
    assert_exact(masks, masks_of(["011"]), impl.name)
    assert thr.cpu().view(torch.int32).tolist() == [0], "threshold is -0.0, not +0.0"
    # all scores equal: the highest indices of each segment are protected
    check_per_segment(impl, [2.0] * 6, [0.5], [3, 3], [1, 2], ["001011"], [2.0])
    check_per_segment(impl, [2.0] * 6, [0.3], [3, 3], [2, 0], ["011011"], [2.0])


def test_global_masks_min_keep_int_equals_filled_tensor(impl):
    scores = impl.t([1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0])
    for keep in (0, 1, 2, 3):
        free = 8 - sum(min(size, keep) for size in (3, 2, 1, 2))
        ratios = [p for p in (0.0, 0.1, 0.25, 0.5) if math.floor(p * 8 + 0.5) <= free]
        a = impl.ops.global_masks_counts(scores, ratios, [3, 2, 1, 2], keep)
        b = impl.ops.global_masks_counts(scores, ratios, [3, 2, 1, 2], torch.full((4,), keep, dtype=torch.int64))
        for x, y, what in zip(a, b, ("masks", "thresholds", "counts")):
            assert_exact(y, x, f"{impl.name} {what} (min_keep={keep})")


def test_global_masks_min_keep_tensor_needs_segments(impl):
    with pytest.raises(ValueError, match=r"^min_keep holds one minimum per segment, but no segment_sizes were given$"):
        impl.ops.global_masks(scores(impl, 8), 0.5, None, impl.t([1], torch.int64))
    with pytest.raises(ValueError, match=r"no segment_sizes were given"):
        impl.ops.global_masks(scores(impl, 8), 0.5, min_keep=[1])


def test_global_masks_order_nan_before_k(impl):
    # Scores with a NaN and a k past the unprotected count: the NaN count is named first, on every
    # implementation and for both min_keep forms.
    s = impl.t([1.0, NAN, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    for keep in (3, impl.t([3, 3], torch.int64)):
        for call in (impl.ops.global_masks, impl.ops.global_masks_counts):
            with pytest.raises(ValueError, match=r"^scores contain 1 NaN value; masks are undefined$"):
                call(s, [0.5, 0.9], [4, 4], keep)


# -- error table: (id, call(impl, ops), exception, match) --------------------------------------

def gm(ratios, sizes=None, keep=1, n=8, scores_fn=None, counts=False):
    """A global_masks call; with counts=True the same through global_masks_counts, whose
    segment sizes default to one segment of all the scores."""
    def call(impl, ops):
        s = scores_fn(impl) if scores_fn else scores(impl, n)
        r = ratios(impl) if callable(ratios) else ratios
        k = keep(impl) if callable(keep) else keep
        if not counts:
            return ops.global_masks(s, r, sizes, k)
        whole = [s.numel()] if isinstance(s, torch.Tensor) else [len(s)]
        return ops.global_masks_counts(s, r, whole if sizes is None else sizes, k)
    call.args = dict(ratios=ratios, sizes=sizes, keep=keep, n=n, scores_fn=scores_fn)
    return call


GLOBAL_MASKS = [
    ("scores-2d", gm(0.5, scores_fn=lambda i: scores(i).reshape(2, 2)), ValueError, r"scores must be 1-D"),
    ("scores-float16", gm(0.5, scores_fn=lambda i: scores(i).half()), TypeError, r"scores must be float32, got torch.float16"),
    ("scores-list", gm(0.5, scores_fn=lambda i: [1.0, 2.0]), TypeError, r"scores must be a tensor, got list"),
    ("scores-nan", gm(0.5, scores_fn=lambda i: torch.tensor([1.0, math.nan, math.nan, 0.0, math.nan], device=i.device)),
     ValueError, r"scores contain 3 NaN values; masks are undefined"),
    ("ratio-negative", gm(-0.1), ValueError, r"ratio -0.1 \(ratios\[0\]\) is outside \[0, 1\)"),
    ("ratio-one", gm(1.0), ValueError, r"ratio 1.0 \(ratios\[0\]\) is outside \[0, 1\)"),
    ("ratio-1.5-in-list", gm([0.2, 1.5]), ValueError, r"ratio 1.5 \(ratios\[1\]\) is outside \[0, 1\)"),
    ("ratio-nan", gm([math.nan]), ValueError, r"ratio nan \(ratios\[0\]\) is outside \[0, 1\)"),
    ("ratio-inf", gm(math.inf), ValueError, r"ratio inf \(ratios\[0\]\) is outside \[0, 1\)"),
    ("ratio-one-float32-tensor", gm(lambda i: torch.tensor([0.5, 1.0])), ValueError, r"ratio 1.0 \(ratios\[1\]\) is outside"),
    ("ratio-float32-rounds-to-one", gm(lambda i: torch.tensor([0.99999999], dtype=F32)), ValueError, r"ratio 1.0 \(ratios\[0\]\)"),
    ("ratio-nan-tensor", gm(lambda i: torch.tensor([math.nan], dtype=torch.float64)), ValueError, r"ratio nan"),
    ("ratios-empty-list", gm([]), ValueError, r"ratios is empty: pass at least one ratio"),
    ("ratios-empty-tensor", gm(lambda i: torch.zeros(0)), ValueError, r"ratios is empty"),
    ("ratio-bool", gm(True), TypeError, r"ratios must be numbers, not bool"),
    ("ratio-bool-in-list", gm([0.1, False]), TypeError, r"ratios\[1\] is False; expected a number"),
    ("ratio-bool-tensor", gm(lambda i: torch.tensor([True])), TypeError, r"ratios tensor has dtype torch.bool"),
    ("ratio-string", gm("0.5"), TypeError, r"ratios must be a float, a sequence of floats or a 1-D tensor, got str"),
    ("ratio-string-in-list", gm([0.5, "0.1"]), TypeError, r"ratios\[1\] is '0.1'; expected a number"),
    # torch's float[] would take these as numbers: the wrapper must still refuse them
    ("ratio-tensor-in-list", gm([torch.tensor(0.5)]), TypeError, r"ratios\[0\] is tensor\(0.5000\); expected a number"),
    ("ratio-true-in-list", gm([True, 0.5]), TypeError, r"ratios\[0\] is True; expected a number"),
    ("ratios-2d-tensor", gm(lambda i: torch.full((2, 2), 0.5)), ValueError, r"ratios must be .* 1-D tensor; got a 2-D tensor"),
    ("sizes-do-not-add-up", gm(0.5, [3, 4]), ValueError, r"segment_sizes add up to 7, but there are 8 channels"),
    ("sizes-too-many", gm(0.5, [4, 4, 1]), ValueError, r"segment_sizes add up to 9, but there are 8 channels"),
    ("size-negative", gm(0.5, [9, -1]), ValueError, r"segment_sizes\[1\] = -1 is negative"),
    ("sizes-empty", gm(0.5, []), ValueError, r"segment_sizes is empty"),
    ("sizes-empty-list-ratios", gm([0.5], []), ValueError, r"segment_sizes is empty"),
    # non-negative sizes whose int64 sum wraps around to exactly 8
    ("sizes-wrap-around", gm([0.5], [2**62, 2**62, 2**62, 2**62, 8]), ValueError,
     r"segment_sizes add up to 18446744073709551624, but there are 8 channels"),
    ("sizes-float", gm(0.5, [4.0, 4.0]), TypeError, r"segment_sizes must be a sequence of integers"),
    ("sizes-float-tensor", gm(0.5, torch.tensor([4.0, 4.0])), TypeError, r"segment_sizes must hold integers, got torch.float32"),
    ("sizes-2d-tensor", gm(0.5, torch.tensor([[4, 4]])), ValueError, r"segment_sizes must be 1-D"),
    ("sizes-int", gm(0.5, 8), TypeError, r"segment_sizes must be a sequence of integers"),
    ("min-keep-negative", gm(0.5, [4, 4], -1), ValueError, r"min_keep must be a non-negative integer, got -1"),
    ("min-keep-float", gm(0.5, [4, 4], 1.5), ValueError, r"min_keep must be a non-negative integer, got 1.5"),
    ("min-keep-bool", gm(0.5, [4, 4], True), ValueError, r"min_keep must be a non-negative integer, got True"),
    ("k-exceeds-unprotected", gm([0.5, 0.9], [4, 4], 3), ValueError,
     r"ratio 0.5 removes 4 of 8 channels, but min_keep=3 per segment leaves only 2 removable"),
    ("nan-and-k-exceeds", gm([0.5, 0.9], [4, 4], 3, scores_fn=lambda i: i.t([NAN] + [1.0] * 7)), ValueError,
     r"^scores contain 1 NaN value; masks are undefined$"),
    # min_keep per segment: its form (dtype, dim), then the segment sizes, then its length and
    # entries, then the NaN count, then k
    ("keeps-float-tensor", gm(0.5, [4, 4], lambda i: i.t([1.0, 1.0])), TypeError,
     r"^min_keep tensor has dtype torch.float32; expected torch.int64$"),
    ("keeps-int32-tensor", gm(0.5, [4, 4], lambda i: i.t([1, 1], torch.int32)), TypeError,
     r"min_keep tensor has dtype torch.int32; expected torch.int64"),
    ("keeps-bool-tensor", gm(0.5, [4, 4], lambda i: i.t([True, False])), TypeError,
     r"min_keep tensor has dtype torch.bool; expected torch.int64"),
    ("keeps-2d-tensor", gm(0.5, [4, 4], lambda i: i.t([[1, 1]])), ValueError,
     r"^min_keep must be an int or a 1-D tensor \(one minimum per segment\), got shape \(1, 2\)$"),
    ("keeps-0d-tensor", gm(0.5, [4, 4], lambda i: i.t(1)), ValueError,
     r"min_keep must be an int or a 1-D tensor \(one minimum per segment\), got shape \(\)"),
    ("keeps-short", gm(0.5, [4, 4], lambda i: i.t([1])), ValueError,
     r"^min_keep must have one entry per segment \(2\), got 1$"),
    ("keeps-long", gm(0.5, [4, 4], lambda i: i.t([1, 1, 1])), ValueError,
     r"min_keep must have one entry per segment \(2\), got 3"),
    ("keeps-list-long", gm(0.5, [4, 4], [1, 1, 1]), ValueError, r"min_keep must have one entry per segment \(2\), got 3"),
    ("keeps-negative", gm(0.5, [4, 4], lambda i: i.t([1, -2])), ValueError, r"^min_keep\[1\] = -2 is negative$"),
    ("keeps-list-negative", gm(0.5, [4, 4], [-1, 0]), ValueError, r"^min_keep\[0\] = -1 is negative$"),
    ("keeps-list-float", gm(0.5, [4, 4], [1, 1.5]), TypeError, r"^min_keep\[1\] is 1.5; expected an integer$"),
    ("keeps-list-bool", gm(0.5, [4, 4], (True, 1)), TypeError, r"^min_keep\[0\] is True; expected an integer$"),
    ("keeps-list-past-int64", gm(0.5, [4, 4], [2**63, 1]), ValueError,
     r"^min_keep\[0\] = 9223372036854775808 does not fit in int64$"),
    ("keeps-k-exceeds", gm([0.25, 0.5], [4, 4], lambda i: i.t([3, 2])), ValueError,
     r"^ratio 0.5 removes 4 of 8 channels, but the per-segment min_keep leaves only 3 removable$"),
    ("keeps-list-k-exceeds", gm([0.5, 0.6], [4, 4], [4, 0]), ValueError,
     r"^ratio 0.6 removes 5 of 8 channels, but the per-segment min_keep leaves only 4 removable$"),
    # precedence: one thing wrong in each of two places, the earlier check names its own
    ("keeps-dtype-before-sizes", gm(0.5, [3, 4], lambda i: i.t([1.0, 1.0])), TypeError, r"min_keep tensor has dtype"),
    ("keeps-sizes-before-entries", gm(0.5, [3, 4], lambda i: i.t([-1, 1])), ValueError,
     r"^segment_sizes add up to 7, but there are 8 channels$"),
    ("keeps-sizes-before-length", gm(0.5, [3, 4], [1]), ValueError, r"^segment_sizes add up to 7"),
    ("keeps-ratio-before-form", gm(1.5, [4, 4], lambda i: i.t([1.0, 1.0])), ValueError, r"^ratio 1.5"),
    ("keeps-length-before-nan", gm(0.5, [4, 4], [1], scores_fn=lambda i: i.t([NAN] * 8)), ValueError,
     r"min_keep must have one entry per segment"),
    ("keeps-entries-before-nan", gm(0.5, [4, 4], [1, -1], scores_fn=lambda i: i.t([NAN] * 8)), ValueError,
     r"^min_keep\[1\] = -1 is negative$"),
    ("keeps-nan-before-k", gm([0.5, 0.9], [4, 4], lambda i: i.t([3, 3]), scores_fn=lambda i: i.t([NAN] * 2 + [1.0] * 6)),
     ValueError, r"^scores contain 2 NaN values; masks are undefined$"),
]

# Only through global_masks: global_masks_counts always has segments (its table gives them one).
GLOBAL_MASKS_ONLY = [
    ("keeps-without-segments", gm(0.5, None, lambda i: i.t([1, 1])), ValueError,
     r"^min_keep holds one minimum per segment, but no segment_sizes were given$"),
    ("keeps-list-without-segments", gm(0.5, None, [1]), ValueError, r"no segment_sizes were given"),
]


# The same refusals through global_masks_counts, and its own: segment sizes are required.
GLOBAL_MASKS_COUNTS = [
    (name, gm(**call.args, counts=True), exc, match) for name, call, exc, match in GLOBAL_MASKS
] + [
    ("sizes-none", lambda i, o: o.global_masks_counts(scores(i, 8), [0.5], None), ValueError,
     r"segment_sizes is None: counts are taken per segment"),
    ("sizes-missing", lambda i, o: o.global_masks_counts(scores(i, 8), [0.5]), TypeError, r"segment_sizes"),
]


ERRORS = error_params(("global_masks", GLOBAL_MASKS + GLOBAL_MASKS_ONLY), ("global_masks_counts", GLOBAL_MASKS_COUNTS))


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_bad_arguments(impl, call, exc, match):
    with pytest.raises(exc, match=match):
        call(impl, impl.ops)


def test_per_segment_overloads_enter_once_and_pass_the_error_on():
    # The hooks of tests/ops/test_faults.py, through the .per_segment overloads (the same hook
    # names as the default ones): one entry per call, the injected error unchanged.
    from epi_fast.ops._ext import _C

    s9 = torch.arange(9, dtype=F32)
    calls = [("global_masks", "written", lambda: _ops.global_masks(s9, [0.2, 0.5], [4, 5], torch.tensor([1, 2]))),
             ("global_masks", "written", lambda: _ops.global_masks(s9, torch.tensor([0.2]), (4, 5), [1, 2])),
             ("global_masks_counts", "masks", lambda: _ops.global_masks_counts(s9, [0.2], [4, 5], torch.tensor([1, 2]))),
             ("global_masks_counts", "written", lambda: _ops.global_masks_counts(s9, [0.2], [4, 5], [0, 3]))]
    _C._test_reset()
    try:
        for op, stage, call in calls:
            _C._test_reset()
            _C._test_arm_fault(op, stage, "value")
            with pytest.raises(ValueError) as info:
                call()
            assert str(info.value) == f"epi_fast test fault in {op} at {stage}"
            assert _C._test_calls(op) == 1
    finally:
        _C._test_disable()


# -- raw messages: (id, the raw operator call, the reference call with the same meaning) -------

CASES = [
    ("masks-scores-2d", lambda: OP.global_masks(s8().reshape(2, 4), [0.5], [], 1), lambda: R.global_masks(s8().reshape(2, 4), [0.5])),
    ("masks-scores-int", lambda: OP.global_masks(s8().long(), [0.5], [], 1), lambda: R.global_masks(s8().long(), [0.5])),
    ("masks-ratios-empty", lambda: OP.global_masks(s8(), [], [], 1), lambda: R.global_masks(s8(), [])),
    ("masks-min-keep", lambda: OP.global_masks(s8(), [0.5], [4, 4], -3), lambda: R.global_masks(s8(), [0.5], [4, 4], -3)),
    ("masks-size-negative", lambda: OP.global_masks(s8(), [0.5], [9, -1], 1), lambda: R.global_masks(s8(), [0.5], [9, -1])),
    ("masks-sizes-short", lambda: OP.global_masks(s8(), [0.5], [3, 4], 1), lambda: R.global_masks(s8(), [0.5], [3, 4])),
    ("masks-sizes-long", lambda: OP.global_masks(s8(), [0.5], [4, 4, 1], 1), lambda: R.global_masks(s8(), [0.5], [4, 4, 1])),
    ("masks-nan-1", lambda: OP.global_masks(torch.tensor([0.0, math.nan]), [0.5], [], 1),
     lambda: R.global_masks(torch.tensor([0.0, math.nan]), [0.5])),
    ("masks-nan-2", lambda: OP.global_masks(torch.tensor([math.nan, 1.0, math.nan]), [0.5], [], 1),
     lambda: R.global_masks(torch.tensor([math.nan, 1.0, math.nan]), [0.5])),
    ("masks-removable", lambda: OP.global_masks(s8(), [0.1 + 0.2, 0.7], [4, 4], 3),
     lambda: R.global_masks(s8(), [0.1 + 0.2, 0.7], [4, 4], 3)),
    ("masks-counts-removable", lambda: OP.global_masks_counts(s8(), [0.5], [4, 4], 3),
     lambda: R.global_masks_counts(s8(), [0.5], [4, 4], 3)),
    ("masks-nan-and-removable", lambda: OP.global_masks(s8().sqrt().neg().sqrt(), [0.5], [4, 4], 3),
     lambda: R.global_masks(s8().sqrt().neg().sqrt(), [0.5], [4, 4], 3)),
] + [
    # the .per_segment overloads: raw op (its schema's [] for no segments), the reference (None)
    (f"{name}-{form}", (lambda op, a: lambda: op(s8(), *a))(raw_op, args),
     (lambda fn, a: lambda: fn(s8(), *a))(ref_fn, [a if a != [] else None for a in args]))
    for name, args in [
        ("keeps-float", [[0.5], [4, 4], torch.tensor([1.0, 1.0])]),
        ("keeps-int32", [[0.5], [4, 4], torch.tensor([1, 1], dtype=torch.int32)]),
        ("keeps-2d", [[0.5], [4, 4], torch.ones(2, 1, dtype=torch.int64)]),
        ("keeps-0d", [[0.5], [4, 4], torch.tensor(1)]),
        ("keeps-no-segments", [[0.5], [], torch.tensor([1])]),
        ("keeps-short", [[0.5], [4, 4], torch.tensor([1])]),
        ("keeps-negative", [[0.5], [4, 4], torch.tensor([0, -7])]),
        ("keeps-removable", [[0.25, 0.1 + 0.2 + 0.4], [4, 4], torch.tensor([3, 2])]),
        ("keeps-size-negative", [[0.5], [9, -1], torch.tensor([1, -1])]),
        ("keeps-nothing-removable", [[0.9], [4, 4], torch.tensor([4, 4])]),
    ]
    for form, raw_op, ref_fn in [("masks", OP.global_masks.per_segment, R.global_masks),
                                 ("counts", OP.global_masks_counts.per_segment, R.global_masks_counts)]
    if not (form == "counts" and name == "keeps-no-segments")
]


@pytest.mark.parametrize("raw, ref", message_params(CASES))
def test_operator_says_what_the_reference_says(raw, ref):
    assert raised(raw) == raised(ref)


def _doubles(n: int, seed: int):
    """Doubles from random bit patterns (every exponent) and from the decimal forms that repr
    switches notation at."""
    rng = random.Random(seed)
    for _ in range(n):
        yield struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    for e in range(-8, 20):
        for m in (1.0, 1.5, 9.999999999999998, 123456789.123):
            yield m * 10.0 ** e
            yield -m * 10.0 ** e
    for k in range(-1074, 1024):  # powers of two: the rounding interval is lopsided there
        p = math.ldexp(1.0, k)
        yield from (p, -p, math.nextafter(p, math.inf), -math.nextafter(p, 0.0))
    yield from (1.0, 0.99999999, -0.0, -5e-324, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan)


def test_ratio_messages_print_floats_as_repr():
    # Every ratio outside [0, 1) is refused with its repr(); the C++ spells it the same.
    bad = [p for p in _doubles(3000, seed=1) if not 0.0 <= p < 1.0]
    assert len(bad) > 5000
    for p in bad:
        assert raised(lambda: OP.global_masks(s8(), [0.25, p], [], 1)) == raised(lambda: R.global_masks(s8(), [0.25, p]))


def test_removal_messages_print_floats_as_repr():
    # In-range ratios that remove too many: "ratio {p} removes ..." with str(p).
    rng = random.Random(2)
    ratios = [0.1 + 0.2 + 0.1, 1 / 3, 0.9999999999999999, 0.5 + 1e-12] + [rng.uniform(0.5, 1.0) for _ in range(200)]
    for p in ratios:
        assert raised(lambda: OP.global_masks(s8(), [p], [4, 4], 3)) == raised(lambda: R.global_masks(s8(), [p], [4, 4], 3))


# -- property tests ----------------------------------------------------------------------------

def brute_global_masks(scores: list[float], ratios: list[float], sizes, keep):
    """Python sorting of (score, index): the contract written out."""
    n = len(scores)
    key = {i: (scores[i] + 0.0, i) for i in range(n)}  # + 0.0: -0.0 -> +0.0
    protected = set()
    if sizes is not None:
        keeps = [keep] * len(sizes) if isinstance(keep, int) else keep  # an int, or one per segment
        start = 0
        for s, c in zip(sizes, keeps):
            members = sorted(range(start, start + s), key=key.get, reverse=True)
            protected.update(members[:c])
            start += s
    removable = sorted((i for i in range(n) if i not in protected), key=key.get)
    masks, thresholds = [], []
    for p in ratios:
        k = math.floor(p * n + 0.5)
        if k > len(removable):
            return None
        removed = removable[:k]
        gone = set(removed)
        masks.append([i not in gone for i in range(n)])
        thresholds.append(max((scores[i] for i in removed), default=-math.inf))
    return torch.tensor(masks, dtype=torch.bool).reshape(len(ratios), n), torch.tensor(thresholds, dtype=F32)


INTERESTING_RATIOS = [0.0, 0.05, 0.1, 0.25, 0.3, 0.35, 0.45, 0.5, 0.65, 0.7, 0.9, 0.95, 0.999]


@st.composite
def masks_case(draw, max_n=300):
    n = draw(st.integers(0, max_n))
    kind = draw(st.sampled_from(["normal", "ties", "ties", "special_no_nan", "few"]))
    seed = draw(st.integers(0, 2**31 - 1))
    ratio = st.one_of(st.sampled_from(INTERESTING_RATIOS), st.floats(0.0, 0.9999))  # < 1 in float32 too
    ratios = draw(st.lists(ratio, min_size=1, max_size=9))
    ratio_form = draw(st.sampled_from(["list", "float32", "float64", "scalar"]))
    if draw(st.booleans()) and n:
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=12)))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
        keep = draw(st.integers(0, 3))
    else:
        sizes, keep = None, draw(st.sampled_from([0, 1, 5]))
    return n, kind, seed, ratios, ratio_form, sizes, keep


def make_scores(n, kind, gen):
    if kind == "special_no_nan":
        x = values((n,), "special", gen)
        return torch.where(torch.isnan(x), torch.full_like(x, 3.0), x)
    if kind == "few":  # a few distinct random values: ties between non-trivial floats
        pool = torch.randn(3, generator=gen)
        return pool[torch.randint(3, (n,), generator=gen)]
    return values((n,), kind, gen)


def ratio_arg(ratios, form, device="cpu"):
    if form == "float32":
        return torch.tensor(ratios, dtype=F32, device=device)
    if form == "float64":
        return torch.tensor(ratios, dtype=torch.float64)
    if form == "scalar":
        return ratios[0]
    return list(ratios)


def stored(ratios, form):
    """The ratio values the operator must see (a float32 tensor holds rounded values)."""
    if form == "float32":
        return torch.tensor(ratios, dtype=F32).double().tolist()
    return ratios[:1] if form == "scalar" else list(ratios)


@fast(120)
@given(case=masks_case())
def test_global_masks(impl, case):
    n, kind, seed, ratios, form, sizes, keep = case
    gen = torch.Generator().manual_seed(seed)
    scores = make_scores(n, kind, gen)
    ps = stored(ratios, form)
    expected = brute_global_masks(scores.tolist(), ps, sizes, keep)
    call = lambda: impl.ops.global_masks(scores.to(impl.device), ratio_arg(ratios, form), sizes, keep)  # noqa: E731
    if expected is None:  # some k exceeds the unprotected count: both must refuse, naming it
        with pytest.raises(ValueError, match=r"removes \d+ of \d+ channels, but min_keep=\d+ per segment leaves only"):
            call()
        return
    masks, thr = call()
    assert masks.device.type == impl.device.type
    ref = R.global_masks(scores, ratio_arg(ratios, form), sizes, keep) if impl.compiled else expected
    assert_exact(masks, ref[0], f"{impl.name} masks")
    assert_exact(thr, ref[1], f"{impl.name} thresholds")
    # invariants: exactly k removed per ratio; threshold = max removed score; nested masks (the
    # protected set does not depend on the ratio, so a larger k removes a superset: always);
    # kept counts per segment add up to N - k.
    masks, thr = masks.cpu(), thr.cpu()
    ks = [math.floor(p * n + 0.5) for p in ps]
    assert (~masks).sum(1).tolist() == ks
    for j, k in enumerate(ks):
        removed = scores[~masks[j]]
        assert thr[j] == (removed.max() if k else -math.inf)
        if k and k < n and (sizes is None or keep == 0):  # protected channels may score lower
            assert bool((scores[masks[j]] >= thr[j]).all())
    order = sorted(range(len(ks)), key=ks.__getitem__)
    for a, b in zip(order, order[1:]):
        assert bool((masks[b] <= masks[a]).all()), "masks are not nested"
    if sizes is not None:
        counts = impl.ops.layer_counts(masks.to(impl.device), sizes).cpu()
        assert counts.sum(1).tolist() == [n - k for k in ks]
        assert bool((counts >= torch.tensor(sizes).clamp(max=keep)).all()), "min_keep violated"
        # the one-call form gives the same three results
        both = impl.ops.global_masks_counts(scores.to(impl.device), ratio_arg(ratios, form), sizes, keep)
        for got, want, what in zip(both, (masks, thr, counts), ("masks", "thresholds", "counts")):
            assert_exact(got.cpu(), want, f"{impl.name} global_masks_counts {what}")


@st.composite
def per_segment_case(draw, max_n=300):
    """Scores with ties, signed zeros and equal runs; segments of every size from 0 (many of
    size 1); one minimum per segment, 0 and past the segment's size included."""
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["normal", "ties", "zeros", "special_no_nan", "few"]))
    seed = draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=40)))
    else:  # mostly segments of one channel
        cuts = sorted(set(range(1, n)) - set(draw(st.lists(st.integers(1, n), max_size=n))))[:60]
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
    keep = st.one_of(st.integers(0, 3), st.sampled_from([0, 1, 2, 7, 300, 2**40]))
    keeps = draw(st.lists(keep, min_size=len(sizes), max_size=len(sizes)))
    ratios = draw(st.lists(st.one_of(st.sampled_from(INTERESTING_RATIOS), st.floats(0.0, 0.9999)), min_size=1,
                           max_size=6))
    form = draw(st.sampled_from(["tensor", "cpu-tensor", "list", "tuple"]))
    return n, kind, seed, sizes, keeps, ratios, form


def keep_arg(keeps, form, device):
    if form == "tensor":
        return torch.tensor(keeps, dtype=torch.int64, device=device)
    if form == "cpu-tensor":
        return torch.tensor(keeps, dtype=torch.int64)
    return tuple(keeps) if form == "tuple" else list(keeps)


@fast(150)
@given(case=per_segment_case())
def test_global_masks_per_segment(impl, case):
    # Every implementation against its oracle (the reference for cpu / cuda, the brute force for
    # the reference), masks and thresholds bit for bit; global_masks_counts equal to global_masks
    # then layer_counts; every segment keeps at least min(size, its minimum).
    n, kind, seed, sizes, keeps, ratios, form = case
    scores = make_scores(n, kind, torch.Generator().manual_seed(seed))
    keep = keep_arg(keeps, form, impl.device)
    call = lambda f: f(scores.to(impl.device), ratios, sizes, keep)  # noqa: E731
    expected = brute_global_masks(scores.tolist(), ratios, sizes, keeps)
    if expected is None:
        for f in (impl.ops.global_masks, impl.ops.global_masks_counts):
            with pytest.raises(ValueError, match=r"removes \d+ of \d+ channels, but the per-segment min_keep leaves only"):
                call(f)
        return
    masks, thr = call(impl.ops.global_masks)
    assert masks.device.type == impl.device.type
    want = R.global_masks(scores, ratios, sizes, torch.tensor(keeps)) if impl.compiled else expected
    assert_exact(masks, want[0], f"{impl.name} masks")
    assert_exact(thr, want[1], f"{impl.name} thresholds")
    if impl.compiled:  # the same bits as the reference (+0.0 for a zero); the brute force keeps -0.0
        assert torch.equal(thr.cpu().view(torch.int32), want[1].view(torch.int32)), f"{impl.name} thresholds (bits)"
    counts = impl.ops.layer_counts(masks, sizes)
    both = call(impl.ops.global_masks_counts)
    for got, exp, what in zip(both, (masks, thr, counts), ("masks", "thresholds", "counts")):
        assert_exact(got, exp, f"{impl.name} global_masks_counts {what}")
    floor = torch.minimum(torch.tensor(sizes), torch.tensor(keeps))
    assert bool((counts.cpu() >= floor).all()), "a segment kept fewer than its min_keep"


@fast(60)
@given(case=masks_case())
def test_global_masks_int_min_keep_equals_filled_tensor(impl, case):
    # The int form and a tensor holding that int for every segment give the same three results,
    # or the same refusal.
    n, kind, seed, ratios, form, sizes, keep = case
    if sizes is None:
        return
    scores = make_scores(n, kind, torch.Generator().manual_seed(seed)).to(impl.device)
    filled = torch.full((len(sizes),), keep, dtype=torch.int64, device=impl.device)
    try:
        a = impl.ops.global_masks_counts(scores, ratio_arg(ratios, form), sizes, keep)
    except ValueError as exc:
        free = n - sum(min(s, keep) for s in sizes)
        with pytest.raises(ValueError, match=rf"but the per-segment min_keep leaves only {free} removable$"):
            impl.ops.global_masks_counts(scores, ratio_arg(ratios, form), sizes, filled)
        assert f"min_keep={keep} per segment leaves only {free} removable" in str(exc)
        return
    b = impl.ops.global_masks_counts(scores, ratio_arg(ratios, form), sizes, filled)
    for x, y, what in zip(a, b, ("masks", "thresholds", "counts")):
        assert_exact(y, x, f"{impl.name} {what}")


def test_global_masks_per_segment_many_segments(impl):
    # 3000 layers of 0..9 channels, random minima 0..4 and some past the size
    gen = torch.Generator().manual_seed(11)
    sizes = torch.randint(0, 10, (3000,), generator=gen).tolist()
    n = sum(sizes)
    keeps = torch.randint(0, 5, (3000,), generator=gen)
    keeps[::7] = 1000
    scores = torch.randint(0, 20, (n,), generator=gen).float()
    ratios = [0.0, 0.1, 0.2, 0.3]
    masks, thr = impl.ops.global_masks(scores.to(impl.device), ratios, sizes, keeps.to(impl.device))
    if impl.compiled:
        ref_masks, ref_thr = R.global_masks(scores, ratios, sizes, keeps)
    else:
        ref_masks, ref_thr = brute_global_masks(scores.tolist(), ratios, sizes, keeps.tolist())
    assert_exact(masks, ref_masks, impl.name)
    assert_exact(thr, ref_thr, impl.name)


@fast(20)
@given(n=st.integers(1, 200), nans=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_global_masks_nan_count(impl, n, nans, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=gen)
    where = torch.randperm(n, generator=gen)[:nans]
    scores[where] = math.nan
    count = where.numel()
    with pytest.raises(ValueError, match=rf"scores contain {count} NaN value{'s' if count != 1 else ''};"):
        impl.ops.global_masks(scores.to(impl.device), [0.1, 0.5])


@pytest.mark.parametrize("kind", ["few", "normal"])
def test_global_masks_large(impl, kind):
    # 2^20 scores (radix-select territory on the GPU), many ties, 9 ratios; oracle: numpy lexsort.
    n = 1 << 20
    gen = torch.Generator().manual_seed(5)
    scores = (torch.randint(-50, 50, (n,), generator=gen).float() / 8) if kind == "few" else torch.randn(n, generator=gen)
    scores[::1000] = -0.0
    ratios = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9]
    masks, thr = impl.ops.global_masks(scores.to(impl.device), ratios)
    s = (scores + 0.0).numpy()
    order = np.lexsort((np.arange(n), s))
    for j, p in enumerate(ratios):
        k = math.floor(p * n + 0.5)
        expected = torch.ones(n, dtype=torch.bool)
        expected[torch.from_numpy(order[:k])] = False
        assert_exact(masks[j], expected, f"{impl.name} ratio {p}")
        assert thr[j].item() == (float(s[order[k - 1]]) if k else -math.inf)


def test_global_masks_many_segments(impl):
    # 2000 layers of 1..8 channels, min_keep 2, against the reference (the brute force is slow here)
    gen = torch.Generator().manual_seed(9)
    sizes = torch.randint(0, 9, (2000,), generator=gen).tolist()
    n = sum(sizes)
    scores = torch.randint(0, 20, (n,), generator=gen).float()
    ratios = torch.tensor([0.1, 0.3, 0.5], dtype=F32)
    masks, thr = impl.ops.global_masks(scores.to(impl.device), ratios, sizes, 2)
    if impl.compiled:
        ref_masks, ref_thr = R.global_masks(scores, ratios, sizes, 2)
    else:
        ref_masks, ref_thr = brute_global_masks(scores.tolist(), ratios.double().tolist(), sizes, 2)
    assert_exact(masks, ref_masks, impl.name)
    assert_exact(thr, ref_thr, impl.name)
    counts = impl.ops.layer_counts(masks, sizes).cpu()
    assert bool((counts >= torch.tensor(sizes).clamp(max=2)).all())


# -- CPU radix select: its levels and the tie fix-up -------------------------------------------

RATIOS_9 = [i / 10 for i in range(1, 10)]


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


RADIX_CASES = list(_cases())


@pytest.mark.parametrize("name, scores", RADIX_CASES, ids=[c[0] for c in RADIX_CASES])
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
        exp_m, exp_t = R.global_masks(scores, ratios, segments, keep)
        assert torch.equal(got_m, exp_m), f"{name}: masks differ (segments={segments is not None}, min_keep={keep})"
        assert torch.equal(got_t.view(torch.int32), exp_t.view(torch.int32)), f"{name}: thresholds differ"


def test_global_masks_every_k_on_a_small_tied_vector():
    scores = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 2.0, 0.5, 1.0] * 10)  # n = 80 > 64: radix path
    n = scores.numel()
    ratios = [k / n for k in range(n)]
    got_m, got_t = _ops.global_masks(scores, ratios)
    exp_m, exp_t = R.global_masks(scores, ratios)
    assert torch.equal(got_m, exp_m)
    assert torch.equal(got_t, exp_t)
    assert got_m.logical_not().sum(dim=1).tolist() == list(range(n))


@pytest.mark.parametrize("n", [1 << 16, (1 << 16) + 1, 3 * (1 << 16) + 17])
def test_global_masks_parallel_fill_chunks(n):
    # Above 2^18 mask entries the fill runs in parallel chunks of 2^16 channels.
    scores = torch.randint(0, 50, (n,)).float()  # ties that cross chunk boundaries
    got_m, got_t = _ops.global_masks(scores, RATIOS_9, [n // 2, n - n // 2], 2)
    exp_m, exp_t = R.global_masks(scores, RATIOS_9, [n // 2, n - n // 2], 2)
    assert torch.equal(got_m, exp_m)
    assert torch.equal(got_t, exp_t)


# -- CUDA paths: each compared with the CPU operator exactly (marked `cuda`; skipped without a GPU)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_test(fn):
    return pytest.mark.cuda(needs_gpu(fn))


def same_on_cuda_and_cpu(scores, ratios, sizes, keep, what=""):
    """global_masks_counts (and global_masks, without segments) on CUDA equal to the CPU's, bit
    for bit; the CUDA results, on the CPU."""
    cpu_keep = keep.cpu() if isinstance(keep, torch.Tensor) else keep
    cuda_keep = keep.cuda() if isinstance(keep, torch.Tensor) else keep
    if sizes is None:
        got = _ops.global_masks(scores.cuda(), ratios, None, cuda_keep)
        want = _ops.global_masks(scores.cpu(), ratios, None, cpu_keep)
    else:
        got = _ops.global_masks_counts(scores.cuda(), ratios, sizes, cuda_keep)
        want = _ops.global_masks_counts(scores.cpu(), ratios, sizes, cpu_keep)
        alone = _ops.global_masks(scores.cuda(), ratios, sizes, cuda_keep)
        for g, a in zip(got, alone):
            assert torch.equal(g, a), f"{what}: global_masks_counts and global_masks differ on CUDA"
    for g, w, name in zip(got, want, ("masks", "thresholds", "counts")):
        assert g.is_cuda, f"{what}: {name} not on CUDA"
        g = g.cpu()
        if g.dtype == torch.float32:
            g, w = g.view(torch.int32), w.view(torch.int32)
        assert torch.equal(g, w), f"{what}: CUDA {name} differ from the CPU's"
    return [g.cpu() for g in got]


@cuda_test
def test_cuda_more_ratios_than_grid_y():
    # 70,000 ratios: past gridDim.y's 65,535, in the masks and in the counts of the same call
    gen = torch.Generator().manual_seed(21)
    n = 1000
    scores = torch.randint(0, 40, (n,), generator=gen).float()
    sizes = [100] * 10
    ratios = torch.linspace(0.0, 0.98, 70_000, dtype=torch.float64).tolist()
    masks, thr, counts = same_on_cuda_and_cpu(scores, ratios, sizes, 1, "70k ratios")
    assert masks.shape == (70_000, n) and counts.shape == (70_000, 10)
    assert (~masks[-1]).sum().item() == math.floor(ratios[-1] * n + 0.5)
    same_on_cuda_and_cpu(scores, ratios[::3] + ratios[1::3], None, 0, "70k ratios, no segments")


@cuda_test
@pytest.mark.parametrize("keep", [2, 5, 64, "per-segment"])
def test_cuda_large_segments_min_keep_two_or_more(keep):
    # Segments of up to 2^19 channels protecting 2 or more each: the segmented sort path
    gen = torch.Generator().manual_seed(22)
    sizes = [1 << 19, 3, 1 << 18, 1, 0, 200_001]
    n = sum(sizes)
    scores = (torch.randint(-300, 300, (n,), generator=gen).float() / 4)
    scores[::977] = -0.0
    if keep == "per-segment":
        keep = torch.tensor([1000, 2, 7, 5, 9, 1], dtype=torch.int64)
    same_on_cuda_and_cpu(scores, [0.0, 0.1, 0.5, 0.9], sizes, keep, f"min_keep={keep}")


@cuda_test
@pytest.mark.parametrize("seed", range(6))
def test_cuda_per_segment_min_keep(seed):
    # Random minima per segment through each protection path: every minimum 0 (nothing to
    # protect), at most 1 (the per-segment maximum), some 2 or more (the segmented sort); the
    # tensor on the GPU, on the CPU, as a list
    gen = torch.Generator().manual_seed(100 + seed)
    sizes = torch.randint(0, 40, (500,), generator=gen)
    sizes[::11] = 1
    sizes[::13] = 0
    sizes = sizes.tolist()
    n = sum(sizes)
    scores = make_scores(n, ["ties", "few", "normal", "special_no_nan", "zeros", "ties"][seed], gen)
    for high in (1, 2, 4, 100):
        keeps = torch.randint(0, high, (len(sizes),), generator=gen)
        free = n - int(torch.minimum(torch.tensor(sizes), keeps).sum())
        ratios = [p for p in (0.0, 0.05, 0.3, 0.6, 0.95) if math.floor(p * n + 0.5) <= free] + [free / n - 1e-12]
        for form in (keeps.cuda(), keeps, keeps.tolist()):
            same_on_cuda_and_cpu(scores, ratios, sizes, form, f"seed {seed}, minima < {high}")


@cuda_test
@pytest.mark.sanitize
def test_cuda_per_segment_maximum_ties():
    # The per-segment maximum (every segment protects at most one) keeps, among equal scores,
    # the highest index, +0.0 and -0.0 alike, in segments larger than a block
    n = 3 * 70_000
    scores = torch.zeros(n)
    scores[1::2] = -0.0
    sizes = [70_000, 70_000, 69_999, 1]
    for keep in (1, torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 0, 5])):
        masks, _, _ = same_on_cuda_and_cpu(scores, [0.25, 0.5], sizes, keep, f"ties, min_keep={keep}")
        kept = masks[-1].nonzero().flatten().tolist()
        expected = [end - 1 for end, c in zip(torch.tensor(sizes).cumsum(0).tolist(),
                                               [1] * 4 if isinstance(keep, int) else keep.tolist()) if c]
        assert all(i in kept for i in expected), "the highest index of a tied segment was not protected"


@cuda_test
def test_cuda_nan_count_across_blocks():
    # NaNs spread over thousands of blocks of the key kernel are counted once each; the count
    # is named before k against the unprotected count
    gen = torch.Generator().manual_seed(23)
    n = 5_000_000
    scores = torch.randn(n, generator=gen)
    where = torch.randperm(n, generator=gen)[:1234]
    scores[where] = math.nan
    gpu = scores.cuda()
    with pytest.raises(ValueError, match=r"^scores contain 1234 NaN values; masks are undefined$"):
        _ops.global_masks(gpu, [0.1, 0.5])
    for keep in (3, torch.full((4,), 3, dtype=torch.int64, device="cuda")):
        for fn in (_ops.global_masks, _ops.global_masks_counts):
            with pytest.raises(ValueError, match=r"^scores contain 1234 NaN values; masks are undefined$"):
                fn(gpu, [0.1, 0.99999], [n // 4] * 4, keep)
    one = torch.zeros(n)
    one[n - 1] = math.nan
    with pytest.raises(ValueError, match=r"^scores contain 1 NaN value; masks are undefined$"):
        _ops.global_masks(one.cuda(), [0.5])


@cuda_test
@pytest.mark.sanitize
def test_cuda_error_order_matches_cpu():
    # The same input refused with the same error on both devices: NaN and too large a k
    scores = torch.tensor([NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    for keep in (3, torch.tensor([3, 3])):
        for fn in (_ops.global_masks, _ops.global_masks_counts):
            on_cpu = raised(lambda: fn(scores, [0.9], [4, 4], keep))
            on_cuda = raised(lambda: fn(scores.cuda(), [0.9], [4, 4], keep.cuda() if isinstance(keep, torch.Tensor) else keep))
            assert on_cuda == on_cpu
            assert on_cpu[1] == "scores contain 1 NaN value; masks are undefined"
    ok = torch.arange(8, dtype=F32)
    assert raised(lambda: _ops.global_masks(ok.cuda(), [0.9], [4, 4], 3)) == raised(lambda: _ops.global_masks(ok, [0.9], [4, 4], 3))


@cuda_test
@pytest.mark.sanitize
def test_cuda_inputs_with_a_storage_offset():
    gen = torch.Generator().manual_seed(24)
    base = torch.randint(0, 30, (10_007,), generator=gen).float()
    keep_base = torch.tensor([9, 3, 0, 2, 1], dtype=torch.int64)
    sizes = [4000, 3000, 2000, 1000]
    scores = base.cuda()[7:]  # contiguous, storage offset 7
    keep = keep_base.cuda()[1:]
    assert scores.storage_offset() == 7 and keep.storage_offset() == 1
    same_on_cuda_and_cpu(scores, [0.1, 0.4], sizes, keep, "offset")
    same_on_cuda_and_cpu(scores, [0.1, 0.4], sizes, 2, "offset, int")
    strided = base.cuda()[::2][:5000]
    same_on_cuda_and_cpu(strided, [0.1, 0.4], [2500, 2500], 3, "strided")


@cuda_test
def test_cuda_run_to_run_determinism():
    gen = torch.Generator().manual_seed(25)
    sizes = torch.randint(0, 3000, (300,), generator=gen).tolist()
    n = sum(sizes)
    scores = (torch.randint(0, 100, (n,), generator=gen).float()).cuda()
    ratios = [0.1, 0.3, 0.5]
    for keep in (0, 1, 3, torch.randint(0, 3, (300,), generator=gen).cuda()):
        first = _ops.global_masks_counts(scores, ratios, sizes, keep)
        for _ in range(3):
            again = _ops.global_masks_counts(scores, ratios, sizes, keep)
            for a, b in zip(first, again):
                assert torch.equal(a, b), "two runs differ"


@cuda_test
def test_cuda_non_default_stream():
    # Everything runs on the caller's current stream: the scores are written on a side stream
    # behind a delay, and the operators called on that stream read them after the write
    gen = torch.Generator().manual_seed(26)
    n = 300_000
    source = torch.randint(0, 50, (n,), generator=gen).float()
    sizes = [n // 3, n // 3, n - 2 * (n // 3)]
    src = source.cuda()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    for keep in (1, 4, torch.tensor([1, 0, 2])):
        with torch.cuda.stream(side):
            scores = torch.empty(n, device="cuda")
            torch.cuda._sleep(50_000_000)
            scores.copy_(src)
            k = keep.cuda() if isinstance(keep, torch.Tensor) else keep
            masks, thr, counts = _ops.global_masks_counts(scores, [0.2, 0.6], sizes, k)
            alone = _ops.global_masks(scores, [0.2, 0.6], sizes, k)
        side.synchronize()
        want = _ops.global_masks_counts(source, [0.2, 0.6], sizes, keep)
        assert torch.equal(masks.cpu(), want[0]) and torch.equal(alone[0].cpu(), want[0])
        assert torch.equal(thr.cpu(), want[1]) and torch.equal(counts.cpu(), want[2])


@cuda_test
@pytest.mark.sanitize
def test_cuda_min_keep_tensor_with_cpu_scores():
    # A CUDA min_keep with CPU scores: the dispatcher picks the CUDA key; the work runs, and
    # the results live, where the scores are
    scores = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.6, 9.0, 0.0, 0.0])
    keep = torch.tensor([2, 0, 1, 1], device="cuda")
    for fn in (_ops.global_masks, _ops.global_masks_counts, OP.global_masks.per_segment,
               OP.global_masks_counts.per_segment):
        out = fn(scores, [0.25, 0.5], [3, 2, 1, 2], keep)
        assert all(t.device.type == "cpu" for t in out)
        assert_exact(out[0], masks_of(["11101101", "01100101"]), "masks")
