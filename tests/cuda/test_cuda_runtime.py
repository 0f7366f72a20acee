"""How the CUDA operators of the scores, taylor, groups and counts families meet the CUDA runtime:
the current (non-default) stream, CUDA-graph capture of the per-step operators, no host
synchronisation, a second GPU and the device guard, an error that earlier CUDA work left pending,
opcheck and torch.compile on CUDA tensors. (global_masks / global_masks_counts have tests of
their own, tests/ops/test_masks.py.)

One table, CALLS, names a call per operator on inputs built on a given device; each test runs
every entry and compares with the same call on the default stream of cuda:0, which repeats bit
for bit (test_cuda_<family>.py check that), so the comparisons are exact.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import epi_fast.ops as ops
from cuda_support import CUDA, DEV, TWO_GPUS, no_sync
from epi_fast.ops._ext import _C
from epi_fast.testing import assert_scores_close

pytestmark = CUDA

SIZES = [10, 0, 30]  # segments of the 40 mask channels


def _inputs(device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = {
        "w": torch.randn(16, 3, 3, 3, generator=g), "gw": torch.randn(16, 3, 3, 3, generator=g),
        "lin": torch.randn(10, 3000, generator=g), "glin": torch.randn(10, 3000, generator=g),
        "bn_w": torch.randn(16, generator=g), "bn_b": torch.randn(16, generator=g),
        "g_bn_w": torch.randn(16, generator=g), "g_bn_b": torch.randn(16, generator=g),
        "scores": torch.randn(40, generator=g),
        "ptr": torch.tensor([0, 2, 3, 9, 40, 41]), "idx": torch.randint(40, (41,), generator=g),
        "masks": torch.rand(3, 40, generator=g) < 0.5, "other": torch.rand(3, 40, generator=g) < 0.5,
        "inv_scale": torch.tensor([0.25]),
    }
    return {k: v.to(device) for k, v in x.items()}


# Taylor's channels: the conv's 16 rows, a BatchNorm's weight and bias into the same 16 channels,
# the linear layer's 10 rows. At most two rows add into a channel, so the atomic adds commute and
# the results repeat bit for bit.
TAYLOR_OFFSETS, TAYLOR_CHANNELS = [0, 16, 16, 32], 42


def _taylor_args(x):
    return [x["w"], x["bn_w"], x["bn_b"], x["lin"]], [x["gw"], x["g_bn_w"], x["g_bn_b"], x["glin"]]


def _accumulate(x):
    acc = torch.zeros(TAYLOR_CHANNELS, device=x["w"].device)
    skipped = torch.zeros(1, dtype=torch.int64, device=acc.device)
    params, grads = _taylor_args(x)
    for inv in (None, x["inv_scale"]):
        ops.taylor_accumulate_(acc, skipped, params, grads, TAYLOR_OFFSETS, "square", inv)
    return acc, skipped


CALLS = {
    "channel_scores": lambda x: (ops.channel_scores([x["w"], x["lin"], x["bn_w"]], "l2"),),
    "channel_scores-abs": lambda x: (ops.channel_scores([x["bn_w"], x["bn_b"]], "abs"),),
    "taylor_scores": lambda x: (ops.taylor_scores(*_taylor_args(x), TAYLOR_OFFSETS, TAYLOR_CHANNELS),),
    "taylor_accumulate_": _accumulate,
    "group_reduce": lambda x: (ops.group_reduce_trusted(x["scores"], x["ptr"], x["idx"], "mean"),),
    "layer_counts": lambda x: (ops.layer_counts(x["masks"], SIZES),),
    "mask_overlap": lambda x: ops.mask_overlap(x["masks"], x["other"], SIZES),
}
NAMES = list(CALLS)


def _expected(name):
    out = CALLS[name](_inputs(DEV))
    torch.cuda.synchronize()
    return out


def _assert_same(got, expected, msg=""):
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        assert a.device == e.device or a.device.type == e.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), e.cpu(), rtol=0, atol=0, equal_nan=True, msg=msg or None)


def _poison(t: torch.Tensor) -> torch.Tensor:
    # A value the real input never has, and safe to read as an index (0 for integer tensors).
    if t.is_floating_point():
        return torch.full_like(t, math.nan)
    return torch.zeros_like(t)


@pytest.mark.sanitize
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_current_stream(name):
    expected = _expected(name)
    x = _inputs(DEV)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = {k: _poison(v) for k, v in x.items()}
    side.synchronize()
    with torch.cuda.stream(side):
        # The real inputs reach y only after a long sleep on `side`: an operator that launched on
        # another stream would read the poison.
        torch.cuda._sleep(50_000_000)
        for k in y:
            y[k].copy_(x[k])
        got = CALLS[name](y)
    side.synchronize()
    _assert_same(got, expected, f"{name} on a side stream")


# Capture allocates from the caching allocator's graph pool; with caching off (the memcheck run
# of scripts/gpu_check.sh) every allocation is a cudaMalloc, which capture forbids.
needs_caching_allocator = pytest.mark.skipif(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1",
                                             reason="CUDA-graph capture needs torch's caching allocator")


@needs_caching_allocator
@pytest.mark.parametrize("name", ["channel_scores", "channel_scores-abs", "taylor_scores", "group_reduce"])
def test_cuda_graph_capture(name):
    x = _inputs(DEV)
    fn = CALLS[name]
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        for _ in range(2):
            fn(x)
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        for k, v in x.items():
            if v.is_floating_point() and k != "inv_scale":
                v.copy_(torch.randn(v.shape, generator=g))
        graph.replay()
        torch.cuda.synchronize()
        _assert_same(out, fn(x), f"{name} replayed")


@needs_caching_allocator
@pytest.mark.sanitize
def test_cuda_graph_capture_of_the_accumulating_step():
    # One captured training-step accumulate, replayed with new gradients, one of them with an inf:
    # the same acc and skipped count as the eager steps.
    x = _inputs(DEV)
    params, grads = _taylor_args(x)
    acc = torch.zeros(TAYLOR_CHANNELS, device=DEV)
    skipped = torch.zeros(1, dtype=torch.int64, device=DEV)

    def step():
        ops.taylor_accumulate_(acc, skipped, params, grads, TAYLOR_OFFSETS, "square", x["inv_scale"])

    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        step()
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    acc.zero_()
    skipped.zero_()
    acc_e = torch.zeros(TAYLOR_CHANNELS, device=DEV)
    skipped_e = torch.zeros(1, dtype=torch.int64, device=DEV)
    g = torch.Generator().manual_seed(6)
    for i in range(5):
        for t in grads:
            t.copy_(torch.randn(t.shape, generator=g))
        if i == 2:
            grads[3][4, 2999] = math.inf
        graph.replay()
        ops.taylor_accumulate_(acc_e, skipped_e, params, grads, TAYLOR_OFFSETS, "square", x["inv_scale"])
    torch.cuda.synchronize()
    assert int(skipped) == int(skipped_e) == 1
    assert torch.equal(acc, acc_e)


@pytest.mark.sanitize
@pytest.mark.parametrize("name", NAMES)
def test_no_host_synchronisation(name):
    x = _inputs(DEV)
    CALLS[name](x)  # first-call set-up (the pinned host buffers of the segment tables) outside
    with no_sync():
        got = CALLS[name](x)
    _assert_same(got, _expected(name), name)


def test_the_validating_group_reduce_reads_its_index_and_the_trusted_one_does_not():
    # epi_fast.group_reduce checks a caller's index on the host (documented); the per-epoch path
    # takes group_reduce_trusted with an index checked once (epi_fast/criteria/_plan.py)
    x = _inputs(DEV)
    with no_sync():
        ops.group_reduce_trusted(x["scores"], x["ptr"], x["idx"], "sum")
        with pytest.raises(RuntimeError, match="synchroniz"):
            ops.group_reduce(x["scores"], x["ptr"], x["idx"], "sum")


@TWO_GPUS
@pytest.mark.parametrize("name", NAMES)
def test_second_gpu_and_the_device_guard(name):
    expected = _expected(name)
    # inputs on cuda:1 while cuda:0 is current, and the other way round
    with torch.cuda.device(0):
        got = CALLS[name](_inputs(torch.device("cuda", 1)))
    assert all(t.device == torch.device("cuda", 1) for t in got)
    torch.cuda.synchronize(1)
    _assert_same(got, expected, f"{name} on cuda:1")
    with torch.cuda.device(1):
        got = CALLS[name](_inputs(torch.device("cuda", 0)))
    assert all(t.device == torch.device("cuda", 0) for t in got)
    torch.cuda.synchronize(0)
    _assert_same(got, expected, f"{name} on cuda:0 with cuda:1 current")


@pytest.mark.parametrize("name", NAMES)
def test_an_error_left_pending_by_earlier_work_is_reported_as_earlier(name):
    expected = _expected(name)
    x = _inputs(DEV)
    if name == "taylor_accumulate_":
        # the state allocated first: torch's own launch check would report the pending error
        acc = torch.zeros(TAYLOR_CHANNELS, device=DEV)
        skipped = torch.zeros(1, dtype=torch.int64, device=DEV)

        def call():
            params, grads = _taylor_args(x)
            for inv in (None, x["inv_scale"]):
                ops.taylor_accumulate_(acc, skipped, params, grads, TAYLOR_OFFSETS, "square", inv)
            return acc, skipped
    else:
        def call():
            return CALLS[name](x)
    torch.cuda.synchronize()
    assert _C._test_leave_cuda_error() != 0  # cudaErrorInvalidConfiguration, pending
    with pytest.raises(RuntimeError, match=r"a CUDA error from an earlier operation was pending.*did not run"):
        call()
    if name == "taylor_accumulate_":
        assert not acc.any() and int(skipped) == 0  # it did not run
    # reported once: the next call runs, and nothing is pending any more
    _assert_same(call(), expected, name)
    torch.cuda.synchronize()


# -- opcheck and torch.compile on CUDA tensors ------------------------------------------------------

class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "epi_fast":
            clone = lambda v: v.clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
            self.calls.append((func, *torch.utils._pytree.tree_map(clone, (args, kwargs))))
        return func(*args, **kwargs)


def _public_calls(x):
    yield "channel_scores-fp16", lambda: ops.channel_scores([x["w"].half(), x["lin"].half()], "l1")
    yield "channel_scores-abs-bf16", lambda: ops.channel_scores([x["bn_w"].bfloat16()], "abs")
    yield "group_reduce-checked", lambda: ops.group_reduce(x["scores"], x["ptr"], x["idx"], "max")
    for name in NAMES:
        yield name, lambda name=name: CALLS[name](x)


@pytest.mark.parametrize("name", ["channel_scores-fp16", "channel_scores-abs-bf16", "group_reduce-checked", *NAMES])
def test_opcheck(name):
    call = dict(_public_calls(_inputs(DEV)))[name]
    rec = _Recorder()
    with rec:
        call()
    assert rec.calls, f"{name} made no torch.ops.epi_fast call"
    for func, args, kwargs in rec.calls:
        assert any(isinstance(a, torch.Tensor) and a.is_cuda for a in torch.utils._pytree.tree_leaves(args))
        torch.library.opcheck(func, args, kwargs)


def test_compile_fullgraph_channel_scores():
    torch._dynamo.reset()

    def f(a, b):
        return ops.channel_scores([a, b], "l2") * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    for shape in [(8, 3, 3, 3), (5, 3000)]:
        a, b = torch.randn(*shape, generator=g).to(DEV), torch.randn(3, 2, generator=g).to(DEV)
        assert_scores_close(compiled(a, b), f(a, b), row_len=3000, msg="compiled vs eager")


def test_compile_fullgraph_taylor_accumulate():
    torch._dynamo.reset()

    def step(acc, skipped, w, gw, b, gb, inv):
        ops.taylor_accumulate_(acc, skipped, [w, b], [gw, gb], [0, 0], "square", inv)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(2)
    w, gw = torch.randn(4, 300, generator=g).to(DEV), torch.randn(4, 300, generator=g).to(DEV)
    b, gb = torch.randn(4, generator=g).to(DEV), torch.randn(4, generator=g).to(DEV)
    inv = torch.tensor([0.5], device=DEV)
    acc, skipped = torch.zeros(4, device=DEV), torch.zeros(1, dtype=torch.int64, device=DEV)
    acc_e, skipped_e = torch.zeros(4, device=DEV), torch.zeros(1, dtype=torch.int64, device=DEV)
    for bad in (False, True, False):
        gw_step = gw.clone()
        if bad:
            gw_step[1, 1] = math.inf
        compiled(acc, skipped, w, gw_step, b, gb, inv)
        step(acc_e, skipped_e, w, gw_step, b, gb, inv)
    assert torch.equal(acc, acc_e)
    assert int(skipped) == int(skipped_e) == 1
