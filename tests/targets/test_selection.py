"""The selection rule (epi_fast.targets.Selector): the kernel's cut by count against the rule
recomputed from the sorted order, targets against a brute force over every cut, limits and
rounding on every layer, and the errors."""

import copy
import math

import pytest
import torch
import torchvision
from hypothesis import given, settings, strategies as st

from epi_fast import build_model, group_layout, prune
from epi_fast.criteria import get_criterion
from epi_fast.targets import TOLERANCE, Selector, cost_model

X = torch.randn(2, 3, 8, 8)
MODELS = ("resnet_small", "mobilenet_small", "densenet_small")
_LAYOUTS = {}


def layout_of(name):
    if name not in _LAYOUTS:
        torch.manual_seed(0)
        model = build_model(name)
        _LAYOUTS[name] = group_layout(model, X)
    return _LAYOUTS[name]


def tied_scores(n, seed, levels=None):
    g = torch.Generator().manual_seed(seed)
    if levels is None:
        return torch.rand(n, generator=g)
    s = torch.randint(0, levels, (n,), generator=g).float()
    s[torch.rand(n, generator=g) < 0.2] *= -0.0  # -0.0 beside +0.0
    return s


def brute_force(sel: Selector, scores: torch.Tensor, ratio: float):
    """Every cut j of the order, one at a time in Python: the nearest achieved fraction."""
    layout = sel.layout
    sizes, mins = sel.sizes.tolist(), sel.minimums.tolist()
    gid = [g for g, s in enumerate(sizes) for _ in range(s)]
    s = (scores.float() + 0.0).tolist()
    # rank within group, ascending (score, index); the lowest C - M of each group are removable
    rank = [0] * len(s)
    for g in range(len(sizes)):
        idx = [i for i in range(len(s)) if gid[i] == g]
        for r, i in enumerate(sorted(idx, key=lambda i: (s[i], i))):
            rank[i] = r
    order = [i for i in sorted(range(len(s)), key=lambda i: (s[i], i)) if rank[i] < sizes[gid[i]] - mins[gid[i]]]

    def rounded(n, g):
        r = sel.round_to
        if r is None:
            return n
        if sizes[g] < r:
            return sizes[g]
        top = sizes[g] // r * r
        low = min(-(-mins[g] // r) * r, top)
        return max(min((n + r // 2) // r * r, top), low)

    def achieved(kept):
        if sel.cost is None:
            return 1 - sum(kept) / sum(sizes)
        return 1 - float(sel.cost.evaluate(torch.tensor(kept))) / sel.cost.full

    kept = list(sizes)
    cuts = [([rounded(kept[g], g) for g in range(len(sizes))])]
    for i in order:
        kept[gid[i]] -= 1
        cuts.append([rounded(kept[g], g) for g in range(len(sizes))])
    fr = [achieved(c) for c in cuts]
    best = min(range(len(cuts)), key=lambda j: (abs(fr[j] - ratio), fr[j] > ratio, j))
    return cuts[best], fr[best], layout


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("mlr", [1.0, 0.9, 0.5])
def test_the_kernel_cut_equals_the_rule_recomputed_from_the_order(name, levels, mlr):
    layout = layout_of(name)
    sel = Selector(layout, "channels", min_keep=1, max_layer_ratio=mlr)
    scores = tied_scores(layout.num_neurons, 1, levels)
    ratios = [r for r in (0.0, 0.2, 0.45, 0.5) if math.floor(r * sel.n + 0.5) <= sel.removable]
    got = sel.select(scores, ratios)
    want = sel._by_cost(scores, ratios)
    assert torch.equal(got.masks, want.masks) and torch.equal(got.counts, want.counts)
    per_group = [[int(m[o:o + s].sum()) for o, s in zip(layout.offsets, layout.group_sizes)] for m in got.masks]
    assert got.counts.tolist() == per_group
    assert bool((got.counts >= sel.minimums).all())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([None, 2, 5]), name=st.sampled_from(MODELS),
       target=st.sampled_from(["channels", "params", "flops"]), round_to=st.sampled_from([None, 2, 4, 8]),
       mlr=st.sampled_from([1.0, 0.9, 0.6]), ratio=st.floats(0.05, 0.6))
def test_the_cut_is_the_nearest_of_all_cuts(seed, levels, name, target, round_to, mlr, ratio):
    layout = layout_of(name)
    if target == "channels" and round_to is None:
        round_to = 2  # the cut by count is tested against the kernel above
    sel = Selector(layout, target, max_layer_ratio=mlr, round_to=round_to, example_inputs=X)
    scores = tied_scores(layout.num_neurons, seed, levels)
    want, frac, _ = brute_force(sel, scores, ratio)
    if abs(frac - ratio) > TOLERANCE:
        with pytest.raises(ValueError, match="not reachable within 0.01"):
            sel.select(scores, [ratio])
        return
    got = sel.select(scores, [ratio])
    assert got.counts[0].tolist() == want
    assert abs(float(got.achieved[0]) - frac) < 1e-12
    # each group keeps its highest-scoring neurons (ties: higher index kept)
    s = (scores + 0.0).tolist()
    for o, size, n in zip(layout.offsets, layout.group_sizes, want):
        idx = sorted(range(o, o + size), key=lambda i: (s[i], i))
        assert got.masks[0, idx[size - n:]].all() and not got.masks[0, idx[:size - n]].any()


@pytest.mark.parametrize("target", ["channels", "params", "flops"])
def test_round_to_keeps_multiples_and_narrow_layers_whole(target):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    report = prune(model, 0.5, x, target=target, round_to=8)
    narrow = 0
    for name, before, kept in zip(report["layers"], report["channels_before"], report["kept"]):
        assert kept > 0
        assert kept % 8 == 0 or (before < 8 and kept == before), (name, before, kept)
        narrow += before < 8
    assert abs(report["achieved"] - 0.5) <= TOLERANCE
    # The widths are the modules' own, and the pruned model runs.
    modules = dict(model.named_modules())
    assert [modules[n].out_channels for n in report["layers"]] == report["kept"]
    assert model.eval()(x).shape == (1, 10)


def test_max_layer_ratio_bounds_every_layer_and_coupled_layers_take_the_smallest():
    torch.manual_seed(0)
    model = build_model("resnet_small")
    layout = group_layout(model, X)
    coupled = next(g for g in layout.groups if sum(m.kind == "out" for m in g.members) > 1)
    names = [m.name for m in coupled.members if m.kind == "out"]
    sel = Selector(layout, "channels", max_layer_ratio={names[0]: 0.9, names[1]: 0.25})
    gi = layout.groups.index(coupled)
    assert int(sel.minimums[gi]) == coupled.size - math.floor(0.25 * coupled.size)
    others = [i for i in range(len(layout.groups)) if i != gi]
    default = Selector(layout, "channels")
    assert torch.equal(sel.minimums[others], default.minimums[others])
    report = prune(model, 0.45, X, max_layer_ratio=0.5, layout=layout)
    for before, kept in zip(report["channels_before"], report["kept"]):
        assert before - kept <= math.floor(0.5 * before)


def test_paper_rule_is_one_argument_away():
    layout = layout_of("resnet_small")
    scores = tied_scores(layout.num_neurons, 3)
    from epi_fast import global_masks
    masks, _ = global_masks(scores, 0.8, segment_sizes=layout.group_sizes, min_keep=1)
    got = Selector(layout, "channels", max_layer_ratio=1.0).select(scores, [0.8])
    assert torch.equal(got.masks, masks)


def test_cost_models_count_the_dense_model_exactly():
    layout = layout_of("densenet_small")
    params = cost_model(layout, "params")
    assert params.full == sum(p.numel() for p in layout.model.parameters())
    full = torch.tensor([layout.group_sizes])
    assert float(params.evaluate(full)) == pytest.approx(params.full, rel=1e-12)
    flops = cost_model(layout, "flops", X)
    assert float(flops.evaluate(full)) == pytest.approx(flops.full, rel=1e-12)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target="bytes"), ValueError, "unknown target 'bytes'"),
    (dict(round_to=0), ValueError, "round_to must be an integer >= 1"),
    (dict(round_to=2.0), TypeError, "round_to must be an integer"),
    (dict(max_layer_ratio=0.0), ValueError, r"max_layer_ratio must be in \(0, 1\]"),
    (dict(max_layer_ratio=1.5), ValueError, r"max_layer_ratio must be in \(0, 1\]"),
    (dict(max_layer_ratio=True), TypeError, "max_layer_ratio must be a number"),
    (dict(max_layer_ratio={"nope": 0.5}), ValueError, "names 'nope', which is not a module of the model"),
    (dict(max_layer_ratio={"": 0.5}), ValueError, "which is not a prunable layer"),
    (dict(max_layer_ratio={"stem.0": 2}), ValueError, r"max_layer_ratio\['stem.0'\] must be in"),
    (dict(ratio=0.95, max_layer_ratio=0.5), ValueError, r"nearest reachable ratios are 0.50\d+ \(below\) and none"),
    (dict(ratio=0.97, target="params", max_layer_ratio=0.5), ValueError,
     r"params ratio 0.97 is not reachable within 0.01 .* nearest reachable ratios are 0\.\d+ \(below\) and none"),
])
def test_bad_input_is_refused_by_name_and_the_model_is_left_unchanged(kwargs, error, match):
    torch.manual_seed(0)
    model = build_model("resnet_small")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = snapshot(model)
    kwargs = dict(kwargs)
    ratio = kwargs.pop("ratio", 0.5)
    with pytest.raises(error, match=match):
        prune(model, ratio, X, optimizer=opt, **kwargs)
    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_unreachable_granularity_names_the_ratios_below_and_above():
    # One group of 8 neurons rounded to 8: the only cuts remove nothing or everything removable.
    layout = layout_of("resnet_small")
    sel = Selector(layout, "params", round_to=64, max_layer_ratio=1.0)
    with pytest.raises(ValueError, match=r"nearest reachable ratios are (\d\.\d+|none) \(below\) and (\d\.\d+|none) \(above\)"):
        sel.select(tied_scores(layout.num_neurons, 0), [0.5])


def test_prune_reports_requested_and_achieved_measured_on_the_pruned_model():
    torch.manual_seed(0)
    model = build_model("mobilenet_small")
    dense = copy.deepcopy(model)
    report = prune(model, 0.4, X, target="params")
    assert report["target"] == "params" and report["requested"] == 0.4
    got = 1 - sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in dense.parameters())
    assert report["achieved"] == pytest.approx(got, abs=1e-12) and abs(got - 0.4) <= TOLERANCE
    report = prune(dense, 0.4, X)
    assert report["target"] == "channels" and report["achieved"] == report["neurons_removed"] / report["neurons"]


def test_criterion_scores_are_ranked_the_same_way_under_every_target():
    layout = layout_of("resnet_small")
    scores = get_criterion("l2").group_scores(layout, "mean")
    a = Selector(layout, "params", example_inputs=X).select(scores, [0.3, 0.6])
    # more removed at the larger ratio, and what the smaller ratio removes the larger removes too
    assert bool((a.counts[1] <= a.counts[0]).all())
    assert bool((a.masks[1] <= a.masks[0]).all())
