"""EPIPruner on a CUDA model: the Taylor criterion under AMP (autocast float16, GradScaler("cuda"),
accumulate(scaler) after unscale_), the per-step and per-epoch paths without host
synchronisation where the design says there is none, and the synchronisations an epoch end
makes (each one named)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cuda_support import CUDA, DEV, count_syncs, no_sync

pytestmark = CUDA

pytest.importorskip("torch_pruning", reason="EPIPruner traces the model with torch_pruning")

from epi_fast.criteria import Taylor  # noqa: E402
from epi_fast.policy import EPIPruner  # noqa: E402


class Net(nn.Module):
    """Three conv + BatchNorm layers, the last two coupled by a residual add, and a classifier."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(x)))
        y = F.relu(self.bn3(self.conv3(y)) + y)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _setup(criterion, seed=0):
    torch.manual_seed(seed)
    model = Net().to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = EPIPruner(model, opt, 0.5, torch.zeros(1, 3, 16, 16, device=DEV), criterion=criterion)
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(4, 32, 3, 16, 16, device=DEV, generator=g)
    y = torch.randint(10, (4, 32), device=DEV, generator=g)
    return model, opt, pruner, x, y


def test_taylor_with_grad_scaler_skips_exactly_the_steps_the_scaler_skips():
    model, opt, pruner, x, y = _setup("taylor")
    # A small power-of-two scale: nothing overflows by itself, and unscaling is exact, so the
    # accumulator fed the scaled gradients before unscale_ (dividing on the device) must agree
    # with the pruner's, fed the unscaled ones after it.
    scaler = torch.amp.GradScaler("cuda", init_scale=16.0)
    shadow = Taylor().accumulator(pruner.tracker.layout)
    bad = {(1, 1), (2, 0), (2, 3)}  # (epoch, step): an inf in a scored gradient (bn2's weight)
    scaler_skips = 0
    for epoch in (1, 2, 3):
        for step in range(4):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x[step]), y[step])
            scaler.scale(loss).backward()
            if (epoch, step) in bad:
                model.bn2.weight.grad[3] = math.inf
            shadow.step(scaler, opt)  # before unscale_
            scaler.unscale_(opt)
            if pruner.tracker.t0_recorded:
                with no_sync():  # the per-step path after the t = 0 capture
                    pruner.accumulate(scaler)
            else:
                pruner.accumulate(scaler)
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            scaler_skips += scaler.get_scale() < before
        acc = pruner.tracker.accumulator
        assert acc.skipped_steps == shadow.skipped_steps
        torch.testing.assert_close(acc.acc, shadow.acc, rtol=1e-6, atol=0, msg=f"epoch {epoch}")
        assert torch.isfinite(acc.acc).all()
        pruner.epoch_end()
        shadow.reset()
    assert scaler_skips == len(bad)
    assert pruner.skipped_steps == len(bad)
    assert all(v is None for v in pruner.epi[:3])  # window 5: no EPI before epoch 5


@pytest.mark.parametrize("criterion", ["magnitude", "l2", "taylor"])
def test_scoring_makes_no_host_synchronisation(criterion):
    model, opt, pruner, x, y = _setup(criterion)
    tracker = pruner.tracker
    for step in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x[step]), y[step]).backward()
        pruner.accumulate()  # the first step is the t = 0 capture (a sync, documented)
        opt.step()
    opt.zero_grad()
    F.cross_entropy(model(x[2]), y[2]).backward()
    with no_sync():
        pruner.accumulate()  # Taylor: one fused call; the others: nothing to do
        if tracker.accumulator is not None:
            scores = tracker.accumulator.scores(tracker.config.reduce)
        else:
            scores = tracker.criterion.group_scores(tracker.layout, tracker.config.reduce)
    assert scores.device.type == DEV.type and scores.shape == (tracker.layout.num_neurons,)


@pytest.mark.parametrize("criterion, budget", [("magnitude", 2), ("taylor", 3)])
def test_epoch_end_synchronises_only_where_it_must(criterion, budget):
    # An epoch end copies to the host what it must have there: the structures for EPI (one
    # copy), global_masks' NaN count (it raises on NaN scores) and, for Taylor, the skipped-step
    # count (an epoch whose every step was skipped has no scores). Nothing else: the layout's
    # index and the score plan's are copied to the device once.
    model, opt, pruner, x, y = _setup(criterion)
    for epoch in range(2):
        for step in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x[step]), y[step]).backward()
            pruner.accumulate()
            opt.step()
        with count_syncs() as found:
            pruner.epoch_end()
        assert len(found) <= budget, f"epoch {epoch + 1}: {len(found)} synchronisations: {found}"
