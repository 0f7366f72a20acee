"""The raw operators under ``torch.ops.epi_fast``: schemas, fake (meta) kernels, torch.compile.

The samples are recorded, not hand-written against the raw schemas: each public function of
``epi_fast.ops`` is called on small CPU inputs under a dispatch mode that records every
``epi_fast::*`` call it makes, and ``torch.library.opcheck`` then runs on exactly those
arguments (schema mutation annotations, fake tensor kernel vs real kernel, AOT dispatch with
dynamic shapes). A missing extension fails these tests; it is not skipped.

The file spans the operator families because the samples are recorded from every public function
and a test checks that they reach every operator in ``epi_fast.ops.OPS``; the fake-kernel and
``torch.compile`` cases after them test the same registration and tracing machinery, with the
same module-scoped ``ops`` fixture, rather than one family's values.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import compiled_ops
from epi_fast.ops import OPS as OP_NAMES
from epi_fast.testing import assert_exact, assert_scores_close


@pytest.fixture(scope="module")
def ops():
    return compiled_ops()


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "epi_fast":
            clone = lambda x: x.clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
            snap = torch.utils._pytree.tree_map(clone, (args, kwargs))  # before an in-place op runs
            self.calls.append((func, *snap))
        return func(*args, **kwargs)


def sample_calls(ops):
    """Representative public calls on CPU (several dtypes, non-contiguous views, segments)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 2, 2, generator=g)
    gw = torch.randn(4, 3, 2, 2, generator=g)
    gamma, beta = torch.randn(4, generator=g), torch.randn(4, generator=g)
    lin = torch.randn(5, 6, generator=g).t()  # non-contiguous [6, 5]
    scores = torch.randn(12, generator=g)
    masks = torch.rand(3, 12, generator=g) < 0.5
    other = torch.rand(3, 12, generator=g) < 0.5
    acc, skipped = torch.zeros(4), torch.zeros(1, dtype=torch.int64)
    yield "channel_scores-l2", lambda: ops.channel_scores([w, lin], "l2")
    yield "channel_scores-l1-fp16", lambda: ops.channel_scores([w.half(), gamma.half().reshape(4, 1)], "l1")
    yield "channel_scores-abs-bf16", lambda: ops.channel_scores([gamma.bfloat16(), beta.bfloat16()], "abs")
    yield "taylor_scores-offsets", lambda: ops.taylor_scores([w, gamma, beta], [gw, beta, gamma], [0, 0, 0], 4, "square")
    yield "taylor_scores-default", lambda: ops.taylor_scores([w, lin], [gw, lin * 2], mode="abs")
    yield "taylor_accumulate_", lambda: ops.taylor_accumulate_(acc, skipped, [w, gamma], [gw, beta], [0, 0], "square")
    yield "taylor_accumulate_-inv_scale", lambda: ops.taylor_accumulate_(
        acc, skipped, [w, gamma], [gw, beta], [0, 0], "abs", torch.tensor([0.5]))
    yield "group_reduce-max", lambda: ops.group_reduce(scores, torch.tensor([0, 2, 3, 6]), torch.tensor([0, 3, 1, 2, 4, 5]), "max")
    yield "group_reduce-mean", lambda: ops.group_reduce(scores, torch.tensor([0, 1, 5]), torch.tensor([7, 1, 1, 2, 11]), "mean")
    yield "global_masks", lambda: ops.global_masks(scores, [0.0, 0.25, 0.5])
    yield "global_masks-segments", lambda: ops.global_masks(scores, torch.tensor([0.3, 0.6]), [3, 0, 5, 4], 1)
    yield "layer_counts", lambda: ops.layer_counts(masks, [5, 0, 7])
    yield "global_masks_counts", lambda: ops.global_masks_counts(scores, [0.0, 0.25, 0.5], [3, 0, 5, 4], 1)
    yield "global_masks_counts-converted", lambda: ops.global_masks_counts(scores, torch.tensor([0.3]), torch.tensor([12]), 0)
    yield "global_masks-per-segment", lambda: ops.global_masks(scores, [0.25, 0.4], [3, 0, 5, 4], torch.tensor([1, 0, 2, 7]))
    yield "global_masks-per-segment-list", lambda: ops.global_masks(scores, torch.tensor([0.3]), [3, 0, 5, 4], [0, 1, 1, 1])
    yield "global_masks_counts-per-segment", lambda: ops.global_masks_counts(
        scores, [0.0, 0.25], [3, 0, 5, 4], torch.tensor([2, 2, 2, 2])[::1])
    yield "mask_overlap", lambda: ops.mask_overlap(masks, other, [4, 8])
    yield "mask_overlap-one-segment", lambda: ops.mask_overlap(masks[:, ::2], other[:, ::2])


SAMPLES = ("channel_scores-l2", "channel_scores-l1-fp16", "channel_scores-abs-bf16", "taylor_scores-offsets",
           "taylor_scores-default", "taylor_accumulate_", "taylor_accumulate_-inv_scale", "group_reduce-max",
           "group_reduce-mean", "global_masks", "global_masks-segments", "layer_counts", "global_masks_counts",
           "global_masks_counts-converted", "global_masks-per-segment", "global_masks-per-segment-list",
           "global_masks_counts-per-segment", "mask_overlap", "mask_overlap-one-segment")


def recorded(ops, name):
    """The epi_fast::* calls (op, args, kwargs) that the public call `name` makes."""
    call = dict(sample_calls(ops))[name]
    rec = Recorder()
    with rec:
        call()
    assert rec.calls, f"{name}: epi_fast.ops made no torch.ops.epi_fast call"
    return rec.calls


def test_every_operator_registered(ops):
    missing = [n for n in OP_NAMES if not hasattr(torch.ops.epi_fast, n)]
    assert not missing, f"torch.ops.epi_fast lacks {missing}"
    for n in OP_NAMES:
        assert callable(getattr(ops, n)), f"epi_fast.ops.{n} missing"


def test_samples_cover_every_operator(ops):
    from epi_fast.ops._info import OVERLOADS

    assert [n for n, _ in sample_calls(ops)] == list(SAMPLES)
    calls = [c[0] for n in SAMPLES for c in recorded(ops, n)]
    seen = {f._opname for f in calls}
    assert set(OP_NAMES) <= seen, f"no opcheck sample reaches {sorted(set(OP_NAMES) - seen)}"
    overloads = {f"{f._opname}.{f._overloadname}" for f in calls}
    wanted = {f"{op}.{o}" for op, names in OVERLOADS.items() for o in names}
    assert wanted <= overloads, f"no opcheck sample reaches {sorted(wanted - overloads)}"


@pytest.mark.parametrize("name", SAMPLES)
def test_opcheck(ops, name):
    for func, args, kwargs in recorded(ops, name):
        torch.library.opcheck(func, args, kwargs)


def test_fake_kernels_give_result_shapes(ops):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        w, gamma = torch.empty(6, 3, 3, 3), torch.empty(4)
        assert ops.channel_scores([w, gamma.reshape(4, 1)], "l2").shape == (10,)
        assert torch.ops.epi_fast.channel_scores([w], "l1").dtype == torch.float32


def test_compile_fullgraph_channel_scores(ops):
    torch._dynamo.reset()

    def f(a, b):
        return ops.channel_scores([a, b], "l2") * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    for shape in [(8, 3, 3, 3), (5, 7)]:  # a second shape: recompile (or dynamic) must work too
        a, b = torch.randn(*shape, generator=g), torch.randn(3, 2, generator=g)
        assert_scores_close(compiled(a, b), f(a, b), msg="compiled vs eager")
        assert_scores_close(compiled(a, b), 2 * ops.channel_scores([a, b], "l2"), msg="compiled vs eager")


def test_parameters_that_require_grad(ops):
    # model weights require grad; the operators read them without complaint and agree with the reference
    import epi_fast.ops.reference as R

    lin = torch.nn.Linear(5, 3)
    with torch.no_grad():
        expected = R.channel_scores([lin.weight, lin.bias.reshape(3, 1)], "l1")
    got = ops.channel_scores([lin.weight, lin.bias.reshape(3, 1)], "l1")
    assert_scores_close(got.detach(), expected)
    lin(torch.randn(2, 5)).sum().backward()
    got = ops.taylor_scores([lin.weight, lin.bias], [lin.weight.grad, lin.bias.grad], [0, 0])
    with torch.no_grad():
        expected = R.taylor_scores([lin.weight, lin.bias], [lin.weight.grad, lin.bias.grad], [0, 0])
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)
    masks, thr = ops.global_masks(got.detach(), [0.34])
    assert_exact(masks, R.global_masks(expected, [0.34])[0])


def test_compile_fullgraph_taylor_accumulate(ops):
    # the training-step form must trace without a graph break (no host synchronisation)
    torch._dynamo.reset()

    def step(acc, skipped, w, gw, b, gb):
        ops.taylor_accumulate_(acc, skipped, [w, b], [gw, gb], [0, 0], "square")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(2)
    w, gw = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    b, gb = torch.randn(4, generator=g), torch.randn(4, generator=g)
    acc, skipped = torch.zeros(4), torch.zeros(1, dtype=torch.int64)
    acc_e, skipped_e = torch.zeros(4), torch.zeros(1, dtype=torch.int64)
    for bad in (False, True, False):
        gw_step = gw.clone()
        if bad:
            gw_step[1, 1] = float("inf")
        compiled(acc, skipped, w, gw_step, b, gb)
        step(acc_e, skipped_e, w, gw_step, b, gb)
    assert_scores_close(acc, acc_e, msg="compiled vs eager accumulate")
    assert int(skipped) == int(skipped_e) == 1


@pytest.mark.parametrize("name", ["global_masks", "global_masks_counts"])
def test_fake_mask_kernels_refuse_what_the_kernels_refuse(ops, name):
    # The wrappers call the operator first: a meta scores tensor lands in the fake kernel, which
    # must refuse the same arguments (all but NaN scores, which need the values).
    fn = getattr(ops, name)
    meta = torch.empty(8, device="meta")
    masks, thr, *counts = fn(meta, [0.25, 0.5], [4, 4], 1)
    assert masks.shape == (2, 8) and masks.dtype == torch.bool and thr.shape == (2,)
    if counts:
        assert counts[0].shape == (2, 2) and counts[0].dtype == torch.int64
    with pytest.raises(ValueError, match=r"ratio 1.5 \(ratios\[1\]\) is outside \[0, 1\)"):
        fn(meta, [0.25, 1.5], [4, 4], 1)
    with pytest.raises(ValueError, match=r"segment_sizes add up to 7, but there are 8 channels"):
        fn(meta, [0.25], [4, 3], 1)
    with pytest.raises(ValueError, match=r"removes 7 of 8 channels, but min_keep=1 per segment leaves only 6"):
        fn(meta, [0.9], [4, 4], 1)
    with pytest.raises(ValueError, match=r"min_keep must be a non-negative integer, got -1"):
        getattr(torch.ops.epi_fast, name)(meta, [0.25], [4, 4], -1)


@pytest.mark.parametrize("name", ["global_masks", "global_masks_counts"])
def test_fake_mask_kernels_per_segment(ops, name):
    # The .per_segment overloads' fake kernels: shapes, and the refusals that need no values
    # (dtype, dim, segments, length); negative entries and k need the values, as NaN does.
    fn, raw = getattr(ops, name), getattr(torch.ops.epi_fast, name).per_segment
    meta = torch.empty(8, device="meta")
    keep = torch.tensor([1, 3])
    masks, thr, *counts = fn(meta, [0.25, 0.5], [4, 4], keep)
    assert masks.shape == (2, 8) and masks.dtype == torch.bool and thr.shape == (2,) and masks.device.type == "meta"
    if counts:
        assert counts[0].shape == (2, 2) and counts[0].dtype == torch.int64
    with pytest.raises(TypeError, match=r"min_keep tensor has dtype torch.float32; expected torch.int64"):
        fn(meta, [0.25], [4, 4], torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"min_keep must be an int or a 1-D tensor"):
        raw(meta, [0.25], [4, 4], torch.ones(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"min_keep must have one entry per segment \(2\), got 3"):
        raw(meta, [0.25], [4, 4], torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"segment_sizes add up to 7, but there are 8 channels"):
        raw(meta, [0.25], [4, 3], keep)
    if name == "global_masks":
        with pytest.raises(ValueError, match=r"no segment_sizes were given"):
            raw(meta, [0.25], [], keep)
    # the meta device for min_keep too
    assert fn(meta, [0.25], [4, 4], torch.empty(2, dtype=torch.int64, device="meta"))[0].shape == (1, 8)


def test_compile_fullgraph_global_masks(ops):
    # Both min_keep forms trace without a graph break: the wrappers never read a min_keep
    # tensor's values, the fake kernels give the shapes.
    import epi_fast.ops.reference as R

    torch._dynamo.reset()

    def per_epoch(s, keep):
        masks, thr, counts = ops.global_masks_counts(s * 2.0, [0.25, 0.4], [3, 0, 5, 4], keep)
        return masks, thr, counts.sum(dim=1)

    def int_form(s):
        return ops.global_masks(s * 2.0, [0.25, 0.5], [3, 0, 5, 4], 1)

    g = torch.Generator().manual_seed(3)
    s = torch.randn(12, generator=g)
    keep = torch.tensor([1, 0, 2, 7])
    got = torch.compile(per_epoch, fullgraph=True, backend="aot_eager")(s, keep)
    want = R.global_masks_counts(s * 2.0, [0.25, 0.4], [3, 0, 5, 4], keep)
    for a, b in zip(got[:2], want[:2]):
        assert_exact(a, b)
    assert_exact(got[2], want[2].sum(dim=1))
    got = torch.compile(int_form, fullgraph=True, backend="aot_eager")(s)
    for a, b in zip(got, R.global_masks(s * 2.0, [0.25, 0.5], [3, 0, 5, 4], 1)):
        assert_exact(a, b)
