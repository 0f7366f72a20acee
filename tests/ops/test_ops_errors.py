"""Bad arguments: every implementation raises ValueError / TypeError naming the problem.

Each case has exactly one thing wrong, so the reference (``epi_fast.ops._checks``) and the
compiled operators (their C++ checks, which say the same words; the wrappers check in Python only
what the schema cannot carry) must agree on the exception type and message. Device mixing is
tested with the "meta" device, which needs no GPU: a meta tensor routes the call to the fake
kernels, which check with ``_checks`` too.
"""

from __future__ import annotations

import math

import pytest
import torch

F32, I64 = torch.float32, torch.int64
META = torch.device("meta")


def ones(impl, *shape, dtype=F32):
    return torch.ones(shape, dtype=dtype, device=impl.device)


def i64(impl, values):
    return torch.tensor(values, dtype=I64, device=impl.device)


def W(impl):
    return ones(impl, 2, 3)


# -- cases: (id, call(impl, ops), exception, match) ----------------------------------------------

CHANNEL_SCORES = [
    ("empty-list", lambda i, o: o.channel_scores([], "l2"), ValueError, r"tensors is empty"),
    ("empty-tuple", lambda i, o: o.channel_scores((), "l1"), ValueError, r"tensors is empty"),
    ("single-tensor", lambda i, o: o.channel_scores(W(i), "l2"), TypeError, r"list or tuple of tensors, not a single tensor"),
    ("not-a-list", lambda i, o: o.channel_scores({"w": W(i)}, "l2"), TypeError, r"list or tuple of tensors, got dict"),
    ("non-tensor-item", lambda i, o: o.channel_scores([W(i), [1.0, 2.0]], "l2"), TypeError, r"tensors\[1\] is a list, not a tensor"),
    ("mixed-devices", lambda i, o: o.channel_scores([W(i), torch.ones(2, 3, device=META)], "l2"),
     ValueError, r"tensors mixes devices: tensors\[0\] is on .*, tensors\[1\] on meta"),
    ("mixed-dtypes", lambda i, o: o.channel_scores([W(i), ones(i, 2, 3, dtype=torch.float16)], "l2"),
     TypeError, r"tensors mixes dtypes: tensors\[0\] is torch.float32, tensors\[1\] is torch.float16"),
    ("int-tensor", lambda i, o: o.channel_scores([ones(i, 2, 3, dtype=I64)], "l1"),
     TypeError, r"tensors\[0\] has dtype torch.int64; supported: float32, float16, bfloat16"),
    ("float64-tensor", lambda i, o: o.channel_scores([W(i), ones(i, 2, dtype=torch.float64)], "l1"),
     TypeError, r"tensors\[1\] has dtype torch.float64"),
    ("bool-tensor", lambda i, o: o.channel_scores([ones(i, 2, dtype=torch.bool)], "abs"), TypeError, r"has dtype torch.bool"),
    ("0-dim", lambda i, o: o.channel_scores([W(i), torch.tensor(1.0, device=i.device)], "l2"),
     ValueError, r"tensors\[1\] is 0-dimensional"),
    ("abs-multi-element-row", lambda i, o: o.channel_scores([ones(i, 4), W(i)], "abs"),
     ValueError, r'criterion "abs" scores one value per channel, but tensors\[1\] has 3 values per channel \(shape \(2, 3\)\)'),
    ("unknown-criterion", lambda i, o: o.channel_scores([W(i)], "l3"),
     ValueError, r"unknown criterion 'l3'; expected one of 'l1', 'l2', 'abs'"),
    ("criterion-taylor", lambda i, o: o.channel_scores([W(i)], "taylor"), ValueError, r"unknown criterion 'taylor'"),
]


def pg(impl, dtype=F32):
    return [ones(impl, 2, 3, dtype=dtype), ones(impl, 2, dtype=dtype)]


TAYLOR = [
    ("unknown-mode", lambda i, o: o.taylor_scores(pg(i), pg(i), mode="cube"), ValueError, r"unknown mode 'cube'; expected one of 'square', 'abs'"),
    ("empty-params", lambda i, o: o.taylor_scores([], [], mode="square"), ValueError, r"params is empty"),
    ("count-mismatch", lambda i, o: o.taylor_scores(pg(i), pg(i)[:1]), ValueError, r"2 params but 1 grads"),
    ("shape-mismatch", lambda i, o: o.taylor_scores([ones(i, 2, 3)], [ones(i, 3, 2)]),
     ValueError, r"params\[0\] has shape \(2, 3\) but grads\[0\] \(3, 2\)"),
    ("dtype-mismatch", lambda i, o: o.taylor_scores(pg(i), pg(i, torch.float16)),
     TypeError, r"params are torch.float32 but grads are torch.float16"),
    ("device-mismatch", lambda i, o: o.taylor_scores([ones(i, 2, 3)], [torch.ones(2, 3, device=META)]),
     ValueError, r"params\[0\] is on .* but grads\[0\] on meta"),
    ("mixed-devices", lambda i, o: o.taylor_scores([ones(i, 2), torch.ones(2, device=META)], [ones(i, 2), ones(i, 2)]),
     ValueError, r"params mixes devices"),
    ("int-grads", lambda i, o: o.taylor_scores([ones(i, 2)], [ones(i, 2, dtype=torch.int32)]),
     TypeError, r"grads\[0\] has dtype torch.int32"),
    ("0-dim", lambda i, o: o.taylor_scores([ones(i)], [ones(i)]), ValueError, r"params\[0\] is 0-dimensional"),
    ("offsets-count", lambda i, o: o.taylor_scores(pg(i), pg(i), offsets=[0]), ValueError, r"offsets has 1 entries for 2 tensors"),
    ("offsets-near-int64-max", lambda i, o: o.taylor_scores(pg(i), pg(i), offsets=[0, 2**63 - 1], num_channels=4),
     ValueError, r"tensor 1 maps rows 9223372036854775807\.\..* outside the 4 channels"),
    ("offsets-fractional", lambda i, o: o.taylor_scores(pg(i), pg(i), offsets=[0, 0.5]), TypeError,
     r"offsets must be a sequence of integers, got \[0, 0.5\]"),
    ("num-channels-fractional", lambda i, o: o.taylor_scores(pg(i), pg(i), num_channels=4.5), TypeError,
     r"num_channels must be an integer, got 4.5"),
    ("offsets-outside", lambda i, o: o.taylor_scores(pg(i), pg(i), offsets=[0, 1], num_channels=2),
     ValueError, r"tensor 1 maps rows 1..2 outside the 2 channels"),
    ("offsets-negative", lambda i, o: o.taylor_scores(pg(i), pg(i), offsets=[0, -1]),
     ValueError, r"tensor 1 maps rows -1..0 outside"),
    ("num-channels-too-small", lambda i, o: o.taylor_scores(pg(i), pg(i), num_channels=3),
     ValueError, r"tensor 1 maps rows 2..3 outside the 3 channels"),
]


def acc(impl, n=2, dtype=F32):
    return torch.zeros(n, dtype=dtype, device=impl.device)


def skipped(impl, dtype=I64, device=None):
    return torch.zeros(1, dtype=dtype, device=device or impl.device)


ACCUMULATE = [
    ("acc-float64", lambda i, o: o.taylor_accumulate_(acc(i, dtype=torch.float64), skipped(i), pg(i), pg(i), [0, 0]),
     TypeError, r"acc must be a 1-D float32 tensor"),
    ("acc-2d", lambda i, o: o.taylor_accumulate_(acc(i).reshape(1, 2), skipped(i), pg(i), pg(i), [0, 0]),
     TypeError, r"acc must be a 1-D float32 tensor"),
    ("skipped-int32", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i, torch.int32), pg(i), pg(i), [0, 0]),
     TypeError, r"skipped must be a one-element int64 tensor"),
    ("skipped-two-elements", lambda i, o: o.taylor_accumulate_(acc(i), torch.zeros(2, dtype=I64, device=i.device), pg(i), pg(i), [0, 0]),
     TypeError, r"skipped must be a one-element int64 tensor"),
    ("skipped-device", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i, device=META), pg(i), pg(i), [0, 0]),
     ValueError, r"skipped is on meta, acc on"),
    ("offsets-beyond-acc", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i)),
     ValueError, r"tensor 1 maps rows 2..3 outside the 2 channels"),
    ("unknown-mode", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i), [0, 0], "sq"),
     ValueError, r"unknown mode 'sq'"),
    ("count-mismatch", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i)[:1], [0, 0]),
     ValueError, r"2 params but 1 grads"),
    ("params-device", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), [torch.ones(2, device=META)], [torch.ones(2, device=META)]),
     ValueError, r"params are on meta, acc on"),
    ("inv-scale-float", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i), [0, 0], "square", 0.5),
     TypeError, r"inv_scale must be None or a one-element float32 tensor"),
    ("inv-scale-two-elements", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i), [0, 0], "square", ones(i, 2)),
     TypeError, r"inv_scale must be None or a one-element float32 tensor"),
    ("inv-scale-device", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i), [0, 0], "abs", torch.ones(1, device=META)),
     ValueError, r"inv_scale is on meta, acc on"),
    ("inv-scale-int", lambda i, o: o.taylor_accumulate_(acc(i), skipped(i), pg(i), pg(i), [0, 0], "square", torch.ones(1, dtype=I64, device=i.device)),
     TypeError, r"inv_scale must be None or a one-element float32 tensor"),
]


def scores(impl, n=4):
    return torch.arange(n, dtype=F32, device=impl.device)


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


def gm(ratios, sizes=None, keep=1, n=8, scores_fn=None, counts=False):
    """A global_masks call; with counts=True the same through global_masks_counts, whose
    segment sizes default to one segment of all the scores."""
    def call(impl, ops):
        s = scores_fn(impl) if scores_fn else scores(impl, n)
        r = ratios(impl) if callable(ratios) else ratios
        if not counts:
            return ops.global_masks(s, r, sizes, keep)
        whole = [s.numel()] if isinstance(s, torch.Tensor) else [len(s)]
        return ops.global_masks_counts(s, r, whole if sizes is None else sizes, keep)
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
]


# The same refusals through global_masks_counts, and its own: segment sizes are required.
GLOBAL_MASKS_COUNTS = [
    (name, gm(**call.args, counts=True), exc, match) for name, call, exc, match in GLOBAL_MASKS
] + [
    ("sizes-none", lambda i, o: o.global_masks_counts(scores(i, 8), [0.5], None), ValueError,
     r"segment_sizes is None: counts are taken per segment"),
    ("sizes-missing", lambda i, o: o.global_masks_counts(scores(i, 8), [0.5]), TypeError, r"segment_sizes"),
]


def bmask(impl, *shape):
    return torch.ones(shape, dtype=torch.bool, device=impl.device)


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

ALL = [
    pytest.param(call, exc, match, id=f"{group}-{name}")
    for group, cases in [("channel_scores", CHANNEL_SCORES), ("taylor_scores", TAYLOR), ("taylor_accumulate", ACCUMULATE),
                         ("group_reduce", GROUP_REDUCE), ("global_masks", GLOBAL_MASKS),
                         ("global_masks_counts", GLOBAL_MASKS_COUNTS), ("counts", COUNTS)]
    for name, call, exc, match in cases
]


@pytest.mark.parametrize("call, exc, match", ALL)
def test_bad_arguments(impl, call, exc, match):
    with pytest.raises(exc, match=match):
        call(impl, impl.ops)


def test_accumulate_error_leaves_accumulators_unchanged(impl):
    # a refused call must not have added anything (validation runs before any kernel)
    a = torch.tensor([1.0, 2.0], device=impl.device)
    s = torch.tensor([4], dtype=I64, device=impl.device)
    with pytest.raises(ValueError):
        impl.ops.taylor_accumulate_(a, s, pg(impl), pg(impl))  # offsets beyond acc
    assert a.cpu().tolist() == [1.0, 2.0] and int(s) == 4
    # With offsets given, the operator's checks run first (the per-step path): still no write.
    d = impl.device
    refused = [
        (ValueError, lambda: impl.ops.taylor_accumulate_(a, s, pg(impl), pg(impl), [0, 1])),  # beyond acc
        (TypeError, lambda: impl.ops.taylor_accumulate_(a, s, pg(impl), pg(impl), [0, 0], "square",
                                                        torch.ones(1, dtype=I64, device=d))),
        (ValueError, lambda: impl.ops.taylor_accumulate_(a, s, pg(impl), [torch.ones(2, device=d), torch.ones(3, device=d)],
                                                         [0, 0])),
        (ValueError, lambda: impl.ops.taylor_accumulate_(a, s, pg(impl), pg(impl), [0, 0], "cube")),
    ]
    for err, call in refused:
        with pytest.raises(err):
            call()
        assert a.cpu().tolist() == [1.0, 2.0] and int(s) == 4


def test_operators_refuse_sizes_and_offsets_that_wrap_int64(impl):
    # The C++ checks themselves (torch.ops, no Python checks first): sums near 2^63 must be
    # refused, not wrap around to a value that passes and index memory out of bounds.
    if not impl.compiled:
        pytest.skip("the reference has no C++ checks")
    op = torch.ops.epi_fast
    s = scores(impl, 8)
    with pytest.raises(ValueError, match=r"segment_sizes add up to more than the 8 channels \(from segment_sizes\[0\] = 4611686018427387904 on\)"):
        op.global_masks(s, [0.5], [2**62, 2**62, 2**62, 2**62, 8], 1)
    with pytest.raises(ValueError, match=r"segment_sizes add up to more than the 8 channels"):
        op.global_masks_counts(s, [0.5], [2**63 - 1, 2**63 - 1, 10], 0)
    with pytest.raises(ValueError, match=r"segment_sizes add up to more than the 8 channels"):
        op.layer_counts(bmask(impl, 2, 8), [2**63 - 1, 2**63 - 1, 10])
    a = torch.zeros(4, device=impl.device)
    k = torch.zeros(1, dtype=I64, device=impl.device)
    with pytest.raises(ValueError, match=r"tensor 0 maps rows .* outside the 4 channels"):
        op.taylor_accumulate_(a, k, [ones(impl, 2, 3)], [ones(impl, 2, 3)], [2**63 - 1], None, "square")
    assert a.cpu().tolist() == [0.0] * 4 and int(k) == 0
