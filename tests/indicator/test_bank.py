"""IndicatorBank: several ratios fed together, each exactly as its own indicator would be."""

from __future__ import annotations

import pytest
import torch

from epi_fast.indicator import EarlyPruningIndicator, IndicatorBank


def test_a_bank_equals_one_indicator_per_ratio():
    g = torch.Generator().manual_seed(0)
    bank = IndicatorBank([0.5, 0.3, 0.7, 0.3], window=3, tau=0.9, patience=2)
    assert bank.ratios == [0.5, 0.3, 0.7] and bank.target == 0.5 and len(bank) == 3
    alone = {r: EarlyPruningIndicator(window=3, tau=0.9, patience=2) for r in bank.ratios}
    for t in range(12):
        counts = torch.randint(1, 9, (3, 6), generator=g) + (t > 6) * 10
        got = bank.update(counts)
        want = [alone[r].update(counts[i]) for i, r in enumerate(bank.ratios)]
        assert got == want
    assert bank.history() == {r: ind.history for r, ind in alone.items()}
    assert bank.fired_epoch == alone[0.5].fired_epoch and bank.epoch == 11
    assert bank[0.7].last_structure == alone[0.7].last_structure


def test_a_refused_row_updates_no_indicator():
    bank = IndicatorBank([0.5, 0.3], window=2)
    bank.update([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"counts\[1\]\[0\] is negative"):
        bank.update([[1, 2], [-1, 4]])
    assert bank.history() == {0.5: [None], 0.3: [None]}


def test_bank_state_round_trip_and_errors():
    bank = IndicatorBank([0.5, 0.3], window=2, tau=0.95, patience=1)
    for c in ([[4, 4], [2, 2]], [[4, 5], [2, 2]], [[4, 5], [2, 3]]):
        bank.update(c)
    other = IndicatorBank([0.5, 0.3], window=2, tau=0.95, patience=1)
    other.load_state_dict(bank.state_dict())
    assert other.update([[4, 5], [2, 3]]) == bank.update([[4, 5], [2, 3]])
    with pytest.raises(ValueError, match="tracks ratios"):
        IndicatorBank([0.5], window=2, tau=0.95, patience=1).load_state_dict(bank.state_dict())
    with pytest.raises(KeyError, match="ratio 0.9 is not tracked"):
        bank[0.9]
    with pytest.raises(ValueError, match="ratios"):
        IndicatorBank([])
    with pytest.raises(ValueError, match=r"ratios\[0\] must be in \(0, 1\)"):
        IndicatorBank([1.0])
