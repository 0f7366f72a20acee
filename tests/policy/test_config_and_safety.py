"""EPIPruner's configuration: one check per argument, early refusals, warnings a user needs, and
checkpoints of 0.1 that still load."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from epi_fast.criteria import Magnitude, Taylor
from epi_fast.models import build_model
from epi_fast.policy import EPIPruner, LatePruneWarning, PrunerConfig, late_prune_message, prune_decision
from epi_fast.policy.decision import prune_epoch_for

from test_pruner import X0, make, one_thread, run_epochs  # noqa: F401  (one_thread: autouse)

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("kw, exc, match", [
    ({"ratio": "0.5"}, TypeError, r"ratio must be a number, got '0.5'"),
    ({"ratio": True}, TypeError, r"ratio must be a number"),
    ({"ratio": float("nan")}, ValueError, r"ratio must be in \(0, 1\), got nan"),
    ({"track_ratios": (0.2, "x")}, TypeError, r"track_ratios\[1\] must be a number"),
    ({"window": 2.0}, TypeError, r"window must be an integer >= 1, got 2.0"),
    ({"patience": -1}, ValueError, r"patience must be an integer >= 0, got -1"),
    ({"tau": 0.0}, ValueError, r"tau must be in \(0, 1\], got 0.0"),
    ({"min_keep": True}, TypeError, r"min_keep must be an integer >= 1"),
    ({"deadline_epoch": 10, "total_epochs": 8}, ValueError, r"deadline_epoch 10 is after the last epoch"),
    ({"total_epochs": 0}, ValueError, r"total_epochs must be an integer >= 1"),
    ({"criterion": "l2", "taylor_mode": "abs"}, ValueError, r"taylor_mode applies to a Taylor criterion"),
])
def test_each_argument_has_one_check(kw, exc, match):
    with pytest.raises(exc, match=match):
        PrunerConfig.build(**{"ratio": 0.5, **kw})


def test_config_resolves_the_criterion_defaults():
    c = PrunerConfig.build(0.5, criterion="gradient", track_ratios=(0.3, 0.5, 0.7))
    assert c.ratios == (0.5, 0.3, 0.7) and c.criterion == Taylor() and c.criterion_name == "gradient"
    assert (c.tau, c.reduce) == (0.944, "sum")
    c = PrunerConfig.build(0.5, criterion=Magnitude("l1"), tau=0.99, reduce="max")
    assert (c.criterion_name, c.tau, c.reduce) == ("l1", 0.99, "max")
    c = PrunerConfig.build(0.5, criterion="taylor", taylor_mode="abs")
    assert c.criterion == Taylor("abs")


def test_an_optimizer_of_another_model_fails_at_construction():
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    other = torch.optim.SGD(build_model("resnet_small", num_classes=10, in_channels=1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="the optimizer holds none of the model's parameters"):
        EPIPruner(model, other, 0.5, X0)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got dict"):
        EPIPruner(model, {"lr": 0.1}, 0.5, X0)


def test_the_decision_rules():
    assert prune_decision(None, 4, None) is None
    assert prune_decision(5, 5, 10) == "epi" and prune_decision(None, 10, 10) == "deadline"
    assert prune_decision(None, 9, 10) is None
    assert prune_epoch_for(7, 10) == (7, "epi") and prune_epoch_for(12, 10) == (10, "deadline")
    assert prune_epoch_for(None, 10) == (10, "deadline") and prune_epoch_for(None, None) == (None, None)
    assert late_prune_message(27, 30) is None and late_prune_message(10, None) is None
    assert "only 2 epochs left" in late_prune_message(28, 30)


def test_a_checkpoint_of_0_1_under_the_new_default_limit_is_refused_by_name():
    saved = torch.load(os.path.join(DATA, "pruner_v1_magnitude.pt"), weights_only=False)
    model, opt, pruner = make(criterion="magnitude", track_ratios=(0.3,), deadline_epoch=7, tau=0.99, reduce="sum")
    with pytest.raises(ValueError, match=r"saved with max_layer_ratio=1.0, this pruner has 0.9"):
        pruner.load_state_dict(saved["pruner"])


def test_a_late_prune_warns_when_the_schedule_is_known():
    model, opt, pruner = make(deadline_epoch=5, total_epochs=5)
    with pytest.warns(LatePruneWarning, match=r"pruned after epoch 5 of 5: only 0 epochs left"):
        run_epochs(model, opt, pruner, 1, 5)
    assert pruner.prune_reason == "deadline"
    model, opt, pruner = make(deadline_epoch=3, total_epochs=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatePruneWarning)
        run_epochs(model, opt, pruner, 1, 3)
    assert pruner.pruned


@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_a_checkpoint_of_0_1_resumes_like_an_uninterrupted_run(criterion):
    # pruner_v1_*.pt: three epochs of the loop below under epi_fast 0.1 (see make_v1_states.py).
    # 0.1 had no per-layer limit: its state resumes under the paper's rule (max_layer_ratio=1.0).
    kw = dict(criterion=criterion, track_ratios=(0.3,), deadline_epoch=7, tau=0.99, reduce="sum", max_layer_ratio=1.0)
    model_a, opt_a, pa = make(**kw)
    run_epochs(model_a, opt_a, pa, 1, 9)

    saved = torch.load(os.path.join(DATA, f"pruner_v1_{criterion}.pt"), weights_only=False)
    assert saved["pruner"]["version"] == 1
    model_c, opt_c, pc = make(**dict(kw, seed=99))
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    pc.load_state_dict(saved["pruner"])
    run_epochs(model_c, opt_c, pc, 4, 9)
    assert (pc.prune_epoch, pc.prune_reason) == (pa.prune_epoch, pa.prune_reason)
    assert pc.epi_history == pa.epi_history and pc.kept_counts == pa.kept_counts
    # The stored epochs were computed on another CPU: its float reductions may differ in the
    # last bits, which six SGD epochs grow to about 1e-6, so weights agree within float
    # tolerance; the decisions above stay exact.
    for a, c in zip(model_a.parameters(), model_c.parameters()):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
