"""prune() checks that the pruned widths are the structure the criterion chose, and undoes
itself when they are not."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from epi_fast.layout import group_layout
from epi_fast.surgery import prune

from test_surgery import assert_unchanged, snapshot


class Stem(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 2 * c, 3, 1, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.conv = nn.Conv2d(2 * c, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.conv(self.stem(x)).mean((2, 3)))


def test_a_prune_whose_widths_differ_from_the_layout_is_undone():
    torch.manual_seed(0)
    model, x = Stem(), torch.randn(4, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    opt.step()
    momentum = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    params = list(model.parameters())
    snap = snapshot(model)
    # A layout that does not describe how the channels are coupled (here: one that counts two
    # output channels of stem.0 per neuron).
    layout = group_layout(model, x[:1])
    layout.layer_scale[layout.layers.index("stem.0")] = 2
    with pytest.raises(RuntimeError, match=r"not the one the criterion chose: layer stem\.0 kept \d+ output channels "
                                           r"where the layout's structure says \d+.*undone"):
        prune(model, 0.5, x[:1], optimizer=opt, layout=layout)
    assert_unchanged(model, snap)
    assert opt.param_groups[0]["params"] == params
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[id(p)])
    # The model still trains and a layout of it can be built again.
    F.cross_entropy(model(x), torch.arange(4)).backward()
    opt.step()
    group_layout(model, x[:1])


def test_the_report_widths_equal_the_real_widths():
    from epi_fast.models import build_model

    for name in ("resnet_small", "mobilenet_small", "densenet_small"):
        torch.manual_seed(0)
        model = build_model(name)
        x = torch.randn(1, 3, 8, 8)
        layout = group_layout(model, x)
        report = prune(model, 0.5, x, layout=layout)
        modules = dict(model.named_modules())
        widths = [getattr(modules[n], "out_channels", getattr(modules[n], "out_features", None)) for n in report["layers"]]
        assert report["kept"] == widths, name
