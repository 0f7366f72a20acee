"""`epi-fast train --resume RUN_DIR`: a run killed for real (SIGKILL) or stopped with Ctrl-C,
before or after the prune, and resumed from its checkpoint.pt ends exactly as the uninterrupted
run of the same arguments (timings aside); a completed run is left alone; the usage errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from epi_fast.app.cli import main
from epi_fast.app.resume import CHECKPOINT, CHECKPOINT_FORMAT
from epi_fast.app.rundir import RUN_FILES
from checkpoint_wait import wait_for_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--window", "2", "--patience", "1", "--deadline-epoch", "3", "--track-ratios", "0.3", "--threads", "1",
          "--no-progress"]
TASKS = {
    # Epochs of a few tenths of a second, so that a poll sees each checkpoint before the next.
    "classify": ["--epochs", "6", "--batch-size", "32", *COMMON],
    "lm": ["--task", "lm", "--model", "llama_micro", "--seq-len", "32", "--steps-per-epoch", "30", "--batch-size", "8",
           "--epochs", "6", *COMMON],
}
TIMING = {"seconds", "train_loop_seconds", "tokens_per_second"}
SUMMARY_DIFFERS = {"process", "train_seconds", "tokens_per_second_before", "tokens_per_second_after", "arguments",
                   "resumed_after_epochs"}


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted run of each task, in this process."""
    n = torch.get_num_threads()
    out = {}
    for task, args in TASKS.items():
        d = tmp_path_factory.mktemp("baseline") / task
        assert main(["train", "--out", str(d), *args]) == 0
        out[task] = d
    torch.set_num_threads(n)
    return out


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _checkpoint_epochs(out):
    return torch.load(out / CHECKPOINT, weights_only=True)["epochs_completed"]


def _stopped_run(out, args, epoch, sig, while_running=None):
    """Start `epi-fast train` in a process, wait until its checkpoint.pt records `epoch`, call
    `while_running()`, send `sig`; returns the epochs the checkpoint holds then, and the exit
    status."""

    def child_setup():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal, also under `&`

    proc = subprocess.Popen([sys.executable, "-m", "epi_fast", "train", "--out", str(out), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=child_setup)
    try:
        wait_for_checkpoint(proc, out / CHECKPOINT, epoch, 120)
        if while_running is not None:
            while_running()
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return _checkpoint_epochs(out), rc


def _records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(resumed, baseline):
    a, b = json.loads((resumed / "summary.json").read_text()), json.loads((baseline / "summary.json").read_text())
    assert a["status"] == "completed"
    for key in set(a) | set(b):
        if key not in SUMMARY_DIFFERS:
            assert a.get(key) == b.get(key), key
    assert a["prune_epoch"] == b["prune_epoch"] and a["epi_tracked"] == b["epi_tracked"] and a["top1_final"] == b["top1_final"]
    ra, rb = _records(resumed), _records(baseline)
    assert [r["epoch"] for r in ra] == list(range(1, a["epochs"] + 1))
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in ra] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in rb]
    drop = ("out", "no_progress")
    assert {k: v for k, v in a["arguments"].items() if k not in drop} == \
        {k: v for k, v in b["arguments"].items() if k not in drop}
    assert set(os.listdir(resumed)) <= set(RUN_FILES)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, baseline, task, when, capsys):
    prune_epoch = json.loads((baseline[task] / "summary.json").read_text())["prune_epoch"]
    assert prune_epoch is not None and 2 <= prune_epoch <= 4
    out = tmp_path / "run"
    epoch = 1 if when == "before" else prune_epoch + 1
    refused = []

    def resume_while_it_runs():  # refused: the directory belongs to a live process
        refused.append(main(["train", "--resume", str(out), "--no-progress"]))

    check = resume_while_it_runs if (task, when) == ("classify", "before") else None
    got, rc = _stopped_run(out, TASKS[task], epoch, signal.SIGKILL, check)
    if check is not None:
        assert refused == [2] and "still in progress" in capsys.readouterr().err
    assert rc == -signal.SIGKILL
    assert (got < prune_epoch) if when == "before" else (prune_epoch < got < 6), got
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, baseline[task])
    assert json.loads((out / "summary.json").read_text())["resumed_after_epochs"] == [got]


@pytest.mark.parametrize("task", list(TASKS))
def test_ctrl_c_then_resume(tmp_path, baseline, task, capsys):
    out = tmp_path / "run"
    got, rc = _stopped_run(out, TASKS[task], 2, signal.SIGINT)
    assert rc == 130
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert f"after epoch {got} of 6" in capsys.readouterr().err
    _assert_same_run(out, baseline[task])


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "3", "--target", "flops", "--round-to", "4"],
        ["--task", "lm", "--model", "llama_micro", "--seq-len", "32", "--steps-per-epoch", "5", "--batch-size", "8",
         "--epochs", "3", "--target", "params"],
    ],
    ids=["classify-flops", "lm-params"],
)
def test_killed_after_the_last_checkpoint_writes_the_final_files(tmp_path, args):
    # As if killed after the last epoch's checkpoint, before model.pt and the plots: the resume
    # trains nothing and writes them. A params/flops target is not reachable again from the
    # pruned network: the resume must not ask the pruner to reach it.
    d, ref = tmp_path / "run", tmp_path / "ref"
    common = ["--window", "1", "--patience", "0", "--deadline-epoch", "2", "--threads", "1", "--no-progress", *args]
    assert main(["train", "--out", str(ref), *common]) == 0
    shutil.copytree(ref, d)
    for name in ("model.pt", "epi_curve.png", "perplexity.png"):
        if (d / name).exists():
            os.unlink(d / name)
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**summary, "status": "running", "process": {}}))
    assert main(["train", "--resume", str(d), "--no-progress"]) == 0
    assert sorted(os.listdir(d)) == sorted(os.listdir(ref))
    _assert_same_run(d, ref)
    a, b = torch.load(d / "model.pt", weights_only=True), torch.load(ref / "model.pt", weights_only=True)
    assert a["modules"] == b["modules"] and all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())


def test_checkpoint_loads_weights_only(baseline):
    ckpt = torch.load(baseline["classify"] / CHECKPOINT, weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["epochs_completed"] == 6 and len(ckpt["metrics"]) == 6
    assert ckpt["pruner"]["pruned"] and ckpt["model"]["arch"]["name"] == "resnet_small"
    assert set(ckpt["rng"]) >= {"torch", "python", "numpy", "data"}
    lm = torch.load(baseline["lm"] / CHECKPOINT, weights_only=True)
    assert lm["task"] == "lm" and lm["task_state"]["initial"]["perplexity"] > 0


def _snapshot(d):
    return {n: ((d / n).read_bytes(), os.stat(d / n).st_mtime_ns) for n in sorted(os.listdir(d))}


def test_resume_of_a_completed_run_changes_nothing(tmp_path, baseline, capsys):
    d = tmp_path / "done"
    shutil.copytree(baseline["classify"], d)
    before = _snapshot(d)
    assert main(["train", "--resume", str(d), "--no-progress", "--threads", "1", "--debug"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "completed" in out
    assert _snapshot(d) == before


def test_overwrite_replaces_a_run_with_its_checkpoint(tmp_path, baseline):
    d = tmp_path / "run"
    shutil.copytree(baseline["classify"], d)
    assert main(["train", "--out", str(d), "--overwrite", "--epochs", "1", "--window", "1", "--no-progress"]) == 0
    assert _checkpoint_epochs(d) == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ratio", "0.3"], "not --ratio"),
        (["--ratio", "0.5"], "not --ratio"),  # the default, given: still refused
        (["--epochs", "8", "--seed", "1"], "not --epochs, --seed"),
        (["--out", "elsewhere"], "not --out"),
        (["--overwrite"], "--overwrite cannot be used with --resume"),
    ],
)
def test_resume_takes_no_other_arguments(tmp_path, baseline, capsys, extra, needle):
    d = tmp_path / "run"
    shutil.copytree(baseline["classify"], d)
    before = _snapshot(d)
    assert main(["train", "--resume", str(d), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert _snapshot(d) == before


def test_resume_needs_a_run_directory_with_a_checkpoint(tmp_path, baseline, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text('{"status": "running"}')
    for d, needle in ((tmp_path / "missing", "no such run directory"), (tmp_path / "empty", "not a run directory"),
                      (tmp_path / "other", "not a run directory")):
        assert main(["train", "--resume", str(d)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and needle in err, err
    d = tmp_path / "old"
    shutil.copytree(baseline["classify"], d)
    os.unlink(d / CHECKPOINT)
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    assert main(["train", "--resume", str(d)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "has no checkpoint.pt" in err


def test_out_is_required_without_resume(capsys):
    assert main(["train", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "required: --out" in err


def test_a_relative_data_path_is_found_from_where_the_run_started(tmp_path, monkeypatch):
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    (start / "notes.txt").write_text("".join(f"The pruned network {i} keeps its heads while channels settle.\n"
                                             for i in range(300)))
    monkeypatch.chdir(start)
    assert main(["train", "--out", "run", "--task", "lm", "--model", "llama_micro", "--seq-len", "32", "--data",
                 "notes.txt", "--steps-per-epoch", "3", "--batch-size", "4", "--epochs", "2", "--window", "1",
                 "--threads", "1", "--no-progress"]) == 0
    summary = json.loads((start / "run" / "summary.json").read_text())
    assert summary["working_directory"] == str(start) and summary["arguments"]["data"] == "notes.txt"
    (start / "run" / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(start / "run"), "--no-progress"]) == 0
    after = json.loads((start / "run" / "summary.json").read_text())
    assert after["status"] == "completed" and after["arguments"]["data"] == str(start / "notes.txt")
