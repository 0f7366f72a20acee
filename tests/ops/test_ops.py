"""Hand-computed cases for every operator, run on each implementation (reference, cpu, cuda).

Expected values are worked out by hand in the comments; inputs are small and exactly
representable, so scores are compared with a tight tolerance and masks, thresholds and counts
exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from epi_fast.testing import assert_exact, assert_scores_close

INF, NAN = math.inf, math.nan
F32 = torch.float32
HALF_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
               pytest.param(torch.bfloat16, id="bf16")]


def scores_equal(impl, actual, expected):
    assert actual.device.type == impl.device.type
    assert_scores_close(actual, torch.tensor(expected, dtype=F32), msg=impl.name)


# -- channel_scores ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize(
    "criterion, expected",
    [
        # rows of W: [3,-4] [0,0] [1,1]; rows of C (2x1x2x1): [1,2] [-2,2]
        ("l1", [7, 0, 2, 3, 4]),
        ("l2", [5, 0, math.sqrt(2), math.sqrt(5), math.sqrt(8)]),
    ],
    ids=["l1", "l2"],
)
def test_channel_scores_norms(impl, criterion, expected, dtype):
    w = impl.t([[3.0, -4.0], [0.0, 0.0], [1.0, 1.0]], dtype)
    c = impl.t([[[[1.0], [2.0]]], [[[-2.0], [2.0]]]], dtype)
    out = impl.ops.channel_scores([w, c], criterion)
    assert out.dtype == F32 and out.shape == (5,)
    scores_equal(impl, out, expected)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_channel_scores_abs(impl, dtype):
    gamma = impl.t([-1.5, 0.0, 2.0], dtype)
    gamma4 = impl.t([[[[-0.25]]], [[[4.0]]]], dtype)  # [2,1,1,1]: one value per channel too
    out = impl.ops.channel_scores((gamma, gamma4), "abs")  # a tuple is accepted
    scores_equal(impl, out, [1.5, 0.0, 2.0, 0.25, 4.0])


def test_channel_scores_default_is_l2(impl):
    out = impl.ops.channel_scores([impl.t([[3.0, 4.0]])])
    scores_equal(impl, out, [5.0])


def test_channel_scores_nonfinite_give_nonfinite(impl):
    # NaN anywhere in a row -> NaN score; inf -> inf; no error here (only global_masks rejects NaN).
    w = impl.t([[1.0, NAN], [INF, 1.0], [-INF, 0.0], [1.0, 1.0]])
    for crit in ("l1", "l2"):
        out = impl.ops.channel_scores([w], crit).cpu()
        assert math.isnan(out[0]) and out[1] == INF and out[2] == INF
        assert out[3] == (2.0 if crit == "l1" else pytest.approx(math.sqrt(2)))
    out = impl.ops.channel_scores([impl.t([NAN, -INF, -0.0])], "abs").cpu()
    assert math.isnan(out[0]) and out[1] == INF and out[2] == 0.0


def test_channel_scores_empty_rows_and_layers(impl):
    # [3, 0]: three channels of zero elements score 0; [0, 4]: a layer with no channels adds nothing.
    out = impl.ops.channel_scores([impl.t(torch.zeros(3, 0)), impl.t(torch.zeros(0, 4)), impl.t([[2.0, 0.0]])], "l2")
    scores_equal(impl, out, [0.0, 0.0, 0.0, 2.0])


def test_channel_scores_noncontiguous(impl):
    base = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])  # [2, 3]
    t = impl.t(base).t()  # [3, 2] view with strides (1, 3): rows [1,-4] [2,5] [3,-6]
    assert not t.is_contiguous()
    scores_equal(impl, impl.ops.channel_scores([t], "l1"), [5.0, 7.0, 9.0])
    s = impl.t(torch.tensor([[1.0, 9.0, -2.0, 9.0], [3.0, 9.0, 4.0, 9.0]]))[:, ::2]  # rows [1,-2] [3,4]
    scores_equal(impl, impl.ops.channel_scores([s], "l2"), [math.sqrt(5), 5.0])
    g = impl.t(torch.tensor([-1.0, 7.0, 2.0, 7.0]))[::2]  # [-1, 2], stride 2
    scores_equal(impl, impl.ops.channel_scores([g], "abs"), [1.0, 2.0])


# -- Taylor -----------------------------------------------------------------------------------

def conv_bn(impl, dtype=F32):
    # conv W [2,3] with grad gW; BN gamma/beta [2] with grads. Per-channel sums of w*g:
    #   W:     [1*1 + 2*1 + 3*1, 0*2 - 1*2 + 1*2] = [6, 0]
    #   gamma: [2*0.5, 1*-3]                      = [1, -3]
    #   beta:  [1*1, -1*1]                        = [1, -1]
    W, gW = impl.t([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]], dtype), impl.t([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], dtype)
    ga, gga = impl.t([2.0, 1.0], dtype), impl.t([0.5, -3.0], dtype)
    be, gbe = impl.t([1.0, -1.0], dtype), impl.t([1.0, 1.0], dtype)
    return [W, ga, be], [gW, gga, gbe]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mode, expected", [("square", [64.0, 16.0]), ("abs", [8.0, 4.0])], ids=["square", "abs"])
def test_taylor_conv_and_bn_into_same_channels(impl, mode, expected, dtype):
    # All three tensors add into channels 0..1: raw = [6+1+1, 0-3-1] = [8, -4].
    params, grads = conv_bn(impl, dtype)
    out = impl.ops.taylor_scores(params, grads, offsets=[0, 0, 0], num_channels=2, mode=mode)
    scores_equal(impl, out, expected)


def test_taylor_bn_weight_and_bias_only(impl):
    params, grads = conv_bn(impl)
    # raw = [1+1, -3-1] = [2, -4]; num_channels defaults to the highest row mapped + 1.
    scores_equal(impl, impl.ops.taylor_scores(params[1:], grads[1:], offsets=[0, 0]), [4.0, 16.0])
    scores_equal(impl, impl.ops.taylor_scores(params[1:], grads[1:], [0, 0], None, "abs"), [2.0, 4.0])


def test_taylor_default_offsets_are_consecutive(impl):
    params, grads = conv_bn(impl)
    # W -> channels 0,1 (raw 6, 0); gamma -> 2,3 (raw 1, -3): squares [36, 0, 1, 9]
    scores_equal(impl, impl.ops.taylor_scores(params[:2], grads[:2]), [36.0, 0.0, 1.0, 9.0])
    # explicit offsets and extra channels that nothing maps to stay 0
    out = impl.ops.taylor_scores(params[:2], grads[:2], offsets=[3, 0], num_channels=6)
    scores_equal(impl, out, [1.0, 9.0, 0.0, 36.0, 0.0, 0.0])


def test_taylor_noncontiguous(impl):
    base_w = torch.tensor([[1.0, 0.0], [2.0, 5.0], [3.0, 1.0]])   # .t() -> rows [1,2,3] [0,5,1]
    base_g = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 2.0]])  # .t() -> rows [1,1,1] [1,-1,2]
    w, g = impl.t(base_w).t(), impl.t(base_g).t()
    # raw = [6, 0 - 5 + 2] = [6, -3]
    scores_equal(impl, impl.ops.taylor_scores([w], [g], mode="abs"), [6.0, 3.0])


def _accumulators(impl, n, skipped_shape=(1,)):
    return (torch.zeros(n, dtype=F32, device=impl.device),
            torch.zeros(skipped_shape, dtype=torch.int64, device=impl.device))


@pytest.mark.parametrize("skipped_shape", [(1,), ()], ids=["skipped[1]", "skipped[]"])
@pytest.mark.parametrize("bad", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
def test_taylor_accumulate_skips_nonfinite_steps(impl, bad, skipped_shape):
    acc, skipped = _accumulators(impl, 2, skipped_shape)
    params, grads = conv_bn(impl)
    impl.ops.taylor_accumulate_(acc, skipped, params, grads, offsets=[0, 0, 0])  # + [64, 16]
    assert acc.cpu().tolist() == [64.0, 16.0] and int(skipped) == 0
    # One non-finite gradient anywhere skips the whole step (both channels), and it is counted.
    bad_grads = [grads[0].clone(), grads[1], grads[2]]
    bad_grads[0][1, 2] = bad
    impl.ops.taylor_accumulate_(acc, skipped, params, bad_grads, offsets=[0, 0, 0])
    assert acc.cpu().tolist() == [64.0, 16.0] and int(skipped) == 1
    # ... even where the weight is 0 (0 * inf = NaN) and in a tensor added last
    bad_grads = [grads[0], grads[1], grads[2].clone()]
    bad_grads[2][0] = bad
    zero_params = [params[0], params[1], torch.zeros_like(params[2])]
    impl.ops.taylor_accumulate_(acc, skipped, zero_params, bad_grads, offsets=[0, 0, 0])
    assert acc.cpu().tolist() == [64.0, 16.0] and int(skipped) == 2
    impl.ops.taylor_accumulate_(acc, skipped, params, grads, offsets=[0, 0, 0])
    assert acc.cpu().tolist() == [128.0, 32.0] and int(skipped) == 2
    assert skipped.shape == skipped_shape and skipped.dtype == torch.int64


@pytest.mark.parametrize("mode, expected", [("square", [64.0, 16.0]), ("abs", [8.0, 4.0])], ids=["square", "abs"])
def test_taylor_accumulate_inv_scale(impl, mode, expected):
    # Gradients scaled by 1024 (as under GradScaler), inv_scale = 1/1024: the unscaled raw [8, -4].
    acc, skipped = _accumulators(impl, 2)
    params, grads = conv_bn(impl)
    scaled = [g * 1024.0 for g in grads]
    inv = torch.tensor([1.0 / 1024.0], dtype=F32, device=impl.device)
    impl.ops.taylor_accumulate_(acc, skipped, params, scaled, [0, 0, 0], mode, inv)
    scores_equal(impl, acc, expected)
    # without inv_scale the scaled raw [8192, -4096] is used as is
    acc2, _ = _accumulators(impl, 2)
    impl.ops.taylor_accumulate_(acc2, skipped, params, scaled, [0, 0, 0], mode)
    scale = 1024.0 ** 2 if mode == "square" else 1024.0
    scores_equal(impl, acc2, [e * scale for e in expected])
    assert int(skipped) == 0


def test_taylor_accumulate_default_offsets_and_existing_values(impl):
    acc, skipped = _accumulators(impl, 4)
    acc += torch.tensor([1.0, 2.0, 3.0, 4.0], device=impl.device)
    params, grads = conv_bn(impl)
    impl.ops.taylor_accumulate_(acc, skipped, params[:2], grads[:2])  # + [36, 0, 1, 9]
    scores_equal(impl, acc, [37.0, 2.0, 4.0, 13.0])
    assert int(skipped) == 0


# -- group_reduce -----------------------------------------------------------------------------

def _groups(impl):
    # group 0 = members [0, 3], group 1 = [1], group 2 = [2, 4, 5]
    return impl.t([0, 2, 3, 6], torch.int64), impl.t([0, 3, 1, 2, 4, 5], torch.int64)


@pytest.mark.parametrize(
    "reduce, expected",
    [("sum", [5.0, 2.0, 2.5]), ("mean", [2.5, 2.0, 2.5 / 3]), ("max", [4.0, 2.0, 3.0])],
    ids=["sum", "mean", "max"],
)
def test_group_reduce(impl, reduce, expected):
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


# -- global_masks -----------------------------------------------------------------------------

def masks_of(rows):
    return torch.tensor([[c == "1" for c in r] for r in rows], dtype=torch.bool)


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


# -- layer_counts, mask_overlap ---------------------------------------------------------------

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
