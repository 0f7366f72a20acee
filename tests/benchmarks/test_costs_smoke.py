"""Smoke test of the cost benchmarks (python -m benchmarks.costs), no timing assertions: on the
in-repo tiny models with a couple of repetitions, every part runs, the targets come out as
PASS/FAIL, and the JSON, markdown and plot files are written atomically."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from benchmarks import report as base  # noqa: E402
from benchmarks.costs import __main__ as cli  # noqa: E402
from benchmarks.costs import common, training  # noqa: E402


def test_costs_smoke(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert cli.main(["--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # restored
    stem = base.stem(torch.device("cpu"), "costs_smoke")
    assert {p.name for p in tmp_path.iterdir()} == {f"{stem}.json", f"{stem}.md", f"{stem}.png"}
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    parts = data["parts"]
    assert set(parts) == {"latency", "training", "prune"}
    for part in parts.values():
        assert "error" not in part, part.get("error")
        assert part["wall_s"] > 0 and "load" in part and "load_at_end" in part

    lat = parts["latency"]["result"]["models"]["resnet_small"]
    assert set(lat["batches"]) == {"1", "4"}
    for per in lat["batches"].values():
        assert per["dense"]["median_s"] > 0
        for key, stats in per.items():
            if key != "dense":
                assert stats["speedup"] > 0 and stats["efficiency"] > 0
    reached = [v for v in lat["variants"].values() if "error" not in v]
    assert reached and all(abs(v["achieved"] - 0.5) <= 0.01 for v in reached)

    tr = parts["training"]["result"]
    assert set(tr["runs"]) == {"magnitude", "gradient"}
    for r in tr["runs"].values():
        assert r["prune_epoch"] is not None and r["prune_reason"] in ("epi", "deadline")
        assert 0 < r["step_flops_ratio"] < 1 and 0 < r["predicted_wall_ratio"] < 1
        assert r["wall_ratio_in_round"] > 0 and r["measured_over_predicted_in_round"] > 0
        assert r["epi_s"]["construct"] > 0 and r["epi_s"]["prune"] > 0
        assert 0 < r["epi_share"] < 1
        assert len(r["epoch_s"]) == tr["config"]["epochs"]

    pr = parts["prune"]["result"]["models"]["resnet_small"]
    assert pr["epi_fast"]["reps"] == 2 and pr["torch_pruning"]["reps"] == 2 and pr["ratio_paired"] > 0

    names = {t["target"] for t in data["targets"]}
    assert any(n.startswith("B: measured wall-clock ratio") for n in names)
    assert any(n.startswith("B: EPI's own work") for n in names)
    assert any(n.startswith("C: epi_fast.prune") for n in names)
    assert {t["status"] for t in data["targets"]} <= {"PASS", "FAIL"}
    md = (tmp_path / f"{stem}.md").read_text()
    for heading in ("## Targets", "## A.", "## B.", "## C."):
        assert heading in md
    printed = capsys.readouterr().out
    assert "[PASS]" in printed or "[FAIL]" in printed


def test_only_keeps_the_other_parts(tmp_path):
    stem = base.stem(torch.device("cpu"), "costs_smoke")
    earlier = {"machine": "m", "mode": "smoke", "environment": {}, "parts": {
        "latency": {"result": {"threads": 1, "input_size": 32, "models": {}}, "wall_s": 1.0},
        "training": {"error": "an earlier failure", "wall_s": 1.0}}}
    (tmp_path / f"{stem}.json").write_text(json.dumps(earlier))
    assert cli.main(["--smoke", "--only", "prune", "--out", str(tmp_path), "--threads", "1"]) == 0
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert set(data["parts"]) == {"latency", "training", "prune"}
    assert data["parts"]["training"] == earlier["parts"]["training"]
    assert data["kept_from_earlier_run"] == ["latency", "training"]


def test_only_rejects_unknown_parts(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--only", "latency,speed"])
    assert exc.value.code == 2
    assert "speed" in capsys.readouterr().err


def test_interleaved_rounds_rotate_and_prepare_is_untimed():
    order, prepared = [], []

    def make(k):
        return (lambda: prepared.append(k) or k, lambda arg: order.append(arg))

    stats = common.interleaved({k: make(k) for k in "abc"}, rounds=3, warmup=0)
    assert order == list("abc" "bca" "cab")
    assert prepared == order  # each timed call gets its own freshly prepared argument
    assert all(s["reps"] == 3 and len(s["samples_s"]) == 3 for s in stats.values())
    assert common.paired_ratio({"samples_s": [2.0, 20.0, 3.0]}, {"samples_s": [1.0, 10.0, 1.0]}) == 2.0


def test_wait_for_quiet_gives_up_after_max_wait():
    seen = common.wait_for_quiet(-1.0, max_wait_s=0.0, log=lambda _: None)  # a load never below -1
    assert seen["quiet"] is False and seen["waited_s"] >= 0
    assert common.wait_for_quiet(None, max_wait_s=0.0, log=lambda _: None)["quiet"] is True


def test_training_targets_flag_a_run_that_did_not_fire():
    run = {"prune_reason": "deadline", "prune_epoch": 2, "epochs": 3, "measured_over_predicted": 1.0,
           "wall_ratio": 0.8, "predicted_wall_ratio": 0.8, "step_flops_ratio": 0.5, "epi_share": 0.001,
           "epi_work_s": 0.1, "total_s": 100.0, "epi_s": {"construct": 0.1}, "speedup": 1.25}
    rows = {r["target"]: r for r in training.targets({"runs": {"magnitude": run}})}
    assert rows["B: EPI fired by itself (magnitude)"]["status"] == "FAIL"
    assert rows["B: measured wall-clock ratio <= 1.15x the FLOPs-predicted one (magnitude)"]["status"] == "PASS"


def test_in_round_wall_ratio_is_not_moved_by_a_burst():
    dense = [2.0] * 10
    run = [2.0] * 4 + [1.0] * 6
    ratio, pre, post = training.in_round_wall_ratio(dense, run, 4)
    assert (pre, post) == (1.0, 0.5) and ratio == pytest.approx(0.7)
    # A burst of load that doubles two rounds (both runs alike) leaves the in-round ratio alone.
    burst_dense = dense[:6] + [4.0, 4.0] + dense[8:]
    burst_run = run[:6] + [2.0, 2.0] + run[8:]
    assert training.in_round_wall_ratio(burst_dense, burst_run, 4)[0] == pytest.approx(0.7)
    # Work outside the epochs counts over T median dense epochs; without a prune it is all "before".
    assert training.in_round_wall_ratio(dense, dense, None, extra_s=2.0) == (pytest.approx(1.1), 1.0, None)
