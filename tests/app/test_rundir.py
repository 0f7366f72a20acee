"""What `epi-fast train --overwrite` may replace: only a run directory the tool wrote (its
summary.json carries "format": "epi_fast.summary/N"), holding nothing but the tool's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from epi_fast.app import rundir
from epi_fast.app.rundir import RUN_FILES, RunDirRefused, check_out, start

SUMMARY = {"format": "epi_fast.summary/1", "status": "completed"}


def _run_dir(path, summary=SUMMARY, files=RUN_FILES):
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text(json.dumps(summary) if name == "summary.json" else "old " + name)
    return path


def _snapshot(path):
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path) + "/"] = None
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = fh.read()
    return out


def test_a_new_directory_and_its_parents_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    check_out(str(out), overwrite=False)
    assert not (tmp_path / "a").exists()  # the check changes nothing
    assert start(str(out), False, dict(SUMMARY, status="running")) == str(out)
    assert os.listdir(out) == ["summary.json"]
    assert json.loads((out / "summary.json").read_text())["status"] == "running"


def test_an_earlier_run_is_replaced_removing_only_the_tools_files(tmp_path):
    out = _run_dir(tmp_path / "run")
    (out / ".metrics.jsonl.k2_x9abc.tmp").write_text("left by a killed write")
    with pytest.raises(RunDirRefused, match="already exists .*pass --overwrite"):
        check_out(str(out), overwrite=False)
    start(str(out), True, dict(SUMMARY, status="running"))
    assert os.listdir(out) == ["summary.json"]
    assert json.loads((out / "summary.json").read_text())["status"] == "running"


def test_an_empty_directory_may_be_used_with_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirRefused, match="already exists"):
        check_out(str(tmp_path / "empty"), overwrite=False)
    check_out(str(tmp_path / "empty"), overwrite=True)


@pytest.mark.parametrize("make, words", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "not a run directory of epi-fast train"),
    (lambda p: (p.mkdir(), (p / ".git").mkdir(), (p / ".git" / "HEAD").write_text("ref")), "not a run directory"),
    (lambda p: p.write_text("a file"), "is a file, not a run directory"),
    (lambda p: _run_dir(p, files=("summary.json", "model.pt", "notes.txt")), "holds 'notes.txt', which epi-fast train did not write"),
    (lambda p: (_run_dir(p), (p / "sub").mkdir(), (p / "sub" / "x").write_text("x")), "holds 'sub'"),
    (lambda p: (_run_dir(p, files=("summary.json",)), (p / "model.pt").mkdir()), "holds 'model.pt'"),
    (lambda p: _run_dir(p, summary={"prune_epoch": 8, "top1_final": 0.97}), "looks like a run of epi_fast 0.1"),
    (lambda p: _run_dir(p, summary={"format": "something.else/1"}), "not a run directory"),
])
def test_anything_else_is_refused_and_left_untouched(tmp_path, make, words):
    out = tmp_path / "out"
    make(out)
    before = _snapshot(out) if out.is_dir() else out.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(RunDirRefused) as info:
            check_out(str(out), overwrite=overwrite)
        message = str(info.value)
        assert "\n" not in message and str(out) in message
        assert (words if overwrite else "already exists") in message
    with pytest.raises(RunDirRefused):
        start(str(out), True, dict(SUMMARY, status="running"))
    assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == before


def test_a_symbolic_link_is_refused(tmp_path):
    target = _run_dir(tmp_path / "real")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(RunDirRefused, match="symbolic link"):
        check_out(str(tmp_path / "link"), overwrite=True)


@pytest.mark.parametrize("where", ["cwd", "home", "parent_of_cwd"])
def test_the_current_home_and_parent_directories_are_refused_even_when_marked(tmp_path, monkeypatch, where):
    marked = _run_dir(tmp_path / "marked")
    if where == "cwd":
        monkeypatch.chdir(marked)
        out = "."
    elif where == "home":
        monkeypatch.setenv("HOME", str(marked))
        out = str(marked)
    else:
        os.mkdir(marked / "inner")
        monkeypatch.chdir(marked / "inner")
        out = ".."
    words = {"cwd": "the current directory", "home": "your home directory", "parent_of_cwd": "a parent of the current directory"}[where]
    with pytest.raises(RunDirRefused, match=words):
        check_out(out, overwrite=True)


def test_the_root_directory_is_refused():
    with pytest.raises(RunDirRefused, match="root directory|not a run directory"):
        check_out("/", overwrite=True)


def test_out_below_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirRefused, match="is a file, not a folder"):
        check_out(str(tmp_path / "f" / "run"), overwrite=False)


def test_a_run_still_in_progress_is_not_replaced(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "epi-fast-test"])
    try:
        for _ in range(500 if os.path.isdir(f"/proc/{sleeper.pid}") else 0):
            # Until the child has exec'd: before, it shows the parent's command line.
            with open(f"/proc/{sleeper.pid}/cmdline", "rb") as f:
                if b"epi-fast-test" in f.read():
                    break
            time.sleep(0.01)
        proc = {"pid": sleeper.pid, "host": rundir.socket.gethostname(), "started": "now"}
        out = _run_dir(tmp_path / "run", summary=dict(SUMMARY, status="running", process=proc))
        with pytest.raises(RunDirRefused, match=f"still in progress \\(pid {sleeper.pid}\\)"):
            check_out(str(out), overwrite=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    check_out(str(out), overwrite=True)  # the process is gone: an interrupted run, replaceable
