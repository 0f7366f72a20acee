"""The protocol's aggregation on a small hand-made set of units, and which units a rerun redoes."""

import json

import pytest

from experiments.protocol.analysis import aggregate
from experiments.protocol.config import MODES, T0_FIRST_STEP, T0_TRAIN_PASS, T0_WEIGHTS, unit_config
from experiments.protocol.runner import pending
from experiments.protocol.tables import cost_markdown, table_markdown

T, CANDS, PREDEF, N = 6, [0, 2, 4], 2, 100  # epochs, grid, pre-def epoch, samples per epoch
DENSE_FLOPS, PRUNED_FLOPS = 1000, 500


def unit(seed, crit, grid, epi_epoch, reason="epi", legacy=False):
    """One seed's unit: `grid` maps prune epoch -> final top-1 for ratio 0.5 (and EPI's epoch)."""
    u = {
        "config": {"criterion": crit, "seed": seed, "epochs": T, "candidates": CANDS, "predef": PREDEF,
                   "reduce": {"magnitude": "mean", "gradient": "sum"}},
        "tau": 0.944 if crit == "gradient" else 0.983, "deadline": 3, "samples_per_epoch": N,
        "dense": {"top1_final": 0.9, "flops": DENSE_FLOPS, "epoch_seconds": [1.0, 1.0, 1.0], "score_seconds": [0.01]},
        "branches": {"0.5": {str(e): {"top1": v, "flops_after": PRUNED_FLOPS, "epoch_seconds": 0.5,
                                      "prune_seconds": 0.0, "kept": [1]} for e, v in grid.items()}},
        "epi_epoch": {"0.5": epi_epoch}, "epi_reason": {"0.5": reason}, "early_bird_fired": {"0.5": None},
    }
    if not legacy:  # this protocol's units; epi_fast 0.1's lack these keys
        u["config"]["t0"] = T0_FIRST_STEP if crit == "gradient" else T0_WEIGHTS
        u["t0_scoring_samples"] = 10 if crit == "gradient" else 0
    return u


UNITS = [
    unit(0, "magnitude", {0: 0.80, 2: 0.90, 4: 0.90, 3: 0.85}, 3),        # tie at 2 and 4: the earlier wins
    unit(1, "magnitude", {0: 0.70, 2: 0.80, 4: 0.84}, 4),
    unit(0, "gradient", {0: 0.60, 2: 0.70, 4: 0.65, 3: 0.50}, 3, "deadline"),
    unit(1, "gradient", {0: 0.62, 2: 0.66, 4: 0.68, 3: 0.52}, 3, "deadline", legacy=True),
]


def test_policies_and_drops():
    agg = aggregate(UNITS, "toy")
    row = agg["criteria"]["magnitude"]["rows"]["0.5"]
    assert row["oracle_epochs"] == [2, 4]
    assert row["oracle"]["values"] == pytest.approx([90.0, 84.0])
    assert row["init"]["mean"] == pytest.approx(75.0)
    assert row["predef"]["mean"] == pytest.approx(85.0)
    assert row["epi"]["values"] == pytest.approx([85.0, 84.0])
    assert row["epi"]["std"] == pytest.approx(0.7071, abs=1e-4)  # sample std of 85, 84
    assert row["drop_init"]["mean"] == pytest.approx(12.0)         # (10 + 14) / 2
    assert row["drop_epi"]["mean"] == pytest.approx(2.5)           # (5 + 0) / 2
    # On the seed mean epoch 4 (87) beats epoch 2 (85).
    assert row["oracle_meanselected"] == {"epoch": 4, "mean": pytest.approx(87.0), "std": pytest.approx(4.2426, abs=1e-4)}
    assert row["epi_epochs"] == [3, 4] and row["epi_reasons"] == ["epi", "epi"]
    c = agg["criteria"]["magnitude"]
    assert c["avg_drop"] == {"init": pytest.approx(12.0), "predef": pytest.approx(2.0), "epi": pytest.approx(2.5)}
    g = agg["criteria"]["gradient"]
    assert g["rows"]["0.5"]["oracle_epochs"] == [2, 4]
    assert g["rows"]["0.5"]["drop_epi"]["mean"] == pytest.approx(18.0)  # (70 - 50 + 68 - 52) / 2
    assert len(g["t0"]) == 2  # one unit of each t = 0 definition


def test_costs_charge_the_t0_scores_to_init():
    costs = aggregate(UNITS, "toy")["criteria"]
    m, g = costs["magnitude"]["costs"]["0.5"], costs["gradient"]["costs"]["0.5"]
    assert m["init_flops"] == pytest.approx(0.5)                   # T epochs at half the FLOPs
    assert m["init_wall"] == pytest.approx(0.5)
    # Gradient: this protocol's unit pays one batch (10 of 100 samples) of dense gradients at
    # t = 0, epi_fast 0.1's unit a pass over the training set (100 of 100).
    assert g["init_flops"] == pytest.approx(0.5 + (0.1 + 1.0) / 2 / T)
    assert m["epi_flops"] == pytest.approx(((3 * 1 + 3 * 0.5) / T + (4 * 1 + 2 * 0.5) / T) / 2)
    assert m["epi_wall"] == pytest.approx(((3 + 1.5 + 0.03) / T + (4 + 1 + 0.04) / T) / 2)
    assert m["predef_flops"] == pytest.approx((2 + 4 * 0.5) / T)
    indep = (6 * 0.5 + (2 + 4 * 0.5) + (4 + 2 * 0.5)) / T
    assert m["oracle_independent_flops"] == pytest.approx(indep)
    assert m["oracle_branched_flops"] == pytest.approx((T + (6 + 4 + 2) * 0.5) / T)
    assert m["pruned_flops_fraction_flops"] == pytest.approx(0.5)


def test_tables_render():
    agg = aggregate(UNITS, "toy")
    md = table_markdown(agg)
    assert "| 50% | 90.00 ± 0.00 | 87.00 ± 4.24 | 75.00 ± 7.07 |" in md
    assert "(3†,3†)" in md and "(3,4)" in md
    assert "| avg drop vs oracle | | – | 12.00 | 2.00 | 2.50 | |" in md
    assert "| magnitude | 50% | 0.50 | 0.50 / 0.50 |" in cost_markdown(agg)


def test_rerun_redoes_missing_changed_and_unreadable_units(tmp_path):
    cfg = dict(MODES["smoke"])
    reduce = {"magnitude": "mean", "gradient": "sum"}
    jobs = []
    for seed in (0, 1):
        for crit in ("magnitude", "gradient"):
            u = unit_config("digits", seed, crit, cfg, "smoke", "resnet_small", reduce)
            jobs.append((u, str(tmp_path / f"{crit}{seed}.json")))

    def store(i, config):
        with open(jobs[i][1], "w") as f:
            json.dump({"config": config}, f)

    store(0, jobs[0][0])                                             # magnitude seed 0: as wanted
    store(1, {k: v for k, v in jobs[1][0].items() if k != "t0"})     # gradient, epi_fast 0.1's config
    legacy_magnitude = {k: v for k, v in jobs[2][0].items() if k != "t0"}
    store(2, legacy_magnitude)                                       # magnitude, epi_fast 0.1's config
    with open(jobs[3][1], "w") as f:
        f.write('{"config": ')                                        # half a file
    assert [(j[1], why) for j, why in pending(jobs)] == [(jobs[1][1], "configuration changed"),
                                                         (jobs[3][1], "unreadable")]
    store(2, dict(legacy_magnitude, epochs=7))
    assert (jobs[2][1], "configuration changed") in [(j[1], why) for j, why in pending(jobs)]
    assert jobs[1][0]["t0"] == T0_FIRST_STEP and T0_TRAIN_PASS != T0_FIRST_STEP


def val_unit(seed, test_grid, val_grid, epi_epoch, reason="epi", structures=None):
    """A unit of this protocol: branches carry validation and test accuracy separately."""
    u = unit(seed, "magnitude", test_grid, epi_epoch, reason)
    for e, v in val_grid.items():
        u["branches"]["0.5"][str(e)]["val_top1"] = v
    if structures is not None:
        u["structures"] = {"0.5": structures}
        u["config"].update(window=2, patience=0)
    return u


def test_oracle_epoch_is_chosen_on_validation_and_reported_on_test():
    # Test says epoch 4 is best, validation says epoch 2: the oracle is epoch 2's test accuracy.
    us = [val_unit(0, {0: 0.70, 2: 0.80, 4: 0.90}, {0: 0.70, 2: 0.85, 4: 0.80}, 2),
          val_unit(1, {0: 0.60, 2: 0.82, 4: 0.84}, {0: 0.60, 2: 0.70, 4: 0.75}, 4)]
    row = aggregate(us, "toy")["criteria"]["magnitude"]["rows"]["0.5"]
    assert row["oracle_epochs"] == [2, 4] and row["selected_on"] == ["val_top1"]
    assert row["oracle"]["values"] == pytest.approx([80.0, 84.0])
    assert row["oracle_test_max"]["values"] == pytest.approx([90.0, 84.0])  # the optimistic, leaky one
    assert "chosen on validation" in table_markdown(aggregate(us, "toy"))


def test_paired_comparisons_forced_runs_and_pooling():
    us = [val_unit(s, {0: 0.70 + s / 100, 2: 0.80, 4: 0.82}, {0: 0.7, 2: 0.8, 4: 0.8}, e, why)
          for s, (e, why) in enumerate([(4, "epi"), (2, "deadline"), (4, "epi"), (0, "epi")])]
    c = aggregate(us, "toy")["criteria"]["magnitude"]
    k = c["rows"]["0.5"]["compare"]
    # EPI - pre-def (pre-def = epoch 2 at 80%): +2, 0 (forced), +2, and seed 3 pruned at 0: 73 - 80.
    assert k["epi_minus_predef"]["values"] == pytest.approx([2.0, 0.0, 2.0, -7.0])
    assert k["forced"] == 1
    assert k["epi_minus_predef_fired_only"]["values"] == pytest.approx([2.0, 2.0, -7.0])
    assert k["epi_minus_init"]["values"] == pytest.approx([12.0, 9.0, 10.0, 0.0])
    # One ratio: pooling over ratios is the per-seed mean, i.e. the same pairs.
    assert c["pooled"]["epi_minus_predef"]["values"] == pytest.approx(k["epi_minus_predef"]["values"])
    assert c["pooled"]["epi_minus_predef"]["verdict"] == "inconclusive"
    md = table_markdown(aggregate(us, "toy"))
    assert "| 50% | -0.75 [" in md and "1 of 4" in md


def test_post_hoc_window_recomputes_the_prune_epoch():
    # Structures: epoch 0 and 1 differ, then stay fixed: a window-2 EPI with tau 0.983 fires
    # as soon as two consecutive structures agree; a window-5 one only once five do.
    structs = [[4, 4], [2, 3]] + [[2, 2]] * 5
    us = [val_unit(0, {e: 0.70 + e / 100 for e in range(7)}, {e: 0.7 for e in range(7)}, 4, structures=structs)]
    us[0]["config"]["candidates"] = list(range(7))
    us[0]["deadline"] = 6
    post = aggregate(us, "toy")["criteria"]["magnitude"]["post_hoc"]["0.5"]
    from epi_fast.indicator import EarlyPruningIndicator
    from epi_fast.policy.decision import prune_epoch_for

    for name, v in post.items():
        ind = EarlyPruningIndicator(window=v["window"], tau=0.983, patience=v["patience"])
        for s in structs:
            ind.update(s)
        want = prune_epoch_for(ind.fired_epoch, 6)
        assert (v["epi_epochs"][0], v["reasons"][0]) == want, name
        assert v["epi_minus_predef"]["values"] == pytest.approx([100 * (0.70 + want[0] / 100 - 0.72)])
    assert [post[f"window={w},patience=0"]["epi_epochs"][0] for w in (2, 3, 5)] == [4, 5, 6]
    assert post["window=5,patience=0"]["reasons"] == ["deadline"]
