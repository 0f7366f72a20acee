"""The operators' argument validation where it is one mechanism for every family.

Each family's file (test_scores.py, test_taylor.py, test_groups.py, test_masks.py,
test_counts.py) holds that family's error table and raw-message cases. The tests here span the
families because each checks one mechanism that every family shares:

- the C++ message printer (``csrc/ops/py_format.h``) spells dtypes and shapes as Python does,
  whichever operator refuses them (checked through one operator each, and through the
  per-segment ``min_keep`` of the masks operators, a second tensor argument);
- sparse tensors are refused by every implementation of the tensor-list operators;
- the operators' names have one home (``epi_fast.ops.OPS``; the names the C++ accepts are
  ``_checks``' own);
- the wrappers' schema-form predicates (``_C._tensor_list``, ``_int_list``, ``_float_list``), and
  no Python check runs on a call in schema form, for any operator;
- the C++ checks themselves (``torch.ops``, no Python checks first) refuse segment sizes and
  offsets whose int64 sums would wrap around, in the masks, counts and Taylor operators alike.

As in the families' raw-message cases, an operator called raw (``torch.ops.epi_fast``) must raise
the reference's exception type with the reference's ``str(exception)`` exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import epi_fast.ops as ops
import epi_fast.ops._checks as V
import epi_fast.ops.reference as R
from _helpers import I64, OP, bmask, cpu_bmask, cpu_ones, cpu_pg, ones, raised, s8, scores
from epi_fast.ops._ext import _C


# -- messages: Python's spelling, whichever operator refuses -----------------------------------

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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int8, torch.uint8, torch.int16, torch.int32,
                                   torch.bool, torch.complex64, torch.uint16, torch.uint32, torch.uint64], ids=str)
def test_min_keep_dtypes_print_as_python_does(dtype):
    # the per-segment min_keep is int64 only; the refusal spells the dtype as Python does
    keep = torch.zeros(2).to(dtype)
    for raw, ref in [(OP.global_masks.per_segment, R.global_masks), (OP.global_masks_counts.per_segment, R.global_masks_counts)]:
        assert raised(lambda: raw(s8(), [0.5], [4, 4], keep)) == raised(lambda: ref(s8(), [0.5], [4, 4], keep))
        assert raised(lambda: ref(s8(), [0.5], [4, 4], keep))[0] is TypeError


@pytest.mark.parametrize("shape", [(), (2, 1), (1, 2), (0, 0), (1, 1, 2)], ids=str)
def test_min_keep_shapes_print_as_python_does(shape):
    keep = torch.zeros(shape, dtype=I64)
    assert raised(lambda: OP.global_masks.per_segment(s8(), [0.5], [4, 4], keep)) == \
        raised(lambda: R.global_masks(s8(), [0.5], [4, 4], keep))


def test_min_keep_entries_print_as_python_does():
    # int64 extremes, in the negative-entry and the removable messages
    for keeps in ([-(2**63), 0], [0, -1], [2**63 - 1, -(2**62)]):
        keep = torch.tensor(keeps)
        assert raised(lambda: OP.global_masks.per_segment(s8(), [0.5], [4, 4], keep)) == \
            raised(lambda: R.global_masks(s8(), [0.5], [4, 4], keep))
    keep = torch.tensor([2**63 - 1, 2**63 - 1])
    assert raised(lambda: OP.global_masks.per_segment(s8(), [0.1], [4, 4], keep)) == \
        raised(lambda: R.global_masks(s8(), [0.1], [4, 4], keep))


def test_sparse_tensors_are_refused_by_every_implementation():
    dense, sparse = cpu_ones(2, 3), cpu_ones(2, 3).to_sparse()
    for impl in (ops, R):
        with pytest.raises(TypeError, match=r"^tensors\[1\] is sparse; pass dense tensors$"):
            impl.channel_scores([dense, sparse], "l1")
        with pytest.raises(TypeError, match=r"^grads\[0\] is sparse; pass dense tensors$"):
            impl.taylor_scores([dense], [sparse])
        with pytest.raises(TypeError, match=r"^acc must be a 1-D float32 tensor$"):
            impl.taylor_accumulate_(torch.zeros(2).to_sparse(), torch.zeros(1, dtype=I64), [dense], [dense], [0])


def test_operator_names_have_one_home():
    # OPS is the list of operators and OVERLOADS their other overloads; the C++ registers
    # exactly those schemas.
    from epi_fast.ops._info import OVERLOADS

    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("epi_fast::")}
    assert registered == set(ops.OPS) | {f"{op}.{o}" for op, names in OVERLOADS.items() for o in names}
    assert set(OVERLOADS) <= set(ops.OPS)
    # The names the C++ accepts are _checks' own, in its order (the refusals list them).
    for call, names in [(lambda c: OP.channel_scores([cpu_ones(2)], c), V.SCORE_CRITERIA),
                        (lambda c: OP.taylor_scores([cpu_ones(2)], [cpu_ones(2)], [], 2, c), V.TAYLOR_MODES),
                        (lambda c: OP.group_reduce(s8(), torch.tensor([0, 1]), torch.tensor([0]), c), V.REDUCTIONS)]:
        for name in names:
            call(name)
        _, message = raised(lambda: call("?"))
        assert message.endswith("expected one of " + ", ".join(map(repr, names)))


# -- the wrappers' schema-form predicates ------------------------------------------------------

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
    params, grads = cpu_pg(), cpu_pg()
    ops.channel_scores(params, "l2")
    ops.taylor_scores(params, grads, [0, 0], 2, "abs")
    ops.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=I64), params, grads, [0, 0], "square", torch.ones(1))
    ops.group_reduce(s8(), torch.tensor([0, 8]), torch.arange(8), "max")
    ops.global_masks(s8(), [0.25, 0.5], [4, 4], 1)
    ops.global_masks(s8(), [0.25, 0.5])
    ops.global_masks_counts(s8(), (0.5,), (4, 4), 0)
    ops.global_masks(s8(), [0.25, 0.5], [4, 4], torch.tensor([1, 0]))
    ops.global_masks_counts(s8(), (0.5,), (4, 4), torch.tensor([2, 2]))
    ops.layer_counts(cpu_bmask(2, 8), [4, 4])
    ops.mask_overlap(cpu_bmask(2, 8), cpu_bmask(2, 8))


# -- the C++ checks: int64 sums that would wrap ------------------------------------------------

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
    keep = torch.zeros(3, dtype=I64, device=impl.device)
    for raw in (op.global_masks.per_segment, op.global_masks_counts.per_segment):
        with pytest.raises(ValueError, match=r"segment_sizes add up to more than the 8 channels"):
            raw(s, [0.5], [2**63 - 1, 2**63 - 1, 10], keep)
    # minima near 2^63 clamp to the segment sizes: the unprotected count does not wrap
    with pytest.raises(ValueError, match=r"but the per-segment min_keep leaves only 0 removable"):
        op.global_masks.per_segment(s, [0.5], [4, 4], torch.full((2,), 2**63 - 1, dtype=I64, device=impl.device))
    with pytest.raises(ValueError, match=r"segment_sizes add up to more than the 8 channels"):
        op.layer_counts(bmask(impl, 2, 8), [2**63 - 1, 2**63 - 1, 10])
    a = torch.zeros(4, device=impl.device)
    k = torch.zeros(1, dtype=I64, device=impl.device)
    with pytest.raises(ValueError, match=r"tensor 0 maps rows .* outside the 4 channels"):
        op.taylor_accumulate_(a, k, [ones(impl, 2, 3)], [ones(impl, 2, 3)], [2**63 - 1], None, "square")
    assert a.cpu().tolist() == [0.0] * 4 and int(k) == 0
