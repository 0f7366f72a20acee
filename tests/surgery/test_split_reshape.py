"""Splits, reshapes of channel dimensions and transposed convolutions in the layout: the tied
channels are one neuron, and pruning equals masking (random channels and a real criterion, at
0.3 and 0.7). Unsupported patterns are a ValueError naming them, before anything changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from epi_fast.layout import group_layout
from epi_fast.surgery import prune

from test_surgery import assert_unchanged, check_equivalence, snapshot

RATIOS = (0.3, 0.7)


class SplitThroughOneModule(nn.Module):
    """torch.split feeds both halves of the stem's output through one shared conv: channel j
    of one half and channel j of the other are one neuron."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 2 * c, 3, 1, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.shared = nn.Conv2d(c, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        a, b = torch.split(self.stem(x), self.shared.in_channels, dim=1)
        return self.head((self.shared(a) + self.shared(b)).mean((2, 3)))


class ChunkThroughOneModule(SplitThroughOneModule):
    """The same with Tensor.chunk into three pieces."""

    def __init__(self, c=6):
        super().__init__(c)
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, 1, 1), nn.BatchNorm2d(3 * c), nn.ReLU())

    def forward(self, x):
        pieces = self.stem(x).chunk(3, dim=1)
        return self.head(sum(self.shared(p) for p in pieces).mean((2, 3)))


class ChunkToTwoModules(nn.Module):
    """chunk's pieces go to different modules: the model computes them from the width, so they
    stay equal (channel j of each piece is one neuron)."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 2 * c, 3, 1, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.a = nn.Conv2d(c, 8, 1)
        self.b = nn.Conv2d(c, 8, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(torch.cat([self.a(a), self.b(b)], 1).mean((2, 3)))


class SplitBySizes(nn.Module):
    """torch.split by sizes taken from the modules: the pieces are independent."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 20, 3, 1, 1), nn.BatchNorm2d(20), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        a, b = self.stem(x).split([self.a[0].in_channels, self.b[0].in_channels], dim=1)
        return self.head(torch.cat([self.a(a), self.b(b)], 1).mean((2, 3)))


class LinearToConvTranspose(nn.Module):
    """A Linear's 256 outputs viewed as 16 channels of 4 x 4, then two transposed convs: each
    block of 16 is one neuron, and the transposed convs' output channels (weight dim 1) prune."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 256)
        self.up1 = nn.ConvTranspose2d(16, 8, 4, 2, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.up2 = nn.ConvTranspose2d(8, 6, 4, 2, 1)
        self.final = nn.Linear(6 * 16 * 16, 10)

    def forward(self, x):
        x = F.relu(self.fc(x)).view(-1, self.up1.in_channels, 4, 4)
        x = F.relu(self.up2(F.relu(self.bn1(self.up1(x)))))
        return self.final(torch.flatten(x, 1))


class ConvTranspose1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 12, 3, padding=1)
        self.up = nn.ConvTranspose1d(12, 10, 4, 2, 1)
        self.bn = nn.BatchNorm1d(10)
        self.head = nn.Conv1d(10, 3, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.up(F.relu(self.conv(x))))))


CASES = {
    "split_shared": (SplitThroughOneModule, (2, 3, 8, 8)),
    "chunk_shared": (ChunkThroughOneModule, (2, 3, 8, 8)),
    "chunk_two_modules": (ChunkToTwoModules, (2, 3, 8, 8)),
    "split_by_sizes": (SplitBySizes, (2, 3, 8, 8)),
    "linear_view_convtranspose": (LinearToConvTranspose, (2, 32)),
    "convtranspose1d": (ConvTranspose1dNet, (2, 4, 16)),
}


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("criterion", [None, "l2"], ids=["random", "l2"])
@pytest.mark.parametrize("case", list(CASES))
def test_pruned_equals_masked(case, criterion, ratio):
    build, shape = CASES[case]
    torch.manual_seed(0)
    report = check_equivalence(build(), torch.randn(shape), ratio, criterion=criterion)
    assert report["neurons_removed"] > 0


def test_pieces_through_one_module_are_one_neuron():
    layout = group_layout(SplitThroughOneModule(c=8), torch.randn(1, 3, 8, 8))
    stem = layout.groups[0]
    assert stem.root == "stem.0" and stem.size == 8
    assert stem.root_channels([3]) == [3, 11]
    assert layout.layers[0] == "stem.0" and int(layout.layer_scale[0]) == 2


def test_chunk_pieces_are_tied_and_sized_pieces_are_not():
    x = torch.randn(1, 3, 8, 8)
    chunk = group_layout(ChunkToTwoModules(c=8), x).groups[0]
    assert chunk.size == 8 and chunk.root_channels([0]) == [0, 8]
    sizes = group_layout(SplitBySizes(), x).groups[0]
    assert sizes.root == "stem.0" and sizes.size == 20 and sizes.root_channels([0]) == [0]


def test_view_blocks_are_one_neuron_and_transposed_convs_are_roots():
    layout = group_layout(LinearToConvTranspose(), torch.randn(1, 32))
    assert layout.layers == ["fc", "up1", "up2"]
    fc = layout.groups[0]
    assert fc.size == 16 and fc.root_channels([2]) == list(range(32, 48))
    assert layout.layer_scale.tolist() == [16, 1, 1]
    model = LinearToConvTranspose()
    x = torch.randn(2, 32)
    prune(model, 0.5, x, criterion="l1")
    assert model.fc.out_features == 16 * model.up1.in_channels < 256
    assert model(x).shape == (2, 10)


def test_a_grouped_transposed_conv_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, 2, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"^2 is a ConvTranspose2d with groups=2: transposed convolutions with "
                                         r"groups > 1 cannot be pruned"):
        prune(model, 0.5, torch.randn(1, 3, 8, 8))
    assert_unchanged(model, snap)


def test_an_uneven_chunk_is_refused_by_name():
    class Uneven(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 10, 3)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return sum(self.head(F.pad(p, (0, 0, 0, 0, 0, 4 - p.shape[1]))) for p in self.stem(x).chunk(3, 1))

    model = Uneven()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"SplitBackward0 of a tensor of shape \(1, 10, 6, 6\) split into pieces "
                                         r"of 4: the last piece has 2"):
        prune(model, 0.5, torch.randn(1, 3, 8, 8))
    assert_unchanged(model, snap)


# --- the channel shuffle (ShuffleNetV2) ----------------------------------------------------


class MiniShuffleNet(nn.Module):
    """torchvision's ShuffleNetV2 blocks (chunk, concat, channel shuffle), one stride-2 block
    and two stride-1 blocks: small enough for every ratio."""

    def __init__(self):
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(InvertedResidual(16, 32, 2), InvertedResidual(32, 32, 1), InvertedResidual(32, 32, 1))
        self.conv = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(self.conv(self.blocks(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("criterion", [None, "l2"], ids=["random", "l2"])
def test_channel_shuffle_pruned_equals_masked(criterion, ratio):
    torch.manual_seed(0)
    check_equivalence(MiniShuffleNet(), torch.randn(2, 3, 16, 16), ratio, criterion=criterion)


def test_channel_shuffle_ties_the_groups_of_each_channel():
    from epi_fast.layout.mappings import ChannelShuffle

    model = MiniShuffleNet()
    layout = group_layout(model, torch.randn(1, 3, 16, 16))
    assert sum(isinstance(n.module, ChannelShuffle) for n in layout.dg.module2node.values()) == 3
    # The width the blocks pass on (branch1, and every branch2's last conv) is one group: a
    # chunk halves it, the shuffle interleaves the halves, so its 32 channels go in tied sets.
    main = next(g for g in layout.groups if any(m.name == "blocks.0.branch1.2" and m.kind == "out" for m in g.members))
    assert main.size < 16
    widths = {m.name: m.channels.numel() for m in main.members if m.kind == "out"}
    assert {"blocks.0.branch1.2", "blocks.0.branch2.5", "blocks.1.branch2.5", "blocks.2.branch2.5"} <= set(widths)
    # The branches' inner channels (1x1 conv -> depthwise -> 1x1 conv) are groups of their own.
    inner = [g for g in layout.groups if any(m.name.endswith("branch2.0") and m.kind == "out" for m in g.members)]
    assert [g.size for g in inner] == [16, 16, 16]


@pytest.mark.parametrize("name, ratio, criterion", [
    ("shufflenet_v2_x0_5", 0.3, None),
    pytest.param("shufflenet_v2_x0_5", 0.7, "l2", marks=pytest.mark.slow),
    pytest.param("shufflenet_v2_x1_0", 0.3, "l2", marks=pytest.mark.slow),
    pytest.param("shufflenet_v2_x1_0", 0.7, None, marks=pytest.mark.slow),
])
def test_torchvision_shufflenet_pruned_equals_masked(name, ratio, criterion):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    check_equivalence(model, torch.randn(2, 3, 32, 32), ratio, criterion=criterion)


def test_a_constant_split_size_in_the_forward_is_reported_and_undone():
    class ConstantSplit(SplitThroughOneModule):
        def forward(self, x):
            a, b = torch.split(self.stem(x), 8, dim=1)  # a constant: the pruned stem is narrower
            return self.head((self.shared(a) + self.shared(b)).mean((2, 3)))

    torch.manual_seed(0)
    model = ConstantSplit(c=8)
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match=r"^the pruned ConstantSplit does not run on example_inputs \(ValueError: not enough values "
                                           r".*constant split size.*the prune was undone$"):
        prune(model, 0.5, torch.randn(1, 3, 8, 8))
    assert_unchanged(model, snap)
