"""The paper-protocol reproduction runs end to end on a tiny grid and writes its tables."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_smoke(tmp_path):
    out = tmp_path / "protocol"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.protocol", "--smoke", "--workers", "1", "--no-yield", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary, "empty summary"
    tables = (out / "tables.md").read_text()
    for policy in ("oracle", "init", "pre-def", "EPI"):
        assert policy in tables
    units = list((out / "units").glob("*.json"))
    assert len(units) == 2, "one unit per criterion"
    for path in units:
        unit = json.loads(path.read_text())
        assert unit["t0"] and unit["epi_fast_version"] and unit["config"]["t0"]
        assert len(unit["epi"]["0.5"]) == summary["config"]["epochs"] + 1
    # A rerun finds every unit done.
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.protocol", "--smoke", "--workers", "1", "--no-yield", "--out", str(out),
         "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and "2 units, 0 to run" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    # Re-aggregating (here with the timing pass) keeps the command that ran the units.
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.protocol", "--smoke", "--out", str(out), "--aggregate-only", "--timing"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_command"].startswith("--smoke --workers 1 --no-yield"), summary["run_command"]
    tables = (out / "tables.md").read_text()
    assert "Aggregated by: `python -m experiments.protocol --smoke" in tables
    assert "wall-clock from the timing pass" in tables
    timing = json.loads(next(out.glob("timing_*.json")).read_text())
    assert all(r["dense_epoch_seconds"] > 0 for r in timing["criteria"].values())
