"""The 1-D residual CNN of the MNIST-1D reproduction prunes equal to the masked network, and
keeps several channels per layer at 70% with the default per-layer limit."""

import copy

import pytest
import torch

from epi_fast import ops
from epi_fast.layout import group_layout
from epi_fast.models import build_model
from epi_fast.surgery import prune


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_resnet1d_pruned_equals_masked(ratio):
    torch.manual_seed(0)
    model = build_model("resnet1d_small")
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from their defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(4, 1, 40)
    layout = group_layout(model, x)
    assert all(isinstance(dict(model.named_modules())[n], torch.nn.Conv1d) for n in layout.layers)
    scores = torch.rand(layout.num_neurons, generator=torch.Generator().manual_seed(1))
    keep = ops.global_masks(scores, ratio, segment_sizes=layout.group_sizes)[0][0]
    dense = copy.deepcopy(model)
    modules = dict(dense.named_modules())
    with torch.no_grad():  # the removed channels' BatchNorm outputs are zero in the dense copy
        for g, o in zip(layout.groups, layout.offsets):
            gone = ~keep[o:o + g.size]
            for mem in g.members:
                ch = mem.channels[gone[mem.neurons]]
                if mem.kind == "bn" and ch.numel():
                    modules[mem.name].weight[ch] = 0
                    modules[mem.name].bias[ch] = 0
    prune(model, ratio, x, scores=scores, layout=layout, max_layer_ratio=1.0)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=1e-4)


def test_resnet1d_keeps_several_channels_at_70_percent():
    model = build_model("resnet1d_small")
    x = torch.randn(2, 1, 40)
    rep = prune(model, 0.7, x, criterion="magnitude")  # the default per-layer limit (0.9)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert min(widths) >= 4, widths
    assert rep["params_after"] < rep["params_before"]


def test_mnist1d_splits_are_generated_once_and_deterministic(tmp_path, monkeypatch):
    """The splits are the package's make_dataset with fixed seeds (smaller validation and test
    sets here, to keep the test short), cached atomically and read back identically."""
    from experiments.protocol import data

    monkeypatch.setenv("EPI_FAST_CACHE", str(tmp_path))
    monkeypatch.setitem(data.MNIST1D, "val_size", 400)
    monkeypatch.setitem(data.MNIST1D, "test_size", 800)
    train, val, test, k, cin, shape, _ = data.load_setting("mnist1d", seed=3)
    assert (len(train), len(val), len(test), k, cin, shape) == (4000, 400, 800, 10, 1, (40,))
    assert tuple(train.x.shape) == (4000, 1, 40) and train.x.dtype == torch.float32
    assert abs(float(train.x.mean())) < 1e-4 and abs(float(train.x.std()) - 1) < 1e-3
    assert set(train.y.unique().tolist()) == set(range(10))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".npz"] and not list(tmp_path.glob("*.tmp*"))
    again = data.load_setting("mnist1d", seed=0)  # from the cache; the split does not move with the seed
    for a, b in zip((train, val, test), again[:3]):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(val.x[:10], test.x[:10])  # other seeds: other signals
