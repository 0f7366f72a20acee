"""Smoke test of the benchmark harness (no timing assertions): on a tiny CNN and a tiny MLP
stack with one repetition, every implementation agrees with the fused one and the JSON,
markdown and plot files are written."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")

from benchmarks import report, run  # noqa: E402


def test_harness_smoke(tmp_path):
    prev_threads = torch.get_num_threads()
    try:
        cfg = run.config_for("smoke", torch.device("cpu"), threads=1)
        results = run.run(cfg)
    finally:
        torch.set_num_threads(prev_threads)
    results["machine"] = report.machine_name(torch.device("cpu"))
    results["targets"] = report.evaluate_targets(results)
    written = report.write_all(results, tmp_path, report.stem(torch.device("cpu"), "smoke"))

    names = {p.suffix for p in written}
    assert names == {".json", ".md", ".png"}
    for p in written:
        assert p.stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    data = json.loads((tmp_path / f"{report.stem(torch.device('cpu'), 'smoke')}.json").read_text())
    assert {w["family"] for w in data["workloads"]} == {"tiny", "mlp"}

    cases = {(c["workload"], c["case"]) for c in results["cases"]}
    for case in ("score_l2", "score_bn_abs", "taylor_step", "global_masks_1", "global_masks_9",
                 "structure_stats", "epoch_end_pipeline", "epoch_end_tensors", "group_reduce"):
        assert ("tiny_cnn", case) in cases, case
    for c in results["cases"]:
        for impl, stats in c["impls"].items():
            assert "error" not in stats, (c["workload"], c["case"], impl, stats)
            if not impl.startswith("torch_pruning"):
                assert stats["agree"] is True, (c["workload"], c["case"], impl)
            assert stats["median_s"] > 0
    assert any(c["case"] == "score_l2" and "torch_pruning" in c["impls"] for c in results["cases"])
    assert results["memory"] and all(m["analytical_bytes"] > 0 for m in results["memory"])
    assert {t["status"] for t in results["targets"]} <= {"PASS", "FAIL", "n/a"}
    # The target cases are timed a second time from cold caches, and reported as such.
    cold = [c for c in results["cases"] if "cold" in c]
    assert {c["case"] for c in cold} == set(run.COLD_CASES)
    assert all(c["cold"]["impls"]["fused"]["median_s"] > 0 and c["cold"]["floor"]["median_s"] > 0 for c in cold)
    assert any("[cold caches]" in t["target"] for t in results["targets"])
    md = (tmp_path / f"{report.stem(torch.device('cpu'), 'smoke')}.md").read_text()
    assert "## Cold caches" in md


def test_timing_cache_states():
    from benchmarks import timing

    calls = []
    stats = timing.measure(lambda: calls.append(1), torch.device("cpu"),
                           timing.Budget(warmup=0, min_reps=3, max_reps=3, seconds=0.0, cache="warm"))
    assert stats["reps"] == 3 and len(calls) == 6  # each timed call follows an untimed one
    calls.clear()
    timing.measure(lambda: calls.append(1), torch.device("cpu"),
                   timing.Budget(warmup=0, min_reps=2, max_reps=2, seconds=0.0, cache="cold"))
    assert len(calls) == 2
    assert timing.flush_bytes(torch.device("cpu")) >= 32 << 20
    llc = timing.last_level_cache_bytes(torch.device("cpu"))
    assert llc is None or llc > 0
    with pytest.raises(ValueError, match="cache"):
        timing.measure(lambda: None, torch.device("cpu"), timing.Budget(min_reps=1, max_reps=1, cache="hot"))


def test_file_stem_is_sanitised():
    assert report.sanitise("Intel(R) Xeon(R) Platinum 8480+ @ 2.0GHz") == "intel-xeon-platinum-8480-2-0ghz"
    assert report.sanitise("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_interleaved_rounds_rotate_and_paired_ratios_use_the_same_round():
    from benchmarks import timing

    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abc"}
    stats = timing.measure_interleaved(fns, torch.device("cpu"),
                                       timing.Budget(warmup=0, min_reps=3, max_reps=3, seconds=0.0, cache="cold"))
    assert order == list("abc" "bca" "cab")  # each round starts one implementation further along
    assert all(len(s["samples_s"]) == 3 for s in stats.values())
    # Round-by-round quotients: a slow round (x10 for both) cancels; the ratio of medians would not.
    num = {"samples_s": [1.0, 10.0, 1.2]}
    den = {"samples_s": [1.0, 10.0, 1.0]}
    assert timing.paired_ratio(num, den) == 1.0
    assert timing.paired_ratio({"samples_s": [1.0]}, {"samples_s": [1.0, 2.0]}) is None
    assert timing.paired_ratio({}, den) is None


def test_targets_map_to_the_issues_pipelines():
    def case(name, model, fused, loop, ref=None):
        impls = {"fused": {"median_s": fused}, "loop": {"median_s": loop}}
        if ref:
            impls["reference"] = {"median_s": ref}
        return {"case": name, "workload": model, "impls": impls, "floor": {"median_s": fused / 1.1}}

    results = {"environment": {"device": "cpu"}, "cases": [
        case("score_l2", "resnet50", 1.0, 1.3),
        case("epoch_end_tensors", "mobilenet_v2", 1.0, 4.5),
        case("epoch_end_pipeline", "mobilenet_v2", 1.0, 3.5, 6.0),
    ]}
    t = {r["target"]: r for r in report.evaluate_targets(results)}
    assert t["CPU: fused L2 scoring within 1.15x of the read floor on resnet50"]["status"] == "PASS"
    assert t["CPU: epoch-end pipeline (scores, masks, counts; 9 ratios) >= 4x plain PyTorch on mobilenet_v2"]["status"] == "PASS"
    # With the EPI update the faster plain-PyTorch pipeline (the loop, 3.5x) decides.
    row = t["CPU: epoch-end pipeline (scores, masks, counts, EPI update; 9 ratios) >= 4x plain PyTorch on mobilenet_v2"]
    assert row["status"] == "FAIL" and "vs loop" in row["value"]
    assert t["CPU: epoch-end pipeline (scores, masks, counts; 9 ratios) >= 2x plain PyTorch on resnet50"]["status"] == "n/a"


def test_time_budget_leaves_out_what_it_must_and_says_so(tmp_path):
    import time

    from benchmarks.__main__ import parse_args

    args = parse_args(["--quick", "--mlp-params", "none", "--budget-s", "30", "--models", "resnet50"])
    assert args.mlp_params == "none" and args.budget_s == 30.0
    prev_threads = torch.get_num_threads()
    try:
        cfg = run.config_for("smoke", torch.device("cpu"), threads=1)
        cfg.deadline = time.monotonic() - 1.0  # already spent: nothing starts
        results = run.run(cfg)
    finally:
        torch.set_num_threads(prev_threads)
    assert results["skipped_for_time"] == ["workload 1 and later"]
    assert results["cases"] == []
    results["machine"] = report.machine_name(torch.device("cpu"))
    results["targets"] = report.evaluate_targets(results)
    written = report.write_all(results, tmp_path, "budget")
    md = (tmp_path / "budget.md").read_text()
    assert "left out to keep within the time budget" in md and "workload 1 and later" in md
    assert {p.suffix for p in written} >= {".json", ".md"}
