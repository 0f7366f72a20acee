"""Tracing: every returned tensor keeps its shape, a failing forward pass and an interruption are
reported as what they are."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from epi_fast.layout import group_layout
from epi_fast.surgery import prune


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ThreeOutputs(nn.Module):
    """Returns two intermediate feature maps beside the logits (as in Torch-Pruning's test of
    multiple outputs); each feature map is also consumed further inside."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 16)
        self.b = conv_bn(16, 32)   # feature 1 (returned, and consumed by c)
        self.c = conv_bn(32, 24)
        self.d = conv_bn(24, 32)   # feature 2 (returned, and consumed by the head)
        self.fc = nn.Linear(32, 1000)

    def forward(self, x):
        f1 = self.b(self.a(x))
        f2 = self.d(self.c(f1))
        return f1, f2, self.fc(f2.mean((2, 3)))


class EmbeddingAndLogits(nn.Module):
    """A net that returns its embedding beside its logits, as a dict."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv_bn(1, 8), conv_bn(8, 16))
        self.embed = nn.Linear(16, 12)
        self.inner = nn.Linear(12, 20)
        self.head = nn.Linear(20, 10)

    def forward(self, x):
        e = self.embed(self.body(x).mean((2, 3)))
        return {"embedding": e, "logits": self.head(torch.relu(self.inner(e)))}


def output_shapes(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    if isinstance(out, dict):
        return {k: tuple(v.shape) for k, v in out.items()}
    return [tuple(t.shape) for t in out]


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_every_output_of_a_multi_output_model_keeps_its_shape(ratio):
    torch.manual_seed(0)
    model, x = ThreeOutputs(), torch.randn(2, 3, 8, 8)
    before = output_shapes(model, x)
    layout = group_layout(model, x[:1])
    # The layers that feed a returned tensor are found although f1 and f2 are consumed inside.
    assert {"b.0", "d.0", "fc"} <= set(layout.ignored)
    assert set(layout.layers) == {"a.0", "c.0"}
    report = prune(model, ratio, x[:1])
    assert report["channels_removed"] > 0
    assert output_shapes(model, x) == before == [(2, 32, 8, 8), (2, 32, 8, 8), (2, 1000)]


def test_an_embedding_returned_beside_the_logits_keeps_its_features():
    torch.manual_seed(0)
    model, x = EmbeddingAndLogits(), torch.randn(2, 1, 8, 8)
    before = output_shapes(model, x)
    layout = group_layout(model, x[:1])
    assert {"embed", "head"} <= set(layout.ignored)
    assert "inner" in layout.layers
    prune(model, 0.5, x[:1])
    assert output_shapes(model, x) == before == {"embedding": (2, 12), "logits": (2, 10)}
    assert model.inner.out_features < 20


def test_a_wrong_input_shape_is_reported_as_such():
    model = nn.Sequential(conv_bn(1, 8), conv_bn(8, 4))
    with pytest.raises(ValueError, match=r"Sequential cannot run on example_inputs \(a tensor of shape \(1, 3, 8, 8\)\).*channels"):
        group_layout(model, torch.randn(1, 3, 8, 8))


def test_inputs_of_the_wrong_kind_are_named():
    model = nn.Sequential(conv_bn(1, 8), conv_bn(8, 4))
    with pytest.raises(TypeError, match="example_inputs must be a tensor, a tuple .* got str"):
        group_layout(model, "x")


def test_keyword_inputs_are_described_in_the_error():
    class TakesX(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv_bn(1, 4)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match=r"keyword inputs y=\(1, 1, 8, 8\).*TypeError"):
        group_layout(TakesX(), {"y": torch.randn(1, 1, 8, 8)})


def test_an_interruption_while_tracing_stays_an_interruption():
    class Interrupted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv_bn(1, 4)

        def forward(self, x):
            raise KeyboardInterrupt

    model = Interrupted()
    model.train()
    with pytest.raises(KeyboardInterrupt):
        group_layout(model, torch.randn(1, 1, 8, 8))
    assert model.training  # the modes are restored on the way out, too
