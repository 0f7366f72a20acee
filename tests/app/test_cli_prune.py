"""`epi-fast prune`: writes a loadable pruned model, prints a JSON summary, fails in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from epi_fast.app import prune_cmd as cli_prune
from epi_fast.models import build_model
from epi_fast.surgery import load_pruned


def run(argv, capsys):
    code = cli_prune.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_prunes_saves_and_prints_a_summary(tmp_path, capsys):
    out_file = tmp_path / "pruned.pt"
    code, out, err = run(["--model", "resnet_small", "--ratio", "0.5", "--in-channels", "1", "--out", str(out_file)], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == "resnet_small" and summary["ratio"] == 0.5 and summary["criterion"] == "l2"
    for key in ("params", "flops", "macs"):
        assert summary[f"{key}_after"] < summary[f"{key}_before"]
    model = load_pruned(out_file).eval()
    assert sum(p.numel() for p in model.parameters()) == summary["params_after"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_checkpoint_weights_are_the_ones_pruned(tmp_path, capsys):
    torch.manual_seed(0)
    dense = build_model("densenet_small", num_classes=4)
    ckpt = tmp_path / "dense.pt"
    torch.save({"state_dict": dense.state_dict()}, ckpt)
    out_file = tmp_path / "pruned.pt"
    argv = ["--model", "densenet_small", "--num-classes", "4", "--ratio", "0.0", "--checkpoint", str(ckpt), "--out", str(out_file)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    loaded = load_pruned(out_file)
    for k, v in dense.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # A pruned model.pt is itself a valid checkpoint: prune it further.
    again = tmp_path / "again.pt"
    code, out, err = run(argv[:-4] + ["--ratio", "0.5", "--checkpoint", str(out_file), "--out", str(again)], capsys)
    assert code == 0, err
    assert json.loads(out)["params_after"] < json.loads(out)["params_before"]


def test_torchvision_model_with_small_input(tmp_path, capsys):
    argv = ["--model", "mobilenet_v3_small", "--ratio", "0.3", "--criterion", "magnitude", "--input-size", "32", "32", "--out", str(tmp_path / "m.pt")]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads(out)["input_size"] == [32, 32]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "resnet_small", "--ratio", "1.0", "--out", "x.pt"], "[0, 1)"),
        (["--model", "resnet_small", "--ratio", "half", "--out", "x.pt"], "ratio"),
        (["--model", "resnet_small", "--out", "x.pt"], "--ratio"),
        (["--model", "resnet_small", "--ratio", "0.5", "--criterion", "taylor", "--out", "x.pt"], "criterion"),
        (["--model", "no_such_net", "--ratio", "0.5", "--out", "x.pt"], "unknown model"),
        (["--model", "resnet_small", "--ratio", "0.5", "--out", "/no/such/dir/x.pt"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert out == ""


def test_failures_exit_1_with_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(2)}, bad)
    argv = ["--model", "resnet_small", "--ratio", "0.5", "--checkpoint", str(bad), "--out", str(tmp_path / "o.pt")]
    code, out, err = run(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "does not fit resnet_small" in err
    code, out, err = run(argv + ["--debug"], capsys)
    assert code == 1 and "Traceback" in err
    code, _, err = run(["--model", "resnet_small", "--ratio", "0.5", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o.pt")], capsys)
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "o.pt").exists()


def test_impossible_ratio_is_a_failure(tmp_path, capsys):
    argv = ["--model", "resnet_small", "--ratio", "0.99", "--min-keep", "16", "--out", str(tmp_path / "o.pt")]
    code, _, err = run(argv, capsys)
    assert code == 1 and "min_keep" in err


def test_runs_as_a_module(tmp_path):
    out_file = tmp_path / "m.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "epi_fast.app.prune_cmd", "--model", "mobilenet_small", "--ratio", "0.25", "--out", str(out_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "mobilenet_small" and out_file.exists()
    proc = subprocess.run([sys.executable, "-m", "epi_fast.app.prune_cmd", "--ratio", "0.5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_registered_on_the_epi_fast_command(tmp_path, capsys):
    from epi_fast.app import cli

    code = cli.main(["prune", "--model", "resnet_small", "--ratio", "0.5", "--out", str(tmp_path / "m.pt")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["params_after"] > 0
    assert cli.main(["prune", "--model", "resnet_small", "--ratio", "2", "--out", str(tmp_path / "n.pt")]) == 2
