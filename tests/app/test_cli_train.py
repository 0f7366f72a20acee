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
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "epi_curve.png", "metrics.jsonl", "model.pt", "summary.json"]
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
    # Changed with the run marker: --overwrite replaces only a run directory this tool wrote, so
    # a folder of the user's is refused and left as it was (0.1 deleted it).
    assert _train(out, "--overwrite", "--epochs", "1", "--window", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run directory of epi-fast train" in err and "left untouched" in err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    # An earlier run of the tool is replaced.
    earlier = tmp_path / "earlier"
    assert _train(earlier, "--epochs", "1", "--window", "1") == 0
    assert _train(earlier, "--epochs", "1", "--window", "1") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert _train(earlier, "--overwrite", "--epochs", "2", "--window", "1") == 0
    assert "summary.json" in os.listdir(earlier)
    assert json.loads((earlier / "summary.json").read_text())["epochs_completed"] == 2
    # Nothing staged is left beside it.
    assert sorted(os.listdir(tmp_path)) == ["earlier", "run"]


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


# -- the run directory: marker, status, format ---------------------------------------------------

def test_summary_carries_format_version_and_status(run):
    import epi_fast

    s = json.loads((run / "summary.json").read_text())
    assert s["format"] == "epi_fast.summary/1" and s["epi_fast_version"] == epi_fast.__version__
    assert s["status"] == "completed" and s["epochs_completed"] == 4
    assert s["process"]["pid"] > 0 and s["process"]["started"].endswith("Z")
    args = s["arguments"]
    assert (args["epochs"], args["window"], args["seed"], args["deadline_epoch"]) == (4, 2, 1, 3)
    assert args["track_ratios"] == [0.3, 0.7] and args["out"] == str(run) and args["overwrite"] is False
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["format"] == "epi_fast.pruned/1" and raw["epi_fast_version"] == epi_fast.__version__


def test_metrics_and_summary_are_written_after_every_epoch(tmp_path, monkeypatch):
    from epi_fast.app import cli

    seen = []
    evaluate = cli._evaluate

    def spy(*args, **kwargs):
        # Called once per epoch, before that epoch's files are written: they hold the epochs before.
        if (tmp_path / "run" / "metrics.jsonl").exists():
            lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            s = json.loads((tmp_path / "run" / "summary.json").read_text())
            seen.append((len(lines), s["epochs_completed"], s["status"]))
        else:
            s = json.loads((tmp_path / "run" / "summary.json").read_text())
            seen.append((None, s["epochs_completed"], s["status"]))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(cli, "_evaluate", spy)
    assert _train(tmp_path / "run", "--epochs", "3") == 0
    assert seen == [(None, 0, "running"), (1, 1, "running"), (2, 2, "running")]


def test_a_failure_marks_the_run_failed_and_keeps_it(tmp_path, monkeypatch, capsys):
    from epi_fast.app import cli

    calls = []
    evaluate = cli._evaluate

    def breaks_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the disk caught fire")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(cli, "_evaluate", breaks_in_epoch_2)
    out = tmp_path / "run"
    assert _train(out) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the disk caught fire" in err and str(out) in err and "Traceback" not in err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "failed" and s["epochs_completed"] == 1 and "the disk caught fire" in s["error"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.jsonl", "summary.json"]
    # A failed run is the tool's own: --overwrite replaces it.
    monkeypatch.setattr(cli, "_evaluate", evaluate)
    assert _train(out, "--overwrite", "--epochs", "1", "--window", "1") == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_sigterm_in_an_epoch_interrupts_and_the_handler_is_restored(tmp_path, monkeypatch, capsys):
    import signal

    from epi_fast.app import cli
    from epi_fast.app.errors import Terminated

    evaluate = cli._evaluate
    handlers = []

    def terminated_in_epoch_2(*args, **kwargs):
        handlers.append(signal.getsignal(signal.SIGTERM))
        if len(handlers) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(cli, "_evaluate", terminated_in_epoch_2)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    assert _train(out) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert handlers[0] is not before
    with pytest.raises(Terminated) as info:
        handlers[0](signal.SIGTERM, None)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGTERM
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted (SIGTERM)" in err and "1 of 4 epochs done" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["interrupted_by"] == "SIGTERM" and s["epochs_completed"] == 1


def test_ctrl_c_while_loading_data_writes_nothing_and_keeps_the_earlier_run(tmp_path, monkeypatch, capsys):
    from epi_fast.app import data

    out = tmp_path / "run"
    assert _train(out, "--epochs", "1", "--window", "1") == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_dataset", interrupted)
    assert _train(out, "--overwrite") == 130
    err = capsys.readouterr().err.strip()
    assert err == "epi-fast train: interrupted: before training started; nothing was written"
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert _train(tmp_path / "new") == 130
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_late_prune_warns_and_the_accuracy_after_it_is_labelled(tmp_path, capsys):
    from epi_fast.policy.decision import late_prune_message

    out = tmp_path / "run"
    assert _train(out, "--window", "4", "--deadline-epoch", "4") == 0
    captured = capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert s["prune_epoch"] == 4
    expected = late_prune_message(4, 4)
    assert expected and captured.err.strip() == f"epi-fast train: warning: {expected}"
    assert s["warnings"] == [expected]
    last = [line for line in captured.out.splitlines() if line.startswith("epoch   4/4")]
    assert len(last) == 1 and "(right after the prune)" in last[0] and "<- pruned" in last[0]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["pruned_now"] for r in records] == [False, False, False, True]


def test_an_early_prune_does_not_warn(run, capsys):
    s = json.loads((run / "summary.json").read_text())
    assert s["prune_epoch"] <= 3 and s["warnings"] == []


# -- careless use -----------------------------------------------------------------------------------

def test_out_in_missing_parents_is_created(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert _train(out, "--epochs", "1", "--window", "1") == 0
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "epi_curve.png", "metrics.jsonl", "model.pt", "summary.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_an_existing_file_is_refused_and_kept(tmp_path, capsys, overwrite):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert _train(f, *(["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("is a file" if overwrite else "already exists") in err
    assert f.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("out", [".", "~"])
def test_out_dot_and_home_are_refused(tmp_path, monkeypatch, capsys, out):
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "train.py").write_text("print(1)")
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(project))
    assert _train(os.path.expanduser(out), "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "left untouched" in err
    assert sorted(os.listdir(project)) == [".git", "train.py"]


def test_out_inside_the_data_folder_is_refused(tmp_path, capsys):
    data = tmp_path / "imgs"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
    assert _train(data / "run", "--data", str(data), "--data-format", "imagefolder") == 2
    assert "inside --data" in capsys.readouterr().err
    assert sorted(os.listdir(data)) == ["a", "b"]


def _read_only_folder(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anyway: make the OS calls answer as for a user
        real_access, real_mkdir = os.access, os.mkdir

        def access(path, mode, *a, **k):
            if os.path.abspath(path) == str(ro) and mode & os.W_OK:
                return False
            return real_access(path, mode, *a, **k)

        def mkdir(path, *a, **k):
            if os.path.dirname(os.path.abspath(path)) == str(ro):
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "mkdir", mkdir)
    return ro


def test_out_in_a_read_only_folder_is_a_usage_error(tmp_path, monkeypatch, capsys):
    ro = _read_only_folder(tmp_path, monkeypatch)
    try:
        assert _train(ro / "run") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not writable" in err and "Traceback" not in err
        # Writable when checked, not when created (another process changed it): still one line, exit 2.
        monkeypatch.setattr("epi_fast.app.rundir.check_out", lambda out, overwrite: None)
        assert _train(ro / "run", "--epochs", "1", "--window", "1") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot create it: Permission denied" in err
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_readme_command_twice_in_a_row(tmp_path, monkeypatch, capsys):
    # `epi-fast train --out runs/digits --overwrite`, run twice (here on tiny settings).
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["train", "--out", "runs/digits", "--overwrite", *TINY]) == 0
        assert "results in runs/digits" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "runs" / "digits")) == ["checkpoint.pt", "epi_curve.png", "metrics.jsonl", "model.pt", "summary.json"]
    assert os.listdir(tmp_path) == ["runs"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(tmp_path, monkeypatch, umask):
    import stat

    from epi_fast import _io

    old = os.umask(umask)
    try:
        monkeypatch.setattr(_io, "_UMASK", None)  # read once per process: forget the test runner's
        assert _train(tmp_path / "run", "--epochs", "1", "--window", "1") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o777 & ~umask
    for name in os.listdir(tmp_path / "run"):
        assert stat.S_IMODE(os.stat(tmp_path / "run" / name).st_mode) == 0o666 & ~umask, name


def test_a_flops_target_with_limits_and_rounding(tmp_path):
    out = tmp_path / "flops"
    assert _train(out, "--target", "flops", "--ratio", "0.4", "--max-layer-ratio", "0.8", "--round-to", "4",
                  "--deadline-epoch", "3") == 0
    s = json.loads((out / "summary.json").read_text())
    assert (s["target"], s["requested"], s["max_layer_ratio"], s["round_to"]) == ("flops", 0.4, 0.8, 4)
    assert abs(s["achieved"] - 0.4) <= 0.01
    assert abs(1 - s["flops_after"] / s["flops_before"] - s["achieved"]) < 1e-9
    assert all(k % 4 == 0 or k < 4 for k in s["kept_counts"].values())


@pytest.mark.parametrize("extra, message", [
    (["--target", "bytes"], "invalid choice: 'bytes'"),
    (["--round-to", "0"], "--round-to: the value must be an integer >= 1"),
    (["--max-layer-ratio", "1.5"], r"max_layer_ratio must be in (0, 1]"),
    (["--max-layer-ratio", "nope=0.5"], "max_layer_ratio names 'nope', which is not a module"),
    (["--ratio", "0.95", "--max-layer-ratio", "0.5"], "nearest reachable ratios are"),
])
def test_bad_target_arguments_are_one_line_usage_errors(tmp_path, capsys, extra, message):
    code = _train(tmp_path / "bad", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists() or not os.listdir(tmp_path / "bad") or \
        json.loads((tmp_path / "bad" / "summary.json").read_text())["status"] == "failed"
