"""The C++ checks say word for word what the reference's Python checks say.

The error tables (test_ops_errors.py) match messages by pattern through the public functions;
here each operator is called raw (``torch.ops.epi_fast``, no Python in between) and its message
must equal the reference's ``str(exception)`` exactly, with the same exception type: Python's
spelling of dtypes, shapes, floats and strings included. Also: the wrappers' schema-form
predicates, sparse tensors, and the one home of the operators' names.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
import torch

import epi_fast.ops as ops
import epi_fast.ops._checks as V
import epi_fast.ops.reference as R
from epi_fast.ops._ext import _C

OP = torch.ops.epi_fast
F32, I64 = torch.float32, torch.int64


def raised(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return type(info.value), str(info.value)


def W(*shape, dtype=F32):
    return torch.ones(shape, dtype=dtype)


def pg(dtype=F32):
    return [W(2, 3, dtype=dtype), W(2, dtype=dtype)]


def s8():
    return torch.arange(8, dtype=F32)


def bmask(*shape):
    return torch.ones(shape, dtype=torch.bool)


# (id, the raw operator call, the reference call with the same meaning)
CASES = [
    # channel_scores
    ("scores-0-dim", lambda: OP.channel_scores([W(2, 3), torch.tensor(1.0)], "l2"),
     lambda: R.channel_scores([W(2, 3), torch.tensor(1.0)], "l2")),
    ("scores-int64", lambda: OP.channel_scores([W(2, 3, dtype=I64)], "l1"), lambda: R.channel_scores([W(2, 3, dtype=I64)], "l1")),
    ("scores-bool", lambda: OP.channel_scores([W(2, dtype=torch.bool)], "abs"),
     lambda: R.channel_scores([W(2, dtype=torch.bool)], "abs")),
    ("scores-complex", lambda: OP.channel_scores([W(2, dtype=torch.complex64)], "l2"),
     lambda: R.channel_scores([W(2, dtype=torch.complex64)], "l2")),
    ("scores-mixed-dtypes", lambda: OP.channel_scores([W(2, 3), W(2, dtype=torch.bfloat16)], "l2"),
     lambda: R.channel_scores([W(2, 3), W(2, dtype=torch.bfloat16)], "l2")),
    ("scores-sparse", lambda: OP.channel_scores([W(2, 3), W(2, 3).to_sparse()], "l2"),
     lambda: R.channel_scores([W(2, 3), W(2, 3).to_sparse()], "l2")),
    ("scores-abs-rows", lambda: OP.channel_scores([W(4), W(2, 3, 5)], "abs"), lambda: R.channel_scores([W(4), W(2, 3, 5)], "abs")),
    ("scores-criterion", lambda: OP.channel_scores([W(2)], "L2"), lambda: R.channel_scores([W(2)], "L2")),
    ("scores-criterion-quote", lambda: OP.channel_scores([W(2)], "it's"), lambda: R.channel_scores([W(2)], "it's")),
    ("scores-criterion-quotes", lambda: OP.channel_scores([W(2)], "a'b\"c"), lambda: R.channel_scores([W(2)], "a'b\"c")),
    ("scores-criterion-escapes", lambda: OP.channel_scores([W(2)], "l2\n\t\\\x01"),
     lambda: R.channel_scores([W(2)], "l2\n\t\\\x01")),
    # taylor
    ("taylor-mode", lambda: OP.taylor_scores(pg(), pg(), [], 4, "cube"), lambda: R.taylor_scores(pg(), pg(), mode="cube")),
    ("taylor-count", lambda: OP.taylor_scores(pg(), pg()[:1], [], 4, "square"), lambda: R.taylor_scores(pg(), pg()[:1])),
    ("taylor-shape", lambda: OP.taylor_scores([W(2, 3)], [W(3, 2)], [], 2, "abs"),
     lambda: R.taylor_scores([W(2, 3)], [W(3, 2)], mode="abs")),
    ("taylor-dtype", lambda: OP.taylor_scores(pg(), pg(torch.float16), [], 4, "square"),
     lambda: R.taylor_scores(pg(), pg(torch.float16))),
    ("taylor-offsets-count", lambda: OP.taylor_scores(pg(), pg(), [0], 4, "square"), lambda: R.taylor_scores(pg(), pg(), [0], 4)),
    ("taylor-offsets-outside", lambda: OP.taylor_scores(pg(), pg(), [0, 1], 2, "square"),
     lambda: R.taylor_scores(pg(), pg(), [0, 1], 2)),
    ("taylor-offsets-negative", lambda: OP.taylor_scores(pg(), pg(), [0, -1], 2, "square"),
     lambda: R.taylor_scores(pg(), pg(), [0, -1], 2)),
    ("taylor-offsets-int64-max", lambda: OP.taylor_scores(pg(), pg(), [0, 2**63 - 1], 4, "square"),
     lambda: R.taylor_scores(pg(), pg(), [0, 2**63 - 1], 4)),
    ("taylor-num-channels-negative", lambda: OP.taylor_scores(pg(), pg(), [0, 0], -5, "square"),
     lambda: R.taylor_scores(pg(), pg(), [0, 0], -5)),
    ("accumulate-acc-float64", lambda: OP.taylor_accumulate_(torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=I64), pg(), pg(), [0, 0], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=I64), pg(), pg(), [0, 0])),
    ("accumulate-acc-strided", lambda: OP.taylor_accumulate_(torch.zeros(4)[::2], torch.zeros(1, dtype=I64), pg(), pg(), [0, 0], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(4)[::2], torch.zeros(1, dtype=I64), pg(), pg(), [0, 0])),
    ("accumulate-skipped-int32", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=torch.int32), pg(), pg(), [0, 0], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=torch.int32), pg(), pg(), [0, 0])),
    ("accumulate-inv-scale-int", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), pg(), pg(), [0, 0], torch.ones(1, dtype=I64), "abs"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), pg(), pg(), [0, 0], "abs", torch.ones(1, dtype=I64))),
    ("accumulate-inv-scale-shape", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), pg(), pg(), [0, 0], torch.ones(2, 1), "abs"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), pg(), pg(), [0, 0], "abs", torch.ones(2, 1))),
    ("accumulate-offsets-beyond", lambda: OP.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), pg(), pg(), [], None, "square"),
     lambda: R.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), pg(), pg())),
    # group_reduce
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
    # global_masks, global_masks_counts
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
    # layer_counts, mask_overlap
    ("counts-not-bool", lambda: OP.layer_counts(bmask(2, 4).to(torch.uint8), [2, 2]),
     lambda: R.layer_counts(bmask(2, 4).to(torch.uint8), [2, 2])),
    ("counts-3d", lambda: OP.layer_counts(bmask(1, 2, 4), [2, 2]), lambda: R.layer_counts(bmask(1, 2, 4), [2, 2])),
    ("counts-0d", lambda: OP.layer_counts(torch.tensor(True), [1]), lambda: R.layer_counts(torch.tensor(True), [1])),
    ("counts-sizes", lambda: OP.layer_counts(bmask(2, 4), [2, 1]), lambda: R.layer_counts(bmask(2, 4), [2, 1])),
    ("counts-sizes-1d-mask", lambda: OP.layer_counts(bmask(4), [5]), lambda: R.layer_counts(bmask(4), [5])),
    ("overlap-shape", lambda: OP.mask_overlap(bmask(2, 4), bmask(4), []), lambda: R.mask_overlap(bmask(2, 4), bmask(4))),
    ("overlap-b-dtype", lambda: OP.mask_overlap(bmask(1, 4), bmask(1, 4).double(), []),
     lambda: R.mask_overlap(bmask(1, 4), bmask(1, 4).double())),
    ("overlap-sizes", lambda: OP.mask_overlap(bmask(1, 4), bmask(1, 4), [3]), lambda: R.mask_overlap(bmask(1, 4), bmask(1, 4), [3])),
]


@pytest.mark.parametrize("raw, ref", [pytest.param(r, f, id=i) for i, r, f in CASES])
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                                   torch.bool, torch.complex64, torch.complex128, torch.float8_e4m3fn,
                                   torch.float8_e5m2, torch.uint16, torch.uint32], ids=str)
def test_dtypes_print_as_python_does(dtype):
    t = torch.zeros(2, 3).to(dtype)
    assert raised(lambda: OP.channel_scores([t], "l2")) == raised(lambda: R.channel_scores([t], "l2"))


@pytest.mark.parametrize("shape", [(2, 2), (1, 1, 1), (0, 3), (2, 0, 4), ()], ids=str)
def test_shapes_print_as_python_does(shape):
    t = torch.zeros(shape)
    assert raised(lambda: OP.global_masks(t, [0.5], [], 1)) == raised(lambda: R.global_masks(t, [0.5]))


def test_sparse_tensors_are_refused_by_every_implementation():
    dense, sparse = W(2, 3), W(2, 3).to_sparse()
    for impl in (ops, R):
        with pytest.raises(TypeError, match=r"^tensors\[1\] is sparse; pass dense tensors$"):
            impl.channel_scores([dense, sparse], "l1")
        with pytest.raises(TypeError, match=r"^grads\[0\] is sparse; pass dense tensors$"):
            impl.taylor_scores([dense], [sparse])
        with pytest.raises(TypeError, match=r"^acc must be a 1-D float32 tensor$"):
            impl.taylor_accumulate_(torch.zeros(2).to_sparse(), torch.zeros(1, dtype=I64), [dense], [dense], [0])


def test_layer_counts_takes_a_1d_mask_as_one_row():
    m = torch.tensor([True, False, True, True])
    assert OP.layer_counts(m, [1, 3]).tolist() == [[1, 2]] == R.layer_counts(m, [1, 3]).tolist()
    both, diff = OP.mask_overlap(m, ~m, [])
    assert both.tolist() == [[0]] and diff.tolist() == [[4]]


def test_operator_names_have_one_home():
    # OPS is the list of operators; the C++ registers exactly those schemas.
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("epi_fast::")}
    assert registered == set(ops.OPS)
    # The names the C++ accepts are _checks' own, in its order (the refusals list them).
    for call, names in [(lambda c: OP.channel_scores([W(2)], c), V.SCORE_CRITERIA),
                        (lambda c: OP.taylor_scores([W(2)], [W(2)], [], 2, c), V.TAYLOR_MODES),
                        (lambda c: OP.group_reduce(s8(), torch.tensor([0, 1]), torch.tensor([0]), c), V.REDUCTIONS)]:
        for name in names:
            call(name)
        _, message = raised(lambda: call("?"))
        assert message.endswith("expected one of " + ", ".join(map(repr, names)))


# --- the wrappers' schema-form predicates ---------------------------------------------------

class MyTensor(torch.Tensor):
    pass


def test_tensor_list_predicate():
    t, p = torch.ones(2), torch.nn.Parameter(torch.ones(2))
    sub = torch.ones(2).as_subclass(MyTensor)
    for ok in ([t], (t, p), [sub, t]):
        assert _C._tensor_list(ok) is True
    for bad in ([], (), [t, 1.0], [t, [t]], t, {"a": t}, None, iter([t]), [np.ones(2)]):
        assert _C._tensor_list(bad) is False


def test_int_list_predicate():
    for ok in ([], [0, 1, -3], (4, 4), [True, 2], [2**63 - 1], [2**62, 2**62 - 1], [-(2**63), 5]):
        assert _C._int_list(ok) is True, ok
    for bad in ([1.0], [1, 2.5], [np.int64(3)], [torch.tensor(1)], torch.tensor([1, 2]), 3, "12", None,
                [2**63], [-(2**63) - 1], [2**62, 2**62], [2**63 - 1, 1]):
        assert _C._int_list(bad) is False, bad


def test_float_list_predicate():
    for ok in ([], [0.5], (0.1, 0.2), [np.float64(0.3)], [math.nan]):
        assert _C._float_list(ok) is True, ok
    for bad in ([0], [True], [0.5, 1], [np.float32(0.3)], [torch.tensor(0.5)], 0.5, torch.tensor([0.5]), None):
        assert _C._float_list(bad) is False, bad


def test_schema_form_calls_run_no_python_check(monkeypatch):
    # In schema form a wrapper is one operator call: none of the reference's checks runs (they
    # cost ~1 us a tensor); the operator's own checks hold the rules.
    def forbidden(*args, **kwargs):
        raise AssertionError("a Python check ran on a call in schema form")

    for name in [n for n in dir(V) if not n.startswith("_") and callable(getattr(V, n))
                 and n not in ("natural_channels",)]:
        monkeypatch.setattr(V, name, forbidden)
    params, grads = pg(), pg()
    ops.channel_scores(params, "l2")
    ops.taylor_scores(params, grads, [0, 0], 2, "abs")
    ops.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), params, grads, [0, 0], "square", torch.ones(1))
    ops.group_reduce(s8(), torch.tensor([0, 8]), torch.arange(8), "max")
    ops.global_masks(s8(), [0.25, 0.5], [4, 4], 1)
    ops.global_masks(s8(), [0.25, 0.5])
    ops.global_masks_counts(s8(), (0.5,), (4, 4), 0)
    ops.layer_counts(bmask(2, 8), [4, 4])
    ops.mask_overlap(bmask(2, 8), bmask(2, 8))
