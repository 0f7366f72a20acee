"""`epi-fast prune`: writes a loadable pruned model, prints a JSON summary, fails in one line."""

from __future__ import annotations

import json
import os
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


# -- weights: random (announced, seeded) or from a checkpoint that names its architecture ----------

BASE = ["--model", "resnet_small", "--ratio", "0.5", "--in-channels", "1"]


def test_random_weights_are_announced_and_seeded(tmp_path, capsys):
    code, out, err = run(BASE + ["--out", str(tmp_path / "a.pt")], capsys)
    assert code == 0
    assert err.count("\n") == 1 and "randomly initialised weights (seed 0)" in err
    assert json.loads(out)["weights"] == "random (seed 0)"
    assert run(BASE + ["--out", str(tmp_path / "b.pt")], capsys)[0] == 0
    code, out, _ = run(BASE + ["--seed", "7", "--out", str(tmp_path / "c.pt")], capsys)
    assert code == 0 and json.loads(out)["weights"] == "random (seed 7)"
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same result
    assert any(a[k].shape != c[k].shape or not torch.equal(a[k], c[k]) for k in a)


def test_a_checkpoint_that_names_its_architecture_needs_no_model(tmp_path, capsys):
    from epi_fast.surgery import save_pruned

    torch.manual_seed(0)
    trained = build_model("resnet_small", num_classes=10, in_channels=1)  # as epi-fast train saves it
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_pruned(trained, run_dir / "model.pt", arch={"name": "resnet_small", "kwargs": {"num_classes": 10, "in_channels": 1}})
    for checkpoint in (run_dir / "model.pt", run_dir):  # the file, or the run directory holding it
        out_file = tmp_path / "p.pt"
        code, out, err = run(["--ratio", "0.5", "--checkpoint", str(checkpoint), "--out", str(out_file), "--overwrite"], capsys)
        assert code == 0, err
        assert err == ""  # trained weights: nothing to announce
        summary = json.loads(out)
        assert summary["model"] == "resnet_small" and summary["weights"] == f"checkpoint {checkpoint}"
        model = load_pruned(out_file).eval()
        assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)  # one input channel, from the file


@pytest.mark.parametrize("extra, words", [
    (["--model", "densenet_small"], "--model densenet_small conflicts with the checkpoint, which holds a resnet_small"),
    (["--in-channels", "3"], "--in-channels 3 conflicts with the checkpoint's in_channels = 1"),
    (["--num-classes", "4"], "--num-classes 4 conflicts with the checkpoint's num_classes = 10"),
])
def test_options_that_contradict_the_checkpoint_are_usage_errors(tmp_path, capsys, extra, words):
    from epi_fast.surgery import save_pruned

    ckpt = save_pruned(build_model("resnet_small", in_channels=1), tmp_path / "m.pt",
                       arch={"name": "resnet_small", "kwargs": {"num_classes": 10, "in_channels": 1}})
    code, out, err = run(["--ratio", "0.5", "--checkpoint", ckpt, "--out", str(tmp_path / "o.pt"), *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and words in err and out == ""
    assert (extra == ["--model", "resnet_small"]) or not (tmp_path / "o.pt").exists()
    # Agreeing options are fine.
    code, _, err = run(["--ratio", "0.5", "--model", "resnet_small", "--in-channels", "1", "--checkpoint", ckpt,
                        "--out", str(tmp_path / "o.pt")], capsys)
    assert code == 0, err


def test_model_is_needed_when_nothing_names_the_architecture(tmp_path, capsys):
    code, _, err = run(["--ratio", "0.5", "--out", str(tmp_path / "o.pt")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--model is required" in err
    sd = tmp_path / "sd.pt"
    torch.save(build_model("resnet_small").state_dict(), sd)
    code, _, err = run(["--ratio", "0.5", "--checkpoint", str(sd), "--out", str(tmp_path / "o.pt")], capsys)
    assert code == 2 and "--model is required (the checkpoint records no architecture)" in err


def test_default_reduce_is_the_criterions(tmp_path, capsys):
    # Changed from "sum": None means the criterion's default, "mean" for the magnitude criteria.
    code, out, _ = run(BASE + ["--out", str(tmp_path / "d.pt")], capsys)
    assert code == 0 and json.loads(out)["reduce"] == "mean"
    code, out, _ = run(BASE + ["--reduce", "mean", "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 0 and json.loads(out)["reduce"] == "mean"
    d = torch.load(tmp_path / "d.pt", weights_only=True)["state_dict"]
    m = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(d[k], m[k]) for k in d)


# -- --out: never replaced unless --overwrite, and then only a model saved by epi_fast -------------

def test_existing_out_is_refused_unless_overwrite_and_only_a_saved_model_is_replaced(tmp_path, capsys):
    target = tmp_path / "m.pt"
    assert run(BASE + ["--out", str(target)], capsys)[0] == 0
    first = target.read_bytes()
    code, out, err = run(BASE + ["--seed", "1", "--out", str(target)], capsys)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--overwrite" in err and out == ""
    assert target.read_bytes() == first
    code, out, err = run(BASE + ["--seed", "1", "--out", str(target), "--overwrite"], capsys)
    assert code == 0, err
    assert target.read_bytes() != first and load_pruned(target) is not None

    others = {
        "notes.txt": lambda p: p.write_text("my notes"),
        "weights.pt": lambda p: torch.save(build_model("resnet_small").state_dict(), p),  # not the tool's format
        "empty.pt": lambda p: p.write_bytes(b""),
    }
    for name, make in others.items():
        path = tmp_path / name
        make(path)
        before = path.read_bytes()
        code, out, err = run(BASE + ["--out", str(path), "--overwrite"], capsys)
        assert code == 2 and err.count("\n") == 1 and "not a model saved by epi_fast" in err and "left untouched" in err, name
        assert path.read_bytes() == before
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    code, _, err = run(BASE + ["--out", str(link), "--overwrite"], capsys)
    assert code == 2 and "symbolic link" in err and link.is_symlink()


def test_out_in_a_read_only_folder_is_a_usage_error(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root: answer as for a user
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if os.path.abspath(p) == str(ro) else real(p, m, *a, **k))
        code, out, err = run(BASE + ["--out", str(ro / "m.pt")], capsys)
        assert code == 2 and err.count("\n") == 1 and "not writable" in err and out == ""
    finally:
        ro.chmod(0o755)
    assert os.listdir(ro) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_out_follows_the_umask(tmp_path, capsys, monkeypatch, umask):
    import stat

    from epi_fast import _io

    old = os.umask(umask)
    try:
        monkeypatch.setattr(_io, "_UMASK", None)  # read once per process: forget the test runner's
        assert run(BASE + ["--out", str(tmp_path / "m.pt")], capsys)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.pt").st_mode) == 0o666 & ~umask


# -- bad checkpoints: one line that says what is wrong with the file ---------------------------------

def _bad_checkpoint(kind, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        from epi_fast.surgery import save_pruned

        good = save_pruned(build_model("resnet_small"), tmp_path / "good.pt", arch="resnet_small")
        data = open(good, "rb").read()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "random":
        path.write_bytes(bytes(range(7, 256)) * 8)
    elif kind == "text":
        path.write_text("hello world\n")
    elif kind == "object":
        torch.save(torch.nn.Linear(2, 2), path)  # a whole module: weights_only refuses it
    elif kind == "other_model":
        torch.save(build_model("densenet_small").state_dict(), path)
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind, words", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "is truncated or not a torch file"),
    ("random", "is truncated or not a torch file"),
    ("text", "is a text file, not a torch file (it begins 'hello world')"),
    ("object", "is a pickle that is not a plain dict of tensors: it needs torch.nn.modules.linear.Linear"),
    ("other_model", "does not fit resnet_small:"),
    ("directory", "is a directory (and holds no model.pt)"),
])
def test_bad_checkpoints_are_failures_that_name_the_problem(tmp_path, capsys, kind, words):
    path = _bad_checkpoint(kind, tmp_path)
    code, out, err = run(BASE[:2] + ["--ratio", "0.5", "--checkpoint", str(path), "--out", str(tmp_path / "o.pt")], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"checkpoint {path}" in err and words in err and "Traceback" not in err, err
    assert not (tmp_path / "o.pt").exists()


def test_sigterm_while_pruning_exits_143_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import signal

    import epi_fast.surgery as surgery

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(surgery, "prune", terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, out, err = run(BASE + ["--out", str(tmp_path / "m.pt")], capsys)
    assert code == 143 and out == ""
    assert err.splitlines()[-1] == f"epi-fast prune: interrupted (SIGTERM): {tmp_path / 'm.pt'} was not written"
    assert signal.getsignal(signal.SIGTERM) is before
    assert os.listdir(tmp_path) == []


def test_target_limits_and_rounding_reach_the_summary(tmp_path, capsys):
    argv = ["--model", "mobilenet_small", "--ratio", "0.4", "--target", "params", "--max-layer-ratio", "0.8",
            "--round-to", "2", "--out", str(tmp_path / "t.pt")]
    code, out, _ = run(argv, capsys)
    s = json.loads(out)
    assert code == 0 and (s["target"], s["requested"], s["round_to"], s["max_layer_ratio"]) == ("params", 0.4, 2, 0.8)
    assert abs(s["achieved"] - 0.4) <= 0.01
    assert s["achieved"] == pytest.approx(1 - s["params_after"] / s["params_before"], abs=1e-12)


@pytest.mark.parametrize("extra, code_, message", [
    (["--target", "bytes"], 2, "invalid choice: 'bytes'"),
    (["--round-to", "0"], 2, "--round-to"),
    (["--max-layer-ratio", "0"], 2, "max_layer_ratio must be in (0, 1]"),
    (["--max-layer-ratio", "nope=0.2"], 1, "max_layer_ratio names 'nope'"),
    (["--ratio", "0.95", "--max-layer-ratio", "0.5"], 1, "nearest reachable ratios are"),
])
def test_bad_target_arguments_are_refused_in_one_line(tmp_path, capsys, extra, code_, message):
    argv = ["--model", "resnet_small", "--ratio", "0.5", "--out", str(tmp_path / "x.pt"), *extra]
    code, _, err = run(argv, capsys)
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == code_ and len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "x.pt").exists()
