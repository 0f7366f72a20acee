"""group_layout: the groups, segments and structure vector that every other module relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from epi_fast import ops
from epi_fast.layout import GroupLayout, group_layout
from epi_fast.models import MODEL_NAMES, build_model
from epi_fast.criteria import TaylorAccumulator, magnitude_scores


def x8(c=3):
    return torch.randn(1, c, 8, 8)


def group_of(layout, name):
    for g in layout.groups:
        if name in {m.name for m in g.members if m.kind == "out"}:
            return g
    raise AssertionError(f"{name} is in no group")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layout_is_consistent(name):
    model = build_model(name)
    layout = group_layout(model, x8())
    assert isinstance(layout, GroupLayout)
    assert layout.group_sizes == [g.size for g in layout.groups]
    assert layout.num_neurons == sum(layout.group_sizes)
    assert layout.offsets == [sum(layout.group_sizes[:i]) for i in range(len(layout.groups))]
    assert len(layout.layers) == layout.layer_group.numel() == layout.layer_scale.numel()
    order = [n for n, _ in model.named_modules()]
    assert [order.index(n) for n in layout.layers] == sorted(order.index(n) for n in layout.layers)
    for g in layout.groups:
        for m in g.members:
            assert m.channels.shape == m.neurons.shape
            assert 0 <= int(m.neurons.min()) and int(m.neurons.max()) < g.size
        # The root's output channels number the group's neurons one to one.
        root = next(m for m in g.members if m.name == g.root and m.kind == "out")
        assert torch.equal(root.channels, torch.arange(g.size))
    assert layout.structure(torch.ones(layout.num_neurons, dtype=torch.bool))[0].tolist() == list(layout.layer_channels().values())


def test_residual_adds_couple_every_branch():
    layout = group_layout(build_model("resnet_small"), x8())
    stage = group_of(layout, "layers.2.conv2")
    outs = {m.name for m in stage.members if m.kind == "out"}
    bns = {m.name for m in stage.members if m.kind == "bn"}
    assert outs == {"layers.2.conv2", "layers.2.shortcut.0"}
    assert bns == {"layers.2.bn2", "layers.2.shortcut.1"}
    assert "fc" in {m.name for m in stage.members if m.kind == "in"}
    # The first stage has no shortcut conv: the stem and the block's conv2 share channels.
    first = group_of(layout, "stem.0.0")
    assert {"stem.0.0", "layers.0.conv2"} <= {m.name for m in first.members if m.kind == "out"}


def test_depthwise_convs_follow_their_input():
    model = build_model("mobilenet_small")
    layout = group_layout(model, x8())
    g = group_of(layout, "features.3.block.0.0")  # expand 1x1 of the first inverted residual
    outs = {m.name for m in g.members if m.kind == "out"}
    assert "features.3.block.2.0" in outs  # its depthwise conv loses the same channels
    assert all(m.kind != "in" or m.name == "features.3.block.4.0" for m in g.members)


def test_concatenations_map_member_channels_to_neurons():
    model = build_model("densenet_small")
    layout = group_layout(model, x8())
    g = group_of(layout, "features.1.conv2")  # growth channels of the first dense layer
    bns = {m.name: m for m in g.members if m.kind == "bn"}
    # Every later layer of the block and the transition BN read those 8 channels after the
    # 16 stem channels of the concatenation.
    assert set(bns) == {"features.2.norm1", "features.3.norm1", "features.4"}
    for m in bns.values():
        assert torch.equal(m.channels, m.neurons + 16)


def test_squeeze_excitation_and_linear_heads():
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    layout = group_layout(model, torch.randn(1, 3, 32, 32))
    assert layout.ignored == ["classifier.3"]
    assert "classifier.0" in layout.layers and "classifier.3" not in layout.layers
    se = group_of(layout, "features.1.block.1.fc2")  # the SE scale multiplies the block's channels
    assert "features.1.block.0.0" in {m.name for m in se.members if m.kind == "out"}


def test_conv_classifier_outputs_are_found():
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    layout = group_layout(model, torch.randn(1, 3, 64, 64))
    assert "classifier.1" in layout.ignored


def test_grouped_convs_tie_channels_across_conv_groups():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.b(torch.relu(self.a(x))).mean((2, 3)))

    layout = group_layout(Grouped(), x8())
    g = group_of(layout, "a")
    assert g.channel_groups == 4 and g.size == 2
    assert g.root_channels([1]) == [1, 3, 5, 7]
    counts = layout.structure(torch.tensor([True, False, True, True]))
    assert counts.tolist() == [[4, 8]]


def test_scores_have_one_entry_per_neuron_and_taylor_accumulates():
    model = build_model("mobilenet_small")
    layout = group_layout(model, x8())
    for c in ("l1", "l2", "bn", "magnitude"):
        s = magnitude_scores(layout, c)
        assert s.dtype == torch.float32 and s.shape == (layout.num_neurons,) and bool((s >= 0).all())
    acc = TaylorAccumulator(layout)
    model(torch.randn(4, 3, 8, 8)).logsumexp(1).sum().backward()
    acc.step()
    acc.step()
    first = acc.scores()
    assert first.shape == (layout.num_neurons,) and bool((first > 0).any())
    state = acc.state_dict()
    for p in model.parameters():
        p.grad.fill_(float("nan"))
    acc.step()
    assert acc.skipped_steps == 1
    torch.testing.assert_close(acc.scores(), first)  # a skipped step does not dilute the mean
    acc.load_state_dict(state)
    assert acc.skipped_steps == 0 and acc.steps == 2
    acc.reset()
    assert acc.steps == 0 and bool((acc.scores() == 0).all())


def test_taylor_unscales_with_the_grad_scaler():
    model = build_model("resnet_small")
    layout = group_layout(model, x8())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    plain = TaylorAccumulator(layout, mode="abs")
    plain.step()

    class Scaler:  # GradScaler's device-side scale, without CUDA
        def is_enabled(self):
            return True

        def _get_scale_async(self):
            return torch.tensor([1024.0])

    for p in model.parameters():
        p.grad.mul_(1024.0)
    scaled = TaylorAccumulator(layout, mode="abs")
    scaled.step(Scaler())
    torch.testing.assert_close(scaled.scores(), plain.scores(), rtol=1e-5, atol=1e-8)


def test_bn_criterion_needs_a_batchnorm_in_every_group():
    model = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    layout = group_layout(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match='use "magnitude"'):
        magnitude_scores(layout, "bn")
    s = magnitude_scores(layout, "magnitude")
    conv_groups = [o for g, o in zip(layout.groups, layout.offsets) if g.root.startswith("features")]
    bn = ops.channel_scores([model.features[1].weight.detach()], "abs")
    torch.testing.assert_close(s[conv_groups[0]:conv_groups[0] + 64], bn)


def test_ignored_layers_by_name_must_exist():
    with pytest.raises(ValueError, match="not a module"):
        group_layout(build_model("resnet_small"), x8(), ignored_layers=["nope"])


def test_stale_layout_is_detected_after_a_prune():
    from epi_fast.surgery import prune

    model = build_model("resnet_small")
    layout = group_layout(model, x8())
    prune(model, 0.5, x8(), layout=layout)
    with pytest.raises(RuntimeError, match="stale"):
        magnitude_scores(layout, "l2")
