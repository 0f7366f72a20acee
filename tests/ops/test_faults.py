"""The wrappers call each operator once and pass its errors on unchanged.

An error raised inside an operator after it has begun writing its outputs (injected through the
extension's test-only hooks, ``_C._test_arm_fault``) must reach the caller as it was raised:
same type, same message, the operator entered once. A wrapper that caught it and called the
operator again would, for the in-place ``taylor_accumulate_``, add a training step twice; for a
CUDA error or an out-of-memory it would hide the first failure behind a second call.

``taylor_accumulate_``'s CPU kernel computes the whole step into scratch and commits it last with
stores that cannot fail, so a call that raised has applied its step exactly once (a fault after
the commit, "written") or not at all (any error before it, "scratch").

The file spans the operator families because the hooks and the rule they check (one entry, the
error passed on) are the same for every operator: one table, ``sample_calls``, parametrises the
test over every operator and every fault stage it defines, and a test checks that the table
covers all of ``epi_fast.ops.OPS``. The ``taylor_accumulate_`` cases after it stay with the
hooks they need (the ``hooks`` fixture, the stages "scratch" and "written").
"""

from __future__ import annotations

import pytest
import torch

import epi_fast
from epi_fast.ops._ext import _C

KINDS = {"runtime": RuntimeError, "value": ValueError, "type": TypeError, "oom": torch.OutOfMemoryError}


@pytest.fixture
def hooks():
    _C._test_reset()
    try:
        yield
    finally:
        _C._test_disable()


def fault_message(op: str, stage: str) -> str:
    return f"epi_fast test fault in {op} at {stage}"


def taylor_step():
    """Two channels: a conv row pair and a BN weight/bias into the same channels; one step adds
    [64, 16] (raw [8, -4], squared)."""
    params = [torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, -1.0])]
    grads = [torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), torch.tensor([0.5, -3.0]), torch.tensor([1.0, 1.0])]
    return params, grads, [0, 0, 0]


def sample_calls():
    """(op, stage, public call) for every operator and every stage it defines."""
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(4, 3, generator=g), torch.randn(5, 2, 2, generator=g)]
    scores = torch.randn(9, generator=g)
    masks = torch.rand(3, 9, generator=g) < 0.5
    other = torch.rand(3, 9, generator=g) < 0.5
    params, grads, offsets = taylor_step()

    def accumulate():
        epi_fast.taylor_accumulate_(torch.zeros(2), torch.zeros(1, dtype=torch.int64), params, grads, offsets)

    yield "channel_scores", "written", lambda: epi_fast.channel_scores(w, "l2")
    yield "taylor_scores", "written", lambda: epi_fast.taylor_scores(params, grads, offsets, 2)
    yield "taylor_accumulate_", "scratch", accumulate
    yield "taylor_accumulate_", "written", accumulate
    yield "group_reduce", "written", lambda: epi_fast.group_reduce(scores, torch.tensor([0, 4, 9]), torch.arange(9))
    yield "global_masks", "written", lambda: epi_fast.global_masks(scores, [0.2, 0.5], [4, 5])
    yield "global_masks_counts", "masks", lambda: epi_fast.global_masks_counts(scores, [0.2, 0.5], [4, 5])
    yield "global_masks_counts", "written", lambda: epi_fast.global_masks_counts(scores, [0.2, 0.5], [4, 5])
    yield "layer_counts", "written", lambda: epi_fast.layer_counts(masks, [4, 5])
    yield "mask_overlap", "written", lambda: epi_fast.mask_overlap(masks, other, [4, 5])
    # the same operators reached through the wrappers' conversions (arguments not in schema form)
    yield "global_masks", "written", lambda: epi_fast.global_masks(scores, torch.tensor([0.2]), torch.tensor([4, 5]))
    yield "taylor_scores", "written", lambda: epi_fast.taylor_scores(params, grads, torch.tensor(offsets))
    yield "layer_counts", "written", lambda: epi_fast.layer_counts(masks[0], torch.tensor([4, 5]))


SAMPLES = list(sample_calls())
SAMPLE_IDS = [f"{op}-{stage}-{i}" for i, (op, stage, _) in enumerate(SAMPLES)]


def test_every_operator_has_a_fault_sample():
    assert {op for op, _, _ in SAMPLES} == set(epi_fast.ops.OPS)


@pytest.mark.parametrize("op, stage, call", SAMPLES, ids=SAMPLE_IDS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_wrapper_enters_once_and_passes_the_error_on(hooks, op, stage, call, kind):
    _C._test_arm_fault(op, stage, kind)
    with pytest.raises(KINDS[kind]) as raised:
        call()
    assert str(raised.value) == fault_message(op, stage), "the operator's error reached the caller changed"
    assert type(raised.value) is KINDS[kind]
    assert _C._test_calls(op) == 1, f"{op} was entered {_C._test_calls(op)} times for one call"


def test_runtime_error_inside_the_operator_is_not_retried(hooks):
    # The old wrappers caught RuntimeError from the operator and called it again; a one-shot
    # fault would then be hidden by a second, successful call.
    scores = torch.arange(8, dtype=torch.float32)
    _C._test_arm_fault("global_masks_counts", "written", "runtime")
    with pytest.raises(RuntimeError, match="epi_fast test fault in global_masks_counts at written"):
        epi_fast.global_masks_counts(scores, [0.5], [4, 4])
    assert _C._test_calls("global_masks_counts") == 1
    # unarmed again: the next call runs normally, entered once more
    masks, _, counts = epi_fast.global_masks_counts(scores, [0.5], [4, 4])
    assert counts.tolist() == [[1, 3]] and _C._test_calls("global_masks_counts") == 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_taylor_accumulate_fault_after_the_commit_applied_the_step_once(hooks, kind):
    params, grads, offsets = taylor_step()
    acc, skipped = torch.tensor([1.0, 2.0]), torch.tensor([3], dtype=torch.int64)
    _C._test_arm_fault("taylor_accumulate_", "written", kind)
    with pytest.raises(KINDS[kind], match="at written"):
        epi_fast.taylor_accumulate_(acc, skipped, params, grads, offsets)
    assert acc.tolist() == [65.0, 18.0] and int(skipped) == 3, "the step was applied other than once"
    assert _C._test_calls("taylor_accumulate_") == 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_taylor_accumulate_fault_before_the_commit_applied_nothing(hooks, kind):
    params, grads, offsets = taylor_step()
    acc, skipped = torch.tensor([1.0, 2.0]), torch.tensor([3], dtype=torch.int64)
    _C._test_arm_fault("taylor_accumulate_", "scratch", kind)
    with pytest.raises(KINDS[kind], match="at scratch"):
        epi_fast.taylor_accumulate_(acc, skipped, params, grads, offsets)
    assert acc.tolist() == [1.0, 2.0] and int(skipped) == 3
    assert _C._test_calls("taylor_accumulate_") == 1


@pytest.mark.parametrize("stage, skipped_after", [("scratch", 3), ("written", 4)])
def test_taylor_accumulate_fault_on_a_skipped_step(hooks, stage, skipped_after):
    # A non-finite step only counts as skipped: once after the commit, not at all before it.
    params, grads, offsets = taylor_step()
    grads[0] = grads[0].clone()
    grads[0][1, 2] = float("inf")
    acc, skipped = torch.tensor([1.0, 2.0]), torch.tensor([3], dtype=torch.int64)
    _C._test_arm_fault("taylor_accumulate_", stage)
    with pytest.raises(RuntimeError, match=f"at {stage}"):
        epi_fast.taylor_accumulate_(acc, skipped, params, grads, offsets)
    assert acc.tolist() == [1.0, 2.0] and int(skipped) == skipped_after
    assert _C._test_calls("taylor_accumulate_") == 1


def test_refused_calls_are_entered_once(hooks):
    # A refusal by the operator's own checks is raised once too (and writes nothing).
    params, grads, _ = taylor_step()
    acc, skipped = torch.zeros(2), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="outside the 2 channels"):
        epi_fast.taylor_accumulate_(acc, skipped, params, grads, [0, 0, 1])
    with pytest.raises(ValueError, match="unknown criterion 'l3'"):
        epi_fast.channel_scores([torch.ones(2, 3)], "l3")
    assert _C._test_calls("taylor_accumulate_") == 1 and _C._test_calls("channel_scores") == 1
    assert acc.tolist() == [0.0, 0.0] and int(skipped) == 0


def test_hooks_count_only_when_on():
    _C._test_disable()
    epi_fast.channel_scores([torch.ones(2, 3)])
    assert _C._test_calls("channel_scores") == 0
    _C._test_reset()
    try:
        epi_fast.channel_scores([torch.ones(2, 3)])
        epi_fast.global_masks_counts(torch.arange(4.0), [0.5], [2, 2])
        # global_masks_counts composes global_masks and layer_counts without entering them
        assert [_C._test_calls(op) for op in ("channel_scores", "global_masks_counts", "global_masks",
                                              "layer_counts")] == [1, 1, 0, 0]
    finally:
        _C._test_disable()


def test_arming_refuses_an_unknown_kind(hooks):
    with pytest.raises(ValueError, match="unknown fault kind 'segfault'"):
        _C._test_arm_fault("channel_scores", "written", "segfault")
