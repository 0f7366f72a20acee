"""The Taylor family, ``taylor_scores`` and ``taylor_accumulate_``: their hand-computed cases
(the counts of skipped steps compared exactly), error tables (``TAYLOR``, ``ACCUMULATE``),
raw-operator messages and property tests, as tests/ops/_helpers.py describes them. The
reference's own oracle: float64 sums; the tolerance (``taylor_bound``) is absolute, because
signed sums cancel.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import epi_fast.ops.reference as R
from _helpers import (DTYPES, F32, HALF_DTYPES, I64, INF, META, NAN, OP, build, cpu_pg, cpu_ones, error_params,
                      fast, layer_list, message_params, ones, raised, scores_equal)
from epi_fast.testing import U, assert_bounded, taylor_bound


# -- hand-computed cases -----------------------------------------------------------------------

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


# -- error table: (id, call(impl, ops), exception, match) --------------------------------------

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


ERRORS = error_params(("taylor_scores", TAYLOR), ("taylor_accumulate", ACCUMULATE))


@pytest.mark.parametrize("call, exc, match", ERRORS)
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


# -- raw messages: (id, the raw operator call, the reference call with the same meaning) -------

CASES = [
    ("taylor-mode", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(), [], 4, "cube"), lambda: R.taylor_scores(cpu_pg(), cpu_pg(), mode="cube")),
    ("taylor-count", lambda: OP.taylor_scores(cpu_pg(), cpu_pg()[:1], [], 4, "square"), lambda: R.taylor_scores(cpu_pg(), cpu_pg()[:1])),
    ("taylor-shape", lambda: OP.taylor_scores([cpu_ones(2, 3)], [cpu_ones(3, 2)], [], 2, "abs"),
     lambda: R.taylor_scores([cpu_ones(2, 3)], [cpu_ones(3, 2)], mode="abs")),
    ("taylor-dtype", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(torch.float16), [], 4, "square"),
     lambda: R.taylor_scores(cpu_pg(), cpu_pg(torch.float16))),
    ("taylor-offsets-count", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(), [0], 4, "square"), lambda: R.taylor_scores(cpu_pg(), cpu_pg(), [0], 4)),
    ("taylor-offsets-outside", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(), [0, 1], 2, "square"),
     lambda: R.taylor_scores(cpu_pg(), cpu_pg(), [0, 1], 2)),
    ("taylor-offsets-negative", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(), [0, -1], 2, "square"),
     lambda: R.taylor_scores(cpu_pg(), cpu_pg(), [0, -1], 2)),
    ("taylor-offsets-int64-max", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(), [0, 2**63 - 1], 4, "square"),
     lambda: R.taylor_scores(cpu_pg(), cpu_pg(), [0, 2**63 - 1], 4)),
    ("taylor-num-channels-negative", lambda: OP.taylor_scores(cpu_pg(), cpu_pg(), [0, 0], -5, "square"),
     lambda: R.taylor_scores(cpu_pg(), cpu_pg(), [0, 0], -5)),
    ("accumulate-acc-float64", lambda: OP.taylor_accumulate_(torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0])),
    ("accumulate-acc-strided", lambda: OP.taylor_accumulate_(torch.zeros(4)[::2], torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(4)[::2], torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0])),
    ("accumulate-skipped-int32", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=torch.int32), cpu_pg(), cpu_pg(), [0, 0], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=torch.int32), cpu_pg(), cpu_pg(), [0, 0])),
    ("accumulate-inv-scale-int", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0], torch.ones(1, dtype=I64), "abs"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0], "abs", torch.ones(1, dtype=I64))),
    ("accumulate-inv-scale-shape", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0], torch.ones(2, 1), "abs"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [0, 0], "abs", torch.ones(2, 1))),
    ("accumulate-offsets-beyond", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg(), [], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), cpu_pg(), cpu_pg())),
]


@pytest.mark.parametrize("raw, ref", message_params(CASES))
def test_operator_says_what_the_reference_says(raw, ref):
    assert raised(raw) == raised(ref)


# -- property tests ----------------------------------------------------------------------------

def brute_taylor_raw(params, grads, offsets, num_channels):
    raw = torch.zeros(num_channels, dtype=torch.float64)
    for p, g, o in zip(params, grads, offsets):
        prod = p.double() * g.double()
        raw[o:o + p.shape[0]] += prod.reshape(p.shape[0], math.prod(p.shape[1:])).sum(1)
    return raw


@st.composite
def taylor_case(draw):
    layers = draw(layer_list(kinds=("normal", "ties", "zeros")))
    shps = layers[0]
    rows = [s[0] for s in shps]
    if draw(st.booleans()):
        offsets, num_channels = None, None
        natural = sum(rows)
    else:  # tensors that add into the same channels (BN weight and bias onto their conv)
        width = max(rows) + draw(st.integers(0, 4))
        offsets = [draw(st.integers(0, width - r)) for r in rows]
        num_channels = draw(st.sampled_from([None, width]))
        natural = width if num_channels else max(o + r for o, r in zip(offsets, rows))
    return layers, offsets, num_channels, natural


def default_offsets(params):
    out, acc = [], 0
    for p in params:
        out.append(acc)
        acc += p.shape[0]
    return out


@fast(60)
@given(case=taylor_case(), mode=st.sampled_from(["square", "abs"]), dtype=st.sampled_from(DTYPES))
def test_taylor_scores(impl, case, mode, dtype):
    layers, offsets, num_channels, natural = case
    pspecs, gspecs = build(layers, 2)
    P = [s.on("cpu", dtype) for s in pspecs]
    G = [s.on("cpu", dtype) for s in gspecs]
    got = impl.ops.taylor_scores([s.on(impl.device, dtype) for s in pspecs],
                                 [s.on(impl.device, dtype) for s in gspecs], offsets, num_channels, mode)
    assert got.dtype == F32 and got.shape == (natural,) and got.device.type == impl.device.type
    offs = offsets if offsets is not None else default_offsets(P)
    if impl.compiled:
        expected = R.taylor_scores(P, G, offsets, num_channels, mode)
        bound = taylor_bound(P, G, offs, natural, mode)
    else:
        raw = brute_taylor_raw(P, G, offs, natural)
        expected = raw.square() if mode == "square" else raw.abs()
        bound = taylor_bound(P, G, offs, natural, mode, lanes=1)
    assert_bounded(got, expected, bound, f"{impl.name} taylor {mode} {dtype}")


@fast(30)
@given(case=taylor_case(), mode=st.sampled_from(["square", "abs"]),
       steps=st.lists(st.sampled_from(["ok", "ok", "inf", "-inf", "nan"]), min_size=1, max_size=4),
       inv_scale=st.sampled_from([None, 1.0, 2.0 ** -10, 0.3]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_taylor_accumulate(impl, case, mode, steps, inv_scale, dtype, seed):
    layers, offsets, num_channels, natural = case
    pspecs, gspecs = build(layers, 2)
    P = [s.on("cpu", dtype) for s in pspecs]
    G = [s.on("cpu", dtype) for s in gspecs]
    offs = offsets if offsets is not None else default_offsets(P)
    gen = torch.Generator().manual_seed(seed)
    acc = torch.rand(natural, generator=gen).to(impl.device)
    skipped = torch.tensor([3], dtype=torch.int64, device=impl.device)
    expected_acc = acc.cpu().double()
    bound = torch.zeros(natural, dtype=torch.float64)
    expected_skipped = 3
    inv = None if inv_scale is None else torch.tensor([inv_scale], dtype=F32)
    inv_value = 1.0 if inv is None else float(inv)
    for step in steps:
        grads = [g.clone() for g in G]
        nonempty = [i for i, g in enumerate(grads) if g.numel()]
        if step != "ok" and nonempty:
            i = nonempty[int(torch.randint(len(nonempty), (), generator=gen))]
            flat = grads[i].view(-1) if grads[i].is_contiguous() else None
            if flat is None:
                grads[i] = grads[i].contiguous()
                flat = grads[i].view(-1)
            flat[int(torch.randint(flat.numel(), (), generator=gen))] = float(step)
        else:
            step = "ok"
        impl.ops.taylor_accumulate_(acc, skipped, [p.to(impl.device) for p in P], [g.to(impl.device) for g in grads],
                                    offsets, mode, None if inv is None else inv.to(impl.device))
        if step == "ok":
            if impl.compiled:
                raw = R.taylor_scores(P, grads, offs, natural, "abs").double() * abs(inv_value)
                b = taylor_bound(P, grads, offs, natural, mode, inv_value)
            else:
                raw = brute_taylor_raw(P, grads, offs, natural).abs() * abs(inv_value)
                b = taylor_bound(P, grads, offs, natural, mode, inv_value, lanes=1)
            expected_acc += raw.square() if mode == "square" else raw
            bound += b + 2 * U * expected_acc.abs()  # plus the rounding of the float32 add
        else:
            expected_skipped += 1
    assert int(skipped) == expected_skipped, f"{impl.name}: skipped {int(skipped)} != {expected_skipped} ({steps})"
    assert skipped.shape == (1,) and skipped.dtype == torch.int64
    assert_bounded(acc, expected_acc, bound, f"{impl.name} accumulate {mode} {dtype} {steps}")


def test_taylor_many_tiny_layers_and_huge_layer(impl):
    gen = torch.Generator().manual_seed(11)
    sizes = torch.randint(1, 4, (2000, 2), generator=gen).tolist()
    P = [torch.randn(r, c, generator=gen) for r, c in sizes] + [torch.randn(512, 128, 8, 8, generator=gen)]
    G = [torch.randn(p.shape, generator=gen) * 1e-2 for p in P]
    offs = default_offsets(P)
    n = offs[-1] + P[-1].shape[0]
    got = impl.ops.taylor_scores([p.to(impl.device) for p in P], [g.to(impl.device) for g in G])
    if impl.compiled:
        expected, bound = R.taylor_scores(P, G), taylor_bound(P, G, offs, n)
    else:
        expected, bound = brute_taylor_raw(P, G, offs, n).square(), taylor_bound(P, G, offs, n, lanes=1)
    assert_bounded(got, expected, bound, impl.name)
