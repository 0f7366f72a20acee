"""StructureTracker: what EPIPruner watches, usable on its own (the reproduction drives it)."""

from __future__ import annotations

import pytest
import torch

from epi_fast.policy import EPIPruner, PrunerConfig, StructureTracker

from test_pruner import X0, make, one_thread, run_epochs  # noqa: F401  (one_thread: autouse)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_the_tracker_sees_what_the_pruner_decides_on(criterion):
    model_a, opt_a, pruner = make(criterion=criterion, track_ratios=(0.3, 0.7))
    run_epochs(model_a, opt_a, pruner, 1, 6)

    model_b, opt_b, _ = make(criterion=criterion, track_ratios=(0.3, 0.7), deadline_epoch=None)
    tracker = StructureTracker(model_b, X0, PrunerConfig.build(0.5, criterion=criterion, track_ratios=(0.3, 0.7)))
    records = []

    class Hook:  # run_epochs' interface: accumulate() per step, epoch_end() per epoch
        def accumulate(self):
            tracker.accumulate(None, opt_b)

        def epoch_end(self):
            records.append(tracker.epoch_end())
            return False

    run_epochs(model_b, opt_b, Hook(), 1, 6)
    assert tracker.bank.history() == pruner.epi_history
    assert [r.epoch for r in records] == list(range(1, 7))
    assert tracker.initial is not None and tracker.initial.epoch == 0
    assert tracker.initial.masks.shape == (3, tracker.layout.num_neurons)
    assert tracker.initial.counts.shape == (3, len(tracker.layers))
    last = records[-1]
    assert last.epi == [tracker.bank[r].history[-1] for r in (0.5, 0.3, 0.7)]
    assert torch.equal(last.counts, tracker.layout.structure(last.masks))


def test_the_gradient_t0_structure_comes_from_the_first_finite_step():
    model, opt, _ = make(criterion="gradient")
    tracker = StructureTracker(model, X0, PrunerConfig.build(0.5, criterion="gradient"))
    assert tracker.initial is None and not tracker.t0_recorded
    x = torch.randn(8, 1, 8, 8)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8))
    loss.backward()
    scores = tracker.criterion.accumulator(tracker.layout)
    scores.step()
    tracker.accumulate()
    assert tracker.t0_recorded and tracker.initial.epoch == 0
    torch.testing.assert_close(tracker.initial.scores, scores.scores("sum"))
    assert tracker.bank.history() == {0.5: [None]}
