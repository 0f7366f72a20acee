"""A torch.compile'd model keeps training correctly after EPIPruner prunes it: the prune drops
the compiled graphs on purpose (torch.compiler.reset), the next call compiles the pruned
network, and its outputs are the eager pruned network's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from epi_fast import EPIPruner, prune
from epi_fast.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_a_compiled_model_is_recompiled_after_the_prune_and_keeps_training():
    torch.manual_seed(0)
    net = build_model("resnet_small", num_classes=10, in_channels=1)
    compiled = torch.compile(net, backend="aot_eager")
    opt = torch.optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    pruner = EPIPruner(compiled, opt, 0.5, torch.zeros(1, 1, 8, 8), criterion="gradient", deadline_epoch=1)
    frames = torch._dynamo.utils.counters["frames"]
    losses = []
    for epoch in range(3):
        for x, y in _batches(seed=epoch):
            opt.zero_grad()
            loss = F.cross_entropy(compiled(x), y)
            loss.backward()
            pruner.accumulate()
            opt.step()
            losses.append(float(loss))
        if pruner.epoch_end():
            compiled_before = frames["ok"]
            x = _batches(1, seed=9)[0][0]
            with torch.no_grad():
                out = compiled(x)  # compiles the pruned network now
            assert frames["ok"] > compiled_before
            torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
    assert pruner.pruned and pruner.prune_epoch == 1
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(p.numel() for p in net.parameters()) == pruner.report()["params_after"]


def test_prune_on_a_compiled_model_drops_its_graphs():
    torch.manual_seed(1)
    net = build_model("resnet_small", num_classes=10, in_channels=1).eval()
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        compiled(x)
    reference = copy.deepcopy(net)
    prune(compiled, 0.5, x)
    prune(reference, 0.5, x)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-5, atol=1e-5)
