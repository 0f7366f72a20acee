"""A new kind of group is one module: a LayoutGroup subclass and a registered finder. This test
writes one (the hidden units of a user's two-layer MLP block) outside the package and prunes
with it through the unchanged criteria, surgery and pruner."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import epi_fast
from epi_fast.layout import LayoutGroup, Member, Source, group_layout, register_group_kind, unregister_group_kind
from epi_fast.policy import EPIPruner


class MLPBlock(nn.Module):
    def __init__(self, d=8, hidden=12):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.mlp = MLPBlock()
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.head(self.mlp(h))


@dataclass
class HiddenUnits(LayoutGroup):
    """The hidden units of an MLPBlock: rows of fc1, columns of fc2."""

    block: nn.Module = None
    kind = "mlp-hidden"

    def sources(self, role):
        if role in ("filters", "taylor"):
            m = self.members[0]
            attrs = ("weight",) if role == "filters" else ("weight", "bias")
            return [Source(m.name, m.module, attrs, m.channels, m.neurons)]
        return []

    def structure_layers(self):
        return [(self.block.fc1, self.size, 1)]

    def remove(self, dg, neurons):
        keep = torch.tensor([j for j in range(self.block.fc1.out_features) if j not in set(neurons)])
        fc1, fc2 = self.block.fc1, self.block.fc2
        fc1.weight = nn.Parameter(fc1.weight.data[keep])
        fc1.bias = nn.Parameter(fc1.bias.data[keep])
        fc2.weight = nn.Parameter(fc2.weight.data[:, keep])
        fc1.out_features = fc2.in_features = len(keep)


def find_hidden_units(trace, ignored, names):
    groups = []
    for module, name in names.items():
        if isinstance(module, MLPBlock) and module.fc1 not in ignored:
            n = module.fc1.out_features
            idx = torch.arange(n)
            members = [Member(f"{name}.fc1", module.fc1, "out", idx, idx), Member(f"{name}.fc2", module.fc2, "in", idx, idx)]
            groups.append(HiddenUnits(f"{name}.fc1", n, members, block=module))
    return groups


@pytest.fixture
def hidden_kind():
    register_group_kind("mlp-hidden", find_hidden_units, first=True)
    yield
    unregister_group_kind("mlp-hidden")


def test_a_registered_kind_owns_its_layers(hidden_kind):
    model = Net()
    layout = group_layout(model, torch.randn(1, 1, 8, 8))
    kinds = {g.kind: g for g in layout.groups}
    assert set(kinds) == {"mlp-hidden", "channels"}
    assert kinds["mlp-hidden"].root == "mlp.fc1" and "mlp.fc1" in layout.layers
    # The channel kind leaves fc1's rows to the new kind.
    assert not any(m.name == "mlp.fc1" and m.kind == "out" for g in layout.groups if g.kind == "channels" for m in g.members)
    with pytest.raises(ValueError, match="registered already"):
        register_group_kind("mlp-hidden", find_hidden_units)


def test_a_registered_kind_prunes_like_masking(hidden_kind):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(5, 1, 8, 8)
    layout = group_layout(model, x[:1])
    offset = layout.offsets[[g.kind for g in layout.groups].index("mlp-hidden")]
    scores = torch.rand(layout.num_neurons)
    masked = Net().eval()
    masked.load_state_dict(model.state_dict())
    report = epi_fast.prune(model, 0.4, x[:1], scores=scores, layout=layout)
    # Each kind is ranked on its own (the default ranking="per_kind"): the paper's cut within each.
    keep = torch.zeros(1, layout.num_neurons, dtype=torch.bool)
    for kind in ("mlp-hidden", "channels"):
        gis = [i for i, g in enumerate(layout.groups) if g.kind == kind]
        idx = torch.cat([torch.arange(layout.offsets[i], layout.offsets[i] + layout.group_sizes[i]) for i in gis])
        sub, _ = epi_fast.global_masks(scores[idx], 0.4, [layout.group_sizes[i] for i in gis])
        keep[0, idx] = sub[0]
    modules = dict(masked.named_modules())
    with torch.no_grad():  # removed neurons made inert: their output rows, biases and BN affine zero
        for g, o in zip(layout.groups, layout.offsets):
            gone = ~keep[0, o:o + g.size]
            for mem in g.members:
                if mem.kind in ("out", "bn"):
                    ch = mem.channels[gone[mem.neurons]]
                    modules[mem.name].weight[ch] = 0
                    modules[mem.name].bias[ch] = 0
    assert model.mlp.fc1.out_features == int(keep[0, offset:offset + 12].sum()) < 12
    assert report["kept"][report["layers"].index("mlp.fc1")] == model.mlp.fc1.out_features
    torch.testing.assert_close(model(x), masked(x), rtol=1e-5, atol=1e-5)


def test_a_registered_kind_works_with_the_pruner_and_a_criterion(hidden_kind):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = EPIPruner(model, opt, 0.5, torch.zeros(1, 1, 8, 8), criterion="taylor", window=2, patience=1,
                       deadline_epoch=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for _ in range(4):
            x = torch.randn(8, 1, 8, 8, generator=g)
            loss = F.cross_entropy(model(x), torch.randint(0, 10, (8,), generator=g))
            opt.zero_grad()
            loss.backward()
            pruner.accumulate()
            opt.step()
        pruner.epoch_end()
    assert pruner.pruned and model.mlp.fc1.out_features < 12
    assert opt.state[model.mlp.fc1.weight]["exp_avg"].shape == model.mlp.fc1.weight.shape
    loss = F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,)))
    loss.backward()
    opt.step()
