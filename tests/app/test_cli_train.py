"""`epi-fast train` end to end on tiny settings: files, keys, refusal, exit codes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from epi_fast.app.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs", "4", "--window", "2", "--patience", "1", "--no-progress", "--batch-size", "128"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train(out, *extra):
    return main(["train", "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert _train(out, "--track-ratios", "0.3,0.7", "--deadline-epoch", "3", "--seed", "1") == 0
    return out


def test_outputs_and_summary_keys(run):
    assert sorted(os.listdir(run)) == ["epi_curve.png", "metrics.jsonl", "model.pt", "summary.json"]
    s = json.loads((run / "summary.json").read_text())
    for key in ("ratio", "criterion", "window", "tau", "patience", "prune_epoch", "prune_reason", "epi",
                "epi_tracked", "params_before", "params_after", "flops_before", "flops_after", "top1_final",
                "train_seconds", "skipped_steps"):
        assert key in s, key
    assert (s["ratio"], s["criterion"], s["window"], s["tau"], s["patience"]) == (0.5, "magnitude", 2, 0.983, 1)
    assert s["prune_reason"] in ("epi", "deadline") and 2 <= s["prune_epoch"] <= 3
    assert len(s["epi"]) == 5  # epochs 0..4
    assert s["epi"][:2] == [None, None] and s["epi"][2] is not None
    assert s["epi"][s["prune_epoch"] + 1:] == [None] * (4 - s["prune_epoch"])  # tracking stops
    assert set(s["epi_tracked"]) == {"0.5", "0.3", "0.7"} and s["epi_tracked"]["0.5"] == s["epi"]
    assert s["params_before"] > s["params_after"] > 0 and s["flops_before"] > s["flops_after"] > 0
    assert 0.0 <= s["top1_final"] <= 1.0 and s["train_seconds"] > 0 and s["skipped_steps"] == 0


def test_metrics_plot_and_model(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert {"loss", "train_top1", "test_top1", "epi", "params", "lr"} <= set(r)
        assert set(r["epi"]) == {"0.5", "0.3", "0.7"}
    s = json.loads((run / "summary.json").read_text())
    assert records[-1]["params"] == s["params_after"] and records[-1]["test_top1"] == s["top1_final"]
    assert (run / "epi_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from epi_fast.surgery import load_pruned

    torch.load(run / "model.pt", weights_only=True)  # no pickled code
    loaded = load_pruned(str(run / "model.pt"))
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_same_seed_same_run(run, tmp_path):
    assert _train(tmp_path / "again", "--track-ratios", "0.3,0.7", "--deadline-epoch", "3", "--seed", "1") == 0
    a = json.loads((run / "summary.json").read_text())
    b = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert a["epi_tracked"] == b["epi_tracked"] and a["top1_final"] == b["top1_final"]
    la = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_existing_out_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _train(out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite" in err
    assert os.listdir(out) == ["keep.txt"]
    assert _train(out, "--overwrite", "--epochs", "1", "--window", "1") == 0
    assert "keep.txt" not in os.listdir(out) and "summary.json" in os.listdir(out)
    # Nothing staged is left beside it.
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ratio", "1.5"], "--ratio"),
        (["--data", "/nonexistent/dir"], "--data"),
        (["--model", "no_such_net"], "no_such_net"),
        (["--deadline-epoch", "9"], "--deadline-epoch"),
        (["--criterion", "random"], "--criterion"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "two"], "expected a positive integer, got 'two'"),
        (["--tau", "1.2"], "--tau"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, needle):
    assert _train(tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_broken_data_is_a_failure_exit_1(tmp_path, capsys):
    bad = tmp_path / "cifar"
    bad.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (bad / name).write_bytes(b"not a pickle")
    assert _train(tmp_path / "out", "--data", str(bad)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data_batch_1" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["cifar"]  # the staging directory is gone
    assert _train(tmp_path / "out", "--data", str(bad), "--debug") == 1
    assert "Traceback" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-m", "epi_fast", "train", "--ratio", "2", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "--ratio" in p.stderr
    h = subprocess.run([sys.executable, "-m", "epi_fast", "train", "--help"], capture_output=True, text=True, env=env)
    assert h.returncode == 0 and "--track-ratios" in h.stdout
