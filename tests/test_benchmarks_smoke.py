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
