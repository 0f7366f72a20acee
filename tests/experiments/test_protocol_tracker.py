"""The protocol's dense run is the shipped code: an `EPIPruner` with the same configuration, fed
the same data in the same order, records the same EPI histories and would prune at the
epoch the protocol assigns to EPI."""

import pytest
import torch
import torch.nn.functional as F

from epi_fast.app.training import seed_everything
from epi_fast.policy import EPIPruner
from epi_fast.policy.decision import prune_epoch_for
from experiments.protocol import training as tr
from experiments.protocol.config import MODES, TRAIN, unit_config
from experiments.protocol.dense import UnitSetup, dense_run

# The smoke setting (256 training images, 4 steps per epoch), three ratios, a few epochs, on
# digits (whose setting loads in a second).
CFG = dict(MODES["smoke"], epochs=5, ratios=[0.5, 0.7, 0.3], window=3, patience=3)
REDUCE = {"magnitude": "mean", "gradient": "sum"}


@pytest.fixture(autouse=True)
def one_thread():
    """As the protocol's workers run (and much faster on a shared 2-core machine)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def pruner_run(setup: UnitSetup) -> EPIPruner:
    """A plain training loop around EPIPruner (no deadline), the protocol's recipe and data order."""
    cfg = setup.cfg
    crit = cfg["criterion"]
    seed_everything(cfg["seed"])
    model = setup.new_model()
    opt = tr.make_optimizer(model)
    sched = tr.make_scheduler(opt, cfg["epochs"], setup.steps)
    gen = torch.Generator().manual_seed(cfg["seed"])
    pruner = EPIPruner(model, opt, cfg["ratios"][0], setup.example, criterion=crit, window=cfg["window"],
                       patience=cfg["patience"], track_ratios=cfg["ratios"][1:], reduce=REDUCE[crit],
                       max_layer_ratio=cfg["max_layer_ratio"])
    bs, x, y = TRAIN["batch_size"], setup.train.x, setup.train.y
    for _ in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(setup.steps):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            pruner.accumulate()
            opt.step()
            sched.step()
        if pruner.epoch_end():
            break  # pruned: the pruner stops tracking
    return pruner


@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_dense_run_records_what_epipruner_records(criterion):
    setup = UnitSetup.load(unit_config("digits", 0, criterion, CFG, "test", "resnet_small", REDUCE))
    run = dense_run(setup)
    pruner = pruner_run(setup)

    assert list(pruner.epi_history) == run.ratios == CFG["ratios"]
    expected_epoch, _ = prune_epoch_for(run.fired_epoch(CFG["ratios"][0]), None)
    assert pruner.prune_epoch == expected_epoch
    n = len(pruner.epi)  # epochs 0 .. the prune epoch, or all of them
    assert n == (CFG["epochs"] + 1 if expected_epoch is None else expected_epoch + 1)
    assert sum(v is not None for v in pruner.epi) >= 1  # EPI values are compared, not only Nones
    for r in CFG["ratios"]:
        assert pruner.epi_history[r] == run.epi[r][:n], f"ratio {r}"
        assert len(run.epi[r]) == CFG["epochs"] + 1
        assert pruner.indicators[r].last_structure == run.structures[r][n - 1]
    if pruner.pruned:
        # The prune used the scores the protocol's branch at that epoch uses.
        assert list(pruner.kept_counts.values()) == run.structures[CFG["ratios"][0]][pruner.prune_epoch]


def test_gradient_t0_is_the_first_step_at_the_initial_weights():
    """The gradient criterion's t = 0 record is the tracker's (the first optimizer step's Taylor
    scores at the initial weights); the e = 0 state is the untrained network."""
    from epi_fast.criteria import TaylorAccumulator
    from epi_fast.layout import group_layout

    cfg = dict(CFG, epochs=1, ratios=[0.5])
    setup = UnitSetup.load(unit_config("digits", 0, "gradient", cfg, "test", "resnet_small", REDUCE))
    run = dense_run(setup)
    seed_everything(0)
    model = setup.new_model()
    model.load_state_dict(run.states[0]["model"])
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(setup.train), generator=gen)[:TRAIN["batch_size"]]
    acc = TaylorAccumulator(group_layout(model, setup.example))
    model.train()
    F.cross_entropy(model(setup.train.x[idx]), setup.train.y[idx]).backward()
    acc.step()
    assert torch.equal(run.scores[0], acc.scores("sum"))
