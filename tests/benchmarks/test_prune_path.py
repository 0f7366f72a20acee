"""The prune path made faster for the cost benchmark (benchmarks/costs, part C) computes what it
computed before: the dense FLOPs counted inside the dependency-graph trace's forward pass are
the FLOPs `measure_flops` counts in a pass of its own, and the cut's narrower index tensors give
the same pruned parameters and optimizer state."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from epi_fast import prune
from epi_fast.layout import group_layout
from epi_fast.models.small import DenseNetSmall, MobileNetSmall, ResNetSmall
from epi_fast.targets.flops import FlopProbe, measure_flops


class _Attention(nn.Module):
    """A conv stem feeding nn.MultiheadAttention: the count must see attention with autograd on."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Linear(16, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        t = self.mid(self.stem(x).flatten(2).transpose(1, 2))
        a, _ = self.attn(t, t, t)
        return self.head(a.mean(1))


MODELS = [
    pytest.param(lambda: ResNetSmall(), (2, 3, 16, 16), id="resnet_small"),
    pytest.param(lambda: MobileNetSmall(), (1, 3, 16, 16), id="mobilenet_small"),
    pytest.param(lambda: DenseNetSmall(), (1, 3, 16, 16), id="densenet_small"),
    pytest.param(_Attention, (2, 3, 8, 8), id="attention"),
]


@pytest.mark.parametrize("make, shape", MODELS)
def test_the_traced_count_is_measure_flops(make, shape):
    torch.manual_seed(0)
    model = make().train()
    x = torch.randn(shape)
    alone = measure_flops(model, x)
    probe = FlopProbe(model)
    group_layout(model, x, observe=probe)
    assert probe.count.total == alone.total > 0
    assert probe.count.own == alone.own
    assert all(m.training for m in model.modules())  # the trace and the probe restored every flag
    pruned = copy.deepcopy(model)
    report = prune(pruned, 0.5, x)
    assert report["flops_before"] == alone.total
    assert report["flops_after"] == measure_flops(pruned, x).total < alone.total


def test_the_probe_counts_one_call_and_passes_errors_on():
    model = nn.Sequential(nn.Linear(4, 3))
    probe = FlopProbe(model)
    with probe:
        model(torch.randn(2, 4))
    assert probe.count.total == 2 * 2 * 4 * 3
    with pytest.raises(ZeroDivisionError):
        with probe:
            1 / 0
    assert probe.count is None  # no count from a call that failed
    model.train()
    with probe:
        with pytest.raises(RuntimeError, match="in use"):
            probe.__enter__()
    assert model.training


def test_a_model_that_fails_inside_the_traced_count_is_reported_as_before():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise KeyError("no such input")

    with pytest.raises(ValueError, match="cannot run on example_inputs"):
        prune(Broken(), 0.5, torch.randn(1, 4))


def test_the_cut_gathers_the_same_entries_with_narrow_and_wide_indices(monkeypatch):
    import epi_fast.surgery.removal as removal

    torch.manual_seed(0)
    dense = ResNetSmall()
    x = torch.randn(2, 3, 16, 16)
    results = []
    for exact in (removal._FLOAT32_EXACT, 0):  # float32 indices where they fit; float64 everywhere
        monkeypatch.setattr(removal, "_FLOAT32_EXACT", exact)
        model = copy.deepcopy(dense)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(x).sum().backward()
        opt.step()
        prune(model, 0.5, x, optimizer=opt)
        state = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        results.append(([p.detach().clone() for p in model.parameters()], state))
    (p32, s32), (p64, s64) = results
    assert len(p32) == len(p64)
    for a, b in zip(p32 + s32, p64 + s64):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
