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


def test_file_stem_is_sanitised():
    assert report.sanitise("Intel(R) Xeon(R) Platinum 8480+ @ 2.0GHz") == "intel-xeon-platinum-8480-2-0ghz"
    assert report.sanitise("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
