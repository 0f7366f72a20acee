"""taylor_scores and taylor_accumulate_ on CUDA: every row plan with two operands (the weight and
its gradient, aligned alike or not), BatchNorm weight and bias into the same channels, more
tensors than one launch's table holds, inv_scale of every floating dtype, a non-finite value
found by the check kernel in any of several blocks and past its first grid-stride pass, and
bit-for-bit repeatability. The reference is epi_fast.ops.reference on the CPU; tolerances are
epi_fast.testing.taylor_bound's."""

from __future__ import annotations

import pytest
import torch

import epi_fast.ops as ops
import epi_fast.ops.reference as R
from cuda_support import CUDA, DEV, DTYPES, GRID_STRIDE_ELEMENTS, with_offset
from epi_fast.testing import assert_bounded, assert_exact, taylor_bound

pytestmark = CUDA

COLS = [1, 2, 5, 9, 27, 33, 64, 100, 256, 511, 1023, 1024, 1025, 2049, 4608, 20000]


def _pair(rows, cols, dtype, seed, shape=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    gr = (torch.randn(rows, cols, generator=g) * 0.1).to(dtype)
    if shape is not None:
        w, gr = w.reshape(shape), gr.reshape(shape)
    return w, gr


def _bn(channels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, generator=g).to(dtype) for _ in range(4)]  # weight, bias, their grads


def _check_scores(params, grads, offsets, channels, mode, on=lambda t: t.to(DEV)):
    got = ops.taylor_scores([on(p) for p in params], [on(g) for g in grads], offsets, channels, mode)
    assert got.device.type == "cuda" and got.shape == (channels,)
    expected = R.taylor_scores(params, grads, offsets, channels, mode)
    assert_bounded(got, expected, taylor_bound(params, grads, offsets, channels, mode), msg=mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["square", "abs"])
def test_every_row_plan_against_the_reference(dtype, mode):
    pairs = [_pair(rows, cols, dtype, i) for i, cols in enumerate(COLS) for rows in (1, 3, 40)]
    params, grads = [p for p, _ in pairs], [g for _, g in pairs]
    _check_scores(params, grads, None, sum(p.shape[0] for p in params), mode)


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_and_bn_into_the_same_channels(dtype):
    # a conv's rows and its BatchNorm's weight and bias all add into channels 0..15 (atomics)
    w, gw = _pair(16, 27, dtype, 0, (16, 3, 3, 3))
    long_w, long_g = _pair(16, 3000, dtype, 1)  # chunked rows into the same channels
    bw, bb, gbw, gbb = _bn(16, dtype, 2)
    params, grads = [w, bw, bb, long_w], [gw, gbw, gbb, long_g]
    for mode in ("square", "abs"):
        _check_scores(params, grads, [0, 0, 0, 0], 16, mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offsets", [(1, 1), (1, 2), (0, 3), (5, 0)], ids=lambda o: f"w+{o[0]},g+{o[1]}")
def test_storage_offsets(dtype, offsets):
    # the weight and gradient misaligned alike (vector loads after a scalar head) or differently
    # (scalar loads only)
    pairs = [_pair(rows, cols, dtype, cols) for cols in (1, 9, 64, 300, 1023, 3000) for rows in (1, 6)]
    params, grads = [p for p, _ in pairs], [g for _, g in pairs]
    ow, og = offsets
    got = ops.taylor_scores([with_offset(p.to(DEV), ow) for p in params], [with_offset(g.to(DEV), og) for g in grads])
    expected = R.taylor_scores(params, grads)
    assert_bounded(got, expected, taylor_bound(params, grads), msg=f"offsets {offsets}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_tensors_than_one_launch_takes(dtype):
    params, grads, offsets, channels = [], [], [], 0
    for i in range(60):  # 60 conv + BN pairs: 180 tensors, four launches
        c = 8 + i % 5
        w, gw = _pair(c, 27 if i % 3 else 2100, dtype, i)
        bw, bb, gbw, gbb = _bn(c, dtype, 1000 + i)
        params += [w, bw, bb]
        grads += [gw, gbw, gbb]
        offsets += [channels] * 3
        channels += c
    _check_scores(params, grads, offsets, channels, "square")
    acc = torch.zeros(channels, device=DEV)
    skipped = torch.zeros(1, dtype=torch.int64, device=DEV)
    acc_ref, skipped_ref = torch.zeros(channels), torch.zeros(1, dtype=torch.int64)
    for _ in range(2):
        ops.taylor_accumulate_(acc, skipped, [p.to(DEV) for p in params], [g.to(DEV) for g in grads], offsets)
        R.taylor_accumulate_(acc_ref, skipped_ref, params, grads, offsets)
    assert int(skipped) == int(skipped_ref) == 0
    assert_bounded(acc, acc_ref, 2 * taylor_bound(params, grads, offsets, channels), msg="accumulated")


@pytest.mark.sanitize
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1,), ()], ids=["[1]", "0-d"])
def test_inv_scale_of_any_floating_dtype(scale_dtype, shape):
    w, gw = _pair(6, 40, torch.float32, 0)
    bw, bb, gbw, gbb = _bn(6, torch.float32, 1)
    params, grads, offsets = [w, bw, bb], [gw, gbw, gbb], [0, 0, 0]
    for value in (0.5, 1 / 3, 2.0 ** -14):
        inv = torch.tensor(value, dtype=scale_dtype).reshape(shape)
        acc = torch.zeros(6, device=DEV)
        skipped = torch.zeros(1, dtype=torch.int64, device=DEV)
        ops.taylor_accumulate_(acc, skipped, [p.to(DEV) for p in params], [g.to(DEV) for g in grads], offsets,
                               "square", inv.to(DEV))
        acc_ref, skipped_ref = torch.zeros(6), torch.zeros(1, dtype=torch.int64)
        R.taylor_accumulate_(acc_ref, skipped_ref, params, grads, offsets, "square", inv)
        stored = float(inv.float())  # the kernel multiplies by the scale as float32
        assert_bounded(acc, acc_ref, taylor_bound(params, grads, offsets, 6, "square", inv_scale=stored),
                       msg=f"{scale_dtype} {value}")
        assert int(skipped) == 0


@pytest.mark.sanitize
@pytest.mark.parametrize("where", [0, 700, 150_000, 299_999], ids=lambda w: f"channel{w}")
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_a_non_finite_gradient_in_any_block_skips_the_step(where, value):
    # 300,000 channels are 1,172 blocks of the check kernel: the flag is set from any of them
    channels = 300_000
    w = torch.randn(channels, device=DEV)
    g = torch.randn(channels, device=DEV) * 0.01
    acc = torch.zeros(channels, device=DEV)
    skipped = torch.zeros(1, dtype=torch.int64, device=DEV)
    ops.taylor_accumulate_(acc, skipped, [w], [g])
    before = acc.clone()
    bad = g.clone()
    bad[where] = value
    ops.taylor_accumulate_(acc, skipped, [w], [bad])
    assert int(skipped) == 1
    assert torch.equal(acc, before), "a skipped step changed acc"
    ops.taylor_accumulate_(acc, skipped, [w], [g])
    assert int(skipped) == 1
    assert_exact(acc, before * 2, "two finite steps")  # the same step added twice


@pytest.mark.large
def test_check_and_apply_past_the_first_grid_stride_pass():
    # more channels than 65,535 blocks of 256 threads cover: the check kernel must find an inf
    # that only its second pass reaches, and the apply kernel must add every channel
    channels = GRID_STRIDE_ELEMENTS + 300_000
    w = torch.randn(channels, device=DEV)
    g = torch.randn(channels, device=DEV)
    acc = torch.zeros(channels, device=DEV)
    skipped = torch.zeros(1, dtype=torch.int64, device=DEV)
    ops.taylor_accumulate_(acc, skipped, [w], [g], mode="abs")
    torch.testing.assert_close(acc, (w * g).abs(), rtol=0, atol=0)
    bad = g.clone()
    bad[channels - 1] = float("inf")
    ops.taylor_accumulate_(acc, skipped, [w], [bad], mode="abs")
    assert int(skipped) == 1
    torch.testing.assert_close(acc, (w * g).abs(), rtol=0, atol=0)
    scores = ops.taylor_scores([w], [g], mode="square")  # the finishing kernel past its first pass
    torch.testing.assert_close(scores, (w * g).square(), rtol=0, atol=0)


def test_repeats_bit_for_bit():
    # at most two rows into each channel (a BatchNorm's weight and bias): the atomic adds commute
    w, gw = _pair(256, 4608, torch.float32, 0)
    bw, bb, gbw, gbb = _bn(512, torch.float32, 1)
    params = [t.to(DEV) for t in (w, bw, bb)]
    grads = [t.to(DEV) for t in (gw, gbw, gbb)]
    offsets = [0, 256, 256]
    first = ops.taylor_scores(params, grads, offsets, 768)
    for _ in range(3):
        assert torch.equal(ops.taylor_scores(params, grads, offsets, 768), first)
    accs = []
    for _ in range(2):
        acc = torch.zeros(768, device=DEV)
        skipped = torch.zeros(1, dtype=torch.int64, device=DEV)
        for _ in range(3):
            ops.taylor_accumulate_(acc, skipped, params, grads, offsets)
        accs.append(acc)
    assert torch.equal(accs[0], accs[1])
