"""The scores family, ``channel_scores``: its hand-computed cases, error table
(``CHANNEL_SCORES``), raw-operator messages and property tests, as tests/ops/_helpers.py
describes them. The reference's own oracle in the property tests: float64 sums.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import epi_fast.ops.reference as R
from _helpers import (DTYPES, F32, HALF_DTYPES, I64, INF, META, NAN, OP, build, cpu_ones, error_params, fast,
                      layer_list, message_params, ones, raised, scores_equal, spec, values)
from epi_fast.testing import assert_exact, assert_scores_close


# -- hand-computed cases -----------------------------------------------------------------------

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
def test_channel_scores_norms_hand_computed(impl, criterion, expected, dtype):
    w = impl.t([[3.0, -4.0], [0.0, 0.0], [1.0, 1.0]], dtype)
    c = impl.t([[[[1.0], [2.0]]], [[[-2.0], [2.0]]]], dtype)
    out = impl.ops.channel_scores([w, c], criterion)
    assert out.dtype == F32 and out.shape == (5,)
    scores_equal(impl, out, expected)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_channel_scores_abs_hand_computed(impl, dtype):
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


# -- error table: (id, call(impl, ops), exception, match) --------------------------------------

def W(impl):
    return ones(impl, 2, 3)


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


ERRORS = error_params(("channel_scores", CHANNEL_SCORES))


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_bad_arguments(impl, call, exc, match):
    with pytest.raises(exc, match=match):
        call(impl, impl.ops)


# -- raw messages: (id, the raw operator call, the reference call with the same meaning) -------

CASES = [
    ("scores-0-dim", lambda: OP.channel_scores([cpu_ones(2, 3), torch.tensor(1.0)], "l2"),
     lambda: R.channel_scores([cpu_ones(2, 3), torch.tensor(1.0)], "l2")),
    ("scores-int64", lambda: OP.channel_scores([cpu_ones(2, 3, dtype=I64)], "l1"), lambda: R.channel_scores([cpu_ones(2, 3, dtype=I64)], "l1")),
    ("scores-bool", lambda: OP.channel_scores([cpu_ones(2, dtype=torch.bool)], "abs"),
     lambda: R.channel_scores([cpu_ones(2, dtype=torch.bool)], "abs")),
    ("scores-complex", lambda: OP.channel_scores([cpu_ones(2, dtype=torch.complex64)], "l2"),
     lambda: R.channel_scores([cpu_ones(2, dtype=torch.complex64)], "l2")),
    ("scores-mixed-dtypes", lambda: OP.channel_scores([cpu_ones(2, 3), cpu_ones(2, dtype=torch.bfloat16)], "l2"),
     lambda: R.channel_scores([cpu_ones(2, 3), cpu_ones(2, dtype=torch.bfloat16)], "l2")),
    ("scores-sparse", lambda: OP.channel_scores([cpu_ones(2, 3), cpu_ones(2, 3).to_sparse()], "l2"),
     lambda: R.channel_scores([cpu_ones(2, 3), cpu_ones(2, 3).to_sparse()], "l2")),
    ("scores-abs-rows", lambda: OP.channel_scores([cpu_ones(4), cpu_ones(2, 3, 5)], "abs"), lambda: R.channel_scores([cpu_ones(4), cpu_ones(2, 3, 5)], "abs")),
    ("scores-criterion", lambda: OP.channel_scores([cpu_ones(2)], "L2"), lambda: R.channel_scores([cpu_ones(2)], "L2")),
    ("scores-criterion-quote", lambda: OP.channel_scores([cpu_ones(2)], "it's"), lambda: R.channel_scores([cpu_ones(2)], "it's")),
    ("scores-criterion-quotes", lambda: OP.channel_scores([cpu_ones(2)], "a'b\"c"), lambda: R.channel_scores([cpu_ones(2)], "a'b\"c")),
    ("scores-criterion-escapes", lambda: OP.channel_scores([cpu_ones(2)], "l2\n\t\\\x01"),
     lambda: R.channel_scores([cpu_ones(2)], "l2\n\t\\\x01")),
]


@pytest.mark.parametrize("raw, ref", message_params(CASES))
def test_operator_says_what_the_reference_says(raw, ref):
    assert raised(raw) == raised(ref)


# -- property tests ----------------------------------------------------------------------------

def row_len(tensors) -> int:
    return max([math.prod(t.shape[1:]) for t in tensors] + [1])


def brute_channel_scores(tensors, criterion) -> torch.Tensor:
    out = []
    for t in tensors:
        rows = t.double().reshape(t.shape[0], math.prod(t.shape[1:]))
        if criterion == "l1":
            out.append(rows.abs().sum(1))
        elif criterion == "l2":
            out.append(rows.square().sum(1).sqrt())
        else:
            out.append(rows.reshape(-1).abs())
    return torch.cat(out).float()  # float64 -> float32 rounding of the exact value


def check_channel_scores(impl, specs, criterion, dtype):
    cpu = [s.on("cpu", dtype) for s in specs]
    got = impl.ops.channel_scores([s.on(impl.device, dtype) for s in specs], criterion)
    assert got.device.type == impl.device.type
    if impl.compiled:
        expected = R.channel_scores(cpu, criterion)
    else:
        expected = brute_channel_scores(cpu, criterion)
    assert_scores_close(got, expected, row_len(cpu), f"{impl.name} {criterion} {dtype}")


@fast(60)
@given(layers=layer_list(), criterion=st.sampled_from(["l1", "l2"]), dtype=st.sampled_from(DTYPES))
def test_channel_scores_norms(impl, layers, criterion, dtype):
    (specs,) = build(layers)
    check_channel_scores(impl, specs, criterion, dtype)


abs_shapes = st.one_of(st.tuples(st.integers(0, 50)), st.tuples(st.integers(0, 20), st.just(1), st.just(1), st.just(1)))


@fast(30)
@given(n=st.integers(1, 5), data=st.data(), dtype=st.sampled_from(DTYPES),
       kind=st.sampled_from(["normal", "ties", "special"]), seed=st.integers(0, 2**31 - 1))
def test_channel_scores_abs(impl, n, data, dtype, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    specs = [spec(data.draw(abs_shapes), data.draw(st.sampled_from(["contiguous", "strided_rows"])),
                  lambda sh: values(sh, kind, gen)) for _ in range(n)]
    check_channel_scores(impl, specs, "abs", dtype)


def test_channel_scores_many_tiny_layers(impl):
    # ~2000 layers of 0..4 rows of 0..3 values, as in a wide model's BN/linear list
    gen = torch.Generator().manual_seed(7)
    sizes = torch.randint(0, 5, (2000, 2), generator=gen).tolist()
    tensors = [torch.randn(r, c, generator=gen) for r, c in sizes]
    tensors += [torch.randn(3, generator=gen)]
    for crit in ("l1", "l2"):
        got = impl.ops.channel_scores([t.to(impl.device) for t in tensors], crit)
        expected = R.channel_scores(tensors, crit) if impl.compiled else brute_channel_scores(tensors, crit)
        assert_scores_close(got, expected, 4, f"{impl.name} {crit}")
    gammas = [torch.randn(r, generator=gen) for r, _ in sizes]
    got = impl.ops.channel_scores([g.to(impl.device) for g in gammas], "abs")
    assert_exact(got.cpu(), torch.cat(gammas).abs(), impl.name)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        pytest.param((1024, 256, 4, 4), torch.float32, id="wide-rows-fp32"),
        pytest.param((1024, 256, 4, 4), torch.bfloat16, id="wide-rows-bf16"),
        pytest.param((70000, 60), torch.float32, id="many-rows-fp32"),
        pytest.param((1, 1 << 22), torch.float16, id="one-row-fp16"),
    ],
)
def test_channel_scores_huge_layer(impl, shape, dtype):
    # one ~4M-element weight, once per shape, plus a tiny layer after it
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(shape, generator=gen).to(dtype)
    tiny = torch.randn(2, 3, generator=gen).to(dtype)
    for crit in ("l1", "l2"):
        got = impl.ops.channel_scores([w.to(impl.device), tiny.to(impl.device)], crit)
        expected = R.channel_scores([w, tiny], crit) if impl.compiled else brute_channel_scores([w, tiny], crit)
        assert_scores_close(got, expected, row_len([w]), f"{impl.name} {crit}")
