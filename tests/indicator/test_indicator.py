"""EPI / Early-Bird indicators: formulas against hand-computed values and the firing rule."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from epi_fast.indicator import (
    EarlyBirdIndicator,
    EarlyPruningIndicator,
    layer_distances,
    structure_similarity,
    update_indicators,
)


# -- Psi --------------------------------------------------------------------------------------

def test_similarity_hand_computed():
    # d = [|4-2|/6, 0] -> mean 1/6
    assert structure_similarity([4, 8], [2, 8]) == pytest.approx(5 / 6)
    # d = [1/3, 1/7, 0]
    assert structure_similarity([2, 3, 5], [1, 4, 5]) == pytest.approx(1 - (1 / 3 + 1 / 7) / 3)
    assert structure_similarity([7, 7], [7, 7]) == 1.0


def test_zero_over_zero_is_zero_distance():
    assert layer_distances([0, 4], [0, 2]) == [0.0, pytest.approx(1 / 3)]
    assert structure_similarity([0, 0], [0, 0]) == 1.0
    # One side zero is the largest distance, 1.
    assert layer_distances([0], [3]) == [1.0]


def test_similarity_accepts_tensors_and_is_symmetric():
    a, b = torch.tensor([3, 9, 1]), [5, 9, 0]
    assert structure_similarity(a, b) == structure_similarity(b, a)


@pytest.mark.parametrize(
    "a, b, exc",
    [
        ([1, 2], [1], ValueError),
        ([1, -1], [1, 1], ValueError),
        ([1.5], [1], ValueError),
        ([], [], ValueError),
        ([True], [1], TypeError),
        ([float("nan")], [1], ValueError),
    ],
)
def test_similarity_rejects_bad_structures(a, b, exc):
    with pytest.raises(exc):
        structure_similarity(a, b)


# -- EPI ----------------------------------------------------------------------------------------

def test_epi_hand_computed_window_two():
    ind = EarlyPruningIndicator(window=2, tau=0.99, patience=5)
    s = [[4, 8], [2, 8], [3, 6], [3, 6]]
    assert ind.update(s[0]) is None  # t = 0, initialisation
    assert ind.update(s[1]) is None  # only one earlier structure
    e2 = ind.update(s[2])
    expected2 = (structure_similarity(s[2], s[1]) + structure_similarity(s[2], s[0])) / 2
    # by hand: Psi(s2,s1) = 1 - (1/5 + 1/7)/2, Psi(s2,s0) = 1 - (1/7 + 1/7)/2
    assert expected2 == pytest.approx(((1 - (1 / 5 + 1 / 7) / 2) + (1 - 1 / 7)) / 2)
    assert e2 == pytest.approx(expected2)
    e3 = ind.update(s[3])
    assert e3 == pytest.approx((1.0 + structure_similarity(s[3], s[1])) / 2)
    assert ind.history == [None, None, pytest.approx(e2), pytest.approx(e3)]
    assert not ind.fired


def test_first_epi_at_t_equals_window_and_plateau_fires_at_window():
    ind = EarlyPruningIndicator()  # window 5, tau 0.983, patience 5
    values = [ind.update([16, 32, 64]) for _ in range(8)]
    assert values[:5] == [None] * 5
    assert values[5:] == [1.0, 1.0, 1.0]
    # With no earlier EPI values the patience condition is vacuous: earliest prune epoch is 5.
    assert ind.fired and ind.fired_epoch == 5


def _one_layer_indicator(counts, tau, patience=5):
    # window 1 and one layer make EPI_t = 1 - |a-b|/(a+b) easy to steer.
    ind = EarlyPruningIndicator(window=1, tau=tau, patience=patience)
    out = [ind.update([c]) for c in counts]
    return ind, out


def test_rule_needs_tau():
    ind, epi = _one_layer_indicator([100, 80, 90, 95], tau=0.98)
    assert epi[1] == pytest.approx(1 - 20 / 180)
    assert epi[2] == pytest.approx(1 - 10 / 170)
    assert epi[3] == pytest.approx(1 - 5 / 185)  # 0.973 < 0.98
    assert not ind.fired and ind.fired_epoch is None


def test_rule_fires_at_first_crossing_and_sticks_when_epi_falls_back():
    ind, epi = _one_layer_indicator([100, 80, 82, 82, 60, 60], tau=0.95)
    # t=2: 1 - 2/162 = 0.9877 >= tau and >= the one previous value (fewer than patience exist)
    assert epi[2] == pytest.approx(1 - 2 / 162)
    assert ind.fired_epoch == 2
    # EPI later falls back below tau: the decision stays, values keep being recorded.
    assert epi[4] < 0.95
    assert ind.fired and ind.fired_epoch == 2
    assert len(ind.history) == 6


def test_rule_compares_with_previous_patience_values_only():
    # Through update() the first crossing of tau always beats every earlier value (see the
    # property test below), so the patience window is checked on the rule itself.
    ind = EarlyPruningIndicator(window=1, tau=0.3, patience=2)
    ind._history = [None, 0.9, 0.3, 0.4]
    assert ind._rule_holds(0.45)  # >= 0.3 and 0.4, though below 0.9 three epochs ago
    assert not ind._rule_holds(0.35)
    ind.patience = 0
    assert ind._rule_holds(0.35)
    assert not ind._rule_holds(0.29)  # tau still applies


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.lists(st.integers(0, 12), min_size=3, max_size=3), min_size=1, max_size=25),
    window=st.integers(1, 4),
    tau=st.floats(0.5, 1.0),
    patience=st.integers(0, 6),
)
def test_rule_matches_definition(counts, window, tau, patience):
    ind = EarlyPruningIndicator(window=window, tau=tau, patience=patience)
    values = [ind.update(c) for c in counts]
    # Recompute every EPI from scratch and the rule from its wording.
    expected_fire = None
    for t in range(len(counts)):
        if t < window:
            assert values[t] is None
            continue
        e = sum(structure_similarity(counts[t], counts[t - j]) for j in range(1, window + 1)) / window
        assert values[t] == pytest.approx(e, abs=1e-12)
        prev = [v for v in values[:t] if v is not None][-patience:] if patience else []
        if expected_fire is None and values[t] >= tau and all(values[t] >= p for p in prev):
            expected_fire = t
    assert ind.fired_epoch == expected_fire
    # Since every earlier EPI value was below tau at the first crossing, the rule amounts to
    # "the first t with EPI_t >= tau"; this holds whatever the patience.
    first = next((t for t, v in enumerate(values) if v is not None and v >= tau), None)
    assert ind.fired_epoch == first


def test_epi_validation():
    with pytest.raises(ValueError, match="window"):
        EarlyPruningIndicator(window=0)
    with pytest.raises(ValueError, match="tau"):
        EarlyPruningIndicator(tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        EarlyPruningIndicator(tau=1.01)
    with pytest.raises(ValueError, match="patience"):
        EarlyPruningIndicator(patience=-1)
    EarlyPruningIndicator(tau=1.0)  # 1 is allowed: fire only on a perfectly still structure
    ind = EarlyPruningIndicator()
    ind.update([1, 2, 3])
    with pytest.raises(ValueError, match="layers"):
        ind.update([1, 2])
    with pytest.raises(ValueError, match="negative"):
        ind.update([1, -2, 3])
    with pytest.raises(ValueError, match="1-D"):
        ind.update(torch.ones(2, 3, dtype=torch.long))
    # A rejected update records nothing.
    assert ind.history == [None]


def test_epi_state_dict_round_trip_continues_identically():
    seq = [[10, 20, 5], [8, 20, 6], [9, 18, 6], [9, 19, 6], [9, 19, 6], [9, 19, 7], [9, 19, 7], [9, 19, 7]]
    full = EarlyPruningIndicator(window=3, tau=0.97, patience=2)
    for s in seq:
        full.update(s)
    a = EarlyPruningIndicator(window=3, tau=0.97, patience=2)
    for s in seq[:4]:
        a.update(s)
    b = EarlyPruningIndicator(window=3, tau=0.97, patience=2)
    b.load_state_dict(a.state_dict())
    for s in seq[4:]:
        b.update(s)
    assert b.history == full.history
    assert b.fired_epoch == full.fired_epoch
    with pytest.raises(ValueError, match="window"):
        EarlyPruningIndicator(window=4, tau=0.97, patience=2).load_state_dict(a.state_dict())


# -- Early-Bird ---------------------------------------------------------------------------------

def _mask(bits):
    return torch.tensor(bits, dtype=torch.bool)


def test_early_bird_hamming_distances():
    eb = EarlyBirdIndicator(window=3, eps=0.25)
    assert eb.update(_mask([1, 1, 0, 0])) is None
    assert eb.update(_mask([1, 0, 1, 0])) is None
    # newest vs the previous two: 2/4 and 0/4 -> max 0.5
    assert eb.update(_mask([1, 0, 1, 0])) == pytest.approx(0.5)
    assert not eb.fired
    # vs [1,0,1,0] twice: 2/4 each
    assert eb.update(_mask([1, 0, 0, 1])) == pytest.approx(0.5)
    assert eb.update(_mask([1, 0, 0, 1])) == pytest.approx(0.5)
    assert eb.update(_mask([1, 0, 0, 1])) == 0.0
    assert eb.fired and eb.fired_epoch == 5


def test_early_bird_default_window_compares_with_four_previous():
    eb = EarlyBirdIndicator()
    m = _mask([1, 0] * 10)
    out = [eb.update(m) for _ in range(6)]
    assert out[:4] == [None] * 4 and out[4] == 0.0
    assert eb.fired_epoch == 4


def test_early_bird_validation_and_state():
    with pytest.raises(ValueError):
        EarlyBirdIndicator(window=1)
    with pytest.raises(ValueError):
        EarlyBirdIndicator(eps=1.0)
    eb = EarlyBirdIndicator(window=2, eps=0.0)
    with pytest.raises(TypeError):
        eb.update(torch.ones(3))
    eb.update(_mask([1, 0, 1]))
    with pytest.raises(ValueError, match="channels"):
        eb.update(_mask([1, 0]))
    clone = EarlyBirdIndicator(window=2, eps=0.0)
    clone.load_state_dict(eb.state_dict())
    assert clone.update(_mask([1, 0, 1])) == eb.update(_mask([1, 0, 1])) == 0.0
    assert clone.fired_epoch == eb.fired_epoch == 1
    assert math.isfinite(clone.history[-1])


# -- several indicators per epoch (update_indicators) -------------------------------------------

def _clone(ind):
    c = EarlyPruningIndicator(ind.window, ind.tau, ind.patience)
    c.load_state_dict(ind.state_dict())
    return c


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 60),
    epochs=st.integers(1, 14),
    windows=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    as_tensor=st.booleans(),
)
def test_update_indicators_matches_one_by_one_bit_for_bit(layers, epochs, windows, seed, as_tensor):
    gen = torch.Generator().manual_seed(seed)
    batched = [EarlyPruningIndicator(window=w, tau=0.9, patience=2) for w in windows]
    single = [_clone(i) for i in batched]
    for _ in range(epochs):
        # counts near each other (so EPI is high and the rule fires sometimes) with zeros (0/0).
        counts = torch.randint(0, 4, (len(windows), layers), generator=gen) + torch.randint(0, 2, (1, layers), generator=gen) * 50
        got = update_indicators(batched, counts if as_tensor else counts.tolist())
        want = [ind.update(row) for ind, row in zip(single, counts.tolist())]
        assert got == want  # exact: same floats, same Nones
    for b, s in zip(batched, single):
        assert b.history == s.history
        assert b.fired_epoch == s.fired_epoch
        assert b.state_dict() == s.state_dict()


def test_update_indicators_after_resume_and_with_mixed_windows():
    a, b = EarlyPruningIndicator(window=2), EarlyPruningIndicator(window=3)
    for row in ([5, 6], [5, 7], [5, 6]):
        update_indicators([a, b], [row, row])
    resumed = [_clone(a), _clone(b)]  # rings are rebuilt from the saved deques
    ref = [_clone(a), _clone(b)]
    got = update_indicators(resumed, np.array([[5, 6], [4, 6]]))
    assert got == [ref[0].update([5, 6]), ref[1].update([4, 6])]
    assert got[0] is not None and got[1] is not None


def test_update_indicators_refuses_bad_input_and_changes_nothing():
    inds = [EarlyPruningIndicator(window=1), EarlyPruningIndicator(window=1)]
    update_indicators(inds, [[3, 4], [3, 4]])
    before = [i.state_dict() for i in inds]
    with pytest.raises(ValueError, match="2 rows but there are 3"):
        update_indicators(inds + [EarlyPruningIndicator()], torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        update_indicators(inds, torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="bool"):
        update_indicators(inds, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"counts\[1\]\[0\] is negative"):
        update_indicators(inds, [[3, 4], [-1, 4]])
    with pytest.raises(ValueError, match=r"counts\[1\] has 3 layers"):
        update_indicators(inds, [[3, 4], [3, 4, 5]])
    with pytest.raises(ValueError, match="same indicator twice"):
        update_indicators([inds[0], inds[0]], [[3, 4], [3, 4]])
    with pytest.raises(TypeError, match=r"indicators\[1\]"):
        update_indicators([inds[0], "x"], [[3, 4], [3, 4]])
    assert [i.state_dict() for i in inds] == before
    assert update_indicators([], torch.zeros(0, 3, dtype=torch.int64)) == []


def test_firing_after_a_dip_compares_with_the_last_defined_values():
    ind = EarlyPruningIndicator(window=1, tau=0.99, patience=2)
    for row in ([10], [5], [10], [10], [10]):
        ind.update(row)
    # EPI: None, 2/3, 2/3, 1.0 (>= tau and >= the last two defined values) -> fires at t = 3.
    assert ind.history[1:3] == [pytest.approx(2 / 3)] * 2
    assert ind.fired_epoch == 3


def test_update_indicators_accepts_integral_float_counts():
    a, b = EarlyPruningIndicator(window=1), EarlyPruningIndicator(window=1)
    update_indicators([a, b], torch.tensor([[3.0, 4.0], [5.0, 6.0]], dtype=torch.bfloat16))
    assert a.last_structure == [3, 4] and b.last_structure == [5, 6]
    with pytest.raises(ValueError, match=r"counts\[0\]\[1\] must be an integer count"):
        update_indicators([a, b], torch.tensor([[3.0, 4.5], [5.0, 6.0]]))
