"""Atomic writers and the EPI plot."""

import json
import math
import os

import pytest
import torch

from epi_fast.app import report


def test_json_is_strict_and_converts_tensors(tmp_path):
    p = tmp_path / "s.json"
    report.write_json(p, {"a": torch.tensor([1, 2]), "b": float("nan"), 0.5: [math.inf, None, torch.tensor(1.5)]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": None, "0.5": [None, None, 1.5]}


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "m.jsonl"
    report.write_jsonl(p, [{"epoch": 1}, {"epoch": 2}])
    assert p.read_text().splitlines() == ['{"epoch":1}', '{"epoch":2}']

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report.atomic_write(p, boom)
    assert p.read_text().splitlines() == ['{"epoch":1}', '{"epoch":2}']
    assert os.listdir(tmp_path) == ["m.jsonl"]


def test_plot_epi_curve(tmp_path):
    p = tmp_path / "epi.png"
    report.plot_epi_curve(p, {"0.5": [None] * 5 + [0.9, 0.99], 0.3: [None] * 5 + [0.95, 1.0]}, 0.983, 6)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.plot_epi_curve(p, {"0.5": [None, None]}, 0.944, None)  # nothing defined yet: still a plot
    assert os.listdir(tmp_path) == ["epi.png"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, monkeypatch, umask):
    import stat

    from epi_fast import _io

    old = os.umask(umask)
    try:
        monkeypatch.setattr(_io, "_UMASK", None)  # read once per process: forget the test runner's
        assert _io.process_umask() == umask
        report.write_json(tmp_path / "s.json", {"a": 1})
        assert os.umask(umask) == umask  # reading it changed nothing
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.json").st_mode) == 0o666 & ~umask


def test_temporary_names_are_recognised():
    from epi_fast._io import is_temporary_of

    assert is_temporary_of(".summary.json.k2_x9abc.tmp", "summary.json")
    assert not is_temporary_of(".summary.json.tmp", "summary.json")
    assert not is_temporary_of(".summary.json.a/b.tmp", "summary.json")
    assert not is_temporary_of("summary.json", "summary.json")
    assert not is_temporary_of(".notes.txt.abc.tmp", "summary.json")
