"""`epi-fast train` stopped by a real signal, in a real process: Ctrl-C (SIGINT) exits 130,
SIGTERM 143, with one line on stderr, and the run directory stays, consistent and marked
"interrupted"."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from epi_fast.app.rundir import RUN_FILES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--epochs", "30", "--no-progress", "--batch-size", "128"]


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _spawn(argv, cwd, umask=None, code=None):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "epi_fast"]

    def child_setup():
        # A shell's background job (CI started with `&`, nohup) runs with SIGINT ignored, and an
        # ignored disposition survives exec: Python then never raises KeyboardInterrupt. The
        # child gets SIGINT's default back, as a process started from a terminal has it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if umask is not None:
            os.umask(umask)

    return subprocess.Popen(
        cmd + argv, cwd=str(cwd), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=child_setup,
    )


def _wait_until(proc, ready, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before it was signalled:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.02)


def _metrics_lines(out):
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _check_consistent(out):
    """Every file parses, nothing but the tool's files, nothing beside the directory."""
    names = sorted(os.listdir(out))
    assert set(names) <= set(RUN_FILES) and "summary.json" in names, names
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if "metrics.jsonl" in names else []
    assert [r["epoch"] for r in records] == list(range(1, summary["epochs_completed"] + 1))
    assert sorted(os.listdir(out.parent)) == [out.name]
    return summary


@pytest.mark.parametrize("sig, code, umask", [(signal.SIGINT, 130, 0o022), (signal.SIGTERM, 143, 0o077)])
def test_a_signal_after_an_epoch_leaves_an_interrupted_run(tmp_path, sig, code, umask):
    out = tmp_path / "runs" / "run"
    proc = _spawn(["train", "--out", str(out), *ARGS], tmp_path, umask=umask)
    _wait_until(proc, lambda: _metrics_lines(out) >= 1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    name = signal.Signals(sig).name
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("epi-fast train: interrupted" + ("" if sig == signal.SIGINT else " (SIGTERM)"))
    assert str(out) in lines[0] and 'summary.json says "interrupted"' in lines[0]
    summary = _check_consistent(out)
    assert summary["format"] == "epi_fast.summary/1" and summary["status"] == "interrupted"
    assert summary["interrupted_by"] == name and 1 <= summary["epochs_completed"] < 30
    assert f"{summary['epochs_completed']} of 30 epochs done" in lines[0]
    # Folder and files follow the umask of the process that wrote them.
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask
    for entry in os.listdir(out):
        assert stat.S_IMODE(os.stat(out / entry).st_mode) == 0o666 & ~umask, entry


def test_ctrl_c_in_the_first_epoch(tmp_path):
    out = tmp_path / "runs" / "run"
    proc = _spawn(["train", "--out", str(out), *ARGS], tmp_path)
    _wait_until(proc, lambda: (out / "summary.json").exists())  # written just before epoch 1
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    summary = _check_consistent(out)
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGINT"
    assert summary["epochs_completed"] <= 1


SLOW_DATA = textwrap.dedent("""
    import sys, time
    import epi_fast.app.data as data
    from epi_fast.app.cli import main

    def slow(*args, **kwargs):
        open(sys.argv[1], "w").close()
        time.sleep(120)

    data.load_dataset = slow
    sys.exit(main(sys.argv[2:]))
""")


def test_ctrl_c_while_loading_data_keeps_the_earlier_run(tmp_path):
    out = tmp_path / "runs" / "run"
    out.mkdir(parents=True)
    earlier = {"summary.json": json.dumps({"format": "epi_fast.summary/1", "status": "completed"}), "model.pt": "weights"}
    for name, text in earlier.items():
        (out / name).write_text(text)
    ready = tmp_path / "loading"
    proc = _spawn([str(ready), "train", "--out", str(out), "--overwrite", *ARGS], tmp_path, code=SLOW_DATA)
    _wait_until(proc, ready.exists)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and "nothing was written" in stderr and "Traceback" not in stderr
    assert {name: (out / name).read_text() for name in os.listdir(out)} == earlier
