"""The App. E experiment runs end to end on a tiny grid, writes its table, plot and unit, and
a rerun finds the unit done."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.appe", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_appe_smoke(tmp_path):
    out = tmp_path / "appe"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    unit = json.loads((out / "units" / "seed0.json").read_text())
    cfg = unit["config"]
    assert cfg["ratios"] == [0.09, 0.4] and cfg["criterion"] == "magnitude" and cfg["window"] >= 2
    for rk in ("0.09", "0.4"):
        e, why = unit["epi_epoch"][rk]
        assert why in ("epi", "deadline") and e <= cfg["deadline"]
        assert set(unit["branches"][rk]) == {str(k) for k in set(cfg["candidates"]) | {e}}
        for br in unit["branches"][rk].values():
            assert 0.0 <= br["val"]["map50"] <= 1.0 and 0.0 <= br["test"]["map50"] <= 1.0
            assert br["params_after"] < unit["dense"]["params"]
        assert len(unit["epi"][rk]) == cfg["epochs"] + 1
    # The larger ratio removes more.
    assert unit["branches"]["0.4"]["1"]["params_after"] < unit["branches"]["0.09"]["1"]["params_after"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"0.09", "0.4"}
    assert "EPI - grid" in (out / "tables.md").read_text() and (out / "map_vs_prune_epoch.png").stat().st_size > 0
    again = run("--smoke", "--out", str(out), "--dry-run")
    assert again.returncode == 0 and "1 units, 0 to run" in again.stdout, again.stdout + again.stderr[-1000:]
