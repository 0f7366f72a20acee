"""Criteria as objects: the registry, the built-ins' defaults, and criteria written in user code."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import epi_fast
from epi_fast.criteria import (
    Accumulator,
    Criterion,
    Magnitude,
    Taylor,
    TaylorAccumulator,
    criterion_names,
    get_criterion,
    gradient_criterion_names,
    magnitude_scores,
    register_criterion,
)
from epi_fast.layout import group_layout
from epi_fast.models import build_model
from epi_fast.policy import EPIPruner, default_tau


def small_model(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet_small", num_classes=10, in_channels=1), torch.randn(1, 1, 8, 8)


# -- the registry -------------------------------------------------------------------------------

def test_names_resolve_to_the_built_in_objects():
    assert criterion_names()[:6] == ("magnitude", "bn", "l1", "l2", "taylor", "gradient")
    assert set(gradient_criterion_names()) == {"taylor", "gradient"}
    assert get_criterion("magnitude") == Magnitude("auto")
    assert get_criterion("l1") == Magnitude("l1") and get_criterion("bn") == Magnitude("bn")
    assert get_criterion("gradient") == Taylor("square") == get_criterion("taylor")
    assert Taylor("abs") != Taylor("square") and Magnitude("l1") != Magnitude("l2")
    crit = Taylor("abs")
    assert get_criterion(crit) is crit


@pytest.mark.parametrize("bad, exc, match", [
    ("random", ValueError, r"unknown criterion 'random'; expected one of magnitude, bn, l1, l2, taylor, gradient"),
    (Magnitude, TypeError, r"pass an instance of Magnitude"),
    (3, TypeError, r"criterion must be a name or an epi_fast.criteria.Criterion, got int"),
])
def test_bad_criteria_are_named(bad, exc, match):
    with pytest.raises(exc, match=match):
        get_criterion(bad)


def test_built_in_arguments_are_checked():
    with pytest.raises(ValueError, match=r"unknown magnitude kind 'l3'"):
        Magnitude("l3")
    with pytest.raises(ValueError, match=r"unknown mode 'cube'; expected one of 'square', 'abs'"):
        Taylor("cube")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        register_criterion("l2", lambda: Magnitude("l2"))


def test_defaults_are_the_criterion_s():
    for name in ("magnitude", "bn", "l1", "l2"):
        c = get_criterion(name)
        assert (c.default_tau, c.default_reduce, c.needs_gradients, c.family) == (0.983, "mean", False, "magnitude")
        assert default_tau(name) == 0.983
    for name in ("taylor", "gradient"):
        c = get_criterion(name)
        assert (c.default_tau, c.default_reduce, c.needs_gradients, c.family) == (0.944, "sum", True, "gradient")
        assert default_tau(name) == 0.944
    assert Magnitude().reduction(None) == "mean" and Taylor().reduction(None) == "sum"
    assert Magnitude().reduction("max") == "max"
    with pytest.raises(ValueError, match="unknown reduce 'median'"):
        Magnitude().reduction("median")


# -- defaults a user can trust ------------------------------------------------------------------

def test_the_default_reduction_keeps_residual_blocks_open():
    # The README's snippet on the in-repo ResNet: with 0.1's "sum" default every residual
    # block's inner conv was cut to one channel (a residual neuron, shared by several layers,
    # outscored every lone channel); the criterion's default "mean" keeps them open.
    model, x = small_model()
    report = epi_fast.prune(model, 0.5, x, criterion="l2")
    kept = dict(zip(report["layers"], report["kept"]))
    inner = {n: k for n, k in kept.items() if n.endswith("conv1")}
    assert all(k >= 4 for k in inner.values()), inner
    model, x = small_model()
    summed = dict(zip(*[epi_fast.prune(model, 0.5, x, criterion="l2", reduce="sum")[k] for k in ("layers", "kept")]))
    assert min(summed[n] for n in inner) == 1  # what the old default did


def test_magnitude_scores_take_the_criterion_default():
    model, x = small_model()
    layout = group_layout(model, x)
    torch.testing.assert_close(magnitude_scores(layout, "l2"), Magnitude("l2").group_scores(layout, "mean"))
    torch.testing.assert_close(magnitude_scores(layout, Magnitude("l1"), "sum"), Magnitude("l1").group_scores(layout, "sum"))
    with pytest.raises(ValueError, match="unknown criterion 'taylor'"):
        magnitude_scores(layout, "taylor")


def test_a_gradient_criterion_without_scores_says_what_it_needs():
    model, x = small_model()
    with pytest.raises(ValueError, match=r"criterion 'taylor' needs gradients: pass scores="):
        epi_fast.prune(model, 0.5, x, criterion="taylor")


def test_taylor_accumulator_comes_from_the_criterion():
    model, x = small_model()
    layout = group_layout(model, x)
    acc = Taylor("abs").accumulator(layout)
    assert isinstance(acc, TaylorAccumulator) and isinstance(acc, Accumulator) and acc.mode == "abs"
    F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.arange(4)).backward()
    acc.step()
    assert acc.steps == 1 and acc.scores("sum").shape == (layout.num_neurons,)


# -- criteria written in a user's own code ------------------------------------------------------

class BiasMagnitude(Criterion):
    """|beta| of the group's BatchNorms: a criterion the package does not ship."""

    name = "bn-bias"

    def group_scores(self, layout, reduce=None):
        reduce = self.reduction(reduce)
        out = torch.zeros(layout.num_neurons)
        count = torch.zeros(layout.num_neurons)
        for g, o in zip(layout.groups, layout.offsets):
            for s in g.sources("scales"):
                out.index_add_(0, s.neurons + o, s.module.bias.detach().abs()[s.rows])
                count.index_add_(0, s.neurons + o, torch.ones(len(s.rows)))
        return out / count.clamp(min=1) if reduce == "mean" else out


class GradientNorm(Criterion):
    """Mean squared gradient of each neuron's filter rows: a user's gradient criterion with its
    own accumulator in plain PyTorch."""

    name = "grad-norm"
    needs_gradients = True
    default_tau = 0.95
    default_reduce = "sum"

    def accumulator(self, layout):
        return _GradNormAccumulator(layout)


class _GradNormAccumulator(Accumulator):
    def __init__(self, layout):
        self.layout = layout
        self.sums = torch.zeros(layout.num_neurons)
        self.steps = 0

    def step(self, scaler=None, optimizer=None):
        for g, o in zip(self.layout.groups, self.layout.offsets):
            for s in g.sources("filters"):
                grad = s.module.weight.grad
                self.sums.index_add_(0, s.neurons + o, grad[s.rows].flatten(1).square().sum(1))
        self.steps += 1

    def scores(self, reduce):
        return self.sums / max(self.steps, 1)

    def reset(self):
        self.sums.zero_()
        self.steps = 0


def test_a_user_weight_criterion_prunes_what_its_scores_say():
    model_a, x = small_model()
    with torch.no_grad():
        for m in model_a.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_()
    model_b, _ = small_model()
    model_b.load_state_dict(model_a.state_dict())
    layout_b = group_layout(model_b, x)
    scores = BiasMagnitude().group_scores(layout_b, "mean")
    ra = epi_fast.prune(model_a, 0.5, x, criterion=BiasMagnitude())
    rb = epi_fast.prune(model_b, 0.5, x, scores=scores, layout=layout_b)
    assert ra["criterion"] == "bn-bias" and ra["kept"] == rb["kept"]
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def _train(model, opt, pruner, epochs, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for _ in range(3):
            x = torch.randn(16, 1, 8, 8, generator=g)
            loss = F.cross_entropy(model(x), torch.randint(0, 10, (16,), generator=g))
            opt.zero_grad()
            loss.backward()
            pruner.accumulate()
            opt.step()
        if pruner.epoch_end():
            return


@pytest.mark.parametrize("criterion", [BiasMagnitude(), GradientNorm()], ids=["weights", "gradients"])
def test_a_user_criterion_plugs_into_epipruner(criterion):
    model, x = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = EPIPruner(model, opt, 0.5, x, criterion=criterion, window=2, patience=1, deadline_epoch=4)
    assert pruner.criterion == criterion.name and pruner.tau == criterion.default_tau
    assert pruner.reduce == criterion.default_reduce
    _train(model, opt, pruner, 6)
    assert pruner.pruned and pruner.prune_reason in ("epi", "deadline")
    assert len(pruner.epi) == pruner.prune_epoch + 1
    if criterion.needs_gradients:
        assert pruner.epi[:2] == [None, None] and pruner.epi[2] is not None
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)


# -- a criterion named by its import path (how a command line names one) -----------------------

USER_MODULE = '''
import torch
from epi_fast.criteria import Criterion


class Reversed(Criterion):
    """Scores that prefer the lowest L2 norm: a weight criterion only this file knows."""

    name = "reversed-l2"

    def group_scores(self, layout, reduce=None):
        from epi_fast.criteria import Magnitude
        return -Magnitude("l2").group_scores(layout, reduce or self.default_reduce)


INSTANCE = Reversed()
NOT_ONE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_criteria_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_criteria_mod"


def test_a_criterion_by_import_path(user_module):
    c = get_criterion(f"{user_module}:Reversed")
    assert c.name == "reversed-l2" and type(c).__name__ == "Reversed"
    assert get_criterion(f"{user_module}:INSTANCE").name == "reversed-l2"
    with pytest.raises(ValueError, match=r"is a int, not an epi_fast.criteria.Criterion"):
        get_criterion(f"{user_module}:NOT_ONE")
    with pytest.raises(ValueError, match=r"has no 'Missing'"):
        get_criterion(f"{user_module}:Missing")
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module_xyz'"):
        get_criterion("no_such_module_xyz:C")


def test_both_command_lines_take_a_criterion_by_import_path(user_module, tmp_path, capsys):
    import json

    from epi_fast.app.cli import main

    out = tmp_path / "pruned.pt"
    assert main(["prune", "--model", "resnet_small", "--ratio", "0.5", "--criterion", f"{user_module}:Reversed",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["criterion"] == f"{user_module}:Reversed" and out.exists()
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "2", "--no-progress",
                 "--criterion", f"{user_module}:Reversed"]) == 0
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run["criterion"] == f"{user_module}:Reversed" and run["tau"] == 0.983
    assert main(["prune", "--model", "resnet_small", "--ratio", "0.5", "--criterion", "gradient",
                 "--out", str(tmp_path / "g.pt")]) == 2
    assert "needs gradients" in capsys.readouterr().err
