"""Physical pruning equals masking: a pruned model computes what the dense model computes when
its pruned channels are made inert.

A pruned channel is inert in the dense model when every coupled member stops carrying it:
its conv/linear output rows and biases are zero (depthwise convs included), and every
BatchNorm member has gamma = beta = 0, so that in eval mode the BN outputs exactly 0 whatever
its running statistics (this also covers BNs that read a concatenation in DenseNet). Then
ReLU/ReLU6/Hardswish/SiLU(0) = 0, pools of zeros are zero, the consumers' input channels see
zeros, and a squeeze-excitation scale multiplies a zero channel. Residual adds are covered
because every branch of the add is in the same group.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import epi_fast.surgery.removal as surgery
from epi_fast.layout import group_layout
from epi_fast.models import MODEL_NAMES, build_model
from epi_fast.criteria import get_criterion, magnitude_scores
from epi_fast.surgery import prune, prune_with_masks

from epi_fast import ops


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-trivial BN affine parameters and statistics: with the default init
    (gamma 1, beta 0, mean 0, var 1) mistakes in BN slicing would go unseen."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def pruned_channels(layout, keep: torch.Tensor):
    """{(member name, kind): channel indices removed} for the neurons keep marks False (a
    conv is an "out" member of its own group and an "in" member of the next)."""
    out = {}
    for g, o in zip(layout.groups, layout.offsets):
        gone = ~keep[o:o + g.size]
        if not bool(gone.any()):
            continue
        for mem in g.members:
            sel = gone[mem.neurons]
            if bool(sel.any()):
                prev = out.get((mem.name, mem.kind), torch.empty(0, dtype=torch.int64))
                out[(mem.name, mem.kind)] = torch.cat([prev, mem.channels[sel]]).unique()
    return out


def make_inert(model: nn.Module, removed) -> nn.Module:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for (name, kind), ch in removed.items():
            m = modules[name]
            if kind == "out":
                if getattr(m, "transposed", False):
                    m.weight[:, ch] = 0
                else:
                    m.weight[ch] = 0
                if m.bias is not None:
                    m.bias[ch] = 0
            elif kind == "bn":
                m.weight[ch] = 0
                m.bias[ch] = 0
            elif kind == "other":
                raise AssertionError(f"no inert form known for {name} ({type(m).__name__})")
    return model


def masks_for(layout, ratio, seed=0, min_keep=1):
    # Random scores reach masks that no magnitude ranking of random weights would give.
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(layout.num_neurons, generator=g)
    masks, _ = ops.global_masks(scores, ratio, segment_sizes=layout.group_sizes, min_keep=min_keep)
    return scores, masks[0]


def check_equivalence(model: nn.Module, x: torch.Tensor, ratio: float, seed: int = 0, criterion=None):
    """criterion: a criterion name whose scores choose the channels (random scores if None)."""
    randomize(model, seed)
    layout = group_layout(model, x)
    scores, keep = masks_for(layout, ratio, seed)
    if criterion is not None:
        crit = get_criterion(criterion)
        scores = crit.group_scores(layout, crit.reduction(None))
        keep = ops.global_masks(scores, ratio, segment_sizes=layout.group_sizes)[0][0]
    dense = make_inert(copy.deepcopy(model), pruned_channels(layout, keep))
    params_before = sum(p.numel() for p in model.parameters())
    # The paper's rule (no per-layer limit): the masks above are global_masks' own.
    report = prune(model, ratio, x, scores=scores, layout=layout, max_layer_ratio=1.0)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"] < params_before
    assert report["neurons_removed"] == int((~keep).sum())
    model.eval(), dense.eval()
    with torch.no_grad():
        want, got = dense(x), model(x)
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, atol=1e-4 * scale, rtol=1e-4)
    # Every structure layer really has the kept count the layout predicts.
    modules = dict(model.named_modules())
    counts = layout.structure(keep.unsqueeze(0))[0].tolist()
    for name, count in zip(layout.layers, counts):
        m = modules[name]
        assert (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == count, name
    return report


RATIOS = (0.1, 0.5, 0.9)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("ratio", RATIOS)
def test_in_repo_models_prune_like_masking(name, ratio):
    torch.manual_seed(0)
    check_equivalence(build_model(name, num_classes=10, in_channels=1), torch.randn(2, 1, 8, 8), ratio)


@pytest.mark.parametrize(
    "name, ratios",
    [
        ("resnet18", (0.1, 0.5, 0.9)),
        ("mobilenet_v3_small", (0.3, 0.7)),
        ("mobilenet_v2", (0.5,)),
    ],
)
def test_torchvision_models_prune_like_masking(name, ratios):
    for i, ratio in enumerate(ratios):
        torch.manual_seed(i)
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
        check_equivalence(model, torch.randn(2, 3, 32, 32), ratio, seed=i)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, ratios",
    [
        ("resnet50", (0.2, 0.8)),
        ("vgg11_bn", (0.6,)),
        ("densenet121", (0.4,)),
        ("resnext50_32x4d", (0.5,)),
    ],
)
def test_big_torchvision_models_prune_like_masking(name, ratios):
    for i, ratio in enumerate(ratios):
        torch.manual_seed(i)
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
        check_equivalence(model, torch.randn(1, 3, 32, 32), ratio, seed=i)


def test_class_outputs_are_never_pruned():
    model = build_model("resnet_small", num_classes=7)
    x = torch.randn(1, 3, 8, 8)
    layout = group_layout(model, x)
    assert "fc" in layout.ignored and "fc" not in layout.layers
    prune(model, 0.8, x, criterion="l1")
    assert model.fc.out_features == 7
    assert model(x).shape == (1, 7)


def test_user_ignored_layers_keep_their_channels():
    model = build_model("resnet_small")
    x = torch.randn(1, 3, 8, 8)
    prune(model, 0.5, x, ignored_layers=["layers.1.conv1", model.layers[2].conv1])
    assert model.layers[1].conv1.out_channels == 32
    assert model.layers[2].conv1.out_channels == 64


def test_min_keep_is_honoured_per_group():
    model = build_model("mobilenet_small")
    x = torch.randn(1, 3, 8, 8)
    layout = group_layout(model, x)
    report = prune(model, 0.9, x, min_keep=2, layout=layout, max_layer_ratio=1.0)
    assert min(report["kept"]) >= 2


def test_report_counts_flops_as_twice_the_macs():
    model = build_model("resnet_small")
    x = torch.randn(1, 3, 8, 8)
    r = prune(model, 0.5, x, criterion="magnitude")
    for key in ("params", "flops", "macs"):
        assert r[f"{key}_after"] < r[f"{key}_before"]
    assert r["flops_before"] == 2 * r["macs_before"] and r["flops_after"] == 2 * r["macs_after"]
    assert r["layers"] and len(r["kept"]) == len(r["layers"]) == len(r["channels_before"])
    assert r["channels_removed"] == sum(r["channels_before"]) - sum(r["kept"])
    assert r["ratio"] == 0.5 and r["criterion"] == "magnitude"


def test_ratio_zero_changes_nothing():
    model = build_model("densenet_small")
    x = torch.randn(1, 3, 8, 8)
    state = copy.deepcopy(model.state_dict())
    r = prune(model, 0.0, x)
    assert r["params_after"] == r["params_before"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_pruning_keeps_training_mode_and_trains_on():
    model = build_model("resnet_small", in_channels=1)
    model.train()
    x = torch.randn(4, 1, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    prune(model, 0.5, x, optimizer=opt)
    assert model.training
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    opt.step()


def test_magnitude_scores_follow_the_layout_order():
    model = randomize(build_model("resnet_small"))
    layout = group_layout(model, torch.randn(1, 3, 8, 8))
    modules = dict(model.named_modules())
    # reduce="sum" spelled out: the default became the criterion's ("mean") in 0.2.0.
    l2, bn = magnitude_scores(layout, "l2", reduce="sum"), magnitude_scores(layout, "bn", reduce="sum")
    for g, o in zip(layout.groups, layout.offsets):
        want_l2 = torch.zeros(g.size)
        want_bn = torch.zeros(g.size)
        for mem in g.members:
            w = modules[mem.name].weight.detach()
            if mem.kind == "out":
                want_l2.index_add_(0, mem.neurons, w.flatten(1).norm(dim=1)[mem.channels])
            if mem.kind == "bn":
                want_bn.index_add_(0, mem.neurons, w.abs()[mem.channels])
        torch.testing.assert_close(l2[o:o + g.size], want_l2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn[o:o + g.size], want_bn, rtol=1e-5, atol=1e-6)


def test_a_spent_layout_is_refused():
    model = build_model("resnet_small")
    x = torch.randn(1, 3, 8, 8)
    layout = group_layout(model, x)
    prune(model, 0.3, x, layout=layout)
    with pytest.raises((RuntimeError, ValueError), match="layout"):
        prune(model, 0.3, x, layout=layout)


# --- bad input and atomicity -------------------------------------------------------------


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [id(p) for p in model.parameters()]


def assert_unchanged(model, snap):
    state, ids = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    assert [id(p) for p in model.parameters()] == ids


@pytest.fixture
def small():
    torch.manual_seed(0)
    model = randomize(build_model("resnet_small"))
    return model, torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_refused(small, ratio):
    model, x = small
    snap = snapshot(model)
    with pytest.raises(ValueError, match="ratio"):
        prune(model, ratio, x)
    assert_unchanged(model, snap)


def test_impossible_ratio_for_min_keep_is_refused(small):
    model, x = small
    layout = group_layout(model, x)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="min_keep"):
        prune(model, 0.99, x, min_keep=max(layout.group_sizes), layout=layout)
    assert_unchanged(model, snap)


def test_wrong_scores_or_mask_length_is_refused(small):
    model, x = small
    layout = group_layout(model, x)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=str(layout.num_neurons)):
        prune(model, 0.5, x, scores=torch.rand(layout.num_neurons + 1), layout=layout)
    with pytest.raises(ValueError, match=str(layout.num_neurons)):
        prune_with_masks(model, layout, torch.ones(layout.num_neurons - 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        prune_with_masks(model, layout, torch.ones(layout.num_neurons))
    empty_group = torch.ones(layout.num_neurons, dtype=torch.bool)
    empty_group[: layout.group_sizes[0]] = False
    with pytest.raises(ValueError, match="every neuron"):
        prune_with_masks(model, layout, empty_group)
    assert_unchanged(model, snap)


def test_unknown_criterion_and_taylor_without_scores_are_refused(small):
    model, x = small
    with pytest.raises(ValueError, match="unknown criterion"):
        prune(model, 0.5, x, criterion="entropy")
    with pytest.raises(ValueError, match="taylor"):
        prune(model, 0.5, x, criterion="taylor")


def test_optimizer_of_another_model_is_refused(small):
    model, x = small
    other = build_model("resnet_small")
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="optimizer"):
        prune(model, 0.5, x, optimizer=opt)
    partial = torch.optim.SGD(list(model.parameters())[:3], lr=0.1)
    with pytest.raises(ValueError, match="does not hold"):
        prune(model, 0.5, x, optimizer=partial)
    assert_unchanged(model, snap)


def test_untraceable_model_gives_a_clear_error():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            raise RuntimeError("this model cannot run on that input")

    model = Untraceable()
    snap = snapshot(model)
    # 0.2.0: a forward pass that fails is reported as that, with the input's shape and the
    # model's own error (0.1 said "cannot trace Untraceable ...").
    with pytest.raises(ValueError, match=r"Untraceable cannot run on example_inputs \(a tensor of shape \(1, 3, 8, 8\)\).*this model cannot run"):
        prune(model, 0.5, torch.randn(1, 3, 8, 8))
    assert_unchanged(model, snap)


def test_model_without_prunable_channels_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no prunable channels"):
        group_layout(model, torch.randn(1, 12))


def test_failure_during_surgery_restores_model_and_optimizer(small, monkeypatch):
    model, x = small
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    opt.step()
    snap = snapshot(model)
    grads = {id(p): p.grad.clone() for p in model.parameters()}
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    params = list(opt.param_groups[0]["params"])
    calls = {"n": 0}
    real = surgery._prune_group

    def failing(dg, group, idxs):
        calls["n"] += 1
        if calls["n"] == 3:  # after two groups were really cut
            raise RuntimeError("injected failure")
        real(dg, group, idxs)

    monkeypatch.setattr(surgery, "_prune_group", failing)
    with pytest.raises(RuntimeError, match="injected"):
        prune(model, 0.5, x, optimizer=opt)
    assert calls["n"] == 3
    assert_unchanged(model, snap)
    assert opt.param_groups[0]["params"] == params
    for p in model.parameters():
        assert p.dtype == torch.float32 and torch.equal(p.grad, grads[id(p)])
        for k, v in state[id(p)].items():
            assert torch.equal(opt.state[p][k], v)
    # The model still runs and prunes cleanly afterwards.
    monkeypatch.setattr(surgery, "_prune_group", real)
    prune(model, 0.5, x, optimizer=opt)
    model(x)


def test_layout_build_has_no_side_effects(small):
    model, x = small
    model.train()
    model.layers[0].eval()
    snap = snapshot(model)
    group_layout(model, x)
    assert model.training and not model.layers[0].training
    assert_unchanged(model, snap)


def test_ddp_style_wrapper_is_unwrapped(small):
    model, x = small
    wrapped = nn.DataParallel(model)  # same .module convention as DistributedDataParallel
    layout = group_layout(wrapped, x)
    assert layout.model is model
    prune(wrapped, 0.5, x, layout=layout)
    assert model.layers[2].conv1.out_channels < 64


def test_structure_maps_masks_to_layer_counts(small):
    model, x = small
    layout = group_layout(model, x)
    assert layout.layer_group.shape == (len(layout.layers),)
    keep = torch.ones(2, layout.num_neurons, dtype=torch.bool)
    keep[1, ::2] = False
    counts = layout.structure(keep)
    assert counts.shape == (2, len(layout.layers))
    assert counts[0].tolist() == list(layout.layer_channels().values())
    per_group = ops.layer_counts(keep, layout.group_sizes)
    assert torch.equal(counts, per_group[:, layout.layer_group])
    # A residual stage couples all its convs' outputs into one group.
    names = [layout.layers[i] for i in range(len(layout.layers)) if int(layout.layer_group[i]) == int(layout.layer_group[layout.layers.index("layers.1.conv2")])]
    assert {"layers.1.conv2", "layers.1.shortcut.0"} <= set(names)




def test_failure_after_the_cut_is_undone_too(small, monkeypatch):
    model, x = small
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    snap = snapshot(model)
    params = list(opt.param_groups[0]["params"])
    real = surgery.count_ops
    calls = {"n": 0}

    def count_then_fail(m, inputs, *rest):
        calls["n"] += 1
        if calls["n"] == 2:  # the count of the pruned model
            raise RuntimeError("pruned model does not run")
        return real(m, inputs)

    monkeypatch.setattr(surgery, "count_ops", count_then_fail)
    layout = group_layout(model, x)
    with pytest.raises(RuntimeError, match="does not run"):
        prune(model, 0.5, x, optimizer=opt, layout=layout)
    assert_unchanged(model, snap)
    assert opt.param_groups[0]["params"] == params
    assert all(opt.state[p]["momentum_buffer"].shape == p.shape for p in params)
    monkeypatch.setattr(surgery, "count_ops", real)
    prune(model, 0.5, x, optimizer=opt, layout=layout)  # the layout is usable again


def test_index_tensors_live_only_for_the_groups_in_progress(monkeypatch):
    """The surgery traces each cut parameter as a tensor of its flat indices from the first
    group that cuts it to the last, then rebuilds it (and the index tensor goes): on a chain of
    eight Linear layers at most the weights of three neighbours are traced at once (a layer's
    input columns belong to its predecessor's group), not all eight; and the result is still
    the masked network."""
    width, depth = 64, 8
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = randomize(nn.Sequential(*layers, nn.Linear(width, 10)))
    x = torch.randn(4, width)
    live = {"now": 0, "peak": 0}
    flat_indices, rebuild = surgery._flat_indices, surgery._rebuild

    def traced(p):
        live["now"] += p.numel()
        live["peak"] = max(live["peak"], live["now"])
        return flat_indices(p)

    def rebuilt(entries, *args):
        live["now"] -= entries[0][2].numel()
        return rebuild(entries, *args)

    layout = group_layout(model, x)
    _, keep = masks_for(layout, 0.5)
    dense = make_inert(copy.deepcopy(model), pruned_channels(layout, keep))
    cut = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    monkeypatch.setattr(surgery, "_flat_indices", traced)
    monkeypatch.setattr(surgery, "_rebuild", rebuilt)
    prune_with_masks(model, layout, keep)
    assert live["now"] == 0  # every traced parameter was rebuilt
    one = width * width + width
    assert 0 < live["peak"] <= 3 * one < cut / 2, (live["peak"], cut)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=1e-5)
