"""GroupNorm in the layout: a GroupNorm over groups of several channels normalises each channel
by its group's joint statistics, so removing one channel changes the others; those channels
are not pruned. With one channel per group (num_groups == num_channels) a channel is on its
own and prunes like any other, equal to the masked network."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from epi_fast import ops
from epi_fast.layout import group_layout
from epi_fast.surgery import prune


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn_a = nn.GroupNorm(4, 8)       # two channels per group: not prunable
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.gn_b = nn.GroupNorm(8, 8)       # one channel per group: prunable
        self.c = nn.Conv2d(8, 16, 3, padding=1)
        self.bn_c = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.gn_a(self.a(x)))
        x = torch.relu(self.gn_b(self.b(x)))
        x = torch.relu(self.bn_c(self.c(x)))
        return self.fc(x.mean((2, 3)))


def test_groupnorm_groups_of_several_channels_are_not_pruned():
    torch.manual_seed(0)
    model = GroupNormNet()
    with torch.no_grad():
        for gn in (model.gn_a, model.gn_b):
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 8, 8)
    layout = group_layout(model, x)
    assert layout.layers == ["b", "c"]
    scores = torch.rand(layout.num_neurons, generator=torch.Generator().manual_seed(1))
    keep = ops.global_masks(scores, 0.5, segment_sizes=layout.group_sizes)[0][0]
    dense = copy.deepcopy(model)
    modules = dict(dense.named_modules())
    with torch.no_grad():
        for g, o in zip(layout.groups, layout.offsets):
            gone = ~keep[o:o + g.size]
            for mem in g.members:
                ch = mem.channels[gone[mem.neurons]]
                m = modules[mem.name]
                if mem.kind in ("out", "bn", "other") and ch.numel():
                    m.weight[ch] = 0
                    m.bias[ch] = 0
    prune(model, 0.5, x, scores=scores, layout=layout, max_layer_ratio=1.0)
    assert model.a.out_channels == model.gn_a.num_channels == 8 and model.gn_a.num_groups == 4
    assert model.b.out_channels == model.gn_b.num_channels == model.gn_b.num_groups < 8
    assert model.c.out_channels < 16
    model.eval(), dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=1e-4)
