"""EPIPruner in a real (tiny) training loop on the in-repo resnet_small."""

import copy

import pytest
import torch
import torch.nn.functional as F

from epi_fast.models import build_model
from epi_fast.policy import EPIPruner, default_tau

N, B = 96, 32  # 3 optimizer steps per epoch: enough to move BN scales, quick on one thread


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: threads only add synchronisation (and make timings noisy under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, 1, 8, 8, generator=g)
    w = torch.randn(64, 10, generator=g)
    y = (x.flatten(1) @ w).argmax(1)  # a learnable labelling
    return x, y


X, Y = _data()
X0 = torch.zeros(1, 1, 8, 8)


def make(criterion="magnitude", lr=0.1, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return model, opt, EPIPruner(model, opt, 0.5, X0, criterion=criterion, **kw)


def run_epochs(model, opt, pruner, first, last, scaler=None, on_step=None, pass_scaler=False):
    """Train epochs first..last; `on_step(epoch, step, model)` runs after each backward and may
    poison gradients (returning True skips that optimizer step). The batch order depends only on the epoch, so a run resumed
    at an epoch boundary sees the same batches as an uninterrupted one."""
    pruned_at = []
    for epoch in range(first, last + 1):
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(1000 + epoch))
        for step, i in enumerate(range(0, N, B)):
            idx = perm[i:i + B]
            loss = F.cross_entropy(model(X[idx]), Y[idx])
            opt.zero_grad()
            if scaler is None:
                loss.backward()
                overflowed = on_step(epoch, step, model) if on_step else False
                pruner.accumulate()
                if not overflowed:  # what GradScaler does with non-finite gradients
                    opt.step()
            else:
                scaler.scale(loss).backward()
                if on_step:
                    on_step(epoch, step, model)
                scaler.unscale_(opt)
                pruner.accumulate(scaler if pass_scaler else None)
                scaler.step(opt)
                scaler.update()
        if pruner.epoch_end():
            pruned_at.append(epoch)
    return pruned_at


def widths(model, names):
    mods = dict(model.named_modules())
    return [mods[n].out_channels if hasattr(mods[n], "out_channels") else mods[n].out_features for n in names]


# -- magnitude ------------------------------------------------------------------------------------

def test_magnitude_records_t0_in_constructor_and_fires_at_window_on_a_still_network():
    # lr = 0: the weights, hence the structure, never change: EPI_5 = 1 and the rule fires at
    # the earliest possible epoch, the window.
    model, opt, pruner = make(lr=0.0)
    assert pruner.tau == 0.983 and pruner.epi == [None]
    before = sum(p.numel() for p in model.parameters())
    assert run_epochs(model, opt, pruner, 1, 7) == [5]
    assert pruner.pruned and pruner.prune_epoch == 5 and pruner.prune_reason == "epi"
    assert pruner.epi == [None] * 5 + [1.0]  # tracking stopped at the prune
    assert pruner.epoch == 7
    rep = pruner.report()
    assert rep["params_before"] == before > rep["params_after"] == sum(p.numel() for p in model.parameters())
    assert rep["flops_before"] > rep["flops_after"] > 0
    assert rep["prune_epoch"] == 5 and rep["prune_reason"] == "epi"


def test_prune_gives_the_tracked_structure_and_training_continues():
    model, opt, pruner = make(deadline_epoch=3)
    assert run_epochs(model, opt, pruner, 1, 3) == [3]
    assert pruner.prune_reason == "deadline" and pruner.prune_epoch == 3
    tracked = pruner.indicators[0.5].last_structure  # the structure fed at the prune epoch
    assert pruner.indicators[0.5].epoch == 3
    assert list(pruner.kept_counts.values()) == tracked == widths(model, pruner.layers)
    # The optimizer now holds the pruned parameters and keeps training them.
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in model.parameters())
    w = [p.detach().clone() for p in model.parameters()]
    run_epochs(model, opt, pruner, 4, 4)
    assert any(not torch.equal(a, b) for a, b in zip(w, model.parameters()))
    assert pruner.epoch_end() is False and pruner.epoch == 5


def test_track_ratios_share_scores_and_only_the_target_decides():
    model, opt, pruner = make(track_ratios=(0.7, 0.5, 0.3), deadline_epoch=6)
    assert pruner.ratios == [0.5, 0.7, 0.3]
    run_epochs(model, opt, pruner, 1, 6)
    hist = pruner.epi_history
    assert set(hist) == {0.3, 0.5, 0.7}
    assert all(len(h) == pruner.prune_epoch + 1 for h in hist.values())
    assert all(h[:5] == [None] * 5 and h[5] is not None for h in hist.values())
    # Nested ratios: a higher ratio never keeps more channels in a layer.
    s3, s5, s7 = (pruner.indicators[r].last_structure for r in (0.3, 0.5, 0.7))
    assert all(a >= b >= c for a, b, c in zip(s3, s5, s7))


def test_deadline_before_the_window_fills():
    model, opt, pruner = make(deadline_epoch=2)
    assert run_epochs(model, opt, pruner, 1, 2) == [2]
    assert pruner.prune_reason == "deadline" and pruner.epi == [None, None, None]


def test_never_pruned_report():
    model, opt, pruner = make(tau=1.0)
    run_epochs(model, opt, pruner, 1, 2)
    rep = pruner.report()
    assert not rep["pruned"] and rep["prune_epoch"] is None and rep["prune_reason"] is None
    assert rep["params_before"] == rep["params_after"] and rep["kept_counts"] is None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"criterion": "random"}, "criterion"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"track_ratios": (0.5, 1.5)}, "track_ratios"),
        ({"deadline_epoch": 0}, "deadline_epoch"),
        ({"tau": 1.5}, "tau"),
        ({"window": 0}, "window"),
        ({"min_keep": 0}, "min_keep"),
        ({"reduce": "median"}, "reduce"),
    ],
)
def test_validation(kw, match):
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    args = {"ratio": 0.5, **kw}
    with pytest.raises(ValueError, match=match):
        EPIPruner(model, None, example_inputs=X0, **args)


def test_default_tau_per_criterion():
    assert default_tau("gradient") == default_tau("taylor") == 0.944
    assert {default_tau(c) for c in ("magnitude", "bn", "l1", "l2")} == {0.983}


# -- gradient (Taylor) ----------------------------------------------------------------------------

def test_gradient_t0_is_the_first_finite_step_and_inf_steps_are_skipped():
    model, opt, pruner = make(criterion="gradient", deadline_epoch=6)
    assert pruner.tau == 0.944
    assert pruner.epi == []  # no gradients at construction: nothing recorded yet

    seen = []

    def poison_first_step(epoch, step, model):
        if epoch == 1 and step == 0:
            # A BatchNorm scale: what the Taylor criterion reads in a BN network.
            model.stem[0][1].weight.grad[0] = float("inf")
            seen.append(len(pruner.epi))
            return True
        seen.append(len(pruner.epi))
        return False

    run_epochs(model, opt, pruner, 1, 1, on_step=poison_first_step)
    # before step 0: nothing; before step 1: still nothing (step 0 was skipped);
    # before step 2: t = 0 recorded from step 1.
    assert seen == [0, 0, 1]
    assert pruner.skipped_steps == 1
    assert len(pruner.epi) == 2  # t = 0 and epoch 1
    run_epochs(model, opt, pruner, 2, 6)
    assert pruner.prune_epoch == 6 and pruner.skipped_steps == 1
    assert all(v is not None for v in pruner.epi[5:])


def test_gradient_epoch_end_without_accumulate_is_an_error():
    model, opt, pruner = make(criterion="gradient")
    with pytest.raises(RuntimeError, match="accumulate"):
        pruner.epoch_end()


def test_gradient_with_grad_scaler_on_cpu():
    model, opt, pruner = make(criterion="taylor", deadline_epoch=5)
    # An overflow in the first step, as fp16 AMP often has: the scaler skips that optimizer
    # step and backs off; the pruner skips the same step's Taylor terms and takes its t = 0
    # structure from the next step.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10 ** 6)

    def overflow_once(epoch, step, model):
        if epoch == 1 and step == 0:
            model.layers[0].bn1.weight.grad[3] = float("inf")

    run_epochs(model, opt, pruner, 1, 5, scaler=scaler, on_step=overflow_once)
    assert pruner.skipped_steps == 1
    assert float(scaler.get_scale()) == 2.0 ** 15
    assert pruner.prune_epoch == 5 and len(pruner.epi) == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_grad_scaler_skip_of_an_unscored_parameter_skips_the_taylor_step():
    # The inf lands in the classifier, whose weights are not scored: only the scaler sees it.
    # Passing the scaler makes the pruner skip the same step as the optimizer.
    model, opt, pruner = make(criterion="taylor", deadline_epoch=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10 ** 6)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]

    def overflow_head(epoch, step, model):
        if epoch == 2 and step in (0, 1):
            head.weight.grad[0, 0] = float("nan")

    run_epochs(model, opt, pruner, 1, 3, scaler=scaler, on_step=overflow_head, pass_scaler=True)
    assert pruner.skipped_steps == 2
    assert float(scaler.get_scale()) == 2.0 ** 14


def test_grad_scaler_passed_before_unscale_divides_the_scale_out():
    model, opt, pruner = make(criterion="taylor")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    loss = F.cross_entropy(model(X[:B]), Y[:B])
    scaler.scale(loss).backward()
    pruner.tracker.accumulator.step(scaler, opt)
    scaled = pruner.tracker.accumulator.acc.clone()
    pruner.tracker.accumulator.reset()
    scaler.unscale_(opt)
    pruner.tracker.accumulator.step(scaler, opt)
    torch.testing.assert_close(scaled, pruner.tracker.accumulator.acc, rtol=1e-5, atol=0)


# -- checkpoint / resume ----------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_resume_makes_the_same_decision(criterion):
    kw = dict(criterion=criterion, track_ratios=(0.3,), deadline_epoch=7, tau=0.99)
    model_a, opt_a, pa = make(**kw)
    run_epochs(model_a, opt_a, pa, 1, 9)

    model_b, opt_b, pb = make(**kw)
    run_epochs(model_b, opt_b, pb, 1, 3)
    saved = copy.deepcopy({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "pruner": pb.state_dict()})
    del model_b, opt_b, pb

    model_c, opt_c, pc = make(**dict(kw, seed=99))  # another initialisation, overwritten below
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    pc.load_state_dict(saved["pruner"])
    run_epochs(model_c, opt_c, pc, 4, 9)

    assert pc.prune_epoch == pa.prune_epoch and pc.prune_reason == pa.prune_reason
    assert pc.epi_history == pa.epi_history
    assert pc.kept_counts == pa.kept_counts
    for a, c in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(a, c)


def test_resume_after_the_prune_needs_the_pruned_model():
    model, opt, pruner = make(deadline_epoch=2)
    run_epochs(model, opt, pruner, 1, 3)
    state = pruner.state_dict()

    # The pruned network restored (here: copied), a fresh pruner around it, the state loaded.
    restored = copy.deepcopy(model)
    opt2 = torch.optim.SGD(restored.parameters(), lr=0.1)
    p2 = EPIPruner(restored, opt2, 0.5, X0, deadline_epoch=2)
    p2.load_state_dict(state)
    assert p2.pruned and p2.prune_epoch == 2 and p2.epoch == 3
    assert p2.kept_counts == pruner.kept_counts
    assert p2.report()["params_after"] == pruner.report()["params_after"]
    assert p2.epoch_end() is False

    # An unpruned network cannot take that state.
    fresh, _, p3 = make(deadline_epoch=2)
    with pytest.raises(ValueError, match="not the pruned one"):
        p3.load_state_dict(state)
    # Nor can a pruner built with another rule.
    _, _, p4 = make(deadline_epoch=3)
    with pytest.raises(ValueError, match="deadline_epoch"):
        p4.load_state_dict(make(deadline_epoch=2)[2].state_dict())


@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_epi_tracks_the_structures_of_the_target_limits_and_rounding_it_prunes(criterion):
    model, opt, pruner = make(criterion, target="params", max_layer_ratio=0.8, round_to=2, deadline_epoch=3,
                              track_ratios=(0.3,))
    tracker = pruner.tracker
    seen = []
    observe = tracker._observe

    def recording(scores):
        record = observe(scores)
        seen.append(record)
        return record

    tracker._observe = recording
    dense = sum(p.numel() for p in model.parameters())
    run_epochs(model, opt, pruner, 1, 3)
    assert pruner.pruned and pruner.prune_epoch == 3
    last = seen[-1]
    # The prune cut exactly the structure EPI watched at the target ratio (row 0).
    assert list(pruner.kept_counts.values()) == last.counts[0].tolist()
    widths = dict(zip(tracker.layers, tracker.layout.layer_channels().values()))
    for name, kept in pruner.kept_counts.items():
        assert kept % 2 == 0 or kept == widths[name]
        assert widths[name] - kept <= int(0.8 * widths[name])
    achieved = 1 - sum(p.numel() for p in pruner.module.parameters()) / dense
    assert abs(achieved - 0.5) <= 0.01 and pruner.report()["achieved"] == pytest.approx(achieved)
    assert pruner.report()["target"] == "params"


def test_a_pruned_run_resumes_through_the_constructor_even_when_the_target_is_out_of_reach(tmp_path):
    """After a prune to half the parameters, the pruned network cannot lose half again within
    the limits; `state=` resumes it without tracing it."""
    import epi_fast
    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    x = torch.zeros(1, 1, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = EPIPruner(model, opt, 0.5, x, target="params", deadline_epoch=1)
    assert pruner.epoch_end() and pruner.pruned
    state = pruner.state_dict()
    path = epi_fast.save_pruned(model, tmp_path / "m.pt", arch={"name": "resnet_small",
                                                                "kwargs": {"num_classes": 10, "in_channels": 1}})
    pruned = epi_fast.load_pruned(path)
    again = EPIPruner(pruned, torch.optim.SGD(pruned.parameters(), lr=0.1), 0.5, x, target="params",
                      deadline_epoch=1, state=state)
    assert again.pruned and again.prune_epoch == 1 and again.kept_counts == pruner.kept_counts
    assert again.epi_history == pruner.epi_history
    assert not again.epoch_end()  # after the prune an epoch only counts
